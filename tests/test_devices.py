"""Devices: energy sources against recorded outputs and fake sysfs trees, the device table, and the profiler."""

from __future__ import annotations

import dataclasses

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgeskip.bundle import TARGETS, Bundle
from edgeskip.cli import main
from edgeskip.devices import DEVICES
from edgeskip.devices.energy import (
    EnergyError,
    EstimateMeter,
    Ina3221Meter,
    RaplMeter,
    ina3221_rails,
    parse_tegrastats,
    rapl_delta_uj,
    rapl_zones,
    select_meter,
)
from edgeskip.devices.profiler import (
    ProfileError,
    ProfileSettings,
    load_profile,
    profile_bundle,
    save_profile,
    timing_stats,
)
from edgeskip.errors import ConfigError
from edgeskip.runtimes import BACKENDS

# -- tegrastats: real lines as the tool printed them, labelled with board and JetPack -------------------

# Recorded tegrastats lines published in the tests of an open-source Prometheus exporter for Jetson.
XAVIER_NX_JP411 = ("RAM 5246/7771MB (lfb 7x4MB) SWAP 983/20269MB (cached 280MB) CPU [47%@1420,23%@1420,32%@1420,"
                   "22%@1420,31%@1420,96%@1420] EMC_FREQ 2%@1600 GR3D_FREQ 0%@1109 APE 150 MTS fg 1% bg 9% AO@29C "
                   "GPU@31.5C PMIC@100C AUX@30C CPU@33.5C thermal@31.35C VDD_IN 6140/5510 VDD_CPU_GPU_CV 2706/2119 "
                   "VDD_SOC 1074/1051")
XAVIER_NX_JP512 = ("07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) CPU [23%@1397,"
                   "17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] VIC_FREQ 115 "
                   "APE 150 AUX@45C CPU@46.5C thermal@45.6C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW "
                   "VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW")
NANO_JP461 = ("RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) CPU [5%@1224,4%@1224,"
              "3%@1224,6%@1224] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@37C CPU@40C PMIC@50C GPU@40C AO@45C "
              "thermal@40C POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406")


def test_tegrastats_xavier_nx_jetpack4() -> None:
    s = parse_tegrastats(XAVIER_NX_JP411)
    assert s.rails == {"VDD_IN": (6140, 5510), "VDD_CPU_GPU_CV": (2706, 2119), "VDD_SOC": (1074, 1051)}
    assert (s.ram_used_mb, s.ram_total_mb, s.gpu_load) == (5246, 7771, 0)
    assert s.cpu_load == (47, 23, 32, 22, 31, 96)
    assert s.power_mw(["VDD_IN"]) == 6140


def test_tegrastats_xavier_nx_jetpack5_units_and_timestamp() -> None:
    s = parse_tegrastats(XAVIER_NX_JP512)
    assert s.rails == {"VDD_IN": (2763, 2846), "VDD_CPU_GPU_CV": (650, 670), "VDD_SOC": (650, 711)}
    assert s.ram_used_mb == 3168 and s.gpu_load == 0 and len(s.cpu_load) == 6


def test_tegrastats_nano_jetpack4() -> None:
    s = parse_tegrastats(NANO_JP461)
    assert s.rails == {"POM_5V_IN": (1750, 1628), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (366, 406)}
    assert "IRAM" not in s.rails and s.ram_total_mb == 3964 and s.cpu_load == (5, 4, 3, 6)
    with pytest.raises(KeyError):
        s.power_mw(["VDD_IN"])
    with pytest.raises(EnergyError, match="not a tegrastats line"):
        parse_tegrastats("hello world")


# -- RAPL on a fake powercap tree -------------------------------------------------------------------------

def _rapl_tree(root: Path, energy: dict[str, int], max_range: int = 1000) -> None:
    for zone, uj in energy.items():
        d = root / "sys/class/powercap" / zone
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_rapl_wraps_and_sums_package_zones(tmp_path: Path) -> None:
    assert rapl_delta_uj(100, 300, 1000) == 200
    assert rapl_delta_uj(900, 100, 1000) == 200  # wrapped once
    _rapl_tree(tmp_path, {"intel-rapl:0": 900, "intel-rapl:1": 10, "intel-rapl:0:0": 5})
    assert [z.name for z in rapl_zones(tmp_path)] == ["intel-rapl:0", "intel-rapl:1"]  # sub-zones are parts
    meter = RaplMeter(tmp_path)
    meter.start()
    _rapl_tree(tmp_path, {"intel-rapl:0": 100, "intel-rapl:1": 60, "intel-rapl:0:0": 7})
    assert meter.stop() == pytest.approx((200 + 50) * 1e-6)
    with pytest.raises(EnergyError, match="no readable RAPL zone"):
        RaplMeter(tmp_path / "nothing")


# -- Jetson INA3221 on a fake hwmon tree -------------------------------------------------------------------

def _ina_tree(root: Path, rails: dict[str, tuple[int, int]]) -> None:
    hwmon = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True, exist_ok=True)
    for k, (name, (mv, ma)) in enumerate(rails.items(), start=1):
        (hwmon / f"in{k}_label").write_text(name + "\n")
        (hwmon / f"in{k}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{k}_input").write_text(f"{ma}\n")


def test_ina3221_power_and_energy(tmp_path: Path) -> None:
    _ina_tree(tmp_path, {"VDD_IN": (5000, 1000), "VDD_CPU_GPU_CV": (5000, 200), "VDD_SOC": (5000, 300)})
    assert set(ina3221_rails(tmp_path)) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    meter = Ina3221Meter(["VDD_IN"], tmp_path, interval_s=0.002)
    assert meter.power_w() == pytest.approx(5.0)
    joules, seconds = meter.measure(lambda: time.sleep(0.2))
    assert joules == pytest.approx(5.0 * seconds, rel=0.1)
    assert Ina3221Meter(["VDD_CPU_GPU_CV", "VDD_SOC"], tmp_path).power_w() == pytest.approx(2.5)
    with pytest.raises(EnergyError, match="VIN_SYS_5V0.*this board has: VDD_IN"):
        Ina3221Meter(["VIN_SYS_5V0"], tmp_path)


# -- choosing a source; the estimate ---------------------------------------------------------------------

def test_select_meter_falls_back_to_a_labelled_estimate(tmp_path: Path) -> None:
    meter, why = select_meter(("rapl", "jetson-ina3221", "estimate"), root=tmp_path, rails=("VDD_IN",),
                              watts_per_core=3.0, basis="test")
    assert meter.source == "estimate" and len(why) == 2 and why[0].startswith("rapl:")
    assert meter.describe()["watts_per_core"] == 3.0
    _rapl_tree(tmp_path, {"intel-rapl:0": 1})
    assert select_meter(("rapl", "estimate"), root=tmp_path)[0].source == "rapl"
    with pytest.raises(EnergyError, match="no energy source works"):
        select_meter(("rapl",), root=tmp_path / "none")
    with pytest.raises(ConfigError, match="unknown energy source"):
        select_meter(("battery",))


def test_estimate_counts_cpu_time() -> None:
    meter = EstimateMeter(2.0, "test")
    joules, seconds = meter.measure(lambda: sum(i * i for i in range(300_000)))
    assert 0 < joules <= 2.0 * seconds * 4 + 1e-3
    slept, _ = meter.measure(lambda: time.sleep(0.05))
    assert slept < joules  # sleeping uses no CPU time
    with pytest.raises(ConfigError):
        EstimateMeter(0.0, "x")


# -- the device table -----------------------------------------------------------------------------------

def test_every_device_names_a_backend_target_and_energy_source() -> None:
    assert {"cpu", "jetson-orin-nano", "jetson-agx-orin", "jetson-nano", "raspberry-pi-5"} <= set(DEVICES.names())
    for name in DEVICES.names():
        d = DEVICES.get(name)
        assert d.backend in BACKENDS and d.target in TARGETS and d.how and d.power_basis
        assert set(d.energy) <= {"rapl", "jetson-ina3221", "nvml", "estimate"} and d.energy[-1] == "estimate"
        if "jetson-ina3221" in d.energy:
            assert d.rails


# -- the profiler ---------------------------------------------------------------------------------------

def test_timing_stats() -> None:
    t = timing_stats([0.001, 0.002, 0.003, 0.004], energy_mj=1.5)
    assert t.median_ms == pytest.approx(2.5) and t.samples == 4 and t.energy_mj == 1.5
    assert t.std_ms == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert t.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4], 90)) and t.mean_ms == pytest.approx(2.5)
    # the trimmed mean drops 5% at each end: one preemption in 20 samples does not move it
    spiky = timing_stats([0.001] * 19 + [0.1], energy_mj=0.0)
    assert spiky.mean_ms == pytest.approx(1.0) and spiky.median_ms == pytest.approx(1.0)
    assert timing_stats([0.001] * 10 + [0.002] * 10, 0.0).mean_ms == pytest.approx(1.5)  # a mean, not a median
    with pytest.raises(ProfileError):
        timing_stats([], 0.0)
    with pytest.raises(ProfileError):
        timing_stats([0.001, float("nan")], 0.0)


@pytest.fixture(scope="module")
def profiled(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("p") / "b"))
    profile = profile_bundle(bundle, "cpu", settings=ProfileSettings.quick((1, 4)))
    save_profile(profile, bundle)
    return bundle, profile


def test_profile_measures_every_piece(profiled: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    bundle, profile = profiled
    assert set(profile["batches"]) == {"1", "4"}
    pieces = profile["batches"]["1"]
    # 4 layers: reuse windows of 1 and 2 layers (d = 0, 1); every agent also right after the previous one
    assert set(pieces) == {"embed", "head", *(f"{p}_{j:02d}{d}" for p, d in (("layer", ""), ("layer", "@0"), ("layer", "@1"),
                                                                            ("agent", ""), ("agent", "@0"))
                                              for j in range(4))}
    for timing in pieces.values():
        assert timing["median_ms"] > 0 and timing["samples"] >= 5 and timing["energy_mj"] >= 0
    assert profile["energy"]["source"] in ("rapl", "estimate")
    assert profile["memory"]["peak_rss_mb"] > 0 and profile["backend"]["backend"] == "onnxruntime"
    loaded = load_profile(bundle / "profiles" / "cpu.json", Bundle.open(bundle), "cpu")
    assert loaded["batches"] == json.loads(json.dumps(profile["batches"]))
    Bundle.open(bundle)  # the profile beside the files leaves the bundle valid


def test_profile_of_another_bundle_or_device_is_refused(profiled: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    bundle, profile = profiled
    path = bundle / "profiles" / "cpu.json"
    with pytest.raises(ProfileError, match="not 'raspberry-pi-5'"):
        load_profile(path, device="raspberry-pi-5")
    other = dict(profile, bundle={**profile["bundle"], "fingerprint": "0" * 64})
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ProfileError, match="another bundle"):
        load_profile(tmp_path / "other.json", Bundle.open(bundle))
    (tmp_path / "v9.json").write_text(json.dumps(dict(profile, schema_version=9)))
    with pytest.raises(ProfileError, match="schema version 9"):
        load_profile(tmp_path / "v9.json")
    with pytest.raises(ProfileError, match="no profile"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="not a readable profile"):
        load_profile(tmp_path / "bad.json")


def test_cli_profile(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    assert main(["-q", "profile", "--device", "cpu", "--bundle", str(bundle), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "profiles/cpu.json" in out and "batch 1: embed" in out
    assert (bundle / "profiles" / "cpu.json").is_file()
    assert main(["-q", "profile", "--device", "cpu"]) == 2
    assert "name the bundle" in capsys.readouterr().err
    assert main(["-q", "profile", "--device", "cpu", "--bundle", str(bundle), "--batch-sizes", "0"]) == 2
    assert "batch sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["-q", "profile", "--device", "toaster", "--bundle", str(bundle)])
    assert exc.value.code == 2


# -- the cost model -------------------------------------------------------------------------------------

def _profile(overhead: tuple[float, float] = (0.01, 0.1)) -> dict:  # type: ignore[type-arg]
    pieces = {"embed": 0.2, "head": 0.05, "layer_00": 1.0, "layer_01": 2.0, "layer_02": 3.0, "agent_00": 0.01,
              "agent_01": 0.02, "agent_02": 0.03, "exit_00": 0.5}
    as_timing = {k: {"median_ms": v, "p90_ms": v, "std_ms": 0.0, "samples": 5, "energy_mj": 10 * v}
                 for k, v in pieces.items()}
    return {"device": "cpu", "energy": {"source": "estimate"}, "batches": {"1": as_timing},
            "overhead": {"1": {"per_call_ms": overhead[0], "fixed_ms": overhead[1]}}}


def test_cost_model_is_the_hand_sum() -> None:
    from edgeskip.devices.costmodel import CostKey, CostModel, Usage

    model = CostModel.from_profile(_profile(), depth=3)
    assert model.entries[CostKey("layer", 1, 1)] == (2.0, 20.0) and model.batch_sizes == [1]
    usage = Usage(layers=(1.0, 0.5, 0.25), asked=(1.0, 1.0, 0.8), checked=(0.5,), reach_head=0.9)
    p = model.predict(usage, batch=1)
    stages = 0.2 + 0.05 * 0.9 + 1.0 + 2.0 * 0.5 + 3.0 * 0.25
    extras = 0.01 + 0.02 + 0.03 * 0.8 + 0.5 * 0.5
    calls = 1 + 1.75 + 0.9
    assert p.latency_ms == pytest.approx(stages + extras + 0.01 * calls + 0.1)
    assert p.energy_mj == pytest.approx(10 * (stages + extras))
    with pytest.raises(ConfigError, match="batch 8"):
        model.predict(usage, batch=8)
    with pytest.raises(ConfigError, match="usage covers 2 layers"):
        model.predict(Usage((1.0, 1.0), (0.0, 0.0), (0.0,), 1.0))


def test_usage_of_a_run() -> None:
    from edgeskip.devices.costmodel import usage_of

    executed = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]], bool)
    exit_layer = np.array([-1, 1, -1, 0])  # input 1 left after layer 1, input 3 after layer 0
    u = usage_of(executed, exit_layer, cuts=[(0, 0.1), (1, None), (2, 0.3)], exits=[0, 1], checked_exits=[0, 1])
    assert u.layers == (0.75, 0.25, 0.25)
    assert u.asked == (1.0, 0.0, 0.5)  # layer 1 runs without asking; 2 of 4 inputs are still in at layer 2
    assert u.checked == (0.75, 0.25) and u.reach_head == 0.5
    assert u.calls == pytest.approx(1 + 1.25 + 0.5)


def test_reuse_distances_and_warm_agents_in_the_model() -> None:
    from edgeskip.devices.costmodel import CostKey, CostModel, Usage, reuse_shares, usage_of

    # inputs one at a time: the layers run in the order 0 | 0 1 | 0 2 | - | 2
    executed = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]], bool)
    # layer 0: first run (counts as d = 2), again with nothing between (d = 0), again after layer 1 (d = 1);
    # layer 2: first run, then right after itself
    assert reuse_shares(executed) == ((0.2, 0.2, 0.2), (0.0, 0.0, 0.2), (0.2, 0.0, 0.2))
    assert reuse_shares(np.ones((4, 3), bool)) == ((0.0, 0.0, 1.0),) * 3  # static: every other layer between
    u = usage_of(executed, np.full(5, -1), cuts=[(0, 0.1), (1, 0.2), (2, 0.3)], exits=[], checked_exits=[])
    assert u.asked_after_skip == (0.0, 0.4, 0.8)  # asked where the previous layer (0, then 1) did not run
    profile = _profile()
    extra = {"layer_01@0": 1.0, "agent_01@0": 0.005}
    profile["batches"]["1"].update({k: {"median_ms": v, "p90_ms": v, "std_ms": 0.0, "samples": 5, "energy_mj": 10 * v}
                                    for k, v in extra.items()})
    model = CostModel.from_profile(profile, depth=3)
    assert model.entries[CostKey("layer", 1, 1, 0)] == (1.0, 10.0)
    static = Usage(layers=(1.0, 0.5, 0.25), asked=(0.0, 1.0, 0.0), checked=(0.0,), reach_head=1.0)
    reused = dataclasses.replace(static, reuse=((0.0, 0.0, 1.0), (0.25, 0.25, 0.0), (0.0, 0.0, 0.25)),
                                 asked_after_skip=(0.0, 0.5, 0.0))
    # layer 1: a quarter at d = 0 (1.0 ms), a quarter at d = 1 (1.5 ms, between d = 0 and the static 2.0 ms at
    # d = 2) instead of half at 2.0 ms; agent 1: half asked after a skip (0.005 instead of 0.02 ms)
    saved = 0.5 * 2.0 - (0.25 * 1.0 + 0.25 * 1.5) + 0.5 * (0.02 - 0.005)
    assert model.predict(reused).latency_ms == pytest.approx(model.predict(static).latency_ms - saved)
    assert model.predict(reused).energy_mj == pytest.approx(model.predict(static).energy_mj - 10 * saved)
    with pytest.raises(ConfigError, match="unknown profile entry"):
        CostKey.parse("exit_01@0", 1)
