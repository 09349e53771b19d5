"""``python -m corolet``: a short tour of what corolet does.

1. Two greenlets passing control and values back and forth.
2. A greenlet used as a generator, suspended deep inside native recursion.
3. Switch cost at the top of the stack and 500 C-level frames deep: flat, because a switch
   only swaps stack pointers (greenlet copies the stack, so its cost grows with depth).
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


def switch_timing(rounds: int = 100_000) -> None:
    print("3. Switch cost, top of the stack vs 500 C-level frames deep")
    main = getcurrent()

    def bouncer(depth: int) -> None:
        def down(d: int) -> None:
            if d == 0:
                while True:
                    main.switch()
            list(map(down, [d - 1]))

        down(depth)

    for depth in (0, 500):
        g = greenlet(bouncer)
        g.switch(depth)
        start = time.perf_counter()
        for _ in range(rounds):
            g.switch()
        elapsed = time.perf_counter() - start
        print(f"   depth {depth:>3}: {elapsed / (2 * rounds) * 1e9:6.0f} ns per switch")
        g.throw()  # GreenletExit unwinds it


def main() -> int:
    print(
        f"corolet {corolet.__version__} on Python {sys.version.split()[0]}; "
        f"default stack {corolet.stack_size() // 1024} KiB per greenlet (reserved, "
        "committed as touched)\n"
    )
    ping_pong()
    deep_generator()
    switch_timing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
