"""Experiment tracking over a run's stages: one tracker run per stage, grouped by the run, read back from
TensorBoard's own event files and from W&B's offline run files."""

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import arithmetic_pairs, loop_overrides, write_jsonl

from spreadpref.config import load_config
from spreadpref.runtime import tracking
from spreadpref.runtime.layout import MANIFEST_FILE, TENSORBOARD_DIRECTORY


def scalar_tags(directory: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def run_seed_and_one_round(model: Path, out: Path, *overrides: str) -> Path:
    """A tiny `spreadpref run`: a seed stage with 8 held-out pairs (so it logs eval_ metrics), then one round."""
    from spreadpref.spa.loop import run

    seed = write_jsonl(out.parent / "seed.jsonl", arithmetic_pairs(17))
    prompts = write_jsonl(out.parent / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Number {i}?"} for i in range(8)])
    base = loop_overrides(model, seed, prompts, out) + ["loop.rounds=1", "loop.prompts_per_round=[4]"]
    run(load_config(None, base + list(overrides)))
    return out


def test_each_stage_is_its_own_tensorboard_run_under_the_run(tiny_model_dir, tmp_path):
    out = run_seed_and_one_round(tiny_model_dir, tmp_path / "run", "train.report_to=[tensorboard]")
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


def wandb_records(log: Path) -> Iterator[Any]:
    """The records of an offline run's ``run-*.wandb`` file (what `wandb sync` uploads): W&B's LevelDB-style
    log, 32 KiB blocks of chunks each with a 7-byte header (CRC, length, type: 1 whole, 2-4 first/middle/last),
    after a 7-byte file header. wandb 0.2x+ ships no Python reader, so the test reads it itself."""
    from wandb.proto import wandb_internal_pb2

    data, block = log.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", f"{log} is not a W&B transaction log"
    position, parts = 7, b""
    while position + 7 <= len(data):
        room = block - position % block
        _crc, length, kind = struct.unpack_from("<IHB", data, position)
        if room < 7 or (kind == 0 and length == 0):  # a block's padding
            position += room
            continue
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_offline_runs(directory: Path) -> dict[str, dict[str, Any]]:
    """Each offline W&B run under `directory` by its name: its group, config keys and logged metric names."""
    runs = {}
    for log in sorted(directory.glob("wandb/offline-run-*/run-*.wandb")):
        name, group, config, metrics = None, None, {}, set()
        for record in wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name, group = record.run.display_name, record.run.run_group
            elif kind == "config":
                config.update({item.key: item.value_json for item in record.config.update})
            elif kind == "history":
                metrics |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        runs[name] = {"group": group, "config": config, "metrics": metrics}
    return runs


def test_each_stage_is_its_own_wandb_run_in_the_runs_group_offline(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # in the dev extra; a bare install skips
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    run_seed_and_one_round(tiny_model_dir, tmp_path / "myrun", "train.report_to=[wandb]", "train.beta=0.2")
    runs = wandb_offline_runs(tmp_path)
    assert sorted(runs) == ["myrun/round-1", "myrun/seed"]
    for stage in runs.values():
        assert stage["group"] == "myrun"
        assert json.loads(stage["config"]["spreadpref"])["train.beta"] == 0.2  # the full spreadpref config
        assert {"train/loss", "train/rewards/margins"} <= stage["metrics"]
    assert {"eval/loss", "eval/rewards/accuracies"} <= runs["myrun/seed"]["metrics"]  # 8 held-out pairs
