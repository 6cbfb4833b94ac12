"""The soft-label DPO loss.

For a pair with DPO logit ``z = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l))``, a
target probability ``q`` that y_w is preferred, and a weight ``w``:

    L = -w * [ q * log sigma(beta z) + (1 - q) * log sigma(-beta z) ]

q = 1 is DPO (Rafailov et al.), a constant q = 1 - eps is conservative DPO (cDPO), and per-sample
q is SPA's self-refinement. dL/dz = -w * beta * (q - sigma(beta z)), so the loss is minimal where
sigma(beta z) = q: a soft label asks for a finite margin rather than an infinite one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOOutput:
    loss: torch.Tensor  # scalar: the weighted mean over pairs
    losses: torch.Tensor  # per pair, weighted
    logits: torch.Tensor  # z, per pair
    chosen_rewards: torch.Tensor  # beta * (log pi(y_w) - log ref(y_w)), detached
    rejected_rewards: torch.Tensor


def dpo_logits(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> torch.Tensor:
    """z = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l)), in the policy's dtype.

    With a detector's log-probs in place of the policy's this is DND's z_det.
    """
    ref_chosen = ref_chosen.to(policy_chosen.dtype)
    ref_rejected = ref_rejected.to(policy_chosen.dtype)
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def soft_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    target: torch.Tensor | float = 1.0,
    weight: torch.Tensor | float = 1.0,
) -> DPOOutput:
    """Soft-label DPO on summed reply log-probs; ``target`` is q in [0, 1], per pair or constant."""
    ref_chosen = ref_chosen.to(policy_chosen.dtype)
    ref_rejected = ref_rejected.to(policy_rejected.dtype)
    z = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    q = torch.as_tensor(target, dtype=z.dtype, device=z.device)
    w = torch.as_tensor(weight, dtype=z.dtype, device=z.device)
    # logsigmoid is the numerically stable log sigma; it never overflows for large |beta z|.
    losses = -w * (q * F.logsigmoid(beta * z) + (1 - q) * F.logsigmoid(-beta * z))
    return DPOOutput(
        loss=losses.mean(),
        losses=losses,
        logits=z,
        chosen_rewards=(beta * (policy_chosen - ref_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
    )
