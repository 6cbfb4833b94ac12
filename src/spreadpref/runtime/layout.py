"""The run directory's layout: the one place that spells its files and folders.

    <output_dir>/
        config.yaml  manifest.json  summary.json  report.md  plots/  eval/
        seed/                   pi_0: model/ (or adapter/), checkpoints/, log_history.json, train_log.jsonl
        round-<i>/              generations.jsonl, pairs.jsonl, ...
            train/              pi_i: as seed/, and refinement.jsonl

A ``spreadpref train`` directory is one training stage: config.yaml, manifest.json, model/,
log_history.json and report.md at its top. The stages' own file names (generations.jsonl, pairs.jsonl)
belong to their record types in :mod:`spreadpref.data.artifacts`. The manifest names a stage by its
folder relative to the run (``seed``, ``round-2/train``).
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".spreadpref.lock"  # who holds the directory while a process writes there
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
LOG_HISTORY_FILE = "log_history.json"  # the Trainer's log history, as it keeps it
TRAIN_LOG_FILE = "train_log.jsonl"  # the per-step figures the terminal leaves out
REFINEMENT_FILE = "refinement.jsonl"  # self-refinement's decisions, one row per pair
HELD_OUT_FILE = "held_out.jsonl"  # which seed pairs a run holds out (never trained on), by id and content
MODEL_DIRECTORY = "model"
ADAPTER_DIRECTORY = "adapter"
CHECKPOINTS_DIRECTORY = "checkpoints"
PLOTS_DIRECTORY = "plots"
TENSORBOARD_DIRECTORY = "tensorboard"  # one folder per training stage (runtime/tracking.py)
EVAL_DIRECTORY = "eval"
EVAL_RESULTS_FILE = "eval.json"
SEED_STAGE = "seed"
TRAIN_STAGE = "train"  # a round's training, and the single stage of `spreadpref train`
GENERATE_STAGE, JUDGE_STAGE = "generate", "judge"
ROUND_STAGES = (GENERATE_STAGE, JUDGE_STAGE, TRAIN_STAGE)  # in the order they run

_ROUND_NAME = re.compile(r"round-(\d+)")


def round_name(i: int) -> str:
    """The folder (and manifest stage prefix) of round ``i``: ``round-<i>``."""
    return f"round-{i}"


def round_number(name: str) -> int | None:
    """``i`` for a folder named ``round-<i>``, else None."""
    match = _ROUND_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def round_stage(i: int, stage: str) -> str:
    """The manifest's name of one of round ``i``'s stages: ``round-<i>/<stage>``."""
    return f"{round_name(i)}/{stage}"


def round_of_stage(name: str, stage: str) -> int | None:
    """``i`` for the manifest name ``round-<i>/<stage>``, else None."""
    folder, _, rest = name.partition("/")
    return round_number(folder) if rest == stage else None


def round_directory(root: Path, i: int) -> Path:
    return root / round_name(i)


def round_training_directory(root: Path, i: int) -> Path:
    """Where round ``i`` trains pi_i (its model, checkpoints and training logs)."""
    return round_directory(root, i) / TRAIN_STAGE


def training_directory(root: Path, i: int) -> Path:
    """The stage folder that trained model ``i``: the seed stage for 0 (pi_0), round ``i``'s training after."""
    return root / SEED_STAGE if i == 0 else round_training_directory(root, i)


def model_stage(i: int) -> str:
    """The manifest's name of the stage that trained model ``i``."""
    return SEED_STAGE if i == 0 else round_stage(i, TRAIN_STAGE)


def stage_names(rounds: int, seed_stage: bool = True) -> list[str]:
    """A run's stages in the order they run: ``seed``, then each round's generate, judge and train."""
    rounds_stages = [round_stage(i, stage) for i in range(1, rounds + 1) for stage in ROUND_STAGES]
    return [SEED_STAGE, *rounds_stages] if seed_stage else rounds_stages
