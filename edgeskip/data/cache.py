"""A cache of decoded datasets keyed by the content of their source."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.data.dataset import ImageDataset
from edgeskip.errors import DataError

__all__ = ["default_cache_dir", "source_fingerprint", "load_cached", "store_cached"]

log = logging.getLogger(__name__)

# Bump when the decoder changes in a way that alters the decoded arrays.
DECODER_VERSION = 1


def default_cache_dir() -> Path:
    """``$EDGESKIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeskip``, else ``~/.cache/edgeskip``."""
    env = os.environ.get("EDGESKIP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeskip"


def source_fingerprint(path: Path) -> str:
    """A key that changes when the source changes.

    Files are hashed by content (a 19 MB tarball takes well under a second); directory
    trees by every file's relative path, size and modification time.
    """
    h = hashlib.sha256(f"decoder={DECODER_VERSION}".encode())
    if path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = Path(root, name)
                st = full.stat()
                h.update(f"{full.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_cached(file: Path) -> dict[str, ImageDataset] | None:
    """The splits stored in ``file``, or None if it is absent or unreadable."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            classes = tuple(str(c) for c in z["classes"])
            splits = sorted({k.split("/")[0] for k in z.files if "/" in k})
            return {s: ImageDataset(z[f"{s}/images"], z[f"{s}/labels"], classes) for s in splits}
    except (OSError, ValueError, KeyError, DataError) as exc:
        log.warning("ignoring unreadable dataset cache %s (%s)", file, exc)
        return None


def store_cached(file: Path, splits: dict[str, ImageDataset]) -> None:
    """Write ``splits`` atomically (temp file, then rename); a failure only logs."""
    first = next(iter(splits.values()))
    arrays: dict[str, Any] = {"classes": np.asarray(first.classes)}
    for name, ds in splits.items():
        arrays[f"{name}/images"] = ds.images
        arrays[f"{name}/labels"] = ds.labels
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not write dataset cache %s (%s); continuing without it", file, exc)
