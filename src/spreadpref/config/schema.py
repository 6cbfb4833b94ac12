"""The whole configuration: self-refinement, the loop, evaluation, the hub, and the Config that holds every
section, with the checks that span sections."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    Field,
    model_validator,
)

from spreadpref.config.judge import (
    NAMED_REFERENCES,
    JudgeSettings,
)
from spreadpref.config.sections import (
    DataSettings,
    GenerationSettings,
    ModelSettings,
    Section,
    TrainSettings,
)
from spreadpref.runtime.files import atomic_write_text


class RefineSettings(Section):
    """Self-refinement (confidence-based label smoothing) and decoupled noise detection (DND)."""

    enabled: bool = Field(True, description="Smooth the least confident self-labels.")
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="Low-confidence pairs get q = 1 - alpha.")
    quantile: float = Field(0.1, gt=0.0, lt=1.0, description="tau = this quantile of the margin window.")
    window: int = Field(50, gt=0, description="Sliding window of per-sample margins.")
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0, description="No smoothing in this first share of steps.")
    decoupled: bool = Field(True, description="DND: judge confidence with the extrapolated detector.")
    lambdas: list[float] = Field(
        default_factory=lambda: [0.5, 0.25, 0.125],
        description="DND lambda per round; later rounds keep halving.",
    )
    partial_window: bool = Field(
        True,
        description="Take tau from the window before it holds `window` margins (false: smooth nothing until it is "
        "full, as the authors' code). See docs/spa-method.md for the measurement behind the default.",
    )

    def lam(self, round_index: int) -> float:
        """The DND lambda that drives round ``round_index`` (1-based); 0 without DND."""
        return self.scheduled_lam(round_index) if self.decoupled else 0.0

    def scheduled_lam(self, round_index: int) -> float:
        """The schedule's lambda for round ``round_index``, whether or not DND drives the smoothing."""
        if not self.lambdas:
            return 0.0
        if round_index <= len(self.lambdas):
            return self.lambdas[round_index - 1]
        return self.lambdas[-1] / 2 ** (round_index - len(self.lambdas))


class LoopSettings(Section):
    """Rounds of the SPA loop after the seed stage."""

    rounds: int = Field(3, ge=0, description="Rounds of generate, judge, train after the seed stage.")
    prompts_per_round: list[int] | None = Field(
        None, description="Fresh prompts per round; default: the paper's 8K/20K/30K, scaled to the pool."
    )
    epochs_per_round: float = Field(1.0, gt=0.0, description="Training epochs on each round's pairs.")
    learning_rate: float | None = Field(None, gt=0.0, description="Round learning rate; default train.learning_rate.")
    group_by_length: bool | None = Field(
        None,
        description="Round training: batches of pairs of similar length (true) or shuffled (false, as the paper); "
        "default train.group_by_length. It decides which pairs share a self-refinement window: see "
        "docs/spa-method.md.",
    )
    keep_models: int = Field(2, ge=1, description="Keep the last N round models (the seed model is always kept).")
    replay_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Experience replay (DICE): this share of each round's training pairs are human seed pairs that "
        "pi_0 was trained on (never the held-out ones), repeated when the seed is smaller.",
    )
    final_model: Literal["last", "best_held_out"] = Field(
        "last",
        description="The run's final model: the last round, or the model (seed model included) with the best "
        "held-out human agreement. Either way the run warns when the last round is below the seed model on it.",
    )
    seed_stage: bool = Field(
        True,
        description="false: no seed DPO; pi_0 is model.name_or_path itself and data.train is not read (the paper's "
        "Figure 4). The judge then needs a reference other than pi_0: set judge.reference to, e.g., the base model.",
    )


class EvalJudgeSettings(JudgeSettings):
    """The judge of `spreadpref eval`'s win rates: fixed for every model, so never the model itself."""

    kind: Literal["implicit", "reward_model", "llm", "verifier", "custom"] = Field(
        "verifier",
        description="verifier (default: the rule-based gold judge of the built-in evaluation prompts), "
        "reward_model, or llm with a fixed model or base_url.",
    )


class EvalSettings(Section):
    """`spreadpref eval`: answers on held-out prompts, win rates against a baseline, held-out agreement."""

    prompts: str = Field(
        "builtin:ifeval_eval",
        description="Evaluation prompts, disjoint from every training prompt. The default carries verifiable "
        "constraints (instruction_id_list, kwargs) for the verifier judge.",
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N evaluation prompts.")
    baseline: str = Field(
        "initial",
        description="initial: answers of model.name_or_path (the SFT model); or a model directory, "
        "or an AlpacaEval-format JSON file of baseline answers.",
    )
    judge: EvalJudgeSettings = EvalJudgeSettings()
    labelled: str | None = Field(
        None, description="Held-out human-labelled pairs: report each model's implicit-reward agreement with them."
    )
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy answers.")
    batch_size: int = Field(8, gt=0, description="Prompts per generation batch.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for the win-rate confidence interval.")
    after_run: bool = Field(
        False,
        description="`spreadpref run` ends by evaluating every model still on disk (SFT, seed, rounds: raise "
        "loop.keep_models to keep them all) into <run>/eval; the report then plots the win rate per round.",
    )


class HubSettings(Section):
    """Upload of the final model, with its model card, to the Hugging Face Hub (TRL's push_to_hub / hub_model_id).

    The token comes from the environment (HF_TOKEN) or `hf auth login`, never from the config."""

    push: bool = Field(False, description="Upload the run's final model (or the train stage's model) when it ends.")
    model_id: str | None = Field(None, description="The repo to upload to, `org/name` (created if missing).")
    private: bool = Field(True, description="Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = Field(None, description="Branch to upload to (default: the repo's main branch).")

    @model_validator(mode="after")
    def _push_names_a_repo(self) -> HubSettings:
        if self.push and not (self.model_id and self.model_id.count("/") == 1 and all(self.model_id.split("/"))):
            raise ValueError(f"hub.push=true needs hub.model_id=org/name (got {self.model_id!r})")
        return self


class Config(Section):
    output_dir: str = Field("runs/spreadpref", description="Where every output of the run goes.")
    allow_existing_files: bool = Field(
        False,
        description="Write into an output directory that already holds files spreadpref did not write (refused by "
        "default; nothing there is ever deleted).",
    )
    seed: int = Field(
        42,
        ge=0,
        lt=2**32,  # numpy's seeds are unsigned 32-bit: checked here, before any model loads
        description="Seeds data order, initialisation of LoRA adapters and sampling (0 to 2^32 - 1).",
    )
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    generation: GenerationSettings = GenerationSettings()
    judge: JudgeSettings = JudgeSettings()
    refine: RefineSettings = RefineSettings()
    loop: LoopSettings = LoopSettings()
    eval: EvalSettings = EvalSettings()
    hub: HubSettings = HubSettings()

    @model_validator(mode="after")
    def _previous_judge_needs_two_models(self) -> Config:
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty: name a directory (an empty path would mean the current one)")
        if self.judge.reference == "previous" and self.loop.keep_models < 2:
            raise ValueError("judge.reference=previous needs loop.keep_models >= 2")
        if not self.loop.seed_stage and self.judge.kind == "implicit" and self.judge.reference in NAMED_REFERENCES:
            raise ValueError(
                "loop.seed_stage=false makes pi_0 the initial model itself, so with "
                f"judge.reference={self.judge.reference} the implicit reward would be 0 for every reply in round 1: set judge.reference to another model (for example the "
                "base model before SFT: judge.reference=PATH), or none"
            )
        if (
            not self.loop.seed_stage
            and self.judge.kind == "implicit"
            and self.judge.reference.rstrip("/") == self.model.name_or_path.rstrip("/")
        ):
            raise ValueError(
                f"judge.reference is model.name_or_path ({self.model.name_or_path}), which is pi_0 itself with "
                "loop.seed_stage=false: the implicit reward would be 0 for every reply; set another reference"
            )
        if self.generation.temperature == 0:
            raise ValueError(
                "generation.temperature=0 means greedy decoding, so the K replies of a prompt would all be the same "
                "and no round would have a pair: use a temperature above 0 (the paper: 0.7)"
            )
        if self.generation.num_samples < 2:
            raise ValueError("generation.num_samples must be at least 2: each round pairs the best and worst reply")
        self._check_safeguards()
        return self

    def _check_safeguards(self) -> None:
        """The judge's safeguards (docs/spa-method.md) need the implicit judge, and a score that is not 0."""
        judge = self.judge
        implicit_only = {"judge.policy": judge.policy != "previous", "judge.base": judge.base is not None}
        if judge.kind != "implicit" and any(implicit_only.values()):
            keys = ", ".join(k for k, on in implicit_only.items() if on)
            raise ValueError(f"{keys} choose the implicit judge's models; judge.kind={judge.kind} has its own judge")
        if isinstance(judge.length_penalty, float) and not math.isfinite(judge.length_penalty):
            raise ValueError("judge.length_penalty must be none, fit or a finite number")
        if isinstance(judge.length_penalty, float) and judge.length_penalty < 0:
            raise ValueError(
                f"judge.length_penalty={judge.length_penalty:g} would reward longer replies (the score is s - alpha * "
                "tokens): give alpha >= 0, or fit, which may choose a negative alpha when the labels favour short "
                "replies"
            )
        if judge.consistency != "none" and self.loop.keep_models < 2:
            raise ValueError("judge.consistency needs loop.keep_models >= 2 (it scores with pi_{i-2})")
        # pi_init against itself (or pi_0 against itself without a seed stage): every score would be 0.
        same_as_initial = judge.policy == "initial" or (judge.policy == "seed" and not self.loop.seed_stage)
        if same_as_initial and judge.reference == "initial" and (judge.base is None or judge.base_weight == 0):
            raise ValueError(
                f"judge.policy={judge.policy} is the initial model, and so is judge.reference=initial: every score "
                "would be 0. Set judge.reference (or judge.base) to the base model before SFT."
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_yaml())
