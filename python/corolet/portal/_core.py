"""The portal: a task's coroutine stepped inside a greenlet (``await_`` is in ``_await.py``).

Model
-----
A :class:`Portal` stands where the event loop expects a task's coroutine (asyncio's task
factory, Trio's ``Task.coro``) or where a coroutine awaits (``with_portal_run``). Each
``send``/``throw`` the loop makes is one *step*. The first step of an active portal creates a
:class:`PortalGreenlet` (the portal's greenlet, *P*) whose parent is the greenlet that made the
step (the *driver*, where the loop runs), and P steps the inner coroutine. Whatever the inner
coroutine yields to the loop travels up by one switch, P to driver, and the loop's answer comes
back down by one switch; so a step costs two switches and the loop sees exactly what the inner
coroutine yields.

Because the inner coroutine runs in P, synchronous code it calls can suspend the whole task:
``await_(aw)`` steps ``aw`` itself, in whatever greenlet calls it (P, or a greenlet started
under P), and switches each thing ``aw`` yields straight to the driver, naming itself as the
greenlet to resume. The loop's answer (a value, or an exception such as ``CancelledError``)
comes back at that very ``await_`` call, so a cancellation or timeout is raised in the sync
code, where its ``finally`` blocks run.

Messages from P's side to the driver are two-tuples ``(yielded, resume)``: ``resume`` is the
greenlet to switch into with the loop's next answer (``None``: P's own stepping loop). Any
other object is an awaitable sent by the greenlet bridge protocol (``await_only`` of
SQLAlchemy or ``corolet.bridge``: P carries ``__sqlalchemy_greenlet_provider__`` and its parent
is the driver, so they switch the awaitable to it); the portal then awaits it in a helper
greenlet under P, which hands P the result (or raises in P) when done, as the protocol wants.
When the job is done P ends, its last message (its return value) a ``_Done`` holding the
outcome: the driver raises ``StopIteration(result)`` for the coroutine's result, or the
coroutine's (or sync function's) exception, unchanged, from ``send``/``throw``.

Invariants
----------
- P runs in the context the first active step ran in: the task's own ``contextvars.Context``
  (the same object, not a copy), so ``ContextVar.set`` in sync code is the task's.
- The driver is re-read on every step: if a step comes from another greenlet than the last
  (an eager task's first step ran inside the greenlet that created it), P's parent moves there
  first, so messages always reach the greenlet that is waiting for them.
- A portal that is not active (a task made portal-capable by ``install(eager=False)``) passes
  each step straight to its coroutine, in the driver; ``activate()`` takes effect at the next
  step.
- ``close()`` raises ``GeneratorExit`` wherever the task is suspended, again at each ``await_``
  that sync code reaches while unwinding, until P has finished.
- No object's memory is written: the coroutine is replaced only through the loop's own hooks.
- No frame of P's own code refers to P (it asks ``getcurrent()`` when it needs itself): the
  garbage collector cannot break a cycle through a suspended greenlet's frames, so such a
  reference would keep an abandoned portal alive forever.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from corolet._corolet import GreenletExit, getcurrent, greenlet
from corolet.portal._await import PortalGreenlet, await_

_CoroutineType = types.CoroutineType


class _Detach(BaseException):
    """Thrown into P to end its stepping loop without touching the coroutine."""


class _Done:
    """P's last message for a job: its outcome, which the driver takes out (so that an idle
    P, whose frame still holds this object, keeps nothing alive)."""

    __slots__ = ("result", "error")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

    def take(self) -> tuple[Any, BaseException | None]:
        result, error = self.result, self.error
        self.result = self.error = None
        return result, error


def _portal_main(job: Any, value: Any) -> _Done:
    """P's run: do the job (step a coroutine to its end, or call a sync function) and end,
    handing the outcome to the driver in a _Done (P's return value goes to its parent)."""
    # No local names this greenlet: a greenlet its own suspended frame refers to is a cycle
    # the garbage collector does not break, so an abandoned P would never be freed.
    done = _Done()
    try:
        if type(job) is tuple:
            done.result = _call_sync(*job)
        else:
            done.result = _step_coroutine(job, value)
    except GreenletExit:
        raise  # killed: nothing to report
    except BaseException as exc:
        done.error = exc
    return done


def _step_coroutine(coro: Coroutine[Any, Any, Any], value: Any) -> Any:
    """Step ``coro`` until it finishes; its result, or its exception raised."""
    send = coro.send
    throw = coro.throw
    step: Callable[[Any], Any] = send
    while True:
        try:
            yielded = step(value)
        except StopIteration as stop:
            return stop.value
        try:
            value = getcurrent().parent.switch(yielded, None)  # type: ignore[union-attr]
        except (GeneratorExit, GreenletExit):
            coro.close()  # raises RuntimeError if the coroutine ignores it
            raise
        except _Detach:
            return None  # the coroutine stays suspended; the loop steps it from now on
        except BaseException as exc:
            value = exc
            step = throw
        else:
            step = send
        del yielded  # not kept alive while the coroutine runs its next step


def _call_sync(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:  # would read as the end of the awaiting coroutine
        raise RuntimeError(f"{fn!r} raised StopIteration") from exc


_NOT_STARTED = 0
_RUNNING = 1
_FINISHED = 2


class Portal(Coroutine[Any, Any, Any]):
    """A coroutine whose steps run in a greenlet, so that code it calls may ``await_()``.

    ``Portal(coro)`` steps ``coro``; ``Portal(None, sync=(fn, args, kwargs))`` runs ``fn`` in
    the greenlet instead. It is a coroutine (for asyncio's and Trio's checks) and its own
    ``__await__`` iterator; ``cr_frame``, ``cr_running`` and the rest are the inner
    coroutine's, for tools that walk a task's stack.
    """

    __slots__ = (
        "_coro",
        "_sync",
        "_greenlet",
        "_resume",
        "_driver",
        "_state",
        "active",
        "__weakref__",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any] | None,
        *,
        active: bool = True,
        sync: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> None:
        self._coro = coro
        self._sync = sync
        self._greenlet: PortalGreenlet | None = None
        self._resume: greenlet | None = None  # None until P exists
        self._driver: greenlet | None = None
        self._state = _NOT_STARTED
        self.active = active

    # --- the coroutine protocol ----------------------------------------------------------

    def send(self, value: Any = None) -> Any:
        resume = self._resume
        if resume is None:
            return self._first_send(value)
        if self._driver is not getcurrent():
            self._rebind()
        try:
            message = resume.switch(value)
        except BaseException:
            self._finish()
            raise
        if type(message) is tuple:
            yielded, resume = message
            self._resume = resume or self._greenlet
            return yielded
        return self._handle(message)

    __next__ = send

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = _exception(typ, val, tb)
        resume = self._resume
        if resume is None:
            if self._state == _FINISHED:
                raise exc
            if self._coro is None:  # a sync portal not started: nothing to unwind
                self._finish()
                raise exc
            self._state = _RUNNING
            try:
                return self._coro.throw(exc)
            except BaseException:
                self._finish()
                raise
        if self._driver is not getcurrent():
            self._rebind()
        try:
            message = resume.throw(exc)
        except BaseException:
            self._finish()
            raise
        return self._handle(message)

    def close(self) -> None:
        if self._resume is None:
            if self._coro is not None and self._state != _FINISHED:
                self._coro.close()
            self._finish()
            return
        self._rebind()
        exit_ = GeneratorExit()
        while self._resume is not None:
            try:
                message = self._resume.throw(exit_)
            except BaseException:
                self._finish()
                raise
            if type(message) is _Done:
                _, error = message.take()
                self._finish()
                if error is not None and not isinstance(error, GeneratorExit):
                    raise error
                return
            if type(message) is tuple:
                self._resume = message[1] or self._greenlet
            else:  # an awaitable offered by the bridge protocol: nothing can be awaited now
                if isinstance(message, _CoroutineType):
                    message.close()
                self._resume = self._greenlet

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> Portal:
        return self

    # --- what the loop's tools read --------------------------------------------------------

    @property
    def cr_frame(self) -> types.FrameType | None:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_suspended(self) -> bool:
        return bool(getattr(self._coro, "cr_suspended", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> types.CodeType | None:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_origin(self) -> Any:
        return getattr(self._coro, "cr_origin", None)

    def __getattr__(self, name: str) -> Any:
        # __name__ and __qualname__ (asyncio's task repr reads them) are the coroutine's.
        if name in ("__name__", "__qualname__") and self._coro is not None:
            return getattr(self._coro, name)
        raise AttributeError(f"'Portal' object has no attribute {name!r}")

    @property
    def coroutine(self) -> Coroutine[Any, Any, Any] | None:
        """The coroutine this portal steps (None for a sync portal)."""
        return self._coro

    @property
    def greenlet(self) -> PortalGreenlet | None:
        """The portal's greenlet once the first active step has made it, else None."""
        return self._greenlet

    def __repr__(self) -> str:
        inner = self._coro if self._coro is not None else self._sync
        return f"<corolet.portal.Portal of {inner!r}>"

    # --- the slow paths --------------------------------------------------------------------

    def _first_send(self, value: Any) -> Any:
        if self._state == _FINISHED:
            raise RuntimeError("cannot reuse already awaited coroutine")
        coro = self._coro
        if not self.active:
            assert coro is not None
            self._state = _RUNNING
            try:
                return coro.send(value)
            except BaseException:
                self._finish()
                raise
        driver = getcurrent()
        portal = PortalGreenlet(_portal_main, driver)
        context = driver.gr_context
        if context is None:
            import contextvars

            contextvars.copy_context()  # makes this thread's context exist
            context = driver.gr_context
        portal.gr_context = context
        self._greenlet = self._resume = portal
        self._driver = driver
        self._state = _RUNNING
        try:
            message = portal.switch(coro if coro is not None else self._sync, value)
        except BaseException:
            self._finish()
            raise
        return self._handle(message)

    def _handle(self, message: Any) -> Any:
        if type(message) is tuple:
            yielded, resume = message
            self._resume = resume or self._greenlet
            return yielded
        if type(message) is _Done:
            result, error = message.take()
            self._finish()
            if error is not None:
                raise error
            raise StopIteration(result)
        return self._bridge(message)

    def _bridge(self, awaitable: Any) -> Any:
        """P sent an awaitable by the bridge protocol: await it in a helper greenlet under P,
        which switches the outcome back into P when it is done."""
        helper = greenlet(await_, self._greenlet)
        self._resume = helper
        try:
            message = helper.switch(awaitable)
        except BaseException:
            self._finish()
            raise
        return self._handle(message)

    def _rebind(self) -> None:
        driver = getcurrent()
        if self._greenlet is not None and self._greenlet.parent is not driver:
            self._greenlet.parent = driver
        self._driver = driver

    def _finish(self) -> None:
        self._state = _FINISHED
        self._resume = self._greenlet = self._driver = None
        self._sync = None

    def detach(self) -> None:
        """End the portal's job, leaving the coroutine suspended where it is, to be stepped
        directly from now on. Only between steps, when no ``await_`` is pending."""
        portal = self._greenlet
        if portal is not None and self._resume is portal and not portal.dead:
            self._rebind()
            message = portal.throw(_Detach())
            assert type(message) is _Done, message
            message.take()
        self._finish()
        self._coro = None


def _exception(typ: Any, val: Any, tb: Any) -> BaseException:
    if isinstance(typ, BaseException):
        exc = typ
    elif val is None:
        exc = typ()
    elif isinstance(val, BaseException):
        exc = val
    else:
        exc = typ(*val) if isinstance(val, tuple) else typ(val)
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc
