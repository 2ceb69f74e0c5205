"""edgeskip.Runtime: every backend against the PyTorch reference on real CIFAR-10 test images, batch
against per-input, policies and their switching, bad input, threads, telemetry, and no torch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import edgeskip
from edgeskip.policy import SkipConfig
from edgeskip.bundle import Bundle, BundleError
from edgeskip.errors import BackendUnavailableError, ConfigError, InputError, UnknownNameError
from edgeskip.exporters.export import export_bundle
from edgeskip.exporters.fidelity import compare_paths, reference_paths
from edgeskip.exporters.settings import ExportConfig
from edgeskip.normalization import preprocess
from edgeskip.runtimes import BACKENDS, Policy, Runtime
from edgeskip.runtimes.inputs import resize_bilinear
from edgeskip.runtimes.backend import chunk_plan, in_fixed_batches
from edgeskip.search.genome import Genome

NEUTRAL = tempfile.gettempdir()


@pytest.fixture(scope="module")
def tiny(tiny_bundle: Path) -> Runtime:
    return Runtime(tiny_bundle)


def _images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _reference(bundle: Path, checkpoint: Path, images: np.ndarray, policy: str) -> list[Any]:
    """PyTorch layers and agents + the numpy E²CM rule, one image at a time (the exporters' reference)."""
    from edgeskip.e2cm import E2CM
    from edgeskip.runtimes.torch_backend import reference_model

    b = Bundle.open(bundle)
    m = b.manifest
    model = reference_model(b, checkpoint)
    x = torch.from_numpy(preprocess(images, m.normalization))
    thresholds = m.agents.thresholds if "agent" in policy and m.agents else None
    e2cm = E2CM.load(b.file("e2cm")) if "e2cm" in policy and m.e2cm else None
    return reference_paths(model, x, thresholds=thresholds, e2cm=e2cm)


def _agree(out: edgeskip.RuntimeOutput, ref: list[Any], tolerance: float = 1e-4) -> dict[str, Any]:
    result = compare_paths(ref, list(out.logits), list(out.executed), [int(e) for e in out.exit_layer])
    assert result["different_decisions"] == 0 and result["max_abs_logit_error"] <= tolerance, result
    return result


# -- every backend against the PyTorch reference, on real digits test images -----------------------------

BACKEND_CASES = [("onnxruntime", "stages", {}), ("onnxruntime", "gate", {}), ("tflite", "stages", {}),
                 ("torch", "stages", {}), ("onnxruntime", "stages", {"whole_static": False})]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["agent+e2cm", "agent", "e2cm", "static"])
@pytest.mark.parametrize(("backend", "graph", "options"), BACKEND_CASES)
def test_backend_agrees_with_the_torch_reference(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray,
                                                 digits_agents: dict[str, Path], backend: str, graph: str,
                                                 options: dict[str, Any], policy: str) -> None:
    images = digits_test_uint8[:64]
    if backend == "torch":  # the reference backend rebuilds the checkpoint's modules: the bundle holds no path
        options = {**options, "checkpoint": str(digits_agents["checkpoint"])}
    rt = Runtime(digits_tflite_bundle, backend=backend, policy=policy, graph=graph, **options)
    out = rt(images)
    result = _agree(out, _reference(digits_tflite_bundle, digits_agents["checkpoint"], images, policy))
    assert result["same_decisions"] >= 60
    if policy == "agent+e2cm":  # the images exercise the dynamic parts
        assert len(set(out.paths())) >= 2 and (out.exit_layer >= 0).any() and (out.exit_layer == -1).any()
    if policy == "static":
        assert out.executed.all() and (out.exit_layer == -1).all()


@pytest.mark.slow
def test_tflite_fp16_weights_keep_the_decisions(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray) -> None:
    images = digits_test_uint8[:32]
    fp32 = Runtime(digits_tflite_bundle, backend="tflite")(images)
    fp16 = Runtime(digits_tflite_bundle, backend="tflite", precision="fp16")(images)
    assert np.mean(fp16.labels == fp32.labels) >= 0.9
    assert np.abs(fp16.logits - fp32.logits).max() <= 0.05 * np.abs(fp32.logits).max()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tflite", "torch"])
def test_a_batch_equals_its_inputs_one_at_a_time(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray,
                                                 digits_agents: dict[str, Path], backend: str) -> None:
    images = digits_test_uint8[:48]
    options = {"checkpoint": str(digits_agents["checkpoint"])} if backend == "torch" else {}
    rt = Runtime(digits_tflite_bundle, backend=backend, **options)
    batch = rt(images)
    ref = _reference(digits_tflite_bundle, digits_agents["checkpoint"], images, "agent+e2cm")
    singles = [rt(img) for img in images]
    for i, (one, r) in enumerate(zip(singles, ref, strict=True)):
        same = np.array_equal(one.executed[0], batch.executed[i]) and one.exit_layer[0] == batch.exit_layer[i]
        assert same or min(r.margins, default=1.0) <= 1e-6, i
        if same:
            assert np.abs(one.logits[0] - batch.logits[i]).max() <= 1e-5
    assert len(set(batch.paths())) >= 2


# -- policies ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_policy_switching_needs_no_reload(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray) -> None:
    images = digits_test_uint8[:32]
    rt = Runtime(digits_tflite_bundle)
    backend = rt.backend
    assert rt.policy.name == "agent+e2cm"  # auto: everything the bundle has
    both = rt(images)
    rt.set_policy("static")
    static = rt(images)
    assert static.executed.all() and (static.exit_layer == -1).all()
    rt.set_policy("e2cm")
    exits = rt(images)
    assert (exits.exit_layer >= 0).any()
    for row, e in zip(exits.executed, exits.exit_layer, strict=True):  # every layer up to the exit ran, none after
        assert row[: e + 1].all() and not row[e + 1:].any() if e >= 0 else row.all()
    rt.set_policy("agent+e2cm")
    again = rt(images)
    assert np.array_equal(again.executed, both.executed) and np.array_equal(again.logits, both.logits)
    assert rt.backend is backend  # nothing was reloaded

    # an explicit configuration: layer 1 removed, no exits; then the same as genes on the default grid
    m = rt.manifest
    thresholds = list(m.agents.thresholds)  # type: ignore[union-attr]
    thresholds[1] = None
    rt.set_policy(Policy.config(thresholds))
    out = rt(images)
    assert not out.executed[:, 1].any() and (out.exit_layer == -1).all()
    rt.set_policy(Genome(6).policy([3, 0, 3, 3, 3, 3]))  # 0.5, removed, 0.5, ...
    genes = rt(images)
    rt.set_policy(SkipConfig((0.5, None, 0.5, 0.5, 0.5, 0.5)))
    assert np.array_equal(rt(images).executed, genes.executed) and not genes.executed[:, 1].any()
    # thresholds of 1 at every exit disable the exits: the agents' paths alone
    rt.set_policy(Policy.config(m.agents.thresholds, exits=[1.0] * len(m.e2cm.exits)))  # type: ignore[union-attr]
    assert (rt(images).exit_layer == -1).all()


@pytest.mark.slow
def test_gate_graph_policy_switching(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray) -> None:
    images = digits_test_uint8[:16]
    stages, gate = Runtime(digits_tflite_bundle), Runtime(digits_tflite_bundle, graph="gate")
    for policy in ["static", Genome(6).policy([3, 0, 4, 2, 3, 3]), "e2cm", "agent+e2cm"]:
        stages.set_policy(policy)
        gate.set_policy(policy)
        a, b = stages(images), gate(images)
        assert np.array_equal(a.executed, b.executed) and np.array_equal(a.exit_layer, b.exit_layer)
        assert np.abs(a.logits - b.logits).max() <= 1e-4


def test_bad_policies_are_clear_errors_and_keep_the_old_one(tiny: Runtime) -> None:
    before = tiny.policy
    cases: list[tuple[Any, str]] = [
        ("fastest", "unknown policy"), ("e2cm", "needs E²CM exits"), (Policy.config([0.5] * 3), "model has 4"),
        (Policy.config([1.5, 0.5, 0.5, 0.5]), r"layer 0 must be in \[0, 1\]"),
        (Policy.config([None] * 4), "every layer"), (Policy.config(None, exits=[0.5]), "has none"),
        (42, "a policy is a name"),
    ]
    for policy, message in cases:
        with pytest.raises(ConfigError, match=message):
            tiny.set_policy(policy)
    assert tiny.policy == before
    assert len(tiny(_images(2))) == 2


def test_static_model_has_no_agent_policy(tmp_path: Path) -> None:
    from edgeskip.models import create
    from edgeskip.normalization import get_normalization
    from edgeskip.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create("vit-tiny")
    save_checkpoint(tmp_path / "ckpt", model, model_name="vit-tiny", model_config=model.config, dataset="cifar10",
                    normalization=get_normalization("cifar10"), classes=tuple(str(i) for i in range(10)))
    export_bundle(ExportConfig(model="vit-tiny", out=str(tmp_path / "b"), checkpoint=str(tmp_path / "ckpt"),
                               fidelity_images=2))
    rt = Runtime(tmp_path / "b")
    assert rt.policy.name == "static"
    with pytest.raises(ConfigError, match="needs skip agents"):
        rt.set_policy("agent")
    out = rt(_images(3))
    assert out.executed.all()
    with torch.no_grad():
        want = model(torch.from_numpy(preprocess(_images(3), get_normalization("cifar10")))).numpy()
    assert np.abs(out.logits - want).max() <= 1e-4
    torch_rt = Runtime(tmp_path / "b", backend="torch", checkpoint=str(tmp_path / "ckpt"))
    assert np.abs(torch_rt(_images(3)).logits - want).max() <= 1e-5
    # without agents a configuration can still run or remove layers (threshold 0 or None)
    rt.set_policy(Policy.config([0.0, None, 0.0, 0.0]))
    assert rt(_images(3)).executed.tolist() == [[True, False, True, True]] * 3
    with pytest.raises(ConfigError, match="need skip agents"):
        rt.set_policy(Policy.config([0.5, None, 0.0, 0.0]))
    gate = Runtime(tmp_path / "b", graph="gate")
    assert np.abs(gate(_images(3)).logits - want).max() <= 1e-4
    with pytest.raises(ConfigError, match="no agent for layer"):
        gate.set_policy(Policy.config([0.0, None, 0.0, 0.0]))


# -- inputs ----------------------------------------------------------------------------------------------

def test_input_forms_give_the_same_result(tiny: Runtime) -> None:
    images = _images(4)
    batch = tiny(images)
    floats = tiny(preprocess(images, tiny.manifest.normalization))
    single = tiny(images[0])
    assert np.array_equal(batch.logits, floats.logits)
    assert np.abs(single.logits[0] - batch.logits[0]).max() <= 1e-5 and single.logits.shape == (1, 10)
    assert np.array_equal(tiny(preprocess(images, tiny.manifest.normalization)[0].astype(np.float64)).labels,
                          batch.labels[:1])


def test_huge_finite_values_are_not_mistaken_for_infinite(tiny: Runtime) -> None:
    """Finite values whose sum overflows are named for what they are: far outside a normalised image
    (they would overflow inside the model and give NaN logits), not NaN or infinite."""
    x = np.full((2, 3, 32, 32), 3e38, np.float32)
    with pytest.raises(InputError, match=r"values up to 3e\+38 \(batch rows \[0, 1\]\): float input must be normalised"):
        tiny(x)
    near = np.full((2, 3, 32, 32), 9e3, np.float32)  # within the limit: runs, and the logits are finite
    assert np.isfinite(tiny(near).logits).all()


def test_images_of_another_size_are_fitted_as_pil_resizes(tiny: Runtime) -> None:
    from PIL import Image

    small = _images(2, size=16)
    pil = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in small])
    ours = resize_bilinear(small, 32)
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1  # same sampling, rounding apart
    assert np.array_equal(tiny(small).logits, tiny(ours).logits)
    assert len(tiny(_images(1, size=48))) == 1
    # images already of the model's size are not resized (an identity resize once ran on every uint8 call)
    import edgeskip.imaging as imaging
    import edgeskip.runtimes.inputs as inputs

    calls: list[tuple[int, ...]] = []
    original = imaging.resize_bilinear
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imaging, "resize_bilinear", lambda x, size: calls.append(x.shape) or original(x, size))
        tiny(_images(2))
        tiny(inputs.prepare(_images(2), tiny.input_spec).astype(np.float64))  # float NCHW of the right size
        assert calls == []
        tiny(small)
        assert calls == [small.shape]
    # shrinking is antialiased as PIL's bilinear is; another aspect is resized by its shorter side, then cropped
    rng = np.random.default_rng(3)
    for shape, size in (((2, 96, 96, 3), 32), ((1, 50, 80, 3), (20, 33)), ((1, 7, 9, 3), (13, 5))):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        h, w = (size, size) if isinstance(size, int) else size
        want = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in x])
        assert np.abs(resize_bilinear(x, size).astype(int) - want.astype(int)).max() <= 1
    wide = rng.integers(0, 256, (1, 40, 60, 3), dtype=np.uint8)
    from edgeskip.imaging import fit_image

    fitted = fit_image(wide, 32)  # 40x60 -> 32x48, then the middle 32 columns
    assert fitted.shape == (1, 32, 32, 3) and np.array_equal(fitted, resize_bilinear(wide, (32, 48))[:, :, 8:40])
    assert np.array_equal(tiny(wide).logits, tiny(fitted).logits)
    images = _images(2)  # PIL images, one or a list of them, are uint8 channels-last images
    assert np.array_equal(tiny(Image.fromarray(images[0])).logits, tiny(images[:1]).logits)
    assert np.array_equal(tiny([Image.fromarray(im) for im in images]).logits, tiny(images).logits)


@pytest.mark.parametrize(("images", "message"), [
    (np.zeros((32, 32), np.uint8), r"uint8 images must be \(H, W, 3\)"),
    (np.zeros((2, 2, 32, 32, 3), np.uint8), "got shape"),
    (np.zeros((2, 32, 32, 4), np.uint8), "expected 3 channel"),
    (np.zeros((2, 3, 32, 32), np.uint8), "channels first"),
    (np.zeros((2, 32, 32, 3), np.float32), "channels last"),
    (np.zeros((2, 32, 32, 3), np.int32), "dtype int32"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty batch"),
    (np.zeros((0, 3, 32, 32), np.float32), "empty batch"),
    (np.full((2, 3, 32, 32), np.nan, np.float32), "NaN or infinite"),
    (np.where(np.arange(2 * 3 * 32 * 32).reshape(2, 3, 32, 32) == 5, np.inf, 0).astype(np.float32), r"rows \[0\]"),
    (np.zeros((2, 3, 0, 32), np.float32), "empty spatial axis"),
    (np.concatenate([np.zeros((1, 3, 32, 32)), np.full((1, 3, 32, 32), 1.7e38)]).astype(np.float32),
     r"values up to 1.7e\+38 \(batch rows \[1\]\): float input must be normalised"),  # finite, would overflow
    (np.concatenate([np.zeros((1, 3, 32, 32)), np.full((1, 3, 32, 32), -np.inf)]).astype(np.float16), r"rows \[1\]"),
    ("not an image", "dtype <U"),
    ([[1, 2], [3]], "numpy array"),
])
def test_bad_input_is_a_clear_error_and_the_runtime_stays_usable(tiny: Runtime, images: Any, message: str) -> None:
    before = tiny.stats().calls
    with pytest.raises(InputError, match=message):
        tiny(images)
    assert tiny.stats().calls == before  # nothing ran, nothing was counted
    assert len(tiny(_images(2))) == 2


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_the_runtime_never_writes_to_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """Not when it runs, refuses an input, switches policy, runs the gate graph, or selects a configuration."""
    import shutil

    from edgeskip.front import ParetoFront, ParetoPoint, Searched, pareto_path

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    m = Bundle.open(bundle).manifest
    static = ParetoPoint(genes=(1, 1, 1, 1), thresholds=(0.0,) * 4, accuracy=0.6, executed_layers=4.0,
                         latency_ms=2.0, energy_mj=1.0)
    half = ParetoPoint(genes=(3, 3, 3, 3), thresholds=(0.5,) * 4, accuracy=0.5, executed_layers=2.0, latency_ms=1.0,
                       energy_mj=0.5)
    ParetoFront(searched=Searched(kind="bundle", model=m.model_name, fingerprint=m.fingerprint), cost="profile",
                objectives=("error", "latency_ms", "energy_mj"), hypervolume=0.5, static=static, points=(half, static),
                device="cpu", batch=1, energy_source="estimate").save(pareto_path(bundle, "cpu"))
    before = _tree_digest(bundle)
    rt = Runtime(bundle)
    rt(_images(3))
    with pytest.raises(InputError):
        rt(np.zeros((1, 3, 32, 32), np.float32) * np.nan)
    rt.set_policy("static")
    chosen = rt.select(budget_ms=1.5)  # the one method that once could write: it switches, and writes nothing
    assert chosen.point == half and rt.plan.layer_thresholds == (0.5,) * 4
    Runtime(bundle, graph="gate")(_images(2))
    assert _tree_digest(bundle) == before and Bundle.open(bundle).manifest.default_config is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_bundle_is_refused(tiny_bundle: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    target = copy / "onnx" / "layer_01.onnx"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    with pytest.raises(BundleError, match="layer_01.onnx"):
        Runtime(copy)


def test_backends_that_cannot_run_here_say_what_to_install(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownNameError, match="unknown backend 'openvino'; available: onnxruntime, tflite"):
        Runtime(tiny_bundle, backend="openvino")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="edgeskip\\[tensorrt\\]"):
            Runtime(tiny_bundle, backend="tensorrt")
    import builtins

    real_import = builtins.__import__

    def no_litert(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("ai_edge_litert", "tflite_runtime")):
            raise ImportError(f"no {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    monkeypatch.delitem(sys.modules, "ai_edge_litert.interpreter", raising=False)
    with pytest.raises(BackendUnavailableError, match="LiteRT interpreter"):
        Runtime(tiny_bundle, backend="tflite")


def test_bad_options_are_clear_errors(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="no option"):
        Runtime(tiny_bundle, backend="onnxruntime", precision="int8")
    with pytest.raises(ConfigError, match="threads must be"):
        Runtime(tiny_bundle, threads=0)
    with pytest.raises(ConfigError, match="thread_pool"):
        Runtime(tiny_bundle, thread_pool="many")
    with pytest.raises(ConfigError, match="graph must be"):
        Runtime(tiny_bundle, graph="fused")
    with pytest.raises(ConfigError, match="needs backend='onnxruntime'"):
        Runtime(tiny_bundle, backend="tflite", graph="gate")
    with pytest.raises(BundleError, match="no tflite files"):
        Runtime(tiny_bundle, backend="tflite")


def test_per_session_thread_pools(tiny_bundle: Path, tiny: Runtime) -> None:
    """Per-session pools work in a process without the global pool, and are refused (clearly) once it exists."""
    images = _images(3)
    code = f"""
import numpy as np, edgeskip
rt = edgeskip.Runtime({str(tiny_bundle)!r}, thread_pool="per-session", threads=1)
np.save("out.npy", rt(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)).logits)
print(rt.info()["thread_pool"])
"""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "per-session (1 threads, no spinning)" in proc.stdout
        assert np.abs(np.load(Path(tmp) / "out.npy") - tiny(images).logits).max() <= 1e-5
    assert tiny.info()["thread_pool"].startswith("global")
    with pytest.raises(ConfigError, match="global thread pool already exists"):
        Runtime(tiny_bundle, thread_pool="per-session")


# -- threads and telemetry -------------------------------------------------------------------------------

def test_concurrent_calls_from_several_threads(tiny_bundle: Path) -> None:
    rt = Runtime(tiny_bundle)
    inputs = [_images(1 + i % 5, seed=i) for i in range(24)]
    want = [rt(x) for x in inputs]
    rt.reset_stats()
    got: dict[int, Any] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, len(inputs), 4):
                got[i] = rt(inputs[i])
                if i % 7 == 0:
                    rt.set_policy("agent")  # the same policy again, concurrently with calls
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, w in enumerate(want):
        assert np.array_equal(got[i].executed, w.executed)
        assert np.abs(got[i].logits - w.logits).max() <= 1e-5
    stats = rt.stats()
    assert stats.calls == len(inputs) and stats.inputs == sum(len(x) for x in inputs)


@pytest.mark.slow
def test_telemetry_counts_add_up(digits_tflite_bundle: Path, digits_test_uint8: np.ndarray) -> None:
    rt = Runtime(digits_tflite_bundle)
    outs = [rt(digits_test_uint8[i:i + n]) for i, n in ((0, 1), (1, 7), (8, 32), (40, 3))]
    stats = rt.stats()
    executed = np.concatenate([o.executed for o in outs])
    exits = np.concatenate([o.exit_layer for o in outs])
    assert stats.calls == 4 and stats.inputs == 43
    assert sum(stats.executed_layers.values()) == 43
    assert stats.executed_layers == {int(k): int(v) for k, v in zip(*np.unique(executed.sum(1), return_counts=True), strict=True)}
    assert stats.layer_counts == tuple(executed.sum(0).tolist())
    assert sum(stats.exits.values()) == 43 and stats.exits.get("head", 0) == int((exits == -1).sum())
    paths = [p for o in outs for p in o.paths()]
    assert stats.paths == {p: paths.count(p) for p in set(paths)}
    assert stats.latency_ms["samples"] == 4 and stats.latency_ms["p50"] <= stats.latency_ms["p90"]
    assert abs(stats.mean_executed_layers - executed.sum(1).mean()) < 1e-12
    d = stats.to_dict()
    assert d["inputs"] == 43 and set(d["latency_ms"]) >= {"p50", "p90", "p99"}
    rt.reset_stats()
    assert rt.stats().inputs == 0 and rt.stats().paths == {}


# -- torch-free, engines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
def test_runtime_runs_where_torch_is_hidden(torch_blocker: str, digits_tflite_bundle: Path, backend: str) -> None:
    code = torch_blocker + f"""
import numpy as np
import edgeskip
rt = edgeskip.Runtime({str(digits_tflite_bundle)!r}, backend={backend!r})
out = rt(np.zeros((3, 8, 8, 1), np.uint8))
assert out.logits.shape == (3, 10) and rt.stats().inputs == 3
try:
    edgeskip.Runtime({str(digits_tflite_bundle)!r}, backend="torch")
except edgeskip.BackendUnavailableError as exc:
    assert "PyTorch" in str(exc)
else:
    raise SystemExit("the torch backend loaded without torch")
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=NEUTRAL)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_every_registered_backend_is_a_backend() -> None:
    assert BACKENDS.names() == ["onnxruntime", "tflite", "tensorrt", "torch"]
    from edgeskip.runtimes.backend import Backend

    for name in ("onnxruntime", "tflite", "tensorrt", "torch"):
        assert issubclass(BACKENDS.get(name)(), Backend)


@pytest.mark.parametrize(("n", "batches", "plan"), [
    (1, [1, 8], [1]), (8, [1, 8], [8]), (11, [1, 8], [8, 1, 1, 1]), (3, [8], [8]), (17, [8], [8, 8, 8]),
    (12, [4, 8], [8, 4]), (5, [2, 4], [4, 2]),
])
def test_engine_chunks_cover_every_row(n: int, batches: list[int], plan: list[int]) -> None:
    assert chunk_plan(n, batches) == plan
    assert sum(plan) >= n
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    seen: list[int] = []

    def compiled(chunk: np.ndarray) -> np.ndarray:  # accepts only the compiled sizes, as an engine does
        assert chunk.shape[0] in batches
        seen.append(chunk.shape[0])
        return chunk * 2

    assert np.array_equal(in_fixed_batches(compiled, x, batches), x * 2) and seen == plan


def test_torch_backend_refuses_other_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from edgeskip.bundle import MANIFEST, Manifest

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / MANIFEST).read_text())
    raw["weights"]["seed"] = raw["weights"]["seed"] + 1
    Manifest.from_dict(raw)
    (copy / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(edgeskip.CheckpointError, match="fingerprint"):
        Runtime(copy, backend="torch")


def test_torch_backend_needs_the_checkpoint_a_bundle_names_but_never_locates(digits_tflite_bundle: Path) -> None:
    """A bundle travels: it records its checkpoint's name and weights sha256, never a path of the build machine."""
    m = Bundle.open(digits_tflite_bundle).manifest
    assert m.weights.checkpoint_name == "ckpt" and m.weights.checkpoint_sha256 is not None
    assert "/" not in (digits_tflite_bundle / "manifest.json").read_text().split('"weights"')[1].split("}")[0]
    with pytest.raises(edgeskip.CheckpointError, match=f"pass checkpoint=PATH.*'ckpt'.*{m.weights.checkpoint_sha256}"):
        Runtime(digits_tflite_bundle, backend="torch")


def test_outputs_carry_class_names(tiny_bundle: Path) -> None:
    rt = Runtime(tiny_bundle)
    out = rt(_images(5))
    assert rt.classes == Bundle.open(tiny_bundle).manifest.classes and len(rt.classes) == rt.num_classes
    assert out.class_names == [rt.classes[i] for i in out.labels.tolist()] and len(out.class_names) == 5


APP_SESSIONS = """
import json, sys
import numpy as np, onnxruntime as ort, edgeskip
bundle = sys.argv[1]
model = bundle + "/onnx/model.onnx"
before = ort.InferenceSession(model, edgeskip.session_options(), providers=["CPUExecutionProvider"])
rt = edgeskip.Runtime(bundle, policy="static")  # makes onnxruntime's process-wide thread pool
after = ort.InferenceSession(model, edgeskip.session_options(), providers=["CPUExecutionProvider"])
try:
    ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    plain = "accepted"
except Exception as exc:
    plain = "refused" if "global thread pool" in str(exc) else repr(exc)
x = edgeskip.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                        rt.manifest.normalization)
name = before.get_inputs()[0].name
mine = [s.run(None, {name: x})[0] for s in (before, after)]
print(json.dumps({"plain": plain, "pool": rt.info()["thread_pool"], "arena": rt.info().get("memory_arena"),
                  "error": max(float(np.abs(m - rt(x).logits).max()) for m in mine)}))
"""


def test_an_application_s_own_sessions_work_beside_the_runtime(tiny_bundle: Path) -> None:
    """With edgeskip.session_options(), an application's onnxruntime sessions made before and after a Runtime
    both run; a session with default options made after it is refused by onnxruntime (why the helper exists)."""
    import json

    proc = subprocess.run([sys.executable, "-c", APP_SESSIONS, str(tiny_bundle)], capture_output=True, text=True,
                          timeout=300, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plain"] == "refused" and result["pool"].startswith("global") and result["error"] < 1e-4
    # every edgeskip session, and the application's made with session_options(), allocate from one CPU arena
    assert result["arena"] == "process-wide"


def test_decision_free_segments() -> None:
    from edgeskip.rule import decision_free_segments as segments

    assert segments([(0, None), (1, None), (2, 0.5), (3, None), (4, None), (5, None)], {}) == ((0, 1), (3, 4, 5))
    assert segments([(0, None), (1, None), (2, None), (3, None)], {1: (0, 0.5)}) == ((0, 1), (2, 3))  # exit after 1
    assert segments([(0, None), (2, None), (3, 0.2)], {}) == ((0, 2),)  # a removed layer between: still one call
    assert segments([(0, 0.5), (1, None)], {}) == () and segments([(0, None)], {}) == ()


@pytest.mark.parametrize("policy", [
    Policy("static"),
    Policy.config([0.0, None, 0.0, 0.0, 0.0, 0.0]),  # a removed layer inside a segment
    Policy.config([0.0, 0.0, 0.6, 0.0, 0.0, 0.6], [1.0, 0.5, 1.0, 1.0, 1.0]),  # agents between, an exit after layer 1
    Policy.config([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.4, 1.0, 1.0]),  # exits cut the segment
])
def test_fused_segments_decide_as_the_loop_does(digits_agents: dict[str, Path], digits_test_uint8: Any,
                                                policy: Policy) -> None:
    images = digits_test_uint8[:40]
    fused = Runtime(digits_agents["bundle"], policy=policy, whole_static=False)
    loop = Runtime(digits_agents["bundle"], policy=policy, whole_static=False, fuse=False)
    assert fused.fused == fused.plan.segments and fused.fused and loop.fused == ()
    a, b = fused(images), loop(images)
    assert np.array_equal(a.executed, b.executed) and np.array_equal(a.exit_layer, b.exit_layer)
    assert np.abs(a.logits - b.logits).max() < 1e-4
    one = [fused(images[i]) for i in range(5)]  # one at a time: the same paths
    assert all(np.array_equal(o.executed[0], a.executed[i]) for i, o in enumerate(one))
    assert fused.info()["path"] == "stages" and fused.info()["fused"] == [list(seg) for seg in fused.plan.segments]
    fused.set_policy("agent")  # switching plans drops the segments of the old one
    assert fused.fused == fused.plan.segments
    fused.set_policy("static")
    assert fused.path == "stages"  # whole_static=False: the loop, every layer in one fused segment
    assert Runtime(digits_agents["bundle"], policy="static").path == "monolithic"


def test_a_colour_image_for_a_grey_model_is_refused(digits_agents: dict[str, Path], digits_test_uint8: Any) -> None:
    """The digits model takes one channel: an (H, W, 3) image is not silently read as H images 3 pixels wide."""
    rt = Runtime(digits_agents["bundle"])
    rgb = np.repeat(digits_test_uint8[0], 3, axis=-1)  # (8, 8, 3)
    with pytest.raises(InputError, match="looks like a colour image"):
        rt(rgb)
    assert len(rt(digits_test_uint8[0][..., 0])) == 1 and len(rt(digits_test_uint8[:3, ..., 0])) == 3  # grey


def test_chain_models_refuses_control_flow(tiny_bundle: Path) -> None:
    """Stages are plain graphs; a model with subgraphs (the gate graph's If nodes) is not fused silently wrong."""
    from edgeskip.errors import BackendError
    from edgeskip.runtimes.ort_backend import chain_models

    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BackendError, match="subgraphs"):
        chain_models([bundle.read("onnx/gate.onnx"), bundle.read_stage("layer_00", "onnx")])


def test_a_configuration_runs_on_its_path(digits_agents: dict[str, Path], digits_test_uint8: np.ndarray,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Path 'gate' runs the gate graph for one input and the stage loop for a batch, with the same decisions; a
    path the Runtime cannot take is refused and the previous one kept."""
    from edgeskip.runtimes.gate import GateGraph

    bundle, images = digits_agents["bundle"], digits_test_uint8[:12]
    stages = Runtime(bundle, policy="agent+e2cm")
    rt = Runtime(bundle, policy="agent+e2cm", path="gate")
    assert stages.path == "stages" and rt.path == "gate" and rt.info()["path"] == "gate"
    calls: list[int] = []
    real = GateGraph.run
    monkeypatch.setattr(GateGraph, "run", lambda self, image: calls.append(1) or real(self, image))
    for i in range(4):
        a, b = stages(images[i]), rt(images[i])
        assert np.array_equal(a.executed, b.executed) and np.array_equal(a.exit_layer, b.exit_layer)
        assert np.abs(a.logits - b.logits).max() <= 1e-4
    assert len(calls) == 4
    a, b = stages(images), rt(images)  # a batch: the stage loop, per-input decisions inside it
    assert len(calls) == 4 and np.array_equal(a.executed, b.executed) and np.array_equal(a.exit_layer, b.exit_layer)
    assert (a.exit_layer >= 0).any() and not a.executed.all()  # the inputs do take different paths
    rt.set_policy("static")
    assert rt.path == "monolithic"  # no path given: a static plan runs the monolithic model
    rt.set_policy("static", path="gate")
    assert rt.path == "gate" and rt(images[0]).executed.all() and len(calls) == 5
    for path, message in (("monolithic", "only a static plan"), ("fastest", "unknown execution path")):
        with pytest.raises(ConfigError, match=message):
            rt.set_policy("agent", path=path)
        assert rt.path == "gate" and rt.plan.static
    torch_rt = Runtime(bundle, backend="torch", checkpoint=str(digits_agents["checkpoint"]))
    with pytest.raises(ConfigError, match="fp32 onnxruntime backend only"):
        torch_rt.set_policy("agent", path="gate")
    with pytest.raises(ConfigError, match="graph='gate' runs the gate graph only"):
        Runtime(bundle, graph="gate", path="stages")
