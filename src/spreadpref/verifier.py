"""A rule-based gold judge: IFEval-style verifiable constraints, checked by if-verifiable's checkers.

A benchmark prompt is an everyday task followed by one or more constraint sentences worded exactly
as IFEval words them ("Answer with less than 50 words.", "Wrap your entire response with double
quotation marks.", ...). A reply's gold score is the fraction of its constraints it satisfies.

The checkers are not re-implemented here: they are the maintained IFEval checkers of the PyPI
package ``if-verifiable`` (Apache-2.0), installed by the ``verify`` extra. Two of its needs are met
offline, never by a download at run time:

* NLTK's ``punkt_tab`` English sentence model (sentence counting) comes from a package installed
  from PyPI, ``llama-index-core``, whose wheel ships an NLTK data folder. It is installed with
  ``--no-deps`` purely as a data source (its own dependencies are heavy), so it cannot be part of
  the extra; see ``PUNKT_INSTALL_LINE``. An NLTK data folder that already holds ``punkt_tab`` (the
  ``NLTK_DATA`` variable or NLTK's default places) is used when that package is absent.
* ``langdetect`` (all-lowercase / all-capitals checks) ships its language profiles; it is seeded
  so that the same reply always gets the same verdict.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spreadpref.errors import DataError, JudgeError

VERIFY_INSTALL_LINE = 'pip install "spreadpref[verify]"   (or: pip install if-verifiable==0.1.2)'
PUNKT_INSTALL_LINE = "pip install --no-deps llama-index-core==0.14.25"
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
    LOWERCASE, CAPITALS, NUMBER_WORDS, NUMBER_SENTENCES, BULLETS, KEYWORDS, FORBIDDEN,
    END_PHRASE, QUOTATION, JSON_FORMAT, NO_COMMA, TITLE, POSTSCRIPT,
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
    "morning", "garden", "friend", "window", "simple", "journey", "careful", "bright", "kitchen",
    "balance", "weekend", "patience", "river", "notebook", "honest", "gentle", "season", "village",
    "lantern", "puzzle", "habit", "curious", "ocean", "sunlight", "teamwork", "promise", "calm",
    "budget", "music", "family",
)
# Words a reply must avoid: fillers that replies to most tasks tend to use. Disjoint from
# KEYWORD_POOL and from every end phrase, so no built prompt asks for and forbids the same word.
FORBIDDEN_POOL = (
    "very", "really", "just", "also", "important", "good", "great", "many", "things", "make",
    "best", "way", "time", "people", "use", "easy", "always",
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


@dataclass(frozen=True)
class Constraint:
    """One verifiable instruction: an IFEval instruction id and the kwargs of its checker."""

    instruction_id: str  # IFEval id, e.g. "change_case:english_lowercase"
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)  # may be {}


# --------------------------------------------------------------------------------------------
# Loading if-verifiable and its offline data
# --------------------------------------------------------------------------------------------


@functools.cache
def _instruction_registry() -> dict[str, Any]:
    """if-verifiable's IFEval registry: instruction id -> checker class (import on first use)."""
    try:
        registry = importlib.import_module("if_verifiable.ifeval.instructions_registry")
    except ImportError as error:
        raise JudgeError(f"the verifier needs the 'verify' extra, which is not installed ({error}). "
                         f"Install it with: {VERIFY_INSTALL_LINE}; and the sentence model with: "
                         f"{PUNKT_INSTALL_LINE}") from error
    return registry.INSTRUCTION_DICT


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


def _packaged_nltk_data_dir() -> Path | None:
    """The NLTK data folder inside the llama-index-core wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_static" / "nltk_cache"
        if (candidate / "tokenizers" / "punkt_tab" / "english").is_dir():
            return candidate
    return None


def _english_sentence_tokenizer() -> Any:
    """NLTK's punkt_tab English model (plain tables, no pickle), from a PyPI-installed data folder."""
    import nltk

    data_dir = _packaged_nltk_data_dir()
    if data_dir is not None and str(data_dir) not in nltk.data.path:
        # First in the path, so every machine with the package uses the same model.
        nltk.data.path.insert(0, str(data_dir))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError as error:
        raise JudgeError("the verifier needs NLTK's 'punkt_tab' sentence model, which is not installed. "
                         f"Install the package that ships it with: {PUNKT_INSTALL_LINE} "
                         "(--no-deps: it is used only as a data source). It is never downloaded "
                         "at run time.") from error
    return nltk.tokenize.PunktTokenizer("english")


@functools.cache
def _prepare_checkers() -> dict[str, Any]:
    """Make the checkers deterministic and offline, once; returns the registry."""
    registry = _instruction_registry()
    import langdetect

    # langdetect samples n-grams at random; a fixed seed gives one verdict per text.
    langdetect.DetectorFactory.seed = 0
    tokenizer = _english_sentence_tokenizer()
    # if-verifiable counts sentences with nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    # behind the lru-cached helper _get_sentence_tokenizer. Replacing that helper (looked up as a
    # module global on each call) hands it the punkt_tab model: no pickle, no lookup elsewhere.
    util = importlib.import_module("if_verifiable.ifeval.instructions_util")
    util._get_sentence_tokenizer = lambda: tokenizer
    return registry


# --------------------------------------------------------------------------------------------
# Reading and checking constraints
# --------------------------------------------------------------------------------------------


def _checker_arg_names(checker_class: type) -> set[str]:
    """The keyword arguments a checker's build_description accepts."""
    parameters = inspect.signature(checker_class.build_description).parameters
    return {name for name in parameters if name != "self"}


def _build_checker(constraint: Constraint, prompt: str, source: str, location: str | None) -> Any:
    """A configured if-verifiable checker; DataError if the id or the kwargs are unusable.

    Every kwarg the checker takes must be given: left out, the checker would draw it at random,
    and a gold judge must not.
    """
    registry = _prepare_checkers()
    checker_class = registry.get(constraint.instruction_id)
    if checker_class is None:
        raise DataError(source, location, "instruction_id_list",
                        f"unknown IFEval instruction id {constraint.instruction_id!r}")
    kwargs = {key: value for key, value in constraint.kwargs.items() if value is not None}
    accepted = _checker_arg_names(checker_class)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise DataError(source, location, "kwargs", f"{constraint.instruction_id}: unknown kwargs "
                        f"{unknown} (it takes {sorted(accepted)})")
    missing = sorted(accepted - set(kwargs) - {"prompt"})
    if missing:
        raise DataError(source, location, "kwargs",
                        f"{constraint.instruction_id}: missing kwargs {missing}")
    checker = checker_class(constraint.instruction_id)
    try:
        checker.build_description(**kwargs)
        if "prompt" in accepted:
            checker.build_description(prompt=prompt)
    except (TypeError, ValueError, AttributeError) as error:
        raise DataError(source, location, "kwargs",
                        f"{constraint.instruction_id}: bad kwargs {kwargs}: {error}") from error
    return checker


def constraints_from_row(row: dict) -> list[Constraint]:
    """The constraints of an IFEval-format row ("instruction_id_list" and "kwargs", same length).

    Kwargs that are None are dropped (IFEval's published rows list every kwarg of every kind, unset
    ones as None). Raises DataError naming the problem if the row is malformed or an id is unknown.
    """
    source = f"row {row.get('id', row.get('key', '?'))}" if isinstance(row, dict) else "row"
    if not isinstance(row, dict):
        raise DataError(source, None, None, f"expected a dict, got {type(row).__name__}")
    ids, kwargs_list = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(source, None, "instruction_id_list", "must be a list of strings")
    if not isinstance(kwargs_list, list) or not all(isinstance(k, dict) for k in kwargs_list):
        raise DataError(source, None, "kwargs", "must be a list of dicts")
    if len(ids) != len(kwargs_list):
        raise DataError(source, None, "kwargs", f"has {len(kwargs_list)} entries but "
                        f"instruction_id_list has {len(ids)}")
    constraints = []
    for index, (instruction_id, kwargs) in enumerate(zip(ids, kwargs_list)):
        constraint = Constraint(instruction_id, {k: v for k, v in kwargs.items() if v is not None})
        _build_checker(constraint, str(row.get("prompt", "")), source, f"constraint {index}")
        constraints.append(constraint)
    return constraints


def constraints_to_row(constraints: list[Constraint]) -> dict[str, Any]:
    """The IFEval-format keys for constraints (the inverse of constraints_from_row)."""
    return {"instruction_id_list": [c.instruction_id for c in constraints],
            "kwargs": [dict(c.kwargs) for c in constraints]}


def check(reply: str, constraints: list[Constraint], prompt: str = "", *, loose: bool = False) -> list[bool]:
    """One verdict per constraint, by IFEval's strict rule (an empty reply follows nothing).

    With loose=True a constraint also passes if it holds on one of IFEval's loose variants of the
    reply (first or last line dropped, markdown asterisks removed).
    """
    variants = [reply]
    if loose:
        variants = importlib.import_module("if_verifiable.common").get_loose_transformations(reply)
    verdicts = []
    for index, constraint in enumerate(constraints):
        checker = _build_checker(constraint, prompt, "constraints", f"constraint {index}")
        verdicts.append(any(v.strip() and bool(checker.check_following(v)) for v in variants))
    return verdicts


def verifier_score(reply: str, constraints: list[Constraint], prompt: str = "", *, loose: bool = False) -> float:
    """The fraction of constraints the reply satisfies, in [0, 1]; 1.0 when there are none."""
    if not constraints:
        return 1.0
    verdicts = check(reply, constraints, prompt, loose=loose)
    return sum(verdicts) / len(verdicts)


# --------------------------------------------------------------------------------------------
# Building constrained prompts
# --------------------------------------------------------------------------------------------


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
        if all(kind not in conflicts.get(other, ()) and other not in conflicts.get(kind, ())
               for other in chosen):
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


def build_constrained_prompts(tasks: list[dict], seed: int, per_task: int = 1,
                              constraints_per_prompt: tuple[int, int] = (1, 2)) -> list[dict]:
    """Rows {"id", "prompt", "instruction_id_list", "kwargs", "task_id"}: each task with constraints.

    Each of a task's `per_task` rows gets between constraints_per_prompt[0] and [1] constraints of
    BUILDER_KINDS, none in conflict. The draw for a row depends only on (seed, task id, row number),
    so the result is deterministic and a task's rows do not change when other tasks are added.
    """
    low, high = constraints_per_prompt
    if not 1 <= low <= high <= len(BUILDER_KINDS):
        raise ValueError(f"constraints_per_prompt must satisfy 1 <= low <= high <= {len(BUILDER_KINDS)}, "
                         f"got {constraints_per_prompt}")
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
            rows.append({"id": f"{task['id']}-c{number}",
                         "prompt": _constrained_prompt(task["prompt"], constraints),
                         **constraints_to_row(constraints),
                         "task_id": task["id"]})
    return rows


def load_ifeval_tasks() -> list[dict]:
    """The shipped everyday tasks ({"id", "prompt"}) that build_constrained_prompts turns into prompts."""
    text = resources.files("spreadpref.resources").joinpath(TASKS_RESOURCE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
