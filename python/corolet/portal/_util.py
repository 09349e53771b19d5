"""Sync faces for async things, built on ``await_``: greenback's utilities.

Model
-----
Each wrapper turns one async protocol into its synchronous twin by awaiting, with
:func:`await_`, exactly what the native async statement would have awaited, looked up the way
the interpreter looks it up (on the type, not the instance), so that errors and results match
``async with``/``async for``: ``async_context`` for ``with``, ``async_iter`` for ``for`` and
``yield from`` (with ``send``/``throw``/``close`` when the async iterator is an async
generator), ``autoawait`` for calling an async function as a sync one, ``decorate_as_sync``
for applying a sync decorator (such as ``functools.lru_cache``) to an async function.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, cast

from corolet.portal._await import await_
from corolet.portal._tasks import with_portal_run_sync

_T = TypeVar("_T")
_AF = TypeVar("_AF", bound=Callable[..., Awaitable[Any]])


def autoawait(fn: Callable[..., Awaitable[_T]]) -> Callable[..., _T]:
    """Make the async ``fn`` callable (only) from sync code in a portal, without ``await``:
    for ``__init__``, ``__del__``, property setters and other places that cannot await."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> _T:
        return await_(fn(*args, **kwargs))

    return call


def decorate_as_sync(decorator: Callable[..., Any]) -> Callable[[_AF], _AF]:
    """Apply the synchronous ``decorator`` to an async function: the decorator sees a sync
    function (that awaits the async one with ``await_``), and the result is async again,
    running it through ``with_portal_run_sync``."""

    def decorate(async_fn: _AF) -> _AF:
        @functools.wraps(async_fn)
        def sync_version(*args: Any, **kwargs: Any) -> Any:
            return await_(async_fn(*args, **kwargs))

        decorated = decorator(sync_version)

        @functools.wraps(decorated)
        async def async_version(*args: Any, **kwargs: Any) -> Any:
            return await with_portal_run_sync(decorated, *args, **kwargs)

        return cast(_AF, async_version)

    return decorate


class async_context(Generic[_T]):
    """``with async_context(acm) as value:`` in sync code does what ``async with acm as
    value:`` does in async code."""

    __slots__ = ("_cm", "_aexit")

    def __init__(self, cm: AbstractAsyncContextManager[_T]) -> None:
        self._cm = cm

    def __enter__(self) -> _T:
        cls = type(self._cm)
        aenter = getattr(cls, "__aenter__", None)
        aexit = getattr(cls, "__aexit__", None)
        name = cls.__name__
        if sys.version_info >= (3, 11):
            if aenter is None:
                raise TypeError(
                    f"'{name}' object does not support the asynchronous context manager protocol"
                )
            if aexit is None:
                raise TypeError(
                    f"'{name}' object does not support the asynchronous context manager "
                    "protocol (missed __aexit__ method)"
                )
        elif aenter is None or aexit is None:  # 3.10 raised AttributeError here
            raise AttributeError("__aenter__" if aenter is None else "__aexit__")
        self._aexit = aexit
        return cast(_T, await_(aenter(self._cm)))

    def __exit__(self, *exc_info: Any) -> bool:
        return bool(await_(self._aexit(self._cm, *exc_info)))


class async_iter(Generic[_T]):
    """``for value in async_iter(aiterable):`` in sync code does what ``async for value in
    aiterable:`` does in async code. Over an async generator, the iterator also has
    ``send``, ``throw`` and ``close``, so ``yield from`` passes them through."""

    __slots__ = ("_it",)
    _it: Any

    def __new__(cls, iterable: AsyncIterable[_T]) -> async_iter[_T]:
        aiter = getattr(type(iterable), "__aiter__", None)
        if aiter is None:
            raise TypeError(
                "'async_iter' requires an object with __aiter__ method, got "
                + type(iterable).__name__
            )
        iterator = aiter(iterable)
        if getattr(type(iterator), "__anext__", None) is None:
            raise TypeError(
                "'async_iter' received an object from __aiter__ that does not implement "
                "__anext__: " + type(iterator).__name__
            )
        generator_like = all(hasattr(iterator, name) for name in ("asend", "athrow", "aclose"))
        self = object.__new__(_async_generator if generator_like else cls)
        self._it = iterator
        return self

    def __iter__(self) -> Iterator[_T]:
        return self

    def __next__(self) -> _T:
        try:
            return cast(_T, await_(type(self._it).__anext__(self._it)))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None


class _async_generator(async_iter[_T]):
    """``async_iter`` over an async generator: ``send``/``throw``/``close`` map to
    ``asend``/``athrow``/``aclose``."""

    __slots__ = ()

    def _agen(self) -> Any:
        return cast(AsyncIterator[_T], self._it)

    def send(self, value: Any) -> _T:
        try:
            return cast(_T, await_(self._agen().asend(value)))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None

    def throw(self, *exc_info: Any) -> _T:
        try:
            return cast(_T, await_(self._agen().athrow(*exc_info)))
        except StopAsyncIteration as stop:
            raise StopIteration(*stop.args) from None

    def close(self) -> None:
        await_(self._agen().aclose())
