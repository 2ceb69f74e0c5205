"""The gate graph: the whole dynamic network as one ONNX model with an ``If`` per layer.

Built from the checked per-stage ONNX models (so it computes exactly what they compute):

* layer j with an agent: ``p = sigmoid(w_j . cls + b_j)``; ``If(max_batch(p) >= threshold_j)``
  runs the layer (then-branch) or passes the tokens through (else-branch, Identity);
* a layer without an agent (static model) runs unconditionally; removed layers are absent;
* an E²CM exit after layer j is checked only when layer j ran and the exit is enabled
  (threshold < 1): ``If`` computes ``top = max softmax(-d / mu)`` and the input leaves when
  ``min_batch(top) > T_i``; the rest of the network lives in the else-branch of that ``If``,
  so once an input has exited nothing after it is computed.

Inputs: ``images`` (B, C, H, W) float32. A batch shares one decision per layer: a layer runs
when any input's agent asks for it, and the batch exits only when every input is confident;
batch 1 is the exact per-input rule (the runtime does per-input gating in batches).
Outputs: ``logits`` (B, K) (at an E²CM exit ``-d_k / mu_k``, whose softmax is the class-mean
probability), ``executed`` (L,) bool per model layer, ``exit_layer`` int64 scalar: the layer
after which the input left, or -1 when the head classified it.

Thresholds are initialisers (``threshold_layer_NN``, ``threshold_exit_NN``) so a new
configuration only rewrites them (:func:`set_thresholds`); a layer threshold above 1 never
fires (the layer is skipped), an exit threshold of 1 disables that exit and its check.
Every ``If`` has a 0-D bool condition and branches with equal output shapes (TensorRT's rules).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeskip.bundle import stage_name
from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError
from edgeskip.runtimes.gate import (
    DISABLED_LAYER,
    GATE_INPUT,
    exit_threshold_name,
    layer_threshold_name,
)

__all__ = ["build_gate_graph"]

class _Builder:
    """Names tensors and keeps each initialiser in the (sub)graph that uses it.

    Weights live inside the branch that reads them, not in the main graph: onnxruntime hands
    every outer-scope value an ``If`` branch touches to it as an implicit input on each call,
    and with the rest of the network nested under each exit that cost grew with depth
    (measured here: +33% on vit9 with eight exits, against +5% for the gate graph alone).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        self.cfg = cfg
        self.scopes: list[list[onnx.TensorProto]] = [[]]
        self._ids = itertools.count()

    @contextlib.contextmanager
    def scope(self) -> Iterator[list[onnx.TensorProto]]:
        """Initialisers created inside the block belong to one branch graph."""
        self.scopes.append([])
        try:
            yield self.scopes[-1]
        finally:
            self.scopes.pop()

    def name(self, stem: str) -> str:
        return f"{stem}__{next(self._ids)}"

    def const(self, stem: str, value: Any, dtype: Any = np.float32) -> str:
        return self.init(self.name(stem), value, dtype)

    def init(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.scopes[-1].append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def inline(self, model: onnx.ModelProto, prefix: str, source: str) -> tuple[list[onnx.NodeProto], str]:
        """Nodes of a one-input stage model reading ``source``; returns (nodes, output name)."""
        graph = onnx.compose.add_prefix_graph(model.graph, f"{prefix}/")
        self.scopes[-1].extend(graph.initializer)
        (inp,), (out,) = graph.input, graph.output
        nodes = [helper.make_node("Identity", [source], [inp.name])] + list(graph.node)
        return nodes, out.name


def _tokens_info(name: str, cfg: ViTConfig) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", cfg.num_tokens, cfg.width])


def _branch(name: str, nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto],
            inits: Sequence[onnx.TensorProto] = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], outputs, initializer=list(inits))


def build_gate_graph(
    embed: onnx.ModelProto,
    layers: Mapping[int, onnx.ModelProto],
    head: onnx.ModelProto,
    cfg: ViTConfig,
    *,
    agents: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
    thresholds: Sequence[float | None] | None = None,
    e2cm: Any | None = None,
) -> onnx.ModelProto:
    """Compose the gate graph. ``layers`` maps the non-removed layer indices to their ONNX models;
    ``agents`` is (weights (L, D), biases (L,)) with per-layer ``thresholds`` (None = removed);
    ``e2cm`` an :class:`~edgeskip.e2cm.E2CM` whose exits are expressed in the graph."""
    depth = cfg.depth
    if agents is not None and (thresholds is None or len(thresholds) != depth):
        raise ConfigError(f"a gate graph with agents needs {depth} thresholds")
    b = _Builder(cfg)
    exit_index = {layer: i for i, layer in enumerate(e2cm.exits)} if e2cm is not None else {}
    if agents is not None and thresholds is not None:
        for j in layers:
            t = thresholds[j]
            b.init(layer_threshold_name(j), DISABLED_LAYER if t is None else t)
    if e2cm is not None:
        for i in range(len(e2cm.exits)):
            b.init(exit_threshold_name(i), e2cm.thresholds[i])
    zero_idx = b.const("zero_index", 0, np.int64)
    one = b.const("one", 1.0)

    nodes, x = b.inline(embed, "embed", GATE_INPUT)
    seg_nodes, logits, executed, exit_layer = _segment(b, 0, x, layers, head, agents, exit_index,
                                                       e2cm, zero_idx, one)
    nodes += seg_nodes
    nodes += [helper.make_node("Identity", [logits], ["logits"]),
              helper.make_node("Identity", [executed], ["executed"]),
              helper.make_node("Identity", [exit_layer], ["exit_layer"])]
    graph = helper.make_graph(
        nodes, "edgeskip_gate",
        [helper.make_tensor_value_info(GATE_INPUT, TensorProto.FLOAT,
                                       ["batch", cfg.in_channels, cfg.image_size, cfg.image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.num_classes]),
         helper.make_tensor_value_info("executed", TensorProto.BOOL, [depth]),
         helper.make_tensor_value_info("exit_layer", TensorProto.INT64, [])],
        initializer=b.scopes[0],
    )
    model = helper.make_model(graph, opset_imports=list(embed.opset_import), producer_name="edgeskip")
    model.ir_version = embed.ir_version
    return model


def _segment(b: _Builder, start: int, x: str, layers: Mapping[int, onnx.ModelProto], head: onnx.ModelProto,
             agents: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None, exit_index: Mapping[int, int],
             e2cm: Any, zero_idx: str, one: str) -> tuple[list[onnx.NodeProto], str, str, str]:
    """Nodes for layers ``start..L-1`` and the head; returns (nodes, logits, executed (L-start,), exit_layer)."""
    cfg, nodes, flags = b.cfg, list[onnx.NodeProto](), list[str]()
    for j in range(start, cfg.depth):
        if j not in layers:  # removed at export: absent from the graph
            flags.append(b.const(f"removed_{j:02d}", [False], np.bool_))
            continue
        if agents is not None:
            cond = _agent_condition(b, nodes, j, x, zero_idx, agents)
            out = b.name(f"x{j + 1:02d}")
            then_out, else_out = b.name(f"{stage_name(j)}_ran"), b.name(f"{stage_name(j)}_skipped")
            with b.scope() as inits:
                layer_nodes, y = b.inline(layers[j], stage_name(j), x)
            then_g = _branch(f"run_{stage_name(j)}", layer_nodes + [helper.make_node("Identity", [y], [then_out])],
                             [_tokens_info(then_out, cfg)], inits)
            else_g = _branch(f"skip_{stage_name(j)}", [helper.make_node("Identity", [x], [else_out])],
                             [_tokens_info(else_out, cfg)])
            nodes.append(helper.make_node("If", [cond], [out], name=f"gate_{stage_name(j)}",
                                          then_branch=then_g, else_branch=else_g))
            flag = b.name(f"ran_{j:02d}")
            nodes.append(helper.make_node("Reshape", [cond, b.const("shape1", [1], np.int64)], [flag]))
        else:
            layer_nodes, out = b.inline(layers[j], stage_name(j), x)
            nodes += layer_nodes
            flag = b.const(f"ran_{j:02d}", [True], np.bool_)
        flags.append(flag)
        x = out
        if j in exit_index:
            return _exit(b, nodes, flags, start, j, x, flag, layers, head, agents, exit_index, e2cm, zero_idx, one)
    head_nodes, logits = b.inline(head, "head", x)
    nodes += head_nodes
    executed = b.name(f"executed_from_{start:02d}")
    nodes.append(helper.make_node("Concat", flags, [executed], axis=0))
    return nodes, logits, executed, b.const("head_exit", -1, np.int64)


def _decision_input(b: _Builder, x: str, out: str, zero_idx: str | None = None) -> list[onnx.NodeProto]:
    """Nodes writing to ``out`` the (B, D) vector the agents and the ``cls`` feature read from tokens ``x``: the
    CLS token, or the mean of CLS and distillation tokens (:func:`edgeskip.rule.decision_input`)."""
    if b.cfg.decision_token == "cls":
        return [helper.make_node("Gather", [x, zero_idx or b.const("zero_index", 0, np.int64)], [out], axis=1)]
    pair = b.name("cls_dist")
    starts, ends, axes = (b.const(stem, [v], np.int64) for stem, v in (("start", 0), ("end", 2), ("axis", 1)))
    return [helper.make_node("Slice", [x, starts, ends, axes], [pair]),
            helper.make_node("ReduceMean", [pair], [out], axes=[1], keepdims=0)]


def _agent_condition(b: _Builder, nodes: list[onnx.NodeProto], j: int, x: str, zero_idx: str,
                     agents: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]) -> str:
    """0-D bool: the largest agent probability in the batch reaches layer j's threshold."""
    b.init(f"agent_{j:02d}/weight", agents[0][j].reshape(-1, 1))
    b.init(f"agent_{j:02d}/bias", agents[1][j].reshape(1))
    cls, z, zb, p, pmax, cond = (b.name(f"agent_{j:02d}/{s}") for s in ("cls", "matmul", "logit", "prob", "max", "run"))
    nodes += _decision_input(b, x, cls, zero_idx) + [
        helper.make_node("MatMul", [cls, f"agent_{j:02d}/weight"], [z]),
        helper.make_node("Add", [z, f"agent_{j:02d}/bias"], [zb]),
        helper.make_node("Sigmoid", [zb], [p]),
        helper.make_node("ReduceMax", [p], [pmax], keepdims=0),
        helper.make_node("GreaterOrEqual", [pmax, layer_threshold_name(j)], [cond]),
    ]
    return cond


def _exit(b: _Builder, nodes: list[onnx.NodeProto], flags: list[str], start: int, j: int, x: str, ran: str,
          layers: Mapping[int, onnx.ModelProto], head: onnx.ModelProto,
          agents: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None, exit_index: Mapping[int, int],
          e2cm: Any, zero_idx: str, one: str) -> tuple[list[onnx.NodeProto], str, str, str]:
    """The E²CM exit after layer j: check (only if layer j ran and the exit is enabled), then
    leave with class-mean logits or continue with the rest of the network in the else-branch."""
    cfg, i = b.cfg, exit_index[j]
    k = cfg.num_classes
    enabled, check = b.name(f"exit_{i:02d}/enabled"), b.name(f"exit_{i:02d}/check")
    nodes.append(helper.make_node("Less", [exit_threshold_name(i), one], [enabled]))
    if agents is not None:
        ran_scalar = b.name(f"ran_{j:02d}_scalar")
        nodes.append(helper.make_node("Reshape", [ran, b.const("scalar", [], np.int64)], [ran_scalar]))
        nodes.append(helper.make_node("And", [ran_scalar, enabled], [check]))
    else:
        check = enabled
    # check branch: distances, top probability, leave?  else: no check, never leave
    with b.scope() as check_inits:
        means = e2cm.means[i].astype(np.float32)
        b.init(f"exit_{i:02d}/means_t", np.ascontiguousarray(means.T))
        b.init(f"exit_{i:02d}/means_sq", (means.astype(np.float64) ** 2).sum(-1))
        b.init(f"exit_{i:02d}/inv_mu", 1.0 / e2cm.normalisers[i].astype(np.float64))
        then_nodes, leave_t, logits_t = _distances(b, i, x, e2cm.feature)
    shape, batch_k = b.name(f"exit_{i:02d}/batch"), b.name(f"exit_{i:02d}/batch_k")
    leave_f, logits_f = b.name(f"exit_{i:02d}/no_leave"), b.name(f"exit_{i:02d}/no_logits")
    with b.scope() as skip_inits:
        else_nodes = [
            helper.make_node("Shape", [x], [shape], start=0, end=1),
            helper.make_node("Concat", [shape, b.const("k", [k], np.int64)], [batch_k], axis=0),
            helper.make_node("ConstantOfShape", [batch_k], [logits_f],
                             value=numpy_helper.from_array(np.zeros(1, np.float32))),
            helper.make_node("Identity", [b.const("false", False, np.bool_)], [leave_f]),
        ]
    leave, exit_logits = b.name(f"exit_{i:02d}/leave"), b.name(f"exit_{i:02d}/logits")
    leave_info = lambda n: helper.make_tensor_value_info(n, TensorProto.BOOL, [])  # noqa: E731
    logits_info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", k])  # noqa: E731
    nodes.append(helper.make_node(
        "If", [check], [leave, exit_logits], name=f"check_exit_{i:02d}",
        then_branch=_branch(f"check_exit_{i:02d}", then_nodes, [leave_info(leave_t), logits_info(logits_t)],
                            check_inits),
        else_branch=_branch(f"no_check_exit_{i:02d}", else_nodes, [leave_info(leave_f), logits_info(logits_f)],
                            skip_inits),
    ))
    # leave: class-mean logits, no later layer ran; stay: the rest of the network
    tail = cfg.depth - j - 1
    out_l, out_e, out_x = (b.name(f"exit_{i:02d}/{s}") for s in ("left_logits", "left_executed", "left_exit"))
    with b.scope() as leave_inits:
        leave_nodes = [
            helper.make_node("Identity", [exit_logits], [out_l]),
            helper.make_node("Identity", [b.const("none_ran", np.zeros(tail, bool), np.bool_)], [out_e]),
            helper.make_node("Identity", [b.const("exit_here", j, np.int64)], [out_x]),
        ]
    then_g = _branch(f"leave_exit_{i:02d}", leave_nodes, [
        logits_info(out_l), helper.make_tensor_value_info(out_e, TensorProto.BOOL, [tail]),
        helper.make_tensor_value_info(out_x, TensorProto.INT64, [])], leave_inits)
    with b.scope() as rest_inits:
        rest_nodes, rest_logits, rest_executed, rest_exit = _segment(b, j + 1, x, layers, head, agents, exit_index,
                                                                     e2cm, zero_idx, one)
    in_l, in_e, in_x = (b.name(f"exit_{i:02d}/{s}") for s in ("stay_logits", "stay_executed", "stay_exit"))
    rest_nodes += [helper.make_node("Identity", [rest_logits], [in_l]),
                   helper.make_node("Identity", [rest_executed], [in_e]),
                   helper.make_node("Identity", [rest_exit], [in_x])]
    else_g = _branch(f"continue_after_{stage_name(j)}", rest_nodes, [
        logits_info(in_l), helper.make_tensor_value_info(in_e, TensorProto.BOOL, [tail]),
        helper.make_tensor_value_info(in_x, TensorProto.INT64, [])], rest_inits)
    logits, tail_exec, exit_layer = (b.name(f"after_exit_{i:02d}/{s}") for s in ("logits", "executed", "exit"))
    nodes.append(helper.make_node("If", [leave], [logits, tail_exec, exit_layer], name=f"exit_{i:02d}",
                                  then_branch=then_g, else_branch=else_g))
    executed = b.name(f"executed_from_{start:02d}")
    nodes.append(helper.make_node("Concat", flags + [tail_exec], [executed], axis=0))
    return nodes, logits, executed, exit_layer


def _distances(b: _Builder, i: int, x: str, feature: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes computing (leave, -d/mu) at exit i from the tokens ``x`` (float32 throughout)."""
    n = lambda s: b.name(f"exit_{i:02d}/{s}")  # noqa: E731
    f, xc, x2, d2a, d2b, d2, pos, d, dn, dmin, diff, e, s, top, tmin, leave, logits = (n(stem) for stem in (
        "feature", "dot", "sq", "d2a", "d2b", "d2", "d2_pos", "dist", "dist_norm", "dmin", "diff", "exp", "sum",
        "top", "top_min", "leave", "neg_dist"))
    if feature == "tokens":
        feat = [helper.make_node("Flatten", [x], [f], axis=1)]
    elif feature == "cls":
        feat = _decision_input(b, x, f)
    else:
        feat = [helper.make_node("ReduceMean", [x], [f], axes=[1], keepdims=0)]
    t = exit_threshold_name(i)
    nodes = feat + [
        # d^2 = |x|^2 - 2 x.c + |c|^2, clamped at 0, then d / mu
        helper.make_node("MatMul", [f, f"exit_{i:02d}/means_t"], [xc]),
        helper.make_node("ReduceSumSquare", [f], [x2], axes=[1], keepdims=1),
        helper.make_node("Mul", [xc, b.const("minus_two", -2.0)], [d2a]),
        helper.make_node("Add", [d2a, x2], [d2b]),
        helper.make_node("Add", [d2b, f"exit_{i:02d}/means_sq"], [d2]),
        helper.make_node("Relu", [d2], [pos]),
        helper.make_node("Sqrt", [pos], [d]),
        helper.make_node("Mul", [d, f"exit_{i:02d}/inv_mu"], [dn]),
        # top = max softmax(-d) = 1 / sum_k exp(d_min - d_k)
        helper.make_node("ReduceMin", [dn], [dmin], axes=[1], keepdims=1),
        helper.make_node("Sub", [dmin, dn], [diff]),
        helper.make_node("Exp", [diff], [e]),
        helper.make_node("ReduceSum", [e, b.const("axis1", [1], np.int64)], [s], keepdims=1),
        helper.make_node("Reciprocal", [s], [top]),
        helper.make_node("ReduceMin", [top], [tmin], keepdims=0),
        helper.make_node("Greater", [tmin, t], [leave]),
        helper.make_node("Neg", [dn], [logits]),
    ]
    return nodes, leave, logits
