"""NSGA-II post-training settings (torch-free, so the CLI can build its options cheaply)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from edgeskip.errors import ConfigError

__all__ = ["SearchConfig"]


def _h(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """NSGA-II settings; the defaults follow the thesis."""

    grid_step: float = field(default=0.25, metadata=_h("threshold grid step (0.25: 0, .25, .5, .75, 1)"))
    pop_size: int = field(default=25, metadata=_h("population size"))
    generations: int = field(default=30, metadata=_h("generations"))
    crossover_prob: float = field(default=0.5, metadata=_h("one-point crossover probability"))
    mutation_prob: float = field(default=0.65, metadata=_h("probability that an offspring has one gene redrawn"))
    evaluation: str = field(default="fresh", metadata=_h(
        "fresh: a new batch of held-out images every generation (thesis); fixed: the whole calibration set",
        choices=("fresh", "fixed")))
    batch_size: int = field(default=256, metadata=_h("images per generation in fresh mode"))
    joint: bool = field(default=False, metadata=_h("add the agents' mean reward as an objective and fine-tune "
                                                   "ViT + agents a few SGD steps per generation"))
    joint_steps: int = field(default=5, metadata=_h("joint: SGD steps per generation"))
    joint_lr: float = field(default=1e-4, metadata=_h("joint: SGD learning rate"))
    joint_batch_size: int = field(default=64, metadata=_h("joint: training batch size"))
    label_smoothing: float = field(default=0.1, metadata=_h("joint: label smoothing of the cross-entropy"))
    gamma: float = field(default=0.99, metadata=_h("joint: reward discount"))
    reward_epsilon: float = field(default=-1e-5, metadata=_h("epsilon added to every reward"))
    depth_penalty: float = field(default=1.0, metadata=_h("weight of executed/L in the reward (1 = thesis)"))
    seed: int = field(default=0, metadata=_h("random seed"))

    def __post_init__(self) -> None:
        if self.evaluation not in ("fresh", "fixed"):
            raise ConfigError(f"evaluation must be 'fresh' or 'fixed', got {self.evaluation!r}")
        if self.pop_size < 2 or self.generations < 1:
            raise ConfigError("pop_size must be >= 2 and generations >= 1")
        for name in ("crossover_prob", "mutation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.batch_size < 1 or self.joint_steps < 0 or self.joint_batch_size < 1:
            raise ConfigError("batch_size and joint_batch_size must be >= 1, joint_steps >= 0")
        if not self.depth_penalty >= 0.0:
            raise ConfigError(f"depth_penalty must be >= 0, got {self.depth_penalty}")
        if not 0.0 < self.grid_step <= 1.0:
            raise ConfigError(f"grid_step must be in (0, 1], got {self.grid_step}")
