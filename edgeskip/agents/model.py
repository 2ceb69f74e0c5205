"""The ViT with one skip agent (and one learned baseline) in front of every layer.

Agent j: a linear map of the CLS token entering layer j to one logit; ``p_j = sigmoid``
is the probability of executing layer j (h + 1 parameters per layer). At inference the
layer runs for an input when ``p_j >= threshold_j``; during training the action is drawn
from Bernoulli(p_j). A skipped input passes through unchanged (identity on all tokens).

Execution is per sample inside a batch: the rows whose agent says "run" are gathered, the
layer runs on them only, and the results are scattered back; skipped rows cost nothing.

Choices of ours where the thesis is silent:

* the agents and baselines read a *detached* CLS token, so the RL losses train the agents
  and baselines only and never push the backbone's features;
* agent biases start at +2.0 (p = 0.88): a fresh model executes most layers and learns
  to skip, rather than starting from random half-depth paths;
* agents and baselines always compute in fp32, also under bf16 autocast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeskip.policy import SkipConfig
from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError, DataError
from edgeskip.models.vit import ViT
from edgeskip.rule import decision_input

__all__ = ["SkipViT", "SkipOutput", "AGENT_BIAS_INIT", "agent_runs"]

AGENT_BIAS_INIT = 2.0


def agent_runs(probability: Tensor, threshold: Tensor) -> Tensor:
    """The agent rule in torch (training and the PyTorch reference): a layer runs when its agent's probability
    reaches the threshold. The runtime's numpy form is :func:`edgeskip.rule.agent_runs` (on the logit)."""
    return probability >= threshold


class SkipOutput(NamedTuple):
    """Logits and the path every input took (a NamedTuple so DDP can see its tensors)."""

    logits: Tensor  # (B, classes)
    executed: Tensor  # (B, L) bool: layer j ran for input b
    probs: Tensor  # (B, L) agent probabilities (0 for removed layers)
    log_probs: Tensor | None  # (B, L) log pi(a | c) of the sampled actions (training only)
    states: Tensor | None  # (B, L, D) detached CLS tokens entering each layer (training only)
    baselines: Tensor | None  # (B, L) learned baselines b_j(c_j) (training only; inside forward for DDP)

    def paths(self) -> list[str]:
        """One bit string per input, e.g. '110101101' (1 = layer executed)."""
        return ["".join("1" if bit else "0" for bit in row) for row in self.executed.tolist()]


class SkipViT(ViT):
    """:class:`~edgeskip.models.vit.ViT` plus per-layer agents; backbone keys are unchanged,
    so a static checkpoint's weights load into it directly."""

    thresholds: Tensor
    removed: Tensor

    def __init__(self, cfg: ViTConfig, skip: SkipConfig | None = None, baseline_hidden: int = 64) -> None:
        super().__init__(cfg)
        if baseline_hidden < 1:
            raise ConfigError(f"baseline_hidden must be >= 1, got {baseline_hidden}")
        self.baseline_hidden = baseline_hidden
        self.agents = nn.ModuleList(nn.Linear(cfg.width, 1) for _ in range(cfg.depth))
        self.baselines = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.width, baseline_hidden), nn.ReLU(), nn.Linear(baseline_hidden, 1))
            for _ in range(cfg.depth)
        )
        for agent in self.agents:
            nn.init.normal_(agent.weight, std=0.02)
            nn.init.constant_(agent.bias, AGENT_BIAS_INIT)
        self.register_buffer("thresholds", torch.zeros(cfg.depth), persistent=False)
        self.register_buffer("removed", torch.zeros(cfg.depth, dtype=torch.bool), persistent=False)
        self.skip = SkipConfig.uniform(cfg.depth)
        self.set_skip_config(skip or self.skip)

    # -- configuration ----------------------------------------------------------------------

    def set_skip_config(self, skip: SkipConfig) -> None:
        """Switch thresholds / removed layers (no reload, no retraining)."""
        skip.check_depth(self.depth)
        self.skip = skip
        self.thresholds.copy_(torch.tensor([1.0 if t is None else t for t in skip.thresholds]))
        self.removed.copy_(torch.tensor([t is None for t in skip.thresholds]))

    def agent_parameter_count(self) -> int:
        """Parameters of all agents: (width + 1) per layer."""
        return sum(p.numel() for p in self.agents.parameters())

    def agent_meta(self) -> dict[str, object]:
        return {"skip": self.skip.to_dict(), "baseline_hidden": self.baseline_hidden}

    # -- execution ----------------------------------------------------------------------------

    def agent_logits(self, j: int, cls: Tensor) -> Tensor:
        with torch.autocast(device_type=cls.device.type, enabled=False):
            return self.agents[j](cls.detach().float()).squeeze(1)  # type: ignore[no-any-return]

    def decide(self, j: int, x: Tensor) -> Tensor:
        """Inference decision for layer ``j`` on tokens ``x`` entering it: (B,) bool, True = run."""
        if bool(self.removed[j]):
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return agent_runs(torch.sigmoid(self.agent_logits(j, decision_input(x, self.config.decision_token))),
                          self.thresholds[j])

    def baseline_values(self, states: Tensor) -> Tensor:
        """(B, L) baseline predictions b_j(c_j) from the (B, L, D) states."""
        with torch.autocast(device_type=states.device.type, enabled=False):
            cols = [b(states[:, j].float()).squeeze(1) for j, b in enumerate(self.baselines)]
        return torch.stack(cols, dim=1)

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise DataError(f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DataError(f"expected float images, got {images.dtype}")
        if not torch.isfinite(images).all():
            raise DataError("input images contain NaN or infinite values")

    def forward(  # type: ignore[override]
        self, images: Tensor, *, sample: bool | None = None, executed: Tensor | None = None
    ) -> SkipOutput:
        """Run with per-sample skipping.

        ``sample`` (default: ``self.training``) draws actions from Bernoulli(p); otherwise
        the thresholds decide. ``executed`` forces a fixed (B, L) pattern instead of the
        agents (benchmarks, tests); removed layers never run either way.
        """
        self._check_images(images)
        sample = self.training if sample is None else sample
        b, depth = images.shape[0], self.depth
        if executed is not None and tuple(executed.shape) != (b, depth):
            raise ConfigError(f"executed pattern must have shape ({b}, {depth}), got {tuple(executed.shape)}")
        x = self.embed(images)
        runs, probs, log_probs, states = [], [], [], []
        for j in range(depth):
            cls = decision_input(x, self.config.decision_token)
            if sample:
                states.append(cls.detach())
            if bool(self.removed[j]):
                run = torch.zeros(b, dtype=torch.bool, device=x.device)
                p = torch.zeros(b, device=x.device)
                logp = torch.zeros(b, device=x.device)
            else:
                z = self.agent_logits(j, cls)
                p = torch.sigmoid(z)
                if executed is not None:
                    run = executed[:, j].to(device=x.device, dtype=torch.bool)
                elif sample:
                    run = torch.bernoulli(p.detach()).bool()
                else:
                    run = agent_runs(p, self.thresholds[j])
                logp = torch.where(run, F.logsigmoid(z), F.logsigmoid(-z))
            x = self._run_rows(j, x, run)
            runs.append(run)
            probs.append(p.detach())
            log_probs.append(logp)
        state_stack = torch.stack(states, dim=1) if sample else None
        return SkipOutput(
            logits=self.head(x),
            executed=torch.stack(runs, dim=1) if runs else torch.zeros(b, 0, dtype=torch.bool),
            probs=torch.stack(probs, dim=1),
            log_probs=torch.stack(log_probs, dim=1) if sample else None,
            states=state_stack,
            # Computed here, not by the caller, so DDP sees every parameter used in forward.
            baselines=self.baseline_values(state_stack) if state_stack is not None else None,
        )

    def _run_rows(self, j: int, x: Tensor, run: Tensor) -> Tensor:
        """Gather the rows that run layer j, run it on them only, scatter them back."""
        n = int(run.sum())
        if n == x.shape[0]:
            return self.blocks[j](x)  # type: ignore[no-any-return]
        if n == 0:
            return x
        idx = run.nonzero().squeeze(1)
        out = self.blocks[j](x.index_select(0, idx))
        return x.index_copy(0, idx, out.to(x.dtype))
