"""corolet against PyPI greenlet, side by side: nanoseconds per operation and their ratio.

Method
------
The same workloads run on corolet and on greenlet 3.5.6, each implementation in its own
subprocess (this script in worker mode: ``--worker corolet|greenlet --workload NAME``), so the
two never share a process. corolet runs on the interpreter given by ``--python`` (default: the
one running this script, which must be able to ``import corolet``). greenlet lives in its own
virtualenv on the same interpreter, ``<repo>/.venv-bench-greenlet-<major.minor>``, made with
``python -m venv`` and ``pip install greenlet==3.5.6`` when missing or stale (not
``.venv-bench-<major.minor>``: ``bench_bridge.py`` owns that one and rebuilds it at will);
``--greenlet-python`` uses another interpreter that has greenlet 3.5.6 instead.

A worker first calibrates: it runs the workload with growing iteration counts (which also warms
up the interpreter, its specialising bytecode and corolet's stack pool) until one run lasts
about ``--target-ms``, then times ``--repeats`` runs of that size and reports the fastest, in
ns per operation. Only the inner loop is timed, with the garbage collector off (as ``timeit``
does); set-up and tear-down are not. Every loop is the same Python code for both
implementations, with the hot callables bound to locals, and each workload checks its result
(a counter handed back and forth, a sum of return values, the identity of ``getcurrent()``), so
a wrong switch fails the run instead of producing a fast number.

The parent runs ``--rounds`` rounds; in each, every workload runs once per implementation,
alternating which goes first, and the best worker result over the rounds is kept. Workers are
pinned to one CPU (``--cpu``, by default the last this process may use), so that both
implementations run on the same core and a second core's other work moves neither. Timings on a
small, shared machine are noisy: compare the two columns of one run, and quote the ratio
(corolet / greenlet, lower is better), not absolute numbers across runs.

Workloads
---------
``switch_top``
    Ping-pong between the main greenlet and a child at the top of the stack: main does
    ``x = child.switch(x)``, the child answers ``x = main.switch(x + 1)``. ns per switch.
``switch_depth100``, ``switch_depth500``
    The same with each side suspended 100 or 500 levels deep in a recursion through C
    (``list(map(f, [d - 1]))``), so the native stack really is deep. The child is started at
    the top and then recurses, main recurses after, so their deep parts overlap: greenlet
    copies them out and in on every switch, corolet swaps stack pointers.
``create_switch_finish``
    ``greenlet(f).switch()`` with ``f`` returning at once: create, start, finish, free.
    ns per greenlet.
``churn200``
    A server's greenlets coming and going: batches of 200 greenlets created, each switched
    into (it parks), then each resumed to finish, so 200 are alive at a time and every batch's
    stacks come back to the pool together. ns per greenlet.
``throw_catch``
    ``child.throw(Bump)`` into a child that catches ``Bump`` in a loop and switches back with
    its count: ns per round trip.
``getcurrent``
    ``getcurrent()`` in the main greenlet, ten calls per loop iteration. ns per call.

``--fast`` (two rounds of 5 ms runs; CI keeps the benchmark working with it) takes about
3 s, plus about 4 s the first time, to make the virtualenv. The exit status is non-zero if any
worker crashes or times out, or a workload's check fails; the numbers themselves are never
judged.

Examples::

    .venv-3.11/bin/python benches/bench_greenlet.py
    .venv-3.11/bin/python benches/bench_greenlet.py --fast --json /tmp/bench.json
    python3 benches/bench_greenlet.py --python .venv-3.12/bin/python --workload switch_top
    .venv-3.11/bin/python benches/bench_greenlet.py --worker corolet --workload switch_top
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

GREENLET_VERSION = "3.5.6"
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
IMPLS = ("corolet", "greenlet")

# Rounds, milliseconds per timed run, timed runs per worker.
FULL = SimpleNamespace(rounds=5, target_ms=100.0, repeats=3)
FAST = SimpleNamespace(rounds=2, target_ms=5.0, repeats=3)
WORKER_TIMEOUT_S = 300


class BenchError(Exception):
    """A workload produced a wrong result, or an environment check failed."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchError(what)


# --------------------------------------------------------------------------- workloads
# Each takes the implementation (a namespace with greenlet and getcurrent) and an iteration
# count, and returns (ns spent in the timed loop, operations done, extra info).

Result = tuple[int, int, dict]


def descender(bottom: Callable[[], object]) -> Callable[[int], object]:
    """A function that recurses ``d`` levels through C (``list(map(...))``), then calls bottom."""

    def down(d: int) -> object:
        if d == 0:
            return bottom()
        return list(map(down, [d - 1]))[0]

    return down


def ping_pong(impl: SimpleNamespace, n: int, depth: int) -> Result:
    main_switch = impl.getcurrent().switch

    def child_bottom() -> None:
        x = main_switch("ready")
        while True:
            x = main_switch(x + 1)

    child = impl.greenlet(descender(child_bottom))
    check(child.switch(depth) == "ready", "the child did not reach its bottom")
    switch = child.switch

    def timed_loop() -> tuple[int, int]:
        x = 0
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            x = switch(x)
        return time.perf_counter_ns() - start, x

    elapsed, x = descender(timed_loop)(depth)
    check(x == n, f"ping-pong counter is {x}, expected {n}")
    info = {"child_stack_saved": getattr(child, "_stack_saved", None)}
    child.throw()  # GreenletExit unwinds the child's frames
    check(child.dead, "the child survived GreenletExit")
    return elapsed, 2 * n, info


def one() -> int:
    return 1


def create_switch_finish(impl: SimpleNamespace, n: int) -> Result:
    new = impl.greenlet
    total = 0
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        total += new(one).switch()
    elapsed = time.perf_counter_ns() - start
    check(total == n, f"{total} greenlets returned 1, expected {n}")
    return elapsed, n, {}


CHURN_BATCH = 200


def churn(impl: SimpleNamespace, n: int) -> Result:
    new = impl.greenlet
    main_switch = impl.getcurrent().switch

    def body() -> int:
        main_switch()
        return 1

    total = 0
    batches = max(1, n // CHURN_BATCH)
    start = time.perf_counter_ns()
    for _ in repeat(None, batches):
        batch = [new(body) for _ in repeat(None, CHURN_BATCH)]
        for g in batch:
            g.switch()
        for g in batch:
            total += g.switch()
        del batch
    elapsed = time.perf_counter_ns() - start
    check(total == batches * CHURN_BATCH, f"{total} greenlets finished")
    return elapsed, batches * CHURN_BATCH, {}


class Bump(Exception):
    """The exception thrown into the child by ``throw_catch``."""


def throw_catch(impl: SimpleNamespace, n: int) -> Result:
    main_switch = impl.getcurrent().switch

    def catcher() -> None:
        caught = 0
        while True:
            try:
                main_switch(caught)
            except Bump:
                caught += 1

    child = impl.greenlet(catcher)
    check(child.switch() == 0, "the catcher did not start")
    throw = child.throw
    x = 0
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        x = throw(Bump)
    elapsed = time.perf_counter_ns() - start
    check(x == n, f"the child caught {x} exceptions, expected {n}")
    child.throw()
    check(child.dead, "the child survived GreenletExit")
    return elapsed, n, {}


def getcurrent(impl: SimpleNamespace, n: int) -> Result:
    get = impl.getcurrent
    main = get()
    x = None
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
        x = get()
    elapsed = time.perf_counter_ns() - start
    check(x is main, "getcurrent() is not the main greenlet")
    return elapsed, 10 * n, {}


@dataclass(frozen=True)
class Workload:
    name: str
    label: str  # the table's row title
    unit: str  # what one operation is
    run: Callable[[SimpleNamespace, int], Result]


WORKLOADS = (
    Workload("switch_top", "switch, top of stack", "switch", partial(ping_pong, depth=0)),
    Workload(
        "switch_depth100", "switch, 100 C levels deep", "switch", partial(ping_pong, depth=100)
    ),
    Workload(
        "switch_depth500", "switch, 500 C levels deep", "switch", partial(ping_pong, depth=500)
    ),
    Workload("create_switch_finish", "create + switch + finish", "greenlet", create_switch_finish),
    Workload("churn200", "create, park, finish, 200 alive at a time", "greenlet", churn),
    Workload("throw_catch", "throw + catch", "round trip", throw_catch),
    Workload("getcurrent", "getcurrent()", "call", getcurrent),
)
BY_NAME = {w.name: w for w in WORKLOADS}


# --------------------------------------------------------------------------- worker


def load_impl(name: str) -> SimpleNamespace:
    """Import corolet or greenlet; refuse a greenlet that is not the pinned PyPI release."""
    mod = importlib.import_module(name)
    if name == "greenlet":
        check(not getattr(mod, "__corolet__", False), "`import greenlet` resolved to corolet")
        check(
            mod.__version__ == GREENLET_VERSION,
            f"greenlet {mod.__version__} imported, expected {GREENLET_VERSION}",
        )
    return SimpleNamespace(greenlet=mod.greenlet, getcurrent=mod.getcurrent)


def timed(workload: Workload, impl: SimpleNamespace, n: int) -> Result:
    """One run with the collector off, like timeit."""
    gc.collect()
    gc.disable()
    try:
        return workload.run(impl, n)
    finally:
        gc.enable()


def calibrate(workload: Workload, impl: SimpleNamespace, target_ns: float) -> int:
    """Iterations for one run of about target_ns; the growing runs double as warm-up.

    The first run is thrown away: it pays one-off costs (corolet maps its first slab of
    stacks, ~0.25 ms) that would make a short target look reached.
    """
    n = 8
    timed(workload, impl, n)
    while True:
        elapsed, _, _ = timed(workload, impl, n)
        if elapsed >= target_ns / 4:
            return max(1, round(n * target_ns / elapsed))
        n *= 4 if elapsed < target_ns / 64 else 2


def worker(
    impl_name: str, workload: Workload, target_ms: float, repeats: int, cpu: int | None = None
) -> dict:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    impl = load_impl(impl_name)
    n = calibrate(workload, impl, target_ms * 1e6)
    runs = []
    info: dict = {}
    for _ in range(repeats):
        elapsed, ops, info = timed(workload, impl, n)
        runs.append(elapsed / ops)
    return {"ns": min(runs), "runs": runs, "iterations": n, "info": info}


# --------------------------------------------------------------------------- environment

PROBE = """
import json, os, sys
info = {"version": "%d.%d" % sys.version_info[:2], "sys_version": sys.version,
        "executable": sys.executable}
try:
    import {module} as m
    info["{module}"] = m.__version__
except Exception as e:
    info["error"] = repr(e)
print(json.dumps(info))
"""


def sqlite_async_engine(path: str) -> Any:
    """SQLAlchemy's async engine over aiosqlite on the file ``path``, every connection made
    with ``PRAGMA synchronous=OFF`` (the ORM benchmarks time the bridge, not fsync). SQLAlchemy
    is imported here, so the caller's ``greenlet`` must already be the one to measure."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def no_fsync(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()

    return engine


def probe(python: str, module: str) -> dict:
    """Interpreter version and the version of ``module`` as seen by ``python``."""
    code = PROBE.replace("{module}", module)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def greenlet_venv(python: str, sys_version: str, version: str) -> str:
    """The python of ``<repo>/.venv-bench-greenlet-<version>``; (re)made if needed."""
    venv = REPO / f".venv-bench-greenlet-{version}"
    vpy = str(venv / "bin" / "python")
    if os.path.exists(vpy) and venv_ok(vpy, sys_version):
        return vpy
    log(f"making {venv} with greenlet=={GREENLET_VERSION} ...")
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"greenlet=={GREENLET_VERSION}"], check=True)
    if not venv_ok(vpy, sys_version):
        raise BenchError(f"{venv} does not provide greenlet {GREENLET_VERSION} on {sys_version}")
    return vpy


def venv_ok(vpy: str, sys_version: str) -> bool:
    try:
        info = probe(vpy, "greenlet")
    except (OSError, subprocess.CalledProcessError, ValueError):
        return False
    return info["sys_version"] == sys_version and info.get("greenlet") == GREENLET_VERSION


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count()}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parent


def run_worker(python: str, impl: str, name: str, settings: SimpleNamespace) -> dict:
    """One worker subprocess; {"ns": ...} or {"error": ...}."""
    cmd = [python, str(SCRIPT), "--worker", impl, "--workload", name]
    cmd += ["--target-ms", str(settings.target_ms), "--repeats", str(settings.repeats)]
    if settings.cpu is not None:
        cmd += ["--cpu", str(settings.cpu)]
    env = dict(os.environ)
    if impl == "greenlet":
        env.pop("PYTHONPATH", None)  # nothing of corolet's may shadow the real greenlet
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-6:])
        return {"error": f"exit status {out.returncode}\n{tail}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable worker output: {out.stdout[-300:]!r}"}


def run_rounds(pythons: dict[str, str], names: list[str], settings: SimpleNamespace) -> dict:
    """results[name][impl] = list of worker results, one per round."""
    return alternate_rounds(
        names,
        IMPLS,
        settings.rounds,
        lambda impl, name: run_worker(pythons[impl], impl, name, settings),
    )


def alternate_rounds(
    names: list[str], impls: list[str], rounds: int, run: Callable[[str, str], dict]
) -> dict:
    """Runs run(impl, name) for every workload and implementation, `rounds` times, the
    implementations' order alternating from round to round. results[name][impl] = the
    results, one per round (a result with an "error" key is logged)."""
    results: dict = {name: {impl: [] for impl in impls} for name in names}
    for rnd in range(rounds):
        log(f"round {rnd + 1}/{rounds}")
        order = impls if rnd % 2 == 0 else impls[::-1]
        for name in names:
            for impl in order:
                res = run(impl, name)
                results[name][impl].append(res)
                if "error" in res:
                    log(f"  {name} on {impl} FAILED: {res['error']}")
    return results


def default_cpu() -> int | None:
    """The CPU workers are pinned to: the last one this process may run on."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def summarise(name: str, per_impl: dict) -> dict:
    wl = BY_NAME[name]
    row: dict = {"workload": name, "label": f"{wl.label}, ns per {wl.unit}"}
    for impl in IMPLS:
        good = [r["ns"] for r in per_impl[impl] if "error" not in r]
        row[f"{impl}_ns"] = min(good) if good else None
        row[f"{impl}_rounds"] = good
        infos = [r["info"] for r in per_impl[impl] if r.get("info")]
        if infos:
            row[f"{impl}_info"] = infos[-1]
    c, g = row["corolet_ns"], row["greenlet_ns"]
    row["ratio"] = c / g if c is not None and g else None
    row["errors"] = [
        {"impl": impl, "error": res["error"]}
        for impl in IMPLS
        for res in per_impl[impl]
        if "error" in res
    ]
    return row


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "FAILED"
    return f"{ns:,.1f}" if ns < 100 else f"{ns:,.0f}"


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| workload | corolet ns | greenlet ns | ratio |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['label']} | {fmt_ns(r['corolet_ns'])} | {fmt_ns(r['greenlet_ns'])} | {ratio} |"
        )
    return "\n".join(lines + stack_notes(rows))


def stack_notes(rows: list[dict]) -> list[str]:
    """How deep the suspended child's native stack really was (its ``_stack_saved``)."""
    notes = []
    for r in rows:
        saved = [r.get(f"{impl}_info", {}).get("child_stack_saved") for impl in IMPLS]
        if r["workload"] != "switch_top" and all(isinstance(b, int) for b in saved):
            notes.append(
                f"{r['label'].split(',')[1].strip()}: the suspended child's `_stack_saved` is "
                f"{saved[0] / 1024:.0f} KiB on corolet (stack in use), {saved[1] / 1024:.0f} KiB "
                "on greenlet (copied to the heap)"
            )
    return ["", *notes] if notes else []


def header_line(mach: dict, env: dict, settings: SimpleNamespace) -> str:
    return (
        f"{mach['cpu']}, {mach['cpus']} CPUs; Python {env['sys_version'].split()[0]}; "
        f"greenlet {GREENLET_VERSION}; corolet {env['corolet']}; "
        f"workers pinned to CPU {settings.cpu}; best of {settings.rounds} "
        f"round(s) x {settings.repeats} run(s) of ~{settings.target_ms:g} ms; "
        "ratio = corolet / greenlet (lower is better)"
    )


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = SimpleNamespace(**vars(FAST if args.fast else FULL))
    for key in ("rounds", "target_ms", "repeats"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.cpu = args.cpu if args.cpu is not None else default_cpu()
    python = args.python or sys.executable
    env = probe(python, "corolet")
    if "corolet" not in env:
        log(f"{python} cannot import corolet: {env.get('error')}")
        return 2
    try:
        greenlet_py = args.greenlet_python or greenlet_venv(
            python, env["sys_version"], env["version"]
        )
    except (BenchError, OSError, subprocess.CalledProcessError) as e:
        log(f"no greenlet {GREENLET_VERSION} to compare with: {e}")
        return 2
    names = args.workload or [w.name for w in WORKLOADS]
    results = run_rounds({"corolet": python, "greenlet": greenlet_py}, names, settings)
    rows = [summarise(name, results[name]) for name in names]
    mach = machine()
    print(table(rows, header_line(mach, env, settings)))
    elapsed = time.monotonic() - started
    log(f"took {elapsed:.1f} s")
    if args.json:
        write_json(args.json, mach, env, settings, rows, elapsed)
    failed = [r["workload"] for r in rows if r["errors"]]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def write_json(path: str, mach: dict, env: dict, settings, rows: list[dict], elapsed: float):
    doc = {
        "machine": mach,
        "python": {"version": env["sys_version"], "executable": env["executable"]},
        "greenlet_version": GREENLET_VERSION,
        "corolet_version": env["corolet"],
        "settings": vars(settings),
        "elapsed_s": round(elapsed, 2),
        "results": rows,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--python", help="interpreter for corolet (default: this one)")
    p.add_argument("--greenlet-python", help="interpreter with greenlet (default: own venv)")
    p.add_argument("--fast", action="store_true", help="two short rounds (for CI)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--workload", action="append", choices=list(BY_NAME), help="repeatable")
    p.add_argument("--rounds", type=int, help="alternating corolet/greenlet rounds")
    p.add_argument("--target-ms", type=float, help="length of one timed run")
    p.add_argument("--repeats", type=int, help="timed runs per worker")
    p.add_argument("--cpu", type=int, help="CPU to pin the workers to (default: the last)")
    p.add_argument("--worker", choices=IMPLS, help="internal: time one workload, print JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.worker:
        return parent(args)
    if not args.workload or len(args.workload) != 1:
        log("--worker needs exactly one --workload")
        return 2
    target_ms = args.target_ms if args.target_ms is not None else FULL.target_ms
    repeats = args.repeats if args.repeats is not None else FULL.repeats
    result = worker(args.worker, BY_NAME[args.workload[0]], target_ms, repeats, args.cpu)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
