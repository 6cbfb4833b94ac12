"""Smoke test of benchmarks/ on the tiny model: every script runs and writes its JSON and table, and
the training benchmark's equivalence check (TRL's DPO loss = spreadpref's) passes. No timing is
asserted: timings belong in the benchmarks, not in tests."""

import importlib
import json
import sys
from pathlib import Path

import pytest

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
    # The floor runs the same batches with the same seeds: the very same tokens come out.
    assert runs["spreadpref"][0]["tokens"] == runs["batched-sorted"][0]["tokens"]
    round_ = run("bench_round", workdir)
    assert round_["stats"]["round_over_ideal"]["seconds"]["n"] == 1
