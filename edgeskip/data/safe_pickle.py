"""Unpickling that can only build plain containers and numpy arrays.

The official CIFAR python release is pickled; a pickle can run arbitrary code, so we
allow only the few numpy globals an array needs and refuse everything else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from edgeskip.errors import DataError

__all__ = ["safe_loads"]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 pickles of protocol <= 2 store bytes as ``_codecs.encode(text, "latin1")``."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DataError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_bytes
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    _ALLOWED[(_mod, "scalar")] = np._core.multiarray.scalar  # type: ignore[attr-defined]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def safe_loads(data: bytes, *, source: str = "pickle") -> Any:
    """Unpickle ``data`` (Python 2 pickles too) allowing only arrays and builtins."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{source} is not a valid pickle: {exc}") from None
