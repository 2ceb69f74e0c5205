"""Steady resident memory of each execution path of a bundle, one fresh process per path and batch size.

Each child process (:mod:`edgeskip.devices.memory`, what ``edgeskip profile`` records per path) opens the
bundle on one path, runs five calls on a batch of random images and reports its resident set (psutil); the
parent prints the table. The rows: ``static`` (the monolithic model), ``loop`` (a static plan on the stage
loop, decision-free layers fused), ``unfused`` (the same, one call per stage), ``agent+e2cm`` (the
per-input decisions on the loop) and ``gate`` (the same policy on the gate graph, batch 1 only).

    python benchmarks/memory_bench.py --bundle DIR [--batches 1,64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeskip.devices.memory import path_memory_mib

VARIANTS = {  # name -> (path, policy, Runtime options)
    "static": ("monolithic", "static", {}),
    "loop": ("stages", "static", {"whole_static": False}),
    "unfused": ("stages", "static", {"whole_static": False, "fuse": False}),
    "agent+e2cm": ("stages", "agent+e2cm", {}),
    "gate": ("gate", "agent+e2cm", {}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows: dict[str, dict[int, float]] = {}
    for name, (path, policy, options) in VARIANTS.items():
        for b in batches:
            if path == "gate" and b != 1:
                continue  # a batch runs the stage loop
            rows.setdefault(name, {})[b] = path_memory_mib(args.bundle, path, b, policy=policy, backend="onnxruntime",
                                                           options=options)
    print("steady resident memory after five calls, one fresh process each (onnxruntime, one process-wide arena)")
    print(f"{'path':<12}" + "".join(f"{f'batch {b}':>16}" for b in batches))
    for name, by_batch in rows.items():
        print(f"{name:<12}" + "".join(f"{by_batch[b]:12.0f} MiB" if b in by_batch else f"{'-':>16}" for b in batches))
    static = rows["static"]
    for name in ("unfused", "agent+e2cm"):
        print(f"{name} / static: " + ", ".join(f"batch {b} {rows[name][b] / static[b]:.2f}" for b in batches))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
