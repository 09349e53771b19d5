"""corolet.bridge: greenlet_spawn / await_only, the sync-to-async bridge.

Each test drives its own event loop with ``asyncio.run`` and is leak-checked like every other
test: a spawned greenlet that is left suspended (a cancellation that did not finish it, a
closed coroutine that did not unwind it) fails the test.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import gc
import inspect
import os
import subprocess
import sys
import threading
import traceback
import types
import warnings

import corolet
import pytest
from corolet import getcurrent, greenlet

pytestmark = pytest.mark.corolet_only

if os.environ.get("COROLET_TEST_AGAINST_GREENLET") == "1":
    pytest.skip(
        "corolet.bridge is corolet's own; the re-exporting stand-in for greenlet lacks it",
        allow_module_level=True,
    )

from corolet import bridge  # noqa: E402
from corolet.bridge import (  # noqa: E402
    MissingGreenlet,
    await_,
    await_only,
    greenlet_spawn,
    in_greenlet,
)

PREFIX = "greenlet_spawn has not been called; can't call await_only() here."
VAR = contextvars.ContextVar("corolet_bridge_test_var", default="unset")

# asyncio.TimeoutError is TimeoutError from 3.11 on; wait_for raises the former on 3.10.
TIMEOUT_ERRORS = (asyncio.TimeoutError, TimeoutError)


async def _value_later(value, delay=0.0):
    await asyncio.sleep(delay)
    return value


async def _fail_later(exc):
    await asyncio.sleep(0)
    raise exc


class _Suspend:
    """An awaitable that needs no event loop: it yields once, then returns ``value``."""

    def __init__(self, value=None):
        self.value = value

    def __await__(self):
        yield "suspended"
        return self.value


def _only_task_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


# --- values and exceptions --------------------------------------------------------------------


def test_greenlet_spawn_returns_what_the_function_returns_and_passes_its_arguments():
    def add(a, b, *, fn):  # a keyword named like greenlet_spawn's own parameter
        return (a + b, fn)

    assert asyncio.run(greenlet_spawn(add, 1, 2, fn="kw")) == (3, "kw")


def test_await_only_returns_the_awaited_value_each_time():
    def sync():
        assert in_greenlet()
        return [await_only(_value_later(i)) for i in range(5)]

    assert asyncio.run(greenlet_spawn(sync)) == [0, 1, 2, 3, 4]


def test_await_only_accepts_futures_tasks_and_custom_awaitables():
    class Custom:
        def __await__(self):
            return _value_later("custom").__await__()

    async def main():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, "future")
        task = asyncio.ensure_future(_value_later("task"))

        def sync():
            return await_only(future), await_only(task), await_only(Custom())

        return await greenlet_spawn(sync)

    assert asyncio.run(main()) == ("future", "task", "custom")


def test_greenlet_spawn_without_a_loop_can_be_driven_by_hand():
    def sync():
        return await_only(_Suspend(20)) + 1

    coro = greenlet_spawn(sync)
    assert coro.send(None) == "suspended"
    with pytest.raises(StopIteration) as info:
        coro.send(None)
    assert info.value.value == 21


def test_await_only_is_await_():
    assert await_ is await_only


def test_function_that_never_awaits_runs_to_completion():
    ran = []

    def sync():
        ran.append(getcurrent())
        return "done"

    assert asyncio.run(greenlet_spawn(sync)) == "done"
    assert ran[0].dead and type(ran[0]) is not greenlet and isinstance(ran[0], greenlet)


def test_exception_from_the_function_leaves_greenlet_spawn_with_its_traceback():
    def failing_sync_function():
        await_only(_value_later(None))
        raise KeyError("from sync")

    with pytest.raises(KeyError, match="from sync") as info:
        asyncio.run(greenlet_spawn(failing_sync_function))
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing_sync_function" in names


def test_exception_from_the_awaitable_is_raised_at_await_only_with_its_traceback():
    seen = {}

    def sync():
        try:
            await_only(_fail_later(ValueError("from async")))
        except ValueError as exc:
            seen["names"] = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        return await_only(_value_later("still usable"))

    assert asyncio.run(greenlet_spawn(sync)) == "still usable"
    # The traceback runs from the await_only call in sync() down into the async function.
    assert seen["names"][0] == "sync" and seen["names"][-1] == "_fail_later"


def test_exception_raised_in_the_greenlet_while_handling_one_from_the_awaitable_is_chained():
    def sync():
        try:
            await_only(_fail_later(ValueError("async")))
        except ValueError as exc:
            raise RuntimeError("sync") from exc

    with pytest.raises(RuntimeError, match="sync") as info:
        asyncio.run(greenlet_spawn(sync))
    assert isinstance(info.value.__cause__, ValueError)


def test_base_exceptions_travel_out_too():
    class Stop(BaseException):
        pass

    def sync():
        raise Stop

    with pytest.raises(Stop):
        asyncio.run(greenlet_spawn(sync))


def test_a_non_awaitable_raises_type_error_at_await_only():
    def sync():
        with pytest.raises(TypeError):
            await_only(42)  # type: ignore[arg-type]
        return "recovered"

    assert asyncio.run(greenlet_spawn(sync)) == "recovered"


def test_each_await_only_round_trip_is_one_switch_each_way():
    events = []

    def sync():
        for i in range(5):
            await_only(_value_later(i))

    async def main():
        corolet.settrace(lambda event, args: events.append(event))
        try:
            await greenlet_spawn(sync)
        finally:
            corolet.settrace(None)

    asyncio.run(main())
    # In at the start, out and back in per await_only, out when the function returns.
    assert events == ["switch"] * (1 + 2 * 5 + 1)


# --- MissingGreenlet --------------------------------------------------------------------------


def test_missing_greenlet_in_plain_sync_code_says_no_greenlet_and_no_loop():
    coro = _value_later(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would be a failure
        with pytest.raises(MissingGreenlet) as info:
            await_only(coro)
        del coro
        gc.collect()
    message = str(info.value)
    assert message.startswith(PREFIX)
    assert "no greenlet at all" in message
    assert "no event loop is running" in message
    assert "asyncio.run(greenlet_spawn(" in message
    assert "closed without being awaited" in message
    assert f"{__file__}:" in message  # the line that called await_only
    assert isinstance(info.value, RuntimeError)


def test_missing_greenlet_on_the_event_loops_own_task_says_so():
    async def main():
        with pytest.raises(MissingGreenlet) as info:
            await_only(_value_later(1))
        return str(info.value)

    message = asyncio.run(main())
    assert message.startswith(PREFIX)
    assert "the event loop's own code" in message and "task 'Task-" in message
    assert "`await` the awaitable directly" in message
    # corolet.portal is one of the fixes it names, and the fix works.
    assert "corolet.portal.install()" in message and "corolet.portal.run(main)" in message
    import corolet.portal

    assert corolet.portal.run(_await_only_value()) == 1


async def _await_only_value():
    return await_only(_value_later(1))  # plain async code in a portal task: fine


def test_missing_greenlet_in_a_plain_greenlet_under_a_spawned_one_names_both():
    def plain():
        with pytest.raises(MissingGreenlet) as info:
            await_only(_value_later(1))
        return str(info.value)

    def sync():
        assert in_greenlet()
        inner = greenlet(plain)
        try:
            return inner.switch()
        finally:
            del inner

    message = asyncio.run(greenlet_spawn(sync))
    assert message.startswith(PREFIX)
    assert "a plain greenlet" in message
    assert "runs under the greenlet_spawn() greenlet" in message
    assert "no event loop" not in message


def test_missing_greenlet_in_a_plain_greenlet_without_a_loop():
    def plain():
        assert not in_greenlet()
        with pytest.raises(MissingGreenlet) as info:
            await_only(_value_later(1))
        return str(info.value)

    message = greenlet(plain).switch()
    assert message.startswith(PREFIX)
    assert "a plain greenlet" in message and "no event loop is running" in message


def test_in_greenlet_is_false_outside_spawned_greenlets():
    assert not in_greenlet()

    async def main():
        return in_greenlet()

    assert asyncio.run(main()) is False


def test_await_only_closes_the_coroutine_it_refuses():
    coro = _value_later(1)
    with pytest.raises(MissingGreenlet):
        await_only(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_missing_greenlet_notes_that_the_real_greenlet_is_imported(monkeypatch):
    real = types.ModuleType("greenlet")
    real.__file__ = "/elsewhere/site-packages/greenlet/__init__.py"
    monkeypatch.setitem(sys.modules, "greenlet", real)
    with pytest.raises(MissingGreenlet) as info:
        await_only(_Suspend())
    assert (
        "\nNote: the real greenlet package is imported in this process (from "
        "/elsewhere/site-packages/greenlet/__init__.py); greenlets it starts"
    ) in str(info.value)
    assert "Call corolet.install() before anything imports greenlet." in str(info.value)


@pytest.mark.parametrize("greenlet_module", ["absent", "corolet's"])
def test_missing_greenlet_has_no_such_note_otherwise(monkeypatch, greenlet_module):
    if greenlet_module == "absent":
        monkeypatch.delitem(sys.modules, "greenlet", raising=False)
    else:
        alias = types.ModuleType("greenlet")
        alias.__corolet__ = True
        monkeypatch.setitem(sys.modules, "greenlet", alias)
    with pytest.raises(MissingGreenlet) as info:
        await_only(_Suspend())
    assert "\nNote:" not in str(info.value)


# --- context variables ------------------------------------------------------------------------


def test_context_variables_are_shared_with_the_calling_task_both_ways():
    def sync():
        seen = [VAR.get()]
        VAR.set("set in the greenlet")
        seen.append(await_only(_read_var()))
        seen.append(VAR.get())  # set by the coroutine awaited through the bridge
        return seen

    async def _read_var():
        value = VAR.get()
        VAR.set("set in an awaited coroutine")
        return value

    async def main():
        VAR.set("set by the task")
        seen = await greenlet_spawn(sync)
        return seen, VAR.get()

    seen, after = contextvars.Context().run(asyncio.run, main())
    assert seen == ["set by the task", "set in the greenlet", "set in an awaited coroutine"]
    assert after == "set in an awaited coroutine"


def test_spawned_greenlet_runs_in_the_callers_context_object():
    async def main():
        caller = getcurrent().gr_context
        inside = await greenlet_spawn(lambda: getcurrent().gr_context)
        return caller is inside

    assert asyncio.run(main())


def test_concurrent_spawns_keep_their_tasks_contexts_apart():
    def sync(i):
        VAR.set(f"value {i}")
        await_only(asyncio.sleep(0))
        return VAR.get()

    async def one(i):
        result = await greenlet_spawn(sync, i)
        return result, VAR.get()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(main()) == [(f"value {i}", f"value {i}") for i in range(20)]


def test_spawn_from_a_thread_without_a_context_yet_shares_the_one_it_makes():
    # A thread started with _thread (threading.Thread enters a context of its own from 3.14
    # on) has no context until something asks for one: greenlet_spawn makes it, and the
    # greenlet and the code that awaited greenlet_spawn share it.
    seen = {}
    done = _thread.allocate_lock()
    done.acquire()

    def sync():
        VAR.set("set in the greenlet")
        return getcurrent().gr_context

    def thread():
        try:
            seen["before"] = getcurrent().gr_context
            coro = greenlet_spawn(sync)
            try:
                coro.send(None)
            except StopIteration as stop:
                seen["inside"] = stop.value
            seen["after"] = getcurrent().gr_context
            seen["var"] = VAR.get()
        finally:
            done.release()

    _thread.start_new_thread(thread, ())
    assert done.acquire(timeout=60)
    assert seen["before"] is None
    assert isinstance(seen["after"], contextvars.Context)
    assert seen["inside"] is seen["after"]
    assert seen["var"] == "set in the greenlet"


# --- cancellation and timeouts ----------------------------------------------------------------


def test_cancellation_is_raised_at_await_only_and_leaves_greenlet_spawn():
    record = {}

    def sync():
        record["greenlet"] = getcurrent()
        try:
            await_only(asyncio.sleep(10))
        except asyncio.CancelledError:
            record["cancelled inside"] = True
            raise
        record["not reached"] = True

    async def main():
        task = asyncio.ensure_future(greenlet_spawn(sync))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _only_task_left()

    asyncio.run(main())
    assert record.get("cancelled inside") and "not reached" not in record
    assert record["greenlet"].dead
    record.clear()


def test_wait_for_timeout_unwinds_the_greenlet_and_lets_cleanup_await():
    record = []

    def sync():
        try:
            await_only(asyncio.sleep(10))
        finally:
            # Cleanup that awaits (a rollback, a close) still works after cancellation.
            record.append(await_only(_value_later("cleaned up", 0.001)))
            record.append(getcurrent())

    async def main():
        with pytest.raises(TIMEOUT_ERRORS):
            await asyncio.wait_for(greenlet_spawn(sync), 0.02)
        assert _only_task_left()

    asyncio.run(main())
    assert record[0] == "cleaned up" and record[1].dead
    record.clear()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in Python 3.11")
def test_asyncio_timeout_unwinds_the_greenlet():
    record = []

    def sync():
        record.append(getcurrent())
        await_only(asyncio.sleep(10))

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await greenlet_spawn(sync)
        # The task is not left "cancelling": it can await again.
        assert asyncio.current_task().cancelling() == 0
        assert await _value_later("after") == "after"
        assert _only_task_left()

    asyncio.run(main())
    assert record[0].dead
    record.clear()


def test_cancelling_one_of_many_leaves_the_others_running():
    def sync(i):
        for _ in range(3):
            await_only(asyncio.sleep(0.001))
        return i

    async def main():
        tasks = [asyncio.ensure_future(greenlet_spawn(sync, i)) for i in range(10)]
        await asyncio.sleep(0)
        tasks[3].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results

    results = asyncio.run(main())
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [i for i in range(10) if i != 3]


def test_closing_the_driving_coroutine_unwinds_the_greenlet():
    record = []

    def sync():
        record.append(getcurrent())
        try:
            await_only(_Suspend())
        except GeneratorExit:
            record.append("GeneratorExit at await_only")
            # Nothing can be awaited any more: the awaitable is closed, GeneratorExit again.
            pending = _value_later(None)
            try:
                await_only(pending)
            except GeneratorExit:
                record.append("again")
            raise

    coro = greenlet_spawn(sync)
    assert coro.send(None) == "suspended"
    coro.close()
    assert record[1:] == ["GeneratorExit at await_only", "again"]
    assert record[0].dead
    record.clear()


def test_closing_the_driving_coroutine_closes_the_awaitables_it_abandons():
    offered = []

    def sync():
        try:
            await_only(_Suspend())
        finally:
            for _ in range(2):
                offered.append(_value_later(None))
                try:
                    await_only(offered[-1])
                except GeneratorExit:
                    pass

    coro = greenlet_spawn(sync)
    assert coro.send(None) == "suspended"
    coro.close()
    assert len(offered) == 2
    assert [inspect.getcoroutinestate(c) for c in offered] == [inspect.CORO_CLOSED] * 2


def test_task_destroyed_while_pending_unwinds_the_greenlet():
    record = []

    def sync():
        record.append(getcurrent())
        try:
            await_only(_Suspend())
        finally:
            record.append("finally ran")

    coro = greenlet_spawn(sync)
    coro.send(None)
    del coro  # the coroutine's finalizer closes it
    gc.collect()
    assert record[1:] == ["finally ran"] and record[0].dead
    record.clear()


def test_coroutine_closed_from_another_thread_leaves_the_greenlet_to_its_own_thread():
    # A greenlet runs only in its own thread: closing its driving coroutine elsewhere fails
    # with greenlet's error, and dropping it there leaves it to be killed in its thread, where
    # its finally block runs. The leak check sees it gone.
    record = []
    handed_over = threading.Event()
    closed = threading.Event()

    def sync():
        try:
            await_only(_Suspend())
        finally:
            record.append(threading.current_thread().name)

    def owner():
        coro = greenlet_spawn(sync)
        coro.send(None)
        record.append(coro)
        del coro
        handed_over.set()
        closed.wait(30)
        greenlet(lambda: None).switch()  # any greenlet activity runs the pending kill

    thread = threading.Thread(target=owner, name="owner")
    thread.start()
    handed_over.wait(30)
    coro = record.pop()
    with pytest.raises(corolet.error):
        coro.close()
    del coro
    closed.set()
    thread.join()
    assert record == ["owner"]


# --- nesting and concurrency ------------------------------------------------------------------


def test_nested_spawns_from_coroutines_awaited_through_the_bridge():
    def innermost(depth):
        return [getcurrent()] + [await_only(_value_later(depth))]

    async def spawn_inner(depth):
        if depth == 0:
            return await greenlet_spawn(innermost, depth)
        return await greenlet_spawn(middle, depth)

    def middle(depth):
        inner = await_only(spawn_inner(depth - 1))
        return [getcurrent()] + inner

    async def main():
        return getcurrent(), await greenlet_spawn(middle, 3)

    driver, result = asyncio.run(main())
    greenlets, value = result[:-1], result[-1]
    assert value == 0
    assert len(set(map(id, greenlets))) == 4  # one greenlet per level
    assert all(g.parent is driver for g in greenlets)  # each one's driver is the loop's greenlet
    del driver, greenlets, result


def test_nested_spawn_exception_travels_through_every_level():
    def inner():
        await_only(asyncio.sleep(0))
        raise LookupError("deep")

    def outer():
        return await_only(greenlet_spawn(inner))

    with pytest.raises(LookupError, match="deep") as info:
        asyncio.run(greenlet_spawn(outer))
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names.index("outer") < names.index("inner")


def test_a_thousand_concurrent_spawns_stay_independent():
    live = 0
    peak = 0

    def sync(i):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        total = 0
        for step in range(3):
            total += await_only(_value_later(i * 10 + step))
        live -= 1
        return total

    async def main():
        return await asyncio.gather(*(greenlet_spawn(sync, i) for i in range(1000)))

    results = asyncio.run(main())
    assert results == [i * 30 + 3 for i in range(1000)]
    assert peak == 1000  # all were suspended at once, interleaved by the loop


def test_bridge_works_in_another_threads_event_loop():
    results = []

    def sync():
        return threading.current_thread().name, await_only(_value_later("v"))

    def run():
        results.append(asyncio.run(greenlet_spawn(sync)))

    thread = threading.Thread(target=run, name="bridge-thread")
    thread.start()
    thread.join()
    assert results == [("bridge-thread", "v")]


# --- the protocol shared with SQLAlchemy's bridge ---------------------------------------------


class _ForeignBridgeGreenlet(greenlet):
    """A greenlet marked the way SQLAlchemy (and awaitlet) mark theirs."""

    __sqlalchemy_greenlet_provider__ = True


async def _foreign_spawn(fn):
    """A minimal other bridge speaking the protocol: the awaitable arrives by switch."""
    child = _ForeignBridgeGreenlet(fn, getcurrent())
    result = child.switch()
    while not child.dead:
        result = child.switch(await result)
    return result


def test_await_only_works_in_another_bridges_greenlet():
    def sync():
        assert in_greenlet()
        return await_only(_value_later("through a foreign bridge"))

    assert asyncio.run(_foreign_spawn(sync)) == "through a foreign bridge"


def test_another_bridges_await_works_in_our_greenlet():
    def foreign_await(awaitable):
        current = getcurrent()
        assert getattr(current, "__sqlalchemy_greenlet_provider__", False)
        return current.parent.switch(awaitable)

    assert asyncio.run(greenlet_spawn(foreign_await, _value_later("ours"))) == "ours"


# --- the package surface ----------------------------------------------------------------------


def test_bridge_names_are_reachable_from_the_package():
    for name in ("greenlet_spawn", "await_only", "await_", "in_greenlet", "MissingGreenlet"):
        assert getattr(corolet, name) is getattr(bridge, name)
    with pytest.raises(AttributeError):
        corolet.no_such_name  # noqa: B018


def test_import_corolet_does_not_import_asyncio():
    code = "import sys, corolet; print('asyncio' in sys.modules)"
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
