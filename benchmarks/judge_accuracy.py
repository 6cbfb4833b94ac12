"""How often does each judge label a pair the way the gold verifier does? The paper's central comparison.

    python benchmarks/judge_accuracy.py     # embedded SmolLM2-135M-Instruct, about 25 min on 2 cores

pi_0 is the seed-stage model: DPO of the SFT model on the verifier-labelled seed pairs of
``benchmarks/spread.py`` (the same file, made once and shared). pi_0 then samples K = 4 replies to
each of ``--prompts`` fresh verifiable prompts (``builtin:ifeval_prompts``, whose tasks never occur
among the seed prompts), and every judge labels every pair of replies of a prompt:

  implicit         SPA's direct judgment: s = log pi_0(y|x) - log pi_init(y|x), summed over tokens
  implicit_mean    the same with per-token means (judge.length_normalize)
  llm_judge        pi_0 prompted as judge, "A or B?", both orders (the paper's LLM-as-judge baseline)
  chance           a coin (accuracy 0.5 by construction; the interval shows the noise at this size)

The gold verifier scores each reply by the share of its prompt's constraints met; pairs the verifier
ties are left out. Two accuracies per judge:

  all pairs        every pair of the 6 per prompt that the verifier does not tie; a judge's own tie counts
                   one half; 95% interval by a bootstrap over prompts (pairs of a prompt share replies)
  selected pair    the pair SPA would train on: the judge's highest- against its lowest-scored reply of
                   the prompt, when the verifier does not tie them; 95% Wilson interval (one per prompt)

Writes docs/results/judge_accuracy.json and judge_accuracy.md; every stage is reused when rerun.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import spread  # noqa: E402 - the seed pairs and settings are spread.py's

JUDGES = ("implicit", "implicit_mean", "llm_judge", "chance")
LABELS = {
    "implicit": "Implicit reward vs pi_init (SPA)",
    "implicit_mean": "Implicit reward, length-normalised",
    "llm_judge": "LLM-as-judge (pi_0, both orders)",
    "chance": "Chance",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, tiny (smoke test) or a model directory")
    parser.add_argument("--prompts", type=int, default=240, help="fresh verifiable prompts (at most 282)")
    parser.add_argument("--samples", type=int, default=4, help="replies per prompt (K)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed-pairs", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "judge-accuracy")
    parser.add_argument(
        "--spread-work",
        type=Path,
        default=ROOT / "benchmarks" / "work" / "spread",
        help="where spread.py keeps (or makes) the verifier-labelled seed pairs",
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    return parser.parse_args(argv)


def seed_model(args: argparse.Namespace, model: str, seed_file: Path) -> Path:
    """pi_0: the seed stage on every verifier-labelled seed pair (the settings of spread.py's runs)."""
    from spreadpref.dpo.train import train_policy

    spread_args = spread.parse_args(
        [
            "--seed-pairs",
            str(args.seed_pairs),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--work",
            str(args.spread_work),
        ]
    )
    config = spread.load(spread.base_overrides(spread_args, model, seed_file, 0, args.work / "seed"))
    return train_policy(config).model_dir


def sample_replies(args: argparse.Namespace, model: str, policy: Path):
    from spreadpref.data.loading import load_prompts
    from spreadpref.models.loading import load_for_inference, load_tokenizer
    from spreadpref.models.sampling import generate_samples

    config = spread.load(
        [
            f"model.name_or_path={model}",
            "data.max_length=256",
            "data.max_prompt_length=128",
            f"generation.num_samples={args.samples}",
            f"generation.max_new_tokens={args.max_new_tokens}",
        ]
    )
    prompts, _ = load_prompts("builtin:ifeval_prompts", limit=args.prompts)
    tokenizer = load_tokenizer(config.model)
    samples = generate_samples(
        load_for_inference(config.model, policy),
        tokenizer,
        prompts,
        config.generation,
        config.data,
        config.seed,
        args.work / "samples.jsonl",
        round_index=1,
    )
    groups: dict[int, list] = {}
    for sample in samples:
        groups.setdefault(sample.prompt_index, []).append(sample)
    return config, tokenizer, prompts, [groups[i] for i in sorted(groups)]


def verdicts(args, config, tokenizer, prompts, groups, policy: Path, model: str) -> dict[str, list[list[list[float]]]]:
    """prefer[judge][prompt][a][b]: P(reply a is preferred to reply b), for every judge and the gold one."""
    from spreadpref.config import JudgeSettings
    from spreadpref.judges.base import Comparison
    from spreadpref.judges.implicit import ImplicitJudge
    from spreadpref.judges.llm import LocalLLMJudge
    from spreadpref.judges.verifier import VerifierJudge
    from spreadpref.models.loading import load_for_inference

    cache = args.work / "verdicts.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    comparisons = [
        Comparison(
            prompt=p.prompt,
            replies=[s.text for s in g],
            id=p.id,
            prompt_ids=g[0].prompt_ids,
            reply_ids=[s.reply_ids for s in g],
            metadata=p.metadata,
        )
        for p, g in zip(prompts, groups)
    ]
    pi0, init = load_for_inference(config.model, policy), load_for_inference(config.model, model)
    beta = config.train.beta
    judges = {
        "gold": VerifierJudge(),
        "implicit": ImplicitJudge(pi0, init, tokenizer, beta, JudgeSettings()),
        "implicit_mean": ImplicitJudge(pi0, init, tokenizer, beta, JudgeSettings(length_normalize=True)),
        "llm_judge": LocalLLMJudge(pi0, tokenizer, batch_size=8),
    }
    prefer: dict[str, Any] = {}
    timings = {}
    for name, judge in judges.items():
        started = time.perf_counter()
        prefer[name] = [j.prefer for j in judge.judge(comparisons)]
        timings[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {timings[name]} s", flush=True)
    rng = random.Random(2026)
    prefer["chance"] = []
    for group in groups:
        k = len(group)
        table = [[0.5] * k for _ in range(k)]
        for a, b in itertools.combinations(range(k), 2):
            coin = float(rng.random() < 0.5)
            table[a][b], table[b][a] = coin, 1.0 - coin
        prefer["chance"].append(table)
    prefer["seconds"] = timings
    cache.write_text(json.dumps(prefer))
    return prefer


def accuracies(prefer: dict[str, Any], bootstrap: int, seed: int = 0) -> dict[str, Any]:
    from spreadpref.eval.stats import proportion

    gold = prefer["gold"]
    results: dict[str, Any] = {}
    for name in JUDGES:
        per_prompt, selected_hits, selected_n = [], 0.0, 0
        for table, gold_table in zip(prefer[name], gold):
            k = len(table)
            credit = [
                1.0 if table[a][b] > 0.5 else 0.5 if table[a][b] == 0.5 else 0.0
                for a, b in itertools.permutations(range(k), 2)
                if gold_table[a][b] == 1.0
            ]
            per_prompt.append((sum(credit), len(credit)))
            # The pair SPA trains on: the judge's best against its worst (first of the highest, last of the lowest).
            scores = [sum(table[a][b] for b in range(k) if b != a) for a in range(k)]
            best = max(range(k), key=lambda i: (scores[i], -i))
            worst = min(range(k), key=lambda i: (scores[i], -i))
            if best != worst and gold_table[best][worst] != 0.5:
                selected_n += 1
                selected_hits += gold_table[best][worst]
        hits = np.array([h for h, _ in per_prompt])
        counts = np.array([n for _, n in per_prompt])
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(per_prompt), size=(bootstrap, len(per_prompt)))
        boot = hits[draws].sum(axis=1) / np.maximum(counts[draws].sum(axis=1), 1)
        results[name] = {
            "all_pairs": {
                "rate": float(hits.sum() / counts.sum()) if counts.sum() else float("nan"),
                "ci_low": float(np.quantile(boot, 0.025)),
                "ci_high": float(np.quantile(boot, 0.975)),
                "n": int(counts.sum()),
            },
            "selected_pair": proportion(selected_hits, selected_n),
        }
    gold_ties = sum(1 for table in gold for a, b in itertools.combinations(range(len(table)), 2) if table[a][b] == 0.5)
    total = sum(len(table) * (len(table) - 1) // 2 for table in gold)
    results["gold_ties"] = {"pairs": total, "tied": gold_ties}
    return results


def markdown(results: dict[str, Any], settings: dict[str, Any]) -> str:
    from spreadpref.eval.report import interval_cell

    ties = results["gold_ties"]
    lines = [
        f"Judge accuracy against the gold verifier: pi_0 of the {settings['model']} model, {settings['prompts']} fresh "
        f"verifiable prompts x {settings['samples']} replies; {ties['pairs']} reply pairs, of which the verifier "
        f"ties {ties['tied']} (left out).",
        "",
        "| judge | all pairs (95% CI) | pairs | selected pair (95% CI) | prompts |",
        "|---|---|---|---|---|",
    ]
    for name in JUDGES:
        a, s = results[name]["all_pairs"], results[name]["selected_pair"]
        lines.append(
            f"| {LABELS[name]} | {interval_cell(a['rate'], (a['ci_low'], a['ci_high']))} | {a['n']} | "
            f"{interval_cell(s['rate'], (s['ci_low'], s['ci_high']))} | {s['n']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from spreadpref.runtime.files import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    spread_args = spread.parse_args(
        ["--model", args.model, "--seed-pairs", str(args.seed_pairs), "--work", str(args.spread_work)]
    )
    model = spread.model_source(spread_args)
    seed_file = spread.make_seed_pairs(spread_args, model)
    policy = seed_model(args, model, seed_file)
    config, tokenizer, prompts, groups = sample_replies(args, model, policy)
    prefer = verdicts(args, config, tokenizer, prompts, groups, policy, model)
    results = accuracies(prefer, args.bootstrap)
    settings = {
        "model": args.model,
        "prompts": len(groups),
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "seed_pairs": sum(1 for _ in open(seed_file)),
        "judge_seconds": prefer.get("seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(args.out_dir / "judge_accuracy.json", {"settings": settings, "results": results})
    atomic_write_text(args.out_dir / "judge_accuracy.md", markdown(results, settings))
    print(markdown(results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
