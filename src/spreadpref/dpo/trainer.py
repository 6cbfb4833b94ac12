"""Soft-label DPO on top of ``transformers.Trainer``, through its public hooks only.

Users keep everything Trainer gives: checkpoints and resume, schedules, gradient accumulation,
``report_to`` and accelerate / DeepSpeed / FSDP launch. The reference model never runs during
training: its log-probabilities travel with each pair (from the data, from the judge of an SPA
round, or computed once before training and cached on disk).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.checkpoints import RecordCheckpointFiles
from spreadpref.dpo.logprobs import (
    ReplyLogits,
    collate_pairs,
    reply_logits,
    sequence_logps_and_logits,
)
from spreadpref.dpo.loss import soft_dpo_loss
from spreadpref.dpo.refine import (
    RefineDecision,
    Refinement,
    RefineWindow,
    decision_records,
    detector_margins,
    refine_targets,
)
from spreadpref.errors import TrainingError
from spreadpref.models.loading import has_reference_adapter, reference_adapter_active
from spreadpref.runtime import preemption, tracking

TRAIN_COLUMNS = (
    "id",
    "prompt_ids",
    "chosen_ids",
    "rejected_ids",
    "label",
    "weight",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "length",
)


class PairCollator:
    """Pads a list of pairs into one batch: chosen rows first, then rejected rows."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_pairs(features, self.pad_token_id)
        batch["ids"] = [f.get("id", "?") for f in features]
        return batch


class SeededLengthOrder(TrainerCallback):
    """Each epoch's length-grouped order drawn from ``seed + epoch`` alone.

    Trainer's length-grouped sampler draws from the global RNG when an epoch starts; a run resumed in the
    middle of its second epoch starts that epoch from another RNG state and would visit the rest of the
    pairs in another order than the run that was never interrupted."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = length_grouped_sampler(train_dataloader)
        if sampler is not None:  # state.epoch is k at the start of epoch k, k + a fraction when resumed in it
            sampler.generator = torch.Generator().manual_seed(args.seed + math.floor(state.epoch or 0))


def length_grouped_sampler(dataloader: Any) -> LengthGroupedSampler | None:
    """The length-grouped sampler under a (possibly accelerate-wrapped) DataLoader, if it uses one."""
    for path in (("sampler",), ("batch_sampler", "sampler"), ("batch_sampler", "batch_sampler", "sampler")):
        found = dataloader
        for name in path:
            found = getattr(found, name, None)
        if isinstance(found, LengthGroupedSampler):
            return found
    return None


class SoftDPOTrainer(Trainer):
    """``Trainer`` whose loss is soft-label DPO on reference log-probs carried by the batch."""

    # Our loss is a per-micro-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        refinement: Refinement | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.add_callback(RecordCheckpointFiles())
        self.add_callback(SeededLengthOrder())
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.refinement = refinement
        if refinement is not None:
            self.add_callback(RefineWindow(refinement.settings.window, refinement.settings.quantile))
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_batches = 0
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()

    @property
    def refine_window(self) -> RefineWindow:
        # Looked up each time: resuming replaces the callback with one rebuilt from the checkpoint.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RefineWindow))

    @property
    def refine_counts(self) -> dict[str, int]:
        window = self.refine_window
        return {"pairs": window.pairs, "smoothed": window.smoothed}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "ref_chosen_logps" not in inputs:
            raise TrainingError("a training batch has no reference log-probs; compute them before training")
        sums, logits = sequence_logps_and_logits(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
        )
        k = inputs["label"].shape[0]
        labels = inputs["label"].to(sums.dtype)
        smoothing = torch.full_like(labels, self.label_smoothing)
        decision = None
        if self.refinement is not None and model.training:
            decision = self._refine(model, inputs, sums.detach(), logits, k)
            smoothing = torch.where(
                decision.smoothed, torch.full_like(labels, self.refinement.settings.alpha), smoothing
            )
        target = labels * (1 - smoothing) + (1 - labels) * smoothing
        out = soft_dpo_loss(
            sums[:k],
            sums[k:],
            inputs["ref_chosen_logps"],
            inputs["ref_rejected_logps"],
            beta=self.beta,
            target=target,
            weight=inputs["weight"].to(sums.dtype),
        )
        if not torch.isfinite(out.loss):
            raise TrainingError(
                f"non-finite DPO loss ({out.loss.item()}) at optimizer step {self.state.global_step + 1}, "
                f"batch of pairs {inputs.get('ids')}; the last saved checkpoint is untouched. "
                "Lower train.learning_rate or check the data's reference log-probs."
            )
        if model.training:
            self._record(out, sums[:k].detach(), sums[k:].detach(), target.detach(), inputs["attention_mask"], decision)
        return (out.loss, {"logits": out.logits}) if return_outputs else out.loss

    @torch.no_grad()
    def _refine(self, model, inputs, sums: torch.Tensor, logits: ReplyLogits, k: int) -> RefineDecision:
        """Which pairs of this batch to smooth; every computed detector's decision is recorded."""
        refinement = self.refinement
        settings = refinement.settings
        references = (inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
        margins = {"plain": detector_margins(self.beta, sums, logits, None, 0.0, *references)}
        if refinement.dnd_lam > 0:
            reference_logits = self._reference_reply_logits(model, inputs)
            margins["dnd"] = detector_margins(
                self.beta, sums, logits, reference_logits, refinement.dnd_lam, *references
            )
        step = self.state.global_step
        active = step >= settings.warmup_fraction * max(self.state.max_steps, 1)
        window = self.refine_window
        decisions = {}
        for name, values in margins.items():
            state = window.threshold if name == refinement.driving else window.shadow
            decisions[name] = refine_targets(
                values, state, settings.alpha, active, self._gather_margins(values), settings.partial_window
            )
        decision = decisions[refinement.driving]
        window.pairs += int(decision.margins.numel())
        window.smoothed += int(decision.smoothed.sum())
        records = decision_records(
            list(inputs.get("ids") or []), step, active, refinement.driving, decisions, window.batches
        )
        window.decisions.extend(self._gather_records(records))
        window.batches += 1
        return decision

    def _reference_reply_logits(self, model, inputs) -> torch.Tensor:
        batch = (inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        reference = self.refinement.reference
        if reference is None:  # LoRA: the continued adapter's frozen copy, or a fresh adapter switched off
            core = self.accelerator.unwrap_model(model)
            if not hasattr(core, "disable_adapter"):
                raise TrainingError("decoupled noise detection needs a reference model or a LoRA policy")
            context = reference_adapter_active(core) if has_reference_adapter(core) else core.disable_adapter()
            with context:
                return reply_logits(core, *batch).logits
        device = inputs["input_ids"].device
        if next(reference.parameters()).device != device:
            reference.to(device)
        return reply_logits(reference, *batch).logits

    def _gather_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every process's decision records, so every process keeps (and resumes) the same list."""
        if self.accelerator.num_processes == 1:
            return records
        return gather_object(records)

    def _gather_margins(self, margins: torch.Tensor) -> torch.Tensor:
        """Every process's margins, so all processes share one window and one threshold."""
        if self.accelerator.num_processes == 1:
            return margins
        padded = self.accelerator.pad_across_processes(margins.float(), dim=0, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded)
        return gathered[~torch.isnan(gathered)]

    def _record(self, out, chosen_logps, rejected_logps, targets, attention_mask, decision=None) -> None:
        values = torch.stack(
            [
                out.chosen_rewards.mean(),
                out.rejected_rewards.mean(),
                (out.chosen_rewards - out.rejected_rewards).mean(),
                (out.chosen_rewards > out.rejected_rewards).float().mean(),
                chosen_logps.mean(),
                rejected_logps.mean(),
                targets.mean(),
                decision.smoothed.float().mean() if decision is not None else targets.new_zeros(()),
                targets.new_tensor(decision.threshold if decision is not None else 0.0),
            ]
        ).float()
        values = self.accelerator.gather(values.unsqueeze(0)).mean(dim=0).tolist()
        names = [
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "labels/mean",
        ]
        if decision is not None:
            names += ["refine/smoothed_fraction", "refine/threshold"]
        for name, value in zip(names, values):
            self._metric_sums[name] += value
        self._metric_batches += 1
        tokens = self.accelerator.gather(attention_mask.sum().reshape(1)).sum().item()
        self._tokens_since_log += int(tokens)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._metric_batches:
            for name, total in self._metric_sums.items():
                logs[name] = round(total / self._metric_batches, 6)
            now = time.perf_counter()
            logs["tokens_per_second"] = round(self._tokens_since_log / max(now - self._last_log_time, 1e-9), 2)
            self._metric_sums.clear()
            self._metric_batches = 0
            self._tokens_since_log = 0
            self._last_log_time = now
        super().log(logs, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Reference log-probabilities: computed once, cached on disk by model and data


def to_train_dataset(pairs: Sequence[TokenizedPair]):
    """A ``datasets.Dataset`` with a length column, so Trainer can group batches by length."""
    rows = {name: [] for name in TRAIN_COLUMNS}
    for pair in pairs:
        for name in TRAIN_COLUMNS:
            rows[name].append(pair.length if name == "length" else getattr(pair, name))
    return datasets.Dataset.from_dict(rows)


class StopOnTermination(TrainerCallback):
    """A SIGTERM while the Trainer runs (runtime.preemption) becomes "save a checkpoint and stop" at the end of
    the optimizer step under way, through the Trainer's own save path."""

    def on_step_end(self, args, state, control, **kwargs):
        if preemption.requested():
            control.should_save = True
            control.should_training_stop = True
        return control


class TrackerConfig(TrainerCallback):
    """The full spreadpref configuration into the stage's W&B run, once the Trainer's W&B callback opened it."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            tracking.log_config_to_wandb(self.settings)
