"""The user's journey end to end: the README's main command, the examples, bundle evaluation, the zoo.

The quickstart runs once, exactly as the README has it (default settings, digits); the examples
then run on its bundle as a user would run them, with torch hidden where the device has none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, prefix: str = "", timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``edgeskip ARGS`` in a fresh process (``prefix``: code run first, e.g. the torch blocker)."""
    code = prefix + "import sys; from edgeskip.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())


def example(name: str, *args: str, prefix: str = "") -> subprocess.CompletedProcess[str]:
    script = REPO / "examples" / name
    code = prefix + f"import runpy, sys; sys.argv = [{str(script)!r}, *sys.argv[1:]]; " \
                    f"runpy.run_path({str(script)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=900,
                          cwd=tempfile.gettempdir())


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``edgeskip quickstart`` with the README's defaults."""
    out = tmp_path_factory.mktemp("journey") / "edgeskip-quickstart"
    start = time.perf_counter()
    proc = run("quickstart", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "proc": proc, "seconds": time.perf_counter() - start,
            "report": json.loads((out / "quickstart.json").read_text())}


@pytest.mark.slow
def test_quickstart_runs_the_whole_journey(quickstart: dict[str, Any]) -> None:
    from edgeskip.bundle import Bundle
    from edgeskip.runtimes import Runtime

    r, proc = quickstart["report"], quickstart["proc"]
    print(f"quickstart wall time: {quickstart['seconds']:.1f} s; stages {r['seconds']}")
    for k, stage in enumerate(("train", "calibrate", "export", "profile", "search", "select", "run"), 1):
        assert f"[{k}/7] {stage}:" in proc.stderr and f"[{k}/7] {stage} done in" in proc.stderr
    for f in r["files"].values():
        assert Path(f).is_file() or Path(f).is_dir(), f
    assert "selected / static: latency" in proc.stdout and "Paths of the selected configuration" in proc.stdout
    assert (quickstart["out"] / "report.md").read_text().strip() == proc.stdout.strip()
    run_ = r["run"]
    assert run_["static"]["accuracy"] > 0.85, run_  # 30 epochs on digits
    assert sum(n for _, n in run_["paths"]) == run_["images"] == r["held_out_images"]
    assert [n for _, n in run_["paths"]] == sorted((n for _, n in run_["paths"]), reverse=True)
    assert r["train"]["checkpoint"].endswith(f"epoch-{r['train']['best_epoch']:04d}")  # the best epoch ships
    # the selection is the bundle's default: a plain Runtime runs it
    bundle = Bundle.open(r["files"]["bundle"])
    assert bundle.manifest.default_config is not None
    assert list(bundle.manifest.default_config.thresholds) == r["select"]["thresholds"]  # type: ignore[union-attr,arg-type]
    with Runtime(bundle) as rt:
        assert rt.policy.name == "default" and rt.policy.layers == tuple(r["select"]["thresholds"])


@pytest.mark.slow
def test_bundle_evaluation_reproduces_the_quickstart_without_torch(quickstart: dict[str, Any],
                                                                   torch_blocker: str) -> None:
    r = quickstart["report"]
    proc = run("evaluate", "--bundle", r["files"]["bundle"], "--json", prefix=torch_blocker)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    policies = {p["policy"]: p for p in got["policies"]}
    assert list(policies) == ["static", "agent", "e2cm", "agent+e2cm", "default"]
    for p in policies.values():
        assert p["images"] == 359 and 0 <= p["accuracy"] <= 1 and sum(p["paths"].values()) == 359
    assert policies["static"]["mean_layers"] == 6.0 and policies["static"]["exit_rate"] == 0.0
    # the quickstart ran its held-out images (the second half of each test class) one at a time
    from edgeskip.data import load_digits
    from edgeskip.runtimes.evaluate import evaluate_bundle

    held = load_digits().test.halves()[1]
    batched = {x.policy: x for x in evaluate_bundle(r["files"]["bundle"], held.images, held.labels,
                                                    ["static", "default"])}
    assert abs(batched["static"].accuracy - r["run"]["static"]["accuracy"]) <= 1 / len(held)
    assert abs(batched["default"].accuracy - r["run"]["selected"]["accuracy"]) <= 1 / len(held)
    text = run("evaluate", "--bundle", r["files"]["bundle"], "--policy", "static,agent")
    assert text.returncode == 0 and "agent:" in text.stdout and "distinct paths" in text.stdout
    bad = run("evaluate", "--bundle", r["files"]["bundle"], "--policy", "warp")
    assert bad.returncode == 2 and "policy warp is not available" in bad.stderr


@pytest.mark.slow
def test_on_device_app_switches_on_low_battery_without_torch(quickstart: dict[str, Any], torch_blocker: str,
                                                             tmp_path: Path) -> None:
    from PIL import Image

    from edgeskip.data import load_digits

    held = load_digits().test.halves()[1]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(held.images[i, ..., 0]).save(folder / f"{i:03d}.png")
    np.save(folder / "040.npy", held.images[40])  # an app may hand over arrays too
    proc = example("on_device_app.py", "--bundle", quickstart["report"]["files"]["bundle"], "--images", str(folder),
                   "--battery-calls", "20", prefix=torch_blocker)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    per_image = [line for line in lines if line.startswith(("0", "1", "2", "3", "4")) and " ms " in line]
    assert len(per_image) == 41
    switched = [i for i, line in enumerate(lines) if line.startswith("-- battery below 30%: switched")]
    assert len(switched) == 1 and "41 images" in lines[-1] and "switched to the low-battery" in lines[-1]
    labels = [line.split()[1] for line in per_image]
    assert sum(lab == str(int(y)) for lab, y in zip(labels, held.labels[:41], strict=True)) > 10


@pytest.mark.slow
def test_pick_by_budget_over_two_measured_devices(quickstart: dict[str, Any], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(quickstart["report"]["files"]["bundle"], tmp_path / "bundle"))
    proc = example("pick_by_budget.py", "--bundle", str(bundle), "--profile-here", "--quick",
                   "--budgets", "0.1,0.3,1,100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (bundle / "pareto" / "devices.png").stat().st_size > 10_000
    one = json.loads((bundle / "profiles" / "cpu-1thread.json").read_text())
    assert one["device"] == "cpu-1thread" and "1 thread" in one["backend"]["thread_pool"]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:9].strip()[:1].isdigit()}
    assert "100.000" in rows and rows["100.000"].count("%") == 2  # a generous budget fits on both devices
    assert "cpu-1thread" in proc.stdout


@pytest.mark.slow
def test_bring_your_own_timm_deit_and_image_folder(tmp_path: Path, cifar10_if_here: Path | None) -> None:
    """examples/bring_your_own.py: a timm DeiT-tiny state dict and a folder of 72x72 JPEGs (CIFAR-10 where the
    copy is here, else the digits) through train, calibrate, export, profile, search, select, then a torch-free
    Runtime."""
    from edgeskip.bundle import Bundle

    cifar = cifar10_if_here
    out = tmp_path / "byo"
    proc = example("bring_your_own.py", "--out", str(out), *(("--cifar", str(cifar)) if cifar else ()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for command in ("train", "calibrate", "export", "profile", "search", "select"):
        assert f"$ edgeskip {command} " in proc.stderr
    device = json.loads((out / "device.json").read_text())
    assert device["images"] == 160 and device["torch_loaded"] is False
    assert device["accuracy"] > 0.35  # four classes: chance is 0.25
    m = Bundle.open(out / "bundle").manifest
    assert m.model_name == "timm:deit_tiny_distilled_patch16_224" and m.dataset == "folder"
    assert m.config.distilled and m.config.head_tokens == "cls+dist" and m.config.image_size == 64
    assert len(m.classes) == 4 and m.default_config is not None and m.fidelity is not None
    assert max(m.fidelity.onnx.values()) <= 1e-4


def test_halves_and_take_split_per_class() -> None:
    from edgeskip.data import load_digits

    test = load_digits().test
    first, second = test.halves()
    assert len(first) + len(second) == len(test)
    assert (np.bincount(first.labels) + np.bincount(second.labels) == np.bincount(test.labels)).all()
    assert (first.images == test.per_class(len(first) // 10).images).all()  # the first of each class
    counts = np.bincount(first.labels, minlength=10)
    assert (counts == counts[0]).all()
    some = second.take(25)
    assert len(some) == 25 and np.bincount(some.labels, minlength=10).max() == 3


@pytest.mark.slow
@pytest.mark.cifar10
def test_quickstart_on_cifar10(cifar10_tarball: Path, tmp_path: Path) -> None:
    proc = run("quickstart", "--dataset", "cifar10", "--data", str(cifar10_tarball), "--model", "vit-tiny",
               "--limit-per-class", "60", "--epochs", "1", "--out", str(tmp_path / "qs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert r["dataset"] == "cifar10" and r["model"] == "vit-tiny" and r["train_images"] == 600
    assert r["held_out_images"] == 300 and "cifar10 images that chose nothing" in proc.stdout


def test_pretrained_needs_a_zoo_entry(tmp_path: Path) -> None:
    proc = run("export", "--model", "vit7", "--pretrained", "cifar10", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "no pretrained vit7 on 'cifar10' in the model zoo; shipped: vit9" in proc.stderr
    both = run("export", "--model", "vit9", "--pretrained", "cifar10", "--checkpoint", "x", "--out", str(tmp_path / "b"))
    assert both.returncode == 2 and "not both" in both.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.cifar10
def test_zoo_model_exports_for_jetson_and_reproduces_its_report(cifar10_tarball: Path, tmp_path: Path) -> None:
    from edgeskip.bundle import Bundle
    from edgeskip.data import load_cifar10
    from edgeskip.runtimes.evaluate import evaluate_bundle
    from edgeskip.zoo import pretrained

    entry = pretrained("vit9", "cifar10")
    report = entry.report()
    out = tmp_path / "vit9-jetson"
    proc = run("export", "--model", "vit9", "--pretrained", "cifar10", "--target", "jetson", "--out", str(out),
               "--data", str(cifar10_tarball))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = Bundle.open(out).manifest
    assert not m.untrained and m.agents is not None and m.e2cm is not None and m.tensorrt
    test = load_cifar10(cifar10_tarball).test
    results = evaluate_bundle(out, test.images, test.labels, batch_size=128)
    shipped = {p["policy"]: p for p in report["runtime_test"]}
    for r in results:  # the report's figures, reproduced on the 10,000 test images
        assert abs(r.accuracy - shipped[r.policy]["accuracy"]) <= 0.002, (r.policy, r.accuracy, shipped[r.policy])
        assert abs(r.mean_layers - shipped[r.policy]["mean_layers"]) <= 0.01
