"""The issue's figures, end to end: real server, real model, real audio, `send` through the
seeded relay with 5 % independent loss in each direction. Unpaced, so the machine's load
cannot make blocks late: only the relay's losses count. Each impaired setting runs with
three relay seeds and the floor applies to the median: which datagrams are dropped (the
order pings take in the relay's sequence) moves a single run by several dB."""

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
        for name, red, loss, seed in (("clean", False, 0.0, 11),
                                      *[(f"off{s}", False, 0.05, s) for s in SEEDS],
                                      *[(f"on{s}", True, 0.05, s) for s in SEEDS]):
            cfg = make_config(None, seed=seed, loss=loss, burst=1.0)
            with Relay(st.address, cfg) as relay:
                rep = asyncio.run(send_file(SendOptions(
                    wav, relay.address, tmp / name, realtime=False, redundancy=red)))
            out[name] = (rep, {s: sf.read(tmp / name / f"{s}.wav", dtype="float32")[0]
                               for s in rep.stems}, relay.stats)
    return out


SEEDS = (11, 12, 13)
# The targets are 14 and 22 dB. Measured on this excerpt, one run per relay seed
# (`python scripts/loss-e2e-seeds.py MODEL 1-16`, 2026-11-26): 16.7-22.0 dB (vocals, the
# lower stem) without redundancy; with it 33.6 dB and up since the uplink's parity covers
# every block twice (before, with pairs both ways: 23.0 dB and up). The floor with
# redundancy is set above what pairs gave, so a weaker uplink code fails it.
FLOOR_OFF_DB, FLOOR_ON_DB = 14.0, 30.0


def medians(runs, kind):
    """Per stem: the median over the seeds of SDR against the clean run."""
    clean = runs["clean"][1]
    per = {s: [sdr(clean[s], runs[f"{kind}{seed}"][1][s]) for seed in SEEDS] for s in clean}
    return {s: float(np.median(v)) for s, v in per.items()}, per


def test_5_percent_loss_both_ways_without_redundancy_stays_above_floor(runs):
    for seed in SEEDS:
        rep, _, stats = runs[f"off{seed}"]
        assert stats["up"].lost > 0 and stats["down"].lost > 0 and rep.recovered == 0
        assert rep.repair["mix_repair"]  # the model's stems add up to the mixture: measured
    med, per = medians(runs, "off")
    for s, v in med.items():
        assert v >= FLOOR_OFF_DB, (s, per[s])


def test_5_percent_loss_both_ways_with_redundancy_stays_above_floor(runs):
    for seed in SEEDS:
        rep = runs[f"on{seed}"][0]
        assert rep.redundancy and rep.recovered > 0
    med, per = medians(runs, "on")
    for s, v in med.items():
        assert v >= FLOOR_ON_DB, (s, per[s])


def test_the_clean_run_is_clean(runs):
    rep = runs["clean"][0]
    assert rep.lost == 0 and rep.missing == 0 and np.isfinite(rep.cpu_percent)
