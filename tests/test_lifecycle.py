"""Lifecycle and scale: limits that are errors rather than crashes, a clear message on stack
overflow, and 100,000 greenlets alive at once under the default ``vm.max_map_count``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import corolet
import pytest
from corolet import GreenletExit, getcurrent, greenlet

pytestmark = pytest.mark.corolet_only


def _run(code: str, *, mprotect_guards: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter; `mprotect_guards` forces the guard-page fallback
    of kernels before 6.13. The tests set up faulthandler themselves, in the order they test,
    so the child does not inherit one enabled at start-up (PYTHONDEVMODE, as `make test-dbg`
    sets it, enables faulthandler; PYTHONFAULTHANDLER too)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDEVMODE", "PYTHONFAULTHANDLER")}
    if mprotect_guards:
        env["COROLET_GUARD_PAGES"] = "mprotect"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# Recursion through C (map -> call -> Python -> map ...) uses native stack at every level.
DEEP_C_RECURSION = """
def down(n=0):
    return list(map(down, [n + 1]))
"""

C_LEVELS_COUNTED = sys.version_info >= (3, 12)

# Overflows a 128 KiB greenlet stack on 3.10/3.11 (recursion limit raised out of the way).
OVERFLOW = """
import sys, corolet
sys.setrecursionlimit(10**6)
corolet.stack_size(128 * 1024)
def down(n=0):
    return list(map(down, [n + 1]))
corolet.greenlet(down).switch()
"""


@pytest.mark.skipif(C_LEVELS_COUNTED, reason="3.12+ counts C recursion: see the next test")
def test_stack_overflow_in_a_greenlet_names_the_stack_size_setting():
    # 3.10 and 3.11 count C and Python recursion together, against sys.setrecursionlimit
    # only: with the limit raised, a small stack overflows.
    proc = _run(OVERFLOW)
    assert proc.returncode < 0, proc
    assert "a greenlet overflowed its native stack (128 KiB)" in proc.stderr
    assert "corolet.stack_size(" in proc.stderr


@pytest.mark.skipif(not C_LEVELS_COUNTED, reason="C recursion is counted separately on 3.12+")
def test_small_stacks_get_a_c_recursion_budget_that_fits_them():
    old = corolet.stack_size(128 * 1024)
    namespace: dict = {}
    exec(DEEP_C_RECURSION, namespace)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10**6)
    try:

        def body():
            with pytest.raises(RecursionError):
                namespace["down"]()
            return "survived"

        assert greenlet(body).switch() == "survived"
    finally:
        sys.setrecursionlimit(limit)
        corolet.stack_size(old)


@pytest.mark.skipif(C_LEVELS_COUNTED, reason="3.12+ raises RecursionError instead")
def test_stack_overflow_message_comes_before_faulthandlers_traceback():
    # faulthandler enabled first (-X faulthandler, PYTHONFAULTHANDLER, pytest): corolet's
    # handler writes its message, then hands the signal on to faulthandler's.
    proc = _run("import faulthandler\nfaulthandler.enable()\n" + OVERFLOW)
    assert proc.returncode < 0, proc
    assert "overflowed its native stack" in proc.stderr
    assert "Fatal Python error" in proc.stderr
    assert "line 8 in down" in proc.stderr  # faulthandler's traceback of the recursion
    assert proc.stderr.index("overflowed") < proc.stderr.index("Fatal Python error")


@pytest.mark.skipif(C_LEVELS_COUNTED, reason="3.12+ raises RecursionError instead")
@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_stack_overflow_message_follows_a_faulthandler_enabled_after_import(where):
    # faulthandler on top of corolet's handler: it catches the fault, writes its traceback and
    # re-raises it; corolet recognises the overflow from the kernel's signal frame.
    body = OVERFLOW.replace("import sys, corolet", "import sys, corolet, faulthandler")
    body = body.replace(
        "corolet.stack_size(128 * 1024)", "corolet.stack_size(128 * 1024)\nfaulthandler.enable()"
    )
    if where == "other thread":
        body = body.replace(
            "corolet.greenlet(down).switch()",
            "import threading\n"
            "t = threading.Thread(target=lambda: corolet.greenlet(down).switch())\n"
            "t.start()\nt.join()",
        )
    proc = _run(body)
    assert proc.returncode < 0, proc
    assert "Fatal Python error" in proc.stderr
    assert "a greenlet overflowed its native stack (128 KiB)" in proc.stderr
    assert proc.stderr.index("Fatal Python error") < proc.stderr.index("overflowed")


def test_default_recursion_limit_raises_recursion_error_inside_a_greenlet():
    def down(n=0):
        return list(map(down, [n + 1]))

    def body():
        with pytest.raises(RecursionError):
            down()
        return "survived"

    assert greenlet(body).switch() == "survived"


def test_a_stack_that_cannot_be_mapped_raises_memory_error():
    old = corolet.stack_size()
    corolet.stack_size(1 << 44)  # 16 TiB per stack: no slab of those can be mapped
    try:
        g = greenlet(lambda: "never")
        with pytest.raises(MemoryError, match=r"stack_size\(\)"):
            g.switch()
        assert not g.dead and not g  # still unstarted
    finally:
        corolet.stack_size(old)
    assert g.switch() == "never"  # and it starts once stacks can be had again


def test_stack_size_reads_and_sets_like_threading_stack_size():
    old = corolet.stack_size()
    try:
        assert corolet.stack_size(256 * 1024) == old
        assert corolet.stack_size() == 256 * 1024
        assert greenlet(lambda: 7).switch() == 7
    finally:
        corolet.stack_size(old)
    with pytest.raises(ValueError, match="at least"):
        corolet.stack_size(4096)


# Slabs a crowd leaves behind once it is gone: the pool keeps the lowest 32 stacks warm and
# the next 256 tepid (src/stack.rs), 4.5 slabs of 64 stacks, plus one where they straddle a
# slab boundary, one spare, and one for stacks earlier tests left in use or in those sets.
KEPT_SLABS = 8


def _guards_cost_no_mapping() -> bool:
    greenlet(lambda: None).switch()  # makes sure a slab exists
    return corolet._corolet._stack_stats()["guard"] == "madvise"


def _page_tables() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmPTE")) * 1024


def test_a_hundred_thousand_suspended_greenlets_live_at_once_then_die():
    if not _guards_cost_no_mapping():
        pytest.skip("guard pages need MADV_GUARD_INSTALL (Linux 6.13+) to stay under map count")
    main = getcurrent()
    exits = 0

    def body():
        nonlocal exits

        def a():
            b()

        def b():
            try:
                main.switch()
            except GreenletExit:
                nonlocal exits
                exits += 1
                raise

        a()

    count = 100_000
    live_before = corolet._corolet._stack_stats()["live"]
    tables_before = _page_tables()
    glets = [greenlet(body) for _ in range(count)]
    for glet in glets:
        glet.switch()
    del glet
    assert corolet._corolet._stack_stats()["live"] == live_before + count
    with open("/proc/self/maps") as maps:
        mappings = sum(1 for _ in maps)
    assert mappings < 65530 // 2, mappings
    assert _page_tables() > tables_before + count * 4096 // 2  # about a page each
    del glets  # each is killed with GreenletExit as its last reference goes
    assert exits == count
    stats = corolet._corolet._stack_stats()
    assert stats["live"] == live_before
    # Emptied slabs are released: their pages, page tables and guards go back to the OS, but
    # for those the warm and tepid stacks keep (KEPT_SLABS).
    assert stats["slabs"] <= KEPT_SLABS, stats
    # The warm and tepid stacks keep a page-table page each (288, 1.2 MB): no more than that.
    assert _page_tables() < tables_before + 2 * 1024 * 1024, (tables_before, _page_tables())


def test_mprotect_guards_where_the_kernel_has_no_guard_markers():
    # The fallback for kernels before 6.13, forced: each guard page is a mapping of its own and
    # splits its slab's, two mappings per stack.
    code = """
        import corolet
        from corolet import greenlet, getcurrent

        def mappings():
            with open("/proc/self/maps") as maps:
                return sum(1 for _ in maps)

        main = getcurrent()
        greenlet(main.switch).switch()
        print("guard", corolet._corolet._stack_stats()["guard"])
        start = mappings()
        glets = [greenlet(main.switch) for _ in range(2000)]
        for g in glets:
            g.switch()
        print("per stack", round((mappings() - start) / 2000, 2))
        del glets
        print("left", mappings() - start, corolet._corolet._stack_stats()["slabs"])
        print(greenlet(lambda: "still switching").switch())
    """
    proc = _run(code, mprotect_guards=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "guard mprotect"
    assert 1.9 < float(lines[1].split()[-1]) <= 2.1, lines
    left, slabs = map(int, lines[2].split()[1:])
    # Released slabs are one mapping again; a few stay for the warm and tepid stacks and a
    # spare.
    assert left <= KEPT_SLABS * 2 * 64 and slabs <= KEPT_SLABS, lines
    assert lines[3] == "still switching"


@pytest.mark.skipif(C_LEVELS_COUNTED, reason="3.12+ raises RecursionError instead")
def test_stack_overflow_hits_an_mprotect_guard_just_the_same():
    proc = _run(OVERFLOW, mprotect_guards=True)
    assert proc.returncode < 0, proc
    assert "a greenlet overflowed its native stack (128 KiB)" in proc.stderr


def test_fork_child_keeps_its_greenlets_and_sees_other_threads_as_exited():
    proc = _run(
        """
        import os, threading
        import corolet
        from corolet import greenlet, getcurrent

        main = getcurrent()
        parked = [greenlet(main.switch) for _ in range(50)]
        for g in parked:
            g.switch()
        other, ready, done = [], threading.Event(), threading.Event()

        def in_thread():
            here = getcurrent()
            g = greenlet(here.switch)
            g.switch()
            other.append(g)
            ready.set()
            done.wait()

        t = threading.Thread(target=in_thread)
        t.start()
        ready.wait()
        pid = os.fork()
        if pid == 0:
            for g in parked:
                g.switch()  # the forking thread's greenlets resume and finish
            assert all(g.dead for g in parked)
            assert greenlet(lambda x: x * 2).switch(21) == 42
            try:
                other[0].switch()
            except corolet.error as e:
                print("child:", e, flush=True)  # os._exit does not flush
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("status", status)
        done.set()
        t.join()
        """
    )
    assert proc.returncode == 0, proc
    assert (
        "child: cannot switch to a different thread (which happens to have exited)" in proc.stdout
    )
    assert "status 0" in proc.stdout


def test_running_out_of_mappings_with_mprotect_guards_is_a_memory_error_that_says_why():
    code = """
        from corolet import greenlet, getcurrent

        main = getcurrent()
        glets = []
        try:
            while True:
                g = greenlet(main.switch)
                g.switch()
                glets.append(g)
        except MemoryError as e:
            print(len(glets))
            print(e)
        del glets
        print(greenlet(lambda: "recovered").switch())
    """
    proc = _run(code, mprotect_guards=True)
    assert proc.returncode == 0, proc.stderr
    count, message, recovered = proc.stdout.splitlines()
    with open("/proc/sys/vm/max_map_count") as f:
        limit = int(f.read())
    assert limit // 2 - 2000 < int(count) < limit // 2, count
    assert "cannot allocate a stack for a new greenlet" in message
    assert f"vm.max_map_count ({limit})" in message and "MADV_GUARD_INSTALL" in message
    assert recovered == "recovered"
