"""Threshold search for a compute budget, on cached exit decisions (numpy, torch-free).

Calibration runs the network once and keeps, per image and exit, the top exit probability
and its label (:class:`ExitCache`); everything here replays those, never the network.

**Search for budget phi** (:func:`search_thresholds`): start from random thresholds, then
sweep the exits in order, setting each one's threshold, with the others fixed, to the
*largest* value whose average compute on the calibration set is at most phi (raise it when
under budget, lower it when over). Average compute is monotone in each threshold, so that
value is found by a binary search over the sorted top probabilities of the images reaching
the exit (exact: no tolerance to tune). **Stopping rule:** stop when a whole round over the
exits changes no threshold (a fixed point), or after ``max_rounds`` rounds. Several random
starts run and the most accurate result within budget is kept (ties: less compute).

A threshold lands midway between the top probability of the last image that leaves and the
first that stays, the widest margin the calibration data allows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.e2cm.costs import MacCosts
from edgeskip.e2cm.means import check_thresholds
from edgeskip.errors import ConfigError
from edgeskip.rule import first_exit

__all__ = [
    "ExitCache", "Outcome", "simulate", "search_thresholds", "sweep", "upper_hull", "HullPoint", "Sweep",
    "check_budget", "check_step", "plot_hulls",
]

NOT_CHECKED = -1.0  # top probability recorded where a skipped layer makes no check


@dataclasses.dataclass(frozen=True, eq=False)
class ExitCache:
    """Per image (N) and exit (J): top exit probability and label; plus the path's costs."""

    top_prob: npt.NDArray[np.float64]  # (N, J); NOT_CHECKED where the exit's layer was skipped
    pred: npt.NDArray[np.int64]  # (N, J)
    final_pred: npt.NDArray[np.int64]  # (N,) the network's own head
    labels: npt.NDArray[np.int64]  # (N,)
    base_cost: npt.NDArray[np.float64]  # (N, J) cost of leaving at exit j, checks excluded
    final_cost: npt.NDArray[np.float64]  # (N,) cost of the whole path, checks excluded
    checked: npt.NDArray[np.bool_]  # (N, J) whether the exit's layer ran (no check after a skip)
    check_cost: npt.NDArray[np.float64]  # (J,)
    layers_run: npt.NDArray[np.int64]  # (N, J + 1) layers executed up to each exit, and in all

    @classmethod
    def build(cls, top_prob: npt.NDArray[Any], pred: npt.NDArray[Any], final_pred: npt.NDArray[Any],
              labels: npt.NDArray[Any], executed: npt.NDArray[Any], costs: MacCosts) -> ExitCache:
        executed = np.asarray(executed, dtype=bool)
        checked = executed[:, list(costs.exits)]
        base, final = costs.path_costs(executed)
        top = np.where(checked, np.asarray(top_prob, dtype=np.float64), NOT_CHECKED)
        run = np.cumsum(executed, axis=1)
        layers = np.concatenate([run[:, list(costs.exits)], run[:, -1:]], axis=1).astype(np.int64)
        return cls(top, np.asarray(pred, dtype=np.int64), np.asarray(final_pred, dtype=np.int64),
                   np.asarray(labels, dtype=np.int64), base, final, checked,
                   np.asarray(costs.checks, dtype=np.float64), layers)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_exits(self) -> int:
        return int(self.top_prob.shape[1])


@dataclasses.dataclass(frozen=True, eq=False)
class Outcome:
    """Where each image left (0..J-1 an exit, J the head), its cost and correctness."""

    exit_at: npt.NDArray[np.int64]
    cost: npt.NDArray[np.float64]
    correct: npt.NDArray[np.bool_]
    check_cum: npt.NDArray[np.float64]  # (N, J) check cost paid up to and including each exit
    layers: npt.NDArray[np.int64]  # (N,) transformer layers executed

    @property
    def compute(self) -> float:
        return float(self.cost.mean())

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_layers(self) -> float:
        return float(self.layers.mean())

    def exit_rates(self, n_exits: int) -> list[float]:
        """Fraction of images leaving at each exit, then at the head."""
        return (np.bincount(self.exit_at, minlength=n_exits + 1) / max(len(self.exit_at), 1)).tolist()  # type: ignore[no-any-return]


def simulate(cache: ExitCache, thresholds: npt.NDArray[Any] | Sequence[float]) -> Outcome:
    """Replay the exit rule with ``thresholds`` over the cached images."""
    t = check_thresholds(thresholds, cache.n_exits)
    exit_at = first_exit(cache.top_prob, cache.checked, t)  # the decision rule, replayed over the cache
    enabled = t < 1.0
    check_cum = np.cumsum(cache.checked * (enabled * cache.check_cost)[None, :], axis=1)
    rows = np.arange(cache.size)
    left = exit_at < cache.n_exits
    at = np.minimum(exit_at, cache.n_exits - 1)
    cost = np.where(left, cache.base_cost[rows, at] + check_cum[rows, at], cache.final_cost + check_cum[:, -1])
    pred = np.where(left, cache.pred[rows, at], cache.final_pred)
    return Outcome(exit_at, cost, pred == cache.labels, check_cum, cache.layers_run[rows, exit_at])


def check_budget(phi: float) -> float:
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi) or not 0.0 < phi <= 1.0:
        raise ConfigError(f"compute budget must be in (0, 1] (a fraction of the static model), got {phi!r}")
    return float(phi)


def check_step(step: float) -> float:
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.001 - 1e-12 <= step <= 1.0:
        raise ConfigError(f"budget step must be in [0.001, 1], got {step!r}")
    return float(step)


def _best_threshold(cache: ExitCache, t: npt.NDArray[np.float64], i: int, budget_total: float) -> float:
    """The largest threshold of exit ``i`` (others fixed) whose total cost fits ``budget_total``."""
    off = t.copy()
    off[i] = 1.0
    base = simulate(cache, off)
    total_off = float(base.cost.sum())
    if total_off <= budget_total:
        return 1.0  # fits with the exit disabled: raise it all the way
    reach = (base.exit_at > i) & cache.checked[:, i]
    n = int(reach.sum())
    if n == 0:
        return 1.0  # nobody can leave here; other exits must give way
    c = float(cache.check_cost[i])
    leave = cache.base_cost[reach, i] + base.check_cum[reach, i] + c  # check i is off in `base`
    stay = base.cost[reach] + c
    p = cache.top_prob[reach, i]
    order = np.argsort(-p, kind="stable")
    p_sorted = p[order]
    # totals[k-1]: total cost when the k most confident reaching images leave (k = 1..n);
    # it only falls as k grows (leaving never costs more than staying).
    totals = total_off + n * c + np.cumsum((leave - stay)[order])
    valid = np.ones(n, dtype=bool)  # k must not split images with equal probability
    valid[:-1] = p_sorted[:-1] > p_sorted[1:]
    fits = np.nonzero(valid & (totals <= budget_total * (1 + 1e-12)))[0]
    k = int(fits[0]) + 1 if len(fits) else n
    if k < n:
        mid = float((p_sorted[k - 1] + p_sorted[k]) / 2.0)
        return mid if mid < p_sorted[k - 1] else float(p_sorted[k])  # adjacent floats: keep the split
    return float(p_sorted[-1] / 2.0)  # every reaching image leaves


def search_thresholds(cache: ExitCache, phi: float, *, restarts: int = 4, max_rounds: int = 20,
                      seed: int = 0) -> tuple[npt.NDArray[np.float64], Outcome]:
    """Per-exit thresholds with average compute <= ``phi`` on the cache, most accurate of ``restarts`` starts."""
    phi = check_budget(phi)
    if restarts < 1 or max_rounds < 1:
        raise ConfigError("restarts and max_rounds must be >= 1")
    lowest = simulate(cache, np.zeros(cache.n_exits)).compute
    if lowest > phi + 1e-12:
        raise ConfigError(f"compute budget {phi:g} is below the least these exits can reach ({lowest:.4f}: "
                          f"every input leaving at its first check)")
    budget_total = phi * cache.size
    rng = np.random.default_rng(seed)
    best: tuple[npt.NDArray[np.float64], Outcome] | None = None
    for _ in range(restarts):
        t = rng.uniform(0.0, 1.0, cache.n_exits)
        for _round in range(max_rounds):
            changed = False
            for i in range(cache.n_exits):
                new = _best_threshold(cache, t, i, budget_total)
                if new != t[i]:
                    t[i], changed = new, True
            if not changed:
                break
        out = simulate(cache, t)
        if out.cost.sum() > budget_total * (1 + 1e-12):
            continue
        if best is None or (out.accuracy, -out.compute) > (best[1].accuracy, -best[1].compute):
            best = (t.copy(), out)
    if best is None:  # cannot happen while the all-zero thresholds fit, but never return over budget
        t = np.zeros(cache.n_exits)
        best = (t, simulate(cache, t))
    return best


@dataclasses.dataclass(frozen=True)
class HullPoint:
    budget: float  # the phi the search was given
    compute: float  # achieved on the calibration set
    accuracy: float
    thresholds: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"thresholds": list(self.thresholds)}


def upper_hull(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the upper convex hull of (compute, accuracy), from least compute to the most accurate point."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    hull: list[int] = []
    for i in order:
        x, y = points[i]
        if hull and points[hull[-1]][0] == x:
            continue  # same compute, lower (or equal) accuracy
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = points[hull[-2]], points[hull[-1]]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # hull[-1] lies on or below the chord
                hull.pop()
            else:
                break
        hull.append(i)
    top = max(range(len(hull)), key=lambda h: (points[hull[h]][1], -points[hull[h]][0]))
    return hull[: top + 1]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every searched budget and the upper convex hull of (compute, accuracy) on calibration data."""

    points: tuple[HullPoint, ...]
    hull: tuple[HullPoint, ...]
    static_accuracy: float  # the network's own head on the calibration set
    infeasible_below: float  # least compute the exits can reach

    def for_budget(self, phi: float) -> HullPoint:
        """The most accurate hull point whose calibration compute is at most ``phi``."""
        phi = check_budget(phi)
        fits = [p for p in self.hull if p.compute <= phi + 1e-12]
        if not fits:
            raise ConfigError(f"compute budget {phi:g} is below the cheapest calibrated point "
                              f"({self.hull[0].compute:.4f})")
        return max(fits, key=lambda p: (p.accuracy, -p.compute))

    def within_accuracy(self, drop: float) -> HullPoint:
        """The cheapest hull point whose accuracy is at least static accuracy - ``drop``."""
        ok = [p for p in self.hull if p.accuracy >= self.static_accuracy - drop - 1e-12]
        return min(ok, key=lambda p: p.compute) if ok else max(self.hull, key=lambda p: p.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"static_accuracy": self.static_accuracy, "infeasible_below": self.infeasible_below,
                "hull": [p.to_dict() for p in self.hull], "points": [p.to_dict() for p in self.points]}


def sweep(cache: ExitCache, *, step: float = 0.01, restarts: int = 4, max_rounds: int = 20, seed: int = 0,
          on_step: Callable[[], object] | None = None) -> Sweep:
    """Search thresholds for every budget ``step, 2 step, ..., 1`` and keep the upper convex hull."""
    n = round(1.0 / check_step(step))
    budgets = [min(1.0, round((k + 1) * step, 6)) for k in range(n)]
    lowest = simulate(cache, np.zeros(cache.n_exits)).compute
    static = simulate(cache, np.ones(cache.n_exits))
    points = [HullPoint(1.0, static.compute, static.accuracy, (1.0,) * cache.n_exits)]
    for k, phi in enumerate(budgets):
        if phi >= lowest:
            t, out = search_thresholds(cache, phi, restarts=restarts, max_rounds=max_rounds, seed=seed + k)
            points.append(HullPoint(phi, out.compute, out.accuracy, tuple(float(v) for v in t)))
        if on_step is not None:
            on_step()
    hull = upper_hull([(p.compute, p.accuracy) for p in points])
    return Sweep(tuple(points), tuple(points[i] for i in hull), static.accuracy, lowest)


def plot_hulls(curves: Sequence[tuple[str, Sequence[tuple[float, float]], str, str]], out: str | Path, title: str,
               marks: dict[str, tuple[float, float]] | None = None) -> Path:
    """Accuracy against normalised compute.

    ``curves``: (label, points, group, line style); curves of one group share a colour.
    ``marks``: named single points drawn as stars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colours: dict[str, Any] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for label, pts, group, style in curves:
        colour = colours.setdefault(group, palette[len(colours) % len(palette)])
        xs, ys = zip(*pts, strict=True) if pts else ((), ())
        ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=label)
    for k, (name, (x, y)) in enumerate((marks or {}).items()):
        ax.scatter([x], [y], s=90, marker="*", zorder=5, color=palette[(len(colours) + k) % len(palette)], label=name)
    ax.set(xlabel="compute (fraction of the static model)", ylabel="top-1 accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out)
