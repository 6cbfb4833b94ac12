"""Folders of the repository that tests import from (scripts and benchmarks are not packages)."""

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script or benchmark file as module ``name`` (they are run as files, not imported as packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
