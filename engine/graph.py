"""A backend for graphs with several named inputs and outputs (the segment families).

Same lifecycle as `backend.OrtBackend`: activate() allocates one float32 buffer per tensor
(shapes from the card, batch first) and binds them once; infer() runs on them and returns
the outputs dict, overwritten by the next call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stemlink.engine.backend import import_ort, load_session, session_options
from stemlink.engine.card import GraphSpec, ModelCard
from stemlink.engine.errors import EngineError


def _fixed(shape: list, batch: int, where: str) -> tuple[int, ...]:
    dims = [batch] + list(shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise EngineError(f"{where}: shape {shape} must be fixed after the batch axis")
    return tuple(dims)


class OrtGraphBackend:
    def __init__(self, card: ModelCard, folder: str | Path, *, graph: str = "streaming",
                 batch: int = 1, provider: str = "cpu", threads: int | None = None) -> None:
        if batch < 1:
            raise EngineError("batch must be >= 1")
        self.card = card
        self.graph: GraphSpec = card.streaming if graph == "streaming" else card.offline
        self.path = Path(folder) / self.graph.file
        self.batch, self.provider = batch, provider
        self.name = f"onnxruntime-{provider}"
        self.threads = threads if threads else max(1, min(os.cpu_count() or 1, 8))
        self._session = None
        self._binding = None
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def activate(self) -> None:
        if self._session is not None:
            raise EngineError("backend is already active")
        ort = import_ort()
        opts = session_options(ort, self.threads)
        provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(
            self.provider)
        if provider is None or provider not in ort.get_available_providers():
            raise EngineError(f"{self.provider!r} is not available in this onnxruntime "
                              f"({', '.join(ort.get_available_providers())})")
        sess = load_session(ort, self.path, opts, [provider])
        binding = sess.io_binding()
        metas = {m.name: m for m in sess.get_inputs() + sess.get_outputs()}
        want_in = [t.name for t in self.graph.inputs]
        want_out = [t.name for t in self.graph.outputs]
        if sorted(m.name for m in sess.get_inputs()) != sorted(want_in) or \
                sorted(m.name for m in sess.get_outputs()) != sorted(want_out):
            raise EngineError(f"{self.path}: tensors {sorted(metas)} are not the card's "
                              f"{want_in} -> {want_out}")
        for spec, is_input in [(t, True) for t in self.graph.inputs] + \
                              [(t, False) for t in self.graph.outputs]:
            shape = _fixed(spec.shape, self.batch, f"{self.path.name}:{spec.name}")
            got = metas[spec.name].shape
            if len(got) != len(shape) or any(isinstance(g, int) and g != w
                                             for g, w in zip(got, shape, strict=True)):
                raise EngineError(f"{self.path}: tensor {spec.name} has shape {got}, the card "
                                  f"says {list(shape)}")
            buf = np.zeros(shape, np.float32)
            if is_input:
                self.inputs[spec.name] = buf
                binding.bind_cpu_input(spec.name, buf)
            else:
                self.outputs[spec.name] = buf
                binding.bind_output(spec.name, "cpu", 0, np.float32, list(shape),
                                    buf.ctypes.data)
        self._session, self._binding = sess, binding
        self.infer()  # warm-up

    def infer(self) -> dict[str, np.ndarray]:
        if self._session is None:
            raise EngineError("backend is not active")
        self._session.run_with_iobinding(self._binding)
        return self.outputs

    def deactivate(self) -> None:
        self._binding = None
        self._session = None
        self.inputs, self.outputs = {}, {}
