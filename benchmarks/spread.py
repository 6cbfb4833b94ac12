"""Does the preference spread? SPA against its baselines on a gold-verifiable task, several seeds.

    python benchmarks/spread.py   # embedded SmolLM2-135M-Instruct, seeds 0 1 2 (about 40 min a seed on 2 cores)
    # or one process per seed on a machine with cores to spare, then the same command to aggregate:
    #   for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/spread.py --seeds $s & done; wait
    #   python benchmarks/spread.py   # reuses seeds/seed-{0,1,2}.json, writes the aggregate
    python benchmarks/spread.py --model tiny --seeds 0 1 --rounds 1 --prompts-per-round 8 --eval-prompts 8 \
        --out-dir /tmp/spread-smoke   # smoke test, a few minutes
    # the longer profile (configs/spa-cpu-long.yaml): choose its budget on the development split, then report
    python benchmarks/spread.py --profile spa-cpu-long --dev --seeds 100 --variants gold --set train.learning_rate=5e-5
    python benchmarks/spread.py --profile spa-cpu-long --variants gold spa_dnd spa_direct --eval-prompts 94

The "human" is a rule-based verifier whose preference is known exactly: prompts are everyday tasks
with IFEval-style constraints (bundled: builtin:ifeval_*), a reply's gold score is the fraction of
its constraints met (if-verifiable's IFEval checkers). The verifier labels the seed pairs (the
stand-in for human annotation: the SFT model's best and worst of 4 samples on the seed prompts) and
scores the answers to held-out prompts whose tasks never occur in training.

Variants (each from the same seed-stage model pi_0 of its seed):
  sft          the initial model
  dpo_seed     DPO on the seed pairs only (pi_0)
  gold         iterative DPO, the verifier labels every round ("100% gold labels": upper reference)
  llm_judge    iterative DPO, the policy prompted as judge (LLM-as-judge; both orders)
  spa_direct   SPA, direct judgment by the implicit reward, no refinement
  spa_refine   SPA + self-refinement (confidence-based label smoothing, plain detector)
  spa_dnd      SPA + self-refinement + decoupled noise detection (the method's default)

Reported per variant and round, mean over seeds with a 95% t-interval: held-out constraint
satisfaction, gold win rate against SFT (verifier as judge, ties one half), mean answer words, and
seed agreement (pi_{i-1}'s implicit reward on the seed pairs), and the fraction of labels smoothed; and,
once benchmarks/spread_kl.py has measured every seed, each model's KL from pi_init.

Each seed's numbers go to --out-dir/seeds/seed-N.json as soon as the seed is done; a later call
reuses a seed file whose settings match (--rerun runs it again) and refuses one whose settings do
not. The aggregate over --seeds goes to results.json, table.md, constraints.png and win_rate.png.
Every stage resumes too: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spreadpref.runtime.files import atomic_path, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "gold": ["judge.kind=verifier", "refine.enabled=false"],
    "llm_judge": ["judge.kind=llm", "judge.llm.model=policy", "refine.enabled=false"],
    "spa_direct": ["refine.enabled=false"],
    "spa_refine": ["refine.enabled=true", "refine.decoupled=false"],
    "spa_dnd": ["refine.enabled=true", "refine.decoupled=true"],
    # The label safeguards (docs/spa-method.md), as chosen in the gold world's development seeds.
    "spa_length": ["refine.enabled=true", "refine.decoupled=true", "judge.length_penalty=fit"],
    "spa_replay": ["refine.enabled=true", "refine.decoupled=true", "loop.replay_fraction=0.25"],
    "spa_length_replay": [
        "refine.enabled=true",
        "refine.decoupled=true",
        "judge.length_penalty=fit",
        "loop.replay_fraction=0.25",
    ],
}
# The base -> SFT -> seed world (--init sft): {base} is pi_base, the model pi_init was fine-tuned from.
VARIANTS |= {
    "seed_base": [
        "refine.enabled=true",
        "refine.decoupled=true",
        "judge.reference={base}",
        "judge.length_penalty=fit",
        "loop.replay_fraction=0.25",
    ],
    "no_seed": ["refine.enabled=true", "refine.decoupled=true", "loop.seed_stage=false", "judge.reference={base}"],
}
PAPER_VARIANTS = ("gold", "llm_judge", "spa_direct", "spa_refine", "spa_dnd")  # the default --variants
SFT_ONLY = ("seed_base", "no_seed")
SFT_VARIANTS = ("spa_dnd", "spa_length_replay", "seed_base", "no_seed", "gold")  # --init sft's default
LABELS = {
    "sft": "SFT",
    "dpo_seed": "DPO on seed only",
    "gold": "Iterative DPO, gold verifier judge",
    "llm_judge": "Iterative DPO, LLM-as-judge",
    "spa_direct": "SPA, direct judgment",
    "spa_refine": "SPA + self-refinement",
    "spa_dnd": "SPA + refinement + DND",
    "spa_length": "SPA + DND, length-regularised judge",
    "spa_replay": "SPA + DND, replay 25% seed pairs",
    "spa_length_replay": "SPA + DND, length-regularised + replay 25%",
    "seed_base": "Seeded SPA vs pi_base + length-regularised + replay 25%",
    "no_seed": "SPA without seed (pi_init start, reference pi_base)",
    "base": "pi_base (before SFT)",
}
ANNOTATION_SAMPLES, ANNOTATION_MAX_NEW_TOKENS = 4, 64  # the seed "annotation" draws, fixed across settings
# The seed "annotation" is the same for every profile: one set of verifier-labelled seed pairs.
ANNOTATION_WORK = ROOT / "benchmarks" / "work" / "spread"
DEFAULT_PROFILE = "spa-cpu"
# What each profile's published runs used when a flag is not given. The long profile takes its rounds,
# round sizes and K from its YAML, draws round prompts from the training tasks outside the development
# split, and is reported on builtin:ifeval_eval (or, with --dev, on the development split).
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "spa-cpu": {"rounds": 2, "prompts_per_round": 24, "out_dir": ROOT / "docs" / "results", "work": ANNOTATION_WORK},
    "spa-cpu-long": {
        "rounds": None,
        "prompts_per_round": None,
        "out_dir": ROOT / "docs" / "results" / "embedded-long",
        "work": ROOT / "benchmarks" / "work" / "spread-long",
    },
}
# The base -> SFT -> seed world keeps its work and results apart from the published runs.
SFT_WORK = ROOT / "benchmarks" / "work" / "spread-sft"  # pi_init (benchmarks/sft_init.py) and its seed pairs
SFT_DEFAULTS: dict[str, Any] = {"out_dir": ROOT / "docs" / "results" / "embedded-sft", "work": SFT_WORK}
DEV_ONE_IN = 4  # a task of builtin:ifeval_prompts is in the development split when its hash is 0 mod 4
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, tiny (smoke test) or a model directory")
    parser.add_argument(
        "--init",
        default="model",
        choices=["model", "sft"],
        help="pi_init: the model itself (the published runs), or sft: --model is pi_base and pi_init is it after "
        "SFT on verifier-passing demonstrations (benchmarks/sft_init.py), the paper's base -> SFT -> seed",
    )
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=list(PROFILE_DEFAULTS),
        help="the run profile measured (configs/NAME.yaml); spa-cpu-long is the longer budget of issue 14",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="choose a budget: evaluate on the development split of the training tasks, never on ifeval_eval",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--dev: 100 101)")
    parser.add_argument("--rounds", type=int, default=None, help="default: the profile's published runs")
    parser.add_argument("--prompts-per-round", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--eval-rounds", type=int, nargs="+", default=None, help="rounds whose models are evaluated (default: all)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides (budget)")
    parser.add_argument("--seed-pairs", type=int, default=64, help="verifier-labelled seed pairs (at most)")
    parser.add_argument(
        "--seed-prompts", type=int, default=None, help="seed tasks sampled for the seed pairs (default: all 94)"
    )
    parser.add_argument(
        "--sft-work",
        type=Path,
        default=None,
        help="--init sft: where pi_init and its seed pairs are built and kept (default: benchmarks/work/spread-sft "
        "for the embedded model, else --work/sft)",
    )
    parser.add_argument(
        "--sft-tasks", type=int, default=None, help="--init sft: training tasks sampled for demonstrations (all)"
    )
    parser.add_argument("--sft-samples", type=int, default=None, help="--init sft: best-of-N draws per task (4)")
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=None, help="default: benchmarks/work/spread[-long]")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="results.json, table.md, plots; one file per seed in seeds/ (reused unless --rerun); "
        "default: docs/results (spa-cpu), docs/results/embedded-long[/dev] (spa-cpu-long)",
    )
    parser.add_argument(
        "--annotation-work",
        type=Path,
        default=None,
        help="where the verifier-labelled seed pairs are made and kept, for every profile "
        "(default: benchmarks/work/spread for the embedded model, else --work)",
    )
    parser.add_argument("--rerun", action="store_true", help="run the seeds again even if their files exist")
    parser.add_argument(
        "--prepare-shared-eval",
        action="store_true",
        help="--init sft: answer with pi_base and pi_init once, for every seed's evaluation to copy, and exit",
    )
    args = parser.parse_args(argv)
    if args.init == "sft":
        args.profile = "spa-cpu-long" if args.profile == DEFAULT_PROFILE else args.profile
    defaults = PROFILE_DEFAULTS[args.profile] | (SFT_DEFAULTS if args.init == "sft" else {})
    if args.dev and args.profile == DEFAULT_PROFILE:
        parser.error("--dev needs a profile with a development split (--profile spa-cpu-long)")
    profile = None if args.profile == DEFAULT_PROFILE else load(list(args.set), args.profile)
    args.rounds = args.rounds or defaults["rounds"] or profile.loop.rounds
    args.work = args.work or defaults["work"]
    args.annotation_work = args.annotation_work or (ANNOTATION_WORK if args.model == "embedded" else args.work)
    args.out_dir = args.out_dir or (defaults["out_dir"] / "dev" if args.dev else defaults["out_dir"])
    if args.prompts_per_round is None and defaults["prompts_per_round"] is not None:
        args.prompts_per_round = defaults["prompts_per_round"]
    args.seeds = args.seeds or ([100, 101] if args.dev else [0, 1, 2])
    args.variants = args.variants or list(SFT_VARIANTS if args.init == "sft" else PAPER_VARIANTS)
    args.sft_work = args.sft_work or (SFT_WORK if args.model == "embedded" else args.work / "sft")
    if args.init == "sft" and args.annotation_work in (ANNOTATION_WORK, args.work):
        args.annotation_work = args.sft_work  # pi_init's own seed pairs, made once beside pi_init, for every --work
    if args.init == "model" and any(v in SFT_ONLY for v in args.variants):
        parser.error(f"variants {', '.join(SFT_ONLY)} need a base model: --init sft")
    args.eval_rounds = sorted(set(args.eval_rounds or range(1, args.rounds + 1)))
    return args


def base_overrides(args: argparse.Namespace, model: str, seed_file: Path, seed: int, out: Path) -> list[str]:
    overrides = [
        f"model.name_or_path={model}",
        f"data.train={seed_file}",
        f"data.prompts={round_prompts(args)}",
        "data.max_length=256",
        "data.max_prompt_length=128",
        f"seed={seed}",
        f"output_dir={out}",
        f"loop.rounds={args.rounds}",
        f"loop.keep_models={args.rounds + 1}",
        f"generation.max_new_tokens={args.max_new_tokens}",
        f"eval.prompts={eval_prompts(args)}",
        f"eval.limit={args.eval_prompts}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        "eval.judge.kind=verifier",
        # The paper's loop for every variant (the default profile adds two safeguards); the safeguard variants
        # turn theirs on again.
        "judge.length_penalty=none",
        "loop.replay_fraction=0",
    ]
    if args.prompts_per_round is not None:
        overrides.append(f"loop.prompts_per_round={[args.prompts_per_round] * args.rounds}")
    return overrides + list(args.set)


def is_dev_task(task_id: str) -> bool:
    """The development split: one task in DEV_ONE_IN, fixed by a hash of the task id (never by a result)."""
    return int(hashlib.sha256(task_id.encode()).hexdigest(), 16) % DEV_ONE_IN == 0


def split_prompts(args: argparse.Namespace) -> tuple[Path, Path]:
    """builtin:ifeval_prompts by task: the rounds' prompts and the development prompts, as JSONL in --work."""
    from spreadpref.data.loading import load_prompts
    from spreadpref.runtime.files import write_jsonl

    paths = args.work / "round_prompts.jsonl", args.work / "dev_prompts.jsonl"
    if all(p.is_file() for p in paths):
        return paths
    prompts, _ = load_prompts("builtin:ifeval_prompts")
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for record in prompts:
        row = {"id": record.id, "prompt": record.prompt[-1]["content"], **record.metadata}
        rows[is_dev_task(record.metadata["task_id"])].append(row)
    for path, dev in zip(paths, (False, True)):
        write_jsonl(path, rows[dev])
    return paths


def round_prompts(args: argparse.Namespace) -> str:
    return "builtin:ifeval_prompts" if args.profile == DEFAULT_PROFILE else str(split_prompts(args)[0])


def eval_prompts(args: argparse.Namespace) -> str:
    return str(split_prompts(args)[1]) if args.dev else "builtin:ifeval_eval"


def model_source(args: argparse.Namespace) -> str:
    """pi_init's path or name; with --init sft, pi_init is built from --model (pi_base, args.base_model)."""
    if args.init == "sft":
        import sft_init

        args.base_model = base_model_source(args)
        tasks = [] if args.sft_tasks is None else ["--tasks", str(args.sft_tasks)]
        tasks += [] if args.sft_samples is None else ["--samples", str(args.sft_samples)]
        return str(
            sft_init.build_pi_init(
                sft_init.parse_args(["--base", args.base_model, "--work", str(args.sft_work)] + tasks)
            )
        )
    return base_model_source(args)


def base_model_source(args: argparse.Namespace) -> str:
    if args.model == "embedded":
        return "embedded:SmolLM2-135M-Instruct"
    if args.model == "tiny":
        from spreadpref.testing import make_tiny_model_dir

        path = args.work / "tiny-model"
        if not (path / "config.json").is_file():
            make_tiny_model_dir(path)
        return str(path)
    return args.model


def load(overrides: list[str], profile: str = DEFAULT_PROFILE):
    from spreadpref.config import load_config

    return load_config(profile, overrides)


# ---------------------------------------------------------------------------------------------
# Seed pairs: the SFT model's samples, labelled by the verifier


def make_seed_pairs(args: argparse.Namespace, model: str) -> Path:
    """Best and worst (by the verifier) of 4 SFT samples per seed prompt; ties give no pair."""
    from spreadpref.data.loading import load_prompts
    from spreadpref.judges.verifier import VerifierJudge
    from spreadpref.models.loading import load_for_inference, load_tokenizer
    from spreadpref.models.sampling import generate_samples
    from spreadpref.runtime.files import write_jsonl

    out = args.annotation_work / "seed_pairs.jsonl"
    if out.is_file():
        return out
    config = load(
        base_overrides(args, model, out, 1234, args.annotation_work / "seed-annotation")
        + [
            f"generation.num_samples={ANNOTATION_SAMPLES}",
            "generation.temperature=1.0",
            f"generation.max_new_tokens={ANNOTATION_MAX_NEW_TOKENS}",
        ]
    )
    prompts, _ = load_prompts("builtin:ifeval_seed_prompts", limit=args.seed_prompts)
    tokenizer = load_tokenizer(config.model)
    samples = generate_samples(
        load_for_inference(config.model, model),
        tokenizer,
        prompts,
        config.generation,
        config.data,
        config.seed,
        args.annotation_work / "seed-annotation" / "samples.jsonl",
    )
    by_prompt: dict[int, list[dict]] = {}
    for sample in samples:
        by_prompt.setdefault(sample.prompt_index, []).append(sample)
    judge, pairs = VerifierJudge(), []
    for index, group in sorted(by_prompt.items()):
        pair = verifier_pair(judge, prompts[index], group)
        if pair is not None:
            pairs.append({"id": f"seed-{prompts[index].id}", **pair})
        if len(pairs) >= args.seed_pairs:
            break
    write_jsonl(out, pairs)
    print(f"seed pairs: {len(pairs)} from {len(by_prompt)} prompts (the others' 4 samples all tied)")
    return out


def verifier_pair(judge, record, group: list) -> dict[str, Any] | None:
    """The verifier's best against its worst of one prompt's samples, as a preference row with their token ids;
    None when every sample meets the same share of constraints (a tie gives no pair)."""
    from spreadpref.judges.base import Comparison

    comparison = Comparison(record.prompt, [s.text for s in group], record.id, metadata=record.metadata)
    scores = judge.judge([comparison])[0].scores
    best, worst = max(range(len(group)), key=scores.__getitem__), min(range(len(group)), key=scores.__getitem__)
    if scores[best] == scores[worst]:
        return None
    chosen, rejected = group[best], group[worst]
    return {
        "prompt": record.prompt,
        "chosen": chosen.text,
        "rejected": rejected.text,
        "prompt_ids": chosen.prompt_ids,
        "chosen_ids": chosen.reply_ids,
        "rejected_ids": rejected.reply_ids,
        "chosen_truncated": chosen.cut_off,
        "rejected_truncated": rejected.cut_off,
        "gold_chosen": scores[best],
        "gold_rejected": scores[worst],
        "instruction_id_list": record.metadata["instruction_id_list"],
        "kwargs": record.metadata["kwargs"],
    }


# ---------------------------------------------------------------------------------------------
# Runs, sharing what variants have in common


def share_stages(source: Path, target: Path, stages: list[str]) -> None:
    """Start ``target`` with ``source``'s finished ``stages`` (identical fingerprints: same config prefix)."""
    from spreadpref.runtime.manifest import Manifest
    from spreadpref.spa.plan import ROUND_OUTPUTS

    if (target / "manifest.json").is_file() or not (source / "manifest.json").is_file():
        return
    entries = Manifest(source).data.get("stages", {})
    if not all(entries.get(s, {}).get("status") == "complete" for s in stages):
        return
    target.mkdir(parents=True)
    for stage in stages:
        if stage == "seed":
            shutil.copytree(source / "seed", target / "seed")
            continue
        round_name, step = stage.split("/")
        files = ROUND_OUTPUTS[step]  # the files each stage declares it writes
        (target / round_name).mkdir(exist_ok=True)
        for name in files:
            if (source / round_name / name).is_file():
                shutil.copy2(source / round_name / name, target / round_name / name)
    kept = {s: entries[s] for s in stages}
    text = json.dumps({"stages": kept}).replace(str(source), str(target))
    (target / "manifest.json").write_text(text)
    summary = json.loads((source / "summary.json").read_text())
    # The shared round-1 figures (generation, judging) stay; training fills in its own.
    summary["rounds"] = {"1": summary["rounds"]["1"]} if any(s.startswith("round-1") for s in stages) else {}
    (target / "summary.json").write_text(json.dumps(summary).replace(str(source), str(target)))


def run_variant(args, model: str, seed_file: Path, seed: int, variant: str) -> Path:
    from spreadpref.spa.loop import run

    out = args.work / f"seed-{seed}" / variant
    overrides = base_overrides(args, model, seed_file, seed, out)
    overrides += [o.format(base=getattr(args, "base_model", None)) for o in VARIANTS[variant]]
    if args.init == "model":
        # Every seed pair trains pi_0, as when the published seeds were run (before data.seed_holdout existed).
        overrides.append("data.seed_holdout=0")  # --init sft keeps the default 20%: the guard's held-out pairs
    if variant not in ("gold", "llm_judge"):
        overrides.append("judge.gold=verifier")  # measures the self-labels; the run trains on its own labels
    run(load(overrides, args.profile))
    return out


def round_model_dir(run: Path, round_index: int) -> Path:
    """Where a variant's run keeps the model a round trained."""
    return run / f"round-{round_index}" / "train" / "model"


def start_model(variant: str) -> str:
    """The model a variant's rounds start from: pi_init for no_seed, the seed-only model pi_0 for the others."""
    return "sft" if variant == "no_seed" else "dpo_seed"


def judge_overrides(variant: str) -> list[str]:
    """A variant's settings of the judge stage: variants that share them can share its output."""
    return sorted(o for o in VARIANTS[variant] if o.startswith("judge."))


def run_seed(args, model: str, seed_file: Path, seed: int) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    first = args.variants[0]
    for variant in args.variants:
        out = args.work / f"seed-{seed}" / variant
        if variant != first and variant != "no_seed":  # no_seed starts from pi_init: nothing to share
            # Seed stage and round-1 samples depend only on the seed; SPA variants with the same judge settings
            # also share round-1 judging (spa_length_replay's length penalty pairs differently: it judges anew).
            shared = ["seed", "round-1/generate"]
            source = dirs[first]
            same_judge = [v for v in dirs if v.startswith("spa_") and judge_overrides(v) == judge_overrides(variant)]
            if variant.startswith("spa_") and same_judge:
                shared, source = shared + ["round-1/judge"], dirs[same_judge[0]]
            share_stages(source, out, shared)
        dirs[variant] = run_variant(args, model, seed_file, seed, variant)
    return dirs


def evaluate_seed(args, model: str, seed_file: Path, seed: int, dirs: dict[str, Path]) -> dict[str, Any]:
    from spreadpref.eval.evaluate import EvalModel, evaluate_models
    from spreadpref.models.loading import resolve_model_path

    first = dirs[args.variants[0]]
    models = [
        EvalModel("sft", resolve_model_path(model)),
        EvalModel(f"s{seed}/dpo_seed", str(first / "seed" / "model")),
    ]
    if args.init == "sft":
        models.insert(0, EvalModel("base", resolve_model_path(args.base_model)))
    for variant, directory in dirs.items():
        rounds = set(args.eval_rounds)
        if args.init == "sft":  # the guard's choice is evaluated too, whichever round it is
            rounds.add(guard_choice(json.loads((directory / "summary.json").read_text()), args.rounds))
        models += [
            EvalModel(f"s{seed}/{variant}/round-{i}", str(round_model_dir(directory, i))) for i in sorted(rounds - {0})
        ]
    # One evaluation directory per seed, so that seeds can run as parallel processes (--seeds 0, --seeds 1, ...).
    # The shared answers copied in first make the directory hold files the evaluation did not write: allowed here.
    shared = ["allow_existing_files=true"] if args.init == "sft" else []
    config = load(base_overrides(args, model, seed_file, seed, first) + shared, args.profile)
    out = args.work / f"eval-{'dev-' if args.dev else ''}s{seed}"
    if args.init == "sft":
        reuse_shared_answers(args, out)
    return evaluate_models(config, models, out)


def shared_eval_dir(args: argparse.Namespace) -> Path:
    return args.work / f"eval-{'dev-' if args.dev else ''}shared"


def prepare_shared_eval(args: argparse.Namespace, model: str, seed_file: Path) -> None:
    """pi_base's and pi_init's answers, the same greedy answers for every seed, made once (--prepare-shared-eval)
    and copied into each seed's evaluation directory."""
    from spreadpref.eval.evaluate import EvalModel, evaluate_models
    from spreadpref.models.loading import resolve_model_path

    models = [EvalModel("base", resolve_model_path(args.base_model)), EvalModel("sft", resolve_model_path(model))]
    config = load(base_overrides(args, model, seed_file, 0, args.work / "shared"), args.profile)
    evaluate_models(config, models, shared_eval_dir(args))


def reuse_shared_answers(args: argparse.Namespace, out: Path) -> None:
    answers = shared_eval_dir(args) / "answers"
    for name in ("base.jsonl", "sft.jsonl", "baseline.jsonl"):
        if (answers / name).is_file() and not (out / "answers" / name).is_file():
            (out / "answers").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(answers / name, out / "answers" / name)


# ---------------------------------------------------------------------------------------------
# One results file per seed, then the aggregate over seeds

METRICS = ("constraint_satisfaction", "win_rate", "mean_words")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a seed's numbers depend on; a seed file is reused only when these match."""
    return {
        "model": args.model,
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "seed_pairs": args.seed_pairs,
        "eval_prompts": args.eval_prompts,
        "max_new_tokens": args.max_new_tokens,
        "variants": list(args.variants),
        # Added with the long profile; the default profile's published seed files predate them.
        **(
            {}
            if args.profile == DEFAULT_PROFILE
            else {"profile": args.profile, "dev": args.dev, "eval_rounds": args.eval_rounds, "set": list(args.set)}
        ),
        **({"init": "sft"} if args.init == "sft" else {}),
        # A reduced world (smaller than the report's); the report's seed files predate these and keep matching.
        **{k: getattr(args, k) for k in ("seed_prompts", "sft_tasks", "sft_samples") if getattr(args, k) is not None},
    }


def round_figures(row: dict[str, Any]) -> dict[str, Any]:
    """What the run itself measured in a round (its summary row); self-label accuracy needs judge.gold."""
    from spreadpref.spa.summary import label_measurements

    labels = label_measurements(row)
    return {
        "seed_agreement": row.get("seed_agreement"),
        **{k: labels[k] for k in ("smoothed_fraction", "self_label_accuracy", "pairs")},
    }


def guard_choice(summary: dict[str, Any], rounds: int) -> int:
    """The round loop.final_model=best_held_out picks among the seed model (0) and rounds 1..``rounds``."""
    from spreadpref.spa.guard import agreements_of, choose_final_round

    return choose_final_round(agreements_of(summary, rounds), "best_held_out")


def seed_path(args: argparse.Namespace, seed: int) -> Path:
    return args.out_dir / "seeds" / f"seed-{seed}.json"


def seed_record(
    args, seed: int, evaluated: dict[str, Any], dirs: dict[str, Path], seed_file: Path, seconds: float
) -> dict[str, Any]:
    """One seed's numbers, keyed "variant/round" (sft and dpo_seed are round 0).

    ``seconds`` is the wall time of the call that wrote the file: a call that resumed finished runs
    counts only what was left (seed 2's file says 8 s: its runs had finished in an earlier process).
    """
    models = evaluated["models"]
    values = {
        **({"base/0": {k: models["base"][k] for k in METRICS}} if "base" in models else {}),
        "sft/0": {**{k: models["sft"][k] for k in METRICS}, "win_rate": 0.5},
        "dpo_seed/0": {k: models[f"s{seed}/dpo_seed"][k] for k in METRICS},
    }
    guard_rounds = {}
    for variant, directory in dirs.items():
        summary = json.loads((directory / "summary.json").read_text())
        rounds = summary["rounds"]
        for i in range(1, args.rounds + 1):
            row = models.get(f"s{seed}/{variant}/round-{i}", {})  # rounds outside --eval-rounds: None
            values[f"{variant}/{i}"] = {**{k: row.get(k) for k in METRICS}, **round_figures(rounds[str(i)])}
            if args.init == "sft" and i not in args.eval_rounds:
                values[f"{variant}/{i}"].update(dict.fromkeys(METRICS))  # evaluated only as the guard's choice
        if args.init == "sft":
            # The guard's choice (loop.final_model=best_held_out) among the evaluated models, from the run's own
            # held-out agreements: round 0 is the seed model (pi_init for no_seed, which holds nothing out).
            chosen = guard_choice(summary, args.rounds)
            guard_rounds[variant] = chosen
            start = f"{start_model(variant)}/0"
            row = models.get(f"s{seed}/{variant}/round-{chosen}", {})
            values[f"{variant}/guard"] = dict(values[start]) if chosen == 0 else {k: row.get(k) for k in METRICS}
    return {
        "seed": seed,
        "settings": settings(args),
        "values": values,
        "guard_rounds": guard_rounds,
        "seed_pairs": len(seed_file.read_text(encoding="utf-8").splitlines()),
        "eval_prompts": evaluated["prompts"],
        "seconds": round(seconds),
        "provenance": f"python benchmarks/spread.py --seeds {seed}, {time.strftime('%Y-%m-%d')}",
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The commit the seed ran from: a report whose seeds span sessions says which code made each."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def read_seed_record(args: argparse.Namespace, seed: int) -> dict[str, Any] | None:
    """The stored record of ``seed`` if its settings are this run's; None if there is none."""
    path = seed_path(args, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("settings") != settings(args):
        raise SystemExit(
            f"{path} was made with other settings ({record.get('settings')}); run with --rerun to "
            f"replace it, or with --out-dir elsewhere to keep it"
        )
    return record


def with_kl(args: argparse.Namespace, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each model's KL from pi_init (benchmarks/spread_kl.py, measured after the run) added,
    when every seed has it; otherwise unchanged (a mean over some of the seeds would not be the table's)."""
    paths = [args.out_dir / "kl" / f"seed-{r['seed']}.json" for r in records]
    if not all(p.is_file() for p in paths):
        if any(p.is_file() for p in paths):
            print("KL from pi_init: not every seed has it (benchmarks/spread_kl.py); the column is left out")
        return records
    merged = []
    for record, path in zip(records, paths):
        kl = json.loads(path.read_text(encoding="utf-8"))["values"]
        values = {
            key: {**row, "kl_from_init": kl.get(key, {}).get("kl_from_init")} for key, row in record["values"].items()
        }
        merged.append({**record, "values": values})
    return merged


def mean_ci(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and the half-width of a 95% t-interval across seeds (0 for one seed; None for no values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, T_95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def aggregate(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per variant and round: each metric's mean, 95% half-width and per-seed values (seed order)."""
    table = []
    for key in records[0]["values"]:
        variant, round_index = key.split("/")
        entry: dict[str, Any] = {"variant": variant, "round": round_label(round_index), "seeds": len(records)}
        for metric in records[0]["values"][key]:
            values = [r["values"][key][metric] for r in records]
            entry[metric], entry[f"{metric}_ci"] = mean_ci(values)
            entry[f"{metric}_per_seed"] = values
        table.append(entry)
    return {
        "settings": settings(args),
        "seeds": [r["seed"] for r in records],
        "rows": table,
        "paired": paired_differences(records),
        # Against the ceiling: iterative DPO with the verifier as judge, its last round.
        **({"paired_gold": paired_differences(records, f"gold/{args.rounds}")} if gold_run(args, records) else {}),
        "seed_pairs": records[0]["seed_pairs"],
        "eval_prompts": records[0]["eval_prompts"],
        "provenance": {str(r["seed"]): r["provenance"] for r in records},
    }


def round_label(text: str) -> int | str:
    """A round's number, or "guard" for the guard's choice."""
    return int(text) if text.isdigit() else text


def paired_differences(records: list[dict[str, Any]], base: str = "dpo_seed/0") -> list[dict[str, Any]]:
    """Each evaluated model's constraints met minus the seed-only model's, seed by seed, with a 95% t-interval."""
    rows = []
    for key in records[0]["values"]:
        diffs = [
            r["values"][key]["constraint_satisfaction"] - r["values"][base]["constraint_satisfaction"]
            for r in records
            if r["values"][key].get("constraint_satisfaction") is not None
        ]
        if key == base or not diffs:
            continue
        mean, half = mean_ci(diffs)
        variant, round_index = key.split("/")
        better = sum(d > 0 for d in diffs)
        rows.append(
            {
                "variant": variant,
                "round": round_label(round_index),
                "mean": mean,
                "ci": half,
                "per_seed": diffs,
                "better": better,
            }
        )
    return rows


def gold_run(args: argparse.Namespace, records: list[dict[str, Any]]) -> bool:
    key = f"gold/{args.rounds}"
    return all(r["values"].get(key, {}).get("constraint_satisfaction") is not None for r in records)


def write_outputs(args, aggregate: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", aggregate)
    rows = aggregate["rows"]
    present = {r["variant"] for r in rows}
    shown = [v for v in ("base", "sft", "dpo_seed") if v in present] + list(args.variants)
    for metric, ylabel, name in (
        ("constraint_satisfaction", "held-out constraints met", "constraints.png"),
        ("win_rate", "gold win rate vs SFT", "win_rate.png"),
    ):
        figure, axis = plt.subplots(figsize=(6.4, 3.4))
        for k, variant in enumerate(shown):
            points = sorted(
                (r["round"], r[metric], r[f"{metric}_ci"])
                for r in rows
                # rounds outside --eval-rounds have no value; the guard's choice is a table row, not a round
                if r["variant"] == variant and r[metric] is not None and isinstance(r["round"], int)
            )
            if variant in VARIANTS:  # rounds start from the seed model (no_seed: from pi_init)
                start = [r for r in rows if r["variant"] == start_model(variant)]
                points = [(0, start[0][metric], start[0][f"{metric}_ci"])] + points if start else points
            dodge = (k - (len(shown) - 1) / 2) * 0.03  # side by side, so that the intervals stay readable
            axis.errorbar(
                [p[0] + dodge for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker="o",
                capsize=3,
                label=LABELS[variant],
                alpha=0.85,
            )
        axis.set_xlabel("round (0 = seed model)")
        axis.set_ylabel(ylabel)
        axis.set_xticks(range(args.rounds + 1))
        axis.legend(fontsize=7, loc="best")
        with atomic_path(out / name) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
    ceiling = "paired_gold" in aggregate
    kl = any(r.get("kl_from_init") is not None for r in rows)
    lines = [
        "| variant | round | constraints met | − seed only (paired) | "
        + ("− verifier ceiling (paired) | " if ceiling else "")
        + "gold win rate vs SFT | words | "
        + ("KL from π_init | " if kl else "")
        + "pairs | self-label accuracy | seed agreement | smoothed |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if ceiling else "") + ("---|" if kl else ""),
    ]
    order = {v: i for i, v in enumerate(shown)}
    paired = {(d["variant"], d["round"]): d for d in aggregate.get("paired", [])}
    paired_gold = {(d["variant"], d["round"]): d for d in aggregate.get("paired_gold", [])}
    for r in sorted(rows, key=lambda r: (order[r["variant"]], r["round"] if isinstance(r["round"], int) else 99)):
        diff_cell = _paired_cell(paired.get((r["variant"], r["round"])))
        if ceiling:
            diff_cell += " | " + _paired_cell(paired_gold.get((r["variant"], r["round"])))
        lines.append(
            f"| {LABELS[r['variant']]} | {r['round']} | {_cell(r, 'constraint_satisfaction')} | {diff_cell} | "
            f"{_cell(r, 'win_rate')} | {_cell(r, 'mean_words', '.1f')} | "
            + (f"{_cell(r, 'kl_from_init', '.2f')} | " if kl else "")
            + f"{_cell(r, 'pairs', '.0f')} | "
            f"{_cell(r, 'self_label_accuracy')} | {_cell(r, 'seed_agreement')} | {_cell(r, 'smoothed_fraction', '.2f')} |"
        )
    command = "python benchmarks/spread.py " + " ".join(sys.argv[1:])
    atomic_write_text(
        out / "table.md",
        (
            f"<!-- written by {command.strip()}; seeds {aggregate['seeds']}, {aggregate['seed_pairs']} seed pairs, "
            f"{aggregate['eval_prompts']} evaluation prompts -->\n" + "\n".join(lines) + "\n"
        ),
    )
    print("\n".join(lines))


def _paired_cell(diff: dict[str, Any] | None) -> str:
    """A paired difference as mean (95% interval), seeds better / seeds."""
    if diff is None:
        return "–"
    low, high = diff["mean"] - diff["ci"], diff["mean"] + diff["ci"]
    return f"{diff['mean']:+.3f} ({low:+.3f} to {high:+.3f}), {diff['better']}/{len(diff['per_seed'])}"


def _cell(row: dict[str, Any], metric: str, spec: str = ".3f") -> str:
    """mean ± 95% half-width across seeds."""
    from spreadpref.runtime.progress import format_cell

    value = format_cell(row.get(metric), spec)
    return value if value == "–" else f"{value} ± {format_cell(row[f'{metric}_ci'], spec)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare_shared_eval:
        model = model_source(args)
        prepare_shared_eval(args, model, make_seed_pairs(args, model))
        return 0
    model = seed_file = None
    records = []
    for seed in args.seeds:
        record = None if args.rerun else read_seed_record(args, seed)
        if record is not None:
            print(f"seed {seed}: reusing {seed_path(args, seed)} (--rerun to run it again)")
        else:
            started = time.perf_counter()
            model = model or model_source(args)
            seed_file = seed_file or make_seed_pairs(args, model)
            dirs = run_seed(args, model, seed_file, seed)
            evaluated = evaluate_seed(args, model, seed_file, seed, dirs)
            record = seed_record(args, seed, evaluated, dirs, seed_file, time.perf_counter() - started)
            atomic_write_json(seed_path(args, seed), record)
        records.append(record)
    write_outputs(args, aggregate(args, with_kl(args, records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
