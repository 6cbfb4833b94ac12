"""``report.md`` of a run directory: the per-round table and the plots a reader would rather look at.

Plots (PNG, matplotlib, written under ``plots/``): judge-margin histograms per round, fraction of
labels smoothed and the confidence threshold over training steps, seed agreement and reply length
per round, and the win rate per model when ``spreadpref eval`` has results in ``<run>/eval``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from spreadpref.data.artifacts import Pair
from spreadpref.data.sanity import describe
from spreadpref.errors import SpreadprefError
from spreadpref.eval.evaluate import eval_markdown
from spreadpref.runtime.files import atomic_path, atomic_write_text, read_jsonl, read_own_json
from spreadpref.runtime.layout import (
    EVAL_DIRECTORY,
    EVAL_RESULTS_FILE,
    LOG_HISTORY_FILE,
    MANIFEST_FILE,
    PLOTS_DIRECTORY,
    REPORT_FILE,
    SEED_STAGE,
    SUMMARY_FILE,
    TRAIN_STAGE,
    round_directory,
    round_training_directory,
    training_directory,
)
from spreadpref.runtime.progress import console, format_cell


def _load_json(path: Path) -> Any:
    return read_own_json(path) if path.is_file() else None


def _rounds(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [summary["rounds"][k] for k in sorted(summary.get("rounds", {}), key=int)]


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


def training_warnings(run_dir: Path, summary: dict[str, Any] | None, histories: list[tuple[str, Path]]) -> list[str]:
    """Things a reader should look at: cut-off replies, smoothing never active, held-out accuracy falling."""
    warnings = []
    for row in _rounds(summary or {"rounds": {}}):
        if (row.get("cut_off_fraction") or 0) > 0.5:
            warnings.append(
                f"Round {row['round']}: {row['cut_off_fraction']:.0%} of the replies were cut off at "
                "generation.max_new_tokens; raise it, or the pairs compare unfinished replies."
            )
        if row.get("smoothed_fraction") == 0:
            warnings.append(
                f"Round {row['round']}: self-refinement smoothed no label (a round shorter than the warm-up, or "
                "refine.enabled=false); see docs/spa-method.md."
            )
        if row.get("pairs") == 0:
            warnings.append(f"Round {row['round']}: no pairs (every prompt's replies tied or were identical).")
        if row.get("weights_unchanged"):
            warnings.append(
                f"Round {row['round']}: training left the weights exactly as they were (every step at learning rate "
                "0: fewer steps than the warm-up); more prompts per round, more epochs or a lower train.warmup_ratio."
            )
    for name, path in histories:
        rows = _load_json(path) or []
        held = [v for row in rows if (v := held_out_value(row, "rewards/accuracies")) is not None]
        if len(held) >= 3 and held[-1] < max(held) - 0.1:
            warnings.append(
                f"{name}: held-out reward accuracy fell from {max(held):.2f} to {held[-1]:.2f} while training went "
                "on: over-fitting to the labelled pairs; fewer epochs or a lower learning rate may help."
            )
    manifest = _load_json(run_dir / MANIFEST_FILE) or {}
    for stage, entry in manifest.get("stages", {}).items():
        data = entry.get("data") or {}
        if data.get("replies_truncated"):
            warnings.append(
                f"{stage}: {data['replies_truncated']} replies were cut at data.max_length; the model learns from "
                "their starts only."
            )
        if data.get("skipped_invalid"):
            warnings.append(f"{stage}: {data['skipped_invalid']} invalid records were skipped (data.skip_invalid).")
        total = data.get("pairs", 0) + data.get("held_out", 0)
        warnings += [f"{stage}: {line}" for line in describe(data.get("warnings") or {}, total)]
        mismatch = (entry.get("reference") or {}).get("given_reference_mismatch") or {}
        if mismatch.get("warned"):
            warnings.append(
                f"{stage}: the reference log-probs given with the data differ from the starting policy's (median "
                f"{mismatch['median_nats']} nats): the margins were not zero before training."
            )
    return warnings


def example_generations(run_dir: Path, rounds: list[int], per_round: int = 2, chars: int = 300) -> list[str]:
    """A few chosen and rejected replies per round, as Markdown."""
    lines: list[str] = []
    for i in rounds:
        path = round_directory(run_dir, i) / Pair.FILE
        if not path.is_file():
            continue
        for row in read_jsonl(path)[:per_round]:
            prompt = row.get("prompt")
            text = prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt or "")
            lines += [
                f"**Round {i}**, prompt: {_quote(text, chars)}",
                "",
                f"- chosen (margin {format_cell(row.get('margin'), '.2f')}): {_quote(row.get('chosen', ''), chars)}",
                f"- rejected: {_quote(row.get('rejected', ''), chars)}",
                "",
            ]
    return lines


def _quote(text: str, chars: int) -> str:
    text = " ".join(str(text).split())
    return f"`{text[:chars]}{'…' if len(text) > chars else ''}`".replace("|", "\\|")


def write_train_report(train_dir: Path) -> Path:
    """``report.md`` for a `spreadpref train` directory: the stage's figures, curves and warnings."""
    manifest = _load_json(train_dir / MANIFEST_FILE) or {}
    entry = manifest.get("stages", {}).get(TRAIN_STAGE, {})
    metrics, data = entry.get("metrics") or {}, entry.get("data") or {}
    histories = [(TRAIN_STAGE, train_dir / LOG_HISTORY_FILE)]
    sections = [
        f"# spreadpref train report: `{train_dir.name}`",
        "",
        f"Status: {entry.get('status', '–')}; model: `{(entry.get('outputs') or {}).get('model', '–')}`.",
        "",
        "| what | value |",
        "|---|---|",
        f"| pairs trained on | {data.get('pairs', '–')} |",
        f"| held-out pairs | {data.get('held_out', 0)} |",
        f"| optimizer steps | {metrics.get('global_steps', '–')} |",
        f"| mean train loss | {format_cell(metrics.get('train_loss'), '.4f')} |",
        f"| reward accuracy on the training pairs | {format_cell(metrics.get('final/rewards_accuracy'), '.3f')} |",
        f"| wall time (s) | {format_cell(metrics.get('seconds'), '.0f')} |",
        "",
    ]
    if plot_training_curves(histories, train_dir / PLOTS_DIRECTORY / "training.png"):
        sections += ["## Training", "", "![Training](plots/training.png)", "", _CURVES_CAPTION, ""]
    sections += _warnings_section(training_warnings(train_dir, None, histories))
    out = train_dir / REPORT_FILE
    atomic_write_text(out, "\n".join(sections) + "\n")
    return out


_CURVES_CAPTION = (
    "Loss, reward margin and reward accuracy per optimizer step (the Trainer's logged values) and, dashed, on "
    "held-out pairs never trained on (data.eval, data.eval_fraction, or the seed pairs of data.seed_holdout)."
)


def _final_rule(summary: dict[str, Any]) -> str:
    """ " (loop.final_model=best_held_out: round 1)": how the final model was chosen, when the run recorded it."""
    choice = summary.get("final_choice")
    if not choice:
        return ""
    chosen = "the seed model" if choice["round"] == 0 else f"round {choice['round']}"
    return f" (loop.final_model={choice['rule']}: {chosen})"


def _verdicts_section(verdicts: list[str]) -> list[str]:
    """Each round against the seed model in one sentence (spa/guard.py: paired over the held-out pairs)."""
    if not verdicts:
        return []
    return ["Each round's model against the seed model, pair by pair on the held-out pairs:", "", *verdicts, ""]


def _warnings_section(warnings: list[str]) -> list[str]:
    return ["## Warnings", "", *([f"- {w}" for w in warnings] or ["None."]), ""]


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for a run directory; returns the report's path."""
    summary = _load_json(run_dir / SUMMARY_FILE) or {"rounds": {}}
    rows = _rounds(summary)
    rounds = [r["round"] for r in rows]
    plots = run_dir / PLOTS_DIRECTORY
    sections = [
        f"# spreadpref run report: `{run_dir.name}`",
        "",
        f"Final model{_final_rule(summary)}: `{summary.get('final_model', '–')}`; wall time of the last invocation "
        f"{format_cell(summary.get('seconds_this_invocation'), '.0f')} s, peak RSS {format_cell(summary.get('peak_rss_gb'), '.2f')} GB"
        + (f", {summary['processes']} processes." if summary.get("processes", 1) > 1 else ", 1 process."),
        "",
        "## Per round",
        "",
        *_markdown_table(*round_table(summary)),
        "",
        "Held-out agree: how often pi_{i-1}'s implicit reward prefers the human-chosen reply of the seed pairs held "
        "out from training (data.seed_holdout), with a 95% Wilson interval; seed agree: the same on the seed pairs "
        "pi_0 was trained on. Model held-out agree: the same for the model the row produced (pi_0 for the seed "
        "row, pi_i for round i), always against pi_init with summed log-probs, whatever the judge settings: the "
        f"guard's measure; {FINAL_MARK} marks the run's final model (loop.final_model).",
        "",
        *_verdicts_section(summary.get("verdicts") or []),
        *[f"{note}" for note in ((summary.get("final_choice") or {}).get("notes") or [])],
    ]
    figures = [
        (
            "Judge margins",
            "margins.png",
            lambda p: plot_margins(run_dir, rounds, p),
            "Histogram of chosen-minus-rejected judge scores of each round's pairs.",
        ),
        (
            "Self-refinement",
            "refinement.png",
            lambda p: plot_refinement(run_dir, rounds, p),
            "Fraction of pairs whose label was smoothed, and the confidence threshold, per logged training step.",
        ),
        (
            "Label quality",
            "label_quality.png",
            lambda p: plot_label_quality(rows, p, summary),
            "Per model pi_k (0: the seed model): as the judge of round k+1, how often its implicit reward agrees "
            "with the human labels of the held-out seed pairs (the signal without a gold judge) and of the seed "
            "pairs pi_0 was trained on, and, with a gold judge, the share of its self-labels the gold judge "
            "confirms; dashed, its own held-out agreement against pi_init (the guard's measure), the final model "
            "starred; 95% intervals.",
        ),
        (
            "Noise detection",
            "noise_detection.png",
            lambda p: plot_noise_detection(rows, p),
            "Against the gold judge: the share of smoothed pairs that were mislabelled (precision) and of "
            "mislabelled pairs that were smoothed (recall), for the plain and the decoupled (DND) detector on the "
            "same pairs, beside the base error rate (a detector that smooths at random has precision equal to it).",
        ),
        (
            "Accuracy against margin",
            "accuracy_by_margin.png",
            lambda p: plot_accuracy_by_margin(rows, p),
            "Self-label accuracy in deciles of the judge margin: if larger margins are more often right, "
            "confidence-based smoothing has something to work with.",
        ),
        (
            "Reply length",
            "reply_length.png",
            lambda p: plot_per_round(rows, "mean_reply_tokens", "mean reply tokens", p),
            "Mean generated reply length per round (tokens).",
        ),
    ]
    results = _load_json(run_dir / EVAL_DIRECTORY / EVAL_RESULTS_FILE)
    if results:
        figures.append(
            (
                "Win rate",
                "win_rate.png",
                lambda p: plot_win_rates(results, p),
                f"Win rate against `{results.get('baseline')}` judged by `{results.get('judge')}` on "
                f"{results.get('prompts')} held-out prompts.",
            )
        )
    histories = [
        (SEED_STAGE if i == 0 else f"round {i}", training_directory(run_dir, i) / LOG_HISTORY_FILE)
        for i in [0, *rounds]
    ]
    figures.insert(0, ("Training", "training.png", lambda p: plot_training_curves(histories, p), _CURVES_CAPTION))
    for title, name, draw, caption in figures:
        if draw(plots / name):
            sections += [f"## {title}", "", f"![{title}](plots/{name})", "", caption, ""]
    # The guard's warning (the last round below the seed model) first: it is about the model the run hands back.
    sections += _warnings_section([*(summary.get("warnings") or []), *training_warnings(run_dir, summary, histories)])
    examples = example_generations(run_dir, rounds)
    if examples:
        sections += [
            "## Example pairs",
            "",
            "The first pairs of each round, as the judge labelled them.",
            "",
            *examples,
        ]
    if results:
        sections += ["## Evaluation", "", *eval_markdown(results).splitlines()[2:]]
    out = run_dir / REPORT_FILE
    atomic_write_text(out, "\n".join(sections) + "\n")
    return out


def write_any_report(directory: Path) -> Path:
    """The report of a `spreadpref train` or a `spreadpref run` directory, whichever ``directory`` is."""
    manifest = _load_json(directory / MANIFEST_FILE) or {}
    if TRAIN_STAGE in manifest.get("stages", {}):
        return write_train_report(directory)
    if not (directory / SUMMARY_FILE).is_file():
        raise SpreadprefError(
            f"{directory} has no summary.json or train stage: not a spreadpref run or train directory (yet)"
        )
    return write_report(directory)


def report_or_warn(directory: Path) -> None:
    """Write the report at the end of a stage or run; a failed plot must not fail finished work."""
    try:
        console.print(f"Report: {write_any_report(directory)}")
    except Exception as err:  # noqa: BLE001 - the models and data are safe; only the report is missing
        console.print(
            f"[yellow]Could not write the report ({type(err).__name__}: {err}); "
            f"run `spreadpref report {directory}` to retry.[/]"
        )
