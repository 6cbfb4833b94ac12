"""The settings of the model, the data, training and generation: one pydantic section per concern."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

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
        "generation.batch_memory_gb holds on a CPU (reckoned from the model's shape, so every machine draws the "
        "same batches), and on a GPU of half the memory left free under generation.gpu_memory_utilization once "
        "the model is loaded; all of the round's prompts when they fit. A resumed stage keeps the size it "
        "started with (the manifest records it).",
    )
    batch_memory_gb: float = Field(
        2.0, gt=0, description="With batch_size=auto on a CPU: the memory a batch's KV cache and logits may take."
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
    gpu_memory_utilization: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="Share of the GPU's memory generation may use: vLLM's engine, or batch_size=auto (hf).",
    )
