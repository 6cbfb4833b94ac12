"""What a data source holds, as a short hash: stages are keyed by their data's content, not by its path.

An edited ``pairs.csv`` under the same name is a change; the same file named by a relative or an absolute
path, or copied elsewhere, is not. A hub dataset is keyed by its id (its content is the hub's to change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from spreadpref.config import DataSettings
from spreadpref.data.sources import BUILTIN_FILES, BUILTIN_PREFIX, glob_data_files
from spreadpref.runtime.fingerprint import LENGTH, update_with_file


def _hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (name, bytes) of each file, streamed: memory stays flat for large files."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0")
        update_with_file(digest, path)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:LENGTH]


def source_identity(source: str | None) -> str | None:
    """The content hash of a local or bundled source (a file, a folder, a glob), else the source itself."""
    if source is None:
        return None
    if source.startswith(BUILTIN_PREFIX):
        name = BUILTIN_FILES.get(source[len(BUILTIN_PREFIX) :])
        if name is None:
            return source  # the loader names the mistake
        with resources.as_file(resources.files("spreadpref.resources").joinpath(name)) as path:
            return _hash_files([("", Path(path))])
    if any(char in source for char in "*?["):
        return _hash_files([(p.name, p) for p in glob_data_files(source)])
    path = Path(source).expanduser()
    if path.is_file():
        return _hash_files([("", path)])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return _hash_files([(str(p.relative_to(path)), p) for p in files])
    return source  # a hub id, or a path that does not exist (the loader says so)


DATA_IDENTITIES = "data_identities"  # the manifest's record of what the data held when its stages ran
# The data settings whose files a stage reads, by their key under ``data``.
DATA_SOURCES = ("train", "eval", "prompts")


def data_identities(data: DataSettings) -> dict[str, str | None]:
    """The content identity of each data source the settings name (None where one is not set)."""
    return {key: source_identity(getattr(data, key)) for key in DATA_SOURCES}


def path_identities(data: DataSettings) -> dict[str, str | None]:
    """The sources as named, which is how stages were keyed before content identities (runs made then resume)."""
    return {key: getattr(data, key) for key in DATA_SOURCES}


def changed_sources(
    data: DataSettings,
    recorded: dict[str, str | None],
    current: dict[str, str | None],
    keys: tuple[str, ...] = DATA_SOURCES,
) -> list[str]:
    """'data.train (pairs.csv)' for each source of ``keys`` whose content differs from the recorded one."""
    return [f"data.{key} ({getattr(data, key)})" for key in keys if recorded.get(key) != current.get(key)]


KEYED_BY_PATH, EDITED = "keyed by path", "edited"


def data_only_change(
    data: DataSettings,
    recorded: dict[str, str | None] | None,
    matches: Callable[[dict[str, str | None]], bool],
) -> str | None:
    """Why finished stages' fingerprints differ, when the data alone explains it.

    ``matches(identities)``: whether the stages' recorded fingerprints are what these identities give.
    KEYED_BY_PATH: stages from before content keys (no recorded identities), keyed by the data's path: take
    them as they are and re-key them. EDITED: the recorded identities give the recorded fingerprints, so only
    the data's content changed: run them again. None: the settings changed too."""
    if recorded is None:
        return KEYED_BY_PATH if matches(path_identities(data)) else None
    return EDITED if matches(recorded) else None
