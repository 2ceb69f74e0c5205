"""Running counters of what a Runtime did: inputs, executed layers, exits, paths, latency.

Thread-safe: every call records under one lock, ``snapshot`` copies under it. Latency keeps
the most recent :data:`LATENCY_WINDOW` calls (percentiles over a sliding window); the path
table keeps at most :data:`MAX_PATHS` distinct paths and counts the rest as ``"other"``.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RuntimeStats", "Telemetry", "LATENCY_WINDOW", "MAX_PATHS"]

LATENCY_WINDOW = 10_000
MAX_PATHS = 1024
OTHER = "other"


@dataclasses.dataclass(frozen=True)
class RuntimeStats:
    """A snapshot of the counters since the Runtime was made or last reset."""

    calls: int
    inputs: int
    executed_layers: dict[int, int]  # number of layers executed -> inputs
    layer_counts: tuple[int, ...]  # per layer: inputs that ran it
    exits: dict[str, int]  # "layer_NN" (an E²CM exit after that layer) or "head" -> inputs
    paths: dict[str, int]  # bit string, one bit per layer (1 = ran) -> inputs; most common first
    latency_ms: dict[str, float]  # per call: p50, p90, p99, mean, max over the last ``samples`` calls
    latency_per_input_ms: dict[str, float]  # the same divided by each call's batch size

    @property
    def mean_executed_layers(self) -> float:
        return sum(k * v for k, v in self.executed_layers.items()) / self.inputs if self.inputs else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["executed_layers"] = {str(k): v for k, v in self.executed_layers.items()}
        out["layer_counts"] = list(self.layer_counts)
        out["mean_executed_layers"] = self.mean_executed_layers
        return out


def _percentiles(values: npt.NDArray[np.float64]) -> dict[str, float]:
    if values.size == 0:
        return {"samples": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean()),
            "max": float(values.max()), "samples": int(values.size)}


class Telemetry:
    """Counters a Runtime updates after every call."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._calls = 0
            self._inputs = 0
            self._executed = np.zeros(self.depth + 1, np.int64)
            self._layers = np.zeros(self.depth, np.int64)
            self._exits: collections.Counter[str] = collections.Counter()
            self._paths: collections.Counter[str] = collections.Counter()
            self._latency: collections.deque[tuple[float, int]] = collections.deque(maxlen=LATENCY_WINDOW)

    def record(self, executed: npt.NDArray[np.bool_], exit_layer: npt.NDArray[np.int64], latency_ms: float) -> None:
        counts = executed.sum(axis=1)
        bits = np.where(executed, "1", "0")
        paths = collections.Counter("".join(row) for row in bits)
        exits = collections.Counter("head" if e < 0 else f"layer_{int(e):02d}" for e in exit_layer)
        with self._lock:
            self._calls += 1
            self._inputs += executed.shape[0]
            self._executed += np.bincount(counts, minlength=self.depth + 1)
            self._layers += executed.sum(axis=0)
            self._exits.update(exits)
            for path, n in paths.items():
                if path in self._paths or len(self._paths) < MAX_PATHS:
                    self._paths[path] += n
                else:
                    self._paths[OTHER] += n
            self._latency.append((latency_ms, executed.shape[0]))

    def snapshot(self) -> RuntimeStats:
        with self._lock:
            lat = np.array([ms for ms, _ in self._latency], np.float64)
            per_input = np.array([ms / b for ms, b in self._latency], np.float64)
            return RuntimeStats(
                calls=self._calls, inputs=self._inputs,
                executed_layers={k: int(v) for k, v in enumerate(self._executed) if v},
                layer_counts=tuple(int(v) for v in self._layers),
                exits=dict(sorted(self._exits.items())),
                paths=dict(self._paths.most_common()),
                latency_ms=_percentiles(lat), latency_per_input_ms=_percentiles(per_input),
            )
