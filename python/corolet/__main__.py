"""``python -m corolet``: a short tour of what corolet does.

1. Two greenlets passing control and values back and forth.
2. A greenlet used as a generator, suspended deep inside native recursion.
3. Switch cost at the top of the stack and 500 C-level frames deep: flat, because a switch
   only swaps stack pointers (greenlet copies the stack, so its cost grows with depth).
4. The bridge driving real async I/O: sync-looking clients, run through ``greenlet_spawn``,
   talk to an asyncio server on 127.0.0.1 (an ephemeral port) with ``await_only``.
5. Portals (``corolet.portal``): plain sync code awaiting from inside ordinary asyncio tasks,
   where SQLAlchemy's lazy loads work too (``examples/portal_lazy_load.py``).
6. A crowd of 100,000 greenlets parked at once, then killed: memory per greenlet, and what
   is left once they are gone.
7. Timings and the crowd for corolet and PyPI greenlet side by side, when given an
   interpreter with greenlet (``--greenlet-python``; ``make demo`` prepares one).
"""

from __future__ import annotations

import sys
import time

import corolet
from corolet import getcurrent, greenlet


def ping_pong() -> None:
    print("1. Two greenlets passing control and values")
    log: list[str] = []

    def ping(n: int) -> str:
        while n < 4:
            log.append(f"ping {n}")
            n = pong.switch(n + 1)
        return "ping done"

    def pong(n: int) -> None:
        while True:
            log.append(f"pong {n}")
            n = ping_g.switch(n + 1)

    ping_g = greenlet(ping)
    pong = greenlet(pong)
    result = ping_g.switch(0)
    print("   " + " -> ".join(log) + f" -> {result!r}")


def deep_generator() -> None:
    print("2. A generator built on a greenlet, yielding from 300 native frames deep")

    def produce() -> None:
        def walk(depth: int) -> int:
            if depth == 0:
                getcurrent().parent.switch("bottom reached")
                return 0
            return sum(map(walk, [depth - 1])) + 1  # recursion through C (map)

        getcurrent().parent.switch(f"walked {walk(300)} levels back up")

    g = greenlet(produce)
    print(
        f"   first value: {g.switch()!r}; stack in use while suspended: "
        f"{g._stack_saved // 1024} KiB"
    )
    print(f"   second value: {g.switch()!r}")


# Timed in a fresh interpreter for each implementation (corolet here, greenlet from the
# virtualenv `make demo` prepares), by the same code: argv[1] names the module.
TIMING = r"""
import json, sys, time
impl = __import__(sys.argv[1])
main = impl.getcurrent()
rounds = 50_000

def bouncer(depth):
    def down(d):
        if d == 0:
            while True:
                main.switch()
        list(map(down, [d - 1]))  # recursion through C: the native stack really is deep
    down(depth)

def per_switch(depth):
    g = impl.greenlet(bouncer)
    g.switch(depth)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            g.switch()
        best = min(best, (time.perf_counter() - start) / (2 * rounds))
    g.throw()
    return best

def per_greenlet():
    def one():
        return 1
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds // 5):
            impl.greenlet(one).switch()
        best = min(best, (time.perf_counter() - start) / (rounds // 5))
    return best

print(json.dumps({"top": per_switch(0), "deep": per_switch(500), "create": per_greenlet()}))
"""

# A greenlet body that parks three Python frames deep, and a warm-up with it, for a script in
# which `impl` is the module under test (corolet or greenlet) and `gc` is imported. Shared with
# benches/bench_memory.py.
PARKED_THREE_DEEP = r"""
main = impl.getcurrent()

def body():
    def a():
        b()
    def b():
        c()
    def c():
        main.switch()
    a()

warm = [impl.greenlet(body) for _ in range(1000)]  # first-use costs out of the way
for g in warm:
    g.switch()
del warm, g
gc.collect()
"""

# A crowd parked three Python frames deep, in a fresh interpreter per implementation.
CROWD = (
    r"""
import array, gc, json, sys
impl = __import__(sys.argv[1])
n = int(sys.argv[2])
# Readings go into an array made beforehand: a number object kept from the crowd's lifetime
# would pin one of Python's 1 MiB arenas and be counted as left over.
readings = array.array("q", [0] * 9)

def status(i):
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    with open("/proc/self/maps") as f:
        readings[3 * i + 2] = sum(1 for _ in f)
    readings[3 * i] = int(fields["VmRSS"].split()[0]) * 1024
    readings[3 * i + 1] = int(fields["VmPTE"].split()[0]) * 1024

"""
    + PARKED_THREE_DEEP
    + r"""status(0)
crowd = [impl.greenlet(body) for _ in range(n)]
for g in crowd:
    g.switch()
del g
status(1)
del crowd
gc.collect()
status(2)
r = readings.tolist()
print(json.dumps({"before": r[0:3], "parked": r[3:6], "after": r[6:9]}))
"""
)
CROWD_SIZE = 100_000


def crowd(python: str, module: str) -> dict[str, list[int]]:
    import json
    import subprocess

    out = subprocess.run(
        [python, "-c", CROWD, module, str(CROWD_SIZE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)


def crowd_lines(label: str, c: dict[str, list[int]]) -> list[str]:
    (rss0, pte0, maps0), (rss1, pte1, maps1), (rss2, pte2, _) = (
        c["before"],
        c["parked"],
        c["after"],
    )
    return [
        f"   {label:<9} parked: {(rss1 - rss0) / CROWD_SIZE:,.0f} B RSS + "
        f"{(pte1 - pte0) / CROWD_SIZE:,.0f} B page tables per greenlet, "
        f"{maps1 - maps0:+,} mappings",
        f"   {'':<9} killed: RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:,.1f} -> {rss2 / 1e6:.1f} MB, "
        f"page tables {pte0 / 1e6:.1f} -> {pte1 / 1e6:,.1f} -> {pte2 / 1e6:.1f} MB",
    ]


def crowd_demo() -> None:
    print(f"6. A crowd: {CROWD_SIZE:,} greenlets parked at once, 3 Python frames deep, then killed")
    for line in crowd_lines("corolet", crowd(sys.executable, "corolet")):
        print(line)


ROWS = (
    ("top", "switch at the top of the stack"),
    ("deep", "switch 500 C-level frames deep"),
    ("create", "create, switch into, finish"),
)


def measure(python: str, module: str) -> dict[str, float]:
    import json
    import subprocess

    out = subprocess.run(
        [python, "-c", TIMING, module], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def switch_timing() -> None:
    print("3. Switch cost, top of the stack vs 500 C-level frames deep")
    times = measure(sys.executable, "corolet")
    for key, label in ROWS:
        print(f"   {label:<32} {times[key] * 1e9:7.0f} ns")


def against_greenlet(greenlet_python: str | None) -> None:
    print("7. Side by side with greenlet, same interpreter, same code")
    if not greenlet_python:
        print("   (greenlet is not installed here: `make demo` prepares a virtualenv with it)")
        return
    ours = measure(sys.executable, "corolet")
    theirs = measure(greenlet_python, "greenlet")
    print(f"   {'':<32} {'corolet':>9} {'greenlet':>9} {'ratio':>7}")
    for key, label in ROWS:
        ratio = ours[key] / theirs[key]
        print(f"   {label:<32} {ours[key] * 1e9:7.0f}ns {theirs[key] * 1e9:7.0f}ns {ratio:7.3f}")
    print(f"   the crowd of {CROWD_SIZE:,} on greenlet:")
    for line in crowd_lines("greenlet", crowd(greenlet_python, "greenlet")):
        print(line)


def bridge_io(clients: int = 10, requests: int = 50) -> None:
    print("4. The bridge driving real async I/O (asyncio server on 127.0.0.1, sync clients)")
    import asyncio

    from corolet.bridge import await_only, greenlet_spawn

    handlers: list[asyncio.Task] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        while line := await reader.readline():  # reply to each line with its length
            writer.write(b"%d\n" % (len(line) - 1))
        writer.close()

    def client(port: int, n: int) -> int:
        # Synchronous code: every wait is an await_only of an asyncio stream operation.
        reader, writer = await_only(asyncio.open_connection("127.0.0.1", port))
        total = 0
        for i in range(requests):
            writer.write(b"x" * (n + i) + b"\n")
            total += int(await_only(reader.readline()))
        writer.close()
        await_only(writer.wait_closed())
        return total

    async def run() -> tuple[int, list[int], float]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            start = time.perf_counter()
            totals = await asyncio.gather(
                *(greenlet_spawn(client, port, n) for n in range(clients))
            )
            elapsed = time.perf_counter() - start
            await asyncio.gather(*handlers)  # every client hung up: the handlers end
            return port, totals, elapsed

    port, totals, elapsed = asyncio.run(run())
    expected = [sum(n + i for i in range(requests)) for n in range(clients)]
    print(
        f"   {clients} sync clients x {requests} requests to port {port}: "
        f"{'all replies right' if totals == expected else 'WRONG REPLIES'}, "
        f"{elapsed * 1e3:.0f} ms in all, "
        f"{elapsed / (clients * requests) * 1e6:.0f} us per request"
    )


def portal_demo(tasks: int = 100) -> None:
    print("5. Portals: await from plain sync code inside ordinary asyncio tasks (corolet.portal)")
    import asyncio

    import corolet.portal

    def load_profile(user_id: int) -> str:
        # Synchronous code (a template, a serializer, an ORM's lazy load) that must wait.
        name = corolet.portal.await_(asyncio.sleep(0.01, f"user{user_id}"))
        return name.upper()

    async def handler(user_id: int) -> str:
        return load_profile(user_id)  # no await, no greenlet_spawn: the task has a portal

    async def main() -> tuple[list[str], float]:
        start = time.perf_counter()
        names = await asyncio.gather(*(handler(i) for i in range(tasks)))
        return names, time.perf_counter() - start

    names, elapsed = corolet.portal.run(main())  # asyncio.run, every task with a portal
    right = names == [f"USER{i}" for i in range(tasks)]
    print(
        f"   {tasks} tasks, each a sync call waiting 10 ms: {'all right' if right else 'WRONG'}, "
        f"{elapsed * 1e3:.0f} ms in all (they waited together); SQLAlchemy's lazy loads work "
        "the same way: examples/portal_lazy_load.py"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m corolet", description="corolet's demo")
    parser.add_argument(
        "--greenlet-python",
        metavar="PATH",
        help="an interpreter with PyPI greenlet installed, for the side-by-side timing",
    )
    args = parser.parse_args(argv)
    print(
        f"corolet {corolet.__version__} on Python {sys.version.split()[0]}; "
        f"default stack {corolet.stack_size() // 1024} KiB per greenlet (reserved, "
        "committed as touched)\n"
    )
    ping_pong()
    deep_generator()
    switch_timing()
    bridge_io()
    portal_demo()
    crowd_demo()
    against_greenlet(args.greenlet_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
