"""Home of the exporters that turn a checkpoint into a deployable bundle.

No export target is implemented yet (ONNX, TFLite and TensorRT come next). Exporters
register by name and are imported lazily, so asking for one never imports the
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
