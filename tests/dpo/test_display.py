"""The training display: one bar, the per-step figures as numbers in train_log.jsonl, nothing dict-shaped on screen."""

import json
import math

from helpers import tiny_train_overrides

from spreadpref.config import load_config
from spreadpref.dpo.display import bar_text, log_record
from spreadpref.dpo.train import train_policy
from spreadpref.runtime.layout import TRAIN_LOG_FILE


def test_a_log_record_keeps_numbers_as_numbers_and_non_finite_as_null():
    record = log_record(3, {"loss": 0.6931, "rewards/margins": math.nan, "epoch": 1, "note": "x"})
    assert record["step"] == 3 and record["loss"] == 0.6931 and record["epoch"] == 1
    assert record["rewards/margins"] is None and record["note"] == "x"
    json.dumps(record, allow_nan=False)  # strict JSON


def test_the_bar_shows_loss_margin_and_accuracy_when_a_step_has_them():
    assert bar_text({"loss": 0.69314, "rewards/margins": 0.123, "rewards/accuracies": 0.5}) == (
        "loss 0.693 · margin 0.12 · acc 0.50"
    )
    assert bar_text({"loss": 0.5, "rewards/margins": math.inf}) == "loss 0.500"
    assert bar_text({"train_runtime": 1.0}) == ""


def test_a_training_stage_logs_to_its_file_and_prints_no_trainer_dicts(tiny_model_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "train"
    train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, pairs_file, out, "train.logging_steps=1")))
    screen = capsys.readouterr()
    assert "{'loss'" not in screen.err + screen.out and "'grad_norm'" not in screen.err + screen.out
    records = [json.loads(line) for line in (out / TRAIN_LOG_FILE).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(isinstance(r["loss"], float) for r in steps)
    assert [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    assert any("train_runtime" in r for r in records)  # the Trainer's closing figures too
