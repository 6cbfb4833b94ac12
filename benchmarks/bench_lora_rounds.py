"""LoRA runs: one adapter carried on the frozen pi_init (now) against a merged full model per stage (before).

Both sides run the same short ``spreadpref run`` with ``model.lora.enabled=true`` (a seed stage and two
rounds, every model kept) in fresh subprocesses, alternated; the "before" side runs the source tree given
by ``--before-src`` (a checkout of the commit before the change, e.g. ``git worktree add /tmp/before
<commit>``). Reported per side: the run directory's size on disk, what the model stages wrote, the wall
time of each stage and the whole run, and the first-step margin of every training stage.

    python benchmarks/bench_lora_rounds.py --model tiny --before-src /tmp/before/src --reps 2
    python benchmarks/bench_lora_rounds.py --model embedded --before-src /tmp/before/src --threads 1 --reps 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    alternate,
    fresh_dir,
    markdown_table,
    model_path,
    parser,
    spread,
    summary,
    write_report,
)

SIDES = ("merged", "adapter")  # before the change, and now


def run_overrides(args, init: str, run_dir: Path) -> list[str]:
    short = ["generation.max_new_tokens=24"] if args.model == "tiny" else ["generation.max_new_tokens=32"]
    return [
        f"model.name_or_path={init}",
        f"output_dir={run_dir}",
        "model.lora.enabled=true",
        "model.lora.r=16",
        f"train.max_steps={2 if args.model == 'tiny' else 4}",
        "loop.rounds=2",
        f"loop.prompts_per_round=[{args.prompts},{args.prompts}]",
        "loop.keep_models=10",
        "train.save_strategy=no",
        "eval.after_run=false",
        *short,
    ]


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def first_step_margin(stage_dir: Path) -> float | None:
    logs = stage_dir / "log_history.json"
    if not logs.is_file():
        return None
    rows = [row for row in json.loads(logs.read_text()) if "rewards/margins" in row and "loss" in row]
    return rows[0]["rewards/margins"] if rows else None


def run_side(args, side: str, rep: int) -> dict[str, Any]:
    run_dir = fresh_dir(args.workdir / f"lora-{side}-{args.model}") / "run"
    src = args.before_src if side == "merged" else ROOT / "src"
    threads = str(args.threads or 1)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    command = [sys.executable, "-m", "spreadpref", "run", *run_overrides(args, model_path(args), run_dir)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"side {side} failed (exit {proc.returncode})")
    summary_file = json.loads((run_dir / "summary.json").read_text())
    stages = [run_dir / "seed"] + [run_dir / f"round-{i}" / "train" for i in (1, 2)]
    models = sum(
        directory_bytes(stage / sub) for stage in stages for sub in ("model", "adapter") if (stage / sub).exists()
    )
    rounds = summary_file["rounds"]
    return {
        "seconds": seconds,
        "run_bytes": directory_bytes(run_dir),
        "model_bytes": models,
        "seed_seconds": summary_file["seed"]["seconds"],
        **{
            f"round{i}_{k}_seconds": rounds[str(i)][f"{k}_seconds"]
            for i in (1, 2)
            for k in ("generate", "judge", "train")
        },
        "first_step_margins": [first_step_margin(stage) for stage in stages],
    }


def report(args, results: dict[str, list[dict]]) -> tuple[dict[str, Any], str]:
    keys = [
        "seconds",
        "seed_seconds",
        *(f"round{i}_{k}_seconds" for i in (1, 2) for k in ("generate", "judge", "train")),
    ]
    rows = []
    for side in SIDES:
        runs = results[side]
        mib = summary([r["run_bytes"] / 2**20 for r in runs])
        models = summary([r["model_bytes"] / 2**20 for r in runs])
        margins = max(abs(m) for r in runs for m in r["first_step_margins"] if m is not None)
        rows.append(
            [
                side,
                spread(mib),
                spread(models),
                *(spread(summary([r[k] for r in runs])) for k in keys),
                f"{margins:.1e}",
            ]
        )
    headers = [
        "side",
        "run dir MiB",
        "models MiB",
        "run s",
        "seed s",
        *(f"r{i} {k[0]} s" for i in (1, 2) for k in ("gen", "judge", "train")),
        "max |first-step margin|",
    ]
    markdown = (
        f"LoRA runs on {args.model}: seed stage + 2 rounds of {args.prompts} prompts, every model kept; "
        f"{args.reps} repetition(s), sides alternated, {args.threads or 1} thread(s). Median (min–max).\n\n"
        + markdown_table(headers, rows)
    )
    return {"results": results}, markdown


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--before-src", type=Path, required=True, help="the src/ of the code before the change")
    args = p.parse_args()
    args.prompts = args.prompts if args.prompts != 32 else 8
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = alternate(SIDES, args.reps, lambda side, rep: run_side(args, side, rep))
    data, markdown = report(args, results)
    write_report(args, "lora_rounds", data, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
