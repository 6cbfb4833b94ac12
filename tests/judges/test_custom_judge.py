"""judge.kind=custom: a Judge built by a factory the config names."""

import pytest

from spreadpref.config import load_config
from spreadpref.errors import ConfigError, JudgeError
from spreadpref.judges import make_judge
from spreadpref.judges.base import Comparison
from spreadpref.sandbox.gold import GoldJudge, RandomJudge


def settings(*overrides):
    return load_config(None, list(overrides))


def test_the_factory_is_imported_and_called_with_its_kwargs():
    config = settings(
        "judge.kind=custom",
        "judge.custom.factory=spreadpref.sandbox.world:gold_judge",
        "judge.custom.kwargs={words_per_topic: 3}",
    )
    judge = make_judge(config.judge, config.model)
    assert isinstance(judge, GoldJudge) and judge.words_per_topic == 3
    # t1's words are w3, w4, w5: two of the first reply's three words, none of the second's.
    [verdict] = judge.judge([Comparison([{"role": "user", "content": "t1 w0"}], ["w3 w5 w9", "w0 w1"])])
    assert verdict.scores == pytest.approx([2 / 3, 0.0]) and verdict.p(0, 1) == 1.0


def test_a_custom_judge_needs_a_factory():
    with pytest.raises(ConfigError, match="judge.custom.factory"):
        settings("judge.kind=custom")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("spreadpref.sandbox.world", "package.module:callable"),
        ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
        ("spreadpref.sandbox.world:no_such_factory", "has no attribute"),
        ("spreadpref.sandbox.world:VARIANTS", "not callable"),
        ("spreadpref.sandbox.settings:world_settings_dict", "refused judge.custom.kwargs"),
        ("spreadpref.sandbox.settings:WorldSettings", "not a spreadpref.judges.Judge"),
    ],
)
def test_a_bad_factory_gets_a_message_that_names_it(factory, message):
    config = settings("judge.kind=custom", f"judge.custom.factory={factory}")
    with pytest.raises(JudgeError, match=message) as err:
        make_judge(config.judge, config.model)
    assert factory in str(err.value)


def test_the_random_judge_is_the_same_on_a_rerun_and_differs_between_prompts():
    comparisons = [Comparison([{"role": "user", "content": f"t0 w{i}"}], ["w1", "w2"], id=f"c{i}") for i in range(40)]
    first, again = RandomJudge(3).judge(comparisons), RandomJudge(3).judge(comparisons)
    assert [j.scores for j in first] == [j.scores for j in again]
    chosen_first = sum(j.p(0, 1) > 0.5 for j in first)
    assert 8 < chosen_first < 32  # a coin, not a constant
