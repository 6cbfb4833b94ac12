"""A write that fails (disk full, unwritable path) leaves the previous state intact and a clear message."""

import errno
import json

import pytest
from harness import (
    STAGES,
    assert_same_artifacts,
    check_consistent,
    overrides,
    write_loop_data,
)
from typer.testing import CliRunner

import spreadpref.runtime.files as sp_io
from spreadpref.cli import app
from spreadpref.runtime.layout import MANIFEST_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("disk-reference")
    seed, prompts = write_loop_data(base / "data")
    out = base / "run"
    result = runner.invoke(app, ["run", *overrides(tiny_model_dir, seed, prompts, out)])
    assert result.exit_code == 0, result.output
    return {"out": out, "seed": seed, "prompts": prompts}


@pytest.mark.parametrize("failing_write", [3, 9, 20, 40])
def test_disk_full_keeps_the_previous_state(reference, tiny_model_dir, tmp_path, monkeypatch, failing_write):
    out = tmp_path / "run"
    args = ["run", *overrides(tiny_model_dir, reference["seed"], reference["prompts"], out)]
    real = sp_io.atomic_write_text
    calls = {"n": 0}

    def disk_full_on_nth_write(path, text):
        calls["n"] += 1
        if calls["n"] == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(sp_io, "atomic_write_text", disk_full_on_nth_write)
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert "No space left on device" in message and "run the same command again to resume" in message
    assert "Traceback" not in result.output
    assert check_consistent(out) in STAGES
    monkeypatch.setattr(sp_io, "atomic_write_text", real)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert_same_artifacts(reference["out"], out)


def test_failed_manifest_write_leaves_the_old_manifest(reference, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    out.mkdir()
    (out / MANIFEST_FILE).write_text(json.dumps({"stages": {"seed": {"status": "running"}}}))
    from spreadpref.runtime.manifest import Manifest

    manifest = Manifest(out)

    def fail_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sp_io.os, "replace", fail_replace)
    with pytest.raises(OSError):
        manifest.complete("seed")
    monkeypatch.undo()
    assert json.loads((out / MANIFEST_FILE).read_text()) == {"stages": {"seed": {"status": "running"}}}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "the temporary file was not cleaned up"


def test_unwritable_output_directory_is_a_message(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["train", f"model.name_or_path={tiny_model_dir}", "--output", str(blocker / "run")])
    assert result.exit_code == 3
    assert "could not read or write a file" in " ".join(result.output.split())
    assert "Traceback" not in result.output
