"""Self-refinement: soften the self-labels the model is least confident about.

For each training pair the detector margin is ``m = beta * z_det`` (no gradient), where ``z_det``
is the DPO logit under a detector model. Without decoupled noise detection (DND) the detector is
the policy itself. With DND it is the extrapolated model whose token logits are
``(1 + lam) * h_policy - lam * h_ref``, which approximates a model aligned more strongly than the
current one, so the policy does not grade its own labels.

The threshold ``tau`` is the ``quantile`` (default 10%) of the last ``window`` per-sample margins
(a true sliding window, gathered across processes by the caller). A pair with ``m <= tau`` gets the
soft target ``q = 1 - alpha``; all others keep ``q = 1``. No smoothing happens during the first
``warmup_fraction`` of the round's optimizer steps (the window still fills).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from spreadpref.config import RefineSettings
from spreadpref.dpo.logprobs import ReplyLogits, sum_by_row, token_logps
from spreadpref.dpo.loss import dpo_logits

DETECTORS = ("plain", "dnd")  # the policy as its own detector; DND's extrapolated detector


@dataclass
class Refinement:
    """Self-refinement of one round: the settings, the DND lambda, and the detector's reference.

    ``lam`` > 0 makes DND drive the smoothing; 0 leaves it to the policy itself. ``measure_lam``
    (> 0, for measurement only) computes the DND margins in the same pass when the plain detector
    drives, so both detectors' decisions are recorded on the same pairs.
    """

    settings: RefineSettings = field(default_factory=RefineSettings)
    lam: float = 0.0
    # For DND: a frozen copy of the reference; None for a fresh LoRA adapter (switched off, it is the reference).
    reference: torch.nn.Module | None = None
    measure_lam: float = 0.0

    @property
    def dnd_lam(self) -> float:
        """The lambda of the DND margins computed this round (0: none are)."""
        return self.lam if self.lam > 0 else self.measure_lam

    @property
    def driving(self) -> str:
        return "dnd" if self.lam > 0 else "plain"


class ConfidenceThreshold:
    """Sliding window of per-sample margins and its lower quantile."""

    def __init__(self, window: int = 50, quantile: float = 0.1):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.quantile = quantile
        self.margins: deque[float] = deque(maxlen=window)

    @property
    def full(self) -> bool:
        return len(self.margins) == self.margins.maxlen

    def update(self, margins: torch.Tensor) -> float:
        """Append the newest margins (oldest drop out) and return the threshold over the window."""
        self.margins.extend(float(m) for m in margins.detach().reshape(-1).cpu())
        window = torch.tensor(list(self.margins), dtype=torch.float64)
        # Linear interpolation between order statistics, as numpy's and torch's default quantile.
        return float(torch.quantile(window, self.quantile))


@dataclass
class RefineDecision:
    targets: torch.Tensor  # q per pair
    smoothed: torch.Tensor  # bool per pair
    threshold: float
    margins: torch.Tensor


def refine_targets(
    margins: torch.Tensor,
    threshold_state: ConfidenceThreshold,
    alpha: float,
    active: bool,
    window_margins: torch.Tensor | None = None,
    partial_window: bool = True,
) -> RefineDecision:
    """Soft targets for one batch: q = 1 - alpha where m <= tau (after warm-up), else 1.

    ``window_margins`` are the margins that enter the window (all processes' margins when
    distributed); the decision is taken for the local ``margins``. Without ``partial_window``
    nothing is smoothed until the window holds its full number of margins.
    """
    tau = threshold_state.update(margins if window_margins is None else window_margins)
    usable = active and (partial_window or threshold_state.full)
    smoothed = (margins <= tau) & usable
    targets = torch.where(smoothed, torch.full_like(margins, 1 - alpha), torch.ones_like(margins))
    return RefineDecision(targets=targets, smoothed=smoothed, threshold=tau, margins=margins)


def detector_margins(
    beta: float,
    policy_sums: torch.Tensor,
    reply: ReplyLogits,
    reference_logits: torch.Tensor | None,
    lam: float,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """m = beta * z_det per pair: the policy's own DPO logit (lam = 0), or DND's extrapolated detector's.

    ``policy_sums`` are the summed reply log-probs of the batch (chosen rows, then rejected rows) and
    ``reply`` their logits; DND also needs the reference's logits at the same positions.
    """
    k = ref_chosen.shape[0]
    detector = policy_sums
    if lam > 0:
        tokens = token_logps(reply.logits.detach(), reply.targets, reference_logits, lam)
        detector = sum_by_row(tokens, reply.rows, reply.num_rows).to(policy_sums.dtype)
    return beta * dpo_logits(detector[:k], detector[k:], ref_chosen, ref_rejected)


class RefineWindow(TrainerCallback, ExportableState):
    """The refinement's sliding windows of margins, its counts and its per-pair decisions, in every checkpoint.

    A callback only for Trainer's ``ExportableState``: its state goes into each checkpoint's
    ``trainer_state.json`` (written last, so it is there exactly when the checkpoint is complete)
    and comes back on resume, so a resumed round smooths the same pairs as an uninterrupted one.
    ``shadow`` is the window of the detector that does not drive the smoothing, when its margins
    are computed for measurement; ``decisions`` has one record per pair seen, in training order.
    """

    def __init__(self, window: int = 50, quantile: float = 0.1):
        self.threshold = ConfidenceThreshold(window, quantile)
        self.shadow = ConfidenceThreshold(window, quantile)
        self.pairs = 0
        self.smoothed = 0
        self.batches = 0
        self.decisions: list[dict[str, Any]] = []

    @property
    def margins(self) -> list[float]:
        return list(self.threshold.margins)

    @margins.setter
    def margins(self, values: list[float]) -> None:
        self.threshold.margins.clear()
        self.threshold.margins.extend(values)

    @property
    def shadow_margins(self) -> list[float]:
        return list(self.shadow.margins)

    @shadow_margins.setter
    def shadow_margins(self, values: list[float]) -> None:
        self.shadow.margins.clear()
        self.shadow.margins.extend(values)

    def state(self) -> dict[str, Any]:
        return {
            "args": {"window": self.threshold.margins.maxlen, "quantile": self.threshold.quantile},
            "attributes": {
                "margins": self.margins,
                "shadow_margins": self.shadow_margins,
                "pairs": self.pairs,
                "smoothed": self.smoothed,
                "batches": self.batches,
                "decisions": self.decisions,
            },
        }


def decision_records(
    ids: list[str], step: int, active: bool, driving: str, decisions: dict[str, RefineDecision], batch: int = 0
) -> list[dict[str, Any]]:
    """One record per pair of a micro-batch: each computed detector's margin, threshold and decision."""
    records = []
    for row, pair_id in enumerate(ids):
        record: dict[str, Any] = {"id": pair_id, "batch": batch, "step": step, "active": active, "driving": driving}
        for name in DETECTORS:
            decision = decisions.get(name)
            record[f"margin_{name}"] = float(decision.margins[row]) if decision else None
            record[f"tau_{name}"] = decision.threshold if decision else None
            record[f"smoothed_{name}"] = bool(decision.smoothed[row]) if decision else None
        record["smoothed"] = record[f"smoothed_{driving}"]
        records.append(record)
    return records
