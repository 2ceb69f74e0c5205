"""One additive compute model, normalised so the static model (embed + every layer + head)
costs exactly 1.0. Torch-free: the runtime and the threshold search share it.

Units are multiply-accumulates (MACs) of the dense parts, counted per input. An E²CM
check is counted conservatively: 2·K·F for the distances to K class means of an F-sized
feature (one subtraction and one multiply-add per element), K for the square roots,
normalisation and softmax, plus N·D adds when the feature is a mean over N tokens. An
agent decision costs D + 1 (one dot product and the sigmoid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError

__all__ = ["MacCosts", "FEATURES", "feature_size", "check_exits"]

FEATURES = ("tokens", "cls", "mean")


def feature_size(cfg: ViTConfig, feature: str) -> int:
    """Length of the vector compared with the class means at an exit."""
    if feature == "tokens":
        return cfg.num_tokens * cfg.width
    if feature in ("cls", "mean"):
        return cfg.width
    raise ConfigError(f"unknown E²CM feature {feature!r}; choose one of {', '.join(FEATURES)}")


def check_exits(exits: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """Validate exit layer indices (default: after every layer but the last)."""
    if exits is None:
        return tuple(range(depth - 1))
    out = []
    for e in exits:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise ConfigError(f"exit indices must be integers, got {e!r}")
        if not 0 <= e < depth:
            raise ConfigError(f"exit index {e} is outside the {depth}-layer model (valid: 0..{depth - 2})")
        if e == depth - 1:
            raise ConfigError(f"exit index {e} is the last layer, which always exits through the model's own head "
                              f"(valid: 0..{depth - 2})")
        out.append(int(e))
    if not out:
        raise ConfigError("at least one exit is needed")
    if len(set(out)) != len(out):
        raise ConfigError(f"exit indices repeat: {list(exits)}")
    return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class MacCosts:
    """Per-stage multiply-accumulates as fractions of the static model (``embed + sum(layers) + head == 1``): the
    compute model of E²CM threshold search and the MACs cost of :mod:`edgeskip.search`."""

    embed: float
    layers: tuple[float, ...]
    head: float
    agents: tuple[float, ...]  # per layer; zeros for a model without agents
    exits: tuple[int, ...]  # layer index after which each check runs
    checks: tuple[float, ...]  # per exit
    unit: str = "fraction of the static model's MACs"

    def __post_init__(self) -> None:
        if len(self.agents) != len(self.layers) or len(self.checks) != len(self.exits):
            raise ConfigError("cost model: one agent cost per layer and one check cost per exit are needed")

    @classmethod
    def from_config(cls, cfg: ViTConfig, exits: Sequence[int] | None, feature: str, *, agents: bool = False) -> MacCosts:
        """The costs of ``cfg`` with checks after ``exits`` (None: after every layer but the last; empty: none)."""
        exits = () if exits is not None and len(exits) == 0 else check_exits(exits, cfg.depth)
        d, k = cfg.width, cfg.num_classes
        embed = cfg.num_patches * cfg.in_channels * cfg.patch_size**2 * d + cfg.num_tokens * d
        layer = cfg.layer_flops()
        head = d * k + 2 * d
        check = 2 * k * feature_size(cfg, feature) + 3 * k + (cfg.num_tokens * d if feature == "mean" else 0)
        total = float(embed + cfg.depth * layer + head)
        return cls(
            embed=embed / total, layers=(layer / total,) * cfg.depth, head=head / total,
            agents=((d + 1) / total if agents else 0.0,) * cfg.depth,
            exits=exits, checks=(check / total,) * len(exits),
        )

    @property
    def depth(self) -> int:
        return len(self.layers)

    def cumulative(self) -> tuple[float, ...]:
        """Cost of leaving at each exit when every layer runs and every earlier check ran."""
        out, spent = [], self.embed
        checks = dict(zip(self.exits, self.checks, strict=True))
        for j in range(self.depth):
            spent += self.agents[j] + self.layers[j] + checks.get(j, 0.0)
            if j in checks:
                out.append(spent)
        return tuple(out)

    def path_costs(self, executed: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """For (N, L) executed-layer masks: cost up to each exit and of the full path, checks excluded.

        Agents are paid for every layer reached (they decide before the layer runs).
        """
        executed = np.asarray(executed, dtype=bool)
        if executed.ndim != 2 or executed.shape[1] != self.depth:
            raise ConfigError(f"executed masks must have shape (N, {self.depth}), got {executed.shape}")
        per_layer = executed * np.asarray(self.layers) + np.asarray(self.agents)
        running = self.embed + np.cumsum(per_layer, axis=1)
        return running[:, list(self.exits)], running[:, -1] + self.head

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit, "embed": self.embed, "layers": list(self.layers), "head": self.head,
            "agents": list(self.agents), "exits": list(self.exits), "checks": list(self.checks),
            "cumulative": list(self.cumulative()),
        }

    @classmethod
    def from_dict(cls, data: Any) -> MacCosts:
        try:
            return cls(
                embed=float(data["embed"]), layers=tuple(map(float, data["layers"])), head=float(data["head"]),
                agents=tuple(map(float, data["agents"])), exits=tuple(map(int, data["exits"])),
                checks=tuple(map(float, data["checks"])), unit=str(data.get("unit", cls.unit)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed cost model ({exc!r})") from None
