"""Loading a configuration: the schema's defaults, a YAML file (or a shipped profile by name), then dotted
command-line overrides converted to each field's declared type; unknown keys refused with the nearest valid
one (or the spreadpref key of a TRL one)."""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    TypeAdapter,
    ValidationError,
)

from spreadpref.config.schema import Config
from spreadpref.errors import ConfigError

DEFAULT_PROFILE = "spa-cpu"  # the shipped config the command line uses without --config


def shipped_configs_dir() -> Path:
    """Where the package keeps its configs (the repository's configs/ links to it)."""
    from importlib import resources  # noqa: PLC0415 - only when a config is looked up by name

    return Path(str(resources.files("spreadpref").joinpath("configs")))


def shipped_config(name: str) -> Path | None:
    """A config shipped with the package, by name (``spa-cpu``, ``zephyr-7b-spa.yaml``, ``configs/spa-cpu.yaml``)."""
    stem = Path(name).name
    candidate = shipped_configs_dir() / (stem if stem.endswith(".yaml") else f"{stem}.yaml")
    return candidate if candidate.is_file() else None


def default_profile_path() -> Path:
    """The bundled CPU profile on the embedded model: what ``spreadpref run`` uses without ``--config``."""
    return shipped_configs_dir() / f"{DEFAULT_PROFILE}.yaml"


def shipped_config_names() -> list[str]:
    """The names of the configs shipped with the package, for ``load_config(name)`` and ``--config NAME``."""
    return sorted(p.stem for p in shipped_configs_dir().glob("*.yaml"))


def load_config(
    path: str | Path | None = DEFAULT_PROFILE, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """The configuration, as the command line builds it: the schema's defaults, a YAML file, then
    ``dotted.key=value`` overrides.

    ``path``: a YAML file, or the name of a config shipped with the package (``"spa-cpu"``,
    ``"zephyr-7b-spa"``; ``"configs/seed-cpu.yaml"`` also works outside the repository) when no such file
    exists here. Left out, the bundled CPU profile on the embedded model (the command line's default);
    ``None``, the schema's bare defaults. ``overrides``: ``["train.beta=0.2"]`` or a dict
    (``{"train.beta": 0.2}`` or nested sections).
    """
    raw: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        resolved = Path(path)
        if not resolved.is_file() and (shipped := shipped_config(str(path))) is not None:
            resolved = shipped
        source = str(resolved)
        raw = _read_yaml(resolved)
    if isinstance(overrides, dict):
        overrides = _dict_overrides(overrides)
    for item in overrides or []:
        key, value = _split_override(item)
        _set_override(raw, key, value)
    check_unknown_keys(raw, Config)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe_validation_error(err, source)) from None


MAX_YAML_VALUES = 100_000  # a config has hundreds; nested aliases can expand a ten-line file to billions


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (computed once per node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once; the loader refuses recursion anyway
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_YAML_VALUES + 1)
    return sizes[id(node)]


def _dict_overrides(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"beta": 0.2}, "loop.rounds": 1}`` -> ``["train.beta=0.2", "loop.rounds=1"]`` (YAML values)."""
    items = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and _is_section_path(dotted):
            items += _dict_overrides(value, f"{dotted}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            items.append(f"{dotted}={text.removesuffix('...').strip()}")
    return items


def _is_section_path(dotted: str) -> bool:
    model: type[BaseModel] | None = Config
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _section_type(model.model_fields[part].annotation)
    return model is not None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} (shipped configs, by name: {', '.join(shipped_config_names())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root, {}) > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values; a configuration needs "
                "a few hundred. Write the values out, or use fewer nested aliases."
            )
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_short_repr(str(err), 500)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.beta=0.1)")
    key, value = item.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key, value


def _set_override(raw: dict[str, Any], dotted: str, text: str) -> None:
    """Place an override into the raw dict, converted to the type its field declares."""
    parts = dotted.split(".")
    model: type[BaseModel] = Config
    node = raw
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), part, list(fields)))
        annotation = fields[part].annotation
        if depth == len(parts) - 1:
            node[part] = _convert_override(dotted, text, annotation)
            return
        sub = _section_type(annotation)
        if sub is None:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        model = sub
        existing = node.get(part)
        if not isinstance(existing, dict):
            existing = {}
            node[part] = existing
        node = existing


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _convert_override(dotted: str, text: str, annotation: Any) -> Any:
    """Turn the command-line string into the field's type: floats stay floats, lists parse as YAML."""
    adapter = TypeAdapter(annotation)
    stripped = text.strip()
    allows_none = _allows_none(annotation)
    if allows_none and stripped.lower() in {"null", "none", "~", ""}:
        return None
    candidates: list[Any] = [stripped]
    try:
        parsed = yaml.safe_load(stripped)
    except yaml.YAMLError:
        parsed = None
    else:
        # `[a,b]` is a list wherever a list is allowed, even where a plain string would also be (lora.target_modules).
        if isinstance(parsed, list | dict):
            candidates.insert(0, parsed)
        else:
            candidates.append(parsed)
        if _accepts_list(annotation) and not isinstance(parsed, list | dict) and parsed is not None:
            candidates.append([parsed])  # one value for a list key: a list of one (train.report_to=tensorboard)
    errors = []
    for candidate in candidates:
        try:
            value = adapter.validate_python(candidate)
        except ValidationError as err:
            errors.append(err)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"override {dotted}={text!r}: must be a finite number")
        return value
    detail = errors[-1].errors()[0]["msg"] if errors else "cannot parse"
    raise ConfigError(f"override {dotted}={text!r}: {detail} (expected {_type_name(annotation)})")


def _accepts_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(
        _accepts_list(arg)
        for arg in typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
    )


def _allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is type(None)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " / ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is Annotated:  # a constrained type (Annotated[int, Field(gt=0)]): its base type's name
        return _type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# TRL's and transformers' argument names that users bring by habit (flat YAML keys, script flags), and
# spreadpref's key for each; the command line's flag hints are built from the same table.
TRL_KEYS = {
    "model_name_or_path": "model.name_or_path",
    "dataset_name": "data.train",
    "dataset_config": "data.subset",
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "beta": "train.beta",
    "label_smoothing": "train.label_smoothing",
    "max_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length",
    "bf16": "model.dtype",
    "report_to": "train.report_to",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup_ratio": "train.warmup_ratio",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "use_peft": "model.lora.enabled",
    "lora_r": "model.lora.r",
    "lora_alpha": "model.lora.alpha",
    "output_dir": "output_dir",
    "seed": "seed",
    "push_to_hub": "hub.push",
    "hub_model_id": "hub.model_id",
    "hub_private_repo": "hub.private",
}


def check_unknown_keys(raw: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Reject keys the schema does not know, naming the closest valid one (or the spreadpref key of a TRL one)."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    trl_keys = [str(key) for key in raw if not prefix and key not in fields and key in TRL_KEYS]
    if trl_keys:
        mapped = "; ".join(f"{key} -> {TRL_KEYS[key]}" for key in trl_keys)
        raise ConfigError(
            f"{', '.join(repr(k) for k in trl_keys)} {'is a TRL key' if len(trl_keys) == 1 else 'are TRL keys'}: "
            f"spreadpref's config is nested by section ({mapped}). For example, `learning_rate: 5e-7` at the "
            "top becomes `train:\n  learning_rate: 5e-7` (`spreadpref config --reference` lists every key)."
        )
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(dotted, str(key), list(fields)))
        sub = _section_type(fields[key].annotation)
        if sub is not None:
            check_unknown_keys(value, sub, prefix=f"{dotted}.")


def _unknown_key_message(dotted: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {dotted!r}{hint} Valid keys here: {', '.join(sorted(valid))}"


def _describe_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration (from {source}):"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        got = item.get("input")
        shown = f" (got {_short_repr(got)})" if not isinstance(got, dict | list) else ""
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
