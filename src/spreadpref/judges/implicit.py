"""SPA's own judge: the implicit DPO reward of a policy against a reference model.

One definition each, used by the round's judge stage (judged.jsonl, pairs.jsonl), ``spreadpref
eval`` and the agreement checks:

- the **score** of a reply is the log-ratio ``s = log pi(y|x) - log pi_ref(y|x)``, summed over the
  reply tokens (per-token means with ``judge.length_normalize``); it is beta-free, and ranks replies;
- beta enters in one place only, the **preference probability** of a over b,
  ``sigmoid(beta * (s_a - s_b))`` (:func:`preference_probability`); the implicit reward itself is
  ``beta * s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spreadpref.config import JudgeSettings
from spreadpref.data.tokenize import render_prompt_ids, reply_ids
from spreadpref.dpo.logprobs import score_sequences
from spreadpref.errors import JudgeError
from spreadpref.judges.base import Comparison, Judge, Judgement, bradley_terry, sigmoid


def log_ratio(policy_logps: float, reference_logps: float | None, num_tokens: int, length_normalize: bool) -> float:
    """The implicit judge's score s of one reply (no reference: the policy's log-prob alone)."""
    reference = 0.0 if reference_logps is None else reference_logps
    if length_normalize:
        tokens = max(num_tokens, 1)
        return policy_logps / tokens - reference / tokens
    return policy_logps - reference


def mixed_reference(reference_logps: float | None, base_logps: float | None, base_weight: float) -> float | None:
    """The reference term with ``judge.base``: (1 - w) * log pi_ref + w * log pi_base, the log of a geometric
    mixture of the two references (w = 1: the base model alone; no base: pi_ref unchanged)."""
    if base_logps is None:
        return reference_logps
    reference = 0.0 if reference_logps is None else reference_logps
    return (1.0 - base_weight) * reference + base_weight * base_logps


def implicit_score(
    policy_logps: float,
    reference_logps: float | None,
    num_tokens: int,
    settings: JudgeSettings,
    base_logps: float | None = None,
    reply: str = "a reply",
) -> float:
    """The implicit judge's score of one reply, as every caller computes it: ``log pi_judge`` minus the reference
    term (with ``judge.base``, the geometric mixture), per token with ``judge.length_normalize``.

    A score that is not finite (a model producing NaN or inf) is a JudgeError naming ``reply``."""
    score = log_ratio(
        policy_logps, mixed_reference(reference_logps, base_logps, settings.base_weight), num_tokens,
        settings.length_normalize,
    )  # fmt: skip
    if not math.isfinite(score):
        raise JudgeError(
            f"non-finite judge score for {reply} (policy log-prob {policy_logps}, reference log-prob "
            f"{reference_logps}); the model produces NaN or inf"
        )
    return score


def preference_probability(margin: float, beta: float) -> float:
    """P(a is preferred to b) = sigmoid(beta * (s_a - s_b)), Bradley-Terry on the implicit reward."""
    return sigmoid(beta * margin)


def both_logps(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    prompts: list[list[int]],
    replies: list[list[int]],
    pad_token_id: int,
    batch_size: int,
    reference_is_adapter_off: bool = False,
    progress: bool = True,
    description: str = "Judging",
) -> tuple[torch.Tensor, list[float | None], torch.Tensor]:
    """Reply log-probs under the policy and under the judge reference (None entries without one)."""
    policy_logps, counts = score_sequences(
        policy, prompts, replies, pad_token_id, batch_size, description=f"{description}: policy", progress=progress
    )
    if reference is None and not reference_is_adapter_off:
        return policy_logps, [None] * len(prompts), counts
    model = policy if reference_is_adapter_off else reference
    reference_logps, _ = score_sequences(
        model,
        prompts,
        replies,
        pad_token_id,
        batch_size,
        description=f"{description}: reference",
        as_reference=reference_is_adapter_off,
        progress=progress,
    )
    return policy_logps, [float(r) for r in reference_logps], counts


def score_replies(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    prompts: list[list[int]],
    replies: list[list[int]],
    pad_token_id: int,
    settings: JudgeSettings,
    reference_is_adapter_off: bool = False,
    progress: bool = True,
    description: str = "Judging",
) -> list[float]:
    """The log-ratio score of every (prompt, reply), in order."""
    policy_logps, reference_logps, counts = both_logps(
        policy,
        reference,
        prompts,
        replies,
        pad_token_id,
        settings.batch_size,
        reference_is_adapter_off,
        progress,
        description,
    )
    return [
        implicit_score(float(p), r, int(c), settings, reply=f"reply {i}")
        for i, (p, r, c) in enumerate(zip(policy_logps, reference_logps, counts))
    ]


class ImplicitJudge(Judge):
    """Scores are the log-ratios s; preferences are sigmoid(beta * (s_a - s_b))."""

    name = "implicit"

    def __init__(
        self,
        policy: PreTrainedModel,
        reference: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        beta: float,
        settings: JudgeSettings | None = None,
        reference_is_adapter_off: bool = False,
    ):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.beta = beta
        self.settings = settings or JudgeSettings()
        self.reference_is_adapter_off = reference_is_adapter_off

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        prompts, replies, sizes = [], [], []
        for comparison in comparisons:
            prompt_ids, reply_token_ids = self._token_ids(comparison)
            prompts += [prompt_ids] * len(reply_token_ids)
            replies += reply_token_ids
            sizes.append(len(reply_token_ids))
        flat = score_replies(
            self.policy,
            self.reference,
            prompts,
            replies,
            self.tokenizer.pad_token_id,
            self.settings,
            self.reference_is_adapter_off,
            progress=False,
        )
        judgements, start = [], 0
        for size in sizes:
            scores = flat[start : start + size]
            judgements.append(Judgement(scores=scores, prefer=bradley_terry(scores, scale=self.beta)))
            start += size
        return judgements

    def _token_ids(self, comparison: Comparison) -> tuple[list[int], list[list[int]]]:
        if comparison.prompt_ids is not None and comparison.reply_ids is not None:
            return comparison.prompt_ids, comparison.reply_ids
        prompt_ids = render_prompt_ids(self.tokenizer, comparison.prompt)
        return prompt_ids, [
            reply_ids(self.tokenizer, comparison.prompt, prompt_ids, text, complete=True, record_id=comparison.id)
            for text in comparison.replies
        ]
