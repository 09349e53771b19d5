"""settrace/gettrace: the greenlet trace hook, its events, and what happens when it fails."""

from __future__ import annotations

import threading

import corolet
import pytest
from corolet import GreenletExit, getcurrent, gettrace, greenlet, settrace


class Recorder:
    """A trace function that records (event, origin, target, current-is-target)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, object, bool]] = []

    def __call__(self, event, args):
        origin, target = args
        self.events.append((event, origin, target, getcurrent() is target))


@pytest.fixture
def recorder():
    rec = Recorder()
    previous = settrace(rec)
    assert previous is None
    try:
        yield rec
    finally:
        settrace(None)
        rec.events.clear()  # drop the greenlets it recorded before the leak check counts


def test_gettrace_is_none_by_default():
    assert gettrace() is None


def test_settrace_returns_the_previous_function_and_gettrace_reports_it():
    def first(event, args):
        pass

    def second(event, args):
        pass

    try:
        assert settrace(first) is None
        assert gettrace() is first
        assert settrace(second) is first
        assert gettrace() is second
    finally:
        assert settrace(None) is second
    assert gettrace() is None


def test_setting_the_same_trace_function_twice_is_allowed():
    def tracer(event, args):
        pass

    try:
        settrace(tracer)
        assert settrace(tracer) is tracer
        assert gettrace() is tracer
    finally:
        assert settrace(None) is tracer


def test_settrace_requires_exactly_one_positional_argument():
    with pytest.raises(TypeError, match=r"^function takes exactly 1 argument \(0 given\)$"):
        settrace()
    with pytest.raises(TypeError, match=r"^function takes exactly 1 argument \(2 given\)$"):
        settrace(None, None)
    with pytest.raises(TypeError, match=r"^settrace\(\) takes no keyword arguments$"):
        settrace(callback=None)
    assert gettrace() is None


def test_switch_events_name_origin_and_target(recorder, main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    g.switch()
    assert recorder.events == [
        ("switch", main_greenlet, g, True),
        ("switch", g, main_greenlet, True),
        ("switch", main_greenlet, g, True),
        ("switch", g, main_greenlet, True),
    ]


def test_trace_function_runs_in_the_target_greenlet(recorder, main_greenlet):
    g = greenlet(lambda: None)
    g.switch()
    assert all(current_is_target for *_, current_is_target in recorder.events)
    assert len(recorder.events) == 2


def test_throw_produces_a_throw_event_and_death_by_greenlet_exit_a_switch_event(
    recorder, main_greenlet
):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    result = g.throw()
    assert type(result) is GreenletExit
    assert [(e, o, t) for e, o, t, _ in recorder.events] == [
        ("switch", main_greenlet, g),
        ("switch", g, main_greenlet),
        ("throw", main_greenlet, g),
        ("switch", g, main_greenlet),
    ]


def test_error_leaving_a_greenlet_produces_a_throw_event_to_the_parent(recorder, main_greenlet):
    g = greenlet(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        g.switch()
    assert [(e, o, t) for e, o, t, _ in recorder.events] == [
        ("switch", main_greenlet, g),
        ("throw", g, main_greenlet),
    ]


def test_throw_into_an_unstarted_greenlet_produces_a_throw_event(recorder, main_greenlet):
    g = greenlet(lambda: None)
    g.throw()
    assert [(e, o, t) for e, o, t, _ in recorder.events] == [
        ("throw", main_greenlet, g),
        ("switch", g, main_greenlet),
    ]


def test_switch_to_the_current_greenlet_produces_a_self_event(recorder, main_greenlet):
    assert main_greenlet.switch(1) == 1
    assert [(e, o, t) for e, o, t, _ in recorder.events] == [
        ("switch", main_greenlet, main_greenlet)
    ]


def test_switch_to_a_dead_child_of_the_current_greenlet_is_a_self_event(main_greenlet):
    g = greenlet(lambda: None)
    g.switch()
    rec = Recorder()
    settrace(rec)
    try:
        assert g.switch("x") == "x"
    finally:
        settrace(None)
    assert [(e, o, t) for e, o, t, _ in rec.events] == [("switch", main_greenlet, main_greenlet)]


def test_events_between_two_children(recorder, main_greenlet):
    a = greenlet(lambda: b.switch())
    b = greenlet(lambda: "b done", a)
    assert a.switch() == "b done"
    assert [(e, o, t) for e, o, t, _ in recorder.events] == [
        ("switch", main_greenlet, a),
        ("switch", a, b),
        ("switch", b, a),
        ("switch", a, main_greenlet),
    ]


def test_no_events_after_the_trace_function_is_removed(main_greenlet):
    rec = Recorder()
    settrace(rec)
    greenlet(lambda: None).switch()
    settrace(None)
    greenlet(lambda: None).switch()
    assert len(rec.events) == 2


class SomeError(Exception):
    pass


def test_trace_function_that_raises_is_removed_and_its_error_kills_a_starting_greenlet():
    calls = []
    ran = []

    def failing(event, args):
        calls.append(event)
        raise SomeError("from the trace function")

    settrace(failing)
    g = greenlet(lambda: ran.append(True))
    with pytest.raises(SomeError, match="^from the trace function$"):
        g.switch()
    assert gettrace() is None
    assert calls == ["switch"]
    assert ran == []
    assert g.dead


def test_trace_function_error_is_raised_at_the_targets_switch_point(main_greenlet):
    def child():
        main_greenlet.switch()
        return "finished"

    g = greenlet(child)
    g.switch()
    seen = []

    def failing_on_return_to_main(event, args):
        origin, target = args
        seen.append((event, origin, target))
        if target is main_greenlet:
            raise SomeError("raised in main")

    settrace(failing_on_return_to_main)
    with pytest.raises(SomeError, match="^raised in main$"):
        g.switch()
    assert gettrace() is None
    assert seen == [("switch", main_greenlet, g), ("switch", g, main_greenlet)]
    # The child finished normally; its return value was replaced by the trace error.
    assert g.dead


def test_trace_function_error_raised_inside_a_resumed_child(main_greenlet):
    def child():
        try:
            main_greenlet.switch()
        except SomeError as exc:
            return ("child caught", str(exc))

    g = greenlet(child)
    g.switch()

    def failing(event, args):
        raise SomeError("into child")

    settrace(failing)
    assert g.switch() == ("child caught", "into child")
    assert gettrace() is None


def test_non_callable_trace_function_fails_the_next_switch_and_is_removed():
    settrace(5)
    g = greenlet(lambda: None)
    with pytest.raises(TypeError, match="^'int' object is not callable$"):
        g.switch()
    assert gettrace() is None


def test_trace_function_is_per_thread(main_greenlet):
    rec = Recorder()
    box = {}

    def thread_main():
        box["trace in thread"] = gettrace()
        greenlet(lambda: None).switch()

    settrace(rec)
    try:
        thread = threading.Thread(target=thread_main)
        thread.start()
        thread.join(10)
    finally:
        settrace(None)
    assert box["trace in thread"] is None
    assert rec.events == []


def test_trace_function_may_use_greenlet_api_without_recursing(main_greenlet):
    events = []

    def tracer(event, args):
        events.append((event, getcurrent() is args[1], corolet.gettrace() is tracer))

    settrace(tracer)
    try:
        greenlet(lambda: None).switch()
    finally:
        settrace(None)
    assert events == [("switch", True, True), ("switch", True, True)]


def test_type_level_settrace_and_gettrace_are_the_module_functions():
    def tracer(event, args):
        pass

    assert greenlet.settrace(tracer) is None
    try:
        assert greenlet.gettrace() is tracer
        assert corolet.gettrace() is tracer
    finally:
        assert corolet.settrace(None) is tracer
