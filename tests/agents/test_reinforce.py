"""The REINFORCE pieces against a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from edgeskip.agents.reinforce import (
    baseline_loss,
    discounted_returns,
    policy_loss,
    rewards,
    whiten,
)


def test_reward_discount_and_whitening_by_hand() -> None:
    # Two images, three layers. Image 0: correct, ran layers 0 and 2. Image 1: wrong, ran all.
    correct = torch.tensor([True, False])
    executed = torch.tensor([[1, 0, 1], [1, 1, 1]]).bool()
    r = rewards(correct, executed, epsilon=-1e-5)
    assert r.tolist() == pytest.approx([1 - 2 / 3 - 1e-5, 0 - 1 - 1e-5])

    g = discounted_returns(r, depth=3, gamma=0.5)
    # Layer j is credited gamma^(L-1-j) * R: 0.25 R, 0.5 R, R.
    assert g[0].tolist() == pytest.approx([0.25 * r[0].item(), 0.5 * r[0].item(), r[0].item()])
    assert g[1].tolist() == pytest.approx([0.25 * r[1].item(), 0.5 * r[1].item(), r[1].item()])

    w = whiten(g)
    # Two values per column whiten to +1 / -1 (population std); image 0 has the higher return.
    assert w[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert w[1].tolist() == pytest.approx([-1.0, -1.0, -1.0], abs=1e-5)


def test_whiten_zero_mean_unit_variance_and_degenerate_columns() -> None:
    torch.manual_seed(0)
    g = torch.randn(64, 5) * 3 + 2
    w = whiten(g)
    assert torch.allclose(w.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(w.std(0, unbiased=False), torch.ones(5), atol=1e-4)
    assert torch.equal(whiten(torch.ones(4, 2)), torch.zeros(4, 2))
    assert torch.equal(whiten(torch.tensor([[3.0, 1.0]])), torch.zeros(1, 2))


def test_policy_and_baseline_losses_by_hand() -> None:
    returns = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    baseline = torch.tensor([[0.5, 0.0], [0.0, 0.5]], requires_grad=True)
    log_probs = torch.tensor([[math.log(0.8), math.log(0.4)], [math.log(0.2), math.log(0.6)]], requires_grad=True)
    loss = policy_loss(returns, baseline, log_probs)
    # -(G - b) * log pi, summed over layers, averaged over the batch.
    by_hand = -((0.5 * math.log(0.8) + -1.0 * math.log(0.4)) + (-1.0 * math.log(0.2) + 0.5 * math.log(0.6))) / 2
    assert loss.item() == pytest.approx(by_hand)
    loss.backward()
    assert baseline.grad is None or torch.all(baseline.grad == 0)  # the advantage is detached
    assert log_probs.grad is not None and log_probs.grad[0, 0].item() == pytest.approx(-0.5 / 2)

    active = torch.tensor([[True, False]])
    masked = policy_loss(returns, baseline, log_probs, active)
    assert masked.item() == pytest.approx(-(0.5 * math.log(0.8) + -1.0 * math.log(0.2)) / 2)
    mse = baseline_loss(baseline, returns)
    assert mse.item() == pytest.approx(((0.5 - 1) ** 2 + 1 + 1 + 0.25) / 4)
    assert baseline_loss(baseline, returns, active).item() == pytest.approx(((0.5 - 1) ** 2 + 1) / 2)


def test_depth_penalty_scales_the_compute_term() -> None:
    correct = torch.tensor([True, False])
    executed = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    assert rewards(correct, executed, epsilon=0.0, penalty=0.25).tolist() == pytest.approx([1 - 0.125, -0.25])
    assert rewards(correct, executed, epsilon=0.0).tolist() == pytest.approx([0.5, -1.0])
