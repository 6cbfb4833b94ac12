"""The GPU check: full SPA runs in bf16 on random models of real shapes, and training against TRL; nothing to download.

    bash scripts/gpu-check.sh                       # on a CUDA machine: about 8 minutes on one large GPU
    python scripts/gpu_check.py --device cpu        # the same code on the tiny shape (what CI runs)

Needs only this repository, a CUDA torch, transformers, accelerate and peft; the other pure-Python
dependencies (datasets, trl, gguf, pydantic and their needs, about 5 MB of wheels) can be carried to an
offline node (docs/performance.md, "GPU check"). For each shape of ``--shapes`` (SmolLM2-135M, Llama-2-7B
with LoRA, SmolLM2-1.7B; random weights initialised on the GPU, a BPE tokenizer of the real vocabulary
size trained in seconds) it runs the default `spreadpref run` (seed stage + 2 rounds of 32 prompts) in
bf16 weights with bf16 autocast, and records each stage's seconds and tokens/s, the peak GPU memory,
and two checks: every stage completes with finite losses, and the first step of each training stage has
margin 0 and loss ln 2 (the stage's reference is its starting policy). Each generate stage's tokens/s is put
beside the memory-bandwidth bound of its decode step (scripts/decode_bound.py: weights + KV cache read once
per step, at the bandwidth measured on the device), and on the first shape transformers' `generate` runs with
a dynamic cache, a static cache and a static cache with a compiled step (CUDA graphs) side by side. Then
benchmarks/bench_train.py
times one epoch of the first shape's round-1 pairs against TRL's DPOTrainer (default and precomputed
reference). Shapes that would start after ``--budget-minutes`` are skipped and said so. Writes
gpu_check.json and gpu_check.md to ``--out-dir`` after every shape; exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode_bound  # noqa: E402 - scripts/ is not a package

from spreadpref.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE_RUNS = {  # shape name -> (model shape, extra overrides)
    "tiny": ("tiny", ["loop.prompts_per_round=[4,4]", "generation.max_new_tokens=16"]),
    "tiny-lora": ("tiny", ["model.lora.enabled=true", "loop.prompts_per_round=[4,4]", "generation.max_new_tokens=16"]),
    "135m": ("135m", []),
    "7b-lora": ("7b", ["model.lora.enabled=true"]),
    # Full fine-tuning at this size takes the paper's learning rate (the profile's 5e-5 is for 135M on a CPU):
    # at 5e-5 the random 1.7B model collapsed to one reply per prompt in round 1, and round 2 had no pairs.
    "1.7b": ("1.7b", ["train.learning_rate=5e-7"]),
}
LN2 = math.log(2)
GRACE = 90  # seconds a shape started before the budget ran out may run past it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPE_RUNS))
    parser.add_argument("--out-dir", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="no shape starts after this")
    parser.add_argument("--trl-reps", type=int, default=2, help="repetitions of each side against TRL (0: none)")
    parser.add_argument("--keep-models", action="store_true", help="keep the random models (a 7B one is 13 GB)")
    parser.add_argument(
        "--no-cache-engines",
        dest="cache_engines",
        action="store_false",
        help="skip generate's dynamic / static / compiled-static cache side by side on the first shape",
    )
    args = parser.parse_args(argv)
    args.shapes = args.shapes or (["135m", "7b-lora", "1.7b"] if args.device == "cuda" else ["tiny"])
    return args


def run_overrides(args: argparse.Namespace, model_dir: Path, out: Path, extra: list[str]) -> list[str]:
    precision = ["model.dtype=bfloat16", "train.mixed_precision=bf16"] if args.device == "cuda" else []
    return [
        f"model.name_or_path={model_dir}",
        f"model.device={args.device}",
        *precision,
        f"output_dir={out}",
        "train.logging_steps=1",
        *extra,
    ]


def child_env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        SPREADPREF_NO_PROGRESS="1",
        TRANSFORMERS_VERBOSITY="error",
    )


def training_checks(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First step: margin 0 and loss ln 2 (the policy is its own reference); every logged loss finite."""
    steps = [row for row in log_history if "loss" in row]
    first = steps[0] if steps else {}
    return {
        "steps_logged": len(steps),
        "first_step_loss": first.get("loss"),
        "first_step_margin": first.get("rewards/margins"),
        "losses_finite": all(math.isfinite(row["loss"]) for row in steps),
        "passed": bool(steps)
        and abs(first.get("rewards/margins", 1.0)) < 1e-3
        and abs(first["loss"] - LN2) < 1e-3
        and all(math.isfinite(row["loss"]) for row in steps),
    }


def run_figures(out: Path) -> dict[str, Any]:
    """Seconds and tokens/s of every stage, the peak GPU memory, and the training checks, from a finished run."""
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    summary = json.loads((out / "summary.json").read_text())
    stages: dict[str, Any] = {}
    for name, entry in manifest.items():
        metrics = entry.get("metrics", {})
        row = {"status": entry["status"], "seconds": metrics.get("seconds")}
        rate = metrics.get("tokens_per_second", metrics.get("train_tokens_per_second"))
        if rate is not None:
            row["tokens_per_second"] = rate
        stages[name] = row
    checks = {
        stage: training_checks(json.loads((out / stage / "log_history.json").read_text()))
        for stage in ("seed", *(f"round-{r}/train" for r in summary.get("rounds", {})))
        if (out / stage / "log_history.json").is_file()
    }
    complete = all(row["status"] == "complete" for row in stages.values())
    return {
        "stages": stages,
        "peak_gpu_memory_gb": summary.get("peak_gpu_memory_gb"),
        "training_checks": checks,
        "passed": complete and bool(checks) and all(c["passed"] for c in checks.values()),
    }


def check_shape(args: argparse.Namespace, name: str, deadline: float) -> dict[str, Any]:
    import torch

    from spreadpref.testing import make_shaped_model_dir

    shape, extra = SHAPE_RUNS[name]
    model_dir, out = args.out_dir / "models" / shape, args.out_dir / name
    started = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        make_shaped_model_dir(model_dir, shape, device=args.device, dtype=dtype)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    built = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "spreadpref", "run", *run_overrides(args, model_dir, out, extra)]
    print("Running:", " ".join(command), flush=True)
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=deadline + GRACE - time.time()
        )
    except subprocess.TimeoutExpired:
        return {"model_seconds": round(built, 1), "passed": False, "error": f"stopped {GRACE} s past --budget-minutes"}
    result: dict[str, Any] = {
        "model_seconds": round(built, 1),
        "run_seconds": round(time.perf_counter() - started - built, 1),
    }
    if done.returncode != 0:
        return {**result, "passed": False, "error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    figures = {**result, "parameters": parameter_count(model_dir), **run_figures(out)}
    if args.bandwidth:
        samples = load_config(str(out / "config.yaml")).generation.num_samples
        figures["decode"] = decode_bound.bound_rows(out, model_dir, samples, args.bandwidth)
    return figures


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def trl_benchmark(args: argparse.Namespace, name: str, deadline: float) -> dict[str, Any]:
    """benchmarks/bench_train.py on the shape's own round-1 pairs (its finished run is the benchmark's input)."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("trl") is None:
        # README command 1 installs no TRL: the comparison is skipped and said, not a failure of the checks.
        return {"skipped": "TRL is not installed (pip install -e '.[bench]' adds it), so the comparison did not run"}
    shape, _ = SHAPE_RUNS[name]
    model_dir, run_dir = (args.out_dir / "models" / shape).resolve(), (args.out_dir / name).resolve()
    workdir = (args.out_dir / "bench").resolve()
    bf16 = args.device == "cuda"
    options = [
        "--model",
        str(model_dir),
        "--device",
        args.device,
        "--workdir",
        str(workdir),
        *(["--bf16"] if bf16 else []),
    ]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common  # noqa: PLC0415 - benchmarks/ is not a package

    common.record_inputs(common.parser("").parse_args(options), str(model_dir), run_dir, seed_only=run_dir)
    result = workdir / "bench_train.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_train.py"),
        *options,
        *("--out", str(result), "--reps", str(args.trl_reps), "--sides", "spreadpref,trl-default,trl-precompute"),
    ]
    print("Running:", " ".join(command), flush=True)
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=deadline + GRACE - time.time()
        )
    except subprocess.TimeoutExpired:
        return {"passed": False, "error": f"stopped {GRACE} s past --budget-minutes"}
    if done.returncode != 0 or not result.is_file():
        return {"passed": False, "error": f"exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}"}
    data = json.loads(result.read_text())
    stats = data["stats"]
    return {
        "passed": bool(data["check"] and data["check"]["passed"]),
        "check": data["check"],
        "pairs_per_second": {side: stats[side]["pairs_per_second"]["median"] for side in stats},
        "peak_gpu_gib": {side: stats[side].get("peak_cuda_gib", {}).get("median") for side in stats},
        "speedup": {
            side: stats[side]["spreadpref_speedup"]["median"] for side in stats if "spreadpref_speedup" in stats[side]
        },
        "markdown": result.with_suffix(".md").read_text() if result.with_suffix(".md").is_file() else None,
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"GPU check on {env['device']} (torch {env['torch']}, transformers {env['transformers']}): "
        f"{'passed' if report['passed'] else 'FAILED: ' + failure_reasons(report)}",
        "",
        "| shape | parameters | stage | seconds | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for name, shape in report["shapes"].items():
        if "stages" not in shape:
            problem = " ".join(shape.get("error", shape.get("skipped", "")).split()).replace("|", "/")
            lines.append(f"| {name} | | {problem[:300]} (gpu_check.json has it whole) | | |")
            continue
        for stage, row in shape["stages"].items():
            rate = row.get("tokens_per_second")
            lines.append(
                f"| {name} | {shape['parameters'] / 1e6:,.1f}M | {stage} | {row['seconds']} | "
                f"{'' if rate is None else f'{rate:,.0f}'} |"
            )
        lines.append(
            f"| {name} | | peak GPU memory {shape['peak_gpu_memory_gb']} GB; model built in {shape['model_seconds']} s; "
            f"checks {'passed' if shape['passed'] else 'FAILED'} | | |"
        )
    lines += decode_lines(report)
    trl = report.get("trl")
    if trl and trl.get("markdown"):
        lines += ["", trl["markdown"]]
    elif trl:
        lines += ["", f"TRL benchmark: {trl.get('error', trl.get('skipped'))}"]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def decode_lines(report: dict[str, Any]) -> list[str]:
    """Generation against the decode step's memory-bandwidth bound, and generate's KV-cache engines."""
    bandwidth = report["environment"].get("bandwidth_gb_s")
    rows = [(name, row) for name, shape in report["shapes"].items() for row in shape.get("decode", [])]
    lines = []
    if rows:
        lines += [
            "",
            f"Generation against the decode step's bound (weights + KV cache read once per step at the measured "
            f"{bandwidth} GB/s):",
            "",
            "| shape | stage | sequences per step | mean context | tokens/s | bound tokens/s | share |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {r['stage']} | {r['rows_per_step']} | {r['mean_context']} | {r['tokens_per_second']} | "
            f"{r['bound_tokens_per_second']:,.0f} | {_share(r['share_of_bound'])} |"
            for name, r in rows
        ]
    engines = report.get("cache_engines")
    if engines:
        lines += ["", f"`generate`'s KV-cache engines on {engines['shape']} (32 prompts x 64 greedy tokens):", ""]
        lines += ["| engine | tokens/s |", "|---|---|"]
        lines += [
            f"| {side} | {row.get('tokens_per_second', row.get('error'))} |"
            for side, row in engines.items()
            if side != "shape"
        ]
    return lines


def failure_reasons(report: dict[str, Any]) -> str:
    """What failed, in one line: the shapes whose checks failed and the TRL comparison's error."""
    failed = [name for name, shape in report["shapes"].items() if shape.get("passed") is False]
    reasons = [f"checks failed for {', '.join(failed)}"] if failed else []
    trl = report.get("trl") or {}
    if trl.get("passed") is False:
        reasons.append(f"the TRL comparison failed ({' '.join(str(trl.get('error', '')).split())[:200]})")
    return "; ".join(reasons) or "see below"


def write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    shapes, trl = report["shapes"].values(), report.get("trl")
    report["passed"] = all(s.get("passed", True) for s in shapes) and (trl is None or trl.get("passed", True))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device; install the CUDA build of torch for your driver first.")
        return 2
    deadline = time.time() + args.budget_minutes * 60
    args.bandwidth = decode_bound.measured_bandwidth(torch.device(args.device))
    report: dict[str, Any] = {
        "environment": {**environment(args), "bandwidth_gb_s": round(args.bandwidth / 1e9, 1)},
        "shapes": {},
    }
    for position, name in enumerate(args.shapes):
        if time.time() > deadline:
            report["shapes"][name] = {"skipped": f"not started: past --budget-minutes {args.budget_minutes}"}
        else:
            report["shapes"][name] = check_shape(args, name, deadline)
            print(json.dumps({name: report["shapes"][name]}, indent=1)[:3000], flush=True)
        write(args, report)
        if position == 0 and "stages" in report["shapes"][name] and args.cache_engines:
            dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
            model_dir = args.out_dir / "models" / SHAPE_RUNS[name][0]
            report["cache_engines"] = {
                "shape": name,
                **decode_bound.cache_engines(model_dir, torch.device(args.device), dtype),
            }
            write(args, report)
        if position == 0 and args.trl_reps > 0:
            first = report["shapes"][name]
            report["trl"] = (
                trl_benchmark(args, name, deadline)
                if "stages" in first
                else {"skipped": "the first shape's run failed"}
            )
            write(args, report)
        if not args.keep_models:
            shutil.rmtree(args.out_dir / "models" / SHAPE_RUNS[name][0], ignore_errors=True)
    print((args.out_dir / "gpu_check.md").read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
