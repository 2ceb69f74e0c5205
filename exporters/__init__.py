"""Exporters: a checkpoint -> a deployable, checksummed bundle (see :mod:`edgeskip.bundle`).

``edgeskip export`` (:func:`edgeskip.exporters.export.export_bundle`) cuts the model into
stages (:mod:`~edgeskip.exporters.stages`) and writes them per format: ONNX per stage plus
the gate graph (:mod:`~edgeskip.exporters.onnx`, :mod:`~edgeskip.exporters.gate`), TFLite
(:mod:`~edgeskip.exporters.tflite`, extra ``tflite``) and the TensorRT inputs and engine
builder (:mod:`~edgeskip.exporters.tensorrt`, extra ``tensorrt``). Format converters
register here by name and are imported lazily, so asking for one never imports the SDKs of
the others; a missing SDK raises :class:`~edgeskip.errors.BackendUnavailableError` naming
what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeskip.registry import Registry

__all__ = ["EXPORTERS", "register_exporter"]

# name -> zero-argument loader returning the converter (keeps SDK imports lazy).
EXPORTERS: Registry[Callable[[], Callable[..., Any]]] = Registry("export format")


def register_exporter(name: str, loader: Callable[[], Callable[..., Any]]) -> None:
    EXPORTERS.register(name, loader)


def _onnx() -> Callable[..., Any]:
    from edgeskip.exporters.onnx import export_stage

    return export_stage


def _tflite() -> Callable[..., Any]:
    from edgeskip.exporters.tflite import convert_stage

    return convert_stage


def _tensorrt() -> Callable[..., Any]:
    from edgeskip.exporters.tensorrt import build_engines

    return build_engines


register_exporter("onnx", _onnx)
register_exporter("tflite", _tflite)
register_exporter("tensorrt", _tensorrt)
