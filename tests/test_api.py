"""The Python API builds configurations exactly as the command line does."""

import os

import pytest
import yaml
from typer.testing import CliRunner

import spreadpref
from spreadpref.cli import app
from spreadpref.config import shipped_config_names
from spreadpref.errors import ConfigError


def test_no_path_gives_the_command_lines_default_profile():
    api = spreadpref.load_config()
    cli = yaml.safe_load(CliRunner().invoke(app, ["config"]).output)
    assert api.model_dump(mode="json") == cli
    assert api.train.learning_rate == 5e-5 and api.loop.rounds == 2  # the CPU profile, not the schema's 7B values


def test_shipped_configs_load_by_name_from_any_directory(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # outside the repository: no configs/ here
    try:
        assert spreadpref.load_config("zephyr-7b-spa").model.name_or_path == "alignment-handbook/zephyr-7b-sft-full"
        assert (
            spreadpref.load_config("configs/seed-cpu.yaml").loop.rounds
            == spreadpref.load_config("seed-cpu").loop.rounds
        )
        with pytest.raises(ConfigError, match="shipped configs, by name: .*spa-cpu"):
            spreadpref.load_config("no-such-config")
    finally:
        os.chdir(cwd)
    assert {"spa-cpu", "seed-cpu", "mistral-7b-instruct-noseed"} <= set(shipped_config_names())


def test_overrides_as_a_dict_dotted_or_nested():
    config = spreadpref.load_config(
        overrides={"train.beta": 0.2, "loop": {"rounds": 1, "prompts_per_round": [4]}, "train.report_to": ["none"]}
    )
    assert config.train.beta == 0.2 and config.loop.rounds == 1 and config.loop.prompts_per_round == [4]
    assert spreadpref.load_config(overrides=["train.beta=0.3"]).train.beta == 0.3
    judge = spreadpref.load_config(overrides={"judge.custom.kwargs": {"seed": 3}, "judge.custom.factory": "m:f"})
    assert judge.judge.custom.kwargs == {"seed": 3}  # a dict-valued key is a value, not a section
    with pytest.raises(ConfigError, match="train.betta"):
        spreadpref.load_config(overrides={"train.betta": 0.2})


def test_data_in_memory_as_a_list_or_a_dataset(tiny_model_dir, tmp_path):
    import datasets

    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": "Not sure."} for i in range(8)]
    overrides = {
        "model.name_or_path": str(tiny_model_dir),
        "train.max_steps": 1,
        "data.max_length": 64,
        "data.max_prompt_length": 32,
    }
    config = spreadpref.config.load_config(None, {**overrides, "output_dir": str(tmp_path / "a")})
    first = spreadpref.train_policy(config, train=rows)
    assert (first.model_dir / "model.safetensors").is_file()
    again = spreadpref.train_policy(config, train=datasets.Dataset.from_list(rows))  # same rows: same data file
    assert again.skipped
    # Other rows are edited data (stages are keyed by their data's content): trained again on them.
    other = spreadpref.train_policy(config, train=rows[:4])
    assert not other.skipped and other.model_dir == first.model_dir


def test_in_memory_prompts_may_be_plain_strings_and_a_bad_item_is_named(tmp_path, monkeypatch):
    import spreadpref
    from spreadpref.errors import DataError
    from spreadpref.runtime.files import read_jsonl

    monkeypatch.setenv("SPREADPREF_CACHE", str(tmp_path / "cache"))
    config = spreadpref.with_data(spreadpref.load_config(None), "prompts", ["What is 2+2?", {"prompt": "Hi"}])
    assert read_jsonl(config.data.prompts) == [{"prompt": "What is 2+2?"}, {"prompt": "Hi"}]
    with pytest.raises(DataError, match="item 1: is a int; expected a dict with prompt, chosen, rejected"):
        spreadpref.with_data(
            spreadpref.load_config(None), "train", [{"prompt": "a", "chosen": "b", "rejected": "c"}, 5]
        )
