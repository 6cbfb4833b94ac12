"""The module paths of spreadpref 0.1, kept importable for one release (they warn when imported).

0.2 arranged the modules in subpackages that name the layers of the method (see
docs/architecture.md). ``import spreadpref.loop`` still works and gives the module that moved,
the same object, so monkeypatching an old path patches the new module too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "spreadpref.io": "spreadpref.runtime.files",
    "spreadpref.manifest": "spreadpref.runtime.manifest",
    "spreadpref.distributed": "spreadpref.runtime.distributed",
    "spreadpref.progress": "spreadpref.runtime.progress",
    "spreadpref.tokenize": "spreadpref.data.tokenize",
    "spreadpref.inspect_data": "spreadpref.data.inspect",
    "spreadpref.generate": "spreadpref.models.sampling",
    "spreadpref.vllm_backend": "spreadpref.models.vllm_backend",
    "spreadpref.loss": "spreadpref.dpo.loss",
    "spreadpref.logprobs": "spreadpref.dpo.logprobs",
    "spreadpref.refine": "spreadpref.dpo.refine",
    "spreadpref.trainer": "spreadpref.dpo.trainer",
    "spreadpref.train": "spreadpref.dpo.train",
    "spreadpref.verifier": "spreadpref.judges.verifier",
    "spreadpref.judge": "spreadpref.spa.judge",
    "spreadpref.loop": "spreadpref.spa.loop",
    "spreadpref.schedule": "spreadpref.spa.schedule",
    "spreadpref.evaluate": "spreadpref.eval.evaluate",
    "spreadpref.report": "spreadpref.eval.report",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module that now lives elsewhere."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - the import protocol's signature
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes away in the next release", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module was executed when it was imported under its new name

    def get_code(self, fullname: str):  # noqa: ANN201 - for `python -m <old path>`, which runs the new module
        new = importlib.util.find_spec(MOVED[fullname])
        return new.loader.get_code(new.name)


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
