"""NSGA-II post-training: a non-dominated front at least as good as the 0.5-threshold model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.agents import GeneCodec, SkipConfig
from edgeskip.agents.model import SkipViT
from edgeskip.agents.operators import KeepOneLayer, OnePointCrossover, ReplaceGeneMutation, SeededSampling
from edgeskip.agents.search import (
    Evaluator,
    SearchResult,
    plot_front,
    search_skip_configs,
)
from edgeskip.agents.settings import SearchConfig
from edgeskip.data import DatasetSplits, load_digits
from edgeskip.errors import ConfigError
from edgeskip.normalization import get_normalization
from edgeskip.train.checkpoint import load_checkpoint
from edgeskip.train.config import TrainConfig
from edgeskip.train.loop import train

NORM = get_normalization("digits")


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_digits()


@pytest.fixture(scope="module")
def agent_model(digits: DatasetSplits, tmp_path_factory: pytest.TempPathFactory) -> SkipViT:
    out = tmp_path_factory.mktemp("agents") / "run"
    train(TrainConfig(model="vit-digits", dataset="digits", out=str(out), epochs=8, batch_size=64, augment="none",
                      lr=2e-3, precision="fp32", progress=False, agents=True), digits)
    model = load_checkpoint(out).build_model()
    assert isinstance(model, SkipViT)
    return model


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def objectives(result: SearchResult) -> list[list[float]]:
    return [[p.executed_fraction, 1 - p.accuracy] + ([-p.reward] if len(result.objectives) == 3 else [])
            for p in result.points]


@pytest.mark.slow
@pytest.mark.parametrize("evaluation", ["fixed", "fresh"])
def test_front_is_non_dominated_and_beats_the_default(agent_model: SkipViT, digits: DatasetSplits,
                                                      evaluation: str, tmp_path: Path) -> None:
    settings = SearchConfig(generations=8, evaluation=evaluation, batch_size=120)
    result = search_skip_configs(agent_model, digits.test, NORM, settings)
    F = objectives(result)
    assert len(F) >= 2
    assert not any(dominates(a, b) for a in F for b in F)
    assert result.hypervolume >= result.reference_hypervolume
    assert result.evaluations > settings.pop_size
    # Reported points are re-evaluated on the whole calibration set.
    evaluator = Evaluator(agent_model, NORM)
    for p in result.points[:3]:
        acc, executed, _ = evaluator(p.config, digits.test.images, digits.test.labels)
        assert (acc, executed) == pytest.approx((p.accuracy, p.mean_executed))
    assert agent_model.skip == SkipConfig.uniform(agent_model.depth, 0.5)  # the search restored the model
    data = json.loads(result.save(tmp_path / "pareto.json").read_text())
    assert len(data["pareto"]) == len(result.points) and data["hypervolume"] == result.hypervolume
    assert plot_front(result, tmp_path / "front.png", "test").stat().st_size > 10_000


@pytest.mark.slow
def test_joint_variant_fine_tunes_and_has_three_objectives(agent_model: SkipViT, digits: DatasetSplits) -> None:
    model = SkipViT(agent_model.config, agent_model.skip)
    model.load_state_dict(agent_model.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    result = search_skip_configs(model, digits.test, NORM, SearchConfig(generations=3, joint=True, joint_steps=2),
                                 train_data=digits.train)
    assert result.objectives == ("executed_fraction", "error", "-reward")
    assert not any(dominates(a, b) for a in objectives(result) for b in objectives(result))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_operators() -> None:
    rng = np.random.default_rng(0)
    codec = GeneCodec(6)
    parents = np.array([[[1, 1, 1, 1, 1, 1]], [[5, 5, 5, 5, 5, 5]]])
    children = OnePointCrossover(prob=1.0)._do(None, parents, random_state=rng)  # type: ignore[arg-type]
    a, b = children[0, 0].tolist(), children[1, 0].tolist()
    cut = a.index(5)
    assert a == [1] * cut + [5] * (6 - cut) and b == [5] * cut + [1] * (6 - cut) and 1 <= cut <= 5
    X = np.full((50, 6), 3)
    mutated = ReplaceGeneMutation([codec.n_values - 1] * 6, prob=1.0)._do(None, X, random_state=rng)  # type: ignore[arg-type]
    assert all((row != 3).sum() <= 1 for row in mutated) and (mutated != 3).any()
    assert mutated.min() >= 0 and mutated.max() < codec.n_values
    upper = [1, 1, 7, 7]  # two layer genes (remove / run), two exit genes: each gene keeps its own range
    mutated = ReplaceGeneMutation(upper, prob=1.0)._do(None, np.zeros((200, 4), int), random_state=rng)  # type: ignore[arg-type]
    assert (mutated <= np.array(upper)).all() and mutated[:, 2:].max() > 1
    repaired = KeepOneLayer()._do(None, np.zeros((3, 6), dtype=int), random_state=rng)  # type: ignore[arg-type]
    assert all(row.sum() == 1 for row in repaired)
    only_layers = KeepOneLayer(layer_genes=2)._do(None, np.array([[0, 0, 5, 5]]), random_state=rng)  # type: ignore[arg-type]
    assert only_layers[0, :2].sum() == 1 and only_layers[0, 2:].tolist() == [5, 5]
    X = SeededSampling(upper, [[1, 1, 0, 0]])._do(None, 20, random_state=rng)  # type: ignore[arg-type]
    assert X[0].tolist() == [1, 1, 0, 0] and (X <= np.array(upper)).all() and X.shape == (20, 4)


def test_bad_search_input(agent_model: SkipViT, digits: DatasetSplits) -> None:
    with pytest.raises(ConfigError, match="calibration set is empty"):
        search_skip_configs(agent_model, digits.test.subset([]), NORM)
    with pytest.raises(ConfigError, match="pass train_data"):
        search_skip_configs(agent_model, digits.test, NORM, SearchConfig(joint=True))
    for bad in ({"evaluation": "sometimes"}, {"pop_size": 1}, {"mutation_prob": 2.0}, {"grid_step": 0.0}):
        with pytest.raises(ConfigError):
            SearchConfig(**bad)  # type: ignore[arg-type]


def test_reference_is_evaluated_when_half_is_off_the_grid(agent_model: SkipViT, digits: DatasetSplits) -> None:
    result = search_skip_configs(agent_model, digits.test, NORM,
                                 SearchConfig(grid_step=0.2, generations=2, pop_size=6, evaluation="fixed"))
    assert result.reference.genes == () and result.reference.config == SkipConfig.uniform(agent_model.depth, 0.5)
    assert all(t is None or round(t / 0.2, 6).is_integer() for p in result.points for t in p.config.thresholds)
