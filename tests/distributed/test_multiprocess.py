"""Every stage under `accelerate launch` with 2 CPU processes (gloo), on the tiny model.

On a machine without GPUs, `accelerate launch --config_file configs/accelerate/cpu-2proc.yaml` starts the
processes through torch's launcher and spreadpref makes them talk over gloo on the CPU.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import overrides, write_loop_data

from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import LOG_HISTORY_FILE, MANIFEST_FILE, round_name

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "cpu-2proc.yaml"


def launch(args, processes=2, extra_env=None, port=29611, **kwargs):
    env = dict(os.environ, SPREADPREF_NO_PROGRESS="1", **(extra_env or {}))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # The config the README shows for CPU machines.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CPU_CONFIG),
        "--num_processes",
        str(processes),
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "spreadpref",
        *args,
    ]
    return command, env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): torch's launcher starts each worker in a session of its own,
    so killing the launcher's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue += children.get(child, [])
    return found


def kill_launch(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker it started, as a crash of the whole job would."""
    workers = descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def run_launch(args, processes=2, port=29611, timeout=300):
    command, env = launch(args, processes, port=port)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_launch(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"accelerate launch hung for {timeout} s; its output ended with:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def single(args, timeout=300):
    env = dict(os.environ, SPREADPREF_NO_PROGRESS="1")
    return subprocess.run(
        [sys.executable, "-m", "spreadpref", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_loop_data(tmp_path_factory.mktemp("mp-data"))


def test_sharded_generate_and_judge_equal_one_process(tiny_model_dir, data, tmp_path):
    _, prompts = data
    common = [
        f"model.name_or_path={tiny_model_dir}",
        f"data.prompts={prompts}",
        "generation.max_new_tokens=8",
        "generation.batch_size=2",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "judge.batch_size=2",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, runner in ((one, single), (two, run_launch)):
        out.mkdir()
        port = {"one": 0, "two": 29621}[out.name]
        kwargs = {"port": port} if port else {}
        result = runner(["generate", *common, "--limit", "10", "-o", str(out / "gen.jsonl")], **kwargs)
        assert result.returncode == 0, result.stderr[-3000:]
        kwargs = {"port": port + 1} if port else {}
        result = runner(
            ["judge", str(out / "gen.jsonl"), *common, "--reference", "none", "-o", str(out / "judged")], **kwargs
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(two / "gen.jsonl") == read_jsonl(one / "gen.jsonl")
    generations = read_jsonl(two / "gen.jsonl")
    assert [(g["prompt_index"], g["sample"]) for g in generations] == [(i, k) for i in range(10) for k in (0, 1)]
    for name in ("judged/judged.jsonl", "judged/pairs.jsonl"):
        a, b = read_jsonl(one / name), read_jsonl(two / name)
        assert [r.get("prompt_id") for r in a] == [r.get("prompt_id") for r in b]
        for x, y in zip(a, b):
            for key in ("score", "policy_logps", "margin"):
                if key in x:
                    assert abs(x[key] - y[key]) < 1e-4


def test_loop_on_two_processes_matches_gradient_accumulation(tiny_model_dir, data, tmp_path):
    seed, prompts = data
    two = tmp_path / "two"
    args = overrides(tiny_model_dir, seed, prompts, two) + ["train.save_strategy=no"]
    result = run_launch(["run", *args], port=29612)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((two / MANIFEST_FILE).read_text())["stages"]
    assert all(entry["status"] == "complete" for entry in manifest.values()) and len(manifest) == 7
    for i in (1, 2):
        generations = read_jsonl(two / round_name(i) / "generations.jsonl")
        keys = [(g["prompt_index"], g["sample"]) for g in generations]
        assert keys == sorted(keys) and len(set(keys)) == len(keys) == 12
        assert {g["prompt_id"] for g in generations} == {
            p["id"] for p in read_jsonl(two / round_name(i) / "prompts.jsonl")
        }
    # Data-parallel seed training on 2 processes = 1 process with twice the accumulation.
    one = tmp_path / "one"
    args_one = overrides(tiny_model_dir, seed, prompts, one) + [
        "train.save_strategy=no",
        "train.gradient_accumulation_steps=2",
        "loop.rounds=0",
    ]
    result = single(["run", *args_one])
    assert result.returncode == 0, result.stderr[-3000:]

    def curve(run_dir):
        history = json.loads((run_dir / "seed" / LOG_HISTORY_FILE).read_text())
        return [(e["loss"], e["rewards/margins"]) for e in history if "loss" in e]

    assert len(curve(two)) == len(curve(one)) >= 2
    for (loss_a, margin_a), (loss_b, margin_b) in zip(curve(two), curve(one)):
        assert loss_a == pytest.approx(loss_b, abs=1e-5) and margin_a == pytest.approx(margin_b, abs=1e-5)


def test_kill_during_a_sharded_stage_and_resume(tiny_model_dir, data, tmp_path):
    seed, prompts = data
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    result = run_launch(["run", *overrides(tiny_model_dir, seed, prompts, clean)], port=29613)
    assert result.returncode == 0, result.stderr[-3000:]
    command, env = launch(
        ["run", *overrides(tiny_model_dir, seed, prompts, killed)],
        port=29614,
        extra_env={"SPREADPREF_UNIT_DELAY": "0.3"},
    )
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    parts = killed / round_name(1) / ".generations.jsonl.parts"
    deadline = time.time() + 180
    while (
        time.time() < deadline and process.poll() is None and not (parts.is_dir() and len(list(parts.iterdir())) >= 2)
    ):
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    kill_launch(process)  # the launcher and both workers
    time.sleep(1)  # the workers' last writes land before the resume starts

    assert not (killed / round_name(1) / "generations.jsonl").exists()
    result = run_launch(["run", *overrides(tiny_model_dir, seed, prompts, killed)], port=29615)
    assert result.returncode == 0, result.stderr[-3000:]
    for i in (1, 2):
        for name in ("generations.jsonl", "pairs.jsonl"):
            a, b = read_jsonl(clean / round_name(i) / name), read_jsonl(killed / round_name(i) / name)
            if name == "pairs.jsonl":
                a = [(p["id"], p["chosen_ids"], p["rejected_ids"], p["label"]) for p in a]
                b = [(p["id"], p["chosen_ids"], p["rejected_ids"], p["label"]) for p in b]
            assert a == b, f"round {i} {name}"


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted(CPU_CONFIG.parent.glob("*.yaml"))
    assert len(configs) == 5
    kinds = {load_config_from_file(str(path)).distributed_type.value for path in configs}
    assert {"NO", "MULTI_GPU", "DEEPSPEED", "FSDP"} <= kinds
