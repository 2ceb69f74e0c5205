"""Host description against fake /proc and /sys trees under a temporary root."""

from __future__ import annotations

from pathlib import Path

from edgeskip.host import describe_host
from edgeskip.host import cpu_flags, cpu_has_bf16

# First block of /proc/cpuinfo as printed on this project's 2-core x86 CI machine (AMD EPYC).
X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC
"""
# Raspberry Pi 5 style (Arm: "Features", no model name).
ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes crc32 cpuid asimdrdm lrcpc dcpop asimddp
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def fake_root(tmp_path: Path, cpuinfo: str, governor: str | None) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    if governor:
        gov = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
        gov.parent.mkdir(parents=True)
        gov.write_text(governor + "\n")
    return tmp_path


def test_x86_with_bf16(tmp_path: Path) -> None:
    root = fake_root(tmp_path, X86, "performance")
    assert "avx512_bf16" in cpu_flags(root) and cpu_has_bf16(root)
    info = describe_host(root)
    assert info.cpu_model == "AMD EPYC" and info.governor == "performance" and info.bf16
    assert info.usable_cpus >= 1 and set(info.to_dict()) >= {"cpu_model", "governor", "bf16"}


def test_arm_without_bf16(tmp_path: Path) -> None:
    root = fake_root(tmp_path, ARM, None)
    info = describe_host(root)
    assert info.cpu_model.startswith("Raspberry Pi 5") and info.governor is None and not info.bf16
    assert "asimd" in cpu_flags(root)


def test_unreadable_proc(tmp_path: Path) -> None:
    info = describe_host(tmp_path)
    assert info.bf16 is False and info.governor is None and info.cpu_model


def test_openmp_threads_wait_passively_only_on_a_busy_machine() -> None:
    from edgeskip.host import openmp_wait_policy

    env: dict[str, str] = {}
    assert openmp_wait_policy(env, busy_share=0.1) is None and env == {}  # quiet: spinning threads are faster
    note = openmp_wait_policy(env, busy_share=0.95)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and note is not None and "95% busy" in note
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert openmp_wait_policy(mine, busy_share=1.0) is None and mine == {"OMP_WAIT_POLICY": "ACTIVE"}  # the user's
    sampled: dict[str, str] = {}
    openmp_wait_policy(sampled)  # a real 0.2 s sample of this machine: either way, a valid environment
    assert sampled in ({}, {"OMP_WAIT_POLICY": "PASSIVE"})
