"""Threads: one greenlet tree per thread, the cross-thread errors, and clean-up at thread exit."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import corolet
import pytest
from corolet import GreenletExit, getcurrent, greenlet

_HEX = r"0x(?:[0-9a-f]+|\(nil\))"
EXITED_THREAD_MESSAGE = r"^cannot switch to a different thread \(which happens to have exited\)$"


def _run_in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # pragma: no cover - reported below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class ParkedThread:
    """A thread holding a suspended greenlet, waiting to be released."""

    def __init__(self, child_body=None) -> None:
        self.ready = threading.Event()
        self.release = threading.Event()
        self.main = None
        self.child = None
        self.child_body = child_body
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.main = getcurrent()
        body = self.child_body or (lambda: self.main.switch())
        self.child = greenlet(body)
        self.child.switch()
        self.ready.set()
        self.release.wait(30)
        if not self.child.dead:
            self.child.throw()

    def __enter__(self) -> ParkedThread:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc_info) -> None:
        self.release.set()
        self.thread.join(30)
        self.main = self.child = None


def test_each_thread_has_its_own_main_greenlet(main_greenlet):
    def in_thread():
        current = getcurrent()
        return current, current.parent, current is getcurrent(), type(current)

    other_main, parent, stable, kind = _run_in_thread(in_thread)
    assert other_main is not main_greenlet
    assert parent is None
    assert stable
    assert kind is greenlet


def test_greenlets_run_independently_in_several_threads():
    def worker(n):
        main = getcurrent()

        def child(x):
            for i in range(100):
                x = main.switch(x + i)
            return ("done", x)

        g = greenlet(child)
        value = g.switch(n)
        for _ in range(99):
            value = g.switch(value)
        return g.switch(value)

    results = {}

    def run(n):
        results[n] = worker(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {n: ("done", n + sum(range(100))) for n in range(4)}


def test_main_greenlet_of_a_running_thread_is_alive_and_suspended_seen_from_here():
    with ParkedThread() as other:
        assert not other.main.dead
        assert other.main
        assert other.main.parent is None
        assert re.fullmatch(
            rf"<greenlet\.greenlet object at {_HEX} \(otid={_HEX}\) suspended active started main>",
            repr(other.main),
        )


def test_switch_to_a_greenlet_of_another_thread_raises_error_with_both_greenlets(main_greenlet):
    with ParkedThread() as other:
        expected = (
            "Cannot switch to a different thread\n"
            f"\tCurrent:  {main_greenlet!r}\n"
            f"\tExpected: {other.main!r}"
        )
        for target in (other.child, other.main):
            with pytest.raises(corolet.error) as excinfo:
                target.switch()
            assert str(excinfo.value) == expected
        assert not other.child.dead


def test_throw_into_a_greenlet_of_another_thread_raises_error(main_greenlet):
    with ParkedThread() as other:
        expected = "^Cannot switch to a different thread\n\tCurrent: "
        with pytest.raises(corolet.error, match=expected):
            other.child.throw(ValueError)
        assert not other.child.dead


def test_error_from_a_child_greenlet_names_the_main_greenlets(main_greenlet):
    with ParkedThread() as other:

        def run():
            other.child.switch()

        g = greenlet(run)
        with pytest.raises(corolet.error) as excinfo:
            g.switch()
        message = str(excinfo.value)
        assert message.startswith("Cannot switch to a different thread\n\tCurrent:  ")
        lines = message.split("\n")
        assert len(lines) == 3
        assert lines[2] == f"\tExpected: {other.main!r}"
        assert g.dead


def test_greenlets_of_an_exited_thread_are_dead():
    def in_thread():
        main = getcurrent()
        # Suspended inside main.switch with no Python frame of its own: a Python frame left on
        # the abandoned stack would keep the thread's main greenlet alive (as in greenlet).
        g = greenlet(main.switch)
        g.switch()
        return main, g

    other_main, suspended = _run_in_thread(in_thread)
    assert _wait_for(lambda: other_main.dead)
    assert other_main.dead and not other_main
    assert suspended.dead and not suspended
    pattern = rf"<greenlet\.greenlet object at {_HEX} \(otid={_HEX}\) \(thread exited\) dead>"
    assert re.fullmatch(pattern, repr(other_main))
    assert re.fullmatch(pattern, repr(suspended))


def test_switch_or_throw_to_a_greenlet_of_an_exited_thread_raises_error():
    def in_thread():
        main = getcurrent()
        # Suspended inside main.switch with no Python frame of its own: a Python frame left on
        # the abandoned stack would keep the thread's main greenlet alive (as in greenlet).
        g = greenlet(main.switch)
        g.switch()
        return main, g

    other_main, suspended = _run_in_thread(in_thread)
    assert _wait_for(lambda: other_main.dead)
    message = EXITED_THREAD_MESSAGE
    for target in (suspended, other_main):
        with pytest.raises(corolet.error, match=message):
            target.switch()
        with pytest.raises(corolet.error, match=message):
            target.throw()


def test_unstarted_greenlet_whose_parent_thread_exited_cannot_be_switched_to():
    other_main = _run_in_thread(getcurrent)
    assert _wait_for(lambda: other_main.dead)
    g = greenlet(lambda: None)
    g.parent = other_main
    with pytest.raises(corolet.error, match=EXITED_THREAD_MESSAGE):
        g.switch()
    assert not g.dead


@pytest.mark.leaks_greenlets(
    reason="the frames left on the stack of a greenlet whose thread exited are abandoned, and "
    "what they reference (here the thread's main greenlet) leaks, as in greenlet"
)
def test_suspended_greenlet_outliving_its_thread_never_runs_its_finally_block():
    finally_ran = []

    def in_thread():
        main = getcurrent()

        def body():
            try:
                main.switch()
            finally:
                finally_ran.append(True)

        g = greenlet(body)
        g.switch()
        return g

    holder = [_run_in_thread(in_thread)]
    assert _wait_for(lambda: holder[0].dead)
    holder.clear()
    assert finally_ran == []


def test_frames_of_a_greenlet_that_outlived_its_thread_can_still_be_walked():
    # Its frame chain must end in nothing of the thread's own (3.15 ends a thread's chain in a
    # sentinel frame inside its thread state, freed with the thread). In a child interpreter
    # with CPython's debug allocator, which poisons freed memory.
    code = """
import threading
from corolet import getcurrent, greenlet

def in_thread():
    main = getcurrent()
    def inner():
        main.switch()
    def body():
        inner()
    g = greenlet(body)
    g.switch()
    box.append(g.gr_frame)
    box.append(g)

box = []
t = threading.Thread(target=in_thread)
t.start()
t.join()
frame, g = box
names = []
while frame is not None:
    names.append(frame.f_code.co_name)
    frame = frame.f_back
print(names)
del frame, g, box
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['inner',", "'body']", "ok"]


def test_suspended_greenlet_dropped_before_its_thread_ends_is_killed_there():
    events = []

    def in_thread():
        main = getcurrent()

        def body():
            try:
                main.switch()
            except GreenletExit:
                events.append(("GreenletExit", threading.current_thread().name))
                raise

        g = greenlet(body)
        g.switch()
        # g goes out of scope when this function returns, still inside the thread.

    _run_in_thread(in_thread)
    assert len(events) == 1
    assert events[0][0] == "GreenletExit"
    assert events[0][1] != threading.current_thread().name


def test_greenlet_dropped_from_another_thread_is_killed_in_its_own_thread_later():
    seen = []
    holder = []
    parked = threading.Event()
    dropped = threading.Event()
    checkpoints = {}

    def in_thread():
        main = getcurrent()

        def body():
            try:
                main.switch()
            except GreenletExit:
                seen.append(threading.get_ident())
                raise

        g = greenlet(body)
        g.switch()
        holder.append(g)
        del g
        parked.set()
        assert dropped.wait(30)
        checkpoints["before"] = list(seen)
        greenlet()  # any greenlet API call in this thread runs the queued kill
        checkpoints["after"] = list(seen)
        checkpoints["ident"] = threading.get_ident()

    thread = threading.Thread(target=in_thread)
    thread.start()
    assert parked.wait(30)
    holder.clear()  # the last reference dies here, in the main thread
    assert seen == []
    dropped.set()
    thread.join(30)
    assert checkpoints["before"] == []
    assert checkpoints["after"] == [checkpoints["ident"]]


def test_getcurrent_in_a_new_thread_creates_a_main_greenlet_that_is_cleaned_up_after_exit():
    helper = getattr(corolet._corolet, "get_total_main_greenlets", None)
    if helper is None:
        pytest.skip("the compiled module has no get_total_main_greenlets helper")
    before = helper()
    ready = threading.Event()
    release = threading.Event()

    def in_thread():
        getcurrent()
        ready.set()
        release.wait(30)

    thread = threading.Thread(target=in_thread)
    thread.start()
    assert ready.wait(30)
    assert helper() == before + 1
    release.set()
    thread.join(30)
    assert _wait_for(lambda: helper() == before)
    assert corolet._corolet.get_pending_cleanup_count() == 0


def test_many_threads_each_switching_their_own_greenlets():
    errors = []
    count = 20

    def worker(index):
        try:
            main = getcurrent()
            children = [greenlet(lambda i=i: main.switch(i) + 1) for i in range(10)]
            values = [child.switch() for child in children]
            results = [child.switch(v) for child, v in zip(children, values, strict=True)]
            assert results == list(range(1, 11))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append((index, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
