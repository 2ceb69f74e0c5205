"""An on-device application: classify images with edgeskip.Runtime, and save battery when it runs low.

    python examples/on_device_app.py --bundle edgeskip-quickstart/bundle --images DIR
    python examples/on_device_app.py --bundle BUNDLE --camera 0          # needs opencv-python

The loop reads every image of a folder (PNG/JPEG, or .npy uint8 arrays), or frames of a camera,
and prints per image the label, the latency and how many layers ran. It starts with the bundle's
default configuration (the one ``edgeskip select`` picked for a latency budget). A simulated
battery drains by the energy the device profile predicts per call; when it falls below
``--low-battery`` percent the app switches, without reloading anything, to the most accurate
Pareto configuration within ``--saving`` of the current configuration's predicted latency.

Only ``edgeskip`` (torch-free), numpy and Pillow are needed on the device.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import edgeskip
from edgeskip.front import NothingFits, ParetoFront, ParetoPoint, choose, load_front, pareto_path
from edgeskip.runtimes import Runtime

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".npy"}


def folder_images(folder: Path, channels: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 HWC image) for every image file of ``folder``, in name order."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    for path in files:
        if path.suffix.lower() == ".npy":
            yield path.name, np.load(path, allow_pickle=False)
            continue
        with Image.open(path) as im:
            yield path.name, np.asarray(im.convert("L" if channels == 1 else "RGB"))


def camera_frames(index: int, limit: int) -> Iterator[tuple[str, np.ndarray]]:
    """Frames of camera ``index`` as RGB uint8 (OpenCV); the Runtime resizes them to the model's input."""
    try:
        import cv2
    except ImportError:
        raise SystemExit("--camera needs OpenCV: pip install opencv-python") from None
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise SystemExit(f"camera {index} cannot be opened")
    try:
        for i in range(limit):
            ok, frame = cap.read()
            if not ok:
                break
            yield f"frame-{i:05d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def cheaper(front: ParetoFront, current_ms: float, saving: float) -> ParetoPoint:
    """The most accurate point within ``saving`` of ``current_ms`` (the cheapest point if none is)."""
    try:
        return choose(front, budget_ms=current_ms * saving).point
    except NothingFits:
        return min(front.points, key=lambda p: p.cost('latency_ms'))


def starting_point(rt: Runtime, front: ParetoFront) -> ParetoPoint:
    """The bundle's default configuration (what ``edgeskip select`` wrote) as a point of the front; when the
    front was searched again since, the point with the same genes, else the default itself."""
    default = rt.manifest.default_config
    if default is None:
        return max(front.points, key=lambda p: p.accuracy)
    for p in front.points:
        if p.thresholds == default.thresholds and (p.exit_thresholds is None or p.exit_thresholds == default.exit_thresholds):
            return p
    return ParetoPoint(genes=(), thresholds=default.thresholds or (), exit_thresholds=default.exit_thresholds,
                       accuracy=default.accuracy, latency_ms=default.predicted.latency_ms,
                       energy_mj=default.predicted.energy_mj, executed_layers=float("nan"), exit_rate=float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle with a cpu profile and Pareto front (edgeskip quickstart)")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images to classify")
    source.add_argument("--camera", type=int, help="camera index (OpenCV)")
    ap.add_argument("--frames", type=int, default=300, help="camera frames to classify (default: 300)")
    ap.add_argument("--device", default="cpu", help="device whose Pareto front to use (default: cpu)")
    ap.add_argument("--battery-calls", type=float, default=60.0,
                    help="simulated battery capacity in calls of the starting configuration (default: 60)")
    ap.add_argument("--low-battery", type=float, default=30.0, help="switch below this battery percentage")
    ap.add_argument("--saving", type=float, default=0.6,
                    help="low-battery configuration: within this share of the current predicted latency (default: 0.6)")
    args = ap.parse_args(argv)

    try:
        return run(args)
    except edgeskip.EdgeskipError as exc:  # a bad bundle, a missing front, an unreadable image: one line
        raise SystemExit(f"on_device_app: error: {exc}") from None


def run(args: argparse.Namespace) -> int:
    rt = Runtime(args.bundle)  # policy "auto": the configuration edgeskip select wrote
    front = load_front(pareto_path(rt.bundle, args.device), fingerprint=rt.manifest.fingerprint, device=args.device)
    current = starting_point(rt, front)
    rt.set_policy(current.policy, path=current.path)  # on the execution path its search predicted
    per_call = max(current.cost('energy_mj'), 1e-9)
    capacity = args.battery_calls * per_call
    battery, saving = capacity, False
    classes = rt.manifest.classes
    print(f"{rt.manifest.model_name} on {args.device}: starting at {100 * current.accuracy:.1f}% accuracy, "
          f"{current.cost('latency_ms'):.3f} ms predicted per image; "
          f"battery {capacity:.1f} mJ (simulated; energy per call from the profile: {front.energy_source})")
    frames = folder_images(args.images, rt.input_spec.channels) if args.images else camera_frames(args.camera,
                                                                                                   args.frames)
    count = 0
    for name, image in frames:
        out = rt(image)
        battery = max(0.0, battery - max(current.cost('energy_mj'), 1e-9))
        level = 100 * battery / capacity
        count += 1
        print(f"{name:<24} {classes[int(out.labels[0])]:<12} {out.latency_ms:7.3f} ms  "
              f"{int(out.executed[0].sum())}/{rt.depth} layers{'  exit' if out.exit_layer[0] >= 0 else ''}  "
              f"battery {level:5.1f}%")
        if not saving and level < args.low_battery:
            cheap = cheaper(front, current.cost('latency_ms'), args.saving)
            rt.set_policy(cheap.policy, path=cheap.path)  # no reload: the same sessions, another configuration
            print(f"-- battery below {args.low_battery:g}%: switched to {100 * cheap.accuracy:.1f}% accuracy at "
                  f"{cheap.cost('latency_ms'):.3f} ms predicted ({cheap.executed_layers:.2f} layers) from "
                  f"{current.cost('latency_ms'):.3f} ms")
            current, saving = cheap, True
    stats = rt.stats()
    if count == 0:
        print("no images were classified")
    else:
        print(f"{count} images; {stats.mean_executed_layers:.2f} layers per image on average; latency per image "
              f"p50 {stats.latency_ms['p50']:.3f} ms, p90 {stats.latency_ms['p90']:.3f} ms; "
              f"{'switched' if saving else 'never switched'} to the low-battery configuration")
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
