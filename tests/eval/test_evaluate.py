import dataclasses
import json

import numpy as np
import pytest
from helpers import write_jsonl

from spreadpref.config import load_config
from spreadpref.data.records import PromptRecord
from spreadpref.errors import SpreadprefError
from spreadpref.eval.evaluate import (
    EvalModel,
    evaluate,
    evaluate_models,
    load_baseline_answers,
)
from spreadpref.eval.stats import length_controlled_win_rate, win_rate_with_ci
from spreadpref.testing import make_tiny_model_dir, make_tiny_reward_model_dir

# ---------------------------------------------------------------------------------------------
# statistics


def test_win_rate_is_the_mean_preference_with_a_bootstrap_interval():
    p = np.array([1.0, 0.0, 0.5, 1.0])
    result = win_rate_with_ci(p, resamples=2000, seed=0)
    assert result["win_rate"] == pytest.approx(0.625)
    assert 0.0 <= result["ci_low"] < 0.625 < result["ci_high"] <= 1.0
    constant = win_rate_with_ci(np.full(10, 0.7), resamples=100, seed=0)
    assert constant["ci_low"] == pytest.approx(0.7) and constant["ci_high"] == pytest.approx(0.7)


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    # The judge prefers whichever answer is longer; lengths differ symmetrically: at equal length, 0.5.
    diff = np.array([-40.0, -20.0, -10.0, 10.0, 20.0, 40.0] * 5)
    p = (diff > 0).astype(float)
    assert win_rate_with_ci(p, 0, 0)["win_rate"] == pytest.approx(0.5)
    assert length_controlled_win_rate(p, diff) == pytest.approx(0.5, abs=1e-6)
    # The model's answers are always longer and always preferred: the raw rate is 1, LC pulls it down.
    longer = np.abs(diff)
    assert length_controlled_win_rate(np.ones_like(longer), longer) < 1.0


def test_length_controlled_win_rate_keeps_a_preference_unrelated_to_length():
    rng = np.random.default_rng(0)
    diff = rng.normal(0, 30, size=400)
    p = np.full(400, 0.7)
    assert length_controlled_win_rate(p, diff) == pytest.approx(0.7, abs=0.02)


# ---------------------------------------------------------------------------------------------
# baseline answers from a file


def test_baseline_answers_are_matched_by_instruction(tmp_path):
    prompts = [
        PromptRecord("a", [{"role": "user", "content": "Say hi"}]),
        PromptRecord("b", [{"role": "user", "content": "Say bye"}]),
    ]
    path = tmp_path / "base.json"
    path.write_text(
        json.dumps([{"instruction": "Say bye", "output": "bye"}, {"instruction": "Say hi", "output": "hi"}])
    )
    assert load_baseline_answers(path, prompts) == ["hi", "bye"]
    path.write_text(json.dumps([{"instruction": "Say hi", "output": "hi"}]))
    with pytest.raises(SpreadprefError, match="no baseline answer for 1"):
        load_baseline_answers(path, prompts)
    path.write_text(json.dumps([{"instruction": "Say hi"}]))
    with pytest.raises(SpreadprefError, match="entry 0 needs string fields"):
        load_baseline_answers(path, prompts)


# ---------------------------------------------------------------------------------------------
# the command, end to end on tiny models with a tiny reward model as judge


@pytest.fixture
def eval_setup(tmp_path, tiny_model_dir):
    prompts = write_jsonl(tmp_path / "eval.jsonl", [{"id": f"e{i}", "prompt": f"Count to {i}."} for i in range(6)])
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    other = make_tiny_model_dir(tmp_path / "other", seed=5)
    config = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"eval.prompts={prompts}",
            "eval.judge.kind=reward_model",
            f"eval.judge.reward_model.name_or_path={rm}",
            "eval.max_new_tokens=8",
            "eval.batch_size=4",
            "eval.bootstrap=200",
            "data.max_length=96",
            "data.max_prompt_length=48",
        ],
    )
    return config, other


def test_eval_writes_official_formats_win_rates_and_resumes(eval_setup, tmp_path, tiny_model_dir, monkeypatch):
    config, other = eval_setup
    out = tmp_path / "eval"
    results = evaluate(config, [str(other), str(tiny_model_dir)], out)
    assert results["prompts"] == 6 and results["judge"] == "reward_model"
    this, same = results["models"]["other"], results["models"]["model"]
    assert same["win_rate"] == pytest.approx(0.5)  # the SFT model against its own (identical) answers
    assert 0.0 <= this["win_rate"] <= 1.0 and this["ci_low"] <= this["win_rate"] <= this["ci_high"]
    assert 0.0 <= this["lc_win_rate"] <= 1.0 and this["mean_tokens"] > 0
    alpaca = json.loads((out / "alpaca_eval" / "other.json").read_text())
    assert len(alpaca) == 6 and set(alpaca[0]) >= {"instruction", "output", "generator"}
    assert alpaca[0]["instruction"] == "Count to 0." and alpaca[0]["generator"] == "other"
    mt = [json.loads(line) for line in (out / "mt_bench" / "other.jsonl").read_text().splitlines()]
    assert mt[0]["question_id"] == "e0" and mt[0]["model_id"] == "other"
    assert mt[0]["choices"][0]["turns"] == [alpaca[0]["output"]]
    assert "| other |" in (out / "eval.md").read_text()
    # A second call reuses answers and verdicts: no generation at all.
    import spreadpref.eval.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "generate_samples", lambda *a, **k: pytest.fail("answers were regenerated"))
    again = evaluate(config, [str(other), str(tiny_model_dir)], out)
    assert again["models"]["other"] == this


def test_eval_refuses_to_mix_settings_unless_forced(eval_setup, tmp_path):
    config, other = eval_setup
    out = tmp_path / "eval"
    evaluate_models(config, [EvalModel("other", str(other))], out)
    changed = config.model_copy(update={"eval": config.eval.model_copy(update={"max_new_tokens": 9})})
    with pytest.raises(SpreadprefError, match="other settings"):
        evaluate_models(changed, [EvalModel("other", str(other))], out)
    assert "other" in evaluate_models(changed, [EvalModel("other", str(other))], out, force=True)["models"]


def test_eval_refuses_a_judge_that_is_the_evaluated_model(eval_setup, tmp_path):
    config, other = eval_setup
    for kind in ("implicit", "llm"):
        bad = config.model_copy(
            update={
                "eval": config.eval.model_copy(update={"judge": config.eval.judge.model_copy(update={"kind": kind})})
            }
        )
        with pytest.raises(SpreadprefError, match="judge itself"):
            evaluate_models(bad, [EvalModel("other", str(other))], tmp_path / kind)


def test_held_out_agreement_uses_each_models_implicit_reward(eval_setup, tmp_path, pairs_file):
    config, other = eval_setup
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"labelled": str(pairs_file)})})
    results = evaluate_models(config, [EvalModel("other", str(other))], tmp_path / "eval")
    assert 0.0 <= results["models"]["other"]["held_out_agreement"] <= 1.0
    assert results["labelled_pairs"] == 16


def test_the_baseline_model_answers_once(eval_setup, tmp_path, tiny_model_dir, monkeypatch):
    import spreadpref.eval.evaluate as evaluate_module

    config, _ = eval_setup
    calls = []
    real = evaluate_module.generate_samples
    monkeypatch.setattr(evaluate_module, "generate_samples", lambda *a, **k: calls.append(a[-2]) or real(*a, **k))
    out = tmp_path / "eval-once"
    results = evaluate(config, [str(tiny_model_dir)], out)  # the target is the SFT model: the baseline
    assert len(calls) == 1  # only the baseline generated
    assert (out / "answers" / "model.jsonl").read_bytes() == (out / "answers" / "baseline.jsonl").read_bytes()
    assert results["models"]["model"]["win_rate"] == pytest.approx(0.5)


def test_a_missing_target_is_named_before_anything_is_answered(eval_setup, tmp_path, monkeypatch):
    import spreadpref.eval.evaluate as evaluate_module

    config, other = eval_setup
    monkeypatch.setattr(evaluate_module, "generate_samples", lambda *a, **k: pytest.fail("something answered"))
    with pytest.raises(SpreadprefError, match="does not exist; nothing was answered"):
        evaluate(config, [str(other), str(tmp_path / "no-such-model")], tmp_path / "eval-missing")


def test_a_verifier_eval_without_the_extra_stops_before_any_answer(eval_setup, tmp_path, monkeypatch):
    import spreadpref.eval.evaluate as evaluate_module
    from spreadpref.judges import verifier

    config, other = eval_setup
    config = config.model_copy(
        update={
            "eval": config.eval.model_copy(update={"judge": config.eval.judge.model_copy(update={"kind": "verifier"})})
        }
    )

    def missing():
        raise verifier.JudgeError("the verifier needs the 'verify' extra, which is not installed")

    monkeypatch.setattr(verifier, "_instruction_registry", missing)
    monkeypatch.setattr(evaluate_module, "generate_samples", lambda *a, **k: pytest.fail("something answered"))
    with pytest.raises(SpreadprefError, match="'verify' extra"):
        evaluate(config, [str(other)], tmp_path / "eval-verifier")


def test_a_judge_that_ties_every_answer_says_so(eval_setup, tmp_path, capsys, monkeypatch):
    import spreadpref.eval.evaluate as evaluate_module
    from spreadpref.judges.base import Judgement

    class AlwaysTie:
        def judge(self, comparisons):
            return [Judgement(scores=[0.0, 0.0], prefer=[[0.5, 0.5], [0.5, 0.5]]) for _ in comparisons]

    monkeypatch.setattr(evaluate_module, "make_judge", lambda *a, **k: AlwaysTie())
    real_answers = evaluate_module.generate_answers

    def different_answers(config, tokenizer, model, prompts, out_dir):
        rows = real_answers(config, tokenizer, model, prompts, out_dir)
        return rows if model.name == "baseline" else [dataclasses.replace(row, text=row.text + " x") for row in rows]

    monkeypatch.setattr(evaluate_module, "generate_answers", different_answers)
    config, other = eval_setup
    results = evaluate(config, [str(other)], tmp_path / "eval-ties")
    assert results["models"]["other"]["win_rate"] == pytest.approx(0.5)
    assert results["models"]["other"]["ties"] == 6
    assert "tied every answer with the baseline's" in " ".join(capsys.readouterr().err.split())
