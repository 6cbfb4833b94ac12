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

import torch

from spreadpref.config import RefineSettings


class ConfidenceThreshold:
    """Sliding window of per-sample margins and its lower quantile."""

    def __init__(self, window: int = 50, quantile: float = 0.1):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.quantile = quantile
        self.margins: deque[float] = deque(maxlen=window)

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
) -> RefineDecision:
    """Soft targets for one batch: q = 1 - alpha where m <= tau (after warm-up), else 1.

    ``window_margins`` are the margins that enter the window (all processes' margins when
    distributed); the decision is taken for the local ``margins``.
    """
    tau = threshold_state.update(margins if window_margins is None else window_margins)
    low = margins <= tau
    smoothed = low & active
    targets = torch.where(smoothed, torch.full_like(margins, 1 - alpha), torch.ones_like(margins))
    return RefineDecision(targets=targets, smoothed=smoothed, threshold=tau, margins=margins)


@dataclass
class Refinement:
    """Self-refinement of one round: the settings, this round's DND lambda, and the detector's reference."""

    settings: RefineSettings = field(default_factory=RefineSettings)
    lam: float = 0.0  # DND extrapolation; 0 = the policy is its own detector
    # For DND with full fine-tuning: a frozen copy of the reference. With LoRA, None: the adapter is switched off.
    reference: torch.nn.Module | None = None
