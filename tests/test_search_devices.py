"""``edgeskip search`` and ``edgeskip select``: exact cached evaluation, a non-dominated front, budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeskip.bundle import Bundle, BundleError
from edgeskip.cli import main
from edgeskip.devices.costmodel import CostModel, usage_of
from edgeskip.devices.profiler import (
    ProfileSettings,
    load_profile,
    profile_bundle,
    save_profile,
)
from edgeskip.devices.search import (
    FrontError,
    Genome,
    ParetoFront,
    PathCache,
    SearchSettings,
    exit_grid,
    load_front,
    non_dominated,
    pareto_path,
    search_bundle,
)
from edgeskip.devices.select import NothingFits, choose, select
from edgeskip.errors import ConfigError
from edgeskip.runtimes import Policy, Runtime
from edgeskip.runtimes.inputs import prepare


@pytest.fixture(scope="module")
def images(cifar_tiny_agents: dict[str, Path]) -> tuple[Any, Any]:
    """96 real CIFAR-10 test images and labels."""
    from edgeskip.data import load_cifar10

    test = load_cifar10(cifar_tiny_agents["data"], progress=False).test
    return test.images[400:496], test.labels[400:496]


@pytest.fixture(scope="module")
def profiled(cifar_tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A private copy of the trained agents + E²CM bundle with a quick cpu profile."""
    bundle = Path(shutil.copytree(cifar_tiny_bundle, tmp_path_factory.mktemp("s") / "b"))
    profile = profile_bundle(bundle, "cpu", settings=ProfileSettings.quick((1,)))
    save_profile(profile, bundle)
    return bundle, profile


@pytest.fixture(scope="module")
def front(profiled: tuple[Path, dict[str, Any]], images: tuple[Any, Any]) -> ParetoFront:
    bundle, profile = profiled
    result = search_bundle(bundle, images[0], images[1], profile, SearchSettings(pop_size=10, generations=5))
    result.save(pareto_path(bundle, "cpu"))
    return result


def _genomes(genome: Genome, rng: np.random.Generator, n: int) -> list[list[int]]:
    out = [genome.genes_of(None, None)]
    while len(out) < n:
        g = rng.integers(0, np.asarray(genome.upper) + 1).tolist()
        if any(g[: len(genome.layers)]):
            out.append(g)
    return out  # type: ignore[return-value]


def test_cached_evaluation_equals_a_full_run(profiled: tuple[Path, dict[str, Any]], images: tuple[Any, Any]) -> None:
    bundle, _ = profiled
    rt = Runtime(bundle, policy="static", whole_static=False)
    x = prepare(images[0], rt.input_spec)
    # a pool of 3 states per image: the cache has to drop tokens and recompute them
    per_state = int(np.prod(rt.backend.run("embed", x[:1]).shape)) * 4  # type: ignore[union-attr]
    cache = PathCache(rt, x, images[1], pool_mb=3 * len(x) * per_state / 2**20, chunk=16)
    cache.evaluate(Policy("static"))
    genome = Genome(rt.bundle, exit_grids=[exit_grid(cache, layer, (0.1, 0.3, 0.6), 1.0)
                                           for layer in rt.manifest.e2cm["exits"]])  # type: ignore[index]
    skipped = exited = 0
    for genes in _genomes(genome, np.random.default_rng(0), 24):
        policy = genome.policy(genes)
        cached = cache.evaluate(policy)
        full = Runtime(rt.bundle, policy=policy, whole_static=False)(images[0])
        assert np.array_equal(cached.executed, full.executed), genes
        assert np.array_equal(cached.exit_layer, full.exit_layer), genes
        np.testing.assert_allclose(cached.logits, full.logits, atol=1e-4)
        assert cached.accuracy == float(np.mean(full.labels == images[1]))
        skipped += int((~full.executed).any())
        exited += int((full.exit_layer >= 0).any())
    assert skipped > 10 and exited > 5  # the configurations exercised skips and exits
    assert cache.recomputed > 0  # and tokens dropped from the pool were recomputed exactly


def test_genome_round_trip(profiled: tuple[Path, dict[str, Any]]) -> None:
    bundle, _ = profiled
    genome = Genome(Bundle.open(bundle), exit_grids=[(0.2, 0.4)] * 3)
    assert genome.size == 4 + 3 and genome.upper == [5, 5, 5, 5, 2, 2, 2]
    policy = genome.policy([0, 1, 3, 5, 0, 1, 2])
    assert policy.layers == (None, 0.0, 0.5, 1.0) and policy.exits == (1.0, 0.2, 0.4)
    assert genome.genes_of(policy.layers, policy.exits) == [0, 1, 3, 5, 0, 1, 2]
    assert genome.genes_of([0.3, 0.0, 0.0, 0.0], None) is None  # off the grid
    with pytest.raises(ConfigError, match="genes must be"):
        genome.policy([0, 1, 3, 6, 0, 1, 2])


def test_search_front(front: ParetoFront, profiled: tuple[Path, dict[str, Any]], images: tuple[Any, Any]) -> None:
    bundle, profile = profiled
    pts = front.points
    F = np.array([[1 - p.accuracy, p.latency_ms, p.energy_mj] for p in pts])
    assert len(non_dominated(F)) == len(pts) >= 1  # no point of the front dominates another
    s = front.static  # nor does the static configuration, which the search evaluated
    assert not any(1 - s.accuracy <= 1 - p.accuracy and s.latency_ms <= p.latency_ms and s.energy_mj <= p.energy_mj
                   and (s.accuracy, s.latency_ms, s.energy_mj) != (p.accuracy, p.latency_ms, p.energy_mj) for p in pts)
    assert non_dominated(np.array([[0.1, 1.0], [0.2, 0.5], [0.2, 1.0], [0.05, 2.0]])).tolist() == [0, 1, 3]
    assert [p.latency_ms for p in pts] == sorted(p.latency_ms for p in pts)
    assert front.static.executed_layers == 4 and front.static.exit_rate == 0
    assert 0 < front.hypervolume and front.meta["evaluations"] >= 10 and front.meta["images"] == len(images[1])
    # each point is what the Runtime does and what the cost model predicts for that run
    model = CostModel.from_profile(profile, 4)
    exits = list(Runtime(bundle).manifest.e2cm["exits"])  # type: ignore[index]
    for p in (pts[0], pts[-1]):
        rt = Runtime(bundle, policy=p.policy, whole_static=False)
        out = rt(images[0])
        assert p.accuracy == float(np.mean(out.labels == images[1]))
        usage = usage_of(np.asarray(out.executed), np.asarray(out.exit_layer), rt.plan.cuts, exits, list(rt.plan.exits))
        assert p.latency_ms == pytest.approx(model.predict(usage).latency_ms, rel=1e-9)
        assert p.executed_layers == pytest.approx(float(np.asarray(out.executed).sum(1).mean()))
    loaded = load_front(pareto_path(bundle, "cpu"), Bundle.open(bundle), "cpu")
    assert loaded.points == front.points and loaded.static == front.static


def test_select_by_budget(front: ParetoFront, profiled: tuple[Path, dict[str, Any]], tmp_path: Path,
                          images: tuple[Any, Any]) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    pts = front.points
    mid = pts[len(pts) // 2]
    point, n = choose(front, budget_ms=mid.latency_ms)
    fits = [p for p in pts if p.latency_ms <= mid.latency_ms]
    assert n == len(fits) and point.accuracy == max(p.accuracy for p in fits) and point.latency_ms <= mid.latency_ms
    assert choose(front, budget_ms=1e9)[0].accuracy == max(p.accuracy for p in pts)
    by_energy, _ = choose(front, budget_mj=mid.energy_mj)
    assert by_energy.energy_mj <= mid.energy_mj
    with pytest.raises(NothingFits, match="cheapest configuration needs"):
        choose(front, budget_ms=pts[0].latency_ms * 0.5)
    with pytest.raises(ConfigError, match="one budget"):
        choose(front)
    with pytest.raises(ConfigError, match="positive"):
        choose(front, budget_ms=-1.0)

    chosen = select(bundle, "cpu", budget_ms=mid.latency_ms)
    assert chosen.point == point and chosen.manifest is not None
    b = Bundle.open(bundle)  # still a valid bundle, its profile and front still bound to it
    assert b.manifest.default_config is not None and b.manifest.default_config["device"] == "cpu"
    load_profile(bundle / "profiles" / "cpu.json", b, "cpu")
    load_front(pareto_path(b, "cpu"), b, "cpu")
    rt = Runtime(bundle)  # policy auto now runs the selected configuration
    assert rt.policy.name == "default" and rt.plan.layer_thresholds == point.thresholds
    assert rt.plan.exit_thresholds == point.exit_thresholds
    assert float(np.mean(rt(images[0]).labels == images[1])) == point.accuracy
    cheapest = rt.select(budget_ms=pts[0].latency_ms)  # from a loaded Runtime: switches, writes nothing
    assert rt.plan.layer_thresholds == cheapest.point.thresholds and cheapest.manifest is None
    assert Bundle.open(bundle).manifest.default_config["thresholds"] == list(point.thresholds)  # type: ignore[index]


def test_bad_default_config_is_refused(profiled: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["default_config"] = {"thresholds": [0.5, 2.0, 0.5, 0.5], "exit_thresholds": None}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="default_config needs 4 layer thresholds"):
        Bundle.open(bundle)
    raw["default_config"] = {"thresholds": None, "exit_thresholds": [0.5]}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="default_config needs 3 exit thresholds"):
        Bundle.open(bundle)


def test_front_of_another_bundle_device_or_schema_is_refused(front: ParetoFront, profiled: tuple[Path, dict[str, Any]],
                                                             tmp_path: Path) -> None:
    b = Bundle.open(profiled[0])
    path = pareto_path(b, "cpu")
    with pytest.raises(FrontError, match="not 'jetson-nano'"):
        load_front(path, b, "jetson-nano")
    data = json.loads(path.read_text())
    for name, change, message in (("other", {"bundle": {"fingerprint": "0" * 64}}, "another bundle"),
                                  ("v7", {"schema_version": 7}, "schema version 7"),
                                  ("empty", {"points": []}, "no configurations"),
                                  ("broken", {"points": [{"genes": [1]}]}, "malformed")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(FrontError, match=message):
            load_front(tmp_path / f"{name}.json", b, "cpu")
    with pytest.raises(FrontError, match="run edgeskip search first"):
        load_front(tmp_path / "missing.json")


def test_cli_search_and_select(profiled: tuple[Path, dict[str, Any]], tmp_path: Path, cifar10_tarball: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    data = str(json.loads((tmp_path / "b" / "manifest.json").read_text())["dataset"])
    assert data == "cifar10"
    assert main(["-q", "search", "--bundle", str(bundle), "--device", "cpu"]) == 2
    assert "pass --data" in capsys.readouterr().err  # no calibration data
    src = str(cifar10_tarball)
    assert main(["-q", "search", "--bundle", str(bundle), "--device", "raspberry-pi-5", "--data", src]) == 2
    assert "edgeskip profile first" in capsys.readouterr().err  # no profile for that device
    assert main(["-q", "search", "--bundle", str(bundle), "--device", "cpu", "--data", src, "--images", "60",
                 "--pop-size", "6", "--generations", "2"]) == 0
    out = capsys.readouterr().out
    assert "Pareto configurations" in out and "static" in out and "ESTIMATE" in out
    assert (bundle / "pareto" / "cpu.json").is_file() and (bundle / "pareto" / "cpu.png").stat().st_size > 5000
    cheapest = load_front(bundle / "pareto" / "cpu.json").points[0]
    assert main(["-q", "select", "--bundle", str(bundle), "--device", "cpu", "--budget-ms",
                 str(cheapest.latency_ms / 2)]) == 2
    assert "nothing fits" in capsys.readouterr().err
    assert main(["-q", "select", "--bundle", str(bundle), "--budget-ms", "1e6", "--dry-run"]) == 0
    assert "default_config" not in json.loads((bundle / "manifest.json").read_text()) or \
        json.loads((bundle / "manifest.json").read_text())["default_config"] is None
    assert main(["-q", "select", "--bundle", str(bundle), "--budget-ms", "1e6"]) == 0
    assert "default configuration" in capsys.readouterr().out
    assert json.loads((bundle / "manifest.json").read_text())["default_config"]["budget"] == {"value": 1e6, "unit": "ms"}
    assert main(["-q", "select", "--bundle", str(bundle), "--device", "jetson-nano", "--budget-ms", "5"]) == 2
    assert "run edgeskip search first" in capsys.readouterr().err
