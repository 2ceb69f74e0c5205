"""Progress bars for long work: drawn on a terminal only, one rule for every command and stage.

A bar redraws itself with carriage returns; written into a log file or a CI transcript that is
noise (a quickstart once logged 225 KB of it). So a bar is drawn when it is asked for *and* standard
error is a terminal. ``EDGESKIP_PROGRESS=always`` draws bars anyway (a terminal multiplexer that
hides its tty), ``EDGESKIP_PROGRESS=never`` never does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["ENV", "bars_shown", "progress_bar", "progress_counter", "progress_steps"]

ENV = "EDGESKIP_PROGRESS"


def bars_shown(wanted: bool = True) -> bool:
    """Whether a bar asked for (``wanted``) is drawn: on a terminal, or as ``EDGESKIP_PROGRESS`` says."""
    if not wanted:
        return False
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("always", "1", "yes"):
        return True
    if forced in ("never", "0", "no"):
        return False
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(iterable: Any = None, *, enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar on standard error (``options`` as tqdm's), disabled unless :func:`bars_shown`."""
    return tqdm(iterable, disable=not bars_shown(enabled), **options)


@contextlib.contextmanager
def _lazy_bar(**options: Any) -> Iterator[Callable[[], Any]]:
    """A getter of a bar made (and closed at exit) only when first asked for: work that fails before its
    first step (a bad argument, an unreadable bundle) draws no bar."""
    with contextlib.ExitStack() as stack:
        made: list[Any] = []

        def get() -> Any:
            if not made:
                made.append(stack.enter_context(progress_bar(**options)))
            return made[0]

        yield get


@contextlib.contextmanager
def progress_steps(desc: str, *, total: int | None = None, enabled: bool = True, unit: str = "step") -> Iterator[
        Callable[[str], None]]:
    """A callback that names the step starting now (``profile``, ``bench``), advancing a bar made at the first step."""
    with _lazy_bar(desc=desc, total=total, unit=unit, enabled=enabled) as bar:
        def step(message: str) -> None:
            bar().update()
            bar().set_postfix_str(message)

        yield step


@contextlib.contextmanager
def progress_counter(desc: str, total: int, *, enabled: bool = True, unit: str = "it") -> Iterator[
        Callable[[int, int], None]]:
    """A ``(done, total)`` callback (the searches' generations) setting a bar made at its first call."""
    with _lazy_bar(desc=desc, total=total, unit=unit, enabled=enabled) as bar:
        def update(done: int, of: int) -> None:
            bar().n = min(done, of)
            bar().refresh()

        yield update
