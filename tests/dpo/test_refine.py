import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from spreadpref.config import RefineSettings
from spreadpref.dpo.logprobs import collate_pairs, sequence_logps_and_logits, sum_by_row, token_logps
from spreadpref.dpo.loss import dpo_logits
from spreadpref.dpo.refine import ConfidenceThreshold, RefineDecision, decision_records, refine_targets


def test_threshold_is_the_quantile_of_a_true_sliding_window():
    state = ConfidenceThreshold(window=4, quantile=0.25)
    assert state.update(torch.tensor([4.0, 1.0])) == pytest.approx(np.quantile([4, 1], 0.25))  # 1.75
    assert state.update(torch.tensor([3.0, 2.0])) == pytest.approx(1.75)  # window [4,1,3,2]: 1 + 0.75*(2-1)
    # The two oldest margins drop out: window [3, 2, 10, 12].
    assert state.update(torch.tensor([10.0, 12.0])) == pytest.approx(np.quantile([3, 2, 10, 12], 0.25))
    assert list(state.margins) == [3.0, 2.0, 10.0, 12.0]


def test_refine_targets_smooth_only_low_margins_after_warmup():
    state = ConfidenceThreshold(window=50, quantile=0.1)
    margins = torch.tensor([0.5, -0.2, 3.0, 1.0, 2.0, 0.9, 1.1, 1.2, 1.3, 1.4])
    # 10% quantile of these ten = -0.2 + 0.9 * (0.5 - -0.2) = 0.43: only -0.2 is at or below it.
    warm = refine_targets(margins, state, alpha=0.1, active=False)
    assert warm.threshold == pytest.approx(0.43)
    assert not warm.smoothed.any() and torch.equal(warm.targets, torch.ones(10))
    state = ConfidenceThreshold(window=50, quantile=0.1)
    decision = refine_targets(margins, state, alpha=0.1, active=True)
    assert decision.smoothed.tolist() == [False, True] + [False] * 8
    assert decision.targets[1].item() == pytest.approx(0.9) and decision.targets[0].item() == 1.0


def test_a_partial_window_smooths_only_when_allowed():
    margins = torch.tensor([0.5, -0.2])
    partial = refine_targets(margins, ConfidenceThreshold(window=4, quantile=0.1), alpha=0.1, active=True)
    assert partial.smoothed.tolist() == [False, True]  # tau from the 2 margins it has
    state = ConfidenceThreshold(window=4, quantile=0.1)
    waiting = refine_targets(margins, state, alpha=0.1, active=True, partial_window=False)
    assert not waiting.smoothed.any() and waiting.threshold == pytest.approx(partial.threshold)
    full = refine_targets(torch.tensor([2.0, -1.0]), state, alpha=0.1, active=True, partial_window=False)
    assert state.full and full.smoothed.tolist() == [False, True]  # the window now holds 4 margins


def test_decision_records_keep_every_detector_and_the_driving_one():
    plain = RefineDecision(torch.ones(2), torch.tensor([True, False]), 0.3, torch.tensor([0.1, 0.9]))
    dnd = RefineDecision(torch.ones(2), torch.tensor([False, False]), 0.05, torch.tensor([0.2, 0.8]))
    records = decision_records(["a", "b"], 3, True, "dnd", {"plain": plain, "dnd": dnd})
    assert records[0] == {
        "id": "a", "batch": 0, "step": 3, "active": True, "driving": "dnd",
        "margin_plain": pytest.approx(0.1), "tau_plain": 0.3, "smoothed_plain": True,
        "margin_dnd": pytest.approx(0.2), "tau_dnd": 0.05, "smoothed_dnd": False,
        "smoothed": False,
    }  # fmt: skip
    only_plain = decision_records(["a"], 0, False, "plain", {"plain": plain})
    assert only_plain[0]["margin_dnd"] is None and only_plain[0]["smoothed"] is True


def test_lambda_schedule():
    settings = RefineSettings()
    assert [settings.lam(i) for i in (1, 2, 3, 4, 5)] == [0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert RefineSettings(decoupled=False).lam(1) == 0.0
    assert RefineSettings(decoupled=False).scheduled_lam(2) == 0.25  # what DND would use, for measurement


@pytest.fixture
def two_models(tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


def batch_of_pairs():
    pairs = [
        {"prompt_ids": [1, 5, 6, 7], "chosen_ids": [20, 21, 2], "rejected_ids": [30, 2]},
        {"prompt_ids": [1, 8], "chosen_ids": [40, 41, 42, 2], "rejected_ids": [50, 51, 2]},
    ]
    return collate_pairs(pairs, pad_token_id=0)


def direct_detector_logp(policy, reference, prompt, reply, lam):
    """The definition, one unpadded sequence at a time, float64."""
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        h_pol = policy(ids).logits[0].double()
        h_ref = reference(ids).logits[0].double()
    mixed = torch.log_softmax((1 + lam) * h_pol - lam * h_ref, dim=-1)
    positions = range(len(prompt) - 1, len(prompt) + len(reply) - 1)
    return sum(mixed[t, ids[0, t + 1]].item() for t in positions)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.25])
def test_dnd_detector_margin_matches_direct_computation(two_models, lam):
    policy, reference = two_models
    batch = batch_of_pairs()
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        policy_sums, policy_out = sequence_logps_and_logits(policy, *args)
        ref_sums, ref_out = sequence_logps_and_logits(reference, *args)
        tokens = token_logps(policy_out.logits, policy_out.targets, ref_out.logits, lam)
        detector = sum_by_row(tokens, policy_out.rows, policy_out.num_rows)
    items = [([1, 5, 6, 7], [20, 21, 2], [30, 2]), ([1, 8], [40, 41, 42, 2], [50, 51, 2])]
    for row, (prompt, chosen, rejected) in enumerate(items):
        assert detector[row].item() == pytest.approx(
            direct_detector_logp(policy, reference, prompt, chosen, lam), abs=1e-4
        )
        assert detector[2 + row].item() == pytest.approx(
            direct_detector_logp(policy, reference, prompt, rejected, lam), abs=1e-4
        )
    z_det = dpo_logits(detector[:2], detector[2:], ref_sums[:2], ref_sums[2:])
    z_policy = dpo_logits(policy_sums[:2], policy_sums[2:], ref_sums[:2], ref_sums[2:])
    if lam == 0.0:
        # Without extrapolation the detector is the policy: its margin is the policy's own DPO logit.
        assert torch.allclose(z_det, z_policy, atol=1e-5)
    else:
        # Not simply (1 + lam) z: the per-position normalisers change it.
        assert not torch.allclose(z_det, (1 + lam) * z_policy, atol=1e-6)
