"""Run gevent's own test suite against corolet, compared with gevent on the real greenlet.

Model
-----
The tests are those gevent 26.9.0's binary wheel ships as ``gevent.tests``. Per interpreter the
runner keeps two virtualenvs under the repository, made once and stamped:

- ``.venv-gevent-corolet-<major.minor>``: gevent 26.9.0 and its test dependencies, the real
  greenlet uninstalled after pip pulled it in, corolet installed from a wheel that maturin builds
  from this checkout, and ``corolet-install.pth`` in site-packages, which every interpreter of
  the venv runs when it starts: it puts a finder on ``sys.meta_path`` that runs
  ``import corolet; corolet.install()`` at the first ``import greenlet``, so the test files, and
  every child interpreter they start themselves, get corolet as ``greenlet`` (and an interpreter
  that never imports greenlet does not pay corolet's import, as with greenlet). The wheel is
  rebuilt on every run (cargo makes that a no-op when nothing changed) and reinstalled when any of
  its files differs from the installed copy, so a rebuilt corolet is always the one tested.
- ``.venv-gevent-greenlet-<major.minor>``: gevent 26.9.0 on greenlet 3.5.6, the baseline.

Before anything runs, a probe in each venv prints which files ``greenlet`` and
``greenlet._greenlet`` resolve to; the run stops if the corolet venv has a real greenlet installed
or importable, or if gevent's greenlets are not corolet's there.

Gevent 26.9.0 publishes binary wheels per interpreter; gevent is never built from source here. An
interpreter without a wheel (``pip download --only-binary :all:``) is skipped with the reason.

The files and how each is started come from gevent's own runner, imported in the venv
(``gevent.testing.testrunner``): its environment set-up (``PYTHONDEVMODE``, faulthandler, warning
filters), its discovery with test combining off (one ``python -u -m gevent.tests.<file>`` per
file), the files its ``known_failures.py`` ignores in this configuration, its per-file options and
its run-alone list. Resources are gevent's defaults less ``network`` (``GEVENTTEST_USE_RESOURCES``).
``test___monkey_patching.py`` runs CPython's own test suite monkey-patched, from a gevent source
checkout; the wheel has none, so gevent's discovery yields no command for it.

Each file runs in its own process group, in a network namespace of its own with only loopback
(``unshare -n``, then ``ip link set lo up``: root is needed), so no test reaches the network and
files that bind the same port cannot collide. Two run at a time, the run-alone files afterwards one
by one, each with gevent's per-file timeout (100 s unless it says otherwise; ``--timeout``
overrides). A file passes when it exits 0 (or 5 on 3.12.1+ when all its tests skipped, as gevent's
runner allows); it crashed when a signal ended it, timed out when it had to be killed. Test-case
counts come from unittest's closing lines, and the failing test cases and tracebacks from its
report. A file that gevent marks flaky in this configuration, or whose failures are all gevent's
``FlakyAssertionError``, is run once more and counts by its second run (unless the known-failure
list below expects it to fail).

The whole suite runs on corolet; then only the files that did not pass there run on greenlet
(``--full-baseline``: all of them), which classifies each: failing on both is this machine's reason
or gevent's own, passing on greenlet only is a corolet regression, once it happens twice: such a
file runs once more on corolet, since on a loaded 2-core machine gevent's timing-bound tests (2 s a
test unless a class says otherwise) fail now and then on either (a second run that passes is
printed with the first run's failures). A file failing on both only in test cases gevent marks
flaky (timing assertions that gevent's own CI turns into skips) is reported, and tolerated.

Known failures live in ``tools/gevent-known-failures/<major.minor>.txt``, one file name a line with
how it is expected to fail and why, in ``tools/_known.py``'s format:
``test__file.py  failed: text  # reason``, the outcome ``failed``, ``timeout`` or ``crash`` (or
several, ``failed|timeout``), the optional text one that must occur in the file's failure (its
exit line or a failing test case's id or exception line). The run fails on a crash or timeout of
a corolet run, on a file that passes on greenlet but not on corolet, and on a file failing on
both, unless the file is listed with that outcome; a listed file that fails otherwise than its
entry says (a crash where failing tests were expected), that passes on corolet, or that gevent no
longer runs here, also fails the run: the list only shrinks by hand. An entry whose expectation
starts with ``flaky`` (``flaky timeout``) names a file that fails now and then on greenlet too:
when it fails or times out it runs once more, and failing twice as its entry says is reported
without failing the run; it may pass. Where a listed file fails on both, a test case that fails
on corolet only (and is not one gevent marks flaky) still fails the run.
``--update-known-failures`` rewrites the entries of the selected files from a run
(keeping reasons; new ones get "TODO: investigate") below the comment header.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _known
from _known import Entry, KnownListError

GEVENT_VERSION = "26.9.0"
GREENLET_VERSION = "3.5.6"
# gevent's "test" extra, less coverage (only for its coverage runs); dnspython is < 3.10 only.
TEST_DEPS = ("psutil>=6.0.0", "objgraph", "requests")
RESOURCES = "-network"  # gevent's default resources, network off
JOBS = 2
IMPLS = ("corolet", "greenlet")

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
CACHE_DIR = REPO / ".cache" / "gevent"
KNOWN_DIR = TOOLS / "gevent-known-failures"
NEW_REASON = "TODO: investigate"
# How a known-failure entry may expect a file to fail, and the modifier of one that may pass.
OUTCOMES = frozenset({"failed", "timeout", "crash"})
FLAKY = "flaky"
PTH_NAME = "corolet-install.pth"
HOOK_NAME = "_corolet_install_hook"
PTH_TEXT = f"import {HOOK_NAME}\n"
# Imported by the .pth when any interpreter of the corolet venv starts. Importing corolet there
# and then would cost every interpreter corolet's import (about 16 ms, mostly `typing`), which
# interpreters of the greenlet venv do not pay unless they import greenlet: gevent's tests that
# time a batch of child interpreters (test__monkey_fork_atomic: 16 in 2 s) failed on corolet for
# that alone. So corolet.install() runs at the first `import greenlet`, as greenlet's own import
# would.
HOOK_TEXT = f'''"""Written by corolet's tools/gevent_suite.py: the first `import greenlet` in any
interpreter of this venv runs corolet.install(), so greenlet is corolet."""
import sys


class _Existing:
    """Hands the import system the module corolet.install() put in sys.modules."""

    @staticmethod
    def create_module(spec):
        return sys.modules[spec.name]

    @staticmethod
    def exec_module(module):
        pass


class CoroletInstaller:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "greenlet":
            return None
        sys.meta_path.remove(CoroletInstaller)
        import importlib.machinery

        import corolet

        corolet.install()
        return importlib.machinery.ModuleSpec(name, _Existing, origin="{HOOK_NAME}")


sys.meta_path.insert(0, CoroletInstaller)
'''
OUTPUT_LINES = 12  # of a failing file's report, printed under it
# Environment variables of the runner's own process that must not reach the venvs' interpreters.
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")

# Runs in a venv before anything else: where greenlet resolves and whether it is the right one.
PROBE = """
import importlib.machinery, importlib.metadata, json, sys, sysconfig
info = {"python": sys.version.split()[0], "version": "%d.%d" % sys.version_info[:2]}
info["purelib"] = sysconfig.get_paths()["purelib"]
try:
    info["greenlet_dist"] = importlib.metadata.version("greenlet")
except importlib.metadata.PackageNotFoundError:
    info["greenlet_dist"] = None
spec = importlib.machinery.PathFinder.find_spec("greenlet", sys.path)
info["greenlet_on_path"] = spec.origin if spec else None
import greenlet, greenlet._greenlet
info["greenlet"] = greenlet.__file__
info["_greenlet"] = greenlet._greenlet.__file__
info["greenlet_version"] = getattr(greenlet, "__version__", None)
info["is_corolet"] = bool(getattr(greenlet, "__corolet__", False))
import gevent
info["gevent"] = gevent.__version__
info["gevent_file"] = gevent.__file__
info["gevent_greenlet_base"] = [f"{c.__module__}.{c.__qualname__}" for c in gevent.Greenlet.__mro__]
info["gevent_uses_it"] = issubclass(gevent.Greenlet, greenlet.greenlet)
if info["is_corolet"]:
    import corolet._corolet
    info["same_module"] = greenlet._greenlet is corolet._corolet
print(json.dumps(info))
"""

# Runs in a venv: gevent's own runner set-up and discovery, written as JSON to argv[1].
ENUMERATE = """
import json, os, sys
out, resources, wanted = sys.argv[1], sys.argv[2], [t for t in sys.argv[3].split(",") if t]
from gevent.testing import testrunner
from gevent.testing.resources import parse_resources, setup_resources, unparse_resources
use = parse_resources(resources)
os.environ["GEVENTTEST_USE_RESOURCES"] = unparse_resources(use)
setup_resources(use)
os.environ.setdefault("GEVENTTEST_QUIET", "True")
testrunner._setup_environ(debug=False)
package_dir = testrunner._dir_from_package_name("gevent.tests")
os.environ["PYTHONPATH"] = os.environ.get("PYTHONPATH", "") + os.pathsep + package_dir
config = {}
with open(os.path.join(package_dir, "known_failures.py")) as f:
    exec(f.read(), config)
names = os.listdir(package_dir)
all_files = sorted(n for n in names if n.startswith("test_") and n.endswith(".py"))
discovery = testrunner.Discovery(
    wanted or None, ignored=config["IGNORED_TESTS"], package="gevent.tests",
    config=config, allow_combine=False,
)
commands = [{"cmd": cmd, "options": options} for cmd, options in discovery]
reasons = {}
for name, value in vars(config["Definitions"]).items():
    for action in getattr(value, "_conds", None) or [value]:
        if hasattr(action, "reason") and action.when:
            reasons[name + ".py"] = " ".join(action.reason.split())
json.dump({
    "env": dict(os.environ), "commands": commands, "files": all_files,
    "ignored": config["IGNORED_TESTS"], "failing": config["FAILING_TESTS"],
    "run_alone": config["RUN_ALONE"], "reasons": reasons, "package_dir": package_dir,
    "python": list(sys.version_info[:3]),
}, open(out, "w"))
"""

RAN_RE = re.compile(r"^Ran (\d+) tests? in [\d.]+s$", re.M)
CLOSE_RE = re.compile(r"^(OK|FAILED)(?: \((?P<counts>[^)]*)\))?$", re.M)
HEADER_RE = re.compile(
    r"^={70}\n(?P<kind>FAIL|ERROR|UNEXPECTED SUCCESS): (?P<desc>[^\n]+)\n-{70}\n", re.M
)
# What ends one report's body: the next header, the closing rule before "Ran", or the summary.
BODY_END_RE = re.compile(r"^(?:={70}$|-{70}\nRan \d)", re.M)
FAULT_FRAME_RE = re.compile(
    r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)', re.M
)
FLAKY_RE = re.compile(r"\bFlaky(?:AssertionError|Test\w*)\b")

PASSING = {"passed"}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class SetupError(Exception):
    """The environment cannot run the suite; the message says what to fix."""


@dataclass
class Case:
    """A failing test case from unittest's report."""

    id: str
    kind: str  # fail, error, unexpected success
    summary: str
    traceback: str = ""


@dataclass
class FileResult:
    name: str
    status: str  # passed, failed, timeout, crash, not run
    detail: str = ""
    seconds: float = 0.0
    ran: int | None = None  # test cases, from unittest's "Ran N tests"
    failed: int = 0
    skipped: int = 0
    cases: list[Case] = field(default_factory=list)
    output: str = ""
    retried: str = ""  # the first run's outcome, when the file was run twice

    @property
    def cases_passed(self) -> int:
        return max((self.ran or 0) - self.failed - self.skipped, 0)


@dataclass
class Suite:
    """One venv, and what gevent's runner says about running its tests."""

    impl: str
    env: dict[str, str]
    commands: dict[str, tuple[list[str], dict]]  # file name -> command, options
    not_run: dict[str, str]  # file name -> why gevent's runner runs no command for it
    flaky: set[str]  # files gevent marks flaky in this configuration: run twice if they fail
    listed_flaky: set[str]  # files our list marks flaky: run twice if they fail or time out
    listed_failing: set[str]  # the other files of our list: expected to fail, never run twice
    run_alone: set[str]
    cwd: Path
    timeout: float | None
    allowed_codes: tuple[int, ...]


# ---------------------------------------------------------------- processes


def run_quiet(args: list[str], what: str, **kwargs) -> str:
    """Run a set-up command; on failure stop with its output."""
    child = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if child.returncode != 0:
        output = (child.stdout + child.stderr).strip()[-4000:]
        raise SetupError(f"{what} failed (exit {child.returncode}): {' '.join(args)}\n{output}")
    return child.stdout


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def check_unshare() -> None:
    """The per-file network namespace needs unshare, ip and the right to make a namespace."""
    for tool in ("unshare", "ip"):
        if not shutil.which(tool):
            raise SetupError(
                f"`{tool}` is not installed; it runs each file in a loopback-only "
                "network namespace (apt-get install util-linux iproute2)"
            )
    child = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && ip -o addr show lo"],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0 or "127.0.0.1" not in child.stdout:
        raise SetupError(
            "cannot make a loopback-only network namespace (`unshare -n` then `ip link set lo "
            f"up`; it needs root or CAP_SYS_ADMIN): {child.stderr.strip()}; gevent's suite is not "
            "run outside one"
        )


NETNS_SCRIPT = 'ip link set lo up && exec "$@"'


def run_child(args: list[str], cwd: Path, env: dict[str, str], timeout: float):
    """Run one test command in a fresh loopback-only network namespace and process group.

    Returns (returncode or None after a timeout, stdout and stderr together, seconds)."""
    start = time.monotonic()
    with subprocess.Popen(
        ["unshare", "-n", "sh", "-c", NETNS_SCRIPT, "sh", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            returncode = None
    try:  # whatever the file left running in its group (a server, a child interpreter)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return returncode, output, time.monotonic() - start


# ---------------------------------------------------------------- the virtualenvs


def venv_dir(impl: str, version: str) -> Path:
    return REPO / f".venv-gevent-{impl}-{version}"


def venv_python(path: Path) -> str:
    return str(path / "bin" / "python")


def interpreter_info(python: str) -> tuple[str, str]:
    """(major.minor, the base interpreter behind a venv's python)."""
    out = run_quiet(
        [
            python,
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2]); "
            "print(getattr(sys, '_base_executable', sys.executable))",
        ],
        "asking the interpreter its version",
        env=clean_env(),
    )
    version, base = out.split()
    return version, base


def gevent_wheel(python: str, version: str) -> Path | None:
    """gevent's binary wheel for this interpreter, downloaded once into the cache; None if PyPI
    has none for it."""
    folder = CACHE_DIR / "wheels" / version
    found = sorted(folder.glob(f"gevent-{GEVENT_VERSION}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    child = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(folder),
            f"gevent=={GEVENT_VERSION}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    found = sorted(folder.glob(f"gevent-{GEVENT_VERSION}-*.whl"))
    if found:
        return found[0]
    said = child.stderr.strip()
    if "No matching distribution found" not in said:  # not PyPI's answer: pip could not ask
        raise SetupError(f"cannot download gevent {GEVENT_VERSION}'s wheel:\n{said[-3000:]}")
    print(said[-1500:])
    return None


def stamp_text(impl: str, wheel: Path) -> str:
    deps = [f"gevent=={GEVENT_VERSION}", *TEST_DEPS]
    if impl == "greenlet":
        deps.append(f"greenlet=={GREENLET_VERSION}")
    return json.dumps({"impl": impl, "wheel": wheel.name, "deps": deps}) + "\n"


def make_venv(impl: str, base: str, version: str, wheel: Path) -> str:
    """The venv for impl with gevent and its test dependencies (greenlet's only where it
    belongs), made once; returns its interpreter."""
    path = venv_dir(impl, version)
    stamp = path / ".stamp"
    text = stamp_text(impl, wheel)
    python = venv_python(path)
    if stamp.exists() and stamp.read_text() == text and os.path.exists(python):
        return python
    print(f"[{impl}] creating {path.name}", flush=True)
    env = clean_env()
    run_quiet([base, "-m", "venv", "--clear", str(path)], "creating the venv", env=env)
    pip = [python, "-m", "pip", "install", "-q", "--find-links", str(wheel.parent)]
    packages = [str(wheel), *TEST_DEPS]
    if impl == "greenlet":
        packages.append(f"greenlet=={GREENLET_VERSION}")
    run_quiet([*pip, *packages], "installing gevent", env=env)
    if impl == "corolet":
        # gevent requires greenlet, so pip brought it; here corolet is greenlet.
        run_quiet([python, "-m", "pip", "uninstall", "-y", "-q", "greenlet"], "uninstall", env=env)
    stamp.write_text(text)
    return python


def build_corolet_wheel(builder: str, version: str, dest: Path) -> Path:
    """A release wheel of this checkout, built by maturin into dest for builder, the interpreter
    the runner was given. The environment is the one `make build` gives `maturin develop`
    (VIRTUAL_ENV, PATH, CARGO_TARGET_DIR), so cargo reuses that build instead of redoing it."""
    folder = Path(builder).parent
    maturin = shutil.which("maturin", path=str(folder)) or shutil.which("maturin")
    if not maturin:
        raise SetupError(f"maturin is not installed; run: {builder} -m pip install maturin")
    env = clean_env()
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "target" / f"py{version}"))
    if (folder.parent / "pyvenv.cfg").exists():
        env["VIRTUAL_ENV"] = str(folder.parent)
        env["PATH"] = os.pathsep.join([str(folder), env.get("PATH", "")])
    run_quiet(
        [maturin, "build", "--release", "--quiet", "-i", builder, "-o", str(dest)],
        "building corolet's wheel",
        cwd=REPO,
        env=env,
    )
    wheels = sorted(dest.glob("corolet-*.whl"))
    if len(wheels) != 1:
        raise SetupError(f"maturin left {len(wheels)} wheels in {dest}")
    return wheels[0]


def installed_differs(wheel: Path, purelib: Path) -> bool:
    """Whether any file the wheel installs (beside its metadata) is missing or differs."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith("/") or ".dist-info/" in name:
                continue
            target = purelib / name
            if not target.is_file() or target.read_bytes() != archive.read(name):
                return True
    return False


def install_corolet(builder: str, python: str, version: str, purelib: Path, scratch: Path) -> str:
    """Put this checkout's corolet in the corolet venv (python is its interpreter), again if it
    changed, and the .pth that installs it in every interpreter there; returns what was done."""
    wheel = build_corolet_wheel(builder, version, scratch)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:12]
    pth = purelib / PTH_NAME
    if installed_differs(wheel, purelib):
        pth.unlink(missing_ok=True)  # no interpreter should try corolet while pip replaces it
        run_quiet(
            [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
            "installing corolet",
            env=clean_env(),
        )
        done = f"installed {wheel.name} (sha256 {digest}...)"
    else:
        done = f"{wheel.name} already installed, unchanged (sha256 {digest}...)"
    hook = purelib / f"{HOOK_NAME}.py"
    if not hook.exists() or hook.read_text() != HOOK_TEXT:
        hook.write_text(HOOK_TEXT)
    if not pth.exists() or pth.read_text() != PTH_TEXT:
        pth.write_text(PTH_TEXT)
    return done


def probe(impl: str, python: str) -> dict:
    out = run_quiet([python, "-c", PROBE], f"probing the {impl} venv", env=clean_env())
    info = json.loads(out.strip().splitlines()[-1])
    line = (
        f"[{impl}] Python {info['python']} ({python}): gevent {info['gevent']}; "
        f"greenlet -> {info['greenlet']}; greenlet._greenlet -> {info['_greenlet']}"
    )
    print(line, flush=True)
    if impl == "corolet":
        if info["greenlet_dist"] or info["greenlet_on_path"]:
            where = info["greenlet_on_path"] or f"greenlet {info['greenlet_dist']} installed"
            raise SetupError(f"the corolet venv has the real greenlet: {where}; delete the venv")
        if not (info["is_corolet"] and info.get("same_module") and info["gevent_uses_it"]):
            raise SetupError(f"gevent in the corolet venv does not run on corolet: {info}")
    else:
        if info["is_corolet"] or info["greenlet_version"] != GREENLET_VERSION:
            raise SetupError(
                f"the greenlet venv has {info['greenlet']}, not greenlet {GREENLET_VERSION}"
            )
        if not info["gevent_uses_it"]:
            raise SetupError(f"gevent in the greenlet venv does not use greenlet: {info}")
    if info["gevent"] != GEVENT_VERSION:
        raise SetupError(f"{impl} venv has gevent {info['gevent']}, need {GEVENT_VERSION}")
    return info


# ---------------------------------------------------------------- gevent's runner, asked


def file_of(cmd: list[str]) -> str:
    """``gevent.tests.test__x`` (from ``-mgevent.tests.test__x``) -> ``test__x.py``."""
    module = next(arg[2:] for arg in cmd if arg.startswith("-m"))
    return module.rpartition(".")[2] + ".py"


def enumerate_suite(impl: str, python: str, args: argparse.Namespace, cwd: Path) -> Suite:
    out = cwd / f"enumerate-{impl}.json"
    wanted = ",".join(args.files or [])
    run_quiet(
        [python, "-c", ENUMERATE, str(out), RESOURCES, wanted],
        f"asking gevent's runner for its tests ({impl})",
        cwd=cwd,
        env=clean_env(),
    )
    data = json.loads(out.read_text())
    commands: dict[str, tuple[list[str], dict]] = {}
    for entry in data["commands"]:
        name = file_of(entry["cmd"])
        if name in commands:
            raise SetupError(f"gevent's runner has two commands for {name}")
        commands[name] = (entry["cmd"], entry["options"])
    selected = args.files or data["files"]
    unknown = sorted(set(selected) - set(data["files"]))
    if unknown:
        raise SetupError(f"no such gevent test file: {', '.join(unknown)}")
    not_run = {}
    for name in selected:
        if name in commands:
            continue
        if name in data["ignored"]:
            not_run[name] = "gevent's known_failures.py ignores it here: " + data["reasons"].get(
                name, "no reason given"
            )
        else:
            not_run[name] = "gevent's runner makes no command for it (it needs a source checkout)"
    failing = data["failing"]
    flaky = {line.removeprefix("FLAKY ") for line in failing if line.startswith("FLAKY ")}
    # unittest on 3.12.1+ exits 5 when every test of a module skipped; gevent's runner allows it.
    allowed = (5,) if data["python"] >= [3, 12, 1] else ()
    return Suite(
        impl=impl,
        env=data["env"],
        commands=commands,
        not_run=not_run,
        flaky=flaky,
        listed_flaky=set(),
        listed_failing=set(),
        run_alone=set(data["run_alone"]),
        cwd=cwd,
        timeout=args.timeout,
        allowed_codes=allowed,
    )


# ---------------------------------------------------------------- a file's output


def case_id(desc: str, stem: str) -> str:
    """``test_x (__main__.Case.test_x)`` (3.11+) or ``test_x (__main__.Case)`` (3.10), as
    ``test__file.Case.test_x``; anything else (a doctest, a class fixture) as it was said."""
    match = re.fullmatch(r"(?P<name>\S+) \((?P<path>[\w.]+)\)(?P<rest>.*)", desc)
    if not match:
        return desc
    path, name = match["path"], match["name"]
    full = path if path.endswith("." + name) or name.startswith("setUp") else f"{path}.{name}"
    if full.startswith("__main__."):
        full = stem + full.removeprefix("__main__")
    return full + match["rest"]


def summarize(body: str) -> str:
    """The exception line that ends the last traceback in body (the first line after its frames:
    gevent's test timeouts print pages of greenlet dumps after it); else the last lines."""
    lines = body.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=-1)
    if start >= 0:
        for line in lines[start + 1 :]:
            if line.strip() and not line.startswith(" ") and set(line.strip()) - set("^~"):
                return line.strip()[:300]
    tail: list[str] = []
    for line in reversed([line for line in lines if line.strip()]):
        if set(line.strip()) <= set("^~"):
            continue
        if line.startswith((" ", "Traceback", "During handling", "The above exception")):
            if tail:
                break
            continue
        tail.insert(0, line.strip())
    return " / ".join(tail)[:300]


def parse_cases(output: str, stem: str) -> list[Case]:
    cases = []
    for header in HEADER_RE.finditer(output):
        end = BODY_END_RE.search(output, header.end())
        body = output[header.end() : end.start() if end else len(output)].strip("\n")
        kind = {"FAIL": "fail", "ERROR": "error"}.get(header["kind"], "unexpected success")
        cases.append(Case(case_id(header["desc"], stem), kind, summarize(body) or kind, body))
    return cases


def parse_counts(output: str) -> tuple[int | None, int, int]:
    """(tests run, failed or errored, skipped) from unittest's last summary, if it printed one."""
    runs = list(RAN_RE.finditer(output))
    if not runs:
        return None, 0, 0
    close = CLOSE_RE.search(output, runs[-1].end())
    counts: dict[str, int] = {}
    if close and close["counts"]:
        for part in close["counts"].split(","):
            key, _, value = part.strip().partition("=")
            if value.isdigit():
                counts[key] = int(value)
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    failed += counts.get("unexpected successes", 0)
    return int(runs[-1][1]), failed, counts.get("skipped", 0)


def fault_report(output: str) -> list[str]:
    """faulthandler's report of the fatal signal: its first line and the stack of the thread
    that received it (the other threads' stacks and the extension module list left out)."""
    start = output.rfind("Fatal Python error")
    if start < 0:
        return []
    lines = output[start:].splitlines()
    report = [lines[0]]
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if current is not None:
        for line in lines[current:]:
            if not line.strip():
                break
            report.append(line)
    return report


def crash_summary(output: str) -> str:
    """Where the thread that got the signal was: its innermost Python frame, and the innermost
    one in a gevent test file if that is another."""
    report = fault_report(output)
    frames = [m for m in map(FAULT_FRAME_RE.match, report) if m]
    if not frames:
        said = [line.strip() for line in report[2:]]
        return "; ".join(["no Python frame", *[s for s in said if "no Python frame" not in s]])
    where = [f"{Path(frames[0]['file']).name}:{frames[0]['line']} in {frames[0]['func']}"]
    ours = next((f for f in frames if "/gevent/tests/" in f["file"]), None)
    if ours and ours is not frames[0]:
        where.append(f"under {Path(ours['file']).name}:{ours['line']} in {ours['func']}")
    return ", ".join(where)


def outcome(
    name: str,
    returncode: int | None,
    output: str,
    seconds: float,
    timeout: float,
    allowed: tuple[int, ...],
) -> FileResult:
    stem = name.removesuffix(".py")
    ran, failed, skipped = parse_counts(output)
    result = FileResult(name, "passed", seconds=seconds, ran=ran, failed=failed, skipped=skipped)
    result.cases = parse_cases(output, stem)
    if returncode is None:
        result.status, result.detail = "timeout", f"killed after the {timeout:g}s timeout"
    elif returncode < 0:
        result.status = "crash"
        result.detail = f"killed by {signal_name(-returncode)}"
        if fault_report(output):
            result.detail += f" ({crash_summary(output)})"
        else:
            result.detail += " (no faulthandler report)"
    elif returncode != 0 and returncode not in allowed:
        result.status = "failed"
        cases = len(result.cases)
        result.detail = f"exit {returncode}" + (f", {cases} failing test cases" if cases else "")
        if not cases:
            result.detail += f": {summarize(output) or 'no output'}"
    if result.status != "passed":
        result.output = output[-20000:]
    return result


# ---------------------------------------------------------------- running files


def file_timeout(suite: Suite, options: dict) -> float:
    return suite.timeout or float(options.get("timeout") or 100)


def run_file(suite: Suite, name: str) -> FileResult:
    cmd, options = suite.commands[name]
    env = dict(suite.env)
    env.update(options.get("setenv") or {})
    env.update(options.get("env") or {})
    timeout = file_timeout(suite, options)
    cwd = Path(options.get("cwd") or suite.cwd)
    result = outcome(name, *run_child(cmd, cwd, env, timeout), timeout, suite.allowed_codes)
    marked = name in suite.flaky or (
        result.cases and all(FLAKY_RE.search(case.traceback) for case in result.cases)
    )
    listed = name in suite.listed_flaky
    if name in suite.listed_failing:
        return result
    if (marked or listed) and result.status == "failed" or listed and result.status == "timeout":
        first = result
        result = outcome(name, *run_child(cmd, cwd, env, timeout), timeout, suite.allowed_codes)
        why = "gevent marks it flaky" if marked else "listed as flaky"
        result.retried = f"{first.status} ({first.detail}); {why}, so run again"
        result.seconds += first.seconds
    return result


def describe(result: FileResult) -> str:
    line = f"  [{result.status}] {result.name}: {result.seconds:.1f}s"
    if result.ran is not None:
        line += f", {result.ran} tests"
        if result.failed:
            line += f", {result.failed} failed"
        if result.skipped:
            line += f", {result.skipped} skipped"
    if result.detail:
        line += f"; {result.detail}"
    if result.retried:
        line += f"; first run: {result.retried}"
    return line


def run_files(suite: Suite, names: list[str], jobs: int) -> tuple[dict[str, FileResult], float]:
    """Run the files, jobs at a time, then gevent's run-alone files one by one."""
    print(f"[{suite.impl}] running {len(names)} files, {jobs} at a time", flush=True)
    lock = threading.Lock()
    results: dict[str, FileResult] = {}

    def one(name: str) -> None:
        result = run_file(suite, name)
        with lock:
            results[name] = result
            print(describe(result), flush=True)

    start = time.monotonic()
    together = [n for n in names if n not in suite.run_alone]
    alone = [n for n in names if n in suite.run_alone]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, together))
    for name in alone:
        one(name)
    return results, time.monotonic() - start


def confirm_regressions(
    suite: Suite,
    mine: dict[str, FileResult],
    base: dict[str, FileResult],
    known: dict[str, Entry],
) -> tuple[dict[str, FileResult], float]:
    """Run once more on corolet, one at a time, each unlisted file that failed or timed out
    there but passed on greenlet, so that a regression is one that happens twice: on a loaded
    2-core machine gevent's timing-bound tests (2 s per test by default) fail now and then on
    either. The second run replaces the first in mine; returns the first runs, and the seconds
    the second ones took."""
    again = [
        name
        for name, result in sorted(mine.items())
        if result.status in ("failed", "timeout")
        and name not in known
        and name in base
        and base[name].status in PASSING
    ]
    if not again:
        return {}, 0.0
    print(f"[corolet] again, alone, passed on greenlet: {', '.join(again)}", flush=True)
    results, seconds = run_files(suite, again, 1)  # alone: the load was the likely cause
    first_runs = {name: mine[name] for name in again}
    for name, result in results.items():
        first = first_runs[name]
        result.retried = f"{first.status} ({first.detail}); passed on greenlet, so run again"
        result.seconds += first.seconds
        mine[name] = result
    return first_runs, seconds


# ---------------------------------------------------------------- known failures


def known_path(version: str) -> Path:
    return KNOWN_DIR / f"{version}.txt"


def load_known(path: Path) -> dict[str, Entry]:
    try:
        return _known.load(path, OUTCOMES, frozenset({FLAKY}))
    except KnownListError as error:
        raise SetupError(str(error)) from None


def write_known(path: Path, known: dict[str, Entry]) -> None:
    """Rewrite the entries, keeping the comment header (every line before the first entry)."""
    default = [
        f"# gevent {GEVENT_VERSION} test files corolet fails on Python {path.stem}, read by "
        "tools/gevent_suite.py.",
        "# One file a line, how it fails and why:   test__file.py  failed  # reason",
        "",
    ]
    _known.write(path, known, default)


def report_text(result: FileResult) -> str:
    """What an entry's text is looked for in: the file's exit line and its failing cases."""
    cases = [f"{case.id}: {case.summary}" for case in result.cases]
    return "\n".join([result.detail, *cases])


@dataclass
class Verdict:
    unexpected: list[tuple[str, str]] = field(default_factory=list)  # file, why it fails the run
    known: list[tuple[str, str]] = field(default_factory=list)  # file, what happened
    tolerated: list[tuple[str, str]] = field(default_factory=list)  # flaky on both, unlisted
    now_passing: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


def classify(mine: FileResult, base: FileResult | None) -> str:
    """What a file that did not pass on corolet is, given its greenlet run."""
    if mine.status == "crash":
        return "crash on corolet"
    if base is None:
        return "not run on greenlet"
    if base.status in PASSING:
        return "regression: passes on greenlet"
    return f"fails on both (greenlet: {base.status})"


def corolet_only_cases(mine: FileResult, base: FileResult | None) -> list[str]:
    """Test cases failing in a file that fails on both, but on corolet only (not counting those
    gevent marks flaky). Only said when both runs reached unittest's report."""
    if not base or mine.status != "failed" or base.status != "failed" or base.ran is None:
        return []
    theirs = {case.id for case in base.cases}
    return sorted(
        case.id
        for case in mine.cases
        if case.id not in theirs and not FLAKY_RE.search(case.traceback)
    )


def flaky_on_both(mine: FileResult, base: FileResult | None) -> bool:
    """A file that failed twice on corolet only in test cases gevent marks flaky (timing
    assertions it turns into skips on its own CI), and failed on greenlet too."""
    return (
        mine.status == "failed"
        and bool(mine.cases)
        and all(FLAKY_RE.search(case.traceback) for case in mine.cases)
        and base is not None
        and base.status not in PASSING
    )


def is_flaky(entry: Entry | None) -> bool:
    return entry is not None and FLAKY in entry.modifiers


def judge(
    mine: dict[str, FileResult],
    base: dict[str, FileResult],
    known: dict[str, Entry],
    selected: set[str],
) -> Verdict:
    verdict = Verdict()
    for name, result in sorted(mine.items()):
        if result.status == "not run":
            continue
        entry = known.get(name)
        if result.status in PASSING:
            if entry is not None and not is_flaky(entry):
                verdict.now_passing.append(name)
            continue
        what = classify(result, base.get(name))
        extra = corolet_only_cases(result, base.get(name))
        if extra:  # a listed file hides no new failure
            what += "; failing on corolet only: " + ", ".join(extra)
            verdict.unexpected.append((name, what))
            continue
        if entry is not None:
            if entry.expects(result.status, report_text(result)):
                verdict.known.append((name, what))
            else:  # listed, but this is not the failure listed (a crash, another test case)
                what += f"; listed as failing with {entry.expectation}, not so"
                verdict.unexpected.append((name, what))
        elif flaky_on_both(result, base.get(name)):
            verdict.tolerated.append((name, what))
        else:
            verdict.unexpected.append((name, what))
    verdict.absent = sorted(
        n for n in known if n in selected and (n not in mine or mine[n].status == "not run")
    )
    return verdict


def failures(verdict: Verdict) -> int:
    """How many files fail the run."""
    return len(verdict.unexpected) + len(verdict.now_passing) + len(verdict.absent)


def updated_known(
    mine: dict[str, FileResult], known: dict[str, Entry], selected: set[str]
) -> dict[str, Entry]:
    kept = {name: entry for name, entry in known.items() if name not in selected}
    for name, result in mine.items():
        if result.status in PASSING and is_flaky(known.get(name)):
            kept[name] = known[name]  # a flaky file may pass; it stays
        elif result.status not in PASSING and result.status != "not run":
            old = known.get(name)
            if old is not None and old.expects(result.status, report_text(result)):
                kept[name] = old
            else:
                reason = old.reason if old is not None else NEW_REASON
                kept[name] = Entry(name, (result.status,), reason=reason)
    return kept


# ---------------------------------------------------------------- report


def print_summary(runs: dict[str, tuple[dict[str, FileResult], float]], total: int) -> None:
    head = [
        "impl",
        "files run",
        "passed",
        "failed",
        "timed out",
        "crashed",
        "tests passed",
        "tests failed",
        "tests skipped",
        "seconds",
    ]
    rows = []
    for impl, (results, seconds) in runs.items():
        ran = [r for r in results.values() if r.status != "not run"]

        def count(status: str, ran: list[FileResult] = ran) -> int:
            return sum(r.status == status for r in ran)

        label = impl if len(ran) == total or impl == "corolet" else f"{impl} (not-passing only)"
        rows.append(
            [
                label,
                len(ran),
                count("passed"),
                count("failed"),
                count("timeout"),
                count("crash"),
                sum(r.cases_passed for r in ran),
                sum(r.failed for r in ran),
                sum(r.skipped for r in ran),
                f"{seconds:.0f}",
            ]
        )
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def print_longest(results: dict[str, FileResult], impl: str, count: int = 8) -> None:
    longest = sorted(results.values(), key=lambda r: r.seconds, reverse=True)[:count]
    print(f"longest files on {impl}: " + ", ".join(f"{r.name} {r.seconds:.0f}s" for r in longest))


def print_failure(result: FileResult, impl: str) -> None:
    print(f"    {impl}: {result.status}; {result.detail}")
    for case in result.cases:
        print(f"      {case.kind.upper()}: {case.id}: {case.summary}")
    if result.status in ("crash", "timeout") or not result.cases:
        report = fault_report(result.output)
        shown = report[:OUTPUT_LINES] or result.output.strip().splitlines()[-OUTPUT_LINES:]
        for line in shown:
            print(f"      | {line}")


def print_verdict(
    verdict: Verdict,
    mine: dict[str, FileResult],
    base: dict[str, FileResult],
    known: dict[str, Entry],
) -> None:
    for name, what in verdict.unexpected:
        print(f"UNEXPECTED: {name}: {what}")
        print_failure(mine[name], "corolet")
        if name in base and base[name].status not in PASSING:
            print_failure(base[name], "greenlet")
    for name, what in verdict.known:
        print(f"known: {name}: {what}; {mine[name].status}  # {known[name].reason}")
    for name, what in verdict.tolerated:
        print(f"tolerated: {name}: {what}, only in test cases gevent marks flaky:")
        print_failure(mine[name], "corolet")
    for name in verdict.now_passing:
        print(f"now passes on corolet, remove it from the list: {name}")
    for name in verdict.absent:
        print(f"listed but not run here, fix or remove it: {name}")
    for name, result in sorted(base.items()):
        if result.status not in PASSING and mine.get(name, result).status in PASSING:
            print(f"note: {name} passes on corolet but not on greenlet ({result.detail})")


def write_json(path: Path, version: str, runs: dict) -> None:
    data = {"gevent": GEVENT_VERSION, "python": version}
    for impl, (results, seconds) in runs.items():
        data[impl] = {"seconds": seconds, "files": [asdict(r) for r in results.values()]}
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to test on")
    parser.add_argument("--files", help="comma-separated test files, e.g. test__event.py")
    parser.add_argument(
        "--full-baseline",
        action="store_true",
        help="run every file on greenlet too, not only those that did not pass on corolet",
    )
    parser.add_argument("--timeout", type=float, help="seconds per file (default: gevent's)")
    parser.add_argument("--jobs", type=int, default=JOBS, help="files run at once (default 2)")
    parser.add_argument("--json", type=Path, help="write every file's outcome here")
    parser.add_argument(
        "--update-known-failures",
        action="store_true",
        help="rewrite this interpreter's known-failure list from this run (developer helper)",
    )
    args = parser.parse_args(argv)
    found = shutil.which(args.python)
    if not found:
        parser.error(f"no such interpreter: {args.python}")
    args.python = os.path.abspath(found)
    if args.files:
        args.files = [name.strip() for name in args.files.split(",") if name.strip()]
    return args


def prepare(args: argparse.Namespace, version: str, base: str, wheel: Path, root: Path) -> dict:
    """Both venvs, made or refreshed, probed; returns impl -> Suite."""
    check_unshare()
    suites = {}
    for impl in IMPLS:
        python = make_venv(impl, base, version, wheel)
        if impl == "corolet":
            # Not asked of the venv's interpreter: its start-up imports the installed corolet.
            purelib = venv_dir(impl, version) / "lib" / f"python{version}" / "site-packages"
            done = install_corolet(args.python, python, version, purelib, root)
            print(f"[corolet] {done}", flush=True)
        probe(impl, python)
        cwd = root / impl
        cwd.mkdir()
        suites[impl] = enumerate_suite(impl, python, args, cwd)
    return suites


def run(args: argparse.Namespace, root: Path) -> int:
    version, base = interpreter_info(args.python)
    wheel = gevent_wheel(args.python, version)
    if wheel is None:
        print(
            f"gevent_suite.py: skipped on Python {version}: PyPI has no binary wheel of gevent "
            f"{GEVENT_VERSION} for it (`pip download --only-binary :all: gevent=={GEVENT_VERSION}`"
            "), and building gevent from source is not wanted"
        )
        print("gevent: 0 passed, 0 failed, 1 skipped")
        return 0
    print(f"gevent {GEVENT_VERSION}: {wheel.name}", flush=True)
    suites = prepare(args, version, base, wheel, root)
    mine_suite = suites["corolet"]
    known = load_known(known_path(version))
    for suite in suites.values():
        suite.listed_flaky = {name for name, entry in known.items() if is_flaky(entry)}
        suite.listed_failing = set(known) - suite.listed_flaky
    for name, reason in sorted(mine_suite.not_run.items()):
        print(f"  not run: {name}: {reason}")
    mine, mine_seconds = run_files(mine_suite, sorted(mine_suite.commands), args.jobs)
    for name in mine_suite.not_run:
        mine[name] = FileResult(name, "not run", mine_suite.not_run[name])
    base_suite = suites["greenlet"]
    wanted = [
        name
        for name in sorted(base_suite.commands)
        if args.full_baseline or (name in mine and mine[name].status not in PASSING)
    ]
    base_results, base_seconds = run_files(base_suite, wanted, args.jobs) if wanted else ({}, 0.0)
    first_runs, seconds = confirm_regressions(mine_suite, mine, base_results, known)
    mine_seconds += seconds
    runs = {"corolet": (mine, mine_seconds), "greenlet": (base_results, base_seconds)}
    print()
    print_longest(mine, "corolet")
    print_summary(runs, len(mine_suite.commands))
    selected = set(mine)
    if args.json:
        write_json(args.json, version, runs)
    if args.update_known_failures:
        write_known(known_path(version), updated_known(mine, known, selected))
        print(f"wrote {known_path(version)}")
    verdict = judge(mine, base_results, known, selected)
    print_verdict(verdict, mine, base_results, known)
    for name, first in sorted(first_runs.items()):
        if mine[name].status in PASSING:
            print(f"not reproduced: {name} passed on greenlet and on a second corolet run:")
            print_failure(first, "corolet, first run")
    passed = sum(r.status in PASSING for r in mine.values())
    not_run = sum(r.status == "not run" for r in mine.values())
    bad = failures(verdict)
    print(f"gevent: {passed} passed, {bad} failed, {not_run} skipped")
    return 0 if bad == 0 or args.update_known_failures else 1


def default_signals() -> None:
    """Undo SIGINT and SIGQUIT being ignored, as a non-interactive shell does for the commands it
    starts in the background: an ignored signal stays ignored across exec, and gevent's tests send
    SIGINT to their own children and expect KeyboardInterrupt (test__issues461_471.py fails on
    greenlet as on corolet without this)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    default_signals()
    root = Path(tempfile.mkdtemp(prefix="corolet-gevent-"))
    try:
        return run(args, root)
    except SetupError as error:
        print(f"gevent_suite.py: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
