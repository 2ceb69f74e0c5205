"""One search for every front: NSGA-II (pymoo) over a model's layer and exit genes (torch-free at its core).

============================= =====================================================================
:mod:`~.genome`               the one two-way gene encoding (:class:`Genome`: genes <-> Policy)
:mod:`~.problem`              the pymoo Problem handed its algorithm, the archive of every point,
                              one hypervolume convention (:class:`ConfigurationProblem`, :func:`nsga2`)
:mod:`~.costs`                pluggable costs: MACs (:class:`MacsCost`) or a device profile
                              (:class:`ProfileCost`), over one usage model
:mod:`~.pathcache`            the bundle's evaluator: its own stages, cached per path (exact)
:mod:`~.posttrain`            the checkpoint's evaluator (PyTorch) and ``edgeskip posttrain`` (torch)
:mod:`~.bundle`               ``edgeskip search``: a bundle on a profiled device
:mod:`~.select`               ``edgeskip select``: a budget's configuration, recorded on request
:mod:`~.plot`                 one picture of a front
:mod:`~.settings`             the settings of every search, as data
============================= =====================================================================

Every search writes the one :class:`~edgeskip.front.ParetoFront` format (:mod:`edgeskip.front`), which
``apply-config``, ``select``, the Runtime and the examples read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeskip.front import FrontError, NothingFits, ParetoFront, ParetoPoint, Selection, choose, load_front, pareto_path
from edgeskip.search.costs import MacsCost, ProfileCost, ProfileCosts, Usage, usage_of
from edgeskip.search.genome import DEFAULT_GRID, Genome, grid_with_step
from edgeskip.search.settings import BundleSearchSettings, PosttrainSettings, SearchSettings

if TYPE_CHECKING:
    from edgeskip.search.problem import ConfigurationProblem, Evaluation, hypervolume, minimize, nsga2, pareto_points

# pymoo (the 'search' extra) is imported only when a search runs: a device that only selects and runs a
# configuration (edgeskip.search.select, the Runtime) does not need it installed.
_NEEDS_PYMOO = ("ConfigurationProblem", "Evaluation", "hypervolume", "minimize", "nsga2", "pareto_points")


def __getattr__(name: str) -> Any:
    if name in _NEEDS_PYMOO:
        return getattr(importlib.import_module("edgeskip.search.problem"), name)
    raise AttributeError(f"module 'edgeskip.search' has no attribute {name!r}")

__all__ = [
    "DEFAULT_GRID", "BundleSearchSettings", "ConfigurationProblem", "Evaluation", "FrontError", "Genome", "MacsCost", "NothingFits",
    "ParetoFront", "ParetoPoint", "PosttrainSettings", "ProfileCost", "ProfileCosts", "SearchSettings", "Selection", "Usage", "choose",
    "grid_with_step", "hypervolume", "load_front", "minimize", "nsga2", "pareto_path", "pareto_points", "usage_of",
]
