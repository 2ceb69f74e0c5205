"""``edgeskip quickstart``: the whole journey on data every installation has.

train (ViT + skip agents) -> calibrate (E²CM exits) -> export (cpu bundle) -> profile (this
machine) -> search (NSGA-II, accuracy vs predicted latency) -> select (a latency budget) ->
run (``edgeskip.Runtime`` on held-out images, static and selected side by side) -> report.

The default runs on scikit-learn's 8x8 digits with ``vit-digits-wide`` (width 192, so that a layer
costs more than the decision to skip it) in under a minute on two quiet CPU cores;
``dataset="cifar10"`` runs the same journey on a CIFAR-10 copy. Everything is written under one
folder, the report last (as ``quickstart.json`` and ``report.md``), so a folder without it is an
interrupted run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.errors import ConfigError
from edgeskip.fsutil import atomic_write_bytes, atomic_write_json
from edgeskip.progress import progress_bar, progress_counter, progress_steps
from edgeskip.profile import Profile

__all__ = ["MARKER", "PRESETS", "STAGES", "QuickstartConfig", "run_quickstart"]

log = logging.getLogger(__name__)
MARKER = "quickstart.json"  # the report, written last
OWNER = ".edgeskip-quickstart"  # written first: --force replaces only folders holding it
STAGES = ("train", "calibrate", "export", "profile", "search", "select", "run")
DEFAULT_MAX_LOSS = 0.01  # the default pick's largest accuracy loss against static, one standard error included


@dataclasses.dataclass(frozen=True)
class Preset:
    """What the journey uses on one dataset unless the user says otherwise."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    augment: str
    precision: str
    depth_penalty: float
    calibration_per_class: int
    search_images: int
    pop_size: int
    generations: int
    why: str = ""  # why the model is sized so, for the report


PRESETS: dict[str, Preset] = {
    "digits": Preset("vit-digits-wide", 30, 64, 1e-3, 2.0, "none", "auto", 0.25, 1000, 400, 16, 12,
                     why="width 192 (vit9's) so that a layer carries real work: at width 64 a layer took 0.03 ms, "
                         "no more than deciding to skip it, and the selected configuration ran slower than static"),
    "cifar10": Preset("vit9", 3, 128, 1e-3, 1.0, "basic", "auto", 0.25, 500, 1000, 25, 20),
}


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """One quickstart run; ``None`` fields take the dataset's preset."""

    out: str = "edgeskip-quickstart"
    dataset: str = "digits"
    data: str | None = None
    model: str | None = None
    epochs: int | None = None
    limit_per_class: int | None = None
    budget_ms: float | None = None  # default: the cheapest within DEFAULT_MAX_LOSS (see _select)
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in PRESETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; the quickstart runs on {', '.join(PRESETS)}")
        if self.dataset == "cifar10" and self.data is None:
            raise ConfigError("--dataset cifar10 needs --data DIR (a CIFAR-10 folder or .tar.gz; see the README)")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.limit_per_class is not None and self.limit_per_class < 4:
            raise ConfigError(f"--limit-per-class must be >= 4, got {self.limit_per_class}")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ConfigError(f"--budget-ms must be a positive number, got {self.budget_ms}")

    @property
    def preset(self) -> Preset:
        return PRESETS[self.dataset]


class _Stages:
    """Announces each stage as ``[k/N] name: what`` and records how long it took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        k = STAGES.index(name) + 1
        log.info("[%d/%d] %s: %s", k, len(STAGES), name, what)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        log.info("[%d/%d] %s done in %.1f s", k, len(STAGES), name, self.seconds[name])


def _prepare_out(out: Path, force: bool) -> None:
    """An empty folder for the run; ``force`` replaces only an earlier quickstart's own folder."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is not a folder; choose another --out")
        ours = (out / OWNER).is_file() or (out / MARKER).is_file()
        protected = out.resolve() in {Path.cwd().resolve(), Path.home().resolve(), Path(out.resolve().anchor)}
        if any(out.iterdir()):
            if not ours or protected:
                raise ConfigError(f"{out} exists and is not empty (and is not a quickstart folder); choose another --out")
            if not force:
                raise ConfigError(f"{out} holds an earlier quickstart: pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / OWNER).write_text("made by edgeskip quickstart; --force replaces this folder\n")


def run_quickstart(cfg: QuickstartConfig) -> str:
    """Run the journey into ``cfg.out``; returns the report as text (also written to ``report.md``)."""
    from edgeskip.data import load_dataset
    from edgeskip.variants import MODEL_CONFIGS

    p = cfg.preset
    model = cfg.model or p.model
    MODEL_CONFIGS.get(model)  # an unknown model fails here, before anything is written or replaced
    out = Path(cfg.out)
    start = time.perf_counter()
    stage = _Stages()
    splits = load_dataset(cfg.dataset, cfg.data, limit_per_class=cfg.limit_per_class, progress=cfg.progress)
    _prepare_out(out, cfg.force)
    # the test split's first half calibrates the search, the second half is what the report runs on
    search_pool, held_out = splits.test.halves()
    report: dict[str, Any] = {"dataset": cfg.dataset, "model": model, "train_images": len(splits.train),
                              "model_why": p.why if model == p.model else "",
                              "search_images": 0, "held_out_images": len(held_out)}

    with stage("train", f"{model} with one skip agent per layer (REINFORCE), {len(splits.train)} {cfg.dataset} images"):
        report["train"] = _train(cfg, model, splits, out / "run")
    best = Path(report["train"]["checkpoint"])  # calibrate and export the best epoch, not the last
    with stage("calibrate", "E²CM class means and exit thresholds on the training images, along the agents' paths"):
        report["calibrate"] = _calibrate(cfg, best, out / "e2cm", splits)
    with stage("export", "a checksummed cpu bundle: per-layer ONNX, gate graph, agents, exits"):
        report["export"] = _export(cfg, model, best, out)
    bundle = Path(report["export"]["bundle"])
    with stage("profile", "every stage of the bundle on this machine"):
        profile, report["profile"] = _profile(cfg, bundle)
    calib = search_pool.take(p.search_images)
    report["search_images"] = len(calib)
    with stage("search", f"NSGA-II over layer and exit thresholds on {len(calib)} images, latency predicted"):
        front, report["search"] = _search(cfg, bundle, calib, held_out, profile)
    with stage("select", "the fastest configuration within 1 point of static (or the most accurate within "
                         "--budget-ms)"):
        report["select"] = _select(cfg, bundle, front)
    with stage("run", f"edgeskip.Runtime on {len(held_out)} held-out images, static and selected interleaved"):
        report["run"] = _run(bundle, held_out, cfg.progress)
    report["seconds"] = {**stage.seconds, "total": time.perf_counter() - start}
    report["files"] = {
        "bundle": str(bundle), "profile": report["profile"]["path"], "pareto": report["search"]["path"],
        "pareto_plot": report["search"]["plot"], "training_curves": report["train"]["plot"],
        "report": str(out / "report.md"), "report_json": str(out / MARKER),
    }
    text = format_report(report)
    atomic_write_bytes(out / "report.md", (text + "\n").encode())
    atomic_write_json(out / MARKER, report)
    return text


def _train(cfg: QuickstartConfig, model: str, splits: Any, run: Path) -> dict[str, Any]:
    from edgeskip.plots import plot_training_curves
    from edgeskip.train.config import TrainConfig
    from edgeskip.train.run import train

    p = cfg.preset
    tc = TrainConfig(model=model, dataset=cfg.dataset, data=cfg.data, out=str(run), epochs=cfg.epochs or p.epochs,
                     batch_size=p.batch_size, lr=p.lr, warmup_epochs=p.warmup_epochs, augment=p.augment,
                     precision=p.precision, agents=True, depth_penalty=p.depth_penalty, progress=cfg.progress,
                     limit_per_class=cfg.limit_per_class)
    result = train(tc, splits)
    pointer = json.loads((run / "best.json").read_text())
    best = next(h for h in result.history if h["epoch"] == pointer["epoch"])
    plot = plot_training_curves(result.history, run.parent / "training.png", f"{model} with agents on {cfg.dataset}")
    return {"epochs": tc.epochs, "precision": result.precision, "checkpoint": str(run / pointer["checkpoint"]),
            "best_epoch": pointer["epoch"], "plot": str(plot), "test_accuracy": best.get("test_accuracy"),
            "executed_fraction": best.get("test_executed_fraction"),
            "images_per_second": result.final.get("images_per_second")}


def _calibrate(cfg: QuickstartConfig, checkpoint: Path, out: Path, splits: Any) -> dict[str, Any]:
    from edgeskip.train.e2cm_pipeline import run_calibration
    from edgeskip.e2cm.settings import CalibrateConfig
    from edgeskip.train.checkpoint import load_checkpoint

    settings = CalibrateConfig(feature="cls", path="agents", calibration_per_class=cfg.preset.calibration_per_class)
    rep = run_calibration(load_checkpoint(checkpoint), splits, settings, out, progress=cfg.progress)
    e = rep["features"]["cls"]
    return {"dir": e["saved"], "calibration_images": rep["calibration_images"],
            "thresholds": e["e2cm"]["thresholds"], "both_test": e.get("both", {}).get("test")}


def _export(cfg: QuickstartConfig, model: str, checkpoint: Path, out: Path) -> dict[str, Any]:
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    result = export_bundle(ExportConfig(model=model, target="cpu", out=str(out / "bundle"), checkpoint=str(checkpoint),
                                        e2cm=str(out / "e2cm" / "cls"), data=cfg.data, fidelity_images=16),
                           progress=cfg.progress)
    fid = result.manifest.fidelity
    assert fid is not None  # every export measures itself
    return {"bundle": str(result.path), "files": len(result.manifest.files),
            "megabytes": sum(f.bytes for f in result.manifest.files.values()) / 2**20,
            "max_stage_error": max(fid.onnx.values(), default=0.0),
            "gate_same_decisions": f"{fid.gate.same_decisions}/{fid.gate.images}"}


def _profile(cfg: QuickstartConfig, bundle: Path) -> tuple[Profile, dict[str, Any]]:
    from edgeskip.devices.profiler import ProfileSettings, profile_bundle

    with progress_steps("profile cpu", unit="piece", enabled=cfg.progress) as step:
        # the default number of timed passes (the quick profile's few passes misjudged static by 1.5x here),
        # with short energy blocks: the energy is an estimate on this machine anyway
        settings = ProfileSettings((1,), energy_seconds=0.1)
        profile = profile_bundle(bundle, "cpu", settings=settings, progress=step)
    path = profile.save(bundle)
    pieces = profile.batches["1"]
    layers = [v.median_ms for k, v in pieces.items() if k.startswith("layer_") and "@" not in k]
    return profile, {"path": str(path), "backend": profile.backend.get("backend"),
                     "energy": profile.energy_source, "layer_ms": [min(layers), max(layers)]}


def _search(cfg: QuickstartConfig, bundle: Path, calib: Any, held_out: Any,
            profile: Profile) -> tuple[Any, dict[str, Any]]:
    from edgeskip.search.bundle import search_and_save
    from edgeskip.search.settings import BundleSearchSettings

    p = cfg.preset
    settings = BundleSearchSettings(pop_size=p.pop_size, generations=p.generations)
    with progress_counter("NSGA-II", settings.generations, unit="gen", enabled=cfg.progress) as step:
        front, path, plot = search_and_save(bundle, calib.images, calib.labels, profile, settings, progress=step,
                                            calibration=f"{len(calib)} {cfg.dataset} images from the test-half split",
                                            holdout=(held_out.images, held_out.labels,
                                                     f"{len(held_out)} {cfg.dataset} images from the test-second-half "
                                                     "split (the report's)"))
    return front, {"path": str(path), "plot": str(plot), "points": len(front.points),
                   "hypervolume": front.hypervolume, "seconds": front.meta["seconds"],
                   "static_predicted_ms": front.static.cost('latency_ms'), "static_accuracy": front.static.accuracy}


def _select(cfg: QuickstartConfig, bundle: Path, front: Any) -> dict[str, Any]:
    from edgeskip.bundle import Bundle
    from edgeskip.front import NothingFits, cheapest_within, check_degenerate, choose
    from edgeskip.search.select import record_selection

    try:
        if cfg.budget_ms is not None:
            budget, why = cfg.budget_ms, "--budget-ms"
            chosen = choose(front, budget_ms=budget)
        else:
            # predicted at least 10% below static: the latency model's error here, as ratios to static (a point
            # predicted 4% faster than static ran 22% slower in one quickstart)
            chosen = cheapest_within(front, DEFAULT_MAX_LOSS, margin=0.1)
            budget = chosen.budget
            why = "also predicted at least 10% faster than static; --budget-ms sets a budget instead"
        b = Bundle.open(bundle, verify=False)
        check_degenerate(chosen, b.manifest.config.num_classes,
                         what_to_do=f"raise --budget-ms (the bundle, profile and front are in {bundle})")
        record_selection(b, chosen)
    except NothingFits as exc:
        raise ConfigError(f"{exc}; the bundle, profile and front are in {bundle}") from None
    table = []  # what other budgets would get: a user picks by latency
    for share in (0.4, 0.6, 0.8, 1.0):
        try:
            q = choose(front, budget_ms=share * front.static.cost('latency_ms')).point
            table.append({"share": share, "budget_ms": share * front.static.cost('latency_ms'), "accuracy": q.accuracy,
                          "predicted_ms": q.latency_ms, "executed_layers": q.executed_layers})
        except NothingFits:
            table.append({"share": share, "budget_ms": share * front.static.cost('latency_ms'), "accuracy": None})
    pt = chosen.point
    return {"budget_ms": budget, "why": why, "describe": chosen.describe(), "accuracy": pt.accuracy,
            "predicted_ms": pt.latency_ms, "executed_layers": pt.executed_layers, "exit_rate": pt.exit_rate,
            "thresholds": list(pt.thresholds), "budgets": table,
            "exit_thresholds": None if pt.exit_thresholds is None else list(pt.exit_thresholds)}


def _run(bundle: Path, held_out: Any, show: bool) -> dict[str, Any]:
    """Static and the selected default, one held-out image at a time, in alternating order."""
    from edgeskip.front import paired_loss
    from edgeskip.runtimes import Runtime

    with Runtime(bundle, policy="default") as rt:
        for policy in ("static", "default"):  # warm both paths up (the static one loads the monolithic model)
            rt.set_policy(policy)
            for i in range(min(10, len(held_out))):
                rt(held_out.images[i])
        times: dict[str, list[float]] = {"static": [], "default": []}
        correct: dict[str, list[bool]] = {"static": [], "default": []}
        layers, exits = 0, 0
        paths: collections.Counter[str] = collections.Counter()
        for i in progress_bar(range(len(held_out)), desc="held-out", unit="img", enabled=show):
            image, label = held_out.images[i], int(held_out.labels[i])
            for policy in (("static", "default") if i % 2 == 0 else ("default", "static")):
                rt.set_policy(policy)
                res = rt(image)
                times[policy].append(res.latency_ms)
                correct[policy].append(bool(res.labels[0] == label))
                if policy == "default":
                    layers += int(res.executed[0].sum())
                    exits += int(res.exit_layer[0] >= 0)
                    paths[res.paths()[0]] += 1
    n = len(held_out)
    row = {k: {"accuracy": sum(correct[k]) / n, "p50_ms": float(np.median(v)), "mean_ms": float(np.mean(v))}
           for k, v in times.items()}
    loss, loss_se = paired_loss(np.array(correct["default"]), np.array(correct["static"]))
    return {"images": n, "static": row["static"], "selected": row["default"],
            "accuracy_loss": loss, "accuracy_loss_se": loss_se,
            "latency_ratio_p50": row["default"]["p50_ms"] / row["static"]["p50_ms"],
            "latency_ratio_mean": row["default"]["mean_ms"] / row["static"]["mean_ms"],
            "selected_layers_per_image": layers / n, "selected_exit_rate": exits / n,
            "paths": [[path, n] for path, n in paths.most_common()]}  # a list: JSON objects get sorted


def format_report(r: dict[str, Any]) -> str:
    """The report a person reads at the end of the run (also ``report.md``)."""
    t, c, e, s, sel, run = r["train"], r["calibrate"], r["export"], r["search"], r["select"], r["run"]
    depth = len(sel["thresholds"])
    st, dy = run["static"], run["selected"]
    lines = [
        (f"edgeskip quickstart: {r['model']} on {r['dataset']}, train -> calibrate -> export -> profile -> search -> "
         f"select -> run in {r['seconds']['total']:.0f} s"),
        "",
        *([f"model      {r['model']}: {r['model_why']}"] if r.get("model_why") else []),
        (f"train      {t['epochs']} epochs ({t['precision']}) with one skip agent per layer: best epoch "
         f"{t['best_epoch']}, test accuracy {t['test_accuracy']:.4f}, agents run "
         f"{100 * (1.0 if t['executed_fraction'] is None else t['executed_fraction']):.0f}% of the layers"),
        f"calibrate  E²CM exits from class means on {c['calibration_images']} training images",
        (f"export     cpu bundle, {e['files']} files, {e['megabytes']:.1f} MiB; max |ONNX - torch| {e['max_stage_error']:.1e}, "
         f"gate graph {e['gate_same_decisions']} identical decisions"),
        (f"profile    this CPU ({r['profile']['backend']}): a layer {r['profile']['layer_ms'][0]:.3f}-"
         f"{r['profile']['layer_ms'][1]:.3f} ms; energy: {r['profile']['energy']}"),
        (f"search     {s['points']} Pareto configurations on {r['search_images']} images in {s['seconds']:.1f} s, "
         f"hypervolume {s['hypervolume']:.3f}; static model {100 * s['static_accuracy']:.1f}% at "
         f"{s['static_predicted_ms']:.3f} ms predicted"),
        f"select     budget {sel['budget_ms']:.3f} ms ({sel['why']}):",
        f"           {sel['describe']}",
        "           other budgets (share of the static model's predicted latency): " + "; ".join(
            f"{100 * b['share']:.0f}% -> " + ("nothing fits" if b["accuracy"] is None else
                                              f"{100 * b['accuracy']:.1f}% ({b['executed_layers']:.1f} layers)")
            for b in sel["budgets"]),

        "",
        (f"Held-out {r['dataset']} images that chose nothing ({run['images']}, batch 1, edgeskip.Runtime, "
         "static and selected alternating on this machine):"),
        f"  {'':<22}{'accuracy':>9}{'p50 ms':>9}{'mean ms':>9}{'layers/img':>12}{'exits':>8}",
        (f"  {'static (all layers)':<22}{st['accuracy']:>9.4f}{st['p50_ms']:>9.3f}{st['mean_ms']:>9.3f}"
         f"{depth:>12.2f}{0:>7.0f}%"),
        (f"  {'selected (dynamic)':<22}{dy['accuracy']:>9.4f}{dy['p50_ms']:>9.3f}{dy['mean_ms']:>9.3f}"
         f"{run['selected_layers_per_image']:>12.2f}{100 * run['selected_exit_rate']:>7.0f}%"),
        (f"  selected / static: latency {run['latency_ratio_p50']:.2f} (p50), {run['latency_ratio_mean']:.2f} (mean); "
         f"accuracy {-100 * run['accuracy_loss']:+.1f} ± {100 * run['accuracy_loss_se']:.1f} points (paired standard error)"),
        "",
        f"Paths of the selected configuration (1 = layer ran, layers 0-{depth - 1}; most common first):",
    ]
    total = sum(n for _, n in run["paths"])
    for path, n in run["paths"][:8]:
        lines.append(f"  {path}  {n:>5} images ({100 * n / total:.0f}%)")
    if len(run["paths"]) > 8:
        lines.append(f"  ... {len(run['paths']) - 8} more paths ({sum(n for _, n in run['paths'][8:])} images)")
    f = r["files"]
    lines += [
        "",
        f"bundle       {f['bundle']}  (Runtime('{f['bundle']}') runs the selected configuration by default)",
        f"profile      {f['profile']}",
        f"Pareto front {f['pareto']}  plot: {f['pareto_plot']}",
        f"report       {f['report']}  ({f['report_json']})",
    ]
    return "\n".join(lines)
