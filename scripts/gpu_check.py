"""A GPU check, ready to run: one short SPA round in bf16 with each generation backend, in minutes.

    bash scripts/gpu-check.sh            # or: python scripts/gpu_check.py [--out-dir DIR] [--backends hf vllm]

Needs a CUDA build of torch and, for the vllm backend, vLLM (`pip install vllm`); a backend that is not
installed is reported and skipped. Runs the embedded SmolLM2-135M-Instruct: the seed stage and one round
of 32 prompts x 2 replies x 128 tokens, bfloat16 weights (trained on float32 master weights) with bf16
autocast. Prints, per backend: tokens/s of generation, judging and training, peak GPU memory of the
main process (vLLM runs in its own process and takes generation.gpu_memory_utilization of the GPU),
and the first training step's margins and rewards, which must be 0 (the round's reference is its policy).
Writes gpu_check.json in the output directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace, backend: str) -> list[str]:
    return [
        f"output_dir={args.out_dir / backend}",
        "model.device=cuda",
        "model.dtype=bfloat16",
        "train.mixed_precision=bf16",
        "train.logging_steps=1",
        "loop.rounds=1",
        f"loop.prompts_per_round=[{args.prompts}]",
        f"generation.max_new_tokens={args.max_new_tokens}",
        f"generation.backend={backend}",
        "generation.gpu_memory_utilization=0.3",
    ]


def check(args: argparse.Namespace, backend: str) -> dict:
    from spreadpref.cli import default_config_path
    from spreadpref.config import load_config
    from spreadpref.spa.loop import run

    started = time.perf_counter()
    result = run(load_config(default_config_path(), overrides(args, backend)), force=True)
    row = result.summary["rounds"]["1"]
    log = json.loads((args.out_dir / backend / "round-1" / "train" / "log_history.json").read_text())
    first = next(entry for entry in log if "loss" in entry)
    return {
        "generate_tokens_per_second": row.get("generate_tokens_per_second"),
        "judge_tokens_per_second": row.get("judge_tokens_per_second"),
        "train_tokens_per_second": row.get("train_tokens_per_second"),
        "peak_gpu_memory_gb": result.summary.get("peak_gpu_memory_gb"),
        "first_step_margin": first.get("rewards/margins"),
        "first_step_chosen_reward": first.get("rewards/chosen"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device; install the CUDA build of torch for your driver first.")
        return 2
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "backends": {}}
    for backend in args.backends:
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            report["backends"][backend] = {"skipped": "vLLM is not installed (pip install vllm)"}
            continue
        report["backends"][backend] = check(args, backend)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    margins = [r.get("first_step_margin") for r in report["backends"].values() if "first_step_margin" in r]
    return 0 if all(m is not None and abs(m) < 1e-3 for m in margins) else 1


if __name__ == "__main__":
    sys.exit(main())
