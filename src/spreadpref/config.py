"""Typed configuration: one section per concern, a YAML file plus dotted command-line overrides.

Overrides such as ``train.learning_rate=5e-7`` are converted to the field's declared type (the
reference implementation passed them on as strings). Unknown keys are rejected with the nearest
valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from spreadpref.errors import ConfigError, SpreadprefError
from spreadpref.runtime.files import atomic_write_text

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"


class Section(BaseModel):
    # allow_inf_nan=False: `.nan` or `.inf` from YAML is refused like any other bad number.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraSettings(Section):
    enabled: bool = Field(False, description="Train a LoRA adapter (peft); the reference is the adapter-off base.")
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    merge_on_save: bool = Field(False, description="Also save the merged full model in `model/`.")


class ModelSettings(Section):
    name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="Local Hugging Face directory, hub id, or `embedded:SmolLM2-135M-Instruct`.",
    )
    tokenizer: str | None = Field(None, description="Defaults to `name_or_path`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype at load time.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA when available.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub; off unless you trust it.")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2, eager.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    chat_template: str | None = Field(
        None,
        description="Override the tokenizer's chat template: a Jinja string, or a .jinja file. Saved with every "
        "model trained, so the model keeps the template it learnt with.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the chat template, e.g. {enable_thinking: false}; applied everywhere the "
        "template renders.",
    )
    lora: LoraSettings = LoraSettings()


class ColumnMap(Section):
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    label: str = "label"
    weight: str = "weight"
    id: str = "id"
    ref_chosen_logps: str = "ref_chosen_logps"
    ref_rejected_logps: str = "ref_rejected_logps"
    score_chosen: str = "score_chosen"
    score_rejected: str = "score_rejected"


class DataSettings(Section):
    train: str = Field(
        "builtin:seed_pairs",
        description="JSONL, JSON or Parquet file, a `save_to_disk` directory, a hub dataset id, "
        "or `builtin:seed_pairs`.",
    )
    prompts: str = Field("builtin:prompts", description="Unlabelled prompt pool for later rounds.")
    split: str = Field("train", description="Split of a hub or save_to_disk dataset.")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    columns: ColumnMap = ColumnMap()
    system_prompt: str | None = Field(None, description="Prepended as a system message when a prompt has none.")
    max_length: int = Field(512, gt=1, description="Prompt + reply tokens.")
    max_prompt_length: int = Field(256, gt=0, description="The start of longer prompts is cut.")
    skip_invalid: bool = Field(False, description="Skip and count bad records instead of stopping.")
    scores: Literal["drop_ties", "soft", "ignore"] = Field(
        "drop_ties",
        description="Rows with score columns (UltraFeedback's score_chosen / score_rejected): drop_ties: the label is "
        "1 (or 0 when the scores disagree with the columns) and equal scores are dropped and counted; soft: label = "
        "sigmoid(score_chosen - score_rejected); ignore: the label column alone decides.",
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N records.")
    eval: str | None = Field(
        None,
        description="Held-out labelled pairs (any format of data.train), scored while training: eval_ metrics (TRL's names).",
    )
    eval_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="`spreadpref train`: share of data.train held out and scored while training (when data.eval is "
        "not set; at least 8 pairs, and only when at least 8 remain to train on, as data.seed_holdout). "
        "`spreadpref run` scores the seed pairs of data.seed_holdout instead.",
    )
    seed_holdout: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="`spreadpref run`: share of the seed pairs held out from the seed stage (at least 8 pairs; "
        "0: none). Each round reports the self-judge's agreement with their human labels, with a 95% interval.",
    )

    @model_validator(mode="after")
    def _prompt_shorter_than_total(self) -> DataSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be smaller than "
                f"data.max_length ({self.max_length}), or no reply token would fit"
            )
        return self


class TrainSettings(Section):
    beta: float = Field(0.1, gt=0.0, description="DPO inverse temperature.")
    label_smoothing: float = Field(
        0.0, ge=0.0, le=0.5, description="Constant soft target q = 1 - eps for every pair (cDPO)."
    )
    learning_rate: float = Field(5e-7, gt=0.0, description="The paper's 7B value; small models need more.")
    num_epochs: float = Field(3.0, gt=0.0, description="3 for seeds under ~2K pairs (the method), else 1.")
    max_steps: int = Field(-1, description="Overrides num_epochs when > 0.")
    per_device_batch_size: int = Field(2, gt=0, description="Pairs per device and micro-batch.")
    gradient_accumulation_steps: int = Field(16, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    optimizer: str = "adamw_torch"
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Autocast on GPU; keep no on CPU.")
    logging_steps: int = Field(1, gt=0)
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    report_to: list[str] = Field(default_factory=lambda: ["none"], description="tensorboard, wandb, ...")
    disable_dropout: bool = Field(True, description="As TRL: dropout would make policy and reference differ.")
    logprob_batch_size: int = Field(8, gt=0, description="Pairs per no-grad batch (reference, evaluation).")
    ref_cache_dir: str | None = Field(None, description="Defaults to <cache>/ref_logps.")
    reference_model: str | None = Field(
        None, description="Reference for DPO; defaults to the starting policy (pi_init for the seed stage)."
    )
    evaluate_after: bool = Field(True, description="Score the training pairs with the trained policy at the end.")
    require_update: bool = Field(
        False,
        description="Stop with an error when a stage leaves the weights unchanged (every step at learning rate 0: "
        "fewer steps than the warm-up); false: a warning, and the round is marked in the table.",
    )
    eval_steps: int | None = Field(
        None, gt=0, description="Score the held-out pairs every N optimizer steps; default ten times a stage."
    )
    keep_checkpoints: bool = Field(
        False,
        description="Keep the Trainer checkpoints (optimizer state: twice the model's size) of a finished stage; "
        "false: removed once the stage's model is saved (they are only needed to resume an unfinished one).",
    )
    group_by_length: bool = Field(
        True,
        description="Batches of pairs of similar length (less padding); false: shuffled, as the paper. Also "
        "decides which pairs share a self-refinement window: see docs/spa-method.md.",
    )


AUTO_VLLM_MIN_PROMPTS = 64  # see docs/performance.md, "Generation backends"


class GenerationSettings(Section):
    """Sampling the K replies per prompt in each round."""

    num_samples: int = Field(
        2, ge=1, description="K replies per prompt (the loop needs 2 or more); chosen = best, rejected = worst."
    )
    temperature: float = Field(
        0.7, ge=0.0, description="Sampling temperature; above 0 in the loop, where K greedy replies would all be equal."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(300, gt=0, description="Replies cut off here are kept, marked, and get no EOS.")
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        8,
        description="Prompts per generation batch (x num_samples sequences). auto: as many as a KV cache of "
        "generation.batch_memory_gb holds (reckoned from the model's shape, so every machine and every resume "
        "draws the same batches); all of the round's prompts when they fit.",
    )
    batch_memory_gb: float = Field(
        2.0, gt=0, description="With batch_size=auto: the memory a batch's KV cache and logits may take."
    )
    backend: Literal["hf", "vllm", "auto"] = Field(
        "hf",
        description="hf: transformers generate (default); vllm: vLLM offline engine in a subprocess; auto: vllm "
        "when it is installed and the round has at least generation.auto_vllm_min_prompts prompts, else hf.",
    )
    auto_vllm_min_prompts: int = Field(
        AUTO_VLLM_MIN_PROMPTS,
        gt=0,
        description="backend=auto: the round size from which vLLM's engine start pays off (measured: "
        "docs/performance.md).",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="vllm backend: GPUs per model copy.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vllm backend: share of GPU memory.")


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


# ---------------------------------------------------------------------------------------------
# Loading and overrides


DEFAULT_PROFILE = "spa-cpu"  # the shipped config the command line uses without --config


def url_port_problem(url: str) -> str | None:
    """urllib's complaint about a URL's port (out of range, not a number), else None."""
    import urllib.parse  # noqa: PLC0415

    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - checked only when read
    except ValueError as err:
        return str(err)
    return None


def shipped_configs_dir() -> Path:
    """Where the package keeps its configs (the repository's configs/ links to it)."""
    from importlib import resources  # noqa: PLC0415 - only when a config is looked up by name

    return Path(str(resources.files("spreadpref").joinpath("configs")))


def shipped_config(name: str) -> Path | None:
    """A config shipped with the package, by name (``spa-cpu``, ``zephyr-7b-spa.yaml``, ``configs/spa-cpu.yaml``)."""
    stem = Path(name).name
    candidate = shipped_configs_dir() / (stem if stem.endswith(".yaml") else f"{stem}.yaml")
    return candidate if candidate.is_file() else None


def default_profile_path() -> Path:
    """The bundled CPU profile on the embedded model: what ``spreadpref run`` uses without ``--config``."""
    return shipped_configs_dir() / f"{DEFAULT_PROFILE}.yaml"


def shipped_config_names() -> list[str]:
    """The names of the configs shipped with the package, for ``load_config(name)`` and ``--config NAME``."""
    return sorted(p.stem for p in shipped_configs_dir().glob("*.yaml"))


def load_config(
    path: str | Path | None = DEFAULT_PROFILE, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """The configuration, as the command line builds it: the schema's defaults, a YAML file, then
    ``dotted.key=value`` overrides.

    ``path``: a YAML file, or the name of a config shipped with the package (``"spa-cpu"``,
    ``"zephyr-7b-spa"``; ``"configs/seed-cpu.yaml"`` also works outside the repository) when no such file
    exists here. Left out, the bundled CPU profile on the embedded model (the command line's default);
    ``None``, the schema's bare defaults. ``overrides``: ``["train.beta=0.2"]`` or a dict
    (``{"train.beta": 0.2}`` or nested sections).
    """
    raw: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        resolved = Path(path)
        if not resolved.is_file() and (shipped := shipped_config(str(path))) is not None:
            resolved = shipped
        source = str(resolved)
        raw = _read_yaml(resolved)
    if isinstance(overrides, dict):
        overrides = _dict_overrides(overrides)
    for item in overrides or []:
        key, value = _split_override(item)
        _set_override(raw, key, value)
    check_unknown_keys(raw, Config)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe_validation_error(err, source)) from None


MAX_YAML_VALUES = 100_000  # a config has hundreds; nested aliases can expand a ten-line file to billions


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (computed once per node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once; the loader refuses recursion anyway
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_YAML_VALUES + 1)
    return sizes[id(node)]


def _dict_overrides(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"beta": 0.2}, "loop.rounds": 1}`` -> ``["train.beta=0.2", "loop.rounds=1"]`` (YAML values)."""
    items = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and _is_section_path(dotted):
            items += _dict_overrides(value, f"{dotted}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            items.append(f"{dotted}={text.removesuffix('...').strip()}")
    return items


def _is_section_path(dotted: str) -> bool:
    model: type[BaseModel] | None = Config
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _section_type(model.model_fields[part].annotation)
    return model is not None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} (shipped configs, by name: {', '.join(shipped_config_names())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root, {}) > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values; a configuration needs "
                "a few hundred. Write the values out, or use fewer nested aliases."
            )
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_short_repr(str(err), 500)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.beta=0.1)")
    key, value = item.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key, value


def _set_override(raw: dict[str, Any], dotted: str, text: str) -> None:
    """Place an override into the raw dict, converted to the type its field declares."""
    parts = dotted.split(".")
    model: type[BaseModel] = Config
    node = raw
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), part, list(fields)))
        annotation = fields[part].annotation
        if depth == len(parts) - 1:
            node[part] = _convert_override(dotted, text, annotation)
            return
        sub = _section_type(annotation)
        if sub is None:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        model = sub
        existing = node.get(part)
        if not isinstance(existing, dict):
            existing = {}
            node[part] = existing
        node = existing


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _convert_override(dotted: str, text: str, annotation: Any) -> Any:
    """Turn the command-line string into the field's type: floats stay floats, lists parse as YAML."""
    adapter = TypeAdapter(annotation)
    stripped = text.strip()
    allows_none = _allows_none(annotation)
    if allows_none and stripped.lower() in {"null", "none", "~", ""}:
        return None
    candidates: list[Any] = [stripped]
    try:
        parsed = yaml.safe_load(stripped)
    except yaml.YAMLError:
        parsed = None
    else:
        # `[a,b]` is a list wherever a list is allowed, even where a plain string would also be (lora.target_modules).
        if isinstance(parsed, list | dict):
            candidates.insert(0, parsed)
        else:
            candidates.append(parsed)
        if _accepts_list(annotation) and not isinstance(parsed, list | dict) and parsed is not None:
            candidates.append([parsed])  # one value for a list key: a list of one (train.report_to=tensorboard)
    errors = []
    for candidate in candidates:
        try:
            value = adapter.validate_python(candidate)
        except ValidationError as err:
            errors.append(err)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"override {dotted}={text!r}: must be a finite number")
        return value
    detail = errors[-1].errors()[0]["msg"] if errors else "cannot parse"
    raise ConfigError(f"override {dotted}={text!r}: {detail} (expected {_type_name(annotation)})")


def _accepts_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(
        _accepts_list(arg)
        for arg in typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
    )


def _allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is type(None)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " / ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is Annotated:  # a constrained type (Annotated[int, Field(gt=0)]): its base type's name
        return _type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# TRL's and transformers' argument names that users bring by habit (flat YAML keys, script flags), and
# spreadpref's key for each; the command line's flag hints are built from the same table.
TRL_KEYS = {
    "model_name_or_path": "model.name_or_path",
    "dataset_name": "data.train",
    "dataset_config": "data.subset",
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "beta": "train.beta",
    "label_smoothing": "train.label_smoothing",
    "max_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length",
    "bf16": "model.dtype",
    "report_to": "train.report_to",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup_ratio": "train.warmup_ratio",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "use_peft": "model.lora.enabled",
    "lora_r": "model.lora.r",
    "lora_alpha": "model.lora.alpha",
    "output_dir": "output_dir",
    "seed": "seed",
    "push_to_hub": "hub.push",
    "hub_model_id": "hub.model_id",
    "hub_private_repo": "hub.private",
}


def check_unknown_keys(raw: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Reject keys the schema does not know, naming the closest valid one (or the spreadpref key of a TRL one)."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    trl_keys = [str(key) for key in raw if not prefix and key not in fields and key in TRL_KEYS]
    if trl_keys:
        mapped = "; ".join(f"{key} -> {TRL_KEYS[key]}" for key in trl_keys)
        raise ConfigError(
            f"{', '.join(repr(k) for k in trl_keys)} {'is a TRL key' if len(trl_keys) == 1 else 'are TRL keys'}: "
            f"spreadpref's config is nested by section ({mapped}). For example, `learning_rate: 5e-7` at the "
            "top becomes `train:\n  learning_rate: 5e-7` (`spreadpref config --reference` lists every key)."
        )
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(dotted, str(key), list(fields)))
        sub = _section_type(fields[key].annotation)
        if sub is not None:
            check_unknown_keys(value, sub, prefix=f"{dotted}.")


def _unknown_key_message(dotted: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {dotted!r}{hint} Valid keys here: {', '.join(sorted(valid))}"


def _describe_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration (from {source}):"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        got = item.get("input")
        shown = f" (got {_short_repr(got)})" if not isinstance(got, dict | list) else ""
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def flat_settings(config: Config) -> dict[str, Any]:
    """Every setting of ``config`` by its dotted key (``train.beta``; a dict setting by its own keys), as JSON."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    return flat(config.model_dump(mode="json"))


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ between two configurations (output_dir aside), for messages."""
    a, b = flat_settings(old), flat_settings(new)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k != "output_dir" and a.get(k) != b.get(k)
    ]


def describe_changes(saved_config: Path, new: Config, limit: int = 8) -> str:
    """' Changed since: a -> b, ...' against the config.yaml a run saved, or '' when it cannot be read."""
    try:
        old = load_config(saved_config)
    except SpreadprefError:
        return ""
    changes = changed_keys(old, new)
    if not changes:
        return ""
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return f" Changed since that run: {'; '.join(_short_repr(c, 120) for c in changes[:limit])}{more}."


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_library_settings(config: Config) -> None:
    """Settings that transformers checks only after the model has loaded, checked before: the scheduler,
    the optimizer and the report_to integrations. Deferred import: `spreadpref config` must stay instant."""
    from transformers.integrations import get_available_reporting_integrations  # noqa: PLC0415
    from transformers.trainer_utils import SchedulerType  # noqa: PLC0415
    from transformers.training_args import OptimizerNames  # noqa: PLC0415

    train = config.train
    schedulers = [s.value for s in SchedulerType]
    if train.lr_scheduler not in schedulers:
        raise ConfigError(f"train.lr_scheduler={train.lr_scheduler!r} is not a scheduler: use one of {schedulers}")
    optimizers = [o.value for o in OptimizerNames]
    if train.optimizer not in optimizers:
        close = difflib.get_close_matches(train.optimizer, optimizers, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"one of {optimizers}"
        raise ConfigError(f"train.optimizer={train.optimizer!r} is not an optimizer transformers knows: {hint}")
    wanted = [r for r in train.report_to if r not in ("none", "all")]
    available = get_available_reporting_integrations()
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ConfigError(
            f"train.report_to={train.report_to}: {', '.join(missing)} is not installed here (installed: "
            f"{', '.join(available) or 'none'}). Install it (pip install {' '.join(missing)}) or set "
            "train.report_to=none."
        )


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the schema itself."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema by `spreadpref config --reference`; do not edit by hand.",
        "Every key can be set in the YAML file or on the command line as `section.key=value`.",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        subsections = []
        for name, info in model.model_fields.items():
            sub = _section_type(info.annotation)
            if sub is not None:
                subsections.append((name, sub))
                continue
            default = info.get_default(call_default_factory=True)
            note = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | `{_type_name(info.annotation)}` | `{default!r}` | {note} |")
        if rows:
            title = prefix.rstrip(".") or "top level"
            doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ and model is not Config else ""
            lines.extend([f"## {title}", ""] + ([doc, ""] if doc else []))
            lines.extend(["| key | type | default | notes |", "|---|---|---|---|", *rows, ""])
        for name, sub in subsections:
            walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return "\n".join(lines)
