"""A model card (README.md) in every model directory spreadpref saves: what it was trained from, on what,
how, with which results, and how to load it. Hub conventions: YAML front matter, then Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spreadpref.config import EMBEDDED_MODEL, Config
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_text, is_local_path

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was converted from


def base_model_id(config: Config, start_model: str | None = None) -> str:
    """The base model as others can find it: the hub id of the embedded model, a hub id as given, a local path
    as given (the card then says so)."""
    name = start_model or config.model.name_or_path
    if name == EMBEDDED_MODEL or name.lower().startswith("embedded"):
        return EMBEDDED_HUB_ID
    return name


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not is_local_path(name)


def model_card(config: Config, metrics: dict[str, Any], stage: str, start_model: str | None = None) -> str:
    base = base_model_id(config)  # the model the run started from (pi_init); a round starts from pi_{i-1}
    front = ["---", "library_name: transformers", "tags:", "- spreadpref", "- dpo", "- spa"]
    if _looks_like_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    shown = {
        key: metrics[key]
        for key in (
            "train_loss",
            "global_steps",
            "final/rewards_accuracy",
            "final/rewards_margins",
            "smoothed_fraction",
        )
        if metrics.get(key) is not None
    }
    settings = {
        "beta": config.train.beta,
        "learning_rate": metrics.get("learning_rate", config.train.learning_rate),  # a round's own, if it has one
        "epochs": metrics.get("epochs", config.train.num_epochs),
        "effective batch (per device x accumulation x processes)": config.train.per_device_batch_size
        * config.train.gradient_accumulation_steps
        * distributed.world_size(),
        "processes": distributed.world_size(),
        "label_smoothing": config.train.label_smoothing,
        "lora": config.model.lora.enabled,
        "dtype": config.model.dtype,
        "seed": config.seed,
    }
    lines = [
        *front,
        "",
        f"# {stage}: DPO with spreadpref",
        "",
        f"Fine-tuned from **{base}**{'' if _looks_like_hub_id(base) else ' (a local model)'} with spreadpref: "
        + (
            f"a round of Spread Preference Annotation, DPO on pairs the model labelled itself, starting from {start_model}."
            if stage.startswith("round")
            else "DPO on labelled preference pairs."
        ),
        "",
        f"- Data: {data_line(config, stage)}",
        *([f"- Judge: {judge_line(config, stage)}"] if stage.startswith("round") else []),
        f"- Settings: {json.dumps(settings)}",
        f"- Metrics: {json.dumps(shown) if shown else 'none recorded'}",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'path = "<this directory or its hub id>"',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        f"messages = {usage_messages(config)}",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', return_dict=True)",
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        "```",
        "",
    ]
    return "\n".join(lines)


def data_line(config: Config, stage: str) -> str:
    """What the stage trained on: the seed pairs, or a round's prompts and the seed pairs it replayed."""
    if not stage.startswith("round"):
        return f"`{config.data.train}` (labelled pairs)"
    line = f"self-labelled pairs on prompts of `{config.data.prompts}`"
    if config.loop.replay_fraction > 0:
        line += f", with seed pairs of `{config.data.train}` replayed (loop.replay_fraction={config.loop.replay_fraction:g})"
    return line


def usage_messages(config: Config) -> str:
    """The usage snippet's messages: with the system prompt the model was trained with, when there is one."""
    messages = [{"role": "user", "content": "Hello!"}]
    if config.data.system_prompt:
        messages.insert(0, {"role": "system", "content": config.data.system_prompt})
    return json.dumps(messages, ensure_ascii=False)


def judge_line(config: Config, stage: str) -> str:
    """Who labelled a round's pairs: the implicit reward's policy and reference (the base model, when the judge
    is set against it), or the external judge."""
    index = int(stage.removeprefix("round-")) if stage.removeprefix("round-").isdigit() else 1
    judged_by = config.judge.describe(index)
    return f"implicit reward, {judged_by}" if config.judge.kind == "implicit" else f"the {judged_by} judge"


HELD_OUT_LINE = "- Held-out agreement"


def add_held_out_figure(directory: Path, figure: str, pairs: int) -> None:
    """Add (or replace) the model's held-out agreement in its card, once the run measured it (after training)."""
    card = Path(directory) / "README.md"
    if not card.is_file():
        return
    line = (
        f"{HELD_OUT_LINE} (its implicit reward against π_init preferring the human-chosen reply of {pairs} seed "
        f"pairs held out from training, 95% interval): {figure}"
    )
    lines = [existing for existing in card.read_text().splitlines() if not existing.startswith(HELD_OUT_LINE)]
    at = next((i + 1 for i, existing in enumerate(lines) if existing.startswith("- Metrics:")), len(lines))
    atomic_write_text(card, "\n".join([*lines[:at], line, *lines[at:]]) + "\n")


def write_model_card(
    directory: Path, config: Config, metrics: dict[str, Any], stage: str, start_model: str | None = None
) -> None:
    if Path(directory).is_dir():
        atomic_write_text(Path(directory) / "README.md", model_card(config, metrics, stage, start_model))


def record_adapter_base(directory: Path, config: Config, start_model: str | None = None) -> None:
    """In a saved LoRA adapter, name the base model by its hub id when known, not a local cache path."""
    adapter_config = Path(directory) / "adapter_config.json"
    if not adapter_config.is_file():
        return
    data = json.loads(adapter_config.read_text())
    base = base_model_id(config, start_model)
    if _looks_like_hub_id(base) and data.get("base_model_name_or_path") != base and not start_model:
        data["base_model_name_or_path"] = base
        atomic_write_text(adapter_config, json.dumps(data, indent=2) + "\n")
