"""The command line as users type it: the design card's commands literally, one bundle argument everywhere,
a bundle found without one, devices checked, help said once, and progress bars only on a terminal."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeskip.cli import build_parser, main
from edgeskip.progress import bars_shown
from edgeskip.workspace import find_bundle, last_bundle, remember_bundle

# The three commands of the design card, exactly as typed.
EXPORT = ["export", "--model", "vit10", "--target", "jetson"]
PROFILE = ["profile", "--device", "cpu"]
SELECT = ["select", "--budget-ms", "3"]
# Every other command that takes a bundle, with what it needs besides.
TAKE_A_BUNDLE = [["search"], ["bench"], ["evaluate"], ["verify"], ["sign", "--key", "k"], ["build-engines"]]


def edgeskip(cwd: Path, state: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``edgeskip ARGS`` in a fresh process in ``cwd``, with its own remembered-bundle state."""
    return subprocess.run([sys.executable, "-m", "edgeskip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "EDGESKIP_STATE_DIR": str(state), **env})


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed command (after the line saying which bundle it found, if it found one)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    if lines and lines[0].startswith("using bundle "):
        lines = lines[1:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args", [PROFILE, SELECT, *TAKE_A_BUNDLE])
def test_without_a_bundle_each_command_says_what_to_do(args: list[str], tmp_path: Path) -> None:
    here = tmp_path / "empty"
    here.mkdir()
    err = one_line(edgeskip(here, tmp_path / "state", *args))
    assert "no bundle named and none found here" in err and "edgeskip export --model MODEL" in err


@pytest.mark.slow
def test_the_design_card_commands_as_typed(tmp_path: Path) -> None:
    """export writes bundles/vit10-jetson; profile and select then find it, in its folder, inside it, and (as
    the last one written) from anywhere; select without a search says which command to run."""
    project, state = tmp_path / "project", tmp_path / "state"
    project.mkdir()
    exported = edgeskip(project, state, *EXPORT)
    assert exported.returncode == 0, exported.stderr
    bundle = project / "bundles" / "vit10-jetson"
    assert (bundle / "manifest.json").is_file() and "\r" not in exported.stderr  # no bar when not a terminal

    profiled = edgeskip(project, state, *PROFILE)
    assert profiled.returncode == 0, profiled.stderr
    assert "using bundle bundles/vit10-jetson (the only bundle in the current folder)" in profiled.stderr
    assert (bundle / "profiles" / "cpu.json").is_file()

    err = one_line(edgeskip(project, state, *SELECT))
    assert "has no Pareto front for device cpu: run 'edgeskip search bundles/vit10-jetson --device cpu' first" in err
    err = one_line(edgeskip(bundle, state, *SELECT))  # inside the bundle: the current folder
    assert "run 'edgeskip search . --device cpu' first" in err

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    verified = edgeskip(elsewhere, state, "verify")  # nothing here: the last bundle written, said on screen
    assert verified.returncode == 0, verified.stderr
    assert "(the last one 'edgeskip export' wrote)" in verified.stderr and "files match their sha256" in verified.stdout
    assert one_line(edgeskip(elsewhere, tmp_path / "other-state", "verify"))  # another user: nothing to fall back on


def test_find_bundle_order(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setenv("EDGESKIP_STATE_DIR", str(tmp_path / "state"))
    here = tmp_path / "here"
    for name in ("a", "b"):
        shutil.copytree(tiny_bundle, here / "bundles" / name)
    assert find_bundle(here / "bundles" / "a").reason is None  # named: no reason to say
    with pytest.raises(Exception, match=r"several bundles here \(bundles/a, bundles/b\)"):
        find_bundle(None, cwd=here)
    remember_bundle(here / "bundles" / "b", "export")
    assert last_bundle() == ((here / "bundles" / "b").resolve(), "export")
    choice = find_bundle(None, cwd=here)  # among several, the last one written
    assert choice.path == Path("bundles/b") and choice.reason == "the last one 'edgeskip export' wrote"
    assert find_bundle(None, cwd=here / "bundles" / "a").reason == "the current folder"
    with pytest.raises(Exception, match="is not a bundle"):
        find_bundle(here)
    shutil.rmtree(here / "bundles" / "b")
    assert last_bundle() is None  # a remembered bundle that is gone is forgotten
    assert find_bundle(None, cwd=here).path == Path("bundles/a")


def test_bundle_as_argument_or_option(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "verify", str(tiny_bundle)]) == 0
    assert main(["-q", "verify", "--bundle", str(tiny_bundle)]) == 0
    assert main(["-q", "verify", str(tiny_bundle), "--bundle", str(tiny_bundle)]) == 0
    capsys.readouterr()
    assert main(["-q", "verify", str(tiny_bundle), "--bundle", "/elsewhere"]) == 2
    assert "two bundles named" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["profile"], ["search"], ["select", "--budget-ms", "1"]])
def test_device_names_are_checked(args: list[str], tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*args, str(tiny_bundle), "--device", "cpuu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'cpuu'" in err and "raspberry-pi-5" in err and len(err.strip().splitlines()) == 1


def _actions() -> list[tuple[str, argparse.Action, str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in [("edgeskip", parser), *sub.choices.items()]:
        fmt = p._get_formatter()
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            out.append((name, action, fmt._expand_help(action) if action.help else ""))
    return out


def test_every_option_is_documented_once() -> None:
    rows = _actions()
    assert len(rows) > 150
    undocumented = [f"{name} {a.option_strings or a.dest}" for name, a, text in rows if not text.strip()]
    assert not undocumented, undocumented
    twice = [f"{name} {a.option_strings}: {text}" for name, a, text in rows if text.count("(default") > 1]
    assert not twice, twice
    assert not [text for _, _, text in rows if "(default: None)" in text or "(default: False)" in text]
    said = {(name, a.dest): text for name, a, text in rows}
    assert said[("export", "target")].endswith("(default: cpu)")  # a real default is said once
    assert said[("train", "threads")].endswith("(default: torch's)")  # and a described one is not repeated


@pytest.mark.parametrize("command", [["quickstart"], ["train"], ["evaluate"], ["posttrain", "--checkpoint", "c"],
                                     ["calibrate", "--checkpoint", "c"], ["export", "--model", "vit9"],
                                     ["build-engines"], ["profile"], ["search"], ["bench"]])
def test_long_commands_take_quiet_and_no_progress_after_the_command(command: list[str]) -> None:
    parser = build_parser()
    for flags, quiet, no_progress in ((["-q"], True, False), (["--quiet"], True, False), (["--no-progress"], False, True),
                                      ([], False, False)):
        args = parser.parse_args([*command, *flags])
        assert (args.quiet, args.no_progress) == (quiet, no_progress), flags
    args = parser.parse_args(["-q", *command])  # before the command: not reset by the command's own parser
    assert args.quiet is True


def test_no_bar_before_an_argument_error(tiny_bundle: Path, tmp_path: Path) -> None:
    """Even with bars forced on, a command that fails on its arguments prints its one line and nothing else."""
    err = one_line(edgeskip(tmp_path, tmp_path / "state", "profile", str(tiny_bundle), "--backend", "warp",
                            EDGESKIP_PROGRESS="always"))
    assert "warp" in err and "\r" not in err


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bars_shown() is False  # pytest's standard error is no terminal
    monkeypatch.setenv("EDGESKIP_PROGRESS", "always")
    assert bars_shown() is True and bars_shown(False) is False
    monkeypatch.setenv("EDGESKIP_PROGRESS", "never")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert bars_shown() is False
    monkeypatch.delenv("EDGESKIP_PROGRESS")
    assert bars_shown() is True


def test_missing_optional_package_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    """On a device install (the core only), a workstation command says which extra it needs."""
    blocker = ("import importlib.abc, sys\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('pymoo', 'torch', 'matplotlib', 'sklearn', 'kornia'):\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "from edgeskip.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    import shutil

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    run = [sys.executable, "-c", blocker]
    env = {**os.environ, "EDGESKIP_STATE_DIR": str(tmp_path / "state")}
    profiled = subprocess.run([*run, "profile", str(bundle), "--quick"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
    assert profiled.returncode == 0, profiled.stderr  # a device profiles itself with the core install
    searched = subprocess.run([*run, "search", str(bundle)], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)
    err = one_line(searched)
    assert "pip install 'edgeskip[" in err, err
    record = json.loads((bundle / "profiles" / "cpu.json").read_text())
    assert record["device"] == "cpu"


def _documented_commands() -> list[tuple[str, str]]:
    """Every ``edgeskip ...`` command line of the README's and docs' indented command blocks (continuations
    joined, comments and ``[optional]`` parts dropped), with where it is."""
    import re

    repo = Path(__file__).resolve().parent.parent
    found = []
    for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        if path.name == "cli.md":
            continue  # the parser's own help
        lines = path.read_text().splitlines()
        k = 0
        while k < len(lines):
            line, start = lines[k], k
            while line.endswith("\\") and k + 1 < len(lines):
                k += 1
                line = line[:-1] + " " + lines[k].strip()
            k += 1
            text = line.strip()
            if not (line.startswith("    ") and text.startswith("edgeskip ")):  # the indented command blocks
                continue
            text = re.sub(r"\[[^\]]*\]", "", text.split("  #")[0]).replace("$DATA", "data.tar.gz")
            found.append((f"{path.name}:{start + 1}", text))
    return found


def test_every_documented_command_line_parses() -> None:
    """The README's and the docs' command lines use only flags and values the parser takes."""
    import shlex

    parser = build_parser()
    commands = _documented_commands()
    assert len(commands) > 20
    bad = []
    for where, text in commands:
        try:
            parser.parse_args(shlex.split(text)[1:])
        except SystemExit:
            bad.append(f"{where}: {text}")
    assert not bad, "\n".join(bad)


def test_the_flag_reference_is_up_to_date() -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT.read_text() == module.reference(), "docs/cli.md is stale: run python scripts/cli_reference.py"
