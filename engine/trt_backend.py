"""TensorRT runtime backend (native TensorRT 10/11 Python API), same lifecycle as the
others. Follows NVIDIA's samples (common_runtime.py) and Polygraphy's runner, improved
as ../shared/STYLE.md asks: everything is allocated in activate(), tensor addresses are
set once, infer() returns the preallocated `outputs` (no copy per call).

activate(): find this host's plan in the card (trt_plan.find_plan: a stale plan is
refused in one line), deserialize it, one execution context with the optimisation
profile for `batch` (trt_plan.choose_profile), input shape set once, device buffers
(cudaMalloc) bound with set_tensor_address, page-locked host mirrors, its own stream.
infer(new_frames=None): upload plan, execute_async_v3, download plan, all on that
stream, then one sync. With `cuda_graph=True` that sequence is captured once per upload
plan (TensorRT asks for one plain enqueue before capture) and replayed with one
cudaGraphLaunch.

NOT run in this repository's history: TensorRT cannot be installed on the development
machines, and no GPU was lent to the task that wrote this. Written against the
documented TensorRT 10 API (create_execution_context, set_optimization_profile_async,
set_input_shape, set_tensor_address, execute_async_v3); what is unit-tested is the
pure part (trt_plan.py, copyplan.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemlink.engine import copyplan, trt_plan
from stemlink.engine.backend import Activated
from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineError("TensorRT is not installed here (it comes with NVIDIA's TensorRT "
                          "container, nvcr.io/nvidia/tensorrt; see Dockerfile.gpu); use "
                          "--backend cuda or cpu") from None
    return trt


def host_facts(device_id: int = 0) -> trt_plan.HostFacts:
    trt = import_tensorrt()
    from stemlink.engine.cudart import cuda

    dev = cuda().device(device_id)
    return trt_plan.HostFacts(trt.__version__, dev.name, dev.sm)


class TrtBackend(Activated):
    def __init__(self, card: ModelCard, folder: str | Path, *, graph: str = "streaming",
                 batch: int = 1, precision: str = "fp32", device_id: int = 0,
                 cuda_graph: bool = True, output_frames: tuple[int, int] | None = None,
                 **_: object) -> None:
        if batch < 1:
            raise EngineError("batch must be >= 1")
        if precision not in trt_plan.PRECISIONS:
            raise EngineError(f"precision must be one of {', '.join(trt_plan.PRECISIONS)}")
        self.card, self.folder = card, Path(folder)
        self.graph_name = graph
        self.graph = card.streaming if graph == "streaming" else card.offline
        self.batch, self.precision = batch, precision
        self.device_id, self.cuda_graph = device_id, cuda_graph
        self.name = f"tensorrt-{precision}" + ("+graph" if cuda_graph else "")
        self._output_frames = output_frames
        self._context = None
        self._owned: list[tuple[str, int]] = []
        self._graphs: dict[int | None, int] = {}
        self._seen: set[int | None] = set()
        self._uploads: dict[int | None, list[copyplan.Copy]] = {}
        self.entry: dict | None = None
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)

    def activate(self) -> None:
        if self._context is not None:
            raise EngineError("backend is already active")
        trt = import_tensorrt()
        from stemlink.engine.cudart import cuda

        cu = self._cu = cuda()
        host = host_facts(self.device_id)
        entry = trt_plan.find_plan(self.card.engines, self.precision, self.graph_name, host,
                                   self.folder)
        profile = trt_plan.choose_profile(list(entry["profiles"]), self.batch)
        run_batch = entry["profiles"][profile]  # >= batch: extra slots stay zero
        self.entry = entry
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(
            (self.folder / entry["file"]).read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {entry['file']}; rebuild it: "
                              f"stemlink export tensorrt --model {self.folder}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise EngineError(f"{entry['file']}: expected one input and one output tensor")
        c, s, w, f = self.card.channels, len(self.card.stems), self.graph.frames, self.card.bins
        g = copyplan.Geometry(run_batch, c, s, w, f)
        self.geometry = g
        self._download = copyplan.download_plan(g, self._output_frames)
        try:
            self._stream = cu.stream()
            self._owned.append(("stream", self._stream))
            ctx = engine.create_execution_context()
            if ctx is None:
                raise EngineError("TensorRT could not create an execution context (GPU memory?)")
            ctx.set_optimization_profile_async(profile, self._stream)
            if not ctx.set_input_shape(ins[0], (run_batch, c, w, f)):
                raise EngineError(f"{entry['file']}: input shape {(run_batch, c, w, f)} is "
                                  f"outside profile {profile}")
            host_in, p = cu.pinned((run_batch, c, w, f))
            self._owned.append(("host", p))
            host_out, q = cu.pinned((run_batch, s, c, w, f))
            self._owned.append(("host", q))
            ptr = {"h_in": p, "h_out": q}
            for name, nbytes in (("d_in", g.in_bytes), ("d_tmp", g.in_bytes),
                                 ("d_out", g.out_bytes)):
                ptr[name] = cu.malloc(nbytes)
                self._owned.append(("device", ptr[name]))
            if not (ctx.set_tensor_address(ins[0], ptr["d_in"]) and
                    ctx.set_tensor_address(outs[0], ptr["d_out"])):
                raise EngineError("TensorRT refused a tensor address")
            cu.memset(ptr["d_in"], g.in_bytes, self._stream)
            self._ptr, self._engine, self._context = ptr, engine, ctx
            # the contract's arrays are [batch, ...]; a larger profile's extra slots stay 0
            self.inputs, self.outputs = host_in[:self.batch], host_out[:self.batch]
            self.infer()
            self.infer()
        except Exception:
            self.deactivate()
            raise

    def _enqueue(self, upload: list[copyplan.Copy]) -> None:
        kinds = {copyplan.H2D: 1, copyplan.D2H: 2, copyplan.D2D: 3}
        for plan in (upload, None, self._download):
            if plan is None:
                if not self._context.execute_async_v3(self._stream):
                    raise EngineError("TensorRT execute_async_v3 failed")
                continue
            for c in plan:
                self._cu.copy2d(self._ptr[c.dst] + c.dst_off, c.dpitch,
                                self._ptr[c.src] + c.src_off, c.spitch, c.width, c.height,
                                kinds[c.kind], self._stream)

    def infer(self, new_frames: int | None = None) -> np.ndarray:
        if self._context is None:
            raise EngineError("backend is not active")
        upload = self._uploads.get(new_frames)
        if upload is None:
            upload = self._uploads[new_frames] = copyplan.upload_plan(self.geometry,
                                                                      new_frames)
        graph = self._graphs.get(new_frames)
        if graph is not None:
            self._cu.launch(graph, self._stream)
        elif self.cuda_graph and self._warm(new_frames):
            self._cu.begin_capture(self._stream)
            try:
                self._enqueue(upload)
            finally:
                graph = self._cu.end_capture(self._stream)
            self._graphs[new_frames] = graph
            self._owned.append(("graph", graph))
            self._cu.launch(graph, self._stream)
        else:
            self._enqueue(upload)
        self._cu.sync(self._stream)
        return self.outputs

    def _warm(self, key: int | None) -> bool:
        """True from the second use of an upload plan: TensorRT needs one plain enqueue
        (shape inference, deferred allocations) before a capture."""
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def deactivate(self) -> None:
        self._context = None
        self._engine = None
        cu = getattr(self, "_cu", None)
        for kind, ptr in reversed(self._owned):
            free = {"stream": cu.destroy_stream, "host": cu.free_host, "device": cu.free,
                    "graph": cu.destroy_graph}[kind]
            free(ptr)
        self._owned, self._graphs, self._seen = [], {}, set()
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)
