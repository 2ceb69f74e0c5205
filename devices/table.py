"""Target devices as data: backend, precision, energy sources and how to profile there.

Each constant cites its source. Add a device by adding an entry (``register_device``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeskip.registry import Registry

__all__ = ["Device", "DEVICES", "register_device", "get_device"]


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    description: str
    backend: str  # the runtime backend that runs bundles there
    precision: str
    target: str  # the export target whose bundle it runs
    energy: tuple[str, ...]  # energy sources to try, in order (see edgeskip.devices.energy)
    rails: tuple[str, ...] = ()  # power-monitor rails summed (INA3221 or tegrastats), where that is the source
    watts_per_core: float = 4.0  # the estimate's power model: watts per busy core
    power_basis: str = ""  # where the estimate's constant comes from
    how: str = ""  # how to run the profiler there

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEVICES: Registry[Device] = Registry("device")


def register_device(device: Device) -> Device:
    return DEVICES.register(device.name, device)


def get_device(name: str) -> Device:
    return DEVICES.get(name)


register_device(Device(
    "cpu", "the CPU this process runs on (x86-64 or Arm), onnxruntime", "onnxruntime", "fp32", "cpu",
    ("rapl", "estimate"),
    watts_per_core=4.0,
    power_basis="about TDP / cores of current server CPUs (AMD EPYC 9554: 360 W / 64 cores = 5.6 W; "
                "EPYC 7763: 280 W / 64 = 4.4 W; both from AMD's product pages); an order of magnitude only",
    how="edgeskip profile --device cpu --bundle DIR (run as root for RAPL energy)"))
register_device(Device(
    "jetson-orin-nano", "Jetson Orin Nano (JetPack 6), TensorRT engines", "tensorrt", "fp16", "jetson",
    ("jetson-ina3221", "estimate"), rails=("VDD_IN",),
    watts_per_core=1.2, power_basis="15 W module power mode / 6 Cortex-A78AE cores, an order of magnitude only",
    how="edgeskip build-engines DIR on the board, then sudo edgeskip profile --device jetson-orin-nano --bundle DIR "
        "(VDD_IN: module input, NVIDIA Jetson Orin Nano developer guide, power monitoring)"))
register_device(Device(
    "jetson-agx-orin", "Jetson AGX Orin (JetPack 6), TensorRT engines", "tensorrt", "fp16", "jetson",
    ("jetson-ina3221", "estimate"), rails=("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),
    watts_per_core=2.5, power_basis="30 W power mode / 12 Cortex-A78AE cores, an order of magnitude only",
    how="edgeskip build-engines DIR on the board, then sudo edgeskip profile --device jetson-agx-orin --bundle DIR "
        "(AGX Orin has no VDD_IN monitor: the module rails are summed, the carrier board is not measured)"))
register_device(Device(
    "jetson-nano", "Jetson Nano (JetPack 4.6), onnxruntime on the CPU (TensorRT 8.2 cannot parse opset 17 "
    "LayerNormalization)", "onnxruntime", "fp32", "cpu",
    ("jetson-ina3221-iio", "tegrastats", "estimate"), rails=("POM_5V_IN",),
    watts_per_core=2.5, power_basis="10 W power mode / 4 Cortex-A57 cores, an order of magnitude only",
    how="edgeskip profile --device jetson-nano --bundle DIR on the board. Energy is the POM_5V_IN rail (the module's "
        "5 V input) of its INA3221: read from the JetPack 4 iio files (jetson-ina3221-iio: "
        "/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power<K>_input, sampled every 5 ms); where those are "
        "missing, from tegrastats, which the profiler runs around each energy block (tegrastats --interval 20) and "
        "whose lines it integrates; where neither works, the labelled estimate (estimate)"))
register_device(Device(
    "raspberry-pi-5", "Raspberry Pi 5 (Cortex-A76), TFLite with XNNPACK", "tflite", "fp32", "tflite",
    ("estimate",),
    watts_per_core=1.5, power_basis="about 6 W under full CPU load / 4 cores (Raspberry Pi 5 product brief: 5 V 5 A "
                                    "supply; measured loads reported around 6-7 W), an order of magnitude only",
    how="pip install edgeskip ai-edge-litert; edgeskip profile --device raspberry-pi-5 --bundle DIR "
        "(no on-board energy counter: use a USB power meter for real figures)"))
