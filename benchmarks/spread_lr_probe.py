"""Which learning rate moves the embedded model at all? An offline probe on development data only.

    python benchmarks/judge_accuracy.py      # once: pi_0 and its K = 4 samples on builtin:ifeval_prompts
    python benchmarks/spread_lr_probe.py 2e-5 1e-4

Trains pi_0 (the judge-accuracy benchmark's seed-stage model) with DPO, 2 epochs per learning rate, on the
verifier's best-against-worst pair of its 4 samples for every training-split prompt the verifier decides,
and reports constraint satisfaction on the development split (spread.py's: a fixed quarter of the tasks),
never on the evaluation tasks. It narrowed the learning rates that benchmarks/spread.py --dev then compared
through the real pipeline (docs/results.md section 2a).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spread  # noqa: E402 - the development split and config loading are spread.py's

ROOT = spread.ROOT
WORK = ROOT / "benchmarks" / "work" / "spread-lr-probe"
ACCURACY_WORK = ROOT / "benchmarks" / "work" / "judge-accuracy"


def verifier_pairs(out: Path) -> int:
    """The verifier's best and worst of pi_0's samples, for the decided training-split prompts."""
    from spreadpref.data.artifacts import Sample
    from spreadpref.data.loading import load_prompts
    from spreadpref.judges.verifier import VerifierJudge
    from spreadpref.runtime.files import write_jsonl

    prompts, _ = load_prompts("builtin:ifeval_prompts")
    groups: dict[int, list[Sample]] = {}
    for sample in Sample.read(ACCURACY_WORK / "samples.jsonl"):
        groups.setdefault(sample.prompt_index, []).append(sample)
    judge, pairs = VerifierJudge(), []
    for index, group in sorted(groups.items()):
        record = prompts[index]
        if spread.is_dev_task(record.metadata["task_id"]):
            continue
        pair = spread.verifier_pair(judge, record, group)
        if pair is not None:
            pairs.append({"id": record.id, **pair})
    write_jsonl(out, pairs)
    return len(pairs)


def main(learning_rates: list[str]) -> None:
    from spreadpref.dpo.train import train_policy
    from spreadpref.eval.evaluate import EvalModel, evaluate_models

    policy = ACCURACY_WORK / "seed" / "model"
    if not (policy / "config.json").is_file():
        raise SystemExit(f"{policy} is missing: run python benchmarks/judge_accuracy.py first")
    args = spread.parse_args(["--profile", "spa-cpu-long", "--dev", "--work", str(WORK)])
    args.work.mkdir(parents=True, exist_ok=True)
    pairs_file = WORK / "pairs.jsonl"
    print(f"{verifier_pairs(pairs_file)} verifier-labelled pairs from the training split")
    common = ["data.max_length=256", "data.max_prompt_length=128", "data.seed_holdout=0", "seed=0"]
    models = [EvalModel("pi_0", str(policy))]
    for rate in learning_rates:
        overrides = [f"model.name_or_path={policy}", f"data.train={pairs_file}", f"train.learning_rate={rate}"]
        overrides += ["train.num_epochs=2", f"output_dir={WORK / f'lr-{rate}'}", *common]
        models.append(EvalModel(f"lr {rate}", str(train_policy(spread.load(overrides)).model_dir)))
    evaluation = [
        "model.name_or_path=embedded:SmolLM2-135M-Instruct",
        f"eval.prompts={spread.split_prompts(args)[1]}",
        "eval.judge.kind=verifier",
        "eval.max_new_tokens=64",
        f"output_dir={WORK / 'unused'}",
        *common,
    ]
    results = evaluate_models(spread.load(evaluation), models, WORK / "eval")
    for name, row in results["models"].items():
        print(f"{name}: constraints met {row['constraint_satisfaction']:.3f}, {row['mean_words']:.1f} words")
    print(json.dumps({n: r["constraint_satisfaction"] for n, r in results["models"].items()}))


if __name__ == "__main__":
    main(sys.argv[1:] or ["2e-5", "1e-4"])
