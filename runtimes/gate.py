"""The gate graph's interface, and running it: ``onnx/gate.onnx``, the whole dynamic network in one ONNX model.

The exporter (:mod:`edgeskip.exporters.gate`) builds it with these names; the runtime configures it
by rewriting its threshold initialisers (``threshold_layer_NN``, ``threshold_exit_NN``) in memory
(:func:`set_thresholds`) and runs it with onnxruntime (:class:`GateGraph`). A layer threshold above 1
never fires (the layer is skipped), an exit threshold of 1 disables that exit and its check.
Inputs: ``images`` (B, C, H, W) float32; outputs ``logits`` (B, K), ``executed`` (L,) bool and
``exit_layer`` (int64 scalar, -1 for the head).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx  # a core dependency of edgeskip
from onnx import numpy_helper

from edgeskip.bundle import Bundle, BundleError
from edgeskip.errors import BackendError, ConfigError
from edgeskip.runtimes.backend import check_options
from edgeskip.runtimes.ort_backend import SessionRunner, _session_settings, session

__all__ = ["DISABLED_LAYER", "GATE_INPUT", "GATE_OUTPUTS", "GateGraph", "exit_threshold_name", "layer_threshold_name",
           "set_thresholds"]

GATE_INPUT = "images"
GATE_OUTPUTS = ("logits", "executed", "exit_layer")
DISABLED_LAYER = 2.0  # an agent probability never reaches it


def layer_threshold_name(j: int) -> str:
    return f"threshold_layer_{j:02d}"


def exit_threshold_name(i: int) -> str:
    return f"threshold_exit_{i:02d}"


def set_thresholds(model: onnx.ModelProto, layers: Mapping[int, float | None] | None = None,
                   exits: Sequence[float] | None = None) -> onnx.ModelProto:
    """Rewrite the threshold initialisers in place (None for a layer: never runs) and return the model."""
    by_name = {t.name: t for t in model.graph.initializer}
    updates: dict[str, float] = {}
    for j, t in (layers or {}).items():
        updates[layer_threshold_name(j)] = DISABLED_LAYER if t is None else float(t)
    for i, t in enumerate(exits or ()):
        if not 0.0 <= float(t) <= 1.0:
            raise ConfigError(f"exit threshold {i} must be in [0, 1], got {t}")
        updates[exit_threshold_name(i)] = float(t)
    for name, value in updates.items():
        if name not in by_name:
            raise ConfigError(f"the gate graph has no initialiser {name!r} (that layer or exit is not in it)")
        by_name[name].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return model


class GateGraph:
    """``onnx/gate.onnx``: the whole dynamic network in one session, one input at a time.

    The graph takes one decision per layer for its whole batch, so the Runtime feeds it one
    input per call (exact per-input decisions). Thresholds are initialisers: a new
    configuration rewrites them in memory and makes a new session from the same bytes (the
    bundle is not read again).
    """

    OPTIONS = ("threads", "thread_pool", "providers")

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        check_options("onnxruntime (gate graph)", options, self.OPTIONS)
        self.threads, self.thread_pool, self.providers = _session_settings(options)
        if bundle.manifest.gate is None:
            raise BundleError(f"{bundle.path}: this bundle has no gate graph")
        name = bundle.manifest.gate.file
        try:
            self._model = onnx.load_from_string(bundle.read(name))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise BackendError(f"{bundle.path}: {name} is not a loadable ONNX model: {exc}") from None
        self._removed = set(bundle.manifest.removed)
        self._lock = threading.Lock()
        self._stage: SessionRunner | None = None
        self._key: tuple[Any, ...] | None = None
        self.pool = ""

    def configure(self, layers: Mapping[int, float | None], exits: Sequence[float]) -> None:
        """Set per-layer thresholds (None: never runs; layers without an agent are ignored) and exit thresholds."""
        names = {t.name for t in self._model.graph.initializer}
        fixed = [j for j, t in layers.items()
                 if layer_threshold_name(j) not in names and t != 0.0 and j not in self._removed]
        if fixed:  # a layer without an agent in the graph always runs (or was removed at export)
            raise ConfigError(f"the gate graph has no agent for layer(s) {fixed}: it cannot skip them "
                              "(use graph='stages', which can)")
        layers = {j: t for j, t in layers.items() if layer_threshold_name(j) in names}
        key = (tuple(sorted(layers.items())), tuple(exits))
        with self._lock:
            if key == self._key:
                return
            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            set_thresholds(model, layers, exits)
            sess, self.pool = session(model.SerializeToString(), threads=self.threads, thread_pool=self.thread_pool,
                                      providers=self.providers)
            self._stage, self._key = SessionRunner(sess), key

    def run(self, image: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], int]:
        """(logits (1, K), executed (L,), exit layer or -1) for one preprocessed image (1, C, S, S)."""
        stage = self._stage
        if stage is None:
            raise BackendError("the gate graph is not configured (call configure first)")
        logits, executed, exit_layer = stage(image)
        return logits, executed, int(exit_layer)
