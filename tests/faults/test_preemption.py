"""A scheduler's SIGTERM (SLURM, Kubernetes) mid-training: a message, a checkpoint, exit 130, and a resubmitted
job that resumes to the same weights as one never stopped."""

import json
import signal
import subprocess
import sys
import time

from harness import env, write_loop_data
from safetensors.torch import load_file

from spreadpref.runtime.layout import CHECKPOINTS_DIRECTORY, MODEL_DIRECTORY, TRAIN_LOG_FILE


def train_command(model_dir, pairs, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spreadpref",
        "train",
        "-o",
        str(out),
        f"model.name_or_path={model_dir}",
        f"data.train={pairs}",
        "data.max_length=96",
        "data.max_prompt_length=48",
        "data.eval_fraction=0",
        "train.learning_rate=1e-3",
        "train.num_epochs=40",  # 160 steps: long enough to land a signal mid-training
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.warmup_ratio=0.0",
        "train.save_strategy=no",  # as the CPU profiles: the SIGTERM checkpoint is the only one
        "train.logging_steps=1",
    ]


def logged_steps(out) -> int:
    try:
        return len((out / TRAIN_LOG_FILE).read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_sigterm_saves_a_checkpoint_and_the_resubmitted_job_ends_with_the_same_weights(tiny_model_dir, tmp_path):
    pairs, _ = write_loop_data(tmp_path / "data")
    reference = subprocess.run(
        train_command(tiny_model_dir, pairs, tmp_path / "reference"), env=env(), capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "preempted"
    process = subprocess.Popen(
        train_command(tiny_model_dir, pairs, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline and logged_steps(out) < 3:
        time.sleep(0.01)
    assert process.poll() is None, "training ended before the signal could be sent"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    said = stdout + stderr
    assert "Stopped by SIGTERM" in said and "run the same command again" in said, said[-2000:]
    checkpoints = sorted((out / CHECKPOINTS_DIRECTORY).glob("checkpoint-*"))
    assert checkpoints, "no checkpoint was saved at the SIGTERM"
    step = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"]
    assert 3 <= step < 160 and not (out / MODEL_DIRECTORY).exists()

    resumed = subprocess.run(train_command(tiny_model_dir, pairs, out), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming training from {checkpoints[-1]}" in (resumed.stdout + resumed.stderr).replace("\n", "")
    got = load_file(out / MODEL_DIRECTORY / "model.safetensors")
    expected = load_file(tmp_path / "reference" / MODEL_DIRECTORY / "model.safetensors")
    assert got.keys() == expected.keys()
    assert all((got[k] - expected[k]).abs().max() < 1e-6 for k in got)


def test_sigterm_outside_training_ends_the_command_as_ctrl_c_does(tiny_model_dir, tmp_path):
    from spreadpref.runtime import preemption

    # The handler itself: outside a Trainer it raises at once, as KeyboardInterrupt does.
    try:
        preemption._on_sigterm(signal.SIGTERM, None)
    except KeyboardInterrupt as err:
        assert isinstance(err, preemption.Terminated)
    else:
        raise AssertionError("SIGTERM outside training did not interrupt")
    finally:
        preemption._state["requested"] = False
