"""Held-out evaluation while training: the over-fitting signal when labels are few.

Every ``train.eval_steps`` optimizer steps (default: ten times a stage) the policy scores the held-out
pairs, never trained on, and the Trainer log gets TRL's names for them: ``eval_loss`` (the same soft-label
DPO loss), ``eval_rewards/accuracies``, ``eval_rewards/margins``, ``eval_rewards/chosen`` and
``eval_rewards/rejected``, which TensorBoard and W&B file under ``eval/`` (transformers' ``rewrite_logs``,
as for TRL's evaluation), beside the ``train/`` scalars. They reach log_history.json and
the report's curves. Held-out pairs come from ``data.eval`` (a file) or ``data.eval_fraction`` of
``data.train`` (``spreadpref train``); in ``spreadpref run`` the seed pairs held out by ``data.seed_holdout``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.logprobs import PairLogps, forward_precision, score_pairs
from spreadpref.dpo.loss import DPOOutput, soft_dpo_loss
from spreadpref.runtime.progress import console


def content_rank(pair: TokenizedPair, salt: str) -> str:
    """A pair's place in the held-out draw: a hash of ``salt`` and its content (token ids and label), not of its
    position, so that each pair keeps its draw when other pairs are added, removed, edited or reordered."""
    content = json.dumps([salt, pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, pair.label])
    return hashlib.sha256(content.encode()).hexdigest()


def seeded_split(pairs: list[TokenizedPair], count: int, salt: str) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(kept, held out): the ``count`` pairs of lowest :func:`content_rank`, the same every time; order kept.

    Adding a pair to the file changes the held-out set by at most the new pair and the one it displaces at the
    boundary (and one more pair when the held-out count itself grows)."""
    order = sorted(range(len(pairs)), key=lambda i: (content_rank(pairs[i], salt), i))
    held = set(order[:count])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


MIN_HELD_OUT = 8  # fewer held-out pairs give an interval too wide to tell anything


def held_out_count(total: int, fraction: float) -> int:
    """How many of ``total`` pairs to hold out, for ``data.seed_holdout`` and ``data.eval_fraction`` alike: the
    fraction (rounded up), at least 8, and never so many that fewer than 8 remain to train on (then none)."""
    if fraction <= 0:
        return 0
    count = max(MIN_HELD_OUT, math.ceil(fraction * total))
    return count if total - count >= MIN_HELD_OUT else 0


def split_held_out(
    pairs: list[TokenizedPair], fraction: float, salt: str, setting: str
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(trained, held out): :func:`held_out_count` pairs drawn by a generator seeded with ``salt``; order kept.
    When ``setting`` (the key that set ``fraction``) asked for some and there are too few, it says so."""
    held = held_out_count(len(pairs), fraction)
    if fraction > 0 and not held:
        console.print(
            f"[yellow]{setting}={fraction}: {len(pairs)} pairs are too few to hold {MIN_HELD_OUT} out and train on "
            f"{MIN_HELD_OUT} or more; training on all of them, with no held-out measurement.[/]"
        )
    return seeded_split(pairs, held, salt)


@torch.no_grad()
def held_out_metrics(
    model: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    beta: float,
    batch_size: int,
    precision: str = "no",
) -> dict[str, float]:
    """The soft-label DPO loss, reward accuracy and margins of ``model`` on ``pairs`` (reference log-probs given)."""
    was_training = model.training
    model.eval()
    try:
        with forward_precision(precision, next(model.parameters()).device):
            # No bar of its own: it runs inside the training stage's bar.
            scored = score_pairs(model, pairs, pad_token_id, batch_size, description="Held-out pairs", progress=False)
    finally:
        model.train(was_training)
    out = pair_loss(scored, pairs, beta)
    margins = out.chosen_rewards - out.rejected_rewards
    return {
        "eval_loss": float(out.loss),
        "eval_rewards/accuracies": float((margins > 0).double().mean()),
        "eval_rewards/margins": float(margins.mean()),
        "eval_rewards/chosen": float(out.chosen_rewards.mean()),
        "eval_rewards/rejected": float(out.rejected_rewards.mean()),
        "eval_pairs": float(len(pairs)),
    }


def pair_loss(scored: PairLogps, pairs: Sequence[TokenizedPair], beta: float) -> DPOOutput:
    """The soft-label DPO loss (unweighted) and rewards of scored pairs against their reference log-probs."""
    return soft_dpo_loss(
        scored.chosen.double(),
        scored.rejected.double(),
        torch.tensor([p.ref_chosen_logps for p in pairs], dtype=torch.float64),
        torch.tensor([p.ref_rejected_logps for p in pairs], dtype=torch.float64),
        beta,
        target=torch.tensor([p.label for p in pairs], dtype=torch.float64),
    )


class HeldOutEvaluation(TrainerCallback):
    """Scores the held-out pairs every ``every`` optimizer steps (and at the last one) into the Trainer's log."""

    def __init__(
        self,
        pairs: Sequence[TokenizedPair],
        pad_token_id: int,
        beta: float,
        batch_size: int,
        every: int | None,
        precision: str,
    ):
        self.pairs, self.pad_token_id, self.beta, self.batch_size = list(pairs), pad_token_id, beta, batch_size
        self.every, self.precision = every, precision
        self.trainer = None  # set by the trainer that adds it: logging goes through Trainer.log

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.every or max(1, state.max_steps // 10)
        if state.global_step % every == 0 or state.global_step == state.max_steps:
            metrics = held_out_metrics(model, self.pairs, self.pad_token_id, self.beta, self.batch_size, self.precision)
            if self.trainer is not None:
                # Trainer.log clears control.should_log: keep this step's own training log.
                should_log = control.should_log
                self.trainer.log(metrics)
                control.should_log = should_log
