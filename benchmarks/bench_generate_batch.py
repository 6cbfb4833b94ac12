"""Generation batch size: the generate stage at today's batches of 8 prompts against ``generation.batch_size=auto``.

Each side runs ``spreadpref.models.sampling.generate_samples`` in a fresh process on the first ``--prompts``
bundled prompts (the profile's system prompt and sampling: K=2, temperature 0.7, 128 new tokens) with the
model (embedded: pi_init, SmolLM2-135M-Instruct). The sides alternate, A B A B. Reported: generated tokens/s,
and that figure as a share of the compute limit: the worker times a large float32 matrix product on the
same threads, and a token costs 2 x parameters floating-point operations. Samples of the same side must be
identical in every repetition (a fixed seed); the sides differ from each other, since each batch has its
own seed.

    python benchmarks/bench_generate_batch.py --threads 2 --reps 2 --prompts 32 [--sides batch-8,auto]
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["batch-8", "auto"]


def worker(side: str, args) -> dict[str, Any]:
    from spreadpref.config import load_config
    from spreadpref.data.loading import load_prompts
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.models.sampling import generate_samples, generation_batch_size, prepare_prompt_ids

    batch = side.removeprefix("batch-")
    overrides = [f"model.name_or_path={common.model_path(args)}", f"generation.batch_size={batch}"]
    config = load_config(common.profile_path(), [*overrides, *common.dtype_overrides(args)])
    prompts = load_prompts(config.data.prompts)[0][: args.prompts]
    tokenizer = load_tokenizer(config.model)
    model = common.load_eval(config.model.name_or_path, args)
    prompt_ids = prepare_prompt_ids(tokenizer, prompts, config.data)
    size = generation_batch_size(config.generation, model.config, model.dtype, prompt_ids, config.data.max_length)
    peak = common.matmul_flops_per_second() if args.device == "cpu" else None
    with tempfile.TemporaryDirectory() as tmp, common.Timer(args.device) as timer:
        samples = generate_samples(
            model, tokenizer, prompts, config.generation, config.data, config.seed, Path(tmp) / "samples.jsonl", 1
        )
    tokens = sum(len(s.reply_ids) for s in samples)
    parameters = sum(p.numel() for p in model.parameters())
    rate = tokens / timer.seconds
    digest = hashlib.sha256(json.dumps([s.reply_ids for s in samples]).encode()).hexdigest()[:16]
    return {
        "batch_prompts": min(size, len(prompts)),
        "tokens": tokens,
        "seconds": timer.seconds,
        "rate": rate,
        "compute_limit_tokens_per_second": peak / (2 * parameters) if peak else None,
        "share_of_limit": rate * 2 * parameters / peak if peak else None,
        "samples_sha256": digest,
    }


def report(args, sides, results) -> tuple[dict[str, Any], str]:
    stats = {}
    rows = []
    for side in sides:
        runs = results[side]
        rates = [r["rate"] for r in runs]
        stats[side] = {
            "tokens_per_second": common.summary(rates),
            "share_of_limit": common.summary([r["share_of_limit"] for r in runs if r["share_of_limit"]] or [0]),
            "identical_samples_every_rep": len({r["samples_sha256"] for r in runs}) == 1,
        }
        if side != sides[0]:
            stats[side]["speedup"] = common.ratio(rates, [r["rate"] for r in results[sides[0]]])
        rows.append(
            [
                side,
                runs[0]["batch_prompts"],
                runs[0]["tokens"],
                common.spread(stats[side]["tokens_per_second"]),
                common.spread(stats[side]["share_of_limit"], ".0%"),
                common.spread(stats[side]["speedup"]) if "speedup" in stats[side] else "–",
                "yes" if stats[side]["identical_samples_every_rep"] else "NO",
            ]
        )
    limit = common.summary([r["compute_limit_tokens_per_second"] or 0 for s in sides for r in results[s]])
    lines = [
        f"### Generation: {args.prompts} prompts x 2 replies, {args.device}, {args.threads or 'all'} threads, "
        f"{args.reps} repetitions (compute limit {limit['median']:.0f} tokens/s)",
        "",
        common.markdown_table(
            [
                "side",
                "prompts per batch",
                "tokens",
                "tokens/s median (min–max)",
                "share of the compute limit",
                f"speed-up over {sides[0]}",
                "same samples every rep",
            ],
            rows,
        ),
    ]
    return {"sides": sides, "runs": results, "stats": stats}, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        common.setup_worker(args)
        common.finish_worker(args, worker(args.worker, args))
        return 0
    sides = args.sides.split(",") if args.sides else SIDES
    results = common.alternate(sides, args.reps, lambda side, rep: common.run_worker(__file__, side, args))
    data, markdown = report(args, sides, results)
    common.write_report(args, "generate-batch", data, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
