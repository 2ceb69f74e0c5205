"""Exporters turn a trained checkpoint into a deployable bundle (ONNX, TFLite, TensorRT).

Exporters register by name and are imported lazily, so asking for one never imports the
SDKs of the others; an exporter whose SDK is missing raises
:class:`~edgeskip.errors.BackendUnavailableError` naming what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeskip.registry import Registry

__all__ = ["EXPORTERS", "register_exporter"]

# name -> zero-argument loader returning the exporter callable (keeps SDK imports lazy).
EXPORTERS: Registry[Callable[[], Callable[..., Any]]] = Registry("export target")


def register_exporter(name: str, loader: Callable[[], Callable[..., Any]]) -> None:
    EXPORTERS.register(name, loader)
