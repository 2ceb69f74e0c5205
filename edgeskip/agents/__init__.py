"""Layer-skipping agents ("Reinforcement Learning Based Layer Skipping Vision Transformer"), in PyTorch.

One tiny agent per transformer layer reads the CLS token entering that layer and outputs the
probability of executing it: :mod:`.model` (the ViT with its agents and learned baselines) and
:mod:`.reinforce` (rewards, returns and the REINFORCE losses). Training them is
:mod:`edgeskip.train.agents`; their skip configuration is :class:`edgeskip.policy.SkipConfig`, and
post-training their thresholds is :mod:`edgeskip.search.posttrain`.
"""

from __future__ import annotations
