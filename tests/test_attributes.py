"""The greenlet type's attributes: repr, dead/bool, run, __dict__, copying, _stack_saved,
constants, type-level aliases and subclassing."""

from __future__ import annotations

import copy
import pickle
import re
import sys

import corolet
import pytest
from corolet import GreenletExit, getcurrent, greenlet

_HEX = r"0x(?:[0-9a-f]+|\(nil\))"


def _repr_pattern(suffix: str, type_name: str = "greenlet.greenlet") -> str:
    return rf"<{re.escape(type_name)} object at {_HEX} \(otid={_HEX}\){suffix}>"


# --- repr ---------------------------------------------------------------------------------------


def test_repr_of_the_running_main_greenlet(main_greenlet):
    assert re.fullmatch(_repr_pattern(" current active started main"), repr(main_greenlet))


def test_repr_of_an_unstarted_greenlet_says_pending():
    assert re.fullmatch(_repr_pattern(" pending"), repr(greenlet(lambda: None)))


def test_repr_of_a_running_greenlet_says_current_active_started():
    text = greenlet(lambda: repr(getcurrent())).switch()
    assert re.fullmatch(_repr_pattern(" current active started"), text)


def test_repr_of_a_suspended_greenlet_says_suspended_active_started(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    assert re.fullmatch(_repr_pattern(" suspended active started"), repr(g))
    assert "suspended active" in str(g)
    g.switch()


def test_repr_of_the_main_greenlet_seen_from_a_child(main_greenlet):
    text = greenlet(lambda: repr(main_greenlet)).switch()
    assert re.fullmatch(_repr_pattern(" suspended active started main"), text)


def test_repr_of_a_dead_greenlet_says_only_dead():
    g = greenlet(lambda: None)
    g.switch()
    assert re.fullmatch(_repr_pattern(" dead"), repr(g))


def test_repr_shows_the_object_address():
    g = greenlet(lambda: None)
    assert repr(g).startswith(f"<greenlet.greenlet object at {hex(id(g))} ")


def test_repr_of_a_subclass_uses_the_subclass_name():
    class Custom(greenlet):
        pass

    assert re.fullmatch(_repr_pattern(" pending", "Custom"), repr(Custom()))


def test_started_greenlets_of_one_thread_share_the_otid(main_greenlet):
    otid = re.search(r"\(otid=(0x[0-9a-f]+)\)", repr(main_greenlet)).group(1)
    text = greenlet(lambda: repr(getcurrent())).switch()
    assert f"(otid={otid})" in text


# --- dead and bool ------------------------------------------------------------------------------


def test_unstarted_greenlet_is_neither_dead_nor_true():
    g = greenlet(lambda: None)
    assert g.dead is False
    assert bool(g) is False


def test_running_greenlet_is_alive_and_true():
    def run():
        me = getcurrent()
        return me.dead, bool(me)

    assert greenlet(run).switch() == (False, True)


def test_suspended_greenlet_is_alive_and_true(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    assert g.dead is False
    assert bool(g) is True
    g.switch()


def test_finished_greenlet_is_dead_and_false():
    g = greenlet(lambda: None)
    g.switch()
    assert g.dead is True
    assert bool(g) is False


def test_greenlet_killed_by_an_error_is_dead():
    g = greenlet(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        g.switch()
    assert g.dead is True
    assert bool(g) is False


def test_main_greenlet_is_alive_and_true(main_greenlet):
    assert main_greenlet.dead is False
    assert bool(main_greenlet) is True


def test_dead_is_read_only():
    g = greenlet(lambda: None)
    with pytest.raises(AttributeError):
        g.dead = True


# --- run ----------------------------------------------------------------------------------------


def test_run_of_an_unstarted_greenlet_is_the_callable():
    def fn():
        pass

    assert greenlet(fn).run is fn
    assert greenlet(run=fn).run is fn


def test_run_none_is_stored_as_none():
    assert greenlet(run=None).run is None


def test_greenlet_without_run_has_no_run_attribute():
    g = greenlet()
    with pytest.raises(AttributeError, match="^run$"):
        g.run  # noqa: B018
    assert not hasattr(g, "run")


def test_run_can_be_replaced_before_start():
    g = greenlet(lambda: "first")
    g.run = lambda: "second"
    assert g.switch() == "second"


def test_run_can_be_deleted_before_start():
    g = greenlet(lambda: None)
    del g.run
    assert not hasattr(g, "run")
    with pytest.raises(AttributeError, match="^run$"):
        g.switch()


def test_run_is_gone_once_started(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    with pytest.raises(AttributeError, match="^run$"):
        g.run  # noqa: B018
    g.switch()
    with pytest.raises(AttributeError, match="^run$"):
        g.run  # noqa: B018


def test_run_is_not_visible_from_inside_the_running_greenlet():
    assert greenlet(lambda: hasattr(getcurrent(), "run")).switch() is False


def test_run_cannot_be_set_after_start(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch())
    g.switch()
    with pytest.raises(AttributeError, match="^run cannot be set after the start of the greenlet$"):
        g.run = lambda: None
    g.switch()
    with pytest.raises(AttributeError, match="^run cannot be set after the start of the greenlet$"):
        g.run = lambda: None


def test_main_greenlet_run_cannot_be_read_or_set(main_greenlet):
    message = "^Main greenlets do not have a run attribute.$"
    with pytest.raises(AttributeError, match=message):
        main_greenlet.run  # noqa: B018
    with pytest.raises(AttributeError, match=message):
        main_greenlet.run = lambda: None


# --- construction -------------------------------------------------------------------------------


def test_constructor_takes_run_and_parent_positionally(main_greenlet):
    p = greenlet(lambda *a: a)
    g = greenlet(len, p)
    assert g.run is len
    assert g.parent is p


def test_constructor_rejects_a_third_argument():
    with pytest.raises(TypeError, match=r"^green\(\) takes at most 2 arguments \(3 given\)$"):
        greenlet(None, None, None)


def test_constructor_rejects_unknown_keywords():
    # CPython's argument parser words this differently from 3.13 on; greenlet uses it.
    if sys.version_info >= (3, 13):
        message = "green() got an unexpected keyword argument 'foo'"
    else:
        message = "'foo' is an invalid keyword argument for green()"
    with pytest.raises(TypeError) as excinfo:
        greenlet(foo=1)
    assert str(excinfo.value) == message


def test_init_can_be_called_again_to_change_run_and_parent():
    first_parent = greenlet(lambda *a: ("first parent", a))
    second_parent = greenlet(lambda *a: ("second parent", a))
    g = greenlet(lambda: "first", first_parent)
    greenlet.__init__(g, lambda: "second", second_parent)
    assert g.parent is second_parent
    assert g.switch() == ("second parent", ("second",))


# --- __dict__ -----------------------------------------------------------------------------------


def test_greenlet_accepts_arbitrary_attributes():
    g = greenlet(lambda: None)
    assert g.__dict__ == {}
    g.label = "worker"
    assert g.__dict__ == {"label": "worker"}
    assert g.label == "worker"


def test_dict_can_be_replaced_by_another_dict():
    g = greenlet(lambda: None)
    g.__dict__ = {"x": 1}
    assert g.x == 1


@pytest.mark.parametrize("value", [None, 1, [("x", 1)]])
def test_dict_must_be_a_dict(value):
    g = greenlet(lambda: None)
    with pytest.raises(TypeError, match="^__dict__ must be a dictionary$"):
        g.__dict__ = value


def test_dict_cannot_be_deleted():
    g = greenlet(lambda: None)
    with pytest.raises(TypeError, match="^__dict__ may not be deleted$"):
        del g.__dict__


def test_attributes_set_inside_are_visible_outside():
    def run():
        getcurrent().result = "set inside"
        return getcurrent()

    g = greenlet(run)
    assert g.switch() is g
    assert g.result == "set inside"


# --- copying ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [copy.copy, copy.deepcopy, pickle.dumps])
def test_greenlets_cannot_be_copied_or_pickled(main_greenlet, operation):
    for g in (greenlet(lambda: None), main_greenlet):
        with pytest.raises(TypeError, match="^cannot serialize 'greenlet.greenlet' object$"):
            operation(g)


# --- _stack_saved -------------------------------------------------------------------------------


def test_stack_saved_is_zero_for_running_unstarted_and_dead_greenlets(main_greenlet):
    assert main_greenlet._stack_saved == 0
    g = greenlet(lambda: getcurrent()._stack_saved)
    assert g._stack_saved == 0
    assert g.switch() == 0
    assert g._stack_saved == 0


def test_stack_saved_is_positive_for_suspended_greenlets(main_greenlet):
    g = greenlet(lambda: main_greenlet.switch(main_greenlet._stack_saved))
    main_saved = g.switch()
    assert main_saved > 0
    assert g._stack_saved > 0
    g.switch()
    assert g._stack_saved == 0


def test_stack_saved_is_read_only():
    g = greenlet(lambda: None)
    with pytest.raises(AttributeError):
        g._stack_saved = 1


@pytest.mark.corolet_only
def test_stack_saved_grows_with_the_depth_of_the_suspended_native_stack(main_greenlet):
    def dive(n):
        if n == 0:
            return main_greenlet.switch()
        return list(map(dive, [n - 1]))[0]

    shallow = greenlet(dive)
    deep = greenlet(dive)
    shallow.switch(0)
    deep.switch(200)
    assert 0 < shallow._stack_saved < deep._stack_saved
    assert deep._stack_saved < corolet.stack_size()
    shallow.switch()
    deep.switch()


# --- module constants, exceptions and type-level aliases ----------------------------------------


@pytest.mark.parametrize(
    "name", ["GREENLET_USE_GC", "GREENLET_USE_TRACING", "GREENLET_USE_CONTEXT_VARS"]
)
def test_feature_constants_are_one(name):
    value = getattr(corolet, name)
    assert type(value) is int
    assert value == 1


def test_standard_threading_constant_is_one():
    assert corolet._corolet.GREENLET_USE_STANDARD_THREADING == 1


@pytest.mark.corolet_only(
    reason="greenlet 3.5.6 has GREENLET_USE_STANDARD_THREADING in greenlet._greenlet only; "
    "corolet also exports it from the package, as DESIGN.md's public surface lists it"
)
def test_standard_threading_constant_is_also_exported_by_the_package():
    assert corolet.GREENLET_USE_STANDARD_THREADING == 1


def test_greenlet_exit_is_a_base_exception_named_like_greenlets():
    assert issubclass(GreenletExit, BaseException)
    assert not issubclass(GreenletExit, Exception)
    assert GreenletExit.__module__ == "greenlet"
    assert GreenletExit.__name__ == "GreenletExit"


def test_error_is_an_exception_named_like_greenlets():
    assert issubclass(corolet.error, Exception)
    assert corolet.error.__module__ == "greenlet"
    assert corolet.error.__name__ == "error"


def test_greenlet_type_is_named_greenlet_greenlet(main_greenlet):
    assert greenlet.__module__ == "greenlet"
    assert greenlet.__name__ == "greenlet"
    assert type(main_greenlet) is greenlet
    assert type(greenlet(lambda: None)) is greenlet


def test_type_carries_the_module_functions_and_exceptions(main_greenlet):
    assert greenlet.getcurrent() is main_greenlet
    assert greenlet.error is corolet.error
    assert greenlet.GreenletExit is GreenletExit
    assert greenlet.gettrace() is None
    assert greenlet.settrace(None) is None


def test_getcurrent_returns_the_same_object_each_time(main_greenlet):
    assert getcurrent() is getcurrent() is main_greenlet


def test_compiled_module_exposes_the_same_objects():
    module = corolet._corolet
    assert module.greenlet is greenlet
    assert module.getcurrent is corolet.getcurrent
    assert module.GreenletExit is GreenletExit
    assert module.error is corolet.error
    assert module.get_pending_cleanup_count() == 0
    assert module.get_total_main_greenlets() >= 1


# --- subclassing --------------------------------------------------------------------------------


def test_subclass_run_method_is_called_with_the_switch_arguments():
    class Adder(greenlet):
        def run(self, a, b=0):
            return (self is getcurrent(), a + b)

    assert Adder().switch(1, b=2) == (True, 3)


def test_subclass_init_need_not_call_the_base_init(main_greenlet):
    class Doubler(greenlet):
        def __init__(self, value):
            self.value = value

        def run(self):
            return self.value * 2

    g = Doubler(21)
    assert g.parent is main_greenlet
    assert not g.dead
    assert g.switch() == 42
    assert g.dead


def test_subclass_run_method_takes_precedence_over_a_run_given_to_init():
    class WithMethod(greenlet):
        def run(self):
            return "method"

    assert WithMethod(run=lambda: "init").switch() == "method"


def test_subclass_run_property_is_looked_up_at_first_switch():
    class WithProperty(greenlet):
        @property
        def run(self):
            return lambda: "from the property"

    assert WithProperty().switch() == "from the property"


def test_subclass_run_method_stays_visible_after_start():
    class WithMethod(greenlet):
        def run(self):
            return "done"

    g = WithMethod()
    assert g.switch() == "done"
    assert g.run() == "done"  # an ordinary method of the subclass


def test_subclass_class_attribute_parent_shadows_the_real_parent(main_greenlet):
    class Shadowed(greenlet):
        parent = None

        def run(self):
            return "to the real parent"

    g = Shadowed()
    assert g.parent is None
    assert greenlet.parent.__get__(g) is main_greenlet
    assert g.switch() == "to the real parent"


def test_subclass_instances_are_greenlets():
    class Sub(greenlet):
        pass

    g = Sub(lambda: getcurrent())
    assert isinstance(g, greenlet)
    assert g.switch() is g


def test_grandchild_subclass_inherits_the_run_method():
    class Base(greenlet):
        def run(self):
            return type(self).__name__

    class Child(Base):
        pass

    assert Child().switch() == "Child"
