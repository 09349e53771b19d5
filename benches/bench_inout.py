"""Ordinary Python code inside a greenlet against the same code on the main greenlet.

Method
------
A switch is not the only cost a greenlet implementation puts on a program: code that runs
*inside* a greenlet runs on that greenlet's native stack and, on CPython 3.11+, with its frames
in that greenlet's own data stack. If either is set up badly (a small first data-stack chunk
that CPython must grow with a fresh 16 KiB mapping each time the frames cross it, and unmap
again when they come back; a stack whose pages fault), every call pays for it. This benchmark
times ordinary pure-Python workloads both ways, on corolet and on greenlet 3.5.6:

- *main*: the timed loop runs on the main greenlet, as in a program without greenlets;
- *inside*: the whole timed loop runs inside one greenlet started from main,
  ``greenlet(run_loop).switch()``, a fresh greenlet for every timed run. Only the loop is timed
  (inside the greenlet), not the greenlet's creation or its switches.

Each implementation runs in worker subprocesses of its own (this script with ``--worker
corolet|greenlet --workload NAME``), pinned to one CPU with ``os.sched_setaffinity(0, {cpu})``
(``--cpu``, by default the last CPU this process may use), with the garbage collector off
during timed runs. Times are the thread's CPU time (``time.thread_time_ns()``, page faults'
kernel time included): the time another process holds the CPU does not count, so a busy machine
blurs the figures less. A worker calibrates the iteration count for main and for inside
separately (runs of about ``--target-ms``; the growing runs double as warm-up), then times
``--repeats`` runs of each, alternating main and inside, and keeps the fastest of each. It also
counts minor page faults (``getrusage(RUSAGE_THREAD).ru_minflt``) over each timed run and
reports them per iteration: steady-state code should cause none, and a data-stack chunk mapped
and unmapped per crossing shows up here as well as in the time. corolet is imported from the
interpreter running this script (``--python``); greenlet 3.5.6 from
``<repo>/.venv-bench-greenlet-<major.minor>``, made by ``bench_greenlet.py``'s helper on the
same interpreter. The parent runs ``--rounds`` rounds, alternating which implementation goes
first, and keeps the best figure of each over the rounds.

Every workload returns a value; the worker checks that main and inside give the same one, and
the parent that corolet and greenlet do, so a workload that went wrong fails the run rather
than producing a fast number. Reported per workload: ns per iteration on main and inside for
each implementation, the ratio inside / main (1.0 means a greenlet costs ordinary code
nothing), and page faults per iteration inside; then, per implementation, the geometric mean
of the ratios and the worst one.

Workloads (one iteration each)
------------------------------
``chain2`` ... ``chain150``
    A recursive call chain ``down(d)`` of depth 2, 8, 16, 40 and 150: each frame is one small
    Python frame, so the depth sets how far the frames reach into the data stack.
``fib``
    Naive recursive ``fib(12)`` (465 calls, depth 12).
``objects``
    Fifty small class instances made, a method called on each, summed.
``generators``
    A two-stage generator pipeline over 100 items, summed.
``exceptions``
    Thirty calls, one in three raising a custom exception caught by the caller.
``closures``
    Twenty closures made by a factory and chained.
``strings``
    f-strings, ``upper``/``lower``/``replace``, ``join`` and ``split`` over a sentence.
``dicts``
    Word counts of a paragraph in a dict, then its most frequent words.
``json``
    ``json.dumps`` and ``json.loads`` of a small nested document.
``regex``
    A compiled regular expression's ``findall`` and ``sub`` over a line of text.
``interpreter``
    A small stack-machine bytecode interpreter (a dispatch loop over tuples) running a loop
    that sums 1..20.
``super``
    A four-level class hierarchy whose method calls ``super().f()`` down to the base.
``sort``
    Sorting 100 records with a ``lambda`` key, an ``itemgetter`` key and an ``attrgetter`` key.
``comprehensions``
    List, dict, set and nested comprehensions over ``range(100)``.

``--fast`` (one round of 5 ms runs; CI keeps the benchmark working with it) exercises every
workload on both implementations in a few seconds. The exit status is non-zero only if a worker
crashes or times out, or a result check fails; the numbers are never judged.

Examples::

    .venv-3.11/bin/python benches/bench_inout.py
    .venv-3.11/bin/python benches/bench_inout.py --fast --json /tmp/inout.json
    .venv-3.11/bin/python benches/bench_inout.py --workload chain16 --workload chain150
    .venv-3.11/bin/python benches/bench_inout.py --worker corolet --workload fib
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from types import SimpleNamespace

import bench_greenlet as common

SCRIPT = Path(__file__).resolve()
IMPLS = common.IMPLS
FULL = SimpleNamespace(rounds=3, target_ms=100.0, repeats=3)
FAST = SimpleNamespace(rounds=1, target_ms=5.0, repeats=2)
WORKER_TIMEOUT_S = 300
RUSAGE_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


# --------------------------------------------------------------------------- workloads
# Each is a function of no arguments doing one iteration and returning a value that depends on
# all of its work (the result check).


def down(d: int) -> int:
    if d:
        return down(d - 1) + 1
    return 0


def chain(depth: int) -> Callable[[], int]:
    def step() -> int:
        return down(depth)

    return step


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib_step() -> int:
    return fib(12)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def manhattan(self) -> int:
        return abs(self.x) + abs(self.y)


def objects() -> int:
    total = 0
    for i in range(50):
        total += Point(i, 3 - i).manhattan()
    return total


def counting(n: int):
    i = 0
    while i < n:
        yield i
        i += 1


def evens_squared(items):
    for x in items:
        if not x & 1:
            yield x * x


def generators() -> int:
    return sum(evens_squared(counting(100)))


class Oops(Exception):
    pass


def maybe_raise(i: int) -> int:
    if i % 3 == 0:
        raise Oops(i)
    return i


def exceptions() -> int:
    total = 0
    for i in range(30):
        try:
            total += maybe_raise(i)
        except Oops as e:
            total -= e.args[0]
    return total


def make_adder(k: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x * 3 % 1000 + k

    return add


def closures() -> int:
    x = 1
    for add in [make_adder(k) for k in range(20)]:
        x = add(x)
    return x


WORDS = "the quick brown fox jumps over the lazy dog while seven wizards watch".split()


def strings() -> str:
    parts = [f"{w.upper()}-{i:02d}" for i, w in enumerate(WORDS)]
    line = ", ".join(parts).lower().replace("-", "_")
    fields = line.split(", ")
    return fields[3] + fields[-1] + str(len(line))


PARAGRAPH = (
    "a greenlet is a coroutine that switches explicitly and a greenlet runs on a stack "
    "of its own while the main greenlet runs on the thread stack and every switch saves "
    "the state of the interpreter and restores the state of the greenlet it switches to"
).split()


def dicts() -> tuple:
    counts: dict[str, int] = {}
    for word in PARAGRAPH:
        counts[word] = counts.get(word, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return tuple(top), len(counts)


DOCUMENT = {
    "id": 12345,
    "name": "corolet",
    "tags": ["greenlet", "stacks", "rust", "python"],
    "stats": {"switches": 1_000_000, "ratio": 0.32, "ok": True, "none": None},
    "items": [{"k": i, "v": str(i) * 3, "f": i / 7} for i in range(8)],
}


def json_step() -> int:
    text = json.dumps(DOCUMENT, sort_keys=True)
    back = json.loads(text)
    return len(text) + back["items"][5]["k"]


PATTERN = re.compile(r"(\w+)@(\w+)\.(?:org|com)")
TEXT = (
    "write to ada@example.org or bob@example.com, not to carol at example dot org; "
    "dave@corp.com and erin@lab.org answer on weekdays, frank@home.com never does"
)


def regex() -> tuple:
    found = PATTERN.findall(TEXT)
    masked = PATTERN.sub(r"<\2>", TEXT)
    return len(found), found[-1], len(masked)


# A stack machine: (op, arg). Computes the sum of 1..20.
PUSH, LOAD, STORE, ADD, SUB, JNZ, HALT = range(7)
PROGRAM = (
    (PUSH, 0), (STORE, 0),  # acc = 0
    (PUSH, 20), (STORE, 1),  # i = 20
    (LOAD, 0), (LOAD, 1), (ADD, 0), (STORE, 0),  # acc += i        (4)
    (LOAD, 1), (PUSH, 1), (SUB, 0), (STORE, 1),  # i -= 1
    (LOAD, 1), (JNZ, 4),  # loop while i
    (LOAD, 0), (HALT, 0),
)  # fmt: skip


def interpreter() -> int:
    stack: list[int] = []
    env = [0, 0]
    pc = 0
    code = PROGRAM
    while True:
        op, arg = code[pc]
        pc += 1
        if op == PUSH:
            stack.append(arg)
        elif op == LOAD:
            stack.append(env[arg])
        elif op == STORE:
            env[arg] = stack.pop()
        elif op == ADD:
            b = stack.pop()
            stack.append(stack.pop() + b)
        elif op == SUB:
            b = stack.pop()
            stack.append(stack.pop() - b)
        elif op == JNZ:
            if stack.pop():
                pc = arg
        else:
            return stack.pop()


class Base:
    def f(self, x: int) -> int:
        return x + 1


class Middle(Base):
    def f(self, x: int) -> int:
        return super().f(x) * 2


class Upper(Middle):
    def f(self, x: int) -> int:
        return super().f(x) - 3


class Leaf(Upper):
    def f(self, x: int) -> int:
        return super().f(x + 1)


def super_step() -> int:
    leaf = Leaf()
    return sum(leaf.f(i) for i in range(10))


class Record:
    __slots__ = ("name", "age")

    def __init__(self, name: str, age: int) -> None:
        self.name = name
        self.age = age


ROWS = [(f"n{(i * 37) % 101:03d}", (i * 53) % 17) for i in range(100)]
RECORDS = [Record(name, age) for name, age in ROWS]


def sort_step() -> tuple:
    by_both = sorted(ROWS, key=lambda r: (r[1], r[0]))
    by_age = sorted(ROWS, key=itemgetter(1))
    by_name = sorted(RECORDS, key=attrgetter("name"))
    return by_both[0], by_age[-1], by_name[0].name


def comprehensions() -> tuple:
    squares = [x * x for x in range(100) if x % 3]
    table = {x: x % 7 for x in range(100)}
    residues = {v for v in table.values()}
    pairs = [(a, b) for a in range(10) for b in range(a) if (a + b) % 4 == 0]
    return sum(squares), len(table), len(residues), len(pairs)


@dataclass(frozen=True)
class Workload:
    name: str
    step: Callable[[], object]


WORKLOADS = (
    *(Workload(f"chain{d}", chain(d)) for d in (2, 8, 16, 40, 150)),
    Workload("fib", fib_step),
    Workload("objects", objects),
    Workload("generators", generators),
    Workload("exceptions", exceptions),
    Workload("closures", closures),
    Workload("strings", strings),
    Workload("dicts", dicts),
    Workload("json", json_step),
    Workload("regex", regex),
    Workload("interpreter", interpreter),
    Workload("super", super_step),
    Workload("sort", sort_step),
    Workload("comprehensions", comprehensions),
)
BY_NAME = {w.name: w for w in WORKLOADS}
# Values some workloads must give whatever else happens (the rest: main == inside everywhere).
KNOWN = {"fib": 144, "interpreter": 210, **{f"chain{d}": d for d in (2, 8, 16, 40, 150)}}


# --------------------------------------------------------------------------- worker


def run_loop(step: Callable[[], object], n: int) -> tuple[int, int, object]:
    """n iterations of step: (ns, minor page faults, last value). The timed part."""
    faults = resource.getrusage(RUSAGE_WHO).ru_minflt
    value = None
    start = time.thread_time_ns()
    for _ in repeat(None, n):
        value = step()
    elapsed = time.thread_time_ns() - start
    faults = resource.getrusage(RUSAGE_WHO).ru_minflt - faults
    return elapsed, faults, value


def on_main(impl: SimpleNamespace, step: Callable[[], object], n: int):
    return run_loop(step, n)


def inside(impl: SimpleNamespace, step: Callable[[], object], n: int):
    def body():
        return run_loop(step, n)

    return impl.greenlet(body).switch()


def timed(where, impl: SimpleNamespace, step: Callable[[], object], n: int):
    gc.collect()
    gc.disable()
    try:
        return where(impl, step, n)
    finally:
        gc.enable()


def calibrate(where, impl: SimpleNamespace, step, target_ns: float) -> int:
    n = 4
    timed(where, impl, step, n)
    while True:
        elapsed, _, _ = timed(where, impl, step, n)
        if elapsed >= target_ns / 4:
            return max(1, round(n * target_ns / elapsed))
        n *= 4 if elapsed < target_ns / 64 else 2


def pin(cpu: int | None) -> int | None:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, {cpu})
    return cpu


def worker(impl_name: str, wl: Workload, target_ms: float, repeats: int, cpu: int | None):
    pinned = pin(cpu)
    impl = common.load_impl(impl_name)
    expected = wl.step()
    if wl.name in KNOWN:
        common.check(expected == KNOWN[wl.name], f"{wl.name} gave {expected!r} on main")
    places = {"main": on_main, "inside": inside}
    sizes = {p: calibrate(f, impl, wl.step, target_ms * 1e6) for p, f in places.items()}
    runs: dict[str, list[float]] = {p: [] for p in places}
    faults: dict[str, list[float]] = {p: [] for p in places}
    for r in range(repeats):
        for p in ("main", "inside") if r % 2 == 0 else ("inside", "main"):
            elapsed, flt, value = timed(places[p], impl, wl.step, sizes[p])
            common.check(value == expected, f"{wl.name} {p}: {value!r}, expected {expected!r}")
            runs[p].append(elapsed / sizes[p])
            faults[p].append(flt / sizes[p])
    return {
        "main_ns": min(runs["main"]),
        "inside_ns": min(runs["inside"]),
        "main_runs": runs["main"],
        "inside_runs": runs["inside"],
        "main_faults": min(faults["main"]),
        "inside_faults": min(faults["inside"]),
        "iterations": sizes,
        "value": repr(expected),
        "cpu": pinned,
    }


# --------------------------------------------------------------------------- parent


def run_worker(python: str, impl: str, name: str, settings, cpu: int | None) -> dict:
    """One worker subprocess; its JSON result, or {"error": ...}."""
    cmd = [python, str(SCRIPT), "--worker", impl, "--workload", name]
    cmd += ["--target-ms", str(settings.target_ms), "--repeats", str(settings.repeats)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
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


def summarise(name: str, per_impl: dict) -> dict:
    row: dict = {"workload": name, "errors": []}
    values = set()
    for impl in IMPLS:
        good = [r for r in per_impl[impl] if "error" not in r]
        row["errors"] += [
            {"impl": impl, "error": r["error"]} for r in per_impl[impl] if "error" in r
        ]
        if not good:
            row[impl] = None
            continue
        values.update(r["value"] for r in good)
        main_ns = min(r["main_ns"] for r in good)
        inside_ns = min(r["inside_ns"] for r in good)
        row[impl] = {
            "main_ns": main_ns,
            "inside_ns": inside_ns,
            "ratio": inside_ns / main_ns,
            "inside_faults": min(r["inside_faults"] for r in good),
            "main_faults": min(r["main_faults"] for r in good),
            "rounds": [{k: r[k] for k in ("main_ns", "inside_ns")} for r in good],
        }
    if len(values) > 1:
        row["errors"].append({"impl": "both", "error": f"results differ: {sorted(values)}"})
    return row


def fmt_faults(f: float) -> str:
    return "0" if f == 0 else f"{f:.3g}"


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| workload | corolet main ns | corolet inside ns | corolet inside/main "
        "| greenlet main ns | greenlet inside ns | greenlet inside/main "
        "| faults/iter inside (corolet / greenlet) | faults/iter main (corolet / greenlet) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["workload"]]
        for impl in IMPLS:
            d = r[impl]
            if d is None:
                cells += ["FAILED"] * 3
            else:
                cells += [common.fmt_ns(d["main_ns"]), common.fmt_ns(d["inside_ns"])]
                cells.append(f"{d['ratio']:.2f}")
        for where in ("inside", "main"):
            faults = [fmt_faults(r[i][f"{where}_faults"]) if r[i] else "—" for i in IMPLS]
            cells.append(" / ".join(faults))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for impl, stats in summary(rows).items():
        if stats:
            lines.append(
                f"{impl}: inside/main geometric mean {stats['geomean']:.2f}, worst "
                f"{stats['worst']:.2f} ({stats['worst_workload']}), over {stats['n']} workloads"
            )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for impl in IMPLS:
        ratios = [(r[impl]["ratio"], r["workload"]) for r in rows if r[impl]]
        if not ratios:
            out[impl] = None
            continue
        worst = max(ratios)
        out[impl] = {
            "geomean": math.exp(sum(math.log(x) for x, _ in ratios) / len(ratios)),
            "worst": worst[0],
            "worst_workload": worst[1],
            "n": len(ratios),
        }
    return out


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = SimpleNamespace(**vars(FAST if args.fast else FULL))
    for key in ("rounds", "target_ms", "repeats"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    cpu = args.cpu if args.cpu is not None else common.default_cpu()
    python = args.python or sys.executable
    env = common.probe(python, "corolet")
    if "corolet" not in env:
        common.log(f"{python} cannot import corolet: {env.get('error')}")
        return 2
    try:
        greenlet_py = args.greenlet_python or common.greenlet_venv(
            python, env["sys_version"], env["version"]
        )
    except (common.BenchError, OSError, subprocess.CalledProcessError) as e:
        common.log(f"no greenlet {common.GREENLET_VERSION} to compare with: {e}")
        return 2
    pythons = {"corolet": python, "greenlet": greenlet_py}
    names = args.workload or [w.name for w in WORKLOADS]
    results = common.alternate_rounds(
        names,
        IMPLS,
        settings.rounds,
        lambda impl, name: run_worker(pythons[impl], impl, name, settings, cpu),
    )
    rows = [summarise(name, results[name]) for name in names]
    mach = common.machine()
    header = (
        f"{mach['cpu']}, {mach['cpus']} CPUs (workers pinned to CPU {cpu}); "
        f"Python {env['sys_version'].split()[0]}; greenlet {common.GREENLET_VERSION}; "
        f"corolet {env['corolet']}; best of {settings.rounds} round(s) x {settings.repeats} "
        f"run(s) of ~{settings.target_ms:g} ms; ns per iteration; inside/main = the cost of "
        "running inside a greenlet (1.00: none)"
    )
    print(table(rows, header))
    elapsed = time.monotonic() - started
    common.log(f"took {elapsed:.1f} s")
    if args.json:
        doc = {
            "machine": mach,
            "python": {"version": env["sys_version"], "executable": env["executable"]},
            "greenlet_version": common.GREENLET_VERSION,
            "corolet_version": env["corolet"],
            "cpu": cpu,
            "settings": vars(settings),
            "elapsed_s": round(elapsed, 2),
            "results": rows,
            "summary": summary(rows),
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    failed = [r["workload"] for r in rows if r["errors"]]
    for r in rows:
        for e in r["errors"]:
            common.log(f"{r['workload']} ({e['impl']}): {e['error']}")
    if failed:
        common.log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--python", help="interpreter for corolet (default: this one)")
    p.add_argument("--greenlet-python", help="interpreter with greenlet (default: own venv)")
    p.add_argument("--fast", action="store_true", help="one short round (for CI)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--workload", action="append", choices=list(BY_NAME), help="repeatable")
    p.add_argument("--rounds", type=int, help="alternating corolet/greenlet rounds")
    p.add_argument("--target-ms", type=float, help="length of one timed run")
    p.add_argument("--repeats", type=int, help="timed runs of main and of inside per worker")
    p.add_argument("--cpu", type=int, help="CPU to pin the workers to (default: the last)")
    p.add_argument("--worker", choices=IMPLS, help="internal: time one workload, print JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.worker:
        return parent(args)
    if not args.workload or len(args.workload) != 1:
        common.log("--worker needs exactly one --workload")
        return 2
    target_ms = args.target_ms if args.target_ms is not None else FULL.target_ms
    repeats = args.repeats if args.repeats is not None else FULL.repeats
    wl = BY_NAME[args.workload[0]]
    print(json.dumps(worker(args.worker, wl, target_ms, repeats, args.cpu)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except common.BenchError as e:
        common.log(f"bench_inout: {e}")
        sys.exit(1)
