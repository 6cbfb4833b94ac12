"""The synthetic gold world: its reward and judges by hand, and (slow) the method's regression test."""

import math

import pytest

from spreadpref.eval.stats import t_interval
from spreadpref.judges.base import Comparison
from spreadpref.sandbox import compare
from spreadpref.sandbox import world as goldworld
from spreadpref.sandbox.world import GoldJudge, WorldSettings, gold_reward


def test_gold_reward_is_the_share_of_reply_words_in_the_prompt_topics_group():
    # words_per_topic=8: topic t2 owns w16..w23.
    assert gold_reward("t2 w0 w1 w2", "w16 w23 w0 w24", 8) == pytest.approx(0.5)
    assert gold_reward("t0 w9", "w0 w1 w7", 8) == 1.0
    assert gold_reward("t0 w9", "", 8) == 0.0  # an empty reply earns nothing
    assert gold_reward("t0 w9", "w0 <unk> user", 8) == pytest.approx(1 / 3)  # stray tokens count against


def test_the_gold_judge_ties_equal_rewards_and_orders_the_others():
    [j] = GoldJudge(8).judge([Comparison([{"role": "user", "content": "t1 w0"}], ["w8 w0", "w9 w1", "w8 w9"])])
    assert j.scores == pytest.approx([0.5, 0.5, 1.0])
    assert j.p(0, 1) == 0.5 and j.p(2, 0) == 1.0 and j.p(0, 2) == 0.0


def test_the_world_tokenizer_round_trips_prompts_and_replies():
    world = WorldSettings()
    tokenizer = goldworld.make_tokenizer(world)
    text = "t3 w31 w0"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    prompt = goldworld._chat_ids(tokenizer, text)
    assert prompt.count(tokenizer.bos_token_id) == 2  # the user turn and the assistant turn, nothing else


def test_a_length_balanced_seed_keeps_the_chosen_reply_as_often_shorter_as_longer(monkeypatch):
    world = WorldSettings()
    # Every pair's better reply is the shorter one but for every third: an unbalanced sample.
    replies = []
    for i in range(12):
        good, bad = ["w0", "w1"], ["w9", "w10", "w11"]
        replies.append((good + ["w2", "w3"], bad) if i % 3 == 2 else (good, bad))
    replies.append((["w0"], ["w9"]))  # equal lengths: no direction, always kept
    replies.append((["w9"], ["w10"]))  # a tie (both off-topic): skipped and counted as one
    monkeypatch.setattr(goldworld, "sample_replies", lambda *args: [[a, b] for a, b in replies])

    class Words:
        def decode(self, ids):
            return " ".join(ids)

    prompts = ["t0 w5"] * len(replies)
    pairs, ties, unbalancing = goldworld.gold_pairs(None, Words(), world, prompts, 100, 0, balance_length=True)
    lengths = [(len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    shorter, longer = sum(c < r for c, r in lengths), sum(c > r for c, r in lengths)
    assert (shorter, longer) == (4, 4) and ties == 1  # 4 longer-chosen pairs exist; as many shorter are kept
    assert unbalancing == 12 - 8 and len(pairs) == 9  # the 4 extra shorter-chosen pairs, counted apart
    plain, _, skipped = goldworld.gold_pairs(None, Words(), world, prompts, 100, 0)
    assert len(plain) == 13 and skipped == 0  # without balancing: every decided pair


def test_round_prompts_that_repeat_a_seed_prompt_are_drawn_again_and_the_others_kept():
    """Seed 1000's full world drew a round prompt equal to a seed pair's: the loop dropped it and every replay
    variant stopped one prompt short (960 needed, 959 in the pool)."""
    world = WorldSettings()
    seed_rows = [{"prompt": "t1 w4 w5"}, {"prompt": "t2 w9 w8"}]
    rounds = ["t0 w1 w2", "t1 w4 w5", "t3 w7 w7", "t2 w9 w8", "t1 w4 w5"]
    kept, redrawn = goldworld.distinct_from_seed_prompts(world, rounds, seed_rows, seed=1000)
    assert redrawn == 3 and len(kept) == len(rounds)
    assert [kept[i] for i in (0, 2)] == [rounds[i] for i in (0, 2)]  # no repeat: the same prompt, same place
    assert not {row["prompt"] for row in seed_rows} & set(kept)
    assert goldworld.distinct_from_seed_prompts(world, rounds, seed_rows, seed=1000)[0] == kept  # seeded
    assert goldworld.distinct_from_seed_prompts(world, ["t0 w1"], seed_rows, seed=1) == (["t0 w1"], 0)


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
    results = [goldworld.run_seed(goldworld.REDUCED_WORLD, seed, tmp_path, variants=variants) for seed in (0, 1, 2)]
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
    reduced = describe_world(goldworld.REDUCED_WORLD)
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
