"""``report.md`` of a run directory: the per-round table and the plots a reader would rather look at.

Plots (PNG, matplotlib, written under ``plots/``): judge-margin histograms per round, fraction of
labels smoothed and the confidence threshold over training steps, seed agreement and reply length
per round, and the win rate per model when ``spreadpref eval`` has results in ``<run>/eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spreadpref.data.artifacts import Pair
from spreadpref.data.sanity import describe
from spreadpref.errors import SpreadprefError
from spreadpref.eval.evaluate import eval_markdown
from spreadpref.eval.plots import (
    held_out_value,
    plot_accuracy_by_margin,
    plot_label_quality,
    plot_margins,
    plot_noise_detection,
    plot_per_round,
    plot_refinement,
    plot_training_curves,
    plot_win_rates,
)
from spreadpref.eval.tables import (  # noqa: F401 - the report's names
    FINAL_MARK,
    MODEL_COLUMN,
    NO_UPDATE_MARK,
    _load_json,
    _markdown_table,
    _rounds,
    interval_cell,
    round_table,
)
from spreadpref.runtime.files import atomic_write_text, read_jsonl
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
    training_directory,
)
from spreadpref.runtime.progress import console, format_cell


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
