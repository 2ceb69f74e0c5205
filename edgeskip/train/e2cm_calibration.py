"""E²CM calibration with torch: class means and normalisers from forward passes only.

Two passes over the calibration images: the first sums each exit's feature per class
(float64) to get the class means ``c_j^k``; the second measures every image's distance
to every mean, giving the normalisers ``mu_j^k`` (mean over *all* images of
``||x_j - c_j^k||_2``) and, with them, each image's top exit probability and label at
every exit (the :class:`~edgeskip.e2cm.thresholds.ExitCache` the threshold search replays).

``path="static"`` runs every layer; ``path="agents"`` follows a skip model's decisions:
the feature at exit j is then the residual stream after position j, whether layer j ran
or was skipped, and a skipped layer makes no exit check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from edgeskip.agents.model import SkipViT
from edgeskip.progress import progress_bar
from edgeskip.data.dataset import ImageDataset
from edgeskip.e2cm.costs import FEATURES, MacCosts, check_exits
from edgeskip.e2cm.means import E2CM, check_token
from edgeskip.e2cm.thresholds import ExitCache
from edgeskip.errors import ConfigError, DataError
from edgeskip.models.vit import ViT
from edgeskip.normalization import Normalization
from edgeskip.rule import decision_input, exit_top
from edgeskip.train.evaluate import eval_mode, image_batches

__all__ = ["PATHS", "Calibration", "calibrate", "collect_cache", "collect_caches"]

PATHS = ("static", "agents")


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """One feature's calibrated exits (thresholds all 1.0 = disabled) and its calibration cache."""

    e2cm: E2CM
    cache: ExitCache


def _check(model: ViT, data: ImageDataset, features: Sequence[str], path: str) -> None:
    cfg = model.config
    if len(data) == 0:
        raise DataError("the calibration set is empty")
    if data.image_shape != (cfg.image_size, cfg.image_size, cfg.in_channels):
        raise DataError(f"images of shape {data.image_shape} do not fit {cfg.image_size}x{cfg.image_size}x{cfg.in_channels}")
    for f in features:
        if f not in FEATURES:
            raise ConfigError(f"unknown E²CM feature {f!r}; choose from {', '.join(FEATURES)}")
    if path not in PATHS:
        raise ConfigError(f"unknown calibration path {path!r}; choose from {', '.join(PATHS)}")
    if path == "agents" and not isinstance(model, SkipViT):
        raise ConfigError("path 'agents' needs a model with skip agents")


def _torch_feature(tokens: Tensor, feature: str, token: str) -> Tensor:
    if feature == "tokens":
        return tokens.reshape(tokens.shape[0], -1)
    return decision_input(tokens, token) if feature == "cls" else tokens.mean(dim=1)


def _layer_outputs(model: ViT, x: Tensor, exits: tuple[int, ...], path: str) -> tuple[dict[int, Tensor], Tensor, Tensor]:
    """Tokens after every exit layer, the head's logits and the (B, L) executed mask."""
    x = model.embed(x)
    outputs, runs = {}, []
    for j in range(model.depth):
        if isinstance(model, SkipViT) and path == "agents":
            run = model.decide(j, x)
            x = model._run_rows(j, x, run)
        else:
            run = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            x = model.blocks[j](x)
        runs.append(run)
        if j in exits:
            outputs[j] = x.float()
    return outputs, model.head(x).float(), torch.stack(runs, dim=1)


def _distances(model: ViT, data: ImageDataset, norm: Normalization, means: dict[str, Tensor], features: dict[str, str],
               exits: tuple[int, ...], path: str, batch_size: int, bar: Any,
               ) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(N, J, K) distances per key of ``means`` (whose feature is ``features[key]``), the
    head's predictions and the executed masks."""
    device = next(model.parameters()).device
    dists: dict[str, list[npt.NDArray[np.float64]]] = {f: [] for f in means}
    sq = {f: (m * m).sum(-1) for f, m in means.items()}  # (J, K)
    preds, executed = [], []
    for idx, images, _ in image_batches(data, norm, device, batch_size):
        outputs, logits, run = _layer_outputs(model, images, exits, path)
        for f, m in means.items():
            per_exit = []
            for i, j in enumerate(exits):
                x = _torch_feature(outputs[j], features[f], model.config.decision_token).double()
                d2 = (x * x).sum(1, keepdim=True) - 2.0 * x @ m[i].T + sq[f][i][None, :]
                per_exit.append(d2.clamp_min_(0.0).sqrt_())
            dists[f].append(torch.stack(per_exit, dim=1).cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())
        executed.append(run.cpu().numpy())
        bar.update(len(idx))
    return ({f: np.concatenate(v) for f, v in dists.items()}, np.concatenate(preds).astype(np.int64),
            np.concatenate(executed).astype(bool))


def _cache(model: ViT, e2cm: E2CM, distances: npt.NDArray[np.float64], final_pred: npt.NDArray[np.int64],
           labels: npt.NDArray[np.int64], executed: npt.NDArray[np.bool_]) -> ExitCache:
    """The exit decisions of ``e2cm`` from (N, J, K) raw distances, with the model's path costs."""
    top, pred = exit_top(distances / e2cm.normalisers.astype(np.float64)[None])
    costs = MacCosts.from_config(model.config, e2cm.exits, e2cm.feature, agents=isinstance(model, SkipViT))
    return ExitCache.build(top, pred, final_pred, labels, executed, costs)


@torch.no_grad()
def calibrate(model: ViT, data: ImageDataset, norm: Normalization, *, exits: Sequence[int] | None = None,
              features: Sequence[str] = ("tokens",), path: str = "static", batch_size: int = 256,
              progress: bool = False, meta: dict[str, Any] | None = None) -> dict[str, Calibration]:
    """Calibrate E²CM exits for each of ``features`` in the same two passes over ``data``."""
    _check(model, data, features, path)
    exits = check_exits(exits, model.depth)
    k = model.config.num_classes
    counts = np.bincount(data.labels, minlength=k)
    if len(counts) > k:
        raise DataError(f"calibration labels go up to {len(counts) - 1} but the model has {k} classes")
    missing = [int(c) for c in np.nonzero(counts == 0)[0]]
    if missing:
        names = [data.classes[c] if c < len(data.classes) else str(c) for c in missing]
        raise DataError(f"the calibration set has no image of class(es) {missing} ({', '.join(names)}); "
                        "every class needs at least one image for its class mean")
    device = next(model.parameters()).device
    with eval_mode(model), progress_bar(total=2 * len(data), desc="E²CM calibration", unit="img", enabled=progress) as bar:
        sums: dict[str, Tensor] = {}
        for idx, images, y in image_batches(data, norm, device, batch_size):
            outputs, _, _ = _layer_outputs(model, images, exits, path)
            for f in features:
                stacked = torch.stack([_torch_feature(outputs[j], f, model.config.decision_token).double()
                                       for j in exits])  # (J, B, F)
                if f not in sums:
                    sums[f] = torch.zeros(len(exits), k, stacked.shape[-1], dtype=torch.float64, device=device)
                sums[f].index_add_(1, y, stacked)
            bar.update(len(idx))
        n_k = torch.from_numpy(counts).to(device=device, dtype=torch.float64)
        means = {f: s / n_k[None, :, None] for f, s in sums.items()}
        dists, final_pred, executed = _distances(model, data, norm, means, {f: f for f in features}, exits, path,
                                                 batch_size, bar)
    result = {}
    for f in features:
        normalisers = dists[f].mean(axis=0)  # (J, K): mean over ALL images
        if not (normalisers > 0).all():
            raise DataError(f"feature {f!r}: a class mean coincides with every image at some exit (zero normaliser)")
        e2cm = E2CM(
            feature=f, means=means[f].float().cpu().numpy(), normalisers=normalisers.astype(np.float32),
            thresholds=np.ones(len(exits)),
            costs=MacCosts.from_config(model.config, exits, f, agents=isinstance(model, SkipViT)),
            meta={"path": path, "calibration_images": len(data), "class_counts": counts.tolist(), **(meta or {})},
            token=model.config.decision_token,
        )
        result[f] = Calibration(e2cm, _cache(model, e2cm, dists[f], final_pred, data.labels, executed))
    return result


def collect_cache(model: ViT, e2cm: E2CM, data: ImageDataset, norm: Normalization, *, path: str = "static",
                  batch_size: int = 256, progress: bool = False) -> ExitCache:
    """One pass over ``data`` (e.g. held-out test images) recording ``e2cm``'s exit decisions."""
    return collect_caches(model, {"e2cm": e2cm}, data, norm, path=path, batch_size=batch_size, progress=progress)["e2cm"]


@torch.no_grad()
def collect_caches(model: ViT, e2cms: dict[str, E2CM], data: ImageDataset, norm: Normalization, *,
                   path: str = "static", batch_size: int = 256, progress: bool = False) -> dict[str, ExitCache]:
    """:func:`collect_cache` for several calibrations with the same exits, in one pass over ``data``."""
    exits = {e.exits for e in e2cms.values()}
    if len(exits) != 1:
        raise ConfigError(f"calibrations to collect together must share their exits, got {sorted(exits)}")
    (shared,) = exits
    _check(model, data, [e.feature for e in e2cms.values()], path)
    if max(shared) >= model.depth - 1:
        raise ConfigError(f"exits {list(shared)} do not fit a {model.depth}-layer model")
    for e2cm in e2cms.values():
        if e2cm.num_classes != model.config.num_classes:
            raise ConfigError(f"E²CM has {e2cm.num_classes} classes, the model {model.config.num_classes}")
        check_token(e2cm, model.config)
    device = next(model.parameters()).device
    with eval_mode(model), progress_bar(total=len(data), desc="E²CM exits", unit="img", enabled=progress) as bar:
        means = {k: torch.from_numpy(e.means.astype(np.float64)).to(device) for k, e in e2cms.items()}
        dists, final_pred, executed = _distances(model, data, norm, means, {k: e.feature for k, e in e2cms.items()},
                                                 shared, path, batch_size, bar)
    return {key: _cache(model, e2cm, dists[key], final_pred, data.labels, executed) for key, e2cm in e2cms.items()}
