"""``edgeskip bench BUNDLE``: the runtime's speed on this machine, as ratios measured side by side.

Every figure compares variants run in the same process, interleaved round by round (each round
runs every variant once, in a rotating order), so a slow phase of a noisy machine hits all of
them alike. A ratio is the median over rounds of the per-round ratio; latencies are the median
and p90 over the rounds. Warm-up and round counts are reported with the figures.

1. ``loop``: the per-stage loop with every layer executing (its decision-free layers fused into one
   call where the backend fuses, as the Runtime runs them; ``unfused``: one call per stage) against
   the monolithic ONNX model (a bare onnxruntime session on the same preprocessed input), batch 1;
   also the Runtime's ``static`` policy as shipped (which runs the monolithic model in one call).
2. ``gate``: the ONNX gate graph with every layer executing against the monolithic model.
3. ``skip``: a fixed pattern (3 layers skipped) at batch 1: speed-up over the static policy
   against the compute-proportional ideal built from each stage's own time measured here.
4. ``agents``: the agent policy on the given images (real CIFAR-10 test images with ``--data``)
   at batch 1 and 64: speed-up over static against the ideal implied by the executed layers.
5. ``torch``: the same agent workload in PyTorch eager with per-sample gather/scatter
   (``SkipViT``, the thesis's implementation) against edgeskip (only where torch is installed).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle, stage_name
from edgeskip.errors import BackendUnavailableError, ConfigError
from edgeskip.data import load_dataset_for
from edgeskip.host import describe_host
from edgeskip.policy import Policy, SkipConfig
from edgeskip.runtimes.inputs import prepare
from edgeskip.runtimes.ort_backend import SessionRunner, session
from edgeskip.runtimes.runtime import Runtime
from edgeskip.runtimes.torch_backend import reference_model  # torch itself is imported only when it runs

__all__ = ["BenchConfig", "run_bench", "format_table", "skip_pattern", "interleaved"]

log = logging.getLogger(__name__)

SETTLE_S = 0.5  # a pause between PyTorch and onnxruntime calls, so neither framework's spinning workers hit the other
TARGETS = {"loop": 1.05, "gate": 1.10, "skip": 0.95, "agents_b1": 0.95, "agents_b64": 0.90}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    bundle: str
    data: str | None = None
    images: int = 64  # inputs per batch-1 round of the agent workload
    batch: int = 64
    batch_images: int = 256  # inputs per batch-64 round
    rounds: int = 50  # rounds for batch-1 latencies
    workload_rounds: int = 7  # rounds over the image sets
    warmup: int = 10
    threads: int | None = None
    checkpoint: str | None = None  # for the torch comparison, when the manifest's path is not here
    torch: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "batch", "batch_images", "rounds", "workload_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")


def interleaved(variants: Mapping[str, Callable[[], Any]], rounds: int, warmup: int,
                settle_s: float = 0.0, prime: Mapping[str, Callable[[], Any]] | None = None) -> dict[
                    str, npt.NDArray[np.float64]]:
    """Seconds per call of each variant over ``rounds`` rounds, the order rotating every round.

    ``settle_s``: a pause before each timed call, for variants from different frameworks whose
    idle worker threads keep spinning for a while after a call (PyTorch's OpenMP pool does) and
    would otherwise steal the cores from the next variant. ``prime``: an untimed call right before a
    variant's timed one (its weights back in the caches after the other variants evicted them, as in an
    application that runs one configuration call after call).
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            if settle_s:
                time.sleep(settle_s)
            if prime is not None:
                prime[name]()
            start = time.perf_counter()
            variants[name]()
            times[name][r] = time.perf_counter() - start
    return times


def _lat(t: npt.NDArray[np.float64], per: int = 1) -> dict[str, float]:
    return {"median_ms": float(np.median(t)) * 1e3 / per, "p90_ms": float(np.percentile(t, 90)) * 1e3 / per}


def _ratio(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Median over rounds of a / b."""
    return float(np.median(a / b))


def skip_pattern(depth: int, removed: Sequence[int], n: int = 3) -> list[int]:
    """``n`` of the bundle's layers spread evenly over the model, e.g. 2, 5, 8 of 9."""
    kept = [j for j in range(depth) if j not in removed]
    if len(kept) <= n:
        raise ConfigError(f"the bundle has {len(kept)} layers; skipping {n} needs more")
    step = len(kept) / n
    return [kept[min(len(kept) - 1, int(round(step * (k + 1))) - 1)] for k in range(n)]


def _stage_times(rt: Runtime, x: npt.NDArray[np.float32], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds of each stage alone on its real input (every layer executing), interleaved."""
    backend = rt.backend
    assert backend is not None
    inputs, tokens = {"embed": x}, backend.run("embed", x)
    for j in range(rt.depth):
        if j in rt.manifest.removed:
            continue
        inputs[stage_name(j)] = tokens
        tokens = backend.run(stage_name(j), tokens)
    inputs["head"] = tokens
    times = interleaved({s: functools.partial(backend.run, s, inputs[s]) for s in inputs}, rounds, warmup)
    return {s: float(np.median(t)) for s, t in times.items()}


def _ideal(stage_s: Mapping[str, float], fractions: Mapping[int, float]) -> float:
    """Compute-proportional speed-up: all stages over embed + head + each layer x the share that ran it."""
    layers = {int(s.split("_")[1]): t for s, t in stage_s.items() if s.startswith("layer_")}
    full = sum(stage_s.values())
    dyn = stage_s["embed"] + stage_s["head"] + sum(t * fractions.get(j, 0.0) for j, t in layers.items())
    return full / dyn


def _workload(cfg: BenchConfig, rt: Runtime) -> tuple[npt.NDArray[Any], str]:
    spec = rt.input_spec
    n = max(cfg.images, cfg.batch_images)
    if cfg.data is not None:
        test = load_dataset_for(rt.manifest.dataset, cfg.data, rt.manifest.config, rt.manifest.classes).test
        if len(test.images) < n:
            raise ConfigError(f"--data holds {len(test.images)} test images; the benchmark needs {n}")
        return test.images[:n], f"{rt.manifest.dataset} test images 0..{n - 1}"
    log.warning("no --data: the agent workload runs on random images, so its skipping is not representative")
    rng = np.random.default_rng(0)
    shape = (n, spec.image_size, spec.image_size, spec.channels)
    return rng.integers(0, 256, shape, dtype=np.uint8), f"{n} random uint8 images (no --data)"


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure everything the bundle allows; returns a JSON-ready report."""
    say = progress or (lambda _msg: None)
    bundle = Bundle.open(cfg.bundle)
    m = bundle.manifest
    opts: dict[str, Any] = {} if cfg.threads is None else {"threads": cfg.threads}
    rt = Runtime(bundle, policy="static", **opts)  # the static policy as shipped: monolithic when it can
    loop = Runtime(bundle, policy="static", whole_static=False, **opts)  # the stages, decision-free layers fused
    unfused = Runtime(bundle, policy="static", whole_static=False, fuse=False, **opts)  # one call per stage
    mono = SessionRunner(session(bundle.read(m.monolithic.file), threads=cfg.threads, thread_pool="global")[0]) \
        if m.monolithic else None
    images, images_what = _workload(cfg, rt)
    x1 = _prepared(rt, images[:1])
    report: dict[str, Any] = {
        "bundle": str(bundle.path), "model": m.model_name, "untrained": m.untrained, "images": images_what,
        "runtime": {k: v for k, v in loop.info().items() if k not in ("policy", "bundle")},
        "method": {"rounds": cfg.rounds, "warmup": cfg.warmup, "workload_rounds": cfg.workload_rounds,
                   "ratio": "median over interleaved rounds of the per-round ratio"},
        "targets": TARGETS, "figures": {}, "skipped": {},
    }
    report["host"] = describe_host().to_dict()
    figs = report["figures"]

    say("1/5 per-stage loop vs monolithic, batch 1")
    variants: dict[str, Callable[[], Any]] = {"loop": lambda: loop(x1), "unfused": lambda: unfused(x1),
                                              "static": lambda: rt(x1)}
    if mono is not None:
        variants["monolithic"] = lambda: mono(x1)
    t = interleaved(variants, cfg.rounds, cfg.warmup)
    if mono is not None:
        figs["loop"] = {"ratio": _ratio(t["loop"], t["monolithic"]), "runtime_static_ratio": _ratio(t["static"], t["monolithic"]),
                        "unfused_ratio": _ratio(t["unfused"], t["monolithic"]), "fused": [list(s) for s in loop.fused],
                        "loop": _lat(t["loop"]), "unfused": _lat(t["unfused"]), "static": _lat(t["static"]),
                        "monolithic": _lat(t["monolithic"])}
    else:
        report["skipped"]["loop"] = "the bundle has no monolithic model"

    say("2/5 gate graph vs monolithic, batch 1")
    if m.gate is not None and mono is not None:
        gate = Runtime(bundle, policy="static", graph="gate", **opts)
        gate_bare = gate.gate
        assert gate_bare is not None
        t = interleaved({"gate": lambda: gate_bare.run(x1), "gate_runtime": lambda: gate(x1),
                         "monolithic": lambda: mono(x1)}, cfg.rounds, cfg.warmup)
        figs["gate"] = {"ratio": _ratio(t["gate"], t["monolithic"]),
                        "runtime_ratio": _ratio(t["gate_runtime"], t["monolithic"]),
                        "gate": _lat(t["gate"]), "gate_runtime": _lat(t["gate_runtime"]), "monolithic": _lat(t["monolithic"])}
    else:
        report["skipped"]["gate"] = "the bundle has no gate graph or monolithic model"

    say("3/5 fixed skip pattern, batch 1")
    stage1 = _stage_times(loop, x1, cfg.rounds, cfg.warmup)
    skipped = skip_pattern(m.config.depth, m.removed)
    layers = [None if j in skipped or j in m.removed else 0.0 for j in range(m.config.depth)]
    skip = Runtime(bundle, policy=Policy.config(layers), **opts)
    t = interleaved({"static": lambda: rt(x1), "skip": lambda: skip(x1), "loop": lambda: loop(x1)},
                    cfg.rounds, cfg.warmup)
    fractions = {j: 0.0 if j in skipped else 1.0 for j in range(m.config.depth)}
    ideal = _ideal(stage1, fractions)
    speedup = _ratio(t["static"], t["skip"])
    figs["skip"] = {"skipped_layers": skipped, "speedup": speedup, "ideal": ideal, "fraction_of_ideal": speedup / ideal,
                    "speedup_vs_loop": _ratio(t["loop"], t["skip"]), "static": _lat(t["static"]),
                    "skip": _lat(t["skip"]), "stage_ms": {s: v * 1e3 for s, v in stage1.items()}}

    say(f"4/5 agent policy on the workload, batch 1 and batch {cfg.batch}")
    agent = Runtime(bundle, policy="agent", **opts) if m.agents is not None else None
    if agent is not None:
        figs.update(_agent_workload(cfg, rt, loop, agent, images))
    else:
        report["skipped"]["agents"] = "the bundle's model has no skip agents"

    say("5/5 PyTorch eager with per-sample gather/scatter")
    if cfg.torch and agent is not None:
        try:
            figs["torch"] = _torch_comparison(cfg, bundle, agent, images)
        except (BackendUnavailableError, ConfigError, OSError) as exc:
            report["skipped"]["torch"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - CheckpointError and friends: reported, not fatal
            report["skipped"]["torch"] = f"{type(exc).__name__}: {exc}"
    else:
        report["skipped"]["torch"] = "disabled" if not cfg.torch else "the bundle's model has no skip agents"
    return report


def _each(rt: Runtime, calls: Sequence[npt.NDArray[Any]]) -> None:
    for c in calls:
        rt(c)


def _prepared(rt: Runtime, images: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return prepare(images, rt.input_spec)


def _agent_workload(cfg: BenchConfig, static: Runtime, loop: Runtime, agent: Runtime,
                    images: npt.NDArray[Any]) -> dict[str, Any]:
    """Agent policy against the static policy as shipped (monolithic) and against the per-stage loop."""
    out: dict[str, Any] = {}
    single = _prepared(static, images[: cfg.images])
    batched = _prepared(static, images[: cfg.batch_images])
    chunks = [batched[i:i + cfg.batch] for i in range(0, len(batched), cfg.batch)]
    for key, calls, stage_input in (("agents_b1", [single[i:i + 1] for i in range(len(single))], single[:1]),
                                    (f"agents_b{cfg.batch}", chunks, chunks[0])):
        agent.reset_stats()
        for c in calls:
            agent(c)
        stats = agent.stats()
        fractions = {j: n / stats.inputs for j, n in enumerate(stats.layer_counts)}
        stage_s = _stage_times(static, stage_input, max(5, cfg.rounds // 5), max(1, cfg.warmup // 2))
        t = interleaved({"static": functools.partial(_each, static, calls), "loop": functools.partial(_each, loop, calls),
                         "agent": functools.partial(_each, agent, calls)}, cfg.workload_rounds, 1)
        ideal = _ideal(stage_s, fractions)
        speedup = _ratio(t["static"], t["agent"])
        n = sum(len(c) for c in calls)
        out[key] = {"batch": len(calls[0]), "inputs": n, "executed_fraction": stats.mean_executed_layers / agent.depth,
                    "layer_fractions": [round(fractions[j], 4) for j in range(agent.depth)],
                    "speedup": speedup, "ideal": ideal, "fraction_of_ideal": speedup / ideal,
                    "speedup_vs_loop": _ratio(t["loop"], t["agent"]),
                    "fraction_of_ideal_vs_loop": _ratio(t["loop"], t["agent"]) / ideal,
                    "static_per_input": _lat(t["static"], n), "loop_per_input": _lat(t["loop"], n),
                    "agent_per_input": _lat(t["agent"], n),
                    "top_paths": dict(list(stats.paths.items())[:5])}
    return out


def _torch_comparison(cfg: BenchConfig, bundle: Bundle, agent: Runtime, images: npt.NDArray[Any]) -> dict[str, Any]:
    """The agent workload in PyTorch eager (SkipViT: per-sample gather/scatter) against edgeskip."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("torch is not installed: the PyTorch comparison is skipped") from None
    model = reference_model(bundle, cfg.checkpoint)
    model.set_skip_config(SkipConfig(agent.manifest.agents.thresholds))  # type: ignore[union-attr]
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    single = _prepared(agent, images[: cfg.images])
    batched = _prepared(agent, images[: cfg.batch_images])
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for key, calls in (("b1", [single[i:i + 1] for i in range(len(single))]),
                       (f"b{cfg.batch}", [batched[i:i + cfg.batch] for i in range(0, len(batched), cfg.batch)])):
        tensors = [torch.from_numpy(c) for c in calls]

        def run_torch(tensors: list[Any] = tensors) -> None:
            with torch.inference_mode():
                for c in tensors:
                    model(c)

        agree = all(np.array_equal(model(tc).executed.numpy(), agent(c).executed)
                    for tc, c in zip(tensors[:4], calls[:4], strict=True))
        t = interleaved({"torch": run_torch, "edgeskip": functools.partial(_each, agent, calls)},
                        cfg.workload_rounds, 1, settle_s=SETTLE_S)
        n = sum(len(c) for c in calls)
        out[key] = {"edgeskip_over_torch": _ratio(t["edgeskip"], t["torch"]), "same_paths_first_calls": agree,
                    "torch_per_input": _lat(t["torch"], n), "edgeskip_per_input": _lat(t["edgeskip"], n)}
    return out


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a table a person reads (the JSON holds every figure)."""
    f, rows = report["figures"], []

    def row(what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((what, value, target, "" if ok is None else ("met" if ok else "MISSED")))

    if "loop" in f:
        g = f["loop"]
        row("1. per-stage loop (decision-free layers fused) / monolithic, every layer, batch 1",
            f"{g['ratio']:.3f} ({g['loop']['median_ms']:.3f} / {g['monolithic']['median_ms']:.3f} ms)", "<= 1.05",
            g["ratio"] <= TARGETS["loop"])
        row("   the loop unfused (one call per stage) / monolithic", f"{g['unfused_ratio']:.3f}")
        row("   Runtime static policy (monolithic path) / monolithic", f"{g['runtime_static_ratio']:.3f}")
    if "gate" in f:
        g = f["gate"]
        row("2. gate graph / monolithic, every layer, batch 1", f"{g['ratio']:.3f} ({g['gate']['median_ms']:.3f} ms)",
            "<= 1.10", g["ratio"] <= TARGETS["gate"])
        row("   through the Runtime (graph='gate') / monolithic", f"{g['runtime_ratio']:.3f}")
    g = f["skip"]
    row(f"3. skip layers {g['skipped_layers']}, batch 1: speed-up (ideal)", f"{g['speedup']:.3f}x ({g['ideal']:.3f}x) = "
        f"{g['fraction_of_ideal']:.3f} of ideal", ">= 0.95", g["fraction_of_ideal"] >= TARGETS["skip"])
    row("   the same against the per-stage static loop", f"{g['speedup_vs_loop']:.3f}x = "
        f"{g['speedup_vs_loop'] / g['ideal']:.3f} of ideal")
    for key in sorted(k for k in f if k.startswith("agents_b")):
        g = f[key]
        target = TARGETS["agents_b1"] if g["batch"] == 1 else TARGETS["agents_b64"]
        row(f"4. agent policy, batch {g['batch']} ({100 * g['executed_fraction']:.1f}% of layers run): speed-up (ideal)",
            f"{g['speedup']:.3f}x ({g['ideal']:.3f}x) = {g['fraction_of_ideal']:.3f} of ideal", f">= {target:.2f}",
            g["fraction_of_ideal"] >= target)
        row("   the same against the per-stage static loop", f"{g['speedup_vs_loop']:.3f}x = "
            f"{g['fraction_of_ideal_vs_loop']:.3f} of ideal")
    if "torch" in f:
        for key in sorted(k for k in f["torch"] if k.startswith("b")):
            g = f["torch"][key]
            row(f"5. edgeskip / PyTorch eager gather-scatter, agent policy, batch {key[1:]}",
                f"{g['edgeskip_over_torch']:.3f} ({g['edgeskip_per_input']['median_ms']:.3f} vs "
                f"{g['torch_per_input']['median_ms']:.3f} ms per input)")
    for key, why in report["skipped"].items():
        row(f"   {key}: skipped", why)
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    info = report["runtime"]
    head = [f"edgeskip bench {report['bundle']} ({report['model']}{', UNTRAINED weights' if report['untrained'] else ''})",
            f"backend {info.get('backend')} {info.get('onnxruntime', '')}, thread pool {info.get('thread_pool')}; "
            f"workload: {report['images']}",
            f"{report['method']['warmup']} warm-up + {report['method']['rounds']} interleaved rounds at batch 1, "
            f"{report['method']['workload_rounds']} rounds over the workloads; ratios are medians of per-round ratios", ""]
    lines = [f"{w:<{width}}  {v:<{vwidth}}  {t:<8} {s}".rstrip() for w, v, t, s in rows]
    return "\n".join(head + lines)
