"""Kill `spreadpref eval` with SIGKILL at seeded moments, resume, and compare with a clean evaluation."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
from harness import env, overrides, run_to_end, write_loop_data

from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import MANIFEST_FILE
from spreadpref.testing import make_tiny_reward_model_dir


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("kill-eval")
    seed, prompts = write_loop_data(base / "data")
    run_dir = base / "run"
    done = run_to_end([*overrides(tiny_model_dir, seed, prompts, run_dir), "loop.keep_models=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    rm = make_tiny_reward_model_dir(base / "rm")
    settings = [
        "-s", f"model.name_or_path={tiny_model_dir}",
        "-s", f"eval.prompts={prompts}",
        "-s", "eval.limit=12",
        "-s", "eval.max_new_tokens=8",
        "-s", "eval.batch_size=1",
        "-s", "eval.bootstrap=20",
        "-s", "eval.judge.kind=reward_model",
        "-s", f"eval.judge.reward_model.name_or_path={rm}",
        "-s", "data.max_length=96",
        "-s", "data.max_prompt_length=48",
    ]  # fmt: skip
    clean = base / "clean"
    result = eval_to_end(run_dir, clean, settings)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"run": run_dir, "settings": settings, "clean": clean}


def eval_command(run_dir, out, settings):
    return [sys.executable, "-m", "spreadpref", "eval", str(run_dir), "-o", str(out), *settings]


def eval_to_end(run_dir, out, settings):
    return subprocess.run(eval_command(run_dir, out, settings), env=env(), capture_output=True, text=True, timeout=300)


def kill_and_resume(evaluated, out, delay):
    process = subprocess.Popen(
        eval_command(evaluated["run"], out, evaluated["settings"]),
        env=env(SPREADPREF_UNIT_DELAY="0.05"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while process.poll() is None and time.time() < deadline and not (out / MANIFEST_FILE).exists():
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    for path in out.rglob("*.json*"):  # what the kill left is readable: no half-written file
        if not path.name.startswith("."):
            read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text())
    resumed = eval_to_end(evaluated["run"], out, evaluated["settings"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, expected = (json.loads((d / "eval.json").read_text())["models"] for d in (out, evaluated["clean"]))
    assert got.keys() == expected.keys()
    for name in expected:
        for key in ("win_rate", "mean_words", "cut_off_fraction"):
            assert got[name][key] == pytest.approx(expected[name][key]), (name, key)
    for answers in (evaluated["clean"] / "answers").glob("*.jsonl"):
        assert read_jsonl(out / "answers" / answers.name) == read_jsonl(answers)


def test_a_killed_evaluation_resumes_to_the_clean_result(evaluated, tmp_path):
    kill_and_resume(evaluated, tmp_path / "eval", delay=0.8)


@pytest.mark.slow
def test_kill_eval_anywhere(evaluated, tmp_path):
    rng = random.Random(11)
    for k in range(6):
        kill_and_resume(evaluated, tmp_path / f"eval-{k}", delay=rng.uniform(0.0, 2.5))
