"""INT8 against fp32 on one bundle exported with ``--int8``: accuracy, decisions and per-stage speed, torch-free.

1. Every policy the bundle has (static, agent, e2cm, agent+e2cm) through ``edgeskip.Runtime`` on the test split
   twice, with the fp32 stages (``format="onnx"``) and the INT8 ones (``format="onnx-int8"``): accuracy of each,
   and how often INT8 changes an input's path (layers run, exit) or its label.
2. Per-stage latency at batch 1, INT8 / fp32, the two sessions of each layer interleaved round by round on the
   same real tokens; the repeat noise is the same ratio from the odd rounds against the even ones. The CPU's
   VNNI support is recorded beside it. The same for the LiteRT interpreters (XNNPACK) of a bundle exported for
   ``--target tflite --int8``.
3. End to end through the Runtime at batch 1: static (fp32: the monolithic model) and agents + exits, INT8
   against fp32, interleaved the same way.

    edgeskip export --model vit9 --pretrained cifar10 --int8 --data DATA --out B
    python benchmarks/int8_bench.py --bundle B --data ../shared/data/cifar10-images.tar.gz [--json out.json]
    # per-stage speed only (weights do not change it): an untrained vit10, or a tflite bundle
    edgeskip export --model vit10 --int8 --out B10
    python benchmarks/int8_bench.py --bundle B10 --speed-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.bundle import Bundle
from edgeskip.data import load_dataset_for
from edgeskip.host import cpu_flags
from edgeskip.runtimes import Runtime
from edgeskip.runtimes.evaluate import available_policies
from edgeskip.runtimes.inputs import prepare
from edgeskip.runtimes.ort_backend import session


def run_policies(bundle: Path, images: np.ndarray, labels: np.ndarray, batch: int,
                 backend: str = "onnxruntime") -> dict[str, Any]:
    """Every policy through the fp32 and the INT8 layers of ``backend`` (onnxruntime, or LiteRT)."""
    option = {"onnxruntime": ("format", "onnx", "onnx-int8"), "tflite": ("precision", "fp32", "int8")}[backend]
    out: dict[str, Any] = {}
    for policy in [p for p in available_policies(Bundle.open(bundle)) if p != "default"]:
        runs = {}
        for fmt in option[1:]:
            with Runtime(bundle, backend=backend, policy=policy, **{option[0]: fmt}) as rt:
                parts = [rt(images[i : i + batch]) for i in range(0, len(images), batch)]
            runs[fmt] = (np.concatenate([p.labels for p in parts]), np.concatenate([p.executed for p in parts]),
                         np.concatenate([p.exit_layer for p in parts]))
        (l32, e32, x32), (l8, e8, x8) = runs[option[1]], runs[option[2]]
        out[policy] = {"fp32_accuracy": float((l32 == labels).mean()), "int8_accuracy": float((l8 == labels).mean()),
                       "same_path": float(((e32 == e8).all(axis=1) & (x32 == x8)).mean()),
                       "same_label": float((l32 == l8).mean()),
                       "layers_fp32": float(e32.sum(1).mean()), "layers_int8": float(e8.sum(1).mean())}
    return out


def stage_speed(bundle: Path, images: np.ndarray, rounds: int, calls: int, backend: str = "onnxruntime") -> dict[str, Any]:
    """Each layer's INT8 and fp32 form on ``backend`` (onnxruntime sessions, or LiteRT interpreters), interleaved
    round by round on the same real tokens at batch 1."""
    b = Bundle.open(bundle)
    m = b.manifest
    fp32, int8 = ("onnx", "onnx-int8") if backend == "onnxruntime" else ("tflite", "tflite-int8")
    with Runtime(bundle, policy="static", format="onnx") as rt:
        tokens = rt.backend.run("embed", prepare(images[:1], rt.input_spec))  # type: ignore[union-attr]
    result: dict[str, Any] = {}
    for stage in [s for s in m.stages if s.kind == "layer"]:
        runs = {fmt: _runner(b, stage.name, fmt, backend) for fmt in (fp32, int8)}
        for run in runs.values():
            for _ in range(20):
                run(tokens)
        times: dict[str, list[float]] = {fp32: [], int8: []}
        for r in range(rounds):
            for fmt in ((fp32, int8) if r % 2 == 0 else (int8, fp32)):
                start = time.perf_counter()
                for _ in range(calls):
                    runs[fmt](tokens)
                times[fmt].append((time.perf_counter() - start) / calls * 1e3)
        ratios = [a / b for a, b in zip(times[int8], times[fp32], strict=True)]
        result[stage.name] = {"fp32_ms": statistics.median(times[fp32]), "int8_ms": statistics.median(times[int8]),
                              "ratio": statistics.median(ratios),
                              "noise_odd_even": statistics.median(ratios[1::2]) / statistics.median(ratios[0::2])}
        tokens = runs[fp32](tokens)
    return result


def _runner(bundle: Bundle, stage: str, fmt: str, backend: str) -> Any:
    """A one-argument call of ``stage``'s file in ``fmt``: an onnxruntime session or a LiteRT interpreter."""
    if backend == "onnxruntime":
        sess = session(bundle.read_stage(stage, fmt), thread_pool="global", name=stage)[0]
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    from edgeskip.runtimes.tflite_interpreter import load_interpreter, run_interpreter

    interp = load_interpreter(bundle.stage_file(stage, fmt))
    return lambda x: run_interpreter(interp, x)


def end_to_end(bundle: Path, images: np.ndarray, rounds: int) -> dict[str, Any]:
    """Per-image latency at batch 1 through the Runtime, INT8 stages against fp32 (the fp32 static policy runs
    the monolithic model, as a user's would), for the static and the agents + exits policies, interleaved."""
    out: dict[str, Any] = {}
    for policy in ("static", "agent+e2cm"):
        rts = {fmt: Runtime(bundle, policy=policy, format=fmt) for fmt in ("onnx", "onnx-int8")}
        for rt in rts.values():
            for img in images[:16]:
                rt(img)
        times: dict[str, list[float]] = {fmt: [] for fmt in rts}
        for r in range(rounds):
            for fmt in (("onnx", "onnx-int8") if r % 2 == 0 else ("onnx-int8", "onnx")):
                start = time.perf_counter()
                for img in images:
                    rts[fmt](img)
                times[fmt].append((time.perf_counter() - start) / len(images) * 1e3)
        for rt in rts.values():
            rt.close()
        ratios = [a / b for a, b in zip(times["onnx-int8"], times["onnx"], strict=True)]
        out[policy] = {"fp32_ms": statistics.median(times["onnx"]), "int8_ms": statistics.median(times["onnx-int8"]),
                       "ratio": statistics.median(ratios),
                       "noise_odd_even": statistics.median(ratios[1::2]) / statistics.median(ratios[0::2])}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="a bundle exported with --int8")
    p.add_argument("--data", default=None, help="its dataset's copy (the test split; without it: --speed-only on "
                                             "random images)")
    p.add_argument("--speed-only", action="store_true", help="per-stage speed only (no accuracy, no end to end)")
    p.add_argument("--images", type=int, default=10_000, help="test images")
    p.add_argument("--batch", type=int, default=256, help="images per Runtime call for the accuracies")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per layer")
    p.add_argument("--calls", type=int, default=50, help="calls per round")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    m = Bundle.open(args.bundle).manifest
    speed_only = args.speed_only or args.data is None
    if speed_only:
        c = m.config
        images = np.random.default_rng(0).integers(0, 256, (1, c.image_size, c.image_size, c.in_channels), np.uint8)
    else:
        test = load_dataset_for(m.dataset, args.data, m.config, m.classes).test
        images, labels = test.images[: args.images], test.labels[: args.images]
    report: dict[str, Any] = {"model": m.model_name, "untrained": m.untrained,
                              "cpu_flags": sorted(f for f in cpu_flags() if "vnni" in f or f.startswith("amx")),
                              "images": len(images),
                              "stages": stage_speed(Path(args.bundle), images, args.rounds, args.calls)}
    if "tflite-int8" in m.formats:
        report["tflite_stages"] = stage_speed(Path(args.bundle), images, args.rounds, args.calls, backend="tflite")
    if not speed_only:
        report["policies"] = run_policies(Path(args.bundle), images, labels, args.batch)
        if "tflite-int8" in m.formats:
            report["tflite_policies"] = run_policies(Path(args.bundle), images, labels, args.batch, backend="tflite")
        report["end_to_end"] = end_to_end(Path(args.bundle), images[:64], args.rounds)
    print(f"{m.model_name} on {len(images)} {m.dataset} test images; CPU flags: {', '.join(report['cpu_flags']) or '-'}")
    for key in ("policies", "tflite_policies"):
        if key not in report:
            continue
        print(("onnxruntime" if key == "policies" else "LiteRT") + f": {'policy':<12}{'fp32 acc':>10}{'int8 acc':>10}"
              f"{'same path':>11}{'same label':>12}{'layers fp32/int8':>19}")
        for name, r in report[key].items():
            print(f"{name:<12}{100 * r['fp32_accuracy']:>9.2f}%{100 * r['int8_accuracy']:>9.2f}%"
                  f"{100 * r['same_path']:>10.1f}%{100 * r['same_label']:>11.1f}%{r['layers_fp32']:>10.2f} / "
                  f"{r['layers_int8']:.2f}")
    for key, what in (("stages", "onnxruntime"), ("tflite_stages", "LiteRT (XNNPACK)")):
        if key not in report:
            continue
        print(f"per layer at batch 1 on {what}, int8 / fp32 (median of interleaved rounds; noise = odd / even rounds):")
        for name, r in report[key].items():
            print(f"  {name}: {r['int8_ms']:.3f} / {r['fp32_ms']:.3f} ms = {r['ratio']:.3f} "
                  f"(noise {r['noise_odd_even']:.3f})")
    if "end_to_end" in report:
        print("through the Runtime at batch 1, per image, int8 / fp32 (64 test images a round):")
        for name, r in report["end_to_end"].items():
            print(f"  {name}: {r['int8_ms']:.3f} / {r['fp32_ms']:.3f} ms = {r['ratio']:.3f} "
                  f"(noise {r['noise_odd_even']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
