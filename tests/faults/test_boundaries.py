"""The error boundary, the directory lock, spreadpref's own temporaries, and settings checked before any model
loads: each case asserts the message, the exit code, no traceback, and that nothing on disk was lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.config import load_config
from spreadpref.errors import ConfigError
from spreadpref.runtime.files import atomic_write_text, remove_stale_temporaries
from spreadpref.runtime.layout import CONFIG_FILE, LOCK_FILE, MANIFEST_FILE, round_name
from spreadpref.runtime.lock import DirectoryBusyError, directory_lock

runner = CliRunner()


def train_args(model_dir, pairs_file, out, *extra):
    return [
        "train",
        f"model.name_or_path={model_dir}",
        f"data.train={pairs_file}",
        "train.max_steps=2",
        "train.per_device_batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.save_strategy=no",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "--output",
        str(out),
        *extra,
    ]


def assert_message(result, code, *fragments):
    output = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


# ---------------------------------------------------------------------------------------------
# Settings refused when the configuration loads, before any model is loaded


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["generation.temperature=0"], ["generation.temperature=0", "greedy"]),
        (["output_dir="], ["output_dir is empty"]),
        (["output_dir=   "], ["output_dir is empty"]),
        (["train.beta=.nan"], ["train.beta"]),
        (["train.learning_rate=.inf"], ["train.learning_rate"]),
        (["judge.reference="], ["judge.reference is empty"]),
        (["judge.kind=custom"], ["judge.custom.factory"]),
    ],
)
def test_bad_settings_are_refused_at_load(overrides, fragments):
    result = runner.invoke(app, ["config", *overrides])
    assert_message(result, 2, *fragments)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("train:\n  beta: .nan\n", ["train.beta", "finite"]),
        ("train:\n  learning_rate: -.inf\n", ["train.learning_rate"]),
        ("generation:\n  temperature: 0\n", ["greedy"]),
        ("train: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_bad_numbers_and_syntax_in_a_yaml_file(tmp_path, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["config", "--config", str(path)])
    assert_message(result, 2, *fragments)


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        lines.append(
            f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)},"
            f"*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)},*{chr(96 + i)}]"
        )
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n  report_to: *j\n" if False else "\n".join(lines) + "\ntrain:\n  report_to: *j\n")
    started = time.perf_counter()
    result = runner.invoke(app, ["config", "--config", str(path)])
    assert time.perf_counter() - started < 10
    assert_message(result, 2, "aliases expand to more than")
    assert len(result.output) < 2000


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1 # caf\xe9\n".encode("latin-1"))
    assert_message(runner.invoke(app, ["config", "--config", str(path)]), 2, "not UTF-8")


def test_a_huge_bad_value_is_not_printed_whole():
    result = runner.invoke(app, ["config", f"train.beta={'9' * 100_000}x"])
    assert result.exit_code == 2 and len(result.output) < 3000 and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.lr_scheduler=cosinus", "is not a scheduler"),
        ("train.optimizer=adamw_torchh", "did you mean adamw_torch"),
        ("train.report_to=[wandb_not_installed_here]", "is not installed here"),
    ],
)
def test_settings_transformers_checks_are_checked_before_the_model_loads(tmp_path, pairs_file, override, fragment):
    # A model path that does not exist: the message must come from the check, before any load is tried.
    out = tmp_path / "out"
    result = runner.invoke(app, train_args(tmp_path / "no-model", pairs_file, out, override))
    assert_message(result, 2, fragment)
    assert not (out / "model").exists()


# ---------------------------------------------------------------------------------------------
# The boundary: an unexpected error is a message, and --debug shows the traceback


def test_an_unexpected_error_is_a_message_with_how_to_report_it(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    import spreadpref.dpo.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug " + "x" * 5000)

    monkeypatch.setattr(train_module, "prepare_pairs", broken)
    result = runner.invoke(app, train_args(tiny_model_dir, pairs_file, tmp_path / "out"))
    assert_message(result, 1, "unexpected RuntimeError", "simulated bug", "--debug", "SPREADPREF_DEBUG=1")
    assert len(result.output) < 2500
    debug = runner.invoke(app, ["--debug", *train_args(tiny_model_dir, pairs_file, tmp_path / "out2")])
    assert isinstance(debug.exception, RuntimeError)  # --debug lets it through, with its traceback


# ---------------------------------------------------------------------------------------------
# A directory belongs to one process


def test_a_held_directory_is_refused_with_the_holder_named(tmp_path):
    with directory_lock(tmp_path, "run"):
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()
        code = (
            "import sys\nfrom spreadpref.runtime.lock import directory_lock\n"
            f"with directory_lock({str(tmp_path)!r}, 'train'):\n    pass\n"
        )
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert child.returncode != 0 and "DirectoryBusyError" in child.stderr
        assert f"pid {os.getpid()}" in child.stderr and "in use by another spreadpref process" in child.stderr
    with directory_lock(tmp_path, "run"):  # released: it can be taken again
        pass


def test_a_lock_whose_holder_was_killed_is_not_stale(tmp_path):
    code = (
        "import time\nfrom spreadpref.runtime.lock import directory_lock\n"
        f"with directory_lock({str(tmp_path)!r}, 'run'):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(DirectoryBusyError, match=f"pid {child.pid}"):
        with directory_lock(tmp_path, "run"):
            pass
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    with directory_lock(tmp_path, "run"):  # the kernel released it with its holder
        pass


def test_two_train_processes_on_one_directory_one_refused_the_other_as_a_lone_run(tiny_model_dir, pairs_file, tmp_path):
    lone = tmp_path / "lone"
    assert runner.invoke(app, train_args(tiny_model_dir, pairs_file, lone)).exit_code == 0
    shared = tmp_path / "shared"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "spreadpref", *train_args(tiny_model_dir, pairs_file, shared)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    joined = " ".join(" ".join(outputs).split())
    # Either the second found the lock, or the first had already finished and the second found nothing to do.
    assert codes == [0, 2] and "in use by another spreadpref process" in joined or codes == [0, 0], joined
    assert "Traceback" not in joined
    weights = load_file(shared / "model" / "model.safetensors")
    expected = load_file(lone / "model" / "model.safetensors")
    assert weights.keys() == expected.keys() and all((weights[k] == expected[k]).all() for k in weights)


def test_train_into_a_run_directory_and_the_reverse_are_refused(tiny_model_dir, pairs_file, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MANIFEST_FILE).write_text(json.dumps({"stages": {"seed": {"status": "complete"}}}))
    (run_dir / CONFIG_FILE).write_text("seed: 1\n")
    result = runner.invoke(app, train_args(tiny_model_dir, pairs_file, run_dir))
    assert_message(result, 2, "is a `spreadpref run` directory")
    assert (run_dir / CONFIG_FILE).read_text() == "seed: 1\n"  # not overwritten
    train_dir = tmp_path / "trained"
    assert runner.invoke(app, train_args(tiny_model_dir, pairs_file, train_dir)).exit_code == 0
    before = (train_dir / CONFIG_FILE).read_text()
    result = runner.invoke(
        app, ["run", f"model.name_or_path={tiny_model_dir}", f"data.train={pairs_file}", "--output", str(train_dir)]
    )
    assert_message(result, 2, "holds a `spreadpref train` result")
    assert (train_dir / CONFIG_FILE).read_text() == before


# ---------------------------------------------------------------------------------------------
# Temporaries: only spreadpref's own are cleaned


def test_only_spreadprefs_own_temporaries_are_removed(tmp_path):
    user_file = tmp_path / "sub" / ".notes.tmp"
    user_dir = tmp_path / ".scratch.tmp"
    user_file.parent.mkdir()
    user_file.write_text("mine")
    user_dir.mkdir()
    ours = tmp_path / "sub" / ".pairs.jsonl.spreadpref-abc123.tmp"
    ours.write_text("half")
    our_dir = tmp_path / ".model.spreadpref-old.tmp"
    (our_dir / "inner").mkdir(parents=True)
    assert remove_stale_temporaries(tmp_path) == 2
    assert user_file.read_text() == "mine" and user_dir.is_dir()
    assert not ours.exists() and not our_dir.exists()


def test_atomic_writes_leave_recognisable_temporaries(tmp_path, monkeypatch):
    import os as os_module

    seen = []
    real_replace = os_module.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os_module, "replace", spy)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert seen and all(".spreadpref-" in name and name.endswith(".tmp") for name in seen)


def test_the_api_refuses_an_empty_output_dir():
    with pytest.raises(ConfigError, match="output_dir is empty"):
        load_config(None, ["output_dir="])


def test_a_directory_with_the_users_own_files_is_refused_unless_allowed(tiny_model_dir, pairs_file, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "old-results").mkdir()
    result = runner.invoke(app, train_args(tiny_model_dir, pairs_file, mine))
    assert_message(
        result, 2, "already holds files spreadpref did not write (notes.txt, old-results/)", "allow_existing_files=true"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "old-results"]  # nothing written, nothing lost
    allowed = runner.invoke(app, [*train_args(tiny_model_dir, pairs_file, mine), "allow_existing_files=true"])
    assert allowed.exit_code == 0, allowed.output
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "model").is_dir()
    again = runner.invoke(app, [*train_args(tiny_model_dir, pairs_file, mine)])  # now a spreadpref directory
    assert again.exit_code == 0 and "already complete" in " ".join(again.output.split())


def test_a_run_killed_before_its_manifest_is_not_taken_for_foreign_files(tmp_path):
    from spreadpref.runtime.lock import ForeignFilesError, check_output_directory

    out = tmp_path / "run"
    out.mkdir()
    load_config(None, [f"output_dir={out}"]).save(out / CONFIG_FILE)  # what a run writes before its manifest
    (out / ".spreadpref.lock").write_text("{}")
    (out / ".summary.json.spreadpref-x1.tmp").write_text("")
    check_output_directory(out, allow_existing=False)  # all spreadpref's: no error
    (out / CONFIG_FILE).write_text("my: own\n")  # a user's config.yaml is theirs
    with pytest.raises(ForeignFilesError, match="config.yaml"):
        check_output_directory(out, allow_existing=False)


@pytest.mark.parametrize("name", ["summary.json", "report.md", round_name(3), "model"])
def test_allowed_existing_files_are_never_overwritten_a_clashing_name_is_refused(
    tiny_model_dir, pairs_file, tmp_path, name
):
    mine = tmp_path / "mine"
    mine.mkdir()
    own = mine / name
    own.mkdir() if "." not in name else own.write_text('{"mine": true}')
    result = runner.invoke(app, [*train_args(tiny_model_dir, pairs_file, mine), "allow_existing_files=true"])
    assert_message(result, 2, f"names spreadpref writes itself ({name}", "would be overwritten")
    assert sorted(p.name for p in mine.iterdir()) == [name]  # nothing written
    if own.is_file():
        assert own.read_text() == '{"mine": true}'
