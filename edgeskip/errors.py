"""The one exception family of edgeskip.

Every error a user can cause (bad input, a missing file, an unknown name) is an
:class:`EdgeskipError` whose message says what went wrong and what to do about it.
The command line turns these into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "EdgeskipError",
    "ConfigError",
    "UnknownNameError",
    "DataError",
    "CheckpointError",
    "BackendUnavailableError",
    "InputError",
    "BackendError",
]


class EdgeskipError(Exception):
    """Base class of every error edgeskip raises on purpose."""


class ConfigError(EdgeskipError, ValueError):
    """A configuration value is invalid (wrong type, out of range, unknown key)."""


class UnknownNameError(EdgeskipError, KeyError):
    """A registry lookup named something that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(EdgeskipError):
    """A dataset is missing, malformed or not in a layout edgeskip understands."""


class CheckpointError(EdgeskipError):
    """A checkpoint is missing, tampered with, or disagrees with its own config."""


class BackendUnavailableError(EdgeskipError, ImportError):
    """An optional SDK (torch, TensorRT, LiteRT, ...) is needed but not installed."""


class InputError(DataError, ValueError):
    """An input given to the runtime has the wrong rank, shape, dtype or channel count, is empty,
    or holds NaN or infinite values. Nothing was run; the runtime stays usable."""


class BackendError(EdgeskipError):
    """An inference backend failed on a model or input that passed edgeskip's own checks."""
