"""Training augmentation in pure torch through kornia (torchvision has no CPU build here)."""

from __future__ import annotations

from torch import nn

from edgeskip.errors import BackendUnavailableError

__all__ = ["build_augmentation"]


def build_augmentation(kind: str, image_size: int, channels: int) -> nn.Module:
    """``none``, ``basic`` (4-pixel-padded random crop + horizontal flip) or ``full``
    (basic + AutoAugment with the CIFAR-10 policy + random erasing), on float images in [0, 1].

    Crop padding is 4 pixels at 32x32 and scales with the image (1 pixel at 8x8).
    AutoAugment's policy is defined for RGB images, so ``full`` on other channel counts
    uses basic + random erasing.
    """
    if kind == "none":
        return nn.Identity()
    try:
        import kornia.augmentation as K
        from kornia.augmentation.auto import AutoAugment
    except ImportError:
        raise BackendUnavailableError("augmentation needs kornia: pip install 'edgeskip[train]'") from None
    pad = max(1, image_size // 8)
    layers: list[nn.Module] = [K.RandomCrop((image_size, image_size), padding=pad), K.RandomHorizontalFlip()]
    if kind == "full":
        if channels == 3:
            layers.append(AutoAugment(policy="cifar10"))
        layers.append(K.RandomErasing(p=0.25))
    return nn.Sequential(*layers)
