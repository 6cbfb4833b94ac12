"""Does the preference spread? Every SPA variant and baseline in a synthetic world with a hidden gold reward.

    python benchmarks/gold_world.py                 # the reported seeds 10-19 -> docs/results/gold_world.*
    python benchmarks/gold_world.py --dev           # development seeds 100-104 (where settings were chosen)
    python benchmarks/gold_world.py --seeds 0 1 2   # any seeds; finished seeds are reused

The world and the variants are in :mod:`spreadpref.sandbox.world`, the tables in :mod:`spreadpref.sandbox.compare`; each variant is the real pipeline. Seeds run
in ``--jobs`` processes of one torch thread each (2 cores: two jobs). Per-seed results go to
``<out>/seeds/seed-N.json`` (reused on a rerun: delete one to redo it); the aggregate, with 95%
t-intervals over seeds and the paired differences, goes to ``<out>/gold_world.json`` and ``gold_world.md``,
and the plot to ``gold_world.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from spreadpref.runtime.files import atomic_write_json, atomic_write_text
from spreadpref.sandbox import world as goldworld
from spreadpref.sandbox.compare import aggregate, markdown
from spreadpref.sandbox.settings import REDUCED_WORLD, WorldSettings, world_settings_dict

ROOT = Path(__file__).resolve().parent.parent
# World v1 (fixed SFT length) was reported on seeds 0-9 (docs/results/gold_world_v1.*); it showed two degenerate
# worlds whose pi_init never learnt the topic. v2 (SFT until pi_init uses the topic, chosen on the development
# seeds) is reported on fresh seeds, so that no reported seed ever informed a setting.
REPORTED_SEEDS = list(range(30, 40))  # the safeguards' report (v1: 0-9, v2: 10-19; never used to choose)
DEV_SEEDS = [100, 101, 102, 103, 104]
PLOTTED = (
    "sft",
    "seed_only",
    "spa_dnd",
    "spa_length_replay",
    "base_fixed",
    "base_length_replay",
    "iterative_gold",
    "no_seed",
)


def run_one_seed(seed: int, workdir: Path, out_file: Path, world: WorldSettings, variants: tuple[str, ...]) -> None:
    """One seed's variants into ``out_file``; variants already in it are kept and not run again."""
    previous = json.loads(out_file.read_text()) if out_file.is_file() else None
    missing = tuple(v for v in variants if previous is None or v not in previous["variants"])
    result = goldworld.run_seed(world, seed, workdir, missing)
    if previous is not None:  # the world and its seed model are rebuilt identically: the new rows join the old
        result["variants"] = {**previous["variants"], **result["variants"]}
        result["seconds"] = round(previous["seconds"] + result["seconds"], 1)
    result["world_settings"] = world_settings_dict(world)
    atomic_write_json(out_file, result)


def missing_variants(seeds_dir: Path, seed: int, variants: tuple[str, ...]) -> bool:
    path = seeds_dir / f"seed-{seed}.json"
    return not path.is_file() or any(v not in json.loads(path.read_text())["variants"] for v in variants)


def run_seeds(
    seeds: list[int], workdir: Path, seeds_dir: Path, jobs: int, world_flags: list[str], variants: tuple[str, ...]
) -> None:
    """Each seed missing a variant in a subprocess of its own (one torch thread), ``jobs`` at a time."""
    todo = [s for s in seeds if missing_variants(seeds_dir, s, variants)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SPREADPREF_NO_PROGRESS="1")
    running: list[tuple[int, subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < jobs:
            seed = todo.pop(0)
            log = open(workdir / f"seed-{seed}.log", "w")  # noqa: SIM115 - closed with the process
            command = [sys.executable, __file__, "--one-seed", str(seed), "--workdir", str(workdir)]
            command += ["--out", str(seeds_dir.parent), *world_flags]
            running.append(
                (seed, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), time.time())
            )
        time.sleep(1)
        for entry in list(running):
            seed, process, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see the log)"
            print(
                f"seed {seed}: {status} in {time.time() - started:.0f} s ({workdir / f'seed-{seed}.log'})", flush=True
            )
            if process.returncode != 0:
                raise SystemExit(f"seed {seed} failed: {workdir / f'seed-{seed}.log'}")


def plot(summary: dict, path: Path) -> None:
    """Left: held-out gold reward per round; right: the same, seed by seed minus the seed-only model."""
    import matplotlib  # noqa: PLC0415 - only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    seed_row = next(r for r in summary["table"] if r["variant"] == "seed_only")
    for variant, label in goldworld.VARIANTS.items():
        if variant not in PLOTTED:
            continue
        rows = [r for r in summary["table"] if r["variant"] == variant and r["gold_reward"]]
        if not rows:
            continue
        if variant in goldworld.ROUND_VARIANTS and variant != "no_seed":
            rows = [seed_row, *rows]  # every SPA-style variant starts from the seed model
        xs = [r["round"] + (0.04 * PLOTTED.index(variant) - 0.16) for r in rows]
        style = "o-" if len(rows) > 1 else "s"
        for ax, key in zip(axes, ("gold_reward", "gold_vs_seed_only")):
            cells = [r[key] for r in rows]
            ax.errorbar(
                xs, [c["mean"] for c in cells], yerr=[c["half_width"] for c in cells], fmt=style, capsize=3, label=label
            )
    axes[0].set_ylabel("held-out gold reward (mean, 95% CI over seeds)")
    axes[1].set_ylabel("gold reward minus the seed-only model's, seed by seed")
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(range(0, 4))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # the legend below both panels, over no point
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _previous(path: Path, key: str):
    """A value of the last aggregate (the wall time of the run that made the seed files, when only re-aggregating)."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", help="default: the reported seeds 30-39")
    parser.add_argument("--dev", action="store_true", help="the development seeds 100-104")
    parser.add_argument("--jobs", type=int, default=2, help="seed processes at once (one thread each)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "work" / "gold_world")
    parser.add_argument("--out", type=Path, help="default docs/results (benchmarks/work/gold_world_dev with --dev)")
    parser.add_argument("--reduced", action="store_true", help="the small world of the regression test")
    parser.add_argument(
        "--seed-length-balanced",
        action="store_true",
        help="seed pairs whose chosen reply is as often shorter as longer (the test of the length-bias cause)",
    )
    parser.add_argument("--seed-pairs", type=int, help="gold-labelled seed pairs (default: the world's 30)")
    parser.add_argument("--hidden-size", type=int, help="the models' width (default 64; 128 and 256: 4x, 16x)")
    parser.add_argument("--variants", nargs="+", choices=list(goldworld.VARIANTS), help="default: every variant")
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    world = REDUCED_WORLD if args.reduced else WorldSettings()
    world = dataclasses.replace(
        world,
        seed_length_balanced=args.seed_length_balanced,
        seed_pairs=args.seed_pairs or world.seed_pairs,
        hidden_size=args.hidden_size or world.hidden_size,
    )
    world_flags = ["--seed-pairs", str(world.seed_pairs), "--hidden-size", str(world.hidden_size)]
    world_flags += ["--variants", *args.variants] if args.variants else []
    world_flags += [
        flag for flag, on in (("--reduced", args.reduced), ("--seed-length-balanced", args.seed_length_balanced)) if on
    ]
    out = args.out or (
        ROOT / "benchmarks" / "work" / "gold_world_dev" if args.dev else ROOT / "docs" / "results" / "safeguards"
    )
    seeds_dir = out / ("gold_world_seeds" if not args.reduced else "gold_world_reduced_seeds")
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds_dir.mkdir(parents=True, exist_ok=True)
    variants = tuple(args.variants or goldworld.VARIANTS)
    if args.one_seed is not None:
        run_one_seed(args.one_seed, args.workdir, seeds_dir / f"seed-{args.one_seed}.json", world, variants)
        return
    seeds = args.seeds if args.seeds else (DEV_SEEDS if args.dev else REPORTED_SEEDS)
    started = time.time()
    ran = [s for s in seeds if missing_variants(seeds_dir, s, variants)]
    run_seeds(seeds, args.workdir, seeds_dir, args.jobs, world_flags, variants)
    results = [json.loads((seeds_dir / f"seed-{s}.json").read_text()) for s in seeds]
    for result in results:  # files from before the length measurement: computed from the pairs on disk
        if "seed_pairs_chosen_shorter" not in result["world"] and (args.workdir / f"seed-{result['seed']}").is_dir():
            goldworld.add_length_skew(result, args.workdir / f"seed-{result['seed']}")
            atomic_write_json(seeds_dir / f"seed-{result['seed']}.json", result)
    summary = aggregate(results)
    seconds = sum(r["seconds"] for r in results)
    document = {
        "seeds": seeds,
        "world": world_settings_dict(world),
        "pipeline_overrides": list(goldworld.DEFAULT_SPA),
        "seed_seconds": seconds,
        "wall_seconds": round(time.time() - started, 1) if ran else _previous(out / "gold_world.json", "wall_seconds"),
        **summary,
        "per_seed": results,
    }
    atomic_write_json(out / "gold_world.json", document)
    atomic_write_text(out / "gold_world.md", markdown(summary, seeds, seconds))
    plot(summary, out / "gold_world.png")
    print((out / "gold_world.md").read_text())


if __name__ == "__main__":
    main()
