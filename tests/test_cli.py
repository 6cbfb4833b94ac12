import json

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app, default_config_path
from spreadpref.config import load_config
from spreadpref.runtime.layout import CONFIG_FILE, MANIFEST_FILE
from spreadpref.testing import make_tiny_reward_model_dir

runner = CliRunner()


def test_env_lists_versions_device_and_cache():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    for key in (
        "python:",
        "torch:",
        "transformers:",
        "datasets:",
        "accelerate:",
        "peft:",
        "device:",
        "embedded model cache:",
    ):
        assert key in result.output


def test_config_shows_resolved_overrides():
    result = runner.invoke(app, ["config", "train.learning_rate=1e-6", "model.lora.enabled=true"])
    assert result.exit_code == 0, result.output
    assert "learning_rate: 1.0e-06" in result.output and "enabled: true" in result.output


def test_bad_override_is_a_message_not_a_traceback():
    result = runner.invoke(app, ["config", "train.lerning_rate=1e-6"])
    assert result.exit_code == 2
    assert "did you mean 'learning_rate'" in result.output
    assert "Traceback" not in result.output


def test_default_profile_is_valid_and_uses_the_embedded_model():
    config = load_config(default_config_path())
    assert config.model.name_or_path.startswith("embedded:")
    assert config.data.train == "builtin:seed_pairs"


def test_inspect_marks_prompt_and_reply(tiny_model_dir, pairs_file):
    result = runner.invoke(
        app, ["inspect", f"model.name_or_path={tiny_model_dir}", f"data.train={pairs_file}", "--plain", "-n", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "[PROMPT]" in result.output and "[/PROMPT][REPLY]" in result.output
    assert "⟨<|im_end|>⟩[/REPLY]" in result.output
    assert "ends with EOS: yes" in result.output
    assert "16 of 16 records kept" in " ".join(result.output.split())


def test_inspect_reports_truncation(tiny_model_dir, pairs_file):
    result = runner.invoke(
        app,
        [
            "inspect",
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={pairs_file}",
            "data.max_length=20",
            "data.max_prompt_length=12",
            "--plain",
            "-n",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "16 prompts cut at the start" in result.output
    assert "reply truncated: yes" in result.output


def test_train_writes_checkpoint_and_resolved_config(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        f"model.name_or_path={tiny_model_dir}",
        f"data.train={pairs_file}",
        "train.max_steps=1",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "--output",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model" / "config.json").is_file()
    saved = load_config(out / CONFIG_FILE)
    assert saved.train.max_steps == 1 and saved.output_dir == str(out)
    assert json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]["status"] == "complete"
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already complete" in " ".join(again.output.split())


def test_bad_data_names_file_line_and_field(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}\n'
        '{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go.", "label": 1.5}\n'
    )
    result = runner.invoke(
        app, ["train", f"model.name_or_path={tiny_model_dir}", f"data.train={data}", "--output", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "line 2" in flat and "'label'" in flat and "[0, 1]" in flat
    assert "Traceback" not in result.output


@pytest.mark.parametrize("missing", ["nope.yaml"])
def test_missing_config_file(tmp_path, missing):
    result = runner.invoke(app, ["train", "--config", str(tmp_path / missing)])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
    # The paper's settings beside the Zephyr ones (issue: SPA without seed, other backbones).
    names = {path.stem for path in configs}
    assert {"mistral-7b-instruct-noseed", "phi-2-spa", "llama-3-8b-instruct-spa", "zephyr-7b-spa"} <= names
    noseed = load_config(Path(configs[0]).with_name("mistral-7b-instruct-noseed.yaml"))
    assert not noseed.loop.seed_stage and noseed.judge.reference == "mistralai/Mistral-7B-v0.1"


def test_stages_alone_generate_judge_train(tiny_model_dir, tmp_path):
    from spreadpref.runtime.files import read_jsonl

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}."}) + "\n" for i in range(4)))
    common = [
        f"model.name_or_path={tiny_model_dir}",
        "generation.max_new_tokens=8",
        "data.max_length=64",
        "data.max_prompt_length=32",
    ]
    generations = tmp_path / "gen.jsonl"
    result = runner.invoke(app, ["generate", *common, "--prompts", str(prompts), "-o", str(generations)])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(generations)
    assert len(rows) == 8 and {"reply_ids", "finish_reason", "text", "prompt_ids"} <= set(rows[0])

    judged = tmp_path / "judged"
    # The policy is its own initial model here, so judge without a reference (every score would tie at 0).
    result = runner.invoke(app, ["judge", str(generations), *common, "--reference", "none", "-o", str(judged)])
    assert result.exit_code == 0, result.output
    pairs = read_jsonl(judged / "pairs.jsonl")
    assert pairs and all(p["margin"] > 0 for p in pairs)
    assert len(read_jsonl(judged / "judged.jsonl")) == 8

    # With a gold judge the pairs are also labelled by it, and the self-labels' accuracy is printed.
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    gold = ["judge.gold=reward_model", f"judge.reward_model.name_or_path={rm}"]
    measured = tmp_path / "measured"
    result = runner.invoke(app, ["judge", str(generations), *common, *gold, "--reference", "none", "-o", str(measured)])
    assert result.exit_code == 0, result.output
    assert "Self-label accuracy against the reward_model judge" in " ".join(result.output.split())
    assert "accuracy by judge-margin decile" in result.output
    assert len(read_jsonl(measured / "gold.jsonl")) == len(pairs)
    assert read_jsonl(measured / "pairs.jsonl") == pairs  # measured, not changed

    out = tmp_path / "train"
    result = runner.invoke(
        app, ["train", *common, f"data.train={judged / 'pairs.jsonl'}", "train.max_steps=1", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]
    # Token-space pairs with the judge's log-probs: no reference pass, the exact generated ids.
    assert manifest["reference"]["from_data"] == len(pairs) and manifest["reference"]["computed"] == 0


def test_eval_command_writes_results_and_names_a_bad_judge(tiny_model_dir, tmp_path):
    from helpers import write_jsonl

    from spreadpref.testing import make_tiny_reward_model_dir

    prompts = write_jsonl(tmp_path / "eval.jsonl", [{"id": f"e{i}", "prompt": f"Count to {i}."} for i in range(3)])
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    common = [
        "-s",
        f"model.name_or_path={tiny_model_dir}",
        "-s",
        f"eval.prompts={prompts}",
        "-s",
        "eval.max_new_tokens=4",
        "-s",
        "data.max_length=96",
        "-s",
        "data.max_prompt_length=48",
    ]
    result = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "-o",
            str(tmp_path / "out"),
            *common,
            "-s",
            "eval.judge.kind=reward_model",
            "-s",
            f"eval.judge.reward_model.name_or_path={rm}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "eval.md").is_file() and (tmp_path / "out" / "alpaca_eval" / "model.json").is_file()
    result = runner.invoke(
        app, ["eval", str(tiny_model_dir), "-o", str(tmp_path / "bad"), *common, "-s", "eval.judge.kind=implicit"]
    )
    assert result.exit_code == 2 and "judge itself" in result.output


def test_report_command_needs_a_run_directory(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a spreadpref run or train directory" in result.output


@pytest.mark.parametrize("command", ["run", "train", "generate", "judge", "eval", "report", "inspect", "config", "env"])
def test_every_command_has_a_help_page(command):
    # Rich markup in a help text (an unescaped "[/PROMPT]") used to crash `spreadpref inspect --help`.
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command == "inspect":
        assert "[PROMPT]" in result.output


def test_trl_flags_get_a_hint_with_the_spreadpref_keys():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "spreadpref", "train", "--model_name_or_path", "x", "--learning_rate=5e-7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model_name_or_path -> model.name_or_path=..." in message
    assert "--learning_rate -> train.learning_rate=..." in message


def test_a_refused_rerun_names_the_keys_that_changed(tiny_model_dir, pairs_file, tmp_path):
    from helpers import tiny_train_overrides

    args = ["train", *tiny_train_overrides(tiny_model_dir, pairs_file, tmp_path / "run")]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "train.beta=0.2"])
    message = " ".join(again.output.split())
    assert again.exit_code == 2 and "train.beta: 0.1 -> 0.2" in message and "output_dir" not in message


def test_version_prints_the_package_and_library_versions():
    from typer.testing import CliRunner

    from spreadpref import __version__
    from spreadpref.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"spreadpref {__version__} (torch ")


def test_eval_elsewhere_says_the_run_report_keeps_its_own_evaluation(tmp_path, monkeypatch):
    from spreadpref.eval import evaluate as evaluate_module

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load_config(None, []).save(run_dir / CONFIG_FILE)
    answered = []
    monkeypatch.setattr(evaluate_module, "evaluate", lambda cfg, targets, out, force=False: answered.append(out))
    result = runner.invoke(app, ["eval", str(run_dir), "-o", str(tmp_path / "other")], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert answered == [tmp_path / "other"]
    text = " ".join(result.output.split())
    assert "shows the evaluation in" in text and "is in its own eval.md" in text
    assert not (run_dir / "report.md").exists()  # the run's report is not rewritten for an evaluation elsewhere
