"""The train stage: DPO (soft labels allowed) of a policy on a preference dataset.

config -> records -> token pairs -> reference log-probs -> Trainer -> ``save_pretrained`` directory.
Outputs in ``output_dir``: ``config.yaml`` (resolved), ``manifest.json``, ``checkpoints/`` (for
resume), ``model/`` (the full model; with LoRA, the merged model when model.lora.merge_on_save) and
``adapter/`` (LoRA only).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from transformers import PreTrainedTokenizerBase, PrinterCallback, TrainingArguments, set_seed

from spreadpref.config import Config, check_library_settings, describe_changes, flat_settings
from spreadpref.data.identity import (
    DATA_IDENTITIES,
    EDITED,
    KEYED_BY_PATH,
    changed_sources,
    data_identities,
    data_only_change,
)
from spreadpref.data.loading import load_preferences, load_training_preferences
from spreadpref.data.sanity import check_records
from spreadpref.data.tokenize import TokenizedPair, tokenize_pairs
from spreadpref.dpo.checkpoints import last_checkpoint, save_outputs
from spreadpref.dpo.display import TrainDisplay
from spreadpref.dpo.held_out import HeldOutEvaluation, pair_loss, split_held_out
from spreadpref.dpo.logprobs import score_pairs, training_precision
from spreadpref.dpo.model_card import record_adapter_base, write_model_card
from spreadpref.dpo.policy import TrainingPolicy, load_training_policy
from spreadpref.dpo.reference import compute_reference
from spreadpref.dpo.refine import Refinement
from spreadpref.dpo.trainer import PairCollator, SoftDPOTrainer, StopOnTermination, TrackerConfig, to_train_dataset
from spreadpref.errors import SpreadprefError
from spreadpref.models.loading import (
    drop_reference_adapter,
    load_tokenizer,
    resolve_device,
)
from spreadpref.runtime import distributed, preemption, tracking
from spreadpref.runtime.files import atomic_write_json, remove_stale_temporaries, write_jsonl
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.hub import push_folder
from spreadpref.runtime.layout import (
    CHECKPOINTS_DIRECTORY,
    CONFIG_FILE,
    LOG_HISTORY_FILE,
    MODEL_DIRECTORY,
    REFINEMENT_FILE,
    TRAIN_LOG_FILE,
    TRAIN_STAGE,
)
from spreadpref.runtime.lock import directory_lock
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console

# Keys that change how a run is watched or stored, not what it computes: editing them never
# invalidates a finished stage.
COSMETIC_TRAIN_KEYS = (
    "report_to",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "logprob_batch_size",
    "ref_cache_dir",
    "evaluate_after",
    "keep_checkpoints",
    "require_update",
)


@dataclass
class TrainResult:
    """What a training stage leaves: ``spreadpref train``'s, the seed stage's and each round's."""

    output_dir: Path
    model_dir: Path
    skipped: bool = False  # finished before, nothing trained again
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # the manifest's outputs of the stage


def train_fingerprint(config: Config, identities: dict[str, str | None] | None = None) -> str:
    """What a train stage's result depends on: seed, model, training data (by content: ``identities``, computed
    when not given) and training settings."""
    identities = identities if identities is not None else data_identities(config.data)
    dump = config.model_dump(mode="json")
    train = {k: v for k, v in dump["train"].items() if k not in COSMETIC_TRAIN_KEYS}
    data = {k: v for k, v in dump["data"].items() if k != "prompts"}
    data.update(train=identities["train"], eval=identities["eval"])
    return fingerprint({"seed": dump["seed"], "model": dump["model"], "data": data, "train": train})


def train_policy(config: Config, force: bool = False) -> TrainResult:
    """Run the train stage; resume it if it was interrupted; do nothing if it already finished.

    The output directory is locked while it runs: a second process writing it is refused at once."""
    out = Path(config.output_dir)
    check_library_settings(config)
    with directory_lock(out, "train", config.allow_existing_files):
        return _train_policy_locked(config, out, force)


def _follow_data_edits(
    config: Config, manifest: Manifest, recorded_fp: str, fingerprint: str, identities: dict[str, str | None]
) -> None:
    """A stage that differs only by its data's content: edited data is trained on again (said so); a stage
    from before content fingerprints, keyed by the data's path, is taken as it is and re-keyed."""
    recorded = manifest.data.get(DATA_IDENTITIES)
    change = data_only_change(config.data, recorded, lambda ids: train_fingerprint(config, ids) == recorded_fp)
    if change == KEYED_BY_PATH:
        manifest.update(TRAIN_STAGE, fingerprint=fingerprint)
    elif change == EDITED:
        edited = ", ".join(changed_sources(config.data, recorded, identities, keys=("train", "eval")))
        console.print(f"[yellow]{edited} changed since this stage was trained: training again.[/]")
        shutil.rmtree(Path(config.output_dir) / CHECKPOINTS_DIRECTORY, ignore_errors=True)
        manifest.reset(TRAIN_STAGE)


def _train_policy_locked(config: Config, out: Path, force: bool) -> TrainResult:
    manifest = Manifest(out)
    others = [name for name in manifest.data.get("stages", {}) if name != TRAIN_STAGE]
    if others:
        raise SpreadprefError(
            f"{out} is a `spreadpref run` directory (it holds {others[0]}): `spreadpref train` would overwrite its "
            "config.yaml. Use another output directory."
        )
    identities = data_identities(config.data)
    fingerprint = train_fingerprint(config, identities)
    previous = manifest.stage(TRAIN_STAGE)
    if previous and previous.get("fingerprint") != fingerprint:
        _follow_data_edits(config, manifest, previous["fingerprint"], fingerprint, identities)
        previous = manifest.stage(TRAIN_STAGE)
    if previous and previous.get("fingerprint") != fingerprint and not force:
        raise SpreadprefError(
            f"{out} already holds a train stage made with a different configuration "
            f"(fingerprint {previous.get('fingerprint')} vs {fingerprint}).{describe_changes(out / CONFIG_FILE, config)}"
            " Use another output directory, or --force to discard it and train again."
        )
    if previous and previous.get("status") == "complete" and not force:
        console.print(f"[green]The train stage in {out} is already complete[/]; nothing to do (--force retrains).")
        return TrainResult(
            out, manifest.output(TRAIN_STAGE, MODEL_DIRECTORY), skipped=True, metrics=previous.get("metrics", {})
        )
    if previous and (force or previous.get("fingerprint") != fingerprint):
        shutil.rmtree(out / CHECKPOINTS_DIRECTORY, ignore_errors=True)
        manifest.reset(TRAIN_STAGE)

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    config.save(out / CONFIG_FILE)
    manifest.data[DATA_IDENTITIES] = identities
    manifest.start(TRAIN_STAGE, fingerprint)

    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    pairs, data_info = prepare_pairs(config, tokenizer)
    pairs, held_out = held_out_pairs(config, tokenizer, pairs)
    data_info.update(pairs=len(pairs), held_out=len(held_out))
    manifest.update(TRAIN_STAGE, data=data_info)
    outputs, metrics = train_on_pairs(
        config,
        tokenizer,
        pairs,
        out,
        on_reference=lambda info: manifest.update(TRAIN_STAGE, reference=info),
        held_out=held_out,
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["peak_rss_gb"] = round(peak_rss_gb(), 2)
    manifest.complete(TRAIN_STAGE, outputs=outputs, metrics=metrics)
    print_summary(data_info, metrics, outputs)
    push_to_hub(config, Path(outputs["model"]), f"spreadpref train {out.name}")
    return TrainResult(out, Path(outputs["model"]), metrics=metrics, outputs=outputs)


def push_to_hub(config: Config, model_dir: Path, message: str) -> None:
    """With hub.push: the finished model directory, card included, to hub.model_id (main process only)."""
    if not config.hub.push or not distributed.is_main():
        return
    console.print(f"Uploading {model_dir} to the hub repo {config.hub.model_id} ...")
    url = push_folder(
        model_dir, config.hub.model_id, private=config.hub.private, revision=config.hub.revision, message=message
    )
    console.print(f"Uploaded: {url}")


HELD_OUT_SUMMARY = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_pairs")


def train_on_pairs(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[TokenizedPair],
    out: Path,
    *,
    start_model: str | None = None,
    refinement: Refinement | None = None,
    on_reference=None,
    held_out: list[TokenizedPair] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Train from ``start_model`` (default: config.model) on tokenised pairs; save under ``out``.

    Pairs without reference log-probs get them first (the starting policy is the reference).
    Resumes from the last Trainer checkpoint in ``out/checkpoints``.
    """
    policy = load_training_policy(config, start_model)
    model = policy.model
    mismatch = reference_mismatch(config, policy, pairs, tokenizer.pad_token_id)
    ref_info = compute_reference(config, policy, pairs, tokenizer.pad_token_id)
    if mismatch is not None:
        ref_info["given_reference_mismatch"] = mismatch
    if on_reference is not None:
        on_reference(ref_info)
    if held_out:  # their reference is the same starting policy; copies, so the caller's pairs stay as they are
        held_out = [dataclasses.replace(pair) for pair in held_out]
        compute_reference(config, policy, held_out, tokenizer.pad_token_id)

    # The trackers' per-stage settings must be in place when the Trainer makes its callbacks (TensorBoard reads
    # its directory then) and until training ends (the stage's W&B run is finished after it).
    with tracking.stage_tracking(config.train.report_to, out):
        trainer = build_trainer(
            config,
            model,
            tokenizer,
            pairs,
            out / CHECKPOINTS_DIRECTORY,
            refinement=refinement,
        )
        if held_out:
            evaluation = HeldOutEvaluation(
                held_out,
                tokenizer.pad_token_id,
                config.train.beta,
                config.train.logprob_batch_size,
                config.train.eval_steps,
                policy.precision,
            )
            evaluation.trainer = trainer
            trainer.add_callback(evaluation)
        checkpoint = last_checkpoint(out / CHECKPOINTS_DIRECTORY)
        if checkpoint:
            console.print(f"Resuming training from {checkpoint}")
        before = None if checkpoint else trainable_checksum(model)
        started = time.perf_counter()
        trainer.add_callback(TrackerConfig(flat_settings(config)))
        with preemption.training():
            train_output = trainer.train(resume_from_checkpoint=checkpoint)
    preemption.raise_if_requested(str(out))
    train_seconds = time.perf_counter() - started
    model = trainer.model
    if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
        raise SpreadprefError("training produced non-finite weights; the model was not saved")

    metrics: dict[str, Any] = {
        **({"reference_check": mismatch} if mismatch is not None else {}),
        "train_loss": train_output.training_loss,
        "global_steps": train_output.global_step,
        "train_seconds": round(train_seconds, 1),
    }
    # The held-out figures at the end of training (the last eval_ row of the log), for the summary and the card.
    last_eval = next((row for row in reversed(trainer.state.log_history) if "eval_loss" in row), None)
    if last_eval is not None:
        metrics.update({key: last_eval[key] for key in HELD_OUT_SUMMARY if key in last_eval})
    epochs = config.train.num_epochs
    metrics["epochs"] = epochs
    metrics["learning_rate"] = config.train.learning_rate
    # The main process's view decides for all: a sharded process may hold no trainable weights to compare.
    if distributed.broadcast_object(before is not None and before == trainable_checksum(model)):
        metrics["weights_unchanged"] = True
        message = (
            f"{out}: training left the weights exactly as they were ({train_output.global_step} optimizer step(s); "
            "the learning rate is 0 during warm-up and at the end of the schedule). Give the stage more pairs or "
            "epochs, or lower train.warmup_ratio."
        )
        if config.train.require_update:
            raise SpreadprefError(message + " (train.require_update=true)")
        console.print(f"[yellow]{message}[/]")
    tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) * epochs
    metrics["train_tokens_per_second"] = round(tokens / max(train_seconds, 1e-9), 1)
    if refinement is not None:
        counts = trainer.refine_counts
        metrics["smoothed_fraction"] = counts["smoothed"] / max(counts["pairs"], 1)
    if policy.float32_masters:
        trainer.model.to(policy.saved_dtype)  # trained on float32 masters; saved as configured
    drop_reference_adapter(model)  # the stage's output is the trained adapter alone
    outputs = save_outputs(config, trainer, tokenizer, out)
    if distributed.is_main():
        if config.train.evaluate_after:
            # The main process's replica (DDP); under ZeRO-3 / FSDP set train.evaluate_after=false.
            metrics.update(
                evaluate_pairs(model, pairs, tokenizer.pad_token_id, config.train.beta, config.train.logprob_batch_size)
            )
        atomic_write_json(out / LOG_HISTORY_FILE, trainer.state.log_history)
        if refinement is not None:
            write_jsonl(out / REFINEMENT_FILE, trainer.refine_window.decisions)
        if not config.train.keep_checkpoints:  # the model is saved; nothing left to resume (logs stay)
            for checkpoint in (out / CHECKPOINTS_DIRECTORY).glob("checkpoint-*"):
                shutil.rmtree(checkpoint, ignore_errors=True)
        stage = out.name if out.name != TRAIN_STAGE else out.parent.name
        for saved in {outputs.get("model"), outputs.get("adapter"), outputs.get("merged")} - {None}:
            record_adapter_base(Path(saved), config, start_model)
            write_model_card(Path(saved), config, metrics, stage, start_model)
    if refinement is not None:
        outputs["refinement"] = str(out / REFINEMENT_FILE)
    metrics = distributed.broadcast_object(metrics)
    return outputs, metrics


def prepare_pairs(config: Config, tokenizer: PreTrainedTokenizerBase) -> tuple[list[TokenizedPair], dict[str, Any]]:
    data = config.data
    records, load_report = load_training_preferences(data)
    console.print(load_report.summary())
    for reason in load_report.skip_reasons[:3]:
        console.print(f"  skipped: {reason}")
    pairs, truncation = tokenize_pairs(tokenizer, records, data.max_length, data.max_prompt_length)
    console.print(truncation.summary())
    info = {
        "warnings": check_records(records, data.train),
        "source": data.train,
        "rows_read": load_report.rows_read,
        "pairs": len(pairs),
        "skipped_invalid": load_report.skipped,
        "skip_reasons": load_report.skip_reasons,
        "ignored_columns": load_report.ignored_columns,
        "prompts_truncated": truncation.prompts_truncated,
        "replies_truncated": truncation.replies_truncated,
        "truncated_examples": truncation.examples,
        "mean_label": sum(p.label for p in pairs) / len(pairs),
    }
    return pairs, info


MISMATCH_NATS = 0.1  # median |log pi_start - given reference| above this: not the starting policy's log-probs


def reference_mismatch(
    config: Config, policy: TrainingPolicy, pairs: list[TokenizedPair], pad_token_id: int, sample: int = 16
) -> dict[str, float] | None:
    """When the data brings its own reference log-probs, compare a few with the starting policy's (the DPO
    reference when none is configured): they should agree, or the margins are not zero before any update."""
    if config.train.reference_model is not None:
        return None
    given = [p for p in pairs if p.ref_chosen_logps is not None and p.ref_rejected_logps is not None][:sample]
    if not given:
        return None
    with policy.autocast():
        scored = score_pairs(
            policy.model,
            given,
            pad_token_id,
            config.train.logprob_batch_size,
            description="Checking the given reference",
        )
    differences = sorted(
        abs(float(value) - ref)
        for values, refs in (
            (scored.chosen, [p.ref_chosen_logps for p in given]),
            (scored.rejected, [p.ref_rejected_logps for p in given]),
        )
        for value, ref in zip(values.tolist(), refs)
    )
    median = differences[len(differences) // 2]
    if median > MISMATCH_NATS:
        console.print(
            f"[yellow]Data check:[/] the reference log-probs given with the data differ from the starting policy's "
            f"(median {median:.2f} nats over {len(given)} pairs): the DPO margins are not zero before the first update. "
            "Were they computed with another model, tokenizer or chat template? Drop the ref_*_logps columns to have "
            "them computed here."
        )
    return {"median_nats": round(median, 4), "pairs_checked": len(given), "warned": median > MISMATCH_NATS}


def held_out_pairs(
    config: Config, tokenizer: PreTrainedTokenizerBase, pairs: list[TokenizedPair]
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(trained, held out): the pairs of data.eval, or a seeded data.eval_fraction of the training pairs."""
    data = config.data
    if data.eval:
        records, report = load_preferences(
            data.eval, data.columns, split=data.split, skip_invalid=data.skip_invalid, system_prompt=data.system_prompt
        )
        console.print(f"Held out: {report.summary()}")
        held_out, _ = tokenize_pairs(tokenizer, records, data.max_length, data.max_prompt_length, progress=False)
        return pairs, held_out
    return split_held_out(pairs, data.eval_fraction, f"spreadpref-eval-{config.seed}", "data.eval_fraction")


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the name the installed transformers knows.

    transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` during 5.x (5.19 has only
    the old name); vLLM's CPU build pins such an older 5.x, so both must work.
    """
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
        else ("gradient_checkpointing")
    )
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def trainable_checksum(model: torch.nn.Module) -> float | None:
    """A sum over the trainable weights this process holds: equal before and after training only when no step
    changed them. None when the process holds none (ZeRO-3 and FSDP shard them): then nothing is checked."""
    held = [p for p in model.parameters() if p.requires_grad and p.numel() > 0]
    if not held:
        return None
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() + p.detach().double().sum() for p in held))


def build_trainer(
    config: Config,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[TokenizedPair],
    checkpoints: Path,
    refinement: Refinement | None = None,
):
    """A SoftDPOTrainer for ``pairs`` under ``config.train`` (a round passes its own: spa.train.round_config)."""

    train = config.train
    device = resolve_device(config.model.device)
    precision = training_precision(config)  # the same rule as the loaded policy's (dpo.policy)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=train.num_epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        # Not a slip: transformers 5 dropped warmup_ratio and reads a warmup_steps below 1 as a fraction of the
        # total steps (the old ratio), so the ratio goes here unchanged.
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optimizer,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=train.logging_steps,
        logging_first_step=True,
        save_strategy=train.save_strategy,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=train.report_to,
        run_name=tracking.run_name(checkpoints.parent),  # <run>/<stage>: one tracker run per stage, grouped
        seed=config.seed,
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,
        # Every trainable weight gets a gradient (full model or LoRA adapters): DDP need not search for unused
        # ones, and its "found no unused parameters" warning stays off the 2-process screen.
        ddp_find_unused_parameters=False,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        length_column_name="length",
        **checkpointing_arguments(config.model.gradient_checkpointing),
        dataloader_pin_memory=device.type == "cuda",
        disable_tqdm=True,  # one bar of our own (dpo/display.py)
        restore_callback_states_from_checkpoint=True,  # the refinement window (trainer.RefineWindow)
    )
    trainer = SoftDPOTrainer(
        model=model,
        args=args,
        train_dataset=to_train_dataset(pairs),
        data_collator=PairCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        beta=train.beta,
        label_smoothing=train.label_smoothing,
        refinement=refinement,
    )
    # disable_tqdm leaves the Trainer's printer of per-step dicts in place of its bar: ours replaces both.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainDisplay("Training", checkpoints.parent / TRAIN_LOG_FILE))
    trainer.add_callback(StopOnTermination())
    return trainer


def evaluate_pairs(
    model: torch.nn.Module, pairs: list[TokenizedPair], pad_token_id: int, beta: float, batch_size: int
) -> dict[str, float]:
    """Implicit-reward accuracy and margin of the trained policy on the training pairs."""
    scored = score_pairs(model, pairs, pad_token_id, batch_size, description="Scoring the training pairs")
    out = pair_loss(scored, pairs, beta)
    margins = out.chosen_rewards - out.rejected_rewards
    return {
        "final/rewards_accuracy": float((margins > 0).double().mean()),
        "final/rewards_margin": float(margins.mean()),
        "final/rewards_chosen": float(out.chosen_rewards.mean()),
        "final/rewards_rejected": float(out.rejected_rewards.mean()),
    }


def peak_rss_gb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return usage * scale / 1e9


def peak_gpu_memory_gb() -> float | None:
    """Peak GPU memory this process allocated (torch's allocator); None without CUDA."""
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def print_summary(data_info: dict[str, Any], metrics: dict[str, Any], outputs: dict[str, str]) -> None:
    table = Table(title="spreadpref train", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("pairs", data_info["pairs"]),
        ("skipped invalid", data_info["skipped_invalid"]),
        ("truncated (prompt / reply)", f"{data_info['prompts_truncated']} / {data_info['replies_truncated']}"),
        ("optimizer steps", metrics["global_steps"]),
        ("mean train loss", f"{metrics['train_loss']:.4f}"),
    ]
    if "eval_loss" in metrics:
        rows += [
            (
                f"held out ({metrics.get('eval_pairs', 0):.0f} pairs): loss / accuracy / margin",
                f"{metrics['eval_loss']:.4f} / {metrics['eval_rewards/accuracies']:.3f} / "
                f"{metrics['eval_rewards/margins']:.4f}",
            )
        ]
    if "final/rewards_accuracy" in metrics:
        rows += [
            ("reward accuracy on the training pairs", f"{metrics['final/rewards_accuracy']:.3f}"),
            ("mean reward margin", f"{metrics['final/rewards_margin']:.4f}"),
        ]
    rows += [
        ("wall time", f"{metrics['seconds']:.0f} s"),
        ("peak memory (RSS)", f"{metrics['peak_rss_gb']:.2f} GB"),
        ("model", outputs["model"]),
        *([("merged model (model.lora.merge_on_save)", outputs["merged"])] if "merged" in outputs else []),
    ]
    for name, value in rows:
        if isinstance(value, float) and math.isnan(value):
            value = "n/a"
        table.add_row(name, str(value))
    console.print(table)
