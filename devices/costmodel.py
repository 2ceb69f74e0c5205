"""One additive latency and energy model of a bundle on a device, from its profile.

For a configuration and a set of images (what matters is how often each piece runs)::

    latency = embed + head x reach_head + sum_j (layer_j x (rate_j - warm_j) + warm_layer_j x warm_j)
              + sum_j agent_j x asked_j + sum_i check_i x checked_i + calls x per_call + fixed

``rate_j`` is the share of inputs that run layer j, ``warm_j`` the share that run it right after
it last ran (at batch 1: the input's first layer is j and the last layer any earlier input ran was
j too), when its weights are still in the caches (the profile's ``warm_NN``), ``asked_j`` the share whose agent is asked
(every input still in the network at a layer with an agent threshold above 0), ``checked_i``
the share checked at exit i, ``reach_head`` the share that reaches the head. The last two terms
are the runtime's own cost around the stages, measured by the profiler in context
(``per_call``: each backend call; ``fixed``: each runtime call), because a stage timed alone
in a tight loop runs with warm caches and leaves that cost out. Energy uses the same sum with
each entry's energy per call. Entries are keyed by :class:`CostKey`, written once and used by
the search and by ``select``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import ConfigError

__all__ = ["CostKey", "CostModel", "Prediction", "Usage", "usage_of", "warm_shares"]


@dataclasses.dataclass(frozen=True)
class CostKey:
    """One entry of the model: a piece (embed, layer, head, agent, exit), its index, a batch size."""

    piece: str
    index: int | None
    batch: int

    @classmethod
    def parse(cls, name: str, batch: int) -> CostKey:
        """From a profile's piece name: 'embed', 'head', 'layer_03', 'warm_03', 'agent_03', 'exit_01'."""
        if name in ("embed", "head"):
            return cls(name, None, batch)
        piece, _, index = name.partition("_")
        if piece not in ("layer", "warm", "agent", "exit") or not index.isdigit():
            raise ConfigError(f"unknown profile entry {name!r}")
        return cls(piece, int(index), batch)


@dataclasses.dataclass(frozen=True)
class Usage:
    """How often each piece runs, per input, for one configuration on one set of images."""

    layers: tuple[float, ...]  # per layer: share of inputs that ran it
    asked: tuple[float, ...]  # per layer: share of inputs whose agent was asked
    checked: tuple[float, ...]  # per exit: share of inputs checked there
    reach_head: float  # share of inputs the head classified
    warm: tuple[float, ...] = ()  # per layer: share of inputs that ran it right after it last ran

    @property
    def calls(self) -> float:
        """Backend calls per input: embed, the layers that ran, the head."""
        return 1.0 + sum(self.layers) + self.reach_head


def usage_of(executed: npt.NDArray[np.bool_], exit_layer: npt.NDArray[np.int64], cuts: Sequence[tuple[int, Any]],
             exits: Sequence[int], checked_exits: Sequence[int]) -> Usage:
    """The usage of a run: ``executed`` (N, L) with the inputs in the order they ran one at a time,
    ``exit_layer`` (N,), the plan's (layer, cut) steps (a cut of None: the layer runs without asking its
    agent), the exit layers of the bundle and those enabled in the plan."""
    n, depth = executed.shape
    if n == 0:
        raise ConfigError("usage needs at least one input")
    left = exit_layer >= 0
    still_in = [np.mean(~left | (exit_layer >= j)) for j in range(depth)]  # in the network when layer j comes
    asked = [0.0] * depth
    for j, cut in cuts:
        if cut is not None:
            asked[j] = float(still_in[j])
    enabled = set(checked_exits)
    checked = [float(executed[:, layer].mean()) if layer in enabled else 0.0 for layer in exits]
    return Usage(tuple(float(v) for v in executed.mean(axis=0)), tuple(asked), tuple(checked),
                 float(np.mean(~left)), warm_shares(executed))


def warm_shares(executed: npt.NDArray[np.bool_]) -> tuple[float, ...]:
    """Per layer, the share of inputs that ran it right after it last ran: an input's first layer is j
    and the last layer of the latest earlier input that ran any layer was j too (inputs one at a time)."""
    n, depth = executed.shape
    ran = np.flatnonzero(executed.any(axis=1))
    first = executed[ran].argmax(axis=1)
    last = depth - 1 - executed[ran, ::-1].argmax(axis=1)
    again = first[1:][first[1:] == last[:-1]]
    return tuple(float(v) / n for v in np.bincount(again, minlength=depth))


@dataclasses.dataclass(frozen=True)
class Prediction:
    latency_ms: float
    energy_mj: float


class CostModel:
    """Latency and energy entries of one bundle on one device, from ``edgeskip profile``."""

    def __init__(self, entries: Mapping[CostKey, tuple[float, float]], overhead: Mapping[int, tuple[float, float]],
                 depth: int, device: str, energy_source: str) -> None:
        self.entries = dict(entries)
        self.overhead = dict(overhead)  # batch -> (ms per backend call, ms per runtime call)
        self.depth = depth
        self.device = device
        self.energy_source = energy_source

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], depth: int) -> CostModel:
        entries: dict[CostKey, tuple[float, float]] = {}
        overhead: dict[int, tuple[float, float]] = {}
        for b, pieces in profile["batches"].items():
            batch = int(b)
            for name, t in pieces.items():
                entries[CostKey.parse(name, batch)] = (float(t["median_ms"]), float(t["energy_mj"]))
        for b, o in (profile.get("overhead") or {}).items():
            overhead[int(b)] = (float(o["per_call_ms"]), float(o["fixed_ms"]))
        return cls(entries, overhead, depth, str(profile.get("device")), str(profile.get("energy", {}).get("source")))

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({k.batch for k in self.entries})

    def _entry(self, piece: str, index: int | None, batch: int) -> tuple[float, float]:
        try:
            return self.entries[CostKey(piece, index, batch)]
        except KeyError:
            raise ConfigError(f"the profile has no {piece}{'' if index is None else f' {index}'} at batch {batch} "
                              f"(profiled batch sizes: {self.batch_sizes})") from None

    def predict(self, usage: Usage, batch: int = 1) -> Prediction:
        """Expected latency and energy per call of ``batch`` inputs (latency of the call, energy per call)."""
        if len(usage.layers) != self.depth:
            raise ConfigError(f"usage covers {len(usage.layers)} layers; the model has {self.depth}")
        terms = [(self._entry("embed", None, batch), 1.0), (self._entry("head", None, batch), usage.reach_head)]
        warm = usage.warm if batch == 1 and usage.warm else (0.0,) * self.depth
        for j, rate in enumerate(usage.layers):
            if rate:
                hot = warm[j] if CostKey("warm", j, batch) in self.entries else 0.0
                terms.append((self._entry("layer", j, batch), rate - hot))
                if hot:
                    terms.append((self._entry("warm", j, batch), hot))
            if usage.asked[j]:
                terms.append((self._entry("agent", j, batch), usage.asked[j]))
        for i, share in enumerate(usage.checked):
            if share:
                terms.append((self._entry("exit", i, batch), share))
        latency = sum(ms * w for (ms, _), w in terms)
        energy = sum(mj * w for (_, mj), w in terms)
        per_call, fixed = self.overhead.get(batch, (0.0, 0.0))
        return Prediction(latency + usage.calls * per_call + fixed, energy)
