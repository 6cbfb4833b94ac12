"""A run's summary: summary.json (the per-round figures) and the per-round table printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spreadpref.eval.tables import round_table
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_json, read_own_json
from spreadpref.runtime.layout import SUMMARY_FILE
from spreadpref.runtime.progress import console


def label_measurements(row: dict[str, Any]) -> dict[str, Any]:
    """A round's labels from its summary row: how many pairs, the self-labels' accuracy against the gold judge
    (judge.gold) and the driving detector's smoothing precision and recall; None where not measured."""
    gold = row.get("gold_labels") or {}
    quality = row.get("refinement_quality") or {}
    driving = quality.get(quality.get("driving") or "", {}) if quality.get("driving") else {}
    return {
        "pairs": row.get("pairs"),
        "self_label_accuracy": gold.get("rate"),
        "gold_decided": gold.get("n"),
        "smoothed_fraction": row.get("smoothed_fraction"),
        "smoothing_precision": (driving.get("precision") or {}).get("rate"),
        "smoothing_recall": (driving.get("recall") or {}).get("rate"),
        "margin_median": (row.get("margin_quantiles") or {}).get("p50"),
    }


def read_summary(root: Path) -> dict[str, Any]:
    path = root / SUMMARY_FILE
    return read_own_json(path) if path.is_file() else {}


def write_summary(root: Path, summary: dict[str, Any]) -> None:
    if distributed.is_main():
        atomic_write_json(root / SUMMARY_FILE, summary)


def print_round_table(summary: dict[str, Any]) -> None:
    """Per-round figures: pairs made and dropped, label quality, smoothing, training (as in report.md)."""
    headers, rows = round_table(summary, terminal=True)
    table = Table(title="spreadpref run: per-round summary")
    for title in headers:
        table.add_column(title, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    # Rich wraps at 80 columns when the output is not a terminal; keep the table legible in log files.
    out = console if console.is_terminal else Console(stderr=True, width=180, quiet=console.quiet)
    out.print(table)
