"""Exporters: a checkpoint -> a deployable, checksummed bundle (see :mod:`edgeskip.bundle`).

``edgeskip export`` (:func:`edgeskip.exporters.export.export_bundle`) cuts the model into stages
(:mod:`~edgeskip.exporters.stages`), always writes them as ONNX with the monolithic model and the
gate graph (:mod:`~edgeskip.exporters.onnx`, :mod:`~edgeskip.exporters.gate`), then runs the format
exporters its target asks for (:data:`~edgeskip.exporters.settings.TARGETS`): each is registered here
by name with a loader, so asking for one never imports the SDKs of the others, and each has one
signature (:class:`~edgeskip.exporters.formats.FormatExporter`: a job in, the manifest's share out).
A missing SDK raises :class:`~edgeskip.errors.BackendUnavailableError` naming what to install.

=========== ========================================================== =======================
name        writes                                                     needs
=========== ========================================================== =======================
onnx-fp16   fp16 copies of the stage ONNX files (TensorRT >= 11)       onnx, torch
onnx-int8   static INT8 (QDQ) copies, calibrated (onnxruntime)         onnxruntime, torch
tflite      per-stage .tflite, fp32 and fp16 weights (LiteRT, XNNPACK) litert-torch (``tflite``)
tensorrt    the engine build script and its checked ONNX inputs        onnx (engines: on the device)
=========== ========================================================== =======================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeskip.registry import Registry

if TYPE_CHECKING:
    from edgeskip.exporters.formats import FormatExporter

__all__ = ["EXPORTERS", "register_exporter"]

# name -> zero-argument loader returning the format exporter (keeps SDK imports lazy).
EXPORTERS: Registry[Callable[[], FormatExporter]] = Registry("export format")


def register_exporter(name: str, loader: Callable[[], FormatExporter]) -> None:
    EXPORTERS.register(name, loader)


def _onnx_fp16() -> FormatExporter:
    from edgeskip.exporters.onnx import OnnxFp16Exporter

    return OnnxFp16Exporter()


def _onnx_int8() -> FormatExporter:
    from edgeskip.exporters.int8 import OnnxInt8Exporter

    return OnnxInt8Exporter()


def _tflite() -> FormatExporter:
    from edgeskip.exporters.tflite import TFLiteExporter

    return TFLiteExporter()


def _tensorrt() -> FormatExporter:
    from edgeskip.exporters.tensorrt import TensorRTExporter

    return TensorRTExporter()


register_exporter("onnx-fp16", _onnx_fp16)
register_exporter("onnx-int8", _onnx_int8)
register_exporter("tflite", _tflite)
register_exporter("tensorrt", _tensorrt)
