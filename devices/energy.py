"""Energy sources: real counters where the device has them, a labelled estimate where it has none.

* ``rapl``: Intel/AMD RAPL through the powercap interface
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at
  ``max_energy_range_uj``; AMD CPUs appear under the same zone names; often readable by root
  only). Package zones are summed; sub-zones (``intel-rapl:N:M``) are parts of them and skipped.
* ``jetson-ina3221``: the Jetson power monitors through hwmon (JetPack 5+:
  ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in<K>_label``, ``in<K>_input`` mV,
  ``curr<K>_input`` mA), sampled in a thread and integrated over time.
* ``tegrastats``: a parser for tegrastats lines (rails as ``NAME cur/avg`` in mW, written
  ``1750/1628`` before JetPack 5 and ``2763mW/2846mW`` since), for logs taken on a board.
* ``nvml``: NVIDIA GPUs (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption`` in mJ,
  refreshed every 20-100 ms, so measure at least about a second (pynvml, optional).
* ``estimate``: none of the above: CPU time x watts per busy core from the device table,
  marked ``"source": "estimate"`` so nobody mistakes it for a measurement.

Every reader takes a ``root`` (default ``/``) so tests run against recorded trees in a
temporary directory.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeskip.errors import ConfigError, EdgeskipError

__all__ = [
    "EnergyError", "EnergyMeter", "RaplMeter", "Ina3221Meter", "NvmlMeter", "EstimateMeter", "TegrastatsLine",
    "parse_tegrastats", "rapl_zones", "ina3221_rails", "select_meter", "rapl_delta_uj",
]


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
        """(joules, seconds) of one run of ``fn``."""
        self.start()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        return self.stop(), seconds

    def describe(self) -> dict[str, Any]:
        return {"source": self.source}


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


# -- Jetson INA3221 via hwmon ------------------------------------------------------------------------

INA3221_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"


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


class Ina3221Meter(EnergyMeter):
    """Power of the chosen rails (summed), sampled every ``interval_s`` in a thread and integrated."""

    source = "jetson-ina3221"

    def __init__(self, rails: Sequence[str], root: str | Path = "/", interval_s: float = 0.005) -> None:
        available = ina3221_rails(root)
        missing = [r for r in rails if r not in available]
        if not rails or missing:
            raise EnergyError(f"INA3221 rail(s) {missing or list(rails)} not found (this board has: "
                              f"{', '.join(available) or 'none'})")
        self.rails = {r: available[r] for r in rails}
        self.interval_s = interval_s
        self._joules = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def power_w(self) -> float:
        """Instantaneous power of the rails: sum of mV x mA."""
        return sum(int(v.read_text()) * int(c.read_text()) for v, c in self.rails.values()) * 1e-6

    def _sample(self) -> None:
        last_t, last_p = time.perf_counter(), self.power_w()
        while not self._stop.wait(self.interval_s):
            t, p = time.perf_counter(), self.power_w()
            self._joules += 0.5 * (p + last_p) * (t - last_t)  # trapezoid
            last_t, last_p = t, p
        t, p = time.perf_counter(), self.power_w()
        self._joules += 0.5 * (p + last_p) * (t - last_t)

    def start(self) -> None:
        self._joules = 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self._joules

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
            if name == "nvml":
                return NvmlMeter(), why
            if name == "estimate":
                return EstimateMeter(watts_per_core, basis), why
            raise ConfigError(f"unknown energy source {name!r}")
        except EnergyError as exc:
            why.append(f"{name}: {exc}")
    raise EnergyError("no energy source works here: " + "; ".join(why))
