"""Settings of ``edgeskip calibrate`` (torch-free, so the CLI builds its options cheaply)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from edgeskip.e2cm.costs import FEATURES
from edgeskip.e2cm.thresholds import check_budget, check_step
from edgeskip.errors import ConfigError

__all__ = ["CalibrateConfig", "parse_exits"]


def _h(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def parse_exits(text: str) -> tuple[int, ...] | None:
    """'all' (after every layer but the last) or a comma-separated list of layer indices."""
    if text.strip() == "all":
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"exits must be 'all' or comma-separated layer indices, got {text!r}") from None


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """What to calibrate, on which images, and how to search thresholds."""

    feature: str = field(default="tokens", metadata=_h(
        "exit feature: all tokens flattened (thesis), the CLS token, the token mean, or all three compared",
        choices=(*FEATURES, "all")))
    exits: str = field(default="all", metadata=_h("exit layers: 'all' (after every layer but the last) or e.g. 1,3,5"))
    split: str = field(default="train", metadata=_h(
        "calibration images: 'train' (class means from training images, as in the paper) or 'test-half' "
        "(the first half of each test class; results are then reported on the other half)",
        choices=("train", "test-half")))
    calibration_per_class: int | None = field(default=1000, metadata=_h("calibration images per class (more than a class holds takes them all)"))
    test_per_class: int | None = field(default=None, metadata=_h("held-out test images per class (default: all)"))
    path: str = field(default="static", metadata=_h(
        "layers run during calibration: every layer, or an agent model's own decisions", choices=("static", "agents")))
    step: float = field(default=0.01, metadata=_h("budget sweep step (down to 0.001)"))
    restarts: int = field(default=4, metadata=_h("random starts of the threshold search per budget"))
    budget: float | None = field(default=None, metadata=_h(
        "compute budget in (0, 1] for the stored thresholds (default: the cheapest hull point within --max-drop)"))
    max_drop: float = field(default=0.01, metadata=_h("accuracy loss allowed on calibration data when no --budget"))
    means_dtype: str = field(default="float32", metadata=_h("storage type of the class means",
                                                            choices=("float32", "float16")))
    batch_size: int = field(default=256, metadata=_h("images per forward pass"))
    seed: int = field(default=0, metadata=_h("random seed of the threshold search"))

    def __post_init__(self) -> None:
        if self.feature not in (*FEATURES, "all"):
            raise ConfigError(f"feature must be one of {', '.join(FEATURES)} or all, got {self.feature!r}")
        parse_exits(self.exits)
        check_step(self.step)
        if self.budget is not None:
            check_budget(self.budget)
        if not (math.isfinite(self.max_drop) and 0.0 <= self.max_drop <= 1.0):
            raise ConfigError(f"max_drop must be in [0, 1], got {self.max_drop}")
        for name in ("calibration_per_class", "test_per_class"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if self.restarts < 1 or self.batch_size < 1:
            raise ConfigError("restarts and batch_size must be >= 1")

    @property
    def features(self) -> tuple[str, ...]:
        return FEATURES if self.feature == "all" else (self.feature,)
