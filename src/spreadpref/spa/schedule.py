"""Which fresh prompts each round sees: disjoint sets, drawn reproducibly from the pool.

The pool is shuffled once with the run's seed and cut into consecutive slices, so adding rounds
later never changes the prompts of earlier rounds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from spreadpref.data.records import PromptRecord
from spreadpref.errors import SpreadprefError

PAPER_ROUND_SIZES = (8000, 20000, 30000)


def round_sizes(pool_size: int, rounds: int, sizes: Sequence[int] | None) -> list[int]:
    """Prompts per round: as configured, else the paper's 8K/20K/30K, scaled down to fit the pool."""
    if rounds == 0:
        return []
    if sizes is not None:
        if len(sizes) < rounds:
            raise SpreadprefError(
                f"loop.prompts_per_round has {len(sizes)} entries for {rounds} rounds; give one per round"
            )
        chosen = list(sizes[:rounds])
    else:
        # Later rounds of the paper grow; beyond three rounds keep the last size.
        paper = [PAPER_ROUND_SIZES[min(i, len(PAPER_ROUND_SIZES) - 1)] for i in range(rounds)]
        if sum(paper) <= pool_size:
            chosen = paper
        else:
            scale = pool_size / sum(paper)
            chosen = [max(1, int(size * scale)) for size in paper]
    if any(size < 1 for size in chosen):
        raise SpreadprefError(f"every round needs at least one prompt, got {chosen}")
    if sum(chosen) > pool_size:
        raise SpreadprefError(
            f"the rounds need {sum(chosen)} distinct prompts ({chosen}) but the pool has {pool_size}; "
            "lower loop.prompts_per_round or give a larger data.prompts pool"
        )
    return chosen


def schedule_prompts(pool: Sequence[PromptRecord], sizes: Sequence[int], seed: int) -> list[list[PromptRecord]]:
    order = list(range(len(pool)))
    random.Random(f"spreadpref-schedule-{seed}").shuffle(order)
    rounds, start = [], 0
    for size in sizes:
        rounds.append([pool[i] for i in order[start : start + size]])
        start += size
    return rounds
