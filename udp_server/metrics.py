"""`serve --metrics-port N`: Prometheus metrics and /healthz over HTTP, on their own thread.

Nothing on the hot path is instrumented for this: at each scrape a collector reads the
counters the core and the glue keep anyway (a dict copy under the GIL), plus the worker's
busy time. The inference latency histogram is the one thing observed as it happens, once
per processed block on the worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stemlink.errors import StemlinkError

PREFIX = "stemlink"
# inference per block: ~3 ms (GPU) to ~30 ms (2-core CPU); deadlines are tens of ms
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2,
                     0.5, 1.0)
HEALTHY_TICK_S = 5.0  # the server loop ticks every 0.5 s; silence this long is unhealthy


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise StemlinkError("--metrics-port needs prometheus-client: "
                            "pip install 'stemlink[server]'") from None
    return prometheus_client


class ServerCollector:
    """Reads a running server's state at scrape time (see `Server` in server.py)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._busy_prev: tuple[float, int] | None = None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        srv = self.server
        core = srv.core
        counters = dict(core.counters)  # one copy, atomic under the GIL
        sessions = list(core.sessions.values())
        ended = dict(core.stream_counters)  # worker-side counts of ended streams
        tx = dict(srv.protocol.tx_by_type) if srv.protocol is not None else {}

        yield GaugeMetricFamily(f"{PREFIX}_sessions_open", "Sessions open now",
                                value=len(sessions))
        yield GaugeMetricFamily(f"{PREFIX}_sessions_max", "Total session cap",
                                value=core.max_sessions)
        rx = CounterMetricFamily(f"{PREFIX}_datagrams_received", "Datagrams received, by "
                                 "packet type (those with a valid header)", labels=["type"])
        acc = CounterMetricFamily(f"{PREFIX}_packets_accepted", "Packets that passed every "
                                  "check (key, cookie, replay, limits), by type",
                                  labels=["type"])
        drops = CounterMetricFamily(f"{PREFIX}_drops", "Datagrams dropped, by reason",
                                    labels=["reason"])
        errors = CounterMetricFamily(f"{PREFIX}_errors_sent", "ERROR packets sent, by code",
                                     labels=["code"])
        for k, v in counters.items():
            if k.startswith("rx_") and k != "rx_datagrams":
                rx.add_metric([k[3:]], v)
            elif k.startswith("accepted_"):
                acc.add_metric([k[9:]], v)
            elif k.startswith("drop_"):
                drops.add_metric([k[5:]], v)
            elif k.startswith("error_"):
                errors.add_metric([k[6:]], v)
        yield rx
        yield acc
        yield drops
        yield errors
        out = CounterMetricFamily(f"{PREFIX}_datagrams_sent", "Datagrams sent, by type",
                                  labels=["type"])
        for k, v in tx.items():
            out.add_metric([k], v)
        yield out
        yield CounterMetricFamily(f"{PREFIX}_datagrams_received_all", "All datagrams "
                                  "received, valid or not", value=counters.get("rx_datagrams",
                                                                               0))
        yield CounterMetricFamily(f"{PREFIX}_cookies_sent", "COOKIE replies (stateless)",
                                  value=counters.get("cookies", 0))
        yield CounterMetricFamily(f"{PREFIX}_late_blocks", "AUDIO blocks that arrived too "
                                  "late for their place in the stream",
                                  value=counters.get("drop_late", 0))
        yield CounterMetricFamily(f"{PREFIX}_concealed_blocks", "Output blocks sent "
                                  "concealed (counted when a session's stream ends)",
                                  value=ended.get("concealed_blocks", 0))
        yield CounterMetricFamily(f"{PREFIX}_concealed_input_blocks", "Input blocks "
                                  "concealed (lost, late or dropped under overload; counted "
                                  "when a session's stream ends)",
                                  value=ended.get("concealed_input_blocks", 0))
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Input blocks waiting for the "
                                "worker, all sessions",
                                value=sum(max(s.ring.written - s.ring.read, 0)
                                          for s in sessions))
        worker = srv.worker
        busy_ns = getattr(worker, "busy_ns", 0) if worker is not None else 0
        yield CounterMetricFamily(f"{PREFIX}_worker_busy_seconds", "Seconds the worker "
                                  "spent separating", value=busy_ns / 1e9)
        now = time.monotonic()
        util = 0.0
        if self._busy_prev is not None and now > self._busy_prev[0]:
            util = (busy_ns - self._busy_prev[1]) / 1e9 / (now - self._busy_prev[0])
        self._busy_prev = (now, busy_ns)
        yield GaugeMetricFamily(f"{PREFIX}_worker_utilisation", "Fraction of wall time the "
                                "worker was busy since the previous scrape", value=util)


class MetricsServer:
    """HTTP on (host, port): GET /metrics (Prometheus text format), GET /healthz."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        prom = _prometheus()
        self.registry = prom.CollectorRegistry()
        self.registry.register(ServerCollector(server))
        self.latency = prom.Histogram(f"{PREFIX}_inference_seconds", "Separation time per "
                                      "input block on the worker", buckets=LATENCY_BUCKETS_S,
                                      registry=self.registry)
        self.server = server
        generate = prom.generate_latest
        healthy = self.healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate(outer.registry), prom.CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    problem = healthy()
                    self._reply(503 if problem else 200, (problem or "ok").encode() + b"\n",
                                "text/plain")
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        outer = self
        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise StemlinkError(f"cannot serve metrics on {host}:{port}: "
                                f"{e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        name="stemlink-metrics", daemon=True)

    def observer(self) -> Callable[[float], None]:
        return self.latency.observe

    def healthy(self) -> str | None:
        """None when the receive loop ticked recently and the worker thread lives."""
        srv = self.server
        age = time.monotonic() - srv.heartbeat
        if age > HEALTHY_TICK_S:
            return f"unhealthy: server loop silent for {age:.1f} s"
        if srv.worker is None or not srv.worker.alive():
            return "unhealthy: worker thread not running"
        return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
