"""What a configuration costs: one additive model over how often each piece runs (torch-free).

:func:`usage_of` turns a run (which layers each input ran, where it left) into a :class:`Usage`; a
cost turns a usage into figures. Two costs plug into every search (:class:`Cost`):

* :class:`MacsCost`: multiply-accumulates as a share of the static model (the thesis objective; the
  per-stage counts are :class:`edgeskip.e2cm.MacCosts`), needing nothing but the model's shape;
* :class:`ProfileCost`: latency and energy on a device, from its ``edgeskip profile`` (:class:`ProfileCosts`).

The latency and energy model of a bundle on a device, from its profile:

For a configuration and a set of images (what matters is how often each piece runs)::

    latency = embed + head x reach_head + sum_j sum_d layer_j(d) x reuse_j[d]
              + sum_j (agent_j x asked_after_layer_j + agent_j(0) x asked_after_skip_j)
              + sum_i check_i x checked_i + calls x per_call + fixed

``reuse_j[d]`` is the share of inputs that run layer j with ``d`` other layers run since its own
previous run (inputs one at a time, in order; a first run counts as every other layer), and
``layer_j(d)`` its time at that reuse distance, interpolated between the profile's ``layer_NN@d``
entries and ``layer_NN`` (a static pass: every other layer in between): with few distinct layers
in use their weights stay in the caches. With ``reuse=False`` every layer run costs its static-pass
time instead; that was the default until the profile timed static in blocks and every session shared one
memory arena, after which the reuse terms predicted better (:meth:`ProfileCosts.from_profile`).
``asked_*_j`` is the share whose agent j is asked (every input still in the network at a layer with an agent threshold above 0) right after a layer ran,
or after a skip (``agent_NN@0``: no layer has just flushed the caches), ``checked_i`` the share
checked at exit i, ``reach_head`` the share that reaches the head. The last two terms
are the runtime's own cost around the stages, measured by the profiler in context
(``per_call``: each backend call; ``fixed``: each runtime call), because a stage timed alone
in a tight loop runs with warm caches and leaves that cost out. ``calls`` counts backend calls: a
decision-free segment (:func:`edgeskip.rule.decision_free_segments`) is one call where the profiled
backend fuses (``"fuses"`` in its info), so it saves ``len - 1`` calls for each input that reaches it.
That is the per-stage loop's latency; the same stage terms price the other execution paths
(:meth:`ProfileCosts.paths`): the gate graph (batch 1, one backend call per input, its decisions
inside the graph) adds its own profiled terms per layer run, per exit check and per call instead of
the host's agents, checks and dispatch; a static plan runs the monolithic model, timed as one whole
Runtime call (the profile's ``static`` piece). A configuration is predicted on its fastest path
(another than the loop only beyond :data:`PATH_MARGIN`), which the front records and the Runtime
follows. Energy uses the same sum with each entry's energy per call. Entries are keyed by
:class:`CostKey`, written once and used by the search and by ``select``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgeskip.e2cm.costs import MacCosts
from edgeskip.errors import ConfigError
from edgeskip.manifest import PRECISIONS
from edgeskip.profile import STATIC, Profile, at_distance
from edgeskip.rule import decision_free_segments

__all__ = ["PATH_MARGIN", "Cost", "CostKey", "MacsCost", "Prediction", "ProfileCost", "ProfileCosts", "Usage",
           "reuse_shares", "usage_of"]

log = logging.getLogger(__name__)

# The gate fit's fixed cost may fall below zero by this share of its every-layer call (timing noise) before its
# three timings count as disagreeing (measured: -0.0 on the quickstart's model, +0.036 ms on vit9; -29% on a
# DeiT-tiny profiled while another process ran, whose fit predicted 0 ms for two-layer configurations).
GATE_FIT_SLACK = 0.10


@dataclasses.dataclass(frozen=True)
class CostKey:
    """One entry of the model: a piece (embed, layer, head, agent, exit), its index, a batch size and,
    for layers and agents, the reuse distance it was timed at (None: in a static pass)."""

    piece: str
    index: int | None
    batch: int
    distance: int | None = None
    precision: str | None = None  # a layer in another precision than the profiled backend's own (static pass)

    @classmethod
    def parse(cls, name: str, batch: int) -> CostKey:
        """From a profile's piece name: 'embed', 'head', 'layer_03', 'layer_03@1', 'layer_03:fp32', 'agent_03',
        'agent_03@0', 'exit_01'."""
        if name in ("embed", "head", STATIC):
            return cls(name, None, batch)
        stem, colon, precision = name.partition(":")
        base, at, distance = stem.partition("@")
        piece, _, index = base.partition("_")
        if piece not in ("layer", "agent", "exit") or not index.isdigit() or (
                at and (piece == "exit" or not distance.isdigit())) or (
                colon and (piece != "layer" or at or precision not in PRECISIONS)):
            raise ConfigError(f"unknown profile entry {name!r}")
        return cls(piece, int(index), batch, int(distance) if at else None, precision or None)


@dataclasses.dataclass(frozen=True)
class Usage:
    """How often each piece runs, per input, for one configuration on one set of images."""

    layers: tuple[float, ...]  # per layer: share of inputs that ran it
    asked: tuple[float, ...]  # per layer: share of inputs whose agent was asked
    checked: tuple[float, ...]  # per exit: share of inputs checked there
    reach_head: float  # share of inputs the head classified
    reuse: tuple[tuple[float, ...], ...] = ()  # per layer, per reuse distance d: share of inputs (sums to layers[j])
    asked_after_skip: tuple[float, ...] = ()  # per layer: share of ``asked`` with no layer run since the last ask
    static: bool = False  # the plan takes no decision: the Runtime runs the monolithic model in one call
    fused_calls: float = 0.0  # backend calls per input saved by fused decision-free segments (where a backend fuses)
    precisions: tuple[str | None, ...] = ()  # per layer (empty: none given): None = the backend's own

    def backend_calls(self, fuses: bool) -> float:
        """Backend calls per input: embed, the layers that ran, the head; less what fusing saves when ``fuses``."""
        return self.calls - (self.fused_calls if fuses else 0.0)

    @property
    def calls(self) -> float:
        """Backend calls per input: embed, the layers that ran, the head."""
        return 1.0 + sum(self.layers) + self.reach_head


def usage_of(executed: npt.NDArray[np.bool_], exit_layer: npt.NDArray[np.int64], steps: Sequence[tuple[int, Any]],
             exits: Sequence[int], checked_exits: Sequence[int], *, static: bool = False,
             precisions: Sequence[str | None] = ()) -> Usage:
    """The usage of a run: ``executed`` (N, L) with the inputs in the order they ran one at a time,
    ``exit_layer`` (N,), the plan's (layer, threshold or cut) steps (None: the layer runs without asking its
    agent), the exit layers of the model and those enabled in the plan; ``static``: the plan is static
    (:attr:`edgeskip.policy.Plan.static`), which the Runtime runs as the monolithic model; ``precisions``: the
    plan's per-layer precisions (:attr:`edgeskip.policy.Plan.precisions`)."""
    n, depth = executed.shape
    if n == 0:
        raise ConfigError("usage needs at least one input")
    left = exit_layer >= 0
    present = ~left[:, None] | (exit_layer[:, None] >= np.arange(depth))  # (N, L): still in when layer j comes
    still_in = present.mean(axis=0)
    asked = [0.0] * depth
    after_skip = [0.0] * depth
    steps = list(steps)
    for k, (j, cut) in enumerate(steps):
        if cut is not None:
            asked[j] = float(still_in[j])
            if k > 0:  # asked with no layer run since the previous ask (the first step follows embed, a stage call)
                after_skip[j] = float(np.mean(present[:, j] & ~executed[:, steps[k - 1][0]]))
    enabled = set(checked_exits)
    checked = [float(executed[:, layer].mean()) if layer in enabled else 0.0 for layer in exits]
    rates = executed.mean(axis=0)
    # whoever reaches a decision-free segment runs all of it: one call instead of len(segment)
    fused = sum((len(seg) - 1) * float(rates[seg[0]]) for seg in decision_free_segments(steps, enabled))
    return Usage(tuple(float(v) for v in rates), tuple(asked), tuple(checked),
                 float(np.mean(~left)), reuse_shares(executed), tuple(after_skip), static, fused, tuple(precisions))


def reuse_shares(executed: npt.NDArray[np.bool_]) -> tuple[tuple[float, ...], ...]:
    """Per layer j and distance d, the share of inputs that ran j with ``d`` distinct other layers run since
    j last ran (inputs one at a time in row order, layers in order; a first run counts as d = L - 1)."""
    n, depth = executed.shape
    _, stream = np.nonzero(executed)  # the layers in the order they ran
    seen = np.zeros((len(stream) + 1, depth), np.int32)
    seen[np.arange(1, len(stream) + 1), stream] = 1
    np.cumsum(seen, axis=0, out=seen)  # seen[t]: runs of each layer among the first t
    out = np.zeros((depth, depth))
    for j in range(depth):
        pos = np.flatnonzero(stream == j)
        if pos.size == 0:
            continue
        between = seen[pos[1:]] - seen[pos[:-1] + 1]  # runs of each layer strictly between two runs of j
        d = np.count_nonzero(between, axis=1)
        out[j] = np.bincount(d, minlength=depth)[:depth]
        out[j, depth - 1] += 1  # the first run
    return tuple(tuple(float(v) / n for v in row) for row in out)


# Another path is chosen over the per-stage loop only when predicted at least this much faster: the error of the
# difference between two paths' predictions. On the zoo vit9 (2-core VM) the gate graph and the loop measured within
# 2-5% of each other (predictor_bench, 23 configurations on both paths), and choosing the faster prediction outright
# picked the slower path for 48% of them (1.7% slower on average than always taking the loop, 11.6% at worst); with
# a 5% margin the search still chose the gate graph for 4 of 65 points, which edgeskip bench --front measured 4-17%
# slower than predicted while the loop points beside them were within 5%.
PATH_MARGIN = 0.15


@dataclasses.dataclass(frozen=True)
class Prediction:
    latency_ms: float
    energy_mj: float
    path: str = "stages"  # the execution path it is predicted for (edgeskip.manifest.PATHS)
    memory_mib: float | None = None  # that path's resident memory at this batch, where the profile measured it


class ProfileCosts:
    """Latency and energy entries of one bundle on one device, from ``edgeskip profile``."""

    def __init__(self, entries: Mapping[CostKey, tuple[float, float]], overhead: Mapping[int, tuple[float, float]],
                 depth: int, device: str, energy_source: str, fuses: bool = False, reuse: bool = True,
                 gate: Mapping[int, tuple[float, float, float]] | None = None,
                 memory: Mapping[int, Mapping[str, float]] | None = None, precision: str = "fp32") -> None:
        self.entries = dict(entries)
        self.overhead = dict(overhead)  # batch -> (ms per backend call, ms per runtime call)
        self.gate = dict(gate or {})  # batch -> the gate graph's (ms per layer run, per exit check, per call)
        self.memory = dict(memory or {})  # batch -> path -> resident MiB
        self.depth = depth
        self.device = device
        self.energy_source = energy_source
        self.fuses = fuses  # the profiled backend runs decision-free segments as one call
        self.reuse = reuse  # price layers by reuse distance (the profile's layer_NN@d entries); see from_profile
        self.precision = precision  # the profiled backend's own (its layer_NN entries); others are layer_NN:<p>

    @classmethod
    def from_profile(cls, profile: Profile, depth: int, *, reuse: bool = True) -> ProfileCosts:
        """The entries of ``edgeskip profile``: trimmed means (expected times add up, medians do not).

        ``reuse``: price each layer run by its reuse distance (``layer_NN@d``, timed in a tight cycle of
        ``d + 1`` layers), else at its static-pass time. Chosen by ``python benchmarks/predictor_bench.py``
        (24 configurations, ratios to static in one interleaved run; it prints both), median |error|:
        zoo vit9 2.3-7.0% with reuse terms against 5.7-26% without, in six runs; the quickstart's digits
        model 1.7-10.9% against 9.7-23%, in two. (With static timed once per pass and an arena per session,
        the reuse terms had been the worse: 6.3% against 3.8% on vit9.)"""
        entries = {CostKey.parse(name, int(b)): (t.mean_ms, t.energy_mj)
                   for b, pieces in profile.batches.items() for name, t in pieces.items()}
        overhead = {int(b): (o.per_call_ms, o.fixed_ms) for b, o in profile.overhead.items()}
        gate = {}
        for b, g in profile.gate.items():
            if g.fixed_ms < -GATE_FIT_SLACK * g.all_ms:  # a call's own cost (inputs, agents, Ifs) is not negative
                log.warning("the gate graph's timings at batch %s do not fit together (a fixed cost of %.3f ms per "
                            "call: the machine's speed changed while it was profiled); the gate path is left out of "
                            "the predictions: profile again on a quiet machine", b, g.fixed_ms)
                continue
            gate[int(b)] = (g.per_layer_ms, g.per_exit_ms, g.fixed_ms)
        memory = {int(b): dict(paths) for b, paths in profile.memory.paths.items()}
        return cls(entries, overhead, depth, profile.device, profile.energy_source,
                   fuses=profile.backend.get("fuses") is True, reuse=reuse, gate=gate, memory=memory,
                   precision=str(profile.backend.get("precision", "fp32")))

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({k.batch for k in self.entries})

    def _entry(self, piece: str, index: int | None, batch: int) -> tuple[float, float]:
        try:
            return self.entries[CostKey(piece, index, batch)]
        except KeyError:
            raise ConfigError(f"the profile has no {piece}{'' if index is None else f' {index}'} at batch {batch} "
                              f"(profiled batch sizes: {self.batch_sizes})") from None

    def _layer_terms(self, j: int, rate: float, reuse: Sequence[float] | None, batch: int,
                     precision: str | None = None) -> list[tuple[tuple[float, float], float]]:
        """Layer j's (latency, energy) terms: by reuse distance where the profile and the usage have it (at
        batch 1), linear between the measured distances; else its static-pass entry for every run. In another
        ``precision`` than the profiled backend's own, its static pass in that precision (``layer_NN:int8``) with
        the own precision's reuse curve scaled to it (the profile times reuse distances in the own precision only)."""
        own = self._entry("layer", j, batch)
        static = own if precision is None else self._layer_in(j, batch, precision)
        measured = [(k.distance, v) for k, v in self.entries.items()
                    if k.piece == "layer" and k.index == j and k.batch == batch and k.distance is not None]
        if not self.reuse or reuse is None or not measured:
            return [(static, rate)]
        d, w = np.arange(len(reuse)), np.asarray(reuse)
        scale = [s / o if o > 0 else 1.0 for s, o in zip(static, own, strict=True)]
        ms = at_distance([(dist, v[0]) for dist, v in measured], own[0], self.depth, d) @ w * scale[0]
        mj = at_distance([(dist, v[1]) for dist, v in measured], own[1], self.depth, d) @ w * scale[1]
        return [((float(ms) / rate, float(mj) / rate), rate)]

    def _layer_in(self, j: int, batch: int, precision: str) -> tuple[float, float]:
        try:
            return self.entries[CostKey("layer", j, batch, precision=precision)]
        except KeyError:
            held = sorted({k.precision for k in self.entries if k.precision is not None})
            raise ConfigError(f"the profile has no layer {j} in {precision} at batch {batch} (it timed the layers in "
                              f"{', '.join([self.precision, *held])}): profile the bundle again") from None

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions the profile timed every layer in, the backend's own first."""
        def layers(precision: str | None) -> set[int | None]:
            return {k.index for k in self.entries if k.piece == "layer" and k.precision == precision}

        other = sorted({k.precision for k in self.entries if k.precision is not None})
        return (self.precision, *(p for p in other if layers(p) >= layers(None)))

    def predict(self, usage: Usage, batch: int = 1, path: str | None = None) -> Prediction:
        """Expected latency and energy per call of ``batch`` inputs (latency of the call, energy per call) on
        ``path``, or else on the path the Runtime should take (:meth:`paths`): the monolithic model for a static
        plan, else the fastest path where it is predicted at least :data:`PATH_MARGIN` faster than the per-stage
        loop, else the loop."""
        paths = self.paths(usage, batch)
        if path is None:  # a static plan on the monolithic model where profiled: timed whole, not a sum of terms
            if "monolithic" in paths:
                return paths["monolithic"]
            best = min(paths.values(), key=lambda p: p.latency_ms)
            return best if best.latency_ms < (1.0 - PATH_MARGIN) * paths["stages"].latency_ms else paths["stages"]
        if path not in paths:
            raise ConfigError(f"the profile cannot predict path {path!r} for this configuration at batch {batch} "
                              f"(it can: {', '.join(paths)})")
        return paths[path]

    def paths(self, usage: Usage, batch: int = 1) -> dict[str, Prediction]:
        """The prediction on every execution path the profile measured that can run this usage at ``batch``: the
        monolithic model for a static plan (timed as one whole Runtime call), the gate graph (its own terms, see
        :class:`edgeskip.profile.GateCost`) and always the per-stage loop."""
        if len(usage.layers) != self.depth:
            raise ConfigError(f"usage covers {len(usage.layers)} layers; the model has {self.depth}")
        out = {}
        own = (None, self.precision)
        mixed = any(p not in own for p in usage.precisions)  # some layer in another precision: the stage loop only
        mib = self.memory.get(batch, {})
        whole = self.entries.get(CostKey(STATIC, None, batch))
        if usage.static and whole is not None and not mixed:  # one whole Runtime call, overheads included
            out["monolithic"] = Prediction(*whole, path="monolithic", memory_mib=mib.get("monolithic"))
        terms = [(self._entry("embed", None, batch), 1.0), (self._entry("head", None, batch), usage.reach_head)]
        for j, rate in enumerate(usage.layers):
            if rate:
                p = usage.precisions[j] if usage.precisions else None
                terms += self._layer_terms(j, rate, usage.reuse[j] if batch == 1 and usage.reuse else None, batch,
                                           None if p in own else p)
        for j, rate in enumerate(usage.layers):
            if usage.asked[j]:
                skip = usage.asked_after_skip[j] if usage.asked_after_skip else 0.0
                warm = CostKey("agent", j, batch, 0)
                if skip and warm in self.entries:
                    terms += [(self._entry("agent", j, batch), usage.asked[j] - skip), (self.entries[warm], skip)]
                else:
                    terms.append((self._entry("agent", j, batch), usage.asked[j]))
        for i, share in enumerate(usage.checked):
            if share:
                terms.append((self._entry("exit", i, batch), share))
        latency = sum(ms * w for (ms, _), w in terms)
        energy = sum(mj * w for (_, mj), w in terms)
        per_call, fixed = self.overhead.get(batch, (0.0, 0.0))
        out["stages"] = Prediction(latency + usage.backend_calls(self.fuses) * per_call + fixed, energy,
                                   memory_mib=mib.get("stages"))
        if batch in self.gate and not mixed:  # the graph decides inside: its agents and Ifs are in its fixed cost
            per_layer, per_exit, gate_fixed = self.gate[batch]
            # its terms were fitted against the stages' static-pass times, so they price its layers
            stages_ms = self._entry("embed", None, batch)[0] + self._entry("head", None, batch)[0] * usage.reach_head \
                + sum(self._entry("layer", j, batch)[0] * rate for j, rate in enumerate(usage.layers) if rate)
            out["gate"] = Prediction(max(stages_ms + per_layer * sum(usage.layers) + per_exit * sum(usage.checked)
                                         + gate_fixed, 0.0), energy, path="gate", memory_mib=mib.get("gate"))
        return out


class Cost(Protocol):
    """What a search minimises besides the error: figures of a usage (all minimised, normalised by the static
    model's in the search's objectives)."""

    kind: str  # "macs" or "profile": what the front records as its cost
    figures: tuple[str, ...]  # the ParetoPoint fields it fills, e.g. ("latency_ms", "energy_mj")

    def __call__(self, usage: Usage) -> dict[str, Any]:
        """The figures of one configuration's usage (and, for a device's costs, the ``path`` they are for)."""


class MacsCost:
    """Multiply-accumulates per input as a share of the static model: embed, the layers that ran, the agents asked,
    the exit checks made and the head where it was reached."""

    kind: str = "macs"
    figures: tuple[str, ...] = ("compute",)

    def __init__(self, costs: MacCosts) -> None:
        self.costs = costs

    def __call__(self, usage: Usage) -> dict[str, float]:
        c = self.costs
        if len(usage.layers) != c.depth or len(usage.checked) != len(c.exits):
            raise ConfigError(f"usage of {len(usage.layers)} layers and {len(usage.checked)} exits does not fit MACs "
                              f"costs of {c.depth} layers and {len(c.exits)} exits")
        total = c.embed + c.head * usage.reach_head + float(np.dot(usage.layers, c.layers)) \
            + float(np.dot(usage.asked, c.agents)) + float(np.dot(usage.checked, c.checks))
        return {"compute": total}


class ProfileCost:
    """Latency and energy per call at ``batch`` on the profiled device."""

    kind: str = "profile"
    figures: tuple[str, ...] = ("latency_ms", "energy_mj")

    def __init__(self, costs: ProfileCosts, batch: int = 1) -> None:
        if batch not in costs.batch_sizes:
            raise ConfigError(f"the profile has no measurements at batch {batch} (it has {costs.batch_sizes}): "
                              f"profile with --batch-sizes {batch}")
        self.costs, self.batch = costs, batch

    def __call__(self, usage: Usage) -> dict[str, Any]:
        p = self.costs.predict(usage, self.batch)
        return {"latency_ms": p.latency_ms, "energy_mj": p.energy_mj, "path": p.path, "memory_mib": p.memory_mib}
