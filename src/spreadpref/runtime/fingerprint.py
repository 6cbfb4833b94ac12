"""Fingerprints: short content hashes that say whether a finished result still matches its inputs.

A stage's fingerprint decides whether its outputs can be reused (same inputs) or must be refused
or redone (different inputs); a cache entry's fingerprint is its file name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LENGTH = 16  # hex digits: collisions are irrelevant at the number of stages and cache entries a user has


def fingerprint(value: Any) -> str:
    """Hash of ``value`` as canonical JSON (sorted keys; other objects by their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:LENGTH]


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """Hash of a stream of JSON-able rows, without building one string of all of them."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:LENGTH]


def update_with_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes into ``digest`` a block at a time: memory stays flat for large files."""
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (streamed), to tell later whether it changed."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()[:LENGTH]


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "config.json", "adapter_config.json")


def tree_digest(path: Path, patterns: tuple[str, ...] = WEIGHT_FILES) -> str:
    """sha256 over a directory's files that match ``patterns`` (names and bytes, in name order): a model
    directory whose weights or config changed. Its README (the model card) is left out: cards are rewritten."""
    digest = hashlib.sha256()
    files = sorted({file for pattern in patterns for file in path.rglob(pattern) if file.is_file()})
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        update_with_file(digest, file)
    return digest.hexdigest()[:LENGTH]


def content_digest(path: Path) -> str:
    """A file's digest, or a directory's (its weights and configs)."""
    return tree_digest(path) if path.is_dir() else file_digest(path)
