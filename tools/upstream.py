"""Run greenlet's own test suite against corolet (or against greenlet itself, for comparison).

Model
-----
The tests are those of the greenlet 3.5.6 sdist, fetched from PyPI once, checked against a pinned
sha256 and cached in ``<repo>/.cache/upstream/``. Nothing from the sdist is committed.

``--impl corolet`` (the default) builds a throw-away folder holding a package literally named
``greenlet``: its ``__init__`` re-exports corolet's public names, its ``_greenlet`` module replaces
itself in ``sys.modules`` with ``corolet._corolet`` (so ``greenlet._greenlet is corolet._corolet``,
and attributes the tests set on it land on corolet), and the sdist's ``src/greenlet/tests`` sits
in it as ``greenlet.tests``. That folder goes first on ``PYTHONPATH`` of every child process, so
the scripts the tests start themselves (``fail_*.py``, the shutdown scripts) import corolet too.
Before any test runs, a probe in the child prints where ``greenlet`` and ``greenlet._greenlet``
resolve to and the run stops if that is not the shim and corolet.

``--impl greenlet`` runs the tests the greenlet wheel installs (``greenlet/tests``, which include
the compiled helper extensions) against the real greenlet 3.5.6 in ``--python``'s environment, so
corolet's results can be compared with greenlet's on each interpreter. No known-failure list
applies there: greenlet is expected to pass its own suite.

Each test file runs as ``python -m unittest -v greenlet.tests.<file>`` in its own process group
with a timeout; per-test outcomes are read from unittest's verbose output and from the headers of
its failure report. If the process dies from a signal, times out or ends without unittest's
summary, every test of that file is rerun alone so one crash hides nothing, and the tests whose
own run dies are recorded as ``crash``. A file that fails to import counts each of its tests
(found by reading its source) as an error. Upstream 3.5.6 marks no test as flaky-and-retryable
(its one "flaky" note is a ``skipIf`` for manylinux on 3.13), so nothing is retried.

Known failures live in ``tools/upstream-known-failures/<major.minor>.txt``, one test id a line
with how it is expected to fail and why: ``test_file.Class.test_name  fail: text  # reason``
(the format is ``tools/_known.py``'s; the outcome is ``fail``, ``error``, ``crash`` or
``unexpected-success``, and the optional text must occur in the failure's exception line or
traceback). The run fails on any failure, error, crash or unexpected success outside the list,
on a listed test that fails otherwise than its entry says (a crash where an assertion was
expected), and on a listed test that passes or does not exist: the list only ever shrinks by
hand. ``--update-known-failures`` rewrites the entries of the selected files from this run
(keeping reasons and expectations that still hold, new ones get "TODO: investigate") and keeps
the comment header; comments between entries are not kept.

``test_version.py`` compares ``greenlet.__version__`` with greenlet's ``setup.py``; corolet's
version is its own, so in corolet mode that file is reported as skipped without being run.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _known
from _known import Entry, KnownListError

GREENLET_VERSION = "3.5.6"
SDIST_NAME = f"greenlet-{GREENLET_VERSION}.tar.gz"
SDIST_SHA256 = "8e67c43bdfc88d5fee6db0d3e40175b362fc95fb85f0412d233b9b203c53a575"
SDIST_TESTS = f"greenlet-{GREENLET_VERSION}/src/greenlet/tests/"

TOOLS = Path(__file__).resolve().parent
CACHE_DIR = TOOLS.parent / ".cache" / "upstream"
KNOWN_DIR = TOOLS / "upstream-known-failures"
NEW_REASON = "TODO: investigate"
CRASH_LINES = 8  # of what a crashed test wrote to stderr, printed under it

NOT_RUN_WITH_COROLET = {
    "test_version.py": "it compares __version__ with greenlet's setup.py; corolet's is its own",
}

# greenlet 3.5.6's package namespace: its __all__, then the constants and provisional API.
GREENLET_ALL = (
    "__version__",
    "_C_API",
    "GreenletExit",
    "error",
    "getcurrent",
    "greenlet",
    "gettrace",
    "settrace",
)
GREENLET_EXTRA = (
    "GREENLET_USE_CONTEXT_VARS",
    "GREENLET_USE_GC",
    "GREENLET_USE_TRACING",
    "CLOCKS_PER_SEC",
    "enable_optional_cleanup",
    "get_clocks_used_doing_optional_cleanup",
)

SHIM_INIT = f'''"""Test-only shim written by corolet's tools/upstream.py: greenlet is corolet."""
import corolet as _impl

from . import _greenlet  # noqa: F401  (greenlet._greenlet is corolet._corolet)

for _name in {GREENLET_ALL + GREENLET_EXTRA!r}:
    if hasattr(_impl, _name):
        globals()[_name] = getattr(_impl, _name)

__all__ = [_name for _name in {GREENLET_ALL!r} if _name in globals()]
'''

SHIM_GREENLET = """import sys

import corolet._corolet as m

sys.modules[__name__] = m
"""

# Runs in the child before any test: where things resolve, and what is missing.
PROBE = f"""
import importlib.machinery, importlib.util, json, os, sys
shim = sys.argv[1]
info = {{"python": sys.version.split()[0], "version": "%d.%d" % sys.version_info[:2]}}
info["missing"] = [m for m in ("psutil", "objgraph") if importlib.util.find_spec(m) is None]
import greenlet, greenlet._greenlet
info["greenlet"] = greenlet.__file__
info["_greenlet"] = greenlet._greenlet.__file__
info["greenlet_version"] = getattr(greenlet, "__version__", None)
if shim:
    import corolet, corolet._corolet
    info["same_module"] = greenlet._greenlet is corolet._corolet
    names = {GREENLET_ALL + GREENLET_EXTRA!r}
    info["lacking"] = [n for n in names if not hasattr(corolet, n)]
    path = [p for p in sys.path if os.path.abspath(p or ".") != shim]
    spec = importlib.machinery.PathFinder.find_spec("greenlet", path)
    info["shadowed"] = spec.origin if spec else None
print(json.dumps(info))
"""

STATUS_WORDS = {
    "ok": "ok",
    "FAIL": "fail",
    "ERROR": "error",
    "skipped": "skipped",
    "expected failure": "expected failure",
    "unexpected success": "unexpected success",
}
# The worst outcome wins when a test reports several (subtests); at equal rank the later one,
# so the failure report's traceback replaces the bare progress word.
RANK = ["ok", "expected failure", "skipped", "unexpected success", "fail", "error", "crash"]
FAILING = {"unexpected success", "fail", "error", "crash"}
# How a known-failure entry names each failing status (one word each).
OUTCOMES = frozenset(status.replace(" ", "-") for status in FAILING)
PASSING = {"ok", "expected failure"}

DESC = (
    r"(?P<name>\w+) \((?P<path>(?:greenlet\.tests|unittest\.loader)\.[\w.]+)\)"
    r"(?: \([^\n]*?\))?"  # a subtest's parameters
)
PROGRESS_RE = re.compile(DESC + r"(?:\n[^\n]*?)? \.\.\. ")
HEADER_RE = re.compile(r"^={70}\n(?P<kind>FAIL|ERROR|UNEXPECTED SUCCESS): " + DESC + r".*$", re.M)
REPORT_START_RE = re.compile(r"^(?:={70}\n(?:FAIL|ERROR|UNEXPECTED SUCCESS): |-{70}\nRan \d)", re.M)
RAN_RE = re.compile(r"^-{70}\nRan \d+ tests? in ", re.M)
STATUS_RE = re.compile(r"(ok|FAIL|ERROR|skipped(?: .*)?|expected failure|unexpected success)")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class SetupError(Exception):
    """The environment cannot run the suite; the message says what to fix."""


@dataclass
class Result:
    id: str
    status: str
    detail: str = ""
    traceback: str = ""


@dataclass
class Child:
    returncode: int | None  # None: killed after the timeout
    stderr: str

    def crash_label(self, timeout: float) -> str | None:
        """Why this unittest run is incomplete, or None if it reached its summary."""
        if self.returncode is None:
            return f"timeout after {timeout:g}s"
        if self.returncode < 0:
            return f"killed by {signal_name(-self.returncode)}"
        if not RAN_RE.search(self.stderr):
            return f"exit {self.returncode} without a unittest summary"
        return None


@dataclass
class Setup:
    impl: str
    python: str
    version: str
    env: dict[str, str]
    cwd: Path
    tests_dir: Path
    timeout: float


@dataclass
class Verdict:
    unexpected: list[Result] = field(default_factory=list)
    known: list[Result] = field(default_factory=list)
    # Listed tests that failed otherwise than their entry says: they fail the run.
    mismatched: list[tuple[Result, Entry]] = field(default_factory=list)
    now_passing: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the sdist


def verify(path: Path, sha256: str = SDIST_SHA256) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SetupError(f"{path} has sha256 {digest}, expected {sha256}; delete it")


def sdist_url(project: str = "greenlet", filename: str = SDIST_NAME) -> str:
    """The sdist's download URL, from PyPI's JSON simple index (PEP 691)."""
    index = f"https://pypi.org/simple/{project}/"
    request = urllib.request.Request(
        index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == filename:
            return entry["url"]
    raise SetupError(f"{filename} is not on {index}")


def fetch_sdist(
    project: str = "greenlet",
    filename: str = SDIST_NAME,
    sha256: str = SDIST_SHA256,
    cache_dir: Path = CACHE_DIR,
) -> Path:
    """The cached sdist, downloaded first if absent; its sha256 is checked on every run.
    Defaults: greenlet's; tools/greenback_suite.py fetches greenback's with it."""
    path = cache_dir / filename
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")  # two runs may fetch at once
        with urllib.request.urlopen(sdist_url(project, filename), timeout=120) as response:
            partial.write_bytes(response.read())
        verify(partial, sha256)
        partial.replace(path)
    verify(path, sha256)
    return path


def extract_tests(sdist: Path, dest: Path) -> None:
    """Copy the sdist's src/greenlet/tests/ (regular files only) into dest."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            relative = member.name.removeprefix(SDIST_TESTS)
            if relative == member.name or not member.isfile() or ".." in relative.split("/"):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())


# ---------------------------------------------------------------- child processes


def run_child(args: list[str], setup: Setup) -> Child:
    """Run a child in its own process group; on timeout the whole group is killed."""
    with subprocess.Popen(
        args,
        cwd=setup.cwd,
        env=setup.env,
        stdout=subprocess.DEVNULL,  # unittest reports on stderr; tests' prints are not needed
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=setup.timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            returncode = None
    return Child(returncode, stderr)


def probe(setup: Setup, shim: str) -> dict:
    child = subprocess.run(
        [setup.python, "-c", PROBE, shim],
        cwd=setup.cwd,
        env=setup.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise SetupError(f"probe failed in {setup.python}:\n{child.stderr}")
    return json.loads(child.stdout)


def check_probe(info: dict, setup: Setup, shim: str) -> None:
    """Stop unless the child sees the intended greenlet and has the test dependencies."""
    if info["missing"]:
        missing = " ".join(info["missing"])
        raise SetupError(
            f"upstream's tests need {missing}, missing in {setup.python}; "
            f"run: {setup.python} -m pip install {missing}"
        )
    if shim and not (info["greenlet"].startswith(shim + os.sep) and info["same_module"]):
        raise SetupError(
            f"greenlet resolves to {info['greenlet']} and greenlet._greenlet to "
            f"{info['_greenlet']}, not the corolet shim in {shim}"
        )
    if not shim and info["greenlet_version"] != GREENLET_VERSION:
        raise SetupError(
            f"{setup.python} has greenlet {info['greenlet_version']}, need {GREENLET_VERSION}"
        )


def describe_probe(info: dict, setup: Setup) -> str:
    line = (
        f"[{setup.impl}] Python {info['python']} ({setup.python}): greenlet -> {info['greenlet']}"
        f"; greenlet._greenlet -> {info['_greenlet']}"
    )
    if info.get("lacking"):
        line += f"; corolet lacks {', '.join(info['lacking'])}"
    if info.get("shadowed"):
        line += f"; a real greenlet is installed but shadowed by the shim: {info['shadowed']}"
    return line


# Built against corolet's greenlet.h in place of greenlet's: its test helpers include
# "../greenlet_compiler_compat.hpp" for this one macro.
COMPILER_COMPAT = """#pragma once
#define UNUSED(x) UNUSED_##x __attribute__((__unused__))
"""

EXT_PATHS = """
import json, sysconfig, corolet
print(json.dumps({"include": sysconfig.get_paths()["include"],
                  "suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                  "greenlet_h": corolet.get_include() + "/greenlet/greenlet.h"}))
"""


def build_test_extensions(python: str, package: Path) -> None:
    """Compile greenlet's C and C++ test helpers (from the sdist) against corolet's C API."""
    out = subprocess.run([python, "-c", EXT_PATHS], capture_output=True, text=True, check=True)
    paths = json.loads(out.stdout)
    shutil.copy(paths["greenlet_h"], package / "greenlet.h")
    (package / "greenlet_compiler_compat.hpp").write_text(COMPILER_COMPAT)
    compilers = {".c": os.environ.get("CC", "gcc"), ".cpp": os.environ.get("CXX", "g++")}
    for source in sorted((package / "tests").glob("_test_extension*.c*")):
        target = source.with_name(source.stem + paths["suffix"])
        command = [compilers[source.suffix], "-shared", "-fPIC", "-O1", "-I", paths["include"]]
        build = subprocess.run(
            [*command, str(source), "-o", str(target)], capture_output=True, text=True
        )
        if build.returncode != 0:
            raise SystemExit(f"cannot build {source.name}:\n{build.stderr[-3000:]}")


def prepare(args: argparse.Namespace, root: Path) -> Setup:
    """Build the environment the children run in, probe it and print where greenlet is."""
    cwd = root / "work"
    cwd.mkdir()
    env = dict(os.environ)
    shim = ""
    if args.impl == "corolet":
        shim = str(root / "shim")
        extract_tests(fetch_sdist(), Path(shim) / "greenlet" / "tests")
        (Path(shim) / "greenlet" / "__init__.py").write_text(SHIM_INIT)
        (Path(shim) / "greenlet" / "_greenlet.py").write_text(SHIM_GREENLET)
        build_test_extensions(args.python, Path(shim) / "greenlet")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, env.get("PYTHONPATH")]))
    setup = Setup(args.impl, args.python, "", env, cwd, Path(), args.timeout)
    info = probe(setup, shim)
    check_probe(info, setup, shim)
    print(describe_probe(info, setup), flush=True)
    setup.version = info["version"]
    setup.tests_dir = Path(info["greenlet"]).parent / "tests"
    return setup


# ---------------------------------------------------------------- unittest's output


def test_id(name: str, path: str) -> str:
    full = path if path.endswith("." + name) else f"{path}.{name}"
    return full.removeprefix("greenlet.tests.")


def summarize(body: str) -> str:
    """The exception lines at the end of a traceback, on one line."""
    lines = [line for line in body.splitlines() if line.strip() and not line.startswith("---")]
    tail: list[str] = []
    for line in reversed(lines):
        if line.startswith(" ") or line.startswith("Traceback"):
            break
        tail.insert(0, line)
    return " / ".join(tail)[:300]


def record(results: dict[str, Result], new: Result) -> None:
    old = results.get(new.id)
    if old is None or RANK.index(new.status) >= RANK.index(old.status):
        results[new.id] = new


def parse_progress(text: str, results: dict[str, Result]) -> None:
    """Outcomes from the verbose progress lines: ``name (path) ... status``."""
    matches = list(PROGRESS_RE.finditer(text))
    ends = [match.start() for match in matches] + [len(text)]
    for match, end in zip(matches, ends[1:], strict=True):
        tail = text[match.end() : end]
        for line in tail.splitlines():
            word = STATUS_RE.fullmatch(line.strip())
            if word:
                said = word.group(1)
                status = STATUS_WORDS["skipped" if said.startswith("skipped") else said]
                detail = said[len("skipped ") :] if status == "skipped" else ""
                record(results, Result(test_id(match["name"], match["path"]), status, detail))
                break


def parse_report(text: str, results: dict[str, Result]) -> None:
    """Outcomes and tracebacks from the failure report's ``FAIL: name (path)`` headers."""
    headers = list(HEADER_RE.finditer(text))
    ran = RAN_RE.search(text)
    ends = [header.start() for header in headers] + [ran.start() if ran else len(text)]
    for header, end in zip(headers, ends[1:], strict=True):
        body = text[header.end() : end].strip("\n").removeprefix("-" * 70).strip("\n")
        status = {"FAIL": "fail", "ERROR": "error"}.get(header["kind"], "unexpected success")
        tid = test_id(header["name"], header["path"])
        record(results, Result(tid, status, summarize(body) or status, body))


def parse_unittest(stderr: str) -> dict[str, Result]:
    start = REPORT_START_RE.search(stderr)
    results: dict[str, Result] = {}
    parse_progress(stderr[: start.start()] if start else stderr, results)
    parse_report(stderr[start.start() :] if start else "", results)
    return results


# ---------------------------------------------------------------- running files


def list_tests(path: Path) -> list[str]:
    """Test ids of a file read from its source: test* methods of its classes, own or inherited
    from classes of the same file (enough for upstream's files, which define tests plainly)."""
    classes = {
        node.name: node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ClassDef)
    }

    def methods(cls: ast.ClassDef) -> set[str]:
        own = {
            node.name
            for node in cls.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test")
        }
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                own |= methods(classes[base.id])
        return own

    return [
        f"{path.stem}.{name}.{meth}"
        for name, cls in classes.items()
        for meth in sorted(methods(cls))
    ]


def unittest_args(setup: Setup, name: str) -> list[str]:
    return [setup.python, "-m", "unittest", "-v", f"greenlet.tests.{name}"]


def run_alone(setup: Setup, tid: str) -> Result:
    """Rerun one test in its own process, after its file's process died."""
    child = run_child(unittest_args(setup, tid), setup)
    label = child.crash_label(setup.timeout)
    if label:
        return Result(tid, "crash", label, child.stderr[-4000:])
    found = parse_unittest(child.stderr).get(tid)
    return found or Result(tid, "error", "no outcome reported", child.stderr[-4000:])


def import_failure(results: dict[str, Result]) -> Result | None:
    return next((r for r in results.values() if r.id.startswith("unittest.loader.")), None)


def run_file(setup: Setup, path: Path) -> tuple[dict[str, Result], float]:
    """All outcomes of one test file, and the seconds it took."""
    start = time.monotonic()
    if setup.impl == "corolet" and path.name in NOT_RUN_WITH_COROLET:
        reason = NOT_RUN_WITH_COROLET[path.name]
        return {t: Result(t, "skipped", f"not run: {reason}") for t in list_tests(path)}, 0.0
    child = run_child(unittest_args(setup, path.stem), setup)
    results = parse_unittest(child.stderr)
    failed_import = import_failure(results)
    if failed_import:
        detail = f"module import failed: {failed_import.detail}"
        tests = list_tests(path)
        results = {t: Result(t, "error", detail, failed_import.traceback) for t in tests}
    elif child.crash_label(setup.timeout):
        print(f"  {path.name}: {child.crash_label(setup.timeout)}; rerunning each test alone")
        results = {tid: run_alone(setup, tid) for tid in list_tests(path)}
    for tid in list_tests(path):
        results.setdefault(tid, Result(tid, "error", "no outcome in unittest's output"))
    return results, time.monotonic() - start


# ---------------------------------------------------------------- known failures


def known_path(version: str) -> Path:
    return KNOWN_DIR / f"{version}.txt"


def load_known(path: Path) -> dict[str, Entry]:
    try:
        return _known.load(path, OUTCOMES)
    except KnownListError as error:
        raise SetupError(str(error)) from None


def write_known(path: Path, known: dict[str, Entry]) -> None:
    """Rewrite the entries, keeping the comment header (every line before the first entry)."""
    default = [f"# Upstream tests corolet fails on Python {path.stem}. See tools/upstream.py.", ""]
    _known.write(path, known, default)


def outcome_word(result: Result) -> str:
    return result.status.replace(" ", "-")


def report_text(result: Result) -> str:
    """What an entry's text is looked for in: the exception line and the traceback."""
    return f"{result.detail}\n{result.traceback}"


def file_of(tid: str) -> str:
    return tid.split(".")[0] + ".py"


def judge(results: dict[str, Result], known: dict[str, Entry], files: set[str]) -> Verdict:
    verdict = Verdict()
    for result in results.values():
        if result.status in FAILING:
            entry = known.get(result.id)
            if entry is None:
                verdict.unexpected.append(result)
            elif entry.expects(outcome_word(result), report_text(result)):
                verdict.known.append(result)
            else:
                verdict.mismatched.append((result, entry))
        elif result.status in PASSING and result.id in known:
            verdict.now_passing.append(result.id)
    verdict.absent = [t for t in known if file_of(t) in files and t not in results]
    return verdict


def fails_the_run(verdict: Verdict) -> bool:
    return bool(verdict.unexpected or verdict.mismatched or verdict.now_passing or verdict.absent)


def updated_known(
    results: dict[str, Result], known: dict[str, Entry], files: set[str]
) -> dict[str, Entry]:
    """The list after this run: unselected files' and skipped tests' entries stay as they were."""

    def untouched(tid: str) -> bool:
        return file_of(tid) not in files or (tid in results and results[tid].status == "skipped")

    kept = {tid: entry for tid, entry in known.items() if untouched(tid)}
    for result in results.values():
        if result.status in FAILING:
            old = known.get(result.id)
            if old is not None and old.expects(outcome_word(result), report_text(result)):
                kept[result.id] = old
            else:
                reason = old.reason if old is not None else NEW_REASON
                kept[result.id] = Entry(result.id, (outcome_word(result),), reason=reason)
    return kept


# ---------------------------------------------------------------- report


def table_row(name: str, results: list[Result], known: dict[str, Entry], seconds: float) -> list:
    def count(statuses: set[str], listed: bool = False) -> int:
        return sum(r.status in statuses and (r.id in known) == listed for r in results)

    return [
        name,
        sum(r.status in PASSING for r in results),
        count({"fail", "unexpected success"}),
        count({"error"}),
        sum(r.status == "skipped" for r in results),
        count({"crash"}),
        count(FAILING, listed=True),
        f"{seconds:.1f}",
    ]


def print_table(rows: list[list]) -> None:
    head = ["file", "passed", "failed", "errors", "skipped", "crashed", "known-failing", "seconds"]
    total = ["total"] + [sum(row[i] for row in rows) for i in range(1, 7)]
    total.append(f"{sum(float(row[7]) for row in rows):.1f}")
    widths = [max(len(str(row[i])) for row in [head, total, *rows]) for i in range(len(head))]
    for row in [head, *rows, total]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def print_result(result: Result) -> None:
    print(f"{result.status.upper()}: {result.id}: {result.detail}")
    if result.status == "crash":
        own_output = result.traceback.rpartition(" ... ")[2]
        for line in own_output.strip().splitlines()[:CRASH_LINES]:
            print(f"    {line}")


def print_verdict(verdict: Verdict, known: dict[str, Entry]) -> None:
    for result in sorted(verdict.unexpected, key=lambda r: r.id):
        print_result(result)
    for result, entry in sorted(verdict.mismatched, key=lambda pair: pair[0].id):
        print_result(result)
        print(f"    listed, but as failing with {entry.expectation}  # {entry.reason}")
    for result in sorted(verdict.known, key=lambda r: r.id):
        print(f"known {result.status}: {result.id}  # {known[result.id].reason}")
    for tid in sorted(verdict.now_passing):
        print(f"now passes, remove it from the list: {tid}")
    for tid in sorted(verdict.absent):
        print(f"listed but not found in this run, fix or remove it: {tid}")


def write_json(
    path: Path, setup: Setup, results: dict[str, Result], known: dict[str, Entry]
) -> None:
    def reason(tid: str) -> str | None:
        return known[tid].reason if tid in known else None

    tests = [dict(asdict(r), known_reason=reason(r.id)) for r in results.values()]
    data = {"impl": setup.impl, "python": setup.python, "version": setup.version, "tests": tests}
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["corolet", "greenlet"], default="corolet")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the tests")
    parser.add_argument("--files", help="comma-separated test files, e.g. test_greenlet.py")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per file (and test)")
    parser.add_argument("--json", type=Path, help="write every test's outcome here")
    parser.add_argument(
        "--update-known-failures",
        action="store_true",
        help="rewrite this interpreter's known-failure list from this run (developer helper)",
    )
    args = parser.parse_args(argv)
    found = shutil.which(args.python)
    if not found:
        parser.error(f"no such interpreter: {args.python}")
    args.python = os.path.abspath(found)  # the children run elsewhere; keep venv symlinks
    if args.update_known_failures and args.impl != "corolet":
        parser.error("--update-known-failures only applies to --impl corolet")
    return args


def select_files(tests_dir: Path, wanted: str | None) -> list[Path]:
    available = sorted(tests_dir.glob("test_*.py"))
    if not wanted:
        return available
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = sorted(set(names) - {path.name for path in available})
    if unknown:
        raise SetupError(f"no such upstream test file: {', '.join(unknown)}")
    return [path for path in available if path.name in names]


def run(args: argparse.Namespace, root: Path) -> int:
    setup = prepare(args, root)
    files = select_files(setup.tests_dir, args.files)
    known = load_known(known_path(setup.version)) if setup.impl == "corolet" else {}
    results: dict[str, Result] = {}
    rows = []
    for path in files:
        found, seconds = run_file(setup, path)
        line = f"  {path.name}: {len(found)} tests, {seconds:.1f}s"
        if setup.impl == "corolet" and path.name in NOT_RUN_WITH_COROLET:
            line += f", not run: {NOT_RUN_WITH_COROLET[path.name]}"
        print(line, flush=True)
        results.update(found)
        rows.append(table_row(path.name, list(found.values()), known, seconds))
    print_table(rows)
    selected = {path.name for path in files}
    if args.json:
        write_json(args.json, setup, results, known)
    if args.update_known_failures:
        write_known(known_path(setup.version), updated_known(results, known, selected))
        print(f"wrote {known_path(setup.version)}")
    verdict = judge(results, known, selected)
    print_verdict(verdict, known)
    passed = sum(r.status in PASSING for r in results.values())
    skipped = sum(r.status == "skipped" for r in results.values())
    failed = len(verdict.unexpected) + len(verdict.mismatched)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if fails_the_run(verdict) and not args.update_known_failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="corolet-upstream-"))
    try:
        return run(args, root)
    except SetupError as error:
        print(f"upstream.py: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
