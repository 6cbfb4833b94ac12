"""The same configuration and seed give the same generations, labels and (on CPU) weights."""

from harness import assert_same_artifacts, overrides, write_loop_data

from spreadpref.config import load_config
from spreadpref.runtime.layout import round_name
from spreadpref.spa.loop import run


def test_two_runs_with_the_same_seed_are_identical(tiny_model_dir, tmp_path):
    seed, prompts = write_loop_data(tmp_path / "data")
    first, second = tmp_path / "first", tmp_path / "second"
    run(load_config(None, overrides(tiny_model_dir, seed, prompts, first)))
    run(load_config(None, overrides(tiny_model_dir, seed, prompts, second)))
    assert_same_artifacts(first, second)
    third = tmp_path / "third"
    run(load_config(None, overrides(tiny_model_dir, seed, prompts, third) + ["seed=7"]))
    from spreadpref.runtime.files import read_jsonl

    assert read_jsonl(third / round_name(1) / "generations.jsonl") != read_jsonl(
        first / round_name(1) / "generations.jsonl"
    )
