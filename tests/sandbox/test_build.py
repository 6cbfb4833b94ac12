"""One seed's world: its gold-labelled pairs."""

from spreadpref.sandbox import build
from spreadpref.sandbox.settings import WorldSettings


def test_a_length_balanced_seed_keeps_the_chosen_reply_as_often_shorter_as_longer(monkeypatch):
    world = WorldSettings()
    # Every pair's better reply is the shorter one but for every third: an unbalanced sample.
    replies = []
    for i in range(12):
        good, bad = ["w0", "w1"], ["w9", "w10", "w11"]
        replies.append((good + ["w2", "w3"], bad) if i % 3 == 2 else (good, bad))
    replies.append((["w0"], ["w9"]))  # equal lengths: no direction, always kept
    replies.append((["w9"], ["w10"]))  # a tie (both off-topic): skipped and counted as one
    monkeypatch.setattr(build, "sample_replies", lambda *args: [[a, b] for a, b in replies])

    class Words:
        def decode(self, ids):
            return " ".join(ids)

    prompts = ["t0 w5"] * len(replies)
    pairs, ties, unbalancing = build.gold_pairs(None, Words(), world, prompts, 100, 0, balance_length=True)
    lengths = [(len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    shorter, longer = sum(c < r for c, r in lengths), sum(c > r for c, r in lengths)
    assert (shorter, longer) == (4, 4) and ties == 1  # 4 longer-chosen pairs exist; as many shorter are kept
    assert unbalancing == 12 - 8 and len(pairs) == 9  # the 4 extra shorter-chosen pairs, counted apart
    plain, _, skipped = build.gold_pairs(None, Words(), world, prompts, 100, 0)
    assert len(plain) == 13 and skipped == 0  # without balancing: every decided pair
