"""The decode loop of the built-in engine: a batch of sequences sampled token by token, finished rows dropped.

transformers' ``generate`` keeps every row of a batch in every step until the last one stops, and runs its
general machinery (logits processors, stopping criteria) around each step. Here a row leaves the batch, and
its KV cache with it, the step it draws a stop token, so the steps that remain compute only for rows still
writing: on the embedded model's default round (32 prompts x 2 replies, one CPU thread) it drew 1.27x the
tokens/s of ``generate`` (benchmarks/bench_engines.py; docs/performance.md). The samples follow the same
distribution as ``generate`` with the same temperature and top-p (full vocabulary, no top-k), drawn with one
uniform number per row and step (inverse CDF) from a generator the caller seeds: the same seed and batch draw
the same tokens, run after run. They are not the tokens ``generate`` draws for that seed (another use of the
random numbers).

The K replies of a prompt share its prefill: the prompt is read once and its KV cache copied to its K rows
(``repeats``), which halves the prefill at K = 2 and draws the very tokens K copies of the prompt would (on the
embedded model's default round, every token; a test checks it on the tiny model).
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache, PreTrainedModel


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else from softmax(logits / T) restricted to the top-p
    nucleus as transformers' TopPLogitsWarper keeps it (at least one token)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = nucleus(logits.float() / temperature, top_p)
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    draws = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    # The first index whose cumulative probability exceeds the draw: token i with probability p_i, never a 0.
    return torch.searchsorted(cdf, draws, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``scores`` with every token outside the top-p nucleus at -inf: the smallest set of the most likely tokens
    whose probability reaches ``top_p`` (at least one), as transformers' TopPLogitsWarper keeps it."""
    if top_p >= 1.0:
        return scores
    ordered, order = torch.sort(scores, descending=False)
    tail = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    tail[:, -1] = False  # the most likely token always stays
    return scores.scatter(1, order, ordered.masked_fill(tail, -float("inf")))


@functools.cache
def _forward_parameters(forward) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters)


def _cache_argument(model: PreTrainedModel) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` within 5.x: the name this model's forward takes."""
    return "cache" if "cache" in _forward_parameters(type(model).forward) else "past_key_values"


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    repeats: int = 1,
) -> list[list[int]]:
    """New tokens for every row of a left-padded batch, each ending at its first stop token (kept) or after
    ``max_new_tokens``; with ``repeats`` = K, K rows for each row of the batch (row i's j-th reply at i * K + j),
    whose prompt is read once: its KV cache and first logits are copied to its K rows."""
    device = input_ids.device
    cache = DynamicCache(config=model.config)
    cache_kwarg = _cache_argument(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(type(model).forward) else {}
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg: cache},
        **extra,
    ).logits[:, -1]
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
        logits, positions, attention_mask = (
            t.repeat_interleave(repeats, dim=0) for t in (logits, positions, attention_mask)
        )
    rows = torch.arange(logits.shape[0], device=device)  # which of the batch's rows are still writing
    next_position = positions[:, -1] + 1
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    replies: list[list[int]] = [[] for _ in range(logits.shape[0])]
    for step in range(max_new_tokens):
        tokens = sample_next(logits, temperature, top_p, generator)
        for row, token in zip(rows.tolist(), tokens.tolist()):
            replies[row].append(token)
        writing = ~torch.isin(tokens, stops)
        if step == max_new_tokens - 1 or not writing.any():
            break
        if not writing.all():  # finished rows leave the batch, and their KV cache with them
            keep = writing.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, next_position, attention_mask = (
                rows[keep],
                tokens[keep],
                next_position[keep],
                attention_mask[keep],
            )
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            use_cache=True,
            **{cache_kwarg: cache},
        ).logits[:, -1]
        next_position = next_position + 1
    return replies
