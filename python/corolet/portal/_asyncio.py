"""Portals for every task of an asyncio loop: ``install()``, ``new_event_loop()``, ``run()``.

Model
-----
asyncio's official hook for what a task steps is the loop's task factory
(``loop.set_task_factory``). ``install(loop)`` sets a :class:`PortalTaskFactory` (native,
``src/portal_factory.rs``: it runs once per task) that wraps each
new task's coroutine in a :class:`~corolet.portal._core.Portal` and then makes the task the way
the loop would have: through the factory that was set before (chained, e.g. asyncio's
``eager_task_factory`` or a tracing one), else ``asyncio.Task``. Works for any loop that honours
task factories (the default loops, uvloop).

``eager=True`` (the default): the portal is active from the task's first step, so ``await_()``
works anywhere in the task. ``eager=False``: the portal starts dormant, each step going straight
to the coroutine, until ``ensure_portal()``/``bestow_portal()`` activates it; that is
greenback's behaviour, at the cost of one Python call per step until then.

Under Trio, ``install()`` (no loop) makes every task spawned later in the run get a portal.

Invariants
----------
- ``install`` is idempotent per loop; a second call with another ``eager`` changes it for tasks
  created after it.
- The factory passes every keyword (``name``, ``context``, ``eager_start``) through unchanged.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from corolet._corolet import PortalTaskFactory
from corolet.portal import _core  # noqa: F401  (Portal registered as a Coroutine first)

_T = TypeVar("_T")

TaskFactory = Callable[..., "asyncio.Future[Any]"]

__all__ = ["PortalTaskFactory", "install", "new_event_loop", "run", "uninstall"]


def install(loop: asyncio.AbstractEventLoop | None = None, *, eager: bool = True) -> None:
    """Give every task created from now on in ``loop`` (default: the running loop; under
    Trio, the running Trio run) a portal: active from its first step (``eager=True``), or
    ready for ``ensure_portal()`` (``eager=False``, greenback's semantics)."""
    if loop is None:
        if _running_trio():
            from corolet.portal._trio import install_for_trio

            install_for_trio()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "corolet.portal.install() without a loop must be called inside a running "
                "event loop; before one runs, use corolet.portal.run(main), "
                "asyncio.run(main, loop_factory=corolet.portal.new_event_loop) or "
                "corolet.portal.install(loop) on the loop you made"
            ) from None
    current = loop.get_task_factory()
    if isinstance(current, PortalTaskFactory):
        current.eager = eager
        return
    loop.set_task_factory(PortalTaskFactory(current, eager))


def uninstall(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Undo ``install(loop)``: new tasks get no portal (the chained factory is set back)."""
    loop = loop if loop is not None else asyncio.get_running_loop()
    current = loop.get_task_factory()
    if isinstance(current, PortalTaskFactory):
        loop.set_task_factory(current.chained)


def _running_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def new_event_loop(*, eager: bool = True) -> asyncio.AbstractEventLoop:
    """``asyncio.new_event_loop()`` with ``install()`` done: a ``loop_factory`` for
    ``asyncio.run``/``asyncio.Runner``."""
    loop = asyncio.new_event_loop()
    install(loop, eager=eager)
    return loop


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    eager: bool = True,
) -> _T:
    """``asyncio.run(main)`` with portals: the main task and every task it creates have one
    (``eager=False``: can get one, greenback's semantics)."""

    def factory() -> asyncio.AbstractEventLoop:
        loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
        install(loop, eager=eager)
        return loop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, debug, factory)


def _run_310(
    main: Coroutine[Any, Any, _T],
    debug: bool | None,
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> _T:
    """What ``asyncio.run`` does on 3.10, with a loop from ``factory``."""
    if asyncio._get_running_loop() is not None:
        main.close()
        raise RuntimeError("corolet.portal.run() cannot be called from a running event loop")
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            for task in pending:
                if not task.cancelled() and task.exception() is not None:
                    loop.call_exception_handler(
                        {
                            "message": "unhandled exception during corolet.portal.run() shutdown",
                            "exception": task.exception(),
                            "task": task,
                        }
                    )
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
