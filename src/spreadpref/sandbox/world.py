"""A synthetic gold world: a tiny language model, a hidden gold reward, and SPA run through the real pipeline.

The world, in a few lines:

- **Words.** A prompt is a topic token and a few content words (``t2 w7 w30 w11``); a reply is 3 to 8
  content words. The content words fall into one group per topic.
- **The hidden gold reward** ``r*(x, y)`` is the share of the reply's words that belong to the prompt's
  topic group. It plays the human: it labels the seed pairs and scores the held-out prompts.
- **pi_base** is trained in code on replies drawn uniformly from all words (its gold reward is about
  1 / topics), and **pi_init** (the SFT model) is pi_base fine-tuned on replies that use the topic's words
  a bit more often (``sft_good_rate``): it satisfies r* only part of the time, and DPO can learn more.
- **Everything else is the real pipeline**: the seed stage is :func:`spreadpref.train_policy`, the rounds
  are :func:`spreadpref.run` with ``loop.seed_stage=false`` from the seed model (so the variants share one
  seed stage), the implicit judge, refinement and DND are the shipped code, and the baselines' judges
  plug in through ``judge.kind=custom`` (:func:`gold_judge`, :func:`random_judge`).

``benchmarks/gold_world.py`` runs every variant on many seeds and writes docs/results.md's table; the slow
test ``tests/test_goldworld.py`` runs a reduced world so that a change that breaks the method fails CI.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spreadpref.config import Config, load_config
from spreadpref.data.artifacts import Pair
from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.dpo.logprobs import score_sequences
from spreadpref.judges.base import Comparison, ExactScoreJudge
from spreadpref.models.loading import quiet_transformers_bars
from spreadpref.runtime.files import atomic_write_json, write_jsonl
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.layout import MODEL_DIRECTORY, round_directory, round_training_directory
from spreadpref.spa.summary import label_measurements
from spreadpref.testing import CHATML_TEMPLATE

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
ROLES = ["system", "user", "assistant"]


@dataclass(frozen=True)
class WorldSettings:
    """The world's shape and the training budget of every variant (chosen on development seeds)."""

    topics: int = 4
    words_per_topic: int = 8
    prompt_words: int = 3
    reply_words: tuple[int, int] = (3, 8)
    sft_good_rate: float = 0.4  # pi_init's chance of a topic word (pi_base: 1 / topics)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    pretrain_steps: int = 300
    sft_steps: int = 600  # at least; then on in chunks until pi_init has learnt the topic (sft_target)
    sft_target: float = 0.33  # pi_init's gold reward on the world's own check prompts (uniform words: 0.25)
    sft_max_steps: int = 3000
    lm_batch: int = 64
    lm_learning_rate: float = 3e-3
    seed_pairs: int = 30  # labelled by the gold reward: ~3% of all pairs the variants see
    # Keep the seed pairs' chosen reply shorter as often as longer (|difference| <= 1), so that the seed carries
    # no accidental length preference for SPA to spread. Tried on the development seeds: it does not make SPA
    # beat the seed-only model (docs/results.md §1).
    seed_length_balanced: bool = False
    prompts_per_round: tuple[int, ...] = (320, 320, 320)
    eval_prompts: int = 256
    eval_samples: int = 4  # sampled replies per held-out prompt
    spa: tuple[str, ...] = ()  # overrides every variant's pipeline run shares (on top of DEFAULT_SPA)

    @property
    def vocabulary(self) -> list[str]:
        topic_tokens = [f"t{t}" for t in range(self.topics)]
        words = [f"w{w}" for w in range(self.topics * self.words_per_topic)]
        return SPECIALS + ROLES + topic_tokens + words

    def topic_words(self, topic: int) -> list[str]:
        return [f"w{topic * self.words_per_topic + j}" for j in range(self.words_per_topic)]


# The regression test's world (tests/test_goldworld.py): fewer prompts, the same shape and budget.
REDUCED_WORLD = WorldSettings(seed_pairs=16, prompts_per_round=(160, 160, 160), eval_prompts=128, eval_samples=4)

# The SPA hyper-parameters every variant shares; the world's budget (lr, epochs) was chosen on development
# seeds (benchmarks/gold_world.py --dev), never on the reported ones.
DEFAULT_SPA = (
    "data.max_length=32",
    "data.max_prompt_length=16",
    "data.seed_holdout=0",
    "train.beta=0.1",
    "train.learning_rate=2e-3",
    "train.num_epochs=3",
    "train.per_device_batch_size=16",
    "train.gradient_accumulation_steps=1",
    "train.warmup_ratio=0.1",
    "train.save_strategy=no",
    "train.logging_steps=5",
    "train.evaluate_after=false",
    "generation.num_samples=2",
    "generation.temperature=1.0",
    "generation.max_new_tokens=12",
    "generation.batch_size=64",
    "judge.batch_size=64",
    "judge.seed_agreement=false",
    "train.logprob_batch_size=64",
    "loop.epochs_per_round=1",
    "loop.learning_rate=5e-4",  # dev seeds 101-102: at 1e-3 and 2e-3 SPA's KL from pi_init ran away by round 3
    "loop.keep_models=8",
)

OFFLINE_EPOCHS = 1  # one pass over as many labels as all rounds together, as each round makes one pass over its own

VARIANTS = {
    "sft": "SFT (pi_init)",
    "seed_only": "DPO on the seed only",
    "spa_direct": "SPA, direct judgment",
    "spa_refine": "SPA + self-refinement",
    "spa_dnd": "SPA + refinement + DND (the paper)",
    "spa_keep_empty": "SPA + DND, empty replies paired (before 0.2)",
    "spa_length": "SPA + DND, length-regularised judge (fit)",
    "spa_replay": "SPA + DND, replay 25% seed pairs",
    "spa_top": "SPA + DND, top half of pairs by margin",
    "spa_k4": "SPA + DND, K = 4 best vs worst",
    "spa_consistency": "SPA + DND, consistency (soften)",
    "spa_anchored": "SPA + DND, anchored judge (pi_0 vs pi_init)",
    "spa_paper": "SPA + DND, paper-faithful settings",
    "base_ref": "Seeded SPA, judge pi_{i-1} vs pi_base",
    "base_fixed": "Seeded start, judge pi_init vs pi_base",
    "base_mix": "Seeded SPA, reference pi_init^0.5 pi_base^0.5",
    "base_length": "Seeded SPA vs pi_base + length-regularised judge",
    "spa_length_replay": "SPA + DND, length-regularised + replay 25%",
    "spa_length_anchored": "SPA + DND, length-regularised + anchored judge",
    "paper_length_replay": "SPA + DND, paper-faithful + length-regularised + replay 25%",
    "base_length_replay": "Seeded SPA vs pi_base + length-regularised + replay 25%",
    "iterative_gold": "Iterative DPO, gold labels (100%)",
    "offline_gold": "Offline DPO, gold labels, off-policy",
    "iterative_random": "Iterative DPO, random labels",
    "no_seed": "SPA without seed (reference: pi_base)",
}
CUSTOM = "custom"  # the sandbox's variant: SPA with a config's own settings (spreadpref.sandbox)
CUSTOM_LABEL = "Your settings (the config's SPA keys)"
ROUND_VARIANTS = (
    "spa_direct",
    "spa_refine",
    "spa_dnd",
    "spa_keep_empty",
    "spa_length",
    "spa_replay",
    "spa_top",
    "spa_k4",
    "spa_consistency",
    "spa_anchored",
    "spa_paper",
    "base_ref",
    "base_fixed",
    "base_mix",
    "base_length",
    "spa_length_replay",
    "spa_length_anchored",
    "paper_length_replay",
    "base_length_replay",
    "iterative_gold",
    "iterative_random",
    "no_seed",
)
DND = ("refine.enabled=true", "refine.decoupled=true")
# {base}, {init} and {seed_pairs} are the seed's world on disk (pi_base, pi_init, the seed pairs).
VARIANT_OVERRIDES = {
    "spa_direct": ("refine.enabled=false",),
    "spa_refine": ("refine.enabled=true", "refine.decoupled=false"),
    "spa_dnd": DND,
    "spa_keep_empty": (*DND, "judge.min_reply_tokens=0"),
    "spa_length": (*DND, "judge.length_penalty=fit"),
    "spa_replay": (*DND, "loop.replay_fraction=0.25", "data.train={seed_pairs}"),
    "spa_top": (*DND, "judge.top_fraction=0.5"),
    "spa_k4": (*DND, "generation.num_samples=4"),
    "spa_consistency": (*DND, "judge.consistency=soften"),
    "spa_anchored": (*DND, "judge.policy=seed"),
    # The paper's choices where the world departed from them: temperature 0.7, shuffled batches, one learning
    # rate for the seed stage and the rounds, and round 1 about 4x the seed (120 prompts on 30 pairs).
    "spa_paper": (
        *DND,
        "generation.temperature=0.7",
        "loop.group_by_length=false",
        "loop.learning_rate=2e-3",
        "loop.prompts_per_round=[120,120,120]",
    ),
    "base_ref": (*DND, "judge.reference={base}"),
    "base_fixed": (*DND, "judge.policy={init}", "judge.reference={base}"),
    "base_mix": (*DND, "judge.base={base}", "judge.base_weight=0.5"),
    "base_length": (*DND, "judge.reference={base}", "judge.length_penalty=fit"),
    "spa_length_replay": (*DND, "judge.length_penalty=fit", "loop.replay_fraction=0.25", "data.train={seed_pairs}"),
    "spa_length_anchored": (*DND, "judge.length_penalty=fit", "judge.policy=seed"),
    "iterative_gold": ("judge.kind=custom", "refine.enabled=false"),
    "iterative_random": ("judge.kind=custom", "refine.enabled=false"),
    "no_seed": DND,
}
REPLAY = ("loop.replay_fraction=0.25", "data.train={seed_pairs}")
VARIANT_OVERRIDES |= {
    "paper_length_replay": (*VARIANT_OVERRIDES["spa_paper"], "judge.length_penalty=fit", *REPLAY),
    "base_length_replay": (*VARIANT_OVERRIDES["base_length"], *REPLAY),
}
GUARD_PAIRS = (6, 30, 100)  # held-out human pairs the guard is measured with (docs/results.md §1)


# ---------------------------------------------------------------------------------------------
# The gold reward and the judges built on it


def gold_reward(prompt: str, reply: str, words_per_topic: int) -> float:
    """r*(x, y): the share of the reply's words in the prompt topic's group (0 for an empty reply)."""
    topic = prompt.split()[0] if prompt.split() else ""
    words = reply.split()
    if not words or not topic.startswith("t"):
        return 0.0
    low = int(topic[1:]) * words_per_topic
    good = sum(1 for w in words if w.startswith("w") and w[1:].isdigit() and low <= int(w[1:]) < low + words_per_topic)
    return good / len(words)


def _prompt_text(comparison: Comparison) -> str:
    return next((m["content"] for m in reversed(comparison.prompt) if m["role"] == "user"), "")


class GoldJudge(ExactScoreJudge):
    """The hidden gold reward as a judge: hard labels, ties where both replies score the same."""

    name = "gold"

    def __init__(self, words_per_topic: int):
        self.words_per_topic = words_per_topic

    def scores(self, comparison: Comparison) -> list[float]:
        return [gold_reward(_prompt_text(comparison), reply, self.words_per_topic) for reply in comparison.replies]


class RandomJudge(ExactScoreJudge):
    """Labels by a coin: a seeded draw per prompt and reply, the same on a resumed run."""

    name = "random"

    def __init__(self, seed: int):
        self.seed = seed

    def scores(self, comparison: Comparison) -> list[float]:
        rng = random.Random(f"{self.seed}-{comparison.id}-{_prompt_text(comparison)}")
        return [rng.random() for _ in comparison.replies]


def gold_judge(words_per_topic: int = 8) -> GoldJudge:
    """Factory for ``judge.custom.factory=spreadpref.sandbox.world:gold_judge``."""
    return GoldJudge(words_per_topic)


def random_judge(seed: int = 0) -> RandomJudge:
    """Factory for ``judge.custom.factory=spreadpref.sandbox.world:random_judge``."""
    return RandomJudge(seed)


# ---------------------------------------------------------------------------------------------
# Building the world: tokenizer, prompts, pi_base and pi_init


def make_tokenizer(world: WorldSettings) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(world.vocabulary)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_prompts(world: WorldSettings, count: int, rng: random.Random) -> list[str]:
    words = [f"w{w}" for w in range(world.topics * world.words_per_topic)]
    return [
        f"t{rng.randrange(world.topics)} " + " ".join(rng.choices(words, k=world.prompt_words)) for _ in range(count)
    ]


def distinct_from_seed_prompts(
    world: WorldSettings, round_prompts: list[str], seed_rows: list[dict[str, Any]], seed: int
) -> tuple[list[str], int]:
    """(round prompts, how many were drawn again): a round prompt that repeats a seed pair's prompt is replaced
    by a fresh draw. The loop drops such prompts from its pool (no round trains on a human pair's prompt), and
    with replay every variant would then be short of prompts; a world without a repeat is unchanged."""
    taken = {row["prompt"] for row in seed_rows}
    rng = random.Random(f"prompts-again-{seed}")
    kept, redrawn = [], 0
    for prompt in round_prompts:
        while prompt in taken:
            prompt, redrawn = make_prompts(world, 1, rng)[0], redrawn + 1
        kept.append(prompt)
    return kept, redrawn


def draw_reply(world: WorldSettings, prompt: str, good_rate: float, rng: random.Random) -> str:
    """A reply whose words come from the prompt's topic with probability ``good_rate``, else from the others."""
    topic = int(prompt.split()[0][1:])
    good = world.topic_words(topic)
    other = [f"w{w}" for w in range(world.topics * world.words_per_topic) if f"w{w}" not in good]
    length = rng.randint(*world.reply_words)
    return " ".join(rng.choice(good) if rng.random() < good_rate else rng.choice(other) for _ in range(length))


def _chat_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """The prompt's ids as the pipeline renders them (chat template, generation prompt)."""
    return render_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])


def _lm_batch(tokenizer, prompts: list[str], replies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels that count the reply and its end token only (SFT)."""
    rows, labels = [], []
    for prompt, reply in zip(prompts, replies):
        prompt_ids = _chat_ids(tokenizer, prompt)
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + reply_ids)
        labels.append([-100] * len(prompt_ids) + reply_ids)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab


def train_language_model(
    model: LlamaForCausalLM, tokenizer, world: WorldSettings, good_rate: float, steps: int, rng: random.Random
) -> float:
    """Plain next-token training on prompts and replies drawn with ``good_rate``; returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=world.lm_learning_rate)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        prompts = make_prompts(world, world.lm_batch, rng)
        ids, labels = _lm_batch(tokenizer, prompts, [draw_reply(world, p, good_rate, rng) for p in prompts])
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def build_models(world: WorldSettings, seed: int, directory: Path) -> tuple[Path, Path]:
    """pi_base (uniform replies) and pi_init (pi_base fine-tuned toward the topic's words): two directories."""
    base_dir, init_dir = directory / "pi_base", directory / "pi_init"
    if all((d / "model.safetensors").is_file() for d in (base_dir, init_dir)) and (directory / "sft.json").is_file():
        return base_dir, init_dir
    torch.manual_seed(seed)
    rng = random.Random(f"world-{seed}")
    tokenizer = make_tokenizer(world)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=world.hidden_size,
        intermediate_size=world.hidden_size * 2,
        num_hidden_layers=world.layers,
        num_attention_heads=world.heads,
        num_key_value_heads=world.heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train_language_model(model, tokenizer, world, 1.0 / world.topics, world.pretrain_steps, rng)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    # SFT until pi_init uses its topic's words (some seeds' models take longer to find the topic token): a world
    # whose pi_init ignores the topic is degenerate, since no variant can then learn r* in the budget. Checked
    # on prompts of the world's own, never the held-out ones, and never on a variant's result.
    check_prompts = make_prompts(world, 128, random.Random(f"sft-check-{seed}"))
    steps, reward = 0, 0.0
    while steps < world.sft_max_steps:
        chunk = world.sft_steps if steps == 0 else 300
        train_language_model(model, tokenizer, world, world.sft_good_rate, chunk, rng)
        steps += chunk
        reward = mean_gold_reward(model, tokenizer, world, check_prompts, seed)
        if reward >= world.sft_target:
            break
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    atomic_write_json(directory / "sft.json", {"sft_steps": steps, "check_gold_reward": reward})
    return base_dir, init_dir


def mean_gold_reward(model: LlamaForCausalLM, tokenizer, world: WorldSettings, prompts: list[str], seed: int) -> float:
    replies = sample_replies(model, tokenizer, prompts, 2, seed)
    rewards = [gold_reward(p, tokenizer.decode(r), world.words_per_topic) for p, g in zip(prompts, replies) for r in g]
    return sum(rewards) / len(rewards)


# ---------------------------------------------------------------------------------------------
# Sampling and scoring with a model of the world


def load_model(path: Path) -> LlamaForCausalLM:
    quiet_transformers_bars()  # one line per seed, not one bar per tensor
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def sample_replies(
    model: LlamaForCausalLM, tokenizer, prompts: list[str], samples: int, seed: int, max_new_tokens: int = 12
) -> list[list[list[int]]]:
    """``samples`` replies per prompt at temperature 1 (token ids without the end token)."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out: list[list[list[int]]] = []
    for start in range(0, len(prompts), 128):
        chunk = prompts[start : start + 128]
        encoded = [_chat_ids(tokenizer, p) for p in chunk]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
        generated = model.generate(
            input_ids=ids,
            attention_mask=(ids != tokenizer.pad_token_id).long(),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, width:]
        for p in range(len(chunk)):
            group = []
            for row in generated[p * samples : (p + 1) * samples].tolist():
                reply = []
                for token in row:
                    if token in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                        break
                    reply.append(token)
                group.append(reply)
            out.append(group)
    return out


def reply_logps(model: LlamaForCausalLM, tokenizer, prompts: list[str], replies: list[list[int]]) -> torch.Tensor:
    """log pi(y|x) of each reply with its end token, as the pipeline scores replies that stopped."""
    sums, _ = score_sequences(
        model,
        [_chat_ids(tokenizer, prompt) for prompt in prompts],
        [reply + [tokenizer.eos_token_id] for reply in replies],
        tokenizer.pad_token_id,
        batch_size=256,
        progress=False,
    )
    return sums


@dataclass
class HeldOut:
    """The held-out prompts and pi_init's replies to them (the win-rate baseline and the KL's reference)."""

    prompts: list[str]
    sft_rewards: list[float]


def evaluate_model(
    model_dir: Path, init: LlamaForCausalLM, tokenizer, world: WorldSettings, held_out: HeldOut, seed: int
) -> dict[str, float]:
    """Mean gold reward, win rate against pi_init, reply length and KL(pi || pi_init) on the held-out prompts."""
    model = load_model(model_dir)
    replies = sample_replies(model, tokenizer, held_out.prompts, world.eval_samples, seed)
    flat_prompts = [p for p, group in zip(held_out.prompts, replies) for _ in group]
    flat = [r for group in replies for r in group]
    texts = [tokenizer.decode(r) for r in flat]
    rewards = [gold_reward(p, t, world.words_per_topic) for p, t in zip(flat_prompts, texts)]
    wins = [1.0 if r > s else 0.5 if r == s else 0.0 for r, s in zip(rewards, held_out.sft_rewards)]
    kl = (reply_logps(model, tokenizer, flat_prompts, flat) - reply_logps(init, tokenizer, flat_prompts, flat)).mean()
    return {
        "gold_reward": sum(rewards) / len(rewards),
        "win_rate_vs_sft": sum(wins) / len(wins),
        "reply_words": sum(len(t.split()) for t in texts) / len(texts),
        "kl_from_init": float(kl),
    }


# ---------------------------------------------------------------------------------------------
# Labelled pairs for the seed stage and the off-policy baseline


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


# ---------------------------------------------------------------------------------------------
# The variants, through the real pipeline


def pipeline_config(world: WorldSettings, output_dir: Path, overrides: Sequence[str]) -> Config:
    rounds = len(world.prompts_per_round)
    return load_config(
        None,
        [
            *DEFAULT_SPA,
            *world.spa,
            f"loop.rounds={rounds}",
            f"loop.prompts_per_round=[{','.join(map(str, world.prompts_per_round))}]",
            f"output_dir={output_dir}",
            "eval.after_run=false",
            *overrides,
        ],
    )


def variant_overrides(
    name: str, world: WorldSettings, sw: SeedWorld, seed_model: Path, custom: Sequence[str] = ()
) -> list[str]:
    """The pipeline settings of round variant ``name``: its start, its judge and its refinement. ``custom`` is the
    variant of that name (the sandbox's: a config's own settings), with the same placeholders."""
    start = sw.init if name == "no_seed" else seed_model
    reference = sw.base if name == "no_seed" else sw.init
    out = [
        f"model.name_or_path={start}",
        f"data.prompts={sw.round_prompts}",
        "loop.seed_stage=false",
        f"judge.reference={reference}",
        f"seed={sw.seed}",
        *(
            o.format(base=sw.base, init=sw.init, seed_pairs=sw.seed_pairs)
            for o in (custom if name == CUSTOM else VARIANT_OVERRIDES[name])
        ),
    ]
    if name == "iterative_gold":
        out += [
            "judge.custom.factory=spreadpref.sandbox.world:gold_judge",
            f"judge.custom.kwargs={{words_per_topic: {world.words_per_topic}}}",
        ]
    elif name == "iterative_random":
        out += [
            "judge.custom.factory=spreadpref.sandbox.world:random_judge",
            f"judge.custom.kwargs={{seed: {sw.seed}}}",
        ]
    else:  # SPA: the gold reward measures the self-labels and the smoothing, never trains
        out += [
            "judge.gold=custom",
            "judge.custom.factory=spreadpref.sandbox.world:gold_judge",
            f"judge.custom.kwargs={{words_per_topic: {world.words_per_topic}}}",
        ]
    return out


def _train_stage(world: WorldSettings, output_dir: Path, start: Path, data: Path, seed: int, extra=()) -> Path:
    from spreadpref.dpo.train import train_policy  # noqa: PLC0415 - Trainer imports cost seconds

    config = pipeline_config(
        world, output_dir, [f"model.name_or_path={start}", f"data.train={data}", f"seed={seed}", *extra]
    )
    return train_policy(config).model_dir


def run_seed(
    world: WorldSettings,
    seed: int,
    directory: Path,
    variants: Sequence[str] = tuple(VARIANTS),
    custom: Sequence[str] = (),
) -> dict[str, Any]:
    """Every variant of ``variants`` on one seed's world; per variant, per round: the held-out metrics and the
    label measurements. Finished stages are reused (the pipeline resumes), so a killed run continues. The variant
    ``custom`` (when in ``variants``) is SPA with the overrides ``custom``."""
    from spreadpref.spa.loop import run  # noqa: PLC0415 - deferred, as above

    sw = build_world(world, seed, directory / f"seed-{seed}")
    tokenizer = make_tokenizer(world)
    init = load_model(sw.init)
    results: dict[str, Any] = {"seed": seed, "world": sw.info, "variants": {}}

    def evaluate(model_dir: Path, tag: str) -> dict[str, float]:
        figures = evaluate_model(model_dir, init, tokenizer, world, sw.held_out, seed * 1000 + 17)
        return {**figures, **held_out_agreements(model_dir, init, tokenizer, sw.guard_pairs)}

    started = time.perf_counter()
    results["variants"]["sft"] = [dict(evaluate(sw.init, "sft"), round=0)]
    seed_model = _train_stage(world, sw.directory / "seed_only", sw.init, sw.seed_pairs, seed)
    results["variants"]["seed_only"] = [dict(evaluate(seed_model, "seed_only"), round=0)]
    if "offline_gold" in variants:
        offline = _train_stage(
            world,
            sw.directory / "offline_gold",
            sw.init,
            sw.offline_pairs,
            seed,
            [f"train.num_epochs={OFFLINE_EPOCHS}"],
        )
        results["variants"]["offline_gold"] = [dict(evaluate(offline, "offline_gold"), round=0)]
    for name in (v for v in (*ROUND_VARIANTS, CUSTOM) if v in variants):
        run_dir = variant_directory(sw.directory, name, custom)
        config = pipeline_config(world, run_dir, variant_overrides(name, world, sw, seed_model, custom))
        summary = run(config).summary
        rows = (
            [dict(evaluate(sw.init if name == "no_seed" else seed_model, name), round=0)] if name == "no_seed" else []
        )
        for i in range(1, len(world.prompts_per_round) + 1):
            model_dir = round_training_directory(run_dir, i) / MODEL_DIRECTORY
            rows.append(dict(evaluate(model_dir, name), round=i, **label_measurements(summary["rounds"][str(i)])))
        results["variants"][name] = rows
    results["seconds"] = round(time.perf_counter() - started + sw.info["seconds"], 1)
    return add_length_skew(results, sw.directory, custom)


def variant_directory(seed_directory: Path, name: str, custom: Sequence[str] = ()) -> Path:
    """Where a variant runs in a seed's world. The sandbox's own settings run in a folder named by them, so that
    other settings in the same output directory are a new run beside the world and its baselines, which are kept."""
    return seed_directory / (f"{CUSTOM}-{fingerprint(list(custom))[:10]}" if name == CUSTOM else name)


def chosen_shorter(pairs_file: Path) -> float | None:
    """Among a file's pairs whose replies differ in length, the share whose chosen reply is the shorter: 0.5
    for labels that ignore length (the gold reward's are near it), far from it for a judge that learnt length."""
    if not pairs_file.is_file():
        return None
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    lengths = [(len(r["chosen"].split()), len(r["rejected"].split())) for r in rows]
    unequal = [(c, r) for c, r in lengths if c != r]
    return sum(c < r for c, r in unequal) / len(unequal) if unequal else None


def add_length_skew(result: dict[str, Any], seed_directory: Path, custom: Sequence[str] = ()) -> dict[str, Any]:
    """Fill in ``chosen_shorter`` for the seed pairs and every round of every variant, from the files on disk."""
    result["world"]["seed_pairs_chosen_shorter"] = chosen_shorter(seed_directory / "seed_pairs.jsonl")
    for name, rows in result["variants"].items():
        for row in rows:
            if row["round"] > 0:
                share = chosen_shorter(
                    round_directory(variant_directory(seed_directory, name, custom), row["round"]) / Pair.FILE
                )
                row["chosen_shorter"] = share
                # Direction-free: 0 when length does not predict the label, 1 when it always does.
                row["length_skew"] = None if share is None else abs(2 * share - 1)
    return result


def world_settings_dict(world: WorldSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(world)))


__all__ = [
    "DEFAULT_SPA",
    "GoldJudge",
    "RandomJudge",
    "VARIANTS",
    "WorldSettings",
    "build_world",
    "gold_judge",
    "gold_reward",
    "random_judge",
    "run_seed",
]
