"""The impairment relay: exact sans-IO checks of each knob, the CLI on a plain UDP echo,
and `send` through it against the real server and model."""

from __future__ import annotations

import asyncio
import collections
import math
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from stemlink.bench.relay import (
    JITTER_SCALE,
    JITTER_SHAPE,
    PROFILES,
    REORDER_HOLD_S,
    Impairment,
    LinkSpec,
    Outage,
    Outages,
    Relay,
    RelayError,
    make_config,
)

N = 200_000


def run(imp: Impairment, n: int, step: float = 0.001, t0: float = 100.0) -> list:
    """Feed n numbered datagrams `step` apart; return all releases in release order."""
    out = []
    for i in range(n):
        now = t0 + i * step
        out += imp.poll(now)
        out += imp.feed(i.to_bytes(4, "big"), now)
    out += imp.poll(t0 + n * step + 1.0)
    return out


def ids(releases) -> list[int]:
    return [int.from_bytes(r.data, "big") for r in releases]


def lost_mask(spec: LinkSpec, seed: int, n: int = N) -> np.ndarray:
    imp = Impairment(spec, seed, "up")
    return np.array([imp._lost() for _ in range(n)])


def bursts_of(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


# ------------------------------------------------------------------ Gilbert–Elliott loss
@pytest.mark.parametrize("loss,burst", [(0.02, 3.0), (0.10, 2.0), (0.05, 5.0)])
def test_gilbert_elliott_long_run_loss_rate_and_burst_length(loss, burst):
    """On 200k datagrams the loss rate and the mean burst length are within 4 standard
    errors of p and B (at most 14 % and 9 % here), the standard errors being those of the
    chain: bursts are geometric (variance B(B-1)), and losses are correlated with the
    chain's eigenvalue lam = 1 - q - r (variance inflated by (1 + lam)/(1 - lam))."""
    imp = Impairment(LinkSpec(loss=loss, burst=burst), seed=11, direction="down")
    out = run(imp, N)
    got = set(ids(out))
    mask = np.array([i not in got for i in range(N)])
    runs = bursts_of(mask)
    r = 1 / burst
    lam = 1 - loss * r / (1 - loss) - r
    se_loss = math.sqrt(loss * (1 - loss) / N * (1 + lam) / (1 - lam))
    se_burst = math.sqrt(burst * (burst - 1) / runs.size)
    assert 4 * se_loss <= 0.14 * loss and 4 * se_burst <= 0.09 * burst  # tight enough
    assert abs(mask.mean() - loss) <= 4 * se_loss, mask.mean()
    assert abs(runs.mean() - burst) <= 4 * se_burst, runs.mean()
    st = imp.stats
    assert st.lost == mask.sum() and st.bursts == runs.size and st.received == N
    assert st.sent == 0 and len(out) == N - st.lost  # the glue counts sends, not the core
    assert math.isclose(st.mean_burst, runs.mean())


def test_burst_one_means_independent_losses():
    """B = 1 (anything up to 1/(1-p)): P(loss | previous lost) = P(loss) = p."""
    p = 0.05
    mask = lost_mask(LinkSpec(loss=p, burst=1.0), seed=5)
    after_loss = mask[1:][mask[:-1]]
    assert abs(mask.mean() - p) <= 0.1 * p
    assert abs(after_loss.mean() - p) <= 0.3 * p  # ~10k conditioning samples
    runs = bursts_of(mask)
    assert abs(runs.mean() - 1 / (1 - p)) <= 0.02


def test_same_seed_same_decisions_other_seed_other_decisions():
    spec = PROFILES["stress"]

    def decisions(seed: int, direction: str):
        return [(r.time, r.data) for r in run(Impairment(spec, seed, direction), 20_000)]

    a = decisions(7, "up")
    assert a == decisions(7, "up")
    assert a != decisions(8, "up")
    assert a != decisions(7, "down")  # each direction has its own generator


def test_knobs_draw_from_their_own_streams():
    """Turning duplicates and reordering on does not change which datagrams are lost."""
    base = set(ids(run(Impairment(LinkSpec(loss=0.05, burst=2), 3, "up"), 20_000)))
    more = set(ids(run(Impairment(LinkSpec(loss=0.05, burst=2, reorder=0.05,
                                           duplicate=0.05, jitter_ms=2), 3, "up"), 20_000)))
    assert base == more


# ------------------------------------------------------------------------ jitter, FIFO
def test_jitter_is_fifo_capped_and_heavy_tailed():
    cap = 3.0
    dense = run(Impairment(LinkSpec(jitter_ms=cap), 1, "up"), 50_000, step=0.0005)
    assert ids(dense) == list(range(50_000))  # jitter alone never reorders
    t = np.array([r.time for r in dense])
    arr = np.array([r.arrival for r in dense])
    assert np.all(np.diff(t) >= 0)
    assert np.all(t - arr <= cap / 1000 + 1e-12) and np.all(t >= arr)
    # sparse arrivals: FIFO never binds, so the delays are the distribution itself
    sparse = run(Impairment(LinkSpec(jitter_ms=cap), 1, "up"), 50_000, step=0.1)
    d = np.array([1000 * (r.time - r.arrival) for r in sparse])
    median = JITTER_SCALE * cap * (2 ** (1 / JITTER_SHAPE) - 1)
    assert abs(np.median(d) - median) <= 0.05 * median
    p_cap = (1 + 1 / JITTER_SCALE) ** -JITTER_SHAPE  # Lomax tail at the cap: 2.7 %
    assert abs(np.mean(d >= cap - 1e-6) - p_cap) <= 0.15 * p_cap
    assert d.max() == pytest.approx(cap)


def test_fixed_delay_adds_exactly():
    out = run(Impairment(LinkSpec(delay_ms=25.0), 1, "down"), 1000, step=0.01)
    assert all(abs(r.time - r.arrival - 0.025) < 1e-12 for r in out)


# ------------------------------------------------------------------- reorder, duplicate
def test_reorder_swaps_adjacent_neighbours_only():
    p, n = 0.05, 100_000
    imp = Impairment(LinkSpec(reorder=p, jitter_ms=2.0), 9, "up")
    out = ids(run(imp, n, step=0.005))
    assert sorted(out) == list(range(n))  # nothing lost or added
    swaps = [i for i in range(n - 1) if out[i] == out[i + 1] + 1]
    for i in swaps:  # each swap is a neighbour pair exchanged, nothing else moves
        assert out[i] == out[i + 1] + 1
    moved = [i for i in range(n) if out[i] != i]
    assert len(moved) == 2 * len(swaps)
    assert len(swaps) == imp.stats.reordered
    # a datagram is picked with p unless it is the partner of a swap: rate p / (1 + p)
    assert abs(len(swaps) / n - p / (1 + p)) <= 0.1 * p


def test_reorder_without_a_partner_is_released_after_the_hold_time():
    imp = Impairment(LinkSpec(reorder=0.999), 1, "up")
    assert imp.feed(b"only", 10.0) == []
    assert imp.deadline() == pytest.approx(10.0 + REORDER_HOLD_S)
    assert imp.poll(10.0 + REORDER_HOLD_S / 2) == []
    (r,) = imp.poll(10.0 + REORDER_HOLD_S)
    assert r.data == b"only" and r.time == pytest.approx(10.0 + REORDER_HOLD_S)
    assert imp.stats.reorder_timeouts == 1 and imp.stats.reordered == 0


def test_duplicate_sends_a_second_copy_right_after():
    imp = Impairment(LinkSpec(duplicate=0.05), 4, "down")
    out = run(imp, 40_000)
    got = ids(out)
    counts = collections.Counter(got)
    dups = [k for k, c in counts.items() if c == 2]
    assert set(counts.values()) <= {1, 2} and sorted(counts) == list(range(40_000))
    assert len(dups) == imp.stats.duplicated
    assert abs(len(dups) / 40_000 - 0.05) <= 0.005
    for k in dups[:100]:
        i = got.index(k)
        assert got[i + 1] == k and out[i].time == out[i + 1].time


# --------------------------------------------------------------------------- outages
def test_outage_drops_both_directions_inside_each_window():
    outages = Outages([Outage(2.0, 1.5), Outage(6.0, 0.5)])
    up = Impairment(LinkSpec(), 1, "up", outages)
    down = Impairment(LinkSpec(), 1, "down", outages)
    t0, step = 50.0, 0.01
    passed_up, passed_down = [], []
    for i in range(1000):  # 10 s; the first datagram (up) starts the clock
        now = t0 + i * step
        passed_up += ids(up.feed(i.to_bytes(4, "big"), now))
        passed_down += ids(down.feed(i.to_bytes(4, "big"), now + step / 2))

    def inside(t):
        return 2.0 <= t < 3.5 or 6.0 <= t < 6.5

    assert passed_up == [i for i in range(1000) if not inside(i * step)]
    assert passed_down == [i for i in range(1000) if not inside(i * step + step / 2)]
    assert up.stats.outage == 1000 - len(passed_up) == 200
    assert down.stats.outage == 1000 - len(passed_down)
    assert up.stats.lost == 0 and up.stats.loss_rate == 0.0


# ------------------------------------------------------------------------ configuration
def test_profiles_and_per_direction_overrides():
    cfg = make_config("wifi", 3, [(1, 2)], loss={"down": 0.1}, jitter_ms=1.0)
    assert cfg.up.loss == 0.02 and cfg.down.loss == 0.1
    assert cfg.up.burst == cfg.down.burst == 3.0
    assert cfg.up.jitter_ms == cfg.down.jitter_ms == 1.0
    assert cfg.up.reorder == 0.005 and cfg.outages == (Outage(1.0, 2.0),)
    assert PROFILES["wired"] == LinkSpec(jitter_ms=0.3)
    assert PROFILES["stress"].loss == 0.10 and PROFILES["stress"].duplicate == 0.005
    for bad in ({"loss": 1.0}, {"reorder": -0.1}, {"burst": 0.5}, {"jitter_ms": -1}):
        with pytest.raises(RelayError):
            make_config(None, **bad)
    with pytest.raises(RelayError):
        make_config("lte")
    with pytest.raises(RelayError):
        Outages([Outage(1.0, 0.0)])


@pytest.mark.parametrize("args,msg", [
    (["--loss", "1.5"], "loss 1.5"),
    (["--loss", "left:0.1"], "prefix"),
    (["--jitter-ms", "abc"], "not a number"),
    (["--to", "nowhere"], "HOST:PORT"),
])
def test_relay_cli_refuses_bad_flags_in_one_line(args, msg):
    base = {"--listen": "127.0.0.1:0", "--to": "127.0.0.1:9"}
    argv = [a for k, v in base.items() if k not in args for a in (k, v)] + args
    r = subprocess.run([sys.executable, "-m", "stemlink", "relay", *argv, "--seconds", "0.5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_relay_cli_forwards_logs_and_summarises(tmp_path):
    """The command as a user runs it, against a UDP echo: what reached the echo and came
    back is exactly what the log says passed, and the summary counts the same."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.05)
    log = tmp_path / "relay.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stemlink", "relay", "--listen", "127.0.0.1:0", "--to",
         f"127.0.0.1:{echo.getsockname()[1]}", "--loss", "0.3", "--burst", "2",
         "--duplicate", "down:0.1", "--seed", "5", "--log", str(log), "--seconds", "3"],
        stderr=subprocess.PIPE, text=True)
    echoed, back, stop = [0], [], threading.Event()

    def echo_loop():
        while not stop.is_set():
            try:
                d, a = echo.recvfrom(2048)
            except TimeoutError:
                continue
            echo.sendto(d, a)
            echoed[0] += 1

    def collect(client):
        while not stop.is_set():
            try:
                back.append(client.recv(2048))
            except TimeoutError:
                continue

    threads = []
    try:
        banner = proc.stderr.readline()
        port = int(banner.split("listening on 127.0.0.1:")[1].split(",")[0])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(0.05)
        client.connect(("127.0.0.1", port))
        threads = [threading.Thread(target=echo_loop), threading.Thread(target=collect,
                                                                        args=(client,))]
        for t in threads:
            t.start()
        for i in range(200):
            client.send(i.to_bytes(4, "big") * 10)
            time.sleep(0.002)
        rest = proc.communicate(timeout=20)[1]
    finally:
        stop.set()
        for t in threads:
            t.join()
        if proc.poll() is None:
            proc.kill()
    echoed = echoed[0]
    assert proc.returncode == 0, rest
    lines = [ln.split(" ", 3) for ln in log.read_text().splitlines()]
    up = [a for _, d, _, a in lines if d == "up"]
    down = [a for _, d, _, a in lines if d == "down"]
    assert len(up) == 200 and all(int(s) == 40 for _, _, s, _ in lines)
    assert echoed == sum(a != "drop" for a in up) == len(down)
    n_dup = sum(a.endswith(" dup") for a in down)
    assert len(back) == sum(a != "drop" for a in down) + n_dup
    assert f"up: in 200, out {echoed}, dropped {200 - echoed} " in rest
    assert f"duplicated {n_dup}," in rest


# --------------------------------------------------------------- end to end: send, server
def test_send_through_the_relay_loses_exactly_what_the_relay_dropped(tmp_path, model_dir,
                                                                     example):
    """Real server, real model, real `send` in real time through a lossy, jittery,
    reordering, duplicating relay (server→client; client→server jitter only). The client
    loses exactly the stem blocks the relay dropped, counts exactly its duplicates, writes
    every block the relay delivered to the sample at its place and silence where one was
    dropped, and the output length is exact. (What the server computed under this
    machine's load is not at issue here: the blocks are compared with what the relay
    passed on, decoded from the datagrams themselves.)"""
    from stemlink.udp_client.sender import SendOptions, send_file
    from stemlink.udp_server.server import ServeOptions, ServerThread
    from stemlink.wire import packets as pk
    from stemlink.wire.constants import PacketType

    x, sr = example
    wav = tmp_path / "in.wav"
    n = 3 * sr
    sf.write(wav, x[:, :n].T, sr, subtype="PCM_16")
    seen = {"in": collections.Counter(), "out": collections.Counter()}

    def tap(direction, data, what):
        if direction == "down":
            seen[what][data] += 1

    cfg = make_config(None, seed=2024, jitter_ms={"up": 1.0, "down": 2.0},
                      loss={"down": 0.05}, burst={"down": 2.0}, reorder={"down": 0.02},
                      duplicate={"down": 0.02})
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0)) as st:
        with Relay(st.address, cfg, tap=tap) as relay:
            # a long drain: every block the relay delivers is read, even on a loaded machine
            rep = asyncio.run(send_file(SendOptions(wav, relay.address, tmp_path / "relay",
                                                    realtime=True, preset="balanced",
                                                    drain_s=5.0)))

    def stem_key(data):
        h = pk.decode_header(data)
        return (h.stem, h.timestamp) if h.type is PacketType.STEM else None

    dropped = seen["in"] - seen["out"]
    extra = seen["out"] - seen["in"]
    lost_blocks = {stem_key(d) for d in dropped} - {None}
    assert sum(dropped.values()) == relay.stats["down"].lost > 0
    assert relay.stats["up"].dropped == 0 and relay.stats["down"].send_errors == 0
    came = {stem_key(d) for d in seen["in"]} - {None}
    delivered = {stem_key(d) for d in seen["out"]} - {None}
    # the client misses exactly the blocks the relay dropped, plus any the server never
    # sent at all (none on a quiet machine; an overloaded one may skip work)
    assert lost_blocks == came - delivered
    assert len(lost_blocks) == sum(stem_key(d) is not None for d in dropped)
    assert rep.received == len(delivered)
    assert rep.lost == rep.expected - len(delivered) == (
        len(lost_blocks) + rep.expected - len(came)), rep.summary()
    assert rep.duplicates == sum(c for d, c in extra.items() if stem_key(d) is not None)
    assert relay.stats["down"].duplicated == sum(extra.values()) > 0
    assert relay.stats["down"].reordered > 0
    b, d = rep.block, rep.delay
    want = np.zeros((len(rep.stems), 2, -(-(n + d) // b) * b), np.float32)
    for data in seen["out"]:
        h = pk.decode_header(data)
        if h.type is PacketType.STEM:
            pk.read_media(data, h, want[h.stem, :, h.timestamp:h.timestamp + h.frames])
    for stem, ts in lost_blocks:
        assert not want[stem, :, ts:ts + b].any()
    for i, name in enumerate(rep.stems):
        got, _ = sf.read(tmp_path / "relay" / f"{name}.wav", always_2d=True, dtype="float32")
        assert got.shape == (n, 2)  # exact length, whatever was lost
        np.testing.assert_array_equal(got.T, want[i, :, d:d + n])
