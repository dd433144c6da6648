"""`bench network`, `bench make-song` and `bench latency --profile` as a user runs them.
Speed is not asserted; what is asserted is what each run did and that the reports hold it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from stemlink.bench.network import parse_send_opts, plan_runs
from stemlink.bench.song import make_parts, make_song
from stemlink.errors import StemlinkError
from tests.conftest import sdr


def stemlink(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stemlink", *args], capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- song
def test_make_song_is_deterministic_stereo_and_exact_length(tmp_path):
    a, b, c = (tmp_path / f"{k}.wav" for k in "abc")
    for path, seed in ((a, 4), (b, 4), (c, 5)):
        r = stemlink("bench", "make-song", str(path), "--seconds", "3.5", "--seed", str(seed))
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    x, sr = sf.read(a, always_2d=True)
    assert sr == 44100 and x.shape == (int(3.5 * 44100), 2)
    assert 0.8 < np.abs(x).max() <= 0.9
    assert np.array_equal(make_song(2.0, 4), make_song(2.0, 4))


def test_the_model_hears_the_synthetic_voice_as_vocals(engine, model_dir):
    """The song is made for a vocal/accompaniment separator: the real model's stems match
    the song's own voice and accompaniment parts (≥ 12 dB; 15.8 and 14.3 dB measured),
    where the unseparated mix scores -1.5 and 1.5 dB."""
    from stemlink.engine.offline import separate_offline
    from stemlink.engine.session import open_engine

    parts = make_parts(10.0, 0)
    mix = parts["voice"] + parts["accompaniment"]
    off = open_engine(model_dir, "cpu", graph="offline")
    try:
        vocals, acc = separate_offline(off.card, off.backend, mix)
    finally:
        off.close()
    assert sdr(parts["voice"], vocals) >= 12.0
    assert sdr(parts["accompaniment"], acc) >= 12.0
    assert sdr(parts["voice"], mix) < 0.0 and sdr(parts["accompaniment"], mix) < 2.0


# ----------------------------------------------------------------------- the harness
def test_send_options_pass_through_by_field_type():
    got = parse_send_opts(["jitter_ms=80", "block=128", "synthesis=asymmetric",
                           "hop-frames=none", "psk=k"])
    assert got == {"jitter_ms": 80.0, "block": 128, "synthesis": "asymmetric",
                   "hop_frames": None, "psk": b"k"}
    assert isinstance(got["block"], int)
    with pytest.raises(StemlinkError, match="no such option.*known: .*jitter_ms"):
        parse_send_opts(["conceal=plc"])
    with pytest.raises(StemlinkError, match="set by the benchmark"):
        parse_send_opts(["realtime=0"])
    with pytest.raises(StemlinkError, match="not a valid"):
        parse_send_opts(["block=big"])
    with pytest.raises(StemlinkError, match="KEY=VALUE"):
        parse_send_opts(["jitter_ms"])


def test_plan_has_the_reference_first_and_one_run_per_setting():
    runs = plan_runs(["wifi"], ["--reorder 0.02"], [0.05], 2.0, [(4.0, 2.5)], 9, 1.0)
    assert [r.name for r in runs] == ["reference (direct)", "wifi", "relay --reorder 0.02",
                                      "loss 5 % (burst 2)", "dropout 2.5 s at 4 s"]
    assert runs[0].relay_args is None
    assert runs[2].relay_args == ["--reorder", "0.02", "--seed", "9"]
    assert runs[3].relay_args == ["--loss", "0.05", "--burst", "2.0", "--seed", "9"]
    assert runs[4].relay_args[:3] == ["--outage", "4.0", "2.5"]
    assert runs[4].sdr_from_s == 4.0 + 2.5 + 2.0 and runs[1].sdr_from_s == 1.0


@pytest.mark.parametrize("args,msg", [
    (["--relay", "--loss 2"], "--relay"),
    (["--loss", "0.1", "--send-opt", "nope=1"], "no such option"),
    (["--outage", "3", "2"], "SDR from 7 s"),
    ([], "nothing to compare"),
])
def test_bench_network_refuses_bad_input_in_one_line(tmp_path, model_dir, args, msg):
    r = stemlink("bench", "network", "--model", str(model_dir), "--seconds", "4",
                 "--out", str(tmp_path), *args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bench_network_dropout_with_two_clients_on_a_song_of_our_own(tmp_path, model_dir):
    """One dropout run beside the reference, two clients (only the first through the
    relay), on a generated song: what the relay dropped shows up as lost blocks of the
    first client only; SDR (whole song and after the dropout) is measured for both; the
    JSON, the table and the plot are written, with the command."""
    song = tmp_path / "song.wav"
    assert stemlink("bench", "make-song", str(song), "--seconds", "5").returncode == 0
    out = tmp_path / "net"
    r = stemlink("bench", "network", "--model", str(model_dir), "--audio", str(song),
                 "--outage", "1", "0.5", "--clients", "2", "--preset", "balanced",
                 "--send-opt", "jitter_ms=200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["command"].startswith("stemlink bench network") and res["audio"] == "song.wav"
    assert res["send_options"] == {"jitter_ms": 200.0}
    ref, drop = res["runs"]
    assert ref["relay"] is None and ref["relay_command"] is None
    assert drop["relay_command"].startswith("stemlink relay --listen 127.0.0.1:")
    assert "--outage 1.0 0.5" in drop["relay_command"]
    rel = drop["relay"]
    assert rel["up"]["outage"] > 0  # (the server sends nothing it has no input for)
    assert rel["up"]["lost"] == rel["down"]["lost"] == 0
    assert rel["down"]["dropped"] == rel["down"]["outage"]
    c0, c1 = drop["clients"]
    assert c0["through_relay"] and not c1["through_relay"]
    # every audio block the relay dropped (all but at most 2 pings) costs both of its stem
    # blocks: lost, or concealed by the server
    assert c0["lost"] + c0["concealed"] >= 2 * (rel["up"]["outage"] - 2)
    assert c0["lost"] >= rel["down"]["outage"] // 2
    assert c0["received"] == c0["expected"] - c0["lost"]
    ref_clean = all(c["lost"] == c["concealed"] == 0 for c in ref["clients"])
    for c in (c0, c1):
        assert set(c["sdr_db"]) == set(c["sdr_from_db"]) == {"vocals", "accompaniment"}
        for v in (*c["sdr_db"].values(), *c["sdr_from_db"].values()):
            # None only where the reference itself lost the audio (a loaded machine)
            assert (v is None and not ref_clean) or np.isfinite(v)
    md = (out / "results.md").read_text()
    assert ref_clean or "WARNING: the reference run was not clean" in md
    assert drop["sdr_from_s"] == 3.5
    assert drop["server"]["cpu_cores"] > 0 and drop["server"]["compute_ms"]["blocks"] > 0
    assert "| dropout 0.5 s at 1 s | 0 (relay) |" in md and "command: stemlink" in md
    png = (out / "network.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_latency_runs_both_systems_through_the_relay(tmp_path, model_dir):
    out = tmp_path / "lat"
    r = stemlink("bench", "latency", "--model", str(model_dir), "--against", "baseline",
                 "--profile", "wifi", "--seconds", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["network"] == "loopback through stemlink relay, profile wifi, seed 1"
    s, b = res["systems"]["stemlink"], res["systems"]["baseline"]
    assert "--profile wifi --seed 1" in s["relay_command"] and "--tcp" not in s["relay_command"]
    assert "--tcp --profile wifi --seed 1" in b["relay_command"]
    assert s["relay"]["mode"] == "udp" and b["relay"]["mode"] == "tcp"
    assert b["relay"]["tcp"]["connections"] == 1
    for sysname in ("stemlink", "baseline"):
        st = s if sysname == "stemlink" else b
        assert st["relay"]["up"]["received"] > 100 and st["relay"]["down"]["received"] > 100
        assert st["relay"]["config"]["up"]["loss"] == 0.02
    # TCP delivers every segment (late), UDP loses what the relay dropped
    assert b["relay"]["down"]["sent"] == b["relay"]["down"]["received"]
    assert min(s["block_latencies_ms"]) >= s["algorithmic_delay_ms"] - 0.5  # causal
    assert "baseline relay: `stemlink relay" in r.stdout


def test_bench_relay_calibration_matches_the_profiles(tmp_path):
    """The calibration command measures what the profiles configure (loss rate within
    15 %, mean burst within 10 % on 50k datagrams), and the TCP mode delivers every
    segment, the RTO model costing far more delay than fast retransmit."""
    out = tmp_path / "relay.json"
    r = stemlink("bench", "relay", "--datagrams", "50000", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    udp = {u["profile"]: u for u in res["udp"]}
    assert set(udp) == {"wired", "wifi", "stress"}
    assert udp["wired"]["loss_rate"] == 0 and udp["wired"]["delay_ms"]["max"] <= 0.3 + 1e-6
    for name, p, b in (("wifi", 0.02, 3.0), ("stress", 0.10, 2.0)):
        assert abs(udp[name]["loss_rate"] - p) <= 0.15 * p
        assert abs(udp[name]["mean_burst"] - b) <= 0.1 * b
    assert abs(udp["stress"]["duplicated_rate"] - 0.005) <= 0.002
    tcp = {(t["profile"], t["recovery"]): t for t in res["tcp"]}
    for name in ("wifi", "stress"):
        rto, linux = tcp[(name, "rto")], tcp[(name, "linux")]
        assert rto["delay_ms"]["mean"] > 10 * linux["delay_ms"]["mean"]
    assert "| wifi | linux |" in r.stdout
