"""SPA without a seed stage (loop.seed_stage=false) and a judge reference given by path (the paper's Figure 4)."""

import json

import pytest
from helpers import loop_overrides

from spreadpref.config import load_config
from spreadpref.errors import ConfigError, SpreadprefError
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import CONFIG_FILE, REPORT_FILE, SUMMARY_FILE, round_name, round_stage
from spreadpref.runtime.manifest import Manifest
from spreadpref.spa.loop import judge_reference_path, run
from spreadpref.testing import make_tiny_model_dir, make_tiny_tokenizer


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """Another tiny model with the same tokenizer: the 'base' the SFT policy is judged against."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("base") / "model", seed=7)


def no_seed_overrides(model_dir, base_dir, prompts, out, rounds=1):
    return [
        *loop_overrides(model_dir, "/nonexistent/seed.jsonl", prompts, out),
        "loop.seed_stage=false",
        f"judge.reference={base_dir}",
        f"loop.rounds={rounds}",
        f"loop.prompts_per_round=[{','.join(['6'] * rounds)}]",
    ]


def test_a_no_seed_run_starts_from_the_model_judges_against_the_reference_and_resumes(
    tiny_model_dir, base_model_dir, loop_data, tmp_path
):
    _, prompts = loop_data
    out = tmp_path / "run"
    result = run(load_config(None, no_seed_overrides(tiny_model_dir, base_model_dir, prompts, out)))
    manifest = Manifest(out)
    assert manifest.stage("seed") is None and not (out / "seed").exists()  # data.train was never read
    assert manifest.stage(round_stage(1, "train"))["status"] == "complete"
    judged = read_jsonl(out / round_name(1) / "judged.jsonl")
    # The implicit reward against the base: non-zero, because pi_0 (the model itself) is not its reference.
    assert any(abs(row["score"]) > 1e-6 for row in judged)
    assert all(row["reference_logps"] is not None for row in judged)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["seed"] is None and summary["rounds"]["1"]["pairs"] > 0
    assert (out / REPORT_FILE).is_file()
    # The base-model judge is named wherever a user looks: the summary row (the table), report.md, the card.
    named = f"π_0 vs base {'/'.join(base_model_dir.parts[-2:])}"
    assert summary["rounds"]["1"]["judge"] == named
    assert named in (out / REPORT_FILE).read_text()
    assert f"Judge: implicit reward, {named}" in (out / round_name(1) / "train" / "model" / "README.md").read_text()
    # Again: nothing to do; one more round: only round 2 runs.
    assert run(load_config(None, no_seed_overrides(tiny_model_dir, base_model_dir, prompts, out))).skipped
    attempts = manifest.stage(round_stage(1, "train"))["attempts"]
    run(load_config(None, no_seed_overrides(tiny_model_dir, base_model_dir, prompts, out, rounds=2)))
    after = Manifest(out)
    assert after.stage(round_stage(1, "train"))["attempts"] == attempts
    assert after.stage(round_stage(2, "train"))["status"] == "complete" and result.final_model.is_dir()


def test_the_reference_by_path_is_used_in_every_round(tiny_model_dir, base_model_dir, tmp_path):
    config = load_config(
        None,
        [f"model.name_or_path={tiny_model_dir}", f"judge.reference={base_model_dir}", "loop.seed_stage=false"],
    )
    models = {0: tiny_model_dir, 1: tmp_path / "r1", 2: tmp_path / "r2"}
    assert {judge_reference_path(config, models, i) for i in (1, 2, 3)} == {str(base_model_dir)}


@pytest.mark.parametrize("reference", ["initial", "previous", "MODEL"])
def test_pi0_as_its_own_judge_reference_is_refused(tiny_model_dir, reference):
    reference = str(tiny_model_dir) if reference == "MODEL" else reference
    with pytest.raises(ConfigError, match="implicit reward would be 0") as err:
        load_config(
            None, [f"model.name_or_path={tiny_model_dir}", "loop.seed_stage=false", f"judge.reference={reference}"]
        )
    assert "judge.reference" in str(err.value)


def test_an_external_judge_needs_no_implicit_reference_without_a_seed_stage(tiny_model_dir):
    config = load_config(None, [f"model.name_or_path={tiny_model_dir}", "loop.seed_stage=false", "judge.kind=verifier"])
    assert not config.loop.seed_stage


def test_a_reference_with_another_tokenizer_is_refused_before_any_work(tiny_model_dir, loop_data, tmp_path):
    _, prompts = loop_data
    other = tmp_path / "other"
    make_tiny_model_dir(other)
    make_tiny_tokenizer(vocab_size=300).save_pretrained(other)  # a different vocabulary
    out = tmp_path / "run"
    with pytest.raises(SpreadprefError, match="different tokenizer"):
        run(load_config(None, no_seed_overrides(tiny_model_dir, other, prompts, out)))
    assert not (out / round_name(1)).exists() and not (out / CONFIG_FILE).exists()


def test_a_missing_reference_directory_is_named(tiny_model_dir, loop_data, tmp_path):
    _, prompts = loop_data
    with pytest.raises(SpreadprefError, match="no such model directory"):
        run(load_config(None, no_seed_overrides(tiny_model_dir, tmp_path / "nowhere", prompts, tmp_path / "run")))
