"""The exact path cache: a bundle's own stages as the search's evaluator (numpy, torch-free).

An input's state after some layers is fully determined by the set of layers that ran for it and the
precision each ran in, so every (input, executed-layer set) state the search reaches is computed once
with the bundle's own stages and kept (a state's key holds a few bits per layer: 0 for a layer that
did not run, k + 1 for one that ran in the Runtime's ``precisions[k]``): the agents' logits for every later layer, the head's logits and, after an exit's
layer, the E²CM decision. A configuration then only replays the decision rule
(:func:`edgeskip.rule.route`) over cached numbers; a layer runs only for states no earlier
configuration reached. Token tensors of states are kept in a bounded pool (least recently used go
first) and recomputed from the nearest kept ancestor when needed again. ``tests`` check that the
cached evaluation equals a full run of the Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import stage_name
from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.policy import Policy, resolve
from edgeskip.rule import decision_input, exit_logits, exit_top, route
from edgeskip.runtimes.runtime import Runtime
from edgeskip.search.problem import Evaluation

__all__ = ["PathCache", "exit_grid"]

_PINNED = np.iinfo(np.int64).max  # pool slots never dropped (the embed outputs)


class PathCache:
    """Exact per-input network states keyed by the set of layers that ran (see the module docstring); an
    :class:`~edgeskip.search.problem.Evaluator`.

    ``x``: the prepared (normalised, NCHW float32) calibration images; ``pool_mb`` bounds the memory
    kept for token tensors; ``chunk`` is the batch size of the backend calls (vit9 on this 2-core machine:
    0.28 ms per image and layer in chunks of 32, 0.40 in chunks of 256, whose activations leave the caches);
    ``block``, how many new states of a layer are made and stored at a time (memory above the pool).
    """

    CHUNK = 32

    def __init__(self, runtime: Runtime, x: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], *,
                 pool_mb: float = 1024.0, chunk: int = CHUNK, block: int = 256) -> None:
        if runtime.backend is None:
            raise ConfigError("the search runs the bundle's stages: open the Runtime with graph='stages'")
        if len(x) == 0 or len(x) != len(labels):
            raise ConfigError(f"need calibration images with one label each, got {len(x)} images, {len(labels)} labels")
        self.rt, self.be = runtime, runtime.backend
        self.n, self.depth, self.chunk, self.block = len(x), runtime.depth, chunk, max(block, chunk)
        self.precisions = runtime.precisions  # what a layer can run in, the backend's own first
        self.bits = max(1, (len(self.precisions)).bit_length())  # per layer in a state's key
        if self.depth * self.bits > 40:
            raise ConfigError(f"the path cache keys states by {self.bits} bit(s) per layer: at most "
                              f"{40 // self.bits} layers, got {self.depth}")
        self._names: dict[tuple[int, int], str] = {}  # (layer, precision index) -> the backend's stage name
        self.labels = np.asarray(labels, np.int64)
        self.last_layer = max(j for j in range(self.depth) if j not in runtime.manifest.removed)
        self.exit_of = {layer: i for i, layer in enumerate(runtime.e2cm.exits)} if runtime.e2cm is not None else {}
        self.exit_layers = tuple(self.exit_of)
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

    def code(self, layer: int, precision: int = 0) -> int:
        """A state key's bits for ``layer`` run in ``precisions[precision]``."""
        return (precision + 1) << (self.bits * layer)

    def _stage(self, layer: int, precision: int) -> str:
        """The backend's name of ``layer`` in ``precisions[precision]``, its session loaded on first use."""
        key = (layer, precision)
        if key not in self._names:
            name = self.be.variant(stage_name(layer), self.precisions[precision])
            if name is None:
                raise ConfigError(f"the backend cannot run layer {layer} in {self.precisions[precision]}")
            self._names[key] = name
        return self._names[key]

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
            cls = decision_input(tokens, self.rt.manifest.config.decision_token)
            for j in range(self.depth):
                self.z[ids, j] = cls @ agents[0][j] + agents[1][j]  # as the Runtime computes it
        else:
            self.z[ids] = np.nan
        self.logits[ids] = self._run("head", tokens)
        self.top[ids] = np.nan
        if last is not None and last in self.exit_of and self.rt.e2cm is not None:
            d = np.concatenate([self.rt.e2cm.distances(self.exit_of[last], tokens[s:s + self.chunk])
                                for s in range(0, n, self.chunk)])
            self.top[ids] = exit_top(d)[0]
            self.exit_logits[ids] = exit_logits(d)
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
            last = _highest_bit(m) // self.bits
            shift = self.bits * last
            field = (m >> shift) & ((1 << self.bits) - 1)  # 1 + the precision the last layer ran in
            parent = self._tokens(inputs[miss], m & ~(((1 << self.bits) - 1) << shift))
            for j, k in {(int(a), int(b)) for a, b in zip(last, field, strict=True)}:
                rows = np.flatnonzero((last == j) & (field == k))
                out[miss[rows]] = self._run(self._stage(j, k - 1), parent[rows])
                self.layers_computed += len(rows)
                self.recomputed += len(rows)
            self._store(ids[miss], out[miss])
        return out

    def advance(self, inputs: npt.NDArray[np.int64], masks: npt.NDArray[np.int64], layer: int,
                precision: int = 0) -> npt.NDArray[np.int64]:
        """Run ``layer`` in ``precisions[precision]`` for states that ran none after it; the new states' ids."""
        child = masks | np.int64(self.code(layer, precision))
        ids = self.lookup(inputs, child)
        new = np.flatnonzero(ids < 0)
        # a block of states at a time: gathering, running and storing all of them at once (2,000 images at a
        # layer of vit9: 100 MB, three times over) had put 0.9 GB above the pool at the search's peak
        for start in range(0, new.size, self.block):
            part = new[start:start + self.block]
            tokens = self._run(self._stage(layer, precision), self._tokens(inputs[part], masks[part]))
            self.layers_computed += len(part)
            # the bundle's last layer has no successor: its outputs' tokens are never needed again
            self._add(inputs[part], child[part], tokens, last=layer, keep=layer != self.last_layer)
        if new.size:
            ids[new] = self.lookup(inputs[new], child[new])
        return ids

    @property
    def states(self) -> int:
        return self._count

    # -- configurations ----------------------------------------------------------------------

    def evaluate(self, policy: Policy) -> Evaluation:
        """Every calibration image through ``policy`` (the decision rule of :mod:`edgeskip.rule`), from cached
        states where they exist."""
        plan = resolve(policy, self.rt.manifest)
        walk = _CachedWalk(self, [self._precision_index(p) for p in plan.precisions] or [0] * self.depth)
        path = route(plan.cuts, plan.exits, self.n, self.depth, walk)
        logits = path.logits(lambda: self.logits[self.lookup(walk.alive, walk.masks[walk.alive])], self.rt.num_classes)
        accuracy = float(np.mean(logits.argmax(axis=1) == self.labels))
        return Evaluation(thresholds=plan.layer_thresholds, steps=plan.steps, exits=tuple(plan.exits), static=plan.static,
                          precisions=plan.precisions,
                          executed=path.executed, exit_layer=path.exit_layer, accuracy=accuracy, logits=logits)

    __call__ = evaluate

    def _precision_index(self, precision: str | None) -> int:
        if precision is None:
            return 0
        if precision not in self.precisions:
            raise ConfigError(f"the search's backend runs this bundle's layers in {', '.join(self.precisions)}, not "
                              f"{precision}")
        return self.precisions.index(precision)

    def static_key(self, layer: int) -> int:
        """The key bits of the static path up to and including ``layer`` (every bundle layer, own precision)."""
        return sum(self.code(j) for j in range(layer + 1) if j not in self.rt.manifest.removed)


class _CachedWalk:
    """:func:`~edgeskip.rule.route` over a :class:`PathCache`: rows are the inputs still in, each at the
    cached state of the layers it has run."""

    def __init__(self, cache: PathCache, precision: list[int]) -> None:
        self.cache = cache
        self.precision = precision  # per layer: the index of its precision in cache.precisions
        self.alive = np.arange(cache.n)
        self.masks = np.zeros(cache.n, np.int64)
        self.ids = np.empty(0, np.int64)  # state ids after the last layer run, for its rows

    def agent_logits(self, layer: int) -> npt.NDArray[np.float32]:
        return self.cache.z[self.cache.lookup(self.alive, self.masks[self.alive]), layer]  # type: ignore[no-any-return]

    def run(self, layer: int, rows: npt.NDArray[np.intp] | None) -> None:
        inputs = self.alive if rows is None else self.alive[rows]
        self.ids = self.cache.advance(inputs, self.masks[inputs], layer, self.precision[layer])
        self.masks[inputs] |= np.int64(self.cache.code(layer, self.precision[layer]))

    def exit_top(self, index: int, layer: int, rows: npt.NDArray[np.intp] | None) -> npt.NDArray[np.float64]:
        return self.cache.top[self.ids]  # type: ignore[no-any-return]

    def leave(self, index: int, layer: int, rows: npt.NDArray[np.intp],
              leaving: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        return self.cache.exit_logits[self.ids[leaving]]  # type: ignore[no-any-return]

    def keep(self, rows: npt.NDArray[np.intp]) -> None:
        self.alive = self.alive[rows]


def exit_grid(cache: PathCache, layer: int, rates: Sequence[float], calibrated: float) -> tuple[float, ...]:
    """Thresholds at which about ``rates`` of the calibration images leave at the exit after ``layer`` on
    the static path (they leave when their top probability is above it), and the calibrated one. Each lies
    midway between the top probabilities of the last image that leaves and the first that stays, so no
    calibration image sits on a threshold, where float rounding (a batch against one image) could flip it."""
    ids = cache.lookup(np.arange(cache.n), np.full(cache.n, cache.static_key(layer), np.int64))
    if (ids < 0).any():
        raise ConfigError("evaluate the static configuration before building exit grids")
    top = np.sort(cache.top[ids])[::-1]
    values = set()
    for r in rates:
        k = min(max(round(r * cache.n), 1), cache.n - 1)  # images that leave
        if top[k - 1] > top[k]:
            values.add(float((top[k - 1] + top[k]) / 2.0))
    if calibrated < 1.0:
        values.add(float(calibrated))
    return tuple(sorted(v for v in values if 0.0 <= v < 1.0))


def _highest_bit(m: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index of the highest set bit of positive integers (exact below 2**52)."""
    return np.floor(np.log2(m.astype(np.float64))).astype(np.int64)


# -- the search -------------------------------------------------------------------------------
