"""corolet.portal.Portal (native) as a coroutine object: its protocol and its errors."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import os
import types

import pytest

if os.environ.get("COROLET_TEST_AGAINST_GREENLET") == "1":
    pytest.skip("corolet.portal is corolet's own", allow_module_level=True)

from corolet import getcurrent, portal  # noqa: E402
from corolet.portal import Portal, PortalGreenlet, await_  # noqa: E402

pytestmark = [pytest.mark.corolet_only, pytest.mark.filterwarnings("error")]


@types.coroutine
def _yield(value):
    return (yield value)


async def _two_steps():
    got = await _yield("first")
    return ("done", got)


def test_a_portal_is_a_coroutine_and_its_own_iterator():
    p = Portal(_two_steps())
    assert isinstance(p, collections.abc.Coroutine)
    assert p.__await__() is p and iter(p) is p
    assert p.__name__ == "_two_steps" and p.__qualname__ == "_two_steps"
    assert p.cr_code is p.coroutine.cr_code and p.cr_running is False
    assert repr(p).startswith("<corolet.portal.Portal of <coroutine object _two_steps")
    assert p.greenlet is None
    assert p.send(None) == "first"
    assert type(p.greenlet) is PortalGreenlet and p.greenlet.__sqlalchemy_greenlet_provider__
    with pytest.raises(StopIteration) as stop:
        p.send(7)
    assert stop.value.value == ("done", 7)
    assert p.greenlet is None


def test_sending_a_value_before_the_start_is_the_coroutines_error():
    p = Portal(_two_steps())
    with pytest.raises(TypeError, match="non-None value"):
        p.send(1)
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        p.send(None)
    p.coroutine.close()  # never started, as a plain coroutine would be after that error


def test_reuse_after_finish_raises():
    p = Portal(_two_steps())
    p.send(None)
    with pytest.raises(StopIteration):
        p.send(None)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        p.send(None)
    with pytest.raises(KeyError):
        p.throw(KeyError("after the end"))
    p.close()
    p.close()


@pytest.mark.parametrize(
    "args",
    [(ValueError,), (ValueError, "text"), (ValueError, ("a", "b")), (ValueError("inst"),)],
)
def test_throw_forms_reach_the_coroutine(args):
    async def catcher():
        try:
            await _yield("waiting")
        except ValueError as exc:
            return ("caught", exc.args)

    p = Portal(catcher())
    assert p.send(None) == "waiting"
    with pytest.raises(StopIteration) as stop:
        p.throw(*args)
    assert stop.value.value[0] == "caught"


def test_bad_throw_arguments_raise_type_errors():
    p = Portal(_two_steps())
    p.send(None)
    with pytest.raises(TypeError):
        p.throw(42)
    with pytest.raises(TypeError):
        p.throw(ValueError("x"), "separate value")
    with pytest.raises(TypeError):
        p.throw(ValueError, None, "not a traceback")
    p.close()


def test_throw_before_the_start_goes_straight_to_the_coroutine():
    p = Portal(_two_steps())
    with pytest.raises(KeyError):
        p.throw(KeyError)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        p.send(None)


def test_close_twice_and_close_before_the_start():
    p = Portal(_two_steps())
    p.close()
    p.close()
    q = Portal(_two_steps())
    q.send(None)
    q.close()
    q.close()
    assert q.greenlet is None


def test_a_greenlet_exit_raised_by_the_coroutine_reaches_the_driver_unchanged():
    import corolet

    async def body():
        await _yield(1)
        raise corolet.GreenletExit("mine")

    p = Portal(body())
    p.send(None)
    with pytest.raises(corolet.GreenletExit, match="mine"):
        p.send(None)


def test_constructor_errors():
    with pytest.raises(TypeError):
        Portal(None)
    with pytest.raises(TypeError):
        Portal(None, sync=(print,))
    with pytest.raises(TypeError):
        Portal()  # type: ignore[call-arg]


def test_a_sync_portal_runs_its_function_and_turns_stop_iteration_into_runtime_error():
    def stops():
        raise StopIteration

    p = Portal(None, sync=(lambda a, b=0: a + b, (1,), {"b": 2}))
    with pytest.raises(StopIteration) as stop:
        p.send(None)
    assert stop.value.value == 3
    q = Portal(None, sync=(stops, (), {}))
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        q.send(None)


def test_an_inactive_portal_steps_its_coroutine_directly_until_activated():
    p = Portal(_two_steps(), active=False)
    assert p.send(None) == "first"
    assert p.greenlet is None
    with pytest.raises(StopIteration):
        p.send(None)


def test_await_of_generator_based_and_foreign_awaitables_in_a_portal_task():
    class Foreign:
        def __await__(self):
            return (yield from asyncio.sleep(0, "foreign").__await__())

    async def main():
        return await_(Foreign()), await_(asyncio.sleep(0, "coro"))

    assert portal.run(main()) == ("foreign", "coro")


def test_an_abandoned_portal_in_a_cycle_is_collected():
    async def body(holder):
        await _yield(None)

    holder: list[object] = []
    p = Portal(body(holder))
    holder.append(p)
    p.send(None)
    del p, holder
    gc.collect()
    getcurrent()  # the collector queued P for deletion: this thread kills it now
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is PortalGreenlet]
    assert not [o for o in gc.get_objects() if type(o) is Portal]
