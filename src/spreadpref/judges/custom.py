"""Your own judge: ``judge.custom.factory = "package.module:callable"`` returns a :class:`Judge`.

The factory is imported and called with ``judge.custom.kwargs``. It is how the synthetic gold world
(:mod:`spreadpref.sandbox.world`) plugs its hidden reward into the real loop, and how a user brings a
judge spreadpref does not ship (a heuristic, a remote service with its own client, a unit-test oracle).
"""

from __future__ import annotations

import importlib
from typing import Any

from spreadpref.errors import JudgeError
from spreadpref.judges.base import Judge


def import_factory(spec: str):
    """The object ``package.module:attribute`` names, or a JudgeError that says what is wrong."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise JudgeError(f"judge.custom.factory={spec!r}: write it as package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise JudgeError(
            f"judge.custom.factory={spec!r}: cannot import {module_name!r} ({err}); is it installed or on PYTHONPATH?"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise JudgeError(f"judge.custom.factory={spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise JudgeError(f"judge.custom.factory={spec!r} is not callable")
    return target


def custom_judge(spec: str, kwargs: dict[str, Any]) -> Judge:
    """Call the factory ``spec`` names with ``kwargs``; the result must be a :class:`Judge`."""
    factory = import_factory(spec)
    try:
        judge = factory(**kwargs)
    except TypeError as err:
        raise JudgeError(f"judge.custom.factory={spec!r} refused judge.custom.kwargs {sorted(kwargs)}: {err}") from None
    if not isinstance(judge, Judge):
        raise JudgeError(
            f"judge.custom.factory={spec!r} returned a {type(judge).__name__}, not a spreadpref.judges.Judge "
            "(subclass it and implement judge(comparisons))"
        )
    return judge
