"""KL(pi || pi_init) of a benchmarks/spread.py run's evaluated models, measured after the run.

    python benchmarks/spread_kl.py <the spread.py arguments of the run> --seeds 204 205

How far each model moved from the SFT model it started from, on the first --kl-prompts evaluation prompts (32 by
default, for one core's minutes a model): one reply per prompt
sampled from the model at temperature 1 (the policy's own distribution, the evaluation's max_new_tokens), and
the mean over replies of log pi(y|x) - log pi_init(y|x), summed over the reply's tokens (nats per reply; an
unbiased estimate of the sequence-level KL). The same sampling seed for every model of a seed (common random
numbers). Nothing of the run is changed or re-run: it reads the models the run kept (loop.keep_models) and writes
--out-dir/kl/seed-N.json, which benchmarks/spread.py's aggregate adds as a column when every seed has one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from spreadpref.runtime.files import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spread  # noqa: E402  (the run's own settings, paths and seed records)

KL_TEMPERATURE = 1.0  # the policy itself: the KL of a tempered sampler is another quantity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """spread.py's arguments (the run's settings), and --kl-prompts."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--kl-prompts", type=int, default=32, help="the first N evaluation prompts (default 32: one core, minutes)"
    )
    own, rest = parser.parse_known_args(argv)
    args = spread.parse_args(rest)
    args.kl_prompts = own.kl_prompts
    return args


def kl_path(args, seed: int) -> Path:
    return args.out_dir / "kl" / f"seed-{seed}.json"


def model_dirs(args, record: dict[str, Any], model: str) -> dict[str, str]:
    """Each reported key ("variant/round", as in the seed file) and the model directory it names."""
    seed = record["seed"]
    runs = {variant: args.work / f"seed-{seed}" / variant for variant in args.variants}
    start = {"sft": model, "dpo_seed": str(runs[args.variants[0]] / "seed" / "model")}
    dirs = {"sft/0": start["sft"], "dpo_seed/0": start["dpo_seed"]}
    for variant, run in runs.items():
        dirs |= {f"{variant}/{i}": str(spread.round_model_dir(run, i)) for i in args.eval_rounds}
        chosen = record["guard_rounds"].get(variant)
        if chosen is not None:
            first = start[spread.start_model(variant)]
            dirs[f"{variant}/guard"] = first if chosen == 0 else str(spread.round_model_dir(run, chosen))
    return dirs


def measure_seed(args, seed: int, model: str, seed_file: Path) -> dict[str, Any]:
    """KL from pi_init of every model the seed's file reports, each distinct model measured once."""
    from spreadpref.data.loading import load_prompts
    from spreadpref.dpo.logprobs import score_sequences
    from spreadpref.models.loading import load_for_inference, load_tokenizer
    from spreadpref.models.sampling import generate_samples

    record = spread.read_seed_record(args, seed)
    if record is None:
        raise SystemExit(f"seed {seed} has no file in {args.out_dir / 'seeds'}: run benchmarks/spread.py first")
    work = args.work / f"kl-s{seed}"
    config = spread.load(spread.base_overrides(args, model, seed_file, seed, work), args.profile)
    # One reply per prompt (a round needs two, hence the settings' own check: not a round here).
    sampling = config.generation.model_copy(update={"num_samples": 1, "temperature": KL_TEMPERATURE, "top_p": 1.0})
    prompts, _ = load_prompts(config.eval.prompts, limit=config.eval.limit, system_prompt=config.data.system_prompt)
    prompts = prompts[: args.kl_prompts]
    tokenizer = load_tokenizer(config.model)
    init = load_for_inference(config.model, model)
    dirs = model_dirs(args, record, model)
    by_path: dict[str, dict[str, float]] = {}
    for key, path in dirs.items():
        if path in by_path:
            continue
        if path == model:
            by_path[path] = {"kl_from_init": 0.0, "reply_tokens": None}
            continue
        policy = load_for_inference(config.model, path)
        name = key.replace("/", "-")
        samples = generate_samples(policy, tokenizer, prompts, sampling, config.data, seed, work / f"{name}.jsonl")
        prompt_ids = [s.prompt_ids for s in samples]
        reply_ids = [s.reply_ids for s in samples]
        own, counts = score_sequences(policy, prompt_ids, reply_ids, tokenizer.pad_token_id, progress=False)
        reference, _ = score_sequences(init, prompt_ids, reply_ids, tokenizer.pad_token_id, progress=False)
        by_path[path] = {
            "kl_from_init": float((own - reference).mean()),
            "reply_tokens": float(counts.float().mean()),
        }
        print(f"seed {seed} {key}: KL from pi_init {by_path[path]['kl_from_init']:.3f} nats per reply", flush=True)
    values = {key: by_path[path] for key, path in dirs.items()}
    return {
        "seed": seed,
        "settings": spread.settings(args),
        "values": values,
        "temperature": KL_TEMPERATURE,
        "prompts": len(prompts),
        "seed_commit": record.get("commit"),
        "commit": spread.source_commit(),
        "provenance": f"python benchmarks/spread_kl.py --seeds {seed}, {time.strftime('%Y-%m-%d')}",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = seed_file = None
    for seed in args.seeds:
        if kl_path(args, seed).is_file():
            print(f"seed {seed}: {kl_path(args, seed)} exists")
            continue
        model = model or spread.model_source(args)
        seed_file = seed_file or spread.make_seed_pairs(args, model)
        atomic_write_json(kl_path(args, seed), measure_seed(args, seed, model, seed_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
