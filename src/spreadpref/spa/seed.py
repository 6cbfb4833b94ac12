"""The seed stage: DPO of the initial SFT model pi_init on the human-labelled seed pairs -> pi_0."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, set_seed

from spreadpref.config import Config
from spreadpref.data.loading import load_training_preferences
from spreadpref.data.tokenize import TokenizedPair, tokenize_pairs
from spreadpref.dpo.train import train_on_pairs
from spreadpref.spa.context import StageContext

DIRECTORY = "seed"


@dataclass
class SeedPairs:
    pairs: list[TokenizedPair]
    info: dict[str, Any]  # what was loaded, skipped and truncated


@dataclass
class SeedResult:
    model: Path
    outputs: dict[str, str]
    metrics: dict[str, Any]


def load_seed_pairs(config: Config, tokenizer: PreTrainedTokenizerBase) -> SeedPairs:
    """The seed pairs of ``data.train``, tokenised."""
    records, report = load_training_preferences(config.data)
    pairs, truncation = tokenize_pairs(tokenizer, records, config.data.max_length, config.data.max_prompt_length)
    info = {
        "pairs": len(pairs),
        "skipped_invalid": report.skipped,
        "prompts_truncated": truncation.prompts_truncated,
        "replies_truncated": truncation.replies_truncated,
    }
    return SeedPairs(pairs, info)


def seed_stage(ctx: StageContext, seed: SeedPairs, on_reference=None) -> SeedResult:
    """pi_0 = DPO of ``model.name_or_path`` on the seed pairs (reference: pi_init), in ``ctx.directory``."""
    config = ctx.config
    set_seed(config.seed)
    started = time.perf_counter()
    # Copies: the reference log-probs get filled in on these pairs, not on the caller's.
    pairs = [dataclasses.replace(pair) for pair in seed.pairs]
    outputs, metrics = train_on_pairs(
        config, ctx.tokenizer, pairs, ctx.directory, merge_lora=True, on_reference=on_reference
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return SeedResult(Path(outputs["model"]), outputs, metrics)
