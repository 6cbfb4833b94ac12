"""The gold world's variants and their comparison, and (slow) the method's regression test."""

import math

import pytest

from spreadpref.eval.stats import t_interval
from spreadpref.sandbox import compare
from spreadpref.sandbox import world as goldworld
from spreadpref.sandbox.settings import REDUCED_WORLD, WorldSettings


def test_t_interval_over_seeds():
    stats = t_interval([0.3, 0.35, 0.4])
    assert stats["mean"] == pytest.approx(0.35) and stats["n"] == 3
    assert stats["half_width"] == pytest.approx(4.303 * 0.05 / math.sqrt(3))
    assert t_interval([0.7]) == {"mean": 0.7, "half_width": 0.0, "n": 1}


@pytest.mark.slow
def test_the_method_spreads_a_preference_in_the_reduced_gold_world(tmp_path):
    """The method's regression test: a change that breaks SPA itself (not just the code) fails here.

    Three seeds of the reduced world through the real pipeline. What the full benchmark shows robustly
    (docs/results.md, 10 of 10 seeds) is asserted: SPA's own judgment labels fresh pairs better than a
    coin, and SPA without seed, judging against pi_base, raises the gold reward over pi_init. SPA with
    seed does not beat the seed-only model there (its labels' errors are systematic, length among them,
    and the rounds amplify them), so that is reported, not asserted. A flipped or broken implicit reward fails both checks.
    """
    variants = ("seed_only", "spa_dnd", "spa_length_replay", "base_length_replay", "no_seed")
    results = [goldworld.run_seed(REDUCED_WORLD, seed, tmp_path, variants=variants) for seed in (0, 1, 2)]
    sft = [r["variants"]["sft"][0]["gold_reward"] for r in results]
    no_seed = [r["variants"]["no_seed"][-1]["gold_reward"] for r in results]
    accuracy = [r["variants"]["spa_dnd"][0]["self_label_accuracy"] for r in results]
    assert all(r["variants"]["no_seed"][-1]["round"] == 3 for r in results)
    assert sum(no_seed) / 3 > sum(sft) / 3 + 0.01, (no_seed, sft)
    assert sum(accuracy) / 3 > 0.55, accuracy
    assert all(row["length_skew"] is not None for r in results for row in r["variants"]["spa_dnd"])
    # The safeguards (docs/results.md §1, seeds 30-39): judged against the base model, the round-1 labels beat
    # the shipped SPA's (in 9 of 10 reported seeds, by 0.12 on average: asserted on the mean of three); the
    # fitted length penalty leaves every round's labels length-balanced (skew at most 0.09 in every seed).
    base_first = [r["variants"]["base_length_replay"][0]["self_label_accuracy"] for r in results]
    shipped_first = [r["variants"]["spa_dnd"][0]["self_label_accuracy"] for r in results]
    assert sum(base_first) / 3 > sum(shipped_first) / 3 + 0.03, (base_first, shipped_first)
    for r in results:
        assert all(row["length_skew"] <= 0.1 for row in r["variants"]["spa_length_replay"]), r["seed"]
        assert all("held_out_agreement_30" in row for row in r["variants"]["spa_length_replay"])


def _fake_seed(seed, seed_only, spa_rounds):
    row = {"gold_reward": 0.0, "win_rate_vs_sft": 0.5, "reply_words": 5.0, "kl_from_init": 0.0}
    return {
        "seed": seed,
        "seconds": 60.0,
        "variants": {
            "sft": [dict(row, round=0, gold_reward=0.3)],
            "seed_only": [dict(row, round=0, gold_reward=seed_only)],
            "spa_dnd": [
                dict(row, round=i + 1, gold_reward=g, self_label_accuracy=0.6) for i, g in enumerate(spa_rounds)
            ],
        },
    }


def test_the_comparison_pairs_seeds_and_takes_the_final_round():
    results = [_fake_seed(10, 0.40, [0.41, 0.45]), _fake_seed(11, 0.30, [0.30, 0.33])]
    summary = compare.aggregate(results)
    [diff] = [d for d in summary["differences"] if (d["a"], d["b"]) == ("spa_dnd", "seed_only")]
    assert diff["per_seed"] == pytest.approx([0.05, 0.03]) and diff["wins"] == 2 and diff["n"] == 2
    assert diff["half_width"] == pytest.approx(12.706 * (0.02 / math.sqrt(2)) / math.sqrt(2))
    final = next(r for r in summary["table"] if r["variant"] == "spa_dnd" and r["round"] == 2)
    assert final["gold_vs_seed_only"]["mean"] == pytest.approx(0.04)
    text = compare.markdown(summary, [10, 11], 120.0)
    assert "| SPA + refinement + DND (the paper) | DPO on the seed only | +0.040" in text and "contains 0" in text
    assert "World:" not in text
    assert "\nWorld: reduced (16 seed pairs" in compare.markdown(summary, [10], 1.0, "reduced (16 seed pairs)")


def test_the_sandbox_names_its_world_and_says_the_reduced_one_is_smaller_not_noisier():
    from spreadpref.sandbox import describe_world

    assert describe_world(WorldSettings()) == "full (30 seed pairs, 3 rounds of 320 prompts, 256 evaluation prompts)"
    reduced = describe_world(REDUCED_WORLD)
    assert reduced.startswith("reduced (16 seed pairs, 3 rounds of 160 prompts, 128 evaluation prompts)")
    assert "half the full world's" in reduced and "decide with the full world" in reduced
    assert describe_world(WorldSettings(seed_pairs=8)).startswith("8 seed pairs")  # neither: its size alone


def test_the_guard_analysis_applies_the_pipeline_rule_seed_by_seed():
    results = [_fake_seed(10, 0.40, [0.45, 0.35]), _fake_seed(11, 0.30, [0.28, 0.33])]
    agreements = {10: [0.70, 0.80, 0.60], 11: [0.70, 0.70, 0.90]}  # seed model, round 1, round 2
    for result in results:
        figures = agreements[result["seed"]]
        result["variants"]["seed_only"][0]["held_out_agreement_30"] = figures[0]
        for row, value in zip(result["variants"]["spa_dnd"], figures[1:]):
            row["held_out_agreement_30"] = value
    rows = {
        (g["variant"], g["rule"]): g
        for g in compare.guard_analysis(results, compare.SAFEGUARD_VARIANTS)
        if g["pairs"] == 30
    }
    # best_held_out: seed 10 takes round 1 (+0.05), seed 11 round 2 (+0.03); last: -0.05 and +0.03.
    assert rows[("spa_dnd", "best_held_out")]["per_seed"] == pytest.approx([0.05, 0.03])
    assert rows[("spa_dnd", "best_held_out")]["best_round_picked"] == 2
    assert rows[("spa_dnd", "last")]["per_seed"] == pytest.approx([-0.05, 0.03])
    assert rows[("spa_dnd", "last")]["below_seed_only"] == 1
