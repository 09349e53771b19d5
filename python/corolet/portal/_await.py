"""``await_``: sync code in a portal task waits for an awaitable.

Model
-----
``await_(aw)`` runs in whatever greenlet calls it: the portal's greenlet *P* (see
``_core.py``) or a greenlet started under P. It finds P by walking up the greenlet parents,
then steps ``aw`` itself, switching each thing ``aw`` yields straight to P's parent (the
driver, where the event loop runs), the switch tagged with ``resume``: the calling greenlet, or
None for P itself (``_corolet._portal_switch``; native coroutines are stepped by
``_corolet._portal_await``, the same loop in Rust, ``src/portal_run.rs``). The loop's answer (a
value, or an exception such as ``CancelledError``) comes back at this very call and goes into
``aw``, so a cancellation or timeout is raised in the sync code, where its ``finally`` blocks
run. Native coroutines and generators are stepped directly, so a traceback shows ``await_``
once between the sync caller and the coroutine; other awaitables go through ``__await__`` (or
their own ``send``/``throw`` when they are coroutines by the ABC).

Outside a portal, in a greenlet a bridge spawned (``greenlet_spawn``: its
``__sqlalchemy_greenlet_provider__`` flag), ``await_`` hands the awaitable to that bridge's
driver instead; anywhere else it raises :class:`PortalError` saying why and what to do, after
closing the coroutine so that nothing warns it was never awaited.

Invariants
----------
- No frame of ``await_`` refers to P while suspended (it asks ``getcurrent()`` each time): the
  garbage collector cannot break a cycle through a suspended greenlet's frames.
- The driver is read at every switch (P's parent), since a portal can move to another driver
  between steps.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from inspect import CO_ITERABLE_COROUTINE
from typing import Any, TypeVar, cast

from corolet._corolet import PortalGreenlet, _portal_await, _portal_switch, getcurrent, greenlet

_T = TypeVar("_T")

_CoroutineType = types.CoroutineType
_GeneratorType = types.GeneratorType

__all__ = ["PortalError", "PortalGreenlet", "await_", "in_portal"]


class PortalError(RuntimeError):
    """``await_()`` (or a portal operation) was used where no portal can serve it."""


def await_(aw: Awaitable[_T]) -> _T:
    """Wait for ``aw`` from synchronous code in a task that has a portal; return its result or
    raise its exception, as ``await aw`` would in async code."""
    current: greenlet | None = getcurrent()
    portal: greenlet | None = None
    if type(current) is PortalGreenlet:
        current = None  # "resume the portal itself", and no reference to it from this frame
    else:
        assert current is not None
        portal = current.parent
        while type(portal) is not PortalGreenlet:
            if portal is None:
                return cast(_T, _no_portal(aw, getcurrent()))
            portal = portal.parent
    native: Any = aw
    kind: type = type(native)
    if kind is _CoroutineType:
        # Stepped natively; this frame holds the loop's answers (see _core.py's invariants).
        held: list[Any] = [None]
        return _portal_await(aw, held)  # type: ignore[no-any-return]
    if kind is _GeneratorType and native.gi_code.co_flags & CO_ITERABLE_COROUTINE:
        send: Callable[[Any], Any] = native.send
        throw: Callable[[BaseException], Any] = native.throw
    else:
        send, throw = _steppers(aw)
    value: Any = None
    step = send
    while True:
        try:
            yielded = step(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value = _portal_switch(
                (getcurrent() if portal is None else portal).parent, yielded, current
            )
        except BaseException as exc:
            value = exc
            step = throw
        else:
            step = send
        del yielded


# What _corolet._portal_await hands back what it does not step itself.
_await_slow = await_


def _steppers(aw: Any) -> tuple[Callable[[Any], Any], Callable[[BaseException], Any]]:
    """send and throw for an awaitable that is not a native coroutine."""
    if isinstance(aw, Coroutine):
        iterator: Any = aw  # a coroutine by the ABC: driven by its own send/throw
    else:
        method = getattr(type(aw), "__await__", None)
        if method is None:
            raise TypeError(f"object {type(aw).__name__} can't be used in 'await' expression")
        iterator = method(aw)
        if type(iterator) is _GeneratorType:
            return iterator.send, iterator.throw
        if not hasattr(type(iterator), "__next__"):
            raise TypeError(
                f"__await__() returned non-iterator of type '{type(iterator).__name__}'"
            )
    return partial(_foreign_send, iterator), partial(_foreign_throw, iterator)


def _foreign_send(iterator: Any, value: Any) -> Any:
    send = getattr(type(iterator), "send", None)
    if send is None:
        if value is not None:
            raise TypeError(f"{type(iterator).__name__!r} iterator cannot accept a value")
        return next(iterator)
    return iterator.send(value)


def _foreign_throw(iterator: Any, exc: BaseException) -> Any:
    throw = getattr(iterator, "throw", None)
    if throw is None:
        raise exc
    return throw(exc)


def _no_portal(aw: Any, current: greenlet) -> Any:
    if getattr(current, "__sqlalchemy_greenlet_provider__", False):
        # A spawned greenlet of a bridge (greenlet_spawn): its driver awaits for us.
        return current.parent.switch(aw)  # type: ignore[union-attr]
    from corolet.portal._tasks import no_portal_error

    try:
        error = no_portal_error()
    finally:
        if isinstance(aw, Coroutine):
            aw.close()  # not awaited, and not warned about either
    raise error


def in_portal() -> bool:
    """True when ``await_()`` can be called here: this greenlet is a portal's or runs under
    one."""
    current: greenlet | None = getcurrent()
    while current is not None:
        if type(current) is PortalGreenlet:
            return True
        current = current.parent
    return False
