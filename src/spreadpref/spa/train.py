"""The round's train stage: DPO of pi_{i-1} on the round's self-labelled pairs, with self-refinement -> pi_i.

The reference is pi_{i-1}, whose log-probs the judge already wrote into pairs.jsonl, so no reference
forward pass runs for the loss (except under float32 master weights, whose numerics are not the judge's);
only decoupled noise detection needs the reference's logits.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import time
from pathlib import Path
from typing import Any

from transformers import set_seed

from spreadpref.config import Config
from spreadpref.data.artifacts import GoldVerdict, Pair
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.refine import Refinement
from spreadpref.dpo.train import TrainResult, train_on_pairs
from spreadpref.errors import SpreadprefError
from spreadpref.eval.labels import refinement_quality
from spreadpref.models.loading import keeps_float32_master_weights, load_for_inference
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import TRAIN_STAGE
from spreadpref.runtime.progress import console
from spreadpref.spa.context import StageContext

OUTPUTS = (TRAIN_STAGE,)


def round_config(config: Config) -> Config:
    """The settings a round trains with: ``config.train`` with the round's epochs (``loop.epochs_per_round``),
    and its learning rate and batching where ``loop`` sets them."""
    loop = config.loop
    update: dict[str, Any] = {"num_epochs": loop.epochs_per_round}
    if loop.learning_rate is not None:
        update["learning_rate"] = loop.learning_rate
    if loop.group_by_length is not None:
        update["group_by_length"] = loop.group_by_length
    return config.model_copy(update={"train": config.train.model_copy(update=update)})


def round_refinement(ctx: StageContext, start: str | Path) -> Refinement | None:
    """This round's self-refinement (None when it is off), with DND's lambda and detector reference."""
    config = ctx.config
    if not config.refine.enabled:
        return None
    lam = config.refine.lam(ctx.round_index)
    # With a gold judge, the DND margins are computed beside the plain ones even when the plain detector
    # drives, so both detectors are measured on the same pairs.
    measure_lam = config.refine.scheduled_lam(ctx.round_index) if config.judge.gold and lam == 0 else 0.0
    reference = None
    # DND needs the reference's full logits: a frozen copy of pi_{i-1}. With LoRA no copy is loaded: a fresh
    # adapter on pi_{i-1} is switched off, and an adapter carried on from the previous stage brings a frozen
    # copy of itself on the same base (models.loading.load_adapter_model).
    if max(lam, measure_lam) > 0 and not config.model.lora.enabled:
        reference = load_for_inference(config.model, start)
        reference.requires_grad_(False)
    return Refinement(config.refine, lam=lam, reference=reference, measure_lam=measure_lam)


def replay_pairs(human: list[TokenizedPair], round_pairs: int, fraction: float, salt: str) -> list[TokenizedPair]:
    """Experience replay (DICE): ``r`` human pairs with ``r / (round_pairs + r) = fraction``, drawn in seeded
    shuffled passes over ``human`` (repeated when there are fewer), as copies without reference log-probs (the
    round's reference, pi_{i-1}, scores them before training)."""
    if fraction <= 0 or not human or round_pairs <= 0:
        return []
    wanted = round(fraction * round_pairs / (1.0 - fraction))
    rng = random.Random(salt)
    drawn: list[TokenizedPair] = []
    while len(drawn) < wanted:
        order = list(range(len(human)))
        rng.shuffle(order)
        drawn += [human[k] for k in order[: wanted - len(drawn)]]
    return [
        dataclasses.replace(pair, id=f"replay{n}-{pair.id}", ref_chosen_logps=None, ref_rejected_logps=None)
        for n, pair in enumerate(drawn)
    ]


def train_stage(ctx: StageContext, start: str | Path, human: list[TokenizedPair] | None = None) -> TrainResult:
    """Train from ``start`` on ``ctx``'s pairs.jsonl (and, with loop.replay_fraction, replayed ``human`` seed
    pairs) into ``ctx``'s train/ directory."""
    config, i = ctx.config, ctx.round_index
    pairs = [pair.to_tokenized() for pair in Pair.read(ctx.path(Pair.FILE))]
    if not pairs:
        raise SpreadprefError(
            f"round {i} produced no usable pairs (every prompt's replies were identical or tied); "
            "raise generation.temperature or generation.num_samples"
        )
    if config.loop.replay_fraction > 0 and not human:
        raise SpreadprefError(
            f"loop.replay_fraction={config.loop.replay_fraction} needs the human seed pairs: set data.train"
        )
    if keeps_float32_master_weights(config.model):
        # The judge scored pi_{i-1} in model.dtype; training runs float32 master weights under autocast, whose
        # log-probs differ (0.13 nats a pair at the 1.7B shape on a GPU): score the reference again, in the
        # training's numerics, so that the margins are 0 before the first update.
        pairs = [dataclasses.replace(pair, ref_chosen_logps=None, ref_rejected_logps=None) for pair in pairs]
    replay = replay_pairs(human or [], len(pairs), config.loop.replay_fraction, f"spreadpref-replay-{config.seed}-{i}")
    replayed = f" and {len(replay)} replayed human pairs" if replay else ""
    pairs += replay
    console.rule(f"[bold]Round {i}: DPO on {len(pairs) - len(replay)} self-labelled pairs{replayed}")
    set_seed(config.seed + i)
    started = time.perf_counter()
    refinement = round_refinement(ctx, start)
    outputs, metrics = train_on_pairs(
        round_config(config), ctx.tokenizer, pairs, ctx.path(TRAIN_STAGE), start_model=str(start),
        refinement=refinement,
    )  # fmt: skip
    del refinement
    gc.collect()
    if "refinement" in outputs and ctx.path(GoldVerdict.FILE).is_file():
        decisions = read_jsonl(Path(outputs["refinement"]))
        metrics["refinement_quality"] = refinement_quality(decisions, GoldVerdict.read(ctx.path(GoldVerdict.FILE)))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["replay_pairs"] = len(replay)
    return TrainResult(ctx.path(TRAIN_STAGE), Path(outputs["model"]), metrics=metrics, outputs=outputs)
