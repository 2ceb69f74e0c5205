"""``edgeskip select``: the most accurate configuration of a device's front within a budget, recorded on request.

The front comes from ``edgeskip search`` (``pareto/<device>.json`` beside the bundle, bound to the
bundle's fingerprint); budgets are its predicted figures (latency per call at the batch it was
predicted for, or energy per call). Choosing (:func:`edgeskip.front.choose`) writes nothing;
:func:`record_selection` makes a choice the bundle's default configuration through the bundle's one
write path (:func:`edgeskip.bundle.update_manifest`), which ``Runtime(bundle)`` (policy ``auto``) runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeskip.bundle import Bundle, update_manifest
from edgeskip.front import Selection, choose, load_front, pareto_path

__all__ = ["record_selection", "select"]


def select(bundle: str | Path | Bundle, device: str = "cpu", *, budget_ms: float | None = None,
           budget_mj: float | None = None, pareto: str | Path | None = None) -> Selection:
    """The most accurate configuration of the device's front for this bundle within the budget (nothing written)."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    front = load_front(pareto or pareto_path(b, device), fingerprint=b.manifest.fingerprint, device=device)
    return choose(front, budget_ms=budget_ms, budget_mj=budget_mj)


def record_selection(bundle: str | Path | Bundle, chosen: Selection) -> Bundle:
    """Make ``chosen`` the bundle's default configuration (the manifest rewritten atomically); the updated bundle."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    p = chosen.point
    default = {
        "thresholds": list(p.thresholds),
        "exit_thresholds": None if p.exit_thresholds is None else list(p.exit_thresholds),
        "device": chosen.device, "budget": {"value": chosen.budget, "unit": chosen.unit}, "batch": chosen.batch,
        "predicted": {"latency_ms": p.latency_ms, "energy_mj": p.energy_mj, "energy_source": chosen.energy_source},
        "accuracy": p.accuracy, "calibration_images": chosen.images,
        "selected_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return update_manifest(b, default_config=default)
