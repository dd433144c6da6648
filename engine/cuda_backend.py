"""ONNX Runtime on the CUDA execution provider, with device-resident buffers.

Lifecycle as every backend (activate / infer / deactivate). activate() allocates
everything once:
- device input and output tensors (OrtValues on 'cuda'), bound once through IOBinding,
  so ORT never allocates or copies per run and `enable_cuda_graph` can replay one
  captured graph (it needs fixed addresses);
- page-locked host mirrors `inputs` / `outputs` (the backend contract: the separator
  writes `inputs[slot]`, reads `outputs[slot]`), and a device scratch for shifted uploads;
- its own CUDA stream for the copies.

infer(new_frames=None, ...) = upload plan (H2D, optionally only the newest frames),
sync, `run_with_iobinding` (ORT synchronises its stream at the end of Run), download
plan (D2H, optionally only the frames the separators read), sync. See copyplan.py for
what each plan moves and why it pays. CPU fallback is disabled
(`session.disable_cpu_ep_fallback`), and the providers ORT really activated are checked
after the session is built: a silent fallback to the CPU is an error, in one line.

Verified here (no GPU in this task): the option construction and the messages (pure
functions below, unit-tested) and the copy plans (tests run them on host memory). The
GPU path itself has NOT run; `stemlink bench gpu` on a GPU host is the check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemlink.engine import copyplan
from stemlink.engine.backend import (
    Activated,
    check_io,
    import_ort,
    load_session,
    session_options,
)
from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError

CUDA_EP = "CUDAExecutionProvider"
WARMUP_RUNS = 3  # ORT runs a model normally before it captures a CUDA graph


def cuda_provider_options(device_id: int = 0, cuda_graph: bool = True) -> dict[str, str]:
    """CUDA EP options (all values are strings in ORT's API). Exhaustive cuDNN algorithm
    search is paid once at activate(); the arena grows only by what is requested, since
    every buffer here is allocated up front."""
    if device_id < 0:
        raise EngineError(f"CUDA device id must be >= 0, not {device_id}")
    return {
        "device_id": str(device_id),
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }


def cuda_session_config() -> dict[str, str]:
    """Session config entries: no node may silently run on the CPU EP."""
    return {"session.disable_cpu_ep_fallback": "1"}


def provider_problem(available: list[str], active: list[str] | None = None) -> str | None:
    """None if CUDA is really in use; else one line naming what is wrong and what to do.
    `available`: ort.get_available_providers(); `active`: session.get_providers() (None
    before a session exists)."""
    if CUDA_EP not in available:
        has = ", ".join(available) or "none"
        return (f"{CUDA_EP} is not in this onnxruntime (it has: {has}); install the GPU "
                f"build (pip install 'stemlink[gpu]', which brings onnxruntime-gpu; "
                f"uninstall the CPU-only onnxruntime first, both share one module name)")
    if active is None:
        return None
    if not active or active[0] != CUDA_EP:
        return (f"onnxruntime did not activate {CUDA_EP} (active: "
                f"{', '.join(active) or 'none'}): the CUDA or cuDNN libraries did not load; "
                f"check the driver (nvidia-smi) and that the nvidia-* wheels or the CUDA "
                f"toolkit match onnxruntime-gpu's CUDA major version")
    return None


class OrtCudaBackend(Activated):
    """See the module docstring. `output_frames`: (lo, hi) of the window's output frames
    to bring back per infer() (copyplan.separator_frames), None for all."""

    def __init__(self, card: ModelCard, folder: str | Path, *, graph: str = "streaming",
                 batch: int = 1, device_id: int = 0, cuda_graph: bool = True,
                 output_frames: tuple[int, int] | None = None, **_: object) -> None:
        if batch < 1:
            raise EngineError("batch must be >= 1")
        self.card = card
        self.graph = card.streaming if graph == "streaming" else card.offline
        self.path = Path(folder) / self.graph.file
        self.batch, self.device_id, self.cuda_graph = batch, device_id, cuda_graph
        self.name = "onnxruntime-cuda" + ("+graph" if cuda_graph else "")
        self.geometry = copyplan.Geometry(batch, card.channels, len(card.stems),
                                          self.graph.frames, card.bins)
        self._download = copyplan.download_plan(self.geometry, output_frames)
        self._uploads: dict[int | None, list[copyplan.Copy]] = {}
        self._session = None
        self._owned: list[tuple[str, int]] = []
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)

    def activate(self) -> None:
        if self._session is not None:
            raise EngineError("backend is already active")
        ort = import_ort()
        problem = provider_problem(ort.get_available_providers())
        if problem:
            raise EngineError(problem)
        if hasattr(ort, "preload_dlls"):  # finds CUDA/cuDNN in the nvidia-* wheels
            ort.preload_dlls()
        from stemlink.engine.cudart import cuda

        cu = cuda()
        opts = session_options(ort)
        for k, v in cuda_session_config().items():
            opts.add_session_config_entry(k, v)
        providers = [(CUDA_EP, cuda_provider_options(self.device_id, self.cuda_graph))]
        sess = load_session(ort, self.path, opts, providers, " on CUDA")
        problem = provider_problem(ort.get_available_providers(), sess.get_providers())
        if problem:
            raise EngineError(problem)
        g = self.geometry
        ins = (g.batch, g.channels, g.frames, g.bins)
        outs = (g.batch, g.stems, g.channels, g.frames, g.bins)
        i_meta, o_meta = check_io(sess, self.path, ins, outs)
        try:
            self._stream = cu.stream()
            self._owned.append(("stream", self._stream))
            self.inputs, p = cu.pinned(ins)
            self._owned.append(("host", p))
            self.outputs, q = cu.pinned(outs)
            self._owned.append(("host", q))
            tmp = cu.malloc(g.in_bytes)
            self._owned.append(("device", tmp))
            d_in = ort.OrtValue.ortvalue_from_shape_and_type(list(ins), np.float32, "cuda",
                                                             self.device_id)
            d_out = ort.OrtValue.ortvalue_from_shape_and_type(list(outs), np.float32,
                                                              "cuda", self.device_id)
            self._ortvalues = (d_in, d_out)  # keep them alive: the binding points at them
            binding = sess.io_binding()
            binding.bind_ortvalue_input(i_meta.name, d_in)
            binding.bind_ortvalue_output(o_meta.name, d_out)
            self._ptr = {"h_in": p, "h_out": q, "d_tmp": tmp, "d_in": d_in.data_ptr(),
                         "d_out": d_out.data_ptr()}
            self._cu = cu
            cu.memset(self._ptr["d_in"], g.in_bytes, self._stream)
            cu.sync(self._stream)
            self._session, self._binding = sess, binding
            for _ in range(WARMUP_RUNS):  # kernel choice, then ORT captures the CUDA graph
                self.infer()
        except Exception:
            self.deactivate()
            raise

    def warm_thread(self) -> None:
        """Warm up on the calling thread: ORT's CUDA EP counts runs and captures its CUDA
        graph per thread, so a worker thread that serves this backend does it once at
        start-up (under the worker's lock) rather than during its first session."""
        for _ in range(WARMUP_RUNS):
            self.infer()

    def _run_plan(self, plan: list[copyplan.Copy]) -> None:
        kinds = {copyplan.H2D: 1, copyplan.D2H: 2, copyplan.D2D: 3}
        for c in plan:
            self._cu.copy2d(self._ptr[c.dst] + c.dst_off, c.dpitch,
                            self._ptr[c.src] + c.src_off, c.spitch, c.width, c.height,
                            kinds[c.kind], self._stream)

    def infer(self, new_frames: int | None = None) -> np.ndarray:
        """new_frames: see copyplan.upload_plan (None = upload the whole window)."""
        if self._session is None:
            raise EngineError("backend is not active")
        plan = self._uploads.get(new_frames)
        if plan is None:
            plan = self._uploads[new_frames] = copyplan.upload_plan(self.geometry, new_frames)
        self._run_plan(plan)
        self._cu.sync(self._stream)
        self._session.run_with_iobinding(self._binding)
        self._run_plan(self._download)
        self._cu.sync(self._stream)
        return self.outputs

    def deactivate(self) -> None:
        self._binding = None
        self._session = None
        self._ortvalues = None
        cu = getattr(self, "_cu", None)
        if cu is None and self._owned:
            from stemlink.engine.cudart import cuda

            cu = cuda()
        for kind, ptr in reversed(self._owned):
            free = {"stream": cu.destroy_stream, "host": cu.free_host,
                    "device": cu.free}[kind]
            free(ptr)
        self._owned = []
        self.inputs = np.empty((0,), np.float32)
        self.outputs = np.empty((0,), np.float32)
