"""A rule-based gold judge: IFEval-style verifiable constraints, checked by if-verifiable's checkers.

A benchmark prompt is an everyday task followed by one or more constraint sentences worded exactly
as IFEval words them ("Answer with less than 50 words.", "Wrap your entire response with double
quotation marks.", ...). A reply's gold score is the fraction of its constraints it satisfies.

The checkers are not re-implemented here: they are the maintained IFEval checkers of the PyPI
package ``if-verifiable`` (Apache-2.0), installed by the ``verify`` extra. Two of its needs are met
offline, never by a download at run time:

* Sentences (the sentence-count checks) and words (the capital-word count) are split by NLTK's Punkt
  algorithm with a hand-written list of English abbreviations and no data files
  (:mod:`spreadpref.judges.sentences`), instead of NLTK's published ``punkt`` model, which no package
  ships and NLTK would download.
* ``langdetect`` (all-lowercase / all-capitals checks) ships its language profiles; it is seeded
  so that the same reply always gets the same verdict.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from dataclasses import dataclass, field
from typing import Any

from spreadpref.errors import DataError, JudgeError
from spreadpref.judges import sentences
from spreadpref.judges.base import Comparison, ExactScoreJudge

VERIFY_INSTALL_LINE = 'pip install "spreadpref[verify]"   (or: pip install if-verifiable==0.1.2)'


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
        raise JudgeError(
            f"the verifier needs the 'verify' extra, which is not installed ({error}). "
            f"Install it with: {VERIFY_INSTALL_LINE}"
        ) from error
    return registry.INSTRUCTION_DICT


class _NltkForCheckers(types.ModuleType):
    """``nltk`` as if-verifiable's helpers see it, with a ``word_tokenize`` that needs no data files."""

    def __init__(self) -> None:
        super().__init__("nltk")
        self.word_tokenize = sentences.word_tokenize

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("nltk"), name)


@functools.cache
def _prepare_checkers() -> dict[str, Any]:
    """Make the checkers deterministic and offline, once; returns the registry."""
    registry = _instruction_registry()
    import langdetect  # noqa: PLC0415 - the optional `verify` extra

    # langdetect samples n-grams at random; a fixed seed gives one verdict per text.
    langdetect.DetectorFactory.seed = 0
    # if-verifiable counts sentences with nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    # behind the helper _get_sentence_tokenizer, and counts capital words with nltk.word_tokenize,
    # which loads NLTK's punkt_tab model. Both are looked up as this module's globals on each call;
    # replacing them here (not in nltk itself) hands the checkers the data-free splitter.
    util = importlib.import_module("if_verifiable.ifeval.instructions_util")
    util._get_sentence_tokenizer = sentences.english_sentence_tokenizer
    util.nltk = _NltkForCheckers()
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
        raise DataError(
            source, location, "instruction_id_list", f"unknown IFEval instruction id {constraint.instruction_id!r}"
        )
    kwargs = {key: value for key, value in constraint.kwargs.items() if value is not None}
    accepted = _checker_arg_names(checker_class)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise DataError(
            source,
            location,
            "kwargs",
            f"{constraint.instruction_id}: unknown kwargs {unknown} (it takes {sorted(accepted)})",
        )
    missing = sorted(accepted - set(kwargs) - {"prompt"})
    if missing:
        raise DataError(source, location, "kwargs", f"{constraint.instruction_id}: missing kwargs {missing}")
    checker = checker_class(constraint.instruction_id)
    try:
        checker.build_description(**kwargs)
        if "prompt" in accepted:
            checker.build_description(prompt=prompt)
    except (TypeError, ValueError, AttributeError) as error:
        raise DataError(
            source, location, "kwargs", f"{constraint.instruction_id}: bad kwargs {kwargs}: {error}"
        ) from error
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
        raise DataError(
            source, None, "kwargs", f"has {len(kwargs_list)} entries but instruction_id_list has {len(ids)}"
        )
    constraints = []
    for index, (instruction_id, kwargs) in enumerate(zip(ids, kwargs_list)):
        constraint = Constraint(instruction_id, {k: v for k, v in kwargs.items() if v is not None})
        _build_checker(constraint, str(row.get("prompt", "")), source, f"constraint {index}")
        constraints.append(constraint)
    return constraints


def constraints_to_row(constraints: list[Constraint]) -> dict[str, Any]:
    """The IFEval-format keys for constraints (the inverse of constraints_from_row)."""
    return {
        "instruction_id_list": [c.instruction_id for c in constraints],
        "kwargs": [dict(c.kwargs) for c in constraints],
    }


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
# The judge


class VerifierJudge(ExactScoreJudge):
    """Score = fraction of the prompt's verifiable constraints a reply satisfies; exact preferences."""

    name = "verifier"

    def __init__(self) -> None:
        _instruction_registry()  # the 'verify' extra, checked when the judge is made: before any model answers

    def scores(self, comparison: Comparison) -> list[float]:
        if "instruction_id_list" not in comparison.metadata:
            raise JudgeError(
                f"prompt {comparison.id!r} has no verifiable constraints: the verifier judge "
                "needs instruction_id_list and kwargs columns on every prompt (IFEval format)"
            )
        constraints = constraints_from_row(comparison.metadata)
        prompt_text = "\n".join(m["content"] for m in comparison.prompt if m["role"] == "user")
        return [verifier_score(reply, constraints, prompt_text) for reply in comparison.replies]
