"""Recursion and deallocation near the end of a greenlet's own native stack.

From 3.14 CPython checks recursion through C by comparing the stack pointer with limits it keeps
per thread, and defers deallocations when the stack pointer is close to them. Every greenlet
carries limits placed in its own stack, switched with it: deep recursion raises RecursionError
near the end of the greenlet's stack (never a crash), whatever its size, and deallocation is
deferred only where that stack is short of room. (3.12 and 3.13 count C recursion instead, with
a budget fitted to the greenlet's stack; the same behaviour is expected there.) Each scenario
runs in a child interpreter, so that a crash fails one test rather than the whole run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.corolet_only,
    pytest.mark.skipif(
        sys.version_info < (3, 12),
        reason="3.10 and 3.11 count C recursion with Python's, against sys.setrecursionlimit only",
    ),
]

STACK_POINTER_CHECKS = sys.version_info >= (3, 14)

PRELUDE = """
import sys, corolet
from corolet import greenlet, getcurrent

sys.setrecursionlimit(10**6)  # out of the way: only the native stack limits recursion

def down(n=0):
    # Recursion through C: every level is a C call into map and back into Python.
    return list(map(down, [n + 1]))

def overflow():
    try:
        down()
    except RecursionError as e:
        return str(e)
    return "no RecursionError"
"""


def _run(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr}"
    return proc.stdout.splitlines()


def _used_kib(message: str) -> int:
    # CPython 3.14+: "Stack overflow (used 252 kB)" (followed by where, for some checks).
    assert message.startswith("Stack overflow (used "), message
    return int(message.split("(used ", 1)[1].split(" kB", 1)[0])


@pytest.mark.parametrize("stack_kib", [256, 8192])
def test_deep_recursion_through_c_raises_recursion_error_in_a_greenlet(stack_kib):
    lines = _run(
        f"""
        corolet.stack_size({stack_kib} * 1024)
        print(greenlet(overflow).switch())
        print(greenlet(overflow).switch())  # a greenlet on a reused stack, the same
        """
    )
    assert len(lines) == 2, lines
    for message in lines:
        assert message != "no RecursionError"
        if STACK_POINTER_CHECKS:
            # Measured on the greenlet's own stack (the slot's top eighth, at most 64 KiB, is
            # its frame data stack): most of its size, never beyond it.
            assert stack_kib * 5 // 8 <= _used_kib(message) <= stack_kib, message


@pytest.mark.skipif(not STACK_POINTER_CHECKS, reason="stack-pointer limits are 3.14+")
def test_each_greenlet_keeps_its_own_stack_limits_across_switches():
    # A greenlet suspended deep in its 256 KiB stack; meanwhile the main greenlet and another
    # one overflow their own stacks; then the first resumes and overflows its own.
    lines = _run(
        """
        import threading
        corolet.stack_size(256 * 1024)
        main = getcurrent()

        def dive(n=0):
            if n == 100:
                main.switch("parked")
            return list(map(dive, [n + 1]))

        def deep():
            try:
                dive()
            except RecursionError as e:
                return str(e)

        g = greenlet(deep)
        print(g.switch())
        print(greenlet(overflow).switch())
        print(overflow())  # the main greenlet: the thread's own stack and limits
        print(g.switch())
        """
    )
    assert lines[0] == "parked"
    assert 160 <= _used_kib(lines[1]) <= 256, lines
    thread_stack_kib = _used_kib(lines[2])
    assert thread_stack_kib > 1024, lines  # the main thread's stack (8 MiB here)
    assert 160 <= _used_kib(lines[3]) <= 256, lines


def test_deallocating_a_deep_structure_in_a_greenlet_with_a_small_stack_does_not_crash():
    # Dropping a deeply nested list deallocates it recursively; CPython bounds that by deferring
    # part of the chain when the stack gets short, which must be judged on the greenlet's stack.
    lines = _run(
        """
        corolet.stack_size(256 * 1024)

        def build_and_drop():
            nested = []
            for _ in range(200_000):
                nested = [nested]
            del nested
            return "dropped"

        print(greenlet(build_and_drop).switch())
        """
    )
    assert lines == ["dropped"]


def test_objects_dropped_in_a_greenlet_are_freed_right_away():
    lines = _run(
        """
        freed = []

        class Tracked:
            def __del__(self):
                freed.append(1)

        def drop():
            box = [Tracked()]  # a GC object: the kind CPython 3.14 may defer
            del box
            return len(freed)

        print(greenlet(drop).switch())
        """
    )
    assert lines == ["1"]


@pytest.mark.skipif(
    sys.version_info >= (3, 14) and hasattr(sys, "gettotalrefcount"),
    reason="Py_DEBUG 3.14+ has a 32 KiB stack margin, so a 64 KiB greenlet's soft limit lies "
    "above its top and any call raises RecursionError (open: the minimum stack size should "
    "follow the margin there)",
)
def test_deallocations_deferred_on_a_full_greenlet_stack_happen_once_there_is_room():
    # On the smallest stack every deallocation of a GC object inside the greenlet may be
    # deferred (3.14+); the objects are freed by the thread's next deallocation with room,
    # not leaked with the greenlet.
    lines = _run(
        """
        freed = []

        class Tracked:
            def __del__(self):
                freed.append(1)

        def drop():
            box = [Tracked()]
            del box

        corolet.stack_size(64 * 1024)
        greenlet(drop).switch()
        junk = [object()]
        del junk  # any deallocation of a GC object in the main greenlet
        print(len(freed))
        """
    )
    assert lines == ["1"]
