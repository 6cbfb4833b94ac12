"""Every saved model directory carries a model card; an adapter names its base by hub id when known."""

import json

from helpers import tiny_train_overrides

from spreadpref.config import load_config
from spreadpref.dpo.model_card import EMBEDDED_HUB_ID, model_card, record_adapter_base
from spreadpref.dpo.train import train_policy
from spreadpref.runtime.layout import round_name


def test_a_trained_model_directory_has_a_card_with_base_data_settings_metrics_and_usage(
    tiny_model_dir, pairs_file, tmp_path
):
    out = tmp_path / "trained"
    train_policy(load_config(None, tiny_train_overrides(tiny_model_dir, pairs_file, out)))
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert str(tiny_model_dir) in card and str(pairs_file) in card
    assert '"beta": 0.1' in card and "train_loss" in card and "AutoModelForCausalLM.from_pretrained" in card
    assert "base_model:" not in card  # a local path is not a hub id


def test_the_embedded_model_is_named_by_its_hub_id(tmp_path):
    config = load_config(None)
    assert f"base_model: {EMBEDDED_HUB_ID}" in model_card(config, {}, "seed")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/x/embedded"}))
    record_adapter_base(adapter, config)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_a_round_card_states_the_epochs_and_learning_rate_the_round_trained_with():
    config = load_config(None, ["train.num_epochs=3", "train.learning_rate=5e-6"])
    card = model_card(config, {"epochs": 1.0, "learning_rate": 2e-6}, round_name(1), "runs/spa/seed/model")
    assert '"epochs": 1.0' in card and '"learning_rate": 2e-06' in card
    assert '"epochs": 3' not in card


def test_a_round_card_names_its_replayed_pairs_judge_system_prompt_and_batch(monkeypatch):
    from spreadpref.runtime import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    config = load_config(  # the default CPU profile: a system prompt, replay, the implicit judge against pi_init
        "spa-cpu", ["train.per_device_batch_size=2", "train.gradient_accumulation_steps=4"]
    )
    card = model_card(config, {}, round_name(2), "runs/spa/round-1/train/model")
    assert "seed pairs of `builtin:seed_pairs` replayed (loop.replay_fraction=0.25)" in card
    assert "Judge: implicit reward, π_1 vs π_init" in card
    assert '"effective batch (per device x accumulation x processes)": 16' in card and '"processes": 2' in card
    assert '{"role": "system", "content": "You are a helpful assistant. Reply in at most three sentences."}' in card


def test_the_held_out_figure_is_added_to_a_card_once(tmp_path):
    from spreadpref.dpo.model_card import add_held_out_figure

    config = load_config(None)
    (tmp_path / "README.md").write_text(model_card(config, {}, round_name(1), "runs/spa/seed/model"))
    add_held_out_figure(tmp_path, "0.77 (0.50–0.92)", 13)
    add_held_out_figure(tmp_path, "0.69 (0.42–0.87)", 13)  # measured again: replaced, not repeated
    card = (tmp_path / "README.md").read_text()
    assert card.count("- Held-out agreement") == 1 and "13 seed pairs held out" in card and "0.69 (0.42–0.87)" in card
    lines = card.splitlines()
    assert lines.index(next(line for line in lines if line.startswith("- Held-out"))) == 1 + lines.index(
        next(line for line in lines if line.startswith("- Metrics:"))
    )
