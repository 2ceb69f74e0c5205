"""The onnxruntime backend: one session per stage, or the single-file gate graph.

Threads. One session per stage must not mean one thread pool per stage: measured on a 2-core
x86 CPU (onnxruntime 1.32, vit9, batch 1), per-session pools with spinning on ran 35 ms
against 3.5 ms with one pool; per-session pools with spinning off ran the per-stage loop
about 35% slower, and with spinning stopped after each run (``session.force_spinning_stop``)
about 8% slower than onnxruntime's *global* thread pool. So by default every session of every
Runtime in the process shares the global pool (``thread_pool="global"``), sized once per
process by the first Runtime that makes it (``threads``, default: the CPUs this process may
use). A later Runtime asking for another size gets the existing pool and a logged warning;
``info()`` reports the size in use.

The global pool is process-wide: once it exists, onnxruntime refuses every new session with its
own pool, one made with default ``SessionOptions`` included ("use_per_session_threads must be
false when using a global thread pool"; onnxruntime 1.32). An application that makes its own
onnxruntime sessions in the same process builds their options with :func:`app_session_options`
(``edgeskip.session_options()``), which work in either order: they join the global pool once one
exists and bring their own pool before. Or it gives every Runtime ``thread_pool="per-session"``
(a pool of ``threads`` per session, spinning off) before any global pool exists.

Calls go straight to the session's compiled ``run`` (``InferenceSession._sess``), skipping the
Python wrapper's per-call input validation: that wrapper cost about 15 us a call, 4-5% of a
vit9 forward pass at batch 1 split into 11 stages. The Runtime validates inputs itself.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.bundle import Bundle, BundleError, Stage
from edgeskip.errors import BackendError, BackendUnavailableError, ConfigError
from edgeskip.host import usable_cpus
from edgeskip.runtimes.backend import Backend, check_options, check_threads

__all__ = ["OnnxRuntimeBackend", "SessionRunner", "app_session_options", "chain_models", "check_io", "default_threads",
           "session", "session_options"]

log = logging.getLogger(__name__)

THREAD_POOLS = ("global", "per-session")
_pool_lock = threading.Lock()
_global_pool_threads: int | None = None
_shared_arena: bool | None = None  # whether the process-wide CPU arena is registered (None: not tried yet)


def default_threads() -> int:
    """CPUs this process may run on (:func:`edgeskip.host.usable_cpus`)."""
    return usable_cpus()


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def _cpu_arena(ort: Any) -> bool:
    """Register onnxruntime's process-wide CPU arena once (call under ``_pool_lock``); whether it exists.

    Every session made with :func:`session_options` allocates from it (``session.use_env_allocators``) instead of
    keeping an arena of its own: with one session per stage, each holding a batch's activations, the zoo
    vit9's agent+e2cm policy at batch 64 held 521 MiB resident against 162 MiB with the shared arena, at the
    same speed (the monolithic model alone: 281 MiB, unchanged)."""
    global _shared_arena
    if _shared_arena is None:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena = True
        except Exception as exc:  # an onnxruntime without the API, or an application that registered its own
            log.debug("no process-wide onnxruntime CPU arena (%s): each session keeps its own", exc)
            _shared_arena = False
    return _shared_arena


def shared_arena() -> bool:
    """Whether edgeskip's onnxruntime sessions share one process-wide CPU arena (see :func:`session_options`)."""
    return bool(_shared_arena)


def session_options(threads: int | None = None, thread_pool: str = "auto") -> tuple[Any, str]:
    """onnxruntime SessionOptions for a CPU session, and a description of its thread pool.

    ``global``: share the process-wide pool (made now with ``threads`` if it does not exist);
    ``per-session``: a pool of ``threads`` for this session, spinning off; ``auto``: the global
    pool when this process has one, else ``per-session``.
    """
    global _global_pool_threads
    if thread_pool not in (*THREAD_POOLS, "auto"):
        raise ConfigError(f"thread_pool must be one of {', '.join(THREAD_POOLS)}, got {thread_pool!r}")
    ort = _ort()
    threads = check_threads(threads) or default_threads()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with _pool_lock:
        if _cpu_arena(ort):
            opts.add_session_config_entry("session.use_env_allocators", "1")
        if thread_pool == "auto":
            thread_pool = "per-session" if _global_pool_threads is None else "global"
        if thread_pool == "global":
            if _global_pool_threads is None:
                ort.set_global_thread_pool_sizes(threads, 1)
                _global_pool_threads = threads
                log.debug("made onnxruntime's process-wide thread pool (%d threads): other onnxruntime sessions in "
                         "this process need options from edgeskip.session_options()", threads)
            elif _global_pool_threads != threads:
                log.warning("onnxruntime's global thread pool already has %d thread(s) in this process; %d "
                            "requested", _global_pool_threads, threads)
            opts.use_per_session_threads = False
            return opts, f"global ({_global_pool_threads} threads)"
        if _global_pool_threads is not None:
            raise ConfigError("onnxruntime's global thread pool already exists in this process (made by an earlier "
                              "Runtime), and onnxruntime then refuses per-session pools: use thread_pool='global', "
                              "or 'per-session' for every Runtime from the start")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts, f"per-session ({threads} threads, no spinning)"


def chain_models(models: Sequence[bytes]) -> bytes:
    """One ONNX model running ``models`` (one input, one output each) in order: each output feeds the next
    model's input. Every model's names get a prefix of its position so that nothing collides.

    Built by moving each model's nodes and initializers into the first one's graph, not with
    ``onnx.compose.merge_models``: that copies the growing model at every step, and chaining the zoo's nine
    vit9 layers (10 MiB of weights) through it left the process 86 MiB larger."""
    import onnx  # a core dependency, parsed only when a plan has a segment to fuse

    chained: Any = None
    previous_output = ""
    for k, data in enumerate(models):
        model = onnx.load_from_string(data)
        graph = model.graph
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
            raise BackendError("cannot fuse a stage whose graph holds subgraphs (control flow)")
        if len(graph.input) != 1 or len(graph.output) != 1:
            raise BackendError("cannot fuse a stage with more than one input or output")
        prefix = f"s{k}/"
        rename = {name: prefix + name for name in
                  {i.name for i in graph.initializer} | {v for n in graph.node for v in (*n.input, *n.output) if v}
                  | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}}
        if chained is not None:
            rename[graph.input[0].name] = previous_output  # this stage reads the previous one's output
        for node in graph.node:
            node.name = prefix + node.name
            node.input[:] = [rename.get(v, v) for v in node.input]
            node.output[:] = [rename.get(v, v) for v in node.output]
        for init in graph.initializer:
            init.name = rename[init.name]
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.name = rename[value.name]
        previous_output = graph.output[0].name
        if chained is None:
            chained = model
            continue
        target = chained.graph
        target.node.extend(graph.node)
        target.initializer.extend(graph.initializer)
        target.value_info.extend(graph.value_info)
        del target.output[:]
        target.output.extend(graph.output)
    data = chained.SerializeToString()
    _release_freed_memory()
    return data  # type: ignore[no-any-return]


def _release_freed_memory() -> None:
    """Hand the heap memory freed by parsing models back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def app_session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` for an application's own sessions beside ``edgeskip.Runtime`` in one process.

    onnxruntime refuses a session with its own thread pool once a process-wide pool exists, which the
    Runtime makes by default. These options join that pool when it exists, and otherwise bring a pool of
    ``threads`` (default: the CPUs this process may use) with spinning off, so they work whichever is made
    first. Set further options (graph optimisation, profiling) on the returned object as usual::

        rt = edgeskip.Runtime("bundle/")
        detector = onnxruntime.InferenceSession("detector.onnx", edgeskip.session_options())
    """
    return session_options(threads, "auto")[0]


def session(source: str | bytes, *, threads: int | None = None, thread_pool: str = "auto",
            providers: Sequence[str] = ("CPUExecutionProvider",), name: str | None = None) -> tuple[Any, str]:
    """An InferenceSession (from a path, or from bytes a bundle has verified) and a description of the
    thread pool it really uses. ``name`` says what the bytes are in error messages."""
    ort = _ort()
    opts, pool = session_options(threads, thread_pool)
    try:
        return ort.InferenceSession(source, opts, providers=list(providers)), pool
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        where = source if isinstance(source, str) else name or "model"
        raise BackendError(f"onnxruntime cannot load {where}: {exc}") from None


def check_io(sess: Any, stage: Stage, where: str) -> None:
    """The session's inputs and outputs are the ones the manifest describes (count, rank, fixed sizes):
    a model swapped for another one with consistent checksums is refused before it runs."""
    for kind, specs, got in (("input", stage.inputs, sess.get_inputs()), ("output", stage.outputs, sess.get_outputs())):
        if len(specs) != len(got):
            raise BundleError(f"{where}: has {len(got)} {kind}(s), the manifest describes {len(specs)}")
        for spec, arg in zip(specs, got):
            spec.check_shape(arg.shape, where, kind)


def _session_settings(options: Mapping[str, Any]) -> tuple[int, str, tuple[str, ...]]:
    """(threads, thread_pool, providers) from a backend's options, checked, with their defaults."""
    threads = check_threads(options.get("threads")) or default_threads()
    thread_pool = options.get("thread_pool", "global")
    if thread_pool not in THREAD_POOLS:
        raise ConfigError(f"thread_pool must be one of {', '.join(THREAD_POOLS)}, got {thread_pool!r}")
    return threads, thread_pool, tuple(options.get("providers") or ("CPUExecutionProvider",))


class SessionRunner:
    """One session with its input and output names, run through the compiled entry point: ``runner(x)``
    returns every output."""

    def __init__(self, sess: Any) -> None:
        self.session = sess
        self.input = sess.get_inputs()[0].name
        self.outputs = [o.name for o in sess.get_outputs()]
        self._run = getattr(sess, "_sess", sess).run

    def __call__(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[Any]]:
        try:
            return self._run(self.outputs, {self.input: x}, None)  # type: ignore[no-any-return]
        except Exception as exc:  # onnxruntime's own exception types
            raise BackendError(f"onnxruntime failed on input of shape {x.shape}: {exc}") from None


FORMATS = {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8"}  # a bundle's ONNX stage formats: precision
FORMAT_OF = {precision: fmt for fmt, precision in FORMATS.items()}


class OnnxRuntimeBackend(Backend):
    """Per-stage onnxruntime sessions (CPU by default; ``providers`` for others).

    ``format``: the stage files it runs (:data:`FORMATS`; an INT8 bundle's INT8 layers by default). A layer can
    also run in another precision the bundle holds (:meth:`variant`, a policy's per-layer ``precisions``): its
    session is made from the bundle's file the first time a policy asks for it, and kept."""

    name = "onnxruntime"
    OPTIONS = ("threads", "thread_pool", "providers", "format")

    def __init__(self, bundle: Bundle, stages: Sequence[str], **options: Any) -> None:
        super().__init__(bundle, stages)
        check_options(self.name, options, self.OPTIONS)
        self.threads, self.thread_pool, self.providers = _session_settings(options)
        self._static: SessionRunner | None = None
        # an INT8 bundle runs its INT8 stages unless told otherwise
        self.format = options.get("format", "onnx-int8" if bundle.manifest.precision == "int8" else "onnx")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {self.format!r}")
        ort = _ort()
        self.version = ort.__version__
        self._stages: dict[str, SessionRunner] = {}
        self._sources: dict[str, tuple[str, str]] = {}  # run name -> (stage, format) of a stage or variant session
        self._half: set[str] = set()  # run names whose session takes and gives float16
        self._fuse_lock = threading.Lock()
        self._fused_bytes: dict[str, int] = {}
        self._variant_bytes: dict[str, int] = {}
        for name in self.stages:
            self._load(name, name, self.format)
        self.active_providers = tuple(next(iter(self._stages.values())).session.get_providers())

    def _load(self, key: str, stage: str, fmt: str) -> int:
        """Make the session ``key`` of ``stage``'s file in ``fmt`` (checked against the manifest); its size."""
        spec = self.bundle.manifest.stage(stage)
        where = f"{self.bundle.path}: {spec.files.get(fmt, stage)}"
        data = self.bundle.read_stage(stage, fmt)
        sess, self.pool = session(data, threads=self.threads, thread_pool=self.thread_pool, providers=self.providers,
                                  name=where)
        check_io(sess, spec, where)
        self._stages[key] = SessionRunner(sess)
        self._sources[key] = (stage, fmt)
        if fmt == "onnx-fp16":
            self._half.add(key)
        return len(data)

    def precisions(self) -> tuple[str, ...]:
        """Its own format's precision, then every other one the bundle holds for each of its layers."""
        held = [p for fmt, p in FORMATS.items() if fmt != self.format and self.holds_every_layer(fmt)]
        return (FORMATS[self.format], *held)

    def _load_variant(self, key: str, stage: str, precision: str) -> None:
        """A session of the bundle's file in that precision's format (:meth:`Backend.variant`); it holds that file's
        weights beside the loaded ones (:attr:`variant_bytes`)."""
        self._variant_bytes[key] = self._load(key, stage, FORMAT_OF[precision])

    @property
    def variant_bytes(self) -> int:
        """Bytes of the stage files loaded in another precision than the backend's own, so far."""
        return sum(self._variant_bytes.values())

    def fuse(self, stages: Sequence[str]) -> str | None:
        """One session for ``stages`` (stage or :meth:`variant` names) chained in order (each stage's output feeds
        the next one's input), made from the bundle's verified stage models on first use and cached; it holds its
        own copy of their weights (about one layer's weights per fused layer; see :meth:`fused_bytes`). Stages of
        float16 and float32 inputs are not fused together."""
        if len(stages) < 2 or any(s not in self._stages for s in stages) or len({s in self._half for s in stages}) > 1:
            return None
        key = "+".join(stages)
        with self._fuse_lock:
            if key not in self._stages:
                where = f"{self.bundle.path}: stages {', '.join(stages)} fused"
                data = chain_models([self.bundle.read_stage(*self._sources[s]) for s in stages])
                sess, _ = session(data, threads=self.threads, thread_pool=self.thread_pool, providers=self.providers,
                                  name=where)
                self._stages[key] = SessionRunner(sess)
                if stages[0] in self._half:
                    self._half.add(key)
                self._fused_bytes[key] = len(data)
        return key

    @property
    def fused_bytes(self) -> int:
        """Bytes of the fused models made so far (their weights are copies of the stages')."""
        return sum(self._fused_bytes.values())

    def static_runner(self) -> Any:
        """The bundle's monolithic model (``onnx/model.onnx``) in one session, made on first use."""
        mono = self.bundle.manifest.monolithic
        if mono is None or self.format != "onnx":
            return None
        if self._static is None:
            sess, _ = session(self.bundle.read(mono.file), threads=self.threads, thread_pool=self.thread_pool,
                              providers=self.providers, name=f"{self.bundle.path}: {mono.file}")
            self._static = SessionRunner(sess)
        stage = self._static
        return lambda x: stage(x)[0]

    def run(self, stage: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if stage in self._half:
            return self._stages[stage](x.astype(np.float16))[0].astype(np.float32)  # type: ignore[no-any-return]
        return self._stages[stage](x)[0]  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "onnxruntime": self.version, "providers": list(self.active_providers),
                "format": self.format, "precision": FORMATS[self.format], "precisions": list(self.precisions()),
                "thread_pool": self.pool, "threads": self.threads, "fuses": True,
                "memory_arena": "process-wide" if shared_arena() else "per-session"}

    def close(self) -> None:
        self._stages.clear()
        self._static = None
