"""Exporters on this machine, in one run: export time per target, and what the gate graph costs.

1. Export time of ``edgeskip export`` per target (cpu, jetson, tflite) for vit9 and vit10
   (fresh weights: time does not depend on them; each export includes its own fidelity check
   on 8 images).
2. Latency at batch 1 in onnxruntime, every layer executing, side by side with interleaved
   repeats: the monolithic ONNX model, the per-stage loop (one session per stage), gate.onnx
   (agent thresholds rewritten to 0 so every layer runs; target: within 10% of monolithic),
   and gate.onnx with E²CM checks after every layer but the last (each feature: all tokens,
   cls, token mean) that are computed but never fire, and with those checks disabled (T = 1).
   The timing runs in a fresh process that never imports torch (torch's OpenMP threads
   spin after use and would steal the cores from onnxruntime).

    python benchmarks/export_bench.py [--models vit9,vit10] [--targets cpu,jetson,tflite] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def export_times(models: list[str], targets: list[str], root: Path) -> dict[str, dict[str, float]]:
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out: dict[str, dict[str, float]] = {}
    for model in models:
        for target in targets:
            start = time.perf_counter()
            export_bundle(ExportConfig(model=model, target=target, out=str(root / f"{model}-{target}"), fidelity_images=8))
            out.setdefault(model, {})[target] = time.perf_counter() - start
            print(f"export {model} --target {target}: {out[model][target]:.1f} s", flush=True)
    return out


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def time_bundle(bundle_dir: Path, warmup: int, repeats: int, threads: int) -> dict[str, Any]:
    """Batch-1 latency of the variants, interleaved (torch-free process)."""
    import onnx

    from edgeskip.bundle import Bundle
    from edgeskip.e2cm import E2CM, FEATURES, MacCosts
    from edgeskip.exporters.gate import build_gate_graph
    from edgeskip.runtimes.gate import set_thresholds

    bundle = Bundle.open(bundle_dir)
    m = bundle.manifest
    cfg = m.config
    load = lambda name: onnx.load(bundle.stage_file(name))  # noqa: E731
    stages = [s.name for s in m.stages if s.kind != "agent"]
    gate = set_thresholds(onnx.load(bundle.file("onnx/gate.onnx")), {j: 0.0 for j in range(cfg.depth)})
    agents = np.load(bundle.file("agents.npz"))
    rng = np.random.default_rng(0)
    exits = list(range(cfg.depth - 1))
    layers = {s.layer: load(s.name) for s in m.layer_stages()}
    sessions = {"monolithic": _session(bundle.file("onnx/model.onnx"), threads), "gate": _session(gate, threads)}
    for feature in FEATURES:
        size = cfg.num_tokens * cfg.width if feature == "tokens" else cfg.width
        e2cm = E2CM(feature, rng.normal(size=(len(exits), cfg.num_classes, size)).astype(np.float32),
                    np.full((len(exits), cfg.num_classes), 50.0, np.float32), np.full(len(exits), 0.999999),
                    MacCosts.from_config(cfg, exits, feature))
        checks = build_gate_graph(load("embed"), layers, load("head"), cfg,
                                  agents=(agents["weights"], agents["biases"]), thresholds=[0.0] * cfg.depth, e2cm=e2cm)
        sessions[f"gate+checks ({feature})"] = _session(checks, threads)
    disabled = set_thresholds(checks, exits=[1.0] * len(exits))
    sessions["gate+checks disabled"] = _session(disabled, threads)
    per_stage = {name: _session(bundle.stage_file(name), threads) for name in stages}
    x = rng.normal(size=(1, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)

    def loop() -> None:
        y = x
        for name in stages:
            y = per_stage[name].run(None, {per_stage[name].get_inputs()[0].name: y})[0]

    calls = {name: (lambda s=s: s.run(None, {"images": x})) for name, s in sessions.items()}
    calls["per-stage loop"] = loop
    for feature in FEATURES:
        out = calls[f"gate+checks ({feature})"]()
        if int(out[2]) != -1 or not out[1].all():
            raise RuntimeError("the never-firing E²CM checks fired: the measurement would be wrong")
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(warmup + repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["monolithic"])
    result: dict[str, Any] = {"warmup": warmup, "repeats": repeats, "threads": threads, "batch": 1, "variants": {}}
    for name, t in times.items():
        med = statistics.median(t)
        result["variants"][name] = {"median_ms": med, "p90_ms": float(np.percentile(t, 90)),
                                    "vs_monolithic": med / base}
    # a layer ~ monolithic / (depth + 1) (embed + head ~ one more layer)
    layer_ms = base / (cfg.depth + 1)
    off = statistics.median(times["gate+checks disabled"])
    result["check_cost_vs_layer"] = {
        f: (statistics.median(times[f"gate+checks ({f})"]) - off) / len(exits) / layer_ms for f in FEATURES}
    result["disabled_exit_cost_vs_layer"] = (off - statistics.median(times["gate"])) / len(exits) / layer_ms
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit9,vit10")
    parser.add_argument("--targets", default="cpu,jetson,tflite")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--time-only", default=None, help=argparse.SUPPRESS)  # the torch-free timing child
    args = parser.parse_args()
    if args.time_only:
        print(json.dumps(time_bundle(Path(args.time_only), args.warmup, args.repeats, args.threads)))
        return 0

    from edgeskip.host import describe_host

    models, targets = args.models.split(","), args.targets.split(",")
    results: dict[str, Any] = {"host": describe_host().to_dict(), "export_seconds": {}, "latency": {}}
    with tempfile.TemporaryDirectory() as tmp:
        results["export_seconds"] = export_times(models, targets, Path(tmp))
        for model in models:
            child = subprocess.run(
                [sys.executable, __file__, "--time-only", str(Path(tmp) / f"{model}-{targets[0]}"),
                 "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True)
            results["latency"][model] = json.loads(child.stdout.strip().splitlines()[-1])

    print(f"\nexport time (s), {', '.join(targets)}:")
    for model, t in results["export_seconds"].items():
        print(f"  {model:6} " + "  ".join(f"{target} {sec:6.1f}" for target, sec in t.items()))
    for model, lat in results["latency"].items():
        print(f"\n{model}, batch 1, every layer executing, onnxruntime {lat['threads']} thread(s), "
              f"{lat['warmup']} warm-up + {lat['repeats']} interleaved repeats:")
        print(f"  {'variant':22} {'median ms':>10} {'p90 ms':>8} {'vs monolithic':>14}")
        for name, v in lat["variants"].items():
            print(f"  {name:22} {v['median_ms']:>10.3f} {v['p90_ms']:>8.3f} {v['vs_monolithic']:>14.3f}")
        costs = ", ".join(f"{f} {100 * c:.1f}%" for f, c in lat["check_cost_vs_layer"].items())
        print(f"  one E²CM check inside the graph, per feature, as a share of one layer: {costs}; "
              f"a disabled exit (T = 1): {100 * lat['disabled_exit_cost_vs_layer']:.1f}%")
    print("\n" + json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
