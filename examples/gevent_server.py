"""gevent on corolet: a StreamServer on loopback serving many clients at once.

``corolet.install()`` runs before gevent is imported, so gevent's hub, its ``Greenlet`` class
(a compiled subclass of ``greenlet.greenlet``) and every greenlet it spawns are corolet's. The
server keeps a word count per connection and answers each line with the running total; a crowd
of client greenlets, each with its own socket, talks to it at the same time. Each handler
recurses a little before it reads, so every greenlet is parked with a deeper native stack than
a plain loop would have: a corolet switch costs the same at any depth.

Run: ``python examples/gevent_server.py`` (needs gevent: ``pip install gevent``; without the
real greenlet installed, corolet is what gevent gets).
"""

from __future__ import annotations

import corolet

corolet.install()  # before gevent is imported

import gevent  # noqa: E402
import greenlet  # noqa: E402
from gevent import socket  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

CLIENTS = 50
LINES = 20


def handle(sock: socket.socket, address: tuple, depth: int = 30) -> None:
    if depth:  # park a few frames deep, through C (list(map(...)))
        list(map(lambda d: handle(sock, address, d), [depth - 1]))
        return
    words = 0
    with sock, sock.makefile("rwb") as stream:
        for line in stream:
            words += len(line.split())
            stream.write(b"%d\n" % words)
            stream.flush()


def client(port: int, n: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rwb") as stream:
        total = 0
        for _ in range(LINES):
            stream.write(b"word " * (n % 5 + 1) + b"\n")
            stream.flush()
            total = int(stream.readline())
        return total


def main() -> None:
    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        port = server.server_port
        jobs = [gevent.spawn(client, port, n) for n in range(CLIENTS)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        totals = [job.value for job in jobs]
    finally:
        server.stop()
    expected = [LINES * (n % 5 + 1) for n in range(CLIENTS)]
    assert totals == expected, (totals, expected)
    print(f"gevent's greenlet is corolet's: {greenlet.greenlet is corolet.greenlet}")
    hub = gevent.get_hub()
    print(f"{type(hub).__name__} is a corolet greenlet: {isinstance(hub, corolet.greenlet)}")
    print(f"{CLIENTS} clients x {LINES} lines served concurrently; totals match")


if __name__ == "__main__":
    main()
