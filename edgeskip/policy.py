"""What runs for an input: which layers may run, under which agent thresholds, and which exits fire.

A :class:`Policy` is small, frozen data; :func:`resolve` checks it against a bundle and
turns it into the :class:`Plan` the runtime's loop follows. Named policies:

* ``static``: every layer in the bundle runs (layers removed at export stay removed);
* ``agent``: each layer runs for an input when its agent's probability >= the threshold;
* ``e2cm``: every layer runs, and an input leaves at the first E²CM exit it is confident at;
* ``agent+e2cm``: both (an exit is checked only after a layer that ran);
* ``default``: the configuration ``edgeskip select`` wrote into the manifest for a budget;
* ``auto``: ``default`` when the bundle has one, else everything the bundle has (the default).

Any explicit configuration works too: ``Policy.config(layers=[0.5, None, ...], exits=[...])``
(a search's genes become one through :class:`edgeskip.search.Genome`); a threshold of ``None``
removes that layer, an exit threshold of 1.0 disables that exit (and its check). ``precisions``
(``Policy.config(..., precisions=["int8", "fp32", ...])``, one of :data:`PRECISIONS` or None per layer)
runs each layer in that precision where the bundle holds it (None: the backend's own); the Runtime
checks them against its backend.

Torch-free core: the runtime, the search and training share these types.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.manifest import PRECISIONS, Manifest
from edgeskip.errors import ConfigError
from edgeskip.rule import agent_cut, decision_free_segments

__all__ = ["POLICIES", "PRECISIONS", "Plan", "Policy", "SkipConfig", "resolve"]

POLICIES = ("auto", "default", "static", "agent", "e2cm", "agent+e2cm")


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


@dataclasses.dataclass(frozen=True)
class Policy:
    """Per-layer agent thresholds (``None`` entry: the layer never runs; ``layers=None``: no agents,
    every layer runs), per-exit E²CM thresholds (``exits=None``: no exits) and per-layer precisions
    (``precisions=None``, or a None entry: the backend's own precision)."""

    name: str
    layers: tuple[float | None, ...] | None = None
    exits: tuple[float, ...] | None = None
    precisions: tuple[str | None, ...] | None = None

    @classmethod
    def config(cls, layers: Sequence[float | None] | SkipConfig | None = None,
               exits: Sequence[float] | None = None, precisions: Sequence[str | None] | None = None) -> Policy:
        """An explicit configuration, e.g. a point of a Pareto front."""
        if isinstance(layers, SkipConfig):
            layers = layers.thresholds
        return cls("config", None if layers is None else tuple(layers), None if exits is None else tuple(exits),
                   None if precisions is None else tuple(precisions))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "layers": None if self.layers is None else list(self.layers),
                               "exits": None if self.exits is None else list(self.exits)}
        if self.precisions is not None:
            out["precisions"] = list(self.precisions)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A policy resolved against one bundle: what the runtime's loop does at each layer."""

    policy: Policy
    steps: tuple[tuple[int, float | None], ...]  # (layer, agent threshold or None = always runs)
    exits: Mapping[int, tuple[int, float]]  # layer -> (exit index, threshold < 1): enabled exits only
    layer_thresholds: tuple[float | None, ...]  # per layer, for the gate graph: None = never runs, 0.0 = always
    exit_thresholds: tuple[float, ...]  # per exit, 1.0 = disabled
    static: bool  # no decision to take: every layer of the bundle runs for every input, no exit is checked
    precisions: tuple[str | None, ...] = ()  # per layer (empty: none given): None = the backend's own

    @functools.cached_property
    def cuts(self) -> tuple[tuple[int, float | None], ...]:
        """The steps with each agent threshold as a cut on the logit: ``p >= t`` iff ``z >= log(t / (1 - t))``
        (``inf`` for t = 1, which the runtime decides on the float32 sigmoid as PyTorch does)."""
        return tuple((j, agent_cut(t)) for j, t in self.steps)

    @functools.cached_property
    def segments(self) -> tuple[tuple[int, ...], ...]:
        """Runs of consecutive layers that take no decision (:func:`~edgeskip.rule.decision_free_segments`):
        what a backend may run as one fused call."""
        return decision_free_segments(self.steps, self.exits)

    @functools.cached_property
    def static_row(self) -> npt.NDArray[np.bool_]:
        """(L,) the layers a static plan runs."""
        row = np.array([t is not None for t in self.layer_thresholds], bool)
        row.flags.writeable = False
        return row


def _named(name: str, manifest: Manifest) -> Policy:
    agents = manifest.agents is not None
    e2cm = manifest.e2cm is not None
    chosen = manifest.default_config
    if name == "default" and chosen is None:
        raise ConfigError("this bundle has no default configuration: choose one with 'edgeskip select --budget-ms MS'")
    if name in ("auto", "default") and chosen is not None:
        return Policy("default", chosen.thresholds, chosen.exit_thresholds, chosen.precisions)
    if name == "auto":
        name = "agent+e2cm" if agents and e2cm else "agent" if agents else "e2cm" if e2cm else "static"
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}, or pass a Policy")
    want_agents, want_e2cm = "agent" in name, "e2cm" in name
    if want_agents and not agents:
        raise ConfigError(f"policy {name!r} needs skip agents, and this bundle's model has none "
                          "(export a checkpoint trained with --agents)")
    if want_e2cm and not e2cm:
        raise ConfigError(f"policy {name!r} needs E²CM exits, and this bundle has none "
                          "(export with --e2cm DIR from 'edgeskip calibrate')")
    layers = manifest.agents.thresholds if want_agents and manifest.agents else None
    exits = manifest.e2cm.thresholds if want_e2cm and manifest.e2cm else None
    return Policy(name, layers, exits)


def resolve(policy: str | Policy | SkipConfig, manifest: Manifest) -> Plan:
    """Check ``policy`` against the bundle and build its :class:`Plan`; a mismatch is a ConfigError."""
    if isinstance(policy, str):
        policy = _named(policy, manifest)
    elif isinstance(policy, SkipConfig):
        policy = Policy.config(policy)
    elif not isinstance(policy, Policy):
        raise ConfigError(f"a policy is a name ({', '.join(POLICIES)}), a Policy or a SkipConfig; "
                          f"got {type(policy).__name__}")
    depth, removed = manifest.config.depth, set(manifest.removed)
    layer_t: list[float | None]
    steps: tuple[tuple[int, float | None], ...]
    if policy.layers is None:
        layer_t = [None if j in removed else 0.0 for j in range(depth)]
        steps = tuple((j, None) for j in range(depth) if j not in removed)
    else:
        if len(policy.layers) != depth:
            raise ConfigError(f"the policy gives {len(policy.layers)} layer threshold(s); the model has {depth} layers")
        layer_t = []
        for j, t in enumerate(policy.layers):
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                                  or not 0.0 <= t <= 1.0):
                raise ConfigError(f"threshold of layer {j} must be in [0, 1] or None (removed), got {t!r}")
            if j in removed and t is not None:
                raise ConfigError(f"layer {j} was removed at export and is not in the bundle: its threshold must be None")
            layer_t.append(None if t is None else float(t))
        if all(t is None for t in layer_t):
            raise ConfigError("the policy removes every layer: keep at least one")
        if manifest.agents is None and any(t not in (None, 0.0) for t in layer_t):
            raise ConfigError("agent thresholds above 0 need skip agents, and this bundle's model has none "
                              "(without agents a layer either runs, threshold 0, or is removed, None)")
        # a threshold of 0 always runs (a probability is >= 0): no agent needs to be asked
        steps = tuple((j, None if t == 0.0 else t) for j, t in enumerate(layer_t) if t is not None)
    exits: dict[int, tuple[int, float]] = {}
    exit_t: tuple[float, ...] = ()
    if manifest.e2cm is not None:
        layers_of_exits = list(manifest.e2cm.exits)
        exit_t = (1.0,) * len(layers_of_exits)
        if policy.exits is not None:
            if len(policy.exits) != len(layers_of_exits):
                raise ConfigError(f"the policy gives {len(policy.exits)} exit threshold(s); the bundle has "
                                  f"{len(layers_of_exits)} exits (after layers {layers_of_exits})")
            bad = [i for i, t in enumerate(policy.exits) if isinstance(t, bool) or not isinstance(t, (int, float))
                   or not math.isfinite(t) or not 0.0 <= t <= 1.0]
            if bad:
                raise ConfigError(f"exit threshold(s) {bad} must be in [0, 1] (1 disables the exit), "
                                  f"got {[policy.exits[i] for i in bad]}")
            exit_t = tuple(float(t) for t in policy.exits)
            exits = {layer: (i, t) for i, (layer, t) in enumerate(zip(layers_of_exits, exit_t, strict=True)) if t < 1.0}
    elif policy.exits is not None:
        raise ConfigError("exit thresholds need E²CM exits, and this bundle has none")
    static = not exits and all(t is None for _, t in steps) and len(steps) == depth - len(removed)
    return Plan(policy, steps, exits, tuple(layer_t), exit_t, static, _precisions(policy.precisions, depth))


def _precisions(precisions: Sequence[Any] | None, depth: int) -> tuple[str | None, ...]:
    """Per-layer precisions checked (names of :data:`PRECISIONS` or None); () for None or all None."""
    if precisions is None:
        return ()
    if isinstance(precisions, str) or len(precisions) != depth:
        raise ConfigError(f"the policy gives {1 if isinstance(precisions, str) else len(precisions)} layer "
                          f"precision(s); the model has {depth} layers")
    bad = [f"layer {j}: {p!r}" for j, p in enumerate(precisions) if p is not None and p not in PRECISIONS]
    if bad:
        raise ConfigError(f"unknown precision(s) {', '.join(bad)}; choose {', '.join(PRECISIONS)} or None")
    out = tuple(precisions)
    return () if all(p is None for p in out) else out
