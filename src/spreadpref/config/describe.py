"""Describing configurations: every setting by its dotted key, what changed between two, the checks that
need the installed libraries, and the generated reference page (docs/configuration.md)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
)

from spreadpref.config.loading import _section_type, _short_repr, _type_name, load_config
from spreadpref.config.schema import Config
from spreadpref.errors import ConfigError, SpreadprefError


def flat_settings(config: Config) -> dict[str, Any]:
    """Every setting of ``config`` by its dotted key (``train.beta``; a dict setting by its own keys), as JSON."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    return flat(config.model_dump(mode="json"))


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ between two configurations (output_dir aside), for messages."""
    a, b = flat_settings(old), flat_settings(new)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k != "output_dir" and a.get(k) != b.get(k)
    ]


def describe_changes(saved_config: Path, new: Config, limit: int = 8) -> str:
    """' Changed since: a -> b, ...' against the config.yaml a run saved, or '' when it cannot be read."""
    try:
        old = load_config(saved_config)
    except SpreadprefError:
        return ""
    changes = changed_keys(old, new)
    if not changes:
        return ""
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return f" Changed since that run: {'; '.join(_short_repr(c, 120) for c in changes[:limit])}{more}."


def check_library_settings(config: Config) -> None:
    """Settings that transformers checks only after the model has loaded, checked before: the scheduler,
    the optimizer and the report_to integrations. Deferred import: `spreadpref config` must stay instant."""
    from transformers.integrations import get_available_reporting_integrations  # noqa: PLC0415
    from transformers.trainer_utils import SchedulerType  # noqa: PLC0415
    from transformers.training_args import OptimizerNames  # noqa: PLC0415

    train = config.train
    schedulers = [s.value for s in SchedulerType]
    if train.lr_scheduler not in schedulers:
        raise ConfigError(f"train.lr_scheduler={train.lr_scheduler!r} is not a scheduler: use one of {schedulers}")
    optimizers = [o.value for o in OptimizerNames]
    if train.optimizer not in optimizers:
        close = difflib.get_close_matches(train.optimizer, optimizers, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"one of {optimizers}"
        raise ConfigError(f"train.optimizer={train.optimizer!r} is not an optimizer transformers knows: {hint}")
    wanted = [r for r in train.report_to if r not in ("none", "all")]
    available = get_available_reporting_integrations()
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ConfigError(
            f"train.report_to={train.report_to}: {', '.join(missing)} is not installed here (installed: "
            f"{', '.join(available) or 'none'}). Install it (pip install {' '.join(missing)}) or set "
            "train.report_to=none."
        )


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the schema itself."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema by `spreadpref config --reference`; do not edit by hand.",
        "Every key can be set in the YAML file or on the command line as `section.key=value`.",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        subsections = []
        for name, info in model.model_fields.items():
            sub = _section_type(info.annotation)
            if sub is not None:
                subsections.append((name, sub))
                continue
            default = info.get_default(call_default_factory=True)
            note = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | `{_type_name(info.annotation)}` | `{default!r}` | {note} |")
        if rows:
            title = prefix.rstrip(".") or "top level"
            doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ and model is not Config else ""
            lines.extend([f"## {title}", ""] + ([doc, ""] if doc else []))
            lines.extend(["| key | type | default | notes |", "|---|---|---|---|", *rows, ""])
        for name, sub in subsections:
            walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return "\n".join(lines)
