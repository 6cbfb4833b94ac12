"""LoRA runs carry one adapter on the frozen pi_init: every stage writes an adapter, never a full model.

pi_i is pi_init with round i's adapter; each round continues the previous round's adapter, its DPO
reference (and DND's) is pi_init with that previous adapter, and every stage's first step has margin 0.
"""

import json

import pytest
import torch
from helpers import loop_overrides
from safetensors.torch import load_file

from spreadpref.config import load_config
from spreadpref.models.loading import (
    is_adapter_directory,
    is_peft_model,
    load_for_inference,
    load_model,
    load_tokenizer,
    reference_adapter_active,
)
from spreadpref.runtime.layout import LOG_HISTORY_FILE, round_name, round_stage
from spreadpref.runtime.manifest import Manifest
from spreadpref.spa.loop import run

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.disable_dropout=true"]


def first_step_margin(stage_dir) -> float:
    logs = json.loads((stage_dir / LOG_HISTORY_FILE).read_text())
    return next(row["rewards/margins"] for row in logs if "rewards/margins" in row and "loss" in row)


def adapter_tensors(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


@pytest.fixture
def lora_run(tiny_model_dir, loop_data, tmp_path):
    seed, prompts = loop_data
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + LORA + ["train.logging_steps=1"]
    config = load_config(None, overrides)
    return config, run(config), out


def test_every_stage_writes_an_adapter_and_no_full_model(lora_run, tiny_model_dir):
    config, result, out = lora_run
    stages = [out / "seed"] + [out / round_name(i) / "train" for i in (1, 2)]
    for stage in stages:
        assert is_adapter_directory(stage / "adapter"), stage
        assert not (stage / "model").exists(), f"{stage} wrote a full model"
        assert not (stage / "adapter" / "reference").exists()  # the frozen reference adapter is not saved
        # Each adapter names pi_init as its base: any one of them is usable on the SFT model alone.
        base = json.loads((stage / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == str(tiny_model_dir)
    assert result.final_model == out / round_name(2) / "train" / "adapter"
    manifest = Manifest(out)
    assert manifest.output(round_stage(2, "train"), "model") == out / round_name(2) / "train" / "adapter"


def test_rounds_continue_one_adapter_on_the_frozen_base(lora_run):
    config, _, out = lora_run
    seed, one, two = (
        adapter_tensors(d)
        for d in (out / "seed" / "adapter", *(out / round_name(i) / "train" / "adapter" for i in (1, 2)))
    )
    assert seed.keys() == one.keys() == two.keys()
    # Round 1 starts from pi_0's adapter: its B matrices are not a fresh (zero) initialisation any more.
    assert all(tensor.any() for name, tensor in one.items() if "lora_B" in name)
    assert any(not torch.equal(one[k], two[k]) for k in one)
    # pi_2 = pi_init + round 2's adapter, and it differs from pi_init.
    policy = load_for_inference(config.model, out / round_name(2) / "train" / "adapter")
    assert is_peft_model(policy)
    base = load_model(config.model)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, base(ids).logits)
        with policy.disable_adapter():
            assert torch.equal(policy(ids).logits, base(ids).logits)


def test_every_stage_starts_at_margin_zero(lora_run):
    _, _, out = lora_run
    manifest = Manifest(out)
    assert manifest.stage("seed")["reference"]["model"] == "starting policy (LoRA adapter off)"
    for stage in (out / "seed", out / round_name(1) / "train", out / round_name(2) / "train"):
        assert first_step_margin(stage) == pytest.approx(0.0, abs=1e-5), stage
    for i in (1, 2):
        # The judge's pi_{i-1} log-probs (pi_init + the previous adapter) agree with the continued policy.
        check = manifest.stage(round_stage(i, "train"))["metrics"]["reference_check"]
        assert not check["warned"] and check["median_nats"] < 1e-4


def test_merge_on_save_adds_a_merged_model_but_rounds_still_carry_the_adapter(tiny_model_dir, loop_data, tmp_path):
    seed, prompts = loop_data
    out = tmp_path / "run"
    overrides = loop_overrides(tiny_model_dir, seed, prompts, out) + LORA + ["model.lora.merge_on_save=true"]
    overrides += ["loop.rounds=1", "loop.prompts_per_round=[8]"]
    result = run(load_config(None, overrides))
    assert (out / "seed" / "model" / "config.json").is_file()
    assert result.final_model == out / round_name(1) / "train" / "adapter"
    one = adapter_tensors(out / round_name(1) / "train" / "adapter")
    assert all(tensor.any() for name, tensor in one.items() if "lora_B" in name)  # continued pi_0's adapter


def test_vllm_gets_a_temporary_merged_copy_of_an_adapter_policy(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from spreadpref.spa.generate import full_model_directory

    config, _, out = lora_run
    adapter = out / round_name(1) / "train" / "adapter"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tokenizer = load_tokenizer(config.model)
    with full_model_directory(config.model, tokenizer, adapter, scratch) as path:
        merged = AutoModelForCausalLM.from_pretrained(path)
        policy = load_for_inference(config.model, adapter)
        ids = torch.tensor([[1, 5, 9, 13, 17]])
        with torch.no_grad():
            torch.testing.assert_close(merged(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)
    assert list(scratch.iterdir()) == []  # nothing of the copy is left
    with full_model_directory(config.model, tokenizer, config.model.name_or_path, scratch) as path:
        assert path == config.model.name_or_path  # a full model is used where it is


def test_a_continued_adapter_brings_its_frozen_copy_as_dnds_reference(lora_run):
    config, _, out = lora_run
    start = out / "seed" / "adapter"
    policy = load_model(config.model, path=str(start), for_training=True).eval()
    frozen = load_for_inference(config.model, start)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in name for name in trainable)  # only the adapter being trained
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)  # as if an optimizer step had moved the trained adapter
        with reference_adapter_active(policy):
            reference = policy(ids).logits
        # The reference is still pi_{i-1} = pi_init + the starting adapter, not the moved policy.
        torch.testing.assert_close(reference, frozen(ids).logits)
        assert not torch.allclose(policy(ids).logits, reference)
    assert {name for name, p in policy.named_parameters() if p.requires_grad} == trainable
