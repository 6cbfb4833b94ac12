"""What a training stage shows while it runs: one live bar with the loss and the reward margin, and a log file.

The Trainer's own display prints every logging step's dict between its tqdm bars, with every number turned
into a string. Here each logging step goes, numbers as numbers, to a JSON-lines file in the stage's
directory (``train_log.jsonl``, readable while the stage runs: ``tail -f``), and the screen keeps one bar
whose text carries the latest loss, margin and reward accuracy. ``--verbose`` prints each record as well.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID, TextColumn
from transformers import TrainerCallback

from spreadpref.runtime.progress import console, make_progress, progress_enabled, verbose

# Shown in the bar, in this order, when a logging step has them (TRL's names).
SHOWN = (("loss", "loss", ".3f"), ("rewards/margins", "margin", ".2f"), ("rewards/accuracies", "acc", ".2f"))


def log_record(step: int, logs: dict[str, Any]) -> dict[str, Any]:
    """One line of the log file: the step, the wall-clock time, then the Trainer's figures as JSON numbers
    (a non-finite figure as null: the file stays strict JSON)."""
    record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
    for key, value in logs.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        record[key] = value
    return record


def bar_text(logs: dict[str, Any]) -> str:
    """'loss 0.693 · margin 0.00 · acc 0.50' from a logging step's figures (what it has of them)."""
    parts = [
        f"{label} {logs[key]:{spec}}"
        for key, label, spec in SHOWN
        if isinstance(logs.get(key), (int, float)) and math.isfinite(logs[key])
    ]
    return " · ".join(parts)


class TrainDisplay(TrainerCallback):
    """One progress bar per training stage with the live loss and margin; every log record to ``log_file``."""

    def __init__(self, description: str, log_file: Path | None):
        self.description = description
        self.log_file = log_file
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not progress_enabled():
            return
        self._progress = make_progress(transient=False)
        self._progress.columns = (*self._progress.columns, TextColumn("{task.fields[figures]}"))
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, figures=""
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = log_record(state.global_step, logs)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a", encoding="utf-8") as out:  # append-only: a resumed stage adds its lines
                out.write(json.dumps(record) + "\n")
        if verbose():
            console.print(record, highlight=False)
        if self._progress is not None and self._task is not None and (text := bar_text(logs)):
            self._progress.update(self._task, figures=text)

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
