"""The sandbox: a config's method settings carried into the gold world, and the command that runs them."""

import json

import pytest
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.config import load_config
from spreadpref.errors import ConfigError
from spreadpref.sandbox import method_overrides


def test_the_schema_defaults_bring_nothing():
    assert method_overrides(load_config(None)) == ([], [])


def test_the_default_profile_brings_its_safeguards_and_replays_the_worlds_seed_pairs():
    overrides, notes = method_overrides(load_config())
    assert 'judge.length_penalty="fit"' in overrides and "loop.replay_fraction=0.25" in overrides
    assert "data.train={seed_pairs}" in overrides  # replay draws the world's seed pairs, not the profile's file
    assert not any(
        o.startswith(("model.", "data.prompts", "loop.rounds", "generation.max_new_tokens")) for o in overrides
    )
    # What it does not carry is said, in one note: the profile's model, data and budget stay the world's.
    assert len(notes) == 1 and "the world keeps its own model, data and budget" in notes[0]
    assert all(key in notes[0] for key in ("loop.rounds", "train.learning_rate", "data.system_prompt"))


def test_models_outside_the_world_are_replaced_or_left_out_and_said(tmp_path):
    config = load_config(
        None,
        ["judge.base=some/base-model", "judge.base_weight=0.5", f"judge.reference={tmp_path}", "judge.policy=x/y"],
    )
    overrides, notes = method_overrides(config)
    assert "judge.base={base}" in overrides and "judge.base_weight=0.5" in overrides  # the world's base model
    # The README's headline setting, judge.reference=<the base model>, is the world's base model too.
    assert "judge.reference={base}" in overrides
    assert not any(o.startswith("judge.policy") for o in overrides)
    assert any("judge.reference" in n and "pi_base" in n for n in notes) and any("judge.policy=x/y" in n for n in notes)


def test_named_references_are_carried_as_they_are():
    overrides, _ = method_overrides(load_config(None, ["judge.reference=previous", "loop.keep_models=3"]))
    assert 'judge.reference="previous"' in overrides


def test_a_users_own_sandbox_files_are_refused_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sandbox.md").write_text("my notes")
    result = CliRunner().invoke(app, ["sandbox", "--reduced", "--seeds", "1", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "did not write" in result.output and "sandbox.md" in result.output
    assert (out / "sandbox.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["sandbox.md"]


def test_a_sandbox_directory_in_use_is_refused(tmp_path):
    from spreadpref.runtime.lock import directory_lock

    out = tmp_path / "busy"
    with directory_lock(out, "sandbox"):
        result = CliRunner().invoke(app, ["sandbox", "--reduced", "--seeds", "1", "-o", str(out)])
    assert result.exit_code != 0 and "in use by another spreadpref process" in result.output


def test_another_judge_kind_is_refused():
    with pytest.raises(ConfigError, match="judge.kind=llm"):
        method_overrides(load_config(None, ["judge.kind=llm", "judge.llm.model=m"]))


@pytest.mark.slow
def test_the_command_runs_a_config_beside_the_baselines_in_the_reduced_world(tmp_path):
    out = tmp_path / "sandbox"
    result = CliRunner().invoke(
        app, ["sandbox", "--reduced", "--seeds", "1", "--first-seed", "1000", "-o", str(out), "refine.alpha=0.2"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads((out / "sandbox.json").read_text())
    assert "refine.alpha=0.2" in document["overrides"]
    pairs = {(d["a"], d["b"]) for d in document["differences"]}
    assert ("custom", "seed_only") in pairs and ("iterative_gold", "seed_only") in pairs
    seed = json.loads((out / "seed-1000.json").read_text())
    assert set(seed["variants"]) == {"sft", "seed_only", "spa_dnd", "iterative_gold", "custom"}
    assert len(seed["variants"]["custom"]) == 3  # three rounds, each with its gold reward
    assert "Your settings" in (out / "sandbox.md").read_text()
    assert "Your settings in the gold world: judge.length_penalty" in result.output


def test_other_settings_run_beside_the_first_and_the_baselines_are_kept(tmp_path):
    from spreadpref.sandbox.world import variant_directory

    first, second = ["refine.alpha=0.2"], ["refine.alpha=0.3"]
    assert variant_directory(tmp_path, "custom", first) != variant_directory(tmp_path, "custom", second)
    assert variant_directory(tmp_path, "custom", first) == variant_directory(tmp_path, "custom", list(first))
    assert (
        variant_directory(tmp_path, "spa_dnd", first) == variant_directory(tmp_path, "spa_dnd") == tmp_path / "spa_dnd"
    )


def test_the_power_note_says_what_the_seeds_can_tell_apart():
    from spreadpref.sandbox import power_note, seeds_needed

    # 3 seeds, half-width 0.6: sd = 0.6 * sqrt(3) / 4.303 = 0.2415; 0.05 needs t * sd / sqrt(k) < 0.05.
    needed = seeds_needed(0.6, 3, 0.05)
    sd = 0.6 * 3**0.5 / 4.303
    assert 1.96 * sd / needed**0.5 < 0.05 <= 1.96 * sd / (needed - 1) ** 0.5 + 0.002
    document = {"differences": [{"a": "custom", "b": "seed_only", "mean": 0.1, "half_width": 0.6, "n": 3, "wins": 2}]}
    note = power_note(document)
    assert "With 3 seeds" in note and "±0.600" in note and f"about {needed} seeds" in note
    single = {"differences": [{"a": "custom", "b": "seed_only", "mean": 0.1, "half_width": 0.0, "n": 1, "wins": 1}]}
    assert "One seed gives no interval" in power_note(single)


def test_a_run_directory_is_not_a_sandbox_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stages": {"seed": {"status": "complete"}}}))
    result = CliRunner().invoke(app, ["sandbox", "--reduced", "--seeds", "1", "-o", str(out)])
    assert result.exit_code == 2 and "holds a spreadpref run or train result (seed)" in " ".join(result.output.split())
    assert json.loads((out / "manifest.json").read_text()) == {"stages": {"seed": {"status": "complete"}}}
