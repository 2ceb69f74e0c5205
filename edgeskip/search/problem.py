"""The search as pymoo sees it: one Problem (space and objectives) that is handed its algorithm (torch-free).

* :class:`ConfigurationProblem` owns the space (a :class:`~edgeskip.search.genome.Genome`) and the
  objectives, all minimised: ``1 - accuracy``, each figure of the cost divided by the static model's
  (``compute``, or ``latency_ms`` and ``energy_mj``), and ``-reward`` when asked. Accuracy comes from an
  :class:`Evaluator` (the exact path cache of a bundle, or PyTorch for a checkpoint), the figures from
  a :class:`~edgeskip.search.costs.Cost` (MACs, or a device profile). Every configuration evaluated is
  kept in :attr:`ConfigurationProblem.archive`: NSGA-II's last population can lose points, the archive
  cannot.
* :func:`nsga2` builds the algorithm (our sampling seeded with reference configurations, one-point
  crossover, replace-one-gene mutation, a repair that keeps a layer); :func:`minimize` runs any pymoo
  algorithm on the problem; :func:`pareto_points` and :func:`hypervolume` turn points into a front
  under one convention (objectives normalised by the static model, reference point 1.1 in each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.optimize import minimize as pymoo_minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from edgeskip.front import REFERENCE, ParetoPoint
from edgeskip.policy import Policy
from edgeskip.search.costs import Cost, usage_of
from edgeskip.search.genome import Genome
from edgeskip.search.operators import KeepOneLayer, OnePointCrossover, ReplaceGeneMutation, SeededSampling
from edgeskip.search.settings import SearchSettings

__all__ = ["ConfigurationProblem", "Evaluation", "Evaluator", "hypervolume", "minimize", "nsga2", "non_dominated",
           "pareto_points"]


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """What one configuration did on the search images (as a Runtime run of them would)."""

    thresholds: tuple[float | None, ...]  # per layer, as the model runs it: None removed, 0 always runs
    steps: tuple[tuple[int, float | None], ...]  # (layer, agent threshold or None = runs without asking)
    exits: tuple[int, ...]  # the exit layers checked (enabled) in this configuration
    executed: npt.NDArray[np.bool_]  # (N, L), inputs in the order they ran
    exit_layer: npt.NDArray[np.int64]  # (N,), -1 = head
    accuracy: float
    reward: float | None = None
    logits: npt.NDArray[np.float32] | None = None
    static: bool = False  # no decision taken: the Runtime runs it as the monolithic model (Plan.static)
    precisions: tuple[str | None, ...] = ()  # per layer, as the plan runs it (Plan.precisions)


class Evaluator(Protocol):
    """Runs a configuration over the search images."""

    exit_layers: tuple[int, ...]  # the model's exit layers (empty without exits)

    def __call__(self, policy: Policy) -> Evaluation:
        """Evaluate ``policy`` on the current search images."""


class ConfigurationProblem(Problem):
    """Integer genes -> minimised objectives, every evaluated configuration archived as a ParetoPoint."""

    def __init__(self, genome: Genome, evaluator: Evaluator, cost: Cost, *, reward: bool = False) -> None:
        self.genome, self.evaluator, self.cost, self.with_reward = genome, evaluator, cost, reward
        self.objectives = ("error", *cost.figures, *(("-reward",) if reward else ()))
        super().__init__(n_var=genome.size, n_obj=len(self.objectives), xl=0, xu=np.asarray(genome.upper), vtype=int)
        self.archive: dict[tuple[int, ...], ParetoPoint] = {}
        self.static = self.point(genome.static_genes)
        self._scale = [max(self.static.cost(k), 1e-12) for k in cost.figures]

    def point(self, genes: Sequence[int]) -> ParetoPoint:
        """The configuration's point, evaluated once (archived by genes)."""
        key = self.genome.check(genes)
        if key not in self.archive:
            self.archive[key] = self.score(key)
        return self.archive[key]

    def score(self, genes: tuple[int, ...]) -> ParetoPoint:
        """Evaluate ``genes`` now (not archived)."""
        policy = self.genome.policy(genes)
        ev = self.evaluator(policy)
        usage = usage_of(ev.executed, ev.exit_layer, ev.steps, self.evaluator.exit_layers, ev.exits, static=ev.static,
                         precisions=ev.precisions)
        return ParetoPoint(genes=genes, thresholds=ev.thresholds, exit_thresholds=policy.exits,
                           precisions=policy.precisions, accuracy=ev.accuracy,
                           executed_layers=float(ev.executed.sum(axis=1).mean()),
                           exit_rate=float(np.mean(ev.exit_layer >= 0)), reward=ev.reward, **self.cost(usage))

    def objective(self, p: ParetoPoint) -> list[float]:
        """The minimised objectives of a point (costs relative to the static model's)."""
        f = [1.0 - p.accuracy, *(p.cost(k) / s for k, s in zip(self.cost.figures, self._scale, strict=True))]
        if self.with_reward:
            f.append(-(p.reward if p.reward is not None else 0.0))
        return f

    def _evaluate(self, X: npt.NDArray[Any], out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        out["F"] = np.asarray([self.objective(self.point(x)) for x in np.asarray(X, np.int64)])


def nsga2(genome: Genome, settings: SearchSettings, seeds: Sequence[Sequence[int]] = ()) -> NSGA2:
    """NSGA-II over the genome with our operators; the first individuals are ``seeds``."""
    upper = genome.upper
    return NSGA2(pop_size=settings.pop_size, sampling=SeededSampling(upper, seeds),
                 crossover=OnePointCrossover(settings.crossover_prob),
                 mutation=ReplaceGeneMutation(upper, settings.mutation_prob),
                 repair=KeepOneLayer(len(genome.layers)), eliminate_duplicates=True)


class _EachGeneration(Callback):
    def __init__(self, hook: Callable[[int], None]) -> None:
        super().__init__()
        self.hook = hook

    def notify(self, algorithm: Any) -> None:
        self.hook(int(algorithm.n_gen))


def minimize(problem: ConfigurationProblem, algorithm: Any, generations: int, seed: int, *,
             each_generation: Callable[[int], None] | None = None) -> npt.NDArray[np.int64]:
    """Run ``algorithm`` on ``problem`` for ``generations``; ``each_generation(n)`` is called after each one (n
    counts from 1). Returns the final population's genes (the archive holds every point)."""
    callback = _EachGeneration(each_generation or (lambda n: None))
    res = pymoo_minimize(problem, algorithm, ("n_gen", generations), seed=seed, callback=callback, verbose=False)
    return np.atleast_2d(res.pop.get("X")).astype(np.int64)


def non_dominated(F: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Indices of the rows of ``F`` (minimised objectives) no other row dominates."""
    return np.asarray(NonDominatedSorting().do(np.asarray(F, np.float64), only_non_dominated_front=True), np.int64)


def pareto_points(points: Sequence[ParetoPoint], objective: Callable[[ParetoPoint], list[float]],
                  sort_key: str) -> list[ParetoPoint]:
    """The non-dominated points, one per objective vector (equal objectives from different genes: the first
    genes), sorted by ``sort_key`` and then by falling accuracy."""
    if not points:
        return []
    F = np.asarray([objective(p) for p in points])
    unique: dict[tuple[float, ...], ParetoPoint] = {}
    for i in sorted(non_dominated(F).tolist(), key=lambda i: points[i].genes):
        unique.setdefault(tuple(F[i]), points[i])
    return sorted(unique.values(), key=lambda p: (p.cost(sort_key), -p.accuracy))


def hypervolume(F: npt.NDArray[np.float64] | Sequence[Sequence[float]]) -> float:
    """Hypervolume of normalised, minimised objectives against the reference point 1.1 in each."""
    F = np.atleast_2d(np.asarray(F, np.float64))
    return float(HV(ref_point=np.full(F.shape[1], REFERENCE))(F))
