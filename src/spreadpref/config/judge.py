"""The judge's settings: which judge labels a round's pairs, its models and its safeguards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from spreadpref.config.sections import Section


def url_port_problem(url: str) -> str | None:
    """urllib's complaint about a URL's port (out of range, not a number), else None."""
    import urllib.parse  # noqa: PLC0415

    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - checked only when read
    except ValueError as err:
        return str(err)
    return None


class RewardModelJudgeSettings(Section):
    """A Hugging Face sequence-classification reward model (judge.kind=reward_model)."""

    name_or_path: str | None = Field(None, description="Local directory or hub id of the reward model.")
    batch_size: int = Field(8, gt=0, description="Replies per scoring batch.")
    max_length: int = Field(1024, gt=1, description="Prompt + reply tokens; longer inputs keep their end.")


class LLMJudgeSettings(Section):
    """LLM-as-judge (judge.kind=llm): a model asked which of two replies is better, in both orders."""

    model: str = Field(
        "policy",
        description="policy: the model being trained (the paper's LLM-as-judge baseline); "
        "or a local directory / hub id of another chat model. Ignored when base_url is set.",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    api_model: str | None = Field(None, description="Model name sent to the endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    max_retries: int = Field(4, ge=0, description="Retries with exponential backoff on timeouts, 429 and 5xx.")
    timeout: float = Field(60.0, gt=0.0, description="Seconds per HTTP request.")
    concurrency: int = Field(4, gt=0, description="Parallel HTTP requests.")
    max_reply_chars: int = Field(4000, gt=0, description="Replies are cut to this many characters in the judge prompt.")
    batch_size: int = Field(4, gt=0, description="Judge prompts per forward pass of a local judge model.")


NAMED_REFERENCES = ("initial", "previous")  # judge.reference values that name a model of the run itself
NAMED_JUDGE_POLICIES = ("previous", "seed", "initial")  # judge.policy values that name a model of the run


class CustomJudgeSettings(Section):
    """Your own judge (judge.kind=custom): a Python callable that returns a :class:`spreadpref.judges.Judge`."""

    factory: str | None = Field(
        None,
        description="`package.module:callable`, imported and called with judge.custom.kwargs; it must return a "
        "spreadpref.judges.Judge. It runs your code, like any import.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


class JudgeSettings(Section):
    """Who labels the pairs. SPA: the implicit DPO reward s = log pi_{i-1}(y|x) - log pi_ref(y|x)."""

    kind: Literal["implicit", "reward_model", "llm", "verifier", "custom"] = Field(
        "implicit",
        description="implicit: the DPO reward of the model itself (SPA); reward_model, llm, verifier or custom: an "
        "external judge (the paper's iterative-DPO baselines; set refine.enabled=false for them).",
    )
    reference: str = Field(
        "initial",
        description="Judge reference: `initial` (model.name_or_path, the SFT model: the paper), `previous` (the "
        "round before pi_{i-1}), `none`, or a model directory or hub id (e.g. the base model before SFT, for "
        "loop.seed_stage=false). Its tokenizer must be the policy's.",
    )
    policy: str = Field(
        "previous",
        description="Whose log-ratio scores the samples: `previous` (pi_{i-1}: the paper), `seed` (pi_0 in every round: "
        "the anchored judge), `initial` (model.name_or_path), or a model directory or hub id. The round's DPO "
        "reference stays pi_{i-1} whatever judges.",
    )
    base: str | None = Field(
        None,
        description="A second reference, usually the base model before SFT: the score becomes "
        "log pi_judge - (1 - base_weight) * log pi_ref - base_weight * log pi_base (see docs/spa-method.md).",
    )
    base_weight: float = Field(
        1.0, ge=0.0, le=4.0, description="Weight of judge.base in the reference (1: judge.base replaces it)."
    )
    length_normalize: bool = Field(False, description="Score with per-token mean log-probs instead of sums.")
    length_penalty: Literal["none", "fit"] | float = Field(
        "none",
        description="Length-regularised score s - alpha * reply tokens (DICE): `fit` fits alpha per round so that the "
        "round's chosen replies are as often shorter as longer (negative when the labels favour short replies; 0 "
        "when no alpha balances better); a number >= 0 fixes alpha; `none` is the paper. The "
        "implicit judge only (with judge.kind set to an external judge it does nothing, as judge.consistency).",
    )
    min_reply_tokens: int = Field(
        1,
        ge=0,
        description="Samples with fewer reply tokens (the stop token not counted), or only whitespace, are never "
        "paired; 1 keeps empty replies out, 0 pairs everything (the paper).",
    )
    top_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="Keep only this share of a round's pairs, those with the largest margins."
    )
    consistency: Literal["none", "soften", "drop"] = Field(
        "none",
        description="CREAM: a pair whose order pi_{i-2}'s judge reverses is softened (label 1 - refine.alpha) or "
        "dropped; round 1 compares with pi_init's log-ratio against judge.base (no check without judge.base).",
    )
    batch_size: int = Field(8, gt=0, description="Samples per no-grad scoring batch.")
    seed_agreement: bool = Field(
        True,
        description="Each round, report how often the model's implicit reward agrees with the human labels of the "
        "seed pairs, trained on and held out (data.seed_holdout).",
    )
    gold: Literal["verifier", "reward_model", "llm", "custom"] | None = Field(
        None,
        description="A judge for measurement only, never for training: each round it also labels the round's pairs, "
        "and the run reports self-label accuracy, accuracy by margin decile and the smoothing's precision and "
        "recall. It takes its settings from judge.reward_model, judge.llm or judge.custom.",
    )
    reward_model: RewardModelJudgeSettings = RewardModelJudgeSettings()
    llm: LLMJudgeSettings = LLMJudgeSettings()
    custom: CustomJudgeSettings = CustomJudgeSettings()

    @model_validator(mode="after")
    def _external_judge_is_named(self) -> JudgeSettings:
        if self.kind == "reward_model" and not self.reward_model.name_or_path:
            raise ValueError("judge.kind=reward_model needs judge.reward_model.name_or_path")
        if self.llm.base_url and not self.llm.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.llm.base_url={self.llm.base_url[:200]!r}: only http:// and https:// URLs")
        if self.llm.base_url and (problem := url_port_problem(self.llm.base_url)):
            raise ValueError(f"judge.llm.base_url={self.llm.base_url[:200]!r}: {problem} (a port is 1 to 65535)")
        if self.llm.base_url and not self.llm.api_model:
            raise ValueError("judge.llm.base_url needs judge.llm.api_model (the model name the endpoint serves)")
        if "custom" in (self.kind, self.gold) and not self.custom.factory:
            raise ValueError(
                "judge.kind=custom (or judge.gold=custom) needs judge.custom.factory, e.g. mypkg.judges:make"
            )
        if not self.reference.strip():
            raise ValueError("judge.reference is empty: use initial, previous, none, or a model directory or hub id")
        if self.gold == "reward_model" and not self.reward_model.name_or_path:
            raise ValueError("judge.gold=reward_model needs judge.reward_model.name_or_path")
        if self.gold == "llm" and not self.llm.base_url and self.llm.model == "policy":
            raise ValueError(
                "judge.gold=llm needs a fixed judge, not the policy being trained: set judge.llm.model to a model "
                "directory or hub id, or judge.llm.base_url"
            )
        return self

    def gold_settings(self) -> JudgeSettings | None:
        """The gold judge's settings: its kind with this section's reward_model and llm settings."""
        return None if self.gold is None else self.model_copy(update={"kind": self.gold, "gold": None})

    def describe(self, round_index: int) -> str:
        """Which models judge round ``round_index``, in the paper's names, for the banner, the summary table,
        report.md and the model card: "π_0 vs π_init", "π_1 vs base my/base", or the external judge's kind."""
        if self.kind != "implicit":
            return self.kind
        i = round_index
        policy = {"previous": f"π_{i - 1}", "seed": "π_0", "initial": "π_init"}.get(self.policy, _short(self.policy))
        if self.reference == "none":
            reference = "no reference"
        elif self.reference == "previous" and i >= 2:
            reference = f"π_{i - 2}"
        elif self.reference in NAMED_REFERENCES:
            reference = "π_init"
        else:
            reference = f"base {_short(self.reference)}"
        if self.base and self.base_weight >= 1.0:
            reference = f"base {_short(self.base)}"
        elif self.base and self.base_weight > 0:
            reference = f"{reference}^{1 - self.base_weight:g}·{_short(self.base)}^{self.base_weight:g}"
        return f"{policy} vs {reference}"


def _short(name: str) -> str:
    """A model as a person reads it: a hub id as it is, a local path by its last two parts."""
    parts = Path(name).expanduser().parts
    return name if name.count("/") <= 1 and not name.startswith(("/", ".", "~")) else "/".join(parts[-2:])
