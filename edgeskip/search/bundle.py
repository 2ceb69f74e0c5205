"""``edgeskip search``: NSGA-II over a bundle's configurations, accuracy from its own stages, costs from a profile.

The genome (:class:`~edgeskip.search.genome.Genome`) has a gene per layer the bundle holds and, when it
has E²CM exits, a gene per exit. Exit thresholds live on each exit's own scale (the top class-mean
probability; with the CLS feature and ten classes it stays near 0.1-0.3), so each exit's grid is made
from the search images: the thresholds at which a share ``exit_rates`` of them would leave there on
the static path, plus the bundle's calibrated threshold (:func:`~edgeskip.search.pathcache.exit_grid`).
Accuracy is exact (:class:`~edgeskip.search.pathcache.PathCache`); latency and energy are what the
device's profile predicts for each configuration's usage (:class:`~edgeskip.search.costs.ProfileCost`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import ConfigError
from edgeskip.front import ParetoFront, ParetoPoint, Searched, paired_loss, pareto_path
from edgeskip.policy import Policy
from edgeskip.profile import Profile
from edgeskip.runtimes.inputs import prepare
from edgeskip.runtimes.runtime import Runtime
from edgeskip.search.costs import ProfileCost, ProfileCosts
from edgeskip.search.genome import Genome, grid_with_step
from edgeskip.search.pathcache import PathCache, exit_grid
from edgeskip.search.plot import plot_front
from edgeskip.search.problem import ConfigurationProblem, hypervolume, minimize, nsga2, pareto_points
from edgeskip.search.settings import BundleSearchSettings

__all__ = ["BundleSearchSettings", "eval_chunk", "search_and_save", "search_bundle", "search_precisions",
           "with_holdout"]


def search_bundle(bundle_dir: str | Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                  profile: Profile, settings: BundleSearchSettings | None = None, *,
                  holdout: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ParetoFront:
    """NSGA-II (pymoo) over the bundle's genes on ``images``, costs predicted from ``profile``; every point of
    the front then also measured on the ``holdout`` (images, labels) when given, which choose nothing."""
    settings = settings or BundleSearchSettings()
    start = time.perf_counter()
    if len(images) == 0:
        raise ConfigError("no calibration images: the search measures accuracy on them")
    rt = Runtime(bundle_dir, policy="static", whole_static=False)
    try:
        m = rt.manifest
        cost = ProfileCost(ProfileCosts.from_profile(profile, m.config.depth), settings.batch)
        chunk = eval_chunk(rt, settings.batch)
        cache = PathCache(rt, prepare(images, rt.input_spec), labels, pool_mb=settings.pool_mb, chunk=chunk)
        cache.evaluate(Policy("static"))  # every exit's state on the static path, for the exit grids
        own_exits = m.e2cm.thresholds if m.e2cm else None
        genome = Genome(m.config.depth, [j for j in range(m.config.depth) if j not in m.removed],
                        grid_with_step(settings.grid_step) if m.agents is not None else (0.0,),
                        [exit_grid(cache, layer, settings.exit_rates, own_exits[i] if own_exits else 1.0)
                         for i, layer in enumerate(cache.exit_layers)],
                        search_precisions(settings, rt.precisions, cost.costs.precisions))
        problem = ConfigurationProblem(genome, cache, cost)
        seeds = genome.seeds((m.agents.thresholds if m.agents else None, own_exits))
        minimize(problem, nsga2(genome, settings, seeds), settings.generations, settings.seed,
                 each_generation=(lambda n: progress(n, settings.generations)) if progress else None)
        points = pareto_points(list(problem.archive.values()), problem.objective, "latency_ms")
        static, evaluations, objectives = problem.static, len(problem.archive), problem.objectives
        hv = hypervolume([problem.objective(p) for p in points])
        static, *points = _with_accuracies(cache, [static, *points], held_out=False)
        states, layers_computed, recomputed = cache.states, cache.layers_computed, cache.recomputed
        seconds = time.perf_counter() - start
        del problem, cache  # the search's states: freed before the held-out images get their own
        held: dict[str, Any] = {}
        if holdout is not None:
            held_start = time.perf_counter()
            static, *points = with_holdout(rt, [static, *points], *holdout, pool_mb=settings.pool_mb, chunk=chunk)
            held = {"holdout": {"images": len(holdout[1]), "seconds": time.perf_counter() - held_start}}
        meta = {"model": m.model_name, "images": len(labels), "evaluations": evaluations,
                "seconds": seconds, "states": states, "chunk": chunk,
                "layers_computed": layers_computed, "recomputed": recomputed, **held,
                "settings": {**settings.to_dict(), "grid": list(genome.grid), "precisions": list(genome.precisions),
                             "exit_grids": [list(g) for g in genome.exit_grids]},
                "backend": rt.backend_info.get("backend"), "profile_created_utc": profile.created_utc,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return ParetoFront(
            searched=Searched(kind="bundle", model=m.model_name, fingerprint=m.fingerprint,
                              weights_sha256=m.weights.checkpoint_sha256),
            cost="profile", objectives=objectives, device=profile.device, batch=settings.batch,
            energy_source=cost.costs.energy_source, static=static, points=tuple(points),
            hypervolume=hv, meta=meta)
    finally:
        rt.close()


def search_precisions(settings: BundleSearchSettings, runs: Sequence[str], timed: Sequence[str]) -> tuple[str, ...]:
    """What each layer's precision gene chooses from: the settings' list (or, for ``auto``, every precision the
    Runtime ``runs`` the layers in), each one the profile ``timed``, the backend's own first."""
    if timed[0] != runs[0]:
        raise ConfigError(f"the profile timed the layers in {timed[0]} and the search runs them in {runs[0]}: profile "
                          "the bundle with the backend the search uses")
    wanted = settings.precision_list or tuple(p for p in runs if p in timed)
    missing = [p for p in wanted if p not in runs or p not in timed]
    if missing or wanted[0] != runs[0]:
        raise ConfigError(f"precisions {','.join(wanted)}: the backend runs this bundle's layers in {', '.join(runs)} "
                          f"({runs[0]} first), the profile timed {', '.join(timed)}"
                          + (f"; {', '.join(missing)} is not among both" if missing else ""))
    return wanted


def eval_chunk(rt: Runtime, batch: int) -> int:
    """The batch the path cache runs stages in: 32 (fast, exact) unless some format a layer may run in is
    ``batch_dependent`` (INT8 activations quantized over each call), whose outputs are then computed at the
    ``batch`` the front is for, as the Runtime computes them there (at batch 1 exactly)."""
    formats = rt.manifest.formats
    return batch if any(info.batch_dependent for info in formats.values()) else PathCache.CHUNK


def with_holdout(rt: Runtime, points: Sequence[ParetoPoint], images: npt.NDArray[np.uint8],
                 labels: npt.NDArray[np.int64], *, pool_mb: float, chunk: int = 32) -> list[ParetoPoint]:
    """``points`` (the static model first) with their accuracy on held-out images and the paired standard error
    of each one's loss against the static model there, from the bundle's own stages (exact, as the Runtime)."""
    if len(images) == 0 or len(images) != len(labels):
        raise ConfigError(f"need held-out images with one label each, got {len(images)} images, {len(labels)} labels")
    return _with_accuracies(PathCache(rt, prepare(images, rt.input_spec), labels, pool_mb=pool_mb, chunk=chunk),
                            points, held_out=True)


def _with_accuracies(cache: PathCache, points: Sequence[ParetoPoint], *, held_out: bool) -> list[ParetoPoint]:
    """``points`` (the static model first) run on the cache's images: the paired standard error of each one's
    loss against the static model there and, on ``held_out`` images, the accuracy too."""
    correct = [cache.evaluate(p.policy).logits.argmax(axis=1) == cache.labels for p in points]  # type: ignore[union-attr]
    out = []
    for p, ok in zip(points, correct, strict=True):
        se = paired_loss(ok, correct[0])[1] if len(ok) > 1 else 0.0
        out.append(dataclasses.replace(p, holdout_accuracy=float(ok.mean()), holdout_loss_se=se) if held_out
                   else dataclasses.replace(p, loss_se=se))
    return out


def search_and_save(bundle_dir: str | Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                    profile: Profile, settings: BundleSearchSettings, *, calibration: str,
                    holdout: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], str] | None = None,
                    out: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[ParetoFront, Path, Path]:
    """:func:`search_bundle`, then the front (with where its images came from) saved to ``out`` (default
    ``pareto/<device>.json`` beside the bundle's files) and its picture beside it; (front, json, png).
    ``holdout``: (images, labels, where they come from)."""
    front = search_bundle(bundle_dir, images, labels, profile, settings, progress=progress,
                          holdout=None if holdout is None else holdout[:2])
    meta = {**front.meta, "calibration": calibration}
    if holdout is not None:
        meta["holdout"] = {**meta["holdout"], "source": holdout[2]}
    front = dataclasses.replace(front, meta=meta)
    path = Path(out) if out else pareto_path(bundle_dir, str(front.device))
    front.save(path)
    png = plot_front(front, path.with_suffix(".png"), f"{front.searched.model} on {front.device}: Pareto front")
    return front, path, png
