"""parent: defaults, reassignment, the setter's errors, and where results travel."""

from __future__ import annotations

import threading

import corolet
import pytest
from corolet import getcurrent, greenlet


def test_default_parent_is_the_greenlet_current_at_construction(main_greenlet):
    g = greenlet(lambda: None)
    assert g.parent is main_greenlet

    def build_inside():
        return greenlet(lambda: None)

    holder = greenlet(build_inside)
    built = holder.switch()
    assert built.parent is holder


def test_parent_given_to_the_constructor_is_used():
    p = greenlet(lambda *args: ("parent", args))
    g = greenlet(lambda: "child value", p)
    assert g.parent is p
    assert greenlet(run=None, parent=p).parent is p


def test_parent_none_in_the_constructor_keeps_the_current_greenlet(main_greenlet):
    assert greenlet(None, None).parent is main_greenlet
    assert greenlet(parent=None).parent is main_greenlet


def test_main_greenlet_has_no_parent(main_greenlet):
    assert main_greenlet.parent is None


def test_reassigned_parent_receives_the_result(main_greenlet):
    def parent_run():
        return ("parent received", main_greenlet.switch("parent waiting"))

    p = greenlet(parent_run)
    assert p.switch() == "parent waiting"
    g = greenlet(lambda: "result")
    g.parent = p
    assert g.parent is p
    assert g.switch() == ("parent received", "result")


def test_parent_can_be_changed_while_the_greenlet_is_suspended(main_greenlet):
    def parent_run(value):
        return ("new parent started with", value)

    p = greenlet(parent_run)
    g = greenlet(lambda: main_greenlet.switch("suspended") * 2)
    assert g.switch() == "suspended"
    g.parent = p
    assert g.switch(21) == ("new parent started with", 42)


def test_parent_can_be_changed_from_inside_the_running_greenlet(main_greenlet):
    p = greenlet(lambda value: ("adopted by p", value))

    def run():
        getcurrent().parent = p
        return "value"

    assert greenlet(run).switch() == ("adopted by p", "value")


def test_finished_child_starts_its_unstarted_parent_with_its_return_value():
    started_with = []

    def parent_run(*args, **kwargs):
        started_with.append((args, kwargs))
        return "parent result"

    p = greenlet(parent_run)
    child = greenlet(lambda: "child result", p)
    assert child.switch() == "parent result"
    assert started_with == [(("child result",), {})]


def test_error_in_child_with_unstarted_parent_kills_the_parent_without_running_it():
    parent_ran = []
    p = greenlet(lambda *args: parent_ran.append(args))
    child = greenlet(lambda: 1 / 0, p)
    with pytest.raises(ZeroDivisionError):
        child.switch()
    assert parent_ran == []
    assert p.dead and child.dead


def test_result_of_a_child_whose_parent_died_goes_to_the_grandparent(main_greenlet):
    p = greenlet(lambda: None)
    g = greenlet(lambda: main_greenlet.switch("suspended") + 1, p)
    g.parent = main_greenlet
    assert g.switch() == "suspended"
    g.parent = p
    p.switch()  # p finishes; its parent is main
    assert p.dead
    assert g.switch(1) == 2


# --- Setter errors ------------------------------------------------------------------------------


def test_setting_self_as_parent_raises_cyclic_parent_chain():
    g = greenlet(lambda: None)
    with pytest.raises(ValueError, match="^cyclic parent chain$"):
        g.parent = g


def test_setting_a_descendant_as_parent_raises_cyclic_parent_chain(main_greenlet):
    a = greenlet(lambda: None)
    b = greenlet(lambda: None, a)
    c = greenlet(lambda: None, b)
    with pytest.raises(ValueError, match="^cyclic parent chain$"):
        a.parent = c
    assert a.parent is main_greenlet


@pytest.mark.parametrize(
    ("value", "type_name"), [(None, "NoneType"), (1, "int"), ("g", "str"), (object(), "object")]
)
def test_setting_a_non_greenlet_parent_raises_type_error(value, type_name):
    g = greenlet(lambda: None)
    with pytest.raises(TypeError) as excinfo:
        g.parent = value
    assert str(excinfo.value) == f"GreenletChecker: Expected any type of greenlet, not {type_name}"


def test_constructor_rejects_a_non_greenlet_parent():
    with pytest.raises(TypeError) as excinfo:
        greenlet(None, 1)
    assert str(excinfo.value) == "GreenletChecker: Expected any type of greenlet, not int"


def test_deleting_the_parent_raises_attribute_error(main_greenlet):
    g = greenlet(lambda: None)
    with pytest.raises(AttributeError, match="^can't delete attribute$"):
        del g.parent
    assert g.parent is main_greenlet


@pytest.mark.parametrize("value", [None, 1, "new parent"])
def test_setting_the_parent_of_a_main_greenlet_raises_attribute_error(main_greenlet, value):
    if value == "new parent":
        value = greenlet(lambda: None)
    with pytest.raises(AttributeError, match="^cannot set the parent of a main greenlet$"):
        main_greenlet.parent = value
    assert main_greenlet.parent is None


def test_setting_main_greenlet_as_its_own_parent_reports_main_not_cycle(main_greenlet):
    with pytest.raises(AttributeError, match="^cannot set the parent of a main greenlet$"):
        main_greenlet.parent = main_greenlet


def test_subclass_greenlet_is_accepted_as_parent():
    class Sub(greenlet):
        pass

    p = Sub(lambda value: ("sub parent", value))
    g = greenlet(lambda: 5, p)
    assert g.parent is p
    assert g.switch() == ("sub parent", 5)


class _OtherThread:
    """A thread that parks a started greenlet and its main greenlet until released."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.release = threading.Event()
        self.main = None
        self.suspended = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.main = getcurrent()
        self.suspended = greenlet(lambda: self.main.switch())
        self.suspended.switch()
        self.ready.set()
        self.release.wait()
        self.suspended.throw()  # finish it in its own thread

    def __enter__(self) -> _OtherThread:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        self.release.set()
        self.thread.join(10)
        self.main = self.suspended = None


def test_started_greenlet_cannot_get_a_parent_from_another_thread(main_greenlet):
    with _OtherThread() as other:
        with pytest.raises(ValueError, match="^parent cannot be on a different thread$"):
            other.suspended.parent = main_greenlet
        finished = greenlet(lambda: None)
        finished.switch()
        with pytest.raises(ValueError, match="^parent cannot be on a different thread$"):
            finished.parent = other.main


def test_unstarted_greenlet_accepts_a_parent_from_another_thread_but_cannot_switch(main_greenlet):
    with _OtherThread() as other:
        g = greenlet(lambda: None)
        g.parent = other.main
        assert g.parent is other.main
        with pytest.raises(corolet.error, match="^Cannot switch to a different thread"):
            g.switch()
        assert not g.dead
        g.parent = main_greenlet
        assert g.switch() is None
