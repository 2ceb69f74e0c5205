"""Device descriptions and measurements (torch-free).

* :mod:`~edgeskip.devices.table`: target devices as data (backend, precision, energy sources, how to profile);
* :mod:`~edgeskip.devices.energy`: RAPL, Jetson INA3221, tegrastats, NVML, and a labelled estimate;
* :mod:`~edgeskip.devices.profiler`: ``edgeskip profile``, per-stage latency, energy and memory of a bundle;
* :mod:`~edgeskip.devices.bench`: ``edgeskip bench``, the runtime's speed on this machine, static against dynamic.

Facts about the host recorded with every figure live in :mod:`edgeskip.host` (training records them too).
"""

from __future__ import annotations

from edgeskip.devices.table import DEVICES, Device, get_device, register_device

__all__ = ["DEVICES", "Device", "get_device", "register_device"]
