"""spreadpref: Spread Preference Annotation (SPA) for aligning language models from a small seed of human labels.

The public API: :func:`run` (the SPA loop), :func:`train_policy` (one DPO stage), :func:`load_config`
and :class:`Config`, and :func:`soft_dpo_loss`. The layers are described in docs/architecture.md.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from spreadpref.config import Config, load_config
from spreadpref.dpo.loss import soft_dpo_loss

__version__ = "0.1.0"


Rows = Iterable[dict[str, Any]]  # a list of dicts, a datasets.Dataset, any iterable of records


def with_data(config: Config, field: str, rows: Rows) -> Config:
    """``config`` with ``data.<field>`` set to in-memory rows, written once to a file named by their content
    (so a resumed run finds them, and other rows are another configuration)."""
    from spreadpref.models.loading import cache_root  # noqa: PLC0415 - torch loads with it
    from spreadpref.runtime.files import atomic_write_text  # noqa: PLC0415

    text = "".join(
        json.dumps(_as_row(row, field, i), ensure_ascii=False, default=str) + "\n" for i, row in enumerate(rows)
    )
    path = cache_root() / "inline-data" / f"{field}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        atomic_write_text(path, text)
    return config.model_copy(update={"data": config.data.model_copy(update={field: str(path)})})


def _as_row(row: Any, field: str, index: int) -> dict[str, Any]:
    """One in-memory record as a dict: a prompt may be a plain string; anything else must be a mapping."""
    if isinstance(row, str) and field == "prompts":
        return {"prompt": row}
    if isinstance(row, Mapping):
        return dict(row)
    from spreadpref.errors import DataError  # noqa: PLC0415

    expected = "a string or a dict with a 'prompt'" if field == "prompts" else "a dict with prompt, chosen, rejected"
    raise DataError(
        f"{field}=[...] (in memory)", f"item {index}", None, f"is a {type(row).__name__}; expected {expected}"
    )


def train_policy(config: Config, force: bool = False, *, train: Rows | None = None):
    """Run the train stage (DPO on ``config.data.train``, or on ``train`` rows given here); see
    :mod:`spreadpref.dpo.train`."""
    # Deferred: importing transformers' Trainer costs seconds, and `import spreadpref` should not.
    from spreadpref.dpo.train import train_policy as _train_policy  # noqa: PLC0415

    if train is not None:
        config = with_data(config, "train", train)
    return _train_policy(config, force=force)


def run(config: Config, force: bool = False, *, train: Rows | None = None, prompts: Rows | None = None):
    """Run SPA end to end: seed DPO, then ``config.loop.rounds`` rounds; see :mod:`spreadpref.spa.loop`.

    ``train`` (seed pairs) and ``prompts`` may be given in memory, as a list of dicts or a ``datasets.Dataset``
    in any format ``data.train`` / ``data.prompts`` accept (prompts also as plain strings); they replace those
    settings.
    """
    from spreadpref.spa.loop import run as _run  # noqa: PLC0415 - deferred, as above

    if train is not None:
        config = with_data(config, "train", train)
    if prompts is not None:
        config = with_data(config, "prompts", prompts)
    return _run(config, force=force)


__all__ = ["run", "Config", "load_config", "soft_dpo_loss", "train_policy", "__version__"]
