"""Which pairs does self-refinement smooth, and are they the mislabelled ones? Two settings, measured.

    python benchmarks/refine_settings.py    # embedded SmolLM2-135M-Instruct, about 30 min on 2 cores

SPA with DND (the default method) on the verifiable prompts, with the gold verifier labelling every
round's pairs for measurement only (``judge.gold=verifier``), trained once with length-grouped
batches (``loop.group_by_length=true``) and once shuffled (``false``, as the paper); both runs share
the seed stage and round 1's samples and labels. Each round records, per pair, the plain and the DND
detector's margins and decisions (``train/refinement.jsonl``); the smoothing with
``refine.partial_window=false`` (nothing until the window is full, as the authors' code) is replayed
on the same margins. Reported per setting, detector and round: pairs smoothed, precision (smoothed
pairs that were mislabelled), recall (mislabelled pairs that were smoothed) and the base error rate,
with 95% Wilson intervals. Writes docs/results/refine_settings.json and refine_settings.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import spread  # noqa: E402 - the seed pairs, the settings and the stage sharing are spread.py's

# Round training only: both settings share the seed stage (pi_0) and round 1's samples and labels.
VARIANTS = {"grouped": ["loop.group_by_length=true"], "shuffled": ["loop.group_by_length=false"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, tiny (smoke test) or a model directory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts-per-round", type=int, default=96)
    parser.add_argument("--samples", type=int, default=4, help="replies per prompt (K): fewer gold ties")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed-pairs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "refine-settings")
    parser.add_argument("--spread-work", type=Path, default=ROOT / "benchmarks" / "work" / "spread")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace, spread_args: argparse.Namespace, model: str, seed_file: Path, out: Path):
    return spread.base_overrides(spread_args, model, seed_file, args.seed, out) + [
        "judge.gold=verifier",
        f"generation.num_samples={args.samples}",
        "refine.enabled=true",
        "refine.decoupled=true",
        "refine.partial_window=true",
    ]


def measure(run_dir: Path, rounds: int, window: int, quantile: float) -> dict[str, Any]:
    from spreadpref.data.artifacts import GoldVerdict
    from spreadpref.eval.labels import replay_smoothing, smoothing_quality
    from spreadpref.runtime.files import read_jsonl

    figures: dict[str, Any] = {}
    for i in range(1, rounds + 1):
        decisions = read_jsonl(run_dir / f"round-{i}" / "train" / "refinement.jsonl")
        gold = {v.pair_id: v.p for v in GoldVerdict.read(run_dir / f"round-{i}" / "gold.jsonl")}
        gold_p = [gold[d["id"]] for d in decisions]
        row: dict[str, Any] = {"pairs": len(decisions)}
        for detector in ("plain", "dnd"):
            for partial in (True, False):
                flags = replay_smoothing(decisions, detector, window, quantile, partial)
                row[f"{detector}/partial_window={str(partial).lower()}"] = smoothing_quality(flags, gold_p)
        figures[str(i)] = row
    return figures


def markdown(results: dict[str, Any], settings: dict[str, Any]) -> str:
    from spreadpref.eval.report import interval_cell

    lines = [
        f"Self-refinement against the gold verifier: SPA with DND, {settings['rounds']} rounds of "
        f"{settings['prompts_per_round']} prompts x {settings['samples']} replies, seed {settings['seed']}.",
        "",
        "| batches | round | detector | partial window | smoothed | precision (95% CI) | recall (95% CI) | "
        "base error rate (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, rounds in results.items():
        for i, row in rounds.items():
            for key, quality in row.items():
                if key == "pairs":
                    continue
                detector, partial = key.split("/")
                precision, recall, base = (
                    interval_cell(quality[k]["rate"], (quality[k]["ci_low"], quality[k]["ci_high"]))
                    for k in ("precision", "recall", "base_error_rate")
                )
                lines.append(
                    f"| {variant} | {i} | {detector} | {partial.split('=')[1]} | {quality['smoothed']} / "
                    f"{quality['pairs']} | {precision} | {recall} | {base} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from spreadpref.runtime.files import atomic_write_json, atomic_write_text
    from spreadpref.spa.loop import run

    args = parse_args(argv)
    started = time.perf_counter()
    spread_args = spread.parse_args(
        [
            "--model", args.model, "--seed-pairs", str(args.seed_pairs), "--work", str(args.spread_work),
            "--rounds", str(args.rounds), "--prompts-per-round", str(args.prompts_per_round),
            "--max-new-tokens", str(args.max_new_tokens),
        ]
    )  # fmt: skip
    model = spread.model_source(spread_args)
    seed_file = spread.make_seed_pairs(spread_args, model)
    results, first = {}, None
    for variant, extra in VARIANTS.items():
        out = args.work / variant
        if first is not None:
            spread.share_stages(first, out, ["seed", "round-1/generate", "round-1/judge"])
        config = spread.load(overrides(args, spread_args, model, seed_file, out) + extra)
        run(config)
        first = first or out
        results[variant] = measure(out, args.rounds, config.refine.window, config.refine.quantile)
    settings = {
        "model": args.model,
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "samples": args.samples,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(args.out_dir / "refine_settings.json", {"settings": settings, "results": results})
    atomic_write_text(args.out_dir / "refine_settings.md", markdown(results, settings))
    print(markdown(results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
