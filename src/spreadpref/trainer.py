"""Soft-label DPO on top of ``transformers.Trainer``, through its public hooks only.

Users keep everything Trainer gives: checkpoints and resume, schedules, gradient accumulation,
``report_to`` and accelerate / DeepSpeed / FSDP launch. The reference model never runs during
training: its log-probabilities travel with each pair (from the data, from the judge of an SPA
round, or computed once before training and cached on disk).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from spreadpref.errors import TrainingError
from spreadpref.logprobs import collate_pairs, score_pairs, sequence_logps
from spreadpref.loss import soft_dpo_loss
from spreadpref.models import model_fingerprint
from spreadpref.tokenize import TokenizedPair

TRAIN_COLUMNS = ("id", "prompt_ids", "chosen_ids", "rejected_ids", "label", "weight",
                 "ref_chosen_logps", "ref_rejected_logps", "length")


class PairCollator:
    """Pads a list of pairs into one batch: chosen rows first, then rejected rows."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_pairs(features, self.pad_token_id)
        batch["ids"] = [f.get("id", "?") for f in features]
        return batch


class SoftDPOTrainer(Trainer):
    """``Trainer`` whose loss is soft-label DPO on reference log-probs carried by the batch."""

    # Our loss is a per-micro-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, beta: float = 0.1, label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.label_smoothing = label_smoothing
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_batches = 0
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "ref_chosen_logps" not in inputs:
            raise TrainingError("a training batch has no reference log-probs; compute them before training")
        sums, _ = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        k = inputs["label"].shape[0]
        labels = inputs["label"].to(sums.dtype)
        eps = self.label_smoothing
        target = labels * (1 - eps) + (1 - labels) * eps
        out = soft_dpo_loss(sums[:k], sums[k:], inputs["ref_chosen_logps"], inputs["ref_rejected_logps"],
                            beta=self.beta, target=target, weight=inputs["weight"].to(sums.dtype))
        if not torch.isfinite(out.loss):
            raise TrainingError(
                f"non-finite DPO loss ({out.loss.item()}) at optimizer step {self.state.global_step + 1}, "
                f"batch of pairs {inputs.get('ids')}; the last saved checkpoint is untouched. "
                "Lower train.learning_rate or check the data's reference log-probs."
            )
        if model.training:
            self._record(out, sums[:k].detach(), sums[k:].detach(), labels, inputs["attention_mask"])
        return (out.loss, {"logits": out.logits}) if return_outputs else out.loss

    def _record(self, out, chosen_logps, rejected_logps, labels, attention_mask) -> None:
        values = torch.stack([
            out.chosen_rewards.mean(),
            out.rejected_rewards.mean(),
            (out.chosen_rewards - out.rejected_rewards).mean(),
            (out.chosen_rewards > out.rejected_rewards).float().mean(),
            chosen_logps.mean(),
            rejected_logps.mean(),
            labels.mean(),
        ]).float()
        values = self.accelerator.gather(values.unsqueeze(0)).mean(dim=0).tolist()
        names = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "labels/mean")
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


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
    return digest.hexdigest()[:16]


def fill_reference_logps(pairs: list[TokenizedPair], reference: torch.nn.Module, pad_token_id: int,
                         cache_dir: Path | None, batch_size: int, as_adapter_off: bool = False) -> dict[str, Any]:
    """Give every pair without reference log-probs its values, from the cache or one no-grad pass."""
    missing = [p for p in pairs if p.ref_chosen_logps is None or p.ref_rejected_logps is None]
    info: dict[str, Any] = {"pairs": len(pairs), "from_data": len(pairs) - len(missing), "computed": 0,
                            "cache_hit": False, "cache_file": None}
    if not missing:
        return info
    # A LoRA reference is the base model: the adapter weights must not change the key.
    skip = "lora_" if as_adapter_off else None
    key = f"{model_fingerprint(reference, skip)}-{pairs_fingerprint(missing)}"
    cache_file = cache_dir / f"{key}.safetensors" if cache_dir else None
    info["cache_file"] = str(cache_file) if cache_file else None
    if cache_file is not None and cache_file.is_file():
        tensors = load_file(str(cache_file))
        chosen, rejected = tensors["chosen"], tensors["rejected"]
        info["cache_hit"] = True
    else:
        scored = score_pairs(reference, missing, pad_token_id, batch_size,
                             description="Reference log-probs", as_reference=as_adapter_off)
        chosen, rejected = scored.chosen, scored.rejected
        info["computed"] = len(missing)
        if cache_file is not None:
            _save_tensors_atomically(cache_file, {"chosen": chosen.contiguous(), "rejected": rejected.contiguous()})
    for pair, c, r in zip(missing, chosen.tolist(), rejected.tolist()):
        pair.ref_chosen_logps, pair.ref_rejected_logps = c, r
    return info


def _save_tensors_atomically(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def to_train_dataset(pairs: Sequence[TokenizedPair]):
    """A ``datasets.Dataset`` with a length column, so Trainer can group batches by length."""
    import datasets

    rows = {name: [] for name in TRAIN_COLUMNS}
    for pair in pairs:
        for name in TRAIN_COLUMNS:
            rows[name].append(pair.length if name == "length" else getattr(pair, name))
    return datasets.Dataset.from_dict(rows)
