"""The ``edgeskip`` command line.

Every user error ends as one line on stderr and exit code 2; heavy modules (torch) are
imported only by the commands that need them, so ``edgeskip --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from edgeskip.errors import EdgeskipError
from edgeskip.progress import progress_bar, progress_counter, progress_steps
from edgeskip.workspace import find_bundle, remember_bundle

__all__ = ["main", "build_parser"]

log = logging.getLogger("edgeskip")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help with its default said once: appended unless the help already says it, or the
    default is nothing to say (None, off, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS, []) or isinstance(action.default, bool):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2), with one help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str, least: int = 1) -> int:
    """argparse type: an integer >= 1 (``least``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return positive_int(text, least=0)


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type[Any], *, skip: Sequence[str] = ()) -> None:
    """One ``--option`` per dataclass field, with the field's help and choices."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        if kind is bool:
            if f.default:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=f"do not {help_text}")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        if isinstance(kind, types.UnionType):  # "int | None" -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        choices = f.metadata.get("choices")
        if typing.get_origin(kind) is typing.Literal:
            choices, kind = typing.get_args(kind), str
        required = f.default is dataclasses.MISSING
        parser.add_argument(flag, dest=f.name, type=kind, default=None if required else f.default, required=required,
                            choices=choices, metavar=None if choices else f.name.upper(), help=help_text)


def check_data(data: str | None) -> None:
    """A user's ``--data`` must exist (datasets that need no copy pass None)."""
    if data is not None and not Path(data).exists():
        raise EdgeskipError(f"--data {data}: no such file or directory")


def add_bundle_argument(parser: argparse.ArgumentParser, what: str = "bundle directory") -> None:
    """The one bundle argument of every command that takes one: ``BUNDLE`` or ``--bundle BUNDLE``, both optional
    (:func:`edgeskip.workspace.find_bundle` says which bundle is meant without one)."""
    parser.add_argument("bundle", nargs="?", default=None, metavar="BUNDLE",
                        help=f"{what} (default: the bundle in the current folder, else the last one 'edgeskip "
                             "export' or 'edgeskip quickstart' wrote)")
    parser.add_argument("--bundle", dest="bundle_option", metavar="BUNDLE", default=None,
                        help="the same as the BUNDLE argument, as an option")


def bundle_from_args(args: argparse.Namespace) -> Path:
    """The bundle a command was given, or the one :func:`~edgeskip.workspace.find_bundle` finds (said on screen)."""
    named, option = args.bundle, args.bundle_option
    if named is not None and option is not None and Path(named) != Path(option):
        raise EdgeskipError(f"two bundles named ({named} and --bundle {option}): name one")
    choice = find_bundle(named if named is not None else option)
    if choice.reason is not None:
        log.info("using bundle %s (%s)", choice.path, choice.reason)
    return choice.path


def _config_from_args(cls: type[Any], args: argparse.Namespace, **fixed: Any) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


# -- commands ----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from edgeskip.variants import MODEL_CONFIGS
    from edgeskip.zoo import available

    zoo: dict[str, list[str]] = {}
    for entry in available():
        zoo.setdefault(entry.model, []).append(entry.dataset)
    rows = []
    for name in MODEL_CONFIGS.names():
        c = MODEL_CONFIGS.get(name)
        rows.append((name, c.depth, c.width, c.heads, c.mlp_hidden, c.patch_size, c.image_size, c.param_count(),
                     zoo.get(name, [])))
    if args.json:
        keys = ("name", "depth", "width", "heads", "mlp_hidden", "patch", "image_size", "params", "pretrained")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return 0
    print(f"{'model':<11}{'depth':>6}{'width':>7}{'heads':>7}{'mlp':>6}{'patch':>7}{'image':>7}{'params':>12}"
          "  pretrained (--pretrained)")
    for r in rows:
        print(f"{r[0]:<11}{r[1]:>6}{r[2]:>7}{r[3]:>7}{r[4]:>6}{r[5]:>7}{r[6]:>7}{r[7]:>12,}  {', '.join(r[8]) or '-'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from edgeskip.train.config import TrainConfig

    cfg = _config_from_args(TrainConfig, args)
    if cfg.dataset == "cifar10" and cfg.data is None:
        raise EdgeskipError("--dataset cifar10 needs --data DIR (a CIFAR-10 folder or .tar.gz; see the README)")
    if cfg.dataset == "folder" and cfg.data is None:
        raise EdgeskipError("--dataset folder needs --data DIR: an image folder with train/<class>/* (and test/ or "
                            "val/), or <class>/* split by a seeded share")
    check_data(cfg.data)
    from edgeskip.train.run import train

    result = train(cfg)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0
    final = result.final
    print(
        f"trained {cfg.model} on {cfg.dataset} for {final.get('epoch')} epoch(s) ({result.precision}): "
        f"test accuracy {final.get('test_accuracy', float('nan')):.4f}, "
        f"{final.get('images_per_second', 0):.0f} images/s"
        + (f", executed layers {100 * final['test_executed_fraction']:.1f}%" if "test_executed_fraction" in final else "")
        + f"; checkpoint {result.checkpoint}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        return _evaluate_bundle(args, bundle_from_args(args))
    if args.bundle is not None or args.bundle_option is not None:
        raise EdgeskipError("name a checkpoint (PyTorch) or a bundle (edgeskip.Runtime), not both")
    if args.policy or args.backend:
        raise EdgeskipError("--policy and --backend apply to --bundle; a --checkpoint runs in PyTorch")
    from edgeskip.data import load_dataset_for
    from edgeskip.train.checkpoint import load_checkpoint
    from edgeskip.train.evaluate import evaluate

    ckpt = load_checkpoint(args.checkpoint)
    dataset = args.dataset or ckpt.dataset
    check_data(args.data)
    data = load_dataset_for(dataset, args.data, ckpt.model_config, ckpt.classes, limit_per_class=args.limit_per_class,
                            progress=args.progress)
    model = ckpt.build_model().to(torch_device())
    head = {"checkpoint": str(ckpt.path), "model": ckpt.model_name, "dataset": dataset}
    if ckpt.has_agents:
        from edgeskip.agents.model import SkipViT
        from edgeskip.train.report import evaluate_skipping

        skip = evaluate_skipping(typing.cast(SkipViT, model), data.test, ckpt.normalization, batch_size=args.batch_size)
        print(json.dumps({**head, **skip.to_dict()}, indent=2) if args.json else
              f"{ckpt.model_name} with skip agents on {dataset} test:\n{skip.table(top=args.top)}")
        return 0
    metrics = evaluate(model, data.test, ckpt.normalization, batch_size=args.batch_size)
    print(json.dumps({**head, **metrics}, indent=2) if args.json else
          f"{ckpt.model_name} on {dataset} test ({int(metrics['count'])} images): accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")
    return 0


def _evaluate_bundle(args: argparse.Namespace, path: Path) -> int:
    """``edgeskip evaluate BUNDLE``: the Runtime (no torch) over the test split, per policy."""
    from edgeskip.bundle import Bundle
    from edgeskip.data import load_dataset_for
    from edgeskip.runtimes.evaluate import available_policies, evaluate_bundle, format_results

    bundle = Bundle.open(path)
    m = bundle.manifest
    dataset = args.dataset or m.dataset
    if dataset != m.dataset:
        raise EdgeskipError(f"{bundle.path} was exported for {m.dataset}, not {dataset}")
    if dataset != "digits" and args.data is None:
        raise EdgeskipError(f"pass --data with a {dataset} copy (the bundle's test images)")
    check_data(args.data)
    test = load_dataset_for(dataset, args.data, m.config, m.classes, limit_per_class=args.limit_per_class,
                            progress=args.progress).test
    policies = [p.strip() for p in args.policy.split(",")] if args.policy else available_policies(bundle)
    backend = args.backend or "onnxruntime"
    with progress_bar(total=len(policies) * len(test), desc="evaluate", unit="img", enabled=args.progress) as bar:
        results = evaluate_bundle(bundle, test.images, test.labels, policies, batch_size=args.batch_size,
                                  backend=backend, progress=bar.update)
    head = {"bundle": str(bundle.path), "model": m.model_name, "dataset": dataset, "backend": backend,
            "untrained": m.untrained}
    if args.json:
        print(json.dumps({**head, "policies": [r.to_dict() for r in results]}, indent=2))
        return 0
    warn = " (UNTRAINED weights)" if m.untrained else ""
    print(f"{m.model_name} bundle {bundle.path} on {dataset} test, edgeskip.Runtime ({backend}){warn}:")
    print(format_results(results, m.config.depth, top=args.top))
    return 0


def _load_skip_checkpoint(path: str) -> tuple[Any, Any]:
    from edgeskip.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if not ckpt.has_agents:
        raise EdgeskipError(f"{ckpt.path} has no skip agents: train with --agents (optionally --init {path})")
    return ckpt, ckpt.build_model()


def cmd_posttrain(args: argparse.Namespace) -> int:
    from edgeskip.data import load_dataset_for
    from edgeskip.front import Searched
    from edgeskip.search.plot import plot_front
    from edgeskip.search.posttrain import posttrain
    from edgeskip.search.settings import PosttrainSettings
    from edgeskip.train.evaluate import autocast_dtype

    ckpt, model = _load_skip_checkpoint(args.checkpoint)
    model.to(torch_device())
    out = Path(args.out)
    if (out / "pareto.json").exists() and not args.force:
        raise EdgeskipError(f"{out / 'pareto.json'} exists: pass --force to replace it or choose another --out")
    settings = _config_from_args(PosttrainSettings, args)
    check_data(args.data)
    data = load_dataset_for(ckpt.dataset, args.data, ckpt.model_config, ckpt.classes,
                            limit_per_class=args.limit_per_class, progress=args.progress)
    dtype = autocast_dtype(args.precision, torch_device())
    searched = Searched(kind="checkpoint", model=ckpt.model_name, fingerprint=ckpt.meta["weights"]["sha256"],
                        weights_sha256=ckpt.meta["weights"]["sha256"])
    with progress_counter("NSGA-II", settings.generations, unit="gen", enabled=args.progress) as step:
        front = posttrain(model, data.test, ckpt.normalization, settings, searched=searched,
                          train_data=data.train if settings.joint else None, dtype=dtype, progress=step)
    out.mkdir(parents=True, exist_ok=True)
    source = args.checkpoint
    if settings.joint:  # the points were measured on the fine-tuned weights: keep them, and bind the front to them
        import shutil

        from edgeskip.train.checkpoint import load_checkpoint, save_checkpoint

        tuned = out / "finetuned"
        if tuned.exists():
            shutil.rmtree(tuned)
        save_checkpoint(tuned, model, model_name=ckpt.model_name, model_config=ckpt.model_config, dataset=ckpt.dataset,
                        normalization=ckpt.normalization, classes=ckpt.classes, train_config=ckpt.meta.get("train"),
                        metrics={"fine_tuned_from": ckpt.meta["weights"]["sha256"], "joint_search": True},
                        epoch=ckpt.meta.get("epoch"))
        sha = load_checkpoint(tuned).meta["weights"]["sha256"]
        front = dataclasses.replace(front, searched=dataclasses.replace(searched, fingerprint=sha, weights_sha256=sha))
        source = str(tuned)
    front.save(out / "pareto.json")
    plot = plot_front(front, out / "pareto.png", f"{ckpt.model_name} on {ckpt.dataset}: NSGA-II post-training")
    reference = front.meta.get("reference_hypervolume")
    print(f"{len(front.points)} Pareto configurations from {front.meta['evaluations']} evaluations in "
          f"{front.meta['seconds']:.0f} s; hypervolume {front.hypervolume:.4f}"
          + (f" (all-0.5 model: {reference:.4f})" if reference is not None else ""))
    print(f"{'#':>6} {'accuracy':>9} {'compute':>8} {'layers':>7}  thresholds (- = removed)")
    for name, p in [("static", front.static), *((str(i), p) for i, p in enumerate(front.points))]:
        genes = " ".join("-" if t is None else f"{t:.2f}" for t in p.thresholds)
        print(f"{name:>6} {p.accuracy:>9.4f} {p.cost('compute'):>8.3f} {p.executed_layers:>7.2f}  {genes}")
    print(f"wrote {out / 'pareto.json'} and {plot}; apply a point with: "
          f"edgeskip apply-config --checkpoint {source} --pareto {out / 'pareto.json'} --point N --out CKPT")
    return 0


def cmd_apply_config(args: argparse.Namespace) -> int:
    from edgeskip.front import load_front
    from edgeskip.policy import SkipConfig
    from edgeskip.train.checkpoint import save_checkpoint

    if Path(args.out).exists():
        raise EdgeskipError(f"--out {args.out} already exists; choose a new folder")
    ckpt, model = _load_skip_checkpoint(args.checkpoint)
    if args.pareto:
        front = load_front(args.pareto)
        sha = ckpt.meta["weights"]["sha256"]
        if front.searched.weights_sha256 not in (None, sha):
            raise EdgeskipError(f"--pareto {args.pareto} was searched on other weights than {ckpt.path} "
                                f"({front.searched.kind} of {front.searched.model}): pass the checkpoint it was "
                                "searched on, or search this one")
        if not -len(front.points) <= args.point < len(front.points):
            raise EdgeskipError(f"--point {args.point}: the front has {len(front.points)} configurations "
                                f"(0..{len(front.points) - 1}, or -1 for the last)")
        point = front.points[args.point]
        if point.exit_thresholds is not None and any(t < 1.0 for t in point.exit_thresholds):
            log.warning("point %d also sets E²CM exit thresholds: a checkpoint holds agent thresholds only; export "
                        "the checkpoint with its E²CM exits and 'edgeskip select' to run them", args.point)
        config = point.skip
    else:
        values = [v.strip() for v in args.thresholds.split(",")]
        try:
            config = SkipConfig(tuple(None if v in ("-", "remove") else float(v) for v in values))
        except ValueError as exc:
            raise EdgeskipError(f"--thresholds: {exc}") from None
    model.set_skip_config(config)
    save_checkpoint(
        args.out, model, model_name=ckpt.model_name, model_config=ckpt.model_config, dataset=ckpt.dataset,
        normalization=ckpt.normalization, classes=ckpt.classes, train_config=ckpt.meta.get("train"),
        metrics={**ckpt.metrics, "applied_from": ckpt.meta["weights"]["sha256"], "applied_config": config.to_dict()},
        epoch=ckpt.meta.get("epoch"),
    )
    print(f"wrote {args.out} with thresholds {list(config.thresholds)}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edgeskip.data import load_dataset_for
    from edgeskip.train.e2cm_pipeline import run_calibration
    from edgeskip.e2cm.settings import CalibrateConfig
    from edgeskip.train.checkpoint import load_checkpoint

    settings = _config_from_args(CalibrateConfig, args)
    out = Path(args.out)
    if (out / "report.json").exists() and not args.force:
        raise EdgeskipError(f"{out / 'report.json'} exists: pass --force to replace it or choose another --out")
    check_data(args.data)
    ckpt = load_checkpoint(args.checkpoint)
    splits = load_dataset_for(ckpt.dataset, args.data, ckpt.model_config, ckpt.classes, progress=args.progress)
    report = run_calibration(ckpt, splits, settings, out, progress=args.progress)
    print(f"E²CM on {ckpt.model_name} ({ckpt.dataset}): {report['calibration_images']} calibration images "
          f"({settings.split}), {report['test_images']} held-out test images; compute is a fraction of the static model")
    for feature, e in report["features"].items():
        mb = e["means_bytes"][settings.means_dtype] / 2**20
        print(f"\n[{feature}] class means {mb:.2f} MiB {settings.means_dtype} "
              f"({100 * e['means_vs_model']:.1f}% of the fp32 model); static accuracy: "
              f"calibration {e['calibration_static_accuracy']:.4f}, test {e['test_static_accuracy']:.4f}")
        print(f"  {'budget':>7} {'calib compute':>14} {'calib acc':>10} {'test compute':>13} {'test acc':>9}")
        for h in e["hull"]:
            mark = " <- stored" if h["thresholds"] == e["e2cm"]["thresholds"] else ""
            print(f"  {h['budget']:>7.3f} {h['calibration']['compute']:>14.3f} {h['calibration']['accuracy']:>10.4f} "
                  f"{h['test']['compute']:>13.3f} {h['test']['accuracy']:>9.4f}{mark}")
        if "agents" in e:
            a, c, b = e["agents"], e["e2cm"]["test"], e["both"]["test"]
            print(f"  on the test images:  agents alone: acc {a['accuracy']:.4f} compute {a['compute']:.3f} | "
                  f"E²CM alone: acc {c['accuracy']:.4f} compute {c['compute']:.3f} | "
                  f"both: acc {b['accuracy']:.4f} compute {b['compute']:.3f}")
        print(f"  stored: {e['saved']}")
    print(f"\nreport: {out / 'report.json'}; plot: {report['plot']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    cfg = _config_from_args(ExportConfig, args)
    check_data(cfg.data)
    result = export_bundle(cfg, progress=args.progress)
    remember_bundle(result.path, "export")
    m = result.manifest
    if m.untrained:
        print("\n" + "!" * 100 + "\n!! UNTRAINED WEIGHTS: no --checkpoint was given, so this bundle holds freshly initialised"
              "\n!! weights (manifest: weights.untrained = true). Use it to check the toolchain and speed only."
              "\n" + "!" * 100, file=sys.stderr)
    fid = m.fidelity
    assert fid is not None  # every export measures itself
    worst = max((*fid.onnx.values(), *fid.formats.get("tflite", {}).values()), default=0.0)
    gate = fid.gate
    print(f"bundle {result.path} ({m.model_name}, target {m.target}, {m.precision}; {len(m.files)} files, "
          f"{sum(f.bytes for f in m.files.values()) / 2**20:.1f} MiB) in {result.seconds:.1f} s")
    print(f"fidelity on {fid.images}: max |exported - torch| per stage {worst:.2e}, monolithic "
          f"{fid.monolithic:.2e}; gate.onnx {gate.same_decisions}/{gate.images} identical "
          f"decisions ({gate.ties} ties), max logit error {gate.max_abs_logit_error:.2e}")
    for fmt in ("onnx-fp16", "tflite-fp16"):
        if fmt in fid.formats:
            print(f"{fmt}: max |{fmt} - torch fp32| per stage {max(fid.formats[fmt].values()):.2e}")
    if m.tensorrt is not None and m.tensorrt.script is not None:
        print(f"TensorRT: build the engines on the device: 'edgeskip build-engines {result.path}' "
              f"or 'bash {result.path}/{m.tensorrt.script}'")
    return 0


def cmd_build_engines(args: argparse.Namespace) -> int:
    from edgeskip.exporters.settings import parse_batch_sizes
    from edgeskip.exporters.tensorrt import build_engines

    engines = build_engines(bundle_from_args(args), args.precision, parse_batch_sizes(args.batch_sizes),
                            include_gate=args.gate, workspace_mb=args.workspace_mb)
    for path in engines:
        print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edgeskip.fsutil import atomic_write_json
    from edgeskip.devices.bench import BenchConfig, format_table, run_bench

    bundle = bundle_from_args(args)
    check_data(args.data)
    if args.front:
        return _bench_front(args, bundle)
    cfg = BenchConfig(bundle=str(bundle), data=args.data, images=args.images, batch=args.batch,
                      batch_images=args.batch_images, rounds=args.rounds, workload_rounds=args.workload_rounds,
                      warmup=args.warmup, threads=args.threads, checkpoint=args.checkpoint, torch=not args.no_torch)
    with progress_steps("bench", total=5, unit="part", enabled=args.progress) as step:  # a step as each part starts
        report = run_bench(cfg, progress=step)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        print(format_table(report), file=sys.stderr)
        return 0
    print(format_table(report))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"\nJSON: {args.json}")
    return 0


def _bench_front(args: argparse.Namespace, path: Path) -> int:
    """``edgeskip bench BUNDLE --front``: the front's configurations measured on held-out images."""
    from edgeskip.bundle import Bundle
    from edgeskip.devices.frontbench import FrontBenchConfig, format_front_table, plot_front_bench, run_front_bench
    from edgeskip.front import front_of, pareto_path
    from edgeskip.fsutil import atomic_write_json

    bundle = Bundle.open(path)
    front_of(bundle, args.device, args.pareto)  # a missing front says which command makes it, before any work
    images, labels, source = _dataset_images(bundle, args.data, args.heldout_images, "test-second-half", args.progress)
    cfg = FrontBenchConfig(bundle=str(path), device=args.device, pareto=args.pareto, rounds=args.front_rounds,
                           block=args.front_block, batch=args.batch, threads=args.threads)
    report = run_front_bench(cfg, images, labels, source)
    print(format_front_table(report))
    try:
        png = plot_front_bench(report, args.plot or pareto_path(bundle, args.device).with_name(
            f"{args.device}-measured.png"))
        print(f"plot: {png}")
    except ModuleNotFoundError:  # matplotlib (the 'search' extra) is not on this device
        log.warning("no plot: matplotlib is not installed (pip install 'edgeskip[search]')")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"JSON: {args.json}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from edgeskip.devices.profiler import ProfileSettings, profile_bundle
    from edgeskip.exporters.settings import parse_batch_sizes
    from edgeskip.profile import STATIC

    batches = parse_batch_sizes(args.batch_sizes)
    bundle = bundle_from_args(args)
    settings = ProfileSettings.quick(batches) if args.quick else ProfileSettings(batches)
    before = _previous_profile(bundle, args.device)
    with progress_steps(f"profile {args.device}", unit="piece", enabled=args.progress) as step:
        profile = profile_bundle(bundle, args.device, backend=args.backend, settings=settings, progress=step)
    path = profile.save(bundle)
    source = profile.energy_source
    print(f"profile of {profile.bundle.model} on {profile.device} ({profile.backend.get('backend')}, "
          f"energy: {source}{' - NOT a measurement' if source == 'estimate' else ''}): {path}")
    for b, pieces in profile.batches.items():
        layers = [v.median_ms for k, v in pieces.items() if k.startswith("layer_")]
        print(f"  batch {b}: embed {pieces['embed'].median_ms:.3f} ms, layers {min(layers):.3f}-{max(layers):.3f} ms, "
              f"head {pieces['head'].median_ms:.3f} ms")
        st = profile.stability.get(b)
        if st is not None:
            print(f"    {'steady' if st.steady else 'DRIFTING'}: the whole loop {100 * st.drift:+.1f}% from the first "
                  f"to the second half of {st.passes} passes ({st.extensions} extension(s)), spread {100 * st.spread:.0f}%")
        old = before.batches.get(b) if before is not None else None
        if old is not None and STATIC in pieces and STATIC in old:
            change = pieces[STATIC].median_ms / old[STATIC].median_ms - 1.0
            print(f"    static model {pieces[STATIC].median_ms:.3f} ms, {100 * change:+.1f}% against the previous profile "
                  f"({before.created_utc}, {old[STATIC].median_ms:.3f} ms)"  # type: ignore[union-attr]
                  + ("" if abs(change) <= 0.05 else ": the machine runs at another speed than then; compare "
                     "configurations as ratios to static, or profile on fixed clocks (jetson_clocks)"))
        gate, loop = profile.gate.get(b), profile.overhead.get(b)
        if gate is not None and loop is not None:
            print(f"    gate graph, every layer {gate.all_ms:.3f} ms against the stage loop's {loop.static_loop_ms:.3f} ms; "
                  f"{1e3 * gate.per_layer_ms:+.1f} us per layer run, {1e3 * gate.per_exit_ms:.1f} us per exit check")
    print(f"  peak resident memory {profile.memory.peak_rss_mb:.0f} MiB")
    return 0


def _previous_profile(bundle: str | Path, device: str) -> Any:
    """The bundle's earlier profile of ``device`` (None when there is none, or it is of another bundle)."""
    from edgeskip.bundle import Bundle
    from edgeskip.errors import EdgeskipError
    from edgeskip.profile import load_profile, profile_path

    try:
        return load_profile(profile_path(bundle, device), fingerprint=Bundle.open(bundle, verify=False).manifest.fingerprint)
    except (EdgeskipError, OSError):
        return None


def cmd_search(args: argparse.Namespace) -> int:
    from edgeskip.bundle import Bundle
    from edgeskip.profile import load_profile, profile_path
    from edgeskip.search.bundle import search_and_save
    from edgeskip.search.settings import BundleSearchSettings

    bundle = Bundle.open(bundle_from_args(args))
    profile = load_profile(args.profile or profile_path(bundle, args.device), fingerprint=bundle.manifest.fingerprint,
                           device=args.device)
    more = ((args.holdout_images, "test-second-half"),) if args.holdout_images else ()
    images, labels, source, *held = _dataset_images(bundle, args.data, args.images, args.split, args.progress, *more)
    settings = _config_from_args(BundleSearchSettings, args)
    with progress_counter("NSGA-II", settings.generations, unit="gen", enabled=args.progress) as step:
        front, out, png = search_and_save(bundle.path, images, labels, profile, settings, calibration=source,
                                          holdout=tuple(held) or None, out=args.out, progress=step)  # type: ignore[arg-type]
    m = front.meta
    print(f"{len(front.points)} Pareto configurations of {m['evaluations']} evaluated on {m['images']} images "
          f"({source}) in {m['seconds']:.1f} s; hypervolume {front.hypervolume:.4f}; {m['layers_computed']} "
          f"image-layers computed for {m['states']} cached states")
    if held:
        print(f"every configuration also run on {held[2]} (held out: they choose nothing) in "
              f"{m['holdout']['seconds']:.1f} s; 'held-out' is the accuracy there and its difference to static's "
              "there, ± its paired standard error (points)")
    print(f"{'#':>6} {'accuracy':>9} {'latency':>10} {'energy':>10} {'layers':>7} {'exits':>6}  "
          + (f"{'held-out':>21}  " if held else "") + "thresholds (- removed)")
    rows = [("static", front.static)] + [(str(i), p) for i, p in enumerate(front.points)]
    for name, p in rows:
        genes = " ".join("-" if t is None else f"{t:.2f}" for t in p.thresholds)
        ex = "" if p.exit_thresholds is None else "  exits " + " ".join(f"{t:.2f}" for t in p.exit_thresholds)
        own = front.meta.get("settings", {}).get("precisions", [None])[0]
        other = {} if p.precisions is None else {j: q for j, q in enumerate(p.precisions) if q not in (None, own)}
        ex += "".join(f"  {q} at layer(s) {','.join(str(j) for j, r in other.items() if r == q)}"
                      for q in sorted(set(other.values())))
        h = ""
        if p.holdout_accuracy is not None and front.static.holdout_accuracy is not None:
            diff = 100 * (p.holdout_accuracy - front.static.holdout_accuracy)
            h = f"{100 * p.holdout_accuracy:6.2f}% {diff:+5.2f}±{100 * (p.holdout_loss_se or 0):4.2f}  "
        print(f"{name:>6} {100 * p.accuracy:8.2f}% {p.cost('latency_ms'):7.3f} ms {p.cost('energy_mj'):7.3f} mJ "
              f"{p.executed_layers:7.2f} {100 * p.exit_rate:5.1f}%  {h}{genes}{ex}")
    energy = " (energy is an ESTIMATE, not a measurement)" if front.energy_source == "estimate" else ""
    print(f"wrote {out} and {png}{energy}; pick one with: edgeskip select {bundle.path} --device "
          f"{front.device} --budget-ms MS")
    return 0


def _dataset_images(bundle: Any, data: str | None, count: int, split: str, progress: bool,
                    *more: tuple[int, str]) -> tuple[Any, ...]:
    """``count`` images (evenly per class) of the bundle's dataset: the search's calibration images (``train``, or
    ``test-half``: the first half of each test class), or the held-out ones (``test-second-half``), as
    (images, labels, where they come from); each further (count, split) adds three more, from one loading."""
    from edgeskip.data import load_dataset_for
    from edgeskip.errors import DataError

    name = bundle.manifest.dataset
    if name != "digits" and data is None:
        raise DataError(f"the search measures accuracy on calibration images: pass --data with a {name} copy")
    check_data(data)
    splits = load_dataset_for(name, data, bundle.manifest.config, bundle.manifest.classes, progress=progress)
    halves = splits.test.halves()  # test-half calibrates; the second half stays unseen by any search
    out: list[Any] = []
    for n, part in ((count, split), *more):
        chosen = {"train": splits.train, "test-half": halves[0], "test-second-half": halves[1]}[part].take(n)
        if len(chosen) == 0:
            raise DataError(f"no images in the {part} split of {name}")
        out += [chosen.images, chosen.labels, f"{len(chosen)} {name} images from the {part} split"]
    return tuple(out)


def cmd_select(args: argparse.Namespace) -> int:
    from edgeskip.search.select import record_selection, select

    bundle = bundle_from_args(args)
    chosen = select(bundle, args.device, budget_ms=args.budget_ms, budget_mj=args.budget_mj,
                    max_loss_points=args.max_loss_points, pareto=args.pareto, allow_degenerate=args.allow_degenerate)
    why = (f"{chosen.budget:g} {chosen.unit}" if args.max_loss_points is None else
           f"at most {args.max_loss_points:g} point(s) of accuracy loss")
    print(f"selected for {why} on {chosen.device}: {chosen.describe()}")
    print("layer thresholds (- removed): " + " ".join("-" if t is None else f"{t:.2f}" for t in chosen.point.thresholds))
    if chosen.point.exit_thresholds is not None:
        print("exit thresholds (1 = off): " + " ".join(f"{t:.2f}" for t in chosen.point.exit_thresholds))
    if not args.dry_run:
        written = record_selection(bundle, chosen)
        print(f"written to {written.path / 'manifest.json'} as the default configuration: Runtime('{bundle}') "
              "now runs it")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from edgeskip.signing import generate_key

    key = generate_key(args.out)
    print(f"wrote the private key {args.out} (mode 0600: keep it on the machine that signs) and the public key "
          f"{args.out}.pub\ntrust it on a device with Runtime(bundle, trusted_keys=[{str(args.out) + '.pub'!r}]) or "
          f"--trusted-key {key.to_text()}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from edgeskip.bundle import sign
    from edgeskip.signing import load_private_key

    bundle = bundle_from_args(args)
    key = load_private_key(args.key)
    out = sign(bundle, key)
    print(f"signed {bundle} with key {key.public_key.key_id}: {out} (a later 'edgeskip select' or "
          "'build-engines' removes the signature, since the manifest changes: sign again after them)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edgeskip.bundle import Bundle

    bundle = Bundle.open(bundle_from_args(args), trusted_keys=args.trusted_key or None)
    signed = f", signed by trusted key {bundle.signer.key_id}" if bundle.signer is not None else \
        " (its signature was not checked: pass --trusted-key)"
    print(f"{bundle.path}: {len(bundle.manifest.files)} files match their sha256{signed}")
    return 0


def torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from edgeskip.quickstart import QuickstartConfig, run_quickstart

    check_data(args.data)
    cfg = QuickstartConfig(out=args.out, dataset=args.dataset, data=args.data, model=args.model, epochs=args.epochs,
                           limit_per_class=args.limit_per_class, budget_ms=args.budget_ms, force=args.force,
                           progress=args.progress)
    report = run_quickstart(cfg)
    remember_bundle(Path(cfg.out) / "bundle", "quickstart")
    print(report)
    return 0


# -- parser --------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "quickstart": ("the whole journey on the digits every install has: train, calibrate, export, profile, search, "
                   "select, run", cmd_quickstart),
    "train": ("train a ViT on the workstation (torchrun for several GPUs/nodes)", cmd_train),
    "evaluate": ("measure a checkpoint's or a bundle's test accuracy", cmd_evaluate),
    "posttrain": ("NSGA-II search of per-layer skip thresholds for an agent checkpoint", cmd_posttrain),
    "apply-config": ("save an agent checkpoint with a chosen skip configuration", cmd_apply_config),
    "calibrate": ("E²CM: class means, budget sweep and thresholds for early exits", cmd_calibrate),
    "export": ("write a deployable bundle (ONNX stages + gate graph, TFLite, TensorRT inputs)", cmd_export),
    "build-engines": ("on a TensorRT device: build engines for every stage of a bundle", cmd_build_engines),
    "profile": ("measure each stage of a bundle on this device: latency, energy, memory", cmd_profile),
    "search": ("NSGA-II over a bundle's configurations: accuracy vs the device's predicted latency and energy",
               cmd_search),
    "select": ("pick the most accurate Pareto configuration within a latency or energy budget", cmd_select),
    "bench": ("measure a bundle's runtime speed on this machine: static vs dynamic, ratios in one run", cmd_bench),
    "models": ("list the registered models with their sizes", cmd_models),
    "keygen": ("make an ed25519 key pair for signing bundles", cmd_keygen),
    "sign": ("sign a bundle's manifest (which pins every file) with an ed25519 key", cmd_sign),
    "verify": ("check a bundle's files and, given trusted keys, its signature", cmd_verify),
}


def build_parser() -> argparse.ArgumentParser:
    from edgeskip._version import __version__

    parser = _Parser(prog="edgeskip", description="Dynamic-depth Vision Transformers from workstation to edge device.")
    parser.add_argument("--version", action="version", version=f"edgeskip {__version__}")
    _add_output_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parsers = {name: sub.add_parser(name, help=text, description=text) for name, (text, _) in COMMANDS.items()}
    for p in parsers.values():
        _add_output_options(p, default=argparse.SUPPRESS)  # after the command too; the top level's value stays

    from edgeskip.train.config import TrainConfig

    add_dataclass_options(parsers["train"], TrainConfig, skip=("progress",))

    ev = parsers["evaluate"]
    add_bundle_argument(ev, "exported bundle to run with edgeskip.Runtime (no torch), per policy")
    ev.add_argument("--checkpoint", help="evaluate a checkpoint folder or training run folder in PyTorch instead")
    ev.add_argument("--dataset", default=None, help="dataset (default: the checkpoint's or bundle's)")
    ev.add_argument("--policy", default=None,
                    help="bundle: comma-separated policies (default: all it has: static, agent, e2cm, agent+e2cm, "
                         "default)")
    ev.add_argument("--backend", default=None, help="bundle: runtime backend (default: onnxruntime)")
    ev.add_argument("--data", default=None, help="dataset copy (CIFAR-10 folder or .tar.gz)")
    ev.add_argument("--limit-per-class", type=positive_int, default=None, help="evaluate the first N test images per class")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="images per call")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--top", type=positive_int, default=10, help="paths shown in the path table (agents)")

    qs = parsers["quickstart"]
    qs.add_argument("--out", default="edgeskip-quickstart", help="output folder")
    qs.add_argument("--dataset", default="digits", choices=("digits", "cifar10"), help="dataset")
    qs.add_argument("--data", default=None, help="CIFAR-10 folder or .tar.gz (with --dataset cifar10)")
    qs.add_argument("--model", default=None, help="model (default: vit-digits-wide on digits, vit9 on cifar10)")
    qs.add_argument("--epochs", type=positive_int, default=None,
                    help="training epochs (default: 30 on digits, 3 on cifar10)")
    qs.add_argument("--limit-per-class", type=positive_int, default=None,
                    help="use the first N training and test images per class (a shorter run)")
    qs.add_argument("--budget-ms", type=float, default=None,
                    help="latency budget for the selection (default: the predicted latency of the cheapest "
                         "configuration within 1 point of the static model's accuracy)")
    qs.add_argument("--force", action="store_true", help="replace an existing quickstart folder")

    parsers["models"].add_argument("--json", action="store_true", help="print JSON")
    parsers["keygen"].add_argument("--out", required=True, help="private key file to write (the public key: OUT.pub)")
    add_bundle_argument(parsers["sign"], "bundle to sign")
    parsers["sign"].add_argument("--key", required=True, help="ed25519 private key (PEM, from edgeskip keygen)")
    add_bundle_argument(parsers["verify"], "bundle to check")
    parsers["verify"].add_argument("--trusted-key", action="append", default=[],
                                   help="a public key whose signature is accepted (a .pub file or ed25519:...); "
                                        "repeat for several")

    from edgeskip.search.settings import PosttrainSettings

    pt = parsers["posttrain"]
    pt.add_argument("--checkpoint", required=True, help="agent checkpoint (or its training run folder)")
    pt.add_argument("--data", default=None, help="dataset copy (CIFAR-10 folder or .tar.gz)")
    pt.add_argument("--limit-per-class", type=positive_int, default=None, help="use the first N images per class")
    pt.add_argument("--out", default="posttrain", help="folder for pareto.json and pareto.png")
    pt.add_argument("--precision", default="fp32", choices=("auto", "bf16", "fp32"), help="evaluation precision")
    pt.add_argument("--force", action="store_true", help="replace an existing pareto.json")
    add_dataclass_options(pt, PosttrainSettings)

    ap = parsers["apply-config"]
    ap.add_argument("--checkpoint", required=True, help="agent checkpoint (or its training run folder)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--pareto", help="a Pareto front: pareto.json of posttrain, or pareto/DEVICE.json of search")
    which.add_argument("--thresholds", help="comma-separated per-layer thresholds, '-' removes a layer")
    ap.add_argument("--point", type=int, default=0, help="index of the Pareto point (with --pareto; -1 = last)")
    ap.add_argument("--out", required=True, help="new checkpoint folder (must not exist)")

    from edgeskip.e2cm.settings import CalibrateConfig

    ca = parsers["calibrate"]
    ca.add_argument("--checkpoint", required=True, help="checkpoint folder or training run folder")
    ca.add_argument("--data", default=None, help="dataset copy (CIFAR-10 folder or .tar.gz; not needed for digits)")
    ca.add_argument("--out", default="e2cm", help="output folder (default: e2cm)")
    ca.add_argument("--force", action="store_true", help="replace an existing calibration in --out")
    add_dataclass_options(ca, CalibrateConfig)

    from edgeskip.exporters.settings import ExportConfig

    add_dataclass_options(parsers["export"], ExportConfig)
    be = parsers["build-engines"]
    add_bundle_argument(be, "bundle exported with --target jetson")
    be.add_argument("--precision", default="fp16", choices=("fp16", "fp32", "int8"),
                    help="engine precision (int8: from the QDQ ONNX of a jetson export with --int8)")
    be.add_argument("--batch-sizes", default="1", help="static batch size of each engine profile, e.g. 1,8")
    be.add_argument("--gate", action="store_true", help="also build the gate-graph engine (measure its cost on the device)")
    be.add_argument("--workspace-mb", type=positive_int, default=1024, help="builder workspace limit in MiB")

    from edgeskip.devices.table import DEVICES

    pr = parsers["profile"]
    add_bundle_argument(pr, "bundle to profile")
    pr.add_argument("--device", default="cpu", choices=DEVICES.names(), help="the device this runs on")
    pr.add_argument("--backend", default=None, help="runtime backend (default: the device's)")
    pr.add_argument("--batch-sizes", default="1", help="batch sizes to measure, e.g. 1,8")
    pr.add_argument("--quick", action="store_true", help="a coarse profile: few samples per stage")

    se = parsers["search"]
    add_bundle_argument(se, "bundle to search (profiled for --device)")
    se.add_argument("--device", default="cpu", choices=DEVICES.names(), help="device whose profile predicts the costs")
    se.add_argument("--profile", default=None, help="profile file (default: BUNDLE/profiles/DEVICE.json)")
    se.add_argument("--data", default=None, help="dataset copy for the calibration images (not needed for digits)")
    se.add_argument("--images", type=positive_int, default=2000, help="calibration images")
    se.add_argument("--split", default="test-half", choices=("test-half", "train"),
                    help="where they come from: the first half of each test class, or the training set")
    se.add_argument("--holdout-images", type=nonnegative_int, default=2500,
                    help="held-out images (the second half of each test class, as bench --front uses) every "
                         "configuration of the front is also run on, to report accuracy that chose nothing; 0: none")
    from edgeskip.search.settings import BundleSearchSettings

    add_dataclass_options(se, BundleSearchSettings, skip=("exit_rates",))
    se.add_argument("--out", default=None, help="pareto.json path (default: BUNDLE/pareto/DEVICE.json; a PNG beside it)")

    sl = parsers["select"]
    add_bundle_argument(sl, "bundle to choose for (searched for --device)")
    sl.add_argument("--device", default="cpu", choices=DEVICES.names(), help="device whose front to choose from")
    budget = sl.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, default=None, help="latency budget per call (ms)")
    budget.add_argument("--budget-mj", type=float, default=None, help="energy budget per call (mJ)")
    budget.add_argument("--max-loss-points", type=float, default=None,
                        help="instead of a budget: the fastest configuration whose accuracy loss against static on the "
                             "search images, plus one standard error, is within this many points (else static)")
    sl.add_argument("--pareto", default=None, help="front file (default: BUNDLE/pareto/DEVICE.json)")
    sl.add_argument("--dry-run", action="store_true", help="show the choice without writing it into the manifest")
    sl.add_argument("--allow-degenerate", action="store_true",
                    help="accept a choice that runs no layer or is within 2 points of chance (refused otherwise)")

    bn = parsers["bench"]
    add_bundle_argument(bn, "bundle to measure")
    bn.add_argument("--data", default=None, help="dataset copy for the agent workload (e.g. CIFAR-10 .tar.gz); "
                                                 "without it the workload is random images")
    bn.add_argument("--images", type=positive_int, default=64, help="inputs of the batch-1 agent workload")
    bn.add_argument("--batch", type=positive_int, default=64, help="batch size of the batched workload")
    bn.add_argument("--batch-images", type=positive_int, default=256, help="inputs of the batched workload")
    bn.add_argument("--rounds", type=positive_int, default=50, help="interleaved rounds at batch 1")
    bn.add_argument("--workload-rounds", type=positive_int, default=7, help="rounds over the workloads")
    bn.add_argument("--warmup", type=int, default=10, help="warm-up calls per variant")
    bn.add_argument("--threads", type=positive_int, default=None, help="inference threads (default: usable CPUs)")
    bn.add_argument("--checkpoint", default=None, help="the checkpoint the bundle came from (PyTorch comparison)")
    bn.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    bn.add_argument("--json", default=None, help="also write the report as JSON to this file ('-': JSON on stdout)")
    front = bn.add_argument_group("the front on held-out images (--front)")
    front.add_argument("--front", action="store_true",
                       help="measure every configuration of the device's Pareto front against static instead: accuracy "
                            "on held-out images (the second half of each test class), latency interleaved at batch 1 "
                            "and --batch, the speed-up at <= 0.5 / 1 / 2 points of accuracy loss")
    front.add_argument("--device", default="cpu", choices=DEVICES.names(), help="whose front (--front)")
    front.add_argument("--pareto", default=None, help="front file (--front; default: BUNDLE/pareto/DEVICE.json)")
    front.add_argument("--heldout-images", type=positive_int, default=2500,
                       help="held-out images for the accuracies (--front; the second half of each test class)")
    front.add_argument("--front-rounds", type=positive_int, default=20,
                       help="interleaved rounds over every configuration at each batch size (--front)")
    front.add_argument("--front-block", type=positive_int, default=8,
                       help="held-out images each configuration runs one at a time per round at batch 1 (--front)")
    front.add_argument("--plot", default=None,
                       help="PNG of held-out accuracy against measured latency (--front; default: "
                            "BUNDLE/pareto/DEVICE-measured.png)")
    return parser


def _add_output_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``-v``, ``-q`` and ``--no-progress``, on the top level and after every command (``default`` SUPPRESS there,
    so an option given before the command is not reset by the command's parser)."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="log debug messages")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log warnings and errors only, and draw no progress bars")
    group.add_argument("--no-progress", action="store_true", default=default,
                       help="draw no progress bars (they are drawn only when standard error is a terminal)")


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write; edgeskip writes every result to a temporary path and renames
    it when complete, so a failure leaves what was there before unchanged."""
    where = f" ({exc.filename})" if exc.filename else ""
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
            errno.EFBIG: "the file size limit was reached", errno.EROFS: "choose a writable folder",
            errno.EACCES: "check the folder's permissions"}.get(exc.errno or 0, "")
    return (f"{exc.strerror or exc}{where}; what was already there is unchanged and the half-written "
            f"temporary files were removed{'; ' + hint if hint else ''}")


# The commands that run PyTorch on the CPU (its OpenMP threads: see edgeskip.host.openmp_wait_policy).
TORCH_COMMANDS = frozenset({"quickstart", "train", "posttrain", "calibrate", "export"})


def runs_torch(args: argparse.Namespace) -> bool:
    """Whether this command line runs PyTorch: the training-side commands, a checkpoint's evaluation and the
    bench's PyTorch comparison (a bundle's evaluation, ``bench --no-torch`` and ``bench --front`` are torch-free)."""
    if args.command == "evaluate":
        return args.checkpoint is not None
    if args.command == "bench":
        return not (args.no_torch or args.front)
    return args.command in TORCH_COMMANDS

# The optional packages a command may need, and the extra that installs each (pyproject.toml).
EXTRA_OF = {"torch": "train", "kornia": "train", "safetensors": "train", "sklearn": "train", "PIL": "train",
            "pymoo": "search", "matplotlib": "search", "litert_torch": "tflite-export", "ai_edge_litert": "tflite",
            "cryptography": "sign"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.progress = not (args.quiet or args.no_progress)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    if runs_torch(args):  # before torch is imported: its OpenMP pool reads the policy once
        from edgeskip.host import openmp_wait_policy

        note = openmp_wait_policy()
        if note is not None:
            log.info("%s", note)
    try:
        return COMMANDS[args.command][1](args)
    except EdgeskipError as exc:
        print(f"edgeskip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional package this command needs (a device install has the core only)
        root = (exc.name or "").split(".")[0]
        if root not in EXTRA_OF:
            raise
        print(f"edgeskip {args.command}: error: this command needs {root}, which is not installed: "
              f"pip install 'edgeskip[{EXTRA_OF[root]}]'", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's fault (a full disk, a read-only folder), not the user's input
        print(f"edgeskip {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeskip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
