"""Fuzzing with hypothesis: whatever a bundle, an application or a user hands edgeskip ends in a documented
exception (an :class:`~edgeskip.errors.EdgeskipError`) or a valid result, never an internal error or a hang.

Targets: manifest parsing (random JSON, mutated real manifests, raw bytes: deep nesting, huge numbers,
broken UTF-8), a Runtime on a mutated manifest whose checksums still match, image inputs (any dtype,
rank, shape, NaN/inf), skip configurations and genes, budgets and Pareto-front files.
``EDGESKIP_FUZZ_SCALE`` multiplies every example count (default 1: the CI run).
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeskip.bundle import MANIFEST, Bundle, BundleError, Manifest
from edgeskip.errors import ConfigError, EdgeskipError, InputError
from edgeskip.policy import SkipConfig
from edgeskip.runtimes import Runtime, RuntimeOutput
from edgeskip.search.genome import Genome

SCALE = float(os.environ.get("EDGESKIP_FUZZ_SCALE", "1"))
HANG_SECONDS = 600  # a whole test taking longer than this is a hang: dump every thread's stack and exit


def examples(n: int) -> Any:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_SECONDS * SCALE, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# -- strategies --------------------------------------------------------------------------------------

HUGE = st.sampled_from([10**30, -(10**30), 2**63, 2**64 + 1, 10**300, 1e308, -1e308, float("inf"), float("-inf"),
                        float("nan"), 0, -1, 1.5, True, False])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12), HUGE)
JSON = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                    st.dictionaries(st.text(max_size=8), kids, max_size=5)),
                    max_leaves=25)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indices)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    """A copy of ``doc`` with the value at ``path`` replaced, deleted, or wrapped in a list."""
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "wrap":
        parent[key] = [parent[key]]
    else:
        parent[key] = value
    return doc


@pytest.fixture(scope="module")
def manifest_dict(tiny_bundle: Path) -> dict[str, Any]:
    return json.loads((tiny_bundle / MANIFEST).read_text())  # type: ignore[no-any-return]


def _parse(doc: Any) -> Manifest | None:
    """Manifest.from_dict: a Manifest, or None after a BundleError; anything else fails the test."""
    try:
        m = Manifest.from_dict(doc)
    except BundleError:
        event("BundleError")
        return None
    event("parsed")
    return m


# -- manifest parsing ----------------------------------------------------------------------------------

@examples(1000)
@given(JSON)
def test_random_json_is_a_bundle_error(doc: Any) -> None:
    assert _parse(doc) is None  # nothing random is a manifest


@examples(1000)
@given(data=st.data())
def test_mutated_manifests_parse_or_raise_bundle_error(manifest_dict: dict[str, Any], data: st.DataObject) -> None:
    paths = _paths(manifest_dict)
    doc = manifest_dict
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths[1:] if len(paths) > 1 else paths), label="path")
        how = data.draw(st.sampled_from(["replace", "replace", "delete", "wrap"]) if path else st.just("replace"))
        doc = _mutate(doc, path, how, data.draw(JSON, label="value"))
    m = _parse(doc)
    if m is not None:  # what parsed must be self-consistent and come back equal from its own JSON
        again = Manifest.from_dict(json.loads(m.to_bytes()))
        assert again == m and again.fingerprint == m.fingerprint and len(m.fingerprint) == 64


RAW_MANIFESTS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(4_000, 50_000).map(lambda n: b'{"format": "edgeskip.bundle", "schema_version": 1' + b"9" * n + b"}"),
    st.integers(4_000, 50_000).map(lambda n: b"1" * n),  # beyond Python's integer digit limit
    st.sampled_from([b"NaN", b"Infinity", b'{"format": NaN}', b"\xff\xfe{}", b"\x00", b"{}" * 3, b""]),
)


@examples(300)
@given(raw=RAW_MANIFESTS)
def test_raw_manifest_bytes_are_a_bundle_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    root = tmp_path_factory.mktemp("raw")
    (root / MANIFEST).write_bytes(raw)
    with pytest.raises(BundleError):
        Bundle.open(root)


@examples(300)
@given(data=st.data())
def test_a_runtime_on_a_mutated_manifest_runs_or_raises_a_documented_error(
        tiny_bundle: Path, manifest_dict: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
        data: st.DataObject) -> None:
    """The manifest is changed, the files (and their checksums) are not: the Runtime refuses with an
    EdgeskipError or runs and answers correctly shaped results."""
    skip = {"files", "provenance", "fidelity"}  # checksums are covered by the hostile-bundle tests
    paths = [p for p in _paths(manifest_dict)[1:] if p[0] not in skip]
    path = data.draw(st.sampled_from(paths), label="path")
    how = data.draw(st.sampled_from(["replace", "delete", "wrap"]), label="how")
    doc = _mutate(manifest_dict, path, how, data.draw(JSON, label="value"))
    root = tmp_path_factory.mktemp("mutated") / "b"
    shutil.copytree(tiny_bundle, root)
    (root / MANIFEST).write_text(json.dumps(doc))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    try:
        rt = Runtime(root)
        out = rt(image)
    except EdgeskipError as exc:
        event(type(exc).__name__)
        return
    event("ran")
    _assert_valid(out, 1, rt)


# -- image inputs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(tiny_bundle: Path) -> Runtime:
    return Runtime(tiny_bundle, policy="agent")


def _assert_valid(out: RuntimeOutput, batch: int, rt: Runtime) -> None:
    assert isinstance(out, RuntimeOutput) and len(out) == batch
    assert out.logits.shape == (batch, rt.num_classes) and np.isfinite(out.logits).all()
    assert out.executed.shape == (batch, rt.depth) and out.exit_layer.shape == (batch,)
    assert np.array_equal(out.labels, out.logits.argmax(axis=1))


DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
                   st.just(np.dtype(object)))
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=40).filter(lambda s: math.prod(s) <= 40_000)


@st.composite
def images(draw: st.DrawFn) -> Any:
    """Arrays of any dtype, rank and shape (special values included), near-valid images, and non-arrays."""
    kind = draw(st.sampled_from(["any", "image", "float", "other"]))
    if kind == "any":
        dtype = draw(DTYPES)
        if dtype == np.dtype(object):
            return np.array(draw(st.lists(SCALARS, max_size=6)), dtype=object)
        return draw(hnp.arrays(dtype, draw(SHAPES)))
    if kind == "image":  # uint8 channels last, any size, maybe the wrong channel count
        b, h, w = draw(st.integers(0, 3)), draw(st.integers(0, 70)), draw(st.integers(0, 70))
        c = draw(st.sampled_from([3, 3, 1, 4]))
        shape = draw(st.sampled_from([(h, w, c), (b, h, w, c), (h, w), (c, h, w)]))
        return draw(hnp.arrays(np.uint8, shape))
    if kind == "float":  # normalised float, channels first, with NaN and inf allowed
        dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
        shape = draw(st.sampled_from([(3, 32, 32), (2, 3, 32, 32), (1, 3, 7, 45), (3, 32, 32, 1), (1, 32, 32, 3)]))
        return draw(hnp.arrays(dtype, shape, elements=st.floats(width=16 if dtype == np.float16 else 32,
                                                                allow_nan=True, allow_infinity=True)))
    return draw(st.one_of(SCALARS, st.lists(st.lists(st.integers(-300, 300), max_size=4), max_size=4),
                          st.text(max_size=10), st.binary(max_size=10)))


@examples(1000)
@given(x=images())
def test_any_image_input_gives_a_result_or_an_input_error(runtime: Runtime, x: Any) -> None:
    calls = runtime.stats().calls
    try:
        out = runtime(x)
    except InputError:
        event("InputError")
        assert runtime.stats().calls == calls  # nothing run, nothing counted
        return
    event("ran")
    _assert_valid(out, len(out), runtime)


# -- skip configurations, genes ------------------------------------------------------------------------

THRESHOLDS = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-3, 3), st.booleans(), st.text(max_size=3), HUGE)


@examples(500)
@given(genes=st.one_of(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=2, max_side=6)),
                       st.lists(SCALARS, max_size=6)),
       depth=st.integers(1, 6), grid=st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=6))
def test_genes_decode_or_raise_config_error(genes: Any, depth: int, grid: list[float]) -> None:
    try:
        genome = Genome(depth, None, grid)
    except ConfigError:
        return
    try:
        policy = genome.policy(genes)
    except ConfigError:
        return
    assert policy.layers is not None and len(policy.layers) == depth
    assert genome.genes_of(policy.layers, policy.exits) == tuple(np.asarray(genes).tolist())


@examples(500)
@given(policy=st.one_of(st.lists(THRESHOLDS, max_size=6).map(tuple), JSON,
                        st.sampled_from(["static", "agent", "e2cm", "agent+e2cm", "auto", "fast", ""])))
def test_any_policy_is_applied_or_a_config_error(runtime: Runtime, policy: Any) -> None:
    """Thresholds (a SkipConfig when it builds), dicts, names: set_policy takes it or raises; then it runs."""
    before = runtime.policy
    if isinstance(policy, tuple):
        try:
            policy = SkipConfig(policy)
        except ConfigError:
            return
    try:
        runtime.set_policy(policy)
    except EdgeskipError:
        assert runtime.policy == before  # a refused policy changes nothing
        return
    try:
        _assert_valid(runtime(np.zeros((32, 32, 3), np.uint8)), 1, runtime)
    finally:
        runtime.set_policy("agent")


# -- budgets and Pareto fronts ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def front_file(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    """A real Pareto front of the tiny bundle (quick profile + a short search on random images)."""
    from edgeskip.devices.profiler import ProfileSettings, profile_bundle
    from edgeskip.search.bundle import search_and_save
    from edgeskip.search.settings import BundleSearchSettings

    root = tmp_path_factory.mktemp("front") / "b"
    shutil.copytree(tiny_bundle, root)
    profile = profile_bundle(root, "cpu", settings=ProfileSettings.quick((1,)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 60)
    search_and_save(root, x, y, profile, BundleSearchSettings(generations=3, pop_size=12), calibration="random images")
    return Bundle.open(root), root / "pareto" / "cpu.json"


BUDGETS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**30), st.booleans(),
                    st.none(), st.text(max_size=5), HUGE)


@examples(500)
@given(ms=BUDGETS, mj=BUDGETS)
def test_any_budget_selects_within_it_or_raises(front_file: tuple[Bundle, Path], ms: Any, mj: Any) -> None:
    from edgeskip.search.select import select

    bundle, path = front_file
    try:
        chosen = select(bundle, "cpu", budget_ms=ms, budget_mj=mj, pareto=path)
    except EdgeskipError:
        return
    value = ms if ms is not None else mj
    assert chosen.point.cost("latency_ms" if ms is not None else "energy_mj") <= value


@examples(300)
@given(data=st.data())
def test_mutated_pareto_files_load_or_raise(front_file: tuple[Bundle, Path], tmp_path_factory: pytest.TempPathFactory,
                                            data: st.DataObject) -> None:
    from edgeskip.front import choose, load_front

    bundle, path = front_file
    doc = json.loads(path.read_text())
    target = data.draw(st.sampled_from(_paths(doc)[1:]), label="path")
    doc = _mutate(doc, target, data.draw(st.sampled_from(["replace", "delete", "wrap"])), data.draw(JSON))
    out = tmp_path_factory.mktemp("front") / "cpu.json"
    out.write_text(json.dumps(doc))
    try:
        front = load_front(out, fingerprint=bundle.manifest.fingerprint, device="cpu")
        point = choose(front, budget_ms=data.draw(st.floats(0.001, 1e6))).point
    except EdgeskipError:
        return
    assert point in front.points
