"""Devices: energy sources against recorded outputs and fake sysfs trees, the device table, and the profiler."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeskip.bundle import TARGETS, Bundle
from edgeskip.cli import main
from edgeskip.devices import DEVICES
from edgeskip.devices.energy import (
    SOURCES,
    EnergyError,
    EstimateMeter,
    Ina3221IioMeter,
    Ina3221Meter,
    PowerIntegral,
    RaplMeter,
    TegrastatsMeter,
    ina3221_iio_rails,
    ina3221_rails,
    parse_tegrastats,
    rapl_delta_uj,
    rapl_zones,
    select_meter,
)
from edgeskip.profile import Profile, ProfileError, load_profile, profile_path
from edgeskip.devices.profiler import (
    ProfileSettings,
    profile_bundle,
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


# -- tegrastats run as a program: a fake that prints the recorded lines ----------------------------------

FAKE_LINES = ["NvRmPrivGetChipIdLimited: Could not read Tegra chip id/rev (a junk line)", NANO_JP461]
NANO_POWERS_W = [parse_tegrastats(line).power_mw(["POM_5V_IN"]) * 1e-3 for line in FAKE_LINES[1:]]


def _fake_tegrastats(directory: Path, name: str = "fake-tegrastats") -> Path:
    """A stand-in for tegrastats: the junk line, then the recorded Nano line every --interval ms."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env python3
        import argparse, itertools, sys, time
        parser = argparse.ArgumentParser()
        parser.add_argument("--interval", type=int, default=1000)
        interval = parser.parse_args().interval / 1000
        junk, *lines = {FAKE_LINES!r}
        print(junk, flush=True)
        deadline = time.monotonic() + 60  # never outlive a broken test for long
        for line in itertools.cycle(lines):
            print(line, flush=True)
            if time.monotonic() > deadline:
                sys.exit(0)
            time.sleep(interval)
        """))
    script.chmod(0o755)
    return script


def test_power_integral_is_trapezoids_with_the_last_sample_held() -> None:
    integral = PowerIntegral()
    for t, watts in [(10.0, 1.0), (11.0, 3.0), (12.0, 3.0)]:
        integral.add(t, watts)
    assert integral.samples == 3 and integral.joules == pytest.approx(2.0 + 3.0)
    assert integral.until(13.5) == pytest.approx(5.0 + 3.0 * 1.5)
    with pytest.raises(EnergyError, match="no power sample"):
        PowerIntegral().until(1.0)


def test_tegrastats_meter_integrates_the_lines(tmp_path: Path) -> None:
    meter = TegrastatsMeter(rails=("POM_5V_IN",), executable=str(_fake_tegrastats(tmp_path)))
    assert meter.process is not None and meter.process.poll() is not None  # the construction check ended it
    t_before = time.perf_counter()
    joules, seconds = meter.measure(lambda: time.sleep(0.3))
    outer = time.perf_counter() - t_before
    # the integral spans from the first line (before fn) to stop() (after it), inside the outer timing
    assert min(NANO_POWERS_W) * seconds * (1 - 1e-9) <= joules <= max(NANO_POWERS_W) * outer * (1 + 1e-9)
    assert meter.process.poll() is not None  # terminated and reaped: no zombie
    info = meter.describe()
    assert info["source"] == "tegrastats" and info["rails"] == ["POM_5V_IN"] and info["interval_ms"] == 20
    assert info["skipped_lines"] == 2 and "junk line" in info["skipped_examples"][0]  # one per run


def test_tegrastats_meter_sums_rails_and_leaves_no_process(tmp_path: Path) -> None:
    fake = str(_fake_tegrastats(tmp_path))
    meter = TegrastatsMeter(rails=("POM_5V_GPU", "POM_5V_CPU"), executable=fake, interval_ms=10)
    t_before = time.perf_counter()
    joules, seconds = meter.measure(lambda: time.sleep(0.1))
    assert 0.366 * seconds * (1 - 1e-9) <= joules <= 0.366 * (time.perf_counter() - t_before) * (1 + 1e-9)
    meter.start()  # never stopped: close() ends it
    proc = meter.process
    assert proc is not None and proc.poll() is None
    meter.close()
    assert proc.poll() is not None

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        meter.measure(boom)
    assert meter.process is not proc and meter.process.poll() is not None  # a failing block closes it
    with TegrastatsMeter(rails=("POM_5V_IN",), executable=fake) as in_with:
        in_with.start()
        proc = in_with.process
    assert proc is not None and proc.poll() is not None
    meter.start()
    proc = meter.process
    del meter
    gc.collect()
    assert proc is not None and proc.poll() is not None  # __del__ ended it


def test_tegrastats_meter_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EnergyError, match="not found: it ships with JetPack / L4T"):
        TegrastatsMeter(rails=("POM_5V_IN",), executable=str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EnergyError, match="tegrastats.*not found"):
        TegrastatsMeter(rails=("POM_5V_IN",))
    monkeypatch.undo()
    fake = str(_fake_tegrastats(tmp_path))
    with pytest.raises(EnergyError, match="no rail VDD_IN .this board reports: POM_5V_IN, POM_5V_GPU, POM_5V_CPU"):
        TegrastatsMeter(rails=("VDD_IN",), executable=fake)
    slow = TegrastatsMeter(rails=("POM_5V_IN",), executable=fake, interval_ms=2000)
    slow.start()
    with pytest.raises(EnergyError, match="shorter than the tegrastats interval .2000 ms"):
        slow.stop()
    assert slow.process is not None and slow.process.poll() is not None
    with pytest.raises(EnergyError, match="stop.. without start"):
        slow.stop()
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\necho 'tegrastats: permission denied' >&2\nexit 1\n")
    silent.chmod(0o755)
    with pytest.raises(EnergyError, match="ended before printing a tegrastats line .it printed: tegrastats: perm"):
        TegrastatsMeter(rails=("POM_5V_IN",), executable=str(silent))


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


# -- Jetson INA3221 on a fake JetPack 4 iio tree --------------------------------------------------------

def _iio_tree(root: Path, rails: dict[str, int]) -> Path:
    device = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    device.mkdir(parents=True, exist_ok=True)
    for k, (name, mw) in enumerate(rails.items()):
        (device / f"rail_name_{k}").write_text(name + "\n")
        (device / f"in_power{k}_input").write_text(f"{mw}\n")
    return device


def test_ina3221_iio_power_and_energy(tmp_path: Path) -> None:
    device = _iio_tree(tmp_path, {"POM_5V_IN": 1750, "POM_5V_GPU": 0, "POM_5V_CPU": 366})
    (device / "rail_name_3").write_text("NO_POWER_FILE\n")
    assert ina3221_iio_rails(tmp_path) == {n: device / f"in_power{k}_input"
                                          for k, n in enumerate(["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"])}
    meter = Ina3221IioMeter(["POM_5V_IN"], tmp_path, interval_s=0.002)
    assert meter.power_w() == pytest.approx(1.75)
    t_before = time.perf_counter()
    joules, seconds = meter.measure(lambda: time.sleep(0.2))
    # first sample in start() (before fn), last in stop() (after it): constant power x a span between the two
    assert 1.75 * seconds * (1 - 1e-9) <= joules <= 1.75 * (time.perf_counter() - t_before) * (1 + 1e-9)
    assert Ina3221IioMeter(["POM_5V_GPU", "POM_5V_CPU"], tmp_path).power_w() == pytest.approx(0.366)
    assert meter.describe() == {"source": "jetson-ina3221-iio", "rails": ["POM_5V_IN"], "interval_s": 0.002}
    with pytest.raises(EnergyError, match="VDD_IN.*this board has: POM_5V_IN, POM_5V_GPU, POM_5V_CPU"):
        Ina3221IioMeter(["VDD_IN"], tmp_path)
    with pytest.raises(EnergyError, match="could not read a power monitor"):
        meter.measure(lambda: (device / "in_power0_input").unlink())


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


def test_select_meter_for_the_jetson_nano(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nano = ("jetson-ina3221-iio", "tegrastats", "estimate")
    path = os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    meter, why = select_meter(nano, root=tmp_path, rails=("POM_5V_IN",))
    assert meter.source == "estimate" and len(why) == 2
    assert why[0].startswith("jetson-ina3221-iio:") and "this board has: none" in why[0]
    assert why[1].startswith("tegrastats:") and "not found" in why[1]
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{path}")  # keeps python3 findable
    _fake_tegrastats(tmp_path / "bin", name="tegrastats")
    meter, why = select_meter(nano, root=tmp_path, rails=("POM_5V_IN",))
    assert meter.source == "tegrastats" and len(why) == 1
    _iio_tree(tmp_path, {"POM_5V_IN": 1750})
    assert select_meter(nano, root=tmp_path, rails=("POM_5V_IN",))[0].source == "jetson-ina3221-iio"


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
        assert set(d.energy) <= set(SOURCES) and d.energy[-1] == "estimate"
        if {"jetson-ina3221", "jetson-ina3221-iio", "tegrastats"} & set(d.energy):
            assert d.rails


def test_jetson_nano_how_names_exactly_its_energy_sources() -> None:
    d = DEVICES.get("jetson-nano")
    assert d.energy == ("jetson-ina3221-iio", "tegrastats", "estimate") and d.rails == ("POM_5V_IN",)
    named = {s for s in SOURCES if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", d.how)}
    assert named == set(d.energy) and "POM_5V_IN" in d.how
    assert "log" not in d.how  # the profiler runs tegrastats itself; it reads no log


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
def profiled(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Profile]:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("p") / "b"))
    profile = profile_bundle(bundle, "cpu", settings=ProfileSettings.quick((1, 4)))
    profile.save(bundle)
    return bundle, profile


def test_profile_measures_every_piece(profiled: tuple[Path, Profile]) -> None:
    bundle, profile = profiled
    assert set(profile.batches) == {"1", "4"}
    pieces = profile.batches["1"]
    # 4 layers: reuse windows of 1 and 2 layers (d = 0, 1); every agent also right after the previous one
    assert set(pieces) == {"embed", "head", "static",
                           *(f"{p}_{j:02d}{d}" for p, d in (("layer", ""), ("layer", "@0"), ("layer", "@1"),
                                                            ("agent", ""), ("agent", "@0"))
                             for j in range(4))}
    # the static model as the Runtime runs it (one monolithic call), timed in a block of calls in every pass
    from edgeskip.devices.profiler import STATIC_BLOCK

    assert pieces["static"].samples == STATIC_BLOCK * profile.overhead["1"].passes
    assert set(profile.stability) == {"1", "4"}  # how steady the machine was, per batch size
    # the gate graph (one input per call): every layer, every other layer skipped; no exits in this bundle
    gate = profile.gate["1"]
    assert set(profile.gate) == {"1"} and gate.all_ms > 0 and gate.half_ms is not None and gate.exits_ms is None
    sums = profile.overhead["1"]
    assert gate.fixed_ms + 4 * gate.per_layer_ms == pytest.approx(gate.all_ms - sums.sum_of_stages_ms)
    # each path's resident memory, a fresh process each; the gate path also holds the loop's sessions
    assert profile.memory.paths.keys() == {"1", "4"} and profile.memory.paths["4"].keys() == {"monolithic", "stages"}
    mib = profile.memory.paths["1"]
    assert mib.keys() == {"monolithic", "stages", "gate"} and 0 < mib["stages"] < mib["gate"]
    assert profile.stability["1"].passes == profile.overhead["1"].passes and profile.stability["1"].spread >= 0
    for timing in pieces.values():
        assert timing.median_ms > 0 and timing.samples >= 5 and timing.energy_mj >= 0
    assert profile.energy_source in ("rapl", "estimate")
    assert profile.memory.peak_rss_mb > 0 and profile.backend["backend"] == "onnxruntime"
    loaded = load_profile(profile_path(bundle, "cpu"), fingerprint=Bundle.open(bundle).manifest.fingerprint, device="cpu")
    assert loaded == profile  # typed both ways
    Bundle.open(bundle)  # the profile beside the files leaves the bundle valid


def test_profile_of_another_bundle_or_device_is_refused(profiled: tuple[Path, Profile], tmp_path: Path) -> None:
    bundle, profile = profiled
    path = profile_path(bundle, "cpu")
    with pytest.raises(ProfileError, match="not 'raspberry-pi-5'"):
        load_profile(path, device="raspberry-pi-5")
    data = profile.to_file()
    for name, change, message in (
            ("other", {"bundle": {**data["bundle"], "fingerprint": "0" * 64}}, "another bundle"),
            ("v9", {"schema_version": 9}, "schema version 9"),
            ("extra", {"colour": "red"}, "unknown key"),
            ("empty", {"batches": {}}, "needs measurements"),
            ("negative", {"batches": {"1": {"embed": {**data["batches"]["1"]["embed"], "median_ms": -1.0}}}},
             r"batches.1.embed.median_ms: must be >= 0")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(ProfileError, match=message):
            load_profile(tmp_path / f"{name}.json", fingerprint=Bundle.open(bundle).manifest.fingerprint)
    with pytest.raises(ProfileError, match="no profile"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="not a readable profile"):
        load_profile(tmp_path / "bad.json")


def test_cli_profile(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_bundle_here: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    assert main(["-q", "profile", "--device", "cpu", "--bundle", str(bundle), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "profiles/cpu.json" in out and "batch 1: embed" in out and "gate graph, every layer" in out
    assert (bundle / "profiles" / "cpu.json").is_file()
    assert main(["-q", "profile", "--device", "cpu"]) == 2
    assert "no bundle named and none found here" in capsys.readouterr().err
    assert main(["-q", "profile", "--device", "cpu", "--bundle", str(bundle), "--batch-sizes", "0"]) == 2
    assert "batch sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["-q", "profile", "--device", "toaster", "--bundle", str(bundle)])
    assert exc.value.code == 2


# -- the cost model -------------------------------------------------------------------------------------


def test_a_drifting_profile_times_more_passes_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeskip.devices.profiler as profiler

    def machine(*phases: list[float]) -> None:
        it = iter(phases)
        monkeypatch.setattr(profiler, "_in_context", lambda calls, settings, extra: {"runtime_all": next(it)})

    settings = ProfileSettings(max_drift=0.05, extensions=2)
    machine([1.0] * 5 + [1.5] * 5, [1.5] * 10, [1.5] * 10)  # slows down mid-profile, then stays slow
    samples, st = profiler._timed_steadily([], settings, [])
    # 50% drift, then 20% over the pooled 20 passes, then none over 30: the later phase holds both halves
    assert st.steady and st.extensions == 2 and st.passes == 30 == len(samples["runtime_all"])
    machine([1.0] * 5 + [1.5] * 5, [2.0] * 10, [3.0] * 10)  # keeps slowing down: gives up and says so
    _, st = profiler._timed_steadily([], settings, [])
    assert not st.steady and st.extensions == 2 and st.drift > 0.05
    machine([2.0] * 8)
    _, st = profiler._timed_steadily([], settings, [])
    assert st.steady and st.extensions == 0 and st.drift == 0.0 and st.spread == 0.0
    with pytest.raises(ConfigError, match="max_drift"):
        ProfileSettings(max_drift=-1.0)
