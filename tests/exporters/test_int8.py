"""INT8 stages (onnxruntime: dynamic, or static QDQ calibrated on training images): checked, run by the Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeskip.bundle import Bundle
from edgeskip.errors import ConfigError
from edgeskip.exporters.export import export_bundle
from edgeskip.exporters.formats import ExportError
from edgeskip.exporters.settings import ExportConfig
from edgeskip.runtimes import Runtime


def _layer_ops(bundle: Path) -> list[set[str]]:
    m = Bundle.open(bundle).manifest
    assert all(s.files["onnx-int8"] == s.files["onnx"] for s in m.stages if s.kind in ("embed", "head"))  # float
    return [{n.op_type for n in onnx.load(str(bundle / s.files["onnx-int8"])).graph.node}
            for s in m.stages if s.kind == "layer"]


def test_layers_are_quantized_and_checked(digits_int8_bundle: Path, digits_agents: dict[str, Path],
                                          tmp_path: Path) -> None:
    m = Bundle.open(digits_int8_bundle).manifest
    assert m.precision == "int8" and m.formats["onnx-int8"].weights == "int8"
    assert "dynamic" in (m.formats["onnx-int8"].use or "")
    assert m.fidelity is not None and set(m.fidelity.formats["onnx-int8"]) == {s.name for s in m.stages
                                                                                if s.kind != "agent"}
    for ops in _layer_ops(digits_int8_bundle):  # integer matrix products, norms and softmax in float
        assert {"DynamicQuantizeLinear", "MatMulInteger", "LayerNormalization", "Softmax"} <= ops
    static = tmp_path / "static"  # QDQ, ranges calibrated on training images (what TensorRT reads)
    export_bundle(ExportConfig(model="vit-digits", checkpoint=str(digits_agents["checkpoint"]), out=str(static),
                               int8=True, int8_mode="static", calibration_images=120, fidelity_images=32))
    assert "calibrated on 120 training images" in (Bundle.open(static).manifest.formats["onnx-int8"].use or "")
    for ops in _layer_ops(static):
        assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "LayerNormalization"} <= ops


def test_the_runtime_runs_int8_by_default_and_decides_like_fp32(digits_int8_bundle: Path,
                                                                 digits_agents: dict[str, Path],
                                                                 digits_test_uint8: np.ndarray) -> None:
    images = digits_test_uint8
    with Runtime(digits_int8_bundle, policy="agent+e2cm") as rt, \
            Runtime(digits_int8_bundle, policy="agent+e2cm", format="onnx") as fp32:
        assert rt.info()["precision"] == "int8" and fp32.info()["precision"] == "fp32"
        a, b = rt(images), fp32(images)
    same_path = (a.executed == b.executed).all(axis=1) & (a.exit_layer == b.exit_layer)
    assert same_path.mean() >= 0.8  # INT8 changes few decisions on real images
    assert (a.labels == b.labels).mean() >= 0.9
    assert not np.array_equal(a.logits, b.logits)  # and it really ran other stages


def test_int8_is_refused_where_it_is_not_built(digits_agents: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="int8_mode must be one of"):
        ExportConfig(model="vit-digits", int8=True, int8_mode="qat")
    import edgeskip.exporters.int8 as int8

    monkeypatch.setattr(int8, "INT8_TOLERANCE", 1e-6)  # a drift beyond the tolerance fails, leaving no bundle
    with pytest.raises(ExportError, match="int8 ONNX .* differs from PyTorch"):
        export_bundle(ExportConfig(model="vit-digits", checkpoint=str(digits_agents["checkpoint"]),
                                   out=str(tmp_path / "b"), int8=True, calibration_images=50, fidelity_images=8))
    assert not (tmp_path / "b").exists()


def test_the_front_of_an_int8_bundle_is_measured_against_its_fp32_static_model(
        digits_int8_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``edgeskip bench --front`` on an INT8 bundle: its INT8 static and configurations, and the fp32 static model
    in the same rounds, the headline over fp32 within its loss (the INT8 static itself counted)."""
    import json
    import shutil

    from edgeskip.cli import main

    bundle = Path(shutil.copytree(digits_int8_bundle, tmp_path / "b"))
    assert main(["-q", "profile", str(bundle), "--quick"]) == 0
    assert main(["-q", "search", str(bundle), "--images", "100", "--holdout-images", "0", "--pop-size", "10",
                 "--generations", "4"]) == 0
    out = tmp_path / "front.json"
    assert main(["-q", "bench", str(bundle), "--front", "--front-rounds", "4", "--front-block", "2", "--batch", "8",
                 "--json", str(out)]) == 0
    assert "over the fp32 static model" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "fp32" in report["points"] and report["runtime"]["precision"] == "int8"
    for b in ("1", "8"):
        m = report["measured"][b]
        assert m["fp32_static_ms"] > 0
        for loss, best in m["headline_over_fp32"].items():
            assert best is None or best["loss_points"] <= float(loss)


def test_tflite_int8_layers_run_on_litert_alone_or_mixed_with_fp32(digits_agents: dict[str, Path], tmp_path: Path,
                                                                 digits_test_uint8: np.ndarray) -> None:
    """``--target tflite --int8``: dynamic-range INT8 layer files checked like the onnxruntime ones; the tflite
    backend runs them by default, decides like fp32, and runs any mix of INT8 and fp32 layers without reload."""
    pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch: pip install 'edgeskip[tflite]'")
    from edgeskip.policy import Policy
    from edgeskip.runtimes.inputs import prepare
    from edgeskip.runtimes.tflite_interpreter import run_tflite

    out = tmp_path / "b"
    export_bundle(ExportConfig(model="vit-digits", target="tflite", checkpoint=str(digits_agents["checkpoint"]),
                               e2cm=str(digits_agents["e2cm"]), out=str(out), int8=True, fidelity_images=32))
    m = Bundle.open(out).manifest
    info = m.formats["tflite-int8"]
    assert info.weights == "int8" and "dynamic range" in (info.use or "") and not info.batch_dependent
    layer = m.stage("layer_00")
    assert (out / layer.files["tflite-int8"]).stat().st_size < 0.6 * (out / layer.files["tflite"]).stat().st_size
    images = digits_test_uint8[:48]
    with Runtime(out, backend="tflite", policy="agent+e2cm") as rt, \
            Runtime(out, backend="tflite", policy="agent+e2cm", precision="fp32") as fp32:
        assert rt.precisions == ("int8", "fp32") and fp32.info()["precision"] == "fp32"
        a, b = rt(images), fp32(images)
        assert (a.labels == b.labels).mean() >= 0.9
        assert ((a.executed == b.executed).all(axis=1) & (a.exit_layer == b.exit_layer)).mean() >= 0.8
        mix = ["fp32", "int8"] * 3
        rt.set_policy(Policy.config(None, None, mix))
        x = rt(images[:4]).logits
        inputs = prepare(images[:4], rt.input_spec)
    want = []
    for i in range(4):
        t = run_tflite(out / m.stage("embed").files["tflite"], inputs[i:i + 1])
        for j, p in enumerate(mix):
            t = run_tflite(out / m.stage(f"layer_{j:02d}").files["tflite" if p == "fp32" else "tflite-int8"], t)
        want.append(run_tflite(out / m.stage("head").files["tflite"], t))
    np.testing.assert_allclose(x, np.concatenate(want), atol=1e-4)

