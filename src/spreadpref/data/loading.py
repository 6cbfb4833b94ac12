"""Preference data: one canonical record, loaders for the usual formats, and strict validation.

Every input row becomes a :class:`PreferenceRecord` (prompt as chat messages, a chosen and a
rejected assistant reply, a target probability ``label``) or a :class:`PromptRecord`. Accepted
shapes, per row:

* conversational, explicit prompt: ``prompt`` is a list of messages, ``chosen``/``rejected`` are
  a one-message assistant list or a string;
* conversational, implicit prompt (UltraFeedback-binarized style): ``chosen``/``rejected`` are whole
  conversations sharing a prefix; the prefix is the prompt (an explicit ``prompt`` column, if any,
  must agree with it);
* plain strings: ``prompt``, ``chosen``, ``rejected`` are strings (the prompt becomes one user turn).

A bad row raises :class:`DataError` naming the file, line or row, and field; with
``skip_invalid`` it is skipped and counted in :class:`LoadReport` instead.
"""

from __future__ import annotations

import math
import re
from typing import Any

from spreadpref.config import ColumnMap, DataSettings
from spreadpref.data.records import (
    ROLES,
    TOKEN_COLUMNS,
    LoadReport,
    Message,
    PreferenceRecord,
    PromptRecord,
)
from spreadpref.data.sources import UnreadableRow, iter_rows
from spreadpref.errors import DataError

# ---------------------------------------------------------------------------------------------
# Normalisation of one row


class ScoreTie(Exception):
    """A row whose two scores are equal (data.scores=drop_ties): dropped and counted, not an error."""


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"  # how HH-RLHF marks turns


def is_transcript(value: Any) -> bool:
    """An HH-RLHF style dialogue in one string: "\n\nHuman: ... \n\nAssistant: ..."."""
    return isinstance(value, str) and value.lstrip(" ").startswith((HUMAN, HUMAN.lstrip())) and ASSISTANT in value


def transcript_messages(text: str) -> list[Message]:
    """The turns of an HH-RLHF transcript; a trailing empty "Assistant:" (a prompt column) is left out."""
    text = "\n\n" + text.lstrip(" \n") if not text.startswith("\n\n") else text
    parts = re.split(r"\n\n(Human|Assistant):", text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def shared_text_prefix(a: str, b: str) -> str:
    """The longest common prefix of two strings, cut back to a word boundary (TRL's implicit prompt)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    prefix = a[:n]
    if n < min(len(a), len(b)) and not prefix.endswith((" ", "\n")):
        cut = max(prefix.rfind(" "), prefix.rfind("\n"))
        prefix = prefix[: cut + 1] if cut >= 0 else ""
    return prefix


def parse_preference(
    row: Any,
    columns: ColumnMap,
    source: str,
    location: str,
    system_prompt: str | None = None,
    scores: str = "drop_ties",
) -> PreferenceRecord:
    if isinstance(row, UnreadableRow):
        raise DataError(source, location, None, row.reason)
    if not isinstance(row, dict):
        raise DataError(source, location, None, f"a record must be an object, got {type(row).__name__}")

    def fail(field_name: str, message: str) -> DataError:
        return DataError(source, location, field_name, message)

    for required in (columns.chosen, columns.rejected):
        if required not in row or row[required] is None:
            raise fail(required, f"missing (columns present: {', '.join(map(str, row)) or 'none'})")
    chosen_raw, rejected_raw = row[columns.chosen], row[columns.rejected]
    prompt_raw = row.get(columns.prompt)
    if is_transcript(chosen_raw) and is_transcript(rejected_raw):  # HH-RLHF: whole dialogues in strings
        chosen_raw, rejected_raw = transcript_messages(chosen_raw), transcript_messages(rejected_raw)
        if is_transcript(prompt_raw) or (isinstance(prompt_raw, str) and prompt_raw.strip().endswith("Assistant:")):
            prompt_raw = transcript_messages(prompt_raw)
    elif prompt_raw is None and isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        # TRL's implicit-prompt language-modelling format: the prompt is the text both strings start with.
        shared = shared_text_prefix(chosen_raw, rejected_raw)
        if shared.strip():
            prompt_raw, chosen_raw, rejected_raw = (
                shared.strip(),
                chosen_raw[len(shared) :],
                rejected_raw[len(shared) :],
            )

    if isinstance(chosen_raw, list) or isinstance(rejected_raw, list):
        prompt, chosen, rejected = _split_conversations(prompt_raw, chosen_raw, rejected_raw, columns, fail)
    else:
        if prompt_raw is None:
            raise fail(
                columns.prompt,
                "missing; plain-string replies need an explicit prompt, or a shared start to take it from",
            )
        prompt = _prompt_messages(prompt_raw, columns.prompt, fail)
        # Generated pairs carry their token ids; a reply that was only EOS has empty text, legitimately.
        allow_empty = _token_ids(row, fail) is not None
        chosen = _reply_text(chosen_raw, columns.chosen, fail, allow_empty)
        rejected = _reply_text(rejected_raw, columns.rejected, fail, allow_empty)

    prompt = _with_system_prompt(prompt, system_prompt)
    _check_roles(prompt, columns.prompt, fail)
    label = _probability(row.get(columns.label, 1.0), columns.label, fail)
    if scores != "ignore" and row.get(columns.score_chosen) is not None and row.get(columns.score_rejected) is not None:
        label = _label_from_scores(
            _number(row[columns.score_chosen], columns.score_chosen, fail),
            _number(row[columns.score_rejected], columns.score_rejected, fail),
            scores,
        )
    return PreferenceRecord(
        id=_record_id(row, columns.id, location, fail),
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        label=label,
        weight=_weight(row.get(columns.weight, 1.0), columns.weight, fail),
        chosen_truncated=_flag(row.get("chosen_truncated", False), "chosen_truncated", fail),
        rejected_truncated=_flag(row.get("rejected_truncated", False), "rejected_truncated", fail),
        ref_chosen_logps=_optional_logp(row.get(columns.ref_chosen_logps), columns.ref_chosen_logps, fail),
        ref_rejected_logps=_optional_logp(row.get(columns.ref_rejected_logps), columns.ref_rejected_logps, fail),
        token_ids=_token_ids(row, fail),
    )


def _label_from_scores(chosen: float, rejected: float, mode: str) -> float:
    margin = chosen - rejected
    if mode == "soft":
        return 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))
    if margin == 0:
        raise ScoreTie
    return 1.0 if margin > 0 else 0.0


def _token_ids(row: dict, fail) -> dict[str, list[int]] | None:
    present = [name for name in TOKEN_COLUMNS if row.get(name) is not None]
    if not present:
        return None
    if len(present) != len(TOKEN_COLUMNS):
        missing = sorted(set(TOKEN_COLUMNS) - set(present))
        raise fail(missing[0], "token ids must be given for prompt, chosen and rejected together")
    ids = {}
    for name in TOKEN_COLUMNS:
        value = row[name]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
        ):
            raise fail(name, "must be a non-empty list of non-negative integers")
        ids[name] = value
    return ids


def parse_prompt(
    row: Any, columns: ColumnMap, source: str, location: str, system_prompt: str | None = None
) -> PromptRecord:
    if isinstance(row, UnreadableRow):
        raise DataError(source, location, None, row.reason)
    if isinstance(row, str):
        row = {columns.prompt: row}
    if not isinstance(row, dict):
        raise DataError(source, location, None, f"a record must be an object, got {type(row).__name__}")

    def fail(field_name: str, message: str) -> DataError:
        return DataError(source, location, field_name, message)

    if columns.prompt in row and row[columns.prompt] is not None:
        prompt = _prompt_messages(row[columns.prompt], columns.prompt, fail)
    elif "messages" in row:
        prompt = _prompt_messages(row["messages"], "messages", fail)
        if prompt and prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]  # a full conversation: the prompt is everything before the last reply
    else:
        raise fail(columns.prompt, f"missing (columns present: {', '.join(map(str, row)) or 'none'})")
    prompt = _with_system_prompt(prompt, system_prompt)
    _check_roles(prompt, columns.prompt, fail)
    metadata = {str(k): v for k, v in row.items() if k not in (columns.prompt, columns.id, "messages")}
    return PromptRecord(id=_record_id(row, columns.id, location, fail), prompt=prompt, metadata=metadata)


def _split_conversations(prompt_raw, chosen_raw, rejected_raw, columns: ColumnMap, fail):
    kinds = {
        name: type(value).__name__ for name, value in ((columns.chosen, chosen_raw), (columns.rejected, rejected_raw))
    }
    if sorted(kinds.values()) == ["list", "str"]:  # each is valid alone; together they are two formats
        as_list = next(name for name, kind in kinds.items() if kind == "list")
        as_text = next(name for name, kind in kinds.items() if kind == "str")
        raise fail(
            f"{columns.chosen}/{columns.rejected}",
            f"'{as_list}' is a list of messages but '{as_text}' is a string: give both replies in one format, "
            "both strings or both message lists",
        )
    chosen_msgs = _messages(chosen_raw, columns.chosen, fail)
    rejected_msgs = _messages(rejected_raw, columns.rejected, fail)
    shared = 0
    while shared < min(len(chosen_msgs), len(rejected_msgs)) - 1 and chosen_msgs[shared] == rejected_msgs[shared]:
        shared += 1
    prefix = chosen_msgs[:shared]
    for name, msgs in ((columns.chosen, chosen_msgs), (columns.rejected, rejected_msgs)):
        tail = msgs[shared:]
        if len(tail) != 1 or tail[0]["role"] != "assistant":
            raise fail(
                name,
                "after the part shared with the other reply there must be exactly one "
                f"assistant message, found {[m['role'] for m in tail]}",
            )
    if prefix:
        if prompt_raw is not None:
            explicit = _prompt_messages(prompt_raw, columns.prompt, fail)
            if explicit != prefix and not (
                isinstance(prompt_raw, str) and prefix[-1]["content"].strip() == prompt_raw.strip()
            ):
                raise fail(columns.prompt, "does not match the conversation shared by chosen and rejected")
        prompt = prefix
    else:
        if prompt_raw is None:
            raise fail(columns.prompt, "missing, and chosen/rejected share no conversation prefix to take it from")
        prompt = _prompt_messages(prompt_raw, columns.prompt, fail)
    chosen = _reply_text(chosen_msgs[shared]["content"], columns.chosen, fail)
    rejected = _reply_text(rejected_msgs[shared]["content"], columns.rejected, fail)
    return prompt, chosen, rejected


def _messages(value: Any, name: str, fail) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise fail(name, "must be a non-empty list of {role, content} messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise fail(f"{name}[{index}]", "each message needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise fail(f"{name}[{index}].role", f"unknown role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise fail(f"{name}[{index}].content", f"must be a string, got {type(content).__name__}")
        if not content.strip():
            raise fail(f"{name}[{index}].content", "is empty")
        _check_encodable(content, f"{name}[{index}].content", fail)
        messages.append({"role": role, "content": content})
    return messages


def _prompt_messages(value: Any, name: str, fail) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise fail(name, "is empty")
        _check_encodable(value, name, fail)
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return _messages(value, name, fail)
    raise fail(name, f"must be a string or a list of messages, got {type(value).__name__}")


def _reply_text(value: Any, name: str, fail, allow_empty: bool = False) -> str:
    if isinstance(value, list):
        messages = _messages(value, name, fail)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise fail(name, "a reply given as messages must be exactly one assistant message")
        value = messages[0]["content"]
    if not isinstance(value, str):
        raise fail(name, f"must be a string, got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise fail(name, "is empty")
    _check_encodable(value, name, fail)
    return value


def _check_encodable(text: str, name: str, fail) -> None:
    """Text the tokenizer can take: JSON can escape half of a UTF-16 pair ("\\ud800"), which is no character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise fail(
            name,
            f"holds {text[err.start]!r} at character {err.start}, half of a UTF-16 surrogate pair and no character "
            "(a text tool split an emoji or symbol); remove it or write the whole character",
        ) from None


def _with_system_prompt(prompt: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and (not prompt or prompt[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def _check_roles(prompt: list[Message], name: str, fail) -> None:
    turns = prompt[1:] if prompt and prompt[0]["role"] == "system" else prompt
    if not turns:
        raise fail(name, "has no user message")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            roles = [m["role"] for m in prompt]
            raise fail(name, f"roles must alternate user/assistant after an optional system message, got {roles}")
    if turns[-1]["role"] != "user":
        raise fail(name, "must end with a user message")


def _record_id(row: dict, column: str, location: str, fail) -> str:
    value = row.get(column)
    if value is None:
        return location.replace(" ", "-")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise fail(column, f"must be a string or an integer, got {type(value).__name__}")
    return str(value)


def _number(value: Any, name: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(name, f"must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise fail(name, f"is an integer of {len(str(value))} digits, beyond any float") from None
    if not math.isfinite(number):
        raise fail(name, f"must be finite, got {value!r}")
    return number


def _probability(value: Any, name: str, fail) -> float:
    number = _number(value, name, fail)
    if not 0.0 <= number <= 1.0:
        raise fail(name, f"must lie in [0, 1], got {number}")
    return number


def _weight(value: Any, name: str, fail) -> float:
    number = _number(value, name, fail)
    if number < 0:
        raise fail(name, f"must be >= 0, got {number}")
    return number


def _flag(value: Any, name: str, fail) -> bool:
    if not isinstance(value, bool):
        raise fail(name, f"must be true or false, got {value!r}")
    return value


def _optional_logp(value: Any, name: str, fail) -> float | None:
    if value is None:
        return None
    number = _number(value, name, fail)
    if number > 1e-4:
        raise fail(name, f"a log-probability must be <= 0, got {number}")
    return number


# ---------------------------------------------------------------------------------------------
# Whole datasets


def load_preferences(
    source: str,
    columns: ColumnMap | None = None,
    *,
    split: str = "train",
    subset: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    system_prompt: str | None = None,
    scores: str = "drop_ties",
) -> tuple[list[PreferenceRecord], LoadReport]:
    """Preference records from ``source`` (any format of the README's data section), validated row by row.

    A bad row stops with its file, line and field, or, with ``skip_invalid``, is skipped and counted in the
    report; ``scores`` turns score columns into labels (drop_ties, soft, ignore).
    """
    columns = columns or ColumnMap()
    used = {
        columns.prompt,
        columns.chosen,
        columns.rejected,
        columns.label,
        columns.weight,
        columns.id,
        columns.ref_chosen_logps,
        columns.ref_rejected_logps,
        columns.score_chosen,
        columns.score_rejected,
        "chosen_truncated",
        "rejected_truncated",
        *TOKEN_COLUMNS,
    }
    return _load(
        source,
        split,
        subset,
        skip_invalid,
        limit,
        used,
        lambda row, loc: parse_preference(row, columns, source, loc, system_prompt, scores),
    )


def load_training_preferences(data: DataSettings) -> tuple[list[PreferenceRecord], LoadReport]:
    """The preference records that ``data.train`` names, with the config's columns and options."""
    return load_preferences(
        data.train,
        data.columns,
        split=data.split,
        subset=data.subset,
        skip_invalid=data.skip_invalid,
        limit=data.limit,
        system_prompt=data.system_prompt,
        scores=data.scores,
    )


def load_prompts(
    source: str,
    columns: ColumnMap | None = None,
    *,
    split: str = "train",
    subset: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    system_prompt: str | None = None,
) -> tuple[list[PromptRecord], LoadReport]:
    """Prompt records (chat messages and metadata) from ``source``: JSONL, JSON, CSV, Parquet, a .txt file
    with one prompt per line, and so on; extra columns become each prompt's metadata (for the verifier)."""
    columns = columns or ColumnMap()
    records, report = _load(
        source,
        split,
        subset,
        skip_invalid,
        limit,
        {columns.prompt, columns.id, "messages"},
        lambda row, loc: parse_prompt(row, columns, source, loc, system_prompt),
    )
    # A prompt's extra columns are its metadata (the verifier's constraints): kept, not "not used".
    report.metadata_columns, report.ignored_columns = report.ignored_columns, []
    return records, report


def _load(source, split, subset, skip_invalid, limit, used_columns, parse):
    report = LoadReport(source=source)
    records = []
    seen_ids: dict[str, str] = {}
    extra: set[str] = set()
    for location, row in iter_rows(source, split=split, subset=subset):
        if limit is not None and report.kept >= limit:
            break
        report.rows_read += 1
        try:
            record = parse(row, location)
            if record.id in seen_ids:
                raise DataError(source, location, "id", f"duplicate id {record.id!r} (first at {seen_ids[record.id]})")
        except ScoreTie:
            report.score_ties_dropped += 1
            continue
        except DataError as err:
            if not skip_invalid:
                raise
            report.skipped += 1
            if len(report.skip_reasons) < 20:
                report.skip_reasons.append(str(err))
            continue
        seen_ids[record.id] = location
        if isinstance(row, dict):
            extra.update(str(key) for key in row if key not in used_columns)
        records.append(record)
        report.kept += 1
    report.ignored_columns = sorted(extra)
    if not records:
        hint = f" ({report.skipped} invalid rows skipped; first: {report.skip_reasons[0]})" if report.skipped else ""
        raise DataError(source, None, None, f"no usable records{hint}")
    return records, report
