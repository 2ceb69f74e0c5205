"""E²CM on this machine, in one run.

1. Latency of one exit check against one transformer layer, for vit9 and vit10, per
   feature, at batch 1 and 64: the layer in onnxruntime (the deployment backend; exported
   with torch.onnx) alone, against the same layer followed by the runtime's numpy check on
   its output (:meth:`edgeskip.e2cm.E2CM.check`), so the class means are read with caches as
   cold as deployment leaves them. Repeats are interleaved; the check's cost is the median of
   paired differences. Target: the check costs at most 2% of a layer. Random weights:
   latency does not depend on them.
2. With ``--checkpoint``: the accuracy/compute hull of a trained model on real CIFAR-10
   test images (``edgeskip calibrate`` run in-process), for each feature.

    python benchmarks/e2cm_bench.py --checkpoint runs/vit9 --data ../shared/data/cifar10-images.tar.gz
"""

from __future__ import annotations

import os

# numpy's BLAS must not start spinning threads of its own beside onnxruntime's (on two cores
# they steal the CPU from the next session call); set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import io
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import DEFAULT_DATA

from edgeskip.host import describe_host
from edgeskip.e2cm import E2CM, FEATURES, MacCosts, feature_size
from edgeskip.models.vit import ViT
from edgeskip.variants import model_config


def median_us(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Interleave the functions ``repeats`` times; median and p90 per function in microseconds, and
    ``extra_us``: the median of paired differences against the first function (robust to drift)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(20):
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t) * 1e6)
    base = samples[next(iter(fns))]
    return {k: {"median_us": statistics.median(v), "p90_us": float(np.percentile(v, 90)), "n": len(v),
                "extra_us": statistics.median(b - a for a, b in zip(base, v, strict=True))}
            for k, v in samples.items()}


def check_vs_layer(name: str, repeats: int, threads: int, batch: int) -> dict[str, object]:
    torch.manual_seed(0)
    cfg = model_config(name)
    model = ViT(cfg).eval()
    x = torch.randn(batch, cfg.num_tokens, cfg.width)
    x_np = x.numpy()
    session = ort_session(model.blocks[0], x, threads)
    rng = np.random.default_rng(0)
    fns: dict[str, Callable[[], object]] = {
        "layer_onnxruntime": lambda: session.run(None, {"x": x_np}),
    }
    # what a runtime does: the layer, then the check on its output (means read after the
    # layer's weights, so the caches are as cold as they will be in deployment)
    checks = {}
    for feature in FEATURES:
        f = feature_size(cfg, feature)
        costs = MacCosts.from_config(cfg, [0], feature)
        e2cm = E2CM(feature, rng.normal(size=(1, cfg.num_classes, f)).astype(np.float32),
                    (1.0 + rng.random((1, cfg.num_classes))).astype(np.float32), np.array([0.9]), costs)
        checks[feature] = e2cm
        fns[f"check_{feature}"] = lambda e=e2cm: e.check(0, session.run(None, {"x": x_np})[0])
    with torch.no_grad():
        times = median_us(fns, repeats)
    layer = times["layer_onnxruntime"]["median_us"]
    return {
        "model": name, "threads": threads, "batch": batch, "times": times,
        "check_numpy_over_layer": {f: times[f"check_{f}"]["extra_us"] / layer for f in FEATURES},
        "check_over_layer_macs": {f: checks[f].costs.checks[0] / checks[f].costs.layers[0] for f in FEATURES},
    }


def ort_session(module: torch.nn.Module, x: torch.Tensor, threads: int) -> ort.InferenceSession:
    """``module`` exported to ONNX (opset 17) in an onnxruntime session without thread spinning."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, input_names=["x"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "batch"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def hull_on_cifar(checkpoint: str, data: str, per_class: int, split: str, step: float) -> dict[str, object]:
    from edgeskip.data import load_dataset_for
    from edgeskip.train.e2cm_pipeline import run_calibration
    from edgeskip.e2cm.settings import CalibrateConfig
    from edgeskip.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    splits = load_dataset_for(ckpt.dataset, data, ckpt.model_config, ckpt.classes, progress=True)
    settings = CalibrateConfig(feature="all", split=split, calibration_per_class=per_class, step=step)
    out = Path(tempfile.mkdtemp(prefix="e2cm-bench-"))
    t = time.perf_counter()
    report = run_calibration(ckpt, splits, settings, out, progress=True)
    report["seconds"] = time.perf_counter() - t
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit9,vit10")
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--batches", default="1,64", help="batch sizes to time the check at")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="a trained CIFAR-10 checkpoint for the hull")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--per-class", type=int, default=1000, help="calibration images per class")
    parser.add_argument("--split", default="train", choices=("train", "test-half"))
    parser.add_argument("--step", type=float, default=0.01)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    host = describe_host()
    results: dict[str, object] = {"host": host.to_dict(),
                                  "onnxruntime": ort.__version__, "torch": torch.__version__}
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} threads")
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = check_vs_layer(name, args.repeats, args.threads, batch)
            rows.append(r)
            t = r["times"]
            print(f"\n{name}, batch {batch}: one layer {t['layer_onnxruntime']['median_us']:.0f} us "  # type: ignore[index]
                  f"(onnxruntime); medians of {args.repeats}")
            print(f"  {'feature':<8}{'check +us':>10}{'/ layer':>9}{'MACs / layer':>14}")
            for f in FEATURES:
                print(f"  {f:<8}{t[f'check_{f}']['extra_us']:>10.1f}"  # type: ignore[index]
                      f"{100 * r['check_numpy_over_layer'][f]:>8.2f}%"  # type: ignore[index]
                      f"{100 * r['check_over_layer_macs'][f]:>13.2f}%")  # type: ignore[index]
    results["check_vs_layer"] = rows
    if args.checkpoint:
        report = hull_on_cifar(args.checkpoint, args.data, args.per_class, args.split, args.step)
        results["hull"] = report
        print(f"\n{report['model']} on {report['dataset']}: {report['calibration_images']} calibration images "
              f"({args.split}), {report['test_images']} test images, {report['seconds']:.0f} s")
        for f, e in report["features"].items():  # type: ignore[attr-defined]
            print(f"[{f}] means {e['means_bytes']['float32'] / 2**20:.2f} MiB fp32 "
                  f"({100 * e['means_vs_model']:.1f}% of the model); static test accuracy {e['test_static_accuracy']:.4f}")
            print(f"  {'calib compute':>14}{'calib acc':>10}{'test compute':>13}{'test acc':>9}")
            for h in e["hull"]:
                print(f"  {h['calibration']['compute']:>14.3f}{h['calibration']['accuracy']:>10.4f}"
                      f"{h['test']['compute']:>13.3f}{h['test']['accuracy']:>9.4f}")
            if "agents" in e:
                a, c, b = e["agents"], e["e2cm"]["test"], e["both"]["test"]
                print(f"  agents alone {a['accuracy']:.4f} @ {a['compute']:.3f} | E²CM alone {c['accuracy']:.4f} @ "
                      f"{c['compute']:.3f} | both {b['accuracy']:.4f} @ {b['compute']:.3f}")
        print(f"plot: {report['plot']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
