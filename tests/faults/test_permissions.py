"""Files a run writes get the user's umask: a colleague in a shared run folder can read them."""

import os
import stat

import pytest

from spreadpref.runtime.files import atomic_directory, atomic_write_json, atomic_write_text
from spreadpref.runtime.layout import REPORT_FILE, SUMMARY_FILE


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    previous = os.umask(0o022)
    yield set_mask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_files_and_directories_honour_the_umask(umask, tmp_path, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / REPORT_FILE, "# hi\n")
    atomic_write_json(tmp_path / SUMMARY_FILE, {"a": 1})
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert mode(tmp_path / REPORT_FILE) == file_mode
    assert mode(tmp_path / SUMMARY_FILE) == file_mode
    assert mode(tmp_path / "model") == dir_mode
    assert mode(tmp_path / "model" / "config.json") == file_mode


def test_a_finished_training_stage_is_readable_by_others_under_umask_022(umask, tiny_model_dir, pairs_file, tmp_path):
    from helpers import tiny_train_overrides

    from spreadpref.config import load_config
    from spreadpref.dpo.train import train_policy

    umask(0o022)
    out = tmp_path / "train"
    train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, pairs_file, out)))
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    unreadable = [str(p.relative_to(out)) for p in written if not mode(p) & stat.S_IROTH]
    assert unreadable == []
    assert all(mode(p) & stat.S_IXOTH for p in out.rglob("*") if p.is_dir())
