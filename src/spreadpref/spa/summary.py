"""A run's summary: summary.json (the per-round figures) and the per-round table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_json
from spreadpref.runtime.progress import console, format_cell

SUMMARY_FILE = "summary.json"


def read_summary(root: Path) -> dict[str, Any]:
    path = root / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_summary(root: Path, summary: dict[str, Any]) -> None:
    if distributed.is_main():
        atomic_write_json(root / SUMMARY_FILE, summary)


def print_round_table(summary: dict[str, Any]) -> None:
    """Per-round figures: pairs made, what was dropped, judge margins, seed agreement, smoothing, training."""
    table = Table(title="spreadpref run: per-round summary", caption="times in seconds: generate / judge / train")
    for column in (
        "round",
        "prompts",
        "pairs",
        "dropped",
        "cut off",
        "reply len",
        "margin p50",
        "seed agree",
        "smoothed",
        "loss",
        "reward acc",
        "time",
    ):
        table.add_column(column, justify="right", overflow="fold")
    seed = summary.get("seed")
    if seed:
        table.add_row(
            "seed",
            "–",
            format_cell(seed.get("pairs")),
            "–",
            "–",
            "–",
            "–",
            "–",
            "–",
            format_cell(seed.get("train_loss"), ".2f"),
            format_cell(seed.get("reward_accuracy"), ".2f"),
            format_cell(seed.get("seconds"), ".0f"),
        )
    for key in sorted(summary.get("rounds", {}), key=int):
        row = summary["rounds"][key]
        dropped = (row.get("identical_dropped") or 0) + (row.get("ties_dropped") or 0)
        table.add_row(
            str(row.get("round")),
            format_cell(row.get("prompts")),
            format_cell(row.get("pairs")),
            format_cell(dropped),
            format_cell(row.get("cut_off_fraction"), ".2f"),
            format_cell(row.get("mean_reply_tokens"), ".0f"),
            format_cell((row.get("margin_quantiles") or {}).get("p50"), ".2f"),
            format_cell(row.get("seed_agreement"), ".2f"),
            format_cell(row.get("smoothed_fraction"), ".2f"),
            format_cell(row.get("train_loss"), ".2f"),
            format_cell(row.get("reward_accuracy"), ".2f"),
            "/".join(format_cell(row.get(k), ".0f") for k in ("generate_seconds", "judge_seconds", "train_seconds")),
        )

    # Rich wraps at 80 columns when the output is not a terminal; keep the table legible in log files.
    out = console if console.is_terminal else Console(stderr=True, width=140)
    out.print(table)
