import os
from pathlib import Path

import pytest
from helpers import arithmetic_pairs, write_jsonl

from spreadpref.testing import make_tiny_model_dir, make_tiny_tokenizer


def pytest_configure(config):
    # Under pytest-xdist (`-n auto`, pyproject's addopts: a worker per core) each worker gets one torch thread:
    # two workers of two OpenMP threads each spin on a 2-core machine (about 5x slower). Subprocesses the tests
    # start inherit the setting.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Each test has its own cache, never the user's; progress bars would only clutter captured output.
    monkeypatch.setenv("SPREADPREF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPREADPREF_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _fresh_score_memo():
    # Scores remembered in one test must not answer another's (one that breaks a model on purpose, say).
    from spreadpref.dpo.logprobs import clear_score_memo

    clear_score_memo()
    yield
    clear_score_memo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


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
