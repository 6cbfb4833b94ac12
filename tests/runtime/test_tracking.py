"""Experiment tracking over a run's stages: one tracker run per stage, grouped by the run, read back from
TensorBoard's own event files."""

from pathlib import Path

from helpers import arithmetic_pairs, loop_overrides, write_jsonl

from spreadpref.config import load_config
from spreadpref.runtime import tracking
from spreadpref.runtime.layout import MANIFEST_FILE, TENSORBOARD_DIRECTORY


def scalar_tags(directory: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_each_stage_is_its_own_tensorboard_run_under_the_run(tiny_model_dir, tmp_path):
    from spreadpref.spa.loop import run

    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(17))  # 8 held out: the seed stage logs eval_
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Number {i}?"} for i in range(8)])
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + [
        "loop.rounds=1",
        "loop.prompts_per_round=[4]",
        "train.report_to=[tensorboard]",
    ]
    run(load_config(None, overrides))
    stages = sorted(p.name for p in (out / TENSORBOARD_DIRECTORY).iterdir())
    assert stages == ["round-1", "seed"]
    seed_tags = scalar_tags(out / TENSORBOARD_DIRECTORY / "seed")
    assert {"train/loss", "train/rewards/margins"} <= seed_tags
    assert {"eval/loss", "eval/rewards/accuracies"} <= seed_tags  # TRL's eval_ names, filed under eval/
    assert not any(tag.startswith("train/eval") for tag in seed_tags)
    assert "train/loss" in scalar_tags(out / TENSORBOARD_DIRECTORY / "round-1")


def test_stage_names_and_the_run_they_belong_to(tmp_path):
    assert tracking.stage_of(tmp_path / "run" / "round-2" / "train") == ("round-2", tmp_path / "run")
    assert tracking.stage_of(tmp_path / "run" / "seed") == ("seed", tmp_path / "run")
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / MANIFEST_FILE).write_text('{"stages": {}}')  # a `spreadpref train` directory
    assert tracking.stage_of(trained) == ("train", trained)
    assert tracking.run_name(tmp_path / "run" / "round-2" / "train") == "run/round-2"


def test_a_finished_stage_finishes_its_wandb_run_and_the_next_gets_its_own_group(tmp_path, monkeypatch):
    import sys
    import types

    finished, updates = [], []
    fake = types.SimpleNamespace(run=object(), finish=lambda: finished.append(True))
    fake.config = types.SimpleNamespace(update=lambda values, allow_val_change: updates.append(values))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    import os

    with tracking.stage_tracking(["wandb"], tmp_path / "myrun" / "seed"):
        assert os.environ["WANDB_RUN_GROUP"] == "myrun"
        tracking.log_config_to_wandb({"train.beta": 0.1})
    assert finished == [True] and "WANDB_RUN_GROUP" not in os.environ
    assert updates == [{"spreadpref": {"train.beta": 0.1}}]
