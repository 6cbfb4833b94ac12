"""Summed log-probabilities of reply tokens, for batches of tokenised pairs.

The language-model head is asked only for the positions that predict a reply token (transformers'
``logits_to_keep`` with a boolean mask), so prompt positions cost no vocabulary projection, and the
log-softmax is taken in chunks of positions: no float32 ``[batch, length, vocab]`` tensor exists.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spreadpref.tokenize import TokenizedPair

LOGIT_CHUNK = 512  # positions per log-softmax chunk: 512 x 49K x 4 bytes = 100 MB at most


@dataclass
class PairLogps:
    """Per-pair results, in the order of the pairs given."""

    chosen: torch.Tensor  # summed log-prob of the chosen reply
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # reply token counts
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


def collate_pairs(pairs: Sequence[TokenizedPair | dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack prompt+chosen rows, then prompt+rejected rows, right-padded, with a reply-token mask."""
    items = [p if isinstance(p, dict) else vars(p) for p in pairs]
    sequences = [it["prompt_ids"] + it["chosen_ids"] for it in items] + [
        it["prompt_ids"] + it["rejected_ids"] for it in items
    ]
    prompt_lengths = [len(it["prompt_ids"]) for it in items] * 2
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
        response_mask[row, prompt_length : len(seq)] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
    batch["label"] = torch.tensor([float(it.get("label", 1.0)) for it in items])
    batch["weight"] = torch.tensor([float(it.get("weight", 1.0)) for it in items])
    refs = [(it.get("ref_chosen_logps"), it.get("ref_rejected_logps")) for it in items]
    if all(c is not None and r is not None for c, r in refs):
        batch["ref_chosen_logps"] = torch.tensor([c for c, _ in refs], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([r for _, r in refs], dtype=torch.float32)
    return batch


def sequence_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the reply tokens of every row, and the number of reply tokens."""
    # Position p predicts token p + 1: keep the positions whose next token is a reply token.
    keep = torch.zeros_like(response_mask)
    keep[:, :-1] = response_mask[:, 1:]
    targets = input_ids[:, 1:][response_mask[:, 1:]]
    logits = _reply_logits(model, input_ids, attention_mask, keep)
    token_logps = _chunked_token_logps(logits, targets)
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, rows, token_logps)
    return sums, response_mask.sum(dim=1)


def _reply_logits(model: Any, input_ids, attention_mask, keep: torch.Tensor) -> torch.Tensor:
    if supports_position_mask(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
        logits = out.logits
        if logits.dim() == 2:
            return logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[keep]


def _chunked_token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    pieces = []
    for start in range(0, logits.shape[0], LOGIT_CHUNK):
        block = logits[start : start + LOGIT_CHUNK].float()
        picked = block.gather(-1, targets[start : start + LOGIT_CHUNK, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(block, dim=-1))
    if not pieces:
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


_MASK_SUPPORT: dict[type, bool] = {}


def supports_position_mask(model: Any) -> bool:
    """Whether the model's forward understands a boolean ``logits_to_keep`` (transformers >= 5)."""
    core = unwrap(model)
    kind = type(core)
    if kind not in _MASK_SUPPORT:
        try:
            source = inspect.getsource(kind.forward)
        except (OSError, TypeError):
            source = ""
        _MASK_SUPPORT[kind] = "slice_logits_to_keep" in source
    return _MASK_SUPPORT[kind]


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP / DeepSpeed / peft wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    return model


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[None]:
    """For a LoRA policy, the reference is the base model: the same weights with the adapter off."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks show up early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_pairs(model: Any, pairs: Sequence[TokenizedPair], pad_token_id: int, batch_size: int = 8,
                description: str = "Scoring pairs", as_reference: bool = False) -> PairLogps:
    """No-grad log-probs of both replies of every pair, batched by length."""
    from spreadpref.progress import track

    device = next(model.parameters()).device
    n = len(pairs)
    chosen = torch.zeros(n, dtype=torch.float64)
    rejected = torch.zeros(n, dtype=torch.float64)
    chosen_tokens = torch.zeros(n, dtype=torch.long)
    rejected_tokens = torch.zeros(n, dtype=torch.long)
    was_training = model.training
    model.eval()
    context = adapter_disabled(model) if as_reference else contextlib.nullcontext()
    try:
        with context:
            for indices in track(length_batches([p.length for p in pairs], batch_size), description):
                batch = collate_pairs([pairs[i] for i in indices], pad_token_id)
                sums, counts = sequence_logps(
                    model,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    batch["response_mask"].to(device),
                )
                k = len(indices)
                index = torch.tensor(indices)
                chosen[index] = sums[:k].double().cpu()
                rejected[index] = sums[k:].double().cpu()
                chosen_tokens[index] = counts[:k].cpu()
                rejected_tokens[index] = counts[k:].cpu()
    finally:
        model.train(was_training)
    return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)
