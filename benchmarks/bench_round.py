"""Round benchmark: the wall time of one default SPA round, split by stage, against its ideal.

``round`` runs ``spreadpref.run`` for round 1 of the bundled CPU profile on a copy of a finished
seed stage (so only the round runs: generate, judge with seed agreement, DPO with DND, save).
``floors`` measures, in one process and on the same tokens, the floor of each stage's compute:

- generate: bare batched ``model.generate`` with the round's batches and seeds (transformers' engine, not the built-in
  decode loop: other draws from the same distribution);
- judge: bare forward passes of pi_0 and pi_init over the round's samples and the seed pairs
  (the seed-agreement check), in the judge's batches;
- train: one epoch of plain PyTorch DPO (full logits, AdamW) over the round's pairs, plus the
  DND detector's bare no-grad forward of the frozen reference per micro-batch.

The ideal is the sum of the three floors; loading models and saving the result are outside it.
Python imports happen before the clock starts (a run pays them once, not per round).

    python benchmarks/bench_round.py [--model embedded|tiny] [--device cpu|cuda] [--bf16] [--reps 2]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["round", "floors"]
STAGES = ("generate", "judge", "train")
TARGET = 1.25


def worker_round(args, inputs) -> dict[str, Any]:
    import importlib

    import spreadpref

    # Imports are paid once per run, not per round: keep them out of the round's time.
    for name in (
        "datasets",
        "peft",
        "transformers",
        "spreadpref.models.sampling",
        "spreadpref.spa.judge",
        "spreadpref.spa.loop",
        "spreadpref.dpo.train",
        "spreadpref.dpo.trainer",
    ):
        importlib.import_module(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401  (lazy modules)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(inputs["seed_only"], run_dir)
        config = common.round_config(args, [f"output_dir={run_dir}"])
        with common.Timer(args.device) as timer:
            spreadpref.run(config)
        manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {name: manifest["stages"][f"round-1/{name}"]["metrics"]["seconds"] for name in STAGES}
    return {
        "seconds": timer.seconds,
        **{f"{name}_seconds": s for name, s in stages.items()},
        "other_seconds": timer.seconds - sum(stages.values()),
    }


def worker_floors(args, inputs) -> dict[str, Any]:
    import torch
    from bench_generate import floor_batches
    from bench_judge import bare_forwards, judge_batches
    from bench_train import floor_epoch

    from spreadpref.data.artifacts import Pair
    from spreadpref.data.loading import load_training_preferences
    from spreadpref.data.tokenize import tokenize_pairs
    from spreadpref.dpo.logprobs import length_batches
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.models.sampling import generation_batch_size, prepare_prompt_ids

    config = common.round_config(args)
    tokenizer = load_tokenizer(config.model)
    pad = tokenizer.pad_token_id
    pi0, init = common.load_eval(inputs["pi0"], args), common.load_eval(inputs["init"], args)
    out: dict[str, Any] = {}

    prompts = common.load_prompt_records(inputs["prompts"])
    prompt_ids = prepare_prompt_ids(tokenizer, prompts, config.data)
    size = generation_batch_size(config.generation, pi0.config, pi0.dtype, prompt_ids, config.data.max_length)
    batches, seeds = floor_batches("batched-sorted", prompt_ids, size, config.seed)
    with common.Timer(args.device) as timer:
        replies = common.bare_generate(pi0, tokenizer, prompt_ids, batches, config.generation, config.data, seeds)
        out["generated_tokens"] = sum(len(reply) for group in replies.values() for reply in group)
    out["generate_seconds"] = timer.seconds

    samples = common.read_jsonl(inputs["generations"])
    records, _ = load_training_preferences(config.data)
    seed_pairs, _ = tokenize_pairs(tokenizer, records, config.data.max_length, config.data.max_prompt_length)
    seed_samples = [
        {"prompt_ids": p.prompt_ids, "reply_ids": getattr(p, key)}
        for key in ("chosen_ids", "rejected_ids")
        for p in seed_pairs
    ]
    seed_batches = length_batches(
        [len(s["prompt_ids"]) + len(s["reply_ids"]) for s in seed_samples], config.judge.batch_size
    )
    with common.Timer(args.device) as timer:
        bare_forwards([pi0, init], samples, judge_batches(samples, config.judge.batch_size), pad, args.device)
        bare_forwards([pi0, init], seed_samples, seed_batches, pad, args.device)
    out["judge_seconds"] = timer.seconds
    del init

    pairs = [pair.to_tokenized() for pair in Pair.read(inputs["pairs"])]
    policy = common.load_eval(inputs["pi0"], args)
    pi0.requires_grad_(False)
    with common.Timer(args.device) as timer:
        floor_epoch(args, config, policy, pairs, pad, reference=pi0 if config.refine.lam(1) > 0 else None)
    out["train_seconds"] = timer.seconds
    out["seconds"] = sum(out[f"{name}_seconds"] for name in STAGES)
    out["threads"] = torch.get_num_threads()
    return out


def worker(side: str, args, inputs) -> dict[str, Any]:
    return worker_round(args, inputs) if side == "round" else worker_floors(args, inputs)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(reps=2)
    return common.run_benchmark(__file__, "round", p.parse_args(argv), SIDES, worker, report)


def report(args, sides, results) -> tuple[dict[str, Any], str]:
    stats = {
        s: {
            key: common.summary([r[key] for r in results[s]])
            for key in ("seconds", *(f"{n}_seconds" for n in STAGES), "peak_rss_gib")
        }
        for s in sides
    }
    rows = []
    for name in (*STAGES, None):
        key = f"{name}_seconds" if name else "seconds"
        row = [name or "**whole round**"]
        for side in sides:
            row.append(common.spread(stats[side][key]))
        if set(SIDES) <= set(sides):
            r = common.ratio([x[key] for x in results["round"]], [x[key] for x in results["floors"]])
            stats.setdefault("round_over_ideal", {})[key] = r
            row.append(common.spread(r))
        rows.append(row)
    if "round" in sides:
        rows.insert(
            3,
            [
                "outside the stages (loading prompts, tokenizer, seed pairs)",
                common.spread(common.summary([r["other_seconds"] for r in results["round"]])),
                *(["–", "–"] if len(sides) > 1 else []),
            ],
        )
    headers = ["stage", *(f"{s} seconds median (min–max)" for s in sides)]
    verdict = ""
    if set(SIDES) <= set(sides):
        headers.append("round / ideal (x)")
        overall = stats["round_over_ideal"]["seconds"]["median"]
        verdict = f"Round / ideal = {overall:.2f}x: target <= {TARGET}x **{'met' if overall <= TARGET else 'missed'}**."
    lines = [
        (
            f"### One default round ({args.prompts} prompts x 2 samples), {args.device}, "
            f"{'bf16' if args.bf16 else 'float32'}, {args.reps} repetitions"
        ),
        "",
        common.markdown_table(headers, rows),
        "",
        "Peak RSS GiB: "
        + ", ".join(f"{s} {common.spread(stats[s]['peak_rss_gib'], '.2f')}" for s in sides)
        + ". "
        + verdict,
    ]
    return {"sides": sides, "runs": results, "stats": stats}, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
