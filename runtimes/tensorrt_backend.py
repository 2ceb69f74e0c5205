"""The TensorRT backend: per-stage engines built on the device, gated on the host.

Engines come from ``edgeskip build-engines`` (or the bundle's trtexec script) and are listed in
the manifest's ``tensorrt.engines`` (stage, batch, precision, file). Each engine has a static
batch: a call runs its rows in chunks of the engine batch sizes available for that stage (an
exact fit when there is one, else the largest that fits, and the smallest one, zero-padded,
for a remainder). Several TensorRT releases evaluate both branches of an ONNX ``If``, so the
saving on Jetson comes from this host-side loop over per-layer engines, not from the gate graph.

TensorRT 10 API (name-based: ``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address``,
``execute_async_v3``); device memory through cuda-python (``cuda.bindings.runtime``, or the
older ``cuda.cudart``), so no torch is needed on the device. Each stage holds its own
execution context, device buffers and lock (a context must not run two calls at once).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle, BundleError
from edgeskip.errors import BackendError, BackendUnavailableError, ConfigError
from edgeskip.runtimes.backend import Backend, check_options, in_fixed_batches

__all__ = ["TensorRTBackend"]

INSTALL = ("the tensorrt backend needs TensorRT's Python bindings and cuda-python: on a Jetson TensorRT comes "
           "with JetPack (pip install cuda-python); elsewhere pip install 'edgeskip[tensorrt]'")


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(INSTALL) from None
    return cudart


def _check(cudart: Any, result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class _Engine:
    """One deserialised engine of a static batch, with its device buffers."""

    def __init__(self, trt: Any, cudart: Any, runtime: Any, data: bytes, where: str) -> None:
        self.cudart = cudart
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendError(f"{where} does not deserialize with TensorRT {trt.__version__}: engines are tied to the "
                               "TensorRT version and GPU they were built with; run edgeskip build-engines here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{where}: expected one input and one output, found {inputs} and {outputs}")
        (self.input,), (self.output,) = inputs, outputs
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        self.in_shape = tuple(self.engine.get_tensor_shape(self.input))
        self.out_shape = tuple(self.engine.get_tensor_shape(self.output))
        if any(d < 0 for d in self.in_shape + self.out_shape):
            raise BackendError(f"{where}: dynamic shapes {self.in_shape} -> {self.out_shape}; edgeskip builds "
                               "static-shape engines (one per batch size)")
        self.batch = self.in_shape[0]
        self.stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.d_in = _check(cudart, cudart.cudaMalloc(int(np.prod(self.in_shape)) * self.in_dtype.itemsize), "cudaMalloc")
        self.d_out = _check(cudart, cudart.cudaMalloc(int(np.prod(self.out_shape)) * self.out_dtype.itemsize),
                            "cudaMalloc")
        self.context.set_tensor_address(self.input, int(self.d_in))
        self.context.set_tensor_address(self.output, int(self.d_out))

    def __call__(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        cudart = self.cudart
        host_in = np.ascontiguousarray(x, dtype=self.in_dtype)
        if host_in.shape != self.in_shape:
            raise BackendError(f"engine takes {self.in_shape}, got {host_in.shape}")
        host_out = np.empty(self.out_shape, self.out_dtype)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart, cudart.cudaMemcpyAsync(self.d_in, host_in.ctypes.data, host_in.nbytes, h2d, self.stream), "copy in")
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT failed to run the engine (see the TensorRT log)")
        _check(cudart, cudart.cudaMemcpyAsync(host_out.ctypes.data, self.d_out, host_out.nbytes, d2h, self.stream),
               "copy out")
        _check(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out.astype(np.float32, copy=False)

    def free(self) -> None:
        for ptr in (self.d_in, self.d_out):
            self.cudart.cudaFree(ptr)
        self.cudart.cudaStreamDestroy(self.stream)


class TensorRTBackend(Backend):
    """Per-stage TensorRT engines on the GPU; the Runtime gates on the host."""

    name = "tensorrt"
    OPTIONS = ("precision",)

    def __init__(self, bundle: Bundle, stages: Sequence[str], **options: Any) -> None:
        super().__init__(bundle, stages)
        check_options(self.name, options, self.OPTIONS)
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailableError(INSTALL) from None
        cudart = _cudart()
        records = list(bundle.manifest.tensorrt.engines) if bundle.manifest.tensorrt else []
        if not records:
            raise BundleError(f"{bundle.path} has no TensorRT engines: build them on the device with "
                              f"'edgeskip build-engines {bundle.path}'")
        precisions = sorted({r.precision for r in records})
        self.precision = options.get("precision") or ("fp16" if "fp16" in precisions else precisions[0])
        if self.precision not in precisions:
            raise ConfigError(f"the bundle has {', '.join(precisions)} engines, not {self.precision!r}")
        self.trt_version = str(trt.__version__)
        built = {r.trt_version for r in records}
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engines: dict[str, dict[int, _Engine]] = {}
        self._locks = {name: threading.Lock() for name in self.stages}
        try:
            for name in self.stages:
                mine = [r for r in records if r.stage == name and r.precision == self.precision]
                if not mine:
                    raise BundleError(f"{bundle.path} has no {self.precision} engine for stage {name!r} "
                                      f"(built: {sorted({r.stage for r in records})})")
                self._engines[name] = {r.batch: _Engine(trt, cudart, runtime, bundle.read(r.file), r.file)
                                       for r in mine}
        except Exception:
            self.close()
            raise
        self.engine_versions = sorted(v for v in built if v)

    def run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        engines = self._engines[stage]
        with self._locks[stage]:
            return in_fixed_batches(lambda chunk: engines[chunk.shape[0]](chunk), x, list(engines))

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "tensorrt": self.trt_version, "engines_built_with": self.engine_versions,
                "precision": self.precision, "device": "cuda",
                "batches": {s: sorted(e) for s, e in self._engines.items()}}

    def close(self) -> None:
        for engines in self._engines.values():
            for engine in engines.values():
                engine.free()
        self._engines.clear()
