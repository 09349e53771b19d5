"""Why ``corolet._corolet`` cannot be found: the message for an interpreter that has no build.

Model
-----
CPython loads an extension module only under a file name ending in one of its
``importlib.machinery.EXTENSION_SUFFIXES``: ``.cpython-311-x86_64-linux-gnu.so`` for a release
3.11, with a ``d`` after the version for a debug (Py_DEBUG) build, which also accepts the release
name. So a build for another version, or a debug build under a release interpreter, is never even
opened: the import fails with a bare "No module named 'corolet._corolet'". ``explain`` turns that
into a message that says what this interpreter looks for, what lies in the package instead and
what to do. (A release build that a debug interpreter does open is refused by the compiled
module itself, which compares its headers' Py_DEBUG with the interpreter's.)
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys

_TAG = re.compile(r"\.cpython-(\d)(\d+)(d?)-")


def _describe(name: str) -> str:
    tag = _TAG.search(name)
    if tag is None:
        return name
    major, minor, debug = tag.groups()
    return f"{name} (CPython {major}.{minor}, {'debug' if debug else 'release'} build)"


def explain(package_dirs: list[str]) -> str:
    """The message for a ``corolet._corolet`` that this interpreter did not find."""
    found = sorted(
        name
        for directory in package_dirs
        for name in (os.listdir(directory) if os.path.isdir(directory) else ())
        if name.startswith("_corolet.") and name.endswith((".so", ".pyd"))
    )
    kind = "debug" if hasattr(sys, "gettotalrefcount") else "release"
    here = f"CPython {sys.version_info[0]}.{sys.version_info[1]}, {kind} build"
    wanted = " or ".join("_corolet" + s for s in importlib.machinery.EXTENSION_SUFFIXES)
    if found:
        what = "only " + ", ".join(_describe(name) for name in found) + ", which it does not load"
    else:
        what = "no compiled module at all"
    return (
        f"corolet is not built for this interpreter: {sys.executable} ({here}) loads {wanted}; "
        f"{' '.join(package_dirs)} holds {what}. Build corolet with this interpreter: "
        f"`{sys.executable} -m pip install <corolet's source>`, or `maturin develop` in a "
        f"virtualenv made with it"
    )
