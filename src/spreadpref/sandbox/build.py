"""One seed's gold world on disk: pi_base and pi_init, the gold-labelled seed and off-policy pairs, the round
prompts, the held-out prompts and the guard's held-out pairs; built once, shared by every variant."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaForCausalLM

from spreadpref.runtime.files import write_jsonl
from spreadpref.sandbox.gold import gold_reward
from spreadpref.sandbox.lm import (
    HeldOut,
    build_models,
    distinct_from_seed_prompts,
    load_model,
    make_prompts,
    make_tokenizer,
    reply_logps,
    sample_replies,
)
from spreadpref.sandbox.settings import GUARD_PAIRS, WorldSettings


def gold_pairs(
    model: LlamaForCausalLM,
    tokenizer,
    world: WorldSettings,
    prompts: list[str],
    wanted: int,
    seed: int,
    balance_length: bool = False,
) -> tuple[list[dict[str, Any]], int, int]:
    """Up to ``wanted`` pairs of two sampled replies labelled by r*, in prompt order; ties and pairs with an
    empty reply are skipped and counted. With ``balance_length``, a pair whose chosen reply is shorter (or
    longer) is also skipped, and counted apart, while that direction is ahead of the other."""
    pairs, ties, unbalancing = [], 0, 0
    ahead = 0  # pairs so far whose chosen reply is shorter, minus those whose chosen reply is longer
    replies = sample_replies(model, tokenizer, prompts, 2, seed)
    for prompt, (a, b) in zip(prompts, replies):
        texts = [tokenizer.decode(a), tokenizer.decode(b)]
        ra, rb = (gold_reward(prompt, t, world.words_per_topic) for t in texts)
        if ra == rb or not all(texts):  # a tie, or an empty reply (a preference file holds none): skipped
            ties += 1
            continue
        chosen, rejected = (texts[0], texts[1]) if ra > rb else (texts[1], texts[0])
        chosen_words, rejected_words = len(chosen.split()), len(rejected.split())
        direction = (chosen_words < rejected_words) - (chosen_words > rejected_words)  # +1: the shorter one won
        if balance_length and direction * ahead > 0:
            unbalancing += 1
            continue
        ahead += direction
        pairs.append({"id": f"p{len(pairs)}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
        if len(pairs) == wanted:
            break
    return pairs, ties, unbalancing


@dataclass
class SeedWorld:
    """One seed's world on disk: models, prompts and labelled pairs; built once, reused by every variant."""

    seed: int
    directory: Path
    base: Path
    init: Path
    seed_pairs: Path
    offline_pairs: Path
    round_prompts: Path
    held_out: HeldOut
    info: dict[str, Any] = field(default_factory=dict)
    guard_pairs: list[dict[str, Any]] = field(default_factory=list)  # held-out human pairs for the guard


def build_world(world: WorldSettings, seed: int, directory: Path) -> SeedWorld:
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_dir, init_dir = build_models(world, seed, directory)
    tokenizer = make_tokenizer(world)
    rng = random.Random(f"prompts-{seed}")
    rounds_total = sum(world.prompts_per_round)
    seed_prompts = make_prompts(world, world.seed_pairs * 4, rng)
    offline_prompts = make_prompts(world, (world.seed_pairs + rounds_total) * 3, rng)
    round_prompts = make_prompts(world, rounds_total, rng)
    eval_prompts = make_prompts(world, world.eval_prompts, rng)
    init, base = load_model(init_dir), load_model(base_dir)
    seed_rows, seed_ties, seed_unbalancing = gold_pairs(
        init, tokenizer, world, seed_prompts, world.seed_pairs, seed, world.seed_length_balanced
    )
    # The off-policy baseline's pairs come from another policy (pi_base), as many as all rounds' pairs together.
    offline_rows, offline_ties, _ = gold_pairs(
        base, tokenizer, world, offline_prompts, world.seed_pairs + rounds_total, seed
    )
    round_prompts, redrawn = distinct_from_seed_prompts(world, round_prompts, seed_rows, seed)
    paths = {name: directory / f"{name}.jsonl" for name in ("seed_pairs", "offline_pairs", "round_prompts")}
    write_jsonl(paths["seed_pairs"], seed_rows)
    write_jsonl(paths["offline_pairs"], offline_rows)
    write_jsonl(paths["round_prompts"], [{"id": f"r{i}", "prompt": p} for i, p in enumerate(round_prompts)])
    # Held-out human pairs for the guard's measurement, from prompts of their own (the draws above are unchanged).
    guard_prompts = make_prompts(world, max(GUARD_PAIRS) * 4, random.Random(f"guard-{seed}"))
    guard_rows, _, _ = gold_pairs(init, tokenizer, world, guard_prompts, max(GUARD_PAIRS), seed + 104729)
    sft_replies = sample_replies(init, tokenizer, eval_prompts, world.eval_samples, seed + 7919)
    sft_rewards = [
        gold_reward(p, tokenizer.decode(r), world.words_per_topic)
        for p, group in zip(eval_prompts, sft_replies)
        for r in group
    ]
    info = {
        **json.loads((directory / "sft.json").read_text()),
        "seed_pairs": len(seed_rows),
        "seed_ties_skipped": seed_ties,
        **({"seed_skipped_for_length_balance": seed_unbalancing} if world.seed_length_balanced else {}),
        "offline_pairs": len(offline_rows),
        "offline_ties_skipped": offline_ties,
        "round_prompts": rounds_total,
        "round_prompts_redrawn": redrawn,
        "held_out_prompts": len(eval_prompts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return SeedWorld(
        seed, directory, base_dir, init_dir, *paths.values(), HeldOut(eval_prompts, sft_rewards), info, guard_rows
    )


def held_out_agreements(
    model_dir: Path, init: LlamaForCausalLM, tokenizer, pairs: list[dict[str, Any]]
) -> dict[str, float]:
    """The guard's signal, as the pipeline measures it: how often log pi(y|x) - log pi_init(y|x) prefers the
    gold-chosen reply (ties one half), on the first 6, 30 and 100 held-out pairs."""
    model = load_model(model_dir)
    prompts = [p["prompt"] for p in pairs] * 2
    replies = [
        tokenizer(p[side], add_special_tokens=False)["input_ids"] for side in ("chosen", "rejected") for p in pairs
    ]
    scores = (reply_logps(model, tokenizer, prompts, replies) - reply_logps(init, tokenizer, prompts, replies)).tolist()
    n = len(pairs)
    outcomes = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores[:n], scores[n:])]
    return {f"held_out_agreement_{k}": sum(outcomes[:k]) / k for k in GUARD_PAIRS if k <= n}
