"""Generation benchmark: the generate stage against plain ``model.generate``.

All sides sample K replies per prompt from pi_0 for the round's prompts, with the round's settings
(temperature, top_p, max_new_tokens, K) and the same prompt token ids.

- ``spreadpref``: ``spreadpref.models.sampling.generate_samples`` (length-sorted batches, seeded per batch,
  its own decode loop that drops finished rows, replies cut at the stop token, decoded, written as resumable
  parts).
- ``batched-sorted``: bare ``model.generate`` over the same batches with the same seeds (what the engine did
  before its own decode loop; other tokens come out, from the same distribution): the floor.
- ``batched``: bare ``model.generate`` at the same batch size, prompts in their given order.
- ``loop``: one ``model.generate`` call per prompt (K samples each).

Tokens/s counts generated reply tokens (up to and including the stop token), not padding.

    python benchmarks/bench_generate.py [--model embedded|tiny] [--device cpu|cuda] [--bf16] [--reps 3]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["spreadpref", "batched-sorted", "batched", "loop"]
FLOORS = ("batched-sorted", "batched")


def floor_batches(side: str, prompt_ids: list[list[int]], batch_size: int, seed: int, round_index: int = 1):
    """The batches and seeds of a bare side; ``batched-sorted`` matches ``generate_samples`` exactly."""
    from spreadpref.models.sampling import prompt_batches, unit_seed

    n = len(prompt_ids)
    if side == "batched-sorted":
        batches = prompt_batches(prompt_ids, batch_size)
    elif side == "batched":
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    else:  # loop: one prompt per call
        batches = [[i] for i in range(n)]
    return batches, [unit_seed(seed, "generate", round_index, b) for b in range(len(batches))]


def worker(side: str, args, inputs) -> dict[str, Any]:
    import torch

    from spreadpref.models.loading import load_tokenizer
    from spreadpref.models.sampling import generate_samples, generation_batch_size, prepare_prompt_ids

    config = common.round_config(args)
    tokenizer = load_tokenizer(config.model)
    prompts = common.load_prompt_records(inputs["prompts"])[: args.x_max_prompts]
    model = common.load_eval(inputs["pi0"], args)
    loaded_rss = common.peak_rss_gib()
    with tempfile.TemporaryDirectory() as tmp, common.Timer(args.device) as timer:
        if side == "spreadpref":
            rows = generate_samples(
                model,
                tokenizer,
                prompts,
                config.generation,
                config.data,
                config.seed,
                Path(tmp) / "generations.jsonl",
                1,
            )
            tokens = sum(sample.num_tokens for sample in rows)
        else:
            prompt_ids = prepare_prompt_ids(tokenizer, prompts, config.data)
            size = generation_batch_size(
                config.generation, model.config, model.dtype, prompt_ids, config.data.max_length
            )
            batches, seeds = floor_batches(side, prompt_ids, size, config.seed)
            replies = common.bare_generate(model, tokenizer, prompt_ids, batches, config.generation, config.data, seeds)
            tokens = sum(len(reply) for group in replies.values() for reply in group)
    return {
        "seconds": timer.seconds,
        "tokens": tokens,
        "rate": tokens / timer.seconds,
        "prompts": len(prompts),
        "samples": len(prompts) * config.generation.num_samples,
        "loaded_rss_gib": loaded_rss,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--max-prompts",
        dest="x_max_prompts",
        type=int,
        default=None,
        help="use only the first N prompts of the round (the per-prompt loop is slow)",
    )
    return common.run_benchmark(__file__, "generate", p.parse_args(argv), SIDES, worker, report)


def report(args, sides, results) -> tuple[dict[str, Any], str]:
    rates = {s: [r["rate"] for r in results[s]] for s in sides}
    stats = {
        s: {
            "tokens_per_second": common.summary(rates[s]),
            "tokens": common.summary([r["tokens"] for r in results[s]]),
            "seconds": common.summary([r["seconds"] for r in results[s]]),
            "peak_rss_gib": common.summary([r["peak_rss_gib"] for r in results[s]]),
        }
        for s in sides
    }
    floors = [s for s in FLOORS if s in sides]
    floor = max(floors, key=lambda s: stats[s]["tokens_per_second"]["median"]) if floors else None
    rows = []
    for side in sides:
        ratio = (
            common.ratio(rates["spreadpref"], rates[side]) if "spreadpref" in sides and side != "spreadpref" else None
        )
        stats[side]["spreadpref_vs_this"] = ratio
        verdict = "–"
        if ratio and side == floor:
            verdict = ("met" if ratio["median"] >= 0.9 else "missed") + " (floor: >= 0.9x)"
        elif ratio and side == "loop":
            verdict = f"{ratio['median']:.1f}x the loop"
        rows.append(
            [
                side,
                common.spread(stats[side]["tokens_per_second"], ".4g"),
                common.format_cell(stats[side]["tokens"]["median"], ".0f"),
                common.spread(stats[side]["seconds"]),
                common.spread(stats[side]["peak_rss_gib"], ".2f"),
                common.spread(ratio) if ratio else "–",
                verdict,
            ]
        )
    first = results[sides[0]][0]
    lines = [
        (
            f"### Generation: {first['prompts']} prompts x {first['samples'] // max(first['prompts'], 1)} samples, "
            f"{args.device}, {'bf16' if args.bf16 else 'float32'}, {args.reps} repetitions "
            f"(floor: the faster batched side, {floor})"
        ),
        "",
        common.markdown_table(
            [
                "side",
                "tokens/s median (min–max)",
                "tokens",
                "seconds",
                "peak RSS GiB",
                "spreadpref / this (x)",
                "target",
            ],
            rows,
        ),
    ]
    return {"sides": sides, "floor": floor, "runs": results, "stats": stats}, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
