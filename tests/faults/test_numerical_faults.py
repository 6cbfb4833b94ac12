"""NaN or inf in the loss or in the log-probs stops with the step and batch named, and poisons nothing."""

import json

import pytest
import torch
from harness import write_loop_data
from helpers import arithmetic_pairs, write_jsonl
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import spreadpref.dpo.trainer as trainer_module
from spreadpref.cli import app
from spreadpref.config import load_config
from spreadpref.dpo.train import train_policy
from spreadpref.errors import TrainingError
from spreadpref.runtime.layout import MANIFEST_FILE

runner = CliRunner()


def test_nan_loss_mid_training_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(16))
    out = tmp_path / "run"
    config = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={data}",
            f"output_dir={out}",
            "data.max_length=64",
            "data.max_prompt_length=32",
            "train.max_steps=6",
            "train.per_device_batch_size=2",
            "train.gradient_accumulation_steps=1",
            "train.save_strategy=steps",
            "train.save_steps=2",
            "train.learning_rate=1e-3",
        ],
    )
    real = trainer_module.soft_dpo_loss
    calls = {"n": 0}

    def nan_on_fourth_batch(*args, **kwargs):
        out_ = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            out_.loss = out_.loss * float("nan")
        return out_

    monkeypatch.setattr(trainer_module, "soft_dpo_loss", nan_on_fourth_batch)
    with pytest.raises(TrainingError, match=r"optimizer step 4, batch of pairs \['pair-"):
        train_policy(config)
    assert not (out / "model").exists(), "a poisoned model was written as the result"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]["status"] == "running"
    monkeypatch.setattr(trainer_module, "soft_dpo_loss", real)
    result = train_policy(config)  # resumes from checkpoint-2 and finishes
    assert result.metrics["global_steps"] == 6


def test_non_finite_log_probs_stop_the_judge_with_the_sample_named(tiny_model_dir, tmp_path):
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    for item in tiny_model_dir.iterdir():
        (poisoned / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(poisoned / "model.safetensors"))
    name = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    _, prompts = write_loop_data(tmp_path / "data")
    model = f"model.name_or_path={tiny_model_dir}"
    generations = tmp_path / "gen.jsonl"
    gen = runner.invoke(
        app,
        [
            "generate",
            model,
            f"data.prompts={prompts}",
            "generation.max_new_tokens=4",
            "--limit",
            "2",
            "-o",
            str(generations),
        ],
    )
    assert gen.exit_code == 0, gen.output
    judged = runner.invoke(
        app, ["judge", str(generations), model, "--policy", str(poisoned), "-o", str(tmp_path / "judged")]
    )
    assert judged.exit_code == 2, judged.output
    message = " ".join(judged.output.split())
    assert "non-finite judge score for prompt 'q" in message and "sample 0" in message
    assert not (tmp_path / "judged" / "judged.jsonl").exists()
