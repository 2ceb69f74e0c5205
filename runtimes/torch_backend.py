"""The torch backend: the PyTorch modules themselves, as the reference the other backends match.

Only where torch is installed (a workstation, CI). The weights come from the checkpoint the
bundle was exported from, given as ``checkpoint=`` (a bundle records the checkpoint's name and
weights sha256, never a path); a bundle of freshly initialised weights is rebuilt from its
recorded seed. Either way the
rebuilt weights must match the manifest's ``weights.state_sha256`` fingerprint, so the
reference can never silently run other weights than the bundle's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle
from edgeskip.errors import BackendUnavailableError, CheckpointError
from edgeskip.runtimes.backend import Backend, check_options, check_threads

__all__ = ["TorchBackend", "reference_model"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("the torch backend needs PyTorch: pip install 'edgeskip[train]'") from None
    return torch


def reference_model(bundle: Bundle, checkpoint: str | Path | None = None) -> Any:
    """The PyTorch model (eval mode) whose weights the bundle holds, verified by fingerprint."""
    torch = _torch()
    from edgeskip.train.checkpoint import load_checkpoint, state_sha256  # torch: imported once torch is known

    m = bundle.manifest
    weights = m.weights
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise CheckpointError(f"checkpoint {checkpoint} does not exist")
        ckpt = load_checkpoint(checkpoint)
        if ckpt.model_name != m.model_name:
            raise CheckpointError(f"checkpoint {checkpoint} holds a {ckpt.model_name} model, the bundle a {m.model_name}")
        model = ckpt.build_model()
    elif weights.source == "random-init" and weights.seed is not None:
        from edgeskip.agents.model import SkipViT

        torch.manual_seed(weights.seed)
        model = SkipViT(m.config)
    else:
        raise CheckpointError(f"the torch backend rebuilds the PyTorch model {bundle.path} was exported from: pass "
                              f"checkpoint=PATH (the bundle records checkpoint {weights.checkpoint_name!r}, weights "
                              f"sha256 {weights.checkpoint_sha256}; a bundle carries no paths of the machine it was "
                              "made on)")
    if state_sha256(model) != weights.state_sha256:
        raise CheckpointError(f"the weights rebuilt from {checkpoint or 'the recorded seed'} are not the ones in "
                              f"{bundle.path} (weights fingerprint differs): pass the checkpoint it was exported from")
    return model.eval()


class TorchBackend(Backend):
    """PyTorch eager, fp32, on the CPU: embed, blocks[j] and head of the reference model."""

    name = "torch"
    OPTIONS = ("checkpoint", "threads")

    def __init__(self, bundle: Bundle, stages: Sequence[str], **options: Any) -> None:
        super().__init__(bundle, stages)
        check_options(self.name, options, self.OPTIONS)
        torch = self._torch = _torch()
        threads = check_threads(options.get("threads"))
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide in PyTorch
        self.model = reference_model(bundle, options.get("checkpoint"))
        self._modules = {"embed": self.model.embed, "head": self.model.head}
        for j, block in enumerate(self.model.blocks):
            self._modules[f"layer_{j:02d}"] = block

    def run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with torch.inference_mode():
            return self._modules[stage](torch.from_numpy(np.ascontiguousarray(x))).numpy()  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        torch = self._torch
        return {"backend": self.name, "torch": torch.__version__, "device": "cpu", "precision": "fp32",
                "threads": torch.get_num_threads()}
