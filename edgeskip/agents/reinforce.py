"""REINFORCE with a learned baseline, as pure functions (tested on hand-computed values).

Reward per image: ``R = 1[correct] - penalty * executed / L + epsilon`` (the thesis: penalty 1). The return credited to layer
``j`` of ``L`` is ``gamma ** (L - 1 - j) * R``; returns are whitened per layer across the
batch. Policy loss: ``-(G - b) * log pi(a | c)`` summed over layers (mean over the batch);
the baseline ``b_j(c_j)`` is fitted to ``G`` by mean squared error.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rewards", "discounted_returns", "whiten", "policy_loss", "baseline_loss"]


def rewards(correct: Tensor, executed: Tensor, epsilon: float = -1e-5, penalty: float = 1.0) -> Tensor:
    """(B,) rewards from (B,) correctness and the (B, L) executed-layer mask."""
    return correct.float() - penalty * executed.float().mean(dim=1) + epsilon


def discounted_returns(reward: Tensor, depth: int, gamma: float = 0.99) -> Tensor:
    """(B, L) returns: layer j is credited ``gamma ** (L - 1 - j) * R`` (later layers more)."""
    powers = torch.arange(depth - 1, -1, -1, device=reward.device, dtype=torch.float32)
    return reward[:, None].float() * gamma**powers


def whiten(returns: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance per layer (column) across the batch.

    A column without spread (e.g. a batch of one) becomes all zeros: no learning signal.
    """
    centred = returns - returns.mean(dim=0, keepdim=True)
    std = returns.std(dim=0, unbiased=False, keepdim=True)
    return torch.where(std > eps, centred / std.clamp_min(eps), torch.zeros_like(centred))


def policy_loss(returns: Tensor, baseline: Tensor, log_probs: Tensor, active: Tensor | None = None) -> Tensor:
    """``-(G - b) * log pi`` summed over the (active) layers, averaged over the batch."""
    advantage = (returns - baseline).detach()
    terms = -advantage * log_probs
    if active is not None:
        terms = terms * active.to(terms.dtype)
    return terms.sum(dim=1).mean()


def baseline_loss(baseline: Tensor, returns: Tensor, active: Tensor | None = None) -> Tensor:
    """Mean squared error of the baseline to the (detached) returns over the active layers."""
    err = (baseline - returns.detach()) ** 2
    if active is None:
        return err.mean()
    mask = active.to(err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
