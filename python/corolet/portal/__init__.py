"""corolet.portal: ``await`` from any synchronous code inside an async task, without ctypes.

greenback's API (``import corolet.portal as greenback`` runs code written for greenback 1.3
unchanged), on asyncio (any loop that honours task factories, uvloop included) and Trio:

- ``await ensure_portal()``, ``bestow_portal(task)``, ``has_portal(task=None)``: give a task a
  *portal*, after which ``await_(awaitable)`` works in any synchronous function it calls.
- ``await with_portal_run(async_fn, ...)``, ``await with_portal_run_sync(sync_fn, ...)``: a
  portal for the duration of one call, in any task.
- Trio: ``with_portal_run_tree``, ``portals_for_tree``, ``portals_for_children``,
  ``AutoPortalInstrument``: portals for a whole tree of tasks.
- ``autoawait``, ``decorate_as_sync``, ``async_context``, ``async_iter``: sync faces for async
  functions, context managers and iterators.
- ``current_task()`` and ``task_portals`` (greenback's ``_impl`` names).

What greenback lacks: ``install(loop=None, eager=True)`` sets a task factory (chaining the one
already set) after which every new task of the loop has a portal; ``run(main)`` is
``asyncio.run`` with portals; ``new_event_loop()`` is a ``loop_factory`` with them.

A portal's greenlet is a spawned greenlet in SQLAlchemy's sense
(``__sqlalchemy_greenlet_provider__``, its parent the greenlet driving the task), so
``corolet.bridge.await_only`` and SQLAlchemy's own ``await_only`` work in every portal task:
with ``install()``, a lazy load in plain async code under ``AsyncSession`` runs instead of
raising ``MissingGreenlet``.

How: a task's coroutine is wrapped in a ``Portal`` (``_core.py``) whose steps run in a
greenlet, two switches per step (``await_`` is in ``_await.py``); nothing writes into any
object's memory. An asyncio task that was created
before ``install()`` therefore cannot get a portal (its C coroutine slot is read-only), and
``ensure_portal()`` there raises :class:`PortalError` naming the fix.
"""

from __future__ import annotations

from corolet.portal._asyncio import (
    PortalTaskFactory,
    install,
    new_event_loop,
    run,
    uninstall,
)
from corolet.portal._await import PortalError, PortalGreenlet, await_, in_portal
from corolet.portal._core import Portal
from corolet.portal._tasks import (
    TaskPortals,
    bestow_portal,
    current_async_library,
    current_task,
    ensure_portal,
    has_portal,
    task_portals,
    with_portal_run,
    with_portal_run_sync,
)
from corolet.portal._trio import (
    AutoPortalInstrument,
    portals_for_children,
    portals_for_tree,
    with_portal_run_tree,
)
from corolet.portal._util import async_context, async_iter, autoawait, decorate_as_sync

__all__ = [
    "AutoPortalInstrument",
    "Portal",
    "PortalError",
    "PortalGreenlet",
    "PortalTaskFactory",
    "TaskPortals",
    "async_context",
    "async_iter",
    "autoawait",
    "await_",
    "bestow_portal",
    "current_async_library",
    "current_task",
    "decorate_as_sync",
    "ensure_portal",
    "has_portal",
    "in_portal",
    "install",
    "new_event_loop",
    "portals_for_children",
    "portals_for_tree",
    "run",
    "task_portals",
    "uninstall",
    "with_portal_run",
    "with_portal_run_sync",
    "with_portal_run_tree",
]
