"""A run directory belongs to one process: an advisory lock, released by the kernel when its holder dies.

``fcntl.flock`` on ``<dir>/.spreadpref.lock``: a second ``spreadpref run``, ``train`` or ``eval`` writing the
same directory is refused at once, with the holder's pid, host, command and start time read from the
file. A holder killed with SIGKILL leaves the file but not the lock, so nothing is ever stale. Under a
distributed launch only the main process takes it (the others write where it tells them).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from spreadpref.errors import SpreadprefError
from spreadpref.runtime import distributed
from spreadpref.runtime.files import is_spreadpref_temporary
from spreadpref.runtime.layout import (
    ADAPTER_DIRECTORY,
    CHECKPOINTS_DIRECTORY,
    CONFIG_FILE,
    EVAL_DIRECTORY,
    HELD_OUT_FILE,
    LOCK_FILE,
    LOG_HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_DIRECTORY,
    PLOTS_DIRECTORY,
    REFINEMENT_FILE,
    REPORT_FILE,
    SEED_STAGE,
    SUMMARY_FILE,
    TENSORBOARD_DIRECTORY,
    TRAIN_LOG_FILE,
    round_number,
)

try:  # POSIX; on Windows the lock is skipped (documented in docs/reliability.md)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


class DirectoryBusyError(SpreadprefError):
    pass


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process (its details could not be read)"
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}, "
        f"since {info.get('since', '?')})"
    )


class ForeignFilesError(SpreadprefError):
    pass


def foreign_entries(directory: Path) -> list[str]:
    """What is in ``directory`` when spreadpref never wrote there (no manifest.json): the user's own files.

    A run killed before its first manifest write leaves only its lock, temporaries and its config.yaml (which
    names this directory as its output_dir); those are spreadpref's."""
    if not directory.is_dir() or (directory / MANIFEST_FILE).is_file():
        return []
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in directory.iterdir()
        if p.name != LOCK_FILE and not is_spreadpref_temporary(p) and not _own_config(p, directory)
    )


def _own_config(path: Path, directory: Path) -> bool:
    if path.name != CONFIG_FILE or not path.is_file():
        return False
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        return isinstance(saved, dict) and Path(str(saved.get("output_dir", ""))).resolve() == directory.resolve()
    except (OSError, ValueError, yaml.YAMLError):
        return False


# The names a run or a train stage writes at the top of its directory: with allow_existing_files=true a user's
# own file of one of these names is refused rather than overwritten.
OWN_NAMES = frozenset(
    {
        *(CONFIG_FILE, MANIFEST_FILE, SUMMARY_FILE, REPORT_FILE, LOG_HISTORY_FILE, TRAIN_LOG_FILE, REFINEMENT_FILE),
        HELD_OUT_FILE,
        *(f"{folder}/" for folder in (PLOTS_DIRECTORY, SEED_STAGE, EVAL_DIRECTORY, MODEL_DIRECTORY)),
        f"{TENSORBOARD_DIRECTORY}/",
        *(f"{folder}/" for folder in (ADAPTER_DIRECTORY, CHECKPOINTS_DIRECTORY)),
    }
)


def _is_own_name(entry: str) -> bool:
    return entry in OWN_NAMES or round_number(entry.removesuffix("/")) is not None


def check_output_directory(directory: Path, allow_existing: bool) -> None:
    """Refuse to write into a directory that holds files spreadpref did not write, unless allowed; even when
    allowed, refuse if one of them has a name spreadpref would write (it would be overwritten)."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise ForeignFilesError(
            f"{directory} is a file, not a directory: the output goes into a directory. Choose another output "
            "directory (output_dir, or -o), or move the file away."
        )
    found = foreign_entries(Path(directory))
    if found and not allow_existing:
        raise ForeignFilesError(
            f"{directory} already holds files spreadpref did not write ({_shown(found)}). Use a new or empty "
            "output directory, or set allow_existing_files=true to write beside them (nothing of yours is deleted "
            "or overwritten)."
        )
    if clashes := [entry for entry in found if _is_own_name(entry)]:
        raise ForeignFilesError(
            f"{directory} holds files of yours with names spreadpref writes itself ({_shown(clashes)}): they would "
            "be overwritten. Move them away, or use another output directory."
        )


def _shown(entries: list[str]) -> str:
    return ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


@contextlib.contextmanager
def directory_lock(directory: Path, command: str, allow_existing: bool = True) -> Iterator[None]:
    """Hold ``directory``'s lock for the body; refuse at once if another process holds it, or (unless
    ``allow_existing``) if the directory holds files spreadpref did not write."""
    if fcntl is None or not distributed.is_main():
        yield
        return
    directory = Path(directory)
    check_output_directory(directory, allow_existing)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusyError(
                f"{directory} is in use by another spreadpref process: {_holder(path)}. Two processes writing one "
                "directory would mix their files; wait for it to finish (or stop it), or use another output "
                "directory."
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": f"spreadpref {command}" if not sys.argv[1:] else " ".join(["spreadpref", *sys.argv[1:]])[:300],
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
