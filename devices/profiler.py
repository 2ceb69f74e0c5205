"""``edgeskip profile``: what each stage of a bundle costs on this device, with the backend that runs it there.

For every batch size asked for, each stage (embed, every layer, head) runs on its real input
(the tokens the previous stages produce from seeded random images), and so do the host-side
pieces the runtime adds per layer: the agent decision and each E²CM exit check. Each layer is
also timed by reuse distance (``layer_NN@d``: after ``d`` other layers since its own previous
run; see ``_window_calls``), in every further precision the backend can run the bundle's layers in
(``layer_NN:int8``, a static pass in that precision; ``_precision_calls``), and each agent also right after
the previous agent (``agent_NN@0``: no layer between, as after a skipped layer). They are timed
in context: whole static passes in execution order, each piece timed inside the pass, repeated
until there are at least ``min_repeats`` passes and ``min_seconds`` of running (at most
``max_repeats``); the profile keeps median, p90, standard deviation, the sample count and a
trimmed mean (5% cut at each end), which the cost model adds up: expected latencies add, medians
do not, and on a machine that switches between fast and slow phases they differ. The
runtime's own cost around the stages is measured end to end (see ``_overhead``). Where the bundle has a gate
graph and the backend is fp32 onnxruntime, the gate graph is timed too, at batch 1 in warm blocks
(``Profile.gate``, see ``_gate_cost``), and each execution path's resident memory is measured in a fresh
process per path and batch (``Profile.memory.paths``, :mod:`edgeskip.devices.memory`). Energy per call comes from the device's energy source (a real counter, or an
estimate labelled ``"source": "estimate"``), measured over a block of repeated calls. Peak
resident memory, the backend, thread pool, library versions and the host are recorded.

The result is ``profiles/<device>.json`` beside the bundle's files (schema-versioned; it names
the bundle by its manifest's fingerprint, so a profile of another bundle is refused on load).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import stage_name
from edgeskip.devices.energy import EnergyMeter, select_meter
from edgeskip.devices.memory import path_memory_mib, path_policy
from edgeskip.host import describe_host
from edgeskip.policy import Policy
from edgeskip.profile import STATIC
from edgeskip.runtimes.inputs import prepare
from edgeskip.runtimes.runtime import Runtime
from edgeskip.devices.table import Device, get_device
from edgeskip.errors import ConfigError
from edgeskip.profile import (GateCost, Memory, Overhead, Profile, ProfiledBundle, ProfileError, Stability, Timing,
                               at_distance)
from edgeskip.schema import to_json
from edgeskip.rule import agent_runs, decision_input, exit_top

log = logging.getLogger(__name__)

__all__ = ["ProfileSettings", "profile_bundle", "timing_stats", "trimmed_mean"]

def timing_stats(seconds: Sequence[float], energy_mj: float) -> Timing:
    """Median, p90 and standard deviation (ms) of per-call times in seconds."""
    t = np.asarray(seconds, np.float64) * 1e3
    if t.size == 0 or not np.isfinite(t).all() or (t < 0).any():
        raise ProfileError(f"cannot summarise {t.size} timing sample(s) with negative or non-finite values")
    return Timing(median_ms=float(np.median(t)), mean_ms=trimmed_mean(t), p90_ms=float(np.percentile(t, 90)),
                  std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0, samples=int(t.size), energy_mj=float(energy_mj))


def trimmed_mean(values: Any, cut: float = 0.05) -> float:
    """Mean of ``values`` without the lowest and highest ``cut`` share (preemptions, timer hiccups)."""
    v = np.sort(np.asarray(values, np.float64))
    k = int(len(v) * cut)
    return float(v[k:len(v) - k].mean()) if len(v) > 2 * k else float(v.mean())


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    batch_sizes: tuple[int, ...] = (1,)
    warmup: int = 5
    min_repeats: int = 20
    max_repeats: int = 1000
    min_seconds: float = 0.5
    energy_seconds: float = 1.0  # each energy block runs at least this long (NVML refreshes every 20-100 ms)
    seed: int = 0
    max_drift: float = 0.05  # the whole loop's median may change this much between the halves of the passes,
    extensions: int = 2  # or the passes are timed again this many times (then a warning says so)
    memory: bool = True  # each path's resident memory, one fresh process per path and batch (edgeskip.devices.memory)

    @classmethod
    def quick(cls, batch_sizes: tuple[int, ...] = (1,)) -> ProfileSettings:
        """A coarse profile: a few samples per piece."""
        return cls(batch_sizes, warmup=2, min_repeats=5, max_repeats=50, min_seconds=0.05, energy_seconds=0.1,
                   extensions=1)

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.min_repeats < 2 or self.max_repeats < self.min_repeats or self.warmup < 0:
            raise ConfigError("need 2 <= min_repeats <= max_repeats and warmup >= 0")
        if not self.max_drift >= 0 or self.extensions < 0:
            raise ConfigError("need max_drift >= 0 and extensions >= 0")


def _pass_calls(be: Any, rt: Any, x: npt.NDArray[np.float32], layers: Sequence[int], exits: dict[int, int],
                runs: Callable[..., Any], decisions: Callable[..., Any]) -> list[tuple[str, Callable[[], Any]]]:
    """Every piece of one static pass, in execution order, each bound to its real input."""
    calls: list[tuple[str, Callable[[], Any]]] = [("embed", functools.partial(be.run, "embed", x))]
    tokens = be.run("embed", x)
    for j in layers:
        if rt.agents is not None:
            calls.append((f"agent_{j:02d}", functools.partial(_agent_decision, tokens, rt.agents[0][j],
                                                              rt.agents[1][j], runs, rt.manifest.config.decision_token)))
            # the next agent right after this one (a skipped layer between them): no layer has just run
            calls.append((f"agent_{j:02d}@0", calls[-1][1]))
        calls.append((stage_name(j), functools.partial(be.run, stage_name(j), tokens)))
        tokens = be.run(stage_name(j), tokens)
        if j in exits and rt.e2cm is not None:
            calls.append((f"exit_{exits[j]:02d}", functools.partial(_exit_check, rt.e2cm, exits[j], tokens, decisions)))
    calls.append(("head", functools.partial(be.run, "head", tokens)))
    return calls


WINDOWS = (1, 2, 4)  # layers cycled through together when timing a layer by its reuse distance
# The static model is timed as an application runs it, call after call: in each pass STATIC_WARM untimed
# calls, then STATIC_BLOCK timed ones, then the stages once untimed, so that the next pass finds them as a
# dynamic configuration does (its own weights in the caches, not the monolithic model's). Timed once per
# pass right after the stages, the static model measured 1.2-2.1x its steady latency on a width-192 digits
# model and 1.2x on vit9; in blocks of six, 1.0-1.05x. Without the settling pass the block slowed the
# next stages by 13% (vit9 layer_00, 2-core VM).
STATIC_WARM, STATIC_BLOCK = 2, 6


def _precision_calls(be: Any, calls: Sequence[tuple[str, Callable[[], Any]]],
                     layers: Sequence[int]) -> list[tuple[str | None, Callable[[], Any]]]:
    """Every layer in each further precision the backend runs the bundle's layers in (``layer_NN:int8``; the
    backend's own is ``layer_NN``), timed in a static pass of that precision on the same real inputs."""
    by_layer = {name: fn for name, fn in calls}
    out: list[tuple[str | None, Callable[[], Any]]] = []
    for precision in be.precisions()[1:]:
        for j in layers:
            own = by_layer[stage_name(j)]
            assert isinstance(own, functools.partial)  # be.run bound to the stage and its real input (_pass_calls)
            out.append((f"{stage_name(j)}:{precision}",
                        functools.partial(be.run, be.variant(stage_name(j), precision), *own.args[1:])))
    return out


def _window_calls(calls: Sequence[tuple[str, Callable[[], Any]]], layers: Sequence[int],
                  widths: Sequence[int] = WINDOWS) -> list[tuple[str | None, Callable[[], Any]]]:
    """Every layer timed by reuse distance: for a window of ``w`` layers, the window runs once untimed
    and twice timed, so each timed run comes after the ``w - 1`` other layers of the window since its
    own previous run (``layer_NN@{w-1}``; ``@0``: right after itself). With few layers running per input
    the same few layers keep running, and their weights stay in the caches: on this 2-core VM a vit9 layer
    took 0.31 ms cycling alone, 0.34 with one other, 0.43 with all nine."""
    by_layer = {name: fn for name, fn in calls}
    out: list[tuple[str | None, Callable[[], Any]]] = []
    n = len(layers)
    for w in widths:
        if w >= n:
            break
        for start in range(0, n, w):
            window = [layers[(start + i) % n] for i in range(w)]
            fns = [by_layer[stage_name(j)] for j in window]
            out += [(None, fn) for fn in fns]
            for _ in range(2):
                out += [(f"{stage_name(j)}@{w - 1}", fn) for j, fn in zip(window, fns, strict=True)]
    return out


def _in_context(calls: Sequence[tuple[str | None, Callable[[], Any]]], settings: ProfileSettings,
                extra: Sequence[tuple[str | None, Callable[[], Any]]] = ()) -> dict[str, list[float]]:
    """Seconds per call of each piece, timed inside whole passes in execution order.

    A stage timed alone in a tight loop keeps its weights in the caches and ran 30-45% faster
    here (vit9, batch 1) than the same stage inside a pass, where the previous layer has just
    evicted them; in a pass every piece pays what it pays in the runtime. ``extra`` calls (whole
    runtime calls) are timed once per pass too, so both see the same phase of a noisy machine.
    """
    for _ in range(settings.warmup):
        for _, fn in (*calls, *extra):
            fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in (*calls, *extra) if name is not None}
    start = time.perf_counter()
    passes = 0
    while passes < settings.max_repeats and (
            passes < settings.min_repeats or time.perf_counter() - start < settings.min_seconds):
        for name, fn in (*calls, *extra):
            t0 = time.perf_counter()
            fn()
            if name is not None:
                samples[name].append(time.perf_counter() - t0)
        passes += 1
    return samples


def _stability(loop: Sequence[float], extensions: int, max_drift: float) -> Stability:
    """How steady the whole loop's time (one sample per pass, in time order) stayed over the passes."""
    t = np.asarray(loop, np.float64)
    half = len(t) // 2
    first, second = float(np.median(t[:half])) if half else 0.0, float(np.median(t[half:]))
    p10, p90 = np.percentile(t, [10, 90])
    return Stability(drift=second / first - 1.0 if first > 0 else 0.0, spread=float((p90 - p10) / np.median(t)),
                     extensions=extensions, passes=len(t), max_drift=max_drift)


def _timed_steadily(calls: Sequence[tuple[str, Callable[[], Any]]], settings: ProfileSettings,
                    extra: Sequence[tuple[str | None, Callable[[], Any]]]) -> tuple[dict[str, list[float]], Stability]:
    """:func:`_in_context`, timed again (up to ``settings.extensions`` times, the samples pooled) while the whole
    loop drifts by more than ``settings.max_drift`` between the first and the second half of the passes: a
    machine that changes phase mid-profile gets more passes of its later phase, and the profile records how
    steady it was."""
    samples = _in_context(calls, settings, extra)
    stability = _stability(samples["runtime_all"], 0, settings.max_drift)
    for k in range(1, settings.extensions + 1):
        if stability.steady:
            break
        more = _in_context(calls, settings, extra)
        samples = {name: samples[name] + more[name] for name in samples}
        stability = _stability(samples["runtime_all"], k, settings.max_drift)
    return samples, stability


def _energy_mj(fn: Callable[[], Any], seconds: float, settings: ProfileSettings, meter: EnergyMeter) -> float:
    """Energy per call of ``fn``, over a block of calls lasting about ``energy_seconds``."""
    calls = max(1, math.ceil(settings.energy_seconds / max(seconds, 1e-6)))

    def block() -> None:
        for _ in range(calls):
            fn()

    joules, _ = meter.measure(block)
    return joules * 1e3 / calls


def _overhead(samples: dict[str, list[float]], pieces: dict[str, Timing], layers: Sequence[int],
              depth: int) -> Overhead:
    """The runtime's own cost around the stages: two whole runtime calls timed in the same passes (every
    layer; every other layer removed) against the sums of their stages' in-context times give a cost per
    backend call and a fixed cost per runtime call (the line through the two points). The half loop's layers
    are priced at its reuse distance, as the cost model prices them (each comes after the half's other layers):
    priced at static-pass times, the half loop on the digits model ran 0.016 ms under its stages, which put its
    reuse gain into a cost per call of 0.011 ms and the predicted stage loop 20-27% over the measured one."""
    half = layers[::2]
    stage = {k: v.mean_ms for k, v in pieces.items()}
    sum_all = stage["embed"] + stage["head"] + sum(stage[stage_name(j)] for j in layers)
    sum_half = stage["embed"] + stage["head"] + sum(_reused_ms(stage, j, len(half) - 1, depth) for j in half)
    t_all = trimmed_mean(samples["runtime_all"]) * 1e3
    t_half = trimmed_mean(samples["runtime_half"]) * 1e3
    calls_all, calls_half = len(layers) + 2, len(half) + 2
    per_call = ((t_all - sum_all) - (t_half - sum_half)) / (calls_all - calls_half) if calls_all != calls_half else 0.0
    per_call = max(per_call, 0.0)
    # the runtime cannot cost less than nothing: a negative line (noise, e.g. another process taking the
    # CPU during the stage timings) would predict configurations below their own stages
    return Overhead(per_call_ms=per_call, fixed_ms=max((t_all - sum_all) - per_call * calls_all, 0.0),
                    static_loop_ms=t_all, sum_of_stages_ms=sum_all, half_loop_ms=t_half,
                    half_sum_of_stages_ms=sum_half, passes=len(samples["runtime_all"]))


# An exit threshold every exit check passes through without firing (1.0 would disable the check; float32 in the graph)
NEVER_FIRES = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def _gate_runtimes(rt: Runtime, layers: Sequence[int], x: npt.NDArray[np.float32],
                   options: dict[str, Any]) -> dict[str, Runtime]:
    """The gate graph as whole Runtime calls on one input: every layer (``gate_all``), every other layer skipped
    (``gate_half``, where every layer has an agent to skip it by) and every exit checked without firing
    (``gate_exits``, where the profile's input does not leave at any); none where the bundle has no gate graph or
    the backend is not fp32 onnxruntime (the graph's own backend and precision)."""
    m = rt.manifest
    if m.gate is None or rt.backend_info.get("backend") != "onnxruntime" or rt.backend_info.get("format") != "onnx":
        return {}
    from edgeskip.runtimes.gate import GateGraph  # parses ONNX protobufs: loaded only for the gate graph

    opts = {k: v for k, v in options.items() if k in GateGraph.OPTIONS}
    out = {"gate_all": Runtime(rt.bundle, graph="gate", policy="static", **opts)}
    if m.agents is not None and len(layers) > 1:
        out["gate_half"] = Runtime(rt.bundle, graph="gate", **opts, policy=Policy.config(
            [0.0 if j in layers[::2] else None for j in range(m.config.depth)]))
    if m.e2cm is not None:
        checked = Runtime(rt.bundle, graph="gate", **opts, policy=Policy.config(
            None, [NEVER_FIRES] * len(m.e2cm.exits)))
        if (checked(x[:1]).exit_layer < 0).all():
            out["gate_exits"] = checked
        else:
            log.info("the profile's input leaves at an exit even at threshold %r: gate exit checks are priced as "
                     "the stage loop's", NEVER_FIRES)
    return out


def _gate_cost(samples: dict[str, list[float]], pieces: dict[str, Timing], layers: Sequence[int],
               exits: int, loop: Overhead) -> GateCost:
    """The gate graph's terms: the line through its every-layer and every-other-layer calls against the sums of
    their stages' in-context times (as :func:`_overhead` does for the stage loop, whose every-layer sum ``loop``
    has), and its every-exit call."""
    stage = {k: v.mean_ms for k, v in pieces.items()}
    half = layers[::2]
    sum_all = loop.sum_of_stages_ms
    sum_half = stage["embed"] + stage["head"] + sum(stage[stage_name(j)] for j in half)
    t_all = trimmed_mean(samples["gate_all"]) * 1e3
    t_half = trimmed_mean(samples["gate_half"]) * 1e3 if "gate_half" in samples else None
    per_layer = 0.0 if t_half is None else ((t_all - sum_all) - (t_half - sum_half)) / (len(layers) - len(half))
    t_exits = trimmed_mean(samples["gate_exits"]) * 1e3 if "gate_exits" in samples else None
    if t_exits is not None:
        per_exit = max(t_exits - t_all, 0.0) / exits
    else:  # not measured: as the stage loop's host-side check
        per_exit = float(np.mean([v for k, v in stage.items() if k.startswith("exit_")] or [0.0]))
    return GateCost(per_layer_ms=per_layer, per_exit_ms=per_exit, fixed_ms=(t_all - sum_all) - per_layer * len(layers),
                    all_ms=t_all, half_ms=t_half, exits_ms=t_exits)


def _reused_ms(stage: dict[str, float], j: int, distance: int, depth: int) -> float:
    """Layer ``j``'s in-context time at reuse ``distance`` from its ``layer_NN@d`` pieces (:func:`at_distance`)."""
    name = stage_name(j)
    measured = [(int(k.partition("@")[2]), v) for k, v in stage.items() if k.startswith(f"{name}@")]
    return float(at_distance(measured, stage[name], depth, distance))


def _agent_decision(tokens: npt.NDArray[np.float32], w: npt.NDArray[np.float32], bias: np.float32,
                    runs: Callable[..., Any], token: str) -> int:
    """What the runtime does for one agent: the logit of the CLS token (:func:`decision_input`) against a cut."""
    return int(np.count_nonzero(runs(decision_input(tokens, token) @ w + bias, 0.0)))


def _exit_check(e2cm: Any, index: int, tokens: npt.NDArray[np.float32], decisions: Callable[..., Any]) -> Any:
    """What the runtime does at one E²CM exit: normalised distances, top probability and label."""
    return decisions(e2cm.distances(index, tokens))


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def profile_bundle(bundle_dir: str | Path, device: str | Device = "cpu", *, backend: str | None = None,
                   settings: ProfileSettings | None = None, energy_root: str | Path = "/",
                   progress: Callable[[str], None] | None = None, **backend_options: Any) -> Profile:
    """Measure every stage of the bundle on this machine; returns the profile (``profile.save(bundle)`` writes it)."""
    settings = settings or ProfileSettings()
    dev = device if isinstance(device, Device) else get_device(device)
    say = progress or (lambda _m: None)
    rss_before = _peak_rss_mb()
    # the stage loop unfused: each piece and the runtime's cost per backend call are measured one call at a time
    rt = Runtime(bundle_dir, backend=backend or dev.backend, policy="static", whole_static=False, fuse=False,
                 **backend_options)
    m = rt.manifest
    be = rt.backend
    assert be is not None
    whole = Runtime(rt.bundle, backend=type(be), policy="static", **backend_options)
    static_rt = whole if whole.static_in_one_call else None  # no monolithic model here: static is the loop
    meter, unavailable = select_meter(dev.energy, root=energy_root, rails=dev.rails,
                                      watts_per_core=dev.watts_per_core, basis=dev.power_basis)
    rng = np.random.default_rng(settings.seed)
    spec = rt.input_spec
    layers = [j for j in range(m.config.depth) if j not in m.removed]
    exits = {layer: i for i, layer in enumerate(m.e2cm.exits)} if m.e2cm else {}
    out: dict[str, dict[str, Timing]] = {}
    overhead: dict[str, Overhead] = {}
    stability: dict[str, Stability] = {}
    gate: dict[str, GateCost] = {}
    memory: dict[str, dict[str, float]] = {}
    for b in settings.batch_sizes:
        images = rng.integers(0, 256, (b, spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
        x: npt.NDArray[np.float32] = prepare(images, spec)
        say(f"batch {b}: every piece in context")
        calls = _pass_calls(be, rt, x, layers, exits, agent_runs, exit_top)
        # every other layer, on the same sessions as the pieces (a Runtime of its own would run its own copy of the
        # weights, cold in every pass: it measured 0.14 ms over its stages where the whole loop on shared ones had none)
        half = Policy.config([0.0 if j in layers[::2] else None for j in range(m.config.depth)])
        windows = _window_calls(calls, layers) + _precision_calls(be, calls, layers)
        extra: list[tuple[str | None, Callable[[], Any]]] = [
            ("runtime_all", functools.partial(rt, x)), (None, functools.partial(rt.set_policy, half)),
            # twice: the timed call's layers each come after the half's other layers (a reuse distance it prices)
            (None, functools.partial(rt, x)), ("runtime_half", functools.partial(rt, x)),
            (None, functools.partial(rt.set_policy, "static")), *windows]
        if static_rt is not None:  # the static policy as the Runtime runs it: the monolithic model in one call
            whole_call = functools.partial(static_rt, x)
            extra += [(None, whole_call)] * STATIC_WARM + [(STATIC, whole_call)] * STATIC_BLOCK
            extra += [(None, fn) for _, fn in calls]
        gates = _gate_runtimes(rt, layers, x, backend_options) if b == 1 else {}  # one input a call: batch 1 only
        for name, g in gates.items():  # like the monolithic model: its own weights, timed in a warm block
            gate_call = functools.partial(g, x)
            extra += [(None, gate_call)] * STATIC_WARM + [(name, gate_call)] * STATIC_BLOCK
            extra += [(None, fn) for _, fn in calls]
        samples, stability[str(b)] = _timed_steadily(calls, settings, extra)
        if not stability[str(b)].steady:
            st = stability[str(b)]
            log.warning("the machine drifted while batch %d was profiled: the whole loop ran %+.0f%% slower in the "
                        "second half of %d passes than in the first (allowed: %.0f%%, after %d extension(s)); "
                        "absolute figures are uncertain, ratios between pieces timed in the same passes less so: "
                        "profile again when the machine is quiet", b, 100 * st.drift, st.passes, 100 * st.max_drift,
                        st.extensions)
        pieces: dict[str, Timing] = {}
        named = dict(calls) | {name: fn for name, fn in windows if name is not None}
        if static_rt is not None:
            named[STATIC] = functools.partial(static_rt, x)
        for name, fn in named.items():
            base = name.partition("@")[0]
            if base != name and base in pieces:  # same work, other cache state: the same power for its time
                t = timing_stats(samples[name], 0.0)
                pieces[name] = dataclasses.replace(t, energy_mj=pieces[base].energy_mj * t.mean_ms / pieces[base].mean_ms)
                continue
            say(f"batch {b}: energy of {name}")
            pieces[name] = timing_stats(samples[name], _energy_mj(fn, float(np.median(samples[name])), settings, meter))
        out[str(b)] = pieces
        say(f"batch {b}: runtime overhead")
        overhead[str(b)] = _overhead(samples, pieces, layers, m.config.depth)
        if gates:
            gate[str(b)] = _gate_cost(samples, pieces, layers, len(exits), overhead[str(b)])
        if settings.memory:
            paths = [*(["monolithic"] if static_rt is not None else []), "stages", *(["gate"] if gates else [])]
            for path in paths:
                say(f"batch {b}: resident memory of the {path} path")
                memory.setdefault(str(b), {})[path] = path_memory_mib(
                    rt.bundle.path, path, b, policy=path_policy(path, m), backend=str(rt.backend_info["backend"]),
                    options=backend_options)
    return Profile(
        device=dev.name,
        bundle=ProfiledBundle(model=m.model_name, fingerprint=m.fingerprint, target=m.target, removed=m.removed,
                              exits=tuple(exits)),
        backend=to_json(rt.backend_info), host=describe_host().to_dict(),
        energy=to_json({**meter.describe(), "unavailable": unavailable}),
        memory=Memory(peak_rss_mb=_peak_rss_mb(), peak_rss_before_mb=rss_before, paths=memory),
        settings=to_json(settings), overhead=overhead,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), batches=out, stability=stability,
        gate=gate,
    )
