"""``edgeskip search`` and ``edgeskip select`` on a trained digits bundle: exact cached evaluation, a non-dominated
front, budgets, and the one front format shared with apply-config and the Runtime."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeskip.bundle import Bundle, BundleError
from edgeskip.cli import main
from edgeskip.data import load_digits
from edgeskip.devices.profiler import ProfileSettings, profile_bundle
from edgeskip.errors import ConfigError
from edgeskip.front import Degenerate, FrontError, NothingFits, ParetoFront, choose, load_front, pareto_path
from edgeskip.policy import Policy
from edgeskip.profile import Profile, load_profile, profile_path
from edgeskip.runtimes import Runtime
from edgeskip.runtimes.inputs import prepare
from edgeskip.search.bundle import search_bundle
from edgeskip.search.settings import BundleSearchSettings
from edgeskip.search.costs import PATH_MARGIN, ProfileCosts, usage_of
from edgeskip.search.genome import Genome
from edgeskip.search.pathcache import PathCache, exit_grid
from edgeskip.search.problem import non_dominated
from edgeskip.search.select import record_selection, select
from edgeskip.train.checkpoint import load_checkpoint

DEPTH = 6  # vit-digits


@pytest.fixture(scope="module")
def profiled(digits_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Profile]:
    """A private copy of the trained agents + E²CM digits bundle with a quick cpu profile."""
    bundle = Path(shutil.copytree(digits_agents["bundle"], tmp_path_factory.mktemp("s") / "b"))
    profile = profile_bundle(bundle, "cpu", settings=ProfileSettings.quick((1,)))
    profile.save(bundle)
    return bundle, profile


@pytest.fixture(scope="module")
def front(profiled: tuple[Path, Profile], images: tuple[Any, Any]) -> ParetoFront:
    bundle, profile = profiled
    result = search_bundle(bundle, images[0], images[1], profile, BundleSearchSettings(pop_size=10, generations=5))
    result.save(pareto_path(bundle, "cpu"))
    return result


def _genomes(genome: Genome, rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
    out = [genome.static_genes]
    while len(out) < n:
        g = tuple(rng.integers(0, np.asarray(genome.upper) + 1).tolist())
        if any(g[: len(genome.layers)]):
            out.append(g)
    return out


def test_cached_evaluation_equals_a_full_run(profiled: tuple[Path, Profile], images: tuple[Any, Any]) -> None:
    bundle, _ = profiled
    rt = Runtime(bundle, policy="static", whole_static=False)
    x = prepare(images[0], rt.input_spec)
    # a pool of 3 states per image: the cache has to drop tokens and recompute them
    per_state = int(np.prod(rt.backend.run("embed", x[:1]).shape)) * 4  # type: ignore[union-attr]
    cache = PathCache(rt, x, images[1], pool_mb=3 * len(x) * per_state / 2**20, chunk=16)
    cache.evaluate(Policy("static"))
    genome = Genome(DEPTH, None, exit_grids=[exit_grid(cache, layer, (0.1, 0.3, 0.6), 1.0)
                                             for layer in cache.exit_layers])
    skipped = exited = 0
    for genes in _genomes(genome, np.random.default_rng(0), 24):
        policy = genome.policy(genes)
        cached = cache.evaluate(policy)
        full = Runtime(rt.bundle, policy=policy, whole_static=False)(images[0])
        assert np.array_equal(cached.executed, full.executed), genes
        assert np.array_equal(cached.exit_layer, full.exit_layer), genes
        np.testing.assert_allclose(cached.logits, full.logits, atol=1e-4)  # type: ignore[arg-type]
        assert cached.accuracy == float(np.mean(full.labels == images[1]))
        skipped += int((~full.executed).any())
        exited += int((full.exit_layer >= 0).any())
    assert skipped > 10 and exited > 5  # the configurations exercised skips and exits
    assert cache.recomputed > 0  # and tokens dropped from the pool were recomputed exactly


def test_exit_grids_leave_no_image_on_a_threshold(profiled: tuple[Path, Profile],
                                                  images: tuple[Any, Any]) -> None:
    """A threshold lies between two images' top probabilities, so float rounding cannot flip a decision."""
    rt = Runtime(profiled[0], policy="static", whole_static=False)
    cache = PathCache(rt, prepare(images[0], rt.input_spec), images[1])
    cache.evaluate(Policy("static"))
    for layer in cache.exit_layers:
        ids = cache.lookup(np.arange(cache.n), np.full(cache.n, (1 << (layer + 1)) - 1, np.int64))
        top = cache.top[ids]
        for t in exit_grid(cache, layer, (0.1, 0.3, 0.6), 1.0):
            assert np.abs(top - t).min() > 1e-9


def test_search_front(front: ParetoFront, profiled: tuple[Path, Profile], images: tuple[Any, Any]) -> None:
    bundle, profile = profiled
    pts = front.points
    F = np.array([[1 - p.accuracy, p.cost("latency_ms"), p.cost("energy_mj")] for p in pts])
    assert len(non_dominated(F)) == len(pts) >= 1  # no point of the front dominates another
    s = np.array([1 - front.static.accuracy, front.static.cost("latency_ms"), front.static.cost("energy_mj")])
    assert not any((s <= f).all() and (s < f).any() for f in F)  # nor does the static configuration
    assert non_dominated(np.array([[0.1, 1.0], [0.2, 0.5], [0.2, 1.0], [0.05, 2.0]])).tolist() == [0, 1, 3]
    assert [p.latency_ms for p in pts] == sorted(p.cost("latency_ms") for p in pts)
    assert front.static.executed_layers == DEPTH and front.static.exit_rate == 0
    # the static point is the static model as the Runtime runs it: the monolithic model, timed as one call
    assert Runtime(bundle, policy="static").static_in_one_call
    assert front.static.latency_ms == pytest.approx(profile.batches["1"]["static"].mean_ms)
    assert 0 < front.hypervolume and front.meta["evaluations"] >= 10 and front.meta["images"] == len(images[1])
    assert front.searched.kind == "bundle" and front.searched.fingerprint == Bundle.open(bundle).manifest.fingerprint
    # each point is what the Runtime does and what the cost model predicts for that run
    model = ProfileCosts.from_profile(profile, DEPTH)
    exits = list(Runtime(bundle).manifest.e2cm.exits)  # type: ignore[union-attr]
    assert front.static.path == "monolithic" and set(profile.gate) == {"1"}  # the gate graph was profiled too
    for p in pts:
        rt = Runtime(bundle, policy=p.policy, whole_static=False)
        out = rt(images[0])
        assert p.accuracy == float(np.mean(out.labels == images[1]))
        usage = usage_of(np.asarray(out.executed), np.asarray(out.exit_layer), rt.plan.steps, exits, list(rt.plan.exits),
                         static=rt.plan.static)
        # each point's latency is that of the path the profile predicts fastest for it (beyond the model's error,
        # else the stage loop), and it records that path
        paths = model.paths(usage)
        assert paths.keys() >= {"stages", "gate"} and p.path == model.predict(usage).path
        fastest = min(paths.values(), key=lambda q: q.latency_ms)
        assert p.path == ("monolithic" if "monolithic" in paths else fastest.path if fastest.latency_ms
                          < (1 - PATH_MARGIN) * paths["stages"].latency_ms else "stages")
        assert p.latency_ms == pytest.approx(paths[p.path].latency_ms, rel=1e-9)
        assert p.memory_mib == profile.memory.paths["1"][p.path] > 0  # and that path's resident memory
        assert p.executed_layers == pytest.approx(float(np.asarray(out.executed).sum(1).mean()))
        assert Runtime(bundle, policy=p.policy, path=p.path).path == p.path  # and the Runtime runs it there
    loaded = load_front(pareto_path(bundle, "cpu"), fingerprint=Bundle.open(bundle).manifest.fingerprint, device="cpu")
    assert loaded == front


def test_select_by_budget(front: ParetoFront, profiled: tuple[Path, Profile], tmp_path: Path,
                          images: tuple[Any, Any]) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    pts = front.points
    mid = pts[len(pts) // 2]
    chosen = choose(front, budget_ms=mid.cost("latency_ms"))
    fits = [p for p in pts if p.cost("latency_ms") <= mid.cost("latency_ms")]
    assert chosen.candidates == len(fits) and chosen.point.accuracy == max(p.accuracy for p in fits)
    assert choose(front, budget_ms=1e9).point.accuracy == max(p.accuracy for p in pts)
    assert choose(front, budget_mj=mid.cost("energy_mj")).point.cost("energy_mj") <= mid.cost("energy_mj")
    with pytest.raises(NothingFits, match="cheapest configuration needs"):
        choose(front, budget_ms=pts[0].cost("latency_ms") * 0.5)
    with pytest.raises(ConfigError, match="one budget"):
        choose(front)
    with pytest.raises(ConfigError, match="positive"):
        choose(front, budget_ms=-1.0)

    picked = select(bundle, "cpu", budget_ms=mid.cost("latency_ms"))
    assert picked == chosen and Bundle.open(bundle).manifest.default_config is None  # choosing writes nothing
    record_selection(bundle, picked)
    b = Bundle.open(bundle)  # still a valid bundle, its profile and front still bound to it
    assert b.manifest.default_config is not None and b.manifest.default_config.device == "cpu"
    load_profile(profile_path(b, "cpu"), fingerprint=b.manifest.fingerprint, device="cpu")
    load_front(pareto_path(b, "cpu"), fingerprint=b.manifest.fingerprint, device="cpu")
    rt = Runtime(bundle)  # policy auto now runs the selected configuration
    assert rt.policy.name == "default" and rt.plan.layer_thresholds == chosen.point.thresholds
    assert rt.plan.exit_thresholds == chosen.point.exit_thresholds
    assert float(np.mean(rt(images[0]).labels == images[1])) == chosen.point.accuracy
    before = (bundle / "manifest.json").read_bytes()
    cheapest = rt.select(budget_ms=pts[0].cost("latency_ms"))  # from a loaded Runtime: switches, writes nothing
    assert rt.plan.layer_thresholds == cheapest.point.thresholds
    assert (bundle / "manifest.json").read_bytes() == before


def test_a_search_front_applies_to_its_checkpoint(front: ParetoFront, profiled: tuple[Path, Profile],
                                                  digits_agents: dict[str, Path], tmp_path: Path) -> None:
    """search writes, apply-config reads: the layer thresholds of a bundle's point become a checkpoint's."""
    assert main(["-q", "apply-config", "--checkpoint", str(digits_agents["checkpoint"]), "--pareto",
                 str(pareto_path(profiled[0], "cpu")), "--point", "0", "--out", str(tmp_path / "c")]) == 0
    model = load_checkpoint(tmp_path / "c").build_model()
    assert model.skip.thresholds == front.points[0].thresholds  # type: ignore[union-attr]


def test_bad_default_config_is_refused(profiled: tuple[Path, Profile], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    raw = json.loads((bundle / "manifest.json").read_text())
    default = {"thresholds": [0.5] * 6, "exit_thresholds": None, "device": "cpu",
               "budget": {"value": 1.0, "unit": "ms"}, "batch": 1, "predicted": {}, "accuracy": 0.5,
               "selected_utc": "2026-12-01T00:00:00Z"}
    for change, message in (({"thresholds": [0.5, 2.0, 0.5, 0.5, 0.5, 0.5]},
                             r"default_config.thresholds\[1\]: must be >= 0.0 and <= 1.0, got 2.0"),
                            ({"thresholds": None, "exit_thresholds": [0.5]}, "default_config needs 5 exit thresholds"),
                            ({"thresholds": [0.5] * 4}, "default_config needs 6 layer thresholds"),
                            ({"device": None}, "default_config.device: must be a string, got null")):
        raw["default_config"] = {**default, **change}
        (bundle / "manifest.json").write_text(json.dumps(raw))
        with pytest.raises(BundleError, match=message):
            Bundle.open(bundle)


def test_front_of_another_bundle_device_or_schema_is_refused(front: ParetoFront, profiled: tuple[Path, Profile],
                                                             tmp_path: Path) -> None:
    fingerprint = Bundle.open(profiled[0]).manifest.fingerprint
    path = pareto_path(profiled[0], "cpu")
    with pytest.raises(FrontError, match="not 'jetson-nano'"):
        load_front(path, fingerprint=fingerprint, device="jetson-nano")
    data = json.loads(path.read_text())
    for name, change, message in (
            ("other", {"searched": {**data["searched"], "fingerprint": "0" * 64}}, "another bundle"),
            ("v7", {"schema_version": 7}, "schema version 7"),
            ("empty", {"points": []}, "at least one configuration"),
            ("broken", {"points": [{"genes": [1]}]}, "malformed"),
            ("unknown", {"colour": "red"}, "unknown key"),
            ("nan", {"hypervolume": float("nan")}, "finite")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(FrontError, match=message):
            load_front(tmp_path / f"{name}.json", fingerprint=fingerprint, device="cpu")
    with pytest.raises(FrontError, match="run edgeskip search"):
        load_front(tmp_path / "missing.json")


def test_a_schema_1_front_loads_through_the_migration(front: ParetoFront, tmp_path: Path) -> None:
    """``edgeskip search`` of the previous release wrote format edgeskip.pareto, schema 1."""
    old = {"format": "edgeskip.pareto", "schema_version": 1, "device": "cpu",
           "bundle": {"fingerprint": front.searched.fingerprint}, "batch": 1, "energy_source": "estimate",
           "objectives": ["1 - accuracy", "latency_ms", "energy_mj"], "hypervolume": 0.5,
           "hypervolume_reference_point": {"error": 1.1}, "model": "vit-digits", "images": 120,
           "static": {k: v for k, v in front.static.to_dict().items() if k not in ("compute", "reward")},
           "points": [{k: v for k, v in p.to_dict().items() if k not in ("compute", "reward")} for p in front.points]}
    (tmp_path / "v1.json").write_text(json.dumps(old))
    migrated = load_front(tmp_path / "v1.json", fingerprint=front.searched.fingerprint, device="cpu")
    assert migrated.points == front.points and migrated.meta["migrated_from_schema"] == 1
    assert choose(migrated, budget_ms=1e9).point == choose(front, budget_ms=1e9).point


def test_cli_search_and_select(profiled: tuple[Path, Profile], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    assert main(["-q", "search", "--bundle", str(bundle), "--device", "raspberry-pi-5"]) == 2
    assert "edgeskip profile first" in capsys.readouterr().err  # no profile for that device
    assert main(["-q", "search", "--bundle", str(bundle), "--device", "cpu", "--images", "60",
                 "--pop-size", "6", "--generations", "2"]) == 0
    out = capsys.readouterr().out
    assert "Pareto configurations" in out and "static" in out and "ESTIMATE" in out
    # every point also on the held-out second half of the test classes (all 189 digits: fewer than asked)
    assert "also run on 189 digits images from the test-second-half split" in out and "+0.00±0.00" in out
    assert (bundle / "pareto" / "cpu.json").is_file() and (bundle / "pareto" / "cpu.png").stat().st_size > 5000
    saved = load_front(bundle / "pareto" / "cpu.json")
    assert saved.meta["holdout"]["images"] == 189 and "test-second-half" in saved.meta["holdout"]["source"]
    assert all(p.holdout_accuracy is not None for p in (saved.static, *saved.points))
    cheapest = saved.points[0]
    assert main(["-q", "select", "--bundle", str(bundle), "--device", "cpu", "--budget-ms",
                 str(cheapest.cost("latency_ms") / 2)]) == 2
    assert "nothing fits" in capsys.readouterr().err
    assert main(["-q", "select", "--bundle", str(bundle), "--budget-ms", "1e6", "--dry-run"]) == 0
    assert json.loads((bundle / "manifest.json").read_text())["default_config"] is None
    assert main(["-q", "select", "--bundle", str(bundle), "--budget-ms", "1e6"]) == 0
    assert "default configuration" in capsys.readouterr().out
    assert json.loads((bundle / "manifest.json").read_text())["default_config"]["budget"] == {"value": 1e6, "unit": "ms"}
    assert main(["-q", "select", "--bundle", str(bundle), "--device", "jetson-nano", "--budget-ms", "5"]) == 2
    assert f"(it has fronts for: cpu): run 'edgeskip search {bundle} --device jetson-nano' first" in capsys.readouterr().err


@pytest.mark.parametrize(("accuracy", "layers", "why"), [
    (0.11, 1.0, "within 2 points of chance (10.0% for 10 classes)"),
    (0.60, 0.0, "runs no transformer layer"),
])
def test_select_refuses_a_degenerate_choice(front: ParetoFront, profiled: tuple[Path, Profile], tmp_path: Path,
                                            accuracy: float, layers: float, why: str,
                                            capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    bad = dataclasses.replace(front.points[0], accuracy=accuracy, executed_layers=layers)
    path = tmp_path / "front.json"
    dataclasses.replace(front, points=(bad, *front.points[1:])).save(path)
    budget = bad.cost("latency_ms")
    args = ["select", str(bundle), "--pareto", str(path), "--budget-ms", repr(budget)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is degenerate" in err and why in err and "--allow-degenerate" in err and len(err.strip().splitlines()) == 1
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--allow-degenerate", "--dry-run"]) == 0
    assert "degenerate configuration (allowed)" in caplog.text and why in caplog.text
    rt = Runtime(bundle)
    with pytest.raises(Degenerate):
        rt.select(budget_ms=budget, pareto=path)
    assert rt.select(budget_ms=budget, pareto=path, allow_degenerate=True).point == bad


def test_select_never_picks_a_point_the_static_model_beats(front: ParetoFront, profiled: tuple[Path, Profile],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A point slower and less accurate than the static model is never chosen; a budget the static model fits
    gets the static model unless a point is more accurate on the search images."""
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    s = front.static
    dynamic = [p for p in front.points if p.genes != s.genes]  # the front's most accurate point may be static's
    worse = dataclasses.replace(dynamic[-1], accuracy=s.accuracy - 0.05, latency_ms=s.cost("latency_ms") * 1.2)
    cheap = dataclasses.replace(dynamic[0], accuracy=s.accuracy - 0.10, latency_ms=s.cost("latency_ms") * 0.5)
    made = dataclasses.replace(front, points=(cheap, worse))
    chosen = choose(made, budget_ms=s.cost("latency_ms") * 2)
    assert chosen.static and chosen.point == s and chosen.describe().startswith("the static model")
    assert choose(made, budget_ms=s.cost("latency_ms") * 0.6).point == cheap  # below static: the dynamic point
    better = dataclasses.replace(worse, accuracy=s.accuracy + 0.01, latency_ms=s.cost("latency_ms") * 0.9)
    assert choose(dataclasses.replace(made, points=(cheap, better)), budget_ms=s.cost("latency_ms") * 2).point == better
    path = tmp_path / "front.json"
    made.save(path)
    assert main(["select", str(bundle), "--pareto", str(path), "--budget-ms", repr(s.cost("latency_ms") * 2)]) == 0
    assert "the static model (every layer, no decision)" in capsys.readouterr().out
    rt = Runtime(bundle)  # the recorded choice runs as the static model does: one monolithic call
    assert rt.policy.name == "default" and rt.plan.static and rt.static_in_one_call and rt.path == "monolithic"


def test_the_recorded_path_is_followed(front: ParetoFront, profiled: tuple[Path, Profile], tmp_path: Path) -> None:
    """A selection records its point's path; policy auto (and Runtime.select) run it there, a batch on the loop."""
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    dynamic = next(p for p in front.points if p.genes != front.static.genes)
    for path in ("gate", "stages"):
        made = dataclasses.replace(front, points=(dataclasses.replace(dynamic, path=path),))
        record_selection(bundle, choose(made, budget_ms=dynamic.cost("latency_ms") * 1.01))
        assert Bundle.open(bundle).manifest.default_config.path == path  # type: ignore[union-attr]
        rt = Runtime(bundle)
        assert rt.policy.name == "default" and rt.path == path and rt.info()["path"] == path
        made.save(tmp_path / "front.json")
        other = Runtime(bundle, policy="static")
        other.select(budget_ms=dynamic.cost("latency_ms") * 1.01, pareto=tmp_path / "front.json")
        assert other.path == path


def test_bench_front_measures_every_point_on_held_out_images(front: ParetoFront, profiled: tuple[Path, Profile],
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``edgeskip bench --front``: every point and static on the second half of each test class (never a search
    image), held-out accuracy as the Runtime gets it, latency ratios to static, the headline within its loss."""
    bundle = Path(shutil.copytree(profiled[0], tmp_path / "b"))
    out = tmp_path / "front-bench.json"
    assert main(["-q", "bench", str(bundle), "--front", "--front-rounds", "4", "--front-block", "2", "--batch", "8",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out images" in printed and "speed-up over static" in printed
    report = json.loads(out.read_text())
    heldout = load_digits().test.halves()[1]
    assert report["heldout"]["images"] == len(heldout) and "test-second-half" in report["heldout"]["source"]
    assert set(report["points"]) == {"static", *(f"#{i}" for i in range(len(front.points)))}
    for i in (0, len(front.points) - 1):
        p = front.points[i]
        got = Runtime(bundle, policy=p.policy)(heldout.images)
        row = report["points"][f"#{i}"]
        assert row["accuracy"] == pytest.approx(float(np.mean(got.labels == heldout.labels)))
        assert row["calibration_accuracy"] == p.accuracy and row["b1_ratio"] > 0 and row["b8_ratio"] > 0
    static = report["points"]["static"]
    assert static["b1_ratio"] == 1.0 and static["loss_points"] == 0.0 and static["layers_per_image"] == DEPTH
    for b in ("1", "8"):
        for loss, best in report["measured"][b]["headline"].items():
            assert best is None or report["points"][best["point"]]["loss_points"] <= float(loss)
    assert (bundle / "pareto" / "cpu-measured.png").stat().st_size > 5000
    Bundle.open(bundle)  # the plot beside the front leaves the bundle valid


def test_paired_loss_counts_only_the_images_that_differ() -> None:
    from edgeskip.errors import ConfigError
    from edgeskip.front import paired_loss

    ref = np.array([True] * 90 + [False] * 10)
    same, se = paired_loss(ref, ref)
    assert same == 0.0 and se == 0.0  # the same answers: no loss, and no doubt about it
    worse = ref.copy()
    worse[:2] = False  # two images lost
    loss, se = paired_loss(worse, ref)
    d = worse.astype(float) - ref
    assert loss == pytest.approx(0.02) and se == pytest.approx(d.std(ddof=1) / 10)
    with pytest.raises(ConfigError, match="equal, non-empty"):
        paired_loss(ref[:5], ref)


def test_held_out_accuracy_is_the_runtimes_and_chooses_nothing(front: ParetoFront, profiled: tuple[Path, Profile],
                                                             images: tuple[Any, Any]) -> None:
    from edgeskip.front import paired_loss
    from edgeskip.search.bundle import with_holdout

    bundle, _ = profiled
    held = load_digits().test.halves()[1]  # disjoint from the search's images (the first half)
    with Runtime(bundle, policy="static", whole_static=False) as rt:
        static, *points = with_holdout(rt, [front.static, *front.points[-3:]], held.images, held.labels, pool_mb=64)
    reference = Runtime(bundle, policy=front.static.policy)(held.images).labels == held.labels
    assert static.holdout_accuracy == pytest.approx(reference.mean()) and static.holdout_loss_se == 0.0
    for p in points:
        ok = Runtime(bundle, policy=p.policy)(held.images).labels == held.labels
        assert p.holdout_accuracy == pytest.approx(ok.mean())
        assert p.holdout_loss_se == pytest.approx(paired_loss(ok, reference)[1])
        assert p.accuracy == next(q for q in front.points if q.genes == p.genes).accuracy  # the choosing figure stays
    chosen = choose(dataclasses.replace(front, static=static, points=tuple(points),
                                        meta={**front.meta, "holdout": {"images": len(held)}}), budget_ms=1e6)
    assert f"on {len(held)} held-out images" in chosen.describe() and "points against static" in chosen.describe()


def test_cheapest_within_a_loss_counts_its_standard_error(front: ParetoFront, profiled: tuple[Path, Profile],
                                                          images: tuple[Any, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.front import cheapest_within, paired_loss

    bundle, _ = profiled
    # every point knows the paired standard error of its loss on the search images, as a Runtime run shows it
    reference = Runtime(bundle, policy=front.static.policy)(images[0]).labels == images[1]
    for p in front.points[-3:]:
        ok = Runtime(bundle, policy=p.policy)(images[0]).labels == images[1]
        assert p.accuracy == pytest.approx(ok.mean()) and p.loss_se == pytest.approx(paired_loss(ok, reference)[1])
    chosen = cheapest_within(front, 0.02)
    p = chosen.point
    assert chosen.static or front.static.accuracy - p.accuracy + p.loss_se <= 0.02  # type: ignore[operator]
    cheaper = [q for q in front.points if q.cost("latency_ms") < p.cost("latency_ms")]
    assert all(front.static.accuracy - q.accuracy + q.loss_se > 0.02 for q in cheaper)  # type: ignore[operator]
    assert "the cheapest of" in chosen.describe() and "one standard error included" in chosen.describe()
    assert cheapest_within(front, 0.02, margin=0.999).static  # nothing predicted 99.9% faster: static
    with Runtime(bundle) as rt:  # an application switches the same way, without reload
        assert rt.select(max_loss_points=2).point == p and rt.policy.layers == p.thresholds
    with pytest.raises(ConfigError, match="at least 0 points"):
        cheapest_within(front, -1.0)
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    assert main(["-q", "select", str(copy), "--max-loss-points", "2", "--dry-run"]) == 0
    assert "at most 2 point(s) of accuracy loss" in capsys.readouterr().out
    assert main(["-q", "select", str(copy), "--max-loss-points", "-1"]) == 2
    assert "a number of points >= 0, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other
        main(["-q", "select", str(copy), "--max-loss-points", "2", "--budget-ms", "3"])
    assert "not allowed with argument" in capsys.readouterr().err
