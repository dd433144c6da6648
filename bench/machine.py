"""What machine a figure was measured on, for every benchmark's JSON and table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    gpu = os.environ.get("STEMLINK_GPU_NAME")
    if gpu:
        info["gpu"] = gpu
    return info


def describe(info: dict) -> str:
    s = f"{info['cpu']}, {info['cores']} cores, Python {info['python']}"
    if "onnxruntime" in info:
        s += f", onnxruntime {info['onnxruntime']}"
    if "gpu" in info:
        s += f", GPU {info['gpu']}"
    return s
