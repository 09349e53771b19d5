"""gr_frame and the Python frame chain seen from inside and outside a greenlet."""

from __future__ import annotations

import sys
import traceback

from corolet import getcurrent, greenlet


def _chain(frame):
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


def test_unstarted_greenlet_has_no_frame():
    assert greenlet(lambda: None).gr_frame is None


def test_running_greenlet_has_no_frame():
    assert greenlet(lambda: getcurrent().gr_frame).switch() is None


def test_running_main_greenlet_has_no_frame(main_greenlet):
    assert main_greenlet.gr_frame is None


def test_dead_greenlet_has_no_frame(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    assert g.gr_frame is not None
    g.switch()
    assert g.dead
    assert g.gr_frame is None


def test_suspended_greenlet_frame_is_the_one_that_called_switch(main_greenlet):
    def inner():
        marker = "inner local"  # noqa: F841 - read back through gr_frame
        main_greenlet.switch()

    def outer():
        inner()

    g = greenlet(outer)
    g.switch()
    frame = g.gr_frame
    assert frame.f_code.co_name == "inner"
    assert frame.f_locals["marker"] == "inner local"
    g.switch()


def test_suspended_frame_chain_ends_at_the_greenlets_first_frame(main_greenlet):
    def level3():
        main_greenlet.switch()

    def level2():
        level3()

    def level1():
        level2()

    g = greenlet(level1)
    g.switch()
    assert _chain(g.gr_frame) == ["level3", "level2", "level1"]
    g.switch()


def test_frame_chain_inside_a_running_greenlet_does_not_reach_the_parent():
    def inner():
        return _chain(sys._getframe())

    def run():
        return inner()

    assert greenlet(run).switch() == ["inner", "run"]


def test_first_frame_of_a_greenlet_has_no_back_link():
    def run():
        return sys._getframe().f_back

    assert greenlet(run).switch() is None


def test_gr_frame_follows_the_latest_switch_point(main_greenlet):
    def first_stop():
        main_greenlet.switch()

    def second_stop():
        main_greenlet.switch()

    def run():
        first_stop()
        second_stop()

    g = greenlet(run)
    g.switch()
    assert g.gr_frame.f_code.co_name == "first_stop"
    g.switch()
    assert g.gr_frame.f_code.co_name == "second_stop"
    g.switch()
    assert g.gr_frame is None


def test_suspended_main_greenlet_frame_is_where_main_switched_away(main_greenlet):
    def run():
        return main_greenlet.gr_frame.f_code.co_name

    def test_function_that_switches():
        return greenlet(run).switch()

    assert test_function_that_switches() == "test_function_that_switches"


def test_suspended_frame_keeps_its_locals_and_line(main_greenlet):
    def run():
        counter = 0
        for _ in range(3):
            counter += 1
            main_greenlet.switch()

    g = greenlet(run)
    g.switch()
    line = g.gr_frame.f_lineno
    assert g.gr_frame.f_locals["counter"] == 1
    g.switch()
    assert g.gr_frame.f_locals["counter"] == 2
    assert g.gr_frame.f_lineno == line
    g.switch()
    g.switch()


def test_traceback_formatted_from_a_suspended_frame_lists_the_greenlets_frames(main_greenlet):
    def waiting():
        main_greenlet.switch()

    def run():
        waiting()

    g = greenlet(run)
    g.switch()
    names = [entry.name for entry in traceback.extract_stack(g.gr_frame)]
    assert names == ["run", "waiting"]
    g.switch()


def test_getframe_in_the_parent_is_unaffected_by_a_suspended_child(main_greenlet):
    def run():
        main_greenlet.switch()

    g = greenlet(run)
    before = _chain(sys._getframe())
    g.switch()
    assert _chain(sys._getframe()) == before
    assert sys._getframe().f_code.co_name == (
        "test_getframe_in_the_parent_is_unaffected_by_a_suspended_child"
    )
    g.switch()


def test_frames_of_a_greenlet_started_deep_in_the_stack_still_end_at_its_run():
    def recurse(n):
        if n == 0:
            return greenlet(lambda: _chain(sys._getframe())).switch()
        return recurse(n - 1)

    assert recurse(50) == ["<lambda>"]
