import json
from pathlib import Path

import pytest

from spreadpref.testing import make_tiny_model_dir, make_tiny_tokenizer


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Each test has its own cache, never the user's; progress bars would only clutter captured output.
    monkeypatch.setenv("SPREADPREF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPREADPREF_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


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


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs())


@pytest.fixture
def loop_data(tmp_path):
    """A seed file of 8 arithmetic pairs and a pool of 24 prompts, for loop tests."""
    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(8))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Tell me about the number {i}."} for i in range(24)]
    )
    return seed, prompts


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
