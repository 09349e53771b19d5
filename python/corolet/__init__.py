"""corolet: greenlet for CPython on native stacks.

``import corolet`` is a complete stand-in for ``import greenlet``: the same ``greenlet`` type,
functions, exceptions and error messages. ``corolet.install()`` makes ``import greenlet``
resolve to corolet for libraries that import greenlet themselves.
"""

from __future__ import annotations

import sys

from corolet import _corolet
from corolet._corolet import (
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

__version__ = "0.1.0"

__all__ = [
    "CLOCKS_PER_SEC",
    "GREENLET_USE_CONTEXT_VARS",
    "GREENLET_USE_GC",
    "GREENLET_USE_STANDARD_THREADING",
    "GREENLET_USE_TRACING",
    "GreenletExit",
    "__version__",
    "enable_optional_cleanup",
    "error",
    "get_clocks_used_doing_optional_cleanup",
    "getcurrent",
    "gettrace",
    "greenlet",
    "install",
    "settrace",
    "stack_size",
]


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
