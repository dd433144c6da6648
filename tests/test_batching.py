"""The batching scheduler (issue 11): windows due across sessions run as one inference,
earliest deadline first, one window per session per batch, with an optional batching
delay; output is bit for bit what each session gets alone. Real model, real audio, the
sans-IO server core and worker on a simulated clock (tests/test_server_gaps.py's Rig)."""

from __future__ import annotations

import numpy as np
import pytest

from stemlink.engine.errors import EngineError
from stemlink.udp_server.scheduler import Scheduler
from stemlink.udp_server.stream import Job
from stemlink.udp_server.worker import BatchConfig, Output, Worker
from tests.test_server_gaps import ADDR, SR, B, Rig, _run, _song

ADDRS = [("127.0.0.1", 41000 + i) for i in range(3)]


@pytest.fixture(scope="module")
def clips(example):
    """Three different 3 s signals: the example at two offsets and a generated song."""
    from stemlink.bench.song import make_song

    x = _song(example, 9.0)
    n = int(3.0 * SR) // B * B
    song = make_song(3.0, 5, SR)[:, :n].astype(np.float32)
    return [np.ascontiguousarray(x[:, :n]), np.ascontiguousarray(x[:, 3 * SR:3 * SR + n]),
            np.ascontiguousarray(song)]


def _together(rig, clips):
    """The sessions' blocks arrive in the same instant, so their windows fall due together."""
    for a in ADDRS:
        rig.connect(a)
    n = clips[0].shape[1] // B
    for k in range(n):
        rig.now = 100.0 + (k + 1) * B / SR
        for a, x in zip(ADDRS, clips, strict=True):
            c = rig.clients[a][0]
            rig.core.receive_datagram(c.audio(x[:, k * B:(k + 1) * B], k * B, 0), a, rig.now)
        rig.tick(0.0)
    rig.tick(0.1)  # past the reorder window: the last blocks are released
    return n * B


@pytest.mark.parametrize("name", ["monitor", "ultra", "extreme"])
def test_batched_output_equals_unbatched_bit_for_bit(engine, batch_engine, clips, name):
    """Three sessions on a worker with a batch of 4: their windows share inferences, and
    each session's stems are bit for bit its solo, unbatched run's."""
    rig = Rig(engine, cfg_name=name, backend=batch_engine.backend, batch=BatchConfig(4))
    n = _together(rig, clips)
    w = rig.worker
    assert w.batches > 0 and w.batched_windows == 3 * w.batches  # every batch was full
    for a, x in zip(ADDRS, clips, strict=True):
        solo = _run(engine, x, rig=Rig(engine, cfg_name=name))
        y, flags, have = rig.output(n, a)
        assert have.all() and not flags.any()
        np.testing.assert_array_equal(y, solo.output(n)[0])


def test_batch_of_one_is_the_separator_alone(engine, batch_engine, clips):
    """The worker on its own backend, B = 1, gives what the separator's own process()
    path does (a worker without a backend of its own)."""
    rig = Rig(engine, cfg_name="ultra", backend=batch_engine.backend, batch=BatchConfig(1))
    x = clips[2]
    rig.connect()
    n = x.shape[1] // B
    for k in range(n):
        rig.now = 100.0 + (k + 1) * B / SR
        rig.send(x, k)
    rig.tick(0.1)
    y = rig.output(n * B)[0]
    ref = _run(engine, x, rig=Rig(engine, cfg_name="ultra")).output(n * B)[0]
    np.testing.assert_array_equal(y, ref)
    assert rig.worker.batches == rig.worker.batched_windows > 0


def test_batching_delay_holds_a_partial_batch_until_its_budget(engine, batch_engine, clips):
    """B = 4 and a 2 ms budget, one session: its window waits out the budget (no output,
    wait_time says how long), then runs alone; with a second session's window due within
    the budget the two run as one batch."""
    rig = Rig(engine, cfg_name="ultra", backend=batch_engine.backend,
              batch=BatchConfig(4, 0.002))
    w = rig.worker
    x = clips[0]
    rig.connect(ADDRS[0])
    c = rig.clients[ADDRS[0]][0]
    k = 0
    while w.batches == 0 and not w._ready:  # feed until a window is due
        rig.now = 100.0 + (k + 1) * B / SR
        rig.core.receive_datagram(c.audio(x[:, k * B:(k + 1) * B], k * B, 0), ADDRS[0],
                                  rig.now)
        rig.now += 0.011  # past the reorder window: the block is released
        rig.core.on_timer(rig.now)
        for m in rig.core.take_messages():
            w.handle_message(m)
        while w.step(rig.now):
            pass
        k += 1
    assert w.batches == 0 and len(w._ready) == 1
    assert w.wait_time(rig.now) == pytest.approx(0.002)
    assert not w.step(rig.now + 0.0019) and w.batches == 0
    w.step(rig.now + 0.002)
    assert w.batches == 1 and w.batched_windows == 1


def test_scheduler_orders_by_deadline_stale_last_and_passes_over_busy():
    class FakeStream:
        def __init__(self, sid, playout):
            self.session, self.playout = sid, playout

        def wanted(self, due, now):
            return now <= due + self.playout

    s = Scheduler()
    for sid, playout in ((1, 0.05), (2, 0.05), (3, 10.0)):
        s.open(FakeStream(sid, playout))
    jobs = [Job(1, 0, 0, 0, 0, due=1.00), Job(1, 256, 1, 0, 0, due=1.10),
            Job(2, 0, 0, 0, 0, due=1.02), Job(3, 0, 0, 0, 0, due=0.90)]
    for j in jobs:
        assert s.submit(j)
    # at t = 1.04: session 1's first job is still wanted (due 1.00 + 50 ms), 3's is wanted
    # (10 s budget), 2's too; earliest deadline first
    got = [(st.session, j.due) for st, j in iter(lambda: s.pop(1.04), None)]
    assert got == [(3, 0.90), (1, 1.00), (2, 1.02), (1, 1.10)]
    for j in jobs:
        s.submit(j)
    # at t = 1.06 session 1's first job is stale (its output can no longer be played): it
    # goes after every job still worth playing, whatever its deadline
    got = [(st.session, j.due) for st, j in iter(lambda: s.pop(1.06), None)]
    assert got == [(3, 0.90), (2, 1.02), (1, 1.00), (1, 1.10)]
    for j in jobs:
        s.submit(j)
    assert s.pop(1.04, busy={3})[1].session == 1 and s.has_job(busy={1, 2, 3}) is False


def test_batch_larger_than_the_backend_is_refused(engine):
    with pytest.raises(EngineError):
        Worker(lambda r: None, backend=engine.backend, batch=BatchConfig(2))
    with pytest.raises(EngineError):
        Worker(lambda r: None, batch=BatchConfig(2))  # batching needs the worker's backend
    with pytest.raises(EngineError):
        BatchConfig(0).validate()


def test_infer_first_runs_only_the_filled_slots(batch_engine, engine):
    """Slots 0..n-1 get the masks batch 1 gives them, bit for bit; the rest are untouched."""
    be = batch_engine.backend
    rng = np.random.default_rng(0)
    be.inputs[...] = rng.random(be.inputs.shape, np.float32)
    be.outputs[3] = 7.0
    be.infer_first(3)
    for i in range(3):
        engine.backend.inputs[0] = be.inputs[i]
        np.testing.assert_array_equal(be.outputs[i], engine.backend.infer()[0])
    assert (be.outputs[3] == 7.0).all()
    with pytest.raises(EngineError):
        be.infer_first(5)


def test_reports_reach_the_loop_in_order_per_session(engine, batch_engine, clips):
    """Output datagrams of a session come back in timestamp order even when its jobs
    span several batches."""
    rig = Rig(engine, cfg_name="extreme", backend=batch_engine.backend, batch=BatchConfig(4))
    _together(rig, clips)
    _, got = rig.clients[ADDR] if ADDR in rig.clients else rig.clients[ADDRS[0]]
    ts = [ev.header.timestamp for ev in got["events"] if hasattr(ev, "header")
          and ev.header.stem == 0]
    assert ts == sorted(ts) and len(ts) == clips[0].shape[1] // B
    assert not any(isinstance(r, Output) for r in rig.reports)  # all delivered


def test_more_cpu_workers_than_cores_is_said_at_start(model_dir):
    """`serve --workers N` above the core count starts (it is allowed) but says what it
    costs, in a line of its own; at the core count it says nothing."""
    import os

    from stemlink.udp_server.server import ServeOptions, Server

    cores = os.cpu_count() or 1
    for workers, warned in ((cores + 1, True), (1, False)):
        srv = Server(ServeOptions(str(model_dir), "127.0.0.1", 0, workers=workers))
        try:
            lines = srv.warnings()
            assert any("share the cores" in w for w in lines) is warned, lines
            assert len(srv._backends) == workers
        finally:
            srv.sock.close()
            srv._close_backends()
