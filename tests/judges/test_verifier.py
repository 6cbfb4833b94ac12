"""The rule-based gold verifier: IFEval constraints checked by if-verifiable, fully offline."""

import json
import re
import socket
import sys

import pytest

pytest.importorskip("if_verifiable", reason="needs the 'verify' extra: pip install 'spreadpref[verify]'")

import nltk  # installed with the extra
from repo_paths import BENCHMARKS, SCRIPTS, on_path

with on_path(SCRIPTS):
    import ifeval_builder as builder

from spreadpref.errors import DataError, JudgeError
from spreadpref.judges import verifier as v
from spreadpref.judges.sentences import count_sentences, word_tokenize
from spreadpref.judges.verifier import Constraint, check, verifier_score


def _no_network(*args, **kwargs):
    raise AssertionError("the verifier must never use the network or download NLTK data")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Every test runs with downloads and sockets forbidden; the offline setup is redone each time."""
    monkeypatch.setattr(nltk, "download", _no_network)
    monkeypatch.setattr(nltk.downloader, "download", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    v._prepare_checkers.cache_clear()
    yield
    v._prepare_checkers.cache_clear()
    v._instruction_registry.cache_clear()
    builder.instruction_conflicts.cache_clear()


def one(instruction_id, **kwargs):
    return [Constraint(instruction_id, kwargs)]


def passes(reply, instruction_id, **kwargs) -> bool:
    return check(reply, one(instruction_id, **kwargs))[0]


# One reply that follows each builder kind and one that does not, worked out by hand.
FOLLOWS_AND_BREAKS = [
    (builder.LOWERCASE, {}, "plants need light and water to grow well.", "Plants need light and water to grow well."),
    (builder.CAPITALS, {}, "PLANTS NEED LIGHT AND WATER TO GROW WELL.", "PLANTS need light and water to grow well."),
    # "less than 5": 4 words pass, 5 fail (words are runs of \w).
    (
        builder.NUMBER_WORDS,
        {"relation": "less than", "num_words": 5},
        "Water the plant daily.",
        "Please water the plant daily.",
    ),
    (
        builder.NUMBER_WORDS,
        {"relation": "at least", "num_words": 5},
        "Please water the plant daily.",
        "Water the plant daily.",
    ),
    # Punkt sentences: "Mr." does not end a sentence, so the first reply has 2, the second 3.
    (
        builder.NUMBER_SENTENCES,
        {"relation": "less than", "num_sentences": 3},
        "Mr. Smith waters the plant. It grows.",
        "Water it. Feed it. Love it.",
    ),
    (
        builder.NUMBER_SENTENCES,
        {"relation": "at least", "num_sentences": 3},
        "Water it. Feed it. Love it.",
        "Mr. Smith waters the plant. It grows.",
    ),
    (
        builder.BULLETS,
        {"num_bullets": 2},
        "Tips:\n* Water weekly.\n* Give it light.",
        "* Water weekly.\n* Give light.\n- Repot.",
    ),
    (builder.KEYWORDS, {"keywords": ["garden", "morning"]}, "A Garden in the morning.", "A garden at night."),
    (builder.FORBIDDEN, {"forbidden_words": ["very"]}, "Every plant is happy.", "The plant is very happy."),
    (
        builder.END_PHRASE,
        {"end_phrase": "Any other questions?"},
        "Water it. Any other questions?",
        "Any other questions? Water it.",
    ),
    (builder.QUOTATION, {}, '"Water it weekly."', 'Water it "weekly".'),
    (builder.JSON_FORMAT, {}, '```json\n{"tip": "water weekly"}\n```', "tip: water weekly"),
    (builder.NO_COMMA, {}, "Water it and feed it.", "Water it, and feed it."),
    (builder.TITLE, {}, "<<Plant care>>\nWater it.", "Plant care\nWater it."),
    (builder.POSTSCRIPT, {"postscript_marker": "P.S."}, "Water it.\n\nP.S. Feed it too.", "Water it. Feed it too."),
    (
        builder.POSTSCRIPT,
        {"postscript_marker": "P.P.S"},
        "Water it.\nP.P.S Feed it too.",
        "Water it.\nP.S. Feed it too.",
    ),
]


@pytest.mark.parametrize(
    "instruction_id, kwargs, follows, breaks",
    FOLLOWS_AND_BREAKS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(FOLLOWS_AND_BREAKS)],
)
def test_each_kind_accepts_a_following_reply_and_rejects_a_breaking_one(instruction_id, kwargs, follows, breaks):
    assert passes(follows, instruction_id, **kwargs) is True
    assert passes(breaks, instruction_id, **kwargs) is False


def test_every_builder_kind_has_a_hand_checked_case():
    assert {case[0] for case in FOLLOWS_AND_BREAKS} == set(builder.BUILDER_KINDS)


def test_empty_reply_follows_nothing_not_even_forbidden_words():
    constraints = one(builder.FORBIDDEN, forbidden_words=["very"]) + one(builder.NO_COMMA)
    assert check("   ", constraints) == [False, False]
    assert verifier_score("", constraints) == 0.0


def test_score_is_the_fraction_of_constraints_followed():
    constraints = (
        one(builder.NO_COMMA) + one(builder.NUMBER_WORDS, relation="less than", num_words=10) + one(builder.QUOTATION)
    )
    reply = "Water the plant daily."  # no comma, 4 words, not quoted
    assert check(reply, constraints) == [True, True, False]
    assert verifier_score(reply, constraints) == pytest.approx(2 / 3)
    assert verifier_score('"Water the plant daily."', constraints) == 1.0
    assert verifier_score("Water, feed and repot the plant, then wait for it to grow tall.", constraints) == 0.0


def test_no_constraints_scores_one():
    assert verifier_score("anything", []) == 1.0
    assert check("anything", []) == []


def test_loose_mode_forgives_a_chatty_first_line():
    constraints = one(builder.LOWERCASE)
    reply = "Sure! Here it is:\nplants need light and water to grow well."
    assert check(reply, constraints) == [False]
    assert check(reply, constraints, loose=True) == [True]


def test_lowercase_verdict_is_deterministic():
    reply = "plants need light and water. keep the soil damp but not wet, and turn the pot each week."
    verdicts = {tuple(check(reply, one(builder.LOWERCASE))) for _ in range(5)}
    assert verdicts == {(True,)}


# --- constraints_from_row ---------------------------------------------------------------------


def test_constraints_from_row_reads_ifeval_rows_and_drops_none_kwargs():
    row = {
        "key": 7,
        "prompt": "Write a note.",
        "instruction_id_list": [builder.NUMBER_WORDS, builder.NO_COMMA],
        "kwargs": [{"relation": "less than", "num_words": 40, "keywords": None}, {"keywords": None}],
    }
    assert v.constraints_from_row(row) == [
        Constraint(builder.NUMBER_WORDS, {"relation": "less than", "num_words": 40}),
        Constraint(builder.NO_COMMA, {}),
    ]


@pytest.mark.parametrize(
    "row, field, words",
    [
        (
            {"instruction_id_list": ["nope:unknown"], "kwargs": [{}]},
            "instruction_id_list",
            "unknown IFEval instruction id",
        ),
        ({"instruction_id_list": [builder.NO_COMMA, builder.TITLE], "kwargs": [{}]}, "kwargs", "has 1 entries"),
        ({"instruction_id_list": builder.NO_COMMA, "kwargs": [{}]}, "instruction_id_list", "list of strings"),
        ({"kwargs": [{}]}, "instruction_id_list", "list of strings"),
        ({"instruction_id_list": [builder.NO_COMMA], "kwargs": ["x"]}, "kwargs", "list of dicts"),
        ({"instruction_id_list": [builder.NO_COMMA], "kwargs": [{"num_words": 3}]}, "kwargs", "unknown kwargs"),
        (
            {"instruction_id_list": [builder.NUMBER_WORDS], "kwargs": [{"num_words": 3}]},
            "kwargs",
            "missing kwargs ['relation']",
        ),
        (
            {"instruction_id_list": [builder.NUMBER_WORDS], "kwargs": [{"num_words": 3, "relation": "at most"}]},
            "kwargs",
            "bad kwargs",
        ),
    ],
)
def test_constraints_from_row_names_the_problem(row, field, words):
    with pytest.raises(DataError) as caught:
        v.constraints_from_row(dict(row, id="task-0042-c0"))
    assert caught.value.field == field
    assert words in str(caught.value)
    assert "task-0042-c0" in str(caught.value)


def test_check_rejects_a_hand_made_constraint_with_missing_kwargs():
    with pytest.raises(DataError, match="missing kwargs"):
        check("hello", one(builder.KEYWORDS))


# --- build_constrained_prompts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tasks():
    return builder.load_ifeval_tasks()


def test_shipped_tasks_are_well_formed(tasks):
    assert len(tasks) >= 400
    assert all(set(t) == {"id", "prompt"} for t in tasks)
    assert len({t["id"] for t in tasks}) == len(tasks)
    assert len({t["prompt"].lower() for t in tasks}) == len(tasks)
    assert all(re.fullmatch(r"task-\d{4}", t["id"]) for t in tasks)


def test_building_is_deterministic_and_seed_dependent(tasks):
    first = builder.build_constrained_prompts(tasks[:60], seed=3, per_task=2)
    assert first == builder.build_constrained_prompts(tasks[:60], seed=3, per_task=2)
    assert first != builder.build_constrained_prompts(tasks[:60], seed=4, per_task=2)
    # A task's rows depend only on the seed and its own id, not on the other tasks.
    alone = builder.build_constrained_prompts(tasks[10:11], seed=3, per_task=2)
    assert alone == [row for row in first if row["task_id"] == tasks[10]["id"]]


def test_built_rows_have_the_promised_shape(tasks):
    rows = builder.build_constrained_prompts(tasks, seed=0, per_task=2, constraints_per_prompt=(1, 3))
    assert len(rows) == 2 * len(tasks)
    assert len({row["id"] for row in rows}) == len(rows)
    by_id = {t["id"]: t["prompt"] for t in tasks}
    for row in rows:
        assert set(row) == {"id", "prompt", "instruction_id_list", "kwargs", "task_id"}
        assert 1 <= len(row["instruction_id_list"]) <= 3
        assert set(row["instruction_id_list"]) <= set(builder.BUILDER_KINDS)
        assert row["prompt"].startswith(by_id[row["task_id"]])
    used = {kind for row in rows for kind in row["instruction_id_list"]}
    assert used == set(builder.BUILDER_KINDS)


def test_built_prompts_never_combine_conflicting_constraints(tasks):
    conflicts = builder.instruction_conflicts()
    rows = builder.build_constrained_prompts(tasks, seed=1, per_task=3, constraints_per_prompt=(2, 3))
    for row in rows:
        ids = row["instruction_id_list"]
        assert len(set(ids)) == len(ids)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                assert b not in conflicts[a] and a not in conflicts[b], (row["id"], a, b)


def test_conflict_table_is_symmetric_and_includes_ifeval_and_extra_pairs():
    conflicts = builder.instruction_conflicts()
    assert all(a in conflicts[b] for a, others in conflicts.items() for b in others)
    assert (
        builder.TITLE in conflicts[builder.QUOTATION] and builder.CAPITALS in conflicts[builder.LOWERCASE]
    )  # IFEval's table
    assert builder.NO_COMMA in conflicts[builder.JSON_FORMAT] and builder.KEYWORDS not in conflicts[builder.JSON_FORMAT]
    assert all(b in conflicts[a] for a, b in builder.EXTRA_CONFLICTS)


def test_every_built_prompt_is_checkable_and_worded_as_ifeval_words_it(tasks):
    rows = builder.build_constrained_prompts(tasks, seed=0, per_task=1, constraints_per_prompt=(1, 2))
    for row in rows:
        constraints = v.constraints_from_row(row)
        for constraint in constraints:
            assert builder.describe(constraint) in row["prompt"]
        verdicts = check("A short plain reply.", constraints, row["prompt"])
        assert len(verdicts) == len(constraints) and all(isinstance(x, bool) for x in verdicts)


def test_known_ifeval_wording():
    assert (
        builder.describe(Constraint(builder.NUMBER_WORDS, {"relation": "less than", "num_words": 50}))
        == "Answer with less than 50 words."
    )
    assert (
        builder.describe(Constraint(builder.QUOTATION, {})) == "Wrap your entire response with double quotation marks."
    )


def test_keyword_pools_never_contradict_each_other_or_the_end_phrases():
    for word in builder.FORBIDDEN_POOL:
        pattern = re.compile(r"\b" + word + r"\b", re.IGNORECASE)
        assert not any(
            pattern.search(text) for text in (*builder.KEYWORD_POOL, *builder.END_PHRASES, *builder.POSTSCRIPT_MARKERS)
        )


@pytest.mark.parametrize(
    "bad_tasks, field",
    [
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "id"),
        ([{"id": "", "prompt": "x"}], "id"),
        ([{"id": "a", "prompt": "  "}], "prompt"),
    ],
)
def test_build_rejects_bad_tasks(bad_tasks, field):
    with pytest.raises(DataError) as caught:
        builder.build_constrained_prompts(bad_tasks, seed=0)
    assert caught.value.field == field


def test_build_rejects_impossible_counts():
    with pytest.raises(ValueError):
        builder.build_constrained_prompts([{"id": "a", "prompt": "x"}], seed=0, constraints_per_prompt=(2, 1))
    with pytest.raises(ValueError):
        builder.build_constrained_prompts([{"id": "a", "prompt": "x"}], seed=0, per_task=0)


# --- offline data and clear errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        # Abbreviations, times and decimals do not end a sentence; "!" and "?" do.
        ("Dr. Who arrived. He left at 3.30 p.m. today! Why?", 3),
        ("Mix flour, e.g. rye, with water. Then wait.", 2),
        # A line break alone does not end one (as in NLTK's model): list items without stops are one.
        ("Steps\n- water\n- light", 1),
        ('He said "Stop." Then he left.', 2),
        ("Wait... then go.", 1),
        ("", 0),
    ],
)
def test_sentences_are_counted_by_punkt_with_english_abbreviations(text, sentences):
    assert count_sentences(text) == sentences


def test_the_checkers_need_no_nltk_data(monkeypatch, tmp_path):
    """Sentence counts and capital-word counts with an empty NLTK data path: nothing is looked up."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    util_module = "if_verifiable.ifeval.instructions_util"
    assert passes("One. Two.", builder.NUMBER_SENTENCES, relation="less than", num_sentences=3)
    assert not passes("One. Two. Three.", builder.NUMBER_SENTENCES, relation="less than", num_sentences=3)
    assert sys.modules[util_module].count_sentences("Dr. Who arrived. He left.") == 2
    # "WATER" and "NOW." are capital words, "I" too: 3 of them, so "less than 3" fails.
    reply = "WATER the plants. I do it NOW."
    assert not passes(reply, "change_case:capital_word_frequency", capital_frequency=3, capital_relation="less than")
    assert passes(reply, "change_case:capital_word_frequency", capital_frequency=3, capital_relation="at least")


def test_word_tokenize_splits_as_nltk_does_within_one_sentence():
    text = "Don't water the plant, it's fine (really)."
    assert word_tokenize(text) == nltk.tokenize.NLTKWordTokenizer().tokenize(text)
    assert word_tokenize("It works. So does this.") == ["It", "works", ".", "So", "does", "this", "."]
    with pytest.raises(ValueError, match="English only"):
        word_tokenize("Bonjour.", language="french")


def test_missing_extra_raises_a_judge_error_with_the_install_line(monkeypatch):
    v._instruction_registry.cache_clear()
    monkeypatch.setitem(sys.modules, "if_verifiable.ifeval.instructions_registry", None)
    with pytest.raises(JudgeError) as caught:
        check("hello", one(builder.NO_COMMA))
    assert "spreadpref[verify]" in str(caught.value)
    v._instruction_registry.cache_clear()


def test_the_agreement_benchmark_counts_differences_verdicts_and_score_shifts(tmp_path, monkeypatch):
    """benchmarks/sentence_agreement.py against a stand-in 'published' splitter that splits at '|'."""
    with on_path(BENCHMARKS):
        import sentence_agreement as bench

    class SplitAtBars:
        def tokenize(self, text):
            return text.split("|")

    monkeypatch.setattr(bench, "published_punkt", SplitAtBars)
    # The first built-in prompt with a sentence limit.
    prompt_id, (relation, number), size = next(
        (row["id"], limits[0], len(row["instruction_id_list"]))
        for name in bench.BUILTIN_PROMPT_SETS
        for _, row in bench.iter_rows(name)
        if (limits := bench.sentence_limits(v.constraints_from_row(row)))
    )
    # Two replies: "One." is 1 sentence for both; twelve bars' pieces are 12 for the stand-in, 1 for ours.
    replies = tmp_path / "generations.jsonl"
    rows = [{"prompt_id": prompt_id, "text": text} for text in ("One.", "|".join(["word"] * 12) + ".")]
    replies.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert bench.main(["--replies", str(replies), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sentence_agreement.json").read_text())
    assert (results["replies"], results["same_count"]) == (2, 1)
    assert bench.satisfied(1, relation, number) != bench.satisfied(12, relation, number)  # limits are 1 to 10
    assert results["sentence_verdicts"] == {"checked": 2, "same": 1}
    shift = (bench.satisfied(1, relation, number) - bench.satisfied(12, relation, number)) / size / 2
    assert results["files"][0]["mean_score_shift"] == pytest.approx(shift)
