"""``edgeskip bench BUNDLE --front``: what the front's configurations really do on this device, on new images.

The search picked its configurations by their accuracy on the calibration images and their predicted
latency. This measures both again where they matter:

* **accuracy on held-out images**: the second half of every test class (never a calibration image:
  the search calibrates on the first half, or on the training split), each configuration run by the
  Runtime over all of them, with the standard error of its difference to the static model (paired,
  the same images);
* **latency on this device**: every configuration and the static model (as the Runtime runs it: the
  monolithic model) interleaved in rounds at batch 1 (a block of held-out images one at a time per
  configuration and round, the order rotating, each block after one untimed call that brings the
  configuration's weights back into the caches) and at a larger batch; a configuration's latency is
  its median over rounds of the per-round ratio to static. The machine's own repeat noise is the
  static model's odd rounds against its even ones;
* **the headline**: the largest measured speed-up over static among configurations within 0.5, 1 and 2
  points of static's held-out accuracy, per batch size; and the predicted ratio beside the measured
  one, so the latency model can be checked in ratios, which a drifting machine does not disturb.

A PNG shows held-out accuracy against measured latency, the static model marked.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle
from edgeskip.devices.bench import interleaved
from edgeskip.errors import ConfigError
from edgeskip.front import ParetoPoint, front_of, load_front, paired_loss
from edgeskip.runtimes import Runtime
from edgeskip.runtimes.inputs import prepare

__all__ = ["FrontBenchConfig", "LOSSES", "format_front_table", "plot_front_bench", "run_front_bench"]

LOSSES = (0.5, 1.0, 2.0)  # points of held-out accuracy below static the headline allows
FP32 = "fp32"  # an INT8 bundle's fp32 static model, measured beside its configurations


@dataclasses.dataclass(frozen=True)
class FrontBenchConfig:
    bundle: str
    device: str = "cpu"
    pareto: str | None = None
    rounds: int = 20  # interleaved rounds at each batch size
    block: int = 8  # held-out images per configuration and round at batch 1
    batch: int = 64
    warmup: int = 2
    threads: int | None = None


def _accuracy(rt: Runtime, x: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], batch: int) -> tuple[
        npt.NDArray[np.bool_], float]:
    """Per-image correctness and mean layers per image over ``x``, in batches."""
    correct, layers = [], 0
    for i in range(0, len(x), batch):
        out = rt(x[i:i + batch])
        correct.append(out.labels == labels[i:i + batch])
        layers += int(np.asarray(out.executed).sum())
    return np.concatenate(correct), layers / len(x)


def _rounds(runtimes: dict[str, Runtime], calls: Sequence[npt.NDArray[np.float32]], rounds: int,
            warmup: int) -> dict[str, npt.NDArray[np.float64]]:
    """Seconds per call of every configuration, interleaved: each round runs every configuration over ``calls``,
    after one untimed call that brings its weights back into the caches (the other configurations evicted them;
    an application runs one configuration call after call)."""
    def run(rt: Runtime) -> Any:
        return lambda: [rt(c) for c in calls]

    prime = {name: functools.partial(rt, calls[0]) for name, rt in runtimes.items()}
    times = interleaved({name: run(rt) for name, rt in runtimes.items()}, rounds, warmup, prime=prime)
    return {name: t / len(calls) for name, t in times.items()}


def run_front_bench(cfg: FrontBenchConfig, images: npt.NDArray[Any], labels: npt.NDArray[np.int64],
                    source: str) -> dict[str, Any]:
    """Measure every point of the bundle's front for ``cfg.device`` on held-out ``images``; a JSON-ready report."""
    if len(images) < 2 * cfg.block:
        raise ConfigError(f"{len(images)} held-out images are too few for blocks of {cfg.block}")
    bundle = Bundle.open(cfg.bundle)
    front = load_front(front_of(bundle, cfg.device, cfg.pareto), fingerprint=bundle.manifest.fingerprint,
                       device=cfg.device)
    opts: dict[str, Any] = {} if cfg.threads is None else {"threads": cfg.threads}
    points: dict[str, ParetoPoint] = {"static": front.static, **{f"#{i}": p for i, p in enumerate(front.points)}}
    # each on the path its search predicted fastest (the gate graph for one input, a batch on the stage loop)
    runtimes = {name: Runtime(bundle, policy=p.policy, path=p.path, **opts) for name, p in points.items()}
    if bundle.manifest.precision == "int8":  # its fp32 static model too, in the same rounds: what INT8 buys
        points[FP32] = front.static
        runtimes[FP32] = Runtime(bundle, policy="static", format="onnx", **opts)
    x = prepare(images, runtimes["static"].input_spec)
    rows: dict[str, dict[str, Any]] = {}
    n = len(labels)
    runs = {name: _accuracy(rt, x, labels, cfg.batch) for name, rt in runtimes.items()}
    correct_static = runs["static"][0]
    for name, (correct, layers) in runs.items():
        loss, se = paired_loss(correct, correct_static)
        rows[name] = {"accuracy": float(correct.mean()), "loss_points": 100 * loss,
                      "loss_se_points": 100 * se if n > 1 else 0.0,
                      "layers_per_image": layers, "calibration_accuracy": points[name].accuracy,
                      "predicted_ms": points[name].latency_ms, "fused": [list(s) for s in runtimes[name].fused],
                      "path": runtimes[name].path, "memory_mib": points[name].memory_mib,
                      "predicted_ratio": points[name].cost("latency_ms") / front.static.cost("latency_ms")}
    measured: dict[str, Any] = {}
    batches = {1: [x[i:i + 1] for i in range(cfg.block)], cfg.batch: [x[:cfg.batch]]}
    for b, calls in batches.items():
        t = _rounds(runtimes, calls, cfg.rounds, cfg.warmup)
        static_t = t["static"]
        noise = float(np.median(static_t[1::2]) / np.median(static_t[::2])) if cfg.rounds >= 4 else float("nan")
        for name in runtimes:
            rows[name][f"b{b}_ms"] = float(np.median(t[name])) * 1e3
            rows[name][f"b{b}_ratio"] = float(np.median(t[name] / static_t))
        measured[str(b)] = {"static_ms": float(np.median(static_t)) * 1e3, "noise": noise, "calls": len(calls),
                            "headline": _headline(rows, b)}
        if FP32 in runtimes:  # the same configurations against the fp32 static model, speed and accuracy
            fp32_loss = {name: paired_loss(runs[name][0], runs[FP32][0])[0] for name in runtimes}
            against = {name: {**r, "loss_points": 100 * fp32_loss[name],
                              f"b{b}_ratio": float(np.median(t[name] / t[FP32]))}
                       for name, r in rows.items() if name != FP32}
            measured[str(b)]["fp32_static_ms"] = float(np.median(t[FP32])) * 1e3
            measured[str(b)]["headline_over_fp32"] = _headline({**against, "static": against["static"]}, b,
                                                               include_static=True)
    return {"bundle": str(bundle.path), "model": bundle.manifest.model_name, "device": cfg.device,
            "heldout": {"images": n, "source": source, "static_accuracy": rows["static"]["accuracy"]},
            "search": {"images": front.meta.get("images"), "calibration": front.meta.get("calibration")},
            "runtime": {k: v for k, v in runtimes["static"].info().items() if k not in ("policy", "bundle")},
            "method": {"rounds": cfg.rounds, "block": cfg.block, "batch": cfg.batch, "warmup": cfg.warmup},
            "points": rows, "measured": measured}


def _headline(rows: dict[str, dict[str, Any]], b: int, include_static: bool = False) -> dict[str, Any]:
    """Per allowed loss: the configuration with the largest measured speed-up over static at batch ``b`` (over
    another reference, the static configuration itself counted, with ``include_static``)."""
    out: dict[str, Any] = {}
    for loss in LOSSES:
        within = [(1.0 / r[f"b{b}_ratio"], name) for name, r in rows.items()
                  if name != FP32 and (include_static or name != "static") and r["loss_points"] <= loss]
        best = max(within, default=None)
        out[f"{loss:g}"] = None if best is None else {"point": best[1], "speedup": best[0],
                                                      "loss_points": rows[best[1]]["loss_points"]}
    return out


def format_front_table(report: dict[str, Any]) -> str:
    """The report as a terminal table: one row per configuration, then the headline per batch size."""
    h, pts = report["heldout"], report["points"]
    b2 = next(k for k in report["measured"] if k != "1")
    lines = [f"edgeskip bench {report['bundle']} --front ({report['model']} on {report['device']}): "
             f"{h['images']} held-out images ({h['source']}); the search used {report['search']['calibration']}",
             f"{'config':>7} {'calib acc':>9} {'held-out':>9} {'loss pts':>12} {'layers':>6} "
             f"{'b1 ms':>7} {'b1/static':>9} {'predicted':>9} {f'b{b2}/static':>10}  path (fused)"]
    for name, r in sorted(pts.items(), key=lambda kv: kv[1]["b1_ratio"]):
        lines.append(f"{name:>7} {100 * r['calibration_accuracy']:8.2f}% {100 * r['accuracy']:8.2f}% "
                     f"{r['loss_points']:+6.2f}±{r['loss_se_points']:.2f} {r['layers_per_image']:6.2f} "
                     f"{r['b1_ms']:7.3f} {r['b1_ratio']:9.3f} {r['predicted_ratio']:9.3f} {r[f'b{b2}_ratio']:10.3f}  "
                     f"{r.get('path', '')} {r['fused'] or ''}")
    for b, m in report["measured"].items():
        best = ", ".join(f"<= {loss} pt: " + ("none" if v is None else f"{v['speedup']:.2f}x ({v['point']}, "
                                                                     f"{v['loss_points']:+.2f} pt)")
                         for loss, v in m["headline"].items())
        lines.append(f"batch {b}: static {m['static_ms']:.3f} ms per call (repeat noise: odd/even rounds "
                     f"{m['noise']:.3f}); speed-up over static at {best}")
        if "headline_over_fp32" in m:
            over = ", ".join(f"<= {loss} pt: " + ("none" if v is None else f"{v['speedup']:.2f}x ({v['point']}, "
                                                                         f"{v['loss_points']:+.2f} pt)")
                             for loss, v in m["headline_over_fp32"].items())
            lines.append(f"  over the fp32 static model ({m['fp32_static_ms']:.3f} ms, the same rounds): {over}")
    return "\n".join(lines)


def plot_front_bench(report: dict[str, Any], path: str | Path) -> Path:
    """Held-out accuracy against measured batch-1 latency, the static model marked (PNG)."""
    import matplotlib  # the 'search' extra; a device without it gets the JSON and the table

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.plots import save_figure

    pts = report["points"]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    dyn = [r for name, r in pts.items() if name not in ("static", FP32)]
    ax.scatter([r["b1_ms"] for r in dyn], [100 * r["accuracy"] for r in dyn], label="front configurations")
    s = pts["static"]
    ax.scatter([s["b1_ms"]], [100 * s["accuracy"]], marker="*", s=200, color="black", label="static model")
    ax.set_xlabel("measured latency per image, batch 1 (ms)")
    ax.set_ylabel("accuracy on held-out images (%)")
    ax.set_title(f"{report['model']} on {report['device']}: {report['heldout']['images']} held-out images")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
