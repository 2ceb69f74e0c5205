"""Steady resident memory of each execution path of a bundle, one fresh process per path and batch size.

Each child process opens the bundle with one path, runs five calls on a batch of random images and
reports its resident set (psutil) and peak (getrusage); the parent prints the table. The paths:
``static`` (the monolithic model), ``loop`` (a static plan on the stage loop, decision-free layers
fused), ``unfused`` (the same, one call per stage) and ``agent+e2cm`` (the per-input decisions).

    python benchmarks/memory_bench.py --bundle DIR [--batches 1,64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PATHS = {
    "static": {"policy": "static"},
    "loop": {"policy": "static", "whole_static": False},
    "unfused": {"policy": "static", "whole_static": False, "fuse": False},
    "agent+e2cm": {"policy": "agent+e2cm"},
}

CHILD = """
import json, resource, sys
import numpy as np, psutil, edgeskip
bundle, batch, kwargs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
rt = edgeskip.Runtime(bundle, **kwargs)
spec = rt.input_spec
x = np.random.default_rng(0).integers(0, 256, (batch, spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
for _ in range(5):
    rt(x)
print(json.dumps({"rss_mib": psutil.Process().memory_info().rss / 2**20,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "arena": rt.info().get("memory_arena")}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for name, kwargs in PATHS.items():
        for b in batches:
            proc = subprocess.run([sys.executable, "-c", CHILD, args.bundle, str(b), json.dumps(kwargs)],
                                  capture_output=True, text=True, check=False, timeout=600)
            if proc.returncode != 0:
                sys.exit(f"{name} at batch {b} failed:\n{proc.stderr[-2000:]}")
            rows.setdefault(name, {})[b] = json.loads(proc.stdout.strip().splitlines()[-1])
    arena = next(iter(next(iter(rows.values())).values()))["arena"]
    print(f"steady resident memory after five calls, one fresh process each (onnxruntime arena: {arena})")
    print(f"{'path':<12}" + "".join(f"{f'batch {b}':>16}" for b in batches))
    for name, by_batch in rows.items():
        print(f"{name:<12}" + "".join(f"{by_batch[b]['rss_mib']:12.0f} MiB" for b in batches))
    static = rows["static"]
    for name in ("unfused", "agent+e2cm"):
        print(f"{name} / static: " + ", ".join(f"batch {b} {rows[name][b]['rss_mib'] / static[b]['rss_mib']:.2f}"
                                               for b in batches))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
