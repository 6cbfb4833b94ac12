"""Builds the bundled verifiable prompt sets: everyday tasks plus IFEval-style constraint sentences.

Used by ``make_ifeval_sets.py`` beside it; the runtime gold judge is ``spreadpref.judges.verifier``.
A prompt's constraints are drawn so that no two conflict and a 135M chat model meets each kind
sometimes, not always or never. The draw depends only on (seed, task id, row number).
"""

from __future__ import annotations

import functools
import importlib
import json
import random
from collections.abc import Callable
from importlib import resources
from typing import Any

from spreadpref.errors import DataError
from spreadpref.judges.verifier import (
    Constraint,
    _instruction_registry,
    _prepare_checkers,
    constraints_to_row,
)

TASKS_RESOURCE = "ifeval_tasks.jsonl"

# --------------------------------------------------------------------------------------------
# The constraint kinds the prompt builder uses, and the values it draws their kwargs from.
# Thresholds are chosen so that a 135M chat model meets each kind sometimes, not always or never.
# --------------------------------------------------------------------------------------------

LOWERCASE = "change_case:english_lowercase"
CAPITALS = "change_case:english_capital"
NUMBER_WORDS = "length_constraints:number_words"
NUMBER_SENTENCES = "length_constraints:number_sentences"
BULLETS = "detectable_format:number_bullet_lists"
KEYWORDS = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
END_PHRASE = "startend:end_checker"
QUOTATION = "startend:quotation"
JSON_FORMAT = "detectable_format:json_format"
NO_COMMA = "punctuation:no_comma"
TITLE = "detectable_format:title"
POSTSCRIPT = "detectable_content:postscript"

BUILDER_KINDS: tuple[str, ...] = (
    LOWERCASE,
    CAPITALS,
    NUMBER_WORDS,
    NUMBER_SENTENCES,
    BULLETS,
    KEYWORDS,
    FORBIDDEN,
    END_PHRASE,
    QUOTATION,
    JSON_FORMAT,
    NO_COMMA,
    TITLE,
    POSTSCRIPT,
)

WORD_LIMITS_LESS_THAN = (30, 40, 50, 60, 80)
WORD_LIMITS_AT_LEAST = (60, 80, 100, 120)
SENTENCE_LIMITS_LESS_THAN = (3, 4, 5, 6)
SENTENCE_LIMITS_AT_LEAST = (3, 4, 5)
BULLET_COUNTS = (2, 3, 4)
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
END_PHRASES = (  # none ends in ".": the IFEval sentence puts its own "." right after the phrase
    "Any other questions?",
    "Is there anything else I can help with?",
    "Have a nice day!",
    "Thanks for reading!",
    "Hope this helps!",
)
# Words a reply must contain: everyday nouns and adjectives that fit most topics.
KEYWORD_POOL = (
    "morning",
    "garden",
    "friend",
    "window",
    "simple",
    "journey",
    "careful",
    "bright",
    "kitchen",
    "balance",
    "weekend",
    "patience",
    "river",
    "notebook",
    "honest",
    "gentle",
    "season",
    "village",
    "lantern",
    "puzzle",
    "habit",
    "curious",
    "ocean",
    "sunlight",
    "teamwork",
    "promise",
    "calm",
    "budget",
    "music",
    "family",
)
# Words a reply must avoid: fillers that replies to most tasks tend to use. Disjoint from
# KEYWORD_POOL and from every end phrase, so no built prompt asks for and forbids the same word.
FORBIDDEN_POOL = (
    "very",
    "really",
    "just",
    "also",
    "important",
    "good",
    "great",
    "many",
    "things",
    "make",
    "best",
    "way",
    "time",
    "people",
    "use",
    "easy",
    "always",
)

# Pairs the IFEval conflict table allows but that are contradictory or ambiguous in practice.
EXTRA_CONFLICTS: tuple[tuple[str, str], ...] = (
    # Two length limits together can contradict each other (e.g. < 30 words but >= 5 sentences).
    (NUMBER_WORDS, NUMBER_SENTENCES),
    # A quoted reply's first bullet line starts with '"' and no longer counts as a bullet.
    (QUOTATION, BULLETS),
    # Both claim the very end of the reply.
    (POSTSCRIPT, END_PHRASE),
    # "Start with P.S." / "end with this exact phrase" cannot be written all in one case.
    (LOWERCASE, POSTSCRIPT),
    (LOWERCASE, END_PHRASE),
    (CAPITALS, END_PHRASE),
)


@functools.cache
def instruction_conflicts() -> dict[str, frozenset[str]]:
    """IFEval's conflict table made symmetric (as its own conflict_make does), plus EXTRA_CONFLICTS."""
    _instruction_registry()
    table = importlib.import_module("if_verifiable.ifeval.instructions_registry").INSTRUCTION_CONFLICTS
    conflicts: dict[str, set[str]] = {key: set(values) | {key} for key, values in table.items()}
    pairs = [(a, b) for a, values in table.items() for b in values] + list(EXTRA_CONFLICTS)
    for a, b in pairs:
        conflicts.setdefault(a, {a}).add(b)
        conflicts.setdefault(b, {b}).add(a)
    return {key: frozenset(values) for key, values in conflicts.items()}


def _word_limit(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.7:  # mostly "keep it short", which small models overrun
        return {"relation": "less than", "num_words": rng.choice(WORD_LIMITS_LESS_THAN)}
    return {"relation": "at least", "num_words": rng.choice(WORD_LIMITS_AT_LEAST)}


def _sentence_limit(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.6:
        return {"relation": "less than", "num_sentences": rng.choice(SENTENCE_LIMITS_LESS_THAN)}
    return {"relation": "at least", "num_sentences": rng.choice(SENTENCE_LIMITS_AT_LEAST)}


KWARG_DRAWERS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    LOWERCASE: lambda rng: {},
    CAPITALS: lambda rng: {},
    NUMBER_WORDS: _word_limit,
    NUMBER_SENTENCES: _sentence_limit,
    BULLETS: lambda rng: {"num_bullets": rng.choice(BULLET_COUNTS)},
    # Sorted, as the checker sorts them, so the stored kwargs match the prompt's wording.
    KEYWORDS: lambda rng: {"keywords": sorted(rng.sample(KEYWORD_POOL, rng.randint(1, 2)))},
    FORBIDDEN: lambda rng: {"forbidden_words": sorted(rng.sample(FORBIDDEN_POOL, rng.randint(1, 2)))},
    END_PHRASE: lambda rng: {"end_phrase": rng.choice(END_PHRASES)},
    QUOTATION: lambda rng: {},
    JSON_FORMAT: lambda rng: {},
    NO_COMMA: lambda rng: {},
    TITLE: lambda rng: {},
    POSTSCRIPT: lambda rng: {"postscript_marker": rng.choice(POSTSCRIPT_MARKERS)},
}


def _pick_compatible_kinds(rng: random.Random, count: int) -> list[str]:
    """Up to `count` builder kinds, no two of them in conflict."""
    conflicts = instruction_conflicts()
    order = list(BUILDER_KINDS)
    rng.shuffle(order)
    chosen: list[str] = []
    for kind in order:
        if len(chosen) == count:
            break
        if all(kind not in conflicts.get(other, ()) and other not in conflicts.get(kind, ()) for other in chosen):
            chosen.append(kind)
    return chosen


def describe(constraint: Constraint) -> str:
    """The constraint's sentence exactly as IFEval words it (the checker's build_description)."""
    checker_class = _prepare_checkers()[constraint.instruction_id]
    return checker_class(constraint.instruction_id).build_description(**constraint.kwargs)


def _constrained_prompt(task_prompt: str, constraints: list[Constraint]) -> str:
    """The task, then one sentence per constraint; multi-line ones (bullet examples) go last."""
    sentences = [describe(c) for c in constraints]
    sentences.sort(key=lambda sentence: "\n" in sentence)  # stable: keeps the drawn order otherwise
    return " ".join([task_prompt.strip(), *sentences])


def _validate_tasks(tasks: list[dict]) -> None:
    seen: set[str] = set()
    for index, task in enumerate(tasks):
        location = f"task {index}"
        if not isinstance(task, dict):
            raise DataError("tasks", location, None, f"expected a dict, got {type(task).__name__}")
        task_id, prompt = task.get("id"), task.get("prompt")
        if not isinstance(task_id, str) or not task_id:
            raise DataError("tasks", location, "id", "must be a non-empty string")
        if task_id in seen:
            raise DataError("tasks", location, "id", f"duplicate id {task_id!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("tasks", location, "prompt", "must be a non-empty string")
        seen.add(task_id)


def build_constrained_prompts(
    tasks: list[dict], seed: int, per_task: int = 1, constraints_per_prompt: tuple[int, int] = (1, 2)
) -> list[dict]:
    """Rows {"id", "prompt", "instruction_id_list", "kwargs", "task_id"}: each task with constraints.

    Each of a task's `per_task` rows gets between constraints_per_prompt[0] and [1] constraints of
    BUILDER_KINDS, none in conflict. The draw for a row depends only on (seed, task id, row number),
    so the result is deterministic and a task's rows do not change when other tasks are added.
    """
    low, high = constraints_per_prompt
    if not 1 <= low <= high <= len(BUILDER_KINDS):
        raise ValueError(
            f"constraints_per_prompt must satisfy 1 <= low <= high <= {len(BUILDER_KINDS)}, "
            f"got {constraints_per_prompt}"
        )
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    _validate_tasks(tasks)
    rows = []
    for task in tasks:
        for number in range(per_task):
            # A string seed is hashed with SHA-512 by random: stable across runs and platforms.
            rng = random.Random(f"spreadpref-verifier:{seed}:{task['id']}:{number}")
            kinds = _pick_compatible_kinds(rng, rng.randint(low, high))
            constraints = [Constraint(kind, KWARG_DRAWERS[kind](rng)) for kind in kinds]
            rows.append(
                {
                    "id": f"{task['id']}-c{number}",
                    "prompt": _constrained_prompt(task["prompt"], constraints),
                    **constraints_to_row(constraints),
                    "task_id": task["id"],
                }
            )
    return rows


def load_ifeval_tasks() -> list[dict]:
    """The shipped everyday tasks ({"id", "prompt"}) that build_constrained_prompts turns into prompts."""
    text = resources.files("spreadpref.resources").joinpath(TASKS_RESOURCE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
