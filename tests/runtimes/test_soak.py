"""Reliability under load: a short soak (benchmarks/soak.py), eight threads on one Runtime, two
processes on one bundle. Every concurrent result must equal a serial one exactly."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgeskip.runtimes import Policy, Runtime, RuntimeOutput
from edgeskip.runtimes.inputs import prepare

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "benchmarks" / "soak.py"
JOIN_TIMEOUT_S = 120.0


def _load_soak() -> ModuleType:
    """benchmarks/soak.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("soak_script", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _same(got: RuntimeOutput, want: RuntimeOutput) -> bool:
    """Identical decisions and bit-identical logits. Exact equality holds because each call runs the
    same sessions on the same rows in the same batch composition, whatever other threads do (measured)."""
    return (np.array_equal(got.executed, want.executed) and np.array_equal(got.exit_layer, want.exit_layer)
            and np.array_equal(got.logits, want.logits))


# -- soak ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_short(tiny_bundle: Path, tmp_path: Path) -> None:
    """The CI form of the soak: 5,000 batch-1 calls, 5 configurations, in a fresh process."""
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--bundle", str(tiny_bundle), "--inferences", "5000",
                           "--switch-every", "1000", "--warmup", "1000", "--json", str(out), "-q"],
                          check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["passed"] and r["failed_calls"] == 0 and r["failed_switches"] == 0 and r["errors"] == []
    assert 0.0 <= r["growth_mb"] <= 2.0, r["rss_samples"]
    assert r["switches"] == 5 and r["configurations_used"] == 5 and r["inferences"] == 5000
    assert r["stats"]["calls"] == 5000 and r["stats"]["inputs"] == 5000
    assert 1.0 <= r["stats"]["layers_per_input"] <= 4.0
    assert sum(r["stats"]["executed_layers"].values()) == 5000
    assert r["rss_samples"]["calls"][-1] == 5000 and r["calls_per_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


def test_soak_counts_failed_calls_and_goes_on(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    soak = _load_soak()
    real_call: Callable[..., RuntimeOutput] = Runtime.__call__
    calls = [0]

    def flaky(self: Runtime, images: Any) -> RuntimeOutput:
        calls[0] += 1
        if calls[0] % 50 == 0:
            raise RuntimeError("injected failure")
        return real_call(self, images)

    monkeypatch.setattr(Runtime, "__call__", flaky)
    r = soak.soak(tiny_bundle, inferences=300, switch_every=100, warmup=100, seed=1, progress=None)
    assert r["failed_calls"] == 6 and r["stats"]["calls"] == 294 and r["switches"] == 3
    assert r["errors"][0] == "call 49: RuntimeError: injected failure"


def test_soak_exit_code_fails_on_growth_and_rejects_a_long_warmup(tiny_bundle: Path, tmp_path: Path) -> None:
    soak = _load_soak()
    common = ["--bundle", str(tiny_bundle), "--inferences", "200", "--switch-every", "50", "-q"]
    assert soak.main([*common, "--warmup", "100", "--max-growth-mb", "-1"]) == 1  # growth is >= 0
    assert soak.main([*common, "--warmup", "200"]) == 2


def test_soak_configurations_are_distinct_valid_and_seeded() -> None:
    soak = _load_soak()
    configs = soak.draw_configurations(6, (2,), 8, seed=3)
    assert len(set(configs)) == 8 and configs == soak.draw_configurations(6, (2,), 8, seed=3)
    for c in configs:
        assert c.thresholds[2] is None and any(t is not None for t in c.thresholds)
        assert all(t is None or 0.0 <= t <= 1.0 for t in c.thresholds)
    assert soak.draw_configurations(6, (2,), 8, seed=4) != configs
    with pytest.raises(ValueError, match="keeps no layer"):
        soak.draw_configurations(2, (0, 1), 8, seed=0)


# -- threads ----------------------------------------------------------------------------------------


def _agent_medians(rt: Runtime, images: np.ndarray) -> list[float]:
    """Per layer, the median agent probability with every earlier layer run: a threshold there sends
    about half the inputs through the layer (an untrained model's agents all sit near one value)."""
    assert rt.agents is not None and rt.backend is not None
    w, b = rt.agents
    tokens = rt.backend.run("embed", prepare(images, rt.input_spec))
    medians = []
    for j in range(rt.depth):
        medians.append(float(np.median(1.0 / (1.0 + np.exp(-(tokens[:, 0] @ w[j] + b[j]))))))
        tokens = rt.backend.run(f"layer_{j:02d}", tokens)
    return medians


def _run_threads(work: Callable[[int], None], n: int = 8) -> None:
    """Run ``work(k)`` for k < n in n threads; fail on an error, or on 'deadlock' when one is still alive."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        pytest.fail(f"deadlock: {len(alive)} thread(s) still running after {JOIN_TIMEOUT_S:.0f} s: {alive}")
    if errors:
        raise errors[0]


def _check_threads_match_serial(rt: Runtime, pool: np.ndarray, fixed: str | Policy,
                                configs: Sequence[str | Policy]) -> None:
    """8 threads on ``rt`` against serial calls on the same Runtime (same sessions, same inputs): 200 calls
    of batch sizes 1..4 cut from the uint8 images ``pool``.

    1. ``fixed`` policy, while a ninth thread sets it again and again: every call equals its serial call.
    2. Each thread sets a random one of ``configs`` before each call, racing the others: every call equals
       the serial call under one of the configurations (a call follows one plan from start to end).
    """
    starts = [(7 * i) % (len(pool) - 4) for i in range(200)]
    inputs = [pool[s:s + 1 + i % 4] for i, s in enumerate(starts)]
    rt.set_policy(fixed)
    want = [rt(x) for x in inputs]
    rt.reset_stats()
    got: dict[int, RuntimeOutput] = {}
    stop = threading.Event()

    def switcher() -> None:
        while not stop.is_set():
            rt.set_policy(fixed)

    def fixed_work(k: int) -> None:
        for i in range(k, len(inputs), 8):
            got[i] = rt(inputs[i])

    background = threading.Thread(target=switcher, daemon=True)
    background.start()
    try:
        _run_threads(fixed_work)
    finally:
        stop.set()
        background.join(10)
    mismatched = [i for i, w in enumerate(want) if not _same(got[i], w)]
    assert not mismatched, f"inputs {mismatched[:10]} differ from the serial run under one policy"
    stats = rt.stats()
    assert stats.calls == len(inputs) and stats.inputs == sum(len(x) for x in inputs)

    serial = []  # serial[c][i]: input i under configuration c
    for c in configs:
        rt.set_policy(c)
        serial.append([rt(x) for x in inputs])
    distinct = {i for i in range(len(inputs)) if any(not _same(s[i], serial[0][i]) for s in serial)}
    assert len(distinct) > len(inputs) // 2, "the configurations should give different results"
    matched: dict[int, list[int]] = {}

    def switching_work(k: int) -> None:
        pick = random.Random(k)
        for i in range(k, len(inputs), 8):
            for _ in range(3):  # three calls per input, a fresh configuration before each
                rt.set_policy(configs[pick.randrange(len(configs))])
                out = rt(inputs[i])
                matched.setdefault(i, []).append(next((c for c, s in enumerate(serial) if _same(out, s[i])), -1))

    _run_threads(switching_work)
    bad = {i: m for i, m in matched.items() if -1 in m}
    assert not bad, f"calls that match no configuration's serial result (a plan changed midway?): {bad}"
    assert len({c for m in matched.values() for c in m}) > 1  # the switching really happened


@pytest.mark.slow
def test_eight_threads_on_one_runtime_match_serial(tiny_bundle: Path) -> None:
    rt = Runtime(tiny_bundle, policy="agent")
    m = _agent_medians(rt, _images(64, seed=99))
    configs: list[str | Policy] = [
        "agent", "static",  # every layer: through the stages, and the monolithic model in one call
        Policy.config([0.0, 0.0, None, None]), Policy.config([None, None, 0.0, 0.0]),
        Policy.config([0.0, m[1], 0.0, m[3]]),  # per input inside a batch: gather/scatter
        Policy.config([0.5, 1.0, 0.5, 1.0]),  # t = 1: the agent is asked and never runs the layer
    ]
    _check_threads_match_serial(rt, _images(256, seed=5), Policy.config([0.0, m[1], 0.0, m[3]]), configs)


@pytest.mark.slow
def test_eight_threads_match_serial_with_trained_agents_and_exits(digits_tflite_bundle: Path,
                                                                  digits_test_uint8: np.ndarray) -> None:
    rt = Runtime(digits_tflite_bundle, policy="agent+e2cm")
    exits = len(rt.plan.exit_thresholds)
    configs: list[str | Policy] = ["agent+e2cm", "agent", "e2cm", "static",
                                   Policy.config([0.0, 0.5, None, 0.0, 0.5, 0.0], [0.0] * exits)]
    _check_threads_match_serial(rt, digits_test_uint8, "agent+e2cm", configs)


# -- processes --------------------------------------------------------------------------------------

WORKER = """
import sys, time
from pathlib import Path
import numpy as np
import edgeskip

bundle, inputs, out, mine, other = sys.argv[1:6]
rt = edgeskip.Runtime(bundle, policy="agent")
x = np.load(inputs)

def run_all():
    outs = [rt(x[i:i + 1]) for i in range(len(x))]
    return (np.concatenate([o.logits for o in outs]), np.concatenate([o.executed for o in outs]),
            np.concatenate([o.exit_layer for o in outs]))

Path(mine).touch()
first = run_all()
deadline = time.monotonic() + 60
while not Path(other).exists():  # the other process has started running: both run from here on
    if time.monotonic() > deadline:
        sys.exit("the other process never started running")
    time.sleep(0.005)
for _ in range(3):
    again = run_all()
    if not all(np.array_equal(a, b) for a, b in zip(first, again)):
        sys.exit("a repeated run gave other results")
np.savez(out, logits=first[0], executed=first[1], exit_layer=first[2])
"""


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every file and folder under ``root`` (itself included): size, mtime and sha256 of the contents."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, st.st_mode, digest)
    return out


@pytest.mark.slow
def test_two_processes_share_a_bundle_read_only(tiny_bundle: Path, tmp_path: Path, torch_blocker: str) -> None:
    before = _snapshot(tiny_bundle)
    x = _images(64, seed=7)
    np.save(tmp_path / "inputs.npy", x)
    rt = Runtime(tiny_bundle, policy="agent")
    want = [rt(x[i:i + 1]) for i in range(len(x))]
    flags = [tmp_path / f"running-{k}" for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", torch_blocker + WORKER, str(tiny_bundle), str(tmp_path / "inputs.npy"),
                               str(tmp_path / f"out-{k}.npz"), str(flags[k]), str(flags[1 - k])],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail("a process sharing the bundle hung (killed after 120 s)")
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    for k in range(2):
        with np.load(tmp_path / f"out-{k}.npz") as got:
            # exact: same onnxruntime, same sessions' graphs, same inputs at batch 1 in both processes
            assert np.array_equal(got["logits"], np.concatenate([w.logits for w in want]))
            assert np.array_equal(got["executed"], np.concatenate([w.executed for w in want]))
            assert np.array_equal(got["exit_layer"], np.concatenate([w.exit_layer for w in want]))
    assert _snapshot(tiny_bundle) == before
