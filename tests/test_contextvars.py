"""Context variables: each greenlet has its own context, reachable through gr_context."""

from __future__ import annotations

import contextvars
import threading

import pytest
from corolet import getcurrent, greenlet

VAR = contextvars.ContextVar("corolet_test_var", default="default")


def _in_fresh_context(fn, *args):
    """Run fn in a new empty context, so tests do not disturb the main greenlet's context."""
    return contextvars.Context().run(fn, *args)


def test_new_greenlet_starts_with_an_empty_context():
    def body():
        VAR.set("set by the parent")
        return greenlet(VAR.get).switch()

    assert _in_fresh_context(body) == "default"


def test_value_set_in_a_greenlet_does_not_leak_to_its_parent(main_greenlet):
    def body():
        def child():
            VAR.set("child value")
            main_greenlet.switch(VAR.get())
            return VAR.get()

        g = greenlet(child)
        seen_in_child = g.switch()
        seen_in_parent = VAR.get()
        VAR.set("parent value")
        after_resume = g.switch()
        return seen_in_child, seen_in_parent, after_resume, VAR.get()

    assert _in_fresh_context(body) == ("child value", "default", "child value", "parent value")


def test_unstarted_greenlet_has_no_context():
    assert greenlet(lambda: None).gr_context is None


def test_started_greenlet_that_set_nothing_has_no_context(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    assert g.gr_context is None
    g.switch()


def test_suspended_greenlet_exposes_its_context(main_greenlet):
    def child():
        VAR.set("suspended value")
        main_greenlet.switch()

    g = greenlet(child)
    g.switch()
    ctx = g.gr_context
    assert type(ctx) is contextvars.Context
    assert ctx[VAR] == "suspended value"
    g.switch()


def test_dead_greenlet_keeps_the_context_it_ended_with():
    def child():
        VAR.set("final value")

    g = greenlet(child)
    g.switch()
    assert g.dead
    assert g.gr_context[VAR] == "final value"


def test_context_assigned_before_start_is_used_by_the_greenlet():
    ctx = _in_fresh_context(lambda: (VAR.set("preset"), contextvars.copy_context())[1])

    def child():
        before = VAR.get()
        VAR.set("changed inside")
        return before

    g = greenlet(child)
    g.gr_context = ctx
    assert g.gr_context is ctx
    assert g.switch() == "preset"
    # The greenlet ran in that very context object, so the change is visible through it.
    assert ctx[VAR] == "changed inside"
    assert g.gr_context is ctx


def test_context_can_be_shared_by_two_greenlets(main_greenlet):
    shared = contextvars.Context()
    writer = greenlet(lambda: (VAR.set("written"), main_greenlet.switch())[1])
    reader = greenlet(VAR.get)
    writer.gr_context = shared
    reader.gr_context = shared
    writer.switch()
    assert reader.switch() == "written"
    writer.switch()


def test_context_none_assigned_before_start_gives_an_empty_context():
    def body():
        VAR.set("not inherited")
        g = greenlet(VAR.get)
        g.gr_context = None
        return g.switch()

    assert _in_fresh_context(body) == "default"


def test_context_of_a_suspended_greenlet_can_be_replaced(main_greenlet):
    def child():
        VAR.set("original")
        main_greenlet.switch()
        return VAR.get()

    g = greenlet(child)
    g.switch()
    replacement = contextvars.Context()
    replacement.run(VAR.set, "replacement")
    g.gr_context = replacement
    assert g.switch() == "replacement"


def test_current_greenlet_context_is_the_live_context():
    ctx = contextvars.Context()
    assert ctx.run(lambda: getcurrent().gr_context is ctx)


def test_running_greenlet_without_context_reports_none():
    assert greenlet(lambda: getcurrent().gr_context).switch() is None


def test_main_greenlet_seen_from_a_child_exposes_its_context(main_greenlet):
    def body():
        VAR.set("main's value")
        return greenlet(lambda: main_greenlet.gr_context[VAR]).switch()

    assert _in_fresh_context(body) == "main's value"


def test_assigning_the_current_greenlets_context_switches_the_live_context():
    replacement = contextvars.Context()
    replacement.run(VAR.set, "from replacement")

    def child():
        VAR.set("before")
        getcurrent().gr_context = replacement
        return VAR.get(), getcurrent().gr_context is replacement

    assert greenlet(child).switch() == ("from replacement", True)


def test_dead_greenlet_accepts_a_new_context():
    g = greenlet(lambda: None)
    g.switch()
    ctx = contextvars.Context()
    g.gr_context = ctx
    assert g.gr_context is ctx
    g.gr_context = None
    assert g.gr_context is None


def test_deleting_gr_context_raises_attribute_error():
    g = greenlet(lambda: None)
    with pytest.raises(AttributeError, match="^can't delete context attribute$"):
        del g.gr_context


@pytest.mark.parametrize("value", [{}, 1, "ctx", object()])
def test_assigning_a_non_context_raises_type_error(value):
    g = greenlet(lambda: None)
    with pytest.raises(TypeError, match="^greenlet context must be a contextvars.Context or None$"):
        g.gr_context = value


def test_context_run_can_be_suspended_and_resumed_across_switches(main_greenlet):
    def child():
        def inside_run():
            VAR.set("inside Context.run")
            main_greenlet.switch("suspended inside run")
            return VAR.get()

        ctx = contextvars.copy_context()
        result = ctx.run(inside_run)
        return result, ctx[VAR], VAR.get()

    def body():
        g = greenlet(child)
        assert g.switch() == "suspended inside run"
        # The main greenlet is unaffected by the child's Context.run.
        assert VAR.get() == "default"
        other = contextvars.Context()
        assert other.run(VAR.get) == "default"
        return g.switch()

    assert _in_fresh_context(body) == ("inside Context.run", "inside Context.run", "default")


def test_main_greenlet_context_survives_switching_through_children(main_greenlet):
    def body():
        VAR.set("main")
        children = [greenlet(lambda i=i: VAR.set(f"child {i}")) for i in range(5)]
        for child in children:
            child.switch()
        return VAR.get()

    assert _in_fresh_context(body) == "main"


def test_context_of_a_greenlet_running_in_another_thread_cannot_be_read_or_set():
    ready = threading.Event()
    release = threading.Event()
    box = {}

    def thread_main():
        box["main"] = getcurrent()
        ready.set()
        release.wait(10)

    thread = threading.Thread(target=thread_main)
    thread.start()
    try:
        assert ready.wait(10)
        other_main = box["main"]
        elsewhere = "of a greenlet that is running in a different thread"
        with pytest.raises(ValueError, match=f"^cannot get context {elsewhere}$"):
            other_main.gr_context  # noqa: B018
        with pytest.raises(ValueError, match=f"^cannot set context {elsewhere}$"):
            other_main.gr_context = None
    finally:
        release.set()
        thread.join(10)


def test_context_of_a_greenlet_suspended_in_another_thread_can_be_read():
    ready = threading.Event()
    release = threading.Event()
    box = {}

    def thread_main():
        main = getcurrent()

        def child():
            VAR.set("in other thread")
            main.switch()

        g = greenlet(child)
        g.switch()
        box["suspended"] = g
        ready.set()
        release.wait(10)
        g.switch()

    thread = threading.Thread(target=thread_main)
    thread.start()
    try:
        assert ready.wait(10)
        assert box["suspended"].gr_context[VAR] == "in other thread"
    finally:
        release.set()
        thread.join(10)
        box.clear()
