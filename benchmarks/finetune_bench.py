"""A real fine-tuning run through the bring-your-own path: a trained ViT as a Hugging Face folder, agents on CIFAR-10.

No hub access here, so "the user's pretrained model" is the model zoo's trained vit9 backbone written out as a
transformers ``ViTForImageClassification`` folder (``save_pretrained``, with its normalisation in
``preprocessor_config.json``), and "the user's images" are the CIFAR-10 copy unpacked as an image folder. Then,
as a user types it:

    edgeskip train --model hf:FOLDER --data IMAGES --agents --depth-penalty 0.25 --augment basic \
        (--freeze-backbone | --lr 3e-4 --warmup-epochs 0.2) --epochs N

and the test split's accuracy and layers per image against the static model's (the same weights, every layer).
Caveat: the zoo backbone was itself trained with skip agents, so it tolerates skipping better than a backbone
trained statically would.

    python benchmarks/finetune_bench.py --data ../shared/data/cifar10-images.tar.gz --out /tmp/ft [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from common import edgeskip

log = logging.getLogger("finetune_bench")


def pretrained_folder(out: Path) -> Path:
    """The zoo's vit9 backbone (agents dropped) as a Hugging Face ViT folder."""
    from edgeskip.models.adapters import to_hf
    from edgeskip.models.vit import ViT
    from edgeskip.train.checkpoint import load_checkpoint
    from edgeskip.zoo import pretrained

    folder = out / "vit9-hf"
    if (folder / "config.json").is_file():
        return folder
    ckpt = load_checkpoint(pretrained("vit9", "cifar10").checkpoint)
    backbone = ViT(ckpt.model_config)
    backbone.load_state_dict({k: v for k, v in ckpt.state_dict().items()
                              if not k.startswith(("agents.", "baselines."))})
    hf = to_hf(backbone, ckpt.classes)
    hf.save_pretrained(folder)
    norm = ckpt.normalization
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "image_mean": list(norm.mean), "image_std": list(norm.std),
         "size": {"height": 32, "width": 32}}))
    return folder


def static_accuracy(folder: Path, images: Path) -> float:
    from edgeskip.data import load_dataset_for
    from edgeskip.models.adapters import from_hf
    from edgeskip.train.evaluate import evaluate

    adapted = from_hf(folder)
    test = load_dataset_for("folder", images, adapted.model.config, adapted.classes).test
    return float(evaluate(adapted.model, test, adapted.normalization, batch_size=256)["accuracy"])


def every_layer_accuracy(run: Path, images: Path) -> float:
    """The trained checkpoint (its best epoch) with every layer run: the static model of the fine-tuned weights."""
    from edgeskip.data import load_dataset_for
    from edgeskip.policy import SkipConfig
    from edgeskip.train.checkpoint import load_checkpoint
    from edgeskip.train.report import evaluate_skipping

    best = json.loads((run / "best.json").read_text())["checkpoint"]
    ckpt = load_checkpoint(run / best)
    model = ckpt.build_model()
    model.set_skip_config(SkipConfig.uniform(ckpt.model_config.depth, 0.0))  # type: ignore[operator]
    test = load_dataset_for(ckpt.dataset, images, ckpt.model_config, ckpt.classes).test
    return float(evaluate_skipping(model, test, ckpt.normalization, batch_size=256).accuracy)  # type: ignore[arg-type]


def train(folder: Path, images: Path, run: Path, epochs: int, freeze: bool, penalty: float) -> dict[str, Any]:
    args = ["train", "--model", f"hf:{folder}", "--data", str(images), "--agents", "--epochs", str(epochs),
            "--depth-penalty", f"{penalty:g}", "--augment", "basic", "--out", str(run),
            *(["--freeze-backbone"] if freeze else ["--lr", "3e-4", "--warmup-epochs", "0.2"])]
    log.info("$ edgeskip %s", " ".join(args))
    start = time.perf_counter()
    edgeskip(*args)
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda h: (h["test_accuracy"], h["epoch"]))
    return {"command": "edgeskip " + " ".join(args), "seconds": time.perf_counter() - start,
            "epochs": [{k: h[k] for k in ("epoch", "train_loss", "test_accuracy", "test_mean_executed_layers",
                                          "images_per_second")} for h in history],
            "best": {k: best[k] for k in ("epoch", "test_accuracy", "test_mean_executed_layers")},
            "every_layer_accuracy": every_layer_accuracy(run, images)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 image-folder .tar.gz")
    p.add_argument("--out", required=True, help="working folder (the unpacked images, the HF folder, the runs)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs per run")
    p.add_argument("--runs", default="frozen,joint", help="frozen (--freeze-backbone) and/or joint")
    p.add_argument("--depth-penalty", type=float, default=0.25,
                   help="the reward's weight of executed layers (0.25: the zoo's recipe; 1: the thesis's)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    images = out / "cifar10"
    if not (images / "test").is_dir():
        with tarfile.open(args.data) as tar:
            tar.extractall(images, filter="data")
    folder = pretrained_folder(out)
    results: dict[str, Any] = {"static_accuracy": static_accuracy(folder, images), "runs": {}}
    log.info("static (every layer, the pretrained weights): test accuracy %.4f", results["static_accuracy"])
    for name in args.runs.split(","):
        run = out / f"run-{name}-{args.depth_penalty:g}"
        if run.exists():
            shutil.rmtree(run)
        r = train(folder, images, run, args.epochs, freeze=name == "frozen", penalty=args.depth_penalty)
        results["runs"][name] = r
        log.info("%s: best epoch %d, test accuracy %.4f (%+.2f points against the pretrained static model; the "
                 "fine-tuned weights with every layer: %.4f), %.2f of 9 layers per image, %.0f s", name,
                 r["best"]["epoch"], r["best"]["test_accuracy"],
                 100 * (r["best"]["test_accuracy"] - results["static_accuracy"]), r["every_layer_accuracy"],
                 r["best"]["test_mean_executed_layers"], r["seconds"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
