"""The gold world's hidden reward r*(x, y), and the judges built on it (the gold-label and coin baselines)."""

from __future__ import annotations

import random

from spreadpref.judges.base import Comparison, ExactScoreJudge


def gold_reward(prompt: str, reply: str, words_per_topic: int) -> float:
    """r*(x, y): the share of the reply's words in the prompt topic's group (0 for an empty reply)."""
    topic = prompt.split()[0] if prompt.split() else ""
    words = reply.split()
    if not words or not topic.startswith("t"):
        return 0.0
    low = int(topic[1:]) * words_per_topic
    good = sum(1 for w in words if w.startswith("w") and w[1:].isdigit() and low <= int(w[1:]) < low + words_per_topic)
    return good / len(words)


def _prompt_text(comparison: Comparison) -> str:
    return next((m["content"] for m in reversed(comparison.prompt) if m["role"] == "user"), "")


class GoldJudge(ExactScoreJudge):
    """The hidden gold reward as a judge: hard labels, ties where both replies score the same."""

    name = "gold"

    def __init__(self, words_per_topic: int):
        self.words_per_topic = words_per_topic

    def scores(self, comparison: Comparison) -> list[float]:
        return [gold_reward(_prompt_text(comparison), reply, self.words_per_topic) for reply in comparison.replies]


class RandomJudge(ExactScoreJudge):
    """Labels by a coin: a seeded draw per prompt and reply, the same on a resumed run."""

    name = "random"

    def __init__(self, seed: int):
        self.seed = seed

    def scores(self, comparison: Comparison) -> list[float]:
        rng = random.Random(f"{self.seed}-{comparison.id}-{_prompt_text(comparison)}")
        return [rng.random() for _ in comparison.replies]


def gold_judge(words_per_topic: int = 8) -> GoldJudge:
    """Factory for ``judge.custom.factory=spreadpref.sandbox.gold:gold_judge``."""
    return GoldJudge(words_per_topic)


def random_judge(seed: int = 0) -> RandomJudge:
    """Factory for ``judge.custom.factory=spreadpref.sandbox.gold:random_judge``."""
    return RandomJudge(seed)
