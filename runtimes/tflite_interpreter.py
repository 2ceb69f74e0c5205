"""Running .tflite files, torch-free: what the tflite backend and the exporter's fidelity checks share.

``ai_edge_litert``'s Interpreter, else ``tflite_runtime``'s (the same API, for devices), one input
and one output per file. A fixed-batch file is never resized (XNNPACK refuses to re-plan these
graphs, and a resized head silently kept returning one row): only a symbolic (-1) batch axis is
resized, any other batch is a clear :class:`TFLiteError`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import BackendUnavailableError, ConfigError, EdgeskipError

__all__ = ["INSTALL", "TFLiteError", "interpreter_class", "io_shapes", "load_interpreter", "run_interpreter", "signature", "single_io",
           "run_tflite"]

INSTALL = "pip install 'edgeskip[tflite]'"


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
        f"running .tflite files needs a LiteRT interpreter: {INSTALL} (ai-edge-litert), "
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
    single_io(interpreter, path)
    return interpreter


def io_shapes(path: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output shape stored in ``path`` (-1 marks a symbolic axis)."""
    interpreter = load_interpreter(path)
    inp, out = single_io(interpreter, path)
    return signature(inp), signature(out)


def run_interpreter(interpreter: Any, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Run a one-input, one-output interpreter on ``x`` (cast to the input dtype).

    The batch is resized only where the file's batch axis is symbolic; a fixed-batch file
    given another batch is a :class:`TFLiteError`, never a silently wrong result.
    """
    inp, out = single_io(interpreter, "model")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TFLiteError(f"TFLite input must be floating point, got {x.dtype}")
    expected = signature(inp)
    if x.ndim != len(expected) or any(e not in (-1, s) for e, s in zip(expected[1:], x.shape[1:])):
        raise TFLiteError(f"input of shape {x.shape} does not fit the model's input {expected}")
    if tuple(inp["shape"]) != x.shape:
        if expected[0] != -1:
            raise TFLiteError(
                f"this .tflite file was exported for batch {expected[0]}, got batch {x.shape[0]}; "
                f"export it with batch={x.shape[0]} (litert-torch cannot export a dynamic batch)")
        interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
        interpreter.allocate_tensors()
        inp, out = single_io(interpreter, "model")
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
    interpreter.invoke()
    y: npt.NDArray[np.float32] = interpreter.get_tensor(out["index"])  # a copy
    if y.shape[0] != x.shape[0]:  # never hand back another batch's rows
        raise TFLiteError(f"TFLite model returned batch {y.shape[0]} for an input of batch {x.shape[0]}")
    return y


def run_tflite(path: str | Path, x: npt.NDArray[Any], *, num_threads: int | None = None) -> npt.NDArray[np.float32]:
    """Load ``path``, run it once on ``x`` and return the output (see :func:`run_interpreter`)."""
    return run_interpreter(load_interpreter(path, num_threads=num_threads), x)


def single_io(interpreter: Any, where: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output details of a one-input, one-output interpreter."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise TFLiteError(f"{where}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    return inputs[0], outputs[0]


def signature(detail: dict[str, Any]) -> tuple[int, ...]:
    """A tensor's shape signature (-1 for a symbolic axis)."""
    sig = detail.get("shape_signature")
    return tuple(int(d) for d in (sig if sig is not None and len(sig) else detail["shape"]))
