"""Resident memory of each execution path of a bundle: one fresh process per path and batch size.

Resident memory is process-wide and only grows (arenas, caches, a second copy of the weights once a
path loads it), so one process cannot tell what each path holds. Each measurement here is a child
process (``python -m edgeskip.devices.memory``) that opens the bundle on one path, runs five calls on
a batch of seeded random images and reports its steady resident set (psutil). The profiler records the
figures per batch and path (``Profile.memory.paths``), and each Pareto point carries its path's figure.

    python -m edgeskip.devices.memory BUNDLE --path stages --batch 64 [--policy agent+e2cm] [--precisions fp32,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeskip.errors import EdgeskipError

__all__ = ["CALLS", "path_memory_mib", "path_policy"]

CALLS = 5  # warm calls before reading the resident set


def path_policy(path: str, manifest: Any) -> str:
    """The policy a path's memory is measured under: static on the monolithic model, else what a dynamic point
    of this bundle runs (its agents and exits: policy auto without a default)."""
    if path == "monolithic":
        return "static"
    agents, exits = manifest.agents is not None, manifest.e2cm is not None
    return "agent+e2cm" if agents and exits else "agent" if agents else "e2cm" if exits else "static"


def path_memory_mib(bundle: str | Path, path: str, batch: int, *, policy: str, backend: str,
                    options: dict[str, Any] | None = None, timeout: float = 600.0,
                    precisions: list[str] | None = None) -> float:
    """Steady resident memory (MiB) of a fresh process running ``bundle`` on ``path`` at ``batch``, the named
    ``policy``'s layers in ``precisions`` (one per layer) when given."""
    # -P: the installed edgeskip, never a source folder of that name in the current directory
    cmd = [sys.executable, "-P", "-m", "edgeskip.devices.memory", str(Path(bundle).resolve()), "--path", path,
           "--batch", str(batch),
           "--policy", policy, "--backend", backend, "--options", json.dumps(options or {}, default=str),
           *(["--precisions", ",".join(precisions)] if precisions else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeskipError(f"measuring the memory of path {path!r} at batch {batch} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeskipError(f"measuring the memory of path {path!r} at batch {batch} failed: {last}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["rss_mib"])


def _child(argv: list[str] | None = None) -> int:
    import numpy as np
    import psutil

    from edgeskip.policy import Policy
    from edgeskip.runtimes.runtime import Runtime

    parser = argparse.ArgumentParser(prog="python -m edgeskip.devices.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--path", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--options", default="{}", help="backend options as JSON")
    parser.add_argument("--precisions", default=None, help="each layer's precision, comma-separated")
    args = parser.parse_args(argv)
    rt = Runtime(args.bundle, backend=args.backend, policy=args.policy, path=args.path, **json.loads(args.options))
    if args.precisions:
        p = rt.policy
        rt.set_policy(Policy(p.name, p.layers, p.exits, tuple(args.precisions.split(","))), path=args.path)
    spec = rt.input_spec
    x = np.random.default_rng(0).integers(0, 256, (args.batch, spec.image_size, spec.image_size, spec.channels),
                                          dtype=np.uint8)
    for _ in range(CALLS):
        rt(x)
    print(json.dumps({"rss_mib": psutil.Process().memory_info().rss / 2**20, "path": rt.path}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
