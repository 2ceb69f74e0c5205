"""Which bundle a command means when the user names none, and remembering the last one written.

``edgeskip profile --device cpu`` right after ``edgeskip export --model vit10 --target jetson`` should
profile the bundle just exported. :func:`find_bundle` answers, in this order:

1. the bundle named on the command line;
2. the current folder, when it is a bundle (holds ``manifest.json``);
3. the one bundle found directly in the current folder, in its ``bundles/`` (where ``edgeskip export``
   writes by default) or in ``edgeskip-quickstart/``; among several, the last one written if it is one
   of them, else an error listing them;
4. the last bundle ``edgeskip export`` or ``edgeskip quickstart`` wrote, wherever it is.

Every answer but the first comes with the reason, which the command says on screen. The last bundle
written is one small JSON file per user (:func:`state_dir`); failing to write it never fails a command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from edgeskip.errors import EdgeskipError
from edgeskip.fsutil import atomic_write_json
from edgeskip.manifest import MANIFEST

__all__ = ["STATE_ENV", "BundleChoice", "find_bundle", "last_bundle", "remember_bundle", "state_dir"]

log = logging.getLogger(__name__)

STATE_ENV = "EDGESKIP_STATE_DIR"
LAST_BUNDLE = "last-bundle.json"
SEARCHED = (".", "bundles", "edgeskip-quickstart")  # folders under the current one that may hold bundles


@dataclasses.dataclass(frozen=True)
class BundleChoice:
    """A bundle folder and, when the user did not name it, why it was taken (``None``: named)."""

    path: Path
    reason: str | None = None


def state_dir() -> Path:
    """Where edgeskip keeps per-user state: ``$EDGESKIP_STATE_DIR``, else ``$XDG_STATE_HOME/edgeskip``, else
    ``~/.local/state/edgeskip``."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeskip"


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def remember_bundle(path: str | Path, command: str) -> None:
    """Record ``path`` as the bundle ``command`` wrote last (best effort: a read-only home only logs)."""
    record = {"path": str(Path(path).resolve()), "command": command,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        atomic_write_json(state_dir() / LAST_BUNDLE, record)
    except OSError as exc:
        log.debug("could not remember the last bundle in %s: %s", state_dir(), exc)


def last_bundle() -> tuple[Path, str] | None:
    """The last bundle written that still exists, with the command that wrote it, or None."""
    try:
        record = json.loads((state_dir() / LAST_BUNDLE).read_text())
        path, command = Path(record["path"]), str(record["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (path, command) if is_bundle(path) else None


def _nearby(cwd: Path) -> list[Path]:
    found: list[Path] = []
    for name in SEARCHED:
        folder = cwd / name
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_dir() and is_bundle(p))
    return found


def find_bundle(named: str | Path | None, *, cwd: str | Path | None = None) -> BundleChoice:
    """The bundle a command should use (see the module's docstring for the order); an
    :class:`~edgeskip.errors.EdgeskipError` saying what to do when there is none."""
    if named is not None:
        path = Path(named)
        if not path.exists():
            raise EdgeskipError(f"bundle {named}: no such folder")
        if not is_bundle(path):
            raise EdgeskipError(f"{named} is not a bundle (no {MANIFEST} in it): name a folder written by "
                                "'edgeskip export' or 'edgeskip quickstart'")
        return BundleChoice(path)
    here = Path.cwd() if cwd is None else Path(cwd)
    if is_bundle(here):
        return BundleChoice(Path(".") if cwd is None else here, "the current folder")
    last = last_bundle()
    nearby = _nearby(here)
    if len(nearby) == 1:
        return BundleChoice(_relative(nearby[0], here), "the only bundle in the current folder")
    if nearby:
        if last is not None and any(p.resolve() == last[0].resolve() for p in nearby):
            return BundleChoice(_relative(last[0], here), f"the last one 'edgeskip {last[1]}' wrote")
        listed = ", ".join(str(_relative(p, here)) for p in nearby)
        raise EdgeskipError(f"several bundles here ({listed}): name one, e.g. '--bundle {_relative(nearby[0], here)}'")
    if last is not None:
        return BundleChoice(_relative(last[0], here), f"the last one 'edgeskip {last[1]}' wrote")
    raise EdgeskipError("no bundle named and none found here: name one (--bundle DIR), or make one first with "
                        "'edgeskip export --model MODEL' or 'edgeskip quickstart'")


def _relative(path: Path, cwd: Path) -> Path:
    """``path`` as the user would type it from ``cwd`` (relative below it, absolute elsewhere)."""
    try:
        return path.resolve().relative_to(cwd.resolve())
    except ValueError:
        return path
