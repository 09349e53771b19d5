"""Type stubs for corolet's compiled module (greenlet's API, plus corolet's own helpers)."""

import sys
from collections.abc import Callable, Coroutine
from contextvars import Context
from types import CodeType, FrameType, TracebackType
from typing import Any, Literal, final

from typing_extensions import disjoint_base

__all__ = [
    "greenlet",
    "GreenletExit",
    "error",
    "getcurrent",
    "settrace",
    "gettrace",
    "GREENLET_USE_GC",
    "GREENLET_USE_TRACING",
    "GREENLET_USE_CONTEXT_VARS",
    "GREENLET_USE_STANDARD_THREADING",
    "CLOCKS_PER_SEC",
    "UnswitchableGreenlet",
    "_C_API",
    "stack_size",
    "_stack_stats",
    "get_pending_cleanup_count",
    "get_total_main_greenlets",
    "set_thread_local",
    "enable_optional_cleanup",
    "get_clocks_used_doing_optional_cleanup",
    "Portal",
    "PortalGreenlet",
    "PortalJob",
    "PortalTaskFactory",
    "Raised",
    "_Detach",
    "_portal_await",
    "_portal_set_main",
    "_portal_step",
    "_portal_switch",
]
if sys.version_info < (3, 13):
    __all__ += ["get_tstate_trash_delete_nesting"]

class GreenletExit(BaseException): ...
class error(Exception): ...

_TraceEvent = Literal["switch", "throw"]
_TraceFunction = Callable[[_TraceEvent, tuple[greenlet, greenlet]], object]

@disjoint_base
class greenlet:
    GreenletExit: type[GreenletExit]
    error: type[error]
    run: Callable[..., Any]
    parent: greenlet | None
    gr_context: Context | None
    __dict__: dict[str, Any]
    def __init__(
        self, run: Callable[..., Any] | None = ..., parent: greenlet | None = ...
    ) -> None: ...
    def switch(self, *args: Any, **kwargs: Any) -> Any: ...
    def throw(
        self,
        typ: type[BaseException] | BaseException = ...,
        val: object = ...,
        tb: TracebackType | None = ...,
    ) -> Any: ...
    @property
    def dead(self) -> bool: ...
    @property
    def gr_frame(self) -> FrameType | None: ...
    @property
    def _stack_saved(self) -> int: ...
    def __bool__(self) -> bool: ...
    @staticmethod
    def getcurrent() -> greenlet: ...
    @staticmethod
    def settrace(callback: _TraceFunction | None, /) -> _TraceFunction | None: ...
    @staticmethod
    def gettrace() -> _TraceFunction | None: ...

class UnswitchableGreenlet(greenlet):
    force_switch_error: bool
    force_slp_switch_error: bool

def getcurrent() -> greenlet: ...
def settrace(callback: _TraceFunction | None, /) -> _TraceFunction | None: ...
def gettrace() -> _TraceFunction | None: ...
def stack_size(size: int | None = None) -> int: ...
def _stack_stats() -> dict[str, Any]: ...
def get_pending_cleanup_count() -> int: ...
def get_total_main_greenlets() -> int: ...

if sys.version_info < (3, 13):
    def get_tstate_trash_delete_nesting() -> int: ...

def set_thread_local(key: object, value: object) -> None: ...
def enable_optional_cleanup(enabled: bool) -> None: ...
def get_clocks_used_doing_optional_cleanup() -> int | None: ...

_C_API: object  # capsule "greenlet._C_API" (see corolet.get_include())
GREENLET_USE_GC: int
GREENLET_USE_TRACING: int
GREENLET_USE_CONTEXT_VARS: int
GREENLET_USE_STANDARD_THREADING: int
CLOCKS_PER_SEC: int

# corolet.portal's native parts (src/portal.rs, src/portal_run.rs).

class PortalGreenlet(greenlet):
    __sqlalchemy_greenlet_provider__: bool

class _Detach(BaseException): ...

@final
class Portal:
    active: bool
    def __new__(
        cls,
        coro: Coroutine[Any, Any, Any] | None,
        active: bool = True,
        *,
        sync: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> Portal: ...
    def send(self, value: Any = None) -> Any: ...
    def __next__(self) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Portal: ...
    def __iter__(self) -> Portal: ...
    def detach(self) -> None: ...
    @property
    def cr_frame(self) -> FrameType | None: ...
    @property
    def cr_running(self) -> bool: ...
    @property
    def cr_suspended(self) -> bool: ...
    @property
    def cr_await(self) -> Any: ...
    @property
    def cr_code(self) -> CodeType | None: ...
    @property
    def cr_origin(self) -> Any: ...
    @property
    def __name__(self) -> str: ...
    @property
    def __qualname__(self) -> str: ...
    @property
    def coroutine(self) -> Coroutine[Any, Any, Any] | None: ...
    @property
    def greenlet(self) -> PortalGreenlet | None: ...

@final
class PortalTaskFactory:
    chained: Callable[..., Any] | None
    eager: bool
    def __new__(cls, chained: Callable[..., Any] | None, eager: bool) -> PortalTaskFactory: ...
    def __call__(self, event_loop: Any, coro: Any, **kwargs: Any) -> Any: ...

@final
class PortalJob:
    def __call__(self, value: Any) -> Any: ...

@final
class Raised:
    @property
    def error(self) -> BaseException: ...

def _portal_await(aw: Any, held: list[Any] | None = None) -> Any: ...
def _portal_set_main(f: Callable[[Any], Any]) -> None: ...
def _portal_step(held: list[Any]) -> Any: ...
def _portal_switch(driver: greenlet | None, yielded: Any, resume: Any) -> Any: ...
