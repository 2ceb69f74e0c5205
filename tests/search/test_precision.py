"""Precision per layer: a bundle holding fp32 and INT8 layers runs any mix of them without reload, its profile
times both, and the search chooses each layer's precision as a gene next to its threshold and the exits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeskip.bundle import Bundle, BundleError
from edgeskip.cli import main
from edgeskip.devices.profiler import ProfileSettings, profile_bundle
from edgeskip.errors import ConfigError
from edgeskip.front import load_front, pareto_path
from edgeskip.policy import Policy
from edgeskip.profile import Profile
from edgeskip.runtimes import Runtime
from edgeskip.runtimes.inputs import prepare
from edgeskip.search.bundle import eval_chunk, search_precisions
from edgeskip.search.costs import CostKey, ProfileCosts, Usage
from edgeskip.search.genome import Genome
from edgeskip.search.pathcache import PathCache, exit_grid
from edgeskip.search.settings import BundleSearchSettings

DEPTH = 6  # vit-digits


@pytest.fixture(scope="module")
def profiled(digits_int8_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Profile]:
    bundle = Path(shutil.copytree(digits_int8_bundle, tmp_path_factory.mktemp("p") / "b"))
    profile = profile_bundle(bundle, "cpu", settings=ProfileSettings.quick((1,)))
    profile.save(bundle)
    return bundle, profile


def _chain(bundle: Path, x: np.ndarray, formats: list[str]) -> np.ndarray:
    """Logits of every layer run in its format, each stage in a session of its own (no Runtime)."""
    import onnxruntime as ort

    from edgeskip.runtimes.ort_backend import app_session_options

    m = Bundle.open(bundle).manifest
    out = x
    for stage in [m.stage("embed"), *(m.stage(f"layer_{j:02d}") for j in range(DEPTH)), m.stage("head")]:
        fmt = formats[stage.layer] if stage.layer is not None else "onnx"
        sess = ort.InferenceSession(str(bundle / stage.files[fmt]), app_session_options(),
                                    providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: out})[0]
    return out


def test_the_runtime_switches_precision_per_layer_without_reload(digits_int8_bundle: Path,
                                                                 digits_test_uint8: np.ndarray) -> None:
    images = digits_test_uint8[:16]
    rt = Runtime(digits_int8_bundle, policy="static")
    assert rt.precisions == ("int8", "fp32")
    x = prepare(images, rt.input_spec)
    sessions = rt.backend._stages  # type: ignore[union-attr]
    assert rt.backend.variant_bytes == 0  # type: ignore[union-attr]  # fp32 layers load only when asked for
    mixes = (["int8"] * DEPTH, ["fp32"] * DEPTH, ["fp32", "int8"] * (DEPTH // 2), [None, "fp32"] * (DEPTH // 2))
    for mix in mixes:
        rt.set_policy(Policy.config(None, None, mix))
        assert rt.path == "stages" and rt.info()["policy"]["precisions"] == mix
        want = _chain(digits_int8_bundle, x, ["onnx" if p == "fp32" else "onnx-int8" for p in mix])
        np.testing.assert_allclose(rt(images).logits, want, atol=1e-4)
    assert rt.backend.variant_bytes > 0 and all(f"layer_{j:02d}:fp32" in sessions  # type: ignore[union-attr]
                                                for j in range(DEPTH))
    with pytest.raises(ConfigError, match="cannot run layer 0 in fp16: it runs this bundle's layers in int8, fp32"):
        rt.set_policy(Policy.config(None, None, ["fp16"] + [None] * (DEPTH - 1)))
    with pytest.raises(ConfigError, match="unknown precision"):
        rt.set_policy(Policy.config(None, None, ["int4"] * DEPTH))
    with pytest.raises(ConfigError, match="6 layers"):
        rt.set_policy(Policy.config(None, None, ["fp32"]))
    # an fp32 backend runs the INT8 layers as its variants, on the stage loop (not the one-call fp32 model)
    fp32 = Runtime(digits_int8_bundle, policy=Policy.config(None, None, ["int8"] * DEPTH), format="onnx")
    assert fp32.path == "stages" and fp32.precisions == ("fp32", "int8")
    with pytest.raises(ConfigError, match="per-layer precisions"):
        fp32.set_policy(Policy.config(None, None, ["int8"] * DEPTH), path="gate")
    fp32.set_policy(Policy.config(None, None, ["fp32"] * DEPTH))  # its own precision: the monolithic model again
    assert fp32.path == "monolithic"


def test_the_profile_times_each_precision_and_the_cost_model_prices_it(profiled: tuple[Path, Profile]) -> None:
    _, profile = profiled
    pieces = profile.batches["1"]
    assert all(f"layer_{j:02d}:fp32" in pieces and f"layer_{j:02d}" in pieces for j in range(DEPTH))
    costs = ProfileCosts.from_profile(profile, DEPTH)
    assert costs.precision == "int8" and costs.precisions == ("int8", "fp32")
    # a synthetic profile: one layer's two precisions priced from their own entries, the rest of the sum unchanged
    entries = {CostKey("embed", None, 1): (1.0, 0.0), CostKey("head", None, 1): (1.0, 0.0)}
    for j in range(2):
        entries[CostKey("layer", j, 1)] = (2.0, 0.0)
        entries[CostKey("layer", j, 1, precision="fp32")] = (3.0, 0.0)
    model = ProfileCosts(entries, {1: (0.0, 0.0)}, 2, "cpu", "estimate", precision="int8")
    usage = Usage(layers=(1.0, 0.5), asked=(0.0, 0.0), checked=(), reach_head=1.0)
    assert model.predict(usage).latency_ms == pytest.approx(2 + 2.0 + 1.0)
    mixed = Usage(layers=(1.0, 0.5), asked=(0.0, 0.0), checked=(), reach_head=1.0, precisions=("fp32", None))
    assert model.predict(mixed).latency_ms == pytest.approx(2 + 3.0 + 1.0)
    with pytest.raises(ConfigError, match="no layer 1 in fp16"):
        model.predict(Usage(layers=(1.0, 0.5), asked=(0.0, 0.0), checked=(), reach_head=1.0,
                            precisions=(None, "fp16")))
    with pytest.raises(ConfigError, match="unknown profile entry"):
        CostKey.parse("layer_03:int4", 1)


def test_precision_genes_decode_and_encode() -> None:
    genome = Genome(4, [0, 1, 3], (0.0, 0.5), [(0.2, 0.4)], precisions=("int8", "fp32"))
    assert genome.size == 3 + 1 + 3 and genome.upper == [2, 2, 2, 2, 1, 1, 1]
    static = genome.static_genes
    assert static == (1, 1, 1, 0, 0, 0, 0) and genome.policy(static).precisions == ("int8", "int8", None, "int8")
    genes = (2, 0, 1, 1, 1, 0, 1)
    policy = genome.policy(genes)
    assert policy.layers == (0.5, None, None, 0.0) and policy.exits == (0.2,)
    assert policy.precisions == ("fp32", None, None, "fp32")  # a removed layer has no precision
    assert genome.genes_of(policy.layers, policy.exits, policy.precisions) == genes
    assert genome.genes_of(policy.layers, policy.exits, ["fp16"] * 4) is None  # not on offer
    plain = Genome(4, None, (0.0, 0.5), precisions=("int8",))  # one precision: no gene
    assert plain.size == 4 and plain.policy(plain.static_genes).precisions is None
    settings = BundleSearchSettings(precisions="int8")
    assert search_precisions(settings, ("int8", "fp32"), ("int8", "fp32")) == ("int8",)
    assert search_precisions(BundleSearchSettings(), ("int8", "fp32"), ("int8",)) == ("int8",)
    with pytest.raises(ConfigError, match="fp32 first"):
        search_precisions(BundleSearchSettings(precisions="int8"), ("fp32", "int8"), ("fp32", "int8"))
    with pytest.raises(ConfigError, match="profile the bundle with the backend"):
        search_precisions(BundleSearchSettings(), ("fp32", "int8"), ("int8", "fp32"))


def test_cached_evaluation_of_mixed_precisions_equals_a_full_run(profiled: tuple[Path, Profile],
                                                                 images: tuple[Any, Any]) -> None:
    """Dynamic INT8 layers quantize activations over each call's batch (the format says ``batch_dependent``): the
    search then evaluates at its deployment batch, here 1, and equals the Runtime one image at a time."""
    bundle, _ = profiled
    rt = Runtime(bundle, policy="static", whole_static=False)
    assert rt.manifest.formats["onnx-int8"].batch_dependent and eval_chunk(rt, 1) == 1 and eval_chunk(rt, 8) == 8
    x = prepare(images[0][:40], rt.input_spec)
    labels = images[1][:40]
    per_state = int(np.prod(rt.backend.run("embed", x[:1]).shape)) * 4  # type: ignore[union-attr]
    cache = PathCache(rt, x, labels, pool_mb=3 * len(x) * per_state / 2**20, chunk=eval_chunk(rt, 1))
    assert cache.bits == 2  # 0: not run, 1: int8, 2: fp32
    cache.evaluate(Policy("static"))
    genome = Genome(DEPTH, None, (0.0, 0.5, 1.0), [exit_grid(cache, layer, (0.1, 0.3), 1.0)
                                                    for layer in cache.exit_layers], precisions=rt.precisions)
    rng = np.random.default_rng(1)
    fp32_layers = 0
    for _ in range(12):
        genes = tuple(rng.integers(0, np.asarray(genome.upper) + 1).tolist())
        if not any(genes[:DEPTH]):
            continue
        policy = genome.policy(genes)
        cached = cache.evaluate(policy)
        one = Runtime(rt.bundle, policy=policy, whole_static=False)
        full = [one(x[i:i + 1]) for i in range(len(x))]
        assert np.array_equal(cached.executed, np.concatenate([f.executed for f in full])), genes
        assert np.array_equal(cached.exit_layer, np.concatenate([f.exit_layer for f in full])), genes
        np.testing.assert_allclose(cached.logits, np.concatenate([f.logits for f in full]), atol=1e-5)  # type: ignore[arg-type]
        fp32_layers += sum(p == "fp32" for p in policy.precisions or ())
    assert fp32_layers > 10 and cache.recomputed > 0  # mixed chains, tokens recomputed in their own precision


def test_search_chooses_precisions_and_select_records_them(profiled: tuple[Path, Profile], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    assert main(["-q", "search", str(bundle), "--images", "120", "--holdout-images", "60", "--pop-size", "12",
                 "--generations", "6"]) == 0
    front = load_front(pareto_path(bundle, "cpu"))
    assert front.meta["settings"]["precisions"] == ["int8", "fp32"]
    assert front.static.precisions == ("int8",) * DEPTH  # the backend's own: INT8 static
    assert all(p.precisions is not None and len(p.precisions) == DEPTH for p in front.points)
    chosen = front.points[-1]
    assert main(["-q", "select", str(bundle), "--budget-ms", str(chosen.cost("latency_ms") * 1.0001)]) == 0
    default = Bundle.open(bundle).manifest.default_config
    assert default is not None and default.precisions is not None and len(default.precisions) == DEPTH
    rt = Runtime(bundle)  # policy auto: the selected configuration, in its precisions
    assert rt.policy.name == "default" and rt.policy.precisions == default.precisions
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["default_config"]["precisions"] = ["int4"] * DEPTH
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="layer precisions"):
        Bundle.open(bundle)
