"""Imports show the architecture: every import between edgeskip's packages, lazy ones included, goes downward.

The graph is read from the source (``ast``: every ``import`` statement anywhere in a module, inside
functions too), so an import hidden in a function counts like one at the top. Packages sit in layers;
an import may only reach a lower layer (or stay inside its package), which also rules out any cycle.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"edgeskip": "edgeskip", "exporters": "edgeskip.exporters", "runtimes": "edgeskip.runtimes",
           "devices": "edgeskip.devices"}

# Bottom to top. "core" is every module directly under edgeskip/ (contracts, the decision rule, helpers).
LAYERS: list[set[str]] = [
    {"core"},
    {"e2cm", "data", "zoo"},  # numpy: exit data and threshold search; datasets; the model zoo's lookup
    {"models"},  # torch from here up to train
    {"agents"},
    {"train"},
    {"runtimes"},  # torch-free; only its reference backend (torch_backend.py) reaches train and agents
    {"devices"},
    {"search", "exporters"},  # siblings: neither imports the other
    {"quickstart"},
    {"cli"},
    {"api"},  # the package root (edgeskip.Runtime, ...) and python -m edgeskip
]
RANK = {pkg: rank for rank, layer in enumerate(LAYERS) for pkg in layer}


def modules() -> dict[str, Path]:
    found = {}
    for folder, name in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((name, *parts))] = path
    return found


def package(module: str, known: dict[str, Path]) -> str:
    parts = module.split(".")
    if module == "edgeskip" or module == "edgeskip.__main__":
        return "api"
    if len(parts) == 2 and known[module].name != "__init__.py":
        return parts[1] if parts[1] in ("cli", "quickstart") else "core"
    return parts[1]


def imports(path: Path, known: dict[str, Path]) -> set[tuple[str, int]]:
    """Every edgeskip module ``path`` imports (with the line), at any depth of the module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {(n, node.lineno) for n in names if n in known}
    return out


def edges() -> dict[tuple[str, str], list[str]]:
    known = modules()
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in known.items():
        for target, line in imports(path, known):
            a, b = package(module, known), package(target, known)
            if a != b:
                found[(a, b)].append(f"{module}:{line} imports {target}")
    return found


def test_every_package_has_a_layer() -> None:
    known = modules()
    assert {package(m, known) for m in known} <= set(RANK), sorted({package(m, known) for m in known} - set(RANK))


def test_imports_go_downward_only() -> None:
    upward = {f"{a} -> {b}": why for (a, b), why in edges().items() if RANK[a] <= RANK[b]}
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(
        f"  {k}: {'; '.join(sorted(v)[:3])}" for k, v in sorted(upward.items()))


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges():
        graph[a].add(b)
    for start in list(graph):  # a path back to the start through the edges is a cycle
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            assert node != start, f"an import cycle goes through {start}"
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])


def test_the_runtime_imports_no_stage_above_it() -> None:
    """The on-device runtime never imports devices, search or exporters; only its PyTorch reference backend
    reaches the training packages (for the checkpoint's modules)."""
    known = modules()
    bad = [f"{m} imports {t}" for m, p in known.items() if package(m, known) == "runtimes"
           for t, _ in imports(p, known) if package(t, known) in ("devices", "search", "exporters", "cli", "quickstart")
           or (package(t, known) in ("train", "agents", "models") and m != "edgeskip.runtimes.torch_backend")]
    assert not bad, bad


def test_search_and_exporters_are_independent() -> None:
    found = edges()
    assert ("search", "exporters") not in found and ("exporters", "search") not in found


@pytest.mark.parametrize("a,b", [(a, b) for a, b in itertools.permutations(["search", "exporters"], 2)])
def test_the_checker_sees_lazy_imports(a: str, b: str, tmp_path: Path) -> None:
    """The test above can fail: an import inside a function is an edge like any other."""
    path = tmp_path / "m.py"
    path.write_text(f"def f():\n    from edgeskip.{b} import x\n")
    known = {f"edgeskip.{b}": REPO / "edgeskip" / b / "__init__.py", f"edgeskip.{a}.m": path}
    assert imports(path, known) == {(f"edgeskip.{b}", 2)}
