"""Layer-skipping agents ("Reinforcement Learning Based Layer Skipping Vision Transformer").

One tiny agent per transformer layer reads the CLS token entering that layer and outputs
the probability of executing it. This package root is torch-free (the configuration and
gene encoding, shared with the runtime); the torch parts live in :mod:`.model`,
:mod:`.reinforce`, :mod:`.trainer`, :mod:`.report` and :mod:`.search`.
"""

from __future__ import annotations

from edgeskip.agents.genes import DEFAULT_GRID, GeneCodec, SkipConfig

__all__ = ["DEFAULT_GRID", "GeneCodec", "SkipConfig"]
