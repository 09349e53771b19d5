"""switch(): what a switch delivers, where a greenlet's result goes, and how control moves."""

from __future__ import annotations

import sys
import traceback

import corolet
import pytest
from corolet import GreenletExit, getcurrent, greenlet


def _receive_once(main):
    """A run function that hands back whatever its first resumption delivered."""

    def run():
        received = main.switch("ready")
        main.switch(received)

    return run


def _delivered(main, *args, **kwargs):
    g = greenlet(_receive_once(main))
    assert g.switch() == "ready"
    result = g.switch(*args, **kwargs)
    g.switch()  # let it finish
    assert g.dead
    return result


# --- Argument packing -------------------------------------------------------------------------


def test_switch_with_no_arguments_delivers_empty_tuple(main_greenlet):
    assert _delivered(main_greenlet) == ()


def test_switch_with_one_argument_delivers_it_unwrapped(main_greenlet):
    marker = object()
    assert _delivered(main_greenlet, marker) is marker


def test_switch_with_one_none_argument_delivers_none(main_greenlet):
    assert _delivered(main_greenlet, None) is None


def test_switch_with_several_arguments_delivers_a_tuple(main_greenlet):
    assert _delivered(main_greenlet, 1, "two", 3.0) == (1, "two", 3.0)


def test_switch_with_one_tuple_argument_delivers_the_tuple_itself(main_greenlet):
    assert _delivered(main_greenlet, (1,)) == (1,)
    assert _delivered(main_greenlet, ()) == ()


def test_switch_with_only_keywords_delivers_a_dict(main_greenlet):
    assert _delivered(main_greenlet, a=1, b=2) == {"a": 1, "b": 2}


def test_switch_with_arguments_and_keywords_delivers_args_kwargs_pair(main_greenlet):
    assert _delivered(main_greenlet, 1, k="v") == ((1,), {"k": "v"})
    assert _delivered(main_greenlet, 1, 2, k="v") == ((1, 2), {"k": "v"})


def test_first_switch_calls_run_with_exact_arguments_and_keywords():
    g = greenlet(lambda *args, **kwargs: (args, kwargs))
    assert g.switch(1, 2, x=3) == ((1, 2), {"x": 3})


def test_first_switch_without_arguments_calls_run_with_none():
    calls = []
    g = greenlet(lambda *args, **kwargs: calls.append((args, kwargs)))
    assert g.switch() is None
    assert calls == [((), {})]


def test_switch_to_current_greenlet_hands_the_arguments_straight_back(main_greenlet):
    assert main_greenlet.switch() == ()
    assert main_greenlet.switch(7) == 7
    assert main_greenlet.switch(1, 2) == (1, 2)
    assert main_greenlet.switch(k=1) == {"k": 1}
    assert main_greenlet.switch(1, k=1) == ((1,), {"k": 1})


def test_switch_to_itself_inside_a_greenlet_returns_the_arguments():
    def run():
        me = getcurrent()
        return me.switch("a", "b"), me.switch(x=1)

    assert greenlet(run).switch() == (("a", "b"), {"x": 1})


# --- Results and exceptions go to the parent ----------------------------------------------------


def test_value_returned_from_run_goes_to_the_parent():
    assert greenlet(lambda: "result").switch() == "result"


def test_tuple_returned_from_run_arrives_as_one_value():
    assert greenlet(lambda: (1, 2)).switch() == (1, 2)
    assert greenlet(lambda: (3,)).switch() == (3,)


def test_run_returning_none_delivers_none():
    assert greenlet(lambda: None).switch() is None


def test_value_from_a_child_goes_to_its_parent_not_to_whoever_switched_to_it(main_greenlet):
    log = []

    def child_run():
        log.append("child ran")
        return "from child"

    child = greenlet(child_run)  # parent: main

    def middle_run():
        # switch() from here to child: child's result goes to main, not back here.
        child.switch()
        log.append("middle resumed")  # never reached

    middle = greenlet(middle_run)
    assert middle.switch() == "from child"
    assert log == ["child ran"]
    assert child.dead
    assert not middle.dead
    assert middle.throw() is not None  # clean up: GreenletExit comes back as a value
    assert middle.dead


def test_exception_leaving_a_greenlet_is_raised_in_the_parent():
    def run():
        raise ValueError("from the child")

    g = greenlet(run)
    with pytest.raises(ValueError, match="^from the child$"):
        g.switch()
    assert g.dead


def test_exception_from_a_greenlet_keeps_the_childs_frames_in_its_traceback():
    def failing_helper():
        raise KeyError("deep")

    def child_run():
        failing_helper()

    g = greenlet(child_run)
    with pytest.raises(KeyError) as excinfo:
        g.switch()
    names = [entry.name for entry in traceback.extract_tb(excinfo.value.__traceback__)]
    assert names[-2:] == ["child_run", "failing_helper"]
    assert names[0] == "test_exception_from_a_greenlet_keeps_the_childs_frames_in_its_traceback"


def test_exception_from_a_greenlet_is_raised_where_the_parent_is_suspended(main_greenlet):
    outcome = []

    def parent_run():
        try:
            child.switch()
        except ZeroDivisionError as exc:
            outcome.append(("caught in parent", str(exc)))
        return "parent done"

    parent = greenlet(parent_run)
    child = greenlet(lambda: 1 / 0, parent)
    assert parent.switch() == "parent done"
    assert outcome == [("caught in parent", "division by zero")]


def test_exception_from_a_greenlet_does_not_go_to_the_greenlet_that_switched_to_it(main_greenlet):
    def child_run():
        raise LookupError("to main")

    child = greenlet(child_run)  # parent: main
    reached = []

    def sibling_run():
        try:
            child.switch()
        except LookupError:
            reached.append("sibling")  # must not happen

    sibling = greenlet(sibling_run)
    with pytest.raises(LookupError, match="^to main$"):
        sibling.switch()
    assert reached == []
    sibling.throw()
    assert sibling.dead


def test_greenlet_exit_leaving_run_is_returned_to_the_parent_as_a_value():
    exit_exc = GreenletExit("bye")

    def run():
        raise exit_exc

    g = greenlet(run)
    assert g.switch() is exit_exc
    assert g.dead


def test_greenlet_exit_subclass_leaving_run_is_returned_as_a_value():
    class Stop(GreenletExit):
        pass

    g = greenlet(lambda: (_ for _ in ()).throw(Stop("sub")))
    result = g.switch()
    assert type(result) is Stop
    assert result.args == ("sub",)


def test_greenlet_exit_class_raised_from_run_is_returned_as_an_instance():
    def run():
        raise GreenletExit

    result = greenlet(run).switch()
    assert type(result) is GreenletExit
    assert result.args == ()


# --- Dead greenlets and unstarted parents -------------------------------------------------------


def test_switch_to_a_dead_greenlet_whose_parent_is_the_caller_returns_the_arguments():
    g = greenlet(lambda: None)
    g.switch()
    assert g.dead
    assert g.switch() == ()
    assert g.switch(5) == 5
    assert g.switch(1, 2) == (1, 2)
    assert g.switch(a=1) == {"a": 1}


def test_switch_to_a_dead_greenlet_goes_to_its_parent(main_greenlet):
    def parent_run():
        received = main_greenlet.switch("parent waiting")
        return ("parent got", received)

    parent = greenlet(parent_run)
    assert parent.switch() == "parent waiting"
    dead = greenlet(lambda: "ignored", parent)
    dead.parent = main_greenlet
    assert dead.switch() == "ignored"
    assert dead.dead
    dead.parent = parent
    # The arguments travel to the first live ancestor, which is suspended in main.switch().
    assert dead.switch("x", "y") == ("parent got", ("x", "y"))
    assert parent.dead


def test_switch_to_a_dead_greenlet_skips_dead_ancestors(main_greenlet):
    grandparent = greenlet(lambda: None)
    grandparent.switch()
    parent = greenlet(lambda: None, grandparent)
    parent.parent = main_greenlet
    parent.switch()
    parent.parent = grandparent
    child = greenlet(lambda: None, parent)
    child.parent = main_greenlet
    child.switch()
    child.parent = parent
    assert child.dead and parent.dead and grandparent.dead
    assert child.switch("through") == "through"


def test_finished_child_starts_its_unstarted_parent_with_the_result(main_greenlet):
    parent = greenlet(lambda *args, **kwargs: ("parent started with", args, kwargs))
    child = greenlet(lambda: 42, parent)
    assert child.switch() == ("parent started with", (42,), {})
    assert child.dead and parent.dead


def test_finished_child_returning_a_tuple_starts_the_parent_with_one_argument():
    parent = greenlet(lambda *args: args)
    child = greenlet(lambda: (1, 2), parent)
    assert child.switch() == ((1, 2),)


def test_switch_to_greenlet_without_run_raises_attribute_error_and_leaves_it_unstarted():
    g = greenlet()
    with pytest.raises(AttributeError, match="^run$"):
        g.switch()
    assert not g.dead
    assert not g
    g.run = lambda: "late run"
    assert g.switch() == "late run"


def test_switch_to_greenlet_with_run_none_raises_type_error():
    g = greenlet(run=None)
    with pytest.raises(TypeError, match="^'NoneType' object is not callable$"):
        g.switch()
    assert g.dead


def test_switch_to_greenlet_with_non_callable_run_raises_type_error():
    g = greenlet(5)
    with pytest.raises(TypeError, match="^'int' object is not callable$"):
        g.switch()


# --- Moving control around ------------------------------------------------------------------------


def test_ping_pong_resumes_each_side_where_it_left_off(main_greenlet):
    log = []

    def run(n):
        for i in range(3):
            log.append(("child", i, n))
            n = main_greenlet.switch(i)
        return "end"

    g = greenlet(run)
    results = [g.switch("a"), g.switch("b"), g.switch("c"), g.switch("d")]
    assert results == [0, 1, 2, "end"]
    assert log == [("child", 0, "a"), ("child", 1, "b"), ("child", 2, "c")]


def test_greenlet_created_inside_a_greenlet_has_its_creator_as_parent():
    def outer_run():
        inner = greenlet(lambda: "inner result")
        assert inner.parent is getcurrent()
        return inner.switch(), inner.dead

    assert greenlet(outer_run).switch() == ("inner result", True)


def test_greenlets_can_switch_directly_between_siblings(main_greenlet):
    log = []

    def a_run():
        log.append("a1")
        b.switch()
        log.append("a2")
        return "a done"

    def b_run():
        log.append("b1")
        a.switch()
        log.append("b2")  # never resumed

    a = greenlet(a_run)
    b = greenlet(b_run)
    assert a.switch() == "a done"
    assert log == ["a1", "b1", "a2"]
    assert a.dead and not b.dead
    b.throw()
    assert b.dead


def test_switch_out_of_a_generator_running_inside_a_greenlet(main_greenlet):
    def gen():
        for i in range(3):
            main_greenlet.switch(("inside generator", i))
            yield i

    g = greenlet(lambda: list(gen()))
    assert g.switch() == ("inside generator", 0)
    assert g.switch() == ("inside generator", 1)
    assert g.switch() == ("inside generator", 2)
    assert g.switch() == [0, 1, 2]


def test_deep_recursion_through_c_is_suspended_and_resumed(main_greenlet):
    depth = 300

    def dive(n):
        if n == 0:
            return main_greenlet.switch("at the bottom")
        # list(map(...)) puts C frames between the Python frames.
        return list(map(dive, [n - 1]))[0] + 1

    g = greenlet(dive)
    assert g.switch(depth) == "at the bottom"
    frames = []
    frame = g.gr_frame
    while frame is not None:
        frames.append(frame.f_code.co_name)
        frame = frame.f_back
    assert frames == ["dive"] * (depth + 1)
    # Touch other greenlets while it is suspended, then resume it.
    assert [greenlet(lambda i=i: i * 2).switch() for i in range(10)] == list(range(0, 20, 2))
    assert g.switch(1000) == 1000 + depth
    assert g.dead


def test_many_interleaved_greenlets_each_keep_their_own_state(main_greenlet):
    count = 1000
    rounds = 3

    def worker(index):
        total = index
        for step in range(rounds):
            total += main_greenlet.switch((index, step))
        return ("done", index, total)

    workers = [greenlet(worker) for _ in range(count)]
    seen = [w.switch(i) for i, w in enumerate(workers)]
    assert seen == [(i, 0) for i in range(count)]
    for step in range(1, rounds):
        # Resume them in reverse order to interleave differently from how they started.
        seen = [workers[i].switch(step) for i in reversed(range(count))]
        assert seen == [(i, step) for i in reversed(range(count))]
    results = [w.switch(100) for w in workers]
    assert results == [("done", i, i + 1 + 2 + 100) for i in range(count)]
    assert all(w.dead for w in workers)


def test_unbounded_python_recursion_in_a_greenlet_raises_recursion_error():
    def recurse(n):
        return recurse(n + 1) + 1

    g = greenlet(recurse)
    with pytest.raises(RecursionError):
        g.switch(0)
    assert g.dead


def test_unbounded_recursion_through_c_in_a_greenlet_raises_recursion_error():
    def recurse(n):
        return list(map(recurse, [n + 1]))

    g = greenlet(recurse)
    with pytest.raises(RecursionError):
        g.switch(0)
    assert g.dead


# --- Exception state is per greenlet ------------------------------------------------------------


def test_exception_being_handled_is_private_to_the_greenlet_handling_it(main_greenlet):
    def run():
        try:
            raise KeyError("inside")
        except KeyError:
            main_greenlet.switch(sys.exc_info()[1])
            # Back in the except block: the exception being handled is still ours.
            return sys.exc_info()[1]

    g = greenlet(run)
    inner = g.switch()
    assert isinstance(inner, KeyError)
    assert sys.exc_info() == (None, None, None)
    assert g.switch() is inner


def test_bare_raise_after_resuming_reraises_the_greenlets_own_exception(main_greenlet):
    def run():
        try:
            raise KeyError("mine")
        except KeyError:
            main_greenlet.switch()
            raise

    g = greenlet(run)
    g.switch()
    try:
        raise IndexError("main's")
    except IndexError:
        with pytest.raises(KeyError, match="mine"):
            g.switch()


def test_new_greenlet_does_not_see_the_exception_its_starter_is_handling():
    try:
        raise IndexError("outer")
    except IndexError:
        assert greenlet(sys.exc_info).switch() == (None, None, None)
        assert sys.exc_info()[0] is IndexError


def test_exception_raised_after_resuming_does_not_chain_to_another_greenlets(main_greenlet):
    def run():
        main_greenlet.switch()
        raise ValueError("plain")

    g = greenlet(run)
    g.switch()
    try:
        raise IndexError("being handled by main")
    except IndexError:
        with pytest.raises(ValueError) as excinfo:
            g.switch()
    # The ValueError was raised in the greenlet, which handled no exception at that time.
    assert excinfo.value.__context__ is None


def test_module_exposes_greenlet_and_getcurrent_under_corolet():
    assert corolet.greenlet is greenlet
    assert corolet.getcurrent is getcurrent
