"""The torch-free on-device runtime: backends register by name and load lazily.

Preprocessing follows the checkpoint's (later the bundle's) normalisation exactly, via
:func:`edgeskip.normalization.preprocess`, which this package re-exports.
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
