"""The import-time interpreter check (``check_interpreter`` in ``src/module.rs``).

The extension refuses to initialise in an interpreter other than the one it was built for: a
different major.minor version (the layout of the interpreter state it saves and restores
differs), a debug build against a release one or the reverse. It asks the running interpreter
through ``sys.hexversion`` and ``sys.gettotalrefcount``, so a child process that changes those
before its first ``import corolet`` plays another interpreter for the real check, unweakened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

CHILD = """
import sys
{setup}
try:
    import corolet
except ImportError as exc:
    print("ImportError:", exc)
else:
    print("imported", corolet.greenlet(lambda: "switched").switch())
"""


def _import_as(setup: str) -> str:
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    code = CHILD.format(setup=textwrap.dedent(setup))
    child = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    return child.stdout.strip()


def _version(hexversion: int) -> str:
    return f"{hexversion >> 24}.{(hexversion >> 16) & 0xFF}"


def test_the_unchanged_interpreter_imports():
    assert _import_as("") == "imported switched"


@pytest.mark.parametrize("minor_step", [1, -1])
def test_another_minor_version_is_refused(minor_step):
    other = sys.hexversion + (minor_step << 16)
    out = _import_as(f"sys.hexversion = {other:#x}")
    assert out == (
        f"ImportError: corolet was built for CPython {_version(sys.hexversion)} but is imported "
        f"by CPython {_version(other)}; rebuild it for this interpreter"
    )


def test_another_major_version_is_refused():
    other = sys.hexversion + (1 << 24)
    out = _import_as(f"sys.hexversion = {other:#x}")
    assert out.startswith("ImportError: corolet was built for CPython "), out
    assert f"imported by CPython {_version(other)};" in out


@pytest.mark.parametrize("change", [0x100, 0x10, -0x1])
def test_another_micro_version_or_release_level_is_accepted(change):
    # 3.11.7 and 3.11.8 (or a release candidate of 3.11.7) share the ABI the build relies on.
    out = _import_as(f"sys.hexversion = {sys.hexversion + change:#x}")
    assert out == "imported switched"


def test_a_build_of_the_other_kind_is_refused():
    debug = hasattr(sys, "gettotalrefcount")
    setup = "del sys.gettotalrefcount" if debug else "sys.gettotalrefcount = lambda: 0"
    kinds = ("a debug build (Py_DEBUG)", "a release build (no Py_DEBUG)")
    built, running = kinds if debug else kinds[::-1]
    version = _version(sys.hexversion)
    out = _import_as(setup)
    # What was found (both builds, the interpreter's path) and what to run.
    assert out == (
        f"ImportError: corolet was built for {built} of CPython {version} but is imported by "
        f"{running} of CPython {version} ({sys.executable}); corolet reads CPython's internal "
        "state as those headers define it, so rebuild it with this interpreter: "
        f"`{sys.executable} -m pip install <corolet's source>`, or `maturin develop` in a "
        "virtualenv made with it"
    )
