"""The run manifest: what each stage did, with which config, and whether it finished.

It is rewritten atomically after every change, so a killed run can always read it back and resume.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from spreadpref.errors import SpreadprefError
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_json, read_json
from spreadpref.runtime.fingerprint import content_digest
from spreadpref.runtime.layout import MANIFEST_FILE
from spreadpref.runtime.progress import console


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class DamagedManifestError(SpreadprefError):
    pass


class Manifest:
    def __init__(self, directory: Path):
        self.path = Path(directory) / MANIFEST_FILE
        self.data: dict[str, Any] = self._read() if self.path.is_file() else {"stages": {}}
        self._said_moved = False

    def _read(self) -> dict[str, Any]:
        try:
            data = read_json(self.path)
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise ValueError("no 'stages' mapping")
        except (ValueError, UnicodeDecodeError) as err:
            raise DamagedManifestError(
                f"{self.path} is damaged ({type(err).__name__}: {str(err)[:200]}). It records which stages finished, so "
                f"nothing here can be resumed safely without it. Restore it from a backup, or move it aside (mv "
                f"{self.path} {self.path}.damaged) and run the same command with allow_existing_files=true to redo "
                "every stage in this directory."
            ) from None
        return data

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def start(self, name: str, fingerprint: str, **fields: Any) -> None:
        entry = self.data["stages"].get(name) or {}
        if entry.get("fingerprint") != fingerprint:
            entry = {}
        entry.update(status="running", fingerprint=fingerprint, started=entry.get("started") or _now(), **fields)
        entry["attempts"] = entry.get("attempts", 0) + 1
        self.data["stages"][name] = entry
        self.save()

    def update(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def complete(self, name: str, **fields: Any) -> None:
        if isinstance(fields.get("outputs"), dict):
            fields["outputs"] = {key: self._relative(value) for key, value in fields["outputs"].items()}
            # The content, to notice an edit later: files whole, model directories by their weights and configs.
            fields["hashes"] = {
                key: content_digest(path)
                for key in fields["outputs"]
                if (path := self._resolve(fields["outputs"][key])).exists()
            }
        self.update(name, status="complete", finished=_now(), **fields)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def edited_outputs(self, name: str) -> list[Path]:
        """The output files of finished stage ``name`` whose content differs from what the stage wrote."""
        entry = self.stage(name) or {}
        hashes = entry.get("hashes") or {}
        edited = []
        for key, digest in hashes.items():
            path = self.output(name, key)
            if path.exists() and content_digest(path) != digest:
                edited.append(path)
        return edited

    def _relative(self, value: Any) -> Any:
        """A path inside the run directory as relative to it, so that a copied or moved run uses its own files."""
        if not isinstance(value, str):
            return value
        path = Path(value)
        try:
            return str(path.resolve().relative_to(self.path.parent.resolve()))
        except ValueError:
            return str(path.resolve())  # outside the run: absolute, so that it is never read as inside it

    def output(self, name: str, key: str) -> Path:
        """A finished stage's output path, inside this run directory wherever the run was made.

        Manifests written before outputs were relative hold absolute paths; one that points outside this
        directory (the run was copied or moved) is found again by its tail under this directory."""
        value = Path(self.data["stages"][name]["outputs"][key])
        if not value.is_absolute():
            return self.path.parent / value
        root = self.path.parent
        if value.resolve().is_relative_to(root.resolve()):
            return value
        for start in range(1, len(value.parts)):
            candidate = root.joinpath(*value.parts[start:])
            if candidate.exists():
                if not self._said_moved:
                    console.print(
                        f"{root} was copied or moved from {value.parents[len(value.parts) - start - 1]}: it "
                        "continues from its own files."
                    )
                    self._said_moved = True
                return candidate
        raise SpreadprefError(
            f"{self.path} records {name}'s {key} at {value}, outside {root}, and {root} has no copy of it: the run "
            "was copied or moved without that file. Copy it too, or run again with --force to redo that stage."
        )

    def reset(self, name: str) -> None:
        self.data["stages"].pop(name, None)
        self.save()

    def save(self) -> None:
        # Every process keeps the same record in memory; only the main one writes it.
        if distributed.is_main():
            atomic_write_json(self.path, self.data)
