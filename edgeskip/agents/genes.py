"""Skip configurations and their NSGA-II gene encoding (torch-free).

A :class:`SkipConfig` gives every layer either a threshold in [0, 1] (the layer runs for
an input when its agent's probability is >= the threshold) or ``None`` (the layer is
removed: it never runs). :class:`GeneCodec` is the one explicit two-way map between a
configuration and the integer genome the search evolves: gene 0 = removed, gene k >= 1 =
``grid[k - 1]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import ConfigError

__all__ = ["SkipConfig", "GeneCodec", "DEFAULT_GRID"]

DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class SkipConfig:
    """Per-layer thresholds; ``None`` marks a removed layer."""

    thresholds: tuple[float | None, ...]

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise ConfigError("a skip configuration needs at least one layer")
        for j, t in enumerate(self.thresholds):
            if t is None:
                continue
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
                raise ConfigError(f"threshold of layer {j} must be in [0, 1] (or None to remove it), got {t!r}")
        if all(t is None for t in self.thresholds):
            raise ConfigError("every layer is removed: keep at least one layer")
        object.__setattr__(self, "thresholds", tuple(None if t is None else float(t) for t in self.thresholds))

    @classmethod
    def uniform(cls, depth: int, threshold: float = 0.5) -> SkipConfig:
        return cls((threshold,) * depth)

    @property
    def depth(self) -> int:
        return len(self.thresholds)

    @property
    def removed(self) -> tuple[int, ...]:
        return tuple(j for j, t in enumerate(self.thresholds) if t is None)

    def check_depth(self, depth: int) -> None:
        if self.depth != depth:
            raise ConfigError(f"skip configuration has {self.depth} layer(s), the model has {depth}")

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds)}

    @classmethod
    def from_dict(cls, data: Any) -> SkipConfig:
        if not isinstance(data, dict) or set(data) != {"thresholds"} or not isinstance(data["thresholds"], list):
            raise ConfigError(f"a skip configuration is {{'thresholds': [...]}}, got {data!r}")
        return cls(tuple(data["thresholds"]))


class GeneCodec:
    """Two-way map between :class:`SkipConfig` and integer genes (0 = removed)."""

    def __init__(self, depth: int, grid: Sequence[float] = DEFAULT_GRID) -> None:
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        grid = tuple(float(g) for g in grid)
        if not grid or any(not 0.0 <= g <= 1.0 for g in grid) or len(set(grid)) != len(grid):
            raise ConfigError(f"threshold grid must hold distinct values in [0, 1], got {grid}")
        self.depth = depth
        self.grid = grid

    @classmethod
    def with_step(cls, depth: int, step: float) -> GeneCodec:
        if not 0.0 < step <= 1.0:
            raise ConfigError(f"grid step must be in (0, 1], got {step}")
        n = int(round(1.0 / step))
        if not math.isclose(n * step, 1.0, abs_tol=1e-9):
            raise ConfigError(f"grid step {step} does not divide [0, 1] evenly")
        return cls(depth, tuple(round(k * step, 12) for k in range(n + 1)))

    @property
    def n_values(self) -> int:
        """Allowed values per gene: ``remove`` plus every grid threshold."""
        return len(self.grid) + 1

    def decode(self, genes: Sequence[int] | npt.NDArray[np.integer[Any]]) -> SkipConfig:
        g = np.asarray(genes)
        if g.shape != (self.depth,):
            raise ConfigError(f"a genome has {self.depth} genes (one per layer), got shape {g.shape}")
        if g.dtype.kind not in "iu" or g.min() < 0 or g.max() >= self.n_values:  # (timedelta64 is an integer to numpy)
            raise ConfigError(f"genes must be integers in [0, {self.n_values - 1}], got {g.tolist()}")
        return SkipConfig(tuple(None if k == 0 else self.grid[int(k) - 1] for k in g))

    def encode_or_none(self, config: SkipConfig) -> npt.NDArray[np.int64] | None:
        """:meth:`encode`, or None when a threshold is not on the grid."""
        try:
            return self.encode(config)
        except ConfigError:
            return None

    def encode(self, config: SkipConfig) -> npt.NDArray[np.int64]:
        config.check_depth(self.depth)
        genes = []
        for j, t in enumerate(config.thresholds):
            if t is None:
                genes.append(0)
                continue
            hits = [k for k, g in enumerate(self.grid) if math.isclose(g, t, abs_tol=1e-9)]
            if not hits:
                raise ConfigError(f"threshold {t} of layer {j} is not on the grid {self.grid}")
            genes.append(hits[0] + 1)
        return np.asarray(genes, dtype=np.int64)
