"""Exporters: the bundle format, per-stage ONNX and the gate graph against PyTorch, tamper detection,
atomic writes, and the command line's errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from edgeskip.bundle import MANIFEST, Bundle, BundleError, Manifest
from edgeskip.cli import main
from edgeskip.exporters.export import export_bundle
from edgeskip.exporters.fidelity import compare_paths, reference_paths
from edgeskip.runtimes.gate import DISABLED_LAYER, set_thresholds
from edgeskip.exporters.onnx import ort_session
from edgeskip.exporters.settings import ExportConfig
from edgeskip.normalization import preprocess


@pytest.fixture(scope="module")
def trained_bundle(digits_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits model with agents and E²CM exits, exported checking itself on 64 test images."""
    out = tmp_path_factory.mktemp("b") / "digits"
    export_bundle(ExportConfig(model="vit-digits", out=str(out), checkpoint=str(digits_agents["checkpoint"]),
                               e2cm=str(digits_agents["e2cm"]), fidelity_images=64))
    return out


def digits_test_images(n: int, offset: int = 100) -> torch.Tensor:
    """Real digits test images (other than the ones the export checked itself on), preprocessed."""
    from edgeskip.data import load_digits
    from edgeskip.normalization import get_normalization

    test = load_digits().test
    return torch.from_numpy(preprocess(test.images[offset:offset + n], get_normalization("digits")))


# -- the manifest -----------------------------------------------------------------------------------

def test_manifest_round_trip(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / MANIFEST).read_text())
    m = Manifest.from_dict(raw)
    assert m.to_file() == raw
    assert m.untrained and m.weights.source == "random-init"
    assert [s.name for s in m.stages[:6]] == ["embed", "layer_00", "layer_01", "layer_02", "layer_03", "head"]
    assert [s.name for s in m.stages if s.kind == "agent"] == [f"agent_{j:02d}" for j in range(4)]
    assert m.stage("layer_00").inputs[0].shape == ("batch", 65, 64)
    assert set(m.referenced_files()) <= set(m.files)
    assert m.gate is not None and m.gate.outputs == ("logits", "executed", "exit_layer")


def _mutated(raw: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (["schema_version"], 99, "schema version 99 is not supported"),
    (["schema_version"], 1, "schema version 1 is not supported.*export the bundle again"),
    (["format"], "something", "not an edgeskip bundle"),
    (["surprise"], 1, "unknown key"),
    (["stages"], _DELETE, "stages: required key is missing"),
    (["target"], "mars", "target: must be one of"),
    (["classes"], ["a"], "1 class names"),
    (["stages", 0, "files", "onnx"], "../outside.onnx", "outside the bundle"),
    (["stages", 0, "files", "onnx"], "/etc/passwd", "outside the bundle"),
    (["stages", 1, "kind"], "mystery", r"stages\[1\].kind: must be one of"),
    (["stages", 1], {"name": "layer_00"}, r"stages\[1\].kind: required key is missing"),
    (["stages", 1, "layer"], True, r"stages\[1\].layer: must be an integer, got bool"),
    (["removed"], [7], "removed layers"),
    (["stages", 0, "files", "onnx"], "onnx/not-listed.onnx", "missing from the files table"),
    (["agents", "thresholds"], [0.5], "4 thresholds"),
    (["agents", "thresholds", 2], "x", r"agents.thresholds\[2\]: .*str 'x'"),
    (["agents", "colour"], "red", "agents: unknown key"),
    (["config", "depth"], "four", "config.depth: must be an integer"),
    (["config", "depth"], 10**18, "beyond this runtime's limit"),
    (["weights", "checkpoint"], "/home/me/run", "weights: unknown key.*checkpoint"),  # no machine paths
    (["files", "onnx/embed.onnx", "sha256"], "abc", "sha256 must be 64"),
])
def test_manifest_schema_errors(tiny_bundle: Path, path: list[Any], value: Any, message: str) -> None:
    raw = json.loads((tiny_bundle / MANIFEST).read_text())
    with pytest.raises(BundleError, match=message):
        Manifest.from_dict(_mutated(raw, path, value))


# -- fidelity on real test images (the trained digits model) ----------------------------------------------

@pytest.mark.slow
def test_export_reports_fidelity_within_tolerance(trained_bundle: Path) -> None:
    m = Bundle.open(trained_bundle).manifest
    fid = m.fidelity
    assert fid is not None and "digits test images" in fid.images
    assert max(fid.onnx.values()) <= 1e-4 and fid.monolithic <= 1e-4
    assert fid.gate.different_decisions == 0 and fid.gate.max_abs_logit_error <= 1e-4
    assert not m.untrained and m.e2cm is not None and m.agents is not None


@pytest.mark.slow
def test_every_stage_matches_torch_on_new_test_images(trained_bundle: Path, digits_agents: dict[str, Path]) -> None:
    from edgeskip.exporters.fidelity import stage_inputs
    from edgeskip.exporters.stages import agent_modules, stage_modules
    from edgeskip.train.checkpoint import load_checkpoint

    bundle = Bundle.open(trained_bundle)
    model = load_checkpoint(digits_agents["checkpoint"]).build_model()
    images = digits_test_images(48)
    inputs = stage_inputs(model, images)
    with torch.no_grad():
        for s in stage_modules(model) + agent_modules(model):
            got = ort_session(bundle.stage_file(s.name)).run(None, {s.input.name: inputs[s.name].numpy()})[0]
            want = s.module(inputs[s.name]).numpy()
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-4, s.name


def _gate_runs(session: Any, images: torch.Tensor) -> list[list[np.ndarray]]:
    return [session.run(None, {"images": images[i:i + 1].numpy()}) for i in range(len(images))]


@pytest.mark.slow
def test_gate_graph_decisions_equal_the_torch_agent_rule(trained_bundle: Path, digits_agents: dict[str, Path]) -> None:
    from edgeskip.e2cm import E2CM
    from edgeskip.train.checkpoint import load_checkpoint

    bundle = Bundle.open(trained_bundle)
    m = bundle.manifest
    model = load_checkpoint(digits_agents["checkpoint"]).build_model()
    e2cm = E2CM.load(bundle.file("e2cm"))
    images = digits_test_images(96)
    runs = _gate_runs(ort_session(bundle.file(m.gate.file)), images)  # type: ignore[union-attr]
    thresholds = m.agents.thresholds  # type: ignore[union-attr]
    ref = reference_paths(model, images, thresholds=thresholds, e2cm=e2cm)
    result = compare_paths(ref, [r[0] for r in runs], [r[1] for r in runs], [int(r[2]) for r in runs])
    assert result["different_decisions"] == 0 and result["max_abs_logit_error"] <= 1e-4, result
    assert result["same_decisions"] >= 90
    # the test exercises the dynamic parts: several paths, some early exits, some through the head
    exits = [int(r[2]) for r in runs]
    assert len({tuple(r[1]) for r in runs}) >= 2 and -1 in exits and any(e >= 0 for e in exits), exits
    # layers after an exit did not run
    for r in runs:
        if int(r[2]) >= 0:
            assert not r[1][int(r[2]) + 1:].any()
    # the reference's agent decisions are SkipViT's own (without exits)
    ref_no_exit = reference_paths(model, images, thresholds=thresholds)
    with torch.no_grad():
        executed = model(images).executed.numpy()
    assert np.array_equal(np.stack([p.executed for p in ref_no_exit]), executed)


@pytest.mark.slow
def test_gate_graph_runs_unchanged_in_the_onnx_reference_evaluator(trained_bundle: Path,
                                                                    digits_agents: dict[str, Path]) -> None:
    from onnx.reference import ReferenceEvaluator

    bundle = Bundle.open(trained_bundle)
    path = bundle.file(bundle.manifest.gate.file)  # type: ignore[union-attr]
    evaluator = ReferenceEvaluator(onnx.load(path))
    images = digits_test_images(12)
    for got, want in zip(_gate_runs(evaluator, images), _gate_runs(ort_session(path), images), strict=True):
        assert np.array_equal(got[1], want[1]) and int(got[2]) == int(want[2])
        assert np.abs(got[0] - want[0]).max() <= 1e-4


def test_gate_thresholds_are_rewritable_initialisers(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    gate = onnx.load(bundle.file("onnx/gate.onnx"))
    images = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    monolithic = ort_session(bundle.file("onnx/model.onnx")).run(None, {"images": images})[0]
    every = ort_session(set_thresholds(gate, {j: 0.0 for j in range(4)})).run(None, {"images": images})
    assert every[1].all() and int(every[2]) == -1 and np.abs(every[0] - monolithic).max() <= 1e-5
    one_off = ort_session(set_thresholds(gate, {1: None})).run(None, {"images": images})
    assert one_off[1].tolist() == [True, False, True, True]
    assert DISABLED_LAYER > 1.0
    with pytest.raises(Exception, match="no initialiser"):
        set_thresholds(gate, exits=[0.5])  # this bundle has no E²CM exits


# -- tampering, paths and atomic writes -------------------------------------------------------------------

@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_verified_bundle_opens(bundle_copy: Path) -> None:
    assert Bundle.open(bundle_copy).manifest.model_name == "vit-tiny"


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "append"])
def test_tampered_files_are_rejected(bundle_copy: Path, damage: str) -> None:
    f = bundle_copy / "onnx" / "layer_02.onnx"
    data = f.read_bytes()
    if damage == "flip":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        f.unlink()
    else:
        f.write_bytes(data + b"\0")
    with pytest.raises(BundleError, match="layer_02.onnx"):
        Bundle.open(bundle_copy)


def test_a_symlink_escaping_the_bundle_is_rejected(bundle_copy: Path, tmp_path: Path) -> None:
    f = bundle_copy / "onnx" / "head.onnx"
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(f, outside)
    os.symlink(outside, f)
    with pytest.raises(BundleError, match="goes through a symlink"):
        Bundle.open(bundle_copy)


def test_a_failed_export_keeps_the_previous_bundle(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeskip.exporters.export as export_module

    before = {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C half way through

    monkeypatch.setattr(export_module, "build_gate_graph", boom)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(ExportConfig(model="vit-tiny", out=str(bundle_copy), force=True, fidelity_images=2))
    after = {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in bundle_copy.parent.iterdir()] == ["copy"]  # no temp folder left behind


def test_an_interrupted_first_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeskip.exporters.export as export_module

    monkeypatch.setattr(export_module, "atomic_write_bytes", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        export_bundle(ExportConfig(model="vit-tiny", out=str(tmp_path / "new"), fidelity_images=2))
    assert list(tmp_path.iterdir()) == []


# -- the command line -------------------------------------------------------------------------------------------

def test_cli_export_untrained_warns_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--model", "vit-tiny", "--out", str(tmp_path / "b"), "--fidelity-images", "2"]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED WEIGHTS" in captured.err and "bundle" in captured.out
    assert Bundle.open(tmp_path / "b").manifest.weights.untrained is True


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "vit11"], "unknown model 'vit11'"),
    (["--model", "vit-tiny", "--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--model", "vit-tiny", "--e2cm", "/nonexistent/e2cm"], "needs the --checkpoint"),
    (["--model", "vit-tiny", "--batch-sizes", "1,x"], "batch sizes"),
    (["--model", "vit-tiny", "--data", "/nonexistent/cifar"], "no such file"),
])
def test_cli_export_errors(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "b").exists()


def test_cli_export_unknown_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", "vit-tiny", "--target", "mars"])
    assert exc.value.code == 2 and "invalid choice: 'mars'" in capsys.readouterr().err


def test_cli_export_refuses_an_existing_bundle_without_force(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (bundle_copy / MANIFEST).read_bytes()
    assert main(["export", "--model", "vit-tiny", "--out", str(bundle_copy)]) == 2
    assert "already exists: pass --force" in capsys.readouterr().err
    assert (bundle_copy / MANIFEST).read_bytes() == before


def test_cli_export_checkpoint_for_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.models.vit import ViT
    from edgeskip.normalization import get_normalization
    from edgeskip.train.checkpoint import save_checkpoint
    from edgeskip.variants import model_config

    cfg = model_config("vit-digits")
    save_checkpoint(tmp_path / "ckpt", ViT(cfg), model_name="vit-digits", model_config=cfg, dataset="digits",
                    normalization=get_normalization("digits"), classes=tuple("0123456789"))
    assert main(["export", "--model", "vit-tiny", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b")]) == 2
    assert "holds a vit-digits model, not vit-tiny" in capsys.readouterr().err


@pytest.mark.parametrize("feature", ["mean", "tokens"])
def test_static_model_with_e2cm_gate_graph(tmp_path: Path, feature: str) -> None:
    """A model without agents: layers run unconditionally, exits (other features) still in the graph."""
    from onnx.reference import ReferenceEvaluator

    from edgeskip.data import load_digits
    from edgeskip.models.vit import ViT
    from edgeskip.normalization import get_normalization
    from edgeskip.train.checkpoint import save_checkpoint
    from edgeskip.variants import model_config

    cfg = model_config("vit-digits")
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "ckpt", ViT(cfg), model_name="vit-digits", model_config=cfg, dataset="digits",
                    normalization=get_normalization("digits"), classes=tuple("0123456789"))
    assert main(["-q", "calibrate", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "e2cm"),
                 "--feature", feature, "--calibration-per-class", "20", "--test-per-class", "5", "--budget", "0.5",
                 "--step", "0.05"]) == 0
    result = export_bundle(ExportConfig(model="vit-digits", out=str(tmp_path / "b"), checkpoint=str(tmp_path / "ckpt"),
                                        e2cm=str(tmp_path / "e2cm" / feature), fidelity_images=64))
    m = result.manifest
    assert m.agents is None and m.e2cm is not None and m.e2cm.feature == feature
    gate_fid = m.fidelity.gate  # type: ignore[union-attr]
    assert gate_fid.same_decisions + gate_fid.ties == 64 and gate_fid.different_decisions == 0
    bundle = Bundle.open(result.path)
    images = torch.from_numpy(preprocess(load_digits().test.images[64:80], get_normalization("digits")))
    path = bundle.file("onnx/gate.onnx")
    runs = _gate_runs(ort_session(path), images)
    exits = [int(r[2]) for r in runs]
    assert any(e >= 0 for e in exits), exits  # the budget makes inputs leave early
    for r in runs:  # every layer up to the exit ran, none after it
        last = int(r[2]) if int(r[2]) >= 0 else m.config.depth - 1
        assert r[1][: last + 1].all() and not r[1][last + 1:].any()
    reference = _gate_runs(ReferenceEvaluator(onnx.load(path)), images[:4])
    for got, want in zip(reference, runs[:4], strict=False):
        assert np.array_equal(got[1], want[1]) and int(got[2]) == int(want[2])


def test_every_registered_format_loads_and_every_target_names_registered_ones() -> None:
    from edgeskip.exporters import EXPORTERS
    from edgeskip.exporters.settings import TARGETS

    assert set(EXPORTERS.names()) == {"onnx-fp16", "onnx-int8", "tflite", "tensorrt"}
    assert {n for _, names in TARGETS.values() for n in names} <= set(EXPORTERS.names())
    for name in EXPORTERS.names():
        if name == "tflite":
            pytest.importorskip("litert_torch", reason="the tflite format needs pip install 'edgeskip[tflite]'")
        exporter = EXPORTERS.get(name)()
        assert exporter.name == name and exporter.steps(3, ExportConfig(model="vit-tiny")) >= 1 and callable(exporter)


def test_the_registry_drives_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A format registered by name is run by export_bundle for the targets that name it, with the one signature."""
    from edgeskip.exporters import EXPORTERS
    from edgeskip.exporters import settings as export_settings
    from edgeskip.exporters.formats import FormatJob, FormatResult
    from edgeskip.manifest import FormatInfo

    seen: list[FormatJob] = []

    class Copies:
        name = "copies"

        def steps(self, stages: int, cfg: ExportConfig) -> int:
            return stages

        def __call__(self, job: FormatJob) -> FormatResult:
            seen.append(job)
            for s in job.stages:
                rel = f"copies/{s.name}.onnx"
                (job.tmp / "copies").mkdir(exist_ok=True)
                (job.tmp / rel).write_bytes((job.tmp / job.files[s.name]["onnx"]).read_bytes())
                job.files[s.name][self.name] = rel
                job.step()
            return FormatResult({self.name: FormatInfo(batch="dynamic", weights="float32", io="float32")},
                                {self.name: {s.name: 0.0 for s in job.stages}})

    monkeypatch.setitem(EXPORTERS._entries, "copies", Copies)
    monkeypatch.setitem(export_settings.TARGETS, "onnx", ("fp32", ("copies",)))
    m = export_bundle(ExportConfig(model="vit-tiny", target="onnx", out=str(tmp_path / "b"), fidelity_images=2)).manifest
    assert len(seen) == 1 and [s.name for s in seen[0].stages] == ["embed", "layer_00", "layer_01", "layer_02",
                                                                   "layer_03", "head"]
    assert m.formats["copies"].batch == "dynamic" and set(m.fidelity.formats["copies"]) == {  # type: ignore[union-attr]
        s.name for s in seen[0].stages}
    assert all(m.stage(s.name).files["copies"] in m.files for s in seen[0].stages)
    Bundle.open(tmp_path / "b")  # the new files are listed and verify


def test_jetson_bundle_is_what_tensorrt_parses(tmp_path: Path) -> None:
    from edgeskip.exporters.tensorrt import check_onnx_for_tensorrt, engine_jobs

    result = export_bundle(ExportConfig(model="vit-tiny", target="jetson", out=str(tmp_path / "b"),
                                        batch_sizes="1,8", fidelity_images=4))
    bundle = Bundle.open(result.path)
    m = bundle.manifest
    assert m.precision == "fp16" and m.tensorrt is not None and m.tensorrt.batch_sizes == (1, 8)
    assert (result.path / m.tensorrt.script).stat().st_mode & 0o111
    for s in m.stages:
        for fmt, rel in s.files.items():
            model = onnx.load(bundle.file(rel))
            assert check_onnx_for_tensorrt(model) == [], (s.name, fmt)
            assert model.opset_import[0].version == 17
    assert check_onnx_for_tensorrt(onnx.load(bundle.file("onnx/gate.onnx"))) == []
    # fp16 copies of the engine stages, checked against torch (relative to the output scale)
    assert {s.name for s in m.stages if "onnx-fp16" in s.files} == {s.name for s in m.stages if s.kind != "agent"}
    assert max(m.fidelity.formats["onnx-fp16"].values()) < 0.05  # type: ignore[union-attr]
    jobs = engine_jobs(bundle)
    assert [j.stage for j in jobs] == ["embed", "layer_00", "layer_01", "layer_02", "layer_03", "head"]
    assert jobs[1].input_name == "tokens" and jobs[1].input_shape == (65, 64)


def test_a_bundle_carries_no_path_of_the_machine_it_was_made_on(digits_agents: dict[str, Path]) -> None:
    """Bundles travel: the manifest and the E²CM exits name the checkpoint by folder name and content hash only."""
    bundle = digits_agents["bundle"]
    build_machine = str(digits_agents["checkpoint"].parent)

    def strings(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in (k, *strings(v))]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for name in ("manifest.json", "e2cm/e2cm.json"):
        found = [s for s in strings(json.loads((bundle / name).read_text())) if build_machine in s or s.startswith("/")]
        assert not found, (name, found)
    weights = Bundle.open(bundle).manifest.weights
    assert weights.checkpoint_name == "ckpt" and len(weights.checkpoint_sha256 or "") == 64
