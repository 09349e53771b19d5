"""The sync-to-async bridge: run synchronous code that awaits, from asyncio.

Model
-----
``await greenlet_spawn(fn, *args, **kwargs)`` runs the *synchronous* ``fn`` in a new greenlet
(the *spawned* greenlet) whose parent is the greenlet running the calling coroutine (the
*driver*, usually the thread's main greenlet, where the event loop runs). Whenever ``fn``, or
anything it calls, wants the result of an awaitable it calls ``await_only(awaitable)``. That
switches once to the driver, handing it the awaitable; the driver, suspended inside
``greenlet_spawn``, awaits it as ordinary async code would (so the event loop runs other tasks
meanwhile), then switches once back into the spawned greenlet with the result, or throws the
exception the await raised into it, where ``await_only`` returns or raises. When ``fn``
returns, ``greenlet_spawn`` returns its value; when it raises, ``greenlet_spawn`` raises the same
exception object, traceback included.

Invariants
----------
- One switch per direction per ``await_only`` round trip: what travels is the awaitable going
  up and the value (or exception) coming down, nothing else.
- The spawned greenlet runs in the driver's ``contextvars`` context, the very same ``Context``
  object, not a copy: a ``ContextVar.set`` on either side is seen by the other.
- Cancellation is delivered where the greenlet waits: an ``asyncio.CancelledError`` (or any
  exception) raised in the driver's ``await`` is raised inside the greenlet at its
  ``await_only`` call, so its ``try``/``finally`` and ``with`` blocks run, and may themselves
  ``await_only`` (a rollback, a close) before the exception leaves ``greenlet_spawn``. A timeout
  around ``greenlet_spawn`` (``asyncio.timeout``, ``asyncio.wait_for``) therefore leaves the
  greenlet finished, never suspended.
- If the coroutine running ``greenlet_spawn`` is closed instead (its task destroyed while
  pending, ``coro.close()``), nothing can be awaited any more: ``GeneratorExit`` is raised inside
  the greenlet at its ``await_only`` until the greenlet has finished, and each awaitable it
  offers meanwhile is closed unawaited.
- Nested spawns work: a coroutine awaited through ``await_only`` may itself ``await
  greenlet_spawn(...)``; it runs in the driver, so the inner greenlet's driver is the same.

Living beside SQLAlchemy's bridge
---------------------------------
SQLAlchemy (1.4, 2.x) ships the same bridge in ``sqlalchemy.util``, built on the same protocol:
a spawned greenlet carries a true ``__sqlalchemy_greenlet_provider__`` attribute, and an await
is ``getcurrent().parent.switch(awaitable)``. corolet's bridge speaks that protocol too, so after
``corolet.install()`` SQLAlchemy's ``await_only`` works inside corolet's ``greenlet_spawn`` and
corolet's ``await_only`` inside SQLAlchemy's (as it does inside any other bridge that marks its
greenlets the same way, such as ``awaitlet``).

``await_only`` called anywhere else raises :class:`MissingGreenlet`, whose message starts with
SQLAlchemy's text (users search for it) and goes on to say what was found instead and what to
do.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from corolet._corolet import getcurrent, greenlet

__all__ = ["MissingGreenlet", "await_", "await_only", "greenlet_spawn", "in_greenlet"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

# The attribute by which bridges recognise each other's spawned greenlets (SQLAlchemy's name;
# awaitlet and corolet use it too).
_PROVIDER = "__sqlalchemy_greenlet_provider__"

_PREFIX = "greenlet_spawn has not been called; can't call await_only() here."


class _SpawnedGreenlet(greenlet):
    """A greenlet started by :func:`greenlet_spawn`; its parent is the driver."""

    __sqlalchemy_greenlet_provider__ = True


class MissingGreenlet(RuntimeError):
    """``await_only()`` was called outside a greenlet started by ``greenlet_spawn()``.

    The message starts with SQLAlchemy's text for the same error, then says what was found
    instead of a spawned greenlet (plain synchronous code, the event loop's own task, a
    greenlet some other library started, no running event loop) and how to fix it.
    """


def in_greenlet() -> bool:
    """True when running inside a greenlet started by ``greenlet_spawn`` (ours or another
    bridge's that marks its greenlets the same way, such as SQLAlchemy's), so that
    ``await_only`` may be called here."""
    return bool(getattr(getcurrent(), _PROVIDER, False))


def await_only(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from synchronous code running under ``greenlet_spawn``.

    The greenlet switches to the coroutine that called ``greenlet_spawn``, which awaits
    ``awaitable`` and switches back with its result, or raises its exception here (including
    ``asyncio.CancelledError`` when the awaiting task is cancelled). Anywhere else this raises
    :class:`MissingGreenlet` and closes ``awaitable`` if it is a coroutine, so that it does not
    also warn that it was never awaited.
    """
    current = getcurrent()
    if getattr(current, _PROVIDER, False):
        driver = current.parent
        # Not kept in this frame while suspended: a greenlet referenced from its own suspended
        # frame is a cycle the garbage collector cannot see through (greenlet's does not either).
        del current
        return driver.switch(awaitable)  # type: ignore[no-any-return,union-attr]
    _close_unawaited(awaitable)
    raise MissingGreenlet(_diagnose(current, awaitable, sys._getframe(1)))


await_ = await_only  # SQLAlchemy 2.1's name for the same function


async def greenlet_spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run the synchronous ``fn(*args, **kwargs)`` in a new greenlet, awaiting for it.

    Inside ``fn``, ``await_only(awaitable)`` suspends the greenlet while this coroutine awaits
    the awaitable. Returns what ``fn`` returns; raises what it raises.
    """
    driver = getcurrent()
    child = _SpawnedGreenlet(fn, driver)
    context = driver.gr_context
    if context is None:
        # No context was ever entered in this thread: make the thread's context exist (asking
        # for a copy creates it) so that the driver and the child share one.
        contextvars.copy_context()
        context = driver.gr_context
    child.gr_context = context

    result: Any = child.switch(*args, **kwargs)
    while not child.dead:
        try:
            value = await result
        except GeneratorExit as exit_:
            # This coroutine is being closed: nothing can be awaited any more. Unwind the
            # greenlet before letting GeneratorExit go on.
            _unwind(child, result, exit_)
            raise
        except BaseException as exc:  # CancelledError included: raise it where fn waits
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]


def _unwind(child: greenlet, awaitable: object, exit_: GeneratorExit) -> None:
    """Raise ``exit_`` in ``child`` at each ``await_only`` it reaches until it has finished."""
    while not child.dead:
        _close_unawaited(awaitable)
        awaitable = child.throw(exit_)


def _close_unawaited(awaitable: object) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


# --- MissingGreenlet's diagnosis (the error path only) ----------------------------------------

_SQLALCHEMY_HINT = (
    "With SQLAlchemy's asyncio extension this usually means IO was attempted outside the "
    "session's async calls, most often a lazy load or an attribute expired by commit: load "
    "eagerly (selectinload(), lazy='raise' to find the culprit), use "
    "AsyncSession(expire_on_commit=False), AsyncAttrs.awaitable_attrs, run sync code with "
    "await session.run_sync(fn), or give the tasks portals (corolet.portal.install() or "
    "corolet.portal.run(main)), in which lazy loads work in plain async code."
)


def _diagnose(current: greenlet, awaitable: object, caller: Any) -> str:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    lines = [_PREFIX]
    lines.append("Found instead: " + _found_instead(current, loop))
    lines.append("What to do: " + _what_to_do(current, loop))
    foreign = _foreign_greenlet()
    if foreign is not None:
        lines.append(
            f"Note: the real greenlet package is imported in this process (from {foreign}); "
            "greenlets it starts (e.g. by a library's own greenlet_spawn) are invisible to "
            "corolet. Call corolet.install() before anything imports greenlet."
        )
    lines.append(f"Awaitable: {_short(awaitable)}" + _closed_note(awaitable))
    if caller is not None:
        code = caller.f_code
        lines.append(f"Called from: {code.co_filename}:{caller.f_lineno} in {code.co_name}()")
    lines.append(_SQLALCHEMY_HINT)
    return "\n".join(lines)


def _found_instead(current: greenlet, loop: asyncio.AbstractEventLoop | None) -> str:
    thread = threading.current_thread().name
    if current.parent is None:
        if loop is None:
            return (
                f"no greenlet at all: plain synchronous code in thread {thread!r} (its main "
                "greenlet), and no event loop is running in this thread."
            )
        task = asyncio.current_task(loop)
        where = f"task {task.get_name()!r}" if task is not None else "a callback"
        return (
            f"no greenlet started by greenlet_spawn(): this is the event loop's own code "
            f"({where} in thread {thread!r}, its main greenlet), not synchronous code run "
            "through greenlet_spawn()."
        )
    text = (
        f"a plain greenlet, {_short(current)}, that greenlet_spawn() did not start (some "
        "other code created it: your own greenlet(...), gevent, greenback, ...)"
    )
    spawned = _spawned_ancestor(current)
    if spawned is not None:
        text += (
            f"; it runs under the greenlet_spawn() greenlet {_short(spawned)}, but await_only() "
            "must be called in that greenlet itself, not in a greenlet it switched into"
        )
    if loop is None:
        text += "; and no event loop is running in this thread"
    return text + "."


def _what_to_do(current: greenlet, loop: asyncio.AbstractEventLoop | None) -> str:
    if current.parent is None and loop is not None:
        return (
            "in async code, `await` the awaitable directly; to call synchronous code that "
            "uses await_only(), run it with `await greenlet_spawn(fn, *args)`; or give the "
            "task a portal, after which await_only() works in any synchronous code it calls: "
            "`corolet.portal.install()` (every task the loop creates after it), "
            "`corolet.portal.run(main)` in place of asyncio.run(main), or "
            "`await corolet.portal.with_portal_run_sync(fn, *args)` for one call."
        )
    if loop is None:
        return (
            "start the synchronous entry point from async code with "
            "`await greenlet_spawn(fn, *args)`; from plain synchronous code, "
            "`asyncio.run(greenlet_spawn(fn, *args))`."
        )
    return (
        "call await_only() from the function greenlet_spawn() runs (or code it calls in the "
        "same greenlet), or start this greenlet's work with `await greenlet_spawn(fn, *args)`."
    )


def _spawned_ancestor(current: greenlet) -> greenlet | None:
    ancestor = current.parent
    while ancestor is not None:
        if getattr(ancestor, _PROVIDER, False):
            return ancestor
        ancestor = ancestor.parent
    return None


def _foreign_greenlet() -> str | None:
    module = sys.modules.get("greenlet")
    if module is None or getattr(module, "__corolet__", False):
        return None
    return str(getattr(module, "__file__", "?"))


def _short(obj: object, limit: int = 120) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__qualname__} object; repr() failed: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _closed_note(awaitable: object) -> str:
    if asyncio.iscoroutine(awaitable):
        return " (closed without being awaited)"
    if not hasattr(awaitable, "__await__"):
        return " (not awaitable either)"
    return " (left untouched)"
