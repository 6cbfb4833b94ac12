"""Label quality: how right are the self-labels, and does self-refinement soften the wrong ones?

Measured against a gold judge (``judge.gold``) that labels the same pairs but never trains. A pair's
gold verdict ``p`` is the gold judge's probability that the self-chosen reply is the better one:
above one half the self-label is right, below it wrong, and at exactly one half the gold judge ties
(such pairs are counted, and left out of every rate). All rates carry 95% Wilson intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spreadpref.data.artifacts import GoldVerdict
from spreadpref.dpo.refine import ConfidenceThreshold, refine_targets
from spreadpref.eval.stats import proportion


def is_decided(gold_p: float) -> bool:
    return gold_p != 0.5


def is_mislabelled(gold_p: float) -> bool:
    return gold_p < 0.5


def self_label_accuracy(gold_p: Sequence[float]) -> dict[str, float | int]:
    """Share of pairs whose chosen reply the gold judge also prefers (gold ties left out and counted)."""
    decided = [p for p in gold_p if is_decided(p)]
    result = proportion(sum(p > 0.5 for p in decided), len(decided))
    result["gold_ties"] = len(gold_p) - len(decided)
    return result


def accuracy_by_margin(margins: Sequence[float], gold_p: Sequence[float], bins: int = 10) -> list[dict]:
    """Self-label accuracy in ``bins`` groups of equal size by judge margin, smallest margins first.

    Does a larger margin mean a more likely correct label? Fewer groups when there are fewer pairs.
    """
    decided = sorted((m, p) for m, p in zip(margins, gold_p) if is_decided(p))
    if not decided:
        return []
    groups = [g for g in np.array_split(np.arange(len(decided)), min(bins, len(decided))) if len(g)]
    table = []
    for group in groups:
        rows = [decided[i] for i in group]
        hits = sum(p > 0.5 for _, p in rows)
        table.append({"margin_low": rows[0][0], "margin_high": rows[-1][0], **proportion(hits, len(rows))})
    return table


def smoothing_quality(smoothed: Sequence[bool], gold_p: Sequence[float]) -> dict[str, float | int]:
    """Precision (smoothed pairs that were mislabelled), recall (mislabelled pairs that were smoothed), base error.

    A detector that smooths at random has precision equal to the base error rate.
    """
    decided = [(s, p) for s, p in zip(smoothed, gold_p) if is_decided(p)]
    wrong = [s for s, p in decided if is_mislabelled(p)]
    flagged = [p for s, p in decided if s]
    return {
        "precision": proportion(sum(is_mislabelled(p) for p in flagged), len(flagged)),
        "recall": proportion(sum(wrong), len(wrong)),
        "base_error_rate": proportion(len(wrong), len(decided)),
        "smoothed": len(flagged),
        "mislabelled": len(wrong),
        "pairs": len(decided),
    }


def refinement_quality(decisions: Sequence[dict], verdicts: Sequence[GoldVerdict]) -> dict[str, object]:
    """Smoothing quality of each detector whose decisions a round recorded, on the same gold-labelled pairs.

    ``decisions`` are the rows of a round's train/refinement.jsonl (one per pair and epoch); a visit
    counts as smoothed only once the warm-up is over, as it did in training.
    """
    gold = {v.pair_id: v.p for v in verdicts}
    seen = [d for d in decisions if d["id"] in gold]
    result: dict[str, object] = {"driving": seen[0]["driving"] if seen else None, "visits": len(seen)}
    for detector in ("plain", "dnd"):
        flags = [d.get(f"smoothed_{detector}") for d in seen]
        if flags and all(flag is not None for flag in flags):
            result[detector] = smoothing_quality([bool(f) for f in flags], [gold[d["id"]] for d in seen])
    return result


def replay_smoothing(
    decisions: Sequence[dict], detector: str, window: int, quantile: float, partial_window: bool
) -> list[bool]:
    """The smoothing ``detector`` would have decided on a round's recorded margins under other window rules.

    Replays the sliding window micro-batch by micro-batch (``batch`` of each record) with the recorded
    warm-up; with the round's own settings it reproduces the recorded decisions exactly. Under other
    settings it is an estimate: the margins are the ones the round's own smoothing led to.
    """
    state = ConfidenceThreshold(window, quantile)
    flags: list[bool] = []
    batches: dict[int, list[dict]] = {}
    for record in decisions:
        batches.setdefault(record["batch"], []).append(record)
    for batch in sorted(batches):
        rows = batches[batch]
        margins = torch.tensor([row[f"margin_{detector}"] for row in rows], dtype=torch.float32)  # as in training
        decision = refine_targets(margins, state, 0.0, rows[0]["active"], partial_window=partial_window)
        flags += [bool(flag) for flag in decision.smoothed]
    return flags
