"""Atomic file output: a killed process leaves either the old file or the new one, never half of one.

Temporaries are named ``.<name>.spreadpref-<random>.tmp`` (TEMP_MARK), so that the cleanup at the next
start removes only what spreadpref wrote, never a user's own ``.something.tmp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spreadpref.errors import DataError

TEMP_MARK = ".spreadpref-"  # in the name of every temporary spreadpref writes


def temporary_name(name: str, tag: str = "") -> str:
    """The name of a fixed (not random) temporary next to ``name``: recognisably spreadpref's."""
    return f".{name}{TEMP_MARK}{tag}.tmp"


def is_spreadpref_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and TEMP_MARK in path.name


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back: the only way Python offers)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False, mask: int | None = None) -> None:
    """Give a temporary the mode a plain ``open`` or ``mkdir`` would have given it: mkstemp and mkdtemp make
    them readable by their owner only, and a colleague in a shared run folder would get "Permission denied".
    ``mask``: the umask, when the caller has read it already."""
    os.chmod(path, (0o777 if directory else 0o666) & ~(current_umask() if mask is None else mask))


def honour_umask_tree(directory: Path) -> None:
    """:func:`honour_umask` for a directory and all it holds (some writers, safetensors among them, make their
    files readable by their owner only)."""
    mask = current_umask()  # once: reading it sets the process's umask twice
    honour_umask(directory, directory=True, mask=mask)
    for parent, directories, files in os.walk(directory):
        for name in directories:
            honour_umask(Path(parent) / name, directory=True, mask=mask)
        for name in files:
            honour_umask(Path(parent) / name, mask=mask)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            honour_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMP_MARK}", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        honour_umask_tree(tmp)
        if final.exists():
            # Move the old copy aside first so that a crash between the two renames keeps one of them.
            old = final.with_name(temporary_name(final.name, "old"))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_local_path(name: str) -> bool:
    """Whether ``name`` means a local file or directory rather than a hub id ("org/name"): it starts like a
    path, exists here, or has more than one slash."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def remove_stale_temporaries(directory: Path) -> int:
    """Delete the temporaries a killed spreadpref writer left (only those: see TEMP_MARK); return how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.rglob(f".*{TEMP_MARK}*.tmp") if is_spreadpref_temporary(p)]
    stale = [p for p in stale if not any(is_spreadpref_temporary(parent) for parent in p.parents)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return len(stale)


def read_own_json(path: Path) -> Any:
    """A JSON file spreadpref wrote (a summary, a manifest's figures); a damaged one is a DataError naming it and
    saying what to do, never a bare parser error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # truncated by a full disk, edited by hand, not JSON at all
        raise DataError(
            str(path),
            None,
            None,
            f"is damaged and cannot be read ({type(err).__name__}: {err}). spreadpref wrote it; the models and "
            "stage files beside it are intact. Restore it from a copy, or move it away (the figures it held are "
            "then missing from the report; `spreadpref run ... --force` measures them again)",
        ) from None


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) for each non-blank line; a line that is not JSON is an error naming it."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), f"line {number}", None, f"not valid JSON ({err.msg})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
