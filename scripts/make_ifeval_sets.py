"""Regenerate the bundled verifiable prompt sets from resources/ifeval_tasks.jsonl.

    python scripts/make_ifeval_sets.py          # writes src/spreadpref/resources/ifeval_*.jsonl

Tasks are split by number, so the evaluation tasks never appear in a training prompt, not even with
other constraints: task n with n % 5 == 0 -> evaluation, n % 5 == 1 -> seed prompts (to be labelled
by the verifier), the rest -> the prompt pool of the rounds. Needs the `verify` extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ifeval_builder import build_constrained_prompts, load_ifeval_tasks

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "spreadpref" / "resources"
SEED = 2026
SPLITS = {"ifeval_eval.jsonl": {0}, "ifeval_seed_prompts.jsonl": {1}, "ifeval_prompts.jsonl": {2, 3, 4}}


def task_number(task: dict) -> int:
    return int(task["id"].split("-")[1])


def build_sets() -> dict[str, list[dict]]:
    tasks = load_ifeval_tasks()
    return {
        name: build_constrained_prompts([t for t in tasks if task_number(t) % 5 in remainders], seed=SEED)
        for name, remainders in SPLITS.items()
    }


def main() -> int:
    for name, rows in build_sets().items():
        (RESOURCES / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{name}: {len(rows)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
