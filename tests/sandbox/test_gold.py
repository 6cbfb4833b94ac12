"""The gold world's hidden reward and the judges built on it, by hand."""

import pytest

from spreadpref.judges.base import Comparison
from spreadpref.sandbox.gold import GoldJudge, gold_reward


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
