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
layer graphs, and the head silently keeps returning one row. :func:`run_tflite` therefore
resizes only files whose batch axis is symbolic (-1) and otherwise refuses a different
batch with a clear error; export one file per batch size you run.

Precision. ``fp32`` keeps float32 weights. ``fp16`` stores weights as float16 (the
ai-edge-quantizer weight-only FLOAT_CASTING recipe, the same one as litert-torch's
``full_fp16_recipe``): a DEQUANTIZE op restores float32 at load, so compute and I/O stay
float32 and only the file shrinks (layers to about 55 %; embed and head to about 80 %, as
biases, LayerNorm parameters and the position embedding stay float32).

Only numpy and the standard library are imported at module level: the on-device runtime
uses :func:`interpreter_class`, :func:`load_interpreter` and :func:`run_tflite` without torch.
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
import numpy.typing as npt

from edgeskip.errors import BackendUnavailableError, ConfigError, EdgeskipError
from edgeskip.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from edgeskip.exporters.stages import StageModule

__all__ = [
    "PRECISIONS",
    "TFLiteError",
    "check_fidelity",
    "convert_stage",
    "interpreter_class",
    "io_shapes",
    "load_interpreter",
    "run_interpreter",
    "run_tflite",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
_INSTALL = "pip install 'edgeskip[tflite]'"


class TFLiteError(EdgeskipError):
    """A .tflite file is missing, unreadable, or does not fit the input it is given."""


# --- interpreter (torch-free) -------------------------------------------------------------

def interpreter_class() -> type:
    """``ai_edge_litert``'s Interpreter, else ``tflite_runtime``'s (same API), else an error."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            cls: type = importlib.import_module(module).Interpreter
        except ImportError:
            continue
        return cls
    raise BackendUnavailableError(
        f"running .tflite files needs a LiteRT interpreter: {_INSTALL} (ai-edge-litert), "
        "or tflite-runtime on a device")


def load_interpreter(path: str | Path, *, num_threads: int | None = None, content: bytes | None = None) -> Any:
    """An interpreter for ``path`` (or for ``content``, the file's bytes already read and verified,
    ``path`` then only names it) with tensors allocated; a bad model is a :class:`TFLiteError`."""
    path = Path(path)
    if content is None and not path.is_file():
        raise TFLiteError(f"TFLite model {path} does not exist; export the bundle again")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ConfigError(f"num_threads must be a positive int or None, got {num_threads!r}")
    cls = interpreter_class()
    try:
        if content is None:
            interpreter = cls(model_path=str(path), num_threads=num_threads)
        else:
            interpreter = cls(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TFLiteError(f"{path} is not a loadable TFLite model ({exc}); export it again") from None
    _single_io(interpreter, path)
    return interpreter


def io_shapes(path: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output shape stored in ``path`` (-1 marks a symbolic axis)."""
    interpreter = load_interpreter(path)
    inp, out = _single_io(interpreter, path)
    return _signature(inp), _signature(out)


def run_interpreter(interpreter: Any, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Run a one-input, one-output interpreter on ``x`` (cast to the input dtype).

    The batch is resized only where the file's batch axis is symbolic; a fixed-batch file
    given another batch is a :class:`TFLiteError`, never a silently wrong result.
    """
    inp, out = _single_io(interpreter, "model")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TFLiteError(f"TFLite input must be floating point, got {x.dtype}")
    expected = _signature(inp)
    if x.ndim != len(expected) or any(e not in (-1, s) for e, s in zip(expected[1:], x.shape[1:])):
        raise TFLiteError(f"input of shape {x.shape} does not fit the model's input {expected}")
    if tuple(inp["shape"]) != x.shape:
        if expected[0] != -1:
            raise TFLiteError(
                f"this .tflite file was exported for batch {expected[0]}, got batch {x.shape[0]}; "
                f"export it with batch={x.shape[0]} (litert-torch cannot export a dynamic batch)")
        interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
        interpreter.allocate_tensors()
        inp, out = _single_io(interpreter, "model")
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
    interpreter.invoke()
    y: npt.NDArray[np.float32] = interpreter.get_tensor(out["index"])  # a copy
    if y.shape[0] != x.shape[0]:  # never hand back another batch's rows
        raise TFLiteError(f"TFLite model returned batch {y.shape[0]} for an input of batch {x.shape[0]}")
    return y


def run_tflite(path: str | Path, x: npt.NDArray[Any], *, num_threads: int | None = None) -> npt.NDArray[np.float32]:
    """Load ``path``, run it once on ``x`` and return the output (see :func:`run_interpreter`)."""
    return run_interpreter(load_interpreter(path, num_threads=num_threads), x)


def _single_io(interpreter: Any, where: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise TFLiteError(f"{where}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    return inputs[0], outputs[0]


def _signature(detail: dict[str, Any]) -> tuple[int, ...]:
    sig = detail.get("shape_signature")
    return tuple(int(d) for d in (sig if sig is not None and len(sig) else detail["shape"]))


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
    batch = _signature(_single_io(interpreter, path)[0])[0]
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
    inp, out = _single_io(interpreter, stage.name)
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
        raise BackendUnavailableError(f"{why}: {_INSTALL} ({exc})") from None


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
