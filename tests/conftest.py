"""Shared fixtures: a private dataset cache, the CIFAR-10 tarball, and small trained models on the digits every
install has (what most tests run on: only CIFAR-10-specific figures need the archive)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Prepended to a subprocess's code: any import of torch fails there, as on an edge device.
TORCH_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden for this test")
sys.meta_path.insert(0, Block())
"""


def cifar10_source() -> Path | None:
    """``$EDGESKIP_CIFAR10`` or ../shared/data/cifar10-images.tar.gz beside the repository."""
    env = os.environ.get("EDGESKIP_CIFAR10")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "cifar10-images.tar.gz")
    return next((p for p in candidates if p.exists()), None)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests' decoded-dataset cache and the last bundle written out of the user's ~/.cache and
    ~/.local/state, and progress bars as a user's terminal would decide them (not forced either way)."""
    names = ("EDGESKIP_CACHE_DIR", "EDGESKIP_STATE_DIR", "EDGESKIP_PROGRESS")
    old = {name: os.environ.get(name) for name in names}
    os.environ["EDGESKIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeskip-cache"))
    os.environ["EDGESKIP_STATE_DIR"] = str(tmp_path_factory.mktemp("edgeskip-state"))
    os.environ.pop("EDGESKIP_PROGRESS", None)
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def no_bundle_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder and no bundle remembered: a command without a bundle has nothing to fall back on."""
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("EDGESKIP_STATE_DIR", str(tmp_path / "state"))
    return here


@pytest.fixture(scope="session")
def cifar10_if_here() -> Path | None:
    """The CIFAR-10 copy where there is one, else None (for tests that fall back to the digits)."""
    return cifar10_source()


@pytest.fixture(scope="session")
def cifar10_tarball() -> Path:
    src = cifar10_source()
    if src is None:
        pytest.skip("CIFAR-10 not available: set EDGESKIP_CIFAR10 or place ../shared/data/cifar10-images.tar.gz")
    return src


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def torch_blocker() -> str:
    """Code that hides torch from the subprocess it is prepended to."""
    return TORCH_BLOCKER


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained vit-tiny cpu bundle (agents at their initial thresholds); read-only for tests."""
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out = tmp_path_factory.mktemp("b") / "tiny"
    export_bundle(ExportConfig(model="vit-tiny", out=str(out), fidelity_images=4))
    return out


@pytest.fixture(scope="session")
def digits_agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """vit-digits with skip agents trained briefly on the digits every install has, thresholds set so inputs take
    different paths, E²CM exits (CLS feature) calibrated for a budget at which inputs do exit, and the cpu bundle
    of both. Returns {"checkpoint", "e2cm", "bundle"}: the tests that need a trained model and real images but
    nothing of CIFAR-10 run on it."""
    from edgeskip.cli import main
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.train.config import TrainConfig
    from edgeskip.train.run import train

    root = tmp_path_factory.mktemp("digits-agents")
    train(TrainConfig(model="vit-digits", dataset="digits", out=str(root / "run"), epochs=6, batch_size=64,
                      augment="none", lr=2e-3, warmup_epochs=0.5, precision="fp32", progress=False, agents=True))
    thresholds = ",".join(f"{t:.4f}" for t in _median_probabilities(root / "run"))  # each layer: about half run
    assert main(["-q", "apply-config", "--checkpoint", str(root / "run"), "--thresholds", thresholds,
                 "--out", str(root / "ckpt")]) == 0
    assert main(["-q", "calibrate", "--checkpoint", str(root / "ckpt"), "--out", str(root / "e2cm"), "--feature", "cls",
                 "--calibration-per-class", "60", "--test-per-class", "15", "--budget", "0.45", "--step", "0.05"]) == 0
    export_bundle(ExportConfig(model="vit-digits", out=str(root / "bundle"), checkpoint=str(root / "ckpt"),
                               e2cm=str(root / "e2cm" / "cls"), fidelity_images=16))
    return {"checkpoint": root / "ckpt", "e2cm": root / "e2cm" / "cls", "bundle": root / "bundle"}


def _median_probabilities(checkpoint: Path) -> list[float]:
    """Each agent's median probability on the digits' training images when every layer runs."""
    import torch

    from edgeskip.data import load_digits
    from edgeskip.normalization import get_normalization, preprocess
    from edgeskip.policy import SkipConfig
    from edgeskip.train.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint).build_model()
    model.set_skip_config(SkipConfig((0.0,) * model.depth))  # type: ignore[operator]
    x = torch.from_numpy(preprocess(load_digits().train.images, get_normalization("digits")))
    with torch.no_grad():
        probs = model(x, sample=False).probs.numpy()
    return [float(v) for v in np.median(probs, axis=0)]


@pytest.fixture(scope="session")
def digits_tflite_bundle(digits_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits model of ``digits_agents`` exported for TFLite (ONNX, the gate graph and .tflite files)
    with its agents and E²CM exits: what the runtime is tested on against every backend."""
    pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch: pip install 'edgeskip[tflite]'")
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out = tmp_path_factory.mktemp("bundle") / "vit-digits-tflite"
    export_bundle(ExportConfig(model="vit-digits", target="tflite", out=str(out),
                               checkpoint=str(digits_agents["checkpoint"]), e2cm=str(digits_agents["e2cm"]),
                               fidelity_images=16))
    return out


@pytest.fixture(scope="session")
def digits_int8_bundle(digits_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits model of ``digits_agents`` with its agents and E²CM exits, exported with INT8 layers
    (onnxruntime, dynamic) beside the fp32 ones: a bundle whose layers can run in either precision."""
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_bundle(ExportConfig(model="vit-digits", checkpoint=str(digits_agents["checkpoint"]),
                               e2cm=str(digits_agents["e2cm"]), out=str(out), int8=True, calibration_images=200,
                               fidelity_images=64))
    return out


@pytest.fixture(scope="session")
def digits_test_uint8() -> Any:
    """128 real digits test images (not the ones exports check themselves on) as an application has them:
    uint8 NHWC, (128, 8, 8, 1)."""
    from edgeskip.data import load_digits

    return load_digits().test.images[40:168]
