import pytest

from spreadpref.data.records import PromptRecord
from spreadpref.errors import SpreadprefError
from spreadpref.spa.schedule import round_sizes, schedule_prompts


def pool(n):
    return [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": f"Q{i}"}]) for i in range(n)]


def test_paper_sizes_when_the_pool_is_large_enough():
    assert round_sizes(60000, 3, None) == [8000, 20000, 30000]


def test_paper_proportions_scaled_to_a_small_pool():
    sizes = round_sizes(580, 3, None)
    assert sizes == [80, 200, 300]
    assert round_sizes(440, 2, None) == [125, 314]  # 8:20 of 440 = 125.7 and 314.3, rounded down


def test_configured_sizes_and_errors():
    assert round_sizes(100, 2, [10, 20, 30]) == [10, 20]
    with pytest.raises(SpreadprefError, match="one per round"):
        round_sizes(100, 3, [10, 20])
    with pytest.raises(SpreadprefError, match="pool has 100"):
        round_sizes(100, 2, [60, 60])


def test_rounds_are_disjoint_reproducible_and_stable_when_rounds_are_added():
    prompts = pool(50)
    two = schedule_prompts(prompts, [10, 15], seed=3)
    again = schedule_prompts(prompts, [10, 15], seed=3)
    three = schedule_prompts(prompts, [10, 15, 5], seed=3)
    ids = [[p.id for p in r] for r in two]
    assert ids == [[p.id for p in r] for r in again]
    assert ids == [[p.id for p in r] for r in three[:2]]
    assert not set(ids[0]) & set(ids[1]) and len(set(ids[0])) == 10
    other = schedule_prompts(prompts, [10, 15], seed=4)
    assert ids != [[p.id for p in r] for r in other]
