"""The seed stage: DPO of the initial SFT model pi_init on the human-labelled seed pairs -> pi_0.

A seeded share of the seed pairs (``data.seed_holdout``) is held out: never trained on, it is what
every round's self-judge is checked against, the signal a user without a gold judge has.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, set_seed

from spreadpref.config import Config
from spreadpref.data.loading import load_training_preferences
from spreadpref.data.sanity import check_records
from spreadpref.data.tokenize import TokenizedPair, tokenize_pairs
from spreadpref.dpo.held_out import split_held_out
from spreadpref.dpo.train import TrainResult, train_on_pairs
from spreadpref.spa.context import StageContext


@dataclass
class SeedPairs:
    pairs: list[TokenizedPair]  # trained on
    held_out: list[TokenizedPair]  # never trained on
    info: dict[str, Any]  # what was loaded, skipped, truncated and held out


def split_seed_pairs(
    pairs: list[TokenizedPair], fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(trained, held out): a seeded draw, the same for the same pairs, fraction and seed; order kept."""
    return split_held_out(pairs, fraction, f"spreadpref-seed-holdout-{seed}", "data.seed_holdout")


def load_seed_pairs(config: Config, tokenizer: PreTrainedTokenizerBase) -> SeedPairs:
    """The seed pairs of ``data.train``, tokenised, and split into trained and held out."""
    records, report = load_training_preferences(config.data)
    pairs, truncation = tokenize_pairs(tokenizer, records, config.data.max_length, config.data.max_prompt_length)
    trained, held_out = split_seed_pairs(pairs, config.data.seed_holdout, config.seed)
    info = {
        "warnings": check_records(records, config.data.train),
        "pairs": len(trained),
        "held_out": len(held_out),
        "skipped_invalid": report.skipped,
        "prompts_truncated": truncation.prompts_truncated,
        "replies_truncated": truncation.replies_truncated,
    }
    return SeedPairs(trained, held_out, info)


def seed_stage(ctx: StageContext, seed: SeedPairs, on_reference=None) -> TrainResult:
    """pi_0 = DPO of ``model.name_or_path`` on the seed pairs (reference: pi_init), in ``ctx.directory``."""
    config = ctx.config
    set_seed(config.seed)
    started = time.perf_counter()
    # Copies: the reference log-probs get filled in on these pairs, not on the caller's.
    pairs = [dataclasses.replace(pair) for pair in seed.pairs]
    outputs, metrics = train_on_pairs(
        config, ctx.tokenizer, pairs, ctx.directory, merge_lora=True, on_reference=on_reference, held_out=seed.held_out
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return TrainResult(ctx.directory, Path(outputs["model"]), metrics=metrics, outputs=outputs)
