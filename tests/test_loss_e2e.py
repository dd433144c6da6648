"""The issue's figures, end to end: real server, real model, real audio, `send` through the
seeded relay with 5 % independent loss in each direction. Unpaced, so the machine's load
cannot make blocks late: only the relay's losses count."""

import asyncio

import numpy as np
import pytest
import soundfile as sf

from stemlink.bench.fidelity import sdr
from stemlink.bench.relay import Relay, make_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir, example):
    from stemlink.udp_client.sender import SendOptions, send_file
    from stemlink.udp_server.server import ServeOptions, ServerThread

    tmp = tmp_path_factory.mktemp("loss")
    x, sr = example
    wav = tmp / "in.wav"
    sf.write(wav, x[:, :6 * sr].T, sr, subtype="PCM_16")
    out = {}
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0)) as st:
        for name, red, loss in (("clean", False, 0.0), ("off", False, 0.05),
                                ("on", True, 0.05)):
            cfg = make_config(None, seed=11, loss=loss, burst=1.0)
            with Relay(st.address, cfg) as relay:
                rep = asyncio.run(send_file(SendOptions(
                    wav, relay.address, tmp / name, realtime=False, redundancy=red)))
            out[name] = (rep, {s: sf.read(tmp / name / f"{s}.wav", dtype="float32")[0]
                               for s in rep.stems}, relay.stats)
    return out


# The targets. Measured on this excerpt with relay seeds 1-9 and 11: 18.1-22.0 dB
# (vocals, the lower stem) without redundancy, 24.8-58 dB with it; which datagrams the
# relay drops (the order pings take in its sequence) moves these by a few dB.
FLOOR_OFF_DB, FLOOR_ON_DB = 14.0, 22.0


def test_5_percent_loss_both_ways_without_redundancy_stays_above_floor(runs):
    rep, stems, stats = runs["off"]
    assert stats["up"].lost > 0 and stats["down"].lost > 0 and rep.recovered == 0
    assert rep.repair["mix_repair"]  # the model's stems add up to the mixture: measured
    for s, y in stems.items():
        assert sdr(runs["clean"][1][s], y) >= FLOOR_OFF_DB, s


def test_5_percent_loss_both_ways_with_redundancy_stays_above_floor(runs):
    rep, stems, stats = runs["on"]
    assert rep.redundancy and rep.recovered > 0
    for s, y in stems.items():
        assert sdr(runs["clean"][1][s], y) >= FLOOR_ON_DB, s


def test_the_clean_run_is_clean(runs):
    rep = runs["clean"][0]
    assert rep.lost == 0 and rep.missing == 0 and np.isfinite(rep.cpu_percent)
