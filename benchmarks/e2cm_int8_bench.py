"""E²CM class means from the fp32 chain or from the INT8 chain, both run on INT8 layers: which decides better?

The exits of an ``--int8`` bundle read the tokens its INT8 layers produce, while its class means were calibrated
on the fp32 model. This computes the means both ways with the same code and images (the bundle's own stages,
torch-free: the agents' path, the feature after each exit's position, as ``edgeskip calibrate`` does; one image a
call, as at batch 1), exports one INT8 bundle with each (same checkpoint, same thresholds) and runs policies
``e2cm`` and ``agent+e2cm`` of both through their INT8 layers on the test images, one image a call.

    python benchmarks/e2cm_int8_bench.py --bundle B --data ../shared/data/cifar10-images.tar.gz [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common import DEFAULT_DATA, edgeskip

from edgeskip.bundle import Bundle, stage_name
from edgeskip.data import load_dataset_for
from edgeskip.e2cm import E2CM
from edgeskip.e2cm.means import exit_features
from edgeskip.rule import agent_cut, agent_runs, decision_input
from edgeskip.runtimes import Runtime
from edgeskip.runtimes.inputs import prepare


def chain_means(bundle: Path, fmt: str, images: np.ndarray, labels: np.ndarray) -> E2CM:
    """The bundle's E²CM with class means and normalisers recomputed on its ``fmt`` layers (thresholds kept)."""
    with Runtime(bundle, policy="static", format=fmt, whole_static=False) as rt:
        m, e2cm, be = rt.manifest, rt.e2cm, rt.backend
        assert e2cm is not None and be is not None and rt.agents is not None and m.agents is not None
        token = m.config.decision_token
        cuts = [agent_cut(t) for t in m.agents.thresholds] if e2cm.meta.get("path") == "agents" else [None] * rt.depth
        feats: dict[int, list[np.ndarray]] = {j: [] for j in e2cm.exits}
        for i in range(len(images)):
            t = be.run("embed", prepare(images[i:i + 1], rt.input_spec))
            for j in range(rt.depth):
                if m.agents.thresholds[j] is None:
                    continue
                cut = cuts[j]
                if cut is None or agent_runs(decision_input(t, token) @ rt.agents[0][j] + rt.agents[1][j], cut).all():
                    t = be.run(stage_name(j), t)
                if j in feats:
                    feats[j].append(exit_features(t, e2cm.feature, token).astype(np.float64))
    x = np.stack([np.concatenate(feats[j]) for j in e2cm.exits])  # (J, N, F)
    k = e2cm.num_classes
    means = np.stack([x[:, labels == c].mean(axis=1) for c in range(k)], axis=1)  # (J, K, F)
    d = np.sqrt(np.maximum((x ** 2).sum(-1)[:, :, None] - 2 * x @ means.transpose(0, 2, 1)
                           + (means ** 2).sum(-1)[:, None, :], 0.0))  # (J, N, K)
    return E2CM(feature=e2cm.feature, means=means.astype(np.float32), normalisers=d.mean(axis=1).astype(np.float32),
                thresholds=e2cm.thresholds, costs=e2cm.costs, token=e2cm.token,
                meta={**e2cm.meta, "chain": fmt, "calibration_images": len(images)})


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgeskip.zoo import pretrained

    m = Bundle.open(args.bundle).manifest
    splits = load_dataset_for(m.dataset, args.data, m.config, m.classes)
    per_class = args.calibration_images // len(m.classes)
    chosen = np.sort(np.concatenate([np.flatnonzero(splits.train.labels == c)[:per_class]
                                     for c in range(len(m.classes))]))
    train_x, train_y = splits.train.images[chosen], splits.train.labels[chosen]
    test_x, test_y = splits.test.images[: args.images], splits.test.labels[: args.images]
    checkpoint = pretrained(m.model_name, "cifar10").checkpoint
    out: dict[str, Any] = {"calibration_images": len(chosen), "test_images": len(test_y)}
    for fmt in ("onnx", "onnx-int8"):
        folder = chain_means(Path(args.bundle), fmt, train_x, train_y).save(work / f"e2cm-{fmt}")
        bundle = work / f"bundle-{fmt}"
        edgeskip("export", "--checkpoint", str(checkpoint), "--e2cm", str(folder), "--int8", "--data", args.data,
                 "--out", str(bundle))
        rows = {}
        for policy in ("e2cm", "agent+e2cm"):
            with Runtime(bundle, policy=policy) as rt:  # its INT8 layers
                runs = [rt(test_x[i:i + 1]) for i in range(len(test_x))]
            labels = np.concatenate([r.labels for r in runs])
            rows[policy] = {"accuracy": float((labels == test_y).mean()),
                            "layers": float(np.mean([r.executed.sum() for r in runs])),
                            "exit_rate": float(np.mean([(r.exit_layer >= 0).any() for r in runs]))}
        out["means from " + ("fp32" if fmt == "onnx" else "int8") + " chain"] = rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="the zoo vit9 exported with --int8 (agents and E²CM exits)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--calibration-images", type=int, default=5000, help="training images, evenly per class")
    parser.add_argument("--images", type=int, default=10_000, help="test images")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = run(args, Path(work))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
