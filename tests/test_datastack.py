"""Python code inside a greenlet runs on a frame data stack as roomy as a thread's.

On 3.11+ CPython keeps frames in data-stack chunks. A chunk after the first is a fresh
mapping that CPython frees as soon as its frames return, so code whose call depth goes back
and forth across the end of a chunk maps, faults in and unmaps 16 KiB on every crossing: with
a small first chunk that made ordinary code inside a greenlet many times slower than outside.
A greenlet's first chunk is the top of its own stack slot (up to 61.5 KiB, more than a
thread's 16 KiB), so steady-state code never pays a page fault per call. Page faults are
counted, not time, so the check does not depend on the machine's load.
"""

from __future__ import annotations

import gc
import resource
import sys
import threading

import pytest
from corolet import getcurrent, greenlet

pytestmark = [
    pytest.mark.skipif(
        sys.version_info < (3, 11), reason="3.10 has no frame data stack (frames are heap objects)"
    ),
    # greenlet starts each greenlet on a small data-stack chunk and pays the page faults these
    # tests count (100-550 at depths 100-300 on 3.11): a deliberate corolet improvement.
    pytest.mark.corolet_only(reason="greenlet 3.5.6 pays these page faults; corolet does not"),
]

DEPTHS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 100, 150, 200, 250, 300]


def chain(n):
    return chain(n - 1) + 1 if n else 0


def wide(n, a=1, b=2, c=3, d=4):
    x, y, z = a + b, c + d, n
    return wide(n - 1, x, y, z, d) + 1 if n else 0


class Node:
    def walk(self, n):
        return self.walk(n - 1) + 1 if n else 0


def faults() -> int:
    # This thread's faults only: another thread (a leftover of an earlier test) cannot count.
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def faults_per_depth(fn, reps: int = 50) -> dict[int, int]:
    """Minor faults of `reps` calls of `fn(depth)` for every depth, after a warm-up round
    (which may commit the data stack's pages once)."""
    out = {}
    for depth in DEPTHS:
        for _ in range(5):
            assert fn(depth) == depth
        before = faults()
        for _ in range(reps):
            fn(depth)
        out[depth] = faults() - before
    return out


def inside_greenlet(work, *args):
    """Runs work(*args) in a fresh greenlet, with the collector off (its passes allocate)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return greenlet(work).switch(*args)
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("fn", [chain, wide, Node().walk], ids=["chain", "wide", "method"])
def test_call_chains_inside_a_greenlet_cost_no_page_faults(fn) -> None:
    counts = inside_greenlet(faults_per_depth, fn)
    assert counts == dict.fromkeys(DEPTHS, 0)


def test_nested_greenlets_cost_no_page_faults() -> None:
    def outer():
        return greenlet(faults_per_depth).switch(chain)

    assert inside_greenlet(outer) == dict.fromkeys(DEPTHS, 0)


def test_greenlet_switching_at_depth_costs_no_page_faults() -> None:
    # A greenlet that parks deep and is resumed, again and again, by another deep one.
    def deep_then(n, action):
        return deep_then(n - 1, action) if n else action()

    def parked():
        while True:
            deep_then(150, getcurrent().parent.switch)

    def driver():
        g = greenlet(parked)
        for _ in range(10):
            deep_then(150, g.switch)
        before = faults()
        for _ in range(200):
            deep_then(150, g.switch)
        used = faults() - before
        g.throw()
        return used

    assert inside_greenlet(driver) == 0


def test_greenlet_in_another_thread_costs_no_page_faults() -> None:
    result = []
    t = threading.Thread(target=lambda: result.append(inside_greenlet(faults_per_depth, chain)))
    t.start()
    t.join()
    assert result == [dict.fromkeys(DEPTHS, 0)]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(
    hasattr(sys, "gettotalrefcount"),
    reason="debug build: unoptimised native frames and larger objects do not fit the budget",
)
def test_parked_greenlet_shares_one_stack_page_for_native_and_python_frames() -> None:
    # A greenlet parked three Python frames deep touches a single page of its stack slot:
    # its native frames (about 1.9 KB) below the data stack, its Python frames above, both
    # in the slot's top page. With the two in different pages it costs 4 KiB more.
    main = getcurrent()

    def body():
        def a():
            b()

        def b():
            c()

        def c():
            main.switch()

        a()

    warm = [greenlet(body) for _ in range(2000)]  # pools and arenas grown beforehand
    for g in warm:
        g.switch()
    del warm, g
    gc.collect()
    count = 4000
    before = _rss()
    crowd = [greenlet(body) for _ in range(count)]
    for g in crowd:
        g.switch()
    per_greenlet = (_rss() - before) / count
    del crowd, g
    gc.collect()
    # One stack page (4 KiB) plus the objects (about 1 KB); two stack pages would be 9 KB.
    assert per_greenlet < 7000, f"{per_greenlet:.0f} bytes per parked greenlet"
