"""edgeskip: dynamic-depth Vision Transformers from the workstation to the edge.

The core (this package, :mod:`edgeskip.runtimes`, :mod:`edgeskip.devices`) needs only
numpy; training and exporters need torch (``pip install 'edgeskip[train]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeskip._version import __version__
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
from edgeskip.policy import Policy, SkipConfig
from edgeskip.variants import list_models, model_config

if TYPE_CHECKING:  # imported lazily at run time (below); type checkers see the real classes
    from edgeskip.runtimes import Runtime, RuntimeOutput, session_options

_LAZY = ("Runtime", "RuntimeOutput", "session_options")


def __getattr__(name: str) -> Any:
    """``edgeskip.Runtime``, ``edgeskip.RuntimeOutput`` and ``edgeskip.session_options`` (options for an application's
    own onnxruntime sessions beside a Runtime), imported on first use: ``import edgeskip`` stays light, and the
    package root is the facade above every stage (nothing inside edgeskip imports from it)."""
    if name in _LAZY:
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
    "SkipConfig",
    "UnknownNameError",
    "ViTConfig",
    "__version__",
    "get_normalization",
    "list_models",
    "model_config",
    "preprocess",
    "session_options",
]
