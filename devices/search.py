"""``edgeskip search``: NSGA-II over a bundle's configurations, with the device's predicted cost.

Genome (:class:`Genome`): one gene per layer in the bundle (0 removes the layer, k >= 1 is the
agent threshold ``grid[k - 1]``; without agents a layer either runs or is removed) and, when the
bundle has E²CM exits, one gene per exit (0 disables it, k >= 1 is the exit threshold
``exit_grids[i][k - 1]``). Exit thresholds live on each exit's own scale (the top class-mean
probability; with the CLS feature and ten classes it stays near 0.1-0.3), so each exit's grid is
made from the calibration images: the thresholds at which a share ``exit_rates`` of them would
leave there on the static path, plus the bundle's calibrated threshold. Objectives, all minimised: ``1 - accuracy`` on the calibration images, and
the latency and energy the device's profile predicts for the configuration's usage (how often each
layer, agent and exit check runs on those images; :mod:`~edgeskip.devices.costmodel`).

Evaluation is exact and cached (:class:`PathCache`): an input's state after some layers is fully
determined by the set of layers that ran for it, so every (input, executed-layer set) state the
search reaches is computed once with the bundle's own stages and kept: the agents' logits for every
later layer, the head's logits and, after an exit's layer, the E²CM decision. A configuration then
only replays decisions over cached numbers; a layer runs only for states no earlier configuration
reached. Token tensors of states are kept in a bounded pool (least recently used go first) and
recomputed from the nearest kept ancestor when needed again. ``test_search_devices`` checks that the
cached evaluation equals a full run of the Runtime.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.agents.genes import DEFAULT_GRID
from edgeskip.bundle import Bundle, stage_name
from edgeskip.devices.costmodel import CostModel, usage_of
from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.runtimes.policy import Plan, Policy, resolve
from edgeskip.runtimes.runtime import Runtime, agent_runs

__all__ = ["DEFAULT_EXIT_RATES", "FORMAT", "SCHEMA_VERSION", "Evaluation", "Genome", "ParetoFront", "ParetoPoint",
           "PathCache", "SearchSettings", "exit_grid", "hypervolume", "load_front", "non_dominated", "pareto_path", "plot_front",
           "search_and_save", "search_bundle"]

log = logging.getLogger(__name__)

FORMAT = "edgeskip.pareto"
SCHEMA_VERSION = 1
DEFAULT_EXIT_RATES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
# Hypervolume reference in (error, latency / static, energy / static): a little beyond "every input
# wrong at the static model's cost", the same for every bundle and device so hypervolumes compare.
REFERENCE_POINT = (1.1, 1.1, 1.1)
_PINNED = np.iinfo(np.int64).max  # pool slots never dropped (the embed outputs)


class Genome:
    """Two-way map between integer genes and a :class:`Policy` of one bundle."""

    def __init__(self, bundle: Bundle, grid: Sequence[float] = DEFAULT_GRID,
                 exit_grids: Sequence[Sequence[float]] | None = None) -> None:
        m = bundle.manifest
        self.depth = m.config.depth
        self.layers = tuple(j for j in range(self.depth) if j not in m.removed)
        self.grid = tuple(float(t) for t in grid) if m.agents is not None else (0.0,)
        self.n_exits = len(m.e2cm["exits"]) if m.e2cm else 0
        grids = exit_grids if exit_grids is not None else [()] * self.n_exits
        if len(grids) != self.n_exits:
            raise ConfigError(f"need one threshold grid per exit ({self.n_exits}), got {len(grids)}")
        self.exit_grids = tuple(tuple(float(t) for t in g) for g in grids)
        for name, values in (("threshold grid", self.grid), *(("exit grid", g) for g in self.exit_grids)):
            if len(set(values)) != len(values) or any(not 0.0 <= v <= 1.0 for v in values):
                raise ConfigError(f"{name} must hold distinct values in [0, 1], got {values}")
        if not self.grid:
            raise ConfigError("the threshold grid is empty")

    @property
    def upper(self) -> list[int]:
        """The largest value of each gene."""
        return [len(self.grid)] * len(self.layers) + [len(g) for g in self.exit_grids]

    @property
    def size(self) -> int:
        return len(self.layers) + self.n_exits

    def policy(self, genes: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Policy:
        g = [int(v) for v in genes]
        if len(g) != self.size or any(not 0 <= v <= u for v, u in zip(g, self.upper, strict=True)):
            raise ConfigError(f"genes must be {self.size} integers within {self.upper}, got {g}")
        layers: list[float | None] = [None] * self.depth
        for j, v in zip(self.layers, g, strict=False):
            layers[j] = None if v == 0 else self.grid[v - 1]
        exits = [1.0 if v == 0 else grid[v - 1] for v, grid in zip(g[len(self.layers):], self.exit_grids, strict=True)]
        return Policy.config(layers, exits if self.n_exits else None)

    def genes_of(self, layers: Sequence[float | None] | None, exits: Sequence[float] | None) -> list[int] | None:
        """The genes of a configuration, or None when a threshold is off the grids."""
        genes = [_gene(0.0 if layers is None else layers[j], self.grid) for j in self.layers]
        genes += [_gene(None if t >= 1.0 else t, grid)
                  for t, grid in zip(exits if exits is not None else [1.0] * self.n_exits, self.exit_grids, strict=True)]
        return None if None in genes else genes  # type: ignore[return-value]


def _gene(t: float | None, grid: Sequence[float]) -> int | None:
    """0 for None (removed / disabled), k for ``grid[k - 1]``, None when ``t`` is off the grid."""
    if t is None:
        return 0
    return next((k + 1 for k, g in enumerate(grid) if math.isclose(g, t, abs_tol=1e-9)), None)


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """What a configuration does on the calibration images (as a Runtime run of them would)."""

    plan: Plan
    executed: npt.NDArray[np.bool_]  # (N, L)
    exit_layer: npt.NDArray[np.int64]  # (N,), -1 = head
    logits: npt.NDArray[np.float32]  # (N, C)
    accuracy: float


class PathCache:
    """Exact per-input network states keyed by the set of layers that ran (see the module docstring).

    ``x``: the prepared (normalised, NCHW float32) calibration images; ``pool_mb`` bounds the memory
    kept for token tensors; ``chunk`` is the batch size of the backend calls (vit9 on this 2-core machine:
    0.28 ms per image and layer in chunks of 32, 0.40 in chunks of 256, whose activations leave the caches).
    """

    def __init__(self, runtime: Runtime, x: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], *,
                 pool_mb: float = 4096.0, chunk: int = 32) -> None:
        if runtime.backend is None:
            raise ConfigError("the search runs the bundle's stages: open the Runtime with graph='stages'")
        if len(x) == 0 or len(x) != len(labels):
            raise ConfigError(f"need calibration images with one label each, got {len(x)} images, {len(labels)} labels")
        self.rt, self.be = runtime, runtime.backend
        self.n, self.depth, self.chunk = len(x), runtime.depth, chunk
        if self.depth > 40:
            raise ConfigError(f"the path cache keys states by a bit per layer: at most 40 layers, got {self.depth}")
        self.labels = np.asarray(labels, np.int64)
        self.last_layer = max(j for j in range(self.depth) if j not in runtime.manifest.removed)
        self.exit_of = {layer: i for i, layer in enumerate(runtime.e2cm.exits)} if runtime.e2cm is not None else {}
        self.layers_computed = 0  # image-layers run (what the cache costs)
        self.recomputed = 0  # of those, recomputations of tokens the pool had dropped
        self._keys = np.empty(0, np.int64)  # sorted state keys mask * N + input
        self._ids = np.empty(0, np.int64)  # the state id of each sorted key
        self._count = 0
        self._cap = 0
        c = runtime.num_classes
        self.z = np.empty((0, self.depth), np.float32)  # agent logit of every layer, per state
        self.logits = np.empty((0, c), np.float32)  # head logits, or the exit's -d/mu where one applies
        self.top = np.empty(0, np.float64)  # E²CM top probability at the exit after the state's last layer
        self.exit_logits = np.empty((0, c), np.float32)
        self.slot = np.empty(0, np.int64)  # token pool slot, -1 when dropped
        tokens = self._run("embed", x)
        self._token_shape = tokens.shape[1:]
        per_state = int(np.prod(self._token_shape)) * 4
        self.pool_size = max(int(pool_mb * 2**20 // per_state), 2 * self.n)
        self._pool = np.empty((self.pool_size, *self._token_shape), np.float32)
        self._owner = np.full(self.pool_size, -1, np.int64)
        self._used = np.zeros(self.pool_size, np.int64)
        self._tick = 0
        self._free = list(range(self.pool_size - 1, -1, -1))
        self._add(np.arange(self.n), np.zeros(self.n, np.int64), tokens, pin=True)

    # -- states ------------------------------------------------------------------------------

    def _run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = [self.be.run(stage, x[s:s + self.chunk]) for s in range(0, len(x), self.chunk)]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def lookup(self, inputs: npt.NDArray[np.int64], masks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """State ids of (input, executed-layer mask) pairs; -1 where not computed yet."""
        q = masks * self.n + inputs
        pos = np.searchsorted(self._keys, q)
        pos_c = np.minimum(pos, max(len(self._keys) - 1, 0))
        found = (pos < len(self._keys)) & (self._keys[pos_c] == q) if len(self._keys) else np.zeros(len(q), bool)
        return np.where(found, self._ids[pos_c] if len(self._keys) else -1, -1)

    def _grow(self, extra: int) -> None:
        need = self._count + extra
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 1024)
        for name in ("z", "logits", "top", "exit_logits", "slot"):
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), old.dtype)
            new[: self._count] = old[: self._count]
            setattr(self, name, new)
        self._cap = cap

    def _add(self, inputs: npt.NDArray[np.int64], masks: npt.NDArray[np.int64], tokens: npt.NDArray[np.float32],
             last: int | None = None, pin: bool = False, keep: bool = True) -> None:
        """New states (their tokens are the output of layer ``last``, or of embed): every small output now."""
        n = len(inputs)
        self._grow(n)
        ids = np.arange(self._count, self._count + n)
        agents = self.rt.agents
        if agents is not None:
            cls = tokens[:, 0]
            for j in range(self.depth):
                self.z[ids, j] = cls @ agents[0][j] + agents[1][j]  # as the Runtime computes it
        else:
            self.z[ids] = np.nan
        self.logits[ids] = self._run("head", tokens)
        self.top[ids] = np.nan
        if last is not None and last in self.exit_of and self.rt.e2cm is not None:
            from edgeskip.e2cm.means import exit_decisions

            d = np.concatenate([self.rt.e2cm.distances(self.exit_of[last], tokens[s:s + self.chunk])
                                for s in range(0, n, self.chunk)])
            self.top[ids] = exit_decisions(d)[0]
            self.exit_logits[ids] = (-d).astype(np.float32)
        self._count += n
        if keep:
            self._store(ids, tokens, pin)
        else:
            self.slot[ids] = -1
        keys = masks * self.n + inputs
        order = np.argsort(keys)
        pos = np.searchsorted(self._keys, keys[order])
        self._keys = np.insert(self._keys, pos, keys[order])
        self._ids = np.insert(self._ids, pos, ids[order])

    def _store(self, ids: npt.NDArray[np.int64], tokens: npt.NDArray[np.float32], pin: bool = False) -> None:
        if len(self._free) < len(ids):
            self._evict(len(ids) - len(self._free))
        slots = np.array([self._free.pop() for _ in range(len(ids))], np.int64)
        self._pool[slots] = tokens
        self._owner[slots] = ids
        self._tick += 1
        self._used[slots] = _PINNED if pin else self._tick
        self.slot[ids] = slots

    def _evict(self, at_least: int) -> None:
        """Drop the least recently used token tensors (at least a quarter of the pool at a time)."""
        held = np.flatnonzero((self._owner >= 0) & (self._used != _PINNED))
        if len(held) < at_least:
            raise EdgeskipError("the state pool is too small for one batch of states: raise pool_mb")
        k = min(max(at_least, self.pool_size // 4), len(held))
        victims = held[np.argpartition(self._used[held], k - 1)[:k]]
        self.slot[self._owner[victims]] = -1
        self._owner[victims] = -1
        self._free.extend(int(v) for v in victims)

    def _tokens(self, inputs: npt.NDArray[np.int64], masks: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Tokens of existing states, recomputing from the nearest kept ancestor those the pool dropped."""
        ids = self.lookup(inputs, masks)
        assert (ids >= 0).all(), "tokens asked for a state that was never computed"
        slots = self.slot[ids]
        have = slots >= 0
        self._tick += 1
        kept = slots[have]
        self._used[kept] = np.maximum(self._used[kept], self._tick)
        miss = np.flatnonzero(~have)
        if not miss.size:  # the usual case: one gather
            return self._pool.take(slots, axis=0)
        out = np.empty((len(ids), *self._token_shape), np.float32)
        out[have] = self._pool.take(kept, axis=0)
        if miss.size:
            m = masks[miss]
            last = _highest_bit(m)
            parent = self._tokens(inputs[miss], m & ~(np.int64(1) << last))
            for j in np.unique(last):
                rows = np.flatnonzero(last == j)
                out[miss[rows]] = self._run(stage_name(int(j)), parent[rows])
                self.layers_computed += len(rows)
                self.recomputed += len(rows)
            self._store(ids[miss], out[miss])
        return out

    def advance(self, inputs: npt.NDArray[np.int64], masks: npt.NDArray[np.int64], layer: int) -> npt.NDArray[np.int64]:
        """Run ``layer`` for states that ran none after it; returns the new states' ids."""
        child = masks | (np.int64(1) << layer)
        ids = self.lookup(inputs, child)
        new = np.flatnonzero(ids < 0)
        if new.size:
            tokens = self._run(stage_name(layer), self._tokens(inputs[new], masks[new]))
            self.layers_computed += len(new)
            # the bundle's last layer has no successor: its outputs' tokens are never needed again
            self._add(inputs[new], child[new], tokens, last=layer, keep=layer != self.last_layer)
            ids[new] = self.lookup(inputs[new], child[new])
        return ids

    @property
    def states(self) -> int:
        return self._count

    # -- configurations ----------------------------------------------------------------------

    def evaluate(self, policy: Policy) -> Evaluation:
        """Every calibration image through ``policy``, from cached states where they exist."""
        plan = resolve(policy, self.rt.manifest)
        n = self.n
        masks = np.zeros(n, np.int64)
        executed = np.zeros((n, self.depth), bool)
        exit_layer = np.full(n, -1, np.int64)
        logits = np.empty((n, self.rt.num_classes), np.float32)
        alive = np.arange(n)
        for j, cut in plan.cuts:
            if alive.size == 0:
                break
            if cut is None:
                run = alive
            else:
                run = alive[agent_runs(self.z[self.lookup(alive, masks[alive]), j], cut)]
            if run.size == 0:
                continue
            ids = self.advance(run, masks[run], j)
            masks[run] |= np.int64(1) << j
            executed[run, j] = True
            exit_here = plan.exits.get(j)
            if exit_here is not None:
                leave = self.top[ids] > exit_here[1]
                if leave.any():
                    gone = run[leave]
                    exit_layer[gone] = j
                    logits[gone] = self.exit_logits[ids[leave]]
                    keep = np.ones(n, bool)
                    keep[gone] = False
                    alive = alive[keep[alive]]
        if alive.size:
            logits[alive] = self.logits[self.lookup(alive, masks[alive])]
        accuracy = float(np.mean(logits.argmax(axis=1) == self.labels))
        return Evaluation(plan, executed, exit_layer, logits, accuracy)


def exit_grid(cache: PathCache, layer: int, rates: Sequence[float], calibrated: float) -> tuple[float, ...]:
    """Thresholds at which about ``rates`` of the calibration images leave at the exit after ``layer`` on
    the static path (they leave when their top probability is above it), and the calibrated one."""
    ids = cache.lookup(np.arange(cache.n), np.full(cache.n, (1 << (layer + 1)) - 1, np.int64))
    if (ids < 0).any():
        raise ConfigError("evaluate the static configuration before building exit grids")
    top = cache.top[ids]
    values = {round(float(np.quantile(top, 1.0 - r)), 6) for r in rates}
    if calibrated < 1.0:
        values.add(float(calibrated))
    return tuple(sorted(v for v in values if 0.0 <= v < 1.0))


def _highest_bit(m: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index of the highest set bit of positive integers (exact below 2**52)."""
    return np.floor(np.log2(m.astype(np.float64))).astype(np.int64)


# -- the search -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    pop_size: int = 25
    generations: int = 30
    batch: int = 1  # the batch size latency and energy are predicted at
    grid: tuple[float, ...] = DEFAULT_GRID
    exit_rates: tuple[float, ...] = DEFAULT_EXIT_RATES  # each exit's grid: where these shares of images leave
    crossover_prob: float = 0.9
    mutation_prob: float = 0.3
    seed: int = 0
    pool_mb: float = 4096.0

    def __post_init__(self) -> None:
        if self.pop_size < 4 or self.generations < 1:
            raise ConfigError(f"need a population of at least 4 and at least 1 generation, got {self.pop_size} x "
                              f"{self.generations}")
        if any(not 0.0 < r < 1.0 for r in self.exit_rates):
            raise ConfigError(f"exit rates are shares of images in (0, 1), got {self.exit_rates}")
        if not 0.0 <= self.crossover_prob <= 1.0 or not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError("crossover and mutation probabilities must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ParetoPoint:
    genes: tuple[int, ...]
    thresholds: tuple[float | None, ...]  # per layer: agent threshold, 0 = always runs, None = removed
    exit_thresholds: tuple[float, ...] | None  # per exit, 1.0 = disabled; None: the bundle has no exits
    accuracy: float
    latency_ms: float
    energy_mj: float
    executed_layers: float  # mean per input
    exit_rate: float  # share of inputs that left at an exit

    @property
    def policy(self) -> Policy:
        return Policy.config(self.thresholds, self.exit_thresholds)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["genes"], d["thresholds"] = list(self.genes), list(self.thresholds)
        d["exit_thresholds"] = None if self.exit_thresholds is None else list(self.exit_thresholds)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParetoPoint:
        ex = data["exit_thresholds"]
        return cls(tuple(int(g) for g in data["genes"]), tuple(None if t is None else float(t) for t in data["thresholds"]),
                   None if ex is None else tuple(float(t) for t in ex), float(data["accuracy"]),
                   float(data["latency_ms"]), float(data["energy_mj"]), float(data["executed_layers"]),
                   float(data["exit_rate"]))


@dataclasses.dataclass(frozen=True)
class ParetoFront:
    """The non-dominated configurations of one bundle on one device, sorted by predicted latency."""

    points: tuple[ParetoPoint, ...]
    static: ParetoPoint  # every layer, no exit: the reference the plot marks
    device: str
    fingerprint: str  # the bundle's manifest fingerprint
    batch: int
    energy_source: str
    hypervolume: float
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # images, evaluations, seconds, settings, ...

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "device": self.device,
                "bundle": {"fingerprint": self.fingerprint}, "batch": self.batch, "energy_source": self.energy_source,
                "objectives": ["1 - accuracy", "latency_ms", "energy_mj"], "hypervolume": self.hypervolume,
                "hypervolume_reference_point": {"error": REFERENCE_POINT[0], "latency / static": REFERENCE_POINT[1],
                                                "energy / static": REFERENCE_POINT[2]},
                **dict(self.meta), "static": self.static.to_dict(), "points": [p.to_dict() for p in self.points]}

    def save(self, path: str | Path) -> Path:
        from edgeskip.fsutil import atomic_write_json

        atomic_write_json(path, self.to_dict())
        return Path(path)


class FrontError(EdgeskipError):
    """A Pareto front is missing, unreadable, of another bundle or device, or of an unknown schema."""


def pareto_path(bundle: Bundle | str | Path, device: str) -> Path:
    root = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    return root / "pareto" / f"{device}.json"


def load_front(path: str | Path, bundle: Bundle | None = None, device: str | None = None) -> ParetoFront:
    """Read and check ``pareto/<device>.json`` (schema; bundle and device when given)."""
    from edgeskip.devices.profiler import read_record

    data = read_record(path, FORMAT, SCHEMA_VERSION, FrontError, "Pareto front", "search", bundle, device)
    try:
        points = tuple(ParetoPoint.from_dict(p) for p in data["points"])
        static = ParetoPoint.from_dict(data["static"])
        meta = {k: v for k, v in data.items() if k not in {
            "format", "schema_version", "device", "bundle", "batch", "energy_source", "hypervolume",
            "static", "points", "objectives", "hypervolume_reference_point"}}
        front = ParetoFront(points, static, str(data["device"]), str(data["bundle"]["fingerprint"]), int(data["batch"]),
                            str(data["energy_source"]), float(data["hypervolume"]), meta)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise FrontError(f"{path}: malformed Pareto front ({type(exc).__name__}: {exc})") from None
    if not points:
        raise FrontError(f"{path} holds no configurations")
    if any(not all(map(math.isfinite, (p.accuracy, p.latency_ms, p.energy_mj))) for p in (*points, static)):
        raise FrontError(f"{path}: malformed Pareto front (accuracy, latency and energy must be finite numbers)")
    return front


def non_dominated(F: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Indices of the rows of ``F`` (minimised objectives) no other row dominates."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    return np.asarray(NonDominatedSorting().do(np.asarray(F, np.float64), only_non_dominated_front=True), np.int64)


def hypervolume(F: npt.NDArray[np.float64]) -> float:
    """Hypervolume of normalised objectives (error, latency / static, energy / static)."""
    from pymoo.indicators.hv import HV

    F = np.atleast_2d(np.asarray(F, np.float64))
    return float(HV(ref_point=np.asarray(REFERENCE_POINT[: F.shape[1]]))(F))


def search_bundle(bundle_dir: str | Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], profile:
                  Mapping[str, Any], settings: SearchSettings | None = None, *,
                  progress: Callable[[int, int], None] | None = None) -> ParetoFront:
    """NSGA-II (pymoo) over the bundle's genes on ``images``, costs predicted from ``profile``."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.callback import Callback
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    from edgeskip.agents.operators import (
        KeepOneLayer,
        OnePointCrossover,
        ReplaceGeneMutation,
        SeededSampling,
    )
    from edgeskip.runtimes.inputs import prepare

    settings = settings or SearchSettings()
    generations = settings.generations
    start = time.perf_counter()
    rt = Runtime(bundle_dir, policy="static", whole_static=False)
    m = rt.manifest
    model = CostModel.from_profile(profile, m.config.depth)
    if settings.batch not in model.batch_sizes:
        raise ConfigError(f"the profile has no measurements at batch {settings.batch} (it has {model.batch_sizes}): "
                          f"profile with --batch-sizes {settings.batch}")
    if len(images) == 0:
        raise ConfigError("no calibration images: the search measures accuracy on them")
    cache = PathCache(rt, prepare(images, rt.input_spec), labels, pool_mb=settings.pool_mb)
    exits = list(m.e2cm["exits"]) if m.e2cm else []
    cache.evaluate(Policy("static"))  # every exit's state on the static path, for the exit grids
    genome = Genome(rt.bundle, settings.grid, [
        exit_grid(cache, layer, settings.exit_rates, m.e2cm["thresholds"][i] if m.e2cm else 1.0)
        for i, layer in enumerate(exits)])
    evaluated: dict[tuple[int, ...], ParetoPoint] = {}

    def point(genes: Sequence[int]) -> ParetoPoint:
        key = tuple(int(g) for g in genes)
        if key not in evaluated:
            policy = genome.policy(key)
            ev = cache.evaluate(policy)
            usage = usage_of(ev.executed, ev.exit_layer, ev.plan.cuts, exits, list(ev.plan.exits))
            pred = model.predict(usage, settings.batch)
            evaluated[key] = ParetoPoint(key, ev.plan.layer_thresholds, policy.exits, ev.accuracy, pred.latency_ms,
                                         pred.energy_mj, float(ev.executed.sum(axis=1).mean()),
                                         float(np.mean(ev.exit_layer >= 0)))
        return evaluated[key]

    static_genes = genome.genes_of(None, None)
    assert static_genes is not None
    static = point(static_genes)
    scale = np.array([1.0, static.latency_ms, static.energy_mj if static.energy_mj > 0 else 1.0])

    def objectives(p: ParetoPoint) -> list[float]:
        return [1.0 - p.accuracy, p.latency_ms / scale[1], p.energy_mj / scale[2]]

    class _Problem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=genome.size, n_obj=3, xl=0, xu=np.asarray(genome.upper), vtype=int)

        def _evaluate(self, X: npt.NDArray[Any], out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            out["F"] = np.asarray([objectives(point(x)) for x in np.asarray(X, np.int64)])

    class _Progress(Callback):
        def notify(self, algorithm: Any) -> None:
            if progress is not None:
                progress(int(algorithm.n_gen), generations)

    seeds = [static_genes]
    default = genome.genes_of(m.agents["thresholds"] if m.agents else None, m.e2cm["thresholds"] if m.e2cm else None)
    half = genome.genes_of([0.5 if j in genome.layers else None for j in range(genome.depth)], None) \
        if 0.5 in genome.grid else None
    seeds += [g for g in (default, half) if g is not None and g not in seeds]
    algorithm = NSGA2(pop_size=settings.pop_size, sampling=SeededSampling(genome.upper, seeds),
                      crossover=OnePointCrossover(settings.crossover_prob),
                      mutation=ReplaceGeneMutation(genome.upper, settings.mutation_prob),
                      repair=KeepOneLayer(len(genome.layers)), eliminate_duplicates=True)
    minimize(_Problem(), algorithm, ("n_gen", settings.generations), seed=settings.seed, callback=_Progress(),
             verbose=False)

    # The front over every configuration evaluated (an archive: NSGA-II's last population can lose points).
    points = list(evaluated.values())
    F = np.asarray([objectives(p) for p in points])
    unique: dict[tuple[float, ...], ParetoPoint] = {}
    for i in sorted(non_dominated(F).tolist(), key=lambda i: points[i].genes):
        unique.setdefault(tuple(F[i]), points[i])  # equal objectives from different genes: one point
    front = sorted(unique.values(), key=lambda p: (p.latency_ms, -p.accuracy))
    seconds = time.perf_counter() - start
    meta = {"model": m.model_name, "images": cache.n, "evaluations": len(evaluated), "seconds": seconds,
            "states": cache.states, "layers_computed": cache.layers_computed, "recomputed": cache.recomputed,
            "settings": {**dataclasses.asdict(settings), "grid": list(genome.grid),
                         "exit_grids": [list(g) for g in genome.exit_grids]},
            "backend": rt.backend_info.get("backend"), "profile_created_utc": profile.get("created_utc"),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rt.close()
    return ParetoFront(tuple(front), static, str(profile.get("device")), m.fingerprint, settings.batch,
                       model.energy_source, hypervolume(np.asarray([objectives(p) for p in front])), meta)


def search_and_save(bundle_dir: str | Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                    profile: Mapping[str, Any], settings: SearchSettings, *, calibration: str,
                    out: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[ParetoFront, Path, Path]:
    """:func:`search_bundle`, then the front (with where its images came from) saved to ``out`` (default
    ``pareto/<device>.json`` beside the bundle's files) and its picture beside it; (front, json, png)."""
    front = search_bundle(bundle_dir, images, labels, profile, settings, progress=progress)
    front = dataclasses.replace(front, meta={**front.meta, "calibration": calibration})
    path = Path(out) if out else pareto_path(bundle_dir, front.device)
    front.save(path)
    png = plot_front(front, path.with_suffix(".png"), f"{front.meta['model']} on {front.device}: Pareto front")
    return front, path, png


def plot_front(front: ParetoFront, out: str | Path, title: str) -> Path:
    """Accuracy against predicted latency and energy: the front, the static model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    estimate = " (estimate)" if front.energy_source == "estimate" else ""
    for ax, key, label in ((axes[0], "latency_ms", f"predicted latency per call, batch {front.batch} (ms)"),
                           (axes[1], "energy_mj", f"predicted energy per call (mJ){estimate}")):
        pts = sorted(front.points, key=lambda p: getattr(p, key))
        xs, ys = [getattr(p, key) for p in pts], [p.accuracy for p in pts]
        ax.step(xs, np.maximum.accumulate(ys), where="post", color="tab:blue", alpha=0.4)
        ax.scatter(xs, ys, color="tab:blue", zorder=3, label=f"Pareto set ({len(pts)} configurations)")
        ax.scatter([getattr(front.static, key)], [front.static.accuracy], marker="*", s=180, color="tab:red",
                   zorder=4, label="static model (every layer)")
        ax.set(xlabel=label, ylabel="accuracy (calibration images)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{title}\nhypervolume {front.hypervolume:.3f}, {front.meta.get('images')} images, "
                 f"{front.meta.get('evaluations')} configurations evaluated")
    return save_figure(fig, out)
