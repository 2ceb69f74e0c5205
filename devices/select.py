"""``edgeskip select``: the most accurate Pareto configuration within a latency or energy budget.

The front comes from ``edgeskip search`` (``pareto/<device>.json`` in the bundle, bound to the
bundle's fingerprint). Budgets are the front's predicted figures: latency per call at the batch
size the search predicted for, or energy per call. The choice can be written into the manifest
as the bundle's default configuration, which ``Runtime(bundle)`` (policy ``auto``) then runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from edgeskip.bundle import MANIFEST, Bundle, Manifest
from edgeskip.devices.search import ParetoFront, ParetoPoint, load_front, pareto_path
from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.fsutil import atomic_write_json, loads_json

__all__ = ["NothingFits", "Selection", "choose", "select", "write_default"]


class NothingFits(EdgeskipError):
    """No configuration of the front fits the budget."""


@dataclasses.dataclass(frozen=True)
class Selection:
    point: ParetoPoint
    budget: float
    unit: str  # "ms" or "mJ"
    device: str
    batch: int
    candidates: int  # configurations within the budget
    manifest: Path | None  # where the default was written, if it was

    def describe(self) -> str:
        p = self.point
        exits = "" if p.exit_thresholds is None else f", {100 * p.exit_rate:.0f}% leave at an exit"
        return (f"accuracy {100 * p.accuracy:.2f}% at {p.latency_ms:.3f} ms and {p.energy_mj:.3f} mJ per call "
                f"(batch {self.batch}, predicted on {self.device}), {p.executed_layers:.2f} layers per input{exits}; "
                f"{self.candidates} configuration(s) within {self.budget:g} {self.unit}")


def _budget(budget_ms: float | None, budget_mj: float | None) -> tuple[float, str, str]:
    if (budget_ms is None) == (budget_mj is None):
        raise ConfigError("give one budget: a latency in ms or an energy in mJ")
    value, unit, key = (budget_ms, "ms", "latency_ms") if budget_ms is not None else (budget_mj, "mJ", "energy_mj")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"the budget must be a positive number of {unit}, got {value!r}")
    return float(value), unit, key


def choose(front: ParetoFront, *, budget_ms: float | None = None, budget_mj: float | None = None) -> tuple[ParetoPoint, int]:
    """The most accurate point within the budget (ties: the cheaper), and how many fit."""
    budget, unit, key = _budget(budget_ms, budget_mj)
    fits = [p for p in front.points if getattr(p, key) <= budget]
    if not fits:
        cheapest = min(front.points, key=lambda p: getattr(p, key))
        raise NothingFits(f"nothing fits {budget:g} {unit} on {front.device}: the cheapest configuration needs "
                          f"{getattr(cheapest, key):.3f} {unit} (accuracy {100 * cheapest.accuracy:.2f}%); "
                          "raise the budget, or profile a faster backend or device")
    return max(fits, key=lambda p: (p.accuracy, -getattr(p, key))), len(fits)


def write_default(bundle: Bundle, point: ParetoPoint, front: ParetoFront, budget: float, unit: str) -> Path:
    """Record ``point`` in the manifest as the bundle's default configuration (atomically)."""
    path = bundle.path / MANIFEST
    try:
        raw = loads_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise EdgeskipError(f"cannot read {path}: {exc!r}") from None
    raw["default_config"] = {
        "thresholds": list(point.thresholds),
        "exit_thresholds": None if point.exit_thresholds is None else list(point.exit_thresholds),
        "device": front.device, "budget": {"value": budget, "unit": unit}, "batch": front.batch,
        "predicted": {"latency_ms": point.latency_ms, "energy_mj": point.energy_mj,
                      "energy_source": front.energy_source},
        "accuracy": point.accuracy, "calibration_images": front.meta.get("images"),
        "selected_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Manifest.from_dict(raw)  # what is written must load
    try:
        atomic_write_json(path, raw)
    except OSError as exc:
        raise EdgeskipError(f"cannot write the default configuration into {path}: {exc} "
                            "(a read-only bundle: select with write=False / --dry-run)") from None
    return path


def select(bundle: str | Path | Bundle, device: str = "cpu", *, budget_ms: float | None = None,
           budget_mj: float | None = None, pareto: str | Path | None = None, write: bool = True) -> Selection:
    """Pick the most accurate configuration of the device's front within the budget; by default also make
    it the bundle's default configuration."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    budget, unit, _ = _budget(budget_ms, budget_mj)
    front = load_front(pareto or pareto_path(b, device), b, device)
    point, n = choose(front, budget_ms=budget_ms, budget_mj=budget_mj)
    written = write_default(b, point, front, budget, unit) if write else None
    return Selection(point, budget, unit, front.device, front.batch, n, written)

