"""The report's plots: judge margins, smoothing, win rates, label quality, noise detection and training curves,
one PNG each (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from spreadpref.data.artifacts import Pair
from spreadpref.eval.tables import _load_json
from spreadpref.runtime.files import atomic_path, read_jsonl
from spreadpref.runtime.layout import (
    LOG_HISTORY_FILE,
    round_directory,
    round_training_directory,
)


def _figure(size: tuple[float, float], rows: int = 1, columns: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes, without pyplot: no global state, no display, whatever backend the user has."""
    figure = Figure(figsize=size)
    return figure, figure.subplots(rows, columns, **kwargs)


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")


def plot_margins(run_dir: Path, rounds: list[int], out: Path) -> bool:
    margins = {
        i: [row["margin"] for row in read_jsonl(round_directory(run_dir, i) / Pair.FILE)]
        for i in rounds
        if (round_directory(run_dir, i) / Pair.FILE).is_file()
    }
    margins = {i: m for i, m in margins.items() if m}
    if not margins:
        return False
    figure, axes = _figure((3.2 * len(margins), 2.6), 1, len(margins), squeeze=False, sharey=True)
    for axis, (i, values) in zip(axes[0], margins.items()):
        axis.hist(values, bins=20, color="tab:blue", alpha=0.8)
        axis.set_title(f"round {i}")
        axis.set_xlabel("judge margin (chosen - rejected)")
    axes[0][0].set_ylabel("pairs")
    _save(figure, out)
    return True


def plot_refinement(run_dir: Path, rounds: list[int], out: Path) -> bool:
    """Fraction of labels smoothed and the threshold tau, step by step through the rounds."""
    series: list[tuple[int, int, float | None, float | None]] = []
    offset, boundaries = 0, []
    for i in rounds:
        history = _load_json(round_training_directory(run_dir, i) / LOG_HISTORY_FILE) or []
        steps = [h for h in history if "refine/smoothed_fraction" in h]
        for h in steps:
            series.append(
                (i, offset + int(h.get("step", 0)), h.get("refine/smoothed_fraction"), h.get("refine/threshold"))
            )
        if steps:
            boundaries.append((offset, i))
        offset += max((int(h.get("step", 0)) for h in steps), default=0)
    if not series:
        return False
    figure, left = _figure((6.4, 2.8))
    for start, i in boundaries:
        left.axvline(start + 0.5, color="grey", lw=0.6, ls=":")
        left.annotate(f"round {i}", (start + 0.6, 1.0), xycoords=("data", "axes fraction"), va="top", fontsize=7)
    steps = [s for _, s, _, _ in series]
    left.plot(steps, [f for _, _, f, _ in series], "o-", color="tab:orange", label="fraction smoothed")
    left.set_xlabel("training step (rounds in sequence)")
    left.set_ylabel("fraction smoothed", color="tab:orange")
    right = left.twinx()
    right.plot(steps, [t for _, _, _, t in series], "s--", color="tab:blue", label="threshold tau")
    right.set_ylabel("confidence threshold tau", color="tab:blue")
    _save(figure, out)
    return True


def plot_per_round(rows: list[dict[str, Any]], key: str, label: str, out: Path) -> bool:
    points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
    if not points:
        return False
    figure, axis = _figure((4.2, 2.6))
    axis.plot([p[0] for p in points], [p[1] for p in points], "o-")
    axis.set_xlabel("round")
    axis.set_ylabel(label)
    axis.set_xticks([p[0] for p in points])
    _save(figure, out)
    return True


def plot_win_rates(results: dict[str, Any], out: Path) -> bool:
    models = [(name, row) for name, row in results.get("models", {}).items() if "win_rate" in row]
    if not models:
        return False
    figure, axis = _figure((1.1 * len(models) + 2.5, 2.8))
    x = list(range(len(models)))
    rates = [row["win_rate"] for _, row in models]
    low = [row["win_rate"] - row.get("ci_low", row["win_rate"]) for _, row in models]
    high = [row.get("ci_high", row["win_rate"]) - row["win_rate"] for _, row in models]
    axis.errorbar(x, rates, yerr=[low, high], fmt="o", capsize=4, label="win rate (95% CI)")
    axis.plot(x, [row.get("lc_win_rate") for _, row in models], "x", label="length-controlled")
    axis.axhline(0.5, color="grey", lw=0.8, ls=":")
    axis.set_xticks(x, [name for name, _ in models], rotation=30, ha="right")
    axis.set_ylabel(f"win rate vs {results.get('baseline')}")
    axis.legend(fontsize=7)
    _save(figure, out)
    return True


def plot_label_quality(rows: list[dict[str, Any]], out: Path, summary: dict[str, Any] | None = None) -> bool:
    """Per model pi_k (k = 0: the seed model), the figures that measure it: as the judge of round k + 1 (its
    held-out and seed agreement, and with a gold judge the accuracy of the labels it gave), and its own held-out
    agreement (the guard's measure, against pi_init), the final model starred; 95% intervals."""
    summary = summary or {}
    as_judge = [dict(r, model=r["round"] - 1) for r in rows]  # round i is judged by pi_{i-1}
    series = [
        (
            "held-out agreement as judge of round k+1",
            "held_out_agreement",
            lambda r: r.get("held_out_agreement_ci"),
            "o-",
        ),
        ("seed agreement as judge (trained on)", "seed_agreement", lambda r: r.get("seed_agreement_ci"), "s:"),
    ]
    gold = [(r["model"], r["gold_labels"]) for r in as_judge if (r.get("gold_labels") or {}).get("rate") is not None]
    own = [(0, summary.get("seed") or {})] + [(r["round"], r) for r in rows]
    own = [(k, r) for k, r in own if r.get("model_held_out_agreement") is not None]
    points = [r.get(key) for _, key, _, _ in series for r in as_judge if r.get(key) is not None]
    if not points and not gold and not own:
        return False
    figure, axis = _figure((5.2, 3.0))
    for label, key, interval, style in series:
        kept = [r for r in as_judge if r.get(key) is not None]
        if kept:
            _errorbar(
                axis, [r["model"] for r in kept], [r[key] for r in kept], [interval(r) for r in kept], style, label
            )
    if gold:
        _errorbar(
            axis,
            [k for k, _ in gold],
            [g["rate"] for _, g in gold],
            [(g["ci_low"], g["ci_high"]) for _, g in gold],
            "D-",
            "accuracy of its labels (gold judge)",
        )
    if own:
        _errorbar(
            axis,
            [k for k, _ in own],
            [r["model_held_out_agreement"] for _, r in own],
            [r.get("model_held_out_agreement_ci") for _, r in own],
            "^--",
            "its own held-out agreement (the guard's)",
        )
        final = (summary.get("final_choice") or {}).get("round")
        chosen = [r for k, r in own if k == final]
        if chosen:
            axis.plot([final], [chosen[0]["model_held_out_agreement"]], "*", ms=14, color="gold", mec="black",
                      label="final model", zorder=5)  # fmt: skip
    axis.axhline(0.5, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("model π_k (0: the seed model π_0)")
    axis.set_ylabel("share (95% CI)")
    axis.set_ylim(0, 1.05)
    axis.set_xticks(sorted({0, *(r["round"] for r in rows)}))
    axis.legend(fontsize=6)
    _save(figure, out)
    return True


def _errorbar(axis: Any, x: list[int], y: list[float], intervals: list[Any], style: str, label: str) -> None:
    # max(0, ...): intervals stored by older versions could miss their own rate by a rounding error.
    low = [max(0.0, v - ci[0]) if ci else 0.0 for v, ci in zip(y, intervals)]
    high = [max(0.0, ci[1] - v) if ci else 0.0 for v, ci in zip(y, intervals)]
    axis.errorbar(x, y, yerr=[low, high], fmt=style, capsize=3, label=label)


def plot_noise_detection(rows: list[dict[str, Any]], out: Path) -> bool:
    """Precision and recall of each detector's smoothing per round, beside the base error rate."""
    measured = [(r["round"], r["refinement_quality"]) for r in rows if r.get("refinement_quality")]
    if not measured:
        return False
    figure, axis = _figure((5.2, 2.8))
    styles = {"plain": ("tab:orange", "plain"), "dnd": ("tab:purple", "DND")}
    for detector, (color, name) in styles.items():
        kept = [(i, q[detector]) for i, q in measured if q.get(detector)]
        if not kept:
            continue
        x = [i for i, _ in kept]
        for metric, style in (("precision", "o-"), ("recall", "s--")):
            values = [math.nan if q[metric]["rate"] is None else q[metric]["rate"] for _, q in kept]
            axis.plot(x, values, style, color=color, label=f"{name} {metric}")
    base = [
        (i, q[q["driving"]]["base_error_rate"]["rate"])
        for i, q in measured
        if q.get(q.get("driving") or "") and q[q["driving"]]["base_error_rate"]["rate"] is not None
    ]
    if base:
        axis.plot([i for i, _ in base], [b for _, b in base], "x:", color="grey", label="base error rate")
    axis.set_xlabel("round")
    axis.set_ylabel("share")
    axis.set_ylim(0, 1.05)
    axis.set_xticks([i for i, _ in measured])
    axis.legend(fontsize=7)
    _save(figure, out)
    return True


def plot_accuracy_by_margin(rows: list[dict[str, Any]], out: Path) -> bool:
    """Self-label accuracy in each judge-margin decile, per round: does confidence mean correctness?"""
    measured = [(r["round"], r["gold_labels"]["by_margin_decile"]) for r in rows if r.get("gold_labels")]
    measured = [(i, bins) for i, bins in measured if bins]
    if not measured:
        return False
    figure, axis = _figure((4.8, 2.8))
    for i, bins in measured:
        x = [(b["margin_low"] + b["margin_high"]) / 2 for b in bins]
        axis.plot(x, [b["rate"] for b in bins], "o-", label=f"round {i}")
    axis.axhline(0.5, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("judge margin (middle of the decile)")
    axis.set_ylabel("self-label accuracy")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
    _save(figure, out)
    return True


CURVES = (
    ("loss", "loss", "loss"),
    ("reward margin", "rewards/margins", "rewards/margins"),
    ("reward accuracy", "rewards/accuracies", "rewards/accuracies"),
)


def held_out_value(row: dict[str, Any], name: str) -> float | None:
    """A held-out metric of a log row: TRL's ``eval_<name>``, or ``eval/<name>`` as runs before 0.2 logged it."""
    return row.get(f"eval_{name}", row.get(f"eval/{name}"))


def plot_training_curves(stages: list[tuple[str, Path]], out: Path) -> bool:
    """Loss, margin and accuracy over optimizer steps, training and held-out, one line per stage."""
    histories = [(name, _load_json(path) or []) for name, path in stages]
    histories = [(name, h) for name, h in histories if any("loss" in row for row in h)]
    if not histories:
        return False
    figure, axes = _figure((13, 3.4), 1, 3)
    for axis, (title, train_key, eval_key) in zip(axes, CURVES):
        for name, history in histories:
            train = [(row["step"], row[train_key]) for row in history if train_key in row and "step" in row]
            held = [
                (row["step"], held_out_value(row, eval_key))
                for row in history
                if held_out_value(row, eval_key) is not None and "step" in row
            ]
            if train:
                lines = axis.plot(*zip(*train), label=f"{name} (train)", alpha=0.8)
                if held:
                    axis.plot(*zip(*held), "o--", color=lines[0].get_color(), label=f"{name} (held out)")
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
    axes[0].legend(fontsize=7)
    _save(figure, out)
    return True
