"""How far generation is from the hardware's limit: the memory-bandwidth bound of the decode step, and the
KV-cache engines of transformers' ``generate`` side by side (used by scripts/gpu_check.py).

A decode step reads every weight once and each sequence's KV cache so far, and yields one token per
sequence: with B sequences at mean context C, at most ``B x bandwidth / (weight bytes + B x C x KV bytes per
token)`` tokens/s. The bandwidth is measured (a large device-to-device copy), not looked up.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

# Reads + writes of one copy: the figure GPU makers quote is the sum.
COPY_BYTES = {"cuda": 2**30, "cpu": 2**28}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_bandwidth(device: torch.device, reps: int = 5) -> float:
    """Bytes/s of a large copy on ``device`` (read + write), the median of ``reps``."""
    size = COPY_BYTES[device.type]
    source = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    times = []
    for _ in range(reps):
        sync(device)
        started = time.perf_counter()
        target.copy_(source)
        sync(device)
        times.append(time.perf_counter() - started)
    return 2 * size / statistics.median(times)


def decode_bound(weight_bytes: int, kv_bytes_per_token: int, rows: int, mean_context: float, bandwidth: float) -> float:
    """Tokens/s a decode step of ``rows`` sequences at ``mean_context`` tokens cannot exceed at ``bandwidth``."""
    step_bytes = weight_bytes + rows * mean_context * kv_bytes_per_token
    return rows * bandwidth / step_bytes


def generate_figures(run_dir: Path, stage: str, num_samples: int) -> dict[str, Any] | None:
    """Rows per decode step and mean context of a run's generate stage (its generations and manifest)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"].get(stage) or {}
    generations = run_dir / stage.split("/")[0] / "generations.jsonl"
    if not generations.is_file() or "generation_batch_size" not in manifest:
        return None
    rows = [json.loads(line) for line in generations.read_text().splitlines() if line.strip()]
    prompt = statistics.mean(len(r["prompt_ids"]) for r in rows)
    reply = statistics.mean(r["num_tokens"] for r in rows)
    batch = min(manifest["generation_batch_size"], len({r["prompt_id"] for r in rows}))
    return {
        "rows": batch * num_samples,
        "mean_context": prompt + reply / 2,  # the KV cache grows from the prompt to prompt + reply
        "tokens_per_second": manifest.get("metrics", {}).get("tokens_per_second"),
    }


SAFETENSORS_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}


def model_bytes(model_dir: Path) -> tuple[int, int]:
    """(weight bytes as saved, KV bytes per token in the weights' dtype) of a saved model."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from spreadpref.models.sampling import kv_bytes_per_token

    total, itemsize = 0, 4
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                tensor = handle.get_slice(key)
                itemsize = SAFETENSORS_BYTES[tensor.get_dtype()]
                count = 1
                for n in tensor.get_shape():
                    count *= n
                total += count * itemsize
    dtype = torch.bfloat16 if itemsize == 2 else torch.float32
    return total, kv_bytes_per_token(AutoConfig.from_pretrained(model_dir).get_text_config(), dtype)


def bound_rows(run_dir: Path, model_dir: Path, num_samples: int, bandwidth: float) -> list[dict[str, Any]]:
    """Per generate stage of a finished run: measured tokens/s, the bound, and the share of it reached."""
    weight_bytes, kv_bytes = model_bytes(model_dir)
    rows = []
    for round_dir in sorted(run_dir.glob("round-*")):
        stage = f"{round_dir.name}/generate"
        figures = generate_figures(run_dir, stage, num_samples)
        if figures is None:
            continue
        bound = decode_bound(weight_bytes, kv_bytes, figures["rows"], figures["mean_context"], bandwidth)
        measured = figures["tokens_per_second"]
        rows.append(
            {
                "stage": stage,
                "rows_per_step": figures["rows"],
                "mean_context": round(figures["mean_context"], 1),
                "tokens_per_second": measured,
                "bound_tokens_per_second": round(bound, 1),
                "share_of_bound": None if measured is None else round(measured / bound, 3),
            }
        )
    return rows


def cache_engines(model_dir: Path, device: torch.device, dtype: torch.dtype, prompts: int = 32) -> dict[str, Any]:
    """``generate`` with a dynamic cache, a static cache, and a static cache with a compiled decode step
    (``reduce-overhead``: CUDA graphs on a GPU), greedy, 64 new tokens for each of the same random prompts:
    tokens/s of each after a warm-up call. A side that cannot run here (no C compiler for the CPU's compiled
    step) is reported with its error."""
    from transformers import AutoModelForCausalLM, CompileConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, model.config.vocab_size - 10, (prompts, 48), generator=generator).to(device)
    compiled = CompileConfig(mode="reduce-overhead")
    compiled._compile_all_devices = True  # transformers compiles on GPUs only unless told: the CPU side is measured too
    sides = {
        "dynamic cache": {"disable_compile": True},
        "static cache": {"cache_implementation": "static", "disable_compile": True},
        "static cache, compiled step": {"cache_implementation": "static", "compile_config": compiled},
    }
    results: dict[str, Any] = {}
    for name, extra in sides.items():
        kwargs = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, **extra)
        try:
            with torch.no_grad():
                for batch in (input_ids, input_ids):  # warm-up (compilation, graph capture), then the measured call
                    sync(device)
                    started = time.perf_counter()
                    out = model.generate(batch, attention_mask=torch.ones_like(batch), **kwargs)
                    sync(device)
            seconds = time.perf_counter() - started
            generated = (out.shape[1] - input_ids.shape[1]) * prompts
            results[name] = {"tokens_per_second": round(generated / seconds, 1), "seconds": round(seconds, 2)}
        except Exception as err:  # noqa: BLE001 - reported, not fatal: the check goes on
            results[name] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
    del model
    return results
