"""Two greenlets passing control and a value back and forth.

``switch(value)`` suspends the running greenlet and resumes the other one, where the pending
``switch()`` returns ``value``. Nothing runs concurrently: control moves only where the code
says so, which is what makes greenlets easy to reason about.

Run: ``python examples/ping_pong.py``
"""

from __future__ import annotations

from corolet import getcurrent, greenlet

ROUNDS = 3


def ping(ball: int) -> str:
    for _ in range(ROUNDS):
        print(f"ping: got {ball}, sending {ball + 1}")
        ball = pong_greenlet.switch(ball + 1)  # run pong until it switches back here
    return f"ping finished holding {ball}"


def pong(ball: int) -> None:
    while True:
        print(f"pong: got {ball}, sending {ball * 2}")
        ball = ping_greenlet.switch(ball * 2)


ping_greenlet = greenlet(ping)
pong_greenlet = greenlet(pong)


def main() -> None:
    # ping returns to its parent, the main greenlet (which created it), when it finishes.
    result = ping_greenlet.switch(1)
    print(result)
    print(f"ping dead: {ping_greenlet.dead}; pong dead: {pong_greenlet.dead}")
    pong_greenlet.throw()  # GreenletExit ends pong's endless loop
    print(
        f"after throw, pong dead: {pong_greenlet.dead}; running: the main greenlet "
        f"({getcurrent().parent is None})"
    )


if __name__ == "__main__":
    main()
