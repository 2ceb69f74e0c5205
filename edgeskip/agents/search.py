"""NSGA-II post-training of per-layer skip configurations (pymoo).

The problem (:class:`SkipProblem`) owns the space and the objectives; the algorithm is
pymoo's NSGA-II with our sampling, one-point crossover, replace-one-gene mutation and a
repair that keeps at least one layer; :func:`search_skip_configs` drives it and returns
a typed :class:`SearchResult`.

Genome: one integer gene per layer (see :class:`~edgeskip.agents.genes.GeneCodec`).
Objectives (all minimised): mean executed layers, ``1 - accuracy`` and, in the ``joint``
variant, ``-mean reward``. The joint variant also fine-tunes the ViT and agents by a few
SGD steps (joint loss) on training images at the start of every generation.

Evaluation images: ``fresh`` draws a new batch of held-out images every generation (the
thesis's scheme); ``fixed`` uses the same calibration set throughout. In both cases the
final Pareto set is re-evaluated on the whole calibration set, so the reported points are
comparable with each other and with the reference 0.5-threshold model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from edgeskip.agents.genes import DEFAULT_GRID, GeneCodec, SkipConfig
from edgeskip.agents.model import SkipViT
from edgeskip.agents.operators import KeepOneLayer, OnePointCrossover, ReplaceGeneMutation, SeededSampling
from edgeskip.agents.reinforce import rewards
from edgeskip.agents.settings import SearchConfig
from edgeskip.agents.trainer import joint_loss
from edgeskip.data.dataset import ImageDataset
from edgeskip.errors import ConfigError
from edgeskip.fsutil import atomic_write_json
from edgeskip.normalization import Normalization
from edgeskip.plots import save_figure
from edgeskip.train.evaluate import Normalizer, autocast, to_tensor

__all__ = ["DEFAULT_GRID", "REFERENCE_POINT", "Evaluator", "ParetoPoint", "SearchConfig", "SearchResult",
           "SkipProblem", "hypervolume", "plot_front", "search_skip_configs"]

log = logging.getLogger(__name__)

# Hypervolume reference in (executed fraction, error[, -reward]) space, fixed for every
# model so hypervolumes compare: a little beyond "every layer, every input wrong".
REFERENCE_POINT = (1.1, 1.1, 1.1)


@dataclasses.dataclass(frozen=True)
class ParetoPoint:
    genes: tuple[int, ...]
    config: SkipConfig
    accuracy: float
    mean_executed: float
    executed_fraction: float
    reward: float

    def to_dict(self) -> dict[str, Any]:
        return {"genes": list(self.genes), **self.config.to_dict(), "accuracy": self.accuracy,
                "mean_executed_layers": self.mean_executed, "executed_fraction": self.executed_fraction,
                "reward": self.reward}


@dataclasses.dataclass(frozen=True)
class SearchResult:
    points: tuple[ParetoPoint, ...]  # non-dominated, sorted by executed layers
    reference: ParetoPoint  # the uniform 0.5-threshold model on the same images
    hypervolume: float
    reference_hypervolume: float
    objectives: tuple[str, ...]
    evaluations: int
    seconds: float
    settings: SearchConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "objectives": list(self.objectives), "hypervolume": self.hypervolume,
            "reference_hypervolume": self.reference_hypervolume, "hypervolume_reference_point":
            list(REFERENCE_POINT[: len(self.objectives)]), "evaluations": self.evaluations, "seconds": self.seconds,
            "settings": dataclasses.asdict(self.settings), "reference_0.5": self.reference.to_dict(),
            "pareto": [p.to_dict() for p in self.points],
        }

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)


class Evaluator:
    """Accuracy, executed layers and reward of one configuration on a set of images."""

    def __init__(self, model: SkipViT, norm: Normalization, *, batch_size: int = 256,
                 dtype: torch.dtype | None = None, epsilon: float = -1e-5, penalty: float = 1.0) -> None:
        self.model = model
        self.normalize = Normalizer(norm).to(next(model.parameters()).device)
        self.batch_size = batch_size
        self.dtype = dtype
        self.epsilon = epsilon
        self.penalty = penalty
        self.count = 0

    @torch.no_grad()
    def __call__(self, config: SkipConfig, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> tuple[float, float, float]:
        """(accuracy, mean executed layers, mean reward) of ``config`` on the images."""
        model = self.model
        device = next(model.parameters()).device
        previous, was_training = model.skip, model.training
        model.set_skip_config(config)
        model.eval()
        correct = executed = reward = 0.0
        try:
            for start in range(0, len(labels), self.batch_size):
                x = self.normalize(to_tensor(images[start : start + self.batch_size], device))
                y = torch.from_numpy(labels[start : start + self.batch_size]).to(device)
                with autocast(device, self.dtype):
                    out = model(x, sample=False)
                hit = out.logits.argmax(1) == y
                correct += float(hit.sum())
                executed += float(out.executed.sum())
                reward += float(rewards(hit, out.executed, self.epsilon, self.penalty).sum())
        finally:
            model.set_skip_config(previous)
            model.train(was_training)
        self.count += 1
        n = max(len(labels), 1)
        return correct / n, executed / n, reward / n


class SkipProblem(Problem):
    """Integer genome per layer -> (executed fraction, error[, -reward]) on current images."""

    def __init__(self, codec: GeneCodec, evaluator: Evaluator, images: npt.NDArray[np.uint8],
                 labels: npt.NDArray[np.int64], joint: bool) -> None:
        super().__init__(n_var=codec.depth, n_obj=3 if joint else 2, xl=0, xu=codec.n_values - 1, vtype=int)
        self.codec, self.evaluator, self.joint = codec, evaluator, joint
        self.images, self.labels = images, labels

    def objectives(self, genes: npt.NDArray[np.integer[Any]]) -> list[float]:
        acc, executed, reward = self.evaluator(self.codec.decode(genes), self.images, self.labels)
        f = [executed / self.codec.depth, 1.0 - acc]
        return f + [-reward] if self.joint else f

    def _evaluate(self, X: npt.NDArray[Any], out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        out["F"] = np.asarray([self.objectives(np.asarray(x, dtype=np.int64)) for x in X])


class _PerGeneration(Callback):
    """Before each generation: new evaluation images (fresh mode) and joint fine-tuning."""

    def __init__(self, hook: Any) -> None:
        super().__init__()
        self.hook = hook

    def notify(self, algorithm: Any) -> None:
        self.hook(algorithm.n_gen)


def hypervolume(F: npt.NDArray[Any]) -> float:
    F = np.atleast_2d(np.asarray(F, dtype=float))
    return float(HV(ref_point=np.asarray(REFERENCE_POINT[: F.shape[1]]))(F))


def search_skip_configs(
    model: SkipViT,
    calibration: ImageDataset,
    norm: Normalization,
    settings: SearchConfig | None = None,
    *,
    train_data: ImageDataset | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> SearchResult:
    """Run NSGA-II over skip configurations of ``model`` and return the Pareto set."""
    settings = settings or SearchConfig()
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty")
    if settings.joint and (train_data is None or len(train_data) == 0):
        raise ConfigError("the joint variant fine-tunes the model: pass train_data")
    start = time.perf_counter()
    codec = GeneCodec.with_step(model.depth, settings.grid_step)
    evaluator = Evaluator(model, norm, dtype=dtype, epsilon=settings.reward_epsilon, penalty=settings.depth_penalty)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)

    def draw() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        if settings.evaluation == "fixed" or settings.batch_size >= len(calibration):
            return calibration.images, calibration.labels
        idx = np.sort(rng.choice(len(calibration), settings.batch_size, replace=False))
        return calibration.images[idx], calibration.labels[idx]

    problem = SkipProblem(codec, evaluator, *draw(), joint=settings.joint)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.joint_lr, momentum=0.9) if settings.joint else None
    bar = _progress(settings.generations, progress)

    def per_generation(n_gen: int) -> None:
        bar.update()
        if n_gen >= settings.generations:  # pymoo also notifies after the last generation
            return
        if settings.evaluation == "fresh":
            problem.images, problem.labels = draw()
        if optimizer is not None and train_data is not None:
            _fine_tune(model, optimizer, train_data, norm, settings, rng, dtype)

    upper = [codec.n_values - 1] * codec.depth
    algorithm = NSGA2(
        pop_size=settings.pop_size, sampling=SeededSampling(upper, _seeds(codec)),
        crossover=OnePointCrossover(settings.crossover_prob), mutation=ReplaceGeneMutation(upper, settings.mutation_prob),
        repair=KeepOneLayer(), eliminate_duplicates=True,
    )
    with bar:
        res = minimize(problem, algorithm, ("n_gen", settings.generations), seed=settings.seed,
                       callback=_PerGeneration(per_generation), verbose=False)

    # Re-evaluate the final front and the 0.5 reference on the whole calibration set.
    problem.images, problem.labels = calibration.images, calibration.labels
    genomes = np.unique(np.atleast_2d(res.pop.get("X")).astype(np.int64), axis=0)
    points = [_point(codec.decode(g), problem, tuple(int(x) for x in g)) for g in genomes]
    F = np.asarray([_objectives(p, settings.joint) for p in points])
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    # Genomes with identical objectives (e.g. thresholds 0 and 0.25 on a layer whose agent
    # always says > 0.25) are one point of the front: keep the first genome of each.
    unique: dict[tuple[float, ...], ParetoPoint] = {}
    for i in sorted(front, key=lambda i: points[i].genes):
        unique.setdefault(tuple(F[i]), points[i])
    pareto = sorted(unique.values(), key=lambda p: (p.mean_executed, -p.accuracy))
    uniform = SkipConfig.uniform(model.depth, 0.5)
    genes = codec.encode_or_none(uniform)
    reference = _point(uniform, problem, () if genes is None else tuple(int(g) for g in genes))
    objectives = ("executed_fraction", "error") + (("-reward",) if settings.joint else ())
    return SearchResult(
        points=tuple(pareto), reference=reference,
        hypervolume=hypervolume(np.asarray([_objectives(p, settings.joint) for p in pareto])),
        reference_hypervolume=hypervolume(np.asarray([_objectives(reference, settings.joint)])),
        objectives=objectives, evaluations=evaluator.count, seconds=time.perf_counter() - start, settings=settings,
    )


def _seeds(codec: GeneCodec) -> list[Any]:
    """The reference models the search starts from: every layer at threshold 0.5, and every layer always on."""
    configs = [SkipConfig.uniform(codec.depth, 0.5), SkipConfig.uniform(codec.depth, 0.0)]
    return [g for g in (codec.encode_or_none(c) for c in configs) if g is not None]


def _point(config: SkipConfig, problem: SkipProblem, genes: tuple[int, ...]) -> ParetoPoint:
    """Evaluate ``config`` on the problem's current images (``genes`` is () when off the grid)."""
    acc, executed, reward = problem.evaluator(config, problem.images, problem.labels)
    return ParetoPoint(genes, config, acc, executed, executed / config.depth, reward)


def _objectives(p: ParetoPoint, joint: bool) -> list[float]:
    f = [p.executed_fraction, 1.0 - p.accuracy]
    return f + [-p.reward] if joint else f


def _fine_tune(model: SkipViT, optimizer: torch.optim.Optimizer, data: ImageDataset, norm: Normalization,
               settings: SearchConfig, rng: np.random.Generator, dtype: torch.dtype | None) -> None:
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


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="NSGA-II", unit="gen", disable=not enabled, leave=False)


def plot_front(result: SearchResult, out: str | Path, title: str) -> Path:
    """Accuracy vs mean executed layers: every Pareto point, and the 0.5 reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    xs = [p.mean_executed for p in result.points]
    ys = [p.accuracy for p in result.points]
    ax.step(xs, ys, where="post", color="tab:blue", alpha=0.4)
    ax.scatter(xs, ys, color="tab:blue", label=f"Pareto set ({len(xs)} configs, HV {result.hypervolume:.3f})", zorder=3)
    ax.scatter([result.reference.mean_executed], [result.reference.accuracy], marker="*", s=160, color="tab:red",
               label=f"all thresholds 0.5 (HV {result.reference_hypervolume:.3f})", zorder=4)
    ax.set(xlabel="mean executed layers", ylabel="accuracy (calibration set)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, out)

