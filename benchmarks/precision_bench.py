"""Precision as a search gene, on a bundle exported with ``--int8``: the front with a precision gene per layer
against the front without, measured end to end, and what holding both precisions costs in memory.

1. ``edgeskip profile`` (batch 1): every layer timed in its INT8 and its fp32 form in the same passes.
2. ``edgeskip search`` twice on the same search and held-out images: ``--precisions int8`` (every layer INT8: no
   precision gene) and ``--precisions int8,fp32`` (a gene per layer). Both fronts are normalised by the same
   INT8 static model, so their hypervolumes compare.
3. ``edgeskip bench --front`` on each front, ``--repeats`` times, the two fronts alternating (the machine's
   drift then touches both): held-out accuracy and latency interleaved at batch 1 and ``--batch``, the speed-up
   over the fp32 static model (measured in the same rounds) at <= 0.5 / 1 / 2 points.
4. Resident memory of a fresh process on the stage loop at batch 1 (``edgeskip.devices.memory``): INT8 layers
   only, INT8 with every layer's fp32 form loaded too (what a Runtime holds after switching), fp32 only.

    edgeskip export --model vit9 --pretrained cifar10 --int8 --data DATA --out B
    python benchmarks/precision_bench.py --bundle B --data ../shared/data/cifar10-images.tar.gz --out DIR
    (DIR keeps the bundle copy with its profile, both fronts and every bench report; report.json the summary)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, edgeskip

from edgeskip.bundle import Bundle
from edgeskip.devices.memory import path_memory_mib


def run(bundle: Path, data: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    b = Path(shutil.copytree(bundle, work / "b", ignore=shutil.ignore_patterns("profiles", "pareto")))
    edgeskip("profile", str(b), "--device", "cpu")
    out: dict[str, Any] = {"fronts": {}}
    fronts = {"int8": "int8", "int8+fp32": "int8,fp32"}
    for name, precisions in fronts.items():
        pareto = work / f"{name}.json"
        text = edgeskip("search", str(b), "--data", data, "--images", str(args.images), "--holdout-images",
                        str(args.holdout_images), "--precisions", precisions, "--out", str(pareto),
                        "--pop-size", str(args.pop_size), "--generations", str(args.generations))
        front = json.loads(pareto.read_text())
        out["fronts"][name] = {
            "hypervolume": front["hypervolume"], "points": len(front["points"]),
            "evaluations": front["meta"]["evaluations"], "search_seconds": front["meta"]["seconds"],
            "fp32_layers_per_point": [sum(p == "fp32" for p in (q.get("precisions") or [])) for q in front["points"]],
            "search_summary": text.splitlines()[0], "measured": []}
    for repeat in range(args.repeats):
        for name in fronts:
            report = work / f"{name}-bench{repeat}.json"
            edgeskip("bench", str(b), "--front", "--pareto", str(work / f"{name}.json"), "--data", data, "--batch",
                     str(args.batch), "--front-rounds", str(args.front_rounds), "--json", str(report))
            measured = json.loads(report.read_text())["measured"]
            out["fronts"][name]["measured"].append(
                {bs: {k: m.get(k) for k in ("headline", "headline_over_fp32", "fp32_static_ms", "static_ms", "noise")}
                 for bs, m in measured.items()})
    depth = Bundle.open(b).manifest.config.depth
    out["memory_mib"] = {
        "int8": path_memory_mib(b, "stages", 1, policy="agent+e2cm", backend="onnxruntime"),
        "int8 and fp32 loaded": path_memory_mib(b, "stages", 1, policy="agent+e2cm", backend="onnxruntime",
                                                precisions=["fp32"] * depth),
        "fp32": path_memory_mib(b, "stages", 1, policy="agent+e2cm", backend="onnxruntime",
                                options={"format": "onnx"})}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a bundle exported with --int8")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=2000, help="search images (first half of each test class)")
    parser.add_argument("--holdout-images", type=int, default=2500, help="held-out images (the second half)")
    parser.add_argument("--pop-size", type=int, default=25)
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="the batched measurement of bench --front")
    parser.add_argument("--front-rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="bench --front runs of each front, alternating")
    parser.add_argument("--out", default=None, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.out or scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = run(Path(args.bundle), args.data, args, work)
        text = json.dumps(report, indent=2)
        (work / "report.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
