"""Portals for whole task trees under Trio: greenback's ``with_portal_run_tree`` family.

Model
-----
An :class:`AutoPortalInstrument` watches task spawns (Trio calls ``task_spawned`` before the
new task is first scheduled, so the portal it bestows serves the task's very first step). It
keeps, for each *root* task that asked for portals in its tree, the number of nurseries that
task had open when it asked: a child spawned into one of the task's later nurseries gets a
portal and becomes a root of its own (depth 0: all its nurseries count), while a child
spawned into a nursery that was already open keeps none. One instrument per run is shared by
all the ``portals_for_children()`` scopes open in it (a ``RunVar`` holds it) and is removed
when the last scope closes. Passed to ``trio.run`` it gives every task a portal, the init task
included; ``install()`` under Trio adds one in that mode.

``portals_for_tree()`` also gives the entering task a portal for the scope only: on exit the
task's ``coro`` gets its own coroutine back after a checkpoint (so the loop is no longer
stepping the portal) and the portal's greenlet ends without touching the coroutine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from corolet.portal._core import Portal
from corolet.portal._tasks import bestow_portal, portal_of, with_portal_run

_T = TypeVar("_T")

_holder: Any = None  # trio.lowlevel.RunVar, made on first use so asyncio users never import trio


def _instrument_var() -> Any:
    global _holder
    if _holder is None:
        import trio

        _holder = trio.lowlevel.RunVar("corolet_portal_instrument", default=None)
    return _holder


class AutoPortalInstrument:
    """A Trio instrument that bestows portals on newly spawned tasks of the trees that asked
    for them; passed to ``trio.run(..., instruments=[...])``, on every task of the run. (Trio
    takes any object with its hooks' names; not subclassing ``trio.abc.Instrument`` keeps
    Trio unimported for asyncio users.)"""

    def __init__(self, *, every_task: bool = False) -> None:
        self.tasks: dict[Any, int] = {}  # root task -> nursery depth from which children count
        self.refs = 0
        self.every_task = every_task

    def before_run(self) -> None:
        # Only called when passed to trio.run(): portals for the whole run.
        self.every_task = True
        self.refs = 1
        _instrument_var().set(self)

    def task_spawned(self, task: Any) -> None:
        nursery = task.parent_nursery
        if self.every_task or nursery is None:
            bestow_portal(task)
            return
        parent = nursery.parent_task
        depth = self.tasks.get(parent)
        if depth is not None and parent.child_nurseries.index(nursery) >= depth:
            bestow_portal(task)
            self.tasks[task] = 0

    def task_exited(self, task: Any) -> None:
        self.tasks.pop(task, None)


def _current_trio_task() -> Any:
    try:
        import trio

        return trio.lowlevel.current_task()
    except Exception:
        raise RuntimeError("This function is only supported when running under Trio") from None


@contextmanager
def portals_for_children() -> Iterator[None]:
    """Within this (synchronous) scope, tasks spawned into nurseries the current task opens
    get portals, and so do their own children; the current task gets none."""
    task = _current_trio_task()
    import trio

    holder = _instrument_var()
    instrument = holder.get()
    if instrument is None:
        instrument = AutoPortalInstrument()
        trio.lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
        holder.set(instrument)
    elif instrument.every_task or task in instrument.tasks:
        yield  # an enclosing scope already covers this task's children
        return
    instrument.tasks[task] = len(task.child_nurseries)
    instrument.refs += 1
    try:
        yield
    finally:
        instrument.tasks.pop(task, None)
        instrument.refs -= 1
        if instrument.refs == 0:
            holder.set(None)
            trio.lowlevel.remove_instrument(instrument)


@asynccontextmanager
async def portals_for_tree() -> AsyncIterator[None]:
    """``await_()`` usable in the current task and in the tasks it spawns into nurseries
    opened within this scope, recursively. Entry and exit are schedule points, not
    cancellation points."""
    import trio

    with portals_for_children():
        task = trio.lowlevel.current_task()
        own = portal_of(task)
        new = own is None or not own.active
        original = task.coro
        if new:
            bestow_portal(task)
        portal = task.coro
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
            yield
        finally:
            if new and isinstance(portal, Portal) and task.coro is portal and own is None:
                # Hand the task its coroutine back: after this checkpoint Trio steps it
                # directly, and the portal's greenlet can end.
                task.coro = original
                await trio.lowlevel.cancel_shielded_checkpoint()
                portal.detach()
            else:
                if new and own is not None:
                    own.active = False
                await trio.lowlevel.cancel_shielded_checkpoint()


async def with_portal_run_tree(
    async_fn: Callable[..., Awaitable[_T]], *args: Any, **kwds: Any
) -> _T:
    """``await async_fn(*args, **kwds)`` with ``await_()`` usable in it and in every task
    spawned into nurseries it opens, recursively; no checkpoint of its own. Trio only (under
    asyncio, ``corolet.portal.install()`` gives every new task a portal)."""
    with portals_for_children():
        return await with_portal_run(async_fn, *args, **kwds)


def install_for_trio() -> None:
    """``install()`` under Trio: every task spawned from now on in this run gets a portal."""
    import trio

    _current_trio_task()
    holder = _instrument_var()
    instrument = holder.get()
    if instrument is None:
        instrument = AutoPortalInstrument(every_task=True)
        instrument.refs = 1
        trio.lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
        holder.set(instrument)
    else:
        instrument.every_task = True
