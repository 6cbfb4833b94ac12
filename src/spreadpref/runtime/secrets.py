"""Secrets never reach the screen or a log: any message can be passed through :func:`redact` first.

The values masked are those spreadpref was handed (an API key it read: :func:`register_secret`) and any
environment variable whose name says it is a secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``),
whatever echoes them back: a server quoting the request in an error body, a library's exception text.
"""

from __future__ import annotations

import os
import re

MASK = "***"
MIN_LENGTH = 8  # shorter values would mask ordinary words
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """A value to mask from now on (an API key read from the variable the config names)."""
    if value and len(value) >= MIN_LENGTH:
        _registered.add(value)


def secret_values() -> list[str]:
    """Every value to mask, longest first (a key that contains another is masked whole)."""
    from_environment = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_LENGTH}
    return sorted(_registered | from_environment, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret value replaced by ***."""
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text
