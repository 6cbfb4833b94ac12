"""The pipeline's artifacts: one typed record per row of generations.jsonl, judged.jsonl and pairs.jsonl.

Each record is written with :meth:`to_row` and read back with :meth:`from_row`, which checks every
field and names the file, the line and the field when one is missing or of the wrong type. The
field descriptions are the JSONL schema (``schema_markdown`` renders them for the README).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from spreadpref.data.records import Message
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.errors import DataError
from spreadpref.runtime.files import read_jsonl_rows

R = TypeVar("R", bound="Artifact")


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field with its schema description."""
    return field(metadata={"doc": text}, **kwargs)


class Artifact:
    """Serialisation shared by the records below: plain JSON rows, checked on the way in."""

    FILE: ClassVar[str]

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_row(cls: type[R], row: Any, source: str = "<row>", location: str | None = None) -> R:
        if not isinstance(row, dict):
            raise DataError(source, location, None, f"expected a JSON object, got {type(row).__name__}")
        hints = get_type_hints(cls)
        values = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            if spec.name not in row:
                if spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING:
                    continue
                raise DataError(source, location, spec.name, f"missing (a {cls.__name__} row needs it)")
            values[spec.name] = _checked(row[spec.name], hints[spec.name], source, location, spec.name)
        return cls(**values)

    @classmethod
    def read(cls: type[R], path: Path) -> list[R]:
        """Every row of a JSONL file of this record."""
        return [cls.from_row(row, str(path), location) for location, row in read_jsonl_rows(path)]


_JSON_TYPES: dict[Any, tuple[type, ...]] = {float: (int, float), int: (int,), bool: (bool,), str: (str,), list: (list,)}


def _checked(value: Any, annotation: Any, source: str, location: str | None, name: str) -> Any:
    """``value`` if it has the annotated JSON type (an int passes as a float), else a DataError."""
    args = get_args(annotation)
    nullable = type(None) in args
    if nullable:
        annotation = next(arg for arg in args if arg is not type(None))
    if value is None:
        if nullable:
            return None
        raise DataError(source, location, name, "must not be null")
    accepted = _JSON_TYPES[get_origin(annotation) or annotation]
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
        raise DataError(source, location, name, f"expected {accepted[-1].__name__}, got {type(value).__name__}")
    if accepted == (int, float):
        value = float(value)
        if not math.isfinite(value):
            raise DataError(source, location, name, f"must be a finite number, got {value}")
    return value


@dataclass
class Sample(Artifact):
    """One sampled reply (a row of ``generations.jsonl``)."""

    FILE: ClassVar[str] = "generations.jsonl"

    prompt_id: str = doc("the prompt's id in the prompt file")
    prompt_index: int = doc("the prompt's position in this round's prompts")
    sample: int = doc("which of the K samples of the prompt (0 .. K-1)")
    prompt: list[Message] = doc("the prompt as chat messages")
    prompt_ids: list[int] = doc("the prompt rendered by the chat template, with the generation prompt")
    reply_ids: list[int] = doc("the reply's token ids; they end with the stop token when finish_reason is stop")
    text: str = doc("the reply decoded without special tokens")
    num_tokens: int = doc("len(reply_ids)")
    finish_reason: str = doc("stop (ended by a stop token) or length (cut off at max_new_tokens)")

    @property
    def cut_off(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class JudgedSample(Artifact):
    """A sample's log-probs and score (a row of ``judged.jsonl``).

    ``score`` is what ranks a prompt's samples: for SPA's implicit judge the log-ratio
    s = log pi_{i-1}(y|x) - log pi_ref(y|x) (beta-free; see :mod:`spreadpref.judges.implicit`); for an
    external judge, that judge's score.
    """

    FILE: ClassVar[str] = "judged.jsonl"

    prompt_id: str = doc("as in generations.jsonl")
    prompt_index: int = doc("as in generations.jsonl")
    sample: int = doc("as in generations.jsonl")
    text: str = doc("as in generations.jsonl")
    num_tokens: int = doc("as in generations.jsonl")
    finish_reason: str = doc("as in generations.jsonl")
    policy_logps: float = doc("log pi_{i-1}(y|x), summed over reply tokens: the round's DPO reference")
    reference_logps: float | None = doc("log pi_ref(y|x) under the judge reference; null without one")
    judged_tokens: int = doc("reply tokens scored")
    score: float = doc(
        "implicit judge: the log-ratio s (per-token means with judge.length_normalize); external judge: its score"
    )
    prefer: list[float] | None = doc(
        "external judges only: P(this sample is preferred to sample j), by j", default=None
    )
    judge_logps: float | None = doc(
        "log pi_judge(y|x) when judge.policy is not pi_{i-1} (the score's policy term); else null", default=None
    )
    base_logps: float | None = doc("log pi_base(y|x) under judge.base; null without it", default=None)
    previous_score: float | None = doc(
        "judge.consistency: the same score with the previous model as the judge's policy; else null", default=None
    )


@dataclass
class Pair(Artifact):
    """A self-labelled preference pair (a row of ``pairs.jsonl``): the best and the worst sample of a prompt."""

    FILE: ClassVar[str] = "pairs.jsonl"

    id: str = doc("round<i>-<prompt id>")
    prompt_id: str = doc("the prompt's id")
    prompt: list[Message] = doc("the prompt as chat messages")
    chosen: str = doc("text of the highest-scoring sample")
    rejected: str = doc("text of the lowest-scoring sample")
    prompt_ids: list[int] = doc("token ids, trained on exactly")
    chosen_ids: list[int] = doc("token ids, trained on exactly")
    rejected_ids: list[int] = doc("token ids, trained on exactly")
    chosen_truncated: bool = doc("the chosen reply was cut off (no EOS is appended in training)")
    rejected_truncated: bool = doc("the rejected reply was cut off")
    chosen_score: float = doc("the judge's score of the chosen reply")
    rejected_score: float = doc("the judge's score of the rejected reply")
    margin: float = doc("chosen_score - rejected_score")
    p: float = doc("preference probability: sigmoid(beta * margin) for the implicit judge, else the external judge's")
    ref_chosen_logps: float = doc("log pi_{i-1}(chosen|x): the DPO reference of round i")
    ref_rejected_logps: float = doc("log pi_{i-1}(rejected|x)")
    label: float = doc(
        "target probability that chosen is preferred (1.0; soft labels come from refinement)", default=1.0
    )

    def to_tokenized(self) -> TokenizedPair:
        """The pair as the trainer takes it: token ids and the judge's reference log-probs."""
        return TokenizedPair(
            id=self.id,
            prompt_ids=self.prompt_ids,
            chosen_ids=self.chosen_ids,
            rejected_ids=self.rejected_ids,
            label=self.label,
            ref_chosen_logps=self.ref_chosen_logps,
            ref_rejected_logps=self.ref_rejected_logps,
            chosen_truncated=self.chosen_truncated,
            rejected_truncated=self.rejected_truncated,
        )


@dataclass
class Verdict(Artifact):
    """An external judge's verdict on one sample (a row of ``verdicts.jsonl``, baselines only)."""

    FILE: ClassVar[str] = "verdicts.jsonl"

    prompt_index: int = doc("as in generations.jsonl")
    sample: int = doc("as in generations.jsonl")
    judge_score: float = doc("the external judge's score of the sample")
    prefer: list[float] = doc("P(this sample is preferred to sample j), by j (0.5 for itself)")


@dataclass
class GoldVerdict(Artifact):
    """The gold judge on one self-labelled pair (a row of ``gold.jsonl``; only with ``judge.gold``)."""

    FILE: ClassVar[str] = "gold.jsonl"

    pair_id: str = doc("the pair's id in pairs.jsonl")
    p: float = doc("the gold judge's P(chosen is better than rejected); 0.5 is a gold tie")
    chosen_score: float = doc("the gold judge's score of the chosen reply")
    rejected_score: float = doc("the gold judge's score of the rejected reply")
    margin: float = doc("the self-judge's margin of the pair (as in pairs.jsonl)")

    @property
    def correct(self) -> bool | None:
        """Whether the self-label agrees with the gold judge; None when the gold judge ties."""
        return None if self.p == 0.5 else self.p > 0.5


ARTIFACTS: tuple[type[Artifact], ...] = (Sample, JudgedSample, Pair, GoldVerdict)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("dict[str, str]", "message").replace("NoneType", "null")


def schema_markdown() -> str:
    """The JSONL schema of every artifact, as the README shows it."""
    lines = []
    for artifact in ARTIFACTS:
        summary = (artifact.__doc__ or "").strip().splitlines()[0].split(" (a row of")[0]
        lines += [f"`{artifact.FILE}`: {summary}.", "", "| field | type | meaning |", "|---|---|---|"]
        hints = get_type_hints(artifact)
        for spec in dataclasses.fields(artifact):  # type: ignore[arg-type]
            kind = _type_name(hints[spec.name])
            lines.append(f"| `{spec.name}` | {kind} | {spec.metadata['doc']} |")
        lines.append("")
    return "\n".join(lines)
