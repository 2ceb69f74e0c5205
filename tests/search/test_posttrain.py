"""``edgeskip posttrain``: NSGA-II over a checkpoint's thresholds in PyTorch, costed in MACs, one front format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.agents.model import SkipViT
from edgeskip.cli import main
from edgeskip.data import DatasetSplits, load_digits
from edgeskip.errors import ConfigError
from edgeskip.front import ParetoFront, Searched, load_front
from edgeskip.normalization import get_normalization
from edgeskip.policy import Policy
from edgeskip.search.plot import plot_front
from edgeskip.search.posttrain import TorchEvaluator, posttrain
from edgeskip.search.settings import PosttrainSettings
from edgeskip.search.problem import non_dominated
from edgeskip.train.checkpoint import load_checkpoint

NORM = get_normalization("digits")


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_digits()


@pytest.fixture(scope="module")
def agent_model(digits_agents: dict[str, Path]) -> tuple[SkipViT, Searched]:
    ckpt = load_checkpoint(digits_agents["checkpoint"])
    model = ckpt.build_model()
    assert isinstance(model, SkipViT)
    sha = ckpt.meta["weights"]["sha256"]
    return model, Searched(kind="checkpoint", model=ckpt.model_name, fingerprint=sha, weights_sha256=sha)


def objectives(front: ParetoFront) -> np.ndarray:
    return np.array([[1 - p.accuracy, p.cost("compute")] + ([-p.reward] if "-reward" in front.objectives else [])
                     for p in front.points])


@pytest.mark.slow
@pytest.mark.parametrize("evaluation", ["fixed", "fresh"])
def test_front_is_non_dominated_and_beats_the_reference(agent_model: tuple[SkipViT, Searched], digits: DatasetSplits,
                                                        evaluation: str, tmp_path: Path) -> None:
    model, searched = agent_model
    skip = model.skip
    settings = PosttrainSettings(generations=6, evaluation=evaluation, batch_size=120)
    front = posttrain(model, digits.test, NORM, settings, searched=searched)
    F = objectives(front)
    assert len(F) >= 2 and len(non_dominated(F)) == len(F)  # no point dominates another
    assert front.objectives == ("error", "compute") and front.cost == "macs" and front.searched == searched
    assert front.reference is not None and front.hypervolume >= front.meta["reference_hypervolume"]
    assert front.meta["evaluations"] > settings.pop_size
    assert front.static.cost("compute") == pytest.approx(1.0) and front.static.executed_layers == model.depth
    assert [p.cost("compute") for p in front.points] == sorted(p.cost("compute") for p in front.points)
    # the points were measured on the whole calibration set (in fresh mode: again, at the end)
    evaluator = TorchEvaluator(model, NORM, digits.test.images, digits.test.labels)
    for p in front.points[:3]:
        ev = evaluator(Policy.config(p.thresholds))
        assert (ev.accuracy, float(ev.executed.sum(1).mean())) == pytest.approx((p.accuracy, p.executed_layers))
    assert model.skip == skip  # the search restored the model
    loaded = load_front(front.save(tmp_path / "pareto.json"))
    assert loaded == front  # the one front format, both ways
    assert plot_front(front, tmp_path / "front.png", "test").stat().st_size > 10_000


@pytest.mark.slow
def test_joint_variant_fine_tunes_and_has_three_objectives(agent_model: tuple[SkipViT, Searched],
                                                           digits: DatasetSplits) -> None:
    source, searched = agent_model
    model = SkipViT(source.config, source.skip)
    model.load_state_dict(source.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    front = posttrain(model, digits.test, NORM, PosttrainSettings(generations=3, joint=True, joint_steps=2),
                      searched=searched, train_data=digits.train)
    assert front.objectives == ("error", "compute", "-reward") and all(p.reward is not None for p in front.points)
    assert len(non_dominated(objectives(front))) == len(front.points)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_search_input(agent_model: tuple[SkipViT, Searched], digits: DatasetSplits) -> None:
    model, searched = agent_model
    with pytest.raises(ConfigError, match="calibration set is empty"):
        posttrain(model, digits.test.subset([]), NORM, searched=searched)
    with pytest.raises(ConfigError, match="pass train_data"):
        posttrain(model, digits.test, NORM, PosttrainSettings(joint=True), searched=searched)
    for bad in ({"evaluation": "sometimes"}, {"pop_size": 1}, {"mutation_prob": 2.0}, {"grid_step": 0.0},
                {"grid_step": 0.3}):
        with pytest.raises(ConfigError):
            PosttrainSettings(**bad)  # type: ignore[arg-type]


def test_no_reference_when_half_is_off_the_grid(agent_model: tuple[SkipViT, Searched], digits: DatasetSplits) -> None:
    model, searched = agent_model
    front = posttrain(model, digits.test, NORM, PosttrainSettings(grid_step=0.2, generations=2, pop_size=6,
                                                                  evaluation="fixed"), searched=searched)
    assert front.reference is None and front.meta["reference_hypervolume"] is None
    assert all(t is None or round(t / 0.2, 6).is_integer() for p in front.points for t in p.thresholds)


@pytest.mark.slow
def test_cli_posttrain_then_apply_config(digits_agents: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """posttrain writes the front, apply-config reads it: one format between the two commands."""
    ckpt = str(digits_agents["checkpoint"])
    out = tmp_path / "pt"
    assert main(["-q", "posttrain", "--checkpoint", ckpt, "--out", str(out), "--generations", "2", "--pop-size", "6",
                 "--evaluation", "fixed"]) == 0
    assert "Pareto configurations" in capsys.readouterr().out
    front = load_front(out / "pareto.json")
    assert json.loads((out / "pareto.json").read_text())["format"] == "edgeskip.pareto"
    assert main(["-q", "apply-config", "--checkpoint", ckpt, "--pareto", str(out / "pareto.json"), "--point", "-1",
                 "--out", str(tmp_path / "applied")]) == 0
    assert load_checkpoint(tmp_path / "applied").build_model().skip.thresholds == front.points[-1].thresholds  # type: ignore[union-attr]
    assert main(["-q", "apply-config", "--checkpoint", ckpt, "--pareto", str(out / "pareto.json"), "--point", "99",
                 "--out", str(tmp_path / "x")]) == 2
    assert "the front has" in capsys.readouterr().err
    other = dataclasses.replace(front, searched=dataclasses.replace(front.searched, weights_sha256="0" * 64))
    other.save(tmp_path / "other.json")
    assert main(["-q", "apply-config", "--checkpoint", ckpt, "--pareto", str(tmp_path / "other.json"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "searched on other weights" in capsys.readouterr().err
    (tmp_path / "old.json").write_text(json.dumps({"objectives": ["executed_fraction", "error"], "pareto": []}))
    assert main(["-q", "apply-config", "--checkpoint", ckpt, "--pareto", str(tmp_path / "old.json"),
                 "--out", str(tmp_path / "z")]) == 2
    assert "run edgeskip posttrain" in capsys.readouterr().err  # an old posttrain file: how to write it again
