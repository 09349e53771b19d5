"""Which task has a portal, and how a task gets one: greenback's task-level API.

Model
-----
A task has a portal when its coroutine is a :class:`~corolet.portal._core.Portal` that is
active (``bestow_portal``, ``ensure_portal``, ``install``), or while it runs a
``with_portal_run``/``with_portal_run_sync`` call, whose portal lives inside the task's own
await chain for the duration of the call (counted per task in ``_scoped``). Code can call
``await_()`` when the greenlet it runs in is a portal's greenlet or runs under one; that is what
``has_portal()`` answers for the current task.

How the coroutine is replaced: Trio's ``Task.coro`` is a plain attribute, so ``bestow_portal``
wraps it at any time, and the task's next step goes through the portal. asyncio's C tasks do
not let their coroutine be replaced (greenback writes the pointer with ctypes; corolet does not
write into objects' memory), so an asyncio task has a portal only if it was created through the
task factory of ``corolet.portal.install()``; for other tasks ``bestow_portal`` raises
:class:`PortalError` naming that fix.

Invariants
----------
- ``bestow_portal`` on the running task takes effect at its next step: until it yields to the
  event loop, ``has_portal()`` is False and ``await_()`` says to yield first.
- Nothing here holds a task strongly: ``_scoped`` is weak, and ``task_portals`` is a view
  computed from the running loop's tasks when read.
- Library detection goes through sniffio when it is installed (so its overrides apply, as in
  greenback), else through the running asyncio loop or Trio run.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from corolet.portal._await import PortalError, PortalGreenlet, in_portal
from corolet.portal._core import Portal

_T = TypeVar("_T")

# Tasks inside a with_portal_run*() call that have no portal of their own: nesting depth.
_scoped: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

_FIX = (
    "on asyncio, give tasks portals when they are created: `corolet.portal.install()` in the "
    "loop (every task created after it), `corolet.portal.run(main)` in place of "
    "`asyncio.run(main)`, or `loop_factory=corolet.portal.new_event_loop`; for one call, "
    "`await corolet.portal.with_portal_run(fn, *args)` works in any task"
)


# --- the running library and task ----------------------------------------------------------


def current_async_library() -> str:
    """``"asyncio"`` or ``"trio"`` (or whatever sniffio says), else a PortalError that is also
    sniffio's ``AsyncLibraryNotFoundError`` when sniffio is installed."""
    try:
        import sniffio
    except ImportError:
        return _library_without_sniffio()
    try:
        return str(sniffio.current_async_library())
    except sniffio.AsyncLibraryNotFoundError:
        # sniffio finds asyncio through asyncio.current_task(); a running loop says more.
        return _library_without_sniffio(sniffio.AsyncLibraryNotFoundError)


def _library_without_sniffio(base: Any = None) -> str:
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return "trio"
        except RuntimeError:
            pass
    import asyncio

    if asyncio._get_running_loop() is not None:
        return "asyncio"
    raise _no_library_error(base)


_error_types: dict[Any, type[PortalError]] = {}


def _no_library_error(base: Any) -> PortalError:
    cls = _error_types.get(base)
    if cls is None:
        bases = (PortalError,) if base is None else (PortalError, base)
        cls = type("NoAsyncLibraryError", bases, {"__module__": "corolet.portal"})
        _error_types[base] = cls
    return cls(
        "corolet.portal: no async library is running in this thread (neither asyncio nor "
        "Trio); await_() and portals work inside a task"
    )


def current_task() -> Any:
    """The running ``trio.lowlevel.Task`` or ``asyncio.Task``."""
    library = current_async_library()
    if library == "trio":
        import trio

        return trio.lowlevel.current_task()
    if library == "asyncio":
        import asyncio

        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("No asyncio task is running")
        return task
    raise RuntimeError(
        f"corolet.portal supports asyncio and Trio: greenback does not support {library} either"
    )


def portal_of(task: Any) -> Portal | None:
    """The task's own portal, active or not, if its coroutine is one."""
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else getattr(task, "coro", None)
    return coro if type(coro) is Portal else None


# --- greenback's API -----------------------------------------------------------------------


def has_portal(task: Any = None) -> bool:
    """True if ``task`` (default: the running task) can use :func:`await_`.

    For the running task that means the code asking runs in a portal; for another task, that
    it has an active portal (it will be running in it when it next runs) or is inside a
    ``with_portal_run*`` call.
    """
    if task is None or task is _current_task_or_none():
        return in_portal()
    portal = portal_of(task)
    return (portal is not None and portal.active) or task in _scoped


def _current_task_or_none() -> Any:
    try:
        return current_task()
    except RuntimeError:  # no library, no task (sniffio's error is a RuntimeError too)
        return None


def bestow_portal(task: Any) -> None:
    """Give ``task`` a portal. For the running task it becomes usable after the task next
    yields to the event loop (``ensure_portal()`` does that)."""
    portal = portal_of(task)
    if portal is not None:
        portal.active = True
        return
    module = type(task).__module__
    if module.startswith("trio"):
        coro = task.coro
        if coro is None:
            raise PortalError(f"corolet.portal: {task!r} has finished; it can get no portal")
        task.coro = Portal(coro)
        return
    import asyncio

    if not (asyncio.isfuture(task) and hasattr(task, "get_coro")):
        raise TypeError(f"bestow_portal() needs an asyncio or Trio task, not {task!r}")
    if task.done():
        raise PortalError(f"corolet.portal: {task!r} is done; it can get no portal")
    if "_coro" in getattr(task, "__dict__", ()):
        # A pure-Python task (asyncio.tasks._PyTask) keeps its coroutine in a plain attribute.
        inner: Any = task.get_coro()  # its type differs between typeshed versions
        task._coro = Portal(inner)  # type: ignore[attr-defined]
        return
    raise PortalError(
        f"corolet.portal cannot give {task!r} a portal: the task was created before "
        "corolet.portal.install() on its loop, and an asyncio task's coroutine cannot be "
        "replaced without writing into the task object's memory (greenback does that with "
        "ctypes; corolet does not). Fix: " + _FIX + "."
    )


async def ensure_portal() -> None:
    """Make sure the running task can use :func:`await_`; a checkpoint (a schedule point and
    a cancellation point) whether or not it already could."""
    if not in_portal():
        bestow_portal(current_task())
    await _checkpoint()


async def _checkpoint() -> None:
    library = current_async_library()
    if library == "trio":
        import trio

        await trio.sleep(0)
    else:
        import asyncio

        await asyncio.sleep(0)


async def with_portal_run(async_fn: Callable[..., Awaitable[_T]], *args: Any, **kwds: Any) -> _T:
    """``await async_fn(*args, **kwds)`` with :func:`await_` usable inside it; no checkpoint of
    its own. Without a portal already, the portal lasts for this call only."""
    if in_portal():
        return await async_fn(*args, **kwds)
    task = current_task()
    aw = async_fn(*args, **kwds)
    coro = aw if isinstance(aw, Coroutine) else _adapt(aw)
    _scoped[task] = _scoped.get(task, 0) + 1
    try:
        return await Portal(coro)  # type: ignore[no-any-return]
    finally:
        _unscope(task)


async def _adapt(aw: Awaitable[_T]) -> _T:
    return await aw


async def with_portal_run_sync(sync_fn: Callable[..., _T], *args: Any, **kwds: Any) -> _T:
    """``sync_fn(*args, **kwds)`` with :func:`await_` usable inside it; no checkpoint of its
    own beyond those of its ``await_`` calls."""
    if in_portal():
        return sync_fn(*args, **kwds)
    task = current_task()
    _scoped[task] = _scoped.get(task, 0) + 1
    try:
        return await Portal(None, sync=(sync_fn, args, kwds))  # type: ignore[no-any-return]
    finally:
        _unscope(task)


def _unscope(task: Any) -> None:
    depth = _scoped.get(task, 0) - 1
    if depth > 0:
        _scoped[task] = depth
    else:
        _scoped.pop(task, None)


# --- task_portals: greenback's registry, as a view -----------------------------------------


class TaskPortals(Mapping[Any, "PortalGreenlet | None"]):
    """The tasks of the running loop (and ``with_portal_run*`` calls anywhere) that have a
    portal, each mapped to its portal's greenlet (None until its first step in the portal).
    Computed when read; it holds no task."""

    def _items(self) -> dict[Any, PortalGreenlet | None]:
        found: dict[Any, PortalGreenlet | None] = dict.fromkeys(_scoped)
        for task in _running_tasks():
            portal = portal_of(task)
            if portal is not None and portal.active:
                found[task] = portal.greenlet
        return found

    def __getitem__(self, task: Any) -> PortalGreenlet | None:
        portal = portal_of(task)
        if portal is not None and portal.active:
            return portal.greenlet
        if task in _scoped:
            return None
        raise KeyError(task)

    def __contains__(self, task: object) -> bool:
        try:
            self[task]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"corolet.portal.task_portals({self._items()!r})"


def _running_tasks() -> list[Any]:
    try:
        library = current_async_library()
    except RuntimeError:
        return []
    if library == "asyncio":
        import asyncio

        return list(asyncio.all_tasks())
    if library == "trio":
        import trio

        tasks = []
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            if task is None:
                continue
            tasks.append(task)
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return tasks
    return []


task_portals = TaskPortals()


# --- the error of await_() outside a portal -------------------------------------------------


def no_portal_error() -> BaseException:
    """Why ``await_()`` cannot run here, and what to do (the error await_ raises)."""
    task = current_task()  # raises the no-library error itself
    portal = portal_of(task)
    if portal is not None and portal.active:
        library = current_async_library()
        return PortalError(
            f"You must yield to the event loop (try 'await {library}.sleep(0)') after "
            "calling 'greenback.bestow_portal()' (corolet.portal.bestow_portal()) on the "
            "current task before using the portal: it takes effect at the task's next step."
        )
    text = (
        "You must create a greenback portal for this task in order to use "
        "'greenback.await_()' (corolet.portal.await_()): try 'await "
        "greenback.ensure_portal()' (corolet.portal.ensure_portal()) or 'await "
        "greenback.with_portal_run(some_fn, *args)'"
    )
    if portal is None and not type(task).__module__.startswith("trio"):
        text += "; " + _FIX
    return PortalError(text + ".")


def is_portal_greenlet(obj: object) -> bool:
    return type(obj) is PortalGreenlet
