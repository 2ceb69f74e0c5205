"""edgeskip bench: every part runs and reports finite ratios, as a table and as JSON (no timing thresholds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgeskip.cli import main
from edgeskip.devices.bench import BenchConfig, format_table, interleaved, run_bench, skip_pattern


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_every_part_reports_finite_ratios(tiny_bundle: Path) -> None:
    cfg = BenchConfig(str(tiny_bundle), images=4, batch=4, batch_images=8, rounds=3, workload_rounds=2, warmup=1)
    report = run_bench(cfg)
    f = report["figures"]
    assert set(f) == {"loop", "gate", "skip", "agents_b1", "agents_b4", "torch"}, report["skipped"]
    assert _finite(f["loop"]["ratio"]) and _finite(f["gate"]["ratio"]) and _finite(f["skip"]["fraction_of_ideal"])
    assert f["skip"]["skipped_layers"] == [0, 2, 3]
    assert f["skip"]["ideal"] > 1.0
    for key in ("agents_b1", "agents_b4"):
        assert _finite(f[key]["fraction_of_ideal"]) and 0.0 < f[key]["executed_fraction"] <= 1.0
    assert f["agents_b4"]["batch"] == 4 and f["agents_b4"]["inputs"] == 8
    assert _finite(f["torch"]["b1"]["edgeskip_over_torch"]) and f["torch"]["b1"]["same_paths_first_calls"]
    assert report["method"]["rounds"] == 3 and report["runtime"]["backend"] == "onnxruntime"
    assert "random uint8 images" in report["images"] and report["untrained"]
    json.dumps(report)  # JSON-ready
    table = format_table(report)
    for part in ("1. per-stage loop", "2. gate graph", "3. skip layers", "4. agent policy, batch 1", "5. edgeskip /"):
        assert part in table
    assert "UNTRAINED" in table and "3 interleaved rounds" in table


def test_skip_pattern_spreads_over_the_kept_layers() -> None:
    assert skip_pattern(9, ()) == [2, 5, 8]
    assert skip_pattern(10, ()) == [2, 6, 9]
    assert skip_pattern(9, (5,)) == [2, 4, 8]
    assert len(set(skip_pattern(4, ()))) == 3


def test_interleaved_runs_each_variant_every_round() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert times["a"].shape == (3,)


def test_cli_bench_writes_json(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["-q", "bench", str(tiny_bundle), "--images", "2", "--batch", "2", "--batch-images", "4", "--rounds", "2",
                 "--workload-rounds", "1", "--warmup", "0", "--no-torch", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per-stage loop" in printed and "torch: skipped" in printed
    assert json.loads(out.read_text())["figures"]["loop"]["ratio"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["bench"], "no bundle named and none found here"),
    (["bench", "/nonexistent/bundle"], "no such folder"),
    (["bench", "{bundle}", "--data", "/nonexistent/data"], "no such file"),
])
def test_cli_bench_errors(tiny_bundle: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                          no_bundle_here: Path) -> None:
    assert main(["-q", *[a.format(bundle=tiny_bundle) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
