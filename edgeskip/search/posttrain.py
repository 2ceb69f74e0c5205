"""``edgeskip posttrain``: NSGA-II over an agent checkpoint's skip thresholds, evaluated in PyTorch, costed in MACs.

The thesis's post-training: one gene per layer (0 removes it, k >= 1 is the threshold ``grid[k - 1]``),
objectives ``1 - accuracy`` and compute (the share of the static model's multiply-accumulates the
configuration runs, :class:`~edgeskip.search.costs.MacsCost`) and, in the ``joint`` variant, ``-mean
reward``; the joint variant also fine-tunes the ViT and agents by a few SGD steps (joint loss) on
training images at the start of every generation.

Evaluation images: ``fresh`` draws a new batch of held-out images every generation (the thesis's scheme);
``fixed`` uses the whole calibration set throughout. Where the images or the weights changed during the
run, the candidates (the archive's non-dominated configurations and the last population) are evaluated
again on the whole calibration set at the end, so the front's points compare with each other and with
the static model and the uniform 0.5-threshold reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeskip.agents.model import SkipViT
from edgeskip.agents.reinforce import rewards
from edgeskip.data.dataset import ImageDataset
from edgeskip.e2cm.costs import MacCosts
from edgeskip.errors import ConfigError
from edgeskip.front import ParetoFront, ParetoPoint, Searched
from edgeskip.normalization import Normalization
from edgeskip.policy import Policy, SkipConfig
from edgeskip.search.costs import MacsCost
from edgeskip.search.genome import Genome, grid_with_step
from edgeskip.search.problem import ConfigurationProblem, Evaluation, hypervolume, minimize, nsga2, pareto_points
from edgeskip.search.settings import PosttrainSettings
from edgeskip.train.agents import joint_loss
from edgeskip.train.evaluate import Normalizer, autocast, to_tensor

__all__ = ["TorchEvaluator", "posttrain"]

log = logging.getLogger(__name__)


class TorchEvaluator:
    """Accuracy, executed layers and mean reward of a configuration of a SkipViT on the current images."""

    exit_layers: tuple[int, ...] = ()  # a checkpoint's configurations have no E²CM exits

    def __init__(self, model: SkipViT, norm: Normalization, images: npt.NDArray[np.uint8],
                 labels: npt.NDArray[np.int64], *, batch_size: int = 256, dtype: torch.dtype | None = None,
                 epsilon: float = -1e-5, penalty: float = 1.0) -> None:
        self.model = model
        self.normalize = Normalizer(norm).to(next(model.parameters()).device)
        self.images, self.labels = images, labels
        self.batch_size, self.dtype, self.epsilon, self.penalty = batch_size, dtype, epsilon, penalty

    @torch.no_grad()
    def __call__(self, policy: Policy) -> Evaluation:
        if policy.layers is None or policy.exits is not None:
            raise ConfigError("post-training evaluates per-layer agent thresholds only (no E²CM exits)")
        model, device = self.model, next(self.model.parameters()).device
        previous, was_training = model.skip, model.training
        model.set_skip_config(SkipConfig(policy.layers))
        model.eval()
        correct, reward, executed = 0.0, 0.0, []
        try:
            for start in range(0, len(self.labels), self.batch_size):
                x = self.normalize(to_tensor(self.images[start:start + self.batch_size], device))
                y = torch.from_numpy(self.labels[start:start + self.batch_size]).to(device)
                with autocast(device, self.dtype):
                    out = model(x, sample=False)
                hit = out.logits.argmax(1) == y
                correct += float(hit.sum())
                reward += float(rewards(hit, out.executed, self.epsilon, self.penalty).sum())
                executed.append(out.executed.cpu().numpy())
        finally:
            model.set_skip_config(previous)
            model.train(was_training)
        n = max(len(self.labels), 1)
        steps = tuple((j, None if t == 0.0 else t) for j, t in enumerate(policy.layers) if t is not None)
        ran = np.concatenate(executed) if executed else np.zeros((0, model.depth), bool)
        return Evaluation(thresholds=tuple(policy.layers), steps=steps, exits=(), executed=ran,
                          exit_layer=np.full(len(ran), -1, np.int64), accuracy=correct / n, reward=reward / n)


def posttrain(model: SkipViT, calibration: ImageDataset, norm: Normalization, settings: PosttrainSettings | None = None,
              *, searched: Searched, train_data: ImageDataset | None = None, dtype: torch.dtype | None = None,
              progress: Callable[[int, int], None] | None = None) -> ParetoFront:
    """NSGA-II over the skip configurations of ``model`` on ``calibration``; the front of ``searched``."""
    settings = settings or PosttrainSettings()
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty")
    if settings.joint and (train_data is None or len(train_data) == 0):
        raise ConfigError("the joint variant fine-tunes the model: pass train_data")
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)

    def draw() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        if settings.evaluation == "fixed" or settings.batch_size >= len(calibration):
            return calibration.images, calibration.labels
        idx = np.sort(rng.choice(len(calibration), settings.batch_size, replace=False))
        return calibration.images[idx], calibration.labels[idx]

    genome = Genome(model.depth, None, grid_with_step(settings.grid_step))
    evaluator = TorchEvaluator(model, norm, *draw(), dtype=dtype, epsilon=settings.reward_epsilon,
                               penalty=settings.depth_penalty)
    cost = MacsCost(MacCosts.from_config(model.config, (), "cls", agents=True))
    problem = ConfigurationProblem(genome, evaluator, cost, reward=settings.joint)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.joint_lr, momentum=0.9) if settings.joint else None

    def each_generation(n: int) -> None:
        if progress is not None:
            progress(n, settings.generations)
        if n >= settings.generations:  # pymoo also notifies after the last generation
            return
        if settings.evaluation == "fresh":
            evaluator.images, evaluator.labels = draw()
        if optimizer is not None and train_data is not None:
            _fine_tune(model, optimizer, train_data, norm, settings, rng, dtype)

    last = minimize(problem, nsga2(genome, settings, genome.seeds((model.skip.thresholds, None))),
                    settings.generations, settings.seed, each_generation=each_generation)
    evaluator.images, evaluator.labels = calibration.images, calibration.labels
    points: list[ParetoPoint] = list(problem.archive.values())
    static = problem.static
    exact = (settings.evaluation == "fixed" or settings.batch_size >= len(calibration)) and not settings.joint
    if not exact:  # the archive's points were measured on other images or weights: measure the candidates again
        candidates = {p.genes for p in pareto_points(points, problem.objective, "compute")}
        candidates |= {genome.check(g) for g in last}
        points = [problem.score(g) for g in sorted(candidates)]
        static = problem.score(genome.static_genes)
    half = genome.genes_of([0.5] * model.depth) if 0.5 in genome.grid else None
    reference = problem.score(half) if half is not None else None
    front = pareto_points(points, problem.objective, "compute")
    meta: dict[str, Any] = {
        "model": searched.model, "images": len(calibration), "evaluations": len(problem.archive),
        "seconds": time.perf_counter() - start, "settings": settings.to_dict(), "grid": list(genome.grid),
        "reference_hypervolume": hypervolume([problem.objective(reference)]) if reference is not None else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return ParetoFront(searched=searched, cost="macs", objectives=problem.objectives, static=static,
                       points=tuple(front), reference=reference,
                       hypervolume=hypervolume([problem.objective(p) for p in front]), meta=meta)


def _fine_tune(model: SkipViT, optimizer: torch.optim.Optimizer, data: ImageDataset, norm: Normalization,
               settings: PosttrainSettings, rng: np.random.Generator, dtype: torch.dtype | None) -> None:
    device = next(model.parameters()).device
    normalize = Normalizer(norm).to(device)
    was_training = model.training
    model.train()
    for _ in range(settings.joint_steps):
        idx = rng.choice(len(data), min(settings.joint_batch_size, len(data)), replace=False)
        x = normalize(to_tensor(data.images[idx], device))
        y = torch.from_numpy(data.labels[idx]).to(device)
        with autocast(device, dtype):
            out = model(x, sample=True)
            loss, _ = joint_loss(model, out, y, settings.label_smoothing, settings.gamma, settings.reward_epsilon,
                                 settings.depth_penalty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.train(was_training)
