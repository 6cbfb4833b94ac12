"""A model source that is not what it should be gets a message naming the key and what to do, with exit 2,
not the hub's repo-id rules, an install hint, or an IndexError mid-run."""

import shutil

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.testing import make_tiny_tokenizer

runner = CliRunner()


def broken_source(kind: str, tmp_path, tiny_model_dir) -> str:
    if kind == "missing-directory":
        return str(tmp_path / "no-such-model")
    if kind == "a-file":
        path = tmp_path / "model.bin"
        path.write_bytes(b"\0" * 16)
        return str(path)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    if kind == "no-tokenizer-files":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            (copy / name).unlink(missing_ok=True)
    if kind == "tokenizer-larger-than-the-embeddings":
        make_tiny_tokenizer(vocab_size=400).save_pretrained(copy)  # 400 ids, 320 embeddings
    return str(copy)


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("missing-directory", ["model.name_or_path=", "no such model directory"]),
        ("a-file", ["model.name_or_path=", "is a file"]),
        ("no-tokenizer-files", ["holds no tokenizer files", "model.tokenizer"]),
        ("tokenizer-larger-than-the-embeddings", ["400 tokens", "only 320 embeddings"]),
    ],
)
def test_a_broken_model_source_is_named(kind, fragments, tmp_path, tiny_model_dir):
    source = broken_source(kind, tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["inspect", f"model.name_or_path={source}", "data.train=builtin:seed_pairs"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert all(f in said for f in fragments), said
    assert "unexpected" not in said and "repo id" not in said.lower() and "sentencepiece" not in said


def test_an_empty_model_name_is_named():
    result = runner.invoke(app, ["inspect", "model.name_or_path=", "data.train=builtin:seed_pairs"])
    assert result.exit_code == 2, result.output
    assert "model.name_or_path" in result.output and "unexpected" not in result.output


class NotATensor:
    """A pickled object weights_only refuses: loading it would run this module's code."""


def test_pickled_weights_that_weights_only_refuses_are_named_and_never_run(tiny_model_dir, tmp_path):
    import torch

    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": NotATensor()}, copy / "pytorch_model.bin")
    result = runner.invoke(
        app, ["train", "-o", str(tmp_path / "out"), f"model.name_or_path={copy}", "data.train=builtin:seed_pairs"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "weights_only=True" in said and "Nothing in it was run" in said and "safetensors" in said


def test_an_output_path_that_is_a_file_is_named(tiny_model_dir, tmp_path):
    target = tmp_path / "out"
    target.write_text("mine")
    result = runner.invoke(app, ["train", "-o", str(target), f"model.name_or_path={tiny_model_dir}"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "is a file, not a directory" in said, said
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "disk is probably full"),
        (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"), "disk is probably full"),
        (BrokenPipeError(32, "Broken pipe"), "standard output was closed"),
    ],
    ids=["torch-save-disk-full", "safetensors-disk-full", "closed-stdout"],
)
def test_environment_faults_are_exit_3_not_a_bug(error, fragment, capsys):
    import typer

    from spreadpref import cli

    def action():
        raise error

    with pytest.raises(typer.Exit) as exit_info:
        cli._run(action)
    assert exit_info.value.exit_code == cli.EXIT_IO_ERROR
    said = " ".join(capsys.readouterr().err.split())
    assert fragment in said and "unexpected" not in said
