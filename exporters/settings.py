"""Settings of ``edgeskip export`` (torch-free, so the CLI builds its options cheaply)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any

from edgeskip.errors import ConfigError
from edgeskip.zoo import pretrained

__all__ = ["TARGETS", "ExportConfig", "parse_batch_sizes"]

# target -> (default precision, the format exporters run besides ONNX, in order; see edgeskip.exporters)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cpu": ("fp32", ()),
    "onnx": ("fp32", ()),
    "tflite": ("fp32", ("tflite",)),
    "jetson": ("fp16", ("onnx-fp16", "tensorrt")),
}


INT8_MODES = ("auto", "dynamic", "static")


def _h(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ConfigError(f"batch sizes must be distinct integers >= 1, got {text!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export, for which target, from which weights."""

    model: str | None = field(default=None, metadata=_h(
        "model name (see 'edgeskip models'); with --checkpoint, the checkpoint's (e.g. timm:deit_tiny_patch16_224)"))
    target: str = field(default="cpu", metadata=_h("deployment target", choices=tuple(TARGETS)))
    out: str | None = field(default=None, metadata=_h("bundle directory (default: bundles/<model>-<target>)"))
    checkpoint: str | None = field(default=None, metadata=_h(
        "checkpoint or training run to export (without it: freshly initialised weights, flagged as untrained)"))
    pretrained: str | None = field(default=None, metadata=_h(
        "export the model zoo's trained weights and E²CM exits for this dataset, e.g. cifar10 (instead of --checkpoint)"))
    e2cm: str | None = field(default=None, metadata=_h(
        "E²CM folder written by 'edgeskip calibrate' (OUT/<feature>) to put the exits into the bundle"))
    data: str | None = field(default=None, metadata=_h(
        "dataset copy for the fidelity check on real test images (digits need none; without it: random images)"))
    fidelity_images: int = field(default=32, metadata=_h("test images the export checks itself on"))
    int8: bool = field(default=False, metadata=_h(
        "also write every transformer layer quantized to INT8 (onnxruntime's tools, see --int8-mode; for tflite also "
        "LiteRT dynamic-range INT8 files; for jetson the QDQ files TensorRT builds INT8 engines from), checked "
        "against PyTorch; the Runtime then runs them by default"))
    int8_mode: str = field(default="auto", metadata=_h(
        "--int8: dynamic (activations quantized per call; measured faster on onnxruntime here) or static (QDQ, "
        "activation ranges calibrated on training images: what TensorRT's explicit quantization reads); auto: "
        "static for jetson, else dynamic", choices=INT8_MODES))
    calibration_images: int = field(default=256, metadata=_h(
        "--int8-mode static: training images (a seeded subset, evenly per class) the activation ranges are "
        "calibrated on"))
    batch_sizes: str = field(default="1", metadata=_h("jetson: static batch sizes of the engine profiles, e.g. 1,8"))
    seed: int = field(default=0, metadata=_h("seed of the random initialisation when no checkpoint is given"))
    force: bool = field(default=False, metadata=_h("replace an existing bundle at --out (atomically)"))

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.fidelity_images < 1:
            raise ConfigError(f"fidelity_images must be >= 1, got {self.fidelity_images}")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images}")
        if self.int8_mode not in INT8_MODES:
            raise ConfigError(f"int8_mode must be one of {', '.join(INT8_MODES)}, got {self.int8_mode!r}")
        if self.int8 and self.target == "jetson" and self.int8_mode == "dynamic":
            raise ConfigError("--int8-mode dynamic is onnxruntime's (MatMulInteger), which TensorRT cannot parse: "
                              "TensorRT builds INT8 from QDQ, --int8-mode static (the default for jetson)")
        parse_batch_sizes(self.batch_sizes)
        if self.pretrained is not None and self.checkpoint is not None:
            raise ConfigError("give --pretrained DATASET or --checkpoint PATH, not both")
        if self.model is None and self.checkpoint is None:
            raise ConfigError("name the model: --model NAME (with --pretrained DATASET, or alone for untrained "
                              "weights), or --checkpoint PATH, which knows its model")

    def resolved(self) -> ExportConfig:
        """``--pretrained`` turned into the zoo entry's checkpoint and E²CM folder (unless --e2cm is given)."""
        if self.pretrained is None:
            return self
        assert self.model is not None  # __post_init__: no checkpoint without a model
        entry = pretrained(self.model, self.pretrained)
        return dataclasses.replace(self, pretrained=None, checkpoint=str(entry.checkpoint),
                                   e2cm=self.e2cm or str(entry.e2cm))

    @property
    def precision(self) -> str:
        """What the bundle runs by default: ``int8`` with --int8, else the target's precision."""
        return "int8" if self.int8 else TARGETS[self.target][0]

    @property
    def quantization(self) -> str:
        """The INT8 mode ``auto`` stands for: static (QDQ) for jetson, dynamic elsewhere."""
        if self.int8_mode != "auto":
            return self.int8_mode
        return "static" if self.target == "jetson" else "dynamic"

    @property
    def exporters(self) -> tuple[str, ...]:
        """The registered format exporters this target runs after the ONNX stages (edgeskip.exporters): INT8
        before TensorRT, which checks its files."""
        formats = TARGETS[self.target][1]
        if not self.int8:
            return formats
        if "tensorrt" in formats:
            at = formats.index("tensorrt")
            return formats[:at] + ("onnx-int8",) + formats[at:]
        return formats + ("onnx-int8",)

    @property
    def out_dir(self) -> str:
        return self.out or f"bundles/{re.sub(r'[^A-Za-z0-9._-]+', '-', str(self.model))}-{self.target}"
