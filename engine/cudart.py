"""The few CUDA runtime/driver calls the GPU backends need, through ctypes.

Why ctypes: ONNX Runtime's Python API can bind device buffers but cannot copy part of
one, and TensorRT's Python API allocates nothing; NVIDIA's samples use cuda-python for
that. The CUDA runtime library is already in the process wherever the CUDA EP or
TensorRT runs (both link it), so binding six functions costs no extra dependency.
Every call is checked; a failure raises CudaError with the call and CUDA's own message.

NOT verified on a GPU in this repository's history (no GPU was lent to the task that wrote
it): written against the CUDA 12/13 runtime API as documented.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemlink.engine.errors import EngineError

# cudaMemcpyKind
H2D, D2H, D2D = 1, 2, 3
_HOST_ALLOC_PORTABLE = 1
_STREAM_NON_BLOCKING = 1
_CAPTURE_MODE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal
# CUdevice_attribute
_CC_MAJOR, _CC_MINOR = 75, 76

RUNTIME_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


class CudaError(EngineError):
    """A CUDA call failed (or the CUDA runtime is not there)."""


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def runtime_candidates(prefixes: list[str] | None = None) -> list[str]:
    """Where libcudart may be, most specific first: plain sonames (already loaded by ONNX
    Runtime or TensorRT, or on the loader path), then the `nvidia-*` wheels' lib folders
    that onnxruntime-gpu and PyTorch install (../shared/gpu/README.md)."""
    out = list(RUNTIME_NAMES)
    for prefix in prefixes if prefixes is not None else sys.path:
        for pattern in ("nvidia/cuda_runtime/lib/libcudart.so*", "nvidia/cu*/lib/libcudart.so*"):
            out += sorted(glob.glob(os.path.join(prefix, pattern)), reverse=True)
    return out


class Cuda:
    """A loaded CUDA runtime. One per process is enough: `cuda()` caches it."""

    def __init__(self) -> None:
        self.rt = None
        errors = []
        for name in runtime_candidates():
            try:
                self.rt = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
                self.path = name
                break
            except OSError as e:
                errors.append(str(e))
        if self.rt is None:
            raise CudaError("the CUDA runtime (libcudart) is not loadable here; install the "
                            "GPU extra on a host with an NVIDIA driver")
        rt = self.rt
        vp, sz, cint, cuint = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_uint
        rt.cudaGetErrorString.restype = ctypes.c_char_p
        rt.cudaGetErrorString.argtypes = [cint]
        rt.cudaMalloc.argtypes = [ctypes.POINTER(vp), sz]
        rt.cudaFree.argtypes = [vp]
        rt.cudaHostAlloc.argtypes = [ctypes.POINTER(vp), sz, cuint]
        rt.cudaFreeHost.argtypes = [vp]
        rt.cudaMemsetAsync.argtypes = [vp, cint, sz, vp]
        rt.cudaMemcpyAsync.argtypes = [vp, vp, sz, cint, vp]
        rt.cudaMemcpy2DAsync.argtypes = [vp, sz, vp, sz, sz, sz, cint, vp]
        rt.cudaStreamCreateWithFlags.argtypes = [ctypes.POINTER(vp), cuint]
        rt.cudaStreamSynchronize.argtypes = [vp]
        rt.cudaStreamDestroy.argtypes = [vp]
        rt.cudaStreamBeginCapture.argtypes = [vp, cint]
        rt.cudaStreamEndCapture.argtypes = [vp, ctypes.POINTER(vp)]
        rt.cudaGraphInstantiate.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_ulonglong]
        rt.cudaGraphLaunch.argtypes = [vp, vp]
        rt.cudaGraphExecDestroy.argtypes = [vp]
        rt.cudaGraphDestroy.argtypes = [vp]
        rt.cudaGetDevice.argtypes = [ctypes.POINTER(cint)]
        rt.cudaGetDeviceCount.argtypes = [ctypes.POINTER(cint)]
        rt.cudaDeviceGetAttribute.argtypes = [ctypes.POINTER(cint), cint, cint]
        rt.cudaRuntimeGetVersion.argtypes = [ctypes.POINTER(cint)]

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.rt.cudaGetErrorString(rc)
            raise CudaError(f"{what} failed: {msg.decode() if msg else rc}")

    # ------------------------------------------------------------------ memory
    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self.check(self.rt.cudaMalloc(ctypes.byref(p), nbytes), f"cudaMalloc({nbytes})")
        return int(p.value)

    def free(self, ptr: int) -> None:
        if ptr:
            self.check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned(self, shape: tuple[int, ...], dtype=np.float32) -> tuple[np.ndarray, int]:
        """A page-locked host array (DMA at full PCIe speed, capturable in a CUDA graph);
        returns (array, pointer to pass to free_host)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        p = ctypes.c_void_p()
        self.check(self.rt.cudaHostAlloc(ctypes.byref(p), max(nbytes, 1),
                                         _HOST_ALLOC_PORTABLE), f"cudaHostAlloc({nbytes})")
        buf = (ctypes.c_byte * nbytes).from_address(int(p.value))
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        arr[...] = 0
        return arr, int(p.value)

    def free_host(self, ptr: int) -> None:
        if ptr:
            self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self.check(self.rt.cudaMemsetAsync(ptr, 0, nbytes, stream), "cudaMemsetAsync")

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int,
               kind: int, stream: int) -> None:
        self.check(self.rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind,
                                             stream), "cudaMemcpy2DAsync")

    # ------------------------------------------------------------------ streams, graphs
    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.rt.cudaStreamCreateWithFlags(ctypes.byref(s), _STREAM_NON_BLOCKING),
                   "cudaStreamCreateWithFlags")
        return int(s.value)

    def sync(self, stream: int) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream: int) -> None:
        if stream:
            self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def begin_capture(self, stream: int) -> None:
        self.check(self.rt.cudaStreamBeginCapture(stream, _CAPTURE_MODE_THREAD_LOCAL),
                   "cudaStreamBeginCapture")

    def end_capture(self, stream: int) -> int:
        """End a capture and instantiate it: returns the executable graph."""
        g, ge = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.rt.cudaStreamEndCapture(stream, ctypes.byref(g)),
                   "cudaStreamEndCapture")
        try:
            self.check(self.rt.cudaGraphInstantiate(ctypes.byref(ge), g, 0),
                       "cudaGraphInstantiate")
        finally:
            self.rt.cudaGraphDestroy(g)
        return int(ge.value)

    def launch(self, graph_exec: int, stream: int) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph_exec: int) -> None:
        if graph_exec:
            self.check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    # ------------------------------------------------------------------ device facts
    def device(self, index: int | None = None) -> Device:
        cur = ctypes.c_int()
        if index is None:
            self.check(self.rt.cudaGetDevice(ctypes.byref(cur)), "cudaGetDevice")
            index = cur.value
        cc = []
        for attr in (_CC_MAJOR, _CC_MINOR):
            v = ctypes.c_int()
            self.check(self.rt.cudaDeviceGetAttribute(ctypes.byref(v), attr, index),
                       "cudaDeviceGetAttribute")
            cc.append(v.value)
        return Device(index, device_name(index), (cc[0], cc[1]))

    def runtime_version(self) -> str:
        v = ctypes.c_int()
        self.check(self.rt.cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"


def device_name(index: int) -> str:
    """The GPU's marketing name from the driver API (cuDeviceGetName): the runtime only
    has it inside cudaDeviceProp, whose layout changes between CUDA versions."""
    try:
        drv = ctypes.CDLL("libcuda.so.1")
        drv.cuInit(0)
        dev = ctypes.c_int()
        if drv.cuDeviceGet(ctypes.byref(dev), index) != 0:
            return f"cuda:{index}"
        name = ctypes.create_string_buffer(256)
        if drv.cuDeviceGetName(name, 256, dev) != 0:
            return f"cuda:{index}"
        return name.value.decode(errors="replace")
    except OSError:
        return f"cuda:{index}"


_CUDA: Cuda | None = None


def cuda() -> Cuda:
    global _CUDA
    if _CUDA is None:
        _CUDA = Cuda()
    return _CUDA


def gpu_present() -> str | None:
    """None if an NVIDIA GPU is usable here, else one line saying why not. Cheap: looks
    for the driver's device nodes and library before loading anything."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return "no NVIDIA GPU on this host (no /dev/nvidia* device)"
    try:
        drv = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver library (libcuda.so.1) on this host"
    n = ctypes.c_int()
    if drv.cuInit(0) != 0 or drv.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        return "the NVIDIA driver reports no usable GPU"
    return None
