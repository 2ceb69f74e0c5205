"""``edgeskip calibrate``: calibrate, sweep budgets, pick thresholds, report on held-out images.

Writes, under the output folder::

    <feature>/e2cm.npz, e2cm.json   the exits with the chosen thresholds (what export bundles);
                                    the calibration hull is kept in e2cm.json's meta
    report.json                     calibration and test figures for every feature (and, for an
                                    agent model: agents alone, E²CM alone, both)
    hull.png                        accuracy against compute, calibration hulls and test points
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.train.e2cm_calibration import Calibration, calibrate, collect_caches
from edgeskip.e2cm.settings import CalibrateConfig, parse_exits
from edgeskip.e2cm.thresholds import (
    ExitCache,
    HullPoint,
    Sweep,
    plot_hulls,
    simulate,
    sweep,
)
from edgeskip.errors import ConfigError
from edgeskip.fsutil import atomic_write_json
from edgeskip.progress import progress_bar
from edgeskip.train.checkpoint import Checkpoint

__all__ = ["run_calibration", "split_images"]

log = logging.getLogger(__name__)


def split_images(splits: DatasetSplits, settings: CalibrateConfig) -> tuple[ImageDataset, ImageDataset]:
    """(calibration, held-out test) images as ``settings`` asks."""
    test = splits.test
    if settings.split == "test-half":
        first, second = [], []
        for k in range(len(test.classes)):
            idx = np.flatnonzero(test.labels == k)
            first.append(idx[: len(idx) // 2])
            second.append(idx[len(idx) // 2:])
        calib, test = test.subset(np.sort(np.concatenate(first))), test.subset(np.sort(np.concatenate(second)))
    else:
        calib = splits.train
    if settings.calibration_per_class is not None:
        calib = calib.per_class(settings.calibration_per_class)
    if settings.test_per_class is not None:
        test = test.per_class(settings.test_per_class)
    return calib, test


def _choose(sw: Sweep, settings: CalibrateConfig) -> HullPoint:
    return sw.for_budget(settings.budget) if settings.budget is not None else sw.within_accuracy(settings.max_drop)


def _figures(point: HullPoint, test: ExitCache) -> dict[str, Any]:
    out = simulate(test, point.thresholds)
    return {
        "budget": point.budget, "thresholds": list(point.thresholds),
        "calibration": {"compute": point.compute, "accuracy": point.accuracy},
        "test": {"compute": out.compute, "accuracy": out.accuracy, "mean_layers": out.mean_layers,
                 "exit_rates": out.exit_rates(test.n_exits)},
    }


def _sweep(cache: ExitCache, settings: CalibrateConfig, desc: str, progress: bool) -> Sweep:
    with progress_bar(total=round(1 / settings.step), desc=desc, unit="budget", enabled=progress) as bar:
        return sweep(cache, step=settings.step, restarts=settings.restarts, seed=settings.seed, on_step=bar.update)


def run_calibration(ckpt: Checkpoint, splits: DatasetSplits, settings: CalibrateConfig, out: str | Path, *,
                    progress: bool = False) -> dict[str, Any]:
    """Calibrate ``ckpt`` on ``splits`` and write exits, report and plot under ``out``."""
    out = Path(out)
    model = ckpt.build_model()
    agents = ckpt.has_agents
    if settings.path == "agents" and not agents:
        raise ConfigError(f"--path agents needs a checkpoint with skip agents; {ckpt.path} has none")
    calib, test = split_images(splits, settings)
    meta = {"checkpoint_name": ckpt.path.name, "checkpoint_sha256": ckpt.meta["weights"]["sha256"],
            "model": ckpt.model_name, "dataset": ckpt.dataset, "split": settings.split}  # no machine path: it travels
    cals: dict[str, Calibration] = calibrate(
        model, calib, ckpt.normalization, exits=parse_exits(settings.exits), features=settings.features,
        path=settings.path, batch_size=settings.batch_size, progress=progress, meta=meta)
    model_bytes = 4 * ckpt.model_config.param_count()
    report: dict[str, Any] = {
        "checkpoint": str(ckpt.path), "model": ckpt.model_name, "dataset": ckpt.dataset,
        "calibration_images": len(calib), "test_images": len(test), "settings": dataclasses.asdict(settings),
        "model_bytes_fp32": model_bytes, "features": {},
    }
    curves: list[tuple[str, list[tuple[float, float]], str, str]] = []
    marks: dict[str, tuple[float, float]] = {}
    e2cms = {f: c.e2cm for f, c in cals.items()}
    tests = collect_caches(model, e2cms, test, ckpt.normalization, path="static", batch_size=settings.batch_size,
                           progress=progress)
    if agents:  # every feature's decisions along the agents' own paths, calibration and test images
        agent_caches = (
            collect_caches(model, e2cms, calib, ckpt.normalization, path="agents", batch_size=settings.batch_size,
                           progress=progress),
            collect_caches(model, e2cms, test, ckpt.normalization, path="agents", batch_size=settings.batch_size,
                           progress=progress),
        )
    for feature, cal in cals.items():
        sw = _sweep(cal.cache, settings, f"thresholds ({feature})", progress)
        test_cache = tests[feature]
        chosen = _choose(sw, settings)
        static_test = simulate(test_cache, np.ones(test_cache.n_exits))
        entry: dict[str, Any] = {
            "means_bytes": {"float32": cal.e2cm.means.astype(np.float32).nbytes,
                            "float16": cal.e2cm.means.astype(np.float16).nbytes},
            "means_vs_model": cal.e2cm.means.astype(settings.means_dtype).nbytes / model_bytes,
            "calibration_static_accuracy": sw.static_accuracy, "test_static_accuracy": static_test.accuracy,
            "least_compute": sw.infeasible_below,
            "hull": [_figures(p, test_cache) for p in sw.hull],
            "e2cm": _figures(chosen, test_cache),
        }
        hull_meta = {"hull": [p.to_dict() for p in sw.hull]}
        curves.append((f"{feature}: calibration hull", [(p.compute, p.accuracy) for p in sw.hull], feature, "--"))
        curves.append((f"{feature}: test", [(h["test"]["compute"], h["test"]["accuracy"]) for h in entry["hull"]],
                       feature, "-"))
        if agents:
            entry.update(_with_agents(agent_caches[0][feature], agent_caches[1][feature], feature, settings, progress))
            hull_meta["hull_with_agents"] = entry.pop("_hull_with_agents")
            hull_meta["thresholds_with_agents"] = entry["both"]["thresholds"]
            curves.append((f"{feature}: agents + E²CM, test", entry.pop("_curve_both"), feature, ":"))
            marks["agents alone (test)"] = (entry["agents"]["compute"], entry["agents"]["accuracy"])
        e2cm = cal.e2cm.with_thresholds(chosen.thresholds).astype(settings.means_dtype)
        e2cm = dataclasses.replace(e2cm, meta={**e2cm.meta, **hull_meta, "budget": chosen.budget})
        entry["saved"] = str(e2cm.save(out / feature))
        report["features"][feature] = entry
        marks[f"{feature}: chosen (test)"] = (entry["e2cm"]["test"]["compute"], entry["e2cm"]["test"]["accuracy"])
    marks["static (test)"] = (1.0, report["features"][settings.features[0]]["test_static_accuracy"])
    report["plot"] = str(plot_hulls(curves, out / "hull.png", f"E²CM on {ckpt.model_name} / {ckpt.dataset}", marks))
    atomic_write_json(out / "report.json", report)
    return report


def _with_agents(calib_cache: ExitCache, test_cache: ExitCache, feature: str, settings: CalibrateConfig,
                 progress: bool) -> dict[str, Any]:
    """Agents alone, and agents + E²CM (thresholds searched on the agents' own paths)."""
    sw = _sweep(calib_cache, settings, f"thresholds ({feature}, with agents)", progress)
    alone = simulate(test_cache, np.ones(test_cache.n_exits))
    hull = [_figures(p, test_cache) for p in sw.hull]
    return {
        "agents": {"compute": alone.compute, "accuracy": alone.accuracy, "mean_layers": alone.mean_layers},
        "both": _figures(_choose(sw, settings), test_cache),
        "both_hull": hull,
        "_hull_with_agents": [p.to_dict() for p in sw.hull],
        "_curve_both": [(h["test"]["compute"], h["test"]["accuracy"]) for h in hull],
    }
