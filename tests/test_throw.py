"""throw(): the accepted forms, their argument errors, and where the exception ends up."""

from __future__ import annotations

import sys
import traceback

import pytest
from corolet import GreenletExit, getcurrent, greenlet


def _suspended_catcher(main, catch=BaseException):
    """A greenlet suspended in main.switch(); it returns what was thrown into it."""

    def run():
        try:
            main.switch("suspended")
        except catch as exc:
            return ("caught", exc)
        return ("not thrown", None)

    g = greenlet(run)
    assert g.switch() == "suspended"
    return g


# --- Forms ------------------------------------------------------------------------------------


def test_throw_without_arguments_raises_greenlet_exit_in_the_greenlet(main_greenlet):
    g = _suspended_catcher(main_greenlet)
    kind, exc = g.throw()
    assert kind == "caught"
    assert type(exc) is GreenletExit
    assert exc.args == ()


def test_throw_without_arguments_kills_a_greenlet_and_returns_the_greenlet_exit(main_greenlet):
    finished = []

    def run():
        try:
            main_greenlet.switch()
        finally:
            finished.append(True)

    g = greenlet(run)
    g.switch()
    result = g.throw()
    assert type(result) is GreenletExit
    assert finished == [True]
    assert g.dead


def test_throw_with_a_class_instantiates_it_without_arguments(main_greenlet):
    kind, exc = _suspended_catcher(main_greenlet).throw(ValueError)
    assert type(exc) is ValueError
    assert exc.args == ()


def test_throw_with_a_class_and_a_value_instantiates_it_with_the_value(main_greenlet):
    kind, exc = _suspended_catcher(main_greenlet).throw(ValueError, "bad value")
    assert type(exc) is ValueError
    assert exc.args == ("bad value",)


def test_throw_with_a_class_and_a_tuple_value_uses_the_tuple_as_arguments(main_greenlet):
    kind, exc = _suspended_catcher(main_greenlet).throw(KeyError, ("a", "b"))
    assert type(exc) is KeyError
    assert exc.args == ("a", "b")


def test_throw_with_a_class_and_none_value_instantiates_it_without_arguments(main_greenlet):
    kind, exc = _suspended_catcher(main_greenlet).throw(KeyError, None)
    assert exc.args == ()


def test_throw_with_an_instance_raises_that_very_instance(main_greenlet):
    error = OSError(2, "no such thing")
    kind, exc = _suspended_catcher(main_greenlet).throw(error)
    assert exc is error


def test_throw_with_an_instance_and_none_value_raises_the_instance(main_greenlet):
    error = RuntimeError("explicit none")
    kind, exc = _suspended_catcher(main_greenlet).throw(error, None)
    assert exc is error


def test_throw_with_a_traceback_attaches_it_to_the_exception(main_greenlet):
    def make_traceback():
        try:
            raise KeyError("original")
        except KeyError:
            return sys.exc_info()[2]

    tb = make_traceback()
    kind, exc = _suspended_catcher(main_greenlet).throw(KeyError, "k", tb)
    names = [entry.name for entry in traceback.extract_tb(exc.__traceback__)]
    assert "make_traceback" in names
    assert names[0] == "run"


def test_throw_with_an_instance_and_a_traceback_attaches_it_to_that_instance(main_greenlet):
    def make_traceback():
        try:
            raise KeyError("original")
        except KeyError:
            return sys.exc_info()[2]

    error = KeyError("thrown")
    kind, exc = _suspended_catcher(main_greenlet).throw(error, None, make_traceback())
    assert exc is error
    names = [entry.name for entry in traceback.extract_tb(exc.__traceback__)]
    assert "make_traceback" in names
    assert names[0] == "run"


@pytest.mark.parametrize("cls", [OSError, FileNotFoundError])
def test_throw_with_a_class_and_an_instance_of_it_raises_that_very_instance(main_greenlet, cls):
    # greenlet raises the instance itself, as `raise` would: no new cls(instance) around it.
    error = FileNotFoundError(2, "no such thing")
    kind, exc = _suspended_catcher(main_greenlet).throw(cls, error)
    assert exc is error
    assert exc.args == (2, "no such thing")


def test_throw_with_none_traceback_is_accepted(main_greenlet):
    kind, exc = _suspended_catcher(main_greenlet).throw(ValueError, "v", None)
    assert exc.args == ("v",)


# --- Argument errors ----------------------------------------------------------------------------


def test_throw_instance_with_separate_value_raises_type_error(main_greenlet):
    g = _suspended_catcher(main_greenlet)
    with pytest.raises(TypeError, match="^instance exception may not have a separate value$"):
        g.throw(ValueError("instance"), "value")
    # The target was not touched.
    assert g.switch() == ("not thrown", None)


def test_throw_with_a_bad_traceback_raises_type_error(main_greenlet):
    g = _suspended_catcher(main_greenlet)
    with pytest.raises(TypeError, match="^throw\\(\\) third argument must be a traceback object$"):
        g.throw(ValueError, None, "not a traceback")
    assert g.switch() == ("not thrown", None)


@pytest.mark.parametrize(
    ("thrown", "type_name"),
    [(42, "int"), ("text", "str"), (None, "NoneType"), (object, "type"), (object(), "object")],
)
def test_throw_of_a_non_exception_raises_type_error(main_greenlet, thrown, type_name):
    g = _suspended_catcher(main_greenlet)
    expected = f"exceptions must be classes, or instances, not {type_name}"
    with pytest.raises(TypeError) as excinfo:
        g.throw(thrown)
    assert str(excinfo.value) == expected
    assert g.switch() == ("not thrown", None)


def test_throw_rejects_keyword_arguments(main_greenlet):
    g = _suspended_catcher(main_greenlet)
    # CPython names the method with its type from 3.11 on; greenlet leaves this to CPython.
    prefix = "greenlet.throw()" if sys.version_info >= (3, 11) else "throw()"
    with pytest.raises(TypeError) as excinfo:
        g.throw(typ=ValueError)
    assert str(excinfo.value) == f"{prefix} takes no keyword arguments"
    assert g.switch() == ("not thrown", None)


def test_throw_argument_errors_are_reported_for_the_current_greenlet_too(main_greenlet):
    with pytest.raises(TypeError, match="^instance exception may not have a separate value$"):
        main_greenlet.throw(ValueError("x"), "y")
    with pytest.raises(TypeError, match="^exceptions must be classes, or instances, not int$"):
        main_greenlet.throw(1)


# --- Targets in each state ----------------------------------------------------------------------


def test_throw_into_a_suspended_greenlet_raises_at_its_switch_point(main_greenlet):
    def run():
        try:
            main_greenlet.switch()
        except IndexError as exc:
            where = sys._getframe().f_code.co_name
            return where, exc.args

    g = greenlet(run)
    g.switch()
    assert g.throw(IndexError, "here") == ("run", ("here",))


def test_exception_thrown_and_not_caught_comes_back_to_the_parent(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    with pytest.raises(ValueError, match="^uncaught$"):
        g.throw(ValueError, "uncaught")
    assert g.dead


def test_greenlet_can_catch_a_thrown_exception_and_switch_back(main_greenlet):
    def run():
        while True:
            try:
                main_greenlet.switch("waiting")
            except ValueError as exc:
                main_greenlet.switch(("handled", exc.args[0]))

    g = greenlet(run)
    g.switch()
    assert g.throw(ValueError, 1) == ("handled", 1)
    assert g.switch() == "waiting"
    assert g.throw(ValueError, 2) == ("handled", 2)
    assert g.throw() is not None  # GreenletExit ends the loop, comes back as a value
    assert g.dead


def test_throw_into_an_unstarted_greenlet_never_runs_it():
    ran = []
    g = greenlet(lambda: ran.append(True))
    result = g.throw()
    assert type(result) is GreenletExit
    assert ran == []
    assert g.dead


def test_throw_of_an_error_into_an_unstarted_greenlet_raises_it_in_the_parent():
    ran = []
    g = greenlet(lambda: ran.append(True))
    with pytest.raises(ValueError, match="^never started$"):
        g.throw(ValueError, "never started")
    assert ran == []
    assert g.dead


def test_throw_into_an_unstarted_greenlet_without_run_raises_attribute_error():
    g = greenlet()
    with pytest.raises(AttributeError, match="^run$"):
        g.throw(ValueError)
    assert not g.dead
    assert not g


def test_throw_greenlet_exit_into_a_dead_greenlet_returns_it_as_a_value():
    g = greenlet(lambda: None)
    g.switch()
    result = g.throw()
    assert type(result) is GreenletExit
    instance = GreenletExit("given")
    assert g.throw(instance) is instance


def test_throw_error_into_a_dead_greenlet_raises_it_in_the_parent():
    g = greenlet(lambda: None)
    g.switch()
    with pytest.raises(ValueError, match="^after death$"):
        g.throw(ValueError, "after death")


def test_throw_into_the_current_greenlet_raises_immediately(main_greenlet):
    with pytest.raises(ValueError, match="^right here$"):
        main_greenlet.throw(ValueError, "right here")
    with pytest.raises(GreenletExit):
        main_greenlet.throw()


def test_throw_into_the_current_non_main_greenlet_raises_inside_it():
    def run():
        try:
            getcurrent().throw(KeyError, "self")
        except KeyError as exc:
            return ("caught inside", exc.args)

    assert greenlet(run).switch() == ("caught inside", ("self",))


def test_throw_into_unstarted_child_propagates_through_its_unstarted_parent():
    parent_ran = []
    parent = greenlet(lambda *args: parent_ran.append(args))
    child = greenlet(lambda: None, parent)
    with pytest.raises(IndexError, match="^to the top$"):
        child.throw(IndexError, "to the top")
    # The parent was started with the error pending, so it died without running either.
    assert parent_ran == []
    assert child.dead and parent.dead


def test_throw_into_child_is_caught_by_its_suspended_parent(main_greenlet):
    def parent_run():
        try:
            main_greenlet.switch("parent suspended")
        except IndexError as exc:
            return ("parent caught", exc.args)

    parent = greenlet(parent_run)
    assert parent.switch() == "parent suspended"
    child = greenlet(lambda: None, parent)
    assert child.throw(IndexError, "x") == ("parent caught", ("x",))
    assert child.dead and parent.dead


def test_throw_from_a_sibling_goes_to_the_targets_parent_not_the_thrower(main_greenlet):
    target = greenlet(lambda: main_greenlet.switch("target suspended"))
    assert target.switch() == "target suspended"
    caught_by_thrower = []

    def thrower_run():
        try:
            target.throw(LookupError, "for main")
        except LookupError:
            caught_by_thrower.append(True)

    thrower = greenlet(thrower_run)
    with pytest.raises(LookupError, match="^for main$"):
        thrower.switch()
    assert caught_by_thrower == []
    assert target.dead
    thrower.throw()


def test_thrown_greenlet_exit_with_message_is_returned_unchanged(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    exit_exc = GreenletExit("stop now")
    assert g.throw(exit_exc) is exit_exc


@pytest.mark.parametrize(
    "args",
    [(ValueError,), (ValueError, "x"), (), (ValueError, ValueError("given"))],
    ids=["class", "class-and-value", "default", "class-and-instance"],
)
def test_thrown_exception_is_not_chained_to_the_throwers_handled_one(args) -> None:
    def catcher():
        try:
            getcurrent().parent.switch()
        except BaseException as e:
            return e.__context__

    g = greenlet(catcher)
    g.switch()
    try:
        raise KeyError("being handled by the thrower")
    except KeyError:
        assert g.throw(*args) is None


def test_throw_into_self_is_not_chained_either() -> None:
    def run():
        try:
            raise KeyError("handled")
        except KeyError:
            try:
                getcurrent().throw(ValueError)
            except ValueError as e:
                return e.__context__

    assert greenlet(run).switch() is None


def test_greenlet_exit_of_a_dropped_greenlet_chains_to_the_droppers_handled_exception() -> None:
    seen = []

    def parked():
        try:
            getcurrent().parent.switch()
        except GreenletExit as e:
            seen.append(e.__context__)

    g = greenlet(parked)
    g.switch()
    handled = KeyError("being handled where the greenlet is dropped")
    try:
        raise handled
    except KeyError:
        del g
    assert seen == [handled]
