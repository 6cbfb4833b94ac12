"""The generate stage: K sampled replies per prompt from pi_{i-1}, with the built-in engine or vLLM.

Writes the round's prompts (``prompts.jsonl``) and its samples (``generations.jsonl``, resumable
batch by batch; see :mod:`spreadpref.models.sampling` for seeding and cut-off replies).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from transformers import PreTrainedTokenizerBase

from spreadpref.config import GenerationSettings, ModelSettings
from spreadpref.data.artifacts import Sample
from spreadpref.data.records import PromptRecord
from spreadpref.dpo.checkpoints import save_pretrained_atomically
from spreadpref.models.loading import is_adapter_directory, load_for_inference, resolve_model_path
from spreadpref.models.sampling import generate_samples, generate_samples_vllm
from spreadpref.models.vllm_backend import VLLM_LOG
from spreadpref.runtime import distributed
from spreadpref.runtime.files import temporary_name, write_jsonl
from spreadpref.runtime.progress import console
from spreadpref.spa.context import StageContext

PROMPTS_FILE = "prompts.jsonl"
OUTPUTS = (PROMPTS_FILE, Sample.FILE, VLLM_LOG)


@dataclass
class GenerateResult:
    samples: list[Sample]
    metrics: dict[str, Any]


class BackendChoice(NamedTuple):
    name: str  # hf or vllm
    reason: str


def choose_backend(settings: GenerationSettings, prompts: int) -> BackendChoice:
    """The backend that samples a round of ``prompts`` prompts, and why (``backend=auto`` decides here)."""
    if settings.backend != "auto":
        return BackendChoice(settings.backend, f"generation.backend={settings.backend}")
    if importlib.util.find_spec("vllm") is None:
        return BackendChoice("hf", "auto: vLLM is not installed")
    least = settings.auto_vllm_min_prompts
    if prompts < least:
        return BackendChoice("hf", f"auto: {prompts} prompts, fewer than generation.auto_vllm_min_prompts={least}")
    return BackendChoice("vllm", f"auto: vLLM is installed and the round has {prompts} prompts (>= {least})")


@contextlib.contextmanager
def full_model_directory(
    settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, policy: str | Path, scratch: Path
) -> Iterator[str]:
    """A directory vLLM can load for ``policy``: the model itself, or for a LoRA adapter a temporary merged copy
    (with ``tokenizer``) in ``scratch`` (removed afterwards, and by the next run if this one is killed), so a
    LoRA run keeps no full copy of any round's model."""
    path = resolve_model_path(str(policy))
    if not is_adapter_directory(path):
        yield path
        return
    merged = Path(scratch) / temporary_name("policy", "merged")
    shutil.rmtree(merged, ignore_errors=True)
    try:
        if distributed.is_main():
            model = load_for_inference(settings, path, merge_adapter=True)
            save_pretrained_atomically(model, tokenizer, merged)
            del model
            gc.collect()
        distributed.barrier()
        yield str(merged)
    finally:
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(merged, ignore_errors=True)


def generate_stage(
    ctx: StageContext,
    prompts: list[PromptRecord],
    policy: str | Path,
    out_file: Path | None = None,
    write_prompts: bool = True,
    backend: BackendChoice | None = None,
    batch_size: int | None = None,
    on_batch_size: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Sample ``generation.num_samples`` replies per prompt from ``policy`` into ``out_file``.

    ``out_file`` defaults to the context's generations.jsonl; ``write_prompts`` also records the
    prompts beside it (the loop does, to show what each round saw). ``backend`` is the choice the
    caller already made (a resumed stage keeps the backend it started with); by default it is made here.
    ``batch_size`` and ``on_batch_size``: the prompts per batch a resumed stage started with, and where a new
    stage reports the size it chose (see :func:`~spreadpref.models.sampling.generate_samples`).
    """
    config = ctx.config
    out = out_file or ctx.path(Sample.FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    if write_prompts and distributed.is_main():
        write_jsonl(out.parent / PROMPTS_FILE, [{"id": p.id, "prompt": p.prompt} for p in prompts])
    chosen, reason = backend or choose_backend(config.generation, len(prompts))
    if config.generation.backend == "auto":
        console.print(f"Generating with the {chosen} backend ({reason}).")
    started = time.perf_counter()
    # What both engines are given besides the model: the prompts, the settings, the seed and where parts go.
    task = (ctx.tokenizer, prompts, config.generation, config.data, config.seed, out, ctx.round_index)
    if chosen == "vllm":
        with full_model_directory(config.model, ctx.tokenizer, policy, out.parent) as model_path:
            samples = generate_samples_vllm(model_path, *task, dtype=config.model.dtype)
    else:
        # A LoRA policy is sampled with its adapter folded in: the same model, without the adapter's extra products.
        model = load_for_inference(config.model, policy, merge_adapter=True)
        samples = generate_samples(model, *task, batch_size=batch_size, on_batch_size=on_batch_size)
        del model
        gc.collect()
    seconds = time.perf_counter() - started
    tokens = sum(s.num_tokens for s in samples)
    metrics = {
        "backend": chosen,
        "backend_reason": reason,
        "prompts": len(prompts),
        "samples": len(samples),
        "generated_tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
        "cut_off_fraction": sum(s.cut_off for s in samples) / max(len(samples), 1),
    }
    return GenerateResult(samples, metrics)
