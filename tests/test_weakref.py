"""Weak references to greenlets, and what happens when the last strong reference goes."""

from __future__ import annotations

import gc
import weakref

import pytest
from corolet import GreenletExit, getcurrent, greenlet


def test_weak_reference_to_the_main_greenlet_stays_alive(main_greenlet):
    ref = weakref.ref(main_greenlet)
    gc.collect()
    assert ref() is main_greenlet
    assert ref() is getcurrent()


def test_weak_reference_to_an_unstarted_greenlet_dies_with_it():
    g = greenlet(lambda: None)
    ref = weakref.ref(g)
    assert ref() is g
    del g
    assert ref() is None


def test_weak_reference_to_a_dead_greenlet_dies_with_it():
    g = greenlet(lambda: None)
    g.switch()
    ref = weakref.ref(g)
    del g
    assert ref() is None


def test_weak_reference_callback_runs_when_the_greenlet_goes():
    calls = []
    g = greenlet(lambda: None)
    ref = weakref.ref(g, calls.append)
    del g
    assert calls == [ref]


def test_dropping_a_suspended_greenlet_kills_it_with_greenlet_exit(main_greenlet):
    seen = []

    def body():
        try:
            main_greenlet.switch()
        except GreenletExit as exc:
            seen.append((exc.args, getcurrent().parent is main_greenlet))
            raise
        finally:
            seen.append("finally")

    g = greenlet(body)
    g.switch()
    ref = weakref.ref(g)
    del g
    assert ref() is None
    assert seen == [
        (("Killing the greenlet because all references have vanished.",), True),
        "finally",
    ]


def test_killed_greenlet_runs_in_the_greenlet_that_dropped_it_as_parent(main_greenlet):
    seen = []

    def victim_body():
        try:
            main_greenlet.switch()
        except GreenletExit:
            seen.append(getcurrent().parent)

    original_parent = greenlet(lambda *args: None)
    victim = greenlet(victim_body, original_parent)
    victim.parent = main_greenlet
    victim.switch()
    victim.parent = original_parent

    def dropper():
        holder.clear()  # the last reference to the victim goes here
        return getcurrent()

    holder = [victim]
    del victim
    d = greenlet(dropper)
    assert d.switch() is d
    assert seen == [d]


def test_weak_reference_inside_a_killed_greenlet_is_still_alive_during_the_kill(main_greenlet):
    observed = []

    def body():
        ref = weakref.ref(getcurrent())
        try:
            main_greenlet.switch()
        except GreenletExit:
            observed.append(ref() is not None)

    g = greenlet(body)
    g.switch()
    ref = weakref.ref(g)
    del g
    assert observed == [True]
    assert ref() is None


def test_error_raised_while_being_killed_is_reported_as_unraisable(main_greenlet, monkeypatch):
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)

    def body():
        try:
            main_greenlet.switch()
        except GreenletExit:
            raise ValueError("while dying") from None

    g = greenlet(body)
    g.switch()
    ref = weakref.ref(g)
    del g
    assert len(reported) == 1
    assert type(reported[0].exc_value) is ValueError
    assert str(reported[0].exc_value) == "while dying"
    # The hook was given the greenlet itself; keeping the report keeps the greenlet.
    assert reported[0].object is ref()
    assert ref().dead
    reported.clear()
    assert ref() is None


def test_value_returned_by_a_killed_greenlet_is_discarded(main_greenlet):
    def body():
        try:
            main_greenlet.switch()
        except GreenletExit:
            return "ignored"

    g = greenlet(body)
    g.switch()
    del g  # nothing to assert beyond "does not raise or switch anywhere"
    assert getcurrent() is main_greenlet


def test_greenlet_can_resurrect_itself_while_being_killed(main_greenlet):
    saved = []

    def body():
        try:
            main_greenlet.switch()
        except GreenletExit:
            saved.append(getcurrent())
            main_greenlet.switch("resurrected")
        return "finished later"

    g = greenlet(body)
    g.switch()
    del g
    assert len(saved) == 1
    survivor = saved.pop()
    assert not survivor.dead
    assert survivor.switch() == "finished later"
    assert survivor.dead


def test_unreachable_cycle_through_a_dead_greenlet_is_collected():
    g = greenlet(lambda: None)
    g.switch()
    g.cycle = g
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None


def test_unreachable_cycle_through_an_unstarted_greenlet_is_collected():
    g = greenlet(lambda: None)
    g.cycle = [g]
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None


def test_unreachable_cycle_through_an_unstarted_run_function_is_collected():
    box = []

    def run(box=box):
        return box

    g = greenlet(run)
    box.append(g)
    ref = weakref.ref(g)
    del g, box, run
    gc.collect()
    assert ref() is None


def test_greenlets_work_in_weak_containers(main_greenlet):
    greenlets = [greenlet(lambda: main_greenlet.switch()) for _ in range(5)]
    for g in greenlets:
        g.switch()
    weak_set = weakref.WeakSet(greenlets)
    weak_values = weakref.WeakValueDictionary(enumerate(greenlets))
    weak_keys = weakref.WeakKeyDictionary((g, i) for i, g in enumerate(greenlets))
    assert len(weak_set) == len(weak_values) == len(weak_keys) == 5
    del g
    greenlets.clear()
    gc.collect()
    assert len(weak_set) == len(weak_values) == len(weak_keys) == 0


@pytest.mark.leaks_greenlets(
    reason="a greenlet that swallows GreenletExit and switches away cannot be killed; "
    "greenlet reports it and leaks it on purpose"
)
def test_greenlet_that_survives_its_kill_is_reported_and_kept(main_greenlet, capsys):
    def stubborn():
        while True:
            try:
                main_greenlet.switch()
            except GreenletExit:
                pass

    g = greenlet(stubborn)
    g.switch()
    ref = weakref.ref(g)
    text = repr(g)
    del g
    assert ref() is not None
    assert not ref().dead
    err = capsys.readouterr().err
    assert err == f"GreenletExit did not kill {text}\n"
