"""Home of the torch-free on-device runtime (numpy + one inference backend).

Available now: the shared preprocessing (:func:`edgeskip.normalization.preprocess`, the
exact transform training applies, re-exported here) and the backend registry. The
``Runtime`` class and its backends (onnxruntime, tflite, tensorrt, torch) are not built
yet; backends will register in :data:`BACKENDS` by name and import their SDK lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeskip.normalization import preprocess
from edgeskip.registry import Registry

__all__ = ["BACKENDS", "preprocess", "register_backend"]

# name -> zero-argument loader returning the backend class (keeps SDK imports lazy).
BACKENDS: Registry[Callable[[], Any]] = Registry("backend")


def register_backend(name: str, loader: Callable[[], Any]) -> None:
    BACKENDS.register(name, loader)
