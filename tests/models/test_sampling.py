"""models/sampling.py: the generation batch size, fixed or reckoned from the model's shape (``auto``)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from spreadpref.config import load_config
from spreadpref.data.records import PromptRecord
from spreadpref.models.loading import load_tokenizer
from spreadpref.models.sampling import (
    batch_memory_bytes,
    generate_samples,
    generation_batch_size,
    kv_bytes_per_token,
)
from spreadpref.runtime.layout import round_stage
from spreadpref.spa.loop import stage_fingerprints


def settings(model_dir, *extra):
    return load_config(None, [f"model.name_or_path={model_dir}", "generation.max_new_tokens=20", *extra])


def test_kv_cache_of_a_token_by_hand(tiny_model_dir):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config  # 2 layers, 2 KV heads of 8 dims
    assert kv_bytes_per_token(config, torch.float32) == 2 * 2 * 2 * 8 * 4
    assert kv_bytes_per_token(config, torch.bfloat16) == 2 * 2 * 2 * 8 * 2


@pytest.mark.parametrize(("budget_prompts", "expected"), [(6, 6), (6.9, 6), (5, 4), (0.1, 1), (100, 12)])
def test_auto_fits_as_many_prompts_as_the_memory_holds_in_even_batches(tiny_model_dir, budget_prompts, expected):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt_ids = [[5] * 10] * 12
    # Longest prompt 10 + 20 new tokens = 30 tokens x 256 bytes, + 3 float32 logits rows of 320 words; K = 2.
    per_prompt = 2 * (30 * 256 + 3 * 4 * 320)
    config = settings(
        tiny_model_dir,
        "generation.batch_size=auto",
        f"generation.batch_memory_gb={budget_prompts * per_prompt / 2**30}",
    )
    assert (
        generation_batch_size(config.generation, model.config, model.dtype, prompt_ids, config.data.max_length)
        == expected
    )
    fixed = settings(tiny_model_dir, "generation.batch_size=3")
    assert generation_batch_size(fixed.generation, model.config, model.dtype, prompt_ids, fixed.data.max_length) == 3


def test_auto_draws_the_same_samples_every_time_and_what_fixed_batches_of_that_size_draw(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = load_tokenizer(settings(tiny_model_dir).model)
    prompts = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": "x " * (i + 1)}]) for i in range(6)]

    def replies(*extra):
        config = settings(tiny_model_dir, *extra)
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"
        return [
            s.reply_ids for s in generate_samples(model, tokenizer, prompts, config.generation, config.data, 1, out)
        ]

    auto = replies("generation.batch_size=auto")
    assert auto == replies("generation.batch_size=auto") == replies("generation.batch_size=6")
    assert auto != replies("generation.batch_size=2")  # each batch has its own seed


def test_the_memory_budget_shapes_the_generate_fingerprint_only_under_auto(tiny_model_dir):
    def generate_print(*extra):
        return stage_fingerprints(settings(tiny_model_dir, *extra), [4])[round_stage(1, "generate")]

    assert generate_print("generation.batch_memory_gb=1") == generate_print("generation.batch_memory_gb=3")
    auto = "generation.batch_size=auto"
    assert generate_print(auto, "generation.batch_memory_gb=1") != generate_print(auto, "generation.batch_memory_gb=3")


def test_on_a_gpu_auto_takes_half_of_the_memory_left_under_the_utilisation_cap(monkeypatch, tiny_model_dir):
    gib = 2**30
    # 80 GiB in all, 30 GiB in use (weights, other processes): under a 0.85 cap 38 GiB are left, half for batches.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50 * gib, 80 * gib))
    config = settings(tiny_model_dir, "generation.batch_size=auto")
    assert batch_memory_bytes(config.generation, torch.device("cuda")) == int(0.5 * (0.85 * 80 - 30) * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * gib, 80 * gib))  # past the cap
    assert batch_memory_bytes(config.generation, torch.device("cuda")) == 0
    # Nothing left still generates, one prompt at a time; a CPU keeps generation.batch_memory_gb.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert generation_batch_size(config.generation, model.config, model.dtype, [[5] * 10] * 4, 96, 0) == 1
    assert batch_memory_bytes(config.generation, torch.device("cpu")) == 2 * gib


def test_a_given_batch_size_is_used_and_a_chosen_one_reported_before_generating(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = settings(tiny_model_dir, "generation.batch_size=auto")
    tokenizer = load_tokenizer(config.model)
    prompts = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": "x " * (i + 1)}]) for i in range(6)]
    reported = []
    chosen = generate_samples(
        model,
        tokenizer,
        prompts,
        config.generation,
        config.data,
        1,
        tmp_path / "a.jsonl",
        on_batch_size=reported.append,
    )
    assert reported == [6]
    given = generate_samples(
        model, tokenizer, prompts, config.generation, config.data, 1, tmp_path / "b.jsonl", batch_size=2
    )
    fixed = settings(tiny_model_dir, "generation.batch_size=2")
    two = generate_samples(model, tokenizer, prompts, fixed.generation, fixed.data, 1, tmp_path / "c.jsonl")
    assert [s.reply_ids for s in given] == [s.reply_ids for s in two] != [s.reply_ids for s in chosen]
