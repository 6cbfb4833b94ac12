"""Data sanity checks: records that load fine but are probably not what the user meant.

Counted (never dropped), written to the manifest under ``data.warnings`` and printed once per stage:
replies that contain another turn's role markers (a transcript pasted into a reply), replies that
repeat the prompt, pairs whose chosen and rejected replies are the same text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from spreadpref.data.records import PreferenceRecord
from spreadpref.runtime.progress import console

ROLE_MARKERS = re.compile(
    r"(^|\n)\s*(Human:|Assistant:|User:|USER:|ASSISTANT:|### Instruction|### Response)|<\|im_start\|>|\[INST\]|<\|user\|>|<\|assistant\|>"
)
MIN_REPEAT_CHARS = 20  # a short prompt ("Hi") legitimately starts many replies


def sanity_counts(records: Sequence[PreferenceRecord]) -> dict[str, int]:
    counts = {"replies_with_role_markers": 0, "replies_repeating_the_prompt": 0, "chosen_equals_rejected": 0}
    for record in records:
        prompt = record.prompt[-1]["content"].strip() if record.prompt else ""
        for reply in (record.chosen, record.rejected):
            if ROLE_MARKERS.search(reply):
                counts["replies_with_role_markers"] += 1
            if len(prompt) >= MIN_REPEAT_CHARS and reply.strip().startswith(prompt):
                counts["replies_repeating_the_prompt"] += 1
        if record.chosen.strip() == record.rejected.strip() and record.token_ids is None:
            counts["chosen_equals_rejected"] += 1
    return counts


ADVICE = {
    "replies_with_role_markers": "replies contain role markers of another turn (Human:, <|im_start|>, [INST], ...): "
    "is a whole transcript in the reply column? Map the columns, or let spreadpref parse HH-RLHF transcripts",
    "replies_repeating_the_prompt": "replies start by repeating the prompt: were prompt and reply concatenated?",
    "chosen_equals_rejected": "pairs have the same chosen and rejected text: they teach nothing",
}


def describe(counts: dict[str, int], total: int) -> list[str]:
    """One line per check that found something, with the count and what to look at."""
    return [f"{count} of {total} {ADVICE[name]}" for name, count in counts.items() if count]


def check_records(records: Sequence[PreferenceRecord], source: str) -> dict[str, int]:
    """Count the suspicious records, say what was found once, and return the counts (for the manifest)."""
    counts = sanity_counts(records)
    for line in describe(counts, len(records)):
        console.print(f"[yellow]Data check ({source}):[/] {line}")
    return counts
