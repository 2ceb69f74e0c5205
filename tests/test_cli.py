"""The command line: help, one-line errors with exit code 2, and a real train/evaluate run."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgeskip.cli import COMMANDS, main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # Not from the repository root: there ./edgeskip (the source folder) would shadow the
    # installed package, whose edgeskip.devices etc. are mapped from other folders.
    return subprocess.run([sys.executable, "-m", "edgeskip", *args], capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir())


def test_help_lists_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for name, (purpose, _) in COMMANDS.items():
        assert name in proc.stdout
        assert purpose.split()[0] in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--model", "vit11", "--dataset", "digits"], "unknown model 'vit11'; available: vit7"),
        (["train", "--dataset", "cifar10", "--data", "/nonexistent/cifar"], "--data /nonexistent/cifar: no such file"),
        (["train", "--dataset", "cifar10"], "needs --data"),
        (["train", "--epochs", "zero"], "invalid int value: 'zero'"),
        (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["train", "--epochs", "0", "--dataset", "digits"], "epochs must be >= 1"),
        (["evaluate", "--checkpoint", "/nonexistent/ckpt"], "checkpoint /nonexistent/ckpt does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["evaluate", "--checkpoint", "x", "--batch-size", "0"], "must be >= 1, got 0"),
        (["quickstart", "--epochs", "-3"], "must be >= 1, got -3"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse exits on usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_models_json() -> None:
    proc = run("models", "--json")
    assert proc.returncode == 0
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["vit10"]["params"] == 8_934_538 and rows["vit9"]["width"] == 192
    assert rows["vit9"]["pretrained"] == ["cifar10"] and rows["vit10"]["pretrained"] == []


@pytest.mark.slow
def test_train_then_evaluate(tmp_path: Path) -> None:
    proc = run("train", "--model", "vit-digits", "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
               "--augment", "none", "--limit-per-class", "40", "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    ev = run("evaluate", "--checkpoint", str(tmp_path / "run"), "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads(ev.stdout)
    assert report["model"] == "vit-digits" and report["count"] == 359 and 0.0 <= report["accuracy"] <= 1.0
    again = run("train", "--model", "vit-digits", "--dataset", "digits", "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_quickstart_refuses_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    refused = run("quickstart", "--out", str(tmp_path / "other"), "--epochs", "1")
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    forced = run("quickstart", "--out", str(tmp_path / "other"), "--epochs", "1", "--force")
    assert forced.returncode == 2 and (tmp_path / "other" / "keep.txt").read_text() == "mine"
    no_data = run("quickstart", "--dataset", "cifar10", "--out", str(tmp_path / "c"))
    assert no_data.returncode == 2 and "needs --data" in no_data.stderr and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_agents_posttrain_apply_evaluate(tmp_path: Path) -> None:
    proc = run("train", "--model", "vit-digits", "--dataset", "digits", "--epochs", "3", "--batch-size", "64",
               "--augment", "none", "--agents", "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "executed layers" in proc.stdout
    pt = run("posttrain", "--checkpoint", str(tmp_path / "run"), "--generations", "3", "--pop-size", "8",
             "--evaluation", "fixed", "--out", str(tmp_path / "pt"))
    assert pt.returncode == 0, pt.stderr[-2000:]
    pareto = json.loads((tmp_path / "pt" / "pareto.json").read_text())
    assert (tmp_path / "pt" / "pareto.png").is_file() and pareto["hypervolume"] >= pareto["meta"]["reference_hypervolume"]
    again = run("posttrain", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "pt"))
    assert again.returncode == 2 and "--force" in again.stderr
    ap = run("apply-config", "--checkpoint", str(tmp_path / "run"), "--pareto", str(tmp_path / "pt" / "pareto.json"),
             "--point", "0", "--out", str(tmp_path / "chosen"))
    assert ap.returncode == 0, ap.stderr[-2000:]
    ev = run("evaluate", "--checkpoint", str(tmp_path / "chosen"), "--json")
    report = json.loads(ev.stdout)
    point = pareto["points"][0]
    assert report["accuracy"] == pytest.approx(point["accuracy"])
    assert report["mean_executed_layers"] == pytest.approx(point["executed_layers"])
    assert report["paths"][0]["percent"] > 0 and len(report["layer_execution_rates"]) == 6
    bad = run("apply-config", "--checkpoint", str(tmp_path / "run"), "--thresholds", "0.5,0.5", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "2 layer(s), the model has 6" in bad.stderr
    exists = run("apply-config", "--checkpoint", str(tmp_path / "run"), "--thresholds", "0.5," * 5 + "0.5",
                 "--out", str(tmp_path / "chosen"))
    assert exists.returncode == 2 and "already exists" in exists.stderr
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**pareto, "points": [{"accuracy": 1.0}]}))
    malformed = run("apply-config", "--checkpoint", str(tmp_path / "run"), "--pareto", str(broken), "--out",
                    str(tmp_path / "y"))
    assert malformed.returncode == 2 and "malformed Pareto front" in malformed.stderr
    assert "points[0].genes: required key is missing" in malformed.stderr and "Traceback" not in malformed.stderr

    # The joint variant fine-tunes the model: its points must be applied to the saved fine-tuned weights.
    joint = run("posttrain", "--checkpoint", str(tmp_path / "run"), "--generations", "2", "--pop-size", "6",
                "--evaluation", "fixed", "--joint", "--joint-steps", "2", "--out", str(tmp_path / "joint"))
    assert joint.returncode == 0, joint.stderr[-2000:]
    assert "--checkpoint " + str(tmp_path / "joint" / "finetuned") in joint.stdout
    jp = json.loads((tmp_path / "joint" / "pareto.json").read_text())["points"][-1]
    ap = run("apply-config", "--checkpoint", str(tmp_path / "joint" / "finetuned"), "--pareto",
             str(tmp_path / "joint" / "pareto.json"), "--point", "-1", "--out", str(tmp_path / "joint-chosen"))
    assert ap.returncode == 0, ap.stderr[-2000:]
    report = json.loads(run("evaluate", "--checkpoint", str(tmp_path / "joint-chosen"), "--json").stdout)
    assert report["accuracy"] == pytest.approx(jp["accuracy"])
