"""``edgeskip.Runtime``: what an on-device application embeds (numpy + one backend, never torch).

::

    rt = edgeskip.Runtime("bundle/", backend="onnxruntime", policy="agent")
    out = rt(images)          # uint8 HWC/NHWC or normalised float CHW/NCHW; one image or a batch
    out.logits, out.labels, out.class_names, out.executed, out.exit_layer, out.latency_ms
    rt.set_policy("static")   # switch configuration: no reload
    rt.stats()                # inputs, executed-layer and exit histograms, paths, latency percentiles

Execution (``graph="stages"``, the default): embed, then the decision rule of
:mod:`edgeskip.rule` drives the stages: for each layer the agent decides per input on the host
(``sigmoid(w . cls + b) >= t`` taken as one comparison of the logit), the rows that run are
gathered, the backend runs the layer on them alone and they are scattered back; after a layer
with an enabled E²CM exit, the rows that ran it are checked and the confident ones leave with the
class-mean logits ``-d / mu``; the rest go on, and the head classifies whoever is left. One input and a batch
give the same decisions (logits equal up to float rounding of batched matrix products), except through layers
whose format is ``batch_dependent`` (dynamic INT8: activations quantized over each call's rows), where an
input's logits shift slightly with the other rows of its call.

Precision per layer: a policy's ``precisions`` (``Policy.config(..., precisions=["int8", "fp32", ...])``)
runs each layer in that precision where the bundle holds it (``rt.precisions``: an ``--int8`` bundle's
onnxruntime backend runs int8 and fp32). A layer in another precision than the backend's own is loaded
the first time a policy asks for it and kept, so switching back and forth reloads nothing.

``graph="gate"`` runs ``onnx/gate.onnx`` (onnxruntime only) one input at a time instead.

Each configuration runs on one execution path (``rt.path``): ``monolithic`` (a static plan: the
bundle's whole model in one backend call), ``gate`` (the gate graph for one input, the stage loop for
a batch) or ``stages``. A Pareto point carries the path its search predicted fastest from the device's
profile (:meth:`edgeskip.search.costs.ProfileCosts.paths`); :meth:`Runtime.select`, policy ``default``
and ``set_policy(point.policy, path=point.path)`` follow it. Without one, a static plan runs the
monolithic model and any other the stage loop.

Errors (all :class:`~edgeskip.errors.EdgeskipError`): a bad input raises
:class:`~edgeskip.errors.InputError`, a bad bundle :class:`~edgeskip.bundle.BundleError`, a
bad policy or option :class:`~edgeskip.errors.ConfigError`, an unknown backend
:class:`~edgeskip.errors.UnknownNameError`, a backend whose SDK is missing
:class:`~edgeskip.errors.BackendUnavailableError`, a failure inside a backend
:class:`~edgeskip.errors.BackendError`. After any of them the Runtime stays usable; the
Runtime never writes to the bundle.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle, BundleError, check_signature, stage_name
from edgeskip.e2cm.means import E2CM, JSON as E2CM_JSON, NPZ as E2CM_NPZ, check_token
from edgeskip.errors import BackendError, ConfigError, DataError, EdgeskipError
from edgeskip.manifest import PATHS
from edgeskip.front import Selection, check_degenerate, front_of, load_front, pick
from edgeskip.policy import Plan, Policy, SkipConfig, resolve
from edgeskip.rule import decision_input, exit_logits, exit_top, route
from edgeskip.runtimes.backend import BACKENDS, Backend
from edgeskip.runtimes.inputs import InputSpec, prepare
from edgeskip.runtimes.telemetry import RuntimeStats, Telemetry, path_string
from edgeskip.signing import KeyLike

log = logging.getLogger(__name__)

__all__ = ["Runtime", "RuntimeOutput", "GRAPHS"]

GRAPHS = ("stages", "gate")


@dataclasses.dataclass(frozen=True)
class RuntimeOutput:
    """What one call returns, one row per input."""

    logits: npt.NDArray[np.float32]  # (B, K); at an E²CM exit the class-mean logits -d/mu
    labels: npt.NDArray[np.intp]  # (B,) argmax of the logits
    executed: npt.NDArray[np.bool_]  # (B, L), read-only: layer j ran for input b
    exit_layer: npt.NDArray[np.int64]  # (B,), read-only: the layer after which the input left; -1 = the head
    latency_ms: float  # the whole call, input preparation included
    classes: tuple[str, ...] = ()  # the bundle's class names, index = label (Runtime.classes)

    @property
    def class_names(self) -> list[str]:
        """The predicted class of each input by name, e.g. ``['cat', 'ship']``."""
        return [self.classes[i] for i in self.labels.tolist()]

    def paths(self) -> list[str]:
        """One bit string per input, e.g. '110101101' (1 = layer ran)."""
        return [path_string(row) for row in self.executed]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Runtime:
    """Runs a bundle with per-input layer skipping and/or early exits.

    ``backend``: a registered backend name (``edgeskip.runtimes.BACKENDS``: onnxruntime, tflite,
    tensorrt, torch) or a :class:`~edgeskip.runtimes.backend.Backend` subclass. ``policy``: a name
    (auto, static, agent, e2cm, agent+e2cm), a :class:`Policy` or a SkipConfig. ``graph``:
    ``stages`` (per-stage loop, per-input decisions inside a batch) or ``gate`` (the ONNX gate graph,
    one input at a time). ``verify``: check every file's size and sha256 before loading (default);
    ``False`` skips the files the runtime does not load (those it loads are checked as they are read).
    ``whole_static``: a policy without decisions (``static``) runs the bundle's monolithic model in one
    backend call where the backend has one (onnxruntime: ``onnx/model.onnx``; measured 2-5% over a bare
    session at batch 1 against the per-stage loop's 1-16%, and about 15% less than the loop at batch 64
    in some runs; it loads a second copy of the weights the first time a static policy is used).
    ``fuse``: run each decision-free segment of a plan (two or more consecutive layers that always run, no
    exit checked before the last; :attr:`edgeskip.policy.Plan.segments`) as one backend call where the backend
    can (onnxruntime: one session per segment, made when the policy is set and cached; it holds its own copy of
    the segment's weights); ``rt.fused`` lists them. Same decisions, same logits up to float rounding.
    ``path``: the execution path of the policy (see :meth:`set_policy`; a Pareto point's ``path``).
    ``trusted_keys``: ed25519 public keys (paths, PEM, or ``ed25519:...`` text; see :mod:`edgeskip.signing`): the
    bundle must then be signed by one of them (``edgeskip sign``), checked over the manifest's exact bytes before
    anything in it is parsed; an unsigned bundle or another signer is a :class:`~edgeskip.signing.SignatureError`.
    Further keyword options go to the backend (e.g. ``threads``, ``thread_pool``, ``precision``).
    """

    def __init__(self, bundle: str | Path | Bundle, backend: str | type[Backend] = "onnxruntime",
                 policy: str | Policy | SkipConfig = "auto", *, graph: str = "stages", verify: bool = True,
                 whole_static: bool = True, fuse: bool = True, trusted_keys: Iterable[KeyLike] | None = None,
                 path: str | None = None, **backend_options: Any) -> None:
        if isinstance(bundle, Bundle):
            if trusted_keys is not None:
                check_signature(bundle.path, bundle.manifest_bytes, trusted_keys)
            self.bundle = bundle
        else:
            self.bundle = Bundle.open(bundle, verify=verify, trusted_keys=trusted_keys)
        m = self.manifest = self.bundle.manifest
        if graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
        self.graph = graph
        self.depth, self.num_classes = m.config.depth, m.config.num_classes
        self._layer_names = [stage_name(j) for j in range(self.depth)]
        self.input_spec = InputSpec.from_manifest(m.preprocessing, m.config.image_size, m.config.in_channels,
                                                  m.normalization)
        self._agents = self._load_agents()
        self._e2cm = self._load_e2cm()
        plan = resolve(policy, m)
        self._gate = None
        self._backend: Backend | None = None
        self._whole_static = whole_static
        self._fuse = fuse
        self._static_runner: Any = None
        self._gate_options = backend_options
        if graph == "gate":
            if backend not in ("onnxruntime",):
                raise ConfigError("graph='gate' runs the ONNX gate graph, which needs backend='onnxruntime'")
            from edgeskip.runtimes.gate import GateGraph  # parses ONNX protobufs: loaded only for the gate graph

            self._gate = GateGraph(self.bundle, **backend_options)
            self.backend_info = {"backend": "onnxruntime", "graph": "gate", "thread_pool": self._gate.pool,
                                 "threads": self._gate.threads, "providers": list(self._gate.providers)}
        else:
            cls = _backend_class(backend)
            stages = ["embed", *(self._layer_names[j] for j in range(self.depth) if j not in m.removed), "head"]
            self._backend = cls(self.bundle, stages, **backend_options)
            self.backend_info = {**self._backend.info(), "graph": "stages"}
        # the plan, its fused segments and its path, read together by a call
        self._routing = self._route(plan, path)
        self._telemetry = Telemetry(self.depth)
        self._closed = False

    def _load_agents(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        section = self.manifest.agents
        if section is None:
            return None
        path = f"{self.bundle.path}: {section.file}"
        data = self.bundle.read(section.file)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                w, b = npz["weights"].astype(np.float32), npz["biases"].astype(np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{path}: unreadable agent parameters ({exc})") from None
        cfg = self.manifest.config
        if w.shape != (cfg.depth, cfg.width) or b.shape != (cfg.depth,):
            raise BundleError(f"{path}: agent weights {w.shape} / biases {b.shape} do not fit a "
                              f"{cfg.depth}-layer, width-{cfg.width} model")
        return w, b

    def _load_e2cm(self) -> E2CM | None:
        section = self.manifest.e2cm
        if section is None:
            return None
        where = f"{self.bundle.path}: {section.dir}"
        try:
            e2cm = E2CM.from_bytes(self.bundle.read(f"{section.dir}/{E2CM_JSON}"),
                                   self.bundle.read(f"{section.dir}/{E2CM_NPZ}"), where)
        except DataError as exc:
            raise BundleError(str(exc)) from None
        if e2cm.exits != section.exits or e2cm.means.shape[1] != self.num_classes:
            raise BundleError(f"{where}: the E²CM exits {list(e2cm.exits)} disagree with the manifest's "
                              f"{list(section.exits)} or do not fit a {self.num_classes}-class model")
        try:
            check_token(e2cm, self.manifest.config)
        except ConfigError as exc:
            raise BundleError(f"{where}: {exc}") from None
        return e2cm

    # -- configuration -------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, index = label, as the model was trained (``out.class_names`` uses them)."""
        return self.manifest.classes

    @property
    def policy(self) -> Policy:
        return self._routing.plan.policy

    @property
    def plan(self) -> Plan:
        """The current policy resolved against the bundle (what the next call follows)."""
        return self._routing.plan

    @property
    def static_in_one_call(self) -> bool:
        """Whether a static policy runs the bundle's monolithic model in one backend call (else the stage loop)."""
        return self._static_runner is not None

    @property
    def backend(self) -> Backend | None:
        """The backend running the stages (None with ``graph="gate"``)."""
        return self._backend

    @property
    def gate(self) -> Any:
        """The gate-graph runner with ``graph="gate"``, else None."""
        return self._gate

    @property
    def agents(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        """Agent weights (L, D) and biases (L,), or None for a model without agents."""
        return self._agents

    @property
    def e2cm(self) -> E2CM | None:
        """The bundle's E²CM exits, or None."""
        return self._e2cm

    def set_policy(self, policy: str | Policy | SkipConfig, *, path: str | None = None) -> None:
        """Switch to another policy or configuration (e.g. a cheaper Pareto point); no reload.

        ``path``: the execution path to run it on (:data:`edgeskip.manifest.PATHS`; a Pareto point's ``path``);
        None: the bundle's default configuration's recorded path for policy ``default``, else the monolithic model
        for a static plan and the stage loop for any other. Calls already running finish under the policy they started with.
        """
        plan = resolve(policy, self.manifest)
        self._routing = self._route(plan, path)  # one assignment: a call reads plan, fusions and path together

    def _route(self, plan: Plan, path: str | None) -> _Routing:
        names = self._names(plan)
        mixed = names != self._layer_names
        chosen = self._path_of(plan, path, mixed)
        if chosen == "gate":
            self._configure_gate(plan)
        return _Routing(plan, {} if chosen == "monolithic" else self._fusions(plan, names), chosen, names)

    def _names(self, plan: Plan) -> list[str]:
        """The backend's name for each layer in the plan's precision (its own stage where none is given)."""
        if not plan.precisions:
            return self._layer_names
        if self._backend is None:
            if any(p not in (None, "fp32") for p in plan.precisions):
                raise ConfigError("the gate graph runs every layer in fp32: per-layer precisions need graph='stages'")
            return self._layer_names
        names = list(self._layer_names)
        for j, p in enumerate(plan.precisions):
            if p is None or plan.layer_thresholds[j] is None:
                continue
            name = self._backend.variant(names[j], p)
            if name is None:
                raise ConfigError(f"backend {self.backend_info.get('backend')!r} cannot run layer {j} in {p}: it runs "
                                  f"this bundle's layers in {', '.join(self.precisions)}")
            names[j] = name
        return names

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this Runtime can run each layer in (a policy's ``precisions``), its backend's own first."""
        return self._backend.precisions() if self._backend is not None else ("fp32",)

    def _path_of(self, plan: Plan, path: str | None, mixed: bool = False) -> str:
        """The path ``plan`` runs on: ``path`` checked, else the default (see :meth:`set_policy`); ``mixed``: some
        layer runs in another precision than the backend's own (neither the monolithic model nor the gate graph)."""
        if self.graph == "gate":
            if path not in (None, "gate"):
                raise ConfigError(f"a Runtime made with graph='gate' runs the gate graph only, not path {path!r}")
            return "gate"
        if path is None:
            fallback = "monolithic" if self._whole_static and not mixed and self._monolithic_ok(plan) else "stages"
            recorded = self.manifest.default_config.path if self.manifest.default_config is not None else None
            if plan.policy.name == "default" and recorded is not None:
                why = self._path_refused(plan, recorded, mixed)
                if why is None:
                    return recorded
                log.info("the bundle's default configuration was chosen for path %r, which %s: it runs on path %r",
                         recorded, why, fallback)
            return fallback
        if path not in PATHS:
            raise ConfigError(f"unknown execution path {path!r}; choose one of {', '.join(PATHS)}")
        why = self._path_refused(plan, path, mixed)
        if why is not None:
            raise ConfigError(f"this Runtime cannot run path {path!r}: {why}")
        return path

    def _monolithic_ok(self, plan: Plan) -> bool:
        """Whether ``plan`` can run as the backend's monolithic model (loaded here on first need)."""
        if not plan.static or self._backend is None:
            return False
        if self._static_runner is None:
            self._static_runner = self._backend.static_runner()
        return self._static_runner is not None

    def _path_refused(self, plan: Plan, path: str, mixed: bool = False) -> str | None:
        """Why this Runtime cannot run ``plan`` (``mixed``: in other precisions than the backend's) on ``path``."""
        if path in ("monolithic", "gate") and mixed:
            return f"the {path} path runs every layer in the backend's own precision, not per-layer precisions"
        if path == "monolithic" and not self._monolithic_ok(plan):
            return ("only a static plan runs as the monolithic model" if not plan.static else
                    f"backend {self.backend_info.get('backend')!r} has no monolithic model of this bundle")
        if path == "gate":
            info = self.backend_info
            if self.manifest.gate is None:
                return "the bundle has no gate graph"
            if info.get("backend") != "onnxruntime" or info.get("format") != "onnx":
                return "the gate graph runs on the fp32 onnxruntime backend only"
            removed = set(self.manifest.removed)
            if self.manifest.agents is None and any(
                    t != 0.0 for j, t in enumerate(plan.layer_thresholds) if j not in removed):
                return "the gate graph has no agents to skip a layer by"
        return None

    def select(self, *, budget_ms: float | None = None, budget_mj: float | None = None,
               max_loss_points: float | None = None, device: str = "cpu", pareto: str | Path | None = None,
               allow_degenerate: bool = False) -> Selection:
        """Switch to the most accurate configuration of ``edgeskip search``'s front for ``device`` within the
        budget, or to the fastest within ``max_loss_points`` of static (one standard error included; see
        :func:`edgeskip.front.cheapest_within`), with no reload, and return the
        :class:`~edgeskip.front.Selection`. Nothing is written: make it the
        bundle's default with ``edgeskip select`` or :func:`edgeskip.search.select.record_selection`. A
        degenerate choice (no layer run, or within 2 points of chance) raises
        :class:`~edgeskip.front.Degenerate` unless ``allow_degenerate``."""
        front = load_front(front_of(self.bundle, device, pareto), fingerprint=self.manifest.fingerprint, device=device)
        chosen = pick(front, budget_ms=budget_ms, budget_mj=budget_mj, max_loss_points=max_loss_points)
        check_degenerate(chosen, self.num_classes, allow=allow_degenerate)
        self.set_policy(chosen.policy, path=chosen.point.path)
        return chosen

    def _fusions(self, plan: Plan, names: list[str]) -> dict[int, tuple[str, frozenset[int]]]:
        """First layer -> (the backend's fused stage, the later layers it covers) for each decision-free segment
        of ``plan`` the backend can fuse (``fuse=True``; a static plan on the monolithic model needs none)."""
        backend = self._backend
        if not self._fuse or backend is None:
            return {}
        out = {}
        for segment in plan.segments:
            name = backend.fuse([names[j] for j in segment])
            if name is not None:
                out[segment[0]] = (name, frozenset(segment[1:]))
        return out

    @property
    def fused(self) -> tuple[tuple[int, ...], ...]:
        """The layer segments the current plan runs as one backend call each (fused), in order."""
        fused = self._routing.fused
        return tuple((first, *sorted(rest)) for first, (_, rest) in sorted(fused.items()))

    def _configure_gate(self, plan: Plan) -> None:
        if self._gate is None:  # the stage backend's Runtime runs the gate graph for single inputs of this plan
            from edgeskip.runtimes.gate import GateGraph  # parses ONNX protobufs: loaded only for the gate graph

            self._gate = GateGraph(self.bundle, **{k: v for k, v in self._gate_options.items()
                                                   if k in GateGraph.OPTIONS})
        self._gate.configure(dict(enumerate(plan.layer_thresholds)), plan.exit_thresholds)

    # -- running ---------------------------------------------------------------------------------

    def __call__(self, images: Any) -> RuntimeOutput:
        """Classify one image or a batch (see :mod:`edgeskip.runtimes.inputs` for what is accepted)."""
        if self._closed:
            raise EdgeskipError("this Runtime is closed")
        start = time.perf_counter()
        x = prepare(images, self.input_spec)
        plan, fused, path, names = self._routing  # one read: a concurrent set_policy does not change this call midway
        if path == "gate" and (self._backend is None or x.shape[0] == 1):
            logits, executed, exit_layer = self._run_gate(x)
        else:
            logits, executed, exit_layer = self._run_stages(x, plan, fused, path, names)
        executed.flags.writeable = False  # read-only: the telemetry keeps them until it counts them
        exit_layer.flags.writeable = False  # (a no-op on the shared, already read-only arrays)
        latency_ms = (time.perf_counter() - start) * 1e3
        self._telemetry.record(executed, exit_layer, latency_ms)
        return RuntimeOutput(logits, logits.argmax(axis=1), executed, exit_layer, latency_ms, self.classes)

    def _run_stages(self, x: npt.NDArray[np.float32], plan: Plan, fused: dict[int, tuple[str, frozenset[int]]],
                    path: str, names: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        backend = self._backend
        assert backend is not None
        b = x.shape[0]
        if path == "monolithic":
            return self._static_runner(x), np.broadcast_to(plan.static_row, (b, self.depth)), _no_exits(b)
        net = _Stages(backend, backend.run("embed", x), names, self._agents, self._e2cm, fused,
                      self.manifest.config.decision_token)
        taken = route(plan.cuts, plan.exits, b, self.depth, net)
        logits = taken.logits(lambda: backend.run("head", net.tokens), self.num_classes)
        return logits, taken.executed, taken.exit_layer if taken.left else _no_exits(b)

    def _run_gate(self, x: npt.NDArray[np.float32]) -> tuple[
            npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        assert self._gate is not None
        b = x.shape[0]
        logits = np.empty((b, self.num_classes), np.float32)
        executed = np.zeros((b, self.depth), bool)
        exit_layer = np.full(b, -1, np.int64)
        for r in range(b):
            lg, ex, xl = self._gate.run(x[r:r + 1])
            logits[r], executed[r], exit_layer[r] = lg[0], ex, xl
        return logits, executed, exit_layer

    # -- telemetry and lifetime ----------------------------------------------------------------

    def stats(self) -> RuntimeStats:
        """Counters since creation or the last :meth:`reset_stats`."""
        return self._telemetry.snapshot()

    def reset_stats(self) -> None:
        self._telemetry.reset()

    @property
    def path(self) -> str:
        """How the next call runs (:data:`edgeskip.manifest.PATHS`): ``monolithic`` (a static plan in one call),
        ``stages`` (the per-stage loop, its decision-free segments fused: :attr:`fused`) or ``gate`` (the ONNX gate
        graph; with ``graph="stages"`` for one input, a batch runs the stage loop)."""
        return self._routing.path

    def info(self) -> dict[str, Any]:
        """Bundle, model, backend, policy and execution path in use (what a measurement should record)."""
        m = self.manifest
        return {"bundle": str(self.bundle.path), "model": m.model_name, "target": m.target,
                "untrained": m.untrained, "depth": self.depth, "removed": list(m.removed),
                "agents": self._agents is not None, "e2cm": None if m.e2cm is None else m.e2cm.feature,
                "policy": self.policy.to_dict(), **self.backend_info, "path": self.path,
                "fused": [list(s) for s in self.fused]}

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Runtime({str(self.bundle.path)!r}, backend={self.backend_info.get('backend')!r}, "
                f"policy={self.policy.name!r}, graph={self.graph!r})")


class _Routing(NamedTuple):
    """What a call follows, read together: the plan, its fused segments (first layer -> (backend name, the later
    layers covered)), its execution path and the backend's name of each layer in the plan's precision."""

    plan: Plan
    fused: dict[int, tuple[str, frozenset[int]]]
    path: str
    names: list[str]


@functools.lru_cache(maxsize=64)
def _no_exits(batch: int) -> npt.NDArray[np.int64]:
    """A read-only (batch,) array of -1 (every input went through the head), shared between calls."""
    out = np.full(batch, -1, np.int64)
    out.flags.writeable = False
    return out


def _backend_class(backend: str | type[Backend]) -> type[Backend]:
    if isinstance(backend, type) and issubclass(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise ConfigError(f"backend must be a registered name or a Backend subclass, got {backend!r}")
    cls = BACKENDS.get(backend)()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {backend!r} is registered with something that is not a Backend: {cls!r}")
    return cls  # type: ignore[no-any-return]


class _Stages:
    """The bundle's stages as :func:`~edgeskip.rule.route` drives them: the tokens of the inputs still in,
    gathered for the rows a layer runs on and scattered back."""

    __slots__ = ("backend", "tokens", "names", "agents", "e2cm", "distances", "fused", "covered", "token")

    def __init__(self, backend: Backend, tokens: npt.NDArray[np.float32], names: list[str],
                 agents: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None, e2cm: E2CM | None,
                 fused: dict[int, tuple[str, frozenset[int]]], token: str = "cls") -> None:
        self.backend, self.tokens, self.names, self.agents, self.e2cm = backend, tokens, names, agents, e2cm
        self.token = token  # what the agents read (edgeskip.rule.decision_input)
        self.distances: npt.NDArray[np.float64] | None = None
        self.fused = fused
        self.covered: frozenset[int] = frozenset()  # layers the last fused segment already ran

    def agent_logits(self, layer: int) -> npt.NDArray[np.float32]:
        assert self.agents is not None
        cls = decision_input(self.tokens, self.token)
        return cls @ self.agents[0][layer] + self.agents[1][layer]  # type: ignore[no-any-return]

    def run(self, layer: int, rows: npt.NDArray[np.intp] | None) -> None:
        if rows is None:  # every input still in (a decision-free layer always is): maybe a fused segment
            if layer in self.covered:
                return  # the segment that began before it ran it
            segment = self.fused.get(layer)
            if segment is not None:
                self.tokens = self.backend.run(segment[0], self.tokens)
                self.covered = segment[1]
                return
            self.tokens = self.backend.run(self.names[layer], self.tokens)
            return
        if not self.tokens.flags.writeable:
            self.tokens = self.tokens.copy()
        self.tokens[rows] = self.backend.run(self.names[layer], self.tokens[rows])

    def exit_top(self, index: int, layer: int, rows: npt.NDArray[np.intp] | None) -> npt.NDArray[np.float64]:
        assert self.e2cm is not None
        self.distances = self.e2cm.distances(index, self.tokens if rows is None else self.tokens[rows])
        return exit_top(self.distances)[0]

    def leave(self, index: int, layer: int, rows: npt.NDArray[np.intp],
              leaving: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        assert self.distances is not None
        return exit_logits(self.distances[leaving])

    def keep(self, rows: npt.NDArray[np.intp]) -> None:
        self.tokens = self.tokens[rows]
