"""Device descriptions and measurements (torch-free).

* :mod:`~edgeskip.devices.host`: facts about the host, recorded with every figure edgeskip measures;
* :mod:`~edgeskip.devices.table`: target devices as data (backend, precision, energy sources, how to profile);
* :mod:`~edgeskip.devices.energy`: RAPL, Jetson INA3221, tegrastats, NVML, and a labelled estimate;
* :mod:`~edgeskip.devices.profiler`: ``edgeskip profile``, per-stage latency, energy and memory of a bundle.
"""

from __future__ import annotations

from edgeskip.devices.host import HostInfo, describe_host
from edgeskip.devices.table import DEVICES, Device, get_device, register_device

__all__ = ["DEVICES", "Device", "HostInfo", "describe_host", "get_device", "register_device"]
