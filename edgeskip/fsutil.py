"""Atomic file and directory writes: a temp path in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_directory", "remove_stale", "loads_json", "sha256_file"]

FILE_MODE, DIR_MODE = 0o644, 0o755

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half (a temp file of a
    writer killed mid-way is removed by the next writer of ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's contents, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def loads_json(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError saying what is wrong: bad syntax, bytes that are
    not UTF-8, nesting too deep for the parser, an integer beyond Python's digit limit."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale(path: str | Path) -> list[Path]:
    """Remove what writers of ``path`` killed mid-way left beside it (``.<name>.<pid>.*.tmp`` of a process
    that no longer runs), first putting back a previous ``path`` such a writer had moved aside; returns
    what was removed."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].partition(".")[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if not path.exists() and (leftover / "x").is_dir() and not leftover.is_symlink():
            os.rename(leftover / "x", path)  # killed between the two renames of a swap without renameat2
            log.warning("restored %s, which a killed writer had moved aside", path)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this kernel or filesystem cannot
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp directory that becomes ``path`` when the block succeeds.

    By default ``path`` must not exist yet. With ``replace=True`` an existing ``path`` is swapped
    with the new one in one atomic step (Linux; elsewhere two renames with a short window in
    which ``path`` is absent: a writer killed there leaves the old one aside, and the next
    writer of ``path`` puts it back), then the old removed. A writer killed at any point leaves the old
    complete directory or the new one at ``path``, never a partial one; what it left beside
    (``.<name>.<pid>.*.tmp``) is removed by the next writer of ``path``. An error (a full disk)
    removes the temp directory and leaves ``path`` as it was.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700
        yield tmp
        for file in tmp.rglob("*"):  # the data is on disk before the name points at it
            if file.is_file() and not file.is_symlink():
                with file.open("rb") as f:
                    os.fsync(f.fileno())
        if path.exists() and _exchange(tmp, path):
            pass  # tmp now holds the old directory
        elif path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
            os.rename(path, old / "x")
            os.rename(tmp, path)
            tmp = old
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
