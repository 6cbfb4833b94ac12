"""Plain helpers the tests share (files of pairs, the overrides of a quick train or loop on the tiny model).

Fixtures live in conftest.py; test files import these helpers, never each other.
"""

import json
from pathlib import Path


def unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps a long path mid-word at the console's width."""
    return "".join(text.split())


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def arithmetic_pairs(n: int = 16):
    """Pairs where the chosen reply is right and short, the rejected one evasive."""
    return [
        {
            "id": f"pair-{i}",
            "prompt": f"What is {i} plus {i}?",
            "chosen": f"{i} plus {i} is {2 * i}.",
            "rejected": "I am not sure. Maybe the fox knows.",
        }
        for i in range(n)
    ]


def tiny_train_overrides(model_dir, data, out, *extra) -> list[str]:
    """Overrides of a quick `spreadpref train` on the tiny model (the API takes them as they are)."""
    return [
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        f"output_dir={out}",
        "train.max_steps=1",
        "data.max_length=64",
        "data.max_prompt_length=32",
        *extra,
    ]


def loop_overrides(model_dir, seed_file, prompts_file, out):
    return [
        f"model.name_or_path={model_dir}",
        f"data.train={seed_file}",
        f"data.prompts={prompts_file}",
        f"output_dir={out}",
        "data.max_length=96",
        "data.max_prompt_length=48",
        "train.learning_rate=1e-3",
        "train.num_epochs=1",
        "train.per_device_batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.warmup_ratio=0.0",
        "train.save_strategy=no",
        "loop.rounds=2",
        "loop.prompts_per_round=[8,8]",
        "generation.max_new_tokens=12",
        "generation.batch_size=4",
        "refine.warmup_fraction=0.0",
    ]
