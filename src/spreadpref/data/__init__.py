"""What flows into and through the pipeline: input records, their loading and tokenisation, and the
typed artifacts that the stages write (samples, judged samples, pairs).

- :mod:`~spreadpref.data.records`: the canonical preference pair and prompt.
- :mod:`~spreadpref.data.sources`: rows from files of every format, hub datasets, save_to_disk and bundled sets.
- :mod:`~spreadpref.data.loading`: rows to validated records (conversations, implicit prompts, labels).
- :mod:`~spreadpref.data.tokenize`: records to token ids through the chat template.
- :mod:`~spreadpref.data.artifacts`: the rows of generations.jsonl, judged.jsonl and pairs.jsonl.
- :mod:`~spreadpref.data.inspect`: ``spreadpref inspect``.
"""

from spreadpref.data.loading import (
    load_preferences,
    load_prompts,
    load_training_preferences,
)
from spreadpref.data.records import LoadReport, Message, PreferenceRecord, PromptRecord
from spreadpref.data.sources import iter_rows

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
