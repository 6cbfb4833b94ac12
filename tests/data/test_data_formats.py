"""Every data format `datasets` users bring: CSV, TSV, compressed JSON Lines, folders of shards and globs."""

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spreadpref.data.loading import load_preferences, load_prompts
from spreadpref.errors import DataError
from spreadpref.runtime.layout import REPORT_FILE, round_name

ROWS = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "Say hi, politely", "chosen": "Hello, and welcome!", "rejected": "no"},
]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def texts(records):
    return [(r.prompt[-1]["content"], r.chosen, r.rejected) for r in records]


EXPECTED = [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


def test_csv_with_quoted_commas_newlines_and_a_numeric_label(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        'prompt,chosen,rejected,label\n"Name a colour.",Blue.,Seven.,1\n"Say hi, politely","Hello, and welcome!",no,0.75\n'
    )
    records, report = load_preferences(str(path))
    assert texts(records) == EXPECTED and [r.label for r in records] == [1.0, 0.75]
    assert report.kept == 2


def test_tsv_and_a_multiline_cell(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text('prompt\tchosen\trejected\nName a colour.\t"Blue.\nLight blue."\tSeven.\n')
    [record], _ = load_preferences(str(path))
    assert record.chosen == "Blue.\nLight blue."


def test_a_csv_error_names_the_line(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nA,B,C\nD,,F\n")
    with pytest.raises(DataError, match=r"pairs.csv, line 3: field 'chosen'"):
        load_preferences(str(path))


@pytest.mark.parametrize(("suffix", "compress"), [(".jsonl.gz", gzip.compress), (".jsonl.bz2", bz2.compress)])
def test_compressed_json_lines(tmp_path, suffix, compress):
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(compress(jsonl(ROWS).encode()))
    records, _ = load_preferences(str(path))
    assert texts(records) == EXPECTED


def test_a_folder_of_parquet_shards_takes_the_split_it_is_asked_for(tmp_path):
    data = tmp_path / "download" / "data"
    data.mkdir(parents=True)
    for i, row in enumerate(ROWS):
        pq.write_table(pa.Table.from_pylist([row]), data / f"train-0000{i}-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([dict(ROWS[0], prompt="held out")]), data / "test-00000-of-00001.parquet")
    records, _ = load_preferences(str(tmp_path / "download"))
    assert texts(records) == EXPECTED  # the train shards, in order; not the test shard
    [test_record], _ = load_preferences(str(tmp_path / "download"), split="test")
    assert test_record.prompt[-1]["content"] == "held out"


def test_a_glob_reads_every_matching_file_and_names_the_file_in_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(ROWS[:1]))
    (tmp_path / "b.jsonl").write_text(jsonl(ROWS[1:]))
    records, _ = load_preferences(str(tmp_path / "*.jsonl"))
    assert texts(records) == EXPECTED
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"c.jsonl, line 1"):
        load_preferences(str(tmp_path / "*.jsonl"))
    with pytest.raises(DataError, match="no data files"):
        load_preferences(str(tmp_path / "*.parquet"))


def test_prompts_from_a_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,prompt\nq1,Tell me a joke.\nq2,Name a river.\n")
    prompts, _ = load_prompts(str(path))
    assert [p.id for p in prompts] == ["q1", "q2"] and prompts[1].prompt[-1]["content"] == "Name a river."


# ---------------------------------------------------------------------------------------------
# Formats inside the rows: HH-RLHF transcripts, TRL's implicit prompt, score columns


def load_rows(tmp_path, rows, **kwargs):
    path = tmp_path / "rows.jsonl"
    path.write_text(jsonl(rows))
    return load_preferences(str(path), **kwargs)


def test_hh_rlhf_transcripts_become_a_prompt_and_two_replies(tmp_path):
    dialogue = "\n\nHuman: Hi, can you help me?\n\nAssistant: Sure.\n\nHuman: Name a colour."
    [record], _ = load_rows(
        tmp_path,
        [{"chosen": dialogue + "\n\nAssistant: Blue.", "rejected": dialogue + "\n\nAssistant: No."}],
    )
    assert [m["role"] for m in record.prompt] == ["user", "assistant", "user"]
    assert record.prompt[-1]["content"] == "Name a colour." and (record.chosen, record.rejected) == ("Blue.", "No.")


def test_hh_rlhf_with_a_prompt_column_keeps_only_the_reply(tmp_path):
    prompt = "\n\nHuman: Name a colour.\n\nAssistant:"
    [record], _ = load_rows(
        tmp_path,
        [{"prompt": prompt, "chosen": prompt + " Blue.", "rejected": prompt + " No."}],
    )
    assert record.chosen == "Blue." and "Human" not in record.chosen and len(record.prompt) == 1


def test_trl_implicit_prompt_string_pairs_take_the_shared_start_as_the_prompt(tmp_path):
    [record], _ = load_rows(tmp_path, [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert record.prompt[-1]["content"] == "The sky is" and (record.chosen, record.rejected) == ("blue.", "green.")


def test_plain_strings_without_a_prompt_or_a_shared_start_are_refused(tmp_path):
    with pytest.raises(DataError, match="shared start"):
        load_rows(tmp_path, [{"chosen": "Blue.", "rejected": "Green."}])


def test_score_columns_drop_ties_and_follow_the_scores(tmp_path):
    rows = [
        dict(ROWS[0], id="a", score_chosen=5.0, score_rejected=3.0),
        dict(ROWS[1], id="b", score_chosen=5.0, score_rejected=5.0),  # a tie: not a preference
        dict(ROWS[0], id="c", score_chosen=2.0, score_rejected=4.5),  # the columns disagree with the scores
    ]
    records, report = load_rows(tmp_path, rows)
    assert [(r.id, r.label) for r in records] == [("a", 1.0), ("c", 0.0)]
    assert report.score_ties_dropped == 1 and "1 dropped as score ties" in report.summary()
    soft, _ = load_rows(tmp_path, rows, scores="soft")
    assert [round(r.label, 4) for r in soft] == [0.8808, 0.5, 0.0759]
    ignored, _ = load_rows(tmp_path, rows, scores="ignore")
    assert [r.label for r in ignored] == [1.0, 1.0, 1.0]


def test_prompts_from_a_text_file_one_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Tell me a joke.\n\nName a river.\n")
    prompts, report = load_prompts(str(path))
    assert [p.prompt[-1]["content"] for p in prompts] == ["Tell me a joke.", "Name a river."]
    assert [p.id for p in prompts] == ["line-1", "line-3"] and report.kept == 2


def test_a_new_user_goes_from_a_csv_and_a_text_file_to_a_finished_run_with_a_report(tiny_model_dir, tmp_path):
    """The README's quickstart, on the tiny model: a CSV of labelled pairs, one prompt per line."""
    import csv

    from typer.testing import CliRunner

    from spreadpref.cli import app

    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        for i in range(40):
            writer.writerow(
                [f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "I am not sure, maybe ask someone."]
            )
    (tmp_path / "prompts.txt").write_text("".join(f"Tell me about the number {i}.\n" for i in range(24)))
    out = tmp_path / "runs" / "mine"
    result = CliRunner().invoke(
        app,
        [
            "run",
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={tmp_path / 'pairs.csv'}",
            f"data.prompts={tmp_path / 'prompts.txt'}",
            "loop.prompts_per_round=[12,12]",
            "generation.max_new_tokens=8",
            "data.max_length=96",
            "data.max_prompt_length=48",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = (out / REPORT_FILE).read_text()
    assert "## Training" in report and "## Per round" in report and (out / round_name(2) / "train" / "model").is_dir()
    assert (out / round_name(2) / "train" / "model" / "README.md").is_file()  # the model card
