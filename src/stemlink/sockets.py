"""UDP socket set-up shared by the server and the client (stdlib only)."""

from __future__ import annotations

import socket

# The kernel default (~200 KiB) holds only a few hundred small datagrams.
BUFFER_BYTES = 8 << 20


def udp_socket(host: str, port: int, *, bind: bool) -> socket.socket:
    """A non-blocking UDP socket with large buffers, bound to (bind=True) or connected to
    (bind=False) host:port. Raises OSError (socket.gaierror for unknown hosts)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER_BYTES)
            except OSError:
                pass  # capped by the kernel; the server reports what it got
        if bind:
            sock.bind(sockaddr)
        else:
            sock.connect(sockaddr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
