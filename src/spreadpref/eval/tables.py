"""The per-round table, for the terminal and for report.md: its columns and cells."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spreadpref.runtime.files import read_own_json
from spreadpref.runtime.progress import format_cell


def _load_json(path: Path) -> Any:
    return read_own_json(path) if path.is_file() else None


def _rounds(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [summary["rounds"][k] for k in sorted(summary.get("rounds", {}), key=int)]


def interval_cell(rate: float | None, ci: list[float] | tuple[float, float] | None) -> str:
    """ "0.69 (0.44–0.86)": a rate with its 95% interval; "–" when missing."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "–"
    if not ci or ci[0] is None:
        return format_cell(rate, ".2f")
    return f"{rate:.2f} ({ci[0]:.2f}–{ci[1]:.2f})"


def _gold_cell(row: dict[str, Any]) -> str:
    gold = row.get("gold_labels")
    if not gold or gold["rate"] is None:
        return "–"
    return interval_cell(gold["rate"], (gold["ci_low"], gold["ci_high"]))


def _precision_recall_cell(row: dict[str, Any]) -> str:
    quality = row.get("refinement_quality") or {}
    detector = quality.get(quality.get("driving") or "")
    if not detector:
        return "–"
    return f"{format_cell(detector['precision']['rate'], '.2f')} / {format_cell(detector['recall']['rate'], '.2f')}"


MODEL_COLUMN = "model held-out agree (95% CI)"


FINAL_MARK = "← final"


# Left out of the terminal's table, which must read at a glance; report.md has every column.
TERMINAL_LEFT_OUT = ("dropped", "seed agree", "reward acc")


def round_table(summary: dict[str, Any], terminal: bool = False) -> tuple[list[str], list[list[str]]]:
    """The per-round table, in the terminal (``terminal``: without TERMINAL_LEFT_OUT) and in report.md: headers
    and rows of cells.

    Held-out agreement leads: it is the signal a user without a gold judge has. The gold columns
    appear when a round was measured against ``judge.gold``; the model column (each row's own model against
    the held-out pairs, the run's final model marked) when the run measured it (see spa/guard.py).
    """
    rows = _rounds(summary)
    gold = any(r.get("gold_labels") for r in rows)
    final = (summary.get("final_choice") or {}).get("round")

    def model_cell(row: dict[str, Any], index: int) -> str:
        cell = interval_cell(row.get("model_held_out_agreement"), row.get("model_held_out_agreement_ci"))
        return f"{cell} {FINAL_MARK}" if index == final else cell

    measured = any(r.get("model_held_out_agreement") is not None for r in [*rows, summary.get("seed") or {}])
    columns: list[tuple[str, Any, Any]] = [
        ("round", lambda s: "seed", lambda r: str(r["round"])),
        ("judge", lambda s: "human", lambda r: r.get("judge") or r.get("judge_kind", "implicit")),
        (
            "pairs",
            lambda s: format_cell(s.get("pairs")) + (f" (+{s['held_out']} held out)" if s.get("held_out") else ""),
            lambda r: format_cell(r.get("pairs")),
        ),
        ("dropped", None, lambda r: format_cell((r.get("identical_dropped") or 0) + (r.get("ties_dropped") or 0))),
        ("cut off", None, lambda r: format_cell(r.get("cut_off_fraction"), ".2f")),
        (
            "held-out agree (95% CI)",
            None,
            lambda r: interval_cell(r.get("held_out_agreement"), r.get("held_out_agreement_ci")),
        ),
        ("seed agree", None, lambda r: format_cell(r.get("seed_agreement"), ".2f")),
        ("margin p50", None, lambda r: format_cell((r.get("margin_quantiles") or {}).get("p50"), ".2f")),
        ("smoothed", None, lambda r: format_cell(r.get("smoothed_fraction"), ".2f")),
    ]
    if any(_safeguards_cell(r) != "–" for r in rows):
        columns.append(("safeguards", None, _safeguards_cell))
    if gold:
        columns += [
            ("self-label acc (gold, 95% CI)", None, _gold_cell),
            ("smoothing prec / recall", None, _precision_recall_cell),
        ]
    columns += [
        ("loss", _loss_cell, _loss_cell),
        (
            "reward acc",
            lambda s: format_cell(s.get("reward_accuracy"), ".2f"),
            lambda r: format_cell(r.get("reward_accuracy"), ".2f"),
        ),
    ]
    if measured:  # without held-out pairs the final model is the last round's: nothing to mark
        columns.append((MODEL_COLUMN, lambda s: model_cell(s, 0), lambda r: model_cell(r, r["round"])))
    columns += [
        (
            "seconds (gen / judge / train)",
            lambda s: format_cell(s.get("seconds"), ".0f"),
            lambda r: " / ".join(
                format_cell(r.get(k), ".0f") for k in ("generate_seconds", "judge_seconds", "train_seconds")
            ),
        ),
    ]
    if terminal:
        columns = [column for column in columns if column[0] not in TERMINAL_LEFT_OUT]
    table = []
    if summary.get("seed"):
        table.append([seed_cell(summary["seed"]) if seed_cell else "–" for _, seed_cell, _ in columns])
    table += [[cell(r) for _, _, cell in columns] for r in rows]
    return [title for title, _, _ in columns], table


NO_UPDATE_MARK = "(no update)"


def _loss_cell(row: dict[str, Any]) -> str:
    """The stage's mean loss, marked when training left the weights as they were (dpo/train.py)."""
    cell = format_cell(row.get("train_loss"), ".2f")
    return f"{cell} {NO_UPDATE_MARK}" if row.get("weights_unchanged") else cell


def _safeguards_cell(row: dict[str, Any]) -> str:
    """What the label safeguards did in a round (docs/spa-method.md): only what acted."""
    guards = row.get("safeguards") or {}
    parts = []
    if guards.get("degenerate_samples"):
        parts.append(f"{guards['degenerate_samples']} empty")
    if guards.get("length_alpha"):
        before, after = guards.get("length_skew_before"), guards.get("length_skew")
        skew = f", skew {before:.2f}→{after:.2f}" if before is not None and after is not None else ""
        parts.append(f"α {guards['length_alpha']:.3g}{skew}")
    if guards.get("low_margin_dropped"):
        parts.append(f"{guards['low_margin_dropped']} low-margin")
    if guards.get("inconsistent"):
        parts.append(f"{guards['inconsistent']} reversed")
    if row.get("replay_pairs"):
        parts.append(f"{row['replay_pairs']} replayed")
    return "; ".join(parts) or "–"


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
