"""TensorRT for a bundle: ONNX compatibility checks, a trtexec build script, Python-API engine builds.

Engines are tied to the TensorRT version and the GPU, so they are built on the device, either
with ``tensorrt/build_engines.sh`` (trtexec, from :func:`trtexec_script`) or with
:func:`build_engines` (the TensorRT Python API). One static-shape engine per stage and batch
size: ``engines/<stage>.b<N>.<precision>.engine``.

Precision by TensorRT major version (both ONNX copies are in a jetson bundle):

* TensorRT <= 10: fp16 engines come from the fp32 ONNX with the FP16 builder flag
  (``--fp16``); the explicit-batch network flag is set below 10 (ignored from 10 on).
* TensorRT >= 11: networks are always strongly typed and the FP16 flag and ``--fp16`` are gone
  (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-trtexec.html),
  so fp16 engines are built from the fp16 ONNX copy.
* INT8 (``--target jetson --int8``): explicit quantization, built from the bundle's QDQ ONNX (``onnx-int8``,
  static mode: activation ranges calibrated on training images at export); up to TensorRT 10 with the INT8
  and FP16 builder flags (``--int8 --fp16``: the QDQ layers in INT8, the rest, LayerNorm, Softmax, GELU and the
  float embed and head, in fp16), from 11 on strongly typed (``--stronglyTyped``: the rest in fp32).

``tensorrt`` is imported only inside the functions that need it (on Jetson it comes with
JetPack; elsewhere ``pip install 'edgeskip[tensorrt]'``); ``torch`` only in :func:`run_engine`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from edgeskip.bundle import Bundle, update_manifest
from edgeskip.errors import BackendUnavailableError, EdgeskipError
from edgeskip.fsutil import atomic_write_bytes
from edgeskip.exporters.formats import FormatJob, FormatResult
from edgeskip.exporters.settings import ExportConfig, parse_batch_sizes
from edgeskip.manifest import EngineRecord, TensorRT

__all__ = [
    "TensorRTError", "MIN_TRT", "PRECISIONS", "OPSET_MAX", "TRT85_ONNX_OPS", "OPS_ADDED", "SCRIPT",
    "parse_trt_version", "max_opset", "supported_ops", "check_onnx_for_tensorrt", "require_tensorrt_compatible",
    "EngineJob", "TensorRTExporter", "engine_jobs", "engine_file", "trtexec_script", "build_engines", "run_engine",
]

log = logging.getLogger(__name__)

Version = tuple[int, int, int]

# The oldest TensorRT edgeskip's bundles support: 8.6 (JetPack 6.0). Our opset-17 ONNX uses
# LayerNormalization, which TensorRT 8.5 (JetPack 5.1) cannot parse ("No importer registered
# for op: LayerNormalization"; added in 8.6 per the onnx-tensorrt changelog). The tables below
# still describe 8.5, so a check can be asked about it explicitly.
MIN_TRT: tuple[int, int] = (8, 6)
PRECISIONS = ("fp16", "fp32", "int8")
SCRIPT = "tensorrt/build_engines.sh"
ENGINE_DIR = "engines"
INSTALL_HINT = ("TensorRT is not installed: on a Jetson it comes with JetPack (use the system Python, or a venv "
                "made with --system-site-packages); on other NVIDIA GPUs run pip install 'edgeskip[tensorrt]'")


class TensorRTError(EdgeskipError):
    """A model TensorRT cannot take, a failed parse or build, or an unreadable TensorRT version."""


# -- versions ------------------------------------------------------------------------------------

# trtexec prints "&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # ...". The number is
# NV_TENSORRT_VERSION: major*1000 + minor*100 + patch before TensorRT 10 (v8502 = 8.5.2, v8601 =
# 8.6.1) and major*10000 + minor*100 + patch from 10 on (v100300 = 10.3.0, v101602 = 10.16.2,
# v110201 = 11.2.1). Newer banners append a build tag: "[TensorRT v101602] [b10]".
_BANNER = re.compile(r"\[TensorRT v(\d{4,6})\]")
_LABELLED = re.compile(r"TensorRT(?: version)?[:\s]+v?(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)
_PLAIN = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.+\-\w]*)")


def parse_trt_version(text: str) -> Version:
    """(major, minor, patch) from ``trtexec`` output (its banner) or a ``tensorrt.__version__`` string."""
    m = _BANNER.search(text)
    if m:
        code = int(m.group(1))
        if code >= 100000:
            return code // 10000, code // 100 % 100, code % 100
        return code // 1000, code // 100 % 10, code % 100
    m = _LABELLED.search(text) or _PLAIN.fullmatch(text.strip())
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    raise TensorRTError(f"cannot read a TensorRT version from {text[:200]!r}: expected trtexec's "
                        "'[TensorRT v100300]' banner or a version such as '10.3.0'")


# -- what the ONNX parser takes ----------------------------------------------------------------

# Highest default-domain opset per TensorRT release, from the header of onnx-tensorrt's
# docs/operators.md for that release: 8.5 and 8.6 "up to Opset 17", 9.2 "up to Opset 19",
# 10.0 "opset 9 to opset 20", 10.15 "opset 9 to opset 24". Releases in between are given
# the bound of the newest listed release not after them (a lower bound).
OPSET_MAX: dict[tuple[int, int], int] = {(8, 5): 17, (8, 6): 17, (9, 2): 19, (10, 0): 20, (10, 15): 24}

# Operators marked "Y" in onnx-tensorrt docs/operators.md for TensorRT 8.5
# (github.com/onnx/onnx-tensorrt/blob/release/8.5-GA/docs/operators.md). Every one of them is
# still "Y" in the TensorRT 10.15 table, and docs/Changelog.md lists additions only from 8.6 to
# 10.x, so this is the set the parser takes in all of 8.5, 8.6 and 10.x. Notably absent:
# LayerNormalization (added in 8.6, see OPS_ADDED; TensorRT 8.5 fails with "No importer
# registered for op: LayerNormalization", github.com/ItayElam/SegmentAnything-TensorRT/issues/2).
TRT85_ONNX_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Operators added later, per onnx-tensorrt docs/Changelog.md (release -> operators).
OPS_ADDED: dict[tuple[int, int], frozenset[str]] = {
    (8, 6): frozenset({"LayerNormalization", "GroupNormalization", "IsInf"}),
    (9, 2): frozenset({"Hardmax"}),
    (10, 1): frozenset({"DeformConv"}),
    (10, 4): frozenset({"BlackmanWindow", "HammingWindow", "HannWindow"}),
    (10, 5): frozenset({"STFT"}),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def max_opset(trt_version: Sequence[int] = MIN_TRT) -> int:
    """The highest default-domain opset the ONNX parser of ``trt_version`` takes (see OPSET_MAX)."""
    key = tuple(trt_version[:2])
    known = [v for v in sorted(OPSET_MAX) if v <= key]
    if not known:
        raise TensorRTError(f"TensorRT {'.'.join(map(str, key))} is older than {MIN_TRT[0]}.{MIN_TRT[1]}, the oldest "
                            "edgeskip supports (LayerNormalization needs 8.6): update to JetPack 6 / TensorRT 8.6+")
    return OPSET_MAX[known[-1]]


def supported_ops(trt_version: Sequence[int] = MIN_TRT) -> frozenset[str]:
    """ONNX operators the parser of ``trt_version`` (and every release after it) supports."""
    key = tuple(trt_version[:2])
    max_opset(key)  # rejects releases older than MIN_TRT
    return TRT85_ONNX_OPS.union(*(ops for v, ops in OPS_ADDED.items() if v <= key))


def check_onnx_for_tensorrt(model: onnx.ModelProto, *, trt_version: Sequence[int] = MIN_TRT) -> list[str]:
    """Problems TensorRT ``trt_version``'s ONNX parser would have with ``model`` (empty: none found).

    The default, 8.6, is the oldest TensorRT edgeskip supports (JetPack 6.0), so the default
    check asks for what 8.6 and 10.x all take: opset, operators (inside ``If`` branches
    too), input shapes (a dynamic or static first axis, static others), TensorRT's rules for
    ``If`` (see :func:`_check_ifs`) and for explicit quantization (see :func:`_check_qdq`).
    """
    limit = max_opset(trt_version)
    ops = supported_ops(trt_version)
    where = f"TensorRT {'.'.join(map(str, tuple(trt_version)[:2]))}"
    problems: list[str] = []
    opsets = {o.domain: o.version for o in model.opset_import}
    opset = next((opsets[d] for d in _DEFAULT_DOMAINS if d in opsets), None)
    if opset is None:
        problems.append("the model imports no default-domain opset")
    elif opset > limit:
        problems.append(f"opset {opset} is newer than {where} parses (at most {limit}): export with opset {limit}")
    for name, dims in _graph_inputs(model.graph):
        if dims is None:
            problems.append(f"input {name!r} has no shape: TensorRT needs its rank and static non-batch dimensions")
        elif any(not isinstance(d, int) for d in dims[1:]):
            problems.append(f"input {name!r} has shape {_fmt(dims)}: only the first (batch) axis may be dynamic")
    for graph_path, node in _walk(model.graph):
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{graph_path}: node {node.name or node.op_type!r} is {node.domain}::{node.op_type}, a "
                            "custom-domain operator that needs a TensorRT plugin")
        elif node.op_type not in ops:
            problems.append(f"{graph_path}: operator {node.op_type} (node {node.name!r}) is not supported by "
                            f"{where}'s ONNX parser")
    if any(n.op_type == "If" for _, n in _walk(model.graph)):
        problems += _check_ifs(model)
    problems += _check_qdq(model.graph)
    return _unique(problems)


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _check_qdq(graph: onnx.GraphProto) -> list[str]:
    """TensorRT's rules for QDQ nodes (explicit quantization, 8.6-10): a constant scale, and a zero point that is
    a constant INT8 zero (symmetric INT8 only; uint8 and non-zero zero points are refused by its importer)."""
    from onnx import numpy_helper

    constants = {i.name: i for i in graph.initializer}
    constants |= {n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    problems = []
    missing_zero = []  # QDQ nodes without a zero point: uint8 by the ONNX default, which TensorRT does not take
    for node in graph.node:
        if node.op_type not in _QDQ:
            continue
        what = f"{node.op_type} {node.name!r}"
        if len(node.input) < 2 or node.input[1] not in constants:
            problems.append(f"{what}: its scale must be a constant")
        if len(node.input) < 3 or not node.input[2]:
            missing_zero.append(node.name)
            continue
        zero = constants.get(node.input[2])
        if zero is None:
            problems.append(f"{what}: its zero point must be a constant")
        elif zero.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(zero).any():
            problems.append(f"{what}: TensorRT quantizes symmetrically to INT8: the zero point must be an int8 zero, "
                            f"got {onnx.TensorProto.DataType.Name(zero.data_type).lower()} "
                            f"{numpy_helper.to_array(zero).ravel()[:4].tolist()}")
    if missing_zero:
        problems.append(f"{len(missing_zero)} QDQ node(s) without a zero point (uint8 by default), e.g. "
                        f"{missing_zero[0]!r}: TensorRT takes INT8 only")
    return problems


def require_tensorrt_compatible(model: onnx.ModelProto, name: str, *, trt_version: Sequence[int] = MIN_TRT) -> None:
    """Raise :class:`TensorRTError` listing every problem :func:`check_onnx_for_tensorrt` finds."""
    problems = check_onnx_for_tensorrt(model, trt_version=trt_version)
    if problems:
        lines = "\n  - ".join(problems)
        raise TensorRTError(f"{name} will not build with TensorRT {'.'.join(map(str, tuple(trt_version)[:2]))}:\n"
                            f"  - {lines}")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


Dims = tuple[int | str | None, ...]


def _dims(t: onnx.TypeProto) -> Dims | None:
    """Dimensions of a tensor type: int, symbolic name, or None for unknown; None without a shape."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                 for d in t.tensor_type.shape.dim)


def _fmt(dims: Dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _graph_inputs(graph: onnx.GraphProto) -> Iterator[tuple[str, Dims | None]]:
    inits = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name not in inits:
            yield vi.name, _dims(vi.type)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def _walk(graph: onnx.GraphProto, path: str = "graph") -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node, subgraphs (If branches, Loop bodies) included, with where it lives."""
    for node in graph.node:
        yield path, node
        for attr, sub in _subgraphs(node):
            yield from _walk(sub, f"{path}/{node.name or node.op_type}.{attr}")


def _produced(graph: onnx.GraphProto) -> set[str]:
    return {o for _, n in _walk(graph) for o in n.output if o}


def _consumed(graph: onnx.GraphProto) -> set[str]:
    return {i for _, n in _walk(graph) for i in n.input if i}


def _types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    out: dict[str, onnx.TypeProto] = {}
    for t in graph.initializer:
        tp = onnx.TypeProto()
        tp.tensor_type.elem_type = t.data_type
        tp.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in t.dims)
        out[t.name] = tp
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type
    return out


def _check_ifs(model: onnx.ModelProto) -> list[str]:
    """TensorRT's rules for ``If`` on the strictly shape-inferred model.

    IIfConditional: "Condition is a 0D boolean tensor" and the branches give the same number of
    outputs with the same type and rank (TensorRT API docs, IIfConditional); TensorRT 8.x also
    refuses differing shapes ("IIfConditionalOutputLayer inputs must have the same shape",
    github.com/NVIDIA/TensorRT/issues/1731) and branch outputs with equal names
    (onnx-tensorrt docs/operators.md, If); "there can be no cross-edges connecting layers in
    the true-branch to layers in the false-branch" (github.com/NVIDIA/TensorRT/issues/4032).
    Shapes must be identical here, symbolic dimensions equal by name.
    """
    problems: list[str] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        detail = " ".join(str(exc).split())
        problems.append(f"strict ONNX shape inference fails ({detail}); the If checks use the declared types only")
        inferred = model
    _check_ifs_in(inferred.graph, "graph", {}, set(), problems, known=inferred is not model)
    return problems


def _check_ifs_in(graph: onnx.GraphProto, path: str, outer_types: Mapping[str, onnx.TypeProto],
                  outer_names: set[str], problems: list[str], *, known: bool) -> None:
    """Check every If in ``graph`` and its subgraphs; ``known``: shapes were inferred (else
    missing types are not reported again)."""
    types = {**outer_types, **_types(graph)}
    names = outer_names | {t.name for t in graph.initializer} | {vi.name for vi in graph.input} \
        | {o for n in graph.node for o in n.output}
    for node in graph.node:
        where = f"{path}: If {node.name!r}" if node.name else f"{path}: If"
        if node.op_type == "If" and node.domain in _DEFAULT_DOMAINS:
            branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
            then_g, else_g = branches.get("then_branch"), branches.get("else_branch")
            if then_g is None or else_g is None:
                problems.append(f"{where} lacks a then_branch or else_branch")
                continue
            cond = types.get(node.input[0]) if node.input else None
            cond_dims = _dims(cond) if cond is not None else None
            if cond is None or cond_dims is None:
                if known:
                        problems.append(f"{where}: the type and shape of its condition {node.input[0]!r} are unknown "
                                    "after shape inference; TensorRT needs a 0-D bool")
            elif cond.tensor_type.elem_type != onnx.TensorProto.BOOL or cond_dims != ():
                problems.append(f"{where}: the condition must be a 0-D (scalar) bool, got "
                                f"{onnx.TensorProto.DataType.Name(cond.tensor_type.elem_type)} {_fmt(cond_dims)}; "
                                "reduce it to a scalar (e.g. ReduceMax with keepdims=0, then Squeeze)")
            problems += _compare_branches(where, then_g, else_g, types, known=known)
            then_p, else_p = _produced(then_g), _produced(else_g)
            for consumer, producer, other in (("then", "else", else_p - then_p - names),
                                              ("else", "then", then_p - else_p - names)):
                crossing = sorted((_consumed(then_g if consumer == "then" else else_g)) & other)
                if crossing:
                    problems.append(f"{where}: the {consumer}-branch reads {', '.join(crossing)}, made only in the "
                                    f"{producer}-branch (TensorRT allows no edges between branches)")
        for attr, sub in _subgraphs(node):
            _check_ifs_in(sub, f"{path}/{node.name or node.op_type}.{attr}", types, names, problems, known=known)


def _compare_branches(where: str, then_g: onnx.GraphProto, else_g: onnx.GraphProto,
                      outer: Mapping[str, onnx.TypeProto], *, known: bool) -> list[str]:
    problems: list[str] = []
    if len(then_g.output) != len(else_g.output):
        return [f"{where}: the branches give {len(then_g.output)} and {len(else_g.output)} outputs; TensorRT "
                "needs the same number"]
    same_names = sorted({o.name for o in then_g.output} & {o.name for o in else_g.output})
    if same_names:
        problems.append(f"{where}: both branches output a tensor named {', '.join(same_names)}; TensorRT needs "
                        "distinct names (add an Identity in one branch)")
    then_t, else_t = {**outer, **_types(then_g)}, {**outer, **_types(else_g)}
    for k, (a, b) in enumerate(zip(then_g.output, else_g.output, strict=True)):
        ta, tb = then_t.get(a.name, a.type), else_t.get(b.name, b.type)
        ea, eb = ta.tensor_type.elem_type, tb.tensor_type.elem_type
        if ea != eb:
            problems.append(f"{where}: output {k} is {onnx.TensorProto.DataType.Name(ea)} in the then-branch and "
                            f"{onnx.TensorProto.DataType.Name(eb)} in the else-branch")
        da, db = _dims(ta), _dims(tb)
        if da is None or db is None or None in da or None in db:
            if known:
                problems.append(f"{where}: the shape of output {k} is not fully known after shape inference "
                                f"({'?' if da is None else _fmt(da)} / {'?' if db is None else _fmt(db)}); "
                                "declare it so the branches can be checked for equal shapes")
        elif da != db:
            problems.append(f"{where}: output {k} has shape {_fmt(da)} in the then-branch and {_fmt(db)} in the "
                            "else-branch; TensorRT needs identical shapes")
    return problems


# -- engine jobs and the trtexec script -----------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.\-/]+")


@dataclasses.dataclass(frozen=True)
class EngineJob:
    """One stage to build: its fp32, fp16 and QDQ INT8 ONNX (bundle-relative) and its one input (shape without
    batch)."""

    stage: str
    onnx: str
    onnx_fp16: str | None
    input_name: str
    input_shape: tuple[int, ...]
    onnx_int8: str | None = None

    def __post_init__(self) -> None:
        if not _SAFE_NAME.fullmatch(self.stage) or not _SAFE_NAME.fullmatch(self.input_name):
            raise TensorRTError(f"stage {self.stage!r} / input {self.input_name!r}: names may hold only letters, "
                                "digits, '_', '.' and '-' (they go into trtexec's --shapes and file names)")
        for path in (self.onnx, self.onnx_fp16, self.onnx_int8):
            if path is not None and (not _SAFE_PATH.fullmatch(path) or path.startswith("/") or ".." in path.split("/")):
                raise TensorRTError(f"stage {self.stage}: {path!r} must be a plain bundle-relative path")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.input_shape):
            raise TensorRTError(f"stage {self.stage}: input shape {self.input_shape} (without the batch axis) must "
                                "hold positive integers")

    def onnx_for(self, trt_major: int, precision: str) -> str:
        """The ONNX file this TensorRT major version builds ``precision`` from."""
        if precision == "int8":
            if self.onnx_int8 is None:
                raise TensorRTError(f"stage {self.stage}: INT8 engines are built from the QDQ ONNX of an export with "
                                    "--int8 (static), which this bundle lacks; re-export with --target jetson --int8")
            return self.onnx_int8
        if precision == "fp16" and trt_major >= 11:
            if self.onnx_fp16 is None:
                raise TensorRTError(f"stage {self.stage}: TensorRT {trt_major} builds fp16 only from an fp16 ONNX "
                                    "(strongly typed networks) and this bundle has none; re-export with "
                                    "--target jetson, or build fp32")
            return self.onnx_fp16
        return self.onnx

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.input_shape)


def engine_file(stage: str, batch: int, precision: str) -> str:
    """Bundle-relative path of one engine: ``engines/<stage>.b<N>.<precision>.engine``."""
    return f"{ENGINE_DIR}/{stage}.b{batch}.{precision}.engine"


def engine_jobs(bundle: Bundle, *, include_gate: bool = False) -> list[EngineJob]:
    """One job per stage of ``bundle`` (and the gate graph if asked), input name and shape read from its ONNX."""
    m = bundle.manifest
    # agents (one dot product each) run on the host in numpy: an engine launch would cost more
    stages = [s for s in m.stages if s.kind != "agent"]
    int8 = m.formats.get("onnx-int8")
    qdq = int8 is not None and not int8.batch_dependent  # dynamic INT8 (MatMulInteger) is onnxruntime's alone
    items: list[tuple[str, str, str | None, str | None]] = [
        (s.name, s.files["onnx"], s.files.get("onnx-fp16"), s.files.get("onnx-int8") if qdq else None)
        for s in stages if "onnx" in s.files]
    missing = [s.name for s in stages if "onnx" not in s.files]
    if missing:
        raise TensorRTError(f"stages {', '.join(missing)} have no ONNX file: re-export the bundle")
    if include_gate:
        if m.gate is None:
            raise TensorRTError("this bundle has no gate graph; export it with agents or E²CM exits, or drop the gate")
        items.append(("gate", m.gate.file, m.gate.files.get("onnx-fp16"), None))
    return [_job_from_onnx(stage, bundle.file(rel), rel, fp16, int8) for stage, rel, fp16, int8 in items]


def _job_from_onnx(stage: str, path: Path, rel: str, rel_fp16: str | None, rel_int8: str | None = None) -> EngineJob:
    model = onnx.load(str(path), load_external_data=False)
    inputs = list(_graph_inputs(model.graph))
    if len(inputs) != 1:
        raise TensorRTError(f"{rel}: engines are built for one-input stages, this one has {len(inputs)} inputs")
    name, dims = inputs[0]
    if dims is None or not dims or any(not isinstance(d, int) for d in dims[1:]):
        raise TensorRTError(f"{rel}: input {name!r} needs a batch axis and static other dimensions, got "
                            f"{'no shape' if dims is None else _fmt(dims)}")
    return EngineJob(stage, rel, rel_fp16, name, tuple(int(d) for d in dims[1:]), rel_int8)  # type: ignore[arg-type]


def _check_batches(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    batches = tuple(batch_sizes)
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise TensorRTError(f"batch sizes must be positive integers, got {list(batches)}")
    return tuple(dict.fromkeys(batches))


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise TensorRTError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


_SCRIPT = r"""#!/usr/bin/env bash
# Build this bundle's TensorRT engines on the device (generated by edgeskip; engines are tied
# to the TensorRT version and GPU they are built with). Usage: bash tensorrt/build_engines.sh
# Environment: TRTEXEC=/path/to/trtexec, WORKSPACE_MB (builder workspace, default 1024).
# Writes engines/<stage>.b<N>.<precision>.engine (and a .log per engine) in the bundle and
# prints each engine's path; record them in manifest.json with 'edgeskip build-engines' instead
# if the runtime should verify them.
set -euo pipefail

PRECISION=@PRECISION@
BATCH_SIZES=(@BATCHES@)
# stage|fp32 onnx|fp16 onnx ("-": none)|input name|input shape with @ for the batch axis|QDQ int8 onnx ("-": none)
JOBS=(
@JOBS@
)

find_trtexec() {
    if [[ -n "${TRTEXEC:-}" ]]; then
        printf '%s\n' "$TRTEXEC"
    elif command -v trtexec >/dev/null 2>&1; then
        command -v trtexec
    elif [[ -x /usr/src/tensorrt/bin/trtexec ]]; then  # JetPack's location
        printf '%s\n' /usr/src/tensorrt/bin/trtexec
    else
        return 1
    fi
}

# NV_TENSORRT_VERSION from trtexec's banner "[TensorRT v8502]": major*1000+minor*100+patch
# before TensorRT 10, major*10000+minor*100+patch from 10 on ("[TensorRT v100300]" = 10.3.0).
trt_version_code() {
    local re='\[TensorRT v([0-9]+)\]'
    [[ $1 =~ $re ]] || return 1
    printf '%s\n' "${BASH_REMATCH[1]}"
}

trt_major() {
    local code=$1
    if (( code >= 100000 )); then
        printf '%s\n' $(( code / 10000 ))
    else
        printf '%s\n' $(( code / 1000 ))
    fi
}

# trtexec flags for a TensorRT major version and precision: --fp16 up to TensorRT 10; from 11
# on networks are strongly typed (--fp16 is gone) and fp16 engines come from the fp16 ONNX.
# int8 is explicit quantization from the QDQ ONNX: --int8 --fp16 up to 10, strongly typed from 11.
trt_flags() {
    local major=$1 precision=$2 flags=()
    case $precision in
        fp32) ;;
        fp16) if (( major >= 11 )); then flags+=(--stronglyTyped); else flags+=(--fp16); fi ;;
        int8) if (( major >= 11 )); then flags+=(--stronglyTyped); else flags+=(--int8 --fp16); fi ;;
        *) echo "error: unknown precision '$precision' (fp16, fp32 or int8)" >&2; return 2 ;;
    esac
    if (( major >= 10 )); then flags+=(--skipInference); else flags+=(--buildOnly); fi
    printf '%s\n' "${flags[*]}"
}

# 1 when this TensorRT major version builds the precision from the fp16 ONNX copy
uses_fp16_onnx() {
    local major=$1 precision=$2
    if [[ $precision == fp16 ]] && (( major >= 11 )); then echo 1; else echo 0; fi
}

main() {
    local here trtexec banner code major flags_text flags=() job stage onnx onnx16 input dims onnx8 model
    local n shape out log workspace=${WORKSPACE_MB:-1024}
    here=$(dirname -- "${BASH_SOURCE[0]}")
    cd -- "$here/.."  # the bundle root: every path below is relative to it
    if ! trtexec=$(find_trtexec); then
        echo "error: trtexec not found: put it on PATH, set TRTEXEC=..., or install TensorRT (JetPack has /usr/src/tensorrt/bin/trtexec)" >&2
        exit 1
    fi
    banner=$("$trtexec" --help 2>&1 || true)
    if ! code=$(trt_version_code "$banner"); then
        echo "error: cannot read the TensorRT version from '$trtexec --help'" >&2
        exit 1
    fi
    major=$(trt_major "$code")
    if (( code < 8600 )); then
        echo "error: TensorRT $code is older than 8.6 (LayerNormalization, opset 17); update to JetPack 6 / TensorRT 8.6+" >&2
        exit 1
    fi
    flags_text=$(trt_flags "$major" "$PRECISION")
    read -r -a flags <<< "$flags_text"
    echo "TensorRT v$code (major $major), $PRECISION, trtexec $trtexec, flags: ${flags[*]}" >&2
    mkdir -p engines
    for job in "${JOBS[@]}"; do
        IFS='|' read -r stage onnx onnx16 input dims onnx8 <<< "$job"
        model=$onnx
        if [[ $PRECISION == int8 ]]; then
            if [[ $onnx8 == - ]]; then
                echo "error: $stage has no QDQ INT8 ONNX: re-export with --target jetson --int8" >&2
                exit 1
            fi
            model=$onnx8
        elif [[ $(uses_fp16_onnx "$major" "$PRECISION") == 1 ]]; then
            if [[ $onnx16 == - ]]; then
                echo "error: $stage has no fp16 ONNX, which TensorRT $major needs for fp16 (strongly typed)" >&2
                exit 1
            fi
            model=$onnx16
        fi
        for n in "${BATCH_SIZES[@]}"; do
            shape="$input:${dims//@/$n}"
            out="engines/$stage.b$n.$PRECISION.engine"
            log="engines/$stage.b$n.$PRECISION.log"
            if ! "$trtexec" --onnx="$model" --saveEngine="$out.tmp" --minShapes="$shape" --optShapes="$shape" \
                    --maxShapes="$shape" --memPoolSize="workspace:$workspace" "${flags[@]}" >"$log" 2>&1; then
                tail -n 30 "$log" >&2
                echo "error: trtexec failed for $stage (batch $n); full log: $log" >&2
                rm -f "$out.tmp"
                exit 1
            fi
            mv -f "$out.tmp" "$out"
            printf '%s\n' "$out"
        done
    done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
"""


def trtexec_script(jobs: Sequence[EngineJob], batch_sizes: Sequence[int], precision: str) -> str:
    """A bash script (``set -euo pipefail``) that builds every job's engines with trtexec.

    It finds trtexec (``$TRTEXEC``, PATH, or JetPack's ``/usr/src/tensorrt/bin/trtexec``), reads
    the TensorRT version from its banner and picks the flags with ``trt_flags <major> <precision>``
    (a function tests can source). Each engine has a static shape (min = opt = max = N x input).
    """
    _check_precision(precision)
    batches = _check_batches(batch_sizes)
    if not jobs:
        raise TensorRTError("no stages to build engines for")
    rows = []
    for j in jobs:
        dims = "x".join(["@", *map(str, j.input_shape)])
        rows.append("    " + shlex.quote("|".join([j.stage, j.onnx, j.onnx_fp16 or "-", j.input_name, dims,
                                                j.onnx_int8 or "-"])))
    return (_SCRIPT.replace("@PRECISION@", precision)
            .replace("@BATCHES@", " ".join(map(str, batches)))
            .replace("@JOBS@", "\n".join(rows)))


# -- the TensorRT Python API -------------------------------------------------------------------

def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from None
    return trt


def _logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to :mod:`logging` and keeps the errors for our messages."""

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _device_name() -> str | None:
    """The GPU's name (torch if present, else a Jetson's device-tree model), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    model = Path("/proc/device-tree/model")
    try:
        return model.read_text(errors="replace").rstrip("\x00").strip() or None
    except OSError:
        return None


def _build_one(trt: Any, logger: Any, data: bytes, source: Path, job: EngineJob, batch: int, precision: str,
               version: Version, workspace_mb: int) -> bytes:
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if version[0] < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(source)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "(no parser message)"
        raise TensorRTError(f"TensorRT {'.'.join(map(str, version))} cannot parse {source.name} ({job.stage}):\n"
                            f"  {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8") and version[0] < 11:  # int8: the QDQ layers in INT8, the rest in fp16
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and version[0] < 11:  # from 11 on a QDQ network is strongly typed: no flag
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise TensorRTError(f"{source.name}: input {tensor.name!r} has shape {dims}; only the batch axis may be "
                                "dynamic")
        shape = (batch, *dims[1:])
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    logger.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = "\n  ".join(logger.errors) or "see the TensorRT messages logged above"
        raise TensorRTError(f"TensorRT could not build {job.stage} (batch {batch}, {precision}):\n  {reason}")
    return bytes(plan)


def build_engines(bundle_dir: Path, precision: str = "fp16", batch_sizes: Sequence[int] = (1,), *,
                  include_gate: bool = False, workspace_mb: int = 1024) -> list[Path]:
    """Build one static-shape engine per stage and batch size with the TensorRT Python API.

    The bundle is verified first; each ONNX is checked against this TensorRT's parser before it
    is parsed. Engines are written atomically under ``engines/``, then the manifest records
    each one in its files table and in ``tensorrt.engines`` (stage, batch, precision, file,
    onnx, trt_version, device).
    """
    _check_precision(precision)
    batches = _check_batches(batch_sizes)
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise TensorRTError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    bundle = Bundle.open(bundle_dir)
    jobs = engine_jobs(bundle, include_gate=include_gate)
    if precision == "int8":  # its source files do not depend on the TensorRT version: checked before it is needed
        for job in jobs:
            job.onnx_for(0, precision)
    trt = _import_tensorrt()
    version = parse_trt_version(str(trt.__version__))
    if tuple(version[:2]) < MIN_TRT:
        raise TensorRTError(f"TensorRT {'.'.join(map(str, version))} is older than {MIN_TRT[0]}.{MIN_TRT[1]}, the "
                            "oldest edgeskip supports (LayerNormalization): update to JetPack 6 / TensorRT 8.6+")
    logger = _logger(trt)
    device = _device_name()
    log.info("TensorRT %s on %s: %s engines for %d stages x batch %s", ".".join(map(str, version)),
             device or "an unknown GPU", precision, len(jobs), list(batches))
    sources = {job.stage: job.onnx_for(version[0], precision) for job in jobs}
    problems = [p for rel in dict.fromkeys(sources.values())
                for p in _problems_of(bundle.file(rel), rel, version)]
    if problems:  # all files checked before anything is built
        lines = "\n  - ".join(problems)
        raise TensorRTError(f"the bundle will not build with TensorRT {'.'.join(map(str, version))}:\n  - {lines}")
    records: list[EngineRecord] = []
    written: list[Path] = []
    for job in jobs:
        rel = sources[job.stage]
        source = bundle.file(rel)
        data = source.read_bytes()
        for batch in batches:
            out_rel = engine_file(job.stage, batch, precision)
            plan = _build_one(trt, logger, data, source, job, batch, precision, version, workspace_mb)
            atomic_write_bytes(bundle.path / out_rel, plan)
            log.info("wrote %s (%d bytes)", out_rel, len(plan))
            written.append(bundle.path / out_rel)
            records.append(EngineRecord(stage=job.stage, batch=batch, precision=precision, file=out_rel, onnx=rel,
                                        trt_version=".".join(map(str, version)), device=device))
    _record_engines(bundle, records)
    return written


def _problems_of(path: Path, rel: str, version: Version) -> list[str]:
    return [f"{rel}: {p}" for p in check_onnx_for_tensorrt(onnx.load(str(path)), trt_version=version)]


def _record_engines(bundle: Bundle, records: list[EngineRecord]) -> None:
    """Add the engines to the manifest's files table and ``tensorrt.engines`` (the bundle's one write path)."""
    section = bundle.manifest.tensorrt or TensorRT(  # engines built from a bundle of another target's ONNX
        precision=records[0].precision, batch_sizes=tuple(sorted({r.batch for r in records})),
        note="engines built on the device by edgeskip build-engines")
    new = {r.file for r in records}
    engines = tuple(e for e in section.engines if e.file not in new) + tuple(records)
    update_manifest(bundle, add_files=sorted(new), tensorrt=dataclasses.replace(section, engines=engines))


def run_engine(engine_path: Path, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    """Run a serialized engine once on ``inputs`` (name -> array); returns every output by name.

    For tests and fidelity checks on a GPU machine: TensorRT's name-based API (8.6+:
    ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with torch CUDA buffers.
    Input dtypes must match the engine's (an fp16-I/O engine takes float16 arrays).
    """
    trt = _import_tensorrt()
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("run_engine needs torch with CUDA for its GPU buffers: install a CUDA build "
                                      "of torch (on Jetson, NVIDIA's JetPack wheel)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError("run_engine needs a CUDA GPU, and torch sees none (torch.cuda.is_available() "
                                      "is False)")
    logger = _logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise TensorRTError(f"{engine_path} does not deserialize with TensorRT {trt.__version__}: engines are tied to "
                            "the TensorRT version and GPU they were built with; rebuild it here")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if set(in_names) != set(inputs):
        raise TensorRTError(f"{Path(engine_path).name} takes inputs {sorted(in_names)}, got {sorted(inputs)}")
    keep = []  # device buffers must outlive the run
    for name in in_names:
        want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        arr = np.ascontiguousarray(inputs[name])
        if arr.dtype != want:
            raise TensorRTError(f"engine input {name!r} is {want}, got {arr.dtype}: cast it with .astype(np.{want})")
        t = torch.from_numpy(arr).cuda()
        context.set_input_shape(name, tuple(arr.shape))
        context.set_tensor_address(name, t.data_ptr())
        keep.append(t)
    outputs = {}
    for name in names:
        if name in in_names:
            continue
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        t = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                        device="cuda")
        context.set_tensor_address(name, t.data_ptr())
        outputs[name] = t
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise TensorRTError(f"TensorRT failed to run {Path(engine_path).name}; see the logged TensorRT errors")
    stream.synchronize()
    return {name: t.cpu().numpy() for name, t in outputs.items()}


class TensorRTExporter:
    """``tensorrt``: checks every stage's ONNX (fp32 and the fp16 copies of ``onnx-fp16``, which must run first)
    and the gate graph against TensorRT's parser rules, and writes ``tensorrt/build_engines.sh``; engines are
    built on the device (``edgeskip build-engines``), where TensorRT runs."""

    name = "tensorrt"

    def steps(self, stages: int, cfg: ExportConfig) -> int:
        return 1

    def __call__(self, job: FormatJob) -> FormatResult:
        missing = [s.name for s in job.stages if "onnx-fp16" not in job.files[s.name]]
        if missing:
            raise TensorRTError(f"the tensorrt exporter builds on the fp16 ONNX of onnx-fp16, which stages "
                                f"{', '.join(missing)} lack: run onnx-fp16 before it")
        for rel in [f for s in job.stages for f in job.files[s.name].values()] + ["onnx/gate.onnx"]:
            require_tensorrt_compatible(onnx.load(job.tmp / rel), rel)  # (agents run on the host)
        jobs = [EngineJob(s.name, job.files[s.name]["onnx"], job.files[s.name]["onnx-fp16"], s.input.name,
                          tuple(int(d) for d in s.input.shape[1:]), job.files[s.name].get("onnx-int8"))
                for s in job.stages]
        batch_sizes = parse_batch_sizes(job.cfg.batch_sizes)
        script = job.tmp / "tensorrt" / "build_engines.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(trtexec_script(jobs, batch_sizes, job.cfg.precision))
        script.chmod(0o755)
        job.step()
        section = TensorRT(precision=job.cfg.precision, batch_sizes=batch_sizes, script="tensorrt/build_engines.sh",
                           opset=17, note="engines are built on the device: 'edgeskip build-engines BUNDLE' or "
                                          "tensorrt/build_engines.sh")
        return FormatResult({}, {}, section)
