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

from edgeskip.normalization import preprocess
from edgeskip.policy import POLICIES, Policy
from edgeskip.runtimes.backend import BACKENDS, Backend, register_backend
from edgeskip.runtimes.ort_backend import app_session_options as session_options
from edgeskip.runtimes.runtime import GRAPHS, Runtime, RuntimeOutput
from edgeskip.runtimes.telemetry import RuntimeStats

__all__ = ["BACKENDS", "GRAPHS", "POLICIES", "Backend", "Policy", "Runtime", "RuntimeOutput", "RuntimeStats",
           "preprocess", "register_backend", "session_options"]
