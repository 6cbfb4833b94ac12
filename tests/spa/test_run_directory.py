"""A run directory is self-contained: copied or moved, it continues from its own files; a finished run whose
final model lost its weights rebuilds that model instead of calling itself complete."""

import shutil

from helpers import loop_overrides

from spreadpref.config import load_config
from spreadpref.runtime.layout import SUMMARY_FILE, round_name, round_stage
from spreadpref.runtime.manifest import Manifest
from spreadpref.spa.loop import run


def one_round(model_dir, seed_file, prompts, out, *extra):
    return [*loop_overrides(model_dir, seed_file, prompts, out), "loop.prompts_per_round=[4,4]", *extra]


def test_a_copied_run_continues_from_its_own_files(tiny_model_dir, loop_data, tmp_path, capsys):
    seed_file, prompts = loop_data
    original = tmp_path / "a"
    run(load_config(None, one_round(tiny_model_dir, seed_file, prompts, original, "loop.rounds=1")))
    assert Manifest(original).data["stages"]["seed"]["outputs"]["model"] == "seed/model"  # relative
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # had the copy used the original's files, this would break it
    result = run(load_config(None, one_round(tiny_model_dir, seed_file, prompts, copy, "loop.rounds=2")))
    assert result.final_model == copy / round_name(2) / "train" / "model"
    manifest = Manifest(copy)
    assert manifest.output(round_stage(1, "train"), "model") == copy / round_name(1) / "train" / "model"
    assert str(original) not in (copy / SUMMARY_FILE).read_text()


def test_a_manifest_with_absolute_paths_from_another_place_is_rebased_and_says_so(
    tiny_model_dir, loop_data, tmp_path, capsys
):
    seed_file, prompts = loop_data
    original = tmp_path / "a"
    overrides = one_round(tiny_model_dir, seed_file, prompts, original, "loop.rounds=1")
    run(load_config(None, overrides))
    # As a version that recorded absolute paths would have written it, then moved.
    manifest = Manifest(original)
    for entry in manifest.data["stages"].values():
        entry["outputs"] = {k: str(original / v) for k, v in entry.get("outputs", {}).items()}
    manifest.save()
    moved = tmp_path / "moved"
    original.rename(moved)
    capsys.readouterr()
    result = run(load_config(None, one_round(tiny_model_dir, seed_file, prompts, moved, "loop.rounds=1")))
    assert result.skipped and result.final_model == moved / round_name(1) / "train" / "model"
    assert f"was copied or moved from {original}" in " ".join(capsys.readouterr().err.split())


def test_a_final_model_without_weights_is_trained_again(tiny_model_dir, loop_data, tmp_path, capsys):
    seed_file, prompts = loop_data
    out = tmp_path / "run"
    overrides = one_round(tiny_model_dir, seed_file, prompts, out, "loop.rounds=1")
    first = run(load_config(None, overrides))
    weights = first.final_model / "model.safetensors"
    original = weights.read_bytes()
    weights.unlink()
    capsys.readouterr()
    again = run(load_config(None, overrides))
    assert not again.skipped
    assert "The run's final model is damaged" in " ".join(capsys.readouterr().err.split())
    assert weights.read_bytes() == original  # seeded: the same model
    assert run(load_config(None, overrides)).skipped


def test_a_hand_edited_pairs_file_is_refused_then_written_again_under_force(tiny_model_dir, loop_data, tmp_path):
    import pytest

    from spreadpref.errors import SpreadprefError

    seed_file, prompts = loop_data
    out = tmp_path / "run"
    run(load_config(None, one_round(tiny_model_dir, seed_file, prompts, out, "loop.rounds=1")))
    pairs = out / round_name(1) / "pairs.jsonl"
    original = pairs.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    pairs.write_text("".join(lines[1:]))  # a pair removed by hand
    two_rounds = one_round(tiny_model_dir, seed_file, prompts, out, "loop.rounds=2")
    with pytest.raises(SpreadprefError, match=r"pairs.jsonl changed after round-1/judge wrote it"):
        run(load_config(None, two_rounds))
    run(load_config(None, two_rounds), force=True)
    assert pairs.read_bytes() == original  # seeded: written again as it first was
    assert (out / round_name(1) / "pairs.jsonl.edited").read_text() == "".join(lines[1:])
    assert Manifest(out).stage(round_stage(2, "train"))["status"] == "complete"


def test_replaced_weights_of_a_finished_stage_are_refused_then_trained_again_under_force(
    tiny_model_dir, loop_data, tmp_path
):
    """Same size, other content (another run's seed model): found by the hash the stage recorded, not by size."""
    import pytest
    from safetensors.torch import load_file, save_file

    from spreadpref.errors import SpreadprefError

    seed_file, prompts = loop_data
    out = tmp_path / "run"
    overrides = one_round(tiny_model_dir, seed_file, prompts, out, "loop.rounds=1")
    run(load_config(None, overrides))
    weights = out / "seed" / "model" / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    save_file({name: tensor * 0.5 for name, tensor in tensors.items()}, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == len(original)
    with pytest.raises(SpreadprefError, match=r"seed/model changed after seed wrote it"):
        run(load_config(None, overrides))
    run(load_config(None, overrides), force=True)
    assert weights.read_bytes() == original  # seeded: trained again as it first was
    assert (out / "seed" / "model.edited" / "model.safetensors").is_file()
    assert run(load_config(None, overrides)).skipped  # the card rewritten by a later stage is not an edit
    save_file({name: tensor * 0.25 for name, tensor in tensors.items()}, str(weights), metadata={"format": "pt"})
    run(load_config(None, overrides), force=True)  # a second edit: the newer one is kept, over the older
    kept = load_file(str(out / "seed" / "model.edited" / "model.safetensors"))
    assert all(kept[name].equal(tensor * 0.25) for name, tensor in tensors.items())


def test_seed_prompts_in_the_pool_are_left_out_of_the_rounds(tiny_model_dir, tmp_path, capsys):
    from helpers import arithmetic_pairs, loop_overrides, write_jsonl

    from spreadpref.config import load_config
    from spreadpref.runtime.files import read_jsonl
    from spreadpref.spa.loop import run

    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(16))
    shared = [{"id": f"s{i}", "prompt": f"What is {i} plus {i}?"} for i in range(10)]  # seed prompts, 10 of 16
    fresh = [{"id": f"q{i}", "prompt": f"Tell me about the number {i}."} for i in range(12)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", shared + fresh)
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + ["loop.rounds=1", "loop.prompts_per_round=[12]"]
    run(load_config(None, overrides))
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "10 prompts of" in said and "left out of the rounds" in said
    used = {row["id"] for row in read_jsonl(out / "round-1" / "prompts.jsonl")}
    assert used == {f"q{i}" for i in range(12)}  # none of the seed pairs' prompts


def test_the_held_out_pairs_are_written_and_a_change_is_said(tiny_model_dir, tmp_path, capsys):
    from helpers import arithmetic_pairs, loop_overrides, write_jsonl

    from spreadpref.runtime.files import read_jsonl
    from spreadpref.runtime.layout import HELD_OUT_FILE

    pairs = arithmetic_pairs(17)
    seed = write_jsonl(tmp_path / "seed.jsonl", pairs)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Number {i}?"} for i in range(8)])
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + ["loop.rounds=1", "loop.prompts_per_round=[4]"]
    run(load_config(None, overrides))
    held = read_jsonl(out / HELD_OUT_FILE)
    assert len(held) == 8 and {r["id"] for r in held} <= {p["id"] for p in pairs}
    said = " ".join(capsys.readouterr().err.split())
    assert "17 of 17 records kept" in said  # the seed pairs' own line
    card = (out / "round-1" / "train" / "model" / "README.md").read_text()
    assert "- Held-out agreement (its implicit reward against π_init preferring" in card  # measured after training
    # A held-out pair removed from the file: the held-out set changes, and the run says so.
    write_jsonl(seed, [p for p in pairs if p["id"] != held[0]["id"]])
    run(load_config(None, overrides))
    held_after = read_jsonl(out / HELD_OUT_FILE)
    assert len(held_after) == 8 and held[0]["id"] not in {r["id"] for r in held_after}
    said = " ".join(capsys.readouterr().err.split())
    assert "held-out seed pairs changed since the last run (1 left the held-out set, 1 joined it" in said


def test_skipped_seed_pairs_are_counted_and_named(tiny_model_dir, tmp_path, capsys):
    from helpers import arithmetic_pairs, loop_overrides, write_jsonl

    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(8))
    with open(seed, "a") as handle:
        handle.write('{"prompt": "broken", "chosen": 5, "rejected": "x"}\n')
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Number {i}?"} for i in range(4)])
    overrides = loop_overrides(tiny_model_dir, seed, prompts, tmp_path / "run") + [
        "loop.rounds=1",
        "loop.prompts_per_round=[4]",
        "data.skip_invalid=true",
    ]
    run(load_config(None, overrides))
    said = " ".join(capsys.readouterr().err.split())
    assert "8 of 9 records kept, 1 skipped as invalid" in said
    assert "skipped:" in said and "line 9" in said and "'chosen'" in said
