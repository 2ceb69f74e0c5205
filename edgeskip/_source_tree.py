"""Importing edgeskip from a source checkout (a clone's root on ``sys.path``, e.g. ``python`` started there).

An install maps the top-level folders ``runtimes/``, ``devices/`` and ``exporters/`` to
``edgeskip.runtimes`` etc. (``[tool.setuptools.package-dir]`` in pyproject.toml). A checkout has
no such mapping, so without this finder ``import edgeskip.runtimes`` from the clone's root fails
while the installed package is shadowed. The finder is registered only when ``edgeskip/`` sits
in edgeskip's own source tree, and maps exactly those three names.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

MAPPED = ("runtimes", "devices", "exporters")  # as in pyproject.toml's package-dir


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, sub = name.partition(".")
        if prefix != "edgeskip" or sub not in MAPPED:
            return None
        folder = self.root / sub
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def install() -> None:
    """Register the finder when this package is the one in edgeskip's source tree (not an install)."""
    package = Path(__file__).resolve().parent
    root = package.parent
    if (package / "runtimes").exists() or not (root / "pyproject.toml").is_file() \
            or not all((root / sub / "__init__.py").is_file() for sub in MAPPED):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder(root))
