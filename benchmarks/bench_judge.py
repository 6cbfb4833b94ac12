"""Judging benchmark: the judge stage against bare forward passes of its two models.

``spreadpref`` is ``spreadpref.spa.judge.score_samples`` with pi_0 as policy and pi_init as reference
on the round's generations (reply log-probs of every sample under both models, written as
resumable parts). ``floor`` runs ``model(input_ids, attention_mask)`` of both models, no grad, over
the very same token batches (the judge's chunks and length-grouped batches) and keeps nothing.
``backbone`` runs only the transformer body (no vocabulary projection): a lower bound that no
log-prob computation can beat. Tokens/s counts prompt + reply tokens, once per model.

    python benchmarks/bench_judge.py [--model embedded|tiny] [--device cpu|cuda] [--bf16] [--reps 3]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["spreadpref", "floor", "backbone"]


def judge_batches(samples: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """The judge's batches: chunks of ``judge.CHUNK`` samples, length-grouped within each chunk."""
    from spreadpref.dpo.logprobs import length_batches
    from spreadpref.spa.judge import CHUNK

    batches = []
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start : start + CHUNK]
        lengths = [len(s["prompt_ids"]) + len(s["reply_ids"]) for s in chunk]
        batches += [[start + i for i in batch] for batch in length_batches(lengths, batch_size)]
    return batches


def bare_forwards(models, samples, batches, pad_token_id: int, device: str, backbone: bool = False) -> None:
    """The floor: forward passes of every model over the batches, outputs discarded."""
    import torch

    from spreadpref.dpo.logprobs import collate_sequences

    with torch.no_grad():
        for model in models:
            for indices in batches:
                batch = collate_sequences(
                    [samples[i]["prompt_ids"] for i in indices],
                    [samples[i]["reply_ids"] for i in indices],
                    pad_token_id,
                )
                run = model.model if backbone else model
                run(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                )


def scored_tokens(samples) -> int:
    return sum(len(s["prompt_ids"]) + len(s["reply_ids"]) for s in samples)


def worker(side: str, args, inputs) -> dict[str, Any]:
    import torch

    from spreadpref.data.artifacts import Sample
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.spa.judge import score_samples

    config = common.round_config(args)
    pad = load_tokenizer(config.model).pad_token_id
    samples = common.read_jsonl(inputs["generations"])
    records = [Sample.from_row(row) for row in samples]  # the typed rows score_samples takes
    models = [common.load_eval(inputs["pi0"], args), common.load_eval(inputs["init"], args)]
    loaded_rss = common.peak_rss_gib()
    with tempfile.TemporaryDirectory() as tmp, common.Timer(args.device) as timer:
        if side == "spreadpref":
            score_samples(models[0], models[1], records, config.judge, pad, Path(tmp) / "judged.jsonl", 1)
        else:
            bare_forwards(
                models,
                samples,
                judge_batches(samples, config.judge.batch_size),
                pad,
                args.device,
                backbone=side == "backbone",
            )
    tokens = 2 * scored_tokens(samples)
    return {
        "seconds": timer.seconds,
        "tokens": tokens,
        "rate": tokens / timer.seconds,
        "samples": len(samples),
        "loaded_rss_gib": loaded_rss,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    return common.run_benchmark(__file__, "judge", args, SIDES, worker, report)


def report(args, sides, results) -> tuple[dict[str, Any], str]:
    rates = {s: [r["rate"] for r in results[s]] for s in sides}
    stats = {
        s: {
            "tokens_per_second": common.summary(rates[s]),
            "seconds": common.summary([r["seconds"] for r in results[s]]),
            "peak_rss_gib": common.summary([r["peak_rss_gib"] for r in results[s]]),
        }
        for s in sides
    }
    rows = []
    for side in sides:
        ratio = (
            common.ratio(rates["spreadpref"], rates[side]) if "spreadpref" in sides and side != "spreadpref" else None
        )
        stats[side]["spreadpref_vs_this"] = ratio
        verdict = "–"
        if side == "floor" and ratio:
            verdict = ("met" if ratio["median"] >= 0.9 else "missed") + " (>= 0.9x)"
        rows.append(
            [
                side,
                common.spread(stats[side]["tokens_per_second"], ".4g"),
                common.spread(stats[side]["seconds"]),
                common.spread(stats[side]["peak_rss_gib"], ".2f"),
                common.spread(ratio) if ratio else "–",
                verdict,
            ]
        )
    first = results[sides[0]][0]
    lines = [
        (
            f"### Judging: {first['samples']} samples, 2 models, {first['tokens']} tokens scored, {args.device}, "
            f"{'bf16' if args.bf16 else 'float32'}, {args.reps} repetitions"
        ),
        "",
        common.markdown_table(
            ["side", "tokens/s median (min–max)", "seconds", "peak RSS GiB", "spreadpref / this (x)", "target"], rows
        ),
    ]
    return {"sides": sides, "runs": results, "stats": stats}, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
