"""Accuracy of a bundle as the device runs it: ``edgeskip.Runtime`` over labelled images, per policy.

``edgeskip evaluate --bundle B --data D`` prints it; the zoo's report is reproduced with it. No
torch: what is measured is exactly what an application embedding the Runtime gets.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle
from edgeskip.errors import ConfigError, DataError
from edgeskip.runtimes.runtime import Runtime

__all__ = ["PolicyResult", "available_policies", "evaluate_bundle", "format_results"]


@dataclasses.dataclass(frozen=True)
class PolicyResult:
    """One policy's run over the images."""

    policy: str
    images: int
    accuracy: float
    mean_layers: float  # executed layers per image
    exit_rate: float  # share of images that left at an E²CM exit
    paths: dict[str, int]  # bit string (1 = the layer ran) -> images, most common first
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_policies(bundle: Bundle) -> list[str]:
    """The named policies this bundle can run (``default`` only where ``edgeskip select`` wrote one)."""
    m = bundle.manifest
    names = ["static"]
    if m.agents is not None:
        names.append("agent")
    if m.e2cm is not None:
        names.append("e2cm")
    if m.agents is not None and m.e2cm is not None:
        names.append("agent+e2cm")
    if m.default_config is not None:
        names.append("default")
    return names


def evaluate_bundle(bundle: str | Path | Bundle, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                    policies: Sequence[str] | None = None, *, batch_size: int = 64, backend: str = "onnxruntime",
                    progress: Callable[[int], None] | None = None) -> list[PolicyResult]:
    """Run every policy (default: all the bundle has) over ``images`` in batches; per-input decisions are the
    same as at batch 1. ``progress(n)`` is called after each batch with the number of images it held."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    names = list(policies) if policies else available_policies(b)
    unknown = [p for p in names if p not in available_policies(b)]
    if unknown:
        raise ConfigError(f"policy {', '.join(unknown)} is not available in {b.path}; it has "
                          f"{', '.join(available_policies(b))}")
    if len(images) != len(labels) or len(images) == 0:
        raise DataError(f"{len(images)} images and {len(labels)} labels: need the same, non-zero number")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    results = []
    with Runtime(b, backend=backend, policy=names[0]) as rt:
        for name in names:
            rt.set_policy(name)
            correct, layers, exits = 0, 0, 0
            paths: collections.Counter[str] = collections.Counter()
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                out = rt(images[i:i + batch_size])
                correct += int((out.labels == labels[i:i + batch_size]).sum())
                layers += int(out.executed.sum())
                exits += int((out.exit_layer >= 0).sum())
                paths.update(out.paths())
                if progress is not None:
                    progress(len(out))
            n = len(images)
            results.append(PolicyResult(name, n, correct / n, layers / n, exits / n, dict(paths.most_common()),
                                        time.perf_counter() - start))
    return results


def format_results(results: Sequence[PolicyResult], depth: int, top: int = 5) -> str:
    """A table: policy, accuracy, layers per image, exit rate; then each dynamic policy's commonest paths."""
    lines = [f"{'policy':<12}{'images':>8}{'accuracy':>10}{'layers/img':>12}{'of':>4}{'exits':>8}"]
    for r in results:
        lines.append(f"{r.policy:<12}{r.images:>8}{r.accuracy:>10.4f}{r.mean_layers:>12.2f}{depth:>4}"
                     f"{100 * r.exit_rate:>7.1f}%")
    for r in results:
        if r.policy == "static":
            continue
        shown = list(r.paths.items())[:top]
        lines.append(f"\n{r.policy}: {len(r.paths)} distinct paths (1 = the layer ran); the commonest:")
        lines += [f"  {p}  {n:>6} ({100 * n / r.images:.1f}%)" for p, n in shown]
    return "\n".join(lines)
