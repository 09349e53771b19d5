"""The bridge driving real async I/O: a sync-looking client over asyncio streams.

An asyncio server on 127.0.0.1 (an ephemeral port) keeps a tiny key-value store and speaks a
line protocol (``SET key value``, ``GET key``, ``INCR key``). The client is written as ordinary
synchronous code, ``client(...)``, where each network wait is an ``await_only(...)`` of an
asyncio stream operation. Run through ``greenlet_spawn``, several such clients share one event
loop and their socket I/O interleaves, with no thread and no ``async def`` in the client.

Run: ``python examples/bridge_socket.py``
"""

from __future__ import annotations

import asyncio

from corolet.bridge import await_only, greenlet_spawn

CLIENTS = 5
INCREMENTS = 20
HANDLERS: set[asyncio.Task] = set()  # the server's connection handlers, awaited at the end


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, store: dict) -> None:
    HANDLERS.add(asyncio.current_task())
    while line := await reader.readline():
        command, _, rest = line.decode().strip().partition(" ")
        if command == "SET":
            key, _, value = rest.partition(" ")
            store[key] = value
            reply = "OK"
        elif command == "GET":
            reply = store.get(rest, "(nil)")
        elif command == "INCR":
            store[rest] = str(int(store.get(rest, "0")) + 1)
            reply = store[rest]
        else:
            reply = f"ERR unknown command {command!r}"
        writer.write(reply.encode() + b"\n")
        await writer.drain()
    writer.close()
    await writer.wait_closed()


class Client:
    """A blocking-style client: every method looks synchronous."""

    def __init__(self, host: str, port: int) -> None:
        self.reader, self.writer = await_only(asyncio.open_connection(host, port))

    def call(self, *words: str) -> str:
        self.writer.write(" ".join(words).encode() + b"\n")
        await_only(self.writer.drain())
        return await_only(self.reader.readline()).decode().strip()

    def close(self) -> None:
        self.writer.close()
        await_only(self.writer.wait_closed())


def client(port: int, number: int) -> str:
    conn = Client("127.0.0.1", port)
    try:
        conn.call("SET", f"name:{number}", f"client-{number}")
        for _ in range(INCREMENTS):
            conn.call("INCR", "hits")
        return f"client {number}: {conn.call('GET', f'name:{number}')}"
    finally:
        conn.close()


async def main() -> None:
    store: dict[str, str] = {}
    server = await asyncio.start_server(lambda r, w: serve(r, w, store), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        lines = await asyncio.gather(*(greenlet_spawn(client, port, i) for i in range(CLIENTS)))
        for line in lines:
            print(line)

        def final_count() -> str:
            conn = Client("127.0.0.1", port)
            try:
                return conn.call("GET", "hits")
            finally:
                conn.close()

        hits = await greenlet_spawn(final_count)
        print(f"hits: {hits} (expected {CLIENTS * INCREMENTS})")
        await asyncio.gather(*HANDLERS)  # every client hung up: let the handlers finish


if __name__ == "__main__":
    asyncio.run(main())
