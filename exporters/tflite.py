"""Per-stage TFLite export with litert-torch (no TensorFlow), and a torch-free runner.

Each stage module (see :mod:`edgeskip.exporters.stages`) is converted by
``litert_torch.convert`` to one ``.tflite`` file with one float32 input and one float32
output, laid out exactly as in PyTorch (NCHW images in, ``(B, N, D)`` tokens, ``(B, K)``
logits): litert-torch transposes nothing unless asked (``to_channel_last_io``), and
:func:`convert_stage` checks the written shapes against the stage's specs.

Fixed batch. The files carry a fixed batch size (``batch``, default 1). litert-torch 0.10
cannot lower these stages with a symbolic batch (``dynamic_shapes``, default and ``use_v2``
pipelines alike): its LayerNorm lowering needs static shapes, and the embed's patch reshape
and the head's ``tokens[:, 0]`` fail on a symbolic dimension too. Resizing a fixed-shape
file in the interpreter is no way out either: XNNPACK refuses to re-plan the embed and
layer graphs, and the head silently keeps returning one row. :func:`~edgeskip.runtimes.tflite_interpreter.run_tflite` therefore
resizes only files whose batch axis is symbolic (-1) and otherwise refuses a different
batch with a clear error; export one file per batch size you run.

Precision. ``fp32`` keeps float32 weights. ``fp16`` stores weights as float16 (the
ai-edge-quantizer weight-only FLOAT_CASTING recipe, the same one as litert-torch's
``full_fp16_recipe``): a DEQUANTIZE op restores float32 at load, so compute and I/O stay
float32 and only the file shrinks (layers to about 55 %; embed and head to about 80 %, as
biases, LayerNorm parameters and the position embedding stay float32).

INT8 (``--int8``): each layer's fp32 file quantized by ai-edge-quantizer's dynamic-range recipe
(``dynamic_wi8_afp32``: INT8 weights per output channel, activations quantized per call by XNNPACK's
integer kernels); the embed and head stay float (:data:`edgeskip.exporters.int8.FLOAT_STAGES`). Full-integer
(static INT8 activations) is not used: litert-torch's PT2E quantizer path needs the model re-traced with
observers, and the dynamic-range recipe works on the converted files we already verify. The files hold batch 1,
so an input's activations are quantized alone (nothing batch-dependent).

Running a .tflite file (torch-free, what the on-device runtime uses) lives in
:mod:`edgeskip.runtimes.tflite_interpreter`; the fidelity checks here use it too.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeskip.errors import BackendUnavailableError, ConfigError
from edgeskip.fsutil import atomic_write_bytes
from edgeskip.exporters.fidelity import stage_errors
from edgeskip.exporters.formats import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    FormatJob,
    FormatResult,
    relative_errors,
    require_within,
)
from edgeskip.manifest import FormatInfo
from edgeskip.runtimes.tflite_interpreter import (
    TFLiteError,
    interpreter_class,
    load_interpreter,
    run_interpreter,
    run_tflite,
    single_io,
    signature,
)

if TYPE_CHECKING:
    import torch

    from edgeskip.exporters.settings import ExportConfig

    from edgeskip.exporters.stages import StageModule

__all__ = ["PRECISIONS", "TFLiteExporter", "check_fidelity", "convert_stage", "int8_weights"]

log = logging.getLogger(__name__)

EXPORT_INSTALL = "pip install 'edgeskip[tflite-export]'"  # litert-torch; devices need only the 'tflite' extra

PRECISIONS = ("fp32", "fp16")


# --- conversion (torch, litert-torch) ------------------------------------------------------

def convert_stage(stage: StageModule, path: Path, precision: str = "fp32", *, batch: int = 1) -> None:
    """Convert ``stage.module`` to a .tflite file for batch ``batch`` at ``path`` (atomically).

    The written file is checked for the stage's I/O shapes and dtypes; its numbers are checked
    by :func:`check_fidelity`. Conversion failures are :class:`TFLiteError`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TFLite precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive int, got {batch!r}")
    start = time.perf_counter()
    with _quiet_litert():
        litert_torch = _import("litert_torch", "converting to TFLite needs litert-torch")
        module, example = stage.module, stage.example(batch)
        was_training = module.training
        module.eval()
        try:
            data = bytes(litert_torch.convert(module, (example,)).model_content())
        except Exception as exc:  # litert-torch raises bare TypeError/ValueError/RuntimeError
            raise TFLiteError(f"litert-torch could not convert stage {stage.name}: {exc}") from exc
        finally:
            module.train(was_training)
        if precision == "fp16":
            data = _fp16_weights(data, stage.name)
    _check_io(stage, data, batch)
    atomic_write_bytes(path, data)
    log.info("tflite %s (%s, batch %d): %d bytes in %.1f s", stage.name, precision, batch, len(data),
             time.perf_counter() - start)


def check_fidelity(stage: StageModule, path: Path, inputs: torch.Tensor) -> float:
    """Max |tflite - torch| of ``stage`` over ``inputs`` (run in chunks of the file's batch)."""
    import torch

    interpreter = load_interpreter(path)
    batch = signature(single_io(interpreter, path)[0])[0]
    n = int(inputs.shape[0])
    if batch != -1 and n % batch:
        raise TFLiteError(f"{path} has batch {batch}; give a multiple of {batch} inputs, not {n}")
    step = n if batch == -1 else batch
    module, was_training = stage.module, stage.module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = module(inputs).float().numpy()
    finally:
        module.train(was_training)
    x = inputs.detach().float().numpy()
    got = np.concatenate([run_interpreter(interpreter, x[i:i + step]) for i in range(0, n, step)])
    if got.shape != reference.shape:
        raise TFLiteError(f"{path}: TFLite output shape {got.shape} differs from PyTorch's {reference.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - reference)))


def int8_weights(data: bytes, name: str) -> bytes:
    """A converted stage with INT8 weights per channel and activations quantized per call (dynamic range)."""
    aeq = _import("ai_edge_quantizer.quantizer", "INT8 TFLite export needs ai-edge-quantizer")
    recipe = _import("ai_edge_quantizer.recipe", "INT8 TFLite export needs ai-edge-quantizer")
    qt = aeq.Quantizer(bytearray(data))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    try:
        with _quiet_litert():
            result = qt.quantize(enable_progress_report=False)
    except Exception as exc:
        raise TFLiteError(f"ai-edge-quantizer could not quantize stage {name} to INT8: {exc}") from exc
    return bytes(result.quantized_model)


def _fp16_weights(data: bytes, name: str) -> bytes:
    """Store the weights as float16 (weight-only FLOAT_CASTING; compute stays float32)."""
    aeq = _import("ai_edge_quantizer.quantizer", "fp16 TFLite export needs ai-edge-quantizer")
    qt = aeq.Quantizer(bytearray(data))
    qt.add_weight_only_config(
        regex=".*", operation_name=aeq.qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
        granularity=aeq.qtyping.QuantGranularity.TENSORWISE,
        algorithm_key=aeq.algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    try:
        result = qt.quantize(enable_progress_report=False)  # the report is a print() to stdout
    except Exception as exc:
        raise TFLiteError(f"ai-edge-quantizer could not make fp16 weights for stage {name}: {exc}") from exc
    return bytes(result.quantized_model)


def _check_io(stage: StageModule, data: bytes, batch: int) -> None:
    """The converted file must keep the stage's float32 I/O shapes (no NHWC transposes)."""
    interpreter = interpreter_class()(model_content=data)
    inp, out = single_io(interpreter, stage.name)
    for detail, spec in ((inp, stage.input), (out, stage.output)):
        want = tuple(batch if isinstance(d, str) else int(d) for d in spec.shape)
        got = tuple(int(d) for d in detail["shape"])
        if got != want or np.dtype(detail["dtype"]) != np.dtype(spec.dtype):
            raise TFLiteError(f"TFLite {stage.name} {spec.name}: expected {want} {spec.dtype}, "
                              f"converted file has {got} {np.dtype(detail['dtype'])}")


def _import(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{why}: {EXPORT_INSTALL} ({exc})") from None


class _DropChatter(logging.Filter):
    """Drops INFO records that litert-torch and ai-edge-quantizer log on the root logger
    ("Use JAX lowering: aten.mm", "Serializing model...")."""

    _SOURCES = tuple(f"{os.sep}{pkg}{os.sep}" for pkg in ("litert_torch", "ai_edge_quantizer"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self._SOURCES)


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """Silence litert-torch's progress printout, its root-logger INFO and known import chatter.

    ``LITERT_TORCH_SHOW_PROGRESS`` is left alone when the user has set it. Messages the C++
    libraries write straight to stderr (absl "I0000 ... flatbuffer_export.cc", oneDNN) are
    not reachable from Python and stay.
    """
    env_key = "LITERT_TORCH_SHOW_PROGRESS"
    set_env = env_key not in os.environ
    if set_env:
        os.environ[env_key] = "0"
    # Importing litert-torch imports torchao, which warns about CUDA-only kernels it cannot
    # load and re-registers an Enum with torch's pytree; jax looks for a TPU at first use.
    noisy = [logging.getLogger(n) for n in
             ("torchao", "torchao.kernel.intmm", "torch.utils._pytree", "jax._src.xla_bridge")]
    levels = [lg.level for lg in noisy]
    chatter = _DropChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            # torch 2.13 deprecates LeafSpec checks that torch.export's own pytree code still makes.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        root.removeFilter(chatter)
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
        if set_env:
            os.environ.pop(env_key, None)


class TFLiteExporter:
    """``tflite``: every stage as .tflite for batch 1, fp32 weights (``tflite``) and fp16 weights
    (``tflite-fp16``), and with ``--int8`` INT8 layers (``tflite-int8``), each checked against PyTorch in the
    LiteRT interpreter."""

    name = "tflite"
    PRECISIONS = (("fp32", "tflite"), ("fp16", "tflite-fp16"))

    def steps(self, stages: int, cfg: ExportConfig) -> int:
        return stages * (len(self.PRECISIONS) + (1 if cfg.int8 else 0))

    def __call__(self, job: FormatJob) -> FormatResult:
        fidelity: dict[str, dict[str, float]] = {}
        for precision, fmt in self.PRECISIONS:
            for s in job.stages:
                rel = f"tflite/{s.name}.{precision}.tflite"
                convert_stage(s, job.tmp / rel, precision)
                job.files[s.name][fmt] = rel
                job.step()
            paths = {s.name: job.tmp / job.files[s.name][fmt] for s in job.stages}

            def run_rows(s: StageModule, x: np.ndarray) -> np.ndarray:  # the files hold batch 1
                return np.concatenate([run_tflite(paths[s.name], x[i:i + 1]) for i in range(len(x))])  # noqa: B023

            errors = stage_errors(job.stages, job.inputs, run_rows)
            if precision == "fp32":
                require_within(errors, FP32_TOLERANCE, "TFLite fp32 (LiteRT interpreter)")
            else:
                require_within(relative_errors(errors, job.stages, job.inputs), FP16_TOLERANCE,
                               "TFLite fp16 (relative to the output scale)")
            fidelity[fmt] = errors
        # litert-torch 0.10 cannot export a dynamic batch, and resizing a fixed one is unsafe
        # (a head resized from batch 1 silently returned one row): the per-layer loop runs batch 1.
        formats = {"tflite": FormatInfo(batch=1, weights="float32", io="float32"),
                   "tflite-fp16": FormatInfo(batch=1, weights="float16 (dequantised to float32 at load)", io="float32")}
        if job.cfg.int8:
            formats["tflite-int8"], fidelity["tflite-int8"] = self._int8(job)
        return FormatResult(formats, fidelity)

    def _int8(self, job: FormatJob) -> tuple[FormatInfo, dict[str, float]]:
        """``tflite-int8``: the fp32 layers quantized (:func:`int8_weights`), embed and head the fp32 files; checked
        as the onnxruntime INT8 stages are (:mod:`edgeskip.exporters.int8`)."""
        from edgeskip.exporters.int8 import FLOAT_STAGES, INT8_TOLERANCE, require_agreement, top1_agreement

        for s in job.stages:
            if s.kind in FLOAT_STAGES:
                job.files[s.name]["tflite-int8"] = job.files[s.name]["tflite"]
            else:
                rel = f"tflite/{s.name}.int8.tflite"
                data = int8_weights((job.tmp / job.files[s.name]["tflite"]).read_bytes(), s.name)
                _check_io(s, data, 1)
                atomic_write_bytes(job.tmp / rel, data)
                job.files[s.name]["tflite-int8"] = rel
            job.step()
        paths = {s.name: job.tmp / job.files[s.name]["tflite-int8"] for s in job.stages}

        def run_rows(s: StageModule, x: np.ndarray) -> np.ndarray:
            return np.concatenate([run_tflite(paths[s.name], x[i:i + 1]) for i in range(len(x))])

        errors = stage_errors(job.stages, job.inputs, run_rows)
        require_within(relative_errors(errors, job.stages, job.inputs), INT8_TOLERANCE,
                       "TFLite int8 (relative to the output scale)")
        agreement = top1_agreement(job, run_rows)
        require_agreement(agreement, len(job.inputs["embed"]), "TFLite int8")
        return FormatInfo(batch=1, weights="int8", io="float32",
                          use=f"LiteRT INT8 (dynamic range: INT8 weights per channel, activations quantized per call "
                              f"by XNNPACK); top-1 agreement with fp32 {100 * agreement:.1f}%"), errors
