"""Synthesis hop m and mask hold k from the command line and the handshake down to the
separator: the server's stream factory, the presets' wire codes, `separate`."""

import subprocess
import sys

import numpy as np
import pytest

from stemlink.engine.errors import EngineError
from stemlink.udp_server.core import StreamRequest
from stemlink.udp_server.server import make_stream_factory


def test_stream_factory_takes_client_then_server_then_preset_values(engine):
    make = make_stream_factory(engine, "ultra", StreamRequest(synthesis_hop=256))
    s = make(StreamRequest())  # the server's preset with its own m = 256, the preset's k
    assert (s.preset, s.synthesis_hop, s.mask_hold, s.delay) == ("ultra", 256, 3, 511)
    assert s.separator.delay == 511 and s.separator.latency.period == 768
    s = make(StreamRequest(mask_hold=8))  # the client's k on top
    assert (s.synthesis_hop, s.mask_hold, s.separator.latency.period) == (256, 8, 2048)
    s = make(StreamRequest(preset="ultra"))  # a named preset: its own m and k
    assert (s.synthesis_hop, s.mask_hold, s.delay) == (512, 3, 1023)
    s = make(StreamRequest(preset="extreme", synthesis_hop=512, mask_hold=4))
    assert (s.preset, s.synthesis_hop, s.mask_hold, s.delay) == ("extreme", 512, 4, 1023)
    s = make(StreamRequest(preset="monitor"))  # a preset at the model's hop
    assert (s.synthesis_hop, s.mask_hold, s.synthesis, s.delay) == (1024, 1, "standard", 5119)
    with pytest.raises(EngineError, match="synthesis hop"):
        make(StreamRequest(synthesis_hop=384))
    with pytest.raises(EngineError, match="asymmetric"):
        make(StreamRequest(preset="monitor", synthesis_hop=512, synthesis="standard",
                           hop_frames=1))


def test_every_preset_has_a_wire_code_and_a_cli_name():
    from stemlink.cli import PRESET_NAMES
    from stemlink.engine.presets import PRESETS
    from stemlink.wire.constants import PRESET_CODES

    assert set(PRESETS) == set(PRESET_CODES) == set(PRESET_NAMES)
    assert PRESET_CODES["extreme"] == 5


def test_separate_with_synthesis_hop_and_mask_hold(model_dir, tmp_path):
    from stemlink.audio import read_audio, write_audio
    from stemlink.bench.song import make_song

    src = tmp_path / "song.wav"
    write_audio(src, make_song(seconds=2.0), 44100)
    r = subprocess.run([sys.executable, "-m", "stemlink", "separate", str(src), "--model",
                        str(model_dir), "--out", str(tmp_path / "o"), "--preset", "extreme",
                        "--mask-hold", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "D = 255 samples" in r.stdout and "mask hold k = 4" in r.stdout
    y, sr = read_audio(tmp_path / "o" / "vocals.wav")
    assert sr == 44100 and y.shape == (2, 88200) and np.abs(y).max() > 0.01
    r = subprocess.run([sys.executable, "-m", "stemlink", "separate", str(src), "--model",
                        str(model_dir), "--out", str(tmp_path / "o"), "--synthesis-hop", "100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "synthesis hop must divide" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_engine_budget_is_the_inference_period(model_dir):
    """The real-time check compares compute per inference with H*k*m samples of audio
    (speed itself is measured by the benchmark, never asserted here)."""
    from stemlink.bench.engine_bench import bench_engine, render

    r = bench_engine(str(model_dir), "cpu", 2.0, None, 5, synthesis_hop=256, mask_hold=4)
    rows = {row["preset"]: row for row in r["presets"]}
    assert set(rows) == {"extreme", "ultra", "monitor", "balanced", "quality", "custom"}
    want = {"extreme": 128 * 12, "ultra": 512 * 3, "monitor": 2 * 1024, "custom": 256 * 4}
    for name, period in want.items():
        assert rows[name]["budget_ms"] == pytest.approx(1000 * period / 44100)
        assert rows[name]["window_ms"]["n"] > 0  # inferences were timed
    assert (rows["custom"]["m"], rows["custom"]["k"], rows["custom"]["delay_samples"]) == \
        (256, 4, 511)
    assert "budget ms (H*k*m)" in render(r)
