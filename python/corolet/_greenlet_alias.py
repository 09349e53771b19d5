"""The module ``corolet.install()`` puts in place of ``greenlet``.

It carries the names of greenlet's own package namespace, backed by corolet.
"""

from corolet import _corolet
from corolet._corolet import (
    _C_API,
    CLOCKS_PER_SEC,  # noqa: F401 (provisional API greenlet's package exports)
    GREENLET_USE_CONTEXT_VARS,
    GREENLET_USE_GC,
    GREENLET_USE_TRACING,
    GreenletExit,
    enable_optional_cleanup,  # noqa: F401
    error,
    get_clocks_used_doing_optional_cleanup,  # noqa: F401
    getcurrent,
    gettrace,
    greenlet,
    settrace,
)

__corolet__ = True
__version__ = "3.5.6"  # the greenlet API level corolet implements
_greenlet = _corolet

__all__ = [
    "__version__",
    "_C_API",
    "GreenletExit",
    "error",
    "getcurrent",
    "greenlet",
    "gettrace",
    "settrace",
    "GREENLET_USE_CONTEXT_VARS",
    "GREENLET_USE_GC",
    "GREENLET_USE_TRACING",
]
