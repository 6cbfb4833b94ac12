"""Held-out evaluation while training: eval_ metrics on pairs never trained on, by hand and in a real stage."""

import json
import math

import pytest
import torch
from helpers import tiny_train_overrides

from spreadpref.config import load_config
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.held_out import held_out_metrics, split_held_out
from spreadpref.dpo.train import train_policy
from spreadpref.runtime.layout import LOG_HISTORY_FILE, MANIFEST_FILE


def pair(i, label=1.0, ref=(-5.0, -5.0)):
    return TokenizedPair(
        id=f"p{i}",
        prompt_ids=[1, 5, 6, 100 + i],
        chosen_ids=[7, 8, 2],
        rejected_ids=[9, 10, 2],
        label=label,
        ref_chosen_logps=ref[0],
        ref_rejected_logps=ref[1],
    )


def test_the_split_is_seeded_keeps_order_and_follows_the_one_rule():
    """data.eval_fraction and data.seed_holdout share it: the fraction rounded up, at least 8, 8 left to train."""
    pairs = [pair(i) for i in range(50)]
    trained, held = split_held_out(pairs, 0.2, salt="s", setting="data.eval_fraction")
    again, held_again = split_held_out(pairs, 0.2, salt="s", setting="data.eval_fraction")
    assert [p.id for p in held] == [p.id for p in held_again] and len(held) == 10 and len(trained) == 40
    assert [p.id for p in trained] == sorted((p.id for p in trained), key=lambda x: int(x[1:]))
    assert split_held_out(pairs, 0.2, salt="other", setting="data.eval_fraction")[1] != held
    assert split_held_out(pairs, 0.0, salt="s", setting="data.eval_fraction") == (pairs, [])
    assert len(split_held_out(pairs[:20], 0.1, salt="s", setting="data.eval_fraction")[1]) == 8  # at least 8
    assert split_held_out(pairs[:15], 0.5, salt="s", setting="data.eval_fraction") == (
        pairs[:15],
        [],
    )  # fewer than 8 would be left


def test_each_pair_keeps_its_draw_when_pairs_are_added_or_reordered():
    pairs = [pair(i) for i in range(42)]
    _, held = split_held_out(pairs, 0.2, salt="s", setting="data.seed_holdout")
    grown = [*reversed(pairs), pair(42)]  # one pair appended, the file reordered
    _, held_grown = split_held_out(grown, 0.2, salt="s", setting="data.seed_holdout")
    before, after = {p.id for p in held}, {p.id for p in held_grown}
    assert len(before) == len(after) == 9
    assert len(before - after) <= 1 and after - before <= {"p42"}  # at most the boundary pair moves


def test_the_metrics_are_the_soft_dpo_loss_and_reward_margins_by_hand(monkeypatch):
    import spreadpref.dpo.held_out as module

    class Scored:  # log pi(chosen) = -4, log pi(rejected) = -6 for both pairs
        chosen = torch.tensor([-4.0, -4.0], dtype=torch.float64)
        rejected = torch.tensor([-6.0, -6.0], dtype=torch.float64)

    monkeypatch.setattr(module, "score_pairs", lambda *a, **k: Scored())
    model = torch.nn.Linear(1, 1)
    pairs = [pair(0, label=1.0), pair(1, label=0.75)]
    metrics = held_out_metrics(model, pairs, 0, beta=0.5, batch_size=2)
    margin = 0.5 * ((-4 + 5) - (-6 + 5))  # beta * z = 1.0
    log_sig = -math.log1p(math.exp(-margin))
    log_sig_neg = -math.log1p(math.exp(margin))
    expected = (-(log_sig) + -(0.75 * log_sig + 0.25 * log_sig_neg)) / 2
    assert metrics["eval_loss"] == pytest.approx(expected)
    assert metrics["eval_rewards/margins"] == pytest.approx(1.0) and metrics["eval_rewards/accuracies"] == 1.0
    assert metrics["eval_rewards/chosen"] == pytest.approx(0.5) and metrics["eval_rewards/rejected"] == pytest.approx(
        -0.5
    )


def test_a_train_stage_logs_held_out_metrics_on_pairs_it_never_trains_on(tiny_model_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "trained"
    config = load_config(
        None,
        tiny_train_overrides(
            tiny_model_dir,
            pairs_file,
            out,
            "data.eval_fraction=0.25",
            "train.eval_steps=2",
            "train.max_steps=4",
            "train.per_device_batch_size=4",
            "train.gradient_accumulation_steps=1",
            "train.learning_rate=1e-3",
        ),
    )
    train_policy(config)
    logs = json.loads((out / LOG_HISTORY_FILE).read_text())
    evals = [row for row in logs if "eval_rewards/accuracies" in row]
    assert [row["step"] for row in evals] == [2, 4]
    assert [row["step"] for row in logs if "loss" in row] == [1, 2, 3, 4]  # the training log is still there
    assert all(row["eval_pairs"] == 8 for row in evals)  # a quarter of 16 is 4: at least 8 are held out
    data = json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]["data"]
    assert data["pairs"] == 8 and data["held_out"] == 8
    # The final held-out figures are printed with the stage's summary and kept in its metrics.
    metrics = json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]["metrics"]
    assert metrics["eval_loss"] == evals[-1]["eval_loss"]
    said = " ".join(capsys.readouterr().err.split())
    assert "held out (8" in said and f"{metrics['eval_loss']:.4f} /" in said  # the table wraps at 80 columns
