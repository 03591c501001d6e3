"""Run build_mllama on a real ggml_backend_sched with a TensorHook, optionally offloading layers.

Offload works like llama.cpp's ``n_gpu_layers``: the weights of the first N
local layers live in the second backend's buffers (an RPC server, or a GPU
device), so the scheduler runs those layers there and copies activations
across the boundary.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture import unsplit
from inspector.capture.hook import HookCounters, TensorHook, TensorSink
from inspector.capture.mode import DEFAULT_MODE, CaptureMode
from inspector.capture.selection import Selection
from inspector.capture.session import CaptureSession
from inspector.capture.unsplit import UnsplitPlan
from inspector.compare.metrics import compare_arrays
from inspector.dump.inputs import unknown as unknown_inputs
from inspector.dump.record import TensorRecord
from inspector.errors import InspectorError
from inspector.ggml import load, read_tensor, rpc
from inspector.ggml.graph import Backend, init_backend, set_data
from inspector.ggml.log import install_log
from inspector.ggml.system import system_facts
from inspector.ggml.tensor import Tensor
from inspector.mllama.model import MllamaGraph, VisionWeights, attention_mask, build_mllama, load_weights
from inspector.mllama.preprocess import PreprocessConfig, Preprocessed, load_image, preprocess
from inspector.native.tensor_stats import stats_function

# The probe that makes sched-check's second graph differ from the first.
NEXT_GRAPH_PROBES = ("ln_pre",)


@dataclass
class EncodeConfig:
    model: str
    image: str
    threads: int = 1
    offload_layers: int = 0
    rpc: list[str] = field(default_factory=list)
    device: str | None = None
    probes: list[str] = field(default_factory=list)
    loader: str = "pil"


@dataclass
class LateRead:
    """A captured tensor re-read from the scheduler's buffer: right after its graph, and after another graph."""

    name: str
    occurrence: int
    overwritten_by_own_graph: bool
    overwritten_by_next_graph: bool
    nmse_after_next_graph: float


@dataclass
class ComputeBuffer:
    """One backend's scheduler compute buffer size after each graph of sched-check.

    A size that changed means the scheduler freed the buffer and allocated
    another: the first graph's tensors then point to freed memory.
    """

    backend: str
    after_own_graph: int
    after_next_graph: int


@dataclass
class EncodeSummary:
    path: Path
    tensors: int
    seconds: float
    counters: HookCounters
    geometry: dict
    placement: dict[str, str]
    late_reads: list[LateRead] = field(default_factory=list)
    compute_buffers: list[ComputeBuffer] = field(default_factory=list)

    @property
    def reallocated(self) -> bool:
        """True when sched-check's second graph made the scheduler reallocate (so nothing was re-read)."""
        return any(b.after_own_graph != b.after_next_graph for b in self.compute_buffers)


class Session:
    """Backends, weights and scheduler for repeated graph computations on one model."""

    def __init__(self, config: EncodeConfig) -> None:
        self.lib = load()
        install_log(False)  # ggml's own lines (a failed allocation, each repack) stay off the one-line output
        self.config = config
        self.backends: list[Backend] = []
        self.sched = None
        if config.rpc:
            devices = rpc.add_servers(config.rpc)
            offload_name = config.device or devices[0]
        else:
            offload_name = config.device
        if config.offload_layers and offload_name is None:
            raise InspectorError("-ngl/--offload-layers needs --rpc HOST:PORT or -dev NAME")
        self.cpu = init_backend(self.lib, None, config.threads)
        self.offload = init_backend(self.lib, offload_name, config.threads) if offload_name else None
        self.backends = [b for b in (self.offload, self.cpu) if b is not None]  # CPU last, as ggml requires
        self.weights: VisionWeights = load_weights(config.model, self.cpu, self.offload, config.offload_layers)
        # The scheduler functions its graphs go through: libggml-base's, or the native hook's once it adopts the
        # scheduler (use_calls).
        self.calls: Any = self.lib.ggml
        array = (ctypes.c_void_p * len(self.backends))(*[b.address for b in self.backends])
        self.sched = self.lib.ggml.ggml_backend_sched_new(array, None, len(self.backends), 16384, False, False)
        if not self.sched:
            raise InspectorError("ggml_backend_sched_new failed")

    def preprocess(self, image_path: str) -> Preprocessed:
        h = self.weights.hparams
        config = PreprocessConfig(tile_size=h.image_size, max_tiles=h.max_tiles,
                                  patch_size=h.patch_size)
        return preprocess(load_image(image_path, self.config.loader), config)

    def reserve(self, *probe_sets: tuple[str, ...]) -> None:
        """Size the compute buffers for the graphs built with each of ``probe_sets`` before any runs.

        The scheduler grows a buffer by freeing it and allocating a bigger one
        when a graph needs more than it has; reserved for every graph up front,
        allocating one never frees the memory another's tensors point to.
        Throwaway graphs are measured, as llama.cpp does: splitting rewrites a
        graph's sources to the scheduler's copies, which the next split replaces.
        """
        for probes in probe_sets:
            measured = build_mllama(self.weights, probes)
            try:
                if not self.calls.ggml_backend_sched_reserve(self.sched, measured.graph):
                    raise InspectorError("the scheduler could not reserve memory for the graph")
            finally:
                measured.free()

    def buffer_sizes(self) -> dict[str, int]:
        """Each backend's compute buffer size in bytes, to notice a reallocation."""
        return {b.name: self.calls.ggml_backend_sched_get_buffer_size(self.sched, b.address)
                for b in self.backends}

    def compute(self, graph: MllamaGraph, inputs: Preprocessed, hook: TensorHook | None,
                mode: CaptureMode = DEFAULT_MODE, why_not_unsplit: str = "") -> UnsplitPlan | None:
        """Allocate ``graph`` on the scheduler, set its inputs, compute it, and capture it through ``hook``.

        In ``mode`` unsplit the selected tensors are flagged as outputs
        before the alloc (no reserve has planned this scheduler's buffers
        without them: the alloc plans), the graph is computed in one piece
        and read after; otherwise the hook sees every node as it is
        computed.  Returns the plan (whether it ran unsplit, and why not).
        Through the native hook's calls (:attr:`calls`) ``hook`` is None:
        the hook plans, computes and reads the graph itself.
        """
        lib, calls = self.lib, self.calls
        calls.ggml_backend_sched_reset(self.sched)
        kept = None
        if hook is not None:
            kept = unsplit.plan(lib, graph.graph, hook.selection, mode, n_backends=len(self.backends),
                                why_not=why_not_unsplit)
        callback = hook.callback if hook is not None and not kept.unsplit else None
        calls.ggml_backend_sched_set_eval_callback(self.sched, ctypes.cast(callback, ctypes.c_void_p)
                                                   if callback else None, None)
        if not calls.ggml_backend_sched_alloc_graph(self.sched, graph.graph):
            raise InspectorError("the scheduler could not allocate the graph")
        h = self.weights.hparams
        set_data(lib, graph.inputs["inp_raw"], inputs.inp_raw)
        set_data(lib, graph.inputs["aspect_ratio_ids"], inputs.aspect_ratio_ids.astype(np.int32))
        set_data(lib, graph.inputs["attn_mask"], attention_mask(h, inputs.aspect_ratio_mask))
        status = calls.ggml_backend_sched_graph_compute(self.sched, graph.graph)
        if status != 0:
            raise InspectorError(f"graph compute failed with status {status}")
        if kept is not None and kept.unsplit:
            unsplit.capture_computed(hook, lib, graph.graph)
        return kept

    def capture_hook(self, capture: CaptureSession, selection: Selection,
                     hook_factory: Callable[[CaptureSession], Any] | None, sink: TensorSink | None = None
                     ) -> tuple[Any, Any]:
        """``capture``'s hook and the native hook among it (None where the Python eval callback runs): the one
        ``hook_factory`` makes, which takes this scheduler (its calls replace libggml-base's in :attr:`calls`),
        else the Python eval callback writing through ``sink``."""
        native = hook_factory(capture) if hook_factory is not None else None
        if native is None:
            return capture.tensor_hook(selection, self.lib, sink=sink), None
        self.calls = native.scheduler_calls(self.sched, self.lib.ggml)
        return capture.use_hook(native), native

    def close(self) -> None:
        if self.sched:
            self.calls.ggml_backend_sched_free(self.sched)
            self.sched = None
        self.weights.free()
        for backend in self.backends:
            self.lib.ggml.ggml_backend_free(backend.address)
        self.backends = []

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def late_read(lib, kept: dict[int, tuple[TensorRecord, np.ndarray]]) -> dict[int, tuple[bool, float]]:
    """Re-read every kept tensor from its buffer now: (overwritten?, NMSE) against the compute-time copy."""
    results = {}
    for address, (_record, captured) in kept.items():
        metrics = compare_arrays(captured, read_tensor(Tensor(lib, address)).array)
        results[address] = (not metrics.identical, metrics.nmse)
    return results


def _sched_check(session: Session, inputs: Preprocessed,
                 kept: dict[int, tuple[TensorRecord, np.ndarray]],
                 progress: Callable[[str], None]) -> tuple[list[LateRead], list[ComputeBuffer]]:
    """Re-read the kept tensors, run a second, different graph on the same scheduler, and re-read them again."""
    after_own = late_read(session.lib, kept)
    sizes_own = session.buffer_sizes()
    progress("running a second, different graph on the same scheduler, then re-reading")
    other = build_mllama(session.weights, NEXT_GRAPH_PROBES)
    flipped = replace(inputs, inp_raw=np.ascontiguousarray(inputs.inp_raw[..., ::-1]))
    try:
        session.compute(other, flipped, None)
    finally:
        other.free()
    sizes_next = session.buffer_sizes()
    buffers = [ComputeBuffer(name, size, sizes_next[name]) for name, size in sizes_own.items()]
    if sizes_next != sizes_own:  # the kept tensors' memory was freed: do not read it
        return [], buffers
    after_next = late_read(session.lib, kept)
    return [LateRead(record.name, record.occurrence, after_own[address][0], after_next[address][0],
                     after_next[address][1]) for address, (record, _array) in kept.items()], buffers


def encode(config: EncodeConfig, selection: Selection, output: str | Path, *, overwrite: bool = False,
           sched_check: bool = False, progress: Callable[[str], None] = lambda _m: None,
           mode: CaptureMode = DEFAULT_MODE, hook_factory: Callable[[CaptureSession], Any] | None = None,
           capture_mode: dict[str, Any] | None = None) -> EncodeSummary:
    """Preprocess, build, compute and capture; with ``sched_check``, run a second graph and re-read.

    ``hook_factory`` makes the command line's preloaded native hook
    (:func:`inspector.native.inprocess.native_capture`), which then takes
    the scheduler and captures in C; ``capture_mode`` is what the dump's
    config records of it.  ``sched_check`` keeps the Python hook: it
    re-reads the very tensors that hook copied.

    The scheduler is reserved for both graphs before the first runs, so the
    second graph's allocation reuses the first graph's buffers instead of
    replacing them: re-reading then shows what the second graph wrote, never
    freed memory.  Should a buffer's size change anyway, the summary reports it
    (``compute_buffers``, ``reallocated``) and nothing is re-read.  How the
    capture ends (a signal, a full disk) is the :class:`CaptureSession`'s.
    """
    started = time.perf_counter()
    with Session(config) as session:
        inputs = session.preprocess(config.image)
        geometry = inputs.geometry.as_dict()
        run_config = {"runner": "mllama", **asdict(config), "hparams": asdict(session.weights.hparams),
                      "backends": [b.name for b in session.backends], "geometry": geometry,
                      "select": selection.describe(), "capture_mode": capture_mode or mode.describe()}
        kept: dict[int, tuple[TensorRecord, np.ndarray]] = {}
        late_reads: list[LateRead] = []
        buffers: list[ComputeBuffer] = []
        with CaptureSession(output, run_config, system_facts(session.lib), overwrite=overwrite,
                            progress=progress, stats_of=stats_function()) as capture:
            def sink(record: TensorRecord, array: np.ndarray) -> None:
                capture.writer.write(record, array)
                if sched_check and not record.is_leaf:
                    kept[hook.last_address] = (record, array)

            hook, native = session.capture_hook(capture, selection, None if sched_check else hook_factory, sink)
            graph = build_mllama(session.weights, tuple(config.probes))
            try:
                if sched_check:
                    session.reserve(tuple(config.probes), NEXT_GRAPH_PROBES)
                index = capture.begin_evaluation("encode", {"geometry": geometry, "image": config.image,
                                                            **unknown_inputs()})
                progress(f"computing the vision graph on {', '.join(b.name for b in session.backends)}")
                plan = session.compute(graph, inputs, None if native is not None else hook, mode,
                                       "--sched-check studies how the scheduler reuses its buffers" if sched_check
                                       else "")
                if plan is not None:  # the native hook's EVAL frame says how it took the graph
                    capture.writer.update_evaluation(index, {"capture_mode": "unsplit"} if plan.unsplit else {
                        "capture_mode": "callback", "capture_mode_reason": plan.fallback})
                if sched_check and hook.capturing:
                    late_reads, buffers = _sched_check(session, inputs, kept, progress)
            finally:
                graph.free()
                if native is not None:
                    native.close()  # every frame read; the hook off
            capture.finish({"late_reads": [asdict(r) for r in late_reads],
                            "compute_buffers": [asdict(b) for b in buffers]} if sched_check else {})
        return EncodeSummary(capture.path, capture.tensor_count, time.perf_counter() - started, hook.counters,
                             geometry, session.weights.placement, late_reads, buffers)
