"""The one interface every inference backend implements (small enough to add one in one file).

A backend runs a bundle's *stages* (``embed``, ``layer_NN``, ``head``) on float32 batches of
any size; the :class:`~edgeskip.runtimes.Runtime` does everything else on the host (input
preparation, agent decisions, E²CM exits, gather/scatter, telemetry). To add a backend::

    class MyBackend(Backend):
        name = "mine"
        def __init__(self, bundle, stages, **options): ...   # load the stage files
        def run(self, stage, x): ...                         # (B, ...) float32 -> float32
        def info(self): ...                                  # what actually runs

    register_backend("mine", lambda: MyBackend)             # in edgeskip.runtimes

A backend imports its SDK inside ``__init__`` and raises
:class:`~edgeskip.errors.BackendUnavailableError` naming what to install when it is missing.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle
from edgeskip.errors import ConfigError
from edgeskip.registry import Registry

__all__ = ["BACKENDS", "Backend", "check_options", "check_threads", "chunk_plan", "in_fixed_batches", "register_backend"]


class Backend(abc.ABC):
    """Runs the stages of one verified bundle; safe to call from several threads at once."""

    name: ClassVar[str]

    def __init__(self, bundle: Bundle, stages: Sequence[str]) -> None:
        self.bundle = bundle
        self.stages = tuple(stages)
        self._variants: set[str] = set()  # names of stages loaded in another precision (:meth:`variant`)
        self._variant_lock = threading.Lock()

    @abc.abstractmethod
    def run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run ``stage`` on a (B, ...) float32 batch (any B >= 1) and return its float32 output."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """What actually runs (provider, precision, threads, versions): recorded with every figure."""

    def fuse(self, stages: Sequence[str]) -> str | None:
        """A name :meth:`run` accepts for ``stages`` run in order as one call (a decision-free segment), made
        and cached on first use; None when this backend cannot fuse (the Runtime then runs them one by one)."""
        return None

    def precisions(self) -> tuple[str, ...]:
        """The precisions (:data:`edgeskip.manifest.PRECISIONS`) this backend can run every layer of the bundle in,
        its own first: what a policy's per-layer ``precisions`` may name. The default: its own only."""
        return (str(self.info().get("precision", "fp32")),)

    def variant(self, stage: str, precision: str) -> str | None:
        """A name :meth:`run` and :meth:`fuse` accept for ``stage`` in ``precision``: its own name in the backend's
        own precision, else ``stage:precision``, loaded on first use (:meth:`_load_variant`) and kept; None when
        this backend cannot run it so (a precision :meth:`precisions` does not name)."""
        if stage not in self.stages:
            return None
        held = self.precisions()
        if precision == held[0]:
            return stage
        if precision not in held[1:]:
            return None
        key = f"{stage}:{precision}"
        with self._variant_lock:
            if key not in self._variants:
                self._load_variant(key, stage, precision)
                self._variants.add(key)
        return key

    def _load_variant(self, key: str, stage: str, precision: str) -> None:
        """Load ``stage`` in ``precision`` under the name ``key`` (backends whose :meth:`precisions` name more than
        their own precision implement it)."""
        raise NotImplementedError(f"backend {self.name!r} runs one precision only")

    def holds_every_layer(self, fmt: str) -> bool:
        """Whether the bundle has a file in format ``fmt`` for every layer stage this backend runs."""
        m = self.bundle.manifest
        layers = [s for s in self.stages if m.stage(s).kind == "layer"]
        return bool(layers) and all(fmt in m.stage(s).files for s in layers)

    def static_runner(self) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None:
        """A one-call runner of the whole static model (images -> logits, every bundle layer), when this
        backend has one; the Runtime uses it for a policy without decisions. None: loop over stages."""
        return None

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release explicitly
        """Release sessions, interpreters or device memory (the backend is unusable afterwards)."""


def check_options(backend: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"backend {backend!r} has no option(s) {', '.join(unknown)} "
                          f"(its options: {', '.join(known) or 'none'})")


def check_threads(threads: Any) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None (the backend's default), got {threads!r}")
    return threads  # type: ignore[no-any-return]


def chunk_plan(n: int, batches: Sequence[int]) -> list[int]:
    """Compiled batch sizes to cover ``n`` rows: an exact fit, else the largest that fits, and the
    smallest (zero-padded) for a remainder smaller than every compiled size."""
    sizes = sorted(set(batches))
    if not sizes or n < 0:
        raise ConfigError(f"cannot split {n} rows over compiled batch sizes {list(batches)}")
    plan, left = [], n
    while left > 0:
        if left in sizes:
            plan.append(left)
            break
        fits = [b for b in sizes if b <= left]
        plan.append(fits[-1] if fits else sizes[0])
        left -= plan[-1]
    return plan


def in_fixed_batches(run: Callable[[npt.NDArray[Any]], npt.NDArray[Any]], x: npt.NDArray[Any],
                     batches: Sequence[int]) -> npt.NDArray[Any]:
    """Run a model compiled for fixed batch sizes (``run`` gets chunks of exactly one of ``batches``
    rows) on any number of rows: chunks from :func:`chunk_plan`, a short last one padded with zero
    rows whose outputs are dropped."""
    outs, start = [], 0
    for size in chunk_plan(x.shape[0], batches):
        chunk = x[start:start + size]
        rows = chunk.shape[0]
        if rows < size:
            chunk = np.concatenate([chunk, np.zeros((size - rows, *chunk.shape[1:]), chunk.dtype)])
        outs.append(run(chunk)[:rows])
        start += rows
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


# name -> zero-argument loader returning the Backend subclass: each imports its module (and with it its SDK) only
# when that backend is asked for, so a device without LiteRT or TensorRT never needs them.
BACKENDS: Registry[Callable[[], Any]] = Registry("backend")


def register_backend(name: str, loader: Callable[[], Any]) -> None:
    BACKENDS.register(name, loader)


def _onnxruntime() -> type[Backend]:
    from edgeskip.runtimes.ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _tflite() -> type[Backend]:
    from edgeskip.runtimes.tflite_backend import TFLiteBackend

    return TFLiteBackend


def _tensorrt() -> type[Backend]:
    from edgeskip.runtimes.tensorrt_backend import TensorRTBackend

    return TensorRTBackend


def _torch() -> type[Backend]:
    from edgeskip.runtimes.torch_backend import TorchBackend

    return TorchBackend


register_backend("onnxruntime", _onnxruntime)
register_backend("tflite", _tflite)
register_backend("tensorrt", _tensorrt)
register_backend("torch", _torch)
