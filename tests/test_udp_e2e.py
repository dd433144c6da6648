"""End to end on loopback: real sockets, the real server and client, the real model."""

import asyncio
import gc
import socket
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import soundfile as sf

from stemlink.separate import separate_file
from stemlink.udp_client.core import ClientCore
from stemlink.udp_client.sender import SendOptions, send_file
from stemlink.udp_client.transport import connect
from stemlink.udp_server.server import ServeOptions, ServerThread
from stemlink.wire import auth
from stemlink.wire import packets as pk
from stemlink.wire.constants import PacketType
from tests.conftest import sdr

STEMS = ("vocals", "accompaniment")


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0, idle_timeout=3.0,
                                   max_sessions=8)) as st:
        yield st


def read_stems(folder):
    return {s: sf.read(folder / f"{s}.wav", always_2d=True)[0] for s in STEMS}


def test_send_matches_separate(tmp_path, server, model_dir, example):
    """`stemlink send` (a separate process, as a user runs it) against `separate`, same
    preset; the client process must not import the engine, onnxruntime or torch."""
    from stemlink.export.checkpoint import example_audio

    host, port = server.address
    script = (
        "import sys\n"
        "from stemlink.cli import cli\n"
        f"cli.main(['send', {str(example_audio())!r}, '--server', '{host}:{port}', '--out',"
        f" {str(tmp_path / 'net')!r}, '--preset', 'monitor', '--as-fast-as-possible',"
        f" '--stats', {str(tmp_path / 'stats.json')!r}], standalone_mode=False)\n"
        "bad = [m for m in sys.modules if m.startswith(('stemlink.engine', 'onnxruntime',"
        " 'torch'))]\n"
        "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lost 0" in r.stdout and "D = 5119 samples" in r.stdout
    separate_file(example_audio(), model_dir, tmp_path / "file", preset="monitor")
    net, ref = read_stems(tmp_path / "net"), read_stems(tmp_path / "file")
    x = example[0]
    for s in STEMS:
        assert net[s].shape == (x.shape[1], 2)
        assert sdr(ref[s], net[s]) >= 40.0, s


def test_four_concurrent_clients_get_their_own_stems(tmp_path, server, model_dir, example):
    _four_clients(tmp_path, server, model_dir, example)


def test_two_workers_serve_four_clients_each_their_own_stems(tmp_path, model_dir, example):
    """`serve --workers 2`: two worker threads, each with its own backend (one ONNX
    Runtime thread each here); sessions are pinned to one worker, output is the same."""
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0, idle_timeout=3.0,
                                   max_sessions=8, workers=2)) as st:
        pool = st.server.worker
        _four_clients(tmp_path, st, model_dir, example)
        assert len(pool.workers) == 2
        assert all(w.batches > 0 for w in pool.workers)  # both carried sessions


def _four_clients(tmp_path, server, model_dir, example):
    x, sr = example
    seconds = 4 * sr
    inputs = [x[:, :seconds], x[::-1, 2 * sr:2 * sr + seconds], x[:, -seconds:],
              0.5 * x[:, 3 * sr:3 * sr + seconds]]
    paths = []
    for i, xi in enumerate(inputs):
        p = tmp_path / f"in{i}.wav"
        sf.write(p, xi.T, sr, subtype="PCM_16")
        paths.append(p)

    async def all_four():
        return await asyncio.gather(*[
            send_file(SendOptions(p, server.address, tmp_path / f"net{i}", realtime=False,
                                  preset="balanced")) for i, p in enumerate(paths)])

    reports = asyncio.run(all_four())
    assert len({r.stems[0] for r in reports}) == 1
    refs = []
    for i, p in enumerate(paths):
        separate_file(p, model_dir, tmp_path / f"ref{i}", preset="balanced")
        refs.append(read_stems(tmp_path / f"ref{i}"))
    for i, rep in enumerate(reports):
        assert rep.lost == 0, rep.summary()
        net = read_stems(tmp_path / f"net{i}")
        for s in STEMS:
            assert sdr(refs[i][s], net[s]) >= 40.0, (i, s)
        # and nobody else's: far from every other client's reference
        for j in range(4):
            if j != i:
                assert sdr(refs[j]["vocals"], net["vocals"]) < 10.0, (i, j)


def test_vanished_client_is_timed_out_and_freed(server):
    core = server.server.core

    async def vanish():
        c = ClientCore(sample_rate=44100, channels=2)
        proto, acc = await connect(c, server.address, lambda ev: None)
        blk = np.zeros((2, 256), np.float32)
        for k in range(20):
            proto.send(c.audio(blk, k * 256, time.monotonic_ns()))
        await asyncio.sleep(0.3)
        sid = acc.session
        ref = weakref.ref(server.server.worker.stream(sid).sep)
        proto.transport.close()  # gone without a BYE
        return sid, ref

    sid, ref = asyncio.run(vanish())
    for _ in range(150):  # idle timeout 3 s, expiry checked every 0.5 s
        if sid not in core.sessions:
            break
        time.sleep(0.1)
    assert sid not in core.sessions
    assert (sid, "timeout") in core.recent_ends
    for _ in range(100):  # the worker lets the stream go once the loop tells it
        gc.collect()
        if ref() is None:
            break
        time.sleep(0.1)
    assert ref() is None  # the separator and its buffers are gone


def _garbage(server_addr, live_session: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    key = auth.public_key()
    good = pk.encode(pk.Header(PacketType.AUDIO, 0, live_session, 1, 0, 0, 256, 2, 1),
                     bytes(1024), key)
    out = [rng.bytes(int(n)) for n in rng.integers(0, 1400, 200)]
    out += [good[:n] for n in range(0, len(good), 7)]  # truncated headers and bodies
    wrong_version = bytearray(good)
    wrong_version[2] = 9
    absurd = bytearray(good)
    absurd[34:36] = b"\xff\xff"
    out += [bytes(wrong_version), bytes(absurd), good]  # `good` has the wrong key/address
    return out


def test_server_survives_garbage_while_a_session_streams(tmp_path, server, example):
    x, sr = example
    p = tmp_path / "live.wav"
    sf.write(p, x[:, : 3 * sr].T, sr, subtype="PCM_16")
    core = server.server.core
    dropped_before = core.counters["dropped"]

    async def run():
        task = asyncio.create_task(send_file(SendOptions(p, server.address, tmp_path / "o",
                                                         realtime=True)))
        await asyncio.sleep(0.5)
        live = next(iter(core.sessions))
        junk = _garbage(server.address, live)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for i, d in enumerate(junk):
            sock.sendto(d, server.address)
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        try:
            reply = sock.recv(2048)
        except BlockingIOError:
            reply = None
        sock.close()
        return await task, reply, len(junk)

    rep, reply, n_junk = asyncio.run(run())
    assert reply is None  # not one byte back to the sender of garbage
    assert core.counters["dropped"] - dropped_before >= n_junk
    # every stem block of the live session arrived (how fast is the benchmarks' business)
    assert rep.lost == 0 and rep.received == rep.expected, rep.summary()
    assert server._thread.is_alive()


def test_send_gives_up_in_one_line_when_no_stem_ever_comes_back(tmp_path, server, example):
    """Not paced, and every datagram after the handshake lost (a relay outage): `send`
    stops with a clear error after its stall limit instead of hanging."""
    from stemlink.bench.relay import Relay, make_config
    from stemlink.udp_client.core import ClientError

    p = tmp_path / "in.wav"
    sf.write(p, example[0][:, :44100 * 3].T, 44100, subtype="PCM_16")
    with Relay(server.address, make_config(outages=[(0.3, 600.0)])) as relay:
        opts = SendOptions(p, relay.address, tmp_path / "o", realtime=False, stall_s=1.5)

        async def go():
            await asyncio.sleep(0)
            return await send_file(opts)

        with pytest.raises(ClientError, match="no stems"):
            asyncio.run(go())


def test_paced_send_says_when_the_server_stopped_answering(tmp_path, server, example):
    """Paced, and from 1 s on nothing comes back (the server killed, or the network gone):
    `send` stops with one line naming when it last heard from the server, instead of
    streaming on into nothing and exiting 0."""
    from stemlink.bench.relay import Relay, make_config
    from stemlink.udp_client.core import ClientError

    p = tmp_path / "in.wav"
    sf.write(p, example[0][:, :44100 * 6].T, 44100, subtype="PCM_16")
    with Relay(server.address, make_config(outages=[(1.0, 600.0)])) as relay:
        opts = SendOptions(p, relay.address, tmp_path / "o", realtime=True, silent_s=1.5)
        with pytest.raises(ClientError, match=r"stopped answering.*since [01]\.\d s into"):
            asyncio.run(send_file(opts))
    assert not (tmp_path / "o").exists()  # no files that would be mostly guesswork


def test_no_stem_leaves_after_the_session_ended():
    """Worker output that arrives after BYE is dropped and counted, never sent."""
    from stemlink.udp_client.core import ClientCore as CC
    from tests.test_server_core import handshake, make_server

    s, c = make_server(), CC(sample_rate=44100, channels=2)
    _, (acc,) = handshake(s, c)
    s.receive_datagram(c.bye(101.0), ("127.0.0.1", 40000), 101.0)
    s.take_outbox()
    s.deliver(acc.session, [b"stem" * 10, b"stem" * 10])
    assert s.take_outbox() == [] and s.counters["stem_after_close"] == 2


def test_a_model_whose_accept_cannot_fit_a_datagram_is_refused_at_load():
    from stemlink.udp_server.core import ServerCore

    with pytest.raises(pk.WireError, match="fit one datagram"):
        ServerCore(card_stems=[f"stem-{i:02d}-" + "x" * 54 for i in range(16)],
                   model_name="m", sample_rate=44100, channels=2, make_stream=None)
