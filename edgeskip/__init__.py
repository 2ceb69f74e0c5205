"""edgeskip: dynamic-depth Vision Transformers from the workstation to the edge.

The core (this package, :mod:`edgeskip.runtimes`, :mod:`edgeskip.devices`) needs only
numpy; training and exporters need torch (``pip install 'edgeskip[train]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeskip import _source_tree
from edgeskip.config import ViTConfig
from edgeskip.errors import (
    BackendError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DataError,
    EdgeskipError,
    InputError,
    UnknownNameError,
)
from edgeskip.normalization import Normalization, get_normalization, preprocess
from edgeskip.variants import list_models, model_config

if TYPE_CHECKING:  # imported lazily at run time (below); type checkers see the real classes
    from edgeskip.runtimes import Policy, Runtime, RuntimeOutput

__version__ = "0.1.0"

_source_tree.install()  # in a source checkout, edgeskip.runtimes etc. resolve to the folders beside edgeskip/


def __getattr__(name: str) -> Any:
    """``edgeskip.Runtime`` and ``edgeskip.Policy``, imported on first use (they live in edgeskip.runtimes)."""
    if name in ("Runtime", "Policy", "RuntimeOutput"):
        import importlib

        return getattr(importlib.import_module("edgeskip.runtimes"), name)
    raise AttributeError(f"module 'edgeskip' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgeskipError",
    "InputError",
    "Normalization",
    "Policy",
    "Runtime",
    "RuntimeOutput",
    "UnknownNameError",
    "ViTConfig",
    "__version__",
    "get_normalization",
    "list_models",
    "model_config",
    "preprocess",
]
