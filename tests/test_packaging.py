"""Guards for the known weak points of mapping user folders into ``edgeskip.*``.

* the built wheel must contain every package directory, and nothing generic at top level;
* pytest runs with ``--import-mode=importlib`` and there is no ``tests/__init__.py``;
* mypy runs over the *installed* layout with one explicit ``-p`` per subpackage and must
  check every module that exists (``mypy -p edgeskip`` from the repository root would
  silently skip the mapped folders);
* the core, ``edgeskip.runtimes`` and ``edgeskip.devices`` import without torch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

# Subprocesses start outside the repository: run from its root, ./edgeskip (the source folder) would
# shadow a regular install (the README's set-up is an editable install, where both are the same).
NEUTRAL = tempfile.gettempdir()
MAPPED = {"edgeskip": "edgeskip", "edgeskip.exporters": "exporters", "edgeskip.runtimes": "runtimes",
          "edgeskip.devices": "devices"}


def source_packages(repo: Path) -> set[str]:
    """Every package the source tree holds, under its import name."""
    found = set()
    for name, folder in MAPPED.items():
        for init in (repo / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(repo / folder).parts
            found.add(".".join((name, *rel)))
    return found


@pytest.fixture(scope="module")
def wheel(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: a stale in-tree build/ folder could hide or add files.
    src = tmp_path_factory.mktemp("src") / "edgeskip"
    shutil.copytree(repo_root, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("edgeskip-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked exactly as pip lays it out in site-packages."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_pyproject_lists_every_package(repo_root: Path) -> None:
    config = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == source_packages(repo_root)
    mapped = {k: v for k, v in MAPPED.items() if k != "edgeskip"}
    assert config["package-dir"] == mapped


def test_wheel_contains_every_package_directory(wheel: Path, repo_root: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == source_packages(repo_root)
    tops = {n.split("/")[0] for n in names}
    assert tops == {"edgeskip", "edgeskip-0.1.0.dist-info"}, tops
    assert "edgeskip/py.typed" in names
    for name, folder in MAPPED.items():
        for py in (repo_root / folder).rglob("*.py"):
            rel = py.relative_to(repo_root / folder).as_posix()
            assert f"{name.replace('.', '/')}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"


def test_pytest_import_mode(repo_root: Path) -> None:
    assert not (repo_root / "tests" / "__init__.py").exists()
    opts = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "--import-mode=importlib" in opts


@pytest.mark.slow
def test_mypy_checks_every_installed_module(installed: Path, repo_root: Path, tmp_path: Path) -> None:
    pkg = installed / "edgeskip"
    modules = {
        ".".join(("edgeskip", *p.relative_to(pkg).with_suffix("").parts)).removesuffix(".__init__")
        for p in pkg.rglob("*.py")
    }
    subpackages = sorted(m for m in modules if (installed / m.replace(".", "/") / "__init__.py").is_file() and m != "edgeskip")
    top_modules = sorted(m for m in modules if m.count(".") <= 1 and m not in subpackages)
    args = [a for sp in subpackages for a in ("-p", sp)] + [a for m in top_modules for a in ("-m", m)]
    report = tmp_path / "report"
    workdir = tmp_path / "cwd"  # neither the repository nor the unpacked tree is the cwd
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(repo_root / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), "--linecount-report", str(report), *args],
        capture_output=True, text=True, timeout=600, cwd=workdir, env={"MYPYPATH": str(installed), "PATH": ""},
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    lines = (report / "linecount.txt").read_text().splitlines()
    checked = {line.split()[-1] for line in lines if line.strip() and not line.strip().endswith(" total")}
    # folders of package data (the model zoo's entries) hold no Python: mypy counts them as empty namespaces
    data = {m for m in checked if (d := installed / m.replace(".", "/")).is_dir() and not any(d.glob("*.py"))}
    checked -= data
    assert {"edgeskip.exporters", "edgeskip.runtimes", "edgeskip.host"} <= checked
    assert checked == modules, f"mypy skipped {sorted(modules - checked)}"
    assert re.search(rf"in {len(modules) + len(data)} source files", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    "module",
    ["edgeskip", "edgeskip.runtimes", "edgeskip.devices", "edgeskip.exporters", "edgeskip.data", "edgeskip.cli",
     "edgeskip.agents", "edgeskip.e2cm", "edgeskip.e2cm.settings", "edgeskip.bundle", "edgeskip.exporters.settings",
     "edgeskip.exporters.gate", "edgeskip.exporters.tensorrt", "edgeskip.runtimes.runtime", "edgeskip.devices.bench",
     "edgeskip.runtimes.ort_backend", "edgeskip.runtimes.tflite_backend", "edgeskip.runtimes.tensorrt_backend",
     "edgeskip.devices.energy", "edgeskip.devices.profiler", "edgeskip.devices.table", "edgeskip.search",
     "edgeskip.search.costs", "edgeskip.search.bundle", "edgeskip.search.select", "edgeskip.search.plot",
     "edgeskip.search.operators", "edgeskip.runtimes.evaluate", "edgeskip.runtimes.gate", "edgeskip.front",
     "edgeskip.policy", "edgeskip.rule", "edgeskip.schema", "edgeskip.signing", "edgeskip.zoo"],
)
def test_core_imports_without_torch(torch_blocker: str, module: str) -> None:
    code = torch_blocker + f"""
import importlib
importlib.import_module({module!r})
import edgeskip
from edgeskip.runtimes import preprocess
from edgeskip.host import describe_host
describe_host()
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=NEUTRAL)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_blocker_really_hides_torch(torch_blocker: str) -> None:
    proc = subprocess.run([sys.executable, "-c", torch_blocker + "import edgeskip.models"],
                          capture_output=True, text=True, timeout=120, cwd=NEUTRAL)
    assert proc.returncode != 0 and "torch is hidden" in proc.stderr


def test_cli_help_without_torch(torch_blocker: str) -> None:
    code = torch_blocker + "import sys; from edgeskip.cli import main; sys.argv=['edgeskip','--help']; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=NEUTRAL)
    assert proc.returncode == 0 and "quickstart" in proc.stdout, proc.stderr[-2000:]
