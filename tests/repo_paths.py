"""Folders of the repository that tests import from (scripts and benchmarks are not packages)."""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
BENCHMARKS = ROOT / "benchmarks"


@contextlib.contextmanager
def on_path(folder: Path) -> Iterator[None]:
    """Import modules from ``folder`` for the duration of the block."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
