"""Preference pairs in token space.

The prompt is rendered with the tokenizer's chat template and ``add_generation_prompt=True``;
prompt + reply is rendered as a whole conversation, and the prompt ids must be a prefix of the
full ids (otherwise the template does something the model never sees at generation time, and we
stop with the example). The reply ids are what follows the prompt, ending in exactly one EOS for a
complete reply and none for a reply that was cut off. Nothing is tokenised twice with special
tokens, so no BOS is doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from spreadpref.data.records import Message, PreferenceRecord
from spreadpref.errors import TokenizationError
from spreadpref.runtime.progress import track


@dataclass
class TokenizedPair:
    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    label: float = 1.0
    weight: float = 1.0
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    prompt_truncated: bool = False
    chosen_truncated: bool = False
    rejected_truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class TruncationReport:
    pairs: int = 0
    prompts_truncated: int = 0
    replies_truncated: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.pairs} pairs tokenised; {self.prompts_truncated} prompts cut at the start, "
            f"{self.replies_truncated} replies cut at max_length"
        )


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise TokenizationError(
            f"{name} has no chat template. Use an instruction-tuned model's tokenizer, or set one "
            "(model.tokenizer=<a directory whose tokenizer_config.json or chat_template.jinja has it>)."
        )


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    return encode_conversation(tokenizer, messages, add_generation_prompt=True)


def special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The literal texts that the tokenizer turns into special tokens (``<|im_end|>``, ``</s>``, ...)."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(str(token))
    return sorted((t for t in texts if t), key=len, reverse=True)


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool = False
) -> list[int]:
    """Token ids of the chat template applied to ``messages``; only the template makes special tokens.

    A message whose text contains a special token's literal text (a reply quoting ``<|im_end|>``) would turn
    into a real special token mid-message. Such messages are encoded apart, with special tokens split into
    plain text; every other part of the conversation is encoded exactly as before.
    """
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    specials = special_texts(tokenizer)
    quoting = [i for i, m in enumerate(messages) if any(t in m["content"] for t in specials)]
    if not quoting:
        return _encode(tokenizer, text)
    marks = {i: f"\ue000spreadpref-content-{i}\ue001" for i in quoting}
    masked = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(messages)]
    template = tokenizer.apply_chat_template(masked, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids: list[int] = []
    position = 0
    for i in quoting:
        at = template.find(marks[i], position)
        if at < 0:
            raise TokenizationError(
                f"message {i} contains the text of a special token ({_quoted_special(messages[i], specials)}), and "
                "the chat template rewrites message text, so it cannot be kept as plain text: remove it from the data"
            )
        ids += _encode(tokenizer, template[position:at]) if at > position else []
        ids += tokenizer(messages[i]["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        position = at + len(marks[i])
    ids += _encode(tokenizer, template[position:]) if position < len(template) else []
    return ids


def _quoted_special(message: Message, specials: list[str]) -> str:
    return next(repr(t) for t in specials if t in message["content"])


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already writes BOS where the model wants one; adding special tokens would double it.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        raise TokenizationError(f"the rendered text starts with BOS twice: {text[:80]!r}")
    return list(ids)


def eos_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def reply_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Message],
    prompt_ids: list[int],
    reply: str,
    complete: bool,
    record_id: str = "?",
) -> list[int]:
    """Token ids of ``reply`` as it follows ``prompt_ids``: one EOS at the end if complete, none if cut off."""
    conversation = [*prompt, {"role": "assistant", "content": reply}]
    full_ids = encode_conversation(tokenizer, conversation)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        prompt_text = tokenizer.decode(prompt_ids)
        mismatch = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), len(full_ids))
        raise TokenizationError(
            f"record {record_id}: the chat template renders the prompt differently on its own "
            f"(with add_generation_prompt=True) than inside prompt+reply, so the prompt ids are not a "
            f"prefix of the full ids (first difference at token {mismatch}).\n"
            f"  prompt alone: {prompt_text[-200:]!r}\n"
            f"  prompt+reply: {tokenizer.decode(full_ids[: len(prompt_ids) + 5])[-200:]!r}\n"
            "Fix the template (or use a tokenizer whose template keeps the prompt a prefix)."
        )
    ids = full_ids[len(prompt_ids) :]
    eos = eos_token_ids(tokenizer)
    if not eos:
        raise TokenizationError("the tokenizer has no eos_token_id; set one so replies can end")
    end = _end_of_reply(ids, eos)
    if end is None:
        # The template closes the turn without EOS: the model still has to learn to stop.
        ids = [*ids, next(iter(eos))]
        end = len(ids) - 1
    # Drop what the template writes after the EOS (e.g. ChatML's trailing newline).
    ids = ids[: end + 1]
    if not complete:
        ids = ids[:end]
    if not ids or (complete and len(ids) == 1):
        raise TokenizationError(f"record {record_id}: the reply renders to no tokens")
    return ids


def _end_of_reply(ids: list[int], eos: set[int]) -> int | None:
    """Index of the EOS that closes the reply: the last one the template wrote."""
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] in eos:
            return index
    return None


def truncate_pair(
    prompt_ids: list[int],
    chosen: list[int],
    rejected: list[int],
    max_length: int,
    max_prompt_length: int,
    bos_token_id: int | None,
):
    """Keep the end of the prompt, then cut each reply so prompt + reply fits ``max_length``."""
    prompt_cut = len(prompt_ids) > max_prompt_length
    if prompt_cut:
        keep_bos = bos_token_id is not None and prompt_ids and prompt_ids[0] == bos_token_id
        tail = prompt_ids[len(prompt_ids) - (max_prompt_length - int(keep_bos)) :]
        prompt_ids = [bos_token_id, *tail] if keep_bos else tail
    budget = max_length - len(prompt_ids)
    return prompt_ids, chosen[:budget], rejected[:budget], prompt_cut, len(chosen) > budget, len(rejected) > budget


def out_of_vocabulary(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The first id of ``ids`` outside the tokenizer's vocabulary (made with another tokenizer), or None."""
    return next((t for t in ids if not 0 <= t < len(tokenizer)), None)


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, record: PreferenceRecord, max_length: int, max_prompt_length: int
) -> TokenizedPair:
    if record.token_ids is not None:  # made in token space (generation): keep the exact ids
        for column, ids in record.token_ids.items():
            if (bad := out_of_vocabulary(ids, tokenizer)) is not None:
                raise TokenizationError(
                    f"record {record.id}: {column} holds token id {bad}, outside the tokenizer's vocabulary of "
                    f"{len(tokenizer)}: the ids were made with another tokenizer"
                )
        prompt_ids = record.token_ids["prompt_ids"]
        chosen, rejected = record.token_ids["chosen_ids"], record.token_ids["rejected_ids"]
    else:
        prompt_ids = render_prompt_ids(tokenizer, record.prompt)
        chosen = reply_ids(tokenizer, record.prompt, prompt_ids, record.chosen, not record.chosen_truncated, record.id)
        rejected = reply_ids(
            tokenizer, record.prompt, prompt_ids, record.rejected, not record.rejected_truncated, record.id
        )
    prompt_ids, chosen, rejected, prompt_cut, chosen_cut, rejected_cut = truncate_pair(
        prompt_ids, chosen, rejected, max_length, max_prompt_length, tokenizer.bos_token_id
    )
    return TokenizedPair(
        id=record.id,
        prompt_ids=prompt_ids,
        chosen_ids=chosen,
        rejected_ids=rejected,
        label=record.label,
        weight=record.weight,
        ref_chosen_logps=record.ref_chosen_logps,
        ref_rejected_logps=record.ref_rejected_logps,
        prompt_truncated=prompt_cut,
        chosen_truncated=record.chosen_truncated or chosen_cut,
        rejected_truncated=record.rejected_truncated or rejected_cut,
    )


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PreferenceRecord],
    max_length: int,
    max_prompt_length: int,
    progress: bool = True,
) -> tuple[list[TokenizedPair], TruncationReport]:
    """Token ids of every record through the chat template (prompt, then each reply with one EOS), cut to
    ``max_length`` with the prompt's start dropped first; the report counts what was cut."""
    require_chat_template(tokenizer)
    report = TruncationReport()
    pairs = []
    for record in track(records, description="Tokenising pairs", enabled=progress and len(records) > 2000):
        pair = tokenize_pair(tokenizer, record, max_length, max_prompt_length)
        # Truncation from our length limits (not a generation cut-off recorded in the data) is what we report.
        cut_by_limit = (pair.chosen_truncated and not record.chosen_truncated) or (
            pair.rejected_truncated and not record.rejected_truncated
        )
        report.prompts_truncated += int(pair.prompt_truncated)
        report.replies_truncated += int(cut_by_limit)
        if pair.prompt_truncated or cut_by_limit:
            # Reference log-probs given with the data belong to the uncut sequences: they no longer apply.
            pair.ref_chosen_logps = pair.ref_rejected_logps = None
            if len(report.examples) < 5:
                report.examples.append(record.id)
        pairs.append(pair)
    report.pairs = len(pairs)
    return pairs, report
