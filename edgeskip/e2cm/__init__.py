"""E²CM: training-free early exits from class means ("Efficient Neural Network Inference
and Training Using Early Exit Strategies", Görmez 2024, chapter 2).

The package root is torch-free (exit data, the numpy exit rule, the cost model and the
threshold search, all shared with the runtime); calibration with torch lives in
:mod:`.calibrate`.
"""

from __future__ import annotations

from edgeskip.e2cm.costs import FEATURES, MacCosts, check_exits, feature_size
from edgeskip.e2cm.means import E2CM, exit_features
from edgeskip.e2cm.thresholds import (
    ExitCache,
    HullPoint,
    Outcome,
    Sweep,
    plot_hulls,
    search_thresholds,
    simulate,
    sweep,
    upper_hull,
)

__all__ = [
    "E2CM", "FEATURES", "MacCosts", "ExitCache", "HullPoint", "Outcome", "Sweep", "check_exits", "exit_features",
    "feature_size", "plot_hulls", "search_thresholds", "simulate", "sweep", "upper_hull",
]
