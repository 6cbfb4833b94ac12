"""Sampling: K replies per prompt from a policy, in token space (the engine of the generate stage and of eval).

Prompts are rendered with the chat template (the same ids the judge and the trainer will see),
batched by prompt length and left-padded. Each batch is seeded from the run seed and its index, so
a resumed run regenerates exactly what an uninterrupted one would. A reply that hits
``max_new_tokens`` is kept with ``finish_reason = "length"`` and no EOS, so training never teaches
the model to stop there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from spreadpref.config import DataSettings, GenerationSettings
from spreadpref.data.artifacts import Sample
from spreadpref.data.records import PromptRecord
from spreadpref.data.tokenize import (
    render_prompt_ids,
    require_chat_template,
    truncate_pair,
)
from spreadpref.models.decode import decode
from spreadpref.models.vllm_backend import (
    VLLM_LOG,
    build_request,
    check_prompt_unchanged,
    normalise_reply,
    prompt_seeds,
    run_vllm,
)
from spreadpref.runtime import distributed
from spreadpref.runtime.units import run_in_parts


def unit_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (run seed, round, batch index)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None) -> list[int]:
    """The tokenizer's EOS and every EOS of the model's generation config (chat models often add one)."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def prepare_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: list[PromptRecord], data: DataSettings
) -> list[list[int]]:
    require_chat_template(tokenizer)
    ids = []
    for record in prompts:
        prompt_ids = render_prompt_ids(tokenizer, record.prompt)
        prompt_ids, *_ = truncate_pair(
            prompt_ids, [], [], data.max_length, data.max_prompt_length, tokenizer.bos_token_id
        )
        ids.append(prompt_ids)
    return ids


def split_reply(new_tokens: list[int], stop_ids: set[int], pad_token_id: int) -> tuple[list[int], str]:
    """Cut generated tokens after the first stop token; without one, the reply ran out of budget."""
    for index, token in enumerate(new_tokens):
        if token in stop_ids:
            return new_tokens[: index + 1], "stop"
    while new_tokens and new_tokens[-1] == pad_token_id and pad_token_id not in stop_ids:
        new_tokens = new_tokens[:-1]
    return new_tokens, "length"


def make_sample(
    prompts: list[PromptRecord],
    i: int,
    sample: int,
    prompt_ids: list[int],
    reply: list[int],
    finish: str,
    tokenizer: PreTrainedTokenizerBase,
) -> Sample:
    text_ids = reply[:-1] if finish == "stop" else reply
    return Sample(
        prompt_id=prompts[i].id,
        prompt_index=i,
        sample=sample,
        prompt=prompts[i].prompt,
        prompt_ids=prompt_ids,
        reply_ids=reply,
        text=tokenizer.decode(text_ids, skip_special_tokens=True),
        num_tokens=len(reply),
        finish_reason=finish,
    )


def _order(sample: Sample) -> tuple[int, int]:
    return sample.prompt_index, sample.sample


def prompt_batches(prompt_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length (shortest first): little left padding to generate through."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in a decoder of this config: keys and values in every layer."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


# On a GPU, the share of the memory left free (under generation.gpu_memory_utilization) that a batch's KV cache
# and logits may take with batch_size=auto; the rest is for the prefill's activations and fragmentation.
GPU_BATCH_SHARE = 0.5


def batch_memory_bytes(settings: GenerationSettings, device: torch.device) -> int:
    """What a generation batch may take with ``batch_size=auto``: ``generation.batch_memory_gb`` on a CPU (the
    machine's memory is not the limit there, speed is); on a GPU, half of what is still free once the model is
    loaded, under ``generation.gpu_memory_utilization`` of the whole."""
    if device.type != "cuda":
        return int(settings.batch_memory_gb * 2**30)
    free, total = torch.cuda.mem_get_info(device)
    headroom = settings.gpu_memory_utilization * total - (total - free)
    return max(int(GPU_BATCH_SHARE * headroom), 0)


def generation_batch_size(
    settings: GenerationSettings,
    model_config: Any,
    dtype: torch.dtype,
    prompt_ids: list[list[int]],
    max_length: int,
    memory_bytes: int | None = None,
) -> int:
    """``generation.batch_size``, or with ``auto`` the most prompts whose sequences' KV cache and logits fit in
    ``memory_bytes`` (default ``generation.batch_memory_gb``), in batches of even size (at least one prompt).
    The caller records the size a stage started with, so that a resumed stage cuts the same batches whatever
    memory is free then."""
    if settings.batch_size != "auto":
        return settings.batch_size
    budget = batch_memory_bytes(settings, torch.device("cpu")) if memory_bytes is None else memory_bytes
    config = model_config.get_text_config()
    longest = min(max(len(ids) for ids in prompt_ids) + settings.max_new_tokens, max_length)
    per_sequence = kv_bytes_per_token(config, dtype) * longest + 3 * 4 * config.vocab_size  # + float32 logits
    fitting = max(1, int(budget // (per_sequence * settings.num_samples)))
    batches = math.ceil(len(prompt_ids) / fitting)
    return math.ceil(len(prompt_ids) / batches)  # batches of even size: no short last batch


def left_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: every prompt ends where generation starts."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention[index, width - len(row) :] = 1
    return input_ids, attention


@torch.no_grad()
def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[PromptRecord],
    settings: GenerationSettings,
    data: DataSettings,
    seed: int,
    out_file: Path,
    round_index: int = 0,
    batch_size: int | None = None,
    on_batch_size: Callable[[int], None] | None = None,
) -> list[Sample]:
    """Sample ``settings.num_samples`` replies per prompt (:func:`~spreadpref.models.decode.decode`, finished
    rows dropped as they stop); samples in prompt order.

    ``batch_size``: the prompts per batch a resumed stage started with (it decides the batches, and so each
    batch's seed); without it the size is chosen here and handed to ``on_batch_size`` before any batch runs."""
    prompt_ids = prepare_prompt_ids(tokenizer, prompts, data)
    weights = next(model.parameters())
    device = weights.device
    if batch_size is None:
        memory = batch_memory_bytes(settings, device)
        size = generation_batch_size(settings, model.config, weights.dtype, prompt_ids, data.max_length, memory)
        batch_size = distributed.broadcast_object(size)  # free memory differs per GPU; the batches must not
        if on_batch_size is not None:
            on_batch_size(batch_size)
    batches = prompt_batches(prompt_ids, batch_size)
    stops = stop_token_ids(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id

    def process(batch_index: int, indices: list[int]) -> list[Sample]:
        generator = torch.Generator(device=device).manual_seed(unit_seed(seed, "generate", round_index, batch_index))
        input_ids, attention = left_padded([prompt_ids[i] for i in indices], pad)
        budget = max(min(settings.max_new_tokens, data.max_length - input_ids.shape[1]), 1)
        replies = decode(
            model,
            input_ids.to(device),
            attention.to(device),
            budget,
            stops,
            settings.temperature,
            settings.top_p,
            generator,
            repeats=settings.num_samples,
        )
        samples = []
        for row, sequence in enumerate(replies):
            i = indices[row // settings.num_samples]
            reply, finish = split_reply(sequence, set(stops), pad)
            samples.append(make_sample(prompts, i, row % settings.num_samples, prompt_ids[i], reply, finish, tokenizer))
        return samples

    model.eval()
    return run_in_parts(out_file, batches, process, Sample, f"Generating (round {round_index})", order=_order)


def generate_samples_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[PromptRecord],
    settings: GenerationSettings,
    data: DataSettings,
    seed: int,
    out_file: Path,
    round_index: int = 0,
    dtype: str = "bfloat16",
) -> list[Sample]:
    """The same samples as :func:`generate_samples`, drawn by vLLM in a subprocess on ``model_path``.

    The whole round is one unit of work: vLLM's start-up is too slow to pay per batch.
    """
    prompt_ids = prepare_prompt_ids(tokenizer, prompts, data)
    try:
        generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation_config = None
    stops = stop_token_ids(tokenizer, generation_config)
    seeds = prompt_seeds(unit_seed(seed, "generate", round_index, "vllm"), len(prompts))

    def process(_: int, indices: list[int]) -> list[Sample]:
        request = build_request(
            model_path,
            [prompt_ids[i] for i in indices],
            seeds=[seeds[i] for i in indices],
            stops=stops,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=[
                max(1, min(settings.max_new_tokens, data.max_length - len(prompt_ids[i]))) for i in indices
            ],
            num_samples=settings.num_samples,
            tensor_parallel_size=settings.tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=data.max_length,
        )
        samples = []
        for i, result in zip(indices, run_vllm(request, log_file=out_file.parent / VLLM_LOG)):
            check_prompt_unchanged(prompt_ids[i], result.get("prompt_token_ids"), i)
            for k, sample in enumerate(result["samples"]):
                reply, finish = normalise_reply(
                    sample["token_ids"], sample["finish_reason"], set(stops), tokenizer.eos_token_id
                )
                samples.append(make_sample(prompts, i, k, prompt_ids[i], reply, finish, tokenizer))
        return samples

    return run_in_parts(
        out_file,
        [list(range(len(prompts)))],
        process,
        Sample,
        f"Generating with vLLM (round {round_index})",
        order=_order,
    )
