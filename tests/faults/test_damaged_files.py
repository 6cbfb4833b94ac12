"""Files spreadpref wrote and reads back: damage is found, the cache is recomputed, and a damaged newest
checkpoint falls back to the one before it. Nothing finished and intact is lost."""

import json

import pytest
import torch
from safetensors.torch import save_file

from spreadpref.dpo.checkpoints import FILE_LIST, LISTED_MARKER, checkpoint_damage, last_checkpoint
from spreadpref.dpo.reference import read_cache_entry
from spreadpref.runtime.fingerprint import file_digest
from spreadpref.runtime.layout import MANIFEST_FILE, round_name, round_stage


def make_checkpoint(root, step, files, sizes_only=False):
    """A checkpoint with the file list RecordCheckpointFiles writes (sizes and hashes; sizes alone before 0.1)."""
    checkpoint = root / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name, data in files.items():
        (checkpoint / name).write_bytes(data)
    listing = {
        p.name: p.stat().st_size if sizes_only else {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in checkpoint.iterdir()
    }
    (checkpoint / FILE_LIST).write_text(json.dumps(listing))
    return checkpoint


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda c: (c / "optimizer.pt").write_bytes(b"trunc"), "optimizer.pt has 5 bytes"),
        (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda c: (c / "trainer_state.json").write_text("{"), "interrupted while being saved"),
        (lambda c: (c / FILE_LIST).write_text("not json"), "is unreadable"),
        (lambda c: (c / "optimizer.pt").write_bytes(b"z" * 1000), "optimizer.pt is not the file that was saved"),
    ],
    ids=["truncated-optimizer", "missing-weights", "broken-state", "broken-listing", "same-size-replacement"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, reason):
    files = {"optimizer.pt": b"x" * 1000, "model.safetensors": b"y" * 2000}
    older = make_checkpoint(tmp_path, 10, files)
    newest = make_checkpoint(tmp_path, 20, files)
    damage(newest)
    assert reason in checkpoint_damage(newest)
    assert last_checkpoint(tmp_path) == str(older)
    assert not newest.exists() and older.exists() and checkpoint_damage(older) is None


def test_a_checkpoint_cut_off_before_its_file_list_is_not_trusted(tmp_path):
    files = {"optimizer.pt": b"x" * 1000}
    older = make_checkpoint(tmp_path, 10, files)
    newest = make_checkpoint(tmp_path, 20, files)
    (newest / FILE_LIST).unlink()  # a Ctrl-C after the Trainer's save, before RecordCheckpointFiles ran
    assert checkpoint_damage(newest) is None  # without the marker: an older version's checkpoint, trusted
    (tmp_path / LISTED_MARKER).write_text("{}")  # this version lists every checkpoint it saves
    assert "before spreadpref-files.json recorded its files" in checkpoint_damage(newest)
    assert last_checkpoint(tmp_path) == str(older)


def test_a_size_only_list_from_an_older_version_still_finds_a_truncated_file(tmp_path):
    files = {"optimizer.pt": b"x" * 1000}
    older = make_checkpoint(tmp_path, 10, files, sizes_only=True)
    newest = make_checkpoint(tmp_path, 20, files, sizes_only=True)
    (newest / "optimizer.pt").write_bytes(b"z" * 1000)
    assert checkpoint_damage(newest) is None  # a same-size replacement: only a hash would tell
    (newest / "optimizer.pt").write_bytes(b"cut")
    assert last_checkpoint(tmp_path) == str(older)


def test_a_checkpoint_without_a_file_list_is_trusted_by_its_state_file(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 5, {"optimizer.pt": b"x"})
    (checkpoint / FILE_LIST).unlink()
    assert last_checkpoint(tmp_path) == str(checkpoint)


@pytest.mark.parametrize(
    "write",
    [
        lambda path: path.write_bytes(b"\x00\x01garbage"),
        lambda path: path.write_bytes(b""),
        lambda path: save_file({"chosen": torch.zeros(3), "rejected": torch.zeros(3)}, str(path)),  # wrong count
        lambda path: save_file({"chosen": torch.full((4,), float("nan")), "rejected": torch.zeros(4)}, str(path)),
        lambda path: save_file({"other": torch.zeros(4)}, str(path)),
    ],
    ids=["garbage", "empty", "wrong-count", "nan", "wrong-keys"],
)
def test_a_damaged_reference_cache_entry_is_deleted_and_recomputed(tmp_path, write):
    entry = tmp_path / "key.safetensors"
    write(entry)
    assert read_cache_entry(entry, 4) is None and not entry.exists()


def test_an_intact_cache_entry_is_read(tmp_path):
    entry = tmp_path / "key.safetensors"
    save_file({"chosen": torch.tensor([-1.0, -2.0]), "rejected": torch.tensor([-3.0, -4.0])}, str(entry))
    chosen, rejected = read_cache_entry(entry, 2)
    assert chosen.tolist() == [-1.0, -2.0] and rejected.tolist() == [-3.0, -4.0] and entry.exists()


def test_real_trainer_checkpoints_carry_the_file_list(tiny_model_dir, pairs_file, tmp_path):
    from helpers import tiny_train_overrides

    from spreadpref.config import load_config
    from spreadpref.dpo.train import train_policy

    out = tmp_path / "train"
    config = load_config(
        None,
        tiny_train_overrides(
            tiny_model_dir,
            pairs_file,
            out,
            "train.max_steps=2",
            "train.save_strategy=steps",
            "train.save_steps=1",
            "train.save_total_limit=3",
            "train.keep_checkpoints=true",
            "train.per_device_batch_size=4",
            "train.gradient_accumulation_steps=1",
        ),
    )
    train_policy(config)
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 2 and all((c / FILE_LIST).is_file() for c in checkpoints)
    listing = json.loads((checkpoints[-1] / FILE_LIST).read_text())
    assert "optimizer.pt" in listing and "trainer_state.json" in listing
    assert listing["optimizer.pt"]["sha256"] == file_digest(checkpoints[-1] / "optimizer.pt")
    (checkpoints[-1] / "optimizer.pt").write_bytes(b"cut")
    assert last_checkpoint(out / "checkpoints") == str(checkpoints[0])


def test_a_damaged_file_of_a_finished_stage_is_rebuilt_the_same(tiny_model_dir, loop_data, tmp_path):
    from helpers import loop_overrides

    from spreadpref.config import load_config
    from spreadpref.runtime.manifest import Manifest
    from spreadpref.spa.loop import run

    seed, prompts = loop_data
    out = tmp_path / "run"
    base = loop_overrides(tiny_model_dir, seed, prompts, out)
    run(load_config(None, [*base, "loop.rounds=1", "loop.prompts_per_round=[8]"]))
    generations = out / round_name(1) / "generations.jsonl"
    original = generations.read_text()
    judged_before = (out / round_name(1) / "judged.jsonl").read_text()
    generations.write_text(original[: len(original) // 2])  # cut mid-line, as a disk fault would
    run(load_config(None, [*base, "loop.rounds=2", "loop.prompts_per_round=[8,8]"]))
    assert generations.read_text() == original  # seeded: the same samples again
    assert (out / round_name(1) / "generations.jsonl.damaged").is_file()  # the damaged copy kept for a look
    assert (out / round_name(1) / "judged.jsonl").read_text() == judged_before  # finished stages after it kept
    manifest = Manifest(out)
    assert (
        manifest.stage(round_stage(1, "judge"))["attempts"] == 1
        and manifest.stage(round_stage(2, "train"))["status"] == "complete"
    )


@pytest.mark.parametrize("text", ["{", "[]", '{"stages": 3}', "\xff\xfe"])
def test_a_damaged_manifest_names_itself_and_how_to_recover(tmp_path, text):
    from typer.testing import CliRunner

    from spreadpref.cli import app

    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST_FILE).write_text(text, encoding="latin-1")
    result = CliRunner().invoke(app, ["run", "--output", str(out), "model.name_or_path=/nonexistent"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "manifest.json is damaged" in message and "allow_existing_files=true" in message
    assert (out / MANIFEST_FILE).read_text(encoding="latin-1") == text  # left as it was, for the user to look at
