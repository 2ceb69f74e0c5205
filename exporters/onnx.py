"""Per-stage ONNX export: opset 17, a dynamic batch axis, checked and shape-inferred.

Each stage module (see :mod:`edgeskip.exporters.stages`) is traced by torch's ONNX
exporter, then ``onnx.checker`` (full check) and strict shape inference must pass; the
saved file carries the inferred shapes (TensorRT's parser and the gate-graph builder read
them). Fidelity against PyTorch is measured on the caller's images with onnxruntime.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from edgeskip.exporters.stages import BATCH, StageModule
from edgeskip.fsutil import atomic_write_bytes
from edgeskip.exporters.fidelity import stage_errors
from edgeskip.exporters.formats import (
    FP16_TOLERANCE,
    ExportError,
    FormatJob,
    FormatResult,
    relative_errors,
    require_within,
)
from edgeskip.exporters.settings import ExportConfig
from edgeskip.manifest import FormatInfo
from edgeskip.runtimes.ort_backend import session_options

__all__ = ["OPSET", "ExportError", "OnnxFp16Exporter", "to_onnx", "export_stage", "check_onnx", "ort_session",
           "run_onnx"]

log = logging.getLogger(__name__)

OPSET = 17


def to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str, *,
            opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``module`` to a checked, shape-inferred ONNX model with a dynamic batch axis."""
    buf = io.BytesIO()
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.13 warns that the TorchScript-based exporter is deprecated; it is the one whose
        # output we verify (plain MatMul/Softmax/LayerNormalization, opset 17, no dynamo guards).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buf, input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: BATCH}, output_name: {0: BATCH}}, opset_version=opset, dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    return check_onnx(model, name=type(module).__name__)


def check_onnx(model: onnx.ModelProto, *, name: str) -> onnx.ModelProto:
    """``onnx.checker`` (full) plus strict shape inference; returns the model with inferred shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"ONNX for {name} fails the checker / shape inference: {exc}") from None
    for out in inferred.graph.output:
        if not out.type.tensor_type.HasField("shape"):
            raise ExportError(f"ONNX for {name}: shape inference left output {out.name!r} without a shape")
    return inferred


def export_stage(stage: StageModule, path: Path, *, half: bool = False) -> onnx.ModelProto:
    """Write ``stage`` as ONNX to ``path`` (atomically); ``half`` gives fp16 weights and I/O."""
    module, example = stage.module, stage.example(2)
    if half:
        module, example = _half_copy(module), example.half()
    model = to_onnx(module, example, stage.input.name, stage.output.name)
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([stage.input.name], [stage.output.name]):
        raise ExportError(f"ONNX for {stage.name} has inputs/outputs {names}, expected "
                          f"[{stage.input.name}] -> [{stage.output.name}]")
    atomic_write_bytes(path, model.SerializeToString())
    return model


def _half_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).half()


def ort_session(model: onnx.ModelProto | Path | bytes, threads: int = 1):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session: intra-op spinning off, or the process's global thread pool when a
    Runtime made one (onnxruntime then refuses per-session pools; see edgeskip.runtimes.ort_backend)."""
    import onnxruntime as ort

    opts, _ = session_options(threads, "auto")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else (
        str(model) if isinstance(model, Path) else model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:  # type: ignore[no-untyped-def]
    """Run a one-input, one-output session."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]  # type: ignore[no-any-return]


class OnnxFp16Exporter:
    """``onnx-fp16``: every stage again with fp16 weights and I/O (what TensorRT >= 11, strongly typed, builds
    fp16 engines from), checked against PyTorch relative to each stage's output scale."""

    name = "onnx-fp16"

    def steps(self, stages: int, cfg: ExportConfig) -> int:
        return stages

    def __call__(self, job: FormatJob) -> FormatResult:
        sessions = {}
        for s in job.stages:
            rel = f"onnx/fp16/{s.name}.onnx"
            sessions[s.name] = ort_session(export_stage(s, job.tmp / rel, half=True))
            job.files[s.name][self.name] = rel
            job.step()
        errors = stage_errors(job.stages, job.inputs, lambda s, x: run_onnx(sessions[s.name], x.astype(np.float16)))
        require_within(relative_errors(errors, job.stages, job.inputs), FP16_TOLERANCE,
                       "fp16 ONNX (relative to the output scale)")
        info = FormatInfo(batch="dynamic", weights="float16", io="float16", opset=OPSET,
                          use="TensorRT >= 11 (strongly typed) fp16 engines")
        return FormatResult({self.name: info}, {self.name: errors})
