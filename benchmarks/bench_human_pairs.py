"""The human-pair scoring of a default run (seed stage + 2 rounds), remembered against recomputed.

A run scores the human seed pairs with frozen models again and again: after each stage the guard scores the
new model and pi_init on the held-out pairs; each round's judge scores pi_{i-1} and pi_init on the pairs
trained on and held out. ``remember`` is spreadpref as it is (``dpo.logprobs`` keeps what a frozen model on
disk scored); ``recompute`` turns that off (``SCORE_MEMO_ENTRIES = 0``). Both call the real functions the
run calls (``guard.measure_held_out_agreement``, ``judge.human_agreement``) in the run's order, on the bundled
profile's seed pairs and held-out split, with pi_0, pi_1 and pi_2 played by three saved copies of pi_init (the
same cost per token as trained models). The figures must be identical; the seconds are the point.

    python benchmarks/bench_human_pairs.py [--model embedded|tiny] [--reps 2] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["remember", "recompute"]
STAGES = 3  # the seed stage and two rounds: a guard after each, a judge in each round


def policy_copies(args, count: int) -> list[Path]:
    """pi_0 .. pi_{count-1}: saved copies of pi_init, each its own directory (its own weights on disk)."""
    from transformers import AutoModelForCausalLM

    directory = args.workdir / f"human-pairs-policies-{Path(common.model_path(args)).name}"
    paths = [directory / f"pi_{i}" for i in range(count)]
    if not all((p / "config.json").is_file() for p in paths):
        model = AutoModelForCausalLM.from_pretrained(common.model_path(args))
        for path in paths:
            model.save_pretrained(path)
    return paths


def worker(side: str, args, inputs) -> dict[str, Any]:
    import torch

    from spreadpref.dpo import logprobs
    from spreadpref.dpo.logprobs import forward_precision, training_precision
    from spreadpref.models.loading import load_for_inference, load_tokenizer
    from spreadpref.spa import guard, judge, seed

    if side == "recompute":
        logprobs.SCORE_MEMO_ENTRIES = 0
    config = common.round_config(args, rounds=2)
    tokenizer = load_tokenizer(config.model)
    pairs = seed.load_seed_pairs(config, tokenizer, seed.read_seed_records(config))
    human = judge.HumanLabels(pairs.pairs, pairs.held_out)
    policies = policy_copies(args, STAGES)
    figures: list[Any] = []
    with common.Timer(args.device) as timer:
        for stage, policy in enumerate(policies):
            figures.append(guard.measure_held_out_agreement(config, tokenizer, policy, pairs.held_out))
            if stage + 1 < STAGES:  # round stage + 1 judges with this stage's model against pi_init
                model = load_for_inference(config.model, policy)
                reference = load_for_inference(config.model, config.model.name_or_path)
                with forward_precision(training_precision(config), next(model.parameters()).device):
                    figures.append(judge.human_agreement(model, reference, human, config.judge, tokenizer.pad_token_id))
                del model, reference
    sequences = 2 * (STAGES * 2 * len(pairs.held_out) + (STAGES - 1) * 2 * (len(pairs.pairs) + len(pairs.held_out)))
    return {
        "seconds": timer.seconds,
        "figures": repr(figures),
        "sequences_asked": sequences,
        "pairs": len(pairs.pairs),
        "held_out": len(pairs.held_out),
        "threads": torch.get_num_threads(),
    }


def prepare(args) -> dict[str, Any]:
    policy_copies(args, STAGES)
    return {}


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        common.setup_worker(args)
        common.finish_worker(args, worker(args.worker, args, prepare(args)))
        return 0
    prepare(args)
    sides = args.sides.split(",") if args.sides else SIDES
    results = common.alternate(sides, args.reps, lambda side, rep: common.run_worker(__file__, side, args))
    data, markdown = report(args, sides, results)
    common.write_report(args, "human_pairs", data, markdown)
    return 0


def report(args, sides, results) -> tuple[dict[str, Any], str]:
    seconds = {s: [r["seconds"] for r in results[s]] for s in sides}
    figures = {r["figures"] for s in sides for r in results[s]}
    stats = {s: {"seconds": common.summary(seconds[s])} for s in sides}
    both = set(sides) == set(SIDES)
    speedup = common.ratio(seconds["recompute"], seconds["remember"]) if both else None
    first = results[sides[0]][0]
    rows = [[side, common.spread(stats[side]["seconds"])] for side in sides]
    lines = [
        (
            f"### Human-pair scoring of a seed + 2-round run: {first['pairs']} pairs trained on, {first['held_out']} "
            f"held out, {first['sequences_asked']} sequence scorings asked, {args.device}, {args.reps} repetitions"
        ),
        "",
        common.markdown_table(["side", "seconds median (min–max)"], rows),
        "",
        f"recompute / remember: {common.spread(speedup) if speedup else '–'}x; "
        f"figures identical on every side and repetition: {len(figures) == 1}",
    ]
    data = {"sides": sides, "runs": results, "stats": stats, "speedup": speedup, "identical": len(figures) == 1}
    return data, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
