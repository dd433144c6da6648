"""Container health check: the UDP server answers a HELLO without a cookie with a COOKIE
(the stateless first step of the handshake: no session, no state on the server). Exit 0
when a tagged COOKIE comes back within the timeout, 1 otherwise."""

import os
import socket
import sys
import time

from stemlink.wire import packets as pk
from stemlink.wire.auth import handshake_key
from stemlink.wire.constants import NONCE_SIZE, PacketType, SampleFormat

TIMEOUT_S = 3.0


def main() -> int:
    port = int(os.environ.get("STEMLINK_PORT", "5005"))
    hkey = handshake_key(os.environ.get("STEMLINK_PSK", "").encode())
    hello = pk.Hello(os.urandom(NONCE_SIZE), 44100, 256, 2, SampleFormat.S16LE, 2)
    data = pk.encode(pk.Header(PacketType.HELLO, 0, 0, 0, 0, time.monotonic_ns()),
                     pk.encode_hello(hello), hkey)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        s.sendto(data, ("127.0.0.1", port))
        try:
            reply = s.recv(2048)
        except OSError:
            print("stemlink health: no answer from the UDP server", file=sys.stderr)
            return 1
    try:
        h = pk.decode_header(reply)
    except pk.WireError as e:
        print(f"stemlink health: bad reply ({e.reason})", file=sys.stderr)
        return 1
    return 0 if h.type is PacketType.COOKIE and pk.check_tag(reply, hkey) else 1


if __name__ == "__main__":
    sys.exit(main())
