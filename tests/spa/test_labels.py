"""Label-quality figures on hand-built cases: intervals, self-label accuracy, margin deciles, smoothing precision."""

import math

import pytest

from spreadpref.data.artifacts import GoldVerdict
from spreadpref.dpo.held_out import held_out_count
from spreadpref.eval.labels import (
    accuracy_by_margin,
    refinement_quality,
    self_label_accuracy,
    smoothing_quality,
)
from spreadpref.eval.stats import wilson_interval
from spreadpref.spa.seed import split_seed_pairs


def wilson_by_roots(k, n, z=1.959963984540054):
    """The Wilson bounds as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, solved for p."""
    p_hat = k / n
    a = n + z * z
    b = -(2 * n * p_hat + z * z)
    c = n * p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 12), (12, 12), (3, 7), (50, 100)])
def test_wilson_interval_solves_its_defining_equation(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_roots(k, n), abs=1e-12)


def test_wilson_interval_known_value_and_edges():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook example
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_self_label_accuracy_leaves_gold_ties_out_and_counts_them():
    result = self_label_accuracy([1.0, 1.0, 0.0, 0.5, 0.9, 0.0])
    assert (result["rate"], result["n"], result["gold_ties"]) == (0.6, 5, 1)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(3, 5))


def test_accuracy_by_margin_groups_pairs_by_margin():
    margins = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 5.0]
    gold_p = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.5]  # the last one is a gold tie: left out
    bins = accuracy_by_margin(margins, gold_p, bins=4)
    assert [(b["margin_low"], b["margin_high"], b["n"]) for b in bins] == [
        (0.1, 0.2, 2),
        (0.3, 0.4, 2),
        (0.5, 0.6, 2),
        (0.7, 0.8, 2),
    ]
    assert [b["rate"] for b in bins] == [0.0, 0.5, 1.0, 1.0]
    assert len(accuracy_by_margin([1.0, 2.0], [1.0, 0.0], bins=10)) == 2  # fewer pairs than bins


def test_smoothing_precision_recall_and_base_error():
    smoothed = [True, True, False, False, True, False]
    gold_p = [0.0, 1.0, 0.0, 1.0, 0.5, 1.0]  # pair 4 is a gold tie
    quality = smoothing_quality(smoothed, gold_p)
    assert (quality["pairs"], quality["smoothed"], quality["mislabelled"]) == (5, 2, 2)
    assert quality["precision"]["rate"] == 0.5  # of the 2 smoothed, pair 0 was mislabelled
    assert quality["recall"]["rate"] == 0.5  # of the 2 mislabelled (0 and 2), pair 0 was smoothed
    assert quality["base_error_rate"]["rate"] == pytest.approx(2 / 5)
    assert smoothing_quality([False, False], [1.0, 0.0])["precision"]["rate"] is None  # nothing smoothed: no rate
    assert accuracy_by_margin([0.3, 0.7], [0.5, 0.5]) == []  # every pair a gold tie
    assert self_label_accuracy([0.5, 0.5]) == {"rate": None, "ci_low": None, "ci_high": None, "n": 0, "gold_ties": 2}


def test_refinement_quality_joins_decisions_with_gold_verdicts_for_both_detectors():
    verdicts = [
        GoldVerdict(pair_id=f"p{i}", p=p, chosen_score=0.0, rejected_score=0.0, margin=0.0)
        for i, p in enumerate([0.0, 1.0, 1.0, 0.0])
    ]
    decisions = [
        {"id": "p0", "driving": "dnd", "smoothed_plain": False, "smoothed_dnd": True},
        {"id": "p1", "driving": "dnd", "smoothed_plain": True, "smoothed_dnd": False},
        {"id": "p2", "driving": "dnd", "smoothed_plain": False, "smoothed_dnd": False},
        {"id": "p3", "driving": "dnd", "smoothed_plain": True, "smoothed_dnd": True},
        {"id": "other", "driving": "dnd", "smoothed_plain": True, "smoothed_dnd": True},  # no gold verdict
    ]
    quality = refinement_quality(decisions, verdicts)
    assert quality["driving"] == "dnd" and quality["visits"] == 4
    assert quality["dnd"]["precision"]["rate"] == 1.0 and quality["dnd"]["recall"]["rate"] == 1.0
    assert quality["plain"]["precision"]["rate"] == 0.5 and quality["plain"]["recall"]["rate"] == 0.5
    only_plain = [dict(d, smoothed_dnd=None, driving="plain") for d in decisions]
    assert "dnd" not in refinement_quality(only_plain, verdicts)


@pytest.mark.parametrize(
    ("total", "fraction", "held"),
    [(64, 0.2, 13), (100, 0.2, 20), (20, 0.2, 8), (16, 0.2, 8), (15, 0.2, 0), (8, 0.2, 0), (64, 0.0, 0)],
)
def test_held_out_share_has_a_floor_and_leaves_enough_to_train(total, fraction, held):
    assert held_out_count(total, fraction) == held


def test_the_held_out_split_is_seeded_disjoint_and_keeps_order():
    from spreadpref.data.tokenize import TokenizedPair

    pairs = [TokenizedPair(id=f"p{i:02d}", prompt_ids=[1, i], chosen_ids=[2], rejected_ids=[3]) for i in range(40)]
    trained, held = split_seed_pairs(pairs, 0.2, seed=7)
    ids = sorted(p.id for p in trained + held)
    assert len(held) == 8 and ids == [p.id for p in pairs] and [p.id for p in trained] == sorted(p.id for p in trained)
    assert split_seed_pairs(pairs, 0.2, seed=7) == (trained, held)
    assert split_seed_pairs(pairs, 0.2, seed=8)[1] != held
