"""The guard: every model's held-out agreement, the final-model choice (loop.final_model) and the below-seed warning."""

import json
import math
import statistics
from pathlib import Path

import pytest
from helpers import arithmetic_pairs, loop_overrides, write_jsonl

from spreadpref.config import JudgeSettings, load_config
from spreadpref.dpo.logprobs import forward_precision, training_precision
from spreadpref.eval.report import FINAL_MARK, MODEL_COLUMN, round_table, write_report
from spreadpref.models.loading import load_for_inference, load_tokenizer
from spreadpref.runtime.layout import REPORT_FILE, SUMMARY_FILE, round_name
from spreadpref.spa import guard, seed
from spreadpref.spa.final import choose_final
from spreadpref.spa.judge import label_agreement
from spreadpref.spa.loop import run

# ---------------------------------------------------------------------------------------------
# The pure rules


@pytest.mark.parametrize(
    ("agreements", "rule", "expected"),
    [
        ({0: 0.7, 1: 0.9, 2: 0.6}, "last", 2),
        ({0: 0.7, 1: 0.9, 2: 0.6}, "best_held_out", 1),
        ({0: 0.8, 1: 0.8, 2: 0.8}, "best_held_out", 0),  # ties go to the earlier model
        ({0: 0.6, 1: 0.8, 2: 0.8}, "best_held_out", 1),
        ({0: 0.9, 1: 0.5, 2: 0.6}, "best_held_out", 0),  # the seed model can win
        ({0: None, 1: 0.5, 2: None}, "best_held_out", 1),  # unmeasured models are skipped
        ({0: None, 1: None, 2: None}, "best_held_out", 2),  # none measured: the last
        ({0: None, 1: None}, "last", 1),
        ({2: 0.1, 0: 0.2, 1: 0.3}, "last", 2),  # the largest key, whatever the order
        ({0: 0.5}, "best_held_out", 0),
    ],
)
def test_choose_final_round(agreements, rule, expected):
    assert guard.choose_final_round(agreements, rule) == expected


def test_choose_final_round_refuses_an_unknown_rule_and_no_models():
    with pytest.raises(ValueError, match="unknown final-model rule"):
        guard.choose_final_round({0: 0.5}, "best")
    with pytest.raises(ValueError, match="no models"):
        guard.choose_final_round({}, "last")


def test_below_seed_warning_names_both_figures_when_the_last_model_is_strictly_below_the_seed():
    warning = guard.below_seed_warning({0: 0.72, 1: 0.80, 2: 0.61})
    assert warning is not None and "(0.61 against 0.72)" in warning
    assert warning.startswith("The last round's model agrees with the held-out human labels less often than the seed")
    assert "loop.final_model=best_held_out" in warning and warning.count(".") >= 1
    # Figures equal at two decimals get more, so that the sentence never reads "0.61 against 0.61".
    assert "(0.612 against 0.614)" in guard.below_seed_warning({0: 0.614, 1: 0.612})


@pytest.mark.parametrize(
    "agreements",
    [
        {0: 0.7, 1: 0.5, 2: 0.7},  # equal: not below
        {0: 0.7, 1: 0.8},  # above
        {0: None, 1: 0.5},  # the seed not measured
        {0: 0.7, 1: 0.9, 2: None},  # the last not measured (an earlier round below the seed does not count)
        {0: 0.7},  # no rounds
        {1: 0.2, 2: 0.1},  # no seed model
        {},
    ],
)
def test_no_below_seed_warning(agreements):
    assert guard.below_seed_warning(agreements) is None


def test_agreements_are_read_back_from_the_summary():
    summary = {
        "seed": {"model_held_out_agreement": 0.7},
        "rounds": {"1": {"round": 1, "model_held_out_agreement": 0.6}, "2": {"round": 2}},
    }
    assert guard.agreements_of(summary, 2) == {0: 0.7, 1: 0.6, 2: None}
    assert guard.agreements_of({"seed": None, "rounds": {}}, 1) == {0: None, 1: None}


def test_the_choice_skips_pruned_models_and_without_held_out_pairs_takes_the_last(tmp_path):
    models = {0: tmp_path / "seed", 1: tmp_path / round_name(1), 2: tmp_path / round_name(2)}
    models[0].mkdir()
    models[2].mkdir()  # round 1's model was pruned
    summary = {
        "seed": {"model_held_out_agreement": 0.5},
        "rounds": {str(i): {"round": i, "model_held_out_agreement": v} for i, v in ((1, 0.9), (2, 0.4))},
        "warnings": ["an earlier warning"],
    }
    config = load_config(None, ["loop.final_model=best_held_out"])
    assert choose_final(config, summary, models) == models[0]
    choice = summary["final_choice"]
    assert choice["round"] == 0 and "Round 1's model is the best" in choice["notes"][0]
    assert (
        summary["warnings"] == [choice["warning"], "an earlier warning"] and "(0.40 against 0.50)" in choice["warning"]
    )
    # Chosen again (another rule): the old warning is replaced, not repeated.
    assert choose_final(load_config(None, []), summary, models) == models[2]
    new_warning = summary["final_choice"]["warning"]  # the same figures, without "(set)": the rule changed
    assert summary["warnings"].count(new_warning) == 1 and choice["warning"] not in summary["warnings"]
    assert summary["final_choice"]["rule"] == "last"
    # No held-out pairs: nothing measured, the last model, and the note says why.
    bare = {"seed": {}, "rounds": {}}
    assert choose_final(config, bare, models, has_held_out=False) == models[2]
    assert bare["final_choice"]["notes"] == [guard.NO_HELD_OUT] and bare["final_choice"]["warning"] is None
    assert "warnings" not in bare


def test_the_table_marks_the_final_model_and_the_report_leads_its_warnings_with_the_guard(tmp_path):
    summary = {
        "seed": {
            "pairs": 8,
            "held_out": 8,
            "model_held_out_agreement": 0.75,
            "model_held_out_agreement_ci": [0.4, 0.9],
        },
        "rounds": {
            "1": {"round": 1, "pairs": 4, "model_held_out_agreement": 0.5, "model_held_out_agreement_ci": [0.2, 0.8]},
            "2": {"round": 2, "pairs": 0},
        },
        "final_choice": {"rule": "best_held_out", "round": 0, "agreements": {"0": 0.75, "1": 0.5, "2": None}},
        "warnings": ["The guard's warning."],
        "final_model": "seed/model",
    }
    headers, rows = round_table(summary)
    column = headers.index(MODEL_COLUMN)
    assert [row[column] for row in rows] == [f"0.75 (0.40–0.90) {FINAL_MARK}", "0.50 (0.20–0.80)", "–"]
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    report = write_report(tmp_path).read_text()
    warnings = report.split("## Warnings\n\n")[1].splitlines()
    assert warnings[0] == "- The guard's warning." and any("no pairs" in line for line in warnings[1:])
    assert "Final model (loop.final_model=best_held_out: the seed model): `seed/model`" in report
    # A summary from before the guard: no model column.
    old = {"rounds": {"1": {"round": 1, "pairs": 4}}}
    assert MODEL_COLUMN not in round_table(old)[0]


# ---------------------------------------------------------------------------------------------
# The measurement, on the tiny model


@pytest.fixture
def guard_data(tmp_path):
    """16 seed pairs (8 held out, 8 trained on) and a pool of 12 prompts."""
    seed_file = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(16))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Tell me about the number {i}."} for i in range(12)]
    )
    return seed_file, prompts


def guard_overrides(model_dir, seed_file, prompts, out, *extra):
    return [
        *loop_overrides(model_dir, seed_file, prompts, out),
        "loop.prompts_per_round=[4,4]",
        "generation.max_new_tokens=8",
        *extra,
    ]


def test_the_initial_model_against_itself_ties_every_held_out_pair(tiny_model_dir, guard_data, tmp_path):
    seed_file, prompts = guard_data
    config = load_config(None, guard_overrides(tiny_model_dir, seed_file, prompts, tmp_path / "run"))
    tokenizer = load_tokenizer(config.model)
    held_out = seed.load_seed_pairs(config, tokenizer).held_out
    assert len(held_out) == 8
    figures = guard.measure_held_out_agreement(config, tokenizer, tiny_model_dir, held_out)
    assert figures["model_held_out_agreement"] == 0.5  # every score is 0: ties count one half
    low, high = figures["model_held_out_agreement_ci"]
    assert 0 < low < 0.5 < high < 1
    assert figures["model_held_out_outcomes"] == [0.5] * 8  # per pair, for the paired verdicts
    # A model no longer on disk, or no pairs: nothing measured.
    missing = guard.measure_held_out_agreement(config, tokenizer, tmp_path / "pruned", held_out)
    assert missing == dict.fromkeys(guard.MODEL_KEYS)
    assert guard.measure_held_out_agreement(config, tokenizer, tiny_model_dir, [])["model_held_out_agreement"] is None


def test_a_run_measures_every_model_on_the_held_out_pairs(tiny_model_dir, guard_data, tmp_path):
    seed_file, prompts = guard_data
    out = tmp_path / "run"
    config = load_config(
        None, guard_overrides(tiny_model_dir, seed_file, prompts, out, "loop.rounds=1", "loop.prompts_per_round=[4]")
    )
    result = run(config)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    figures = [summary["seed"], summary["rounds"]["1"]]
    for row in figures:
        rate, (low, high) = row["model_held_out_agreement"], row["model_held_out_agreement_ci"]
        assert 0.0 <= low <= rate <= high <= 1.0
    assert summary["final_choice"]["rule"] == "last" and summary["final_choice"]["round"] == 1
    assert summary["final_choice"]["agreements"] == {
        "0": figures[0]["model_held_out_agreement"],
        "1": figures[1]["model_held_out_agreement"],
    }
    assert result.final_model == out / round_name(1) / "train" / "model" and summary["final_model"] == str(
        result.final_model
    )
    # The seed model's figure is the implicit reward of pi_0 against pi_init on the held-out pairs, summed.
    tokenizer = load_tokenizer(config.model)
    held_out = seed.load_seed_pairs(config, tokenizer).held_out
    policy = load_for_inference(config.model, out / "seed" / "model")
    reference = load_for_inference(config.model, tiny_model_dir)
    with forward_precision(training_precision(config), next(policy.parameters()).device):
        expected = label_agreement(policy, reference, held_out, JudgeSettings(), tokenizer.pad_token_id)
    assert summary["seed"]["model_held_out_agreement"] == pytest.approx(expected["rate"])
    headers, _ = round_table(summary)
    assert MODEL_COLUMN in headers
    assert (summary.get("warnings") or []) == (
        [summary["final_choice"]["warning"]] if summary["final_choice"]["warning"] else []
    )


def test_best_held_out_hands_back_the_best_model_keeps_it_and_warns_below_the_seed(
    tiny_model_dir, guard_data, tmp_path, monkeypatch
):
    seed_file, prompts = guard_data
    out = tmp_path / "run"
    chosen_figures = {
        out / "seed" / "model": 0.72,
        out / round_name(1) / "train" / "model": 0.80,
        out / round_name(2) / "train" / "model": 0.61,
    }
    calls = []

    def measure(config, tokenizer, model, held_out):
        calls.append(Path(model))
        assert len(held_out) == 8
        rate = chosen_figures[Path(model)]
        return {"model_held_out_agreement": rate, "model_held_out_agreement_ci": [rate - 0.2, rate + 0.1]}

    monkeypatch.setattr(guard, "measure_held_out_agreement", measure)
    # keep_models=1 would prune round 1's model after round 2: being the best, it stays.
    overrides = guard_overrides(tiny_model_dir, seed_file, prompts, out, "loop.keep_models=1")
    result = run(load_config(None, [*overrides, "loop.final_model=best_held_out"]))
    assert calls == list(chosen_figures)  # each model once, right after its stage
    best = out / round_name(1) / "train" / "model"
    assert result.final_model == best and best.is_dir()
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["final_model"] == str(best)
    assert summary["seed"]["model_held_out_agreement"] == 0.72
    assert summary["rounds"]["2"]["model_held_out_agreement_ci"] == [pytest.approx(0.41), pytest.approx(0.71)]
    choice = summary["final_choice"]
    assert (choice["rule"], choice["round"], choice["agreements"]) == (
        "best_held_out",
        1,
        {"0": 0.72, "1": 0.80, "2": 0.61},
    )
    warning = guard.below_seed_warning({0: 0.72, 1: 0.80, 2: 0.61}, rule="best_held_out")
    assert "(0.61 against 0.72)" in warning and summary["warnings"] == [warning]
    headers, rows = round_table(summary)
    marked = [row[0] for row in rows if row[headers.index(MODEL_COLUMN)].endswith(FINAL_MARK)]
    assert marked == ["1"]
    report = (out / REPORT_FILE).read_text()
    assert report.split("## Warnings\n\n")[1].startswith(f"- {warning}\n")
    assert f"0.80 (0.60–0.90) {FINAL_MARK}" in report

    # The finished run again with loop.final_model=last: nothing is trained or measured, the choice is redone.
    again = run(load_config(None, [*overrides, "loop.final_model=last"]))
    assert again.skipped and again.final_model == out / round_name(2) / "train" / "model"
    assert len(calls) == 3
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["final_choice"]["round"] == 2
    assert summary["warnings"] == [guard.below_seed_warning({0: 0.72, 1: 0.80, 2: 0.61})]  # the old one replaced
    assert "(loop.final_model=last: round 2)" in (out / REPORT_FILE).read_text()


def test_a_round_verdict_is_better_or_worse_only_when_the_paired_interval_excludes_zero():
    seed = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # Round 1 wins four more pairs: differences 1,1,1,1,0,0,0,0 -> mean 0.5, sd sqrt(2/7), t(7) = 2.365.
    half = 2.365 * math.sqrt(2 / 7) / math.sqrt(8)
    better = guard.round_verdict(1, [1.0] * 8, seed)
    assert better.startswith("Round 1: better than the seed model on held-out agreement (1.00 against 0.50;")
    assert f"difference +0.50, 95% CI {0.5 - half:+.2f} to {0.5 + half:+.2f}, 8 human pairs)" in better
    assert guard.round_verdict(2, [0.0] * 8, seed).startswith("Round 2: worse than the seed model")
    # One pair better, one worse: mean 0, the interval contains 0.
    same = guard.round_verdict(3, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], seed)
    assert same.startswith("Round 3: not distinguishable from the seed model with 8 held-out human pairs (0.50")
    # 8 pairs tell apart 0.50 at the least: 3 of 8 changing one way give mean 0.375, half-width 0.43.
    assert same.endswith("8 pairs can tell apart a difference of 0.50 at the least).")
    # A single pair better out of eight: the interval reaches below 0, so no claim is made.
    assert "not distinguishable" in guard.round_verdict(4, [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], seed)
    assert guard.round_verdict(5, None, seed) is None
    assert guard.round_verdict(6, [1.0] * 7, seed) is None  # not the same pairs


def test_the_smallest_detectable_difference_by_hand():
    # 13 pairs: k = 4 changing one way is the least whose interval excludes 0 (k = 3: mean 0.231, half 0.265;
    # k = 4: mean 0.308, sd sqrt(36/156), half 2.179 * 0.480 / sqrt(13) = 0.290).
    assert guard.smallest_detectable_difference(13) == pytest.approx(4 / 13)
    k3 = [1.0] * 3 + [0.0] * 10
    assert 3 / 13 - 2.179 * statistics.stdev(k3) / math.sqrt(13) < 0
    assert guard.smallest_detectable_difference(8) == pytest.approx(4 / 8)
    assert guard.smallest_detectable_difference(1) is None


def test_round_verdicts_follow_the_summary_in_round_order():
    summary = {
        "seed": {guard.OUTCOMES_KEY: [0.0, 1.0]},
        "rounds": {"1": {guard.OUTCOMES_KEY: [0.0, 1.0]}, "2": {}, "3": {guard.OUTCOMES_KEY: [0.0, 1.0]}},
    }
    verdicts = guard.round_verdicts(summary, 3)
    assert [v.split(":")[0] for v in verdicts] == ["Round 1", "Round 3"]
    assert guard.round_verdicts({"rounds": {}}, 2) == []


def test_the_below_seed_warning_says_when_the_difference_is_within_the_noise():
    plain = guard.below_seed_warning({0: 0.77, 2: 0.69})
    noisy = guard.below_seed_warning({0: 0.77, 2: 0.69}, within_noise=True)
    assert "made it worse" in plain and "made it worse" not in noisy
    assert "(0.69 against 0.77), by less than these held-out pairs can tell apart" in noisy


def test_within_noise_is_the_verdicts_interval_containing_zero():
    seed = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    summary = {
        "seed": {guard.OUTCOMES_KEY: seed},
        "rounds": {"1": {guard.OUTCOMES_KEY: [1.0] * 8}, "2": {guard.OUTCOMES_KEY: [1.0, *seed[1:]]}, "3": {}},
    }
    assert not guard.within_noise(summary, 1)  # "better than"
    assert guard.within_noise(summary, 2)  # one pair better: not distinguishable
    assert not guard.within_noise(summary, 3)  # not measured
    assert "not distinguishable" in guard.round_verdict(2, [1.0, *seed[1:]], seed)


def test_the_warning_does_not_advise_the_rule_already_set_and_the_pick_is_called_optimistic():
    set_already = guard.below_seed_warning({0: 0.77, 1: 0.85, 2: 0.69}, rule="best_held_out")
    assert "best_held_out (set) hands back" in set_already
    assert "(set)" not in guard.below_seed_warning({0: 0.77, 1: 0.85, 2: 0.69})
    note = guard.selection_note({0: 0.77, 1: 0.85, 2: 0.69}, 1)
    assert "best of 3 held-out figures" in note and "0.85 is optimistic" in note
    assert guard.selection_note({0: 0.77, 1: None}, 0) is None  # nothing to pick from
