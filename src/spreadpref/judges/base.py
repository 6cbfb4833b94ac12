"""The judge interface: a prompt and K replies in, preference probabilities between them out.

``prefer[a][b]`` is the probability that reply ``a`` is preferred to reply ``b`` (0.5 on the
diagonal and for ties); ``scores`` rank the replies (higher is better).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spreadpref.data.records import Message


@dataclass
class Comparison:
    """One prompt and the K replies to compare; token ids are optional (the implicit judge uses them)."""

    prompt: list[Message]
    replies: list[str]
    id: str = ""
    prompt_ids: list[int] | None = None
    reply_ids: list[list[int]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgement:
    scores: list[float]
    prefer: list[list[float]]

    def p(self, a: int = 0, b: int = 1) -> float:
        """Probability that reply ``a`` is preferred to reply ``b``."""
        return self.prefer[a][b]


def bradley_terry(scores: Sequence[float], scale: float = 1.0) -> list[list[float]]:
    """prefer[a][b] = sigmoid(scale * (s_a - s_b))."""
    return [[sigmoid(scale * (sa - sb)) for sb in scores] for sa in scores]


def hard_preferences(scores: Sequence[float]) -> list[list[float]]:
    """prefer[a][b] = 1 if s_a > s_b, 0 if lower, 0.5 if equal: for exact (rule-based) scores."""
    return [[0.5 if sa == sb else float(sa > sb) for sb in scores] for sa in scores]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Judge(ABC):
    name: str = "judge"

    @abstractmethod
    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        """One judgement per comparison, in order."""


class ExactScoreJudge(Judge):
    """A judge with exact per-reply scores (a rule, a hidden reward): the higher score wins, equal ones tie."""

    @abstractmethod
    def scores(self, comparison: Comparison) -> list[float]:
        """One score per reply of ``comparison``."""

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        judgements = []
        for comparison in comparisons:
            scores = self.scores(comparison)
            judgements.append(Judgement(scores=scores, prefer=hard_preferences(scores)))
        return judgements


def agreement(judge: Judge, comparisons: Sequence[Comparison], batch: int = 64) -> dict[str, float]:
    """Share of labelled pairs (reply 0 = the human-chosen one) where the judge prefers the chosen reply.

    Ties count one half, so a judge that cannot tell the replies apart scores 0.5, not 0 or 1.
    """
    if not comparisons:
        return {"agreement": float("nan"), "pairs": 0}
    hits = 0.0
    for start in range(0, len(comparisons), batch):
        for judgement in judge.judge(comparisons[start : start + batch]):
            p = judgement.p(0, 1)
            hits += 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
    return {"agreement": hits / len(comparisons), "pairs": len(comparisons)}
