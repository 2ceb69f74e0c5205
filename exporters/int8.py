"""``onnx-int8``: every layer quantized to INT8 with onnxruntime's quantization tools, checked.

Two modes (``edgeskip export --int8 [--int8-mode dynamic|static]``), weights per output channel, symmetric
INT8, in both:

* ``dynamic`` (the default): activations quantized per call from their own range (onnxruntime's
  ``quantize_dynamic``; its fused integer matrix-product kernels). Measured on a vit9 layer here: 0.72x
  fp32's time at batch 1 and 0.66x at batch 64, 0.19% error of the output's scale. The range is taken over
  the whole call, so an input's outputs depend slightly on the other inputs of its batch (the format records
  ``batch_dependent``; the search then evaluates at its deployment batch, :func:`edgeskip.search.bundle.eval_chunk`).
* ``static``: the QDQ format (what TensorRT's explicit quantization consumes), activation ranges calibrated
  by min-max on each stage's real inputs, which the float chain computes from a seeded subset of the training
  images. Measured on the same layer: 1.06x fp32's time at batch 1 (no faster on this CPU's onnxruntime),
  0.68% error; every zoo vit9 layer, in a later run (``benchmarks/int8_bench.py --speed-only``), 1.43-1.45x
  fp32's time, drifting 0.4-1.5% of its output's scale. For jetson the activation ranges are symmetric (zero
  points 0: what TensorRT's explicit quantization takes); the same layers then drifted 0.5-2.4% at the same
  speed, so the other targets keep asymmetric ranges.
 Only the transformer layers are quantized, and in them only the matrix
products (``MatMul``); LayerNorm, Softmax, GELU and the residual additions stay in float, and so do the embed
and head stages (:data:`FLOAT_STAGES`: measured, they drifted most for the least time). Agents and E²CM read
the float tokens between stages as before.

The export fails, leaving no bundle, when a stage drifts from PyTorch beyond :data:`INT8_TOLERANCE` of its
output's scale, or when the INT8 chain's top-1 class agrees with fp32 PyTorch's on fewer than
:data:`INT8_AGREEMENT` of the fidelity images.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.exporters.fidelity import stage_errors
from edgeskip.exporters.formats import ExportError, FormatJob, FormatResult, relative_errors, require_within
from edgeskip.exporters.onnx import OPSET, ort_session, run_onnx
from edgeskip.exporters.settings import ExportConfig
from edgeskip.manifest import FormatInfo

__all__ = ["FLOAT_STAGES", "INT8_AGREEMENT", "INT8_TOLERANCE", "OnnxInt8Exporter", "QUANTIZED_OPS", "quantize_stage",
           "quantize_stages", "require_agreement", "top1_agreement"]

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("MatMul", "Conv", "Gemm")
# Stages kept in fp32: quantized, the zoo vit9's embed drifted 5.0% of its output's scale (its patch
# convolution and position embedding) and its head 1.2%, against 0.4-1.5% for the layers, while the two
# together are about 3% of the model's time at batch 1.
FLOAT_STAGES = ("embed", "head")
# Errors relative to each stage's output scale (max |torch|): the zoo vit9's layers measured 0.2-0.7% (dynamic)
# and 0.4-1.5% (static).
INT8_TOLERANCE = 0.03
INT8_AGREEMENT = 0.9  # top-1 of the INT8 chain against fp32 PyTorch on the fidelity images


class _Reader:
    """onnxruntime's calibration reader over one stage's real inputs, a batch at a time."""

    def __init__(self, name: str, inputs: npt.NDArray[np.float32], batch: int = 16) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = (
            {name: inputs[i : i + batch]} for i in range(0, len(inputs), batch))

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


def quantize_stage(fp32: Path, out: Path, inputs: npt.NDArray[np.float32] | None, mode: str = "dynamic",
                   symmetric: bool = False) -> None:
    """Write ``out``: the stage ``fp32`` quantized, per-channel symmetric INT8 weights with activations quantized
    per call (``dynamic``) or QDQ with INT8 activations calibrated by min-max on ``inputs`` (``static``; with
    ``symmetric``, activation ranges symmetric about 0, zero points 0: what TensorRT takes).
    onnxruntime's tool makes its own sessions with default options, which onnxruntime refuses once a process uses
    its global thread pool (an ``edgeskip.Runtime``): see :func:`quantize_stages`, which runs it in a fresh
    process."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    out.parent.mkdir(parents=True, exist_ok=True)
    if mode == "dynamic":
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(QUANTIZED_OPS))
        return
    if inputs is None:
        raise ValueError("static INT8 needs calibration inputs")

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(_Reader, CalibrationDataReader):  # the tool checks for its own base class
        pass

    quantize_static(str(fp32), str(out), Reader(name, inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=list(QUANTIZED_OPS), activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric})


def quantize_stages(jobs: list[tuple[Path, Path, npt.NDArray[np.float32] | None]], scratch: Path, mode: str,
                    symmetric: bool = False) -> None:
    """:func:`quantize_stage` for every (fp32 file, out file, calibration inputs), in one fresh process (``python
    -P -m edgeskip.exporters.int8``), its inputs handed over as ``.npy`` files in ``scratch``."""
    scratch.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, (fp32, out, inputs) in enumerate(jobs):
        if inputs is not None:
            np.save(scratch / f"{i}.npy", inputs, allow_pickle=False)
        listed.append([str(fp32), str(out), None if inputs is None else str(scratch / f"{i}.npy")])
    (scratch / "jobs.json").write_text(json.dumps({"mode": mode, "symmetric": symmetric, "jobs": listed}))
    # -P: the installed edgeskip, never a source folder of that name in the current directory
    proc = subprocess.run([sys.executable, "-P", "-m", "edgeskip.exporters.int8", str(scratch / "jobs.json")],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ExportError(f"INT8 quantization failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")


class OnnxInt8Exporter:
    """``onnx-int8``: every layer quantized (:func:`quantize_stage`), the embed and head as fp32, all checked
    against PyTorch."""

    name = "onnx-int8"

    def steps(self, stages: int, cfg: ExportConfig) -> int:
        return stages

    def __call__(self, job: FormatJob) -> FormatResult:
        mode = job.cfg.quantization
        if mode == "static" and job.calibration is None:
            raise ExportError("static INT8 needs calibration images: pass --data with the training images")
        todo = []
        for s in job.stages:  # embed and head: the fp32 file itself (this format's embed and head are float)
            rel = job.files[s.name]["onnx"] if s.kind in FLOAT_STAGES else f"onnx/int8/{s.name}.onnx"
            job.files[s.name][self.name] = rel
            if s.kind not in FLOAT_STAGES:
                calib = None if job.calibration is None else job.calibration[s.name].numpy()
                todo.append((job.tmp / job.files[s.name]["onnx"], job.tmp / rel, calib))
        with tempfile.TemporaryDirectory() as scratch:
            # TensorRT's explicit quantization takes symmetric activations only (exporters.tensorrt); elsewhere
            # asymmetric ranges drift less (see the module docstring)
            quantize_stages(todo, Path(scratch), mode, symmetric=job.cfg.target == "jetson")
        sessions = {}
        for s in job.stages:
            sessions[s.name] = ort_session(job.tmp / job.files[s.name][self.name])
            job.step()
        errors = stage_errors(job.stages, job.inputs, lambda s, x: run_onnx(sessions[s.name], x))
        relative = relative_errors(errors, job.stages, job.inputs)
        log.info("int8 stages, max error relative to the output scale: %s",
                 ", ".join(f"{k} {v:.3f}" for k, v in relative.items()))
        require_within(relative, INT8_TOLERANCE, "int8 ONNX (relative to the output scale)")
        agreement = top1_agreement(job, lambda s, x: run_onnx(sessions[s.name], x))
        require_agreement(agreement, len(job.inputs["embed"]), "int8 ONNX")
        how = ("dynamic: activations quantized per call" if mode == "dynamic" else
               f"static QDQ, calibrated on {len(next(iter(job.calibration.values())))} training images")  # type: ignore[union-attr]
        info = FormatInfo(batch="dynamic", weights="int8", io="float32", opset=OPSET, batch_dependent=mode == "dynamic",
                          use=f"onnxruntime INT8 ({how}); top-1 agreement with fp32 {100 * agreement:.1f}%")
        return FormatResult({self.name: info}, {self.name: errors})


def top1_agreement(job: FormatJob, run: Callable[[Any, npt.NDArray[np.float32]], Any]) -> float:
    """Share of the fidelity images whose top class through every stage in order (``run(stage, x)``: an INT8
    format's) equals fp32 PyTorch's."""
    import torch

    x = job.inputs["embed"]
    want = x
    got = x.numpy()
    with torch.no_grad():
        for s in job.stages:
            want = s.module(want)
            got = run(s, np.ascontiguousarray(got, dtype=np.float32))
    return float(np.mean(np.asarray(got).argmax(1) == want.numpy().argmax(1)))


def require_agreement(agreement: float, images: int, what: str) -> None:
    """An :class:`ExportError` when the INT8 chain's top class agrees with fp32 on fewer than
    :data:`INT8_AGREEMENT` of the fidelity images."""
    if agreement < INT8_AGREEMENT:
        raise ExportError(f"the {what} stages agree with fp32 PyTorch on the top class of only {100 * agreement:.1f}% "
                          f"of the {images} fidelity images (at least {100 * INT8_AGREEMENT:.0f}% required)")


def _main(jobs_file: str) -> int:
    """The fresh process of :func:`quantize_stages`."""
    spec = json.loads(Path(jobs_file).read_text())
    for fp32, out, inputs in spec["jobs"]:
        quantize_stage(Path(fp32), Path(out), None if inputs is None else np.load(inputs, allow_pickle=False),
                       spec["mode"], spec["symmetric"])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
