"""Energy sources: real counters where the device has them, a labelled estimate where it has none.

* ``rapl``: Intel/AMD RAPL through the powercap interface
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at
  ``max_energy_range_uj``; AMD CPUs appear under the same zone names; often readable by root
  only). Package zones are summed; sub-zones (``intel-rapl:N:M``) are parts of them and skipped.
* ``jetson-ina3221``: the Jetson power monitors through hwmon (JetPack 5+:
  ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in<K>_label``, ``in<K>_input`` mV,
  ``curr<K>_input`` mA), sampled in a thread and integrated over time.
* ``jetson-ina3221-iio``: the same monitors through NVIDIA's own iio driver of JetPack 4 / L4T 32
  (``nvidia/drivers/staging/iio/meter/ina3221.c`` in the L4T kernel sources:
  ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_<K>``, the rail's label, and
  ``in_power<K>_input``, mW; L4T 32 Developer Guide, "Clock Frequency and Power Management"),
  sampled and integrated like ``jetson-ina3221``.
* ``tegrastats``: NVIDIA's ``tegrastats`` utility (shipped with JetPack / L4T), run as
  ``tegrastats --interval MS`` around each measurement; its lines give each rail as
  ``NAME cur/avg`` in mW (``1750/1628`` before JetPack 5, ``2763mW/2846mW`` since;
  :func:`parse_tegrastats` also reads logs taken on a board). The current mW of the chosen
  rails, summed, is integrated over the times the lines arrived.
* ``nvml``: NVIDIA GPUs (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption`` in mJ,
  refreshed every 20-100 ms, so measure at least about a second (pynvml, optional).
* ``estimate``: none of the above: CPU time x watts per busy core from the device table,
  marked ``"source": "estimate"`` so nobody mistakes it for a measurement.

Every reader takes a ``root`` (default ``/``) so tests run against recorded trees in a
temporary directory; ``tegrastats`` takes the program to run instead.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeskip.errors import ConfigError, EdgeskipError

__all__ = [
    "EnergyError", "EnergyMeter", "RaplMeter", "Ina3221Meter", "Ina3221IioMeter", "TegrastatsMeter", "NvmlMeter",
    "EstimateMeter", "TegrastatsLine", "PowerIntegral", "SampledPowerMeter", "SOURCES", "parse_tegrastats",
    "rapl_zones", "ina3221_rails", "ina3221_iio_rails", "select_meter", "rapl_delta_uj",
]

log = logging.getLogger(__name__)

SOURCES = ("rapl", "jetson-ina3221", "jetson-ina3221-iio", "tegrastats", "nvml", "estimate")
"""The energy source names :func:`select_meter` accepts."""


class EnergyError(EdgeskipError):
    """An energy counter is missing, unreadable or gave an impossible value."""


class EnergyMeter(abc.ABC):
    """A cumulative energy counter: ``measure(fn)`` runs ``fn`` and returns the joules it took."""

    source: str

    @abc.abstractmethod
    def start(self) -> None:
        """Begin a measurement."""

    @abc.abstractmethod
    def stop(self) -> float:
        """End it; joules since :meth:`start`."""

    def measure(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(joules, seconds) of one run of ``fn``; if ``fn`` raises, the meter is closed."""
        self.start()
        try:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        except BaseException:
            self.close()
            raise
        return self.stop(), seconds

    def close(self) -> None:
        """End a measurement left unfinished (a thread, a process); nothing to do for plain counters."""

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"source": self.source}


class PowerIntegral:
    """Joules of power samples (time in s, watts) in time order: trapezoids between consecutive samples."""

    def __init__(self) -> None:
        self.joules = 0.0
        self.samples = 0
        self._last: tuple[float, float] | None = None

    def add(self, t: float, watts: float) -> None:
        if self._last is not None:
            last_t, last_w = self._last
            self.joules += 0.5 * (watts + last_w) * (t - last_t)
        self._last = (t, watts)
        self.samples += 1

    def until(self, t: float) -> float:
        """Joules up to ``t``, the last sample's power held from its time to ``t``."""
        if self._last is None:
            raise EnergyError("no power sample to integrate: take one at the start of the measurement")
        last_t, last_w = self._last
        return self.joules + last_w * max(t - last_t, 0.0)


def _pick_rails(rails: Sequence[str], available: dict[str, Path], what: str) -> dict[str, Path]:
    """The files of ``rails`` among the ``available`` ones; an error naming what the board has otherwise."""
    missing = [r for r in rails if r not in available]
    if not rails or missing:
        raise EnergyError(f"{what} rail(s) {missing or list(rails)} not found (this board has: "
                          f"{', '.join(available) or 'none'}); pick rails from that list")
    return {r: available[r] for r in rails}


class SampledPowerMeter(EnergyMeter):
    """Power (:meth:`power_w`) sampled every ``interval_s`` in a thread and integrated (trapezoids).

    The first sample is taken in :meth:`start` and the last in :meth:`stop`, so the integral spans
    the whole measured block."""

    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ConfigError(f"the sampling interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._integral = PowerIntegral()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def power_w(self) -> float:
        """Instantaneous power of the chosen rails, watts."""

    def _take(self) -> None:
        try:
            self._integral.add(time.perf_counter(), self.power_w())
        except (OSError, ValueError) as exc:
            self._error = f"{self.source}: could not read a power monitor during the measurement ({exc})"

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s) and self._error is None:
            self._take()
        if self._error is None:
            self._take()

    def start(self) -> None:
        self.close()
        self._integral, self._error = PowerIntegral(), None
        self._take()
        if self._error is not None:
            raise EnergyError(self._error)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True, name=f"{self.source}-sampler")
        self._thread.start()

    def stop(self) -> float:
        if self._thread is None:
            raise EnergyError(f"{self.source}: stop() without start(); call start() first")
        self.close()
        if self._error is not None:
            raise EnergyError(self._error)
        return self._integral.joules

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None


# -- RAPL ------------------------------------------------------------------------------------------

RAPL_DIR = "sys/class/powercap"
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


def rapl_zones(root: str | Path = "/") -> list[Path]:
    """Top-level RAPL package zones with a readable ``energy_uj``."""
    base = Path(root) / RAPL_DIR
    if not base.is_dir():
        return []
    zones = []
    for zone in sorted(base.iterdir()):
        if _PACKAGE_ZONE.match(zone.name) and (zone / "energy_uj").is_file():
            try:
                int((zone / "energy_uj").read_text())
            except (OSError, ValueError):
                continue  # often root-only
            zones.append(zone)
    return zones


def rapl_delta_uj(before: int, after: int, max_range: int) -> int:
    """Microjoules between two counter readings, across one wrap-around at ``max_range``."""
    if max_range <= 0:
        raise EnergyError(f"RAPL max_energy_range_uj must be positive, got {max_range}")
    delta = after - before
    return delta if delta >= 0 else delta + max_range


class RaplMeter(EnergyMeter):
    """Sum of the RAPL package zones (``energy_uj``, wrap-around handled)."""

    source = "rapl"

    def __init__(self, root: str | Path = "/") -> None:
        self.zones = rapl_zones(root)
        if not self.zones:
            raise EnergyError(f"no readable RAPL zone under {Path(root) / RAPL_DIR} (absent, or root-only)")
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
        self._start: list[int] = []

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        end = self._read()
        return sum(rapl_delta_uj(a, b, r) for a, b, r in zip(self._start, end, self.ranges, strict=True)) * 1e-6

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "zones": [z.name for z in self.zones]}


# -- Jetson INA3221 via hwmon (JetPack 5+) and via iio (JetPack 4) --------------------------------------

INA3221_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
INA3221_IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"


def ina3221_rails(root: str | Path = "/") -> dict[str, tuple[Path, Path]]:
    """Rail label -> (voltage file in mV, current file in mA) of every INA3221 channel."""
    rails = {}
    for hwmon in sorted(Path(root).glob(INA3221_GLOB)):
        for label in sorted(hwmon.glob("in*_label")):
            k = label.name[2:-len("_label")]
            volt, curr = hwmon / f"in{k}_input", hwmon / f"curr{k}_input"
            if volt.is_file() and curr.is_file():
                rails[label.read_text().strip()] = (volt, curr)
    return rails


def ina3221_iio_rails(root: str | Path = "/") -> dict[str, Path]:
    """Rail name -> power file (mW) of every channel of the JetPack 4 ``ina3221x`` iio driver."""
    rails = {}
    for device in sorted(Path(root).glob(INA3221_IIO_GLOB)):
        for name in sorted(device.glob("rail_name_*")):
            power = device / f"in_power{name.name[len('rail_name_'):]}_input"
            if power.is_file():
                rails[name.read_text().strip()] = power
    return rails


class Ina3221Meter(SampledPowerMeter):
    """Power of the chosen rails (summed, hwmon mV x mA), sampled every ``interval_s`` in a thread and integrated."""

    source = "jetson-ina3221"

    def __init__(self, rails: Sequence[str], root: str | Path = "/", interval_s: float = 0.005) -> None:
        available = ina3221_rails(root)
        picked = _pick_rails(rails, {r: v for r, (v, _c) in available.items()}, "INA3221")
        super().__init__(interval_s)
        self.rails = {r: available[r] for r in picked}

    def power_w(self) -> float:
        """Instantaneous power of the rails: sum of mV x mA."""
        return sum(int(v.read_text()) * int(c.read_text()) for v, c in self.rails.values()) * 1e-6

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "rails": list(self.rails), "interval_s": self.interval_s}


class Ina3221IioMeter(SampledPowerMeter):
    """Power of the chosen rails (summed ``in_power<K>_input`` mW, JetPack 4 iio driver), sampled and integrated."""

    source = "jetson-ina3221-iio"

    def __init__(self, rails: Sequence[str], root: str | Path = "/", interval_s: float = 0.005) -> None:
        self.rails = _pick_rails(rails, ina3221_iio_rails(root), "INA3221 (iio)")
        super().__init__(interval_s)

    def power_w(self) -> float:
        """Instantaneous power of the rails: sum of their mW."""
        return sum(int(p.read_text()) for p in self.rails.values()) * 1e-3

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "rails": list(self.rails), "interval_s": self.interval_s}


# -- tegrastats --------------------------------------------------------------------------------------

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclasses.dataclass(frozen=True)
class TegrastatsLine:
    """One tegrastats sample: rails (name -> (current mW, average mW)), RAM, CPU and GPU load."""

    rails: dict[str, tuple[int, int]]
    ram_used_mb: int | None
    ram_total_mb: int | None
    cpu_load: tuple[int | None, ...]  # per core, None when the core is off
    gpu_load: int | None

    def power_mw(self, rails: Sequence[str]) -> int:
        """Current power of ``rails`` summed (a KeyError names a rail this board does not report)."""
        return sum(self.rails[r][0] for r in rails)


def parse_tegrastats(line: str) -> TegrastatsLine:
    """Parse one line of tegrastats output (JetPack 4 to 6 formats)."""
    rails = {name: (int(cur), int(avg)) for name, cur, avg in _RAIL.findall(line) if name not in _NOT_RAILS}
    ram = _RAM.search(line)
    gpu = _GR3D.search(line)
    cpu = _CPU.search(line)
    loads: list[int | None] = []
    if cpu:
        for core in cpu.group(1).split(","):
            m = re.match(r"\s*(\d+)%", core)
            loads.append(int(m.group(1)) if m else None)
    if not rails and ram is None:
        raise EnergyError(f"not a tegrastats line: {line[:80]!r}")
    return TegrastatsLine(rails, int(ram.group(1)) if ram else None, int(ram.group(2)) if ram else None,
                          tuple(loads), int(gpu.group(1)) if gpu else None)


_NOT_FOUND = ("tegrastats ({}) not found: it ships with JetPack / L4T (/usr/bin/tegrastats on the board); "
              "run on a Jetson, or pass executable=PATH to the program")


class _TegrastatsRun:
    """One ``tegrastats`` process and the thread reading its lines into (arrival time, watts) samples."""

    def __init__(self, argv: list[str], rails: Sequence[str]) -> None:
        self.rails = tuple(rails)
        self.samples: list[tuple[float, float]] = []
        self.skipped: list[str] = []
        self.error: str | None = None
        self.ready = threading.Event()  # set by the first sample, an error, or the end of the output
        try:  # stderr joins stdout: its messages are skipped lines, kept for the error messages
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise EnergyError(f"could not run {argv[0]}: {exc}; check it is executable") from None
        self.thread = threading.Thread(target=self._read, daemon=True, name="tegrastats-reader")
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            self._take(time.perf_counter(), line)
        self.ready.set()

    def _take(self, t: float, line: str) -> None:
        if self.error is not None:
            return
        try:
            sample = parse_tegrastats(line)
        except EnergyError:
            self.skipped.append(line.strip())
            log.debug("skipped a line that is not a tegrastats line: %.80r", line)
            return
        missing = [r for r in self.rails if r not in sample.rails]
        if missing:
            self.error = (f"tegrastats reports no rail {', '.join(missing)} (this board reports: "
                          f"{', '.join(sample.rails) or 'none'}); pick rails from that list")
        else:
            self.samples.append((t, sample.power_mw(self.rails) * 1e-3))
        self.ready.set()

    def why_no_sample(self, waited_s: float) -> str:
        """Why :meth:`ready` came without a sample: the rail error, the program's end, or silence."""
        if self.error is not None:
            return self.error
        said = f" (it printed: {' | '.join(self.skipped[:3])[:240]})" if self.skipped else ""
        if self.ready.is_set():
            return f"tegrastats ended before printing a tegrastats line{said}; run it by hand to see why"
        return f"tegrastats printed no tegrastats line within {waited_s:.1f} s{said}"

    def end(self, timeout_s: float) -> None:
        """Terminate the process (kill it if it lingers), reap it, and join the reader."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tegrastats (pid %d) ignored SIGTERM for %.1f s; killing it", self.proc.pid, timeout_s)
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("the tegrastats reader thread is still blocked on output %.1f s after the end", timeout_s)
        if self.proc.stdout is not None and not self.thread.is_alive():
            self.proc.stdout.close()


class TegrastatsMeter(EnergyMeter):
    """Power of the chosen rails (summed current mW) from ``tegrastats --interval MS``, run for each measurement.

    :meth:`start` launches the program and waits for its first line (the start of the integral);
    every line is timed as it arrives, consecutive samples are joined by trapezoids and the last
    one is held until :meth:`stop`, which ends the process. Constructing the meter runs the program
    once to check it works and reports the rails. Lines that are not tegrastats lines are skipped
    and counted (:meth:`describe`). Call :meth:`close` (or use ``with``) if a measurement may be
    left unfinished; ``__del__`` does it too, best effort."""

    source = "tegrastats"

    def __init__(self, rails: Sequence[str], *, executable: str = "tegrastats", interval_ms: int = 20,
                 startup_timeout_s: float = 5.0, stop_timeout_s: float = 2.0) -> None:
        self._run: _TegrastatsRun | None = None
        self.process: subprocess.Popen[str] | None = None  # the latest tegrastats process
        if not rails:
            raise EnergyError("tegrastats needs the rails to sum (e.g. POM_5V_IN on a Nano, VDD_IN on an Orin)")
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise ConfigError(f"the tegrastats interval must be a positive number of ms, got {interval_ms!r}")
        path = shutil.which(executable)
        if path is None:
            raise EnergyError(_NOT_FOUND.format(executable))
        self.executable, self.rails, self.interval_ms = path, tuple(rails), interval_ms
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.skipped_lines = 0
        self.skipped_examples: list[str] = []
        self.start()  # the check: it runs here and reports the rails
        self.close()

    def start(self) -> None:
        self.close()
        run = self._run = _TegrastatsRun([self.executable, "--interval", str(self.interval_ms)], self.rails)
        self.process = run.proc
        waited_s = self.startup_timeout_s + self.interval_ms * 1e-3
        if not run.ready.wait(waited_s) or not run.samples:
            why = run.why_no_sample(waited_s)  # before close(), which ends the output
            self.close()
            raise EnergyError(why)

    def stop(self) -> float:
        run = self._run
        if run is None:
            raise EnergyError("tegrastats: stop() without start(); call start() first")
        t_stop = time.perf_counter()
        self.close()
        if run.error is not None:
            raise EnergyError(run.error)
        samples = [s for s in run.samples if s[0] <= t_stop]
        if len(samples) < 2:
            raise EnergyError(f"only {len(samples)} tegrastats sample(s) in the measured block: it was shorter than "
                              f"the tegrastats interval ({self.interval_ms} ms); measure longer blocks (the "
                              f"profiler's energy_seconds setting) or lower interval_ms")
        integral = PowerIntegral()
        for t, watts in samples:
            integral.add(t, watts)
        return integral.until(t_stop)

    def close(self) -> None:
        """End the running tegrastats, if any (no process is left behind, not even a zombie)."""
        run, self._run = getattr(self, "_run", None), None
        if run is None:
            return
        run.end(self.stop_timeout_s)
        self.skipped_lines += len(run.skipped)
        self.skipped_examples = (self.skipped_examples + [line[:80] for line in run.skipped])[:3]

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # best effort: the interpreter may be shutting down
            pass

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "rails": list(self.rails), "interval_ms": self.interval_ms,
                "executable": self.executable, "skipped_lines": self.skipped_lines,
                "skipped_examples": list(self.skipped_examples)}


# -- NVML ----------------------------------------------------------------------------------------------

class NvmlMeter(EnergyMeter):
    """Total energy of GPU ``index`` from NVML (mJ counter; Volta and newer)."""

    source = "nvml"

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml
        except ImportError:
            raise EnergyError("NVML energy needs pynvml (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as exc:
            raise EnergyError(f"NVML gives no energy counter for GPU {index}: {exc}") from None
        self._nvml = pynvml
        self._start = 0

    def start(self) -> None:
        self._start = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def stop(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start) * 1e-3


# -- estimate --------------------------------------------------------------------------------------

class EstimateMeter(EnergyMeter):
    """Not a measurement: this process's CPU time x ``watts_per_core`` (from the device table)."""

    source = "estimate"

    def __init__(self, watts_per_core: float, basis: str) -> None:
        if not watts_per_core > 0:
            raise ConfigError(f"watts_per_core must be positive, got {watts_per_core}")
        self.watts_per_core = watts_per_core
        self.basis = basis
        self._start = 0.0

    def start(self) -> None:
        self._start = time.process_time()

    def stop(self) -> float:
        return (time.process_time() - self._start) * self.watts_per_core

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "model": "process CPU time x watts per busy core",
                "watts_per_core": self.watts_per_core, "basis": self.basis}


def select_meter(preferences: Sequence[str], *, root: str | Path = "/", rails: Sequence[str] = (),
                 watts_per_core: float = 4.0, basis: str = "") -> tuple[EnergyMeter, list[str]]:
    """The first energy source of ``preferences`` that works here, and why the others did not."""
    why: list[str] = []
    for name in preferences:
        try:
            if name == "rapl":
                return RaplMeter(root), why
            if name == "jetson-ina3221":
                return Ina3221Meter(rails, root), why
            if name == "jetson-ina3221-iio":
                return Ina3221IioMeter(rails, root), why
            if name == "tegrastats":
                return TegrastatsMeter(rails), why
            if name == "nvml":
                return NvmlMeter(), why
            if name == "estimate":
                return EstimateMeter(watts_per_core, basis), why
            raise ConfigError(f"unknown energy source {name!r} (known: {', '.join(SOURCES)})")
        except EnergyError as exc:
            why.append(f"{name}: {exc}")
    raise EnergyError("no energy source works here: " + "; ".join(why))
