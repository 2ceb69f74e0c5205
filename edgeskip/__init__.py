"""edgeskip: dynamic-depth Vision Transformers from the workstation to the edge.

The core (this package, :mod:`edgeskip.runtimes`, :mod:`edgeskip.devices`) needs only
numpy; training and exporters need torch (``pip install 'edgeskip[train]'``).
"""

from __future__ import annotations

from edgeskip.config import ViTConfig
from edgeskip.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DataError,
    EdgeskipError,
    UnknownNameError,
)
from edgeskip.normalization import Normalization, get_normalization, preprocess
from edgeskip.variants import list_models, model_config

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgeskipError",
    "Normalization",
    "UnknownNameError",
    "ViTConfig",
    "__version__",
    "get_normalization",
    "list_models",
    "model_config",
    "preprocess",
]
