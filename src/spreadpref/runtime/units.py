"""The resumable unit engine that every stage's guarantee rests on.

A stage's work is a list of units (a batch of prompts, a chunk of samples). Each finished unit is
saved as its own part file; a killed run keeps every finished part and the next run skips them, so
at most the unit in flight is redone. When all units are done the parts are merged into the stage's
file in one atomic write.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from spreadpref.runtime import distributed
from spreadpref.runtime.files import write_jsonl
from spreadpref.runtime.progress import track

U = TypeVar("U")
R = TypeVar("R", bound="Record")


class Record(Protocol):
    """A row type the engine can store: a JSON object out, a checked record back."""

    def to_row(self) -> dict[str, Any]: ...

    @classmethod
    def from_row(cls: type[R], row: Any, source: str = ..., location: str | None = ...) -> R: ...

    @classmethod
    def read(cls: type[R], path: Path) -> list[R]: ...


def parts_directory(final: Path) -> Path:
    """Where the finished units of ``final`` wait before they are merged (a stage's own temporary)."""
    return final.parent / f".{final.name}.parts"


def run_in_parts(
    final: Path,
    units: Sequence[U],
    process: Callable[[int, U], list[R]],
    record: type[R],
    description: str,
    order: Callable[[R], Any] | None = None,
) -> list[R]:
    """Process ``units`` one by one, each result saved as its own part, then merged into ``final``.

    A killed run keeps every finished part; the next run skips them, so at most the unit in flight
    is redone. ``process(index, unit)`` returns records of type ``record`` and must be deterministic
    given its index (seed it from it). ``order`` is a sort key for the merged records. Under
    ``accelerate launch`` the units are shared out by index (see
    :func:`spreadpref.runtime.distributed.my_units`) and the main process merges, so the result is
    the same for any number of processes.
    """
    final = Path(final)
    if final.is_file():
        return record.read(final)
    parts = parts_directory(final)
    parts.mkdir(parents=True, exist_ok=True)
    mine = distributed.my_units(len(units))
    for index in track(mine, description):
        part = parts / f"{index:06d}.jsonl"
        if part.is_file():
            continue
        write_jsonl(part, [item.to_row() for item in process(index, units[index])])
        _fault_injection_delay()
    distributed.barrier()
    if distributed.is_main():
        merged = [item for index in range(len(units)) for item in record.read(parts / f"{index:06d}.jsonl")]
        if order is not None:
            merged.sort(key=order)
        write_jsonl(final, [item.to_row() for item in merged])
        shutil.rmtree(parts, ignore_errors=True)
    distributed.barrier()
    return record.read(final)


def _fault_injection_delay() -> None:
    """``SPREADPREF_UNIT_DELAY=<seconds>`` pauses after each finished unit of resumable work.

    Only for fault tests: it widens the window in which a test can kill a run mid-stage.
    """
    delay = os.environ.get("SPREADPREF_UNIT_DELAY")
    if delay:
        time.sleep(float(delay))
