"""Inference backends behind one lifecycle: activate() allocates everything, infer() runs
on preallocated buffers, deactivate() frees what activate() made.

Contract: `inputs` is a preallocated float32 array [batch, C, frames, bins] the caller
fills in place; `infer()` returns `outputs`, a preallocated [batch, S, C, frames, bins]
array that the next infer() overwrites (copy what must outlive it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from stemlink.engine.card import GraphSpec, ModelCard
from stemlink.engine.errors import EngineError

BACKENDS = ("cpu", "cuda", "tensorrt")


class Backend(Protocol):
    name: str
    batch: int
    inputs: np.ndarray
    outputs: np.ndarray

    def activate(self) -> None: ...
    def infer(self) -> np.ndarray: ...
    def deactivate(self) -> None: ...


def check_io(sess, path: Path, ins: tuple, outs: tuple) -> tuple:
    """The session's single input/output metadata, with shapes checked against the card."""
    i_meta, o_meta = sess.get_inputs(), sess.get_outputs()
    if len(i_meta) != 1 or len(o_meta) != 1:
        raise EngineError(f"{path}: expected one input and one output")
    for meta, want in ((i_meta[0], ins), (o_meta[0], outs)):
        got = meta.shape
        if len(got) != len(want) or any(
                isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
            raise EngineError(f"{path}: tensor {meta.name} has shape {got}, "
                              f"the card says {list(want)}")
    return i_meta[0], o_meta[0]


def import_ort():
    """onnxruntime, or one clear EngineError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError("onnxruntime is not installed") from None
    return ort


def session_options(ort, threads: int | None = None, spin: bool = False):
    """Options chosen for latency: all graph optimisations, sequential execution, `threads`
    intra-op threads (None: ONNX Runtime's choice), no spinning unless asked."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if spin else "0")
    opts.log_severity_level = 3
    return opts


def load_session(ort, path: Path, opts, providers: list, where: str = ""):
    """An InferenceSession, or one EngineError line with ONNX Runtime's first line."""
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types, all fatal here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"cannot load {path}{where}: {first[:300]}") from None


def _shape(card: ModelCard, graph: GraphSpec, batch: int) -> tuple[tuple, tuple]:
    ins = (batch, card.channels, graph.frames, card.bins)
    outs = (batch, len(card.stems), card.channels, graph.frames, card.bins)
    return ins, outs


class Activated:
    """`with backend:` activates it and deactivates it on the way out."""

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()


class OrtBackend(Activated):
    """ONNX Runtime with IOBinding onto numpy buffers allocated once in activate().

    The CPUExecutionProvider with session options chosen for latency (sequential
    execution, all graph optimisations, intra-op threads = cores). `onnx_file` picks
    another graph file of the same model folder (the int8 or FP16 variants) in place of
    the card's. The CUDA EP lives in cuda_backend.OrtCudaBackend (device buffers).
    """

    def __init__(self, card: ModelCard, folder: str | Path, *, graph: str = "streaming",
                 batch: int = 1, provider: str = "cpu", threads: int | None = None,
                 spin: bool = False, onnx_file: str | None = None) -> None:
        if batch < 1:
            raise EngineError("batch must be >= 1")
        self.card = card
        self.graph = card.streaming if graph == "streaming" else card.offline
        self.path = Path(folder) / (onnx_file or self.graph.file)
        self.batch = batch
        self.provider = provider
        self.name = f"onnxruntime-{provider}" + (f" ({onnx_file})" if onnx_file else "")
        self.threads = threads if threads else max(1, min(os.cpu_count() or 1, 8))
        self.spin = spin
        self._session = None
        self._bindings: list = []  # [n - 1]: runs slots 0..n-1
        self._views: list = []
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)

    def activate(self) -> None:
        if self._session is not None:
            raise EngineError("backend is already active")
        ort = import_ort()
        opts = session_options(ort, self.threads, self.spin)
        if self.provider != "cpu":
            raise EngineError(f"OrtBackend runs the CPU provider only, not {self.provider!r}")
        providers = ["CPUExecutionProvider"]
        if not self.path.is_file():
            raise EngineError(f"{self.path} is missing")
        sess = load_session(ort, self.path, opts, providers)
        ins, outs = _shape(self.card, self.graph, self.batch)
        i_meta, o_meta = check_io(sess, self.path, ins, outs)
        self.inputs = np.zeros(ins, np.float32)
        self.outputs = np.zeros(outs, np.float32)
        # one binding per filled batch size n (the first n slots: the server's batching
        # worker runs only the windows it gathered); the views stay referenced here
        self._views, self._bindings = [], []
        for n in range(1, self.batch + 1):
            view = self.inputs[:n]
            binding = sess.io_binding()
            binding.bind_cpu_input(i_meta.name, view)
            binding.bind_output(o_meta.name, "cpu", 0, np.float32, [n, *outs[1:]],
                                self.outputs.ctypes.data)
            self._views.append(view)
            self._bindings.append(binding)
        self._session = sess
        self.infer()  # warm-up: first run pays for kernel selection and arena growth

    def infer(self) -> np.ndarray:
        if self._session is None:
            raise EngineError("backend is not active")
        self._session.run_with_iobinding(self._bindings[-1])
        return self.outputs

    def infer_first(self, n: int) -> np.ndarray:
        """Run the model on slots 0..n-1 only; outputs[n:] keep what they held."""
        if self._session is None:
            raise EngineError("backend is not active")
        if not 1 <= n <= self.batch:
            raise EngineError(f"cannot run {n} slots of a batch of {self.batch}")
        self._session.run_with_iobinding(self._bindings[n - 1])
        return self.outputs

    def deactivate(self) -> None:
        self._bindings, self._views = [], []
        self._session = None
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)


def make_backend(kind: str, card: ModelCard, folder: str | Path, **kw) -> Backend:
    """cpu: ONNX Runtime CPU EP (kw: threads, spin, onnx_file for the int8 variant);
    cuda: ONNX Runtime CUDA EP on device buffers (kw: device_id, cuda_graph,
    output_frames); tensorrt: a TensorRT plan built by `stemlink export tensorrt` (kw:
    precision, device_id, cuda_graph, output_frames)."""
    if kind == "cpu":
        return OrtBackend(card, folder, provider="cpu", **kw)
    if kind == "cuda":
        from stemlink.engine.cuda_backend import OrtCudaBackend

        return OrtCudaBackend(card, folder, **kw)
    if kind == "tensorrt":
        from stemlink.engine.trt_backend import TrtBackend

        return TrtBackend(card, folder, **kw)
    raise EngineError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
