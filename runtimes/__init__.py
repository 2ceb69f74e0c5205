"""The torch-free on-device runtime: numpy plus one inference backend.

``edgeskip.Runtime(bundle, backend=..., policy=...)`` (:class:`~edgeskip.runtimes.runtime.Runtime`)
runs a bundle layer by layer with agent gating and/or E²CM exits, per input, in batches too.
Backends register here by name and import their SDK only when asked for:

========== ====================================================== ============================
name       runs                                                   needs
========== ====================================================== ============================
onnxruntime per-stage ONNX sessions (or the gate graph)           onnxruntime (always installed)
tflite     per-stage .tflite files (fp32 or fp16 weights)          ai-edge-litert or tflite-runtime
tensorrt   per-stage engines from ``edgeskip build-engines``       TensorRT 10 + cuda-python, a GPU
torch      the PyTorch modules of the checkpoint (reference)       torch
========== ====================================================== ============================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeskip.normalization import preprocess
from edgeskip.registry import Registry
from edgeskip.runtimes.backend import Backend
from edgeskip.policy import POLICIES, Policy
from edgeskip.runtimes.runtime import GRAPHS, Runtime, RuntimeOutput
from edgeskip.runtimes.telemetry import RuntimeStats

__all__ = ["BACKENDS", "GRAPHS", "POLICIES", "Backend", "Policy", "Runtime", "RuntimeOutput", "RuntimeStats",
           "preprocess", "register_backend"]

# name -> zero-argument loader returning the Backend subclass (keeps SDK imports lazy).
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
