"""The client's thin asyncio glue: one connected UDP socket feeding a ClientCore."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from stemlink.sockets import udp_socket
from stemlink.udp_client.core import Accepted, ClientCore, ClientError, Rejected


class ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: ClientCore, on_event: Callable[[object], None]) -> None:
        self.core, self.on_event = core, on_event
        self.transport: asyncio.DatagramTransport | None = None
        self.accepted: asyncio.Future | None = None
        self.icmp_errors = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        for ev in self.core.receive(data, time.monotonic()):
            if isinstance(ev, tuple) and ev[0] == "send":
                self.send(ev[1])
            elif isinstance(ev, (Accepted, Rejected)):
                if self.accepted is not None and not self.accepted.done():
                    self.accepted.set_result(ev)
            else:
                self.on_event(ev)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def error_received(self, exc: Exception) -> None:
        self.icmp_errors += 1  # e.g. port unreachable while the server is not up


def parse_server(server: str, default_port: int = 5005) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep:
        return server, default_port
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ClientError(f"bad server address {server!r}: port must be a number") from None
    if not 0 < p < 65536:
        raise ClientError(f"bad server address {server!r}: port out of range")
    return host or "127.0.0.1", p


async def connect(core: ClientCore, server: tuple[str, int],
                  on_event: Callable[[object], None]) -> tuple[ClientProtocol, Accepted]:
    loop = asyncio.get_running_loop()
    try:
        sock = udp_socket(server[0], server[1], bind=False)
    except socket.gaierror as e:
        raise ClientError(f"cannot resolve {server[0]}: {e.strerror or e}") from None
    except OSError as e:
        raise ClientError(f"cannot reach {server[0]}:{server[1]}: {e.strerror or e}") from None
    _, proto = await loop.create_datagram_endpoint(lambda: ClientProtocol(core, on_event),
                                                   sock=sock)
    proto.accepted = loop.create_future()
    proto.send(core.connect(time.monotonic()))
    while True:
        try:
            ev = await asyncio.wait_for(asyncio.shield(proto.accepted), 0.05)
            break
        except asyncio.TimeoutError:
            try:
                again = core.timer(time.monotonic())
            except ClientError as e:
                proto.transport.close()
                raise ClientError(f"{server[0]}:{server[1]}: {e}") from None
            if again:
                proto.send(again)
    if isinstance(ev, Rejected):
        proto.transport.close()
        raise ClientError(f"server refused the session: {ev.message}")
    return proto, ev
