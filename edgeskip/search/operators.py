"""NSGA-II operators on integer genomes (pymoo, torch-free): what :func:`edgeskip.search.problem.nsga2` builds.

A genome is one integer gene per decision; gene ``g`` takes values ``0 .. upper[g]``. The
first ``layer_genes`` genes are layers, where 0 removes the layer: :class:`KeepOneLayer`
repairs a genome that would remove them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

__all__ = ["KeepOneLayer", "OnePointCrossover", "ReplaceGeneMutation", "SeededSampling"]


class SeededSampling(Sampling):
    """Uniform random genomes, the first ones replaced by ``seeds`` (reference configurations the search
    should start from)."""

    def __init__(self, upper: Sequence[int], seeds: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.upper = np.asarray(upper, dtype=np.int64)
        self.seeds = [np.asarray(s, dtype=np.int64) for s in seeds]

    def _do(self, problem: Problem, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any) -> Any:
        X = random_state.integers(0, self.upper + 1, size=(n_samples, len(self.upper)))
        for i, seed in enumerate(self.seeds[:n_samples]):
            X[i] = seed
        return X


class OnePointCrossover(Crossover):
    """Classic one-point crossover of two parents into two children."""

    def __init__(self, prob: float) -> None:
        super().__init__(n_parents=2, n_offsprings=2, prob=prob)

    def _do(self, problem: Problem, X: npt.NDArray[Any], *args: Any, random_state: Any = None, **kwargs: Any) -> Any:
        _, n_matings, n_var = X.shape
        Y = X.copy()
        if n_var < 2:
            return Y
        for k in range(n_matings):
            cut = int(random_state.integers(1, n_var))
            Y[0, k, cut:], Y[1, k, cut:] = X[1, k, cut:], X[0, k, cut:]
        return Y


class ReplaceGeneMutation(Mutation):
    """With probability ``prob`` per individual, one random gene gets a uniformly drawn value."""

    def __init__(self, upper: Sequence[int], prob: float) -> None:
        super().__init__(prob=prob)
        self.upper = np.asarray(upper, dtype=np.int64)

    def _do(self, problem: Problem, X: npt.NDArray[Any], *args: Any, random_state: Any = None, **kwargs: Any) -> Any:
        X = X.copy()
        for row in X:
            g = int(random_state.integers(0, len(self.upper)))
            row[g] = int(random_state.integers(0, self.upper[g] + 1))
        return X


class KeepOneLayer(Repair):
    """A genome whose layer genes (the first ``layer_genes``; all when None) are all 0 (removed) gets one
    random layer back (gene 1)."""

    def __init__(self, layer_genes: int | None = None) -> None:
        super().__init__()
        self.layer_genes = layer_genes

    def _do(self, problem: Problem, X: npt.NDArray[Any], *args: Any, random_state: Any = None, **kwargs: Any) -> Any:
        X = np.asarray(X).copy()
        rng = random_state if random_state is not None else np.random.default_rng()
        n = X.shape[1] if self.layer_genes is None else self.layer_genes
        for row in X:
            if not row[:n].any():
                row[int(rng.integers(0, n))] = 1
        return X
