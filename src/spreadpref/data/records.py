"""The canonical input records: a preference pair and a prompt, as chat messages.

Every input row becomes a :class:`PreferenceRecord` or a :class:`PromptRecord` (see
:mod:`spreadpref.data.loading`); :class:`LoadReport` counts what was read, kept and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = {"system", "user", "assistant"}


Message = dict[str, str]


@dataclass
class PreferenceRecord:
    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    label: float = 1.0
    weight: float = 1.0
    # A reply cut off at a generation limit: it must not be taught to end with EOS.
    chosen_truncated: bool = False
    rejected_truncated: bool = False
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    # Token ids (prompt_ids, chosen_ids, rejected_ids) when the data was made in token space, e.g.
    # by `spreadpref judge`: used as they are, never re-tokenised from the text.
    token_ids: dict[str, list[int]] | None = None


TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class PromptRecord:
    id: str
    prompt: list[Message]
    # The row's other columns, e.g. IFEval-style constraints (instruction_id_list, kwargs) for the verifier.
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    source: str
    rows_read: int = 0
    kept: int = 0
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    score_ties_dropped: int = 0  # data.scores=drop_ties: rows whose two scores were equal
    ignored_columns: list[str] = field(default_factory=list)
    metadata_columns: list[str] = field(default_factory=list)  # prompts: extra columns kept for the judges

    def summary(self) -> str:
        text = f"{self.source}: {self.kept} of {self.rows_read} records kept"
        if self.skipped:
            text += f", {self.skipped} skipped as invalid"
        if self.score_ties_dropped:
            text += f", {self.score_ties_dropped} dropped as score ties (data.scores=drop_ties)"
        if self.ignored_columns:
            text += f"; columns not used: {', '.join(self.ignored_columns)}"
        if self.metadata_columns:
            text += f"; columns kept for the judges (e.g. the verifier): {', '.join(self.metadata_columns)}"
        return text
