"""Importing corolet where the compiled module does not fit the interpreter: the message says
what was found and what to do, whether the interpreter never opens the build (another version,
or a debug build under a release interpreter: ``corolet._buildcheck``) or opens and refuses it
(a release build under a debug interpreter: the compiled module's own check)."""

from __future__ import annotations

import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

PACKAGE = Path(corolet.__file__).parent
DEBUG = hasattr(sys, "gettotalrefcount")


def _import_from(tmp_path: Path, extension: Path | None, fake_name: str | None = None):
    """Imports a copy of the corolet package holding only `extension` (or an empty file named
    `fake_name`) as its compiled module, in a fresh interpreter."""
    copy = tmp_path / "corolet"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("_corolet*.so", "__pycache__"))
    if extension is not None:
        shutil.copy(extension, copy / extension.name)
    if fake_name is not None:
        (copy / fake_name).write_bytes(b"")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import corolet"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_an_interpreter_with_no_build_it_loads_is_told_what_there_is_and_what_to_do(tmp_path):
    proc = _import_from(tmp_path, None, "_corolet.cpython-399-x86_64-linux-gnu.so")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: corolet is not built for this interpreter: ")
    assert sys.executable in last
    assert "_corolet.cpython-399-x86_64-linux-gnu.so (CPython 3.99, release build)" in last
    assert "_corolet" + importlib.machinery.EXTENSION_SUFFIXES[0] in last
    assert f"`{sys.executable} -m pip install <corolet's source>`" in last
    assert "cannot import name '_corolet' from partially initialized module" in proc.stderr


def test_a_package_with_no_build_at_all_says_so(tmp_path):
    proc = _import_from(tmp_path, None)
    assert proc.returncode == 1
    assert "holds no compiled module at all. Build corolet with this interpreter" in proc.stderr


def _release_build_beside_this_one() -> Path | None:
    tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}-"
    found = sorted(PACKAGE.glob(f"_corolet.{tag}*.so"))
    return found[0] if found else None


@pytest.mark.skipif(not DEBUG, reason="a release build under a debug interpreter needs one")
def test_a_debug_interpreter_refuses_a_release_build_saying_what_it_found(tmp_path):
    release = _release_build_beside_this_one()
    if release is None:
        pytest.skip(
            "no release build of corolet for this version beside the debug one (make test on "
            "the release interpreter builds one; make test-all runs it first)"
        )
    proc = _import_from(tmp_path, release)
    assert proc.returncode == 1
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (
        f"ImportError: corolet was built for a release build (no Py_DEBUG) of CPython {v} but "
        f"is imported by a debug build (Py_DEBUG) of CPython {v} ({sys.executable})"
    ) in proc.stderr
    assert f"rebuild it with this interpreter: `{sys.executable} -m pip install" in proc.stderr
