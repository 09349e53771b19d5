"""corolet.portal: await_ from synchronous code inside portal tasks, on asyncio and Trio.

Each test runs its own loop (``corolet.portal.run``, ``asyncio.run`` or ``trio.run``) and is
leak-checked like every other test (no greenlet may outlive it). Warnings are errors here, so a
coroutine left un-awaited fails the test that left it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import sys
import traceback
import types

import pytest

if os.environ.get("COROLET_TEST_AGAINST_GREENLET") == "1":
    pytest.skip(
        "corolet.portal and corolet.bridge are corolet's own; the re-exporting stand-in for "
        "greenlet lacks them",
        allow_module_level=True,
    )

import corolet  # noqa: E402
from corolet import bridge, getcurrent  # noqa: E402

pytestmark = [pytest.mark.corolet_only, pytest.mark.filterwarnings("error")]

portal = pytest.importorskip("corolet.portal", reason="corolet.portal is corolet's own")
from corolet.portal import PortalError, await_  # noqa: E402

VAR = contextvars.ContextVar("corolet_portal_test_var", default="unset")
TIMEOUT_ERRORS = (asyncio.TimeoutError, TimeoutError)


async def _later(value, delay=0.0):
    await asyncio.sleep(delay)
    return value


async def _fail(exc):
    await asyncio.sleep(0)
    raise exc


def _sync_double(x):
    return 2 * await_(_later(x))


# --- results and exceptions ----------------------------------------------------------------


def test_results_travel_from_async_to_sync_and_back():
    async def main():
        assert portal.has_portal()
        return _sync_double(21), await portal.with_portal_run_sync(_sync_double, 4)

    assert portal.run(main()) == (42, 8)


def test_exceptions_travel_both_ways_with_sync_and_async_frames():
    def sync_layer():
        return await_(_fail(ValueError("deep")))

    async def async_layer():
        try:
            sync_layer()
        except ValueError as exc:
            raise KeyError("from sync") from exc
        raise AssertionError("no exception")

    async def main():
        with pytest.raises(KeyError) as info:
            await async_layer()
        inner = info.value.__cause__
        names = [frame.name for frame in traceback.extract_tb(inner.__traceback__)]
        # The sync function, the await_ that waited, and the coroutine that raised.
        assert names == ["async_layer", "sync_layer", "await_", "_fail"], names
        return "ok"

    assert portal.run(main()) == "ok"


def test_an_exception_leaving_the_task_keeps_its_frames():
    def sync_layer():
        await_(asyncio.sleep(0))
        raise LookupError("from sync code")

    async def task_body():
        sync_layer()

    async def main():
        task = asyncio.create_task(task_body())
        with pytest.raises(LookupError) as info:
            await task
        names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert names[-2:] == ["task_body", "sync_layer"], names

    portal.run(main())


# --- cancellation and timeouts -------------------------------------------------------------


def test_cancellation_is_raised_at_the_await_inside_sync_code_and_finally_runs_there():
    events = []

    def sync_wait():
        try:
            await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            events.append("cancelled at await_")
            raise
        finally:
            events.append("finally")
            events.append(await_(_later("cleanup awaited")))

    async def body():
        sync_wait()

    async def main():
        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    portal.run(main())
    assert events == ["cancelled at await_", "finally", "cleanup awaited"]


def test_timeouts_reach_sync_code():
    events = []

    def sync_wait():
        try:
            await_(asyncio.sleep(10))
        finally:
            events.append("finally")

    async def body():
        sync_wait()

    async def main():
        with pytest.raises(TIMEOUT_ERRORS):
            await asyncio.wait_for(body(), 0.01)
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    sync_wait()

    portal.run(main())
    assert events == ["finally"] * (2 if sys.version_info >= (3, 11) else 1)


# --- contexts ------------------------------------------------------------------------------


def test_sync_code_runs_in_the_tasks_own_context():
    def sync_set(value):
        assert VAR.get() == "task"
        VAR.set(value)
        await_(asyncio.sleep(0))
        return VAR.get()

    async def one(n):
        VAR.set("task")
        assert sync_set(f"t{n}") == f"t{n}"
        await asyncio.sleep(0)
        return VAR.get()

    async def main():
        VAR.set("main")
        results = await asyncio.gather(*(one(n) for n in range(5)))
        return results, VAR.get()

    assert portal.run(main()) == ([f"t{n}" for n in range(5)], "main")


# --- nesting and kinds of awaitables -------------------------------------------------------


def test_nested_portals_and_nested_await_():
    async def inner(n):
        if n == 0:
            return "bottom"
        # async -> sync -> async, recursively
        return await_(inner(n - 1)) if n % 2 else await inner(n - 1)

    async def main():
        assert await portal.with_portal_run(inner, 6) == "bottom"
        assert await portal.with_portal_run_sync(lambda: await_(inner(5))) == "bottom"
        nested = await portal.with_portal_run_sync(
            lambda: await_(portal.with_portal_run_sync(lambda: await_(inner(3))))
        )
        assert nested == "bottom"

    portal.run(main())
    assert asyncio.run(portal.with_portal_run(inner, 4)) == "bottom"  # scoped portal only


class _Awaitable:
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return "custom"


@types.coroutine
def _generator_coroutine():
    yield
    return "generator-based"


class _IteratorAwaitable:
    def __await__(self):
        return iter([None, None])  # a plain iterator: no send, no throw


def test_await_accepts_every_kind_of_awaitable():
    async def main():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.001, future.set_result, "future")
        task = asyncio.create_task(_later("task"))
        assert await_(_later("coroutine")) == "coroutine"
        assert await_(future) == "future"
        assert await_(task) == "task"
        assert await_(_Awaitable()) == "custom"
        assert await_(_generator_coroutine()) == "generator-based"
        assert await_(_IteratorAwaitable()) is None
        with pytest.raises(TypeError, match="int can't be used in 'await' expression"):
            await_(42)

    portal.run(main())


# --- many tasks ----------------------------------------------------------------------------


def test_many_portal_tasks_interleave_at_each_await():
    order = []

    def step(n, i):
        order.append((i, n))
        await_(asyncio.sleep(0))

    async def worker(n):
        for i in range(3):
            step(n, i)

    async def main():
        await asyncio.gather(*(worker(n) for n in range(50)))

    portal.run(main())
    # Every task took its step i before any took step i + 1: they interleaved.
    assert [i for i, _ in order] == sorted(i for i, _ in order)
    assert sorted(order) == [(i, n) for i in range(3) for n in range(50)]


def _count(kind):
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def test_thousands_of_finished_portal_tasks_leave_nothing_behind():
    async def worker(n):
        return _sync_double(n)

    async def batch():
        return sum(await asyncio.gather(*(worker(n) for n in range(500))))

    async def main():
        await batch()  # warm-up: caches, free lists
        # Measured in a step of its own: the step gather's result woke still holds it.
        await asyncio.sleep(0)
        before = (
            _count(portal.PortalGreenlet),
            _count(portal.Portal),
            _count(asyncio.Task),
            len(gc.get_objects()),
        )
        for _ in range(6):
            assert await batch() == 2 * sum(range(500))
        await asyncio.sleep(0)
        after = (
            _count(portal.PortalGreenlet),
            _count(portal.Portal),
            _count(asyncio.Task),
            len(gc.get_objects()),
        )
        return before, after

    before, after = portal.run(main())
    assert after[:3] == before[:3] == (1, 1, 1), (before, after)  # main's alone
    assert after[3] - before[3] < 100, (before, after)  # 3,000 tasks, no per-task residue


# --- where there is no portal --------------------------------------------------------------


def test_await_outside_any_loop_raises_a_clear_error_and_closes_the_coroutine():
    coro = _later(1)
    with pytest.raises(PortalError, match="no async library is running") as info:
        await_(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning
    assert isinstance(info.value, RuntimeError)


def test_await_in_a_task_without_portal_names_the_fixes():
    async def main():
        assert not portal.has_portal()
        with pytest.raises(PortalError) as info:
            await_(_later(1))
        return str(info.value)

    message = asyncio.run(main())
    assert "create a greenback portal" in message
    assert "corolet.portal.install()" in message and "with_portal_run" in message


def test_ensure_portal_on_an_asyncio_task_made_before_install_says_why_and_how():
    async def main():
        with pytest.raises(PortalError) as info:
            await portal.ensure_portal()
        return str(info.value)

    message = asyncio.run(main())
    assert "created before corolet.portal.install()" in message
    assert "ctypes" in message and "corolet.portal.run(main)" in message


def test_install_on_request_gives_portals_at_ensure_portal_only():
    async def child():
        assert not portal.has_portal()
        with pytest.raises(PortalError):
            await_(_later(1))
        await portal.ensure_portal()
        assert portal.has_portal()
        return await_(_later("after ensure_portal"))

    async def main():
        portal.install(eager=False)
        return await asyncio.create_task(child())

    assert asyncio.run(main()) == "after ensure_portal"


def test_install_chains_the_task_factory_already_set():
    made = []

    def factory(loop, coro, **kwargs):
        made.append(type(coro).__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        portal.install()
        portal.install()  # idempotent
        result = await asyncio.create_task(_later_sync("chained"))
        portal.uninstall()
        assert loop.get_task_factory() is factory
        return result

    assert asyncio.run(main()) == "chained"
    assert made[0] == "Portal"  # then asyncio.run's own shutdown tasks, after uninstall()
    assert set(made[1:]) <= {"coroutine"}


async def _later_sync(value):
    return await_(_later(value))


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
def test_eager_tasks_first_step_in_their_creator_then_in_the_loop():
    async def eager_child():
        first = await_(_later("first"))  # runs inside create_task, in the creator's greenlet
        await asyncio.sleep(0)
        return first, await_(_later("later"))  # now stepped by the loop

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        portal.install()
        return await asyncio.create_task(eager_child())

    assert portal.run(main()) == ("first", "later")


def test_uvloop_loops_take_portals_too():
    uvloop = pytest.importorskip("uvloop", reason="uvloop has no wheel for this interpreter")

    async def main():
        return _sync_double(5)

    loop = uvloop.new_event_loop()
    portal.install(loop)
    try:
        assert loop.run_until_complete(main()) == 10
    finally:
        loop.close()


# --- the bridge protocol inside portals ----------------------------------------------------


def test_bridges_await_only_and_greenlet_spawn_work_in_portal_tasks():
    def sync_bridge_call():
        assert bridge.in_greenlet()  # the portal's greenlet is a spawned greenlet
        return bridge.await_only(_later("bridge"))

    def in_spawn():
        # corolet.portal.await_ in a greenlet_spawn child of a portal task
        return await_(_later("portal in spawn")), bridge.await_only(_later("bridge in spawn"))

    async def main():
        assert type(getcurrent()).__name__ == "PortalGreenlet"
        assert getcurrent().parent.parent is None  # its parent is the loop's greenlet
        return sync_bridge_call(), await bridge.greenlet_spawn(in_spawn)

    assert portal.run(main()) == ("bridge", ("portal in spawn", "bridge in spawn"))


def test_await_in_greenlet_spawn_without_a_portal_uses_the_bridge():
    async def main():
        return await bridge.greenlet_spawn(lambda: await_(_later("via bridge")))

    assert asyncio.run(main()) == "via bridge"


def test_await_in_a_plain_greenlet_under_the_portal():
    def in_child():
        return await_(_later("child greenlet"))

    async def main():
        child = corolet.greenlet(in_child)
        return child.switch()

    assert portal.run(main()) == "child greenlet"


# --- closing -------------------------------------------------------------------------------


def test_closing_a_suspended_portal_unwinds_sync_code():
    events = []

    def sync_wait():
        try:
            await_(asyncio.sleep(10))
        except GeneratorExit:
            events.append("GeneratorExit at await_")
            raise
        finally:
            events.append("finally")

    async def body():
        sync_wait()

    async def main():
        coro = portal.Portal(body())
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0.01)
        assert not task.done()
        coro.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == ["GeneratorExit at await_", "finally"]


# --- Trio ----------------------------------------------------------------------------------


def test_trio_ensure_portal_await_and_cancellation():
    trio = pytest.importorskip("trio", reason="trio is in tests/requirements.txt")
    events = []

    def sync_sleep():
        try:
            await_(trio.sleep(10))
        finally:
            events.append("finally in sync code")

    async def main():
        await portal.ensure_portal()
        VAR.set("trio-task")
        assert await_(trio.sleep(0)) is None
        with trio.move_on_after(0.01):
            sync_sleep()
        assert VAR.get() == "trio-task"
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(portal.with_portal_run_sync, sync_sleep_short, trio)
        return portal.has_portal()

    assert trio.run(main) is True
    assert events == ["finally in sync code"]


def sync_sleep_short(trio):
    await_(trio.sleep(0))


def test_trio_install_gives_every_new_task_a_portal():
    trio = pytest.importorskip("trio", reason="trio is in tests/requirements.txt")
    seen = []

    async def child():
        seen.append(portal.has_portal())
        await_(trio.sleep(0))

    async def main():
        portal.install()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(child)

    trio.run(main)
    assert seen == [True] * 5


def test_an_abandoned_portal_unwinds_its_task_and_frees_its_greenlet():
    events = []

    def sync_wait():
        try:
            await_(asyncio.sleep(10))
        finally:
            events.append("finally")

    async def body():
        sync_wait()

    async def main():
        abandoned = portal.Portal(body())
        future = abandoned.send(None)  # one step by hand: now suspended in await_
        assert isinstance(future, asyncio.Future) and events == []
        del abandoned  # never stepped again, never closed
        gc.collect()
        future.cancel()

    asyncio.run(main())
    assert events == ["finally"]
    assert _count(portal.PortalGreenlet) == 0


def test_ensure_portal_in_a_pure_python_asyncio_task_replaces_its_coroutine_attribute():
    async def body():
        if asyncio.current_task() is None:
            return "unseen"
        await portal.ensure_portal()  # the task's _coro is a plain attribute: no install needed
        return await_(_later("pure-Python task"))

    async def main():
        task = asyncio.tasks._PyTask(body())
        return await task

    result = asyncio.run(main())
    if result == "unseen":
        pytest.skip("this asyncio's current_task() does not see pure-Python tasks (3.15)")
    assert result == "pure-Python task"


def test_trio_an_autoawait_finalizer_of_an_object_made_in_a_child_task_runs_in_a_task():
    # greenback's test_magic: trio answers a timed-out sleep with Error(Cancelled), whose
    # traceback keeps the frames of the awaits it ended (linked back to the caller frames once
    # they finish, on 3.12+), and with them the object __init__ made. The loop's answer stays
    # referenced under the coroutine as a Python stepping loop's local would, so those frames
    # form a cycle the collector breaks in a task, not a chain the Trio runner frees between
    # tasks, where the finalizer could not await.
    trio = pytest.importorskip("trio", reason="trio is in tests/requirements.txt")
    testing = pytest.importorskip("trio.testing", reason="trio is in tests/requirements.txt")

    where: list[object] = []

    class Magic:
        @portal.autoawait
        async def __init__(self) -> None:
            await trio.sleep(1)

        @portal.autoawait
        async def __del__(self) -> None:
            where.append(trio.lowlevel.current_task().name)
            await trio.sleep(2)

    async def child() -> None:
        await portal.ensure_portal()
        Magic()

    async def main() -> float:
        await portal.ensure_portal()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            obj = Magic()
        del obj
        for _ in range(4):
            gc.collect()
        return trio.current_time()

    assert trio.run(main, clock=testing.MockClock(autojump_threshold=0)) == 5
    assert len(where) == 2
