"""`stemlink serve`: the uvloop glue around ServerCore and the separation workers.

The event loop only moves datagrams between the socket, the core and the worker; the
model runs on the worker thread so that inference never blocks receiving. One timer,
re-armed after every event, serves the core's reorder windows; a periodic tick expires
idle sessions and watches the worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from stemlink.engine import families
from stemlink.engine.families import describe_config
from stemlink.engine.session import Engine, open_engine
from stemlink.errors import StemlinkError
from stemlink.loop import run_loop
from stemlink.sockets import udp_socket
from stemlink.udp_server.core import PLAYOUT_MS, REORDER_MS, ServerCore, StreamRequest, StreamSetup
from stemlink.udp_server.limits import LimitConfig
from stemlink.udp_server.status import ServerSample, ServerStatus
from stemlink.udp_server.worker import (
    BatchConfig,
    Failed,
    Output,
    Released,
    Report,
    Worker,
    WorkerPool,
)
from stemlink.wire.auth import Credential, aead_available
from stemlink.wire.constants import ErrorCode, Features, PacketType

log = logging.getLogger("stemlink.server")
EXPIRE_EVERY_S = 0.5
MAX_WORKERS = 16


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 5005
    backend: str = "cpu"
    preset: str = "monitor"
    max_sessions: int = 8
    idle_timeout: float = 10.0
    psk: bytes = b""  # a passphrase (stretched with scrypt)
    compute_stats: str | None = None  # write per-block compute times here at exit (benches)
    # --- security and operations (issue 10)
    key: bytes = b""  # 32 bytes from a key file
    insecure: bool = False  # allow a non-loopback address without a key
    encrypt: bool = False  # require ChaCha20-Poly1305 on every session
    limits: LimitConfig | None = None  # None: defaults, with max_sessions above
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    reorder_ms: float = REORDER_MS
    playout_ms: float = PLAYOUT_MS
    # m and k of the default preset, for clients that leave preset and cadence to the
    # server (None: the preset's own)
    synthesis_hop: int | None = None
    mask_hold: int | None = None
    status_interval: float = 0.0  # seconds between status log lines; 0 = none
    # --- the batching scheduler (issue 11): worker threads, each with its own backend;
    # windows per inference and the batching delay (None: the backend class's default)
    workers: int = 1
    batch: int | None = None
    batch_delay_us: float | None = None


# Batching defaults per backend class. ONNX Runtime on CPU costs a batch of 2 twice a
# batch of 1 (issue 11's measurement), so batching gains nothing there; a GPU runs 32
# windows (a profile `export tensorrt` builds by default) in little more than the time of
# one (shared/gpu figures; not measured here: no GPU was lent).
BATCH_DEFAULTS = {"cpu": (1, 0.0), "accelerated": (32, 300.0)}  # (B, delay in µs)


def batch_config(opts: ServeOptions) -> BatchConfig:
    b, us = BATCH_DEFAULTS["cpu" if opts.backend == "cpu" else "accelerated"]
    b = opts.batch if opts.batch is not None else b
    us = opts.batch_delay_us if opts.batch_delay_us is not None else us
    cfg = BatchConfig(b, us / 1e6)
    cfg.validate()
    return cfg


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(i[4][0].split("%", 1)[0]).is_loopback for i in infos)


def check_exposure(host: str, credential: Credential, insecure: bool) -> str | None:
    """The refusal for an open server on a network address, or None. Loopback without a
    key stays allowed (the demo, tests)."""
    if credential.keyed or is_loopback(host):
        return None
    if insecure:
        return None
    return (f"refusing to serve on {host} without a key: anyone who can reach it could use "
            f"it. Make one with `stemlink keygen KEYFILE` and pass --key-file KEYFILE to "
            f"serve and to clients (or --insecure to serve openly anyway)")


INSECURE_WARNING = (
    "WARNING: serving on {host} WITHOUT A KEY (--insecure): anyone who can reach this port "
    "can open sessions and use this machine's compute; packets are protected against "
    "corruption only. Use --key-file for anything but a trusted, isolated network.")


def make_stream_factory(engine: Engine, default_preset: str,
                        defaults: StreamRequest | None = None):
    """Builds a session's separator from what the client asked for. Fields the client left
    to the server (None) come from the preset; when the client also leaves the preset to
    the server, they come from `defaults` (the server's own overrides of its default
    preset) first. Raises EngineError for a configuration the engine refuses (the core
    answers BAD_REQUEST)."""
    server_own = defaults or StreamRequest()

    def pick(asked, fallback):
        return asked if asked is not None else fallback

    def make(req: StreamRequest) -> StreamSetup:
        dflt = server_own if req.preset is None else StreamRequest()
        name = req.preset or dflt.preset or default_preset
        cfg = engine.config(name, pick(req.hop_frames, dflt.hop_frames),
                            pick(req.lookahead, dflt.lookahead),
                            pick(req.synthesis, dflt.synthesis),
                            pick(req.synthesis_hop, dflt.synthesis_hop),
                            pick(req.mask_hold, dflt.mask_hold))
        sep = engine.separator(cfg)
        # segment families (ChunkConfig) have no synthesis hop or hold: their run is the unit
        m = cfg.hop(engine.card.hop) if hasattr(cfg, "hop") else engine.card.hop
        return StreamSetup(sep, name, cfg.hop_frames, cfg.lookahead,
                           getattr(cfg, "synthesis", "standard"), sep.delay, m,
                           getattr(cfg, "mask_hold", 1))

    return make


_TYPE_NAMES = {int(t): t.name.lower() for t in PacketType}


def _server_defaults(opts: ServeOptions) -> StreamRequest:
    return StreamRequest(synthesis_hop=opts.synthesis_hop, mask_hold=opts.mask_hold)


class ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: ServerCore, worker: WorkerPool) -> None:
        self.core, self.worker = core, worker
        self.transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0
        self.tx_by_type: dict[str, int] = {}  # metrics: datagrams sent, by type
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.core.receive_datagram(data, addr, time.monotonic())
        self.flush()

    def on_reports(self, reports: list[Report]) -> None:
        """A worker's values of one batch, delivered on the loop (call_soon_threadsafe)."""
        for r in reports:
            if isinstance(r, Output):
                self.core.deliver(r.session, r.datagrams)
            elif isinstance(r, Failed):
                self.core.stream_failed(r.session, r.message, r.counters, time.monotonic())
            elif isinstance(r, Released):
                self.core.stream_released(r.session, r.counters)
        self.flush()

    def flush(self) -> None:
        for data, addr in self.core.take_outbox():
            self.send_many([data], addr)
        msgs = self.core.take_messages()
        if msgs:
            self.worker.submit(msgs)
        self._arm()

    def _arm(self) -> None:
        at = self.core.next_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            loop = asyncio.get_running_loop()
            # the loop's clock is time.monotonic() (the core's clock) on asyncio and uvloop
            self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        self.core.on_timer(time.monotonic())
        self.flush()

    def send_many(self, datagrams: list[bytes], addr) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        tx = self.tx_by_type
        for d in datagrams:
            try:
                self.transport.sendto(d, addr)
            except OSError:
                self.send_errors += 1
                continue
            name = _TYPE_NAMES.get(d[3], "other")
            tx[name] = tx.get(name, 0) + 1

    def error_received(self, exc: Exception) -> None:  # ICMP errors etc.: count, go on
        self.send_errors += 1


class Server:
    """A running server: engine, core, worker, socket. `run()` until `stop()`."""

    def __init__(self, opts: ServeOptions, engine: Engine | None = None) -> None:
        self.opts = opts
        credential = Credential(key=opts.key, passphrase=opts.psk)
        refusal = check_exposure(opts.host, credential, opts.insecure)
        if refusal:
            raise StemlinkError(refusal)
        if opts.encrypt and not aead_available():
            raise StemlinkError("--encrypt needs the `cryptography` package: "
                                "pip install 'stemlink[server]'")
        self.batch = batch_config(opts)
        if not 1 <= opts.workers <= MAX_WORKERS:
            raise StemlinkError(f"--workers must be 1..{MAX_WORKERS}, not {opts.workers}")
        threads = ({"threads": max(1, (os.cpu_count() or 1) // opts.workers)}
                   if opts.backend == "cpu" and opts.workers > 1 else {})
        self.engine = engine or open_engine(opts.model, opts.backend, batch=self.batch.max_batch,
                                            **threads)
        card = self.engine.card
        self._backends = [self.engine.backend]
        try:
            held = getattr(self.engine.backend, "batch", 1)
            if held < self.batch.max_batch:
                raise StemlinkError(f"the engine's backend holds {held} windows, fewer than "
                                    f"--batch {self.batch.max_batch}")
            if opts.workers > 1 and families.is_segment(card):
                raise StemlinkError(f"--workers {opts.workers}: {card.name} runs on one worker "
                                    "(segment models are not batched)")
            for _ in range(opts.workers - 1):  # one backend per worker thread: its own
                be = families.make_backend(opts.backend, card, self.engine.folder,
                                           batch=self.batch.max_batch, **threads)
                be.activate()
                self._backends.append(be)
        except Exception:
            self._close_backends()
            raise
        limits = opts.limits or LimitConfig(max_sessions=opts.max_sessions)
        self.core = ServerCore(
            card_stems=card.stems, model_name=card.name, sample_rate=card.sample_rate,
            channels=card.channels, make_stream=make_stream_factory(self.engine, opts.preset,
                                                         _server_defaults(opts)),
            idle_timeout=opts.idle_timeout, credential=credential, limits=limits,
            reorder_ms=opts.reorder_ms, playout_ms=opts.playout_ms)
        if aead_available():
            self.core.features |= Features.ENCRYPT
        if opts.encrypt:
            self.core.required_features |= Features.ENCRYPT
        self.open_warning = (INSECURE_WARNING.format(host=opts.host)
                             if not credential.keyed and not is_loopback(opts.host) else "")
        try:
            self.sock = udp_socket(opts.host, opts.port, bind=True)
        except OSError:
            self._close_backends()
            raise
        self.address = self.sock.getsockname()
        self.heartbeat = time.monotonic()  # the loop's last tick (for /healthz)
        self.metrics = None
        if opts.metrics_port is not None:
            from stemlink.udp_server.metrics import MetricsServer

            try:
                self.metrics = MetricsServer(self, opts.metrics_host, opts.metrics_port)
            except StemlinkError:
                self.sock.close()
                self._close_backends()
                raise
        self.protocol: ServerProtocol | None = None
        self.worker: WorkerPool | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def warnings(self) -> list[str]:
        """Lines an operator should read at start (also logged)."""
        out = [self.open_warning] if self.open_warning else []
        cores = os.cpu_count() or 1
        if self.opts.backend == "cpu" and self.opts.workers > cores:
            out.append(f"warning: --workers {self.opts.workers} on {cores} CPU core(s): the "
                       f"workers share the cores (one ONNX Runtime thread each) and each "
                       f"session runs slower than with --workers {cores}")
        return out

    def describe(self) -> str:
        cfg = self.engine.config(self.opts.preset, synthesis_hop=self.opts.synthesis_hop,
                                 mask_hold=self.opts.mask_hold)
        delay = self.engine.latency(cfg).describe()
        rcv = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        lim = self.core.limits.config
        enc = ("required" if self.opts.encrypt else "offered"
               if self.core.features & Features.ENCRYPT else "unavailable")
        metrics = (f"; metrics on http://{self.metrics.address[0]}:{self.metrics.address[1]}"
                   f"/metrics" if self.metrics is not None else "")
        return (f"stemlink serving {self.engine.card.name} on {self.address[0]}:"
                f"{self.address[1]} ({self.engine.backend.name}, {self.opts.workers} "
                f"worker(s), batch {self.batch.max_batch}, batching delay "
                f"{self.batch.delay_s * 1e6:g} µs); default preset "
                f"{self.opts.preset}: {describe_config(cfg)}, "
                f"{delay}; input reorder window {self.opts.reorder_ms:g} ms; key: "
                f"{self.core.credential.kind}, encryption {enc}; max "
                f"{lim.max_sessions} sessions, {lim.sessions_per_address} per address, "
                f"handshakes {lim.handshake_rate:g}/s per address; idle "
                f"timeout {self.opts.idle_timeout:g} s, SO_RCVBUF {rcv} bytes{metrics}")

    async def run(self, install_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        holder: list[ServerProtocol] = []

        def report(rs: list[Report]) -> None:  # a worker thread: hand the values over
            loop.call_soon_threadsafe(holder[0].on_reports, rs)

        worker = self._new_pool(report)
        self.worker = worker
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: ServerProtocol(self.core, worker), sock=self.sock)
        holder.append(protocol)
        self.protocol = protocol
        worker.start()
        status, next_status = ServerStatus(), time.monotonic()
        if self.metrics is not None:
            worker.observe = self.metrics.observer()
            self.metrics.start()
        for line in self.warnings():
            log.warning(line)
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), EXPIRE_EVERY_S)
                except asyncio.TimeoutError:
                    pass
                now = time.monotonic()
                self.core.expire(now)
                if not worker.alive():  # never keep sessions nobody will process
                    worker = self._replace_worker(worker, report, protocol, now)
                protocol.flush()
                if self.opts.status_interval > 0 and now >= next_status:
                    next_status = now + self.opts.status_interval
                    line = status.update(self.status_sample(now))
                    if line:
                        log.info("%s", line)
                self.heartbeat = time.monotonic()
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            self.core.shutdown(time.monotonic())
            protocol.flush()
            stopped = worker.stop()
            for _ in range(3):  # let the worker's last reports (Released: counters) run
                await asyncio.sleep(0)
            transport.close()
            if stopped:
                self._close_backends()
            else:  # it is still inside an inference: freeing its buffers would crash it
                log.warning("worker did not stop in time; leaving the engine to the OS")
            if self.opts.compute_stats:
                import json

                counters = dict(self.core.counters)
                worker_side = self.core.stream_counters
                counters.update({f"stream_{k}": v for k, v in worker_side.items()})
                counters["inferences"] = worker_side.get("inferences", 0)
                with open(self.opts.compute_stats, "w") as f:
                    json.dump({"compute_ns": worker.compute_ns, "counters": counters}, f)
            log.info("server stopped; counters: %s", ", ".join(
                f"{k} {v}" for k, v in sorted(self.core.counters.items())))

    def status_sample(self, now: float) -> ServerSample:
        """Counters for the status line, read on the loop thread (which owns the core;
        the worker's figures only grow, and the ring's fill level is race-free)."""
        c, w = self.core.counters, self.worker
        return ServerSample(
            now=now, sessions=len(self.core.sessions), rx_datagrams=c["rx_datagrams"],
            dropped=c["dropped"], compute_ns=w.compute_ns if w else (),
            busy_ns=w.busy_ns if w else 0,
            queued=sum(s.ring.written - s.ring.read for s in self.core.sessions.values()))

    def _replace_worker(self, dead: WorkerPool, report, protocol: ServerProtocol,
                        now: float) -> WorkerPool:
        log.error("the worker thread died; closing its sessions and starting a new one")
        for s in list(self.core.sessions.values()):
            self.core.close(s, "error", now, error=(ErrorCode.INTERNAL,
                                                    "server worker failed; reconnect"))
        self.core.take_messages()  # addressed to the dead worker
        self.core.counters["worker_restarts"] += 1
        if not dead.stop(timeout=2.0):  # the live ones still hold their backends
            raise StemlinkError("a worker thread died and the others did not stop")
        worker = self._new_pool(report)
        protocol.worker = worker
        self.worker = worker
        if self.metrics is not None:
            worker.observe = self.metrics.observer()
        worker.start()
        return worker

    def _new_pool(self, report) -> WorkerPool:
        return WorkerPool([Worker(report, backend=be, batch=self.batch,
                                  name=f"stemlink-worker-{i}")
                           for i, be in enumerate(self._backends)])

    def _close_backends(self) -> None:
        for be in self._backends[1:]:
            be.deactivate()
        self.engine.close()

    def stop(self) -> None:
        """Thread-safe."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


class ServerThread:
    """A server on its own thread and event loop (demo, tests, benchmarks)."""

    def __init__(self, opts: ServeOptions) -> None:
        self.server = Server(opts)
        self._thread = threading.Thread(target=run_loop, args=(self.server.run(),),
                                        name="stemlink-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[0], self.server.address[1]

    def __enter__(self) -> ServerThread:
        self._thread.start()
        for _ in range(500):
            if self.server.protocol is not None:
                break
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self._thread.join(10)
