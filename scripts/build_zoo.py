"""Build a model-zoo entry from a recorded training run: fp16 checkpoint, E²CM calibration, report.

    python scripts/build_zoo.py --run runs/vit9-agents --pretrain-run runs/vit9-static \
        --data ../shared/data/cifar10-images.tar.gz --out edgeskip/zoo/vit9-cifar10

1. the run's best checkpoint is saved with fp16 weights (what ships; loading casts them to fp32);
2. E²CM is calibrated on that fp16 checkpoint (``cls`` feature, along the agents' paths, 500
   training images per class), so the shipped exits match the shipped weights;
3. a cpu bundle is exported from the entry and ``edgeskip.Runtime`` runs every policy over the
   whole test split; PyTorch's own evaluation of the agents runs beside it;
4. ``report.json`` and ``REPORT.md`` collect these figures and the training history.

Every number in the report is measured here, by the project's own code; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeskip.data import load_dataset_for
from edgeskip.host import describe_host
from edgeskip.train.e2cm_pipeline import run_calibration
from edgeskip.e2cm.settings import CalibrateConfig
from edgeskip.exporters.export import export_bundle
from edgeskip.exporters.settings import ExportConfig
from edgeskip.fsutil import atomic_directory, atomic_write_bytes, atomic_write_json
from edgeskip.plots import plot_training_curves
from edgeskip.runtimes.evaluate import evaluate_bundle, format_results
from edgeskip.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("build_zoo")


def history(run: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((run / "history.json").read_text())
    keep = ("epoch", "epoch_seconds", "images_per_second", "train_loss", "train_accuracy", "test_loss",
            "test_accuracy", "test_executed_fraction", "test_mean_executed_layers")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def best_checkpoint(run: Path) -> Path:
    """The run's best epoch (``best.json``), which is what ships."""
    return run / json.loads((run / "best.json").read_text())["checkpoint"]


def fp16_checkpoint(run: Path, out: Path) -> tuple[Any, Path]:
    ckpt = load_checkpoint(best_checkpoint(run))
    model = ckpt.build_model().half()
    path = save_checkpoint(out, model, model_name=ckpt.model_name, model_config=ckpt.model_config,
                           dataset=ckpt.dataset, normalization=ckpt.normalization, classes=ckpt.classes,
                           train_config=ckpt.meta.get("train"), epoch=ckpt.meta.get("epoch"),
                           metrics={**ckpt.metrics, "weights_dtype": "float16", "from_checkpoint": str(ckpt.path)})
    return ckpt, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="training run (with agents) whose best checkpoint ships")
    ap.add_argument("--pretrain-run", type=Path, default=None, help="the static run it was initialised from")
    ap.add_argument("--data", required=True, help="CIFAR-10 copy")
    ap.add_argument("--out", required=True, type=Path, help="zoo entry folder, e.g. edgeskip/zoo/vit9-cifar10")
    ap.add_argument("--hardware", default=None, help="what the training ran on (default: this machine)")
    ap.add_argument("--limit-per-class", type=int, default=None, help="a trial build on fewer images (never ship it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgeskip-zoo-"))  # outside the package: nothing half-built is listed
    tmp = work / "entry"
    try:
        src, ckpt_path = fp16_checkpoint(args.run, tmp / "checkpoint")
        ckpt = load_checkpoint(ckpt_path)
        splits = load_dataset_for(ckpt.dataset, args.data, ckpt.model_config, ckpt.classes,
                                  limit_per_class=args.limit_per_class, progress=True)
        log.info("calibrating E²CM on the fp16 checkpoint ...")
        settings = CalibrateConfig(feature="cls", path="agents", calibration_per_class=500)
        cal = run_calibration(ckpt, splits, settings, tmp / "e2cm", progress=True)
        e = cal["features"]["cls"]

        log.info("PyTorch evaluation of the agents ...")
        from edgeskip.train.report import evaluate_skipping

        torch_eval = evaluate_skipping(ckpt.build_model(), splits.test, ckpt.normalization).to_dict(top=10)

        log.info("exporting a cpu bundle and running every policy with edgeskip.Runtime ...")
        bundle = work / "bundle"
        export_bundle(ExportConfig(model=ckpt.model_name, target="cpu", out=str(bundle), checkpoint=str(ckpt_path),
                                   e2cm=str(tmp / "e2cm" / "cls"), data=args.data))
        results = evaluate_bundle(bundle, splits.test.images, splits.test.labels, batch_size=128)
        table = format_results(results, ckpt.model_config.depth)

        runs = {"agents": history(args.run)}
        if args.pretrain_run:
            runs["pretrain"] = history(args.pretrain_run)
        curves = [*runs.get("pretrain", []), *[{**r, "epoch": r["epoch"] + len(runs.get("pretrain", []))}
                                                 for r in runs["agents"]]]
        plot_training_curves(curves, tmp / "training.png", f"{ckpt.model_name} on {ckpt.dataset}: "
                             "static pre-training, then agents")
        train_cfgs = {"agents": src.meta.get("train")}
        if args.pretrain_run:
            train_cfgs["pretrain"] = load_checkpoint(best_checkpoint(args.pretrain_run)).meta.get("train")
        host = describe_host()
        report = {
            "model": ckpt.model_name, "dataset": ckpt.dataset, "params": ckpt.model_config.param_count(),
            "weights": "float16 safetensors (cast to float32 when loaded)",
            "hardware": args.hardware or f"{host.cpu_model} ({host.usable_cpus} usable CPUs, no GPU)",
            "test_images": len(splits.test),
            "training": {"configs": train_cfgs, "history": runs,
                         "seconds": sum(r.get("epoch_seconds", 0.0) for h in runs.values() for r in h)},
            "torch_agents_test": torch_eval,
            "e2cm": {"settings": cal["settings"], "calibration_images": cal["calibration_images"],
                     "thresholds": e["e2cm"]["thresholds"], "test": e["e2cm"]["test"],
                     "agents_alone_test": e.get("agents"), "both_test": e.get("both", {}).get("test")},
            "runtime_test": [r.to_dict() | {"paths": dict(list(r.paths.items())[:10]), "distinct_paths": len(r.paths)}
                             for r in results],
            "runtime_table": table,
            "built_seconds": time.perf_counter() - start,
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(tmp / "report.json", report)
        atomic_write_bytes(tmp / "REPORT.md", render(report).encode())
        with atomic_directory(args.out, replace=True) as final:  # the old entry stays until the new one is whole
            shutil.copytree(tmp, final, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s in %.0f s", args.out, time.perf_counter() - start)
    return 0


def _train_command(cfg: dict[str, Any], out: str, init: str | None) -> str:
    """The ``edgeskip train`` command line of a recorded training config."""
    parts = [f"edgeskip train --model {cfg['model']} --dataset {cfg['dataset']} --data DATA"]
    if cfg.get("agents"):
        parts.append(f"--agents --init {init} --depth-penalty {cfg['depth_penalty']}" if init else
                     f"--agents --depth-penalty {cfg['depth_penalty']}")
    parts.append(f"--epochs {cfg['epochs']} --lr {cfg['lr']} --warmup-epochs {cfg['warmup_epochs']} "
                 f"--batch-size {cfg['batch_size']} --augment {cfg['augment']} --precision {cfg['precision']} "
                 f"--seed {cfg['seed']} --out {out}")
    return " ".join(parts)


def render(r: dict[str, Any]) -> str:
    """REPORT.md: the figures and the commands that reproduce them."""
    t = r["training"]
    agents_cfg = t["configs"]["agents"] or {}
    pre_cfg = t["configs"].get("pretrain")
    pre = t["history"].get("pretrain", [])
    ag = t["history"]["agents"]
    precisions = sorted({c.get("precision_used", c.get("precision")) for c in t["configs"].values() if c})
    name = f"{r['model']}-{r['dataset']}"
    lines = [
        f"# {r['model']} on {r['dataset']} (edgeskip model zoo)",
        "",
        (f"{r['params']:,} parameters, {r['weights']}. Trained on {r['hardware']}, autocast "
         f"{' / '.join(precisions)}; {t['seconds'] / 60:.0f} minutes of training in all."),
        "",
        "## Training (recorded run)",
        "",
    ]
    if pre:
        lines.append(f"- static pre-training: {len(pre)} epochs, test accuracy {pre[-1]['test_accuracy']:.4f} "
                     f"(all {r['torch_agents_test']['depth']} layers)")
    lines.append(f"- skip agents (REINFORCE, depth penalty {agents_cfg.get('depth_penalty')}): {len(ag)} epochs, test "
                 f"accuracy {ag[-1]['test_accuracy']:.4f} running {100 * ag[-1].get('test_executed_fraction', 1):.1f}% "
                 "of the layers")
    lines += ["", "![training curves](training.png)", "",
              f"## Evaluation on the {r['test_images']:,} {r['dataset']} test images", "",
              "`edgeskip.Runtime` (onnxruntime, cpu bundle exported from this entry), every policy:", "", "```",
              r["runtime_table"], "```", ""]
    tq = r["torch_agents_test"]
    lines += [(f"PyTorch, agents at threshold 0.5: accuracy {tq['accuracy']:.4f}, {tq['mean_executed_layers']:.2f} "
              f"layers per image."), ""]
    e = r["e2cm"]
    lines += [(f"E²CM (cls feature, calibrated on {e['calibration_images']} training images along the agents' paths): "
              f"alone {e['test']['accuracy']:.4f} at {e['test']['compute']:.3f} of the static compute; with the agents "
              f"{(e['both_test'] or {}).get('accuracy', float('nan')):.4f} at "
              f"{(e['both_test'] or {}).get('compute', float('nan')):.3f}."), ""]
    lines += [
        "## Reproduce", "",
        "```",
        *([_train_command(pre_cfg, f"runs/{name}-static", None)] if pre_cfg else []),
        _train_command(agents_cfg, f"runs/{name}-agents", f"runs/{name}-static" if pre_cfg else None),
        (f"python scripts/build_zoo.py --run runs/{name}-agents"
         + (f" --pretrain-run runs/{name}-static" if pre_cfg else "") + f" --data DATA --out edgeskip/zoo/{name}"),
        "# check the shipped entry:",
        f"edgeskip export --model {r['model']} --pretrained {r['dataset']} --target cpu --out /tmp/zoo-bundle",
        "edgeskip evaluate --bundle /tmp/zoo-bundle --data DATA",
        "```", "",
        f"Built {r['built_utc']} in {r['built_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
