"""Experiment trackers over a run's stages: one tracker run per training stage, grouped by the spreadpref run.

A `spreadpref run` trains several times (the seed stage, then each round). Each stage is its own tracker run,
named ``<run>/<stage>`` (TrainingArguments.run_name): W&B groups them by the run (``WANDB_RUN_GROUP``, W&B's
own grouping) and each gets the full spreadpref configuration; TensorBoard writes each stage to
``<run>/tensorboard/<stage>/``, so one ``tensorboard --logdir <run>/tensorboard`` shows every stage side by
side, each with its own step axis, instead of one run whose step counter restarts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spreadpref.runtime.layout import MANIFEST_FILE, TENSORBOARD_DIRECTORY, TRAIN_STAGE, round_number


def stage_of(out: Path) -> tuple[str, Path]:
    """(stage name, run directory) of a training stage's directory: ``round-2`` of ``<run>/round-2/train``,
    ``seed`` of ``<run>/seed``, ``train`` of a `spreadpref train` directory (which holds its own manifest)."""
    out = Path(out)
    if (out / MANIFEST_FILE).is_file():
        return TRAIN_STAGE, out
    if out.name == TRAIN_STAGE and round_number(out.parent.name) is not None:
        return out.parent.name, out.parent.parent
    return out.name, out.parent


def run_name(out: Path) -> str:
    stage, root = stage_of(out)
    return f"{Path(root).resolve().name}/{stage}"


@contextlib.contextmanager
def stage_tracking(report_to: list[str], out: Path) -> Iterator[None]:
    """While a stage trains: TensorBoard's directory for the stage, W&B's group for the run; afterwards the
    stage's W&B run is finished, so that the next stage starts its own."""
    stage, root = stage_of(out)
    values = {}
    if "tensorboard" in report_to or "all" in report_to:
        values["TENSORBOARD_LOGGING_DIR"] = str(Path(root) / TENSORBOARD_DIRECTORY / stage)
    if "wandb" in report_to or "all" in report_to:
        values.setdefault("WANDB_RUN_GROUP", os.environ.get("WANDB_RUN_GROUP") or Path(root).resolve().name)
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        finish_wandb_run()


def finish_wandb_run() -> None:
    wandb = sys.modules.get("wandb")  # only when the Trainer's W&B callback imported it
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def log_config_to_wandb(settings: dict[str, Any]) -> None:
    """The full spreadpref configuration into the stage's W&B run (the Trainer logs only its own arguments)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.config.update({"spreadpref": settings}, allow_val_change=True)
