"""Real networks, server side, sans-IO: the server core and the worker's scheduler and
streams wired together in memory with the real model and real audio, on a simulated
clock. Each case asserts the inference count, the output length and alignment, and which
blocks carry CONCEALED."""

from __future__ import annotations

import numpy as np
import pytest

from stemlink.engine.presets import preset
from stemlink.udp_client.core import ClientCore, SessionError, StemBlock
from stemlink.udp_server.core import ServerCore, StreamSetup
from stemlink.udp_server.worker import BatchConfig, Failed, Output, Released, Worker
from stemlink.wire import packets as pk
from stemlink.wire.constants import ErrorCode, Flags

SR, B = 44100, 256
ADDR = ("127.0.0.1", 40000)


class Rig:
    """One server core, one worker (not started: driven here), N clients."""

    def __init__(self, engine, cfg_name="monitor", reorder_ms=10.0, fail_after=None,
                 backend=None, batch=None):
        self.engine, self.now = engine, 100.0
        self.cfg = preset(cfg_name)

        def make_stream(req):
            sep = engine.separator(self.cfg)
            if fail_after is not None:
                sep = Exploding(sep, fail_after)
            return StreamSetup(sep, cfg_name, self.cfg.hop_frames, self.cfg.lookahead,
                               self.cfg.synthesis, sep.delay)

        self.core = ServerCore(card_stems=list(engine.card.stems), model_name="m",
                               sample_rate=SR, channels=2, make_stream=make_stream,
                               reorder_ms=reorder_ms)
        self.reports: list = []
        self.worker = Worker(self.reports.extend, clock=lambda: self.now, backend=backend,
                             batch=batch or BatchConfig())
        self.clients: dict = {}

    def connect(self, addr=ADDR, playout_ms=pk.ARCHIVAL, features=0):
        c = ClientCore(sample_rate=SR, channels=2, block=B, playout_ms=playout_ms,
                       features=features)
        self.core.receive_datagram(c.connect(self.now), addr, self.now)
        for d, _ in self.core.take_outbox():
            for ev in c.receive(d, self.now):
                self.core.receive_datagram(ev[1], addr, self.now)
        (acc,) = [e for d, _ in self.core.take_outbox() for e in c.receive(d, self.now)]
        self.clients[addr] = (c, {})
        return c, acc.accept

    def send(self, x, k, addr=ADDR):
        c, _ = self.clients[addr]
        self.core.receive_datagram(c.audio(x[:, k * B:(k + 1) * B], k * B, 0), addr, self.now)
        self.pump()

    def tick(self, dt):
        self.now += dt
        self.core.on_timer(self.now)
        self.pump()

    def pump(self):
        for m in self.core.take_messages():
            self.worker.handle_message(m)
        while self.worker.step(self.now):
            pass
        for r in self.reports:
            if isinstance(r, Output):
                self.core.deliver(r.session, r.datagrams)
            elif isinstance(r, Failed):
                self.core.stream_failed(r.session, r.message, r.counters, self.now)
            elif isinstance(r, Released):
                self.core.stream_released(r.session, r.counters)
        self.reports.clear()
        for d, addr in self.core.take_outbox():
            c, got = self.clients[addr]
            for ev in c.receive(d, self.now):
                got.setdefault("events", []).append(ev)
                if isinstance(ev, StemBlock):
                    h = ev.header
                    got[(h.timestamp, h.stem)] = (pk.decode_header(ev.data).flags, ev.data)

    def output(self, n, addr=ADDR):
        """Stems [S, 2, n] as the client would write them (missing blocks silent), the
        CONCEALED flag per block, and which blocks arrived."""
        _, got = self.clients[addr]
        s = len(self.engine.card.stems)
        y = np.zeros((s, 2, n), np.float32)
        flags = np.zeros(n // B, bool)
        have = np.zeros(n // B, bool)
        for k in range(n // B):
            for st in range(s):
                if (k * B, st) in got:
                    f, data = got[(k * B, st)]
                    pk.read_media(data, pk.decode_header(data), y[st, :, k * B:(k + 1) * B])
                    flags[k] |= bool(f & Flags.CONCEALED)
                    have[k] = True
        return y, flags, have

    def stream(self, addr=ADDR):
        sid = self.clients[addr][0].session
        return self.worker.scheduler.streams[sid]


class Exploding:
    """Wraps the real separator and raises after `n` blocks: a bug in processing."""

    def __init__(self, sep, n):
        self._sep, self._n = sep, n

    def __getattr__(self, name):
        return getattr(self._sep, name)

    def _count(self):
        self._n -= 1
        if self._n < 0:
            raise RuntimeError("boom")

    def process(self, block):
        self._count()
        return self._sep.process(block)

    def begin(self, block, infer=True):  # the worker's stepwise path
        self._count()
        return self._sep.begin(block, infer)


def _song(example, seconds):
    x = example[0]
    n = int(seconds * SR) // B * B
    reps = -(-n // x.shape[1])
    return np.ascontiguousarray(np.tile(x, reps)[:, :n])


def _run(engine, x, *, order=None, skip=(), pause_after=None, pause_s=0.0, rig=None,
         playout_ms=pk.ARCHIVAL):
    """Stream x in real time (a block every B/SR s); `skip` blocks are lost; `order` sends
    blocks in a given order (reordering); a pause (Wi-Fi dropout) loses every block whose
    capture falls in it."""
    rig = rig or Rig(engine)
    rig.connect(playout_ms=playout_ms)
    n = x.shape[1] // B
    order = list(range(n)) if order is None else order
    for k in order:
        t = 100.0 + (k + 1) * B / SR
        if t > rig.now:
            rig.tick(t - rig.now)
        if k in skip:
            continue
        rig.send(x, k)
    rig.tick(1.0)  # reorder windows run out
    return rig


@pytest.fixture(scope="module")
def clip(example):
    return _song(example, 4.0)


@pytest.fixture(scope="module")
def undisturbed(engine, clip):
    rig = _run(engine, clip)
    y, flags, have = rig.output(clip.shape[1])
    assert have.all() and not flags.any()
    return y, rig.stream().inferences


def test_adjacent_swap_costs_nothing(engine, clip, undisturbed):
    """Blocks 100/101 and 300/301 arrive swapped (inside the reorder window): the output
    is bit-identical to the undisturbed run, nothing is concealed, no extra inference."""
    n = clip.shape[1] // B
    order = list(range(n))
    for a in (100, 300):
        order[a], order[a + 1] = order[a + 1], order[a]
    rig = _run(engine, clip, order=order)
    y, flags, have = rig.output(clip.shape[1])
    assert have.all() and not flags.any()
    np.testing.assert_array_equal(y, undisturbed[0])
    assert rig.stream().inferences == undisturbed[1]
    assert rig.core.sessions[rig.clients[ADDR][0].session].reorder.gaps == 0


def _concealed_span(st, t0, t1):
    """Output blocks that depend on input [t0, t1): (t0 + D - support, t1 + D + n_fft - 1)."""
    lo, hi = t0 + st.delay - st.support + 1, t1 + st.delay + st.reach - 1
    return {k for k in range(10_000) if k * B + B > lo and k * B < hi}


def test_a_lost_block_is_concealed_after_the_reorder_window(engine, clip, undisturbed):
    rig = _run(engine, clip, skip={150})
    y, flags, have = rig.output(clip.shape[1])
    st = rig.stream()
    assert have.all()  # output length is whole: the lost block's stems were sent too
    assert set(np.flatnonzero(flags)) == _concealed_span(st, 150 * B, 151 * B)
    assert st.inferences == undisturbed[1]  # the concealed block ran its inference
    assert st.counters["concealed_input_blocks"] == 1
    # outside the affected span the output is exactly the undisturbed one
    far = (st.delay + st.reach + 65 * 1024) // B + 151
    np.testing.assert_array_equal(y[..., :120 * B], undisturbed[0][..., :120 * B])
    np.testing.assert_array_equal(y[..., far * B:], undisturbed[0][..., far * B:])


START_S, TAIL_S = 0.5, 2.5


@pytest.fixture(scope="module")
def long_run(engine, example):
    x = _song(example, START_S + 10.0 + TAIL_S)
    ref = _run(engine, x)
    return x, ref.output(x.shape[1])[0], ref.stream().inferences


@pytest.mark.parametrize("seconds", [0.5, 1.9, 3.0, 10.0])
def test_dropouts_cost_no_burst_and_recover(engine, long_run, seconds):
    """A Wi-Fi dropout of 0.5 / 1.9 / 3 / 10 s: the worker runs at most one inference for
    the hole (none when it jumps it), the timeline stays exact, blocks touched carry
    CONCEALED, and from 2 s after the dropout the stems equal the undisturbed run's."""
    x_all, y_all, _ = long_run
    n = int((START_S + seconds + TAIL_S) * SR) // B
    x, yr = x_all[:, :n * B], y_all[..., :n * B]
    lost = set(range(int(START_S * SR) // B, int((START_S + seconds) * SR) // B))
    ref_inferences = _run(engine, x).stream().inferences if seconds < 10 else long_run[2]
    rig = _run(engine, x, skip=lost)
    y, flags, have = rig.output(x.shape[1])
    st = rig.stream()
    h_hop = rig.cfg.hop_frames * 1024
    saved = len(lost) * B / h_hop  # inferences an undisturbed stream runs in the hole
    extra = st.inferences - (ref_inferences - saved)
    assert -1 <= extra <= 1 + 1  # phase (±1), plus the fade-out block's one inference
    t0, t1 = min(lost) * B, (max(lost) + 1) * B
    span = _concealed_span(st, t0, t1)
    jumped = t1 - t0 >= st.memory
    sent = set(np.flatnonzero(have))
    if jumped:  # no STEM for the hole: nobody can use its silence
        assert st.counters["gap_jumps"] == 1 and st.counters["concealed_input_blocks"] == 0
        assert sent == set(range(n)) - set(range(t0 // B, t1 // B))
        assert set(np.flatnonzero(flags)) == span & set(range(t1 // B, n))
    else:
        assert sent == set(range(n)) and set(np.flatnonzero(flags)) == span
    after = int((START_S + seconds + 2.0) * SR) // B * B
    np.testing.assert_array_equal(y[..., after:], yr[..., after:])


def test_stale_input_costs_no_inference_and_sends_nothing(engine, clip):
    """A live client (playout budget 60 ms) whose blocks 1 s of audio arrive in one burst
    after a stall: the part of the burst older than the budget is fed without inference
    and without STEM packets; the rest is separated and sent."""
    rig = Rig(engine)
    rig.connect(playout_ms=60)
    n = clip.shape[1] // B
    for k in range(200):
        rig.tick(100.0 + (k + 1) * B / SR - rig.now)
        rig.send(clip, k)
    rig.tick(1.0)  # the stall: blocks 200.. wait in the client, then arrive at once
    for k in range(200, n):
        rig.send(clip, k)
    st = rig.stream()
    _, _, have = rig.output(clip.shape[1])
    stale = st.counters["stale_blocks"]
    assert stale > 0 and not have[200:200 + stale].any() and have[:200].all()
    assert have[200 + stale:].all()
    fresh = n - stale
    assert st.inferences <= fresh * B / (rig.cfg.hop_frames * 1024) + 2


def test_timestamps_jumping_back_restart_the_stream(engine, clip):
    """The sender starts its timeline over (fresh sequence numbers, timestamps back at 0):
    the session follows it instead of dropping everything as late."""
    rig = Rig(engine)
    rig.connect()
    for k in range(500):
        rig.send(clip, k)
    _, got = rig.clients[ADDR]
    got.clear()
    for k in range(200):
        rig.send(clip, k)
    sess = rig.core.sessions[rig.clients[ADDR][0].session]
    assert sess.counters["restarts"] == 1 and sess.counters["late"] <= 1
    _, _, have = rig.output(200 * B)
    assert have[1:].all()


def test_a_worker_failure_closes_only_that_session_with_an_error(engine, clip):
    rig = Rig(engine, fail_after=50)
    c, _ = rig.connect()
    for k in range(60):
        rig.send(clip, k)
    assert not rig.core.sessions and rig.core.counters["stream_failures"] == 1
    errs = [e for e in rig.clients[ADDR][1]["events"] if isinstance(e, SessionError)]
    assert len(errs) == 1 and errs[0].code == ErrorCode.INTERNAL
    before = dict(rig.core.counters)
    for k in range(60, 70):  # later packets: dropped and counted, nothing raised
        rig.core.receive_datagram(c.audio(clip[:, k * B:(k + 1) * B], k * B, 0), ADDR,
                                  rig.now)
    unknown = rig.core.counters["drop_unknown-session"] - before.get("drop_unknown-session", 0)
    assert unknown == 10
    assert rig.core.counters["drop_internal-error"] == before.get("drop_internal-error", 0)


def test_a_protocol_error_ends_the_session_with_an_error(engine, clip):
    rig = Rig(engine)
    c, _ = rig.connect()
    rig.send(clip, 0)
    rig.core.receive_datagram(c.audio(clip[:, :B], 7, 0), ADDR, rig.now)  # misaligned
    rig.pump()
    errs = [e for e in rig.clients[ADDR][1]["events"] if isinstance(e, SessionError)]
    assert len(errs) == 1 and errs[0].code == ErrorCode.PROTOCOL and not rig.core.sessions


@pytest.mark.parametrize("batched", [False, True], ids=["B1", "B4"])
def test_one_sessions_burst_does_not_delay_another(engine, batch_engine, clip, batched):
    """Earliest deadline first, stale upkeep last: session A stalls for 1 s and then dumps
    that second of audio at once; B's block due in that instant is taken before A's
    backlog, and B's stems are exactly its solo run's. Batched (B = 4), a batch holds one
    window per session, so A's backlog cannot crowd B's window out of it."""
    rig = (Rig(engine, backend=batch_engine.backend, batch=BatchConfig(4)) if batched
           else Rig(engine))
    a, b = ("127.0.0.1", 1), ("127.0.0.2", 2)
    rig.connect(a, playout_ms=60)
    rig.connect(b, playout_ms=60)
    sid_b = rig.clients[b][0].session
    order = []
    real_start = rig.worker._start

    def spy(st, job, now):
        order.append(st.session)
        return real_start(st, job, now)

    rig.worker._start = spy
    n, stall = 400, range(150, 322)

    def audio(addr, k):
        return rig.clients[addr][0].audio(clip[:, k * B:(k + 1) * B], k * B, 0)

    for k in range(n):
        rig.now = 100.0 + (k + 1) * B / SR
        rig.core.receive_datagram(audio(b, k), b, rig.now)
        if k in stall and k != stall[-1]:
            rig.pump()
            continue
        for j in (stall if k == stall[-1] else [k]):  # A's held-back second, at once
            rig.core.receive_datagram(audio(a, j), a, rig.now)
        order.clear()
        rig.pump()
        if k == stall[-1]:
            assert order[0] == sid_b and order.count(sid_b) == 1 and len(order) == 173
            assert rig.stream(a).counters["stale_blocks"] >= 160  # past A's 60 ms budget
    solo = _run(engine, clip[:, :n * B])
    np.testing.assert_array_equal(rig.output(n * B, b)[0], solo.output(n * B)[0])


def test_last_on_every_input_block_gets_no_more_parity_than_one_end(engine, clip):
    """A client flagging LAST on every block (wrongly, or to draw traffic) gets the stems'
    pair parity and one copy of the end, like any stream: not a copy per pair."""
    from stemlink.wire.constants import Features

    rig = Rig(engine)
    c, _ = rig.connect(features=int(Features.REDUNDANCY))
    n = 40
    for k in range(n):
        rig.core.receive_datagram(c.audio(clip[:, k * B:(k + 1) * B], k * B, 0,
                                          flags=int(Flags.LAST)), ADDR, rig.now)
        rig.pump()
    stems = len(engine.card.stems)
    assert rig.stream().counters["stem_packets"] == stems * n
    assert rig.stream().counters["parity_packets"] <= stems * (n // 2 + 1)
