"""Smoke test of benchmarks/ on the tiny model: every script runs and writes its JSON and table, and
the training benchmark's equivalence check (TRL's DPO loss = spreadpref's) passes. No timing is
asserted: timings belong in the benchmarks, not in tests."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from spreadpref.runtime.layout import CONFIG_FILE

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    yield tmp_path_factory.mktemp("bench")
    sys.path.remove(str(BENCHMARKS))


def run(name: str, workdir: Path, *extra: str) -> dict:
    module = importlib.import_module(name)
    out = workdir / f"{name}.json"
    argv = ["--model", "tiny", "--prompts", "4", "--reps", "1", "--workdir", str(workdir), "--out", str(out), *extra]
    assert module.main(argv) == 0
    assert out.with_suffix(".md").read_text().startswith("###")
    return json.loads(out.read_text())


def test_training_benchmark_checks_equivalence_with_trl(workdir):
    pytest.importorskip("trl")
    data = run("bench_train", workdir, "--sides", "spreadpref,trl-precompute,floor")
    assert data["check"]["passed"] and data["check"]["input_ids_equal"]
    assert data["check"]["abs_difference"] <= 1e-4
    assert data["check"]["mean_abs_logratio"] > 0  # the check ran where policy and reference differ
    assert set(data["stats"]) == {"spreadpref", "trl-precompute", "floor"}


def test_judge_generate_and_round_benchmarks_run(workdir):
    judge = run("bench_judge", workdir)
    assert judge["stats"]["floor"]["spreadpref_vs_this"]["n"] == 1
    generate = run("bench_generate", workdir, "--sides", "spreadpref,batched-sorted")
    runs = generate["runs"]
    # The floor runs transformers' generate over the same batches with the same seeds: the same distribution,
    # other draws (the built-in decode loop uses the random numbers its own way); both sides draw every reply.
    assert runs["spreadpref"][0]["samples"] == runs["batched-sorted"][0]["samples"] == 4 * 2
    assert runs["spreadpref"][0]["tokens"] > 0 and runs["batched-sorted"][0]["tokens"] > 0
    round_ = run("bench_round", workdir)
    assert round_["stats"]["round_over_ideal"]["seconds"]["n"] == 1


def test_generation_batch_benchmark_compares_batches_of_8_with_auto(workdir):
    data = run("bench_generate_batch", workdir, "--reps", "2")
    assert set(data["stats"]) == {"batch-8", "auto"}
    assert all(stats["identical_samples_every_rep"] for stats in data["stats"].values())
    assert data["runs"]["auto"][0]["batch_prompts"] == 4  # the tiny model's cache: every prompt in one batch


def test_spread_benchmark_runs_every_variant_and_reuses_finished_seeds(workdir, monkeypatch):
    spread = importlib.import_module("spread")
    out = workdir / "spread-results"
    # The verifier ties every pair of the tiny model's random replies, so the gold variant would have no
    # pairs to train on; it runs in the real benchmark (docs/results.md).
    variants = ["llm_judge", "spa_direct", "spa_refine", "spa_dnd"]
    argv = [
        "--model",
        "tiny",
        "--seeds",
        "0",
        "1",
        "--rounds",
        "1",
        "--prompts-per-round",
        "8",
        "--eval-prompts",
        "8",
        "--variants",
        *variants,
        "--work",
        str(workdir / "spread"),
        "--out-dir",
        str(out),
    ]
    assert spread.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    rows = {(r["variant"], r["round"]): r for r in result["rows"]}
    assert set(rows) == {("sft", 0), ("dpo_seed", 0)} | {(v, 1) for v in variants}
    for row in rows.values():
        assert len(row["constraint_satisfaction_per_seed"]) == 2
        assert all(0.0 <= v <= 1.0 for v in row["constraint_satisfaction_per_seed"] + row["win_rate_per_seed"])
    assert result["seed_pairs"] > 0 and result["eval_prompts"] == 8
    assert rows[("spa_dnd", 1)]["smoothed_fraction"] is not None
    # KL from pi_init, measured after the run from the models it kept; then a second call finds both seed files
    # and only aggregates, now with the KL column.
    spread_kl = importlib.import_module("spread_kl")
    assert spread_kl.main(argv) == 0
    kl = json.loads((out / "kl" / "seed-1.json").read_text())["values"]
    assert kl["sft/0"]["kl_from_init"] == 0.0 and kl["spa_dnd/1"]["reply_tokens"] > 0
    assert all(math.isfinite(kl[f"{v}/1"]["kl_from_init"]) for v in variants)
    monkeypatch.setattr(spread, "run_seed", lambda *a, **k: pytest.fail("a finished seed was run again"))
    assert spread.main(argv) == 0
    assert "KL from π_init" in (out / "table.md").read_text()


def test_the_long_profile_runs_on_its_development_split_and_measures_its_labels(workdir):
    """benchmarks/spread.py --profile spa-cpu-long --dev end to end on the tiny model (K = 4, a round)."""
    spread = importlib.import_module("spread")
    out = workdir / "spread-long-results"
    argv = ["--model", "tiny", "--profile", "spa-cpu-long", "--dev", "--seeds", "100", "--rounds", "1"]
    argv += ["--prompts-per-round", "6", "--eval-prompts", "6", "--variants", "spa_dnd"]
    argv += ["--work", str(workdir / "spread-long"), "--out-dir", str(out), "--set", "train.learning_rate=1e-4"]
    assert spread.main(argv) == 0
    record = json.loads((out / "seeds" / "seed-100.json").read_text())
    assert record["settings"]["profile"] == "spa-cpu-long" and record["settings"]["dev"] is True
    round_one = record["values"]["spa_dnd/1"]
    assert round_one["pairs"] == 6  # K = 4 replies of 6 prompts: best against worst, one pair a prompt
    assert "self_label_accuracy" in round_one  # judge.gold=verifier (None when the verifier ties every pair)
    config = (workdir / "spread-long" / "seed-100" / "spa_dnd" / CONFIG_FILE).read_text()
    assert "num_samples: 4" in config and "dev_prompts.jsonl" in config and "learning_rate: 0.0001" in config
    result = json.loads((out / "results.json").read_text())
    assert {d["variant"] for d in result["paired"]} == {"sft", "spa_dnd"}
