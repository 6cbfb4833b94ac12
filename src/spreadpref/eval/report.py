"""``report.md`` of a run directory: the per-round table and the plots a reader would rather look at.

Plots (PNG, matplotlib, written under ``plots/``): judge-margin histograms per round, fraction of
labels smoothed and the confidence threshold over training steps, seed agreement and reply length
per round, and the win rate per model when ``spreadpref eval`` has results in ``<run>/eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from spreadpref.data.artifacts import Pair
from spreadpref.eval.evaluate import eval_markdown
from spreadpref.runtime.files import atomic_path, atomic_write_text, read_jsonl
from spreadpref.runtime.progress import format_cell


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


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
        i: [row["margin"] for row in read_jsonl(run_dir / f"round-{i}" / Pair.FILE)]
        for i in rounds
        if (run_dir / f"round-{i}" / Pair.FILE).is_file()
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
        history = _load_json(run_dir / f"round-{i}" / "train" / "log_history.json") or []
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


def _round_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| round | judge | pairs | dropped | reply tokens | margin p50 | seed agreement | smoothed | "
        "train loss | reward acc | seconds (gen / judge / train) |",
        "|---|" + "---|" * 10,
    ]
    seed = summary.get("seed")
    if seed:
        lines.append(
            f"| seed | human labels | {seed.get('pairs')} | – | – | – | – | – | {format_cell(seed.get('train_loss'))} "
            f"| {format_cell(seed.get('reward_accuracy'))} | {format_cell(seed.get('seconds'), '.0f')} |"
        )
    for r in _rounds(summary):
        dropped = (r.get("identical_dropped") or 0) + (r.get("ties_dropped") or 0)
        seconds = " / ".join(
            format_cell(r.get(k), ".0f") for k in ("generate_seconds", "judge_seconds", "train_seconds")
        )
        lines.append(
            f"| {r['round']} | {r.get('judge_kind', 'implicit')} | {format_cell(r.get('pairs'))} | {dropped} | "
            f"{format_cell(r.get('mean_reply_tokens'), '.0f')} | {format_cell((r.get('margin_quantiles') or {}).get('p50'))} | "
            f"{format_cell(r.get('seed_agreement'))} | {format_cell(r.get('smoothed_fraction'))} | {format_cell(r.get('train_loss'))} | "
            f"{format_cell(r.get('reward_accuracy'))} | {seconds} |"
        )
    return lines


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for a run directory; returns the report's path."""
    summary = _load_json(run_dir / "summary.json") or {"rounds": {}}
    rows = _rounds(summary)
    rounds = [r["round"] for r in rows]
    plots = run_dir / "plots"
    sections = [
        f"# spreadpref run report: `{run_dir.name}`",
        "",
        f"Final model: `{summary.get('final_model', '–')}`; wall time of the last invocation "
        f"{format_cell(summary.get('seconds_this_invocation'), '.0f')} s, peak RSS {format_cell(summary.get('peak_rss_gb'), '.2f')} GB.",
        "",
        "## Per round",
        "",
        *_round_table(summary),
        "",
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
            "Seed agreement",
            "seed_agreement.png",
            lambda p: plot_per_round(rows, "seed_agreement", "seed agreement", p),
            "How often pi_{i-1}'s implicit reward prefers the human-chosen seed reply (the seed is pi_0's "
            "training data, so this catches collapse rather than measuring generalisation).",
        ),
        (
            "Reply length",
            "reply_length.png",
            lambda p: plot_per_round(rows, "mean_reply_tokens", "mean reply tokens", p),
            "Mean generated reply length per round (tokens).",
        ),
    ]
    results = _load_json(run_dir / "eval" / "eval.json")
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
    for title, name, draw, caption in figures:
        if draw(plots / name):
            sections += [f"## {title}", "", f"![{title}](plots/{name})", "", caption, ""]
    if results:
        sections += ["## Evaluation", "", *eval_markdown(results).splitlines()[2:]]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(sections) + "\n")
    return out
