"""What machine is this? CPU model, cores, instruction-set flags, governor, versions.

Every measurement edgeskip records carries this, so a figure is never separated from the
hardware and software that produced it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import psutil

__all__ = ["HostInfo", "describe_host", "cpu_flags", "cpu_has_bf16", "openmp_wait_policy"]


@dataclasses.dataclass(frozen=True)
class HostInfo:
    machine: str
    system: str
    cpu_model: str
    logical_cpus: int
    usable_cpus: int
    governor: str | None
    bf16: bool
    python: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cpuinfo(root: Path) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict ({} when unreadable)."""
    try:
        text = (root / "proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(root: Path = Path("/")) -> frozenset[str]:
    """x86 ``flags`` (or Arm ``Features``) of the first CPU."""
    info = _cpuinfo(root)
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_has_bf16(root: Path = Path("/")) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16, AMX-BF16, or Arm BF16)."""
    flags = cpu_flags(root)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe_host(root: Path = Path("/")) -> HostInfo:
    """Facts about this machine; ``root`` lets tests point at a fake /proc and /sys tree."""
    info = _cpuinfo(root)
    governor_file = root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
    try:
        governor: str | None = governor_file.read_text().strip()
    except OSError:
        governor = None
    return HostInfo(
        machine=platform.machine(),
        system=platform.system(),
        cpu_model=info.get("model name") or info.get("Model") or platform.processor() or "unknown",
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=usable_cpus(),
        governor=governor,
        bf16=cpu_has_bf16(root),
        python=platform.python_version(),
    )


OMP_WAIT = "OMP_WAIT_POLICY"


def openmp_wait_policy(environ: MutableMapping[str, str] | None = None, *, busy_share: float | None = None,
                       threshold: float = 0.5) -> str | None:
    """Make OpenMP's idle threads (PyTorch's CPU pool) sleep instead of spin when other processes already keep
    the CPUs busy: sets ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) when the share of
    all CPUs busy over a 0.2 s sample (``busy_share`` when given) reaches ``threshold``, unless the variable
    is set already. Must run before torch is imported. Returns what it did, for the log, or None.

    Measured on this 2-core VM (``edgeskip quickstart``'s training): with two CPU-bound processes beside it,
    138 s with spinning threads against 62 s passive; on a quiet machine passive threads doubled it (17-19 s
    against 36-38 s), hence the sample.
    """
    env = os.environ if environ is None else environ
    if OMP_WAIT in env:
        return None
    if busy_share is None:
        busy_share = psutil.cpu_percent(interval=0.2) / 100.0
    if busy_share < threshold:
        return None
    env[OMP_WAIT] = "PASSIVE"
    return (f"other processes keep the CPUs {100 * busy_share:.0f}% busy: OpenMP threads wait passively "
            f"({OMP_WAIT}=PASSIVE; set {OMP_WAIT} yourself to choose)")
