"""E²CM: class means and normalisers, the exit rule, costs, persistence, agents + exits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.policy import SkipConfig
from edgeskip.agents.model import SkipViT
from edgeskip.data.dataset import ImageDataset
from edgeskip.e2cm import E2CM, MacCosts, exit_features, simulate
from edgeskip.train.e2cm_calibration import calibrate, collect_cache
from edgeskip.errors import ConfigError, DataError
from edgeskip.models.vit import ViT
from edgeskip.normalization import get_normalization, preprocess
from edgeskip.variants import model_config

NORM = get_normalization("cifar10")
CLASSES = tuple("abcdefghij")


def images(n: int = 60, seed: int = 0, classes: int = 10) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    # class-dependent brightness so the class means differ, plus noise
    base = (labels[:, None, None, None] * 20 + 30).astype(np.int64)
    imgs = np.clip(base + rng.integers(-40, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return ImageDataset(imgs, labels.astype(np.int64), CLASSES)


def tiny(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(model_config("vit-tiny")).eval()


def skip_model(seed: int = 0) -> SkipViT:
    torch.manual_seed(seed)
    model = SkipViT(model_config("vit-tiny"), SkipConfig.uniform(4, 0.5)).eval()
    with torch.no_grad():
        for agent in model.agents:
            agent.weight.normal_(std=1.0)
            agent.bias.zero_()
    return model


@torch.no_grad()
def layer_tokens(model: ViT, data: ImageDataset) -> list[np.ndarray]:
    """Every layer's output for every image, running the layers by hand."""
    x = model.embed(torch.from_numpy(preprocess(data.images, NORM)))
    out = []
    for block in model.blocks:
        x = block(x)
        out.append(x.numpy().astype(np.float64))
    return out


@pytest.mark.parametrize("feature", ["tokens", "cls", "mean"])
def test_means_and_normalisers_equal_numpy(feature: str) -> None:
    model, data = tiny(), images()
    cal = calibrate(model, data, NORM, features=(feature,))[feature]
    tokens = layer_tokens(model, data)
    assert cal.e2cm.exits == (0, 1, 2)  # every layer but the last (4 layers)
    for i, j in enumerate(cal.e2cm.exits):
        x = exit_features(tokens[j], feature).astype(np.float64)
        means = np.stack([x[data.labels == k].mean(0) for k in range(10)])
        mu = np.stack([np.linalg.norm(x - means[k], axis=1).mean() for k in range(10)])  # over ALL images
        np.testing.assert_allclose(cal.e2cm.means[i], means, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cal.e2cm.normalisers[i], mu, rtol=1e-5)
        d = np.linalg.norm(x[:, None, :] - means[None], axis=2) / mu
        p = np.exp(-d) / np.exp(-d).sum(1, keepdims=True)
        np.testing.assert_allclose(cal.cache.top_prob[:, i], p.max(1), rtol=1e-5)
        np.testing.assert_array_equal(cal.cache.pred[:, i], p.argmax(1))
        # the runtime's numpy rule on the stored (float32) means agrees
        np.testing.assert_allclose(cal.e2cm.probabilities(i, tokens[j]), p, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = model(torch.from_numpy(preprocess(data.images, NORM)))
    np.testing.assert_array_equal(cal.cache.final_pred, logits.argmax(1).numpy())


def hand_e2cm(thresholds: list[float]) -> E2CM:
    costs = MacCosts(embed=0.1, layers=(0.3, 0.3, 0.3), head=0.0, agents=(0.0,) * 3, exits=(0, 1), checks=(0.01, 0.01))
    means = np.array([[[0.0, 0.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]], dtype=np.float32)
    return E2CM("cls", means, np.array([[2.0, 2.0], [1.0, 1.0]], dtype=np.float32), np.array(thresholds), costs)


def test_exit_rule_by_hand() -> None:
    e2cm = hand_e2cm([0.7, 0.9])
    tokens = np.array([[[1.0, 0.0]], [[2.0, 0.0]]], dtype=np.float32)  # CLS only, D = 2
    # image 0: d = (1/2, 3/2) -> p0 = 1 / (1 + e^-1) = 0.7311; image 1: d = (1, 1) -> 0.5
    p0 = 1.0 / (1.0 + np.exp(-1.0))
    np.testing.assert_allclose(e2cm.probabilities(0, tokens), [[p0, 1 - p0], [0.5, 0.5]], rtol=1e-6)
    leaves, label, top = e2cm.check(0, tokens)
    assert leaves.tolist() == [True, False] and label[0] == 0 and top[0] == pytest.approx(p0)
    strict = e2cm.with_thresholds([p0, 0.9])  # exactly equal to the top probability: stays
    assert strict.check(0, tokens)[0].tolist() == [False, False]


def test_cost_model_is_normalised_and_cumulative() -> None:
    cfg = model_config("vit9")
    costs = MacCosts.from_config(cfg, None, "tokens")
    assert costs.embed + sum(costs.layers) + costs.head == pytest.approx(1.0)
    assert costs.exits == tuple(range(8))
    cum = costs.cumulative()
    assert all(b > a for a, b in zip(cum, cum[1:], strict=False))
    assert cum[-1] + costs.layers[-1] + costs.head > 1.0  # never exiting pays the checks on top
    assert costs.checks[0] / costs.layers[0] < 0.02  # the check is cheap against a layer
    assert MacCosts.from_dict(costs.to_dict()) == costs


def random_cache(seed: int = 0, n: int = 400):  # type: ignore[no-untyped-def]
    from edgeskip.e2cm import ExitCache

    rng = np.random.default_rng(seed)
    costs = MacCosts.from_config(model_config("vit-tiny"), None, "tokens")
    labels = rng.integers(0, 10, n)
    pred = np.where(rng.random((n, 3)) < 0.6, labels[:, None], rng.integers(0, 10, (n, 3)))
    top = 0.1 + 0.9 * rng.random((n, 3))
    return ExitCache.build(top, pred, labels.copy(), labels, np.ones((n, 4), dtype=bool), costs)


def test_compute_is_monotone_in_each_threshold() -> None:
    cache = random_cache()
    rng = np.random.default_rng(1)
    for _ in range(20):
        t = rng.random(3) * 0.999
        for i in range(3):
            grid = np.linspace(0.0, 0.999, 50)
            values = []
            for v in grid:
                t2 = t.copy()
                t2[i] = v
                values.append(simulate(cache, t2).compute)
            assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
            # a threshold of 1 disables the exit: the same decisions as a threshold nobody
            # passes, minus the check's cost
            silent, off = t.copy(), t.copy()
            silent[i], off[i] = cache.top_prob[:, i].max(), 1.0
            a, b = simulate(cache, silent), simulate(cache, off)
            np.testing.assert_array_equal(a.exit_at, b.exit_at)
            reached = (a.exit_at >= i).sum()
            assert a.compute - b.compute == pytest.approx(reached * cache.check_cost[i] / cache.size)


@pytest.mark.parametrize("phi", [0.3, 0.5, 0.62, 0.8, 1.0])
def test_search_meets_its_budget(phi: float) -> None:
    from edgeskip.e2cm import search_thresholds

    cache = random_cache()
    t, out = search_thresholds(cache, phi, restarts=3)
    assert out.compute <= phi + 1e-9
    assert simulate(cache, t).compute == pytest.approx(out.compute)
    if phi == 1.0:  # the whole budget: nothing needs to exit, and the head is the most accurate here
        assert out.accuracy == pytest.approx(1.0)


def test_search_on_a_real_calibration_and_sweep_hull() -> None:
    from edgeskip.e2cm import search_thresholds, sweep

    cal = calibrate(tiny(), images(120), NORM, features=("tokens",))["tokens"]
    sw = sweep(cal.cache, step=0.05, restarts=2)
    xs = [p.compute for p in sw.hull]
    ys = [p.accuracy for p in sw.hull]
    assert xs == sorted(xs) and ys == sorted(ys)
    for phi in (0.5, 0.75):
        if phi >= sw.infeasible_below:
            _, out = search_thresholds(cal.cache, phi)
            assert out.compute <= phi + 1e-9
            assert sw.for_budget(phi).compute <= phi + 1e-12
    with pytest.raises(ConfigError, match="below the least"):
        search_thresholds(cal.cache, sw.infeasible_below / 2)


def test_upper_hull() -> None:
    from edgeskip.e2cm import upper_hull

    pts = [(0.2, 0.5), (0.4, 0.6), (0.3, 0.7), (0.6, 0.8), (0.5, 0.72), (1.0, 0.79), (0.6, 0.6)]
    assert upper_hull(pts) == [0, 2, 3]


def test_threshold_one_never_exits_and_equals_static() -> None:
    model, data = tiny(), images()
    cal = calibrate(model, data, NORM)["tokens"]
    out = simulate(cal.cache, np.ones(3))
    assert (out.exit_at == 3).all()
    with torch.no_grad():
        static = model(torch.from_numpy(preprocess(data.images, NORM))).argmax(1).numpy()
    np.testing.assert_array_equal(np.where(out.correct, data.labels, -1), np.where(static == data.labels, data.labels, -1))
    assert out.compute == pytest.approx(1.0)  # disabled exits cost nothing
    tokens = layer_tokens(model, data)
    for i, j in enumerate(cal.e2cm.exits):
        assert not cal.e2cm.check(i, tokens[j])[0].any()


@torch.no_grad()
def test_agents_plus_e2cm_equals_the_two_rules_by_hand() -> None:
    model, data = skip_model(), images(40)
    e2cm = calibrate(model, data, NORM, path="agents")["tokens"].e2cm
    cache = collect_cache(model, e2cm, data, NORM, path="agents")
    thresholds = np.array([0.2, 0.16, 0.14])
    out = simulate(cache, thresholds)
    costs = e2cm.costs
    x_all = torch.from_numpy(preprocess(data.images, NORM))
    skipped_somewhere = False
    for n in range(len(data)):
        x = model.embed(x_all[n:n + 1])
        cost, layers, label, exit_at = costs.embed, 0, None, 3
        for j in range(model.depth):
            run = bool(model.decide(j, x)[0])
            cost += costs.agents[j]
            if run:
                x = model.blocks[j](x)
                cost += costs.layers[j]
                layers += 1
            else:
                skipped_somewhere = True
            if j in costs.exits and run:  # no check after a skipped layer
                i = costs.exits.index(j)
                cost += costs.checks[i]
                leaves, lab, _ = e2cm.with_thresholds(thresholds).check(i, x.numpy())
                if leaves[0]:
                    label, exit_at = int(lab[0]), i
                    break
        if label is None:
            label = int(model.head(x).argmax(1))
            cost += costs.head
        assert out.exit_at[n] == exit_at, n
        assert out.correct[n] == (label == data.labels[n]), n
        assert out.cost[n] == pytest.approx(cost), n
        assert out.layers[n] == layers
    assert skipped_somewhere and 0 < (out.exit_at < 3).sum() < len(data)


def test_save_load_round_trip_and_tampering(tmp_path: Path) -> None:
    e2cm = hand_e2cm([0.7, 0.9])
    e2cm.save(tmp_path / "e")
    loaded = E2CM.load(tmp_path / "e")
    np.testing.assert_array_equal(loaded.means, e2cm.means)
    np.testing.assert_array_equal(loaded.thresholds, e2cm.thresholds)
    assert loaded.costs == e2cm.costs and loaded.feature == "cls"
    half = e2cm.astype("float16")
    assert half.nbytes < e2cm.nbytes and E2CM.load(half.save(tmp_path / "h")).means.dtype == np.float16
    e2cm.with_thresholds([0.5, 0.5]).save(tmp_path / "e")  # replaced whole
    assert E2CM.load(tmp_path / "e").thresholds.tolist() == [0.5, 0.5]
    raw = bytearray((tmp_path / "e" / "e2cm.npz").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "e" / "e2cm.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        E2CM.load(tmp_path / "e")
    with pytest.raises(DataError, match="is missing"):
        E2CM.load(tmp_path / "nothing")
    info = json.loads((tmp_path / "h" / "e2cm.json").read_text())
    (tmp_path / "h" / "e2cm.json").write_text(json.dumps({**info, "schema_version": 99}))
    with pytest.raises(DataError, match="schema"):
        E2CM.load(tmp_path / "h")


def test_bad_input_is_clear() -> None:
    model, data = tiny(), images()
    no_class_3 = data.subset(np.flatnonzero(data.labels != 3))
    with pytest.raises(DataError, match=r"no image of class\(es\) \[3\] \(d\)"):
        calibrate(model, no_class_3, NORM)
    with pytest.raises(ConfigError, match="exit index 7 is outside the 4-layer model"):
        calibrate(model, data, NORM, exits=[0, 7])
    with pytest.raises(ConfigError, match="last layer, which always exits through the model's own head"):
        calibrate(model, data, NORM, exits=[3])
    with pytest.raises(ConfigError, match="exit index -1 is outside"):
        calibrate(model, data, NORM, exits=[-1])
    with pytest.raises(ConfigError, match="unknown E²CM feature"):
        calibrate(model, data, NORM, features=("pooled",))
    with pytest.raises(ConfigError, match="needs a model with skip agents"):
        calibrate(model, data, NORM, path="agents")
    with pytest.raises(DataError, match="do not fit"):
        calibrate(model, ImageDataset(np.zeros((10, 8, 8, 1), np.uint8), np.arange(10), CLASSES), NORM)
    cache = random_cache()
    from edgeskip.e2cm import search_thresholds, sweep

    for phi in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"compute budget must be in \(0, 1\]"):
            search_thresholds(cache, phi)
    with pytest.raises(ConfigError, match="finite and in"):
        simulate(cache, [0.5, float("nan"), 0.5])
    with pytest.raises(ConfigError, match="finite and in"):
        hand_e2cm([0.5, float("nan")])
    with pytest.raises(ConfigError, match="expected 3 threshold"):
        simulate(cache, [0.5, 0.5])
    with pytest.raises(ConfigError, match="step"):
        sweep(cache, step=0.0001)


@pytest.fixture(scope="module")
def digits_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A static and an agent vit-digits checkpoint (briefly trained, so exits have signal)."""
    from edgeskip.data import load_digits
    from edgeskip.train.config import TrainConfig
    from edgeskip.train.run import train

    root = tmp_path_factory.mktemp("ckpts")
    data = load_digits()
    out = {}
    for name, extra in (("static", {}), ("agents", {"agents": True})):
        cfg = TrainConfig(model="vit-digits", dataset="digits", out=str(root / name), epochs=3, batch_size=64,
                          lr=2e-3, warmup_epochs=0.5, augment="none", progress=False, **extra)  # type: ignore[arg-type]
        train(cfg, data)
        out[name] = root / name
    # thresholds near the agents' young probabilities (about 0.88), so inputs take different paths
    from edgeskip.cli import main

    assert main(["-q", "apply-config", "--checkpoint", str(out["agents"]), "--thresholds", "0.5,0.88,0.88,0.88,0.88,0.5",
                 "--out", str(root / "applied")]) == 0
    out["agents"] = root / "applied"
    return out


def test_cli_calibrate_static(digits_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.cli import main

    out = tmp_path / "e2cm"
    args = ["-q", "calibrate", "--checkpoint", str(digits_checkpoints["static"]), "--out", str(out),
            "--feature", "all", "--step", "0.05", "--restarts", "2", "--means-dtype", "float16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "[tokens]" in text and "[cls]" in text and "[mean]" in text and "<- stored" in text
    report = json.loads((out / "report.json").read_text())
    assert (out / "hull.png").stat().st_size > 10_000
    for feature in ("tokens", "cls", "mean"):
        entry = report["features"][feature]
        e2cm = E2CM.load(out / feature)
        assert e2cm.means.dtype == np.float16 and e2cm.feature == feature
        assert e2cm.thresholds.tolist() == entry["e2cm"]["thresholds"]
        assert entry["e2cm"]["calibration"]["accuracy"] >= entry["calibration_static_accuracy"] - 0.01 - 1e-9
        assert entry["means_bytes"]["float16"] * 2 == entry["means_bytes"]["float32"]
        hull = entry["hull"]
        assert [h["calibration"]["compute"] for h in hull] == sorted(h["calibration"]["compute"] for h in hull)
        assert "hull" in e2cm.meta and e2cm.meta["split"] == "train"
    assert main(args) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err


def test_cli_calibrate_agents_reports_three_modes(digits_checkpoints: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.cli import main

    out = tmp_path / "e2cm"
    assert main(["-q", "calibrate", "--checkpoint", str(digits_checkpoints["agents"]), "--out", str(out),
                 "--step", "0.05", "--restarts", "2", "--budget", "0.6", "--split", "test-half"]) == 0
    assert "agents alone" in capsys.readouterr().out
    entry = json.loads((out / "report.json").read_text())["features"]["tokens"]
    assert {"agents", "e2cm", "both"} <= set(entry)
    assert entry["e2cm"]["calibration"]["compute"] <= 0.6 + 1e-9
    assert entry["both"]["calibration"]["compute"] <= 0.6 + 1e-9
    assert entry["agents"]["compute"] < 1.0
    assert len(E2CM.load(out / "tokens").meta["thresholds_with_agents"]) == 5


@pytest.mark.parametrize("extra, message", [
    (["--budget", "1.5"], "budget must be in (0, 1]"),
    (["--budget", "0"], "budget must be in (0, 1]"),
    (["--exits", "2,9"], "exit index 9 is outside the 6-layer model"),
    (["--exits", "two"], "exits must be 'all' or comma-separated"),
    (["--path", "agents"], "needs a checkpoint with skip agents"),
    (["--step", "0.0001"], "step must be in"),
])
def test_cli_calibrate_errors(digits_checkpoints: dict[str, Path], tmp_path: Path, extra: list[str], message: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.cli import main

    code = main(["-q", "calibrate", "--checkpoint", str(digits_checkpoints["static"]), "--out", str(tmp_path / "o"),
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
