"""``edgeskip select``: the most accurate configuration of a device's front within a budget, recorded on request.

The front comes from ``edgeskip search`` (``pareto/<device>.json`` beside the bundle, bound to the
bundle's fingerprint); budgets are its predicted figures (latency per call at the batch it was
predicted for, or energy per call). Choosing (:func:`edgeskip.front.choose`) writes nothing;
:func:`record_selection` makes a choice the bundle's default configuration through the bundle's one
write path (:func:`edgeskip.bundle.update_manifest`), which ``Runtime(bundle)`` (policy ``auto``) runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgeskip.bundle import Bundle, update_manifest
from edgeskip.front import Selection, check_degenerate, front_of, load_front, pick

__all__ = ["record_selection", "select"]

log = logging.getLogger(__name__)


def select(bundle: str | Path | Bundle, device: str = "cpu", *, budget_ms: float | None = None,
           budget_mj: float | None = None, max_loss_points: float | None = None, pareto: str | Path | None = None,
           allow_degenerate: bool = False) -> Selection:
    """The most accurate configuration of the device's front for this bundle within the budget or, with
    ``max_loss_points``, the cheapest within that many points of static (:func:`~edgeskip.front.cheapest_within`,
    one standard error included); nothing written.

    A degenerate choice (no layer run, or accuracy within 2 points of chance) raises
    :class:`~edgeskip.front.Degenerate` unless ``allow_degenerate``; allowed, it is logged as a warning."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    front = load_front(front_of(b, device, pareto), fingerprint=b.manifest.fingerprint, device=device)
    chosen = pick(front, budget_ms=budget_ms, budget_mj=budget_mj, max_loss_points=max_loss_points)
    reason = check_degenerate(chosen, b.manifest.config.num_classes, allow=allow_degenerate)
    if reason is not None:
        log.warning("selected a degenerate configuration (allowed): %s", reason)
    return chosen


def record_selection(bundle: str | Path | Bundle, chosen: Selection) -> Bundle:
    """Make ``chosen`` the bundle's default configuration (the manifest rewritten atomically); the updated bundle."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    p = chosen.point
    default = {
        "thresholds": list(p.thresholds),
        "exit_thresholds": None if p.exit_thresholds is None else list(p.exit_thresholds),
        "device": chosen.device, "budget": {"value": chosen.budget, "unit": chosen.unit}, "batch": chosen.batch,
        "predicted": {"latency_ms": p.latency_ms, "energy_mj": p.energy_mj, "energy_source": chosen.energy_source},
        "accuracy": p.accuracy, "calibration_images": chosen.images, "path": p.path,
        "precisions": None if p.precisions is None else list(p.precisions),
        "selected_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return update_manifest(b, default_config=default)
