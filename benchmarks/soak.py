"""Soak test: many batch-1 calls on one Runtime, the configuration switched as a device would.

The Runtime runs ``policy="agent"`` on uint8 images (a pool of random ones, cycled), and every
``--switch-every`` calls takes the next of 8 skip configurations drawn with ``--seed``. Resident
memory is sampled every 500 calls; after ``--warmup`` calls it must stay flat (the telemetry's
latency window holds the last 10,000 calls, so the default warm-up fills it). Any exception is
a failed call, counted, and the run goes on. The exit code is 1 when a call failed or memory
grew by more than ``--max-growth-mb`` (MB = 2**20 bytes throughout).

    python benchmarks/soak.py --tiny --json out/soak.json               # untrained vit-tiny, 100,000 calls
    python benchmarks/soak.py --bundle BUNDLE --inferences 5000 --warmup 1000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.policy import SkipConfig
from edgeskip.host import describe_host
from edgeskip.errors import EdgeskipError
from edgeskip.fsutil import atomic_write_json
from edgeskip.runtimes import Runtime

log = logging.getLogger("soak")

MB = 2**20
SAMPLE_EVERY = 500  # calls between two resident-memory samples
CONFIGURATIONS = 8  # distinct skip configurations in the rotation
POOL = 256  # random images, cycled
MAX_ERRORS_KEPT = 10  # failure messages kept in the report
EXPORT_TINY = """import sys
from edgeskip.exporters.export import export_bundle
from edgeskip.exporters.settings import ExportConfig
export_bundle(ExportConfig(model="vit-tiny", out=sys.argv[1], fidelity_images=4))
"""


def rss_bytes() -> int:
    """Current resident set size of this process, from /proc/self/statm (Linux only)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError) as exc:
        raise RuntimeError(f"soak.py samples resident memory from /proc/self/statm, which this system "
                           f"({platform.system()}) does not provide: run it on Linux ({exc})") from None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def draw_configurations(depth: int, removed: tuple[int, ...], count: int, seed: int) -> list[SkipConfig]:
    """``count`` distinct skip configurations: per layer a threshold in [0, 1] or None (removed, about one
    layer in six), the bundle's removed layers always None, at least one layer kept."""
    rng = np.random.default_rng(seed)
    kept = [j for j in range(depth) if j not in removed]
    if not kept:
        raise ValueError("the bundle keeps no layer")
    out: list[SkipConfig] = []
    for _ in range(1000 * count):
        thresholds: list[float | None] = [None] * depth
        for j in kept:
            thresholds[j] = None if rng.random() < 1 / 6 else round(float(rng.random()), 3)
        if all(t is None for t in thresholds):
            thresholds[kept[int(rng.integers(len(kept)))]] = 0.0
        config = SkipConfig(tuple(thresholds))
        if config not in out:
            out.append(config)
        if len(out) == count:
            return out
    raise ValueError(f"could not draw {count} distinct configurations of {len(kept)} layer(s)")


def soak(bundle: str | Path, inferences: int, switch_every: int, warmup: int, seed: int,
         progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run ``inferences`` batch-1 calls on one Runtime, switching configuration every ``switch_every``.

    ``progress`` is called with the number of calls done since its previous call. Returns the report:
    counts, failures, memory (samples and figures after ``warmup`` calls), speed and the runtime's stats.
    """
    if not 0 < warmup < inferences:
        raise ValueError(f"the warm-up ({warmup}) must be at least 1 and less than the inferences ({inferences})")
    if switch_every < 1:
        raise ValueError(f"switch_every must be at least 1, got {switch_every}")
    rt = Runtime(bundle, policy="agent")
    spec = rt.input_spec
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (POOL, spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
    configs = draw_configurations(rt.depth, tuple(rt.manifest.removed), CONFIGURATIONS, seed)
    samples: list[tuple[int, int]] = [(0, rss_bytes())]  # (calls done, RSS bytes)
    failed, failed_switches, switches = 0, 0, 0
    errors: list[str] = []
    start = time.perf_counter()
    for i in range(inferences):
        if i % switch_every == 0:
            try:
                rt.set_policy(configs[switches % len(configs)])
            except Exception as exc:  # noqa: BLE001 - every failure is counted and the soak goes on
                failed_switches += 1
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append(f"set_policy before call {i}: {type(exc).__name__}: {exc}")
            switches += 1
        try:
            rt(pool[i % POOL])
        except Exception as exc:  # noqa: BLE001 - every failure is counted and the soak goes on
            failed += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(f"call {i}: {type(exc).__name__}: {exc}")
        done = i + 1
        if done % SAMPLE_EVERY == 0 or done == warmup or done == inferences:
            samples.append((done, rss_bytes()))
            if progress is not None:
                progress(done - samples[-2][0])
    seconds = time.perf_counter() - start
    stats = rt.stats()
    at_warmup = next(rss for n, rss in samples if n == warmup)
    max_after = max(rss for n, rss in samples if n >= warmup)
    return {
        "bundle": str(bundle), "runtime": rt.info(), "host": describe_host().to_dict(),
        "python": platform.python_version(), "numpy": np.__version__, "torch_loaded": "torch" in sys.modules,
        "inferences": inferences, "batch": 1, "warmup": warmup, "switch_every": switch_every, "seed": seed,
        "switches": switches, "configurations": [list(c.thresholds) for c in configs],
        "configurations_used": min(switches, len(configs)),
        "failed_calls": failed, "failed_switches": failed_switches, "errors": errors,
        "rss_start_mb": samples[0][1] / MB, "rss_at_warmup_mb": at_warmup / MB, "rss_max_after_warmup_mb": max_after / MB,
        "rss_final_mb": samples[-1][1] / MB, "growth_mb": (max_after - at_warmup) / MB,
        "rss_samples": {"calls": [n for n, _ in samples], "rss_mb": [rss / MB for _, rss in samples]},
        "wall_s": seconds, "calls_per_s": inferences / seconds,
        "stats": {"calls": stats.calls, "inputs": stats.inputs, "layers_per_input": stats.mean_executed_layers,
                  "executed_layers": {str(k): v for k, v in stats.executed_layers.items()},
                  "layer_counts": list(stats.layer_counts), "distinct_paths": len(stats.paths),
                  "latency_ms": stats.latency_ms},
    }


def plot_rss(report: dict[str, Any], out: Path) -> Path:
    """Resident memory against calls, the warm-up shaded, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.plots import save_figure

    samples = report["rss_samples"]
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    ax.plot(samples["calls"], samples["rss_mb"], marker=".", markersize=3, label="resident memory")
    ax.axvspan(0, report["warmup"], color="grey", alpha=0.15, label=f"warm-up ({report['warmup']:,} calls)")
    ax.axhline(report["rss_at_warmup_mb"], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="calls (batch 1)", ylabel="RSS (MB = 2^20 bytes)",
           title=f"soak: {report['inferences']:,} calls, growth after warm-up {report['growth_mb']:.2f} MB, "
                 f"{report['failed_calls']} failed")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory")
    src.add_argument("--tiny", action="store_true", help="export an untrained vit-tiny bundle into a temp dir and soak it")
    p.add_argument("--inferences", type=_positive, default=100_000, help="batch-1 calls (default: 100000)")
    p.add_argument("--switch-every", type=_positive, default=1000, help="calls between configuration switches "
                                                                       "(default: 1000)")
    p.add_argument("--warmup", type=_positive, default=10_000, help="calls before the memory baseline (default: "
                                                                   "10000, the telemetry's latency window)")
    p.add_argument("--max-growth-mb", type=float, default=2.0, help="allowed RSS growth after warm-up (default: 2.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and configurations (default: 0)")
    p.add_argument("--json", default=None, help="write the report here, and an RSS plot beside it (.png)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress lines")
    return p


def _progress(total: int, quiet: bool) -> tuple[Callable[[int], Any], Callable[[], None]]:
    """A tqdm bar when tqdm is importable, else a log line every tenth of the run; and its closer."""
    if quiet:
        return lambda n: None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        done = [0]

        def step(n: int) -> None:
            before, done[0] = done[0], done[0] + n
            if before * 10 // total != done[0] * 10 // total:
                log.info("%d / %d calls", done[0], total)

        return step, lambda: None
    bar = tqdm(total=total, desc="soak", unit="call", smoothing=0.1)
    return bar.update, bar.close


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.warmup >= args.inferences:
        log.error("--warmup (%d) must be less than --inferences (%d)", args.warmup, args.inferences)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgeskip-soak-") as tmp:
        bundle = args.bundle
        if args.tiny:
            bundle = str(Path(tmp) / "vit-tiny")
            log.info("exporting an untrained vit-tiny bundle to %s (in a child process: torch stays out of this one)",
                     bundle)
            if subprocess.run([sys.executable, "-c", EXPORT_TINY, bundle], check=False).returncode != 0:
                log.error("soak: exporting the vit-tiny bundle failed (see above)")
                return 2
        log.info("soak: %d calls at batch 1 on %s, a new configuration every %d, warm-up %d", args.inferences, bundle,
                 args.switch_every, args.warmup)
        step, close = _progress(args.inferences, args.quiet)
        try:
            report = soak(bundle, args.inferences, args.switch_every, args.warmup, args.seed, step)
        except (EdgeskipError, RuntimeError, ValueError) as exc:
            log.error("soak: %s", exc)
            return 2
        finally:
            close()
    report["tiny"] = args.tiny
    report["max_growth_mb"] = args.max_growth_mb
    report["passed"] = (report["failed_calls"] == 0 and report["failed_switches"] == 0
                        and report["growth_mb"] <= args.max_growth_mb)
    log.info("%d calls in %.1f s (%.0f calls/s), %d failed (+%d failed switches); RSS %.1f MB at warm-up end, "
             "max %.1f MB after, final %.1f MB: growth %.2f MB (allowed %.2f); %.2f layers per input",
             report["inferences"], report["wall_s"], report["calls_per_s"], report["failed_calls"],
             report["failed_switches"], report["rss_at_warmup_mb"], report["rss_max_after_warmup_mb"],
             report["rss_final_mb"], report["growth_mb"], args.max_growth_mb, report["stats"]["layers_per_input"])
    for line in report["errors"]:
        log.error("  %s", line)
    if args.json:
        out = Path(args.json)
        atomic_write_json(out, report)
        try:
            png = plot_rss(report, out.with_suffix(".png"))
        except ImportError:
            log.warning("matplotlib is not installed: no RSS plot (pip install matplotlib)")
        else:
            log.info("wrote %s and %s", out, png)
    if not report["passed"]:
        log.error("soak FAILED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
