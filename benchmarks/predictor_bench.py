"""How well the profile-based latency model predicts end-to-end latency, in one run on this machine.

1. Profile the bundle (``edgeskip profile`` in this process: per-stage times, agent and exit
   costs, the runtime's overhead in context).
2. Draw configurations (genes on the default threshold grid, plus the all-0.5 and the static
   ones) and run each with the Runtime at batch 1, finely interleaved: every round runs each
   configuration (in a new random order) on the next block of images; a configuration's latency
   is its mean per call over all rounds.
3. Predict each from the model with the usage (per-layer execution rates, agent asks, exit
   checks) of its own run, and report the relative errors: their distribution, the share within
   +/-5% (target: 90%) and a PNG of predicted against measured. Two errors per configuration:
   absolute (predicted ms against measured ms) and relative to the static configuration timed
   in the same round (predicted ratio against measured ratio), which a machine that switches
   between fast and slow phases between the profile and the validation cannot disturb.
   Each configuration runs on the path the model predicts fastest for it, as a front point does.
4. Path choice (batch 1, where the bundle has a gate graph): each configuration also runs on
   its other path, interleaved with the rest; the script reports how often the predicted-fastest
   path was the measured-fastest, and what the predicted choice cost against the measured best.
5. The machine's own repeat noise: the static model's median time in the odd rounds against the
   even ones.

    python benchmarks/predictor_bench.py --bundle DIR --data ../shared/data/cifar10-images.tar.gz \
        [--configs 24] [--images 100] [--rounds 40] [--block 25] [--batch 1] [--json out.json] [--plot out.png]

At batch 64: ``--batch 64 --images 256 --block 2 --rounds 20`` (a block is that many calls).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", default=None, help="dataset copy for real images (default: random images)")
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40, help="rounds over the configurations")
    parser.add_argument("--block", type=int, default=25, help="images per configuration per round")
    parser.add_argument("--batch", type=int, default=1, help="images per call (profiled at this batch size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()

    from edgeskip.search import DEFAULT_GRID, Genome, ProfileCosts, usage_of
    from edgeskip.devices.profiler import ProfileSettings, profile_bundle
    from edgeskip.runtimes import Policy, Runtime
    from edgeskip.runtimes.inputs import prepare

    if args.batch < 1 or args.images < 2 * args.batch:
        sys.exit(f"need --batch >= 1 and at least two batches of images (--images >= {2 * args.batch})")
    profile = profile_bundle(args.bundle, "cpu", settings=ProfileSettings(batch_sizes=(args.batch,)))
    rt = Runtime(args.bundle, policy="static")
    m = rt.manifest
    if m.agents is None:
        sys.exit("the bundle's model has no agents: nothing to configure")
    model = ProfileCosts.from_profile(profile, m.config.depth)
    reused = ProfileCosts.from_profile(profile, m.config.depth, reuse=not model.reuse)  # the other variant
    if args.data:
        from edgeskip.data import load_dataset_for

        images = load_dataset_for(m.dataset, args.data, m.config, m.classes).test.images[: args.images]
    else:
        spec = rt.input_spec
        images = np.random.default_rng(args.seed).integers(0, 256, (args.images, spec.image_size, spec.image_size,
                                                                     spec.channels), dtype=np.uint8)
    x = prepare(images, rt.input_spec)
    rows = [x[i:i + args.batch] for i in range(0, len(x) - args.batch + 1, args.batch)]  # the calls
    genome = Genome(m.config.depth, None, DEFAULT_GRID)
    rng = np.random.default_rng(args.seed)
    policies = {"static": Policy.config([0.0] * m.config.depth), "all-0.5": Policy.config([0.5] * m.config.depth)}
    while len(policies) < args.configs:
        genes = rng.integers(0, np.asarray(genome.upper) + 1)
        if (genes == 0).all():
            continue
        policies["genes " + "".join(map(str, genes))] = genome.policy(genes)
    exits = list(m.e2cm.exits) if m.e2cm else []

    def usage(runtime: Runtime) -> Any:  # the usage of a configuration on these images (decisions are per input)
        out = runtime(x)
        plan = runtime.plan
        return out, usage_of(np.asarray(out.executed), np.asarray(out.exit_layer), plan.steps, exits,
                             list(plan.exits), static=plan.static)

    runtimes: dict[str, Runtime] = {}
    other: dict[str, str] = {}  # configuration -> its other path's runtime, for the path-choice check
    for name, p in policies.items():
        probe = Runtime(args.bundle, policy=p, path="stages")
        probe_usage = usage(probe)[1]
        paths = model.paths(probe_usage, args.batch)
        chosen = model.predict(probe_usage, args.batch).path
        probe.close()
        runtimes[name] = Runtime(args.bundle, policy=p, path=chosen)  # as a front point runs it
        for alt in (k for k in paths if k != chosen and k != "monolithic" and name != "static"):
            other[name] = f"{name} [{alt}]"
            runtimes[other[name]] = Runtime(args.bundle, policy=p, path=alt)
    # Fine interleaving: every round runs each configuration on the next block of images (a new random order
    # of configurations per round), so a machine that switches between fast and slow phases every few seconds
    # (this one does: the same static loop took 3.5-6.7 ms within a minute) loads every configuration alike.
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    names = list(runtimes)
    order_rng = np.random.default_rng(args.seed + 1)
    for r in range(args.rounds):
        start = (r * args.block) % len(rows)
        block = [rows[(start + i) % len(rows)] for i in range(args.block)]
        for name in order_rng.permutation(names):
            runtime = runtimes[name]
            for row in block[:2]:  # the block starts after another configuration: settle the caches
                runtime(row)
            t0 = time.perf_counter()
            for row in block:
                runtime(row)
            times[name].append((time.perf_counter() - t0) * 1e3 / len(block))
    results, alternatives = [], {}
    static_times = np.array(times["static"])
    predicted_static = predicted_static_reuse = None
    for name, runtime in runtimes.items():
        out, use = usage(runtime)
        predicted = model.predict(use, args.batch, runtime.path).latency_ms
        predicted_reuse = reused.predict(use, args.batch, runtime.path).latency_ms
        if name == "static":
            predicted_static, predicted_static_reuse = predicted, predicted_reuse
        measured = float(np.mean(times[name]))  # the model predicts a mean over inputs
        ratio = measured / float(np.mean(static_times))
        row = {"config": name, "path": runtime.path, "executed_fraction": float(np.mean(out.executed)),
               "measured_ms": measured, "predicted_ms": predicted, "error": predicted / measured - 1.0,
               "measured_ratio": ratio, "predicted_ms_reuse": predicted_reuse}
        (alternatives.__setitem__(name, row) if name in other.values() else results.append(row))
    assert predicted_static is not None and predicted_static_reuse is not None
    for r in (*results, *alternatives.values()):
        r["predicted_ratio"] = r["predicted_ms"] / predicted_static
        r["ratio_error"] = r["predicted_ratio"] / r["measured_ratio"] - 1.0
        r["ratio_error_reuse"] = r["predicted_ms_reuse"] / predicted_static_reuse / r["measured_ratio"] - 1.0
    reuse_errors = np.array([r["ratio_error_reuse"] for r in results if r["config"] != "static"])
    errors = np.array([r["error"] for r in results])
    ratio_errors = np.array([r["ratio_error"] for r in results if r["config"] != "static"])
    choice = []  # per configuration with two paths: (predicted choice measured faster, its cost against the best)
    for r in results:
        alt = alternatives.get(other.get(r["config"], ""))
        if alt is not None:
            choice.append((r["measured_ms"] <= alt["measured_ms"], r["measured_ms"] / min(r["measured_ms"],
                                                                                         alt["measured_ms"]) - 1.0))
    noise = float(np.median(static_times[1::2]) / np.median(static_times[::2]))
    summary = {"configs": len(results), "images": len(rows) * args.batch, "batch": args.batch, "rounds": args.rounds,
               "within_5pct": float(np.mean(np.abs(errors) <= 0.05)), "median_abs_error": float(np.median(np.abs(errors))),
               "p90_abs_error": float(np.percentile(np.abs(errors), 90)), "max_abs_error": float(np.abs(errors).max()),
               "mean_error": float(errors.mean()),
               "ratio_within_5pct": float(np.mean(np.abs(ratio_errors) <= 0.05)),
               "ratio_median_abs_error": float(np.median(np.abs(ratio_errors))),
               "ratio_p90_abs_error": float(np.percentile(np.abs(ratio_errors), 90)),
               "reuse_ratio_within_5pct": float(np.mean(np.abs(reuse_errors) <= 0.05)),
               "reuse_ratio_median_abs_error": float(np.median(np.abs(reuse_errors))),
               "overhead": {b: o.to_dict() for b, o in profile.overhead.items()}, "energy": profile.energy_source,
               "gate": {b: g.to_dict() for b, g in profile.gate.items()}, "static_repeat_noise": noise,
               "paths": {p: sum(r["path"] == p for r in results) for p in {r["path"] for r in results}},
               "path_choice": None if not choice else {
                   "configs": len(choice), "predicted_was_fastest": float(np.mean([c[0] for c in choice])),
                   "median_cost": float(np.median([c[1] for c in choice])),
                   "max_cost": float(max(c[1] for c in choice))}}
    print(f"{'configuration':<30} {'path':<10} {'layers':>7} {'measured':>10} {'predicted':>10} {'error':>8}  "
          f"{'vs static: measured':>19} {'predicted':>9} {'error':>8}")
    for r in sorted((*results, *alternatives.values()), key=lambda r: (r["config"].split(" [")[0], r["config"])):
        print(f"{r['config']:<30} {r['path']:<10} {100 * r['executed_fraction']:6.1f}% {r['measured_ms']:8.3f} ms "
              f"{r['predicted_ms']:8.3f} ms {100 * r['error']:+7.2f}%  {r['measured_ratio']:19.3f} "
              f"{r['predicted_ratio']:9.3f} {100 * r['ratio_error']:+7.2f}%")
    print(f"\n{summary['configs']} configurations, {summary['images']} images at batch {args.batch}, {summary['rounds']} interleaved "
          f"rounds: {100 * summary['within_5pct']:.0f}% within +/-5% (target 90%), median |error| "
          f"{100 * summary['median_abs_error']:.2f}%, p90 {100 * summary['p90_abs_error']:.2f}%, "
          f"max {100 * summary['max_abs_error']:.2f}%, mean error {100 * summary['mean_error']:+.2f}%; relative to static in "
          f"the same round: {100 * summary['ratio_within_5pct']:.0f}% within +/-5%, median |error| "
          f"{100 * summary['ratio_median_abs_error']:.2f}%, p90 {100 * summary['ratio_p90_abs_error']:.2f}%")
    print(f"the same model with reuse={reused.reuse} (layers priced {'by reuse distance' if reused.reuse else 'at static-pass times'}), "
          "relative to static: "
          f"{100 * summary['reuse_ratio_within_5pct']:.0f}% within +/-5%, median |error| "
          f"{100 * summary['reuse_ratio_median_abs_error']:.2f}%")
    print(f"machine repeat noise: static's median in odd rounds / even rounds {noise:.3f}; "
          f"paths run: {summary['paths']}")
    pc = summary["path_choice"]
    if pc:
        print(f"path choice: the predicted-fastest path was measured fastest for {100 * pc['predicted_was_fastest']:.0f}% "
              f"of {pc['configs']} configurations; against the measured-fastest path it cost "
              f"{100 * pc['median_cost']:.1f}% (median), {100 * pc['max_cost']:.1f}% (max)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from edgeskip.plots import save_figure

        fig, ax = plt.subplots(figsize=(5, 5))
        meas = [r["measured_ms"] for r in results]
        pred = [r["predicted_ms"] for r in results]
        lim = (0, max(meas + pred) * 1.05)
        ax.plot(lim, lim, color="grey", lw=1)
        ax.fill_between(lim, [v * 0.95 for v in lim], [v * 1.05 for v in lim], color="grey", alpha=0.15,
                        label="+/-5%")
        ax.scatter(meas, pred, s=18)
        ax.set(xlim=lim, ylim=lim, xlabel="measured latency per call (ms)", ylabel="predicted (ms)",
               title=f"{m.model_name}: latency model vs measured, batch {args.batch}")
        ax.legend(loc="upper left")
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
