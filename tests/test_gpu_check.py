"""scripts/gpu_check.py's CPU path: the same code as on a GPU, on the tiny shape, so the check cannot rot
before a GPU is at hand. No timing is asserted."""

import json
import math

import pytest
from repo_paths import SCRIPTS, load_script

from spreadpref.runtime.layout import round_stage


@pytest.fixture(scope="module")
def gpu_check():
    return load_script(SCRIPTS / "gpu_check.py", "gpu_check")


def test_the_cpu_path_runs_every_stage_checks_the_first_steps_and_compares_with_trl(gpu_check, tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "check"
    assert gpu_check.main(["--device", "cpu", "--trl-reps", "1", "--out-dir", str(out)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    tiny = report["shapes"]["tiny"]
    assert set(tiny["stages"]) == {"seed"} | {round_stage(r, s) for r in (1, 2) for s in ("generate", "judge", "train")}
    assert all(row["tokens_per_second"] > 0 for row in tiny["stages"].values())
    assert set(tiny["training_checks"]) == {"seed", round_stage(1, "train"), round_stage(2, "train")}
    assert report["trl"]["check"]["passed"] and set(report["trl"]["speedup"]) == {"trl-default", "trl-precompute"}
    assert "| tiny |" in (out / "gpu_check.md").read_text()
    # Generation beside the decode step's bandwidth bound, per generate stage; generate's cache engines side by side.
    assert report["environment"]["bandwidth_gb_s"] > 0
    assert [row["stage"] for row in tiny["decode"]] == [round_stage(r, "generate") for r in (1, 2)]
    assert all(0 < row["share_of_bound"] < 1 and row["rows_per_step"] == 4 * 2 for row in tiny["decode"])
    engines = report["cache_engines"]
    assert set(engines) == {"shape", "dynamic cache", "static cache", "static cache, compiled step"}
    assert all("tokens_per_second" in row or "error" in row for side, row in engines.items() if side != "shape")
    assert not (out / "models" / "tiny").exists()  # the random model is removed unless --keep-models


def test_a_first_step_away_from_zero_or_a_non_finite_loss_fails_the_check(gpu_check):
    first = {"loss": math.log(2), "rewards/margins": 0.0}
    assert gpu_check.training_checks([first, {"loss": 0.5}])["passed"]
    assert not gpu_check.training_checks([{**first, "rewards/margins": -0.0019}, {"loss": 0.5}])["passed"]
    assert not gpu_check.training_checks([{**first, "loss": 0.6950}])["passed"]
    assert not gpu_check.training_checks([first, {"loss": float("nan")}])["passed"]
    assert not gpu_check.training_checks([])["passed"]


def test_shapes_are_the_real_models_shapes():
    from spreadpref.testing import MODEL_SHAPES, make_sized_tokenizer

    assert MODEL_SHAPES["7b"]["hidden_size"] == 4096 and MODEL_SHAPES["7b"]["vocab_size"] == 32000
    tokenizer = make_sized_tokenizer(1024)
    assert len(tokenizer) == 1024
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")


def test_without_trl_the_comparison_is_skipped_and_said_not_a_failure(gpu_check, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    result = gpu_check.trl_benchmark(gpu_check.parse_args(["--device", "cpu"]), "tiny", deadline=0.0)
    assert "TRL is not installed" in result["skipped"] and "passed" not in result
    report = {
        "environment": {"device": "cpu", "torch": "t", "transformers": "x"},
        "shapes": {"tiny": {"passed": True, "stages": {}, "peak_gpu_memory_gb": 0, "model_seconds": 1}},
        "trl": result,
        "passed": True,
    }
    text = gpu_check.markdown(report)
    assert "passed" in text.splitlines()[0] and "TRL is not installed" in text
    failed = dict(report, passed=False, shapes={"tiny": {**report["shapes"]["tiny"], "passed": False}})
    assert "FAILED: checks failed for tiny" in gpu_check.markdown(failed).splitlines()[0]


def test_the_decode_bound_by_hand():
    decode_bound = load_script(SCRIPTS / "decode_bound.py", "decode_bound")

    # 1 GB of weights, 100 KB of KV cache per token, 10 sequences at context 100, 1 TB/s:
    # a step reads 1e9 + 10 x 100 x 1e5 = 1.1e9 bytes for 10 tokens.
    assert decode_bound.decode_bound(10**9, 10**5, 10, 100, 10**12) == pytest.approx(10 * 10**12 / 1.1e9)
    # One sequence with no cache to read: the weights alone, bandwidth / weight bytes steps a second.
    assert decode_bound.decode_bound(10**9, 10**5, 1, 0, 10**12) == pytest.approx(1000)
