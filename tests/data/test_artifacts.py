"""The typed rows of generations.jsonl, judged.jsonl and pairs.jsonl: round trip, checks, the README's schema."""

import json

import pytest
from repo_paths import ROOT

from spreadpref.data.artifacts import JudgedSample, Pair, Sample, schema_markdown
from spreadpref.errors import DataError

README = ROOT / "README.md"


def a_sample(**changes):
    row = dict(
        prompt_id="p0",
        prompt_index=0,
        sample=1,
        prompt=[{"role": "user", "content": "Hi"}],
        prompt_ids=[1, 2],
        reply_ids=[5, 6, 3],
        text="Hello",
        num_tokens=3,
        finish_reason="stop",
    )
    return {**row, **changes}


def test_a_sample_round_trips_through_its_row():
    sample = Sample.from_row(a_sample())
    assert sample.to_row() == a_sample()
    assert not sample.cut_off and Sample.from_row(a_sample(finish_reason="length")).cut_off


def test_numbers_are_checked_and_ints_pass_as_floats():
    row = dict(
        prompt_id="p",
        prompt_index=0,
        sample=0,
        text="t",
        num_tokens=1,
        finish_reason="stop",
        policy_logps=-3,
        reference_logps=None,
        judged_tokens=1,
        score=2,
    )
    judged = JudgedSample.from_row(row)
    assert judged.policy_logps == -3.0 and isinstance(judged.score, float) and judged.prefer is None
    with pytest.raises(DataError, match=r"judged.jsonl, line 4: field 'score': must be a finite number"):
        JudgedSample.from_row(dict(row, score=float("nan")), "judged.jsonl", "line 4")
    with pytest.raises(DataError, match="field 'policy_logps': must not be null"):
        JudgedSample.from_row(dict(row, policy_logps=None))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_tokens": "3"}, "field 'num_tokens': expected int, got str"),
        ({"num_tokens": True}, "field 'num_tokens': expected int, got bool"),
        ({"reply_ids": 5}, "field 'reply_ids': expected list, got int"),
        ({"text": None}, "field 'text': must not be null"),
    ],
)
def test_a_wrong_type_names_the_field(change, message):
    with pytest.raises(DataError, match=message):
        Sample.from_row(a_sample(**change), "generations.jsonl", "line 2")


def test_a_missing_field_and_a_broken_line_name_the_file_and_line(tmp_path):
    path = tmp_path / "generations.jsonl"
    row = a_sample()
    del row["finish_reason"]
    path.write_text(json.dumps(a_sample()) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"generations.jsonl, line 2: field 'finish_reason': missing"):
        Sample.read(path)
    path.write_text(json.dumps(a_sample()) + "\n\n" + '{"prompt_id": "p1", "prom\n')
    with pytest.raises(DataError, match=r"generations.jsonl, line 3: not valid JSON"):
        Sample.read(path)


def test_a_pair_becomes_the_trainers_tokenized_pair():
    pair = Pair(
        id="round1-p0",
        prompt_id="p0",
        prompt=[],
        chosen="a",
        rejected="b",
        prompt_ids=[1],
        chosen_ids=[2, 3],
        rejected_ids=[4],
        chosen_truncated=False,
        rejected_truncated=True,
        chosen_score=1.0,
        rejected_score=-1.0,
        margin=2.0,
        p=0.55,
        ref_chosen_logps=-2.0,
        ref_rejected_logps=-3.0,
    )
    tokenized = pair.to_tokenized()
    assert (tokenized.chosen_ids, tokenized.rejected_ids, tokenized.label) == ([2, 3], [4], 1.0)
    assert (tokenized.ref_chosen_logps, tokenized.ref_rejected_logps) == (-2.0, -3.0)
    assert tokenized.rejected_truncated and not tokenized.chosen_truncated
    assert Pair.from_row(pair.to_row()) == pair


def test_the_readme_schema_is_generated_from_the_records():
    text = README.read_text()
    shown = text[
        text.index("<!-- schema:start -->\n") + len("<!-- schema:start -->\n") : text.index("<!-- schema:end -->")
    ]
    assert shown == schema_markdown(), (
        "README's JSONL schema is out of date; replace the part between the schema markers with the output of: "
        "python -c \"from spreadpref.data.artifacts import schema_markdown; print(schema_markdown(), end='')\""
    )
