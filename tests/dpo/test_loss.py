import math

import pytest
import torch

from spreadpref.dpo.loss import soft_dpo_loss


def closed_form(z, beta, q, w=1.0):
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return -w * (q * math.log(sig(beta * z)) + (1 - q) * math.log(sig(-beta * z)))


def inputs(values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=i < 2) for i, v in enumerate(values)]


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_closed_form_and_gradient(q, beta):
    pc, pr, rc, rr = inputs([[-10.0, -3.0], [-12.0, -2.5], [-11.0, -3.5], [-11.5, -2.0]])
    out = soft_dpo_loss(pc, pr, rc, rr, beta=beta, target=q)
    z = (pc - pr - (rc - rr)).detach()
    expected = [closed_form(float(zi), beta, q) for zi in z]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    # dL/dz = -beta (q - sigma(beta z)); z depends on pc with +1 and on pr with -1.
    grad_z = -beta * (q - torch.sigmoid(beta * z)) / len(z)
    assert pc.grad.tolist() == pytest.approx(grad_z.tolist(), rel=1e-10)
    assert pr.grad.tolist() == pytest.approx((-grad_z).tolist(), rel=1e-10)


def test_limits():
    z0 = inputs([[0.0], [0.0], [0.0], [0.0]])
    # At z = 0 every target gives log 2.
    for q in (0.0, 0.5, 1.0):
        assert soft_dpo_loss(*z0, beta=0.1, target=q).loss.item() == pytest.approx(math.log(2))
    pc, pr, rc, rr = inputs([[5.0], [-5.0], [0.0], [0.0]])  # z = 10
    plain = soft_dpo_loss(pc, pr, rc, rr, beta=1.0, target=1.0).loss.item()
    assert plain == pytest.approx(-math.log(1 / (1 + math.exp(-10))))  # q = 1: plain DPO
    flipped = soft_dpo_loss(pc, pr, rc, rr, beta=1.0, target=0.0).loss.item()
    assert flipped == pytest.approx(10 + plain)  # q = 0: the pair read the other way round
    half = soft_dpo_loss(pc, pr, rc, rr, beta=1.0, target=0.5).loss.item()
    assert half == pytest.approx(0.5 * (plain + flipped))


def test_soft_label_optimum_is_finite():
    # The loss is minimal where sigma(beta z) = q: a soft label asks for a finite margin.
    q, beta = 0.9, 0.1
    z_star = math.log(q / (1 - q)) / beta
    grid = [z_star + d for d in (-1.0, -0.1, 0.0, 0.1, 1.0)]
    values = [closed_form(z, beta, q) for z in grid]
    assert min(values) == values[2]
    pc = torch.tensor([z_star], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    soft_dpo_loss(pc, zero, zero, zero, beta=beta, target=q).loss.backward()
    assert abs(pc.grad.item()) < 1e-12


def test_weights_and_per_sample_targets():
    pc, pr, rc, rr = inputs([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    q = torch.tensor([1.0, 0.9, 0.5], dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    out = soft_dpo_loss(pc, pr, rc, rr, beta=0.1, target=q, weight=w)
    expected = [closed_form(1.0, 0.1, 1.0), 0.0, closed_form(3.0, 0.1, 0.5, 2.0)]
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.loss.item() == pytest.approx(sum(expected) / 3)


def test_rewards_and_stability():
    pc, pr, rc, rr = inputs([[-1.0], [-2000.0], [-3.0], [-4.0]])
    out = soft_dpo_loss(pc, pr, rc, rr, beta=0.1, target=1.0)
    assert out.chosen_rewards.item() == pytest.approx(0.2)
    assert out.rejected_rewards.item() == pytest.approx(-199.6)
    assert math.isfinite(out.loss.item()) and out.loss.item() >= 0
    far = soft_dpo_loss(pr, pc, rc, rr, beta=0.1, target=1.0)  # z = -2000: log sigma must not overflow
    assert far.loss.item() == pytest.approx(200.0 + math.log1p(math.exp(-200.0)), rel=1e-12)
