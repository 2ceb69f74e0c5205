"""TFLite export of every stage (litert-torch), checked against PyTorch, and the torch-free runner.

Conversions take about 1-2 s each on the 2-core CI machine, so the fp32 files of vit-tiny
are converted once per module (batch 2) and shared by the tests.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="TFLite export needs torch: pip install 'edgeskip[train]'")
pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch: pip install 'edgeskip[tflite]'")
pytest.importorskip("ai_edge_litert", reason="running .tflite needs ai-edge-litert: pip install 'edgeskip[tflite]'")

import torch

from edgeskip.errors import BackendUnavailableError, ConfigError, EdgeskipError
from edgeskip.exporters import tflite
from edgeskip.runtimes import tflite_interpreter as interp
from edgeskip.exporters.stages import StageModule, stage_modules
from edgeskip.models.vit import ViT
from edgeskip.variants import model_config

BATCH = 2
FP32_TOL = 1e-4
# fp16 weights, measured on vit-tiny (seed 0): max error / max |output| was 2.5e-4 (embed),
# 5e-6 (layers), 1.9e-4 (head); the bound leaves a margin of 4x over the worst.
FP16_REL_TOL = 1e-3


@pytest.fixture(scope="module")
def model() -> ViT:
    torch.manual_seed(0)
    return ViT(model_config("vit-tiny")).eval()


@pytest.fixture(scope="module")
def stages(model: ViT) -> list[StageModule]:
    return stage_modules(model)


@pytest.fixture(scope="module")
def fp32_files(stages: list[StageModule], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite")
    files = {}
    for stage in stages:
        files[stage.name] = out / f"{stage.name}.tflite"
        tflite.convert_stage(stage, files[stage.name], "fp32", batch=BATCH)
    return files


def inputs(stage: StageModule, batches: int = 3) -> torch.Tensor:
    """Several fixed-seed inputs, a multiple of the exported batch."""
    return torch.cat([stage.example(BATCH, seed=100 + s) for s in range(batches)])


def test_every_stage_fp32_matches_torch(stages: list[StageModule], fp32_files: dict[str, Path]) -> None:
    assert [s.name for s in stages] == ["embed", "layer_00", "layer_01", "layer_02", "layer_03", "head"]
    for stage in stages:
        err = tflite.check_fidelity(stage, fp32_files[stage.name], inputs(stage))
        assert err <= FP32_TOL, f"{stage.name}: max abs error {err}"


def test_io_layout_is_torch_layout(stages: list[StageModule], fp32_files: dict[str, Path]) -> None:
    """NCHW images in, (B, N, D) tokens, (B, K) logits: litert transposes nothing."""
    embed, head = stages[0], stages[-1]
    assert interp.io_shapes(fp32_files["embed"]) == ((BATCH, 3, 32, 32), (BATCH, 65, 64))
    assert interp.io_shapes(fp32_files["layer_00"]) == ((BATCH, 65, 64), (BATCH, 65, 64))
    assert interp.io_shapes(fp32_files["head"]) == ((BATCH, 65, 64), (BATCH, 10))
    assert embed.input.shape[1:] == (3, 32, 32) and head.output.shape[1:] == (10,)


def test_chain_through_tflite_equals_torch_model(
    model: ViT, stages: list[StageModule], fp32_files: dict[str, Path],
) -> None:
    images = inputs(stages[0], batches=2)
    with torch.no_grad():
        expected = model(images).numpy()
    got = []
    for i in range(0, images.shape[0], BATCH):
        x = images[i:i + BATCH].numpy()
        for stage in stages:
            x = interp.run_tflite(fp32_files[stage.name], x, num_threads=1)
        got.append(x)
    assert np.abs(np.concatenate(got) - expected).max() <= FP32_TOL


@pytest.mark.parametrize("name", ["embed", "layer_00"])
def test_fp16_halves_weights_with_bounded_error(
    name: str, stages: list[StageModule], fp32_files: dict[str, Path], tmp_path: Path,
) -> None:
    stage = next(s for s in stages if s.name == name)
    path = tmp_path / f"{name}.fp16.tflite"
    tflite.convert_stage(stage, path, "fp16", batch=BATCH)
    ratio = path.stat().st_size / fp32_files[name].stat().st_size
    # Layers are all weights (measured 0.55); embed keeps its position embedding in fp32 (0.81).
    assert ratio < (0.6 if stage.kind == "layer" else 0.9), ratio
    assert interp.io_shapes(path) == interp.io_shapes(fp32_files[name])  # I/O stays float32
    x = inputs(stage)
    with torch.no_grad():
        scale = float(stage.module(x).abs().max())
    err = tflite.check_fidelity(stage, path, x)
    assert 0 < err <= FP16_REL_TOL * scale, (err, scale)


def test_interpreter_class_is_litert() -> None:
    from ai_edge_litert.interpreter import Interpreter

    assert interp.interpreter_class() is Interpreter


def test_interpreter_falls_back_to_tflite_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = type("Interpreter", (), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # None: import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    assert interp.interpreter_class() is fake.Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeskip\[tflite\]'"):
        interp.interpreter_class()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EdgeskipError, match="does not exist") as info:
        interp.run_tflite(tmp_path / "nope.tflite", np.zeros((1, 65, 64), np.float32))
    exc = info.value  # raised before any backend call: no chained traceback from LiteRT
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(EdgeskipError, match="not a loadable TFLite model") as info:
        interp.run_tflite(bad, np.zeros((1, 65, 64), np.float32))
    assert info.value.__suppress_context__


def test_other_batch_is_refused_not_resized(fp32_files: dict[str, Path]) -> None:
    """A fixed-shape head resized to batch 3 would silently return one row; we refuse instead."""
    with pytest.raises(EdgeskipError, match=f"exported for batch {BATCH}.*batch=3"):
        interp.run_tflite(fp32_files["head"], np.zeros((3, 65, 64), np.float32))
    with pytest.raises(EdgeskipError, match="does not fit"):
        interp.run_tflite(fp32_files["head"], np.zeros((BATCH, 64, 65), np.float32))


def test_bad_arguments(stages: list[StageModule], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp32, fp16"):
        tflite.convert_stage(stages[-1], tmp_path / "x.tflite", "int8")
    with pytest.raises(ConfigError, match="batch"):
        tflite.convert_stage(stages[-1], tmp_path / "x.tflite", batch=0)
    assert not (tmp_path / "x.tflite").exists()


def test_runner_needs_no_torch(torch_blocker: str, fp32_files: dict[str, Path], tmp_path: Path) -> None:
    code = torch_blocker + f"""
import numpy as np
from edgeskip.runtimes.tflite_interpreter import interpreter_class, run_tflite
interpreter_class()
y = run_tflite({str(fp32_files["head"])!r}, np.zeros(({BATCH}, 65, 64), np.float32), num_threads=1)
assert y.shape == ({BATCH}, 10), y.shape
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_tflite_bundle_of_a_trained_model_on_real_test_images(digits_agents: dict[str, Path], tmp_path: Path) -> None:
    """`edgeskip export --target tflite`: fp32 and fp16 files per stage, checked on real (digits) test images."""
    from edgeskip.bundle import Bundle
    from edgeskip.cli import main

    out = tmp_path / "bundle"
    assert main(["-q", "export", "--model", "vit-digits", "--target", "tflite", "--checkpoint",
                 str(digits_agents["checkpoint"]), "--fidelity-images", "16", "--out", str(out)]) == 0
    bundle = Bundle.open(out)
    m = bundle.manifest
    fid = m.fidelity
    assert fid is not None and "digits test images" in fid.images
    layer_like = [s for s in m.stages if s.kind != "agent"]
    assert set(fid.formats["tflite"]) == set(fid.formats["tflite-fp16"]) == {s.name for s in layer_like}
    assert max(fid.formats["tflite"].values()) <= FP32_TOL
    assert m.formats["tflite"].batch == 1
    for s in layer_like:
        assert s.files["tflite"].endswith(".fp32.tflite") and s.files["tflite-fp16"].endswith(".fp16.tflite")
        fp32, fp16 = bundle.stage_file(s.name, "tflite"), bundle.stage_file(s.name, "tflite-fp16")
        assert fp16.stat().st_size < fp32.stat().st_size
    # the chain of fp32 files classifies like the manifest's monolithic ONNX model
    from edgeskip.exporters.onnx import ort_session

    x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    y = x
    for s in layer_like:
        y = interp.run_tflite(bundle.stage_file(s.name, "tflite"), y)
    want = ort_session(bundle.file("onnx/model.onnx")).run(None, {"images": x})[0]
    assert np.abs(y - want).max() <= FP32_TOL
