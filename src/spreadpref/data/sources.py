"""Where preference and prompt rows come from: files of every usual format, the hub, save_to_disk folders and
the built-in sets, each row with its location (file and line, or row) for error messages.

:func:`iter_rows` is the one entry: it yields ``(location, row)`` and names a file that cannot be read (not
UTF-8, not the format its suffix says, JSON too deep). What a row means is :mod:`spreadpref.data.loading`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from spreadpref.errors import DataError
from spreadpref.runtime.files import is_local_path

BUILTIN_PREFIX = "builtin:"
BUILTIN_FILES = {
    "seed_pairs": "seed_pairs.jsonl",
    "prompts": "prompts.jsonl",
    # Verifiable prompts (IFEval-style constraints), disjoint by task: see resources/IFEVAL_TASKS.md.
    "ifeval_eval": "ifeval_eval.jsonl",
    "ifeval_seed_prompts": "ifeval_seed_prompts.jsonl",
    "ifeval_prompts": "ifeval_prompts.jsonl",
}


# ---------------------------------------------------------------------------------------------
# Raw rows from files, directories, the hub and the bundled resources


def iter_rows(source: str, *, split: str = "train", subset: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) pairs; location is "line N" for JSONL and "row N" otherwise."""
    if source.startswith(BUILTIN_PREFIX):
        yield from _iter_builtin(source)
        return
    if any(char in source for char in "*?["):
        yield from _iter_files(glob_data_files(source), source)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            yield from _iter_saved_dataset(path, split)
        else:
            yield from _iter_files(_shards(path, split), source)
    elif path.is_file():
        yield from _iter_file(path)
    elif os.path.lexists(path):
        raise DataError(source, None, None, _not_a_data_file(path))
    elif _looks_like_local_path(source):
        raise DataError(source, None, None, "no such file or directory")
    else:
        yield from _iter_hub(source, split, subset)


def _not_a_data_file(path: Path) -> str:
    """What is at ``path`` when it exists but is neither a file nor a directory to read."""
    if path.is_symlink():
        return "is a symbolic link that loops or points to nothing (ls -l it); point it at a data file"
    return "is not a regular file (a pipe, a socket or a device such as /dev/null): save the data to a file first"


# Data file types by their (last, or last two) suffixes; compressed JSON Lines as a hub download ships it.
READERS = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".jsonl.bz2": "jsonl",
    ".jsonl.xz": "jsonl",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",  # prompts only: one per line
}
SUPPORTED = ", ".join(READERS)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for suffix, kind in READERS.items() if name.endswith(suffix)), None)


def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    kind = _kind(path)
    if kind == "jsonl":
        yield from _iter_jsonl(path)
    elif kind == "json":
        yield from _iter_json(path)
    elif kind == "parquet":
        yield from _iter_parquet(path)
    elif kind in ("csv", "tsv"):
        yield from _iter_csv(path, "\t" if kind == "tsv" else ",")
    elif kind == "text":
        yield from _iter_text(path)
    else:
        raise DataError(str(path), None, None, f"unsupported file type {path.suffix!r}; use {SUPPORTED}")


def _iter_files(files: list[Path], source: str) -> Iterator[tuple[str, Any]]:
    """Every data file in order; a location names the file when there are several."""
    if not files:
        raise DataError(source, None, None, f"no data files ({SUPPORTED}) found")
    for file in files:
        for location, row in _iter_file(file):
            yield (f"{file.name}, {location}" if len(files) > 1 else location), row


def glob_data_files(pattern: str) -> list[Path]:
    import glob  # noqa: PLC0415 - only for patterns

    return sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True) if _kind(Path(p)))


def _shards(directory: Path, split: str) -> list[Path]:
    """The data files of a folder of shards (a hub download: data/train-00000-of-00002.parquet, ...): those
    of ``split`` when the file names say which split they hold, else all of them."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and _kind(p) and not p.name.startswith("."))
    of_split = [
        p for p in files if p.name.startswith(f"{split}-") or p.name.startswith(f"{split}.") or p.parent.name == split
    ]
    return of_split or files


MAX_LINE_CHARS = 64 * 1024 * 1024  # one record; a longer line is refused before it fills memory


def _bounded_lines(handle, path: Path) -> Iterator[str]:
    """The lines of ``handle``, none read past MAX_LINE_CHARS: a binary file or a runaway line is an error
    naming the line, with memory bounded by the limit rather than by the file."""
    number = 0
    while line := handle.readline(MAX_LINE_CHARS + 1):
        number += 1
        if "\x00" in line[:4096]:
            raise DataError(
                str(path), f"line {number}", None, "holds NUL bytes: this looks like a binary file, not text data"
            )
        if len(line) > MAX_LINE_CHARS:
            raise DataError(
                str(path),
                f"line {number}",
                None,
                f"is longer than {MAX_LINE_CHARS // (1024 * 1024)} MiB characters without a line break: one record "
                "per line is expected (JSON Lines); is this the right file?",
            )
        yield line


def _numbered_lines(handle, path: Path) -> Iterator[tuple[int, str]]:
    """(number, line); a compressed file that is damaged or not what its suffix says is a DataError."""
    import lzma  # noqa: PLC0415

    number = 0
    try:
        for number, line in enumerate(_bounded_lines(handle, path), start=1):  # noqa: B007 - names the failing line
            yield number, line
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(
            str(path), f"line {number + 1}", None, f"cannot be read as {path.suffix} text ({type(err).__name__}: {err})"
        ) from None


def not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the first line that is not (text is decoded in blocks, so
    the line being read when decoding failed can lie before it) and how to convert the file."""
    number, byte = _first_undecodable_line(path)
    return DataError(
        str(path),
        f"line {number}" if number else None,
        None,
        f'is not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8 (Excel: "CSV UTF-8"), or convert it: '
        f"iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}",
    )


def _first_undecodable_line(path: Path) -> tuple[int | None, int]:
    """(line number, first bad byte) of the first line that is not valid UTF-8; (None, 0) if none is found."""
    with _opener(path)(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, line[err.start]
    return None, 0


def _iter_text(path: Path) -> Iterator[tuple[str, Any]]:
    """A plain text file of prompts, one per line (blank lines skipped)."""
    with _open_text(path) as handle:
        for number, line in _numbered_lines(handle, path):
            if line.strip():
                yield f"line {number}", {"id": f"line-{number}", "prompt": line.rstrip("\n")}


def _opener(path: Path):
    """The function that opens ``path``: decompressing for .gz, .bz2 and .xz, else the built-in open."""
    import bz2  # noqa: PLC0415
    import gzip  # noqa: PLC0415
    import lzma  # noqa: PLC0415

    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)


def _open_text(path: Path):
    """A text handle, decompressing .gz, .bz2 and .xz."""
    return _opener(path)(path, "rt", encoding="utf-8")


# CSV and TSV cells are text; these columns hold numbers, so a cell that reads as one becomes one.
NUMERIC_COLUMNS = {"label", "weight", "ref_chosen_logps", "ref_rejected_logps", "score_chosen", "score_rejected"}


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    import csv  # noqa: PLC0415

    csv.field_size_limit(64 * 1024 * 1024)  # long replies; the default 128 kB would stop at the first long cell
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            yield from _csv_rows(reader)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except csv.Error as err:
            raise DataError(
                str(path),
                f"line {reader.line_num + 1}",  # the record that failed starts after the lines read so far
                None,
                f"cannot be read as {path.suffix.lstrip('.').upper()} ({err}); a cell over 64 MiB, or a quote "
                "that is never closed, runs to the end of the file",
            ) from None


def _csv_rows(reader: Any) -> Iterator[tuple[str, Any]]:
    """(location, row) of a csv.DictReader; a row with more cells than the header is a broken row."""
    if reader.fieldnames is None:
        return
    for row in reader:
        if None in row:
            yield (
                f"line {reader.line_num}",
                UnreadableRow(f"more cells than the {len(reader.fieldnames)} columns of the header"),
            )
            continue
        yield f"line {reader.line_num}", {key: _csv_value(key, value) for key, value in row.items()}


def _csv_value(column: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    if column in NUMERIC_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return text  # the field's own check names it
    return text


def _looks_like_local_path(source: str) -> bool:
    return is_local_path(source) or _kind(Path(source)) is not None


def _iter_builtin(source: str) -> Iterator[tuple[str, Any]]:
    name = source[len(BUILTIN_PREFIX) :]
    if name not in BUILTIN_FILES:
        raise DataError(source, None, None, f"unknown bundled dataset; choose one of {sorted(BUILTIN_FILES)}")
    resource = resources.files("spreadpref.resources").joinpath(BUILTIN_FILES[name])
    with resources.as_file(resource) as path:
        yield from _iter_jsonl(Path(path))


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as handle:
        for number, line in _numbered_lines(handle, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:
                # A broken line is reported as a row error so skip_invalid can count it.
                yield f"line {number}", UnreadableRow(json_problem(err))
                continue
            yield f"line {number}", row


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with _open_text(path) as handle:
            data = json.loads(handle.read())
    except (ValueError, RecursionError) as err:
        where = f"line {err.lineno}" if isinstance(err, json.JSONDecodeError) else None
        raise DataError(str(path), where, None, json_problem(err)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(str(path), None, None, 'a .json dataset must be a list of records (or {"data": [...]})')
    for index, row in enumerate(data):
        yield f"row {index}", row


def json_problem(err: ValueError | RecursionError) -> str:
    """What is wrong with JSON that Python's parser refused: syntax, nesting depth, or an integer too long."""
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if isinstance(err, RecursionError):
        return "JSON nested too deeply for Python's parser (thousands of levels); flatten or remove that value"
    return f"JSON that Python refuses ({err}); shorten or remove that value"


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            str(path), None, None, f"cannot be read as Parquet ({err}); is it a Parquet file? The suffix says so"
        ) from None
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index}", row


def _iter_saved_dataset(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(str(path), None, None, f"not a `save_to_disk` dataset directory ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(str(path), None, None, f"split {split!r} not found; available: {sorted(loaded)}")
        loaded = loaded[split]
    for index, row in enumerate(loaded):
        yield f"row {index}", row


def _iter_hub(name: str, split: str, subset: str | None) -> Iterator[tuple[str, Any]]:
    try:
        loaded = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # network, missing dataset, missing split: all need the same advice
        raise DataError(
            name, None, None, f"could not load it as a local file or a hub dataset ({type(err).__name__}: {err})"
        ) from None
    for index, row in enumerate(loaded):
        yield f"row {index}", row


@dataclass
class UnreadableRow:
    reason: str
