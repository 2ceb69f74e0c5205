"""Joint training of the ViT and its skip agents (REINFORCE with a learned baseline)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeskip.policy import SkipConfig
from edgeskip.agents.model import SkipOutput, SkipViT
from edgeskip.agents.reinforce import (
    baseline_loss,
    discounted_returns,
    policy_loss,
    rewards,
    whiten,
)
from edgeskip.train.report import evaluate_skipping
from edgeskip.errors import CheckpointError
from edgeskip.models.vit import ViT
from edgeskip.train.checkpoint import load_checkpoint
from edgeskip.train.loop import Trainer

__all__ = ["AgentTrainer", "joint_loss"]

log = logging.getLogger(__name__)


def joint_loss(
    model: SkipViT, out: SkipOutput, labels: Tensor, label_smoothing: float, gamma: float, epsilon: float,
    penalty: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on the sampled paths + REINFORCE policy loss + baseline MSE."""
    if out.log_probs is None or out.baselines is None:
        raise ValueError("joint_loss needs a sampled forward pass (model.train() or sample=True)")
    ce = F.cross_entropy(out.logits.float(), labels, label_smoothing=label_smoothing)
    with torch.autocast(device_type=labels.device.type, enabled=False):
        correct = out.logits.argmax(1) == labels
        reward = rewards(correct, out.executed, epsilon, penalty)
        returns = whiten(discounted_returns(reward, model.depth, gamma))
        baseline = out.baselines
        active = ~model.removed[None, :]
        rl = policy_loss(returns, baseline, out.log_probs, active) + baseline_loss(baseline, returns, active)
    return ce + rl, {"exec": float(out.executed.float().mean()), "reward": float(reward.mean())}


class AgentTrainer(Trainer):
    """:class:`~edgeskip.train.loop.Trainer` whose loss adds the agents' REINFORCE terms.

    Loss = cross-entropy (on the path actually sampled, so back-propagation reaches only
    the layers that ran for each sample) + policy loss + baseline MSE.
    """

    model: SkipViT

    def build_model(self) -> ViT:
        cfg = self.cfg
        model = SkipViT(self.model_cfg, SkipConfig.uniform(self.model_cfg.depth, cfg.agent_threshold),
                        baseline_hidden=cfg.baseline_hidden)
        if cfg.init:
            ckpt = load_checkpoint(cfg.init)
            if ckpt.model_config != self.model_cfg:
                raise CheckpointError(f"--init {cfg.init}: its model config differs from {cfg.model} on {cfg.dataset}")
            source, where = ckpt.build_model().state_dict(), f"--init {cfg.init}"
        elif self.initial_state is not None:
            source, where = self.initial_state, cfg.model
        else:
            return model
        target = model.state_dict()
        wrong = [k for k, v in source.items() if k in target and v.shape != target[k].shape]
        if wrong:
            raise CheckpointError(f"{where}: tensors of another shape, e.g. {wrong[0]} (different --baseline-hidden?)")
        missing, unexpected = model.load_state_dict(source, strict=False)
        if unexpected or any(not k.startswith(("agents.", "baselines.")) for k in missing):
            raise CheckpointError(f"{where}: weights do not fit (unexpected {unexpected[:3]})")
        log.info("initialised the backbone from %s%s", where, "" if missing else " (agents too)")
        return model

    def compute_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        cfg = self.cfg
        out = self.net(images)
        loss, extra = joint_loss(self.model, out, labels, cfg.label_smoothing, cfg.gamma, cfg.reward_epsilon,
                                 cfg.depth_penalty)
        return loss, out.logits, extra

    def evaluate(self) -> dict[str, Any]:
        report = evaluate_skipping(
            self.model, self.data.test, self.norm, batch_size=self.cfg.eval_batch_size, device=self.device,
            dtype=self.dtype, rank=self.dist.rank, world=self.dist.world_size,
        )
        if self.cfg.path_table:
            log.info("paths on the test split:\n%s", report.table(top=5))
        return {
            "accuracy": report.accuracy, "loss": report.loss, "count": report.count,
            "executed_fraction": report.executed_fraction, "mean_executed_layers": report.mean_executed,
            "layer_execution_rates": list(report.layer_rates), "paths": report.to_dict(top=20)["paths"],
        }
