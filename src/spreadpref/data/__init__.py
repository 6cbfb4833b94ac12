"""What flows into and through the pipeline: input records, their loading and tokenisation, and the
typed artifacts that the stages write (samples, judged samples, pairs).

- :mod:`~spreadpref.data.records`: the canonical preference pair and prompt.
- :mod:`~spreadpref.data.loading`: files, directories, hub datasets and bundled resources to records.
- :mod:`~spreadpref.data.tokenize`: records to token ids through the chat template.
- :mod:`~spreadpref.data.artifacts`: the rows of generations.jsonl, judged.jsonl and pairs.jsonl.
- :mod:`~spreadpref.data.inspect`: ``spreadpref inspect``.
"""

from spreadpref.data.loading import (
    iter_rows,
    load_preferences,
    load_prompts,
    load_training_preferences,
)
from spreadpref.data.records import LoadReport, Message, PreferenceRecord, PromptRecord

__all__ = [
    "LoadReport",
    "Message",
    "PreferenceRecord",
    "PromptRecord",
    "iter_rows",
    "load_preferences",
    "load_prompts",
    "load_training_preferences",
]
