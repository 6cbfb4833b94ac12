"""Every data format `datasets` users bring: CSV, TSV, compressed JSON Lines, folders of shards and globs."""

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spreadpref.data.loading import load_preferences, load_prompts
from spreadpref.errors import DataError

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
