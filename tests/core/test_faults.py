"""Fault injection: ``edgeskip export`` and ``edgeskip profile`` killed with SIGKILL between writes, and an
export that runs out of disk space. Either the previous complete result stays, or the new complete one
is in place (or nothing, when there was nothing before); never a partial one, and nothing is lost.

The kill points: a first run counts the write events of the command (opening a file for writing,
creating, renaming, syncing or removing a file or folder); later runs SIGKILL themselves just before
the k-th event, for k spread over the whole run plus a few at random times.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from edgeskip.bundle import Bundle, BundleError

KILLER = textwrap.dedent('''
    import builtins, io, os, shutil, signal, sys
    _at = int(os.environ.get("EDGESKIP_KILL_AT", "0"))
    _count = os.environ.get("EDGESKIP_KILL_COUNT")
    _n = 0
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def _event():
        global _n
        _n += 1
        if _n == _at:
            os.kill(os.getpid(), signal.SIGKILL)

    def _wrap(fn, when=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if when(*args, **kwargs):
                _event()
            return fn(*args, **kwargs)
        return wrapper

    def _writes(file, mode="r", *args, **kwargs):
        return isinstance(mode, str) and any(c in mode for c in "wax+")

    builtins.open = io.open = _wrap(io.open, _writes)
    os.open = _wrap(os.open, lambda path, flags, *a, **k: bool(flags & _WRITE_FLAGS))
    for name in ("replace", "rename", "fsync", "unlink", "mkdir", "rmdir", "chmod"):
        setattr(os, name, _wrap(getattr(os, name)))
    shutil.rmtree = _wrap(shutil.rmtree)
    if _count:
        import atexit
        atexit.register(lambda: open(_count + ".n", "x").write(str(_n)))
    from edgeskip.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _run(args: list[str], cwd: Path, *, kill_at: int = 0, count: Path | None = None, kill_after: float | None = None,
         timeout: float = 600) -> int:
    env = {**os.environ, "EDGESKIP_KILL_AT": str(kill_at)}
    if count is not None:
        env["EDGESKIP_KILL_COUNT"] = str(count)
    proc = subprocess.Popen([sys.executable, "-c", KILLER, "--quiet", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"{args} failed ({proc.returncode}):\n{out}\n{err}")
    return proc.returncode


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _count_events(args: list[str], cwd: Path, tmp: Path) -> tuple[int, float]:
    """How many write events a whole run has, and how long it took."""
    counter = tmp / "events"
    start = time.perf_counter()
    assert _run(args, cwd, count=counter) == 0
    return int(Path(str(counter) + ".n").read_text()), time.perf_counter() - start


def _kill_points(n: int, spread: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    points = {1 + round(i * (n - 1) / max(1, spread - 1)) for i in range(spread)}
    return sorted(points | {rng.randint(1, n) for _ in range(2)})


EXPORT = ["export", "--model", "vit-tiny", "--fidelity-images", "4", "--force", "--out"]


@pytest.mark.slow
def test_export_killed_between_writes_keeps_a_complete_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = [*EXPORT, str(out)]
    events, seconds = _count_events(args, tmp_path, tmp_path)
    assert events >= 20, events  # the count saw the export's writes
    previous = _tree(out)
    kills = 0
    for k in _kill_points(events, 16, seed=events):
        if _run(args, tmp_path, kill_at=k) != -signal.SIGKILL:
            continue  # ran past its last counted event (a later run writes less: leftovers are cleaned)
        kills += 1
        _assert_complete(out, previous, f"killed before write event {k} of {events}")
    for delay in (0.6 * seconds, 0.8 * seconds, 0.95 * seconds):  # and at times that need not fall on an event
        kills += _run(args, tmp_path, kill_after=delay) == -signal.SIGKILL
        _assert_complete(out, previous, f"killed after {delay:.1f} s")
    assert kills >= 12
    print(f"export: {events} write events, {kills} SIGKILLs, bundle complete after each")  # shown with -s
    _run(args, tmp_path)  # the next export cleans up what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")) == []
    Bundle.open(out)


def _assert_complete(out: Path, previous: dict[str, str], when: str) -> None:
    """The bundle at ``out`` is the previous one or a new complete one; nothing partial anywhere."""
    try:
        bundle = Bundle.open(out)
    except BundleError as exc:
        pytest.fail(f"{when}: the bundle no longer loads: {exc}")
    tree = _tree(out)
    if tree != previous:  # a new export finished before the kill: complete, every file checked
        assert set(tree) == set(previous), when
        assert bundle.manifest.files.keys() <= tree.keys()
    visible = sorted(p.name for p in out.parent.iterdir() if not p.name.startswith("."))
    assert visible == ["bundle", "events.n"], (when, visible)  # anything else is a hidden temp folder ...
    for leftover in out.parent.glob(".bundle.*"):  # ... named for the dead writer, removed by the next one
        assert re.fullmatch(r"\.bundle\.\d+\..+\.tmp", leftover.name), (when, leftover.name)


PROFILE = ["profile", "--device", "cpu", "--quick", "--batch-sizes", "1", "--bundle"]


@pytest.mark.slow
def test_profile_killed_between_writes_keeps_the_previous_profile(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    args = [*PROFILE, str(bundle)]
    events, seconds = _count_events(args, tmp_path, tmp_path)
    profile = bundle / "profiles" / "cpu.json"
    kills = 0
    for k in range(1, events + 1):  # every write event of the profile
        kills += _run(args, tmp_path, kill_at=k) == -signal.SIGKILL
        data = json.loads(profile.read_text())  # a complete profile: the old one or a new one
        assert data["device"] == "cpu" and data["batches"], k
    for delay in (0.8 * seconds, 0.95 * seconds):
        kills += _run(args, tmp_path, kill_after=delay) == -signal.SIGKILL
        json.loads(profile.read_text())
    assert kills >= events
    print(f"profile: {events} write events, {kills} SIGKILLs, profile complete after each")  # shown with -s
    _run(args, tmp_path)
    assert [p.name for p in profile.parent.iterdir()] == ["cpu.json"]  # stale temp files removed
    Bundle.open(bundle)  # the bundle itself untouched by all of it


def _small_filesystem_command(size_kib: int, mount: Path, script: str) -> list[str] | None:
    """A command running ``script`` (sh) with a ``size_kib`` tmpfs mounted at ``mount`` in a private mount
    namespace (no root needed where user namespaces are allowed); None where this machine cannot."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {mount}"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
            f"mount -t tmpfs -o size={size_kib}k tmpfs {mount} && {script}"]


def test_export_on_a_full_disk_reports_it_and_keeps_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """A real ENOSPC: a tmpfs with room for the existing bundle and a part of a new one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = sum(p.stat().st_size for p in tiny_bundle.rglob("*") if p.is_file())
    report = tmp_path / "report.json"
    check = textwrap.dedent(f'''
        import hashlib, json, subprocess, sys
        from pathlib import Path
        out = Path({str(mount / "bundle")!r})
        tree = lambda: {{str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(out.rglob("*")) if p.is_file()}}
        import shutil
        shutil.copytree({str(tiny_bundle)!r}, out)
        before = tree()
        proc = subprocess.run([sys.executable, "-m", "edgeskip", "--quiet", "export", "--model", "vit-tiny",
                               "--fidelity-images", "4", "--force", "--out", str(out)], capture_output=True, text=True)
        from edgeskip.bundle import Bundle
        Bundle.open(out)
        json.dump({{"rc": proc.returncode, "stderr": proc.stderr, "same": tree() == before,
                    "left": sorted(p.name for p in out.parent.iterdir())}}, open({str(report)!r}, "w"))
    ''')
    script_file = tmp_path / "check.py"
    script_file.write_text(check)
    cmd = _small_filesystem_command(size // 1024 + size // 2048 + 64, mount, f"{sys.executable} {script_file}")
    if cmd is None:
        pytest.skip("no private tmpfs here (unshare --user --mount not permitted)")
    subprocess.run(cmd, check=True, timeout=600, cwd=tmp_path)
    result: dict[str, Any] = json.loads(report.read_text())
    assert result["rc"] == 1, result
    assert "No space left on device" in result["stderr"] and "Traceback" not in result["stderr"], result["stderr"]
    assert "unchanged" in result["stderr"]
    assert result["same"], "the existing bundle changed"
    assert result["left"] == ["bundle"], result["left"]  # the temp folder of the failed export is gone


def test_export_beyond_the_file_size_limit_reports_it_and_keeps_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """The same on any POSIX machine: RLIMIT_FSIZE makes the kernel refuse a write (EFBIG) mid-export."""
    import resource

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = _tree(out)
    limit = 64 << 10  # smaller than a layer's ONNX file

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "edgeskip", "--quiet", *EXPORT, str(out)], preexec_fn=limited,
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _finished_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_bundle_moved_aside_by_a_killed_writer_is_put_back(tmp_path: Path) -> None:
    """Without renameat2 a replace is two renames; a writer killed between them left the old directory in
    its temp folder. The next writer of the path restores it before anything else."""
    from edgeskip.fsutil import atomic_directory, remove_stale

    target = tmp_path / "bundle"
    aside = tmp_path / f".bundle.{_finished_pid()}.abc.tmp"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "manifest.json").write_text("old")
    busy = tmp_path / f".bundle.{os.getpid()}.def.tmp"  # a live writer's folder: left alone
    busy.mkdir()
    assert remove_stale(target) == [aside]
    assert (target / "manifest.json").read_text() == "old" and busy.is_dir()
    busy.rmdir()
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_replacing_without_an_atomic_exchange_still_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two-rename fallback (non-Linux) gives the same result."""
    from edgeskip import fsutil

    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    for text in ("one", "two"):
        with fsutil.atomic_directory(target, replace=True) as tmp:
            (tmp / "f").write_text(text)
    assert (target / "f").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
