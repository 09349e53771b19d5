"""Differences from greenlet 3.5.6 that the differential fuzzer (tools/difffuzz) found.

Each test is one difference, reduced from the fuzzer's program (its seed in the docstring), and
checked against greenlet itself by ``make pytest-greenlet`` unless it is marked corolet_only,
which says why: there greenlet crashes or reads memory it should not, and corolet does not copy
that by design (tools/difffuzz/difffuzz.py names those classes).
"""

from __future__ import annotations

import sys
import threading
import time

import corolet
import pytest
from corolet import GreenletExit, getcurrent, greenlet

EXITED = r"^cannot switch to a different thread \(which happens to have exited\)$"


def _traceback_functions(exc: BaseException) -> list[str]:
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def test_greenlet_exit_ending_a_greenlet_reaches_the_parent_with_greenlets_traceback():
    """Seed 2: the GreenletExit that ends ``run`` is the parent's switch value. greenlet
    takes it out of the error indicator with PyErr_Fetch and drops the traceback: before 3.12
    the exception then has none (it was never caught in Python code); from 3.12 the traceback
    lives on the exception and stays. corolet attached the traceback on every version."""

    def ends_with_exit():
        raise GreenletExit("end")

    result = greenlet(ends_with_exit).switch()
    assert type(result) is GreenletExit
    assert result.args == ("end",)
    if sys.version_info < (3, 12):
        assert result.__traceback__ is None
    else:
        assert _traceback_functions(result) == ["ends_with_exit"]


def test_greenlet_exit_caught_and_reraised_keeps_the_traceback_of_its_catch():
    """The same, for a GreenletExit that was caught in Python code and raised again: the
    traceback set when it was caught stays (no version drops that one)."""

    def catches_and_reraises():
        try:
            raise GreenletExit("again")
        except GreenletExit:
            raise

    result = greenlet(catches_and_reraises).switch()
    assert type(result) is GreenletExit
    assert "catches_and_reraises" in _traceback_functions(result)


def _greenlet_left_suspended_by_an_exited_thread(python_frame=False):
    box = []

    def in_thread():
        box.append(getcurrent())

        def body():
            getcurrent().parent.switch()

        g = greenlet(body if python_frame else getcurrent().switch)
        g.switch()
        assert (g.gr_frame is not None) == python_frame
        box.append(g)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(30)
    other_main, g = box
    # greenlet notices the exit a moment after join() returns (a pending call cleans up).
    deadline = time.monotonic() + 5
    while "thread exited" not in repr(other_main) and time.monotonic() < deadline:
        time.sleep(0.001)
    return g


@pytest.mark.leaks_greenlets(
    reason="a greenlet left suspended by an exited thread keeps that thread's main greenlet "
    "(its abandoned stack's frames are never freed), as in greenlet"
)
def test_greenlet_left_suspended_by_an_exited_thread_accepts_a_parent_of_this_thread():
    """Seed 229: once its thread is gone, such a greenlet is dead and belongs to no thread;
    greenlet lets it take a parent from any thread. corolet said "parent cannot be on a
    different thread"."""
    g = _greenlet_left_suspended_by_an_exited_thread()
    assert g.dead and not g
    g.parent = getcurrent()
    assert g.parent is getcurrent()


@pytest.mark.corolet_only(
    reason="greenlet 3.5.6 gives the frame until it has cleaned up after the exited thread "
    "(a moment after join(); its own test_throw_to_dead_thread_doesnt_crash reads it) and "
    "None after; corolet keeps giving it"
)
@pytest.mark.leaks_greenlets(reason="as above: the exited thread's main greenlet stays")
def test_greenlet_left_suspended_by_an_exited_thread_keeps_its_frame():
    """The fuzzer's snapshots leave out gr_frame of dead greenlets for this reason."""
    g = _greenlet_left_suspended_by_an_exited_thread(python_frame=True)
    assert g.dead
    assert g.gr_frame is not None and g.gr_frame.f_code.co_name == "body"


@pytest.mark.corolet_only(
    reason="greenlet 3.5.6 calls the greenlet's run() again from the start on 3.10 and "
    "switches into the abandoned stack and crashes (segfault) on 3.11+"
)
@pytest.mark.leaks_greenlets(reason="as above: the exited thread's main greenlet stays")
def test_greenlet_of_an_exited_thread_cannot_be_switched_to_after_being_reparented():
    """Seed 283: after the re-parenting above, the greenlet's lineage leads to this thread,
    but its stack is abandoned. Switching to it, throwing into it, or reaching it as the
    parent of a dead greenlet raises (the fuzzer's orphan-reparented class); corolet resumed
    the stack and crashed."""
    g = _greenlet_left_suspended_by_an_exited_thread()
    g.parent = getcurrent()
    with pytest.raises(corolet.error, match=EXITED):
        g.switch()
    with pytest.raises(corolet.error, match=EXITED):
        g.throw(ValueError)
    child = greenlet(lambda: None, parent=g)
    with pytest.raises(corolet.error, match=EXITED):
        child.switch()
    # Refused before the child starts, as for any greenlet whose lineage leads to a thread
    # that exited.
    assert not child.dead
    dead = greenlet(lambda: None)
    dead.switch()
    dead.parent = g
    with pytest.raises(corolet.error, match=EXITED):
        dead.switch()
    assert g.dead and not g


@pytest.mark.corolet_only(
    reason="greenlet 3.5.6 passes the GreenletExit object itself where run()'s argument tuple "
    "belongs: run() gets no arguments when the exception has no __dict__, and the process "
    "segfaults when it has one"
)
def test_greenlet_exit_ending_a_greenlet_is_the_one_argument_of_its_unstarted_parent():
    """Seed 4: a greenlet whose ``run`` ends with GreenletExit switches to its parent with
    the exception as a plain value; an unstarted parent starts with it as its argument."""
    received = []

    def parent_run(*args, **kwargs):
        received.append((args, kwargs))

    for attach_attribute in (False, True):
        received.clear()
        parent = greenlet(parent_run)

        def child_run(attach_attribute=attach_attribute):
            exc = GreenletExit("x")
            if attach_attribute:
                exc.note = "gives the exception a __dict__"
            raise exc

        child = greenlet(child_run, parent=parent)
        child.switch()
        ((args, kwargs),) = received
        assert len(args) == 1 and type(args[0]) is GreenletExit and kwargs == {}
        assert parent.dead and child.dead
