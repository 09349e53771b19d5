"""Run greenback 1.3's own test suite against corolet.portal, on asyncio and Trio.

Model
-----
The tests are those of the greenback 1.3.0 sdist, fetched from PyPI once with
``upstream.fetch_sdist`` (pinned sha256, cached in ``<repo>/.cache/greenback/``; nothing from
it is committed). A throw-away folder gets a package literally named ``greenback`` holding the
sdist's ``greenback/_tests`` and an ``__init__`` that calls ``corolet.install()`` (the tests
``import greenlet``), puts ``corolet.portal`` in ``sys.modules`` as ``greenback._impl`` and
``greenback._util`` and forwards every attribute of ``greenback`` to ``corolet.portal`` (the
package itself must stay a folder so that ``greenback._tests`` imports). None of greenback's
own code is present.

greenback's conftest runs each ``library``-parametrised test once under asyncio and once under
Trio (through anyio). On asyncio, corolet.portal gives a task a portal only if the task was
created through its task factory (no ctypes), so a plugin of this runner makes every new
asyncio loop ``corolet.portal.new_event_loop(eager=False)``: each task can get a portal on
request, greenback's semantics, with ``ensure_portal()`` as the trigger.

Before the tests run, a probe in the child checks that ``greenback._impl`` is
``corolet.portal``, that ``greenlet`` is corolet, and that no real greenback or greenlet is
imported. The verdict reads pytest's JUnit XML: any failure or error fails the run, and so does
a test that did not run on both libraries when greenback's conftest parametrises it.

Tests listed in ``tools/greenback-not-applicable.txt`` (``test_file.py::test_name  # reason``)
test greenback's ctypes internals, which corolet.portal does not have; they are deselected,
printed with their reason, and a listed test that no longer exists fails the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import upstream

GREENBACK_VERSION = "1.3.0"
SDIST_NAME = f"greenback-{GREENBACK_VERSION}.tar.gz"
SDIST_SHA256 = "d1441f542ec9c6efb32a9250dd954a5b1cc1eb789294c19b1eb747f49cab818c"
SDIST_TESTS = f"greenback-{GREENBACK_VERSION}/greenback/_tests/"

TOOLS = Path(__file__).resolve().parent
CACHE_DIR = TOOLS.parent / ".cache" / "greenback"
NOT_APPLICABLE = TOOLS / "greenback-not-applicable.txt"

SHIM_INIT = '''"""Test-only shim of corolet's tools/greenback_suite.py: greenback is corolet.portal.

This package only holds greenback's tests (greenback._tests); every attribute is
corolet.portal's, and greenback._impl and greenback._util are corolet.portal itself.
"""
import sys

import corolet

corolet.install()  # the tests import greenlet

import corolet.portal as _portal  # noqa: E402

sys.modules[__name__ + "._impl"] = _portal
sys.modules[__name__ + "._util"] = _portal
_impl = _util = _portal
__version__ = "corolet.portal"
__all__ = list(_portal.__all__)
globals().update({name: getattr(_portal, name) for name in __all__})


def __getattr__(name):
    return getattr(_portal, name)
'''

# Loaded with -p: every asyncio loop made from now on hands out portals on request.
PLUGIN = '''"""corolet's greenback-suite plugin: asyncio loops with corolet.portal's factory."""
import asyncio
import warnings

import corolet.portal

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # policies are deprecated in 3.14
    _base = type(asyncio.get_event_loop_policy())

    class PortalPolicy(_base):
        def new_event_loop(self):
            loop = super().new_event_loop()
            corolet.portal.install(loop, eager=False)
            return loop

    asyncio.set_event_loop_policy(PortalPolicy())
'''

PROBE = """
import importlib.util, json, sys
import greenback, greenback._impl, greenback._util, greenlet, corolet.portal
info = {
    "python": sys.version.split()[0],
    "impl_is_portal": greenback._impl is corolet.portal and greenback._util is corolet.portal,
    "greenback": greenback.__file__,
    "greenlet_is_corolet": bool(getattr(greenlet, "__corolet__", False)),
    "ctypes_free": "ctypes" not in sys.modules,
    "missing": [m for m in ("trio", "anyio", "sniffio", "pytest")
                if importlib.util.find_spec(m) is None],
}
print(json.dumps(info))
"""


def load_not_applicable() -> dict[str, str]:
    listed: dict[str, str] = {}
    for line in NOT_APPLICABLE.read_text().splitlines():
        tid, _, reason = line.partition("#")
        if tid.strip():
            if not reason.strip():
                raise upstream.SetupError(f"{NOT_APPLICABLE}: {tid.strip()} has no reason")
            listed[tid.strip()] = reason.strip()
    return listed


def extract_tests(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            relative = member.name.removeprefix(SDIST_TESTS)
            if relative == member.name or not member.isfile() or ".." in relative.split("/"):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())


def prepare(root: Path) -> Path:
    shim = root / "shim"
    package = shim / "greenback"
    sdist = upstream.fetch_sdist("greenback", SDIST_NAME, SDIST_SHA256, CACHE_DIR)
    extract_tests(sdist, package / "_tests")
    (package / "__init__.py").write_text(SHIM_INIT)
    (shim / "corolet_greenback_plugin.py").write_text(PLUGIN)
    return shim


def child_env(shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def probe(python: str, shim: Path) -> None:
    import json

    out = subprocess.run(
        [python, "-c", PROBE], cwd=shim, env=child_env(shim), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise upstream.SetupError(f"probe failed in {python}:\n{out.stderr}")
    info = json.loads(out.stdout)
    if info["missing"]:
        missing = " ".join(info["missing"])
        raise upstream.SetupError(
            f"greenback's tests need {missing}, missing in {python}; "
            "run: pip install -r tests/requirements.txt"
        )
    if not (info["impl_is_portal"] and info["greenlet_is_corolet"]):
        raise upstream.SetupError(f"greenback does not resolve to corolet.portal: {info}")
    if not info["greenback"].startswith(str(shim) + os.sep):
        raise upstream.SetupError(f"a real greenback shadows the shim: {info['greenback']}")
    if not info["ctypes_free"]:
        raise upstream.SetupError("importing corolet.portal imported ctypes")
    print(
        f"[greenback {GREENBACK_VERSION} suite] Python {info['python']} ({python}): "
        f"greenback, greenback._impl, greenback._util -> corolet.portal; greenlet -> corolet",
        flush=True,
    )


def read_junit(path: Path) -> dict[str, tuple[str, str]]:
    """test id (file.py::name[param]) -> (outcome, message)."""
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rpartition(".")[2]
        tid = f"{module}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome, message = kind, node.get("message", "") or (node.text or "")[:500]
                break
        results[tid] = outcome, message
    return results


def defined(tests_dir: Path, tid: str) -> bool:
    """Whether test_file.py::test_name is a test function of the extracted suite."""
    filename, _, name = tid.partition("::")
    path = tests_dir / filename
    return path.exists() and f"def {base_id(name)}(" in path.read_text()


def base_id(tid: str) -> str:
    return tid.partition("[")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs them")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the run")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k)")
    args = parser.parse_args(argv)
    python = os.path.abspath(shutil.which(args.python) or args.python)
    root = Path(tempfile.mkdtemp(prefix="corolet-greenback-"))
    try:
        listed = load_not_applicable()
        shim = prepare(root)
        absent = [tid for tid in listed if not defined(shim / "greenback" / "_tests", tid)]
        if absent:
            raise upstream.SetupError(
                f"listed in {NOT_APPLICABLE.name} but not in the suite: {', '.join(absent)}"
            )
        probe(python, shim)
        junit = root / "junit.xml"
        deselect = [f"--deselect=greenback/_tests/{tid}" for tid in listed]
        command = [
            python, "-m", "pytest", "-p", "corolet_greenback_plugin", "-p", "no:cacheprovider",
            "-q", "-rfE", f"--junitxml={junit}", *deselect, *args.pytest_args, "greenback/_tests",
        ]  # fmt: skip
        child = subprocess.run(command, cwd=shim, env=child_env(shim), timeout=args.timeout)
        if not junit.exists():
            raise upstream.SetupError(f"pytest exited {child.returncode} without a report")
        results = read_junit(junit)
        return judge(results, listed, child.returncode, bool(args.pytest_args))
    except upstream.SetupError as error:
        print(f"greenback_suite.py: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


def judge(
    results: dict[str, tuple[str, str]], listed: dict[str, str], returncode: int, partial: bool
) -> int:
    bad = {tid: r for tid, r in results.items() if r[0] in ("failure", "error")}
    for tid, (outcome, message) in sorted(bad.items()):
        print(f"{outcome.upper()}: {tid}: {message.splitlines()[0] if message else ''}")
    skipped = {tid: r for tid, r in results.items() if r[0] == "skipped"}
    for tid, (_, message) in sorted(skipped.items()):
        print(f"skipped by greenback's suite itself: {tid}: {message}")
    for tid, reason in sorted(listed.items()):
        print(f"not applicable (deselected): {tid}  # {reason}")
    ran = {base_id(tid) for tid in results}
    stale = [tid for tid in listed if tid in ran]
    for tid in stale:
        print(f"listed as not applicable but it ran: {tid}")
    libraries = {
        lib: sum(tid.endswith(f"[{lib}]") for tid in results if results[tid][0] == "passed")
        for lib in ("asyncio", "trio")
    }
    passed = sum(r[0] == "passed" for r in results.values())
    print(
        f"{passed} passed ({libraries['asyncio']} on asyncio, {libraries['trio']} on Trio by "
        f"the library parameter; the rest on Trio), {len(bad)} failed, {len(skipped)} skipped, "
        f"{len(listed)} not applicable"
    )
    if not partial and (not libraries["asyncio"] or not libraries["trio"]):
        print("a library did not run: anyio or trio missing?")
        return 1
    if bad or stale or (returncode not in (0, 5) and not bad):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
