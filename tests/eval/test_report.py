import json

import pytest
from helpers import loop_overrides

from spreadpref.config import load_config
from spreadpref.eval.report import write_report
from spreadpref.judges.base import Comparison
from spreadpref.judges.reward_model import RewardModelJudge
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import LOG_HISTORY_FILE, REFINEMENT_FILE, REPORT_FILE, SUMMARY_FILE, round_name
from spreadpref.spa.loop import run
from spreadpref.testing import make_tiny_reward_model_dir

PNG = b"\x89PNG\r\n\x1a\n"


def test_loop_with_an_external_judge_labels_pairs_by_it_and_ends_with_a_report(tiny_model_dir, loop_data, tmp_path):
    import torch

    seed, prompts = loop_data
    out = tmp_path / "run"
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + [
        "judge.kind=reward_model",
        f"judge.reward_model.name_or_path={rm}",
        "refine.enabled=false",
        "loop.keep_models=3",
        "eval.after_run=true",
        f"eval.prompts={prompts}",
        "eval.limit=4",
        "eval.max_new_tokens=6",
        "eval.judge.kind=reward_model",
        f"eval.judge.reward_model.name_or_path={rm}",
        "eval.bootstrap=50",
    ]
    run(load_config(None, overrides))
    # Round 1's pairs: chosen/rejected and p are the reward model's, the reference log-probs pi_0's.
    judge = RewardModelJudge(str(rm), torch.device("cpu"))
    generations = read_jsonl(out / round_name(1) / "generations.jsonl")
    for pair in read_jsonl(out / round_name(1) / "pairs.jsonl"):
        group = [g for g in generations if g["prompt_id"] == pair["prompt_id"]]
        prompt = group[0]["prompt"]
        scores = judge.judge([Comparison(prompt, [pair["chosen"], pair["rejected"]])])[0].scores
        assert scores[0] > scores[1]
        assert pair["p"] == pytest.approx(1 / (1 + pytest.importorskip("math").exp(scores[1] - scores[0])), abs=1e-4)
        assert pair["margin"] == pytest.approx(scores[0] - scores[1], abs=1e-4)
    judged = read_jsonl(out / round_name(1) / "judged.jsonl")
    assert all("policy_logps" in row and "prefer" in row for row in judged)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["rounds"]["1"]["judge_kind"] == "reward_model"
    assert summary["rounds"]["1"]["seed_agreement"] is not None  # pi_0's implicit reward on the seed pairs
    # Evaluated after the run: every model, and the report plots the win rates.
    results = json.loads((out / "eval" / "eval.json").read_text())
    assert set(results["models"]) == {"sft", "seed", round_name(1), round_name(2)}
    report = (out / REPORT_FILE).read_text()
    for name in ("training.png", "margins.png", "label_quality.png", "reply_length.png", "win_rate.png"):
        assert f"(plots/{name})" in report
        assert (out / "plots" / name).read_bytes().startswith(PNG)
    assert "| 2 | reward_model |" in report and "## Evaluation" in report
    assert "## Warnings" in report and "## Example pairs" in report and "**Round 1**, prompt:" in report


def test_report_plots_refinement_from_the_training_logs(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / round_name(1) / "train").mkdir(parents=True)
    (run_dir / SUMMARY_FILE).write_text(
        json.dumps(
            {
                "seed": {"pairs": 8, "train_loss": 0.5, "reward_accuracy": 1.0, "seconds": 3.0},
                "rounds": {
                    "1": {
                        "round": 1,
                        "pairs": 3,
                        "seed_agreement": 0.75,
                        "mean_reply_tokens": 12.0,
                        "smoothed_fraction": 0.25,
                        "margin_quantiles": {"p50": 0.1},
                    }
                },
            }
        )
    )
    (run_dir / round_name(1) / "pairs.jsonl").write_text(
        "".join(json.dumps({"margin": m}) + "\n" for m in (0.1, 0.5, 2.0))
    )
    (run_dir / round_name(1) / "train" / LOG_HISTORY_FILE).write_text(
        json.dumps(
            [
                {"step": 1, "loss": 0.69, "refine/smoothed_fraction": 0.0, "refine/threshold": 0.0},
                {"step": 2, "loss": 0.68, "refine/smoothed_fraction": 0.5, "refine/threshold": 0.2},
                {"train_runtime": 1.0},
            ]
        )
    )
    report = write_report(run_dir).read_text()
    assert "(plots/refinement.png)" in report and "(plots/margins.png)" in report
    assert "win_rate.png" not in report  # no evaluation yet
    assert "| 1 | implicit | 3 | 0 | – | – | 0.75 | 0.10 | 0.25 |" in report
    assert (run_dir / "plots" / "refinement.png").read_bytes().startswith(PNG)


def test_report_of_an_empty_run_still_writes_the_table(tmp_path):
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"rounds": {}}))
    assert "## Per round" in write_report(tmp_path).read_text()


@pytest.mark.parametrize(
    ("value", "spec", "expected"),
    [
        (None, ".3f", "–"),
        (float("nan"), ".2f", "–"),
        (0.12345, ".3f", "0.123"),
        (2.5, ".0f", "2"),
        (24, ".3f", "24"),
        ("implicit", ".3f", "implicit"),
    ],
)
def test_format_cell_formats_floats_keeps_counts_and_marks_missing_values(value, spec, expected):
    from spreadpref.runtime.progress import format_cell

    assert format_cell(value, spec) == expected


def test_a_gold_judge_measures_the_self_labels_without_changing_training(tiny_model_dir, tmp_path):
    from helpers import arithmetic_pairs, write_jsonl

    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(24))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Tell me about the number {i}."} for i in range(24)]
    )
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    gold = ["judge.gold=reward_model", f"judge.reward_model.name_or_path={rm}"]
    run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, tmp_path / "gold") + gold))
    run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, tmp_path / "plain")))
    out = tmp_path / "gold"
    # Measured, never trained on: the second round's pairs are the same with and without the gold judge.
    assert read_jsonl(out / round_name(2) / "pairs.jsonl") == read_jsonl(
        tmp_path / "plain" / round_name(2) / "pairs.jsonl"
    )
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["seed"]["pairs"] == 16 and summary["seed"]["held_out"] == 8  # 20% of 24, at least 8
    for key in ("1", "2"):
        row = summary["rounds"][key]
        assert row["held_out_pairs"] == 8 and row["seed_pairs"] == 16
        low, high = row["held_out_agreement_ci"]
        assert low <= row["held_out_agreement"] <= high
        labels = row["gold_labels"]
        verdicts = read_jsonl(out / round_name(key) / "gold.jsonl")
        assert len(verdicts) == row["pairs"] == labels["n"] + labels["gold_ties"]
        assert labels["rate"] == pytest.approx(sum(v["p"] > 0.5 for v in verdicts) / labels["n"])
        assert sum(b["n"] for b in labels["by_margin_decile"]) == labels["n"]
        quality = row["refinement_quality"]
        assert quality["driving"] == "dnd" and {"plain", "dnd"} <= set(quality)
        assert quality["dnd"]["smoothed"] == sum(
            d["smoothed"] for d in read_jsonl(out / round_name(key) / "train" / REFINEMENT_FILE)
        )
    assert "gold_labels" not in json.loads((tmp_path / "plain" / SUMMARY_FILE).read_text())["rounds"]["1"] or (
        json.loads((tmp_path / "plain" / SUMMARY_FILE).read_text())["rounds"]["1"]["gold_labels"] is None
    )
    report = (out / REPORT_FILE).read_text()
    assert "held-out agree (95% CI)" in report and "self-label acc (gold, 95% CI)" in report
    for name in ("label_quality.png", "noise_detection.png", "accuracy_by_margin.png"):
        assert f"(plots/{name})" in report and (out / "plots" / name).read_bytes().startswith(PNG)


def test_a_train_directory_gets_a_report_with_training_and_held_out_curves(tiny_model_dir, pairs_file, tmp_path):
    from typer.testing import CliRunner

    from spreadpref.cli import app

    out = tmp_path / "trained"
    from helpers import tiny_train_overrides

    args = [
        "train",
        *tiny_train_overrides(
            tiny_model_dir,
            pairs_file,
            out,
            "data.eval_fraction=0.25",
            "train.eval_steps=1",
            "train.max_steps=3",
            "train.per_device_batch_size=4",
            "train.gradient_accumulation_steps=1",
        ),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / REPORT_FILE).read_text()  # written at the end of `spreadpref train`
    assert "| held-out pairs | 8 |" in report and "(plots/training.png)" in report and "## Warnings" in report
    assert (out / "plots" / "training.png").read_bytes().startswith(PNG)
    (out / REPORT_FILE).unlink()
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / REPORT_FILE).is_file()


def test_warnings_name_cut_off_replies_inactive_smoothing_and_falling_held_out_accuracy(tmp_path):
    from spreadpref.eval.report import training_warnings

    history = tmp_path / LOG_HISTORY_FILE
    history.write_text(
        json.dumps([{"step": s, "eval/rewards/accuracies": a} for s, a in [(1, 0.5), (2, 0.8), (3, 0.6)]])
    )
    summary = {"rounds": {"1": {"round": 1, "cut_off_fraction": 0.9, "smoothed_fraction": 0.0, "pairs": 5}}}
    warnings = " ".join(training_warnings(tmp_path, summary, [("seed", history)]))
    assert "90% of the replies were cut off" in warnings
    assert "smoothed no label" in warnings
    assert "held-out reward accuracy fell from 0.80 to 0.60" in warnings


def test_a_perfect_agreement_plots_its_interval(tmp_path):
    from spreadpref.eval.report import plot_label_quality
    from spreadpref.eval.stats import wilson_interval

    low, high = wilson_interval(64, 64)
    assert low <= 1.0 <= high  # contains the rate, rounding included
    rows = [{"round": 1, "held_out_agreement": 1.0, "held_out_agreement_ci": [0.94, 0.9999999999999998]}]
    assert plot_label_quality(rows, tmp_path / "q.png")


def test_the_round_table_says_what_the_safeguards_did():
    from spreadpref.eval.report import round_table

    row = {
        "round": 1,
        "pairs": 30,
        "replay_pairs": 10,
        "safeguards": {"degenerate_samples": 3, "length_alpha": 0.125, "length_skew_before": 0.5, "length_skew": 0.0},
    }
    headers, rows = round_table({"rounds": {"1": row}})
    assert rows[0][headers.index("safeguards")] == "3 empty; α 0.125, skew 0.50→0.00; 10 replayed"
    headers, _ = round_table({"rounds": {"1": {"round": 1, "pairs": 30, "safeguards": {"length_alpha": 0.0}}}})
    assert "safeguards" not in headers  # nothing acted: no column


def test_a_round_that_left_the_weights_unchanged_is_marked_and_warned(tmp_path):
    from spreadpref.eval.report import NO_UPDATE_MARK, round_table, training_warnings

    summary = {"rounds": {"1": {"round": 1, "train_loss": 0.6931, "weights_unchanged": True}, "2": {"round": 2}}}
    headers, rows = round_table(summary)
    loss = headers.index("loss")
    assert rows[0][loss] == f"0.69 {NO_UPDATE_MARK}" and NO_UPDATE_MARK not in rows[1][loss]
    warnings = training_warnings(tmp_path, summary, [])
    assert any(w.startswith("Round 1: training left the weights exactly as they were") for w in warnings)
    assert not any(w.startswith("Round 2") for w in warnings)


def test_label_quality_plots_each_figure_at_the_model_it_measures(tmp_path, monkeypatch):
    from spreadpref.eval import plots as report

    drawn = []
    monkeypatch.setattr(report, "_errorbar", lambda axis, x, y, ci, style, label: drawn.append((label, x, y)))
    rows = [
        {"round": 1, "held_out_agreement": 0.7, "model_held_out_agreement": 0.8},
        {"round": 2, "held_out_agreement": 0.75, "model_held_out_agreement": 0.6},
    ]
    summary = {"seed": {"model_held_out_agreement": 0.7}, "final_choice": {"round": 1}}
    assert report.plot_label_quality(rows, tmp_path / "q.png", summary)
    series = {label: (x, y) for label, x, y in drawn}
    # Round i's judge is pi_{i-1}: its agreement sits at model i-1, beside that model's own figure.
    assert series["held-out agreement as judge of round k+1"] == ([0, 1], [0.7, 0.75])
    assert series["its own held-out agreement (the guard's)"] == ([0, 1, 2], [0.7, 0.8, 0.6])


def test_the_report_names_the_process_count(tmp_path):
    from spreadpref.eval.report import write_report

    (tmp_path / "summary.json").write_text(json.dumps({"rounds": {}, "processes": 2, "peak_rss_gb": 1.0}))
    assert "2 processes." in write_report(tmp_path).read_text()
