"""The seed stage: DPO of the initial SFT model pi_init on the human-labelled seed pairs -> pi_0.

A seeded share of the seed pairs (``data.seed_holdout``) is held out: never trained on, it is what
every round's self-judge is checked against, the signal a user without a gold judge has.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, set_seed

from spreadpref.config import Config
from spreadpref.data.loading import load_training_preferences
from spreadpref.data.records import LoadReport, PreferenceRecord, PromptRecord
from spreadpref.data.sanity import check_records
from spreadpref.data.tokenize import TokenizedPair, tokenize_pairs
from spreadpref.dpo.held_out import content_rank, split_held_out
from spreadpref.dpo.train import TrainResult, train_on_pairs
from spreadpref.runtime.files import read_jsonl, write_jsonl
from spreadpref.runtime.layout import HELD_OUT_FILE
from spreadpref.spa.context import StageContext


@dataclass
class SeedPairs:
    pairs: list[TokenizedPair]  # trained on
    held_out: list[TokenizedPair]  # never trained on
    info: dict[str, Any]  # what was loaded, skipped, truncated and held out


def holdout_salt(seed: int) -> str:
    return f"spreadpref-seed-holdout-{seed}"


def split_seed_pairs(
    pairs: list[TokenizedPair], fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(trained, held out): each pair's draw by its content and the seed (it keeps it when pairs are added);
    order kept."""
    return split_held_out(pairs, fraction, holdout_salt(seed), "data.seed_holdout")


def prompt_key(messages: list[dict[str, str]]) -> str:
    """A prompt as compared across files: its messages, roles and stripped contents."""
    return json.dumps([[m["role"], m["content"].strip()] for m in messages])


def read_seed_records(config: Config) -> tuple[list[PreferenceRecord], LoadReport]:
    """The records of ``data.train`` and what loading them kept and skipped: read once per run, for the prompt
    pool's filter and for the seed pairs."""
    return load_training_preferences(config.data)


def without_seed_prompts(
    seed_records: list[PreferenceRecord], pool: list[PromptRecord]
) -> tuple[list[PromptRecord], int]:
    """(pool, how many were dropped): the prompt pool without the seed pairs' prompts, so that no round samples,
    judges and trains on the prompt of a human pair, above all a held-out one."""
    seed_prompts = {prompt_key(record.prompt) for record in seed_records}
    kept = [record for record in pool if prompt_key(record.prompt) not in seed_prompts]
    return kept, len(pool) - len(kept)


def load_seed_pairs(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    loaded: tuple[list[PreferenceRecord], LoadReport] | None = None,
) -> SeedPairs:
    """The seed pairs of ``data.train`` (or of ``loaded``, its records as :func:`read_seed_records` read them),
    tokenised, and split into trained and held out."""
    records, report = loaded or read_seed_records(config)
    pairs, truncation = tokenize_pairs(tokenizer, records, config.data.max_length, config.data.max_prompt_length)
    trained, held_out = split_seed_pairs(pairs, config.data.seed_holdout, config.seed)
    info = {
        "loaded": report.summary(),
        "skip_reasons": report.skip_reasons[:3],  # data.skip_invalid: the first reasons, as `train` prints them
        "warnings": check_records(records, config.data.train),
        "pairs": len(trained),
        "held_out": len(held_out),
        "skipped_invalid": report.skipped,
        "prompts_truncated": truncation.prompts_truncated,
        "replies_truncated": truncation.replies_truncated,
    }
    return SeedPairs(trained, held_out, info)


def record_held_out(directory: Path, seed: SeedPairs, salt: str) -> str | None:
    """Write which seed pairs are held out (``held_out.jsonl``: id and content hash) and say how the set
    changed since the file was last written, or None when it did not (or there was none)."""
    path = directory / HELD_OUT_FILE
    rows = [{"id": pair.id, "content": content_rank(pair, salt)[:16]} for pair in seed.held_out]
    before = read_jsonl(path) if path.is_file() else None
    write_jsonl(path, rows)
    if before is None or before == rows:
        return None
    old, new = {r["content"] for r in before}, {r["content"] for r in rows}
    return (
        f"The held-out seed pairs changed since the last run ({len(old - new)} left the held-out set, "
        f"{len(new - old)} joined it; {len(rows)} held out now): the seed pairs were added to or edited. "
        f"Held-out agreements before and after the change are measured on different pairs. {path} lists them."
    )


def seed_stage(ctx: StageContext, seed: SeedPairs, on_reference=None) -> TrainResult:
    """pi_0 = DPO of ``model.name_or_path`` on the seed pairs (reference: pi_init), in ``ctx.directory``."""
    config = ctx.config
    set_seed(config.seed)
    started = time.perf_counter()
    # Copies: the reference log-probs get filled in on these pairs, not on the caller's.
    pairs = [dataclasses.replace(pair) for pair in seed.pairs]
    outputs, metrics = train_on_pairs(
        config, ctx.tokenizer, pairs, ctx.directory, on_reference=on_reference, held_out=seed.held_out
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return TrainResult(ctx.directory, Path(outputs["model"]), metrics=metrics, outputs=outputs)
