"""A corpus of bad and hostile inputs: each gets a clear message naming file, row and field, or is
skipped and counted where the user opted in. None gives a bare traceback or silently changes data."""

import json
import math

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.data.loading import load_preferences
from spreadpref.runtime.layout import SUMMARY_FILE
from spreadpref.testing import make_tiny_model_dir

runner = CliRunner()
OK = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}


def row(**changes):
    out = dict(OK)
    for key, value in changes.items():
        if value is ...:
            out.pop(key)
        else:
            out[key] = value
    return out


# (case id, lines of a .jsonl file, extra overrides, exit code, fragments the message must contain)
DATA_CASES = [
    ("malformed-json-line", [OK, '{"prompt": "x", "chosen": '], [], 2, ["line 2", "not valid JSON"]),
    ("trailing-garbage", [OK, OK, '{"prompt": "x"} trailing'], [], 2, ["line 3", "not valid JSON"]),
    ("record-not-object", ['["a", "b"]'], [], 2, ["line 1", "must be an object"]),
    ("chosen-wrong-type", [row(chosen=5)], [], 2, ["line 1", "'chosen'", "must be a string"]),
    ("rejected-missing", [row(rejected=...)], [], 2, ["line 1", "'rejected'", "missing"]),
    ("prompt-missing", [row(prompt=...)], [], 2, ["line 1", "'prompt'", "missing"]),
    ("prompt-wrong-type", [row(prompt={"text": "x"})], [], 2, ["line 1", "'prompt'", "string or a list"]),
    ("empty-prompt", [row(prompt="")], [], 2, ["line 1", "'prompt'", "is empty"]),
    ("blank-reply", [row(chosen="   \n ")], [], 2, ["line 1", "'chosen'", "is empty"]),
    (
        "roles-not-alternating",
        [row(prompt=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])],
        [],
        2,
        ["line 1", "'prompt'", "alternate"],
    ),
    (
        "prompt-ends-with-assistant",
        [row(prompt=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])],
        [],
        2,
        ["line 1", "end with a user"],
    ),
    ("unknown-role", [row(prompt=[{"role": "wizard", "content": "a"}])], [], 2, ["'prompt[0].role'", "unknown role"]),
    ("message-without-content", [row(prompt=[{"role": "user"}])], [], 2, ["'prompt[0]'", "'role' and 'content'"]),
    ("label-above-one", [row(label=1.5)], [], 2, ["line 1", "'label'", "[0, 1]"]),
    (
        "label-nan",
        ['{"prompt": "a", "chosen": "b", "rejected": "c", "label": NaN}'],
        [],
        2,
        ["line 1", "'label'", "finite"],
    ),
    ("label-as-string", [row(label="1")], [], 2, ["'label'", "must be a number"]),
    ("label-as-bool", [row(label=True)], [], 2, ["'label'", "must be a number"]),
    ("negative-weight", [row(weight=-2)], [], 2, ["'weight'", ">= 0"]),
    (
        "positive-reference-logp",
        [row(ref_chosen_logps=4.0, ref_rejected_logps=-1.0)],
        [],
        2,
        ["'ref_chosen_logps'", "<= 0"],
    ),
    ("partial-token-ids", [row(prompt_ids=[1, 2], chosen_ids=[3])], [], 2, ["'rejected_ids'", "together"]),
    ("duplicate-ids", [row(id="a"), row(id="a")], [], 2, ["line 2", "'id'", "duplicate id 'a'"]),
    (
        "no-valid-rows-skipped",
        [row(label=3), row(chosen="")],
        ["data.skip_invalid=true"],
        2,
        ["no usable records", "2 invalid rows skipped"],
    ),
    ("empty-file", [], [], 2, ["no usable records"]),
    (
        "replies-in-two-formats",
        [row(chosen=[{"role": "assistant", "content": "Blue."}])],
        [],
        2,
        ["line 1", "'chosen' is a list of messages but 'rejected' is a string", "one format"],
    ),
    (
        "implicit-two-replies",
        [
            {
                "chosen": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ],
                "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "d"}],
            }
        ],
        [],
        2,
        ["'chosen'", "exactly one assistant message"],
    ),
    (
        "prompt-disagrees-with-conversation",
        [
            {
                "prompt": "something else",
                "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}],
            }
        ],
        [],
        2,
        ["'prompt'", "does not match"],
    ),
    (
        "skip-invalid-counts",
        [OK | {"id": "1"}, row(label=2), OK | {"id": "3"}, "{broken", row(chosen=7)],
        ["data.skip_invalid=true"],
        0,
        ["2 of 5 records kept", "3 skipped"],
    ),
    ("extra-columns-are-listed", [OK | {"source": "web", "score": 9}], [], 0, ["columns not used: score, source"]),
    # Text the tokenizer would refuse: half of a UTF-16 surrogate pair, escaped in valid JSON.
    (
        "lone-surrogate-in-prompt",
        [OK, '{"prompt": "a\\ud800b", "chosen": "b", "rejected": "c"}'],
        [],
        2,
        ["line 2", "'prompt'", "surrogate"],
    ),
    (
        "lone-surrogate-in-reply",
        [OK, '{"prompt": "a", "chosen": "b", "rejected": "\\udfff"}'],
        [],
        2,
        ["line 2", "'rejected'", "surrogate"],
    ),
    (
        "lone-surrogate-in-a-message",
        [row(prompt=[{"role": "user", "content": "hi \ud83d"}])],
        [],
        2,
        ["line 1", "'prompt[0].content'", "surrogate"],
    ),
    # JSON that Python's parser refuses although it is well formed.
    (
        "deeply-nested-unused-column",
        [OK, '{"prompt": "a", "chosen": "b", "rejected": "c", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"],
        [],
        2,
        ["line 2", "nested too deeply"],
    ),
    (
        "integer-past-the-digit-limit",
        [OK, '{"prompt": "a", "chosen": "b", "rejected": "c", "weight": 1' + "0" * 5000 + "}"],
        [],
        2,
        ["line 2", "4300 digits"],
    ),
    (
        "integer-beyond-a-float",
        [OK, '{"prompt": "a", "chosen": "b", "rejected": "c", "label": 1' + "0" * 400 + "}"],
        [],
        2,
        ["line 2", "'label'", "401 digits"],
    ),
    (
        "float-overflowing-to-inf",
        [OK, '{"prompt": "a", "chosen": "b", "rejected": "c", "weight": 1e999}'],
        [],
        2,
        ["line 2", "'weight'", "finite"],
    ),
    (
        "broken-lines-with-skip-invalid",
        [OK, '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", OK | {"id": "z"}],
        ["data.skip_invalid=true"],
        0,
        ["2 of 3 records kept"],
    ),
    (
        "prompt-longer-than-max-length",
        [row(prompt="word " * 400)],
        ["data.max_length=64", "data.max_prompt_length=32"],
        0,
        ["1 prompts cut at the start"],
    ),
    (
        "very-long-single-line",
        [row(chosen="x" * 2_000_000)],
        ["data.max_length=64", "data.max_prompt_length=32"],
        0,
        ["1 replies cut at max_length"],
    ),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(case, tiny_model_dir, tmp_path):
    name, lines, extra, code, fragments = case
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    result = runner.invoke(
        app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={path}", *extra, "--plain"]
    )
    message = " ".join(result.output.split())
    assert result.exit_code == code, result.output[-2000:]
    assert "Traceback" not in result.output
    if code:
        assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message[-600:]}"


def test_control_characters_and_mixed_scripts_pass_unchanged(tiny_model_dir, tmp_path):
    text = "Mixed: Ελληνικά, русский, 中文, العربية, emoji 🙂, tab\there, bell\x07, NUL-free\x1b[31m red"
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(row(prompt=text, chosen=text + " yes")) + "\n")
    (record,), _ = load_preferences(str(path))
    assert record.prompt[0]["content"] == text and record.chosen == text + " yes"
    result = runner.invoke(app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={path}", "--plain"])
    assert result.exit_code == 0, result.output


FILE_CASES = [
    ("json-object-without-data", "d.json", '{"rows": []}', ["must be a list of records"]),
    ("broken-json-file", "d.json", '[{"prompt": "a",', ["not valid JSON"]),
    ("unsupported-suffix", "d.xlsx", "prompt,chosen\n", ["unsupported file type '.xlsx'"]),
    ("csv-row-with-extra-cells", "d.csv", "prompt,chosen,rejected\na,b,c,d\n", ["line 2", "more cells than the 3"]),
    ("csv-missing-column", "d.csv", "prompt,chosen\na,b\n", ["line 2", "'rejected'"]),
    ("csv-label-not-a-number", "d.csv", "prompt,chosen,rejected,label\na,b,c,yes\n", ["line 2", "'label'"]),
    ("gz-not-gzip", "d.jsonl.gz", "not gzip at all", ["d.jsonl.gz"]),
    ("text-saved-as-parquet", "d.parquet", "prompt,chosen,rejected\na,b,c\n", ["cannot be read as Parquet"]),
    ("empty-parquet", "d.parquet", "", ["cannot be read as Parquet"]),
    ("deeply-nested-json-file", "d.json", "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    (
        "csv-integer-past-the-digit-limit",
        "d.csv",
        "prompt,chosen,rejected,label\na,b,c,1" + "0" * 5000 + "\n",
        ["line 2", "'label'"],
    ),
    # Excel's "CSV" is latin-1 / cp1252; the line is found exactly, however far into a decoded block it lies.
    (
        "csv-in-latin-1",
        "d.csv",
        ("prompt,chosen,rejected\n" + "a,b,c\n" * 3000 + "Caf\u00e9?,Oui,Non\n").encode("latin-1"),
        ["line 3002", "not UTF-8", "CSV UTF-8", "iconv"],
    ),
    ("nul-bytes-as-jsonl", "d.jsonl", b"\x00" * 100_000, ["line 1", "NUL bytes", "binary file"]),
    (
        "csv-cell-past-the-field-limit",
        "d.csv",
        'prompt,chosen,rejected\na,b,"' + "x" * (64 * 1024 * 1024 + 10) + '"\n',
        ["line 2", "cannot be read as CSV", "field larger than field limit"],
    ),
    ("tsv-in-latin-1", "d.tsv", "prompt\tchosen\trejected\n\u00e9\tb\tc\n".encode("latin-1"), ["line 2", "not UTF-8"]),
    (
        "jsonl-in-cp1252",
        "d.jsonl",
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 500 + '{"prompt": "\u2019"}\n').encode("cp1252"),
        ["line 501", "not UTF-8"],
    ),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files(case, tiny_model_dir, tmp_path):
    name, filename, content, fragments = case
    path = tmp_path / filename
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    result = runner.invoke(app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={path}"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(path) in message and all(f in message for f in fragments), message


def test_a_line_past_the_length_bound_is_refused_without_reading_the_rest(tiny_model_dir, tmp_path, monkeypatch):
    from spreadpref.data import sources

    monkeypatch.setattr(sources, "MAX_LINE_CHARS", 1000)
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + "x" * 5000 + "\n")
    result = runner.invoke(app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={path}"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "line 2" in message and "without a line break" in message, message


@pytest.mark.parametrize("kind", ["fifo", "symlink-loop", "dev-null"])
def test_data_that_is_not_a_regular_file_is_named_as_such(kind, tiny_model_dir, tmp_path):
    import os

    path = tmp_path / "d.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        path.symlink_to(tmp_path / "d.jsonl")
    else:
        path = "/dev/null"
    result = runner.invoke(app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={path}"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "no such file" not in message, message
    assert ("symbolic link" if kind == "symlink-loop" else "not a regular file") in message


def test_missing_data_file(tiny_model_dir, tmp_path):
    result = runner.invoke(
        app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={tmp_path / 'missing.jsonl'}"]
    )
    assert result.exit_code == 2 and "no such file or directory" in " ".join(result.output.split())


CONFIG_CASES = [
    ("unknown-key", ["train.learnin_rate=1e-5"], ["unknown config key 'train.learnin_rate'", "learning_rate"]),
    ("unknown-section", ["trainer.beta=0.1"], ["unknown config key 'trainer'", "did you mean 'train'"]),
    ("wrong-type", ["train.beta=high"], ["train.beta='high'", "expected float"]),
    ("negative-beta", ["train.beta=-1"], ["train.beta", "greater than 0"]),
    ("prompt-not-shorter", ["data.max_length=64", "data.max_prompt_length=64"], ["max_prompt_length (64)"]),
    ("bad-literal", ["model.dtype=float8"], ["model.dtype", "float32"]),
    # Settings the schema now checks because numpy, torch or the tokenizer would refuse them later.
    ("negative-seed", ["seed=-1"], ["seed", "greater than or equal to 0"]),
    ("seed-past-32-bits", ["seed=4294967296"], ["seed", "less than 4294967296"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_overrides(case):
    name, overrides, fragments = case
    result = runner.invoke(app, ["config", *overrides])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert all(f in message for f in fragments), message


def test_bad_config_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  beta: [0.1\n")
    result = runner.invoke(app, ["config", "--config", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output and str(broken) in result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  name_or_pth: x\n")
    result = runner.invoke(app, ["config", "--config", str(typo)])
    assert result.exit_code == 2 and "did you mean 'name_or_path'" in " ".join(result.output.split())


def test_model_directory_without_weights(tiny_model_dir, tmp_path):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            (broken / item.name).write_bytes(item.read_bytes())
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(OK) + "\n")
    result = runner.invoke(
        app, ["train", f"model.name_or_path={broken}", f"data.train={data}", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no weights" in " ".join(result.output.split())


@pytest.mark.parametrize(
    "template, fragment",
    [
        (None, "has no chat template"),
        (
            "{% set sep = ': ' if add_generation_prompt else '\\n' %}{% for m in messages %}"
            "{{ '<|im_start|>' + m['role'] + sep + m['content'] + '<|im_end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
            "not a prefix",
        ),
    ],
    ids=["no-chat-template", "template-breaks-prefix"],
)
def test_chat_template_problems(tmp_path, template, fragment):
    model_dir = make_tiny_model_dir(tmp_path / "model", chat_template=template)
    if template is None:
        for name in ("chat_template.jinja",):
            (model_dir / name).unlink(missing_ok=True)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(OK) + "\n")
    result = runner.invoke(app, ["inspect", f"model.name_or_path={model_dir}", f"data.train={data}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert fragment in " ".join(result.output.split())


def test_corpus_has_at_least_thirty_cases():
    assert len(DATA_CASES) + len(FILE_CASES) + len(CONFIG_CASES) + 1 + 1 + 1 + 2 + 1 >= 30
    assert math.isfinite(len(DATA_CASES))


def test_lora_target_modules_the_model_lacks_are_named_with_the_ones_it_has(tiny_model_dir, pairs_file, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={pairs_file}",
            "model.lora.enabled=true",
            "model.lora.target_modules=[qkv_proj]",
            "train.max_steps=1",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "unexpected" not in message, message
    assert "model.lora.target_modules=['qkv_proj']" in message and "q_proj" in message and "all-linear" in message


@pytest.mark.parametrize(
    "damage",
    ['{"rounds": {"1": {"round"', "", "\x00\x01 not json", "[" * 100_000],
    ids=["cut", "empty", "binary", "deep"],
)
def test_a_damaged_summary_is_named_with_what_to_do(tmp_path, damage):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SUMMARY_FILE).write_text(damage)
    result = runner.invoke(app, ["report", str(run_dir)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "unexpected" not in message, message
    assert str(run_dir / SUMMARY_FILE) in message and "is damaged" in message and "Restore it" in message


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_large_file_is_read_as_a_stream(tmp_path, suffix):
    """A 40 MB file with a bad first record: named at once, with memory far below the file's size; hashing it
    for the stage fingerprints streams too."""
    import tracemalloc

    from spreadpref.data.identity import source_identity

    path = tmp_path / f"big.{suffix}"
    with open(path, "w", encoding="utf-8") as out:
        if suffix == "jsonl":
            out.write('{"prompt": "x", "chosen": 5, "rejected": "c"}\n')
            line = json.dumps(OK | {"chosen": "b " * 200}) + "\n"
        else:
            out.write("prompt,chosen,rejected,label\nx,b,c,yes\n")
            line = "a," + "b " * 200 + ",c,1\n"
        for _ in range(40_000_000 // len(line)):
            out.write(line)
    tracemalloc.start()
    with pytest.raises(Exception, match=r"line (1|2)"):
        load_preferences(str(path))
    source_identity(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8_000_000, peak
