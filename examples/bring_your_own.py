"""Bring your own ViT and your own images: a timm DeiT fine-tuned with skip agents, to a torch-free Runtime.

    python examples/bring_your_own.py --out byo                                   # digits, upscaled
    python examples/bring_your_own.py --out byo --cifar ../shared/data/cifar10-images.tar.gz
    python examples/bring_your_own.py --out byo --weights my_deit.safetensors --timm-name deit_tiny_patch16_224

What a user with a pretrained timm model and a folder of their own images does, step by step:

1. **Weights**: a local timm state dict. Without ``--weights`` this script writes one: a DeiT-tiny
   (distillation token, 12 layers of width 192, 3 heads) at 64x64 with random weights, made by timm's
   ``create_model`` where timm imports, else in timm's layout by ``edgeskip.models.adapters.to_timm_state_dict``
   (the same names timm's ``VisionTransformerDistilled`` has).
2. **Images**: an image folder, ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, at 72x72, so that
   every image is resized and centre-cropped to the model's 64x64, as the runtime will do on the device.
   Made from CIFAR-10 images (``--cifar``) or the scikit-learn digits; written at run time, never shipped.
3. The ``edgeskip`` commands a user types: ``train`` (the pretrained model, a new head for these classes,
   one skip agent per layer, REINFORCE), ``calibrate`` (E²CM exits), ``export``, ``profile``, ``search``,
   ``select``.
4. **The device side**: ``edgeskip.Runtime`` in a process where torch cannot be imported, on images of
   another size straight from the folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("bring_your_own")

SIZE, FILE_SIZE = 64, 72  # the model's input, and the images' own size on disk


def write_weights(out: Path, name: str, classes: int) -> Path:
    """A random DeiT-tiny (distilled) at 64x64 as a timm state dict in ``out``."""
    import torch
    from safetensors.torch import save_file

    file = out / "deit_tiny_random.safetensors"
    torch.manual_seed(0)
    try:
        import timm

        model = timm.create_model(name, pretrained=False, img_size=SIZE, num_classes=classes)
        state, how = model.state_dict(), "timm.create_model"
    except Exception as exc:  # not installed, or (as on machines without a working torchvision) not importable
        from edgeskip.config import ViTConfig
        from edgeskip.models.adapters import to_timm_state_dict
        from edgeskip.models.vit import ViT

        cfg = ViTConfig("timm-vit", depth=12, width=192, heads=3, mlp_hidden=768, patch_size=16, image_size=SIZE,
                        num_classes=classes, drop_path=0.0, distilled=True, head_tokens="cls+dist")
        state, how = to_timm_state_dict(ViT(cfg)), f"timm's layout (timm not importable: {type(exc).__name__})"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    log.info("wrote %s: random %s weights, %d tensors, by %s", file, name, len(state), how)
    return file


def write_folder(out: Path, cifar: str | None, classes: int, train: int, test: int) -> Path:
    """An image folder of ``classes`` classes (``train`` + ``test`` images each) as 72x72 JPEGs."""
    from PIL import Image

    root = out / "images"
    if root.exists():
        return root
    pools = _cifar_images(Path(cifar), classes, train + test) if cifar else _digit_images(classes, train + test)
    for name, images in pools.items():
        for i, img in enumerate(images):
            split = "train" if i < train else "test"
            file = root / split / name / f"{i:04d}.jpg"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((FILE_SIZE, FILE_SIZE), Image.BICUBIC).save(file, quality=92)
    log.info("wrote %s: %d classes, %d train and %d test images each, %dx%d JPEG", root, classes, train, test,
             FILE_SIZE, FILE_SIZE)
    return root


def _cifar_images(source: Path, classes: int, per_class: int) -> dict[str, list[np.ndarray]]:
    from edgeskip.data import load_cifar10

    train = load_cifar10(source, limit_per_class=per_class).train
    return {train.classes[c]: list(train.images[train.labels == c]) for c in range(classes)}


def _digit_images(classes: int, per_class: int) -> dict[str, list[np.ndarray]]:
    from edgeskip.data import load_digits

    digits = load_digits()
    images = np.concatenate([digits.train.images, digits.test.images])
    labels = np.concatenate([digits.train.labels, digits.test.labels])
    return {f"digit_{c}": [np.repeat(images[i], 3, axis=2) for i in np.flatnonzero(labels == c)[:per_class]]
            for c in range(classes)}


def edgeskip(*args: str) -> str:
    """``edgeskip ARGS`` as a user types it; its output is logged and returned."""
    log.info("$ edgeskip %s", " ".join(args))
    proc = subprocess.run([sys.executable, "-m", "edgeskip", *args, "--no-progress"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"edgeskip {args[0]} failed:\n{proc.stderr[-3000:]}")
    log.info("%s", proc.stdout.rstrip())
    return proc.stdout


def on_device(bundle: str, folder: str) -> dict[str, object]:
    """The device side: no torch, the bundle's selected configuration, the folder's own 72x72 images."""
    sys.modules["torch"] = None  # type: ignore[assignment]  # an on-device app has no torch
    from PIL import Image

    import edgeskip

    files = sorted(Path(folder, "test").glob("*/*.jpg"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    truth = [f.parent.name for f in files]
    with edgeskip.Runtime(bundle) as rt:
        one = rt(images[0])  # one input, at the file's own size: fitted as training saw it
        out = rt(images)  # the whole batch, gated per input
        info = rt.info()
    correct = sum(p == t for p, t in zip(out.class_names, truth, strict=True))
    return {"images": len(files), "accuracy": correct / len(files), "first": [one.class_names[0], truth[0]],
            "mean_layers": float(out.executed.sum(1).mean()), "exited": int((out.exit_layer >= 0).sum()),
            "path": info["path"], "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bring-your-own", help="working folder")
    p.add_argument("--weights", default=None, help="your timm state dict (default: write a random DeiT-tiny)")
    p.add_argument("--timm-name", default="deit_tiny_distilled_patch16_224", help="its timm model name")
    p.add_argument("--cifar", default=None, help="a CIFAR-10 copy to take images from (else the digits)")
    p.add_argument("--classes", type=int, default=4, help="classes in the image folder")
    p.add_argument("--train-images", type=int, default=120, help="training images per class")
    p.add_argument("--test-images", type=int, default=40, help="test images per class")
    p.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    p.add_argument("--device-side", nargs=2, metavar=("BUNDLE", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device_side:
        print(json.dumps(on_device(*args.device_side)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = args.weights or str(write_weights(out, args.timm_name, 1000))
    folder = write_folder(out, args.cifar, args.classes, args.train_images, args.test_images)
    model = f"timm:{args.timm_name}"
    run, e2cm, bundle = out / "run", out / "e2cm", out / "bundle"
    if not (run / "latest.json").exists():
        edgeskip("train", "--model", model, "--weights", weights, "--data", str(folder), "--agents", "--epochs",
                 str(args.epochs), "--batch-size", "32", "--lr", "5e-4", "--warmup-epochs", "1", "--augment", "basic",
                 "--depth-penalty", "0.5", "--out", str(run))
    edgeskip("calibrate", "--checkpoint", str(run), "--data", str(folder), "--feature", "cls", "--out", str(e2cm),
             "--force")
    edgeskip("export", "--checkpoint", str(run), "--e2cm", str(e2cm / "cls"), "--data", str(folder), "--out",
             str(bundle), "--force")
    edgeskip("profile", str(bundle), "--quick")
    n = args.classes * args.test_images // 2
    edgeskip("search", str(bundle), "--data", str(folder), "--images", str(n), "--holdout-images", str(n),
             "--generations", "15")
    edgeskip("select", str(bundle), "--max-loss-points", "2")
    proc = subprocess.run([sys.executable, __file__, "--device-side", str(bundle), str(folder)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the device side failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    log.info("on the device (no torch): %d test images, accuracy %.3f, %.2f of 12 layers per image, %d left at an "
             "exit, path %s", result["images"], result["accuracy"], result["mean_layers"], result["exited"],
             result["path"])
    (out / "device.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
