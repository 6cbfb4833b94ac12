"""Stages are keyed by their data's content: an edited file reruns exactly the stages it feeds, and says so;
the same content under another path, or a run from before content keys, is not a change."""

import json
import os

from helpers import arithmetic_pairs, loop_overrides, tiny_train_overrides, unwrapped, write_jsonl

from spreadpref.config import load_config
from spreadpref.data.identity import DATA_IDENTITIES, path_identities, source_identity
from spreadpref.dpo.train import train_fingerprint, train_policy
from spreadpref.runtime.layout import round_stage
from spreadpref.runtime.manifest import Manifest
from spreadpref.spa.loop import run, stage_fingerprints


def test_identity_follows_content_not_path(tmp_path):
    (tmp_path / "sub").mkdir()
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}])
    b = write_jsonl(tmp_path / "sub" / "b.jsonl", [{"prompt": "x"}])
    assert source_identity(str(a)) == source_identity(str(b)) == source_identity(os.path.relpath(a))
    write_jsonl(a, [{"prompt": "y"}])
    assert source_identity(str(a)) != source_identity(str(b))
    assert source_identity("org/dataset") == "org/dataset"  # a hub id is its own identity
    assert source_identity("builtin:seed_pairs").startswith("sha256:")
    assert source_identity(str(tmp_path / "sub")) == source_identity(str(tmp_path / "sub"))  # a folder, stable
    assert source_identity(None) is None


def test_an_edited_training_file_is_trained_on_again_and_the_same_file_by_another_path_is_not(
    tiny_model_dir, tmp_path, capsys
):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    out = tmp_path / "train"
    first = train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, data, out)))
    # Same content, named relatively: nothing to do.
    relative = os.path.relpath(data)
    again = train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, relative, out)))
    assert again.skipped
    # Edited in place: trained again, and said so.
    write_jsonl(data, arithmetic_pairs(8)[::-1][:6])
    capsys.readouterr()
    edited = train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, data, out)))
    assert not edited.skipped
    said = unwrapped(capsys.readouterr().err)
    assert unwrapped(f"data.train ({data}) changed since this stage was trained") in said
    assert Manifest(out).stage("train")["data"]["pairs"] + Manifest(out).stage("train")["data"]["held_out"] == 6
    assert first.model_dir == edited.model_dir


def test_an_edited_prompt_pool_reruns_the_rounds_but_not_the_seed_stage(tiny_model_dir, loop_data, tmp_path, capsys):
    seed_file, prompts = loop_data
    out = tmp_path / "run"
    overrides = [
        *loop_overrides(tiny_model_dir, seed_file, prompts, out),
        "loop.rounds=1",
        "loop.prompts_per_round=[4]",
    ]
    run(load_config(None, overrides))
    seed_started = Manifest(out).stage("seed")["started"]
    round_before = Manifest(out).stage(round_stage(1, "generate"))["finished"]
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    write_jsonl(prompts, [{**r, "prompt": r["prompt"] + " Briefly."} for r in rows])
    capsys.readouterr()
    result = run(load_config(None, overrides))
    assert not result.skipped
    said = unwrapped(capsys.readouterr().err)
    assert unwrapped(f"data.prompts ({prompts}) changed since round-1/generate ran") in said
    manifest = Manifest(out)
    assert manifest.stage("seed")["started"] == seed_started  # the stage it does not feed stays
    assert manifest.stage(round_stage(1, "generate"))["status"] == "complete"
    assert manifest.stage(round_stage(1, "generate"))["finished"] >= round_before


def test_a_run_keyed_by_paths_resumes_as_it_is(tiny_model_dir, loop_data, tmp_path):
    seed_file, prompts = loop_data
    out = tmp_path / "run"
    overrides = [
        *loop_overrides(tiny_model_dir, seed_file, prompts, out),
        "loop.rounds=1",
        "loop.prompts_per_round=[4]",
    ]
    config = load_config(None, overrides)
    run(config)
    # Rewrite the manifest as a version before content keys wrote it: path keys, no data identities.
    manifest = Manifest(out)
    legacy = stage_fingerprints(config, [4], path_identities(config.data))
    assert legacy["seed"] == train_fingerprint(config, path_identities(config.data))
    for name, fp in legacy.items():
        manifest.data["stages"][name]["fingerprint"] = fp
    manifest.data.pop(DATA_IDENTITIES)
    manifest.save()
    assert run(load_config(None, overrides)).skipped
    assert Manifest(out).data[DATA_IDENTITIES]["train"].startswith("sha256:")
