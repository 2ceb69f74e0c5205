"""Device descriptions and measurements (torch-free).

Today: facts about the host this process runs on (:mod:`edgeskip.devices.host`), recorded
with every figure edgeskip measures. The per-layer profiler and the device table build on it.
"""

from __future__ import annotations

from edgeskip.devices.host import HostInfo, describe_host

__all__ = ["HostInfo", "describe_host"]
