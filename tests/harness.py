"""Helpers for the fault and multi-process suites: a small SPA run on the tiny model, and checks of its artifacts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from spreadpref.dpo.checkpoints import checkpoint_damage
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import MANIFEST_FILE, round_name, stage_names

STAGES = stage_names(rounds=2)


def write_loop_data(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    seed = directory / "seed.jsonl"
    seed.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"pair-{i}",
                    "prompt": f"What is {i} plus {i}?",
                    "chosen": f"{i} plus {i} is {2 * i}.",
                    "rejected": "I am not sure. Maybe the fox knows.",
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    prompts = directory / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Tell me about the number {i}."}) + "\n" for i in range(24))
    )
    return seed, prompts


def overrides(model_dir: Path, seed: Path, prompts: Path, out: Path) -> list[str]:
    return [
        f"model.name_or_path={model_dir}",
        f"data.train={seed}",
        f"data.prompts={prompts}",
        f"output_dir={out}",
        "data.max_length=96",
        "data.max_prompt_length=48",
        "train.learning_rate=1e-3",
        "train.num_epochs=1",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.warmup_ratio=0.0",
        "train.save_strategy=steps",
        "train.save_steps=2",
        "loop.rounds=2",
        "loop.prompts_per_round=[6,6]",
        "generation.max_new_tokens=10",
        "generation.batch_size=1",
        "judge.batch_size=4",
        "refine.warmup_fraction=0.0",
    ]


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spreadpref", "run", *args]


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, SPREADPREF_NO_PROGRESS="1", **extra)


def run_to_end(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), env=env(), capture_output=True, text=True, timeout=timeout)


def never_read(path: Path) -> bool:
    """Temporaries, and the files of a Trainer checkpoint killed while being saved: resuming removes such a
    checkpoint (``checkpoint_damage``) and never reads it, so a half-written file there is no damage."""
    if path.name.startswith("."):
        return True
    checkpoint = next((p for p in path.parents if re.fullmatch(r"checkpoint-\d+", p.name)), None)
    return checkpoint is not None and checkpoint_damage(checkpoint) is not None


def check_consistent(out: Path) -> str:
    """What a killed run left must be readable: manifest, finished files, finished parts.

    Returns the first stage that was not complete (where the kill landed).
    """
    manifest_path = out / MANIFEST_FILE
    if not manifest_path.exists():
        return "before the manifest"
    manifest = json.loads(manifest_path.read_text())
    for path in out.rglob("*.jsonl"):
        if not never_read(path):
            read_jsonl(path)
    for path in out.rglob("*.json"):
        if not never_read(path):
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise AssertionError(f"a killed run left {path} unreadable: {err}") from None
    stages = manifest["stages"]
    for name in STAGES:
        entry = stages.get(name)
        if entry and entry["status"] == "complete":
            for output in entry.get("outputs", {}).values():  # relative to the run directory
                assert (out / output).exists(), f"{name} is complete but {output} is missing"
    for name in STAGES:
        if not stages.get(name) or stages[name]["status"] != "complete":
            return name
    return "after the last stage"


def assert_same_artifacts(expected: Path, got: Path) -> None:
    """Same prompts, generations, judgements, pairs, labels and final weights as the reference run."""
    manifest = json.loads((got / MANIFEST_FILE).read_text())["stages"]
    assert [manifest[s]["status"] for s in STAGES] == ["complete"] * len(STAGES)
    for i in (1, 2):
        base, other = expected / round_name(i), got / round_name(i)
        assert read_jsonl(other / "prompts.jsonl") == read_jsonl(base / "prompts.jsonl")
        generations = read_jsonl(other / "generations.jsonl")
        keys = [(g["prompt_id"], g["sample"]) for g in generations]
        assert len(keys) == len(set(keys)), "a prompt was generated twice"
        assert {k for k, _ in keys} == {p["id"] for p in read_jsonl(other / "prompts.jsonl")}
        assert generations == read_jsonl(base / "generations.jsonl")
        judged, judged_ref = read_jsonl(other / "judged.jsonl"), read_jsonl(base / "judged.jsonl")
        assert [(j["prompt_id"], j["sample"]) for j in judged] == [(j["prompt_id"], j["sample"]) for j in judged_ref]
        assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(judged, judged_ref))
        pairs, pairs_ref = read_jsonl(other / "pairs.jsonl"), read_jsonl(base / "pairs.jsonl")
        assert [(p["id"], p["chosen_ids"], p["rejected_ids"], p["label"]) for p in pairs] == [
            (p["id"], p["chosen_ids"], p["rejected_ids"], p["label"]) for p in pairs_ref
        ]
        assert all(abs(a["p"] - b["p"]) < 1e-5 for a, b in zip(pairs, pairs_ref))
    final, final_ref = (
        load_file(str(d / round_name(2) / "train" / "model" / "model.safetensors")) for d in (got, expected)
    )
    assert final.keys() == final_ref.keys()
    for name in final:
        assert (final[name] - final_ref[name]).abs().max().item() < 1e-5, name
