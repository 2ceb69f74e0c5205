"""Pick a configuration by latency budget, from Python, for every device a bundle has a profile of.

    python examples/pick_by_budget.py --bundle edgeskip-quickstart/bundle --budgets 0.2,0.3,0.5
    python examples/pick_by_budget.py --bundle BUNDLE --profile-here      # measure this machine twice first

A bundle collects one profile per device under ``profiles/<device>.json`` (``edgeskip profile
--device D`` on each device, then copy the file back). For each device this script searches the
Pareto front once (NSGA-II, accuracy on calibration images against the latency the device's
profile predicts; kept in ``pareto/<device>.json``), then prints, for each budget, the most
accurate configuration that fits on that device, and draws all fronts in one picture.

``--profile-here`` measures this machine as two devices: ``cpu`` (all cores) and
``cpu-1thread`` (onnxruntime limited to one thread, the stand-in for a single-core board), so the
script has two real profiles to compare without other hardware.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import edgeskip
from edgeskip.bundle import Bundle
from edgeskip.data import load_dataset_for
from edgeskip.devices import Device, get_device, register_device
from edgeskip.devices.profiler import ProfileSettings, profile_bundle
from edgeskip.front import NothingFits, ParetoFront, choose, load_front, pareto_path
from edgeskip.profile import load_profile, profile_path
from edgeskip.search.bundle import search_and_save
from edgeskip.search.settings import BundleSearchSettings

ONE_THREAD = "cpu-1thread"


def register_one_thread_cpu() -> Device:
    """This CPU with onnxruntime on one thread: a second, really measured device profile."""
    try:
        return get_device(ONE_THREAD)
    except edgeskip.EdgeskipError:
        import dataclasses

        cpu = get_device("cpu")
        return register_device(dataclasses.replace(cpu, name=ONE_THREAD, description="this CPU, one onnxruntime thread"))


def _profile_one(bundle: str, device: str, threads: int | None, quick: bool) -> str:
    register_one_thread_cpu()  # this runs in a fresh process
    settings = ProfileSettings.quick((1,)) if quick else ProfileSettings((1,))
    options: dict[str, Any] = {} if threads is None else {"threads": threads}
    return str(profile_bundle(bundle, device, settings=settings, **options).save(bundle))


def profile_here(bundle: Bundle, quick: bool) -> None:
    """Profile this machine as ``cpu`` and ``cpu-1thread``, each in a fresh process: onnxruntime sizes its
    thread pool once per process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for device, threads in (("cpu", None), (ONE_THREAD, 1)):
        print(f"profiling {device} ...", flush=True)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            print(f"  {pool.submit(_profile_one, str(bundle.path), device, threads, quick).result()}")


def front_for(bundle: Bundle, device: str, data: str | None, images: int) -> ParetoFront:
    """The device's front: read it when it was searched for the current profile, else search now."""
    path = pareto_path(bundle, device)
    profile = load_profile(profile_path(bundle, device), fingerprint=bundle.manifest.fingerprint, device=device)
    if path.is_file():
        front = load_front(path, fingerprint=bundle.manifest.fingerprint, device=device)
        if front.meta.get("profile_created_utc") == profile.created_utc:
            return front
    print(f"searching the front for {device} ...", flush=True)
    m = bundle.manifest
    pool = load_dataset_for(m.dataset, data, m.config, m.classes).test.halves()[0].take(images)
    front, _, _ = search_and_save(bundle.path, pool.images, pool.labels, profile,
                                  BundleSearchSettings(pop_size=16, generations=12),
                                  calibration=f"{len(pool)} images from the test-half split")
    return front


def plot(fronts: dict[str, ParetoFront], budgets: list[float], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for device, front in fronts.items():
        pts = sorted(front.points, key=lambda p: p.cost('latency_ms'))
        line = ax.step([p.cost('latency_ms') for p in pts], [100 * p.accuracy for p in pts], where="post", marker="o",
                       markersize=3, label=f"{device} (static {front.static.cost('latency_ms'):.3f} ms)")[0]
        ax.plot(front.static.cost('latency_ms'), 100 * front.static.accuracy, "*", markersize=12, color=line.get_color())
    for b in budgets:
        ax.axvline(b, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("predicted latency per image (ms, batch 1)")
    ax.set_ylabel("accuracy on calibration images (%)")
    ax.set_title("Pareto fronts per device; dotted: budgets; star: static model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle directory")
    ap.add_argument("--budgets", default=None, help="comma-separated latency budgets in ms "
                                                    "(default: 40%%, 60%%, 80%%, 100%% of the first device's static model)")
    ap.add_argument("--profile-here", action="store_true", help="measure this machine as cpu and cpu-1thread first")
    ap.add_argument("--quick", action="store_true", help="with --profile-here: a quick profile")
    ap.add_argument("--data", default=None, help="dataset copy for the search's calibration images (digits: none)")
    ap.add_argument("--images", type=int, default=400, help="calibration images for a search (default: 400)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (edgeskip.EdgeskipError, ValueError) as exc:  # a bad bundle or profile, a budget that is no number
        raise SystemExit(f"pick_by_budget: error: {exc}") from None


def run(args: argparse.Namespace) -> int:
    register_one_thread_cpu()
    bundle = Bundle.open(args.bundle)
    if args.profile_here:  # replaces the bundle's cpu and cpu-1thread profiles (their fronts are searched again)
        profile_here(bundle, args.quick)
    devices = sorted(p.stem for p in (bundle.path / "profiles").glob("*.json"))
    if not devices:
        raise SystemExit(f"{bundle.path} has no device profiles: run edgeskip profile, or pass --profile-here")
    fronts = {d: front_for(bundle, d, args.data, args.images) for d in devices}
    first = fronts[devices[0]]
    budgets = ([float(b) for b in args.budgets.split(",")] if args.budgets else
               [round(s * first.static.cost('latency_ms'), 3) for s in (0.4, 0.6, 0.8, 1.0)])

    print(f"\n{bundle.manifest.model_name}: the most accurate configuration within each budget "
          "(accuracy / predicted ms / layers per image)")
    print(f"{'budget':>9}" + "".join(f"{d:>28}" for d in devices))
    for b in budgets:
        cells = []
        for d in devices:
            try:
                p = choose(fronts[d], budget_ms=b).point
                cells.append(f"{100 * p.accuracy:5.1f}% {p.cost('latency_ms'):7.3f} ms {p.executed_layers:4.1f} L")
            except NothingFits:
                cells.append("nothing fits")
        print(f"{b:>6.3f} ms" + "".join(f"{c:>28}" for c in cells))
    print(f"{'static':>9}" + "".join(f"{100 * fronts[d].static.accuracy:5.1f}% {fronts[d].static.cost('latency_ms'):7.3f} ms"
                                      f"{fronts[d].static.executed_layers:5.1f} L".rjust(28) for d in devices))
    png = plot(fronts, budgets, bundle.path / "pareto" / "devices.png")
    print(f"\nfronts: {', '.join(str(pareto_path(bundle, d)) for d in devices)}; picture: {png}")
    print("apply one on the device: edgeskip select --bundle BUNDLE --device D --budget-ms B, or "
          "Runtime(BUNDLE).select(budget_ms=B, device=D)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
