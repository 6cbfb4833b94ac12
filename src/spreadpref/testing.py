"""Tiny models and tokenizers built in code, for tests and examples that must not download anything.

``make_tiny_model_dir(path)`` writes a random Llama-style causal LM (a few hundred thousand
parameters) and a byte-level BPE tokenizer with a ChatML chat template, as a normal Hugging Face
directory that every part of spreadpref can load. ``make_shaped_model_dir(path, "7b")`` writes a random
model of a real model's shape (``MODEL_SHAPES``) with a tokenizer of that vocabulary size, for speed and
memory checks on machines that have no model files (scripts/gpu_check.py).
"""

from __future__ import annotations

import random
import string
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. Waves fold and unfold on the sand.",
    "Give me three tips for staying healthy: drink water, sleep well, move every day.",
    "def add(a, b):\n    return a + b\n",
    "I am not sure. Maybe. I cannot help with that request.",
    "user assistant system: helpful, correct and to the point replies are preferred.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } , . ; : ! ? ' \"",
]


def bpe_tokenizer(corpus: list[str], vocab_size: int, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on ``corpus`` up to ``vocab_size`` entries, with ChatML specials."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_tokenizer(chat_template: str | None = CHATML_TEMPLATE, vocab_size: int = 320):
    return bpe_tokenizer(_CORPUS * 4, vocab_size, chat_template)


def make_tiny_model(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 4):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def make_tiny_model_dir(
    path: str | Path, seed: int = 0, chat_template: str | None = CHATML_TEMPLATE, vllm_compatible: bool = False
) -> Path:
    """Write a tiny model and tokenizer as a save_pretrained directory; return the path.

    ``vllm_compatible``: a head size of 64 (2 heads of a 128-wide model), which vLLM's CPU attention
    kernels support; the default model's head size of 8 they refuse.
    """
    path = Path(path)
    tokenizer = make_tiny_tokenizer(chat_template)
    shape = {"hidden_size": 128, "heads": 2} if vllm_compatible else {}
    model = make_tiny_model(len(tokenizer), seed=seed, **shape)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_reward_model_dir(path: str | Path, seed: int = 1) -> Path:
    """A tiny sequence-classification reward model (one score) with the tiny tokenizer, saved to ``path``."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        num_labels=1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Real models' shapes (random weights): what a step costs depends on these, not on what the weights hold.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),  # SmolLM2-135M
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True),  # SmolLM2-1.7B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),  # Llama-2-7B
}  # fmt: skip


def make_sized_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer of ``vocab_size`` entries (ChatML template), trained in seconds on the bundled
    seed pairs and prompts (so their texts take realistic token counts) plus made-up words to reach the size."""
    bundled = resources.files("spreadpref.resources")
    text = "".join((bundled / name).read_text(encoding="utf-8") for name in ("seed_pairs.jsonl", "prompts.jsonl"))
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(vocab_size * 6)]
    corpus = [text] + [" ".join(words[i : i + 100]) for i in range(0, len(words), 100)]
    return bpe_tokenizer(corpus, vocab_size)


def make_shaped_model_dir(
    path: str | Path, shape: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Path:
    """Write a random model of ``MODEL_SHAPES[shape]`` and its tokenizer as a save_pretrained directory.

    The weights are initialised on ``device`` (a 7B model initialises in seconds on a GPU, minutes on a CPU)
    and saved in ``dtype``. The model's vocabulary is the tokenizer's: every id it samples decodes."""
    path = Path(path)
    spec = dict(MODEL_SHAPES[shape])
    tokenizer = make_sized_tokenizer(spec.pop("vocab_size"), seed=seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path
