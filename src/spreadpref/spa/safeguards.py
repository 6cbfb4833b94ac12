"""Label safeguards beyond the paper: which samples may be paired, and how a round's scores pick the pair.

Each one is a config key (docs/spa-method.md, "Safeguards beyond the paper"); all of them are pure functions
of the judge's scores and the replies' lengths, so each has a closed-form test:

- **degenerate replies** (``judge.min_reply_tokens``): an empty or whitespace-only reply, or one shorter than N
  tokens, is never paired, so the implicit judge cannot prefer "say nothing";
- **the length-regularised score** (``judge.length_penalty``, after DICE): ``s - alpha * tokens``, with alpha
  fitted per round so that the round's chosen replies are as often shorter than the rejected ones as longer;
- **confident pairs** (``judge.top_fraction``): only the pairs with the largest margins;
- **consistency** (``judge.consistency``, after CREAM): a pair whose order the previous model's judge reverses.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

Candidate = tuple[float, int]  # (score, reply length in tokens) of one sample of a prompt


def content_tokens(num_tokens: int, finish_reason: str) -> int:
    """Reply tokens without the stop token (a reply that stopped ends with it; a cut-off one does not)."""
    return max(num_tokens - (1 if finish_reason == "stop" else 0), 0)


def is_degenerate(text: str, num_tokens: int, finish_reason: str, min_tokens: int) -> bool:
    """Never paired: only whitespace, or fewer than ``min_tokens`` content tokens (0 pairs everything)."""
    if min_tokens <= 0:
        return False
    return not text.strip() or content_tokens(num_tokens, finish_reason) < min_tokens


def best_and_worst(group: Sequence[Candidate], alpha: float = 0.0) -> tuple[int, int]:
    """Indices of the chosen (first of the highest ``s - alpha * length``) and rejected (last of the lowest)."""
    shaped = [score - alpha * length for score, length in group]
    best = max(range(len(group)), key=lambda i: (shaped[i], -i))
    worst = min(range(len(group)), key=lambda i: (shaped[i], -i))
    return best, worst


def length_imbalance(groups: Sequence[Sequence[Candidate]], alpha: float) -> int:
    """Pairs whose chosen reply is longer minus pairs whose chosen reply is shorter, at penalty ``alpha``.

    Non-increasing in alpha: a larger penalty can only move the chosen reply to a shorter one and the
    rejected reply to a longer one."""
    total = 0
    for group in groups:
        best, worst = best_and_worst(group, alpha)
        total += (group[best][1] > group[worst][1]) - (group[best][1] < group[worst][1])
    return total


def _breakpoints(groups: Sequence[Sequence[Candidate]]) -> list[float]:
    """Every alpha at which two samples of a prompt swap order: (s_a - s_b) / (l_a - l_b)."""
    points = set()
    for group in groups:
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                (sa, la), (sb, lb) = group[a], group[b]
                if la != lb:
                    points.add((sa - sb) / (la - lb))
    return sorted(points)


def fit_length_alpha(groups: Sequence[Sequence[Candidate]]) -> float:
    """The penalty alpha that balances the round's labels for length: chosen shorter as often as longer.

    The imbalance is a step function of alpha, constant between the breakpoints where two samples of a prompt
    swap order, so the candidates are one point inside each step; a binary search finds where it crosses 0,
    and of the two steps beside the crossing and the step holding 0, the one nearest balance wins (the smaller
    |alpha| on a tie, so 0 whenever no alpha balances better). The result is negative when the labels favour
    short replies (it then rewards length, to balance them). 0 when the labels are balanced already.
    """
    if length_imbalance(groups, 0.0) == 0:
        return 0.0
    points = _breakpoints(groups)
    if not points:
        return 0.0
    candidates = [points[0] - 1.0]
    candidates += [(a + b) / 2 for a, b in zip(points, points[1:])]
    candidates.append(points[-1] + 1.0)
    if 0.0 not in points:  # the step holding alpha = 0 is represented by 0 itself: no penalty when it is best
        candidates[bisect.bisect_left(points, 0.0)] = 0.0
    imbalance = {}

    def at(index: int) -> int:
        if index not in imbalance:
            imbalance[index] = length_imbalance(groups, candidates[index])
        return imbalance[index]

    # The first step whose imbalance is <= 0 (it exists: at the last candidate the shortest reply always wins).
    first = bisect.bisect_left(range(len(candidates)), True, key=lambda i: at(i) <= 0)
    options = [
        i for i in (first - 1, first, candidates.index(0.0) if 0.0 in candidates else -1) if 0 <= i < len(candidates)
    ]
    best = min(options, key=lambda i: (abs(at(i)), abs(candidates[i])))
    return candidates[best]


def length_skew(chosen_rejected_lengths: Sequence[tuple[int, int]]) -> float | None:
    """Among pairs whose replies differ in length, |2 * (share where the chosen one is shorter) - 1|: 0 when
    length does not predict the label, 1 when it always does; None without such pairs."""
    unequal = [(c, r) for c, r in chosen_rejected_lengths if c != r]
    if not unequal:
        return None
    return abs(2 * sum(c < r for c, r in unequal) / len(unequal) - 1)


def top_by_margin(margins: Sequence[float], fraction: float) -> list[int]:
    """Indices (in their order) of the ceil(fraction * n) largest margins; on equal margins the earlier pair."""
    if fraction >= 1.0:
        return list(range(len(margins)))
    keep = math.ceil(fraction * len(margins))
    ranked = sorted(range(len(margins)), key=lambda i: (-margins[i], i))[:keep]
    return sorted(ranked)


def reversed_by_previous(previous_chosen: float | None, previous_rejected: float | None) -> bool:
    """CREAM's check on one pair: the previous model's judge ranks the rejected reply strictly above the chosen
    one. No opinion (a tie, or no previous judge) is not a reversal."""
    if previous_chosen is None or previous_rejected is None:
        return False
    return previous_rejected > previous_chosen


@dataclass(frozen=True)
class PairingRules:
    """The judge section's safeguards as the pairing applies them."""

    min_reply_tokens: int = 0
    length_penalty: str | float = "none"
    top_fraction: float = 1.0
    consistency: str = "none"
    soft_label: float = 0.9  # 1 - refine.alpha: the label of a softened pair

    @classmethod
    def from_settings(cls, judge, refine_alpha: float) -> PairingRules:
        """The rules of a judge section; an external judge's score is its own, so only the sample and margin rules
        apply to it."""
        implicit = judge.kind == "implicit"
        return cls(
            min_reply_tokens=judge.min_reply_tokens,
            length_penalty=judge.length_penalty if implicit else "none",
            top_fraction=judge.top_fraction,
            consistency=judge.consistency if implicit else "none",
            soft_label=1 - refine_alpha,
        )
