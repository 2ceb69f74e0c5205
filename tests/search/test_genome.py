"""The one gene encoding (both ways) and the NSGA-II operators on it."""

from __future__ import annotations

import numpy as np
import pytest

from edgeskip.errors import ConfigError
from edgeskip.search.genome import DEFAULT_GRID, Genome, grid_with_step
from edgeskip.search.operators import KeepOneLayer, OnePointCrossover, ReplaceGeneMutation, SeededSampling


def test_a_checkpoint_genome_round_trip() -> None:
    genome = Genome(4, None, grid_with_step(0.25))
    assert genome.grid == DEFAULT_GRID and genome.upper == [5] * 4 and genome.size == 4 and genome.n_exits == 0
    policy = genome.policy([2, 0, 5, 1])
    assert policy.layers == (0.25, None, 1.0, 0.0) and policy.exits is None
    assert genome.genes_of(policy.layers) == (2, 0, 5, 1)
    assert genome.genes_of((0.3, 0.5, 0.5, 0.5)) is None  # off the grid
    assert genome.static_genes == (1, 1, 1, 1)
    assert genome.seeds(((0.5, 0.5, 0.5, 0.5), None)) == [(1, 1, 1, 1), (3, 3, 3, 3)]


def test_a_bundle_genome_with_removed_layers_and_exits() -> None:
    genome = Genome(5, [0, 2, 3, 4], DEFAULT_GRID, [(0.2, 0.4)] * 3)
    assert genome.size == 4 + 3 and genome.upper == [5, 5, 5, 5, 2, 2, 2]
    policy = genome.policy([0, 1, 3, 5, 0, 1, 2])
    assert policy.layers == (None, None, 0.0, 0.5, 1.0) and policy.exits == (1.0, 0.2, 0.4)
    assert genome.genes_of(policy.layers, policy.exits) == (0, 1, 3, 5, 0, 1, 2)
    assert genome.genes_of((0.5, 0.5, 0.5, 0.5, 0.5)) is None  # layer 1 is not in the bundle
    assert genome.static_genes == (1, 1, 1, 1, 0, 0, 0)
    no_agents = Genome(3, None, (0.0,))  # without agents a layer runs or is removed
    assert no_agents.upper == [1, 1, 1] and no_agents.policy([1, 0, 1]).layers == (0.0, None, 0.0)


@pytest.mark.parametrize("genes,message", [
    ([1, 2, 3], "4 integers"), ([1, 2, 3, 6], r"within \[5, 5, 5, 5\]"), ([0, 0, 0, 0], "keep at least one layer"),
    (np.array([1, 1, 1, 1], "m8[s]"), "4 integers"), ([1.0, 1.0, 1.0, 1.0], "4 integers"),
])
def test_bad_genes(genes: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Genome(4).policy(genes)  # type: ignore[arg-type]


def test_bad_genomes() -> None:
    for kwargs, message in (({"depth": 0}, "positive"), ({"depth": 3, "layers": [0, 3]}, "distinct indices"),
                            ({"depth": 3, "grid": (0.5, 0.5)}, "distinct values"),
                            ({"depth": 3, "exit_grids": [(1.5,)]}, "distinct values")):
        with pytest.raises(ConfigError, match=message):
            Genome(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not divide"):
        grid_with_step(0.3)
    with pytest.raises(ConfigError, match="no 0"):
        _ = Genome(3, None, (0.5, 1.0)).static_genes


def test_operators() -> None:
    rng = np.random.default_rng(0)
    parents = np.array([[[1, 1, 1, 1, 1, 1]], [[5, 5, 5, 5, 5, 5]]])
    children = OnePointCrossover(prob=1.0)._do(None, parents, random_state=rng)  # type: ignore[arg-type]
    a, b = children[0, 0].tolist(), children[1, 0].tolist()
    cut = a.index(5)
    assert a == [1] * cut + [5] * (6 - cut) and b == [5] * cut + [1] * (6 - cut) and 1 <= cut <= 5
    X = np.full((50, 6), 3)
    mutated = ReplaceGeneMutation([5] * 6, prob=1.0)._do(None, X, random_state=rng)  # type: ignore[arg-type]
    assert all((row != 3).sum() <= 1 for row in mutated) and (mutated != 3).any()
    assert mutated.min() >= 0 and mutated.max() <= 5
    upper = [1, 1, 7, 7]  # two layer genes (remove / run), two exit genes: each gene keeps its own range
    mutated = ReplaceGeneMutation(upper, prob=1.0)._do(None, np.zeros((200, 4), int), random_state=rng)  # type: ignore[arg-type]
    assert (mutated <= np.array(upper)).all() and mutated[:, 2:].max() > 1
    repaired = KeepOneLayer()._do(None, np.zeros((3, 6), dtype=int), random_state=rng)  # type: ignore[arg-type]
    assert all(row.sum() == 1 for row in repaired)
    only_layers = KeepOneLayer(layer_genes=2)._do(None, np.array([[0, 0, 5, 5]]), random_state=rng)  # type: ignore[arg-type]
    assert only_layers[0, :2].sum() == 1 and only_layers[0, 2:].tolist() == [5, 5]
    X = SeededSampling(upper, [[1, 1, 0, 0]])._do(None, 20, random_state=rng)  # type: ignore[arg-type]
    assert X[0].tolist() == [1, 1, 0, 0] and (X <= np.array(upper)).all() and X.shape == (20, 4)
