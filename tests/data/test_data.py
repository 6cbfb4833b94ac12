import json
import math

import pytest
from helpers import write_jsonl
from repo_paths import SCRIPTS, on_path

from spreadpref.config import ColumnMap
from spreadpref.data.loading import load_preferences, load_prompts
from spreadpref.errors import DataError

USER = {"role": "user", "content": "Name a colour."}


def good_row(**changes):
    row = {"id": "a", "prompt": [USER], "chosen": "Blue.", "rejected": "Seven."}
    row.update(changes)
    return row


def test_explicit_conversational(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            good_row(
                chosen=[{"role": "assistant", "content": "Blue."}],
                rejected=[{"role": "assistant", "content": "Seven."}],
                label=0.8,
                weight=2,
            )
        ],
    )
    (record,), report = load_preferences(str(path))
    assert record.prompt == [USER]
    assert (record.chosen, record.rejected, record.label, record.weight) == ("Blue.", "Seven.", 0.8, 2.0)
    assert report.kept == 1 and report.skipped == 0


def test_implicit_prompt_from_shared_conversation(tmp_path):
    # UltraFeedback-binarized style: a string prompt plus whole conversations.
    row = {
        "prompt": "Name a colour.",
        "prompt_id": "x1",
        "score_chosen": 9.0,
        "chosen": [USER, {"role": "assistant", "content": "Blue."}],
        "rejected": [USER, {"role": "assistant", "content": "Seven."}],
    }
    (record,), report = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", [row])))
    assert record.prompt == [USER] and record.chosen == "Blue." and record.rejected == "Seven."
    assert record.label == 1.0 and record.id == "line-1"
    assert report.ignored_columns == ["prompt_id"]  # score_chosen is read when score_rejected is there too


def test_implicit_multi_turn_without_prompt_column(tmp_path):
    turns = [USER, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    row = {
        "chosen": turns + [{"role": "assistant", "content": "Red."}],
        "rejected": turns + [{"role": "assistant", "content": "No."}],
    }
    (record,), _ = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", [row])))
    assert record.prompt == turns and record.chosen == "Red."


def test_plain_strings_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}])
    (record,), _ = load_preferences(str(path), system_prompt="Be brief.")
    assert record.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Hi?", "good": "Hello.", "bad": "Go.", "p": 0.9}])
    columns = ColumnMap(prompt="question", chosen="good", rejected="bad", label="p")
    (record,), _ = load_preferences(str(path), columns)
    assert record.chosen == "Hello." and record.label == 0.9


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "Hi?", "chosen": "Hello."}, "rejected", "missing"),
        (good_row(chosen=5), "chosen", "must be a string"),
        (good_row(rejected="   "), "rejected", "is empty"),
        (good_row(prompt=[USER, USER]), "prompt", "alternate"),
        (good_row(prompt=[USER, {"role": "assistant", "content": "x"}]), "prompt", "end with a user"),
        (good_row(prompt=[{"role": "robot", "content": "x"}]), "prompt[0].role", "unknown role"),
        (good_row(label=1.5), "label", r"\[0, 1\]"),
        (good_row(label=-0.1), "label", r"\[0, 1\]"),
        (good_row(label="high"), "label", "must be a number"),
        (good_row(weight=-1), "weight", ">= 0"),
        (good_row(prompt=""), "prompt", "is empty"),
        (good_row(prompt=42), "prompt", "string or a list"),
        (good_row(ref_chosen_logps=3.0), "ref_chosen_logps", "<= 0"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(id="ok"), row])
    with pytest.raises(DataError, match=message) as info:
        load_preferences(str(path))
    assert info.value.source == str(path)
    assert info.value.location == "line 2"
    assert info.value.field == field
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_nan_label_is_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "Hi?", "chosen": "a", "rejected": "b", "label": NaN}\n')
    with pytest.raises(DataError, match="finite"):
        load_preferences(str(path))


def test_broken_json_line_and_skip_invalid_counts(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            good_row(id="1"),
            '{"prompt": "Hi?", "chosen": ',
            good_row(id="2"),
            good_row(id="3", label=7),
            good_row(id="2"),
        ],
    )
    with pytest.raises(DataError, match="line 2.*not valid JSON"):
        load_preferences(str(path))
    records, report = load_preferences(str(path), skip_invalid=True)
    assert [r.id for r in records] == ["1", "2"]
    assert (report.rows_read, report.kept, report.skipped) == (5, 2, 3)
    assert any("duplicate id '2'" in reason for reason in report.skip_reasons)
    assert "3 skipped" in report.summary()


def test_no_valid_rows_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(label=3)])
    with pytest.raises(DataError, match="no usable records"):
        load_preferences(str(path), skip_invalid=True)


def test_json_parquet_and_saved_dataset(tmp_path):
    import datasets

    rows = [good_row(id=str(i), prompt=f"Q{i}?") for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for source in ("d.json", "d.parquet", "saved"):
        records, _ = load_preferences(str(tmp_path / source))
        assert [r.prompt[0]["content"] for r in records] == ["Q0?", "Q1?", "Q2?"]
    with pytest.raises(DataError, match="split 'test' not found"):
        load_preferences(str(tmp_path / "saved"), split="test")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.xlsx").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_preferences(str(tmp_path / "d.xlsx"))


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(id=str(i)) for i in range(5)])
    records, _ = load_preferences(str(path), limit=2)
    assert len(records) == 2


def test_prompt_records(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "Hi?"},
            {"messages": [USER, {"role": "assistant", "content": "Blue."}]},
            {"prompt": [USER]},
        ],
    )
    records, _ = load_prompts(str(path))
    assert [r.prompt for r in records] == [[{"role": "user", "content": "Hi?"}], [USER], [USER]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "Hi?"}])
    with pytest.raises(DataError, match="line 1.*'prompt'"):
        load_prompts(str(bad))


def test_bundled_seed_pairs_and_prompts():
    records, report = load_preferences("builtin:seed_pairs")
    assert len(records) >= 60 and report.skipped == 0
    assert all(r.label == 1.0 for r in records)
    prompts, _ = load_prompts("builtin:prompts")
    assert len(prompts) >= 400
    seed_prompts = {r.prompt[-1]["content"] for r in records}
    assert not seed_prompts & {p.prompt[-1]["content"] for p in prompts}
    assert math.isfinite(sum(len(r.chosen) for r in records))


def test_hub_dataset_name_goes_to_datasets(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(name, subset, split):
        calls.update(name=name, subset=subset, split=split)
        return datasets.Dataset.from_list([good_row(id="h1")])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, _ = load_preferences("someone/prefs", subset="default", split="train_prefs")
    assert calls == {"name": "someone/prefs", "subset": "default", "split": "train_prefs"}
    assert records[0].id == "h1"


def test_unreachable_hub_dataset_is_explained(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load it as a local file or a hub dataset.*no network"):
        load_preferences("someone/prefs")


def test_token_space_pairs_keep_their_ids(tmp_path):
    row = good_row(
        chosen="",
        prompt_ids=[1, 5],
        chosen_ids=[2],
        rejected_ids=[7, 8, 2],
        ref_chosen_logps=-1.0,
        ref_rejected_logps=-9.0,
        chosen_truncated=False,
        rejected_truncated=False,
        margin=3.0,
    )
    (record,), report = load_preferences(str(write_jsonl(tmp_path / "pairs.jsonl", [row])))
    assert record.token_ids == {"prompt_ids": [1, 5], "chosen_ids": [2], "rejected_ids": [7, 8, 2]}
    assert report.ignored_columns == ["margin"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [good_row(prompt_ids=[1, 5], chosen_ids=[2])])
    with pytest.raises(DataError, match="'rejected_ids'.*together"):
        load_preferences(str(bad))
    bad = write_jsonl(tmp_path / "bad2.jsonl", [good_row(prompt_ids=[1, -5], chosen_ids=[2], rejected_ids=[3])])
    with pytest.raises(DataError, match="'prompt_ids'.*non-negative"):
        load_preferences(str(bad))


def test_bundled_verifiable_sets_never_share_a_task_with_evaluation():
    from spreadpref.data.loading import load_prompts

    tasks = {}
    for name in ("ifeval_eval", "ifeval_seed_prompts", "ifeval_prompts"):
        records, _ = load_prompts(f"builtin:{name}")
        assert all(
            r.metadata["instruction_id_list"] and len(r.metadata["kwargs"]) == len(r.metadata["instruction_id_list"])
            for r in records
        )
        tasks[name] = {r.metadata["task_id"] for r in records}
    assert not tasks["ifeval_eval"] & (tasks["ifeval_seed_prompts"] | tasks["ifeval_prompts"])
    assert not tasks["ifeval_seed_prompts"] & tasks["ifeval_prompts"]
    assert len(tasks["ifeval_eval"]) == 94


def test_bundled_verifiable_sets_are_what_the_script_makes():
    import importlib.util
    import json
    from importlib import resources

    import pytest

    pytest.importorskip("if_verifiable")
    script = SCRIPTS / "make_ifeval_sets.py"
    spec = importlib.util.spec_from_file_location("make_ifeval_sets", script)
    module = importlib.util.module_from_spec(spec)
    with on_path(script.parent):  # the script imports its builder beside it
        spec.loader.exec_module(module)
    for name, rows in module.build_sets().items():
        bundled = resources.files("spreadpref.resources").joinpath(name).read_text(encoding="utf-8")
        assert [json.loads(line) for line in bundled.splitlines()] == rows, name


def test_a_prompt_files_extra_columns_are_said_to_be_kept_for_the_judges():
    from spreadpref.data.loading import load_prompts

    _, report = load_prompts("builtin:ifeval_eval")
    assert "columns kept for the judges (e.g. the verifier): instruction_id_list, kwargs" in report.summary()
    assert "not used" not in report.summary()
