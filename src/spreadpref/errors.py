"""Errors that the command line turns into a one-paragraph message instead of a traceback."""

from __future__ import annotations


class SpreadprefError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class ConfigError(SpreadprefError):
    pass


class DataError(SpreadprefError):
    """A bad record, named by its source, its line or row, and the field."""

    def __init__(self, source: str, location: str | None, field: str | None, message: str):
        self.source = source
        self.location = location
        self.field = field
        self.reason = message
        where = source if location is None else f"{source}, {location}"
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{message}")


class TokenizationError(SpreadprefError):
    pass


class ModelLoadError(SpreadprefError):
    pass


class TrainingError(SpreadprefError):
    pass


class JudgeError(SpreadprefError):
    pass
