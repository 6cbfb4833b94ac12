"""A policy loaded for training carries its numerics: autocast, float32 master weights, saved dtype, LoRA."""

import torch

from spreadpref.config import load_config
from spreadpref.dpo.logprobs import training_precision
from spreadpref.dpo.policy import load_training_policy


def policy_for(model_dir, *overrides):
    config = load_config(None, [f"model.name_or_path={model_dir}", *overrides])
    return config, load_training_policy(config)


def test_float32_trains_without_autocast(tiny_model_dir):
    config, policy = policy_for(tiny_model_dir)
    assert (policy.precision, policy.float32_masters, policy.saved_dtype) == ("no", False, torch.float32)
    assert policy.device == torch.device("cpu") and not policy.is_peft


def test_bfloat16_trains_as_float32_masters_under_bf16_autocast_and_saves_as_bfloat16(tiny_model_dir):
    config, policy = policy_for(tiny_model_dir, "model.dtype=bfloat16")
    assert next(policy.model.parameters()).dtype == torch.float32
    assert (policy.precision, policy.float32_masters, policy.saved_dtype) == ("bf16", True, torch.bfloat16)
    assert policy.precision == training_precision(config)  # the Trainer's forwards agree
    with policy.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_a_lora_policy_keeps_its_dtype_and_knows_it_is_an_adapter(tiny_model_dir):
    _, policy = policy_for(tiny_model_dir, "model.dtype=bfloat16", "model.lora.enabled=true")
    assert policy.is_peft and not policy.float32_masters and policy.precision == "no"
