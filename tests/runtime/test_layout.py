"""The run directory's layout: names built and read back by the one module that spells them."""

from pathlib import Path

from spreadpref.runtime import layout


def test_round_names_are_built_and_read_back():
    assert layout.round_name(3) == "round-3"
    assert layout.round_number("round-12") == 12
    assert layout.round_number("round-x") is None and layout.round_number("seed") is None
    assert layout.round_stage(2, "judge") == "round-2/judge"
    assert layout.round_of_stage("round-2/train", "train") == 2
    assert layout.round_of_stage("round-2/judge", "train") is None
    assert layout.round_of_stage("seed", "train") is None


def test_each_model_has_its_training_folder_and_stage():
    root = Path("/runs/spa")
    assert layout.training_directory(root, 0) == root / "seed"
    assert layout.training_directory(root, 2) == root / "round-2" / "train"
    assert (layout.model_stage(0), layout.model_stage(2)) == ("seed", "round-2/train")


def test_stages_run_in_order():
    assert layout.stage_names(rounds=1) == ["seed", "round-1/generate", "round-1/judge", "round-1/train"]
    assert layout.stage_names(rounds=2, seed_stage=False)[:2] == ["round-1/generate", "round-1/judge"]
    assert len(layout.stage_names(rounds=3)) == 10
