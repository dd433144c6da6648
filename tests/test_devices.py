"""`stemlink devices`: a real PortAudio device list (an ALSA null device stands in for a
sound card, which this machine lacks), and one clear line where PortAudio is missing."""

import builtins
import json
import os
import subprocess
import sys

import pytest

from stemlink.udp_client import devices as dv

ASOUNDRC = """pcm.stemlink_null {
    type null
    hint { show on description "stemlink test device" }
}
"""


def run_main(monkeypatch, capsys, *args):
    from stemlink.cli import main

    monkeypatch.setattr(sys, "argv", ["stemlink", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_without_sounddevice_it_says_how_to_install_portaudio(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    code, out, err = run_main(monkeypatch, capsys, "devices")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemlink: error: sounddevice is not "
                                                   "installed")
    assert "apt-get install libportaudio2" in lines[0] and "pip install sounddevice" in lines[0]


def test_without_the_portaudio_library_it_says_so(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_portaudio(name, *a, **k):  # what sounddevice raises when libportaudio is absent
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    code, out, err = run_main(monkeypatch, capsys, "devices")
    assert code == 2
    assert err.startswith("stemlink: error: the PortAudio library cannot be loaded "
                          "(PortAudio library not found)")
    assert "apt-get install libportaudio2" in err and err.count("\n") == 1


def test_render_without_devices_says_what_live_needs():
    text = dv.render([], "PortAudio V19")
    assert text.startswith("no sound devices found (PortAudio V19)") and "live" in text


def test_parse_device_takes_an_index_or_a_name():
    assert dv.parse_device("3") == 3 and dv.parse_device(" 12 ") == 12
    assert dv.parse_device("USB Audio, ALSA") == "USB Audio, ALSA"
    assert dv.parse_device(None) is None


@pytest.fixture
def null_device_home(tmp_path):
    try:
        dv.load_sounddevice()
    except dv.PortAudioMissing:
        pytest.skip("PortAudio is not installed here (the missing case is tested above)")
    (tmp_path / ".asoundrc").write_text(ASOUNDRC)
    return {**os.environ, "HOME": str(tmp_path)}


def test_devices_lists_a_real_portaudio_device_and_live_accepts_it(null_device_home):
    r = subprocess.run([sys.executable, "-m", "stemlink", "devices"], capture_output=True,
                       text=True, timeout=60, env=null_device_home)
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines() if "stemlink_null" in ln]
    if not rows:
        pytest.skip("PortAudio here has no ALSA host API")
    head = r.stdout.splitlines()[0].split()
    assert head[:2] == ["index", "name"] and "default" in head
    row = rows[0]
    index, name, api = int(row[0]), row[1], row[2]
    assert api == "ALSA" and row[3] == "128" and row[4] == "128" and row[5] == "44100"
    assert " ".join(row[6:]) == "input, output"
    # what `live` does with --input-device/--output-device: parse, then sounddevice resolves
    probe = (
        "import json, sys, sounddevice as sd\n"
        "from stemlink.udp_client.devices import parse_device\n"
        "print(json.dumps([sd.query_devices(parse_device(a), k)['index']\n"
        "                  for a in sys.argv[1:] for k in ('input', 'output')]))\n")
    q = subprocess.run([sys.executable, "-c", probe, str(index), name, f"{name}, {api}"],
                       capture_output=True, text=True, timeout=60, env=null_device_home)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [index] * 6
