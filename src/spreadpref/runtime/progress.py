"""Rich progress bars, shared by every stage so they look the same and can be switched off."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
# Under `accelerate launch` only the main process talks; the others stay quiet.
console = Console(stderr=True, quiet=os.environ.get("RANK", "0") not in ("", "0"))
error_console = Console(stderr=True)  # errors are shown by every process


def verbose() -> bool:
    """``--verbose`` or SPREADPREF_VERBOSE=1: the libraries' own bars and the Trainer's per-step dicts on screen too."""
    return os.environ.get("SPREADPREF_VERBOSE", "").strip().lower() in {"1", "true", "yes"}


def progress_enabled() -> bool:
    # Under `accelerate launch` only the main process draws bars.
    if os.environ.get("RANK", "0") not in ("", "0"):
        return False
    return os.environ.get("SPREADPREF_NO_PROGRESS", "") in ("", "0")


def make_progress(transient: bool = True) -> Progress:
    """A bar that vanishes when done (``transient``): a stage keeps one live display, then prints its result."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
    )


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    if not enabled or not progress_enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def quiet_pipeline() -> Iterator[None]:
    """No stage headings, results or bars while inside (a caller that reports the work in its own words)."""
    previous_quiet, previous_env = console.quiet, os.environ.get("SPREADPREF_NO_PROGRESS")
    console.quiet, os.environ["SPREADPREF_NO_PROGRESS"] = True, "1"
    try:
        yield
    finally:
        console.quiet = previous_quiet
        if previous_env is None:
            del os.environ["SPREADPREF_NO_PROGRESS"]
        else:
            os.environ["SPREADPREF_NO_PROGRESS"] = previous_env


def status(message: str):
    """A spinner for a step that has no natural count (loading, converting)."""
    if not progress_enabled():
        return nullcontext()
    return console.status(message)


def format_cell(value: Any, spec: str = ".3f") -> str:
    """One table cell, alike in the round table, report.md and the benchmarks: numbers by ``spec``, missing as "–"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, float) else str(value)
