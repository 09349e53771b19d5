"""corolet: greenlet for CPython on native stacks.

``import corolet`` is a complete stand-in for ``import greenlet``: the same ``greenlet`` type,
functions, exceptions and error messages. ``corolet.install()`` makes ``import greenlet``
resolve to corolet for libraries that import greenlet themselves.

The sync-to-async bridge lives in ``corolet.bridge`` (``greenlet_spawn``, ``await_only``,
``await_``, ``in_greenlet``, ``MissingGreenlet``). Those names are also attributes of this
package, imported on first use, so that ``import corolet`` does not import asyncio; they are not
in ``__all__``, which stays greenlet's namespace.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

try:
    from corolet import _corolet
except ImportError as _exc:
    import importlib.util

    if importlib.util.find_spec("corolet._corolet") is not None:
        raise  # found and refused (its own message), or broken
    from corolet._buildcheck import explain as _explain

    # No build this interpreter loads: say what there is instead and what to do.
    raise ImportError(_explain(list(__path__))) from _exc
from corolet._corolet import (
    _C_API,
    CLOCKS_PER_SEC,
    GREENLET_USE_CONTEXT_VARS,
    GREENLET_USE_GC,
    GREENLET_USE_STANDARD_THREADING,
    GREENLET_USE_TRACING,
    GreenletExit,
    enable_optional_cleanup,
    error,
    get_clocks_used_doing_optional_cleanup,
    getcurrent,
    gettrace,
    greenlet,
    settrace,
    stack_size,
)

if TYPE_CHECKING:
    # What __getattr__ below provides at run time, spelled out for type checkers.
    from corolet.bridge import MissingGreenlet as MissingGreenlet
    from corolet.bridge import await_ as await_
    from corolet.bridge import await_only as await_only
    from corolet.bridge import greenlet_spawn as greenlet_spawn
    from corolet.bridge import in_greenlet as in_greenlet

__version__ = "0.1.0"

__all__ = [
    "CLOCKS_PER_SEC",
    "GREENLET_USE_CONTEXT_VARS",
    "GREENLET_USE_GC",
    "GREENLET_USE_STANDARD_THREADING",
    "GREENLET_USE_TRACING",
    "GreenletExit",
    "__version__",
    "_C_API",
    "enable_optional_cleanup",
    "get_include",
    "error",
    "get_clocks_used_doing_optional_cleanup",
    "getcurrent",
    "gettrace",
    "greenlet",
    "install",
    "settrace",
    "stack_size",
]


_BRIDGE_NAMES = frozenset(
    ("MissingGreenlet", "await_", "await_only", "greenlet_spawn", "in_greenlet")
)


def __getattr__(name: str) -> Any:
    # Only reached for names the module lacks: the bridge's are imported on first use.
    if name in _BRIDGE_NAMES:
        from corolet import bridge

        return getattr(bridge, name)
    raise AttributeError(f"module 'corolet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _BRIDGE_NAMES)


def get_include() -> str:
    """The directory holding ``greenlet/greenlet.h``, for C extensions built against
    greenlet's C API (add it to the compiler's include path)."""
    import os

    return os.path.join(os.path.dirname(__file__), "include")


def install() -> None:
    """Make ``import greenlet`` and ``import greenlet._greenlet`` resolve to corolet.

    Call it before importing libraries that use greenlet (SQLAlchemy, gevent's pure-Python
    parts). It is idempotent. It refuses if the real greenlet is already imported in this
    process, since two greenlet implementations cannot share a thread.
    """
    existing = sys.modules.get("greenlet")
    if existing is not None:
        if getattr(existing, "__corolet__", False):
            return
        raise RuntimeError(
            "corolet.install(): the real greenlet package was already imported "
            f"(from {getattr(existing, '__file__', '?')}); call corolet.install() before "
            "anything imports greenlet"
        )
    from corolet import _greenlet_alias

    sys.modules["greenlet"] = _greenlet_alias
    sys.modules["greenlet._greenlet"] = _corolet
