"""The gold world's language models: its word-level tokenizer and prompts, pi_base and pi_init trained in code,
and sampling, scoring and evaluating with them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.dpo.logprobs import score_sequences
from spreadpref.models.loading import quiet_transformers_bars
from spreadpref.runtime.files import atomic_write_json
from spreadpref.sandbox.gold import gold_reward
from spreadpref.sandbox.settings import WorldSettings
from spreadpref.testing import CHATML_TEMPLATE


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
