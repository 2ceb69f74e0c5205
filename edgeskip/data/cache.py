"""A cache of decoded datasets keyed by the content of their source, memory-mapped when read.

A cache entry is a folder, written atomically (a temp folder renamed when complete)::

    classes.json            the class names, index = label
    <split>-images.npy      uint8 (N, H, W, C), read back memory-mapped: a dataset larger than memory trains
                            from the page cache, each batch reading only its rows
    <split>-labels.npy      int64 (N,)

:class:`CacheWriter` lets a decoder write the images straight into the ``.npy`` files (memory-mapped), so a
dataset never has to fit in memory even while it is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.data.dataset import ImageDataset
from edgeskip.errors import DataError
from edgeskip.fsutil import atomic_directory

__all__ = ["CacheWriter", "default_cache_dir", "source_fingerprint", "load_cached", "store_cached", "writing_cache"]

log = logging.getLogger(__name__)

# Bump when the decoder changes in a way that alters the decoded arrays.
DECODER_VERSION = 1
CLASSES_FILE = "classes.json"


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


def load_cached(folder: Path) -> dict[str, ImageDataset] | None:
    """The splits stored in the cache ``folder`` (images memory-mapped), or None if it is absent or unreadable."""
    if not (folder / CLASSES_FILE).is_file():
        return None
    try:
        classes = tuple(str(c) for c in json.loads((folder / CLASSES_FILE).read_text()))
        splits = sorted(f.name[: -len("-images.npy")] for f in folder.glob("*-images.npy"))
        return {s: ImageDataset(np.load(folder / f"{s}-images.npy", mmap_mode="r", allow_pickle=False),
                                np.load(folder / f"{s}-labels.npy", allow_pickle=False), classes) for s in splits}
    except (OSError, ValueError, KeyError, DataError) as exc:
        log.warning("ignoring unreadable dataset cache %s (%s)", folder, exc)
        return None


class CacheWriter:
    """Where a decoder writes one cache entry: :meth:`images` hands out a memory-mapped array to fill."""

    def __init__(self, tmp: Path, classes: Sequence[str]) -> None:
        self.tmp = tmp
        self._maps: list[Any] = []
        (tmp / CLASSES_FILE).write_text(json.dumps(list(classes)))

    def images(self, split: str, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        """A writable uint8 array of ``shape`` backed by the entry's ``<split>-images.npy``."""
        out = np.lib.format.open_memmap(self.tmp / f"{split}-images.npy", mode="w+", dtype=np.uint8, shape=shape)
        self._maps.append(out)
        return out  # type: ignore[no-any-return]

    def close(self) -> None:
        """Flush every array handed out to its file."""
        for m in self._maps:
            m.flush()
        self._maps.clear()

    def labels(self, split: str, labels: npt.NDArray[np.int64]) -> None:
        np.save(self.tmp / f"{split}-labels.npy", np.asarray(labels, np.int64), allow_pickle=False)


@contextlib.contextmanager
def writing_cache(folder: Path, classes: Sequence[str]) -> Iterator[CacheWriter]:
    """A :class:`CacheWriter` whose entry becomes ``folder`` when the block succeeds (atomically, replacing an
    older one); an error leaves ``folder`` as it was."""
    with atomic_directory(folder, replace=True) as tmp:
        writer = CacheWriter(tmp, classes)
        yield writer
        writer.close()  # on disk before the folder is renamed into place


def store_cached(folder: Path, splits: dict[str, ImageDataset]) -> None:
    """Write ``splits`` (decoded in memory) as the cache entry ``folder``; a failure only logs."""
    first = next(iter(splits.values()))
    try:
        with writing_cache(folder, first.classes) as w:
            for name, ds in splits.items():
                w.images(name, ds.images.shape)[:] = ds.images
                w.labels(name, ds.labels)
    except OSError as exc:
        log.warning("could not write dataset cache %s (%s); continuing without it", folder, exc)
