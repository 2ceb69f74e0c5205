"""Pretrained-size models on this CPU: a timm DeiT-tiny and a Hugging Face ViT of its size at 224x224.

1. **Export fidelity**: each model (random weights, or ``--weights`` for your timm file) adapted, given skip
   agents, and exported with ``edgeskip export``; its own fidelity check runs every stage, the monolithic model
   and the gate graph on real CIFAR-10 test images fitted to 224x224 (an image folder written from the copy):
   max |exported - PyTorch| per stage, and gate decisions identical to PyTorch's.
2. **Speed** (``edgeskip bench``, ratios from one interleaved run, the machine's repeat noise beside them): per-layer
   latency, the per-stage loop against the monolithic model, three skipped layers against the compute-
   proportional ideal, and the agent policy at batch 1 and ``--batch``. A DeiT-tiny layer at 224 is about 10x
   a vit9 layer at 32, so the loop's dispatch overhead should all but vanish.

    python benchmarks/byo_bench.py --data ../shared/data/cifar10-images.tar.gz [--json out.json] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import edgeskip, write_image_folder

from edgeskip.data import load_cifar10

log = logging.getLogger("byo_bench")

SIZE = 224


def checkpoint(kind: str, out: Path, classes: tuple[str, ...], weights: str | None) -> Path:
    """The adapted model with random skip agents (threshold 0.5) as an edgeskip checkpoint."""
    import torch
    from safetensors.torch import save_file

    from edgeskip.agents.model import SkipViT
    from edgeskip.config import ViTConfig
    from edgeskip.models.adapters import from_hf, from_timm, to_timm_state_dict, with_new_head
    from edgeskip.models.vit import ViT
    from edgeskip.policy import SkipConfig
    from edgeskip.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    if kind == "timm":
        if weights is None:
            cfg = ViTConfig("timm-vit", depth=12, width=192, heads=3, mlp_hidden=768, patch_size=16, image_size=SIZE,
                            num_classes=1000, drop_path=0.0, distilled=True, head_tokens="cls+dist")
            weights = str(out / "deit_tiny_distilled_random.safetensors")
            save_file(to_timm_state_dict(ViT(cfg)), weights)
        adapted = from_timm("deit_tiny_distilled_patch16_224", weights=weights)
    else:
        import transformers

        hf = transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=SIZE,
            patch_size=16, num_labels=1000, layer_norm_eps=1e-6))
        adapted = from_hf(hf)
        log.info("HF ViT adapted: max |logits - original| %.2e", adapted.max_abs_diff)
    model = with_new_head(adapted.model, len(classes))
    skip = SkipViT(model.config, SkipConfig.uniform(model.config.depth, 0.5))
    missing, _ = skip.load_state_dict(model.state_dict(), strict=False)
    assert all(k.startswith(("agents.", "baselines.")) for k in missing)
    path = out / f"{kind}-ckpt"
    save_checkpoint(path, skip.eval(), model_name=adapted.name, model_config=model.config, dataset="folder",
                    normalization=adapted.normalization, classes=classes)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 image-folder .tar.gz (the fidelity and workload images)")
    p.add_argument("--weights", default=None, help="your timm DeiT-tiny (distilled) state dict (default: random)")
    p.add_argument("--images", type=int, default=8, help="CIFAR-10 test images per class in the folder")
    p.add_argument("--batch", type=int, default=8, help="batch size of the batched agent workload")
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds at batch 1")
    p.add_argument("--skip-hf", action="store_true", help="only the timm model")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test = load_cifar10(args.data, limit_per_class=args.images).test  # the export checks itself on test/
        folder = write_image_folder({"train": test, "test": test}, root / "images", suffix=".png")
        classes = tuple(sorted(p.name for p in (folder / "train").iterdir()))
        for kind in ("timm",) if args.skip_hf else ("timm", "hf"):
            ckpt = checkpoint(kind, root, classes, args.weights)
            bundle = root / f"{kind}-bundle"
            log.info("$ edgeskip export %s", ckpt)
            print(edgeskip("export", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(bundle),
                           "--fidelity-images", str(len(classes) * args.images)).rstrip())
            from edgeskip.bundle import Bundle

            fid = Bundle.open(bundle).manifest.fidelity
            assert fid is not None
            entry: dict[str, Any] = {"fidelity": {"images": fid.images, "max_stage_error": max(fid.onnx.values()),
                                                  "monolithic_error": fid.monolithic,
                                                  "gate_same_decisions": [fid.gate.same_decisions, fid.gate.images],
                                                  "gate_max_logit_error": fid.gate.max_abs_logit_error}}
            if kind == "timm":
                report_file = root / "bench.json"
                log.info("$ edgeskip bench %s", bundle)
                table = edgeskip("bench", str(bundle), "--data", str(folder), "--images", str(len(classes) * 4),
                                 "--batch", str(args.batch), "--batch-images", str(4 * args.batch), "--rounds",
                                 str(args.rounds), "--workload-rounds", "5", "--no-torch", "--json", str(report_file))
                print(table.rstrip())
                entry["bench"] = json.loads(report_file.read_text())
            results[kind] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
