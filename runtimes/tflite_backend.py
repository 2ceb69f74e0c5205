"""The TFLite backend: one LiteRT interpreter per stage (``tflite/<stage>.fp32|fp16|int8.tflite``).

Runs with ``ai_edge_litert`` or ``tflite_runtime`` (same Interpreter API), whichever is
installed. The files have a fixed batch (1 with litert-torch 0.10, recorded in the manifest's
``formats``), so a batch runs as chunks of that size; per-input gating is unchanged. An
interpreter is not safe to call from two threads at once: each stage has its own lock, so
concurrent calls pipeline through different stages. A bundle exported with ``--int8`` runs its INT8 layers by
default; a layer in another precision the bundle holds (a policy's per-layer ``precisions``) gets its interpreter
the first time a policy asks for it, kept from then on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle, BundleError, Stage
from edgeskip.errors import ConfigError
from edgeskip.runtimes.backend import Backend, check_options, check_threads, in_fixed_batches
from edgeskip.runtimes.tflite_interpreter import interpreter_class, load_interpreter, run_interpreter

__all__ = ["TFLiteBackend"]

FORMATS = {"fp32": "tflite", "fp16": "tflite-fp16", "int8": "tflite-int8"}


class TFLiteBackend(Backend):
    """Per-stage .tflite files through the LiteRT interpreter (XNNPACK on CPUs)."""

    name = "tflite"
    OPTIONS = ("threads", "precision")

    def __init__(self, bundle: Bundle, stages: Sequence[str], **options: Any) -> None:
        super().__init__(bundle, stages)
        check_options(self.name, options, self.OPTIONS)
        interpreter = interpreter_class()  # a missing LiteRT says what to install before anything else
        own = "int8" if bundle.manifest.precision == "int8" and "tflite-int8" in bundle.manifest.formats else "fp32"
        self.precision = options.get("precision", own)
        if self.precision not in FORMATS:
            raise ConfigError(f"tflite precision must be one of {', '.join(FORMATS)}, got {self.precision!r}")
        self.format = FORMATS[self.precision]
        if self.format not in bundle.manifest.formats:
            raise BundleError(f"{bundle.path} has no {self.format} files (export it with --target tflite)")
        batch = bundle.manifest.formats[self.format].batch
        if not isinstance(batch, int):
            raise BundleError(f"{bundle.path}: {self.format} files need a fixed batch, the manifest says {batch!r}")
        self.batch: int = batch
        self.threads = check_threads(options.get("threads"))
        self.interpreter = f"{interpreter.__module__}.{interpreter.__name__}"
        self._run_interpreter = run_interpreter
        self._models: dict[str, bytes] = {}  # verified bytes, kept alive as long as their interpreters
        self._stages: dict[str, tuple[Any, threading.Lock]] = {}
        for name in self.stages:
            self._load(name, name, self.format)

    def _load(self, key: str, name: str, fmt: str) -> None:
        self._models[key] = self.bundle.read_stage(name, fmt)
        interp = load_interpreter(self.bundle.stage_file(name, fmt), num_threads=self.threads,
                                  content=self._models[key])
        stage = self.bundle.manifest.stage(name)
        _check_io(interp, stage, f"{self.bundle.path}: {stage.files[fmt]}")
        self._stages[key] = (interp, threading.Lock())

    def precisions(self) -> tuple[str, ...]:
        """Its own precision, then fp32 or int8 where the bundle holds them for each of its layers (at its batch);
        fp16 files compute in float32 (their weights are dequantised at load), so they are no choice of speed."""
        formats = self.bundle.manifest.formats
        held = [p for p, fmt in FORMATS.items() if p not in (self.precision, "fp16") and fmt in formats
                and formats[fmt].batch == self.batch and self.holds_every_layer(fmt)]
        return (self.precision, *held)

    def _load_variant(self, key: str, stage: str, precision: str) -> None:
        """An interpreter of the bundle's file in that precision's format (:meth:`Backend.variant`)."""
        self._load(key, stage, FORMATS[precision])

    def run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        interpreter, lock = self._stages[stage]

        def once(chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return self._run_interpreter(interpreter, chunk)

        with lock:
            return in_fixed_batches(once, x, (self.batch,))

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "interpreter": self.interpreter, "format": self.format,
                "precision": self.precision, "precisions": list(self.precisions()), "batch": self.batch,
                "threads": self.threads or "default"}

    def close(self) -> None:
        self._stages.clear()


def _check_io(interpreter: Any, stage: Stage, where: str) -> None:
    """The model's input and output have the shapes the manifest describes for its stage (batch aside)."""
    for kind, spec, detail in (("input", stage.inputs[0], interpreter.get_input_details()[0]),
                               ("output", stage.outputs[0], interpreter.get_output_details()[0])):
        spec.check_shape([int(d) for d in detail["shape"]], where, kind)
