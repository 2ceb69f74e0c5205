"""Search settings as data (torch-free and pymoo-free, so the command line builds its options cheaply).

One :class:`SearchSettings` for NSGA-II in every search (the defaults follow the thesis's
post-training); :class:`BundleSearchSettings` adds what a bundle's device costs are predicted for,
:class:`PosttrainSettings` where a checkpoint's accuracy comes from and the joint variant.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from edgeskip.errors import ConfigError
from edgeskip.schema import Record, field
from edgeskip.search.genome import grid_with_step

__all__ = ["DEFAULT_EXIT_RATES", "BundleSearchSettings", "PosttrainSettings", "SearchSettings"]

DEFAULT_EXIT_RATES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings(Record):
    """NSGA-II settings shared by every search (the defaults follow the thesis's post-training)."""

    pop_size: int = field(default=25, ge=4, help="NSGA-II population size")
    generations: int = field(default=30, ge=1, help="NSGA-II generations")
    grid_step: float = field(default=0.25, gt=0.0, le=1.0, help="agent threshold grid step (0.25: 0, .25, .5, .75, 1)")
    crossover_prob: float = field(default=0.5, ge=0.0, le=1.0, help="one-point crossover probability")
    mutation_prob: float = field(default=0.65, ge=0.0, le=1.0,
                                 help="probability that an offspring has one gene redrawn")
    seed: int = field(default=0, help="random seed")

    def __post_init__(self) -> None:
        for name, low in (("pop_size", 4), ("generations", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("crossover_prob", "mutation_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        grid_with_step(self.grid_step)  # a step that does not divide [0, 1] is a ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class BundleSearchSettings(SearchSettings):
    """A bundle search: NSGA-II settings plus what the device costs are predicted for."""

    batch: int = field(default=1, ge=1, help="batch size latency and energy are predicted at")
    exit_rates: tuple[float, ...] = field(default=DEFAULT_EXIT_RATES, gt=0.0, le=1.0,
                                          help="each exit's grid: the thresholds where these shares of images leave")
    precisions: str = field(default="auto", help=(
        "what each layer may run in, a gene per layer: auto (every precision the bundle's backend holds and the "
        "profile timed, e.g. int8,fp32 for an --int8 bundle), or a comma-separated list starting with the "
        "backend's own (int8 alone: no precision gene)"))
    pool_mb: float = field(default=1024.0, gt=0.0, help=(
        "memory kept for cached token tensors (MiB); less recomputes more, the front stays the same (zoo vit9, "
        "25 x 30 on 2,000 images, in one phase of this VM: 1024 -> 74 s, 2.0 GB peak; 1536 -> 63 s, 2.5 GB; "
        "4096 -> 66 s, 5.1 GB)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not 0.0 < r < 1.0 for r in self.exit_rates):
            raise ConfigError(f"exit rates are shares of images in (0, 1), got {self.exit_rates}")
        if self.precisions != "auto" and not self.precision_list:
            raise ConfigError(f"precisions must be 'auto' or a comma-separated list, got {self.precisions!r}")

    @property
    def precision_list(self) -> tuple[str, ...]:
        """The precisions named (empty for ``auto``)."""
        return () if self.precisions == "auto" else tuple(p.strip() for p in self.precisions.split(",") if p.strip())


@dataclasses.dataclass(frozen=True, kw_only=True)
class PosttrainSettings(SearchSettings):
    """Post-training: NSGA-II settings plus where the accuracy comes from and the joint variant's fine-tuning."""

    evaluation: Literal["fresh", "fixed"] = field(default="fresh", help="fresh: a new batch of held-out images every generation (thesis); "
                                                  "fixed: the whole calibration set")
    batch_size: int = field(default=256, ge=1, help="images per generation in fresh mode")
    joint: bool = field(default=False, help="add the agents' mean reward as an objective and fine-tune ViT + agents "
                                            "a few SGD steps per generation")
    joint_steps: int = field(default=5, ge=0, help="joint: SGD steps per generation")
    joint_lr: float = field(default=1e-4, gt=0.0, help="joint: SGD learning rate")
    joint_batch_size: int = field(default=64, ge=1, help="joint: training batch size")
    label_smoothing: float = field(default=0.1, ge=0.0, le=1.0, help="joint: label smoothing of the cross-entropy")
    gamma: float = field(default=0.99, ge=0.0, le=1.0, help="joint: reward discount")
    reward_epsilon: float = field(default=-1e-5, help="epsilon added to every reward")
    depth_penalty: float = field(default=1.0, ge=0.0, help="weight of executed/L in the reward (1 = thesis)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.evaluation not in ("fresh", "fixed"):
            raise ConfigError(f"evaluation must be 'fresh' or 'fixed', got {self.evaluation!r}")
        if self.batch_size < 1 or self.joint_steps < 0 or self.joint_batch_size < 1:
            raise ConfigError("batch_size and joint_batch_size must be >= 1, joint_steps >= 0")
        if not self.depth_penalty >= 0.0:
            raise ConfigError(f"depth_penalty must be >= 0, got {self.depth_penalty}")
