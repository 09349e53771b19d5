"""gevent's hot paths on corolet against gevent on greenlet 3.5.6.

Method
------
gevent 26.9.0 runs on each implementation from a virtualenv of its own, made by this script on
the interpreter running it (``python -m venv``, then ``pip install`` from PyPI; idempotent: a
stamp file in each venv records what was installed and for which interpreter, and a stale venv
is remade):

- ``<repo>/.venv-bench-gevent-corolet-<major.minor>``: gevent installed, then the real
  greenlet (its dependency) uninstalled, and a ``corolet.pth`` that puts the corolet package
  of ``--python`` (this interpreter, by default) on the path, so the venv always runs the
  corolet just built. gevent imports greenlet as soon as it is imported itself (``import
  gevent`` reaches ``gevent._hub_local``, whose compiled module imports ``greenlet`` and its
  ``_C_API`` capsule, and subclasses ``greenlet.greenlet`` in C), so ``corolet.install()`` has
  to run before that; the worker does it as its first import, which is why no ``.pth`` calling
  ``install()`` is needed. The worker checks that ``greenlet`` is not importable before
  ``install()``, that gevent's hub is a corolet greenlet, and that no real greenlet got loaded.
- ``<repo>/.venv-bench-gevent-greenlet-<major.minor>``: ``gevent==26.9.0 greenlet==3.5.6``.

Each workload runs in worker subprocesses (``--worker corolet|greenlet --workload NAME``),
pinned to one CPU with ``os.sched_setaffinity(0, {cpu})`` (``--cpu``, by default the last CPU
this process may use), with the garbage collector off while timing: a warm-up run, then
``--repeats`` timed runs, the best one kept. Each workload checks its result (values summed
across greenlets, bytes echoed back, every parked greenlet woken), so a wrong switch fails the
run. The parent runs ``--rounds`` rounds, alternating which implementation goes first, and
keeps the best figure of each; the ratio is corolet / greenlet time (below 1, corolet is
faster). Minor page faults (``getrusage(RUSAGE_SELF).ru_minflt``) are counted over each timed
run and reported per operation: steady-state switching should cause none.

Workloads
---------
``spawn_join``
    ``gevent.joinall([gevent.spawn(f, i) for i in range(1000)])``: µs per greenlet spawned,
    run and joined (its ``Greenlet`` object freed with the list).
``sleep0``
    Two greenlets each looping on ``gevent.sleep(0)``, so every call goes through the hub to
    the other: ns per ``sleep(0)``.
``event``
    Two greenlets handing a turn back and forth with two ``gevent.event.Event``\\ s (set the
    other's, wait on one's own, clear it): ns per hand-off.
``queue``
    A producer putting integers into a ``gevent.queue.Queue(maxsize=64)`` and a consumer
    getting and summing them: ns per item.
``echo``
    A ``gevent.server.StreamServer`` on 127.0.0.1 echoing to many concurrent clients
    (greenlets in the same process, gevent sockets, ``TCP_NODELAY``), each sending a 64-byte
    message and reading it back, over and over: requests per second (reported as ns per
    request in the table).
``crowd``
    10,000 greenlets spawned to park in ``Event.wait()``: time to create and park them all,
    RSS per parked greenlet (``VmRSS``, measured once, in a fresh process), a full collection
    while they are parked (``gc.collect()``, the best of three, in the thread's CPU time: corolet
    reports what the parked frames refer to, greenlet does not), time to wake all
    (``event.set()`` and ``joinall``).
``event_deep100``
    ``event`` with each of the two greenlets waiting 100 C-level frames deep (recursion through
    ``list(map(f, [d - 1]))``, then the ``Event`` loop): the hub switches into and out of deep
    stacks, which greenlet copies on every switch and corolet does not.

``--fast`` (one round, small sizes; CI keeps the benchmark working with it) takes about 10 s,
plus a minute or so the first time, to make the two venvs. The exit status is non-zero only if
a worker crashes or times out, or a check fails; the numbers are never judged.

Examples::

    .venv-3.11/bin/python benches/bench_gevent.py
    .venv-3.11/bin/python benches/bench_gevent.py --fast --json /tmp/gevent.json
    .venv-3.11/bin/python benches/bench_gevent.py --impl greenlet --workload crowd
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bench_greenlet as common

GEVENT_VERSION = "26.9.0"
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
IMPLS = common.IMPLS
FULL = SimpleNamespace(rounds=3, repeats=3, scale=1.0)
FAST = SimpleNamespace(rounds=1, repeats=1, scale=0.1)
WORKER_TIMEOUT_S = 300
CROWD = 10_000


# --------------------------------------------------------------------------- workloads
# Each takes (gevent namespace, scale) and returns {"ns": ns per op, ...extra}; the worker
# times it itself (set-up outside the timed part where it can be).


def ops(base: int, scale: float) -> int:
    return max(10, int(base * scale))


def spawn_join(g: SimpleNamespace, scale: float) -> dict:
    n = 1000
    rounds = ops(20, scale)

    def f(i: int) -> int:
        return i

    spawn, joinall = g.gevent.spawn, g.gevent.joinall
    start = time.perf_counter_ns()
    total = 0
    for _ in range(rounds):
        glets = [spawn(f, i) for i in range(n)]
        joinall(glets)
        total += sum(x.value for x in glets)
        del glets
    elapsed = time.perf_counter_ns() - start
    common.check(total == rounds * n * (n - 1) // 2, f"spawned greenlets returned {total}")
    return {"ns": elapsed / (rounds * n), "ops": rounds * n}


def sleep0(g: SimpleNamespace, scale: float) -> dict:
    n = ops(100_000, scale)
    sleep = g.gevent.sleep
    counts = [0, 0]

    def loop(k: int) -> None:
        for _ in range(n):
            sleep(0)
            counts[k] += 1

    a, b = g.gevent.spawn(loop, 0), g.gevent.spawn(loop, 1)
    start = time.perf_counter_ns()
    g.gevent.joinall([a, b])
    elapsed = time.perf_counter_ns() - start
    common.check(counts == [n, n], f"sleep(0) counts {counts}, expected {n} each")
    return {"ns": elapsed / (2 * n), "ops": 2 * n}


def hand_off(g: SimpleNamespace, n: int, depth: int) -> dict:
    """Two greenlets passing a turn n times with two Events, each ``depth`` C frames deep."""
    Event = g.gevent.event.Event
    mine = [Event(), Event()]
    turns = [0, 0]

    def player(k: int) -> None:
        own, other = mine[k], mine[1 - k]
        wait, clear, give = own.wait, own.clear, other.set
        if k == 0:
            give()
        for _ in range(n):
            wait()
            clear()
            turns[k] += 1
            give()

    def deep(k: int) -> None:
        def down(d: int) -> int:
            if d == 0:
                player(k)
                return 0
            return list(map(down, [d - 1]))[0]

        down(depth)

    a, b = g.gevent.spawn(deep, 0), g.gevent.spawn(deep, 1)
    g.gevent.sleep(0)  # both reach their loop (and their depth) before the clock starts
    start = time.perf_counter_ns()
    g.gevent.joinall([a, b], raise_error=True)
    elapsed = time.perf_counter_ns() - start
    common.check(turns == [n, n], f"turns {turns}, expected {n} each")
    return {"ns": elapsed / (2 * n), "ops": 2 * n}


def event(g: SimpleNamespace, scale: float) -> dict:
    return hand_off(g, ops(50_000, scale), 0)


def event_deep100(g: SimpleNamespace, scale: float) -> dict:
    return hand_off(g, ops(20_000, scale), 100)


def queue(g: SimpleNamespace, scale: float) -> dict:
    n = ops(100_000, scale)
    q = g.gevent.queue.Queue(maxsize=64)
    got = [0]

    def producer() -> None:
        put = q.put
        for i in range(n):
            put(i)

    def consumer() -> None:
        get = q.get
        total = 0
        for _ in range(n):
            total += get()
        got[0] = total

    a, b = g.gevent.spawn(producer), g.gevent.spawn(consumer)
    start = time.perf_counter_ns()
    g.gevent.joinall([a, b], raise_error=True)
    elapsed = time.perf_counter_ns() - start
    common.check(got[0] == n * (n - 1) // 2, f"consumer summed {got[0]}")
    return {"ns": elapsed / n, "ops": n}


def echo(g: SimpleNamespace, scale: float) -> dict:
    import socket

    clients = 50 if scale >= 1 else 10
    requests = ops(200, scale)
    gsocket = g.gevent.socket
    message = bytes(range(64))

    def handle(sock, _addr) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        while True:
            data = recv(4096)
            if not data:
                break
            sendall(data)

    server = g.gevent.server.StreamServer(("127.0.0.1", 0), handle, backlog=256)
    server.start()
    port = server.server_port
    ok = [0]

    def client() -> None:
        sock = gsocket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        for _ in range(requests):
            sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = recv(4096)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                got += chunk
            if got == message:
                ok[0] += 1
        sock.close()

    try:
        start = time.perf_counter_ns()
        g.gevent.joinall([g.gevent.spawn(client) for _ in range(clients)], raise_error=True)
        elapsed = time.perf_counter_ns() - start
    finally:
        server.stop()
    common.check(ok[0] == clients * requests, f"{ok[0]} of {clients * requests} echoes right")
    done = clients * requests
    return {"ns": elapsed / done, "ops": done, "req_per_s": done / elapsed * 1e9}


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def crowd(g: SimpleNamespace, scale: float) -> dict:
    n = CROWD
    ev = g.gevent.event.Event()
    spawn = g.gevent.spawn
    wait = ev.wait
    gc.collect()
    before = rss()
    start = time.perf_counter_ns()
    glets = [spawn(wait) for _ in range(n)]
    g.gevent.sleep(0)  # runs every one of them up to its wait()
    parked_ns = time.perf_counter_ns() - start
    after = rss()
    common.check(not any(x.ready() for x in glets), "a greenlet of the crowd did not park")
    collections = []
    for _ in range(3):
        start = time.thread_time_ns()
        gc.collect()
        collections.append(time.thread_time_ns() - start)
    start = time.perf_counter_ns()
    ev.set()
    g.gevent.joinall(glets)
    wake_ns = time.perf_counter_ns() - start
    woken = sum(1 for x in glets if x.successful() and x.value is True)
    common.check(woken == n, f"{woken} of {n} parked greenlets woke with True")
    del glets
    return {
        "ns": (parked_ns + wake_ns) / n,
        "ops": n,
        "park_us": parked_ns / n / 1e3,
        "wake_us": wake_ns / n / 1e3,
        "rss_per": (after - before) / n,
        "gc_ms": min(collections) / 1e6,
    }


WORKLOADS = {
    "spawn_join": ("spawn + run + join", "greenlet", spawn_join),
    "sleep0": ("gevent.sleep(0) between two greenlets", "sleep(0)", sleep0),
    "event": ("Event set/wait hand-off", "hand-off", event),
    "queue": ("Queue(maxsize=64) producer -> consumer", "item", queue),
    "echo": ("StreamServer echo over loopback", "request", echo),
    "crowd": (f"crowd of {CROWD:,} in Event.wait(): park + wake", "greenlet", crowd),
    "event_deep100": ("Event hand-off, both 100 C frames deep", "hand-off", event_deep100),
}


# --------------------------------------------------------------------------- worker


def load_gevent(impl: str) -> SimpleNamespace:
    """Import gevent on the implementation under test; check that it is that one."""
    if impl == "corolet":
        if importlib.util.find_spec("greenlet") is not None:
            raise common.BenchError(f"the real greenlet is importable in {sys.prefix}")
        import corolet

        corolet.install()  # before gevent, which imports greenlet when imported
    import gevent
    import gevent.event
    import gevent.queue
    import gevent.server
    import gevent.socket
    import greenlet

    hub = gevent.get_hub()
    if impl == "corolet":
        import corolet

        common.check(isinstance(hub, corolet.greenlet), f"gevent's hub is a {type(hub)}")
        real = [
            name
            for name, m in list(sys.modules.items())
            if name.startswith("greenlet") and "site-packages" in str(getattr(m, "__file__", ""))
        ]
        common.check(not real, f"the real greenlet got loaded: {real}")
        described = f"corolet {corolet.__version__}"
    else:
        common.check(not getattr(greenlet, "__corolet__", False), "greenlet is corolet")
        common.check(
            greenlet.__version__ == common.GREENLET_VERSION,
            f"greenlet {greenlet.__version__}, expected {common.GREENLET_VERSION}",
        )
        described = f"greenlet {greenlet.__version__}"
    common.check(gevent.__version__ == GEVENT_VERSION, f"gevent {gevent.__version__}")
    return SimpleNamespace(gevent=gevent, described=described)


def worker(impl: str, name: str, scale: float, repeats: int, cpu: int | None) -> dict:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    g = load_gevent(impl)
    run = WORKLOADS[name][2]
    if name == "crowd":
        # RSS per parked greenlet is only meaningful the first time, in a fresh process;
        # warm gevent up on a small crowd of plain sleeps first.
        g.gevent.joinall([g.gevent.spawn(g.gevent.sleep, 0) for _ in range(100)])
        repeats = 1
    else:
        run(g, min(scale, 0.05))  # warm-up
    results = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            result = run(g, scale)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        finally:
            gc.enable()
        results.append({**result, "faults": faults / result["ops"]})
    best = min(results, key=lambda r: r["ns"])
    best["faults"] = min(r["faults"] for r in results)
    return {**best, "runs": [r["ns"] for r in results], "impl": g.described}


# --------------------------------------------------------------------------- environment

PTH = "corolet.pth"


def gevent_venv(python: str, impl: str, env: dict) -> str:
    """``<repo>/.venv-bench-gevent-<impl>-<ver>``'s python, (re)made when stale."""
    venv = REPO / f".venv-bench-gevent-{impl}-{env['version']}"
    vpy = venv / "bin" / "python"
    stamp = venv / ".bench-gevent-stamp"
    reqs = [f"gevent=={GEVENT_VERSION}"]
    if impl == "greenlet":
        reqs.append(f"greenlet=={common.GREENLET_VERSION}")
    wanted = "\n".join([env["sys_version"], *reqs, "without greenlet" if impl == "corolet" else ""])
    if not (vpy.exists() and stamp.exists() and stamp.read_text() == wanted):
        common.log(f"making {venv} with {', '.join(reqs)} ...")
        subprocess.run([env["base"], "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(vpy), "-m", "pip", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", *reqs], check=True)
        if impl == "corolet":
            # gevent depends on greenlet; this venv must only ever have corolet's.
            subprocess.run([*pip, "uninstall", "-y", "greenlet"], check=True)
        stamp.write_text(wanted)
    if impl == "corolet":
        # The corolet under test, each run (it is rebuilt in place by maturin develop).
        site = subprocess.run(
            [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(site, PTH).write_text(env["corolet_root"] + "\n")
    return str(vpy)


def environment(python: str) -> dict:
    code = (
        "import json, os, sys, corolet; print(json.dumps({"
        "'version': '%d.%d' % sys.version_info[:2], 'sys_version': sys.version, "
        "'base': getattr(sys, '_base_executable', sys.executable), "
        "'corolet': corolet.__version__, "
        "'corolet_root': os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise common.BenchError(f"{python} cannot import corolet:\n{out.stderr[-500:]}")
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- parent


def run_worker(python: str, impl: str, name: str, settings, cpu: int | None) -> dict:
    cmd = [python, str(SCRIPT), "--worker", impl, "--workload", name]
    cmd += ["--scale", str(settings.scale), "--repeats", str(settings.repeats)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # each venv has exactly what it needs
    env.pop("GEVENT_LOOP", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a crash leaves a traceback in the error tail
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        return {"error": f"exit status {out.returncode}\n{tail}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable worker output: {out.stdout[-300:]!r}"}


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "—"
    if ns >= 10_000:
        return f"{ns / 1000:,.1f} µs"
    return f"{ns:,.0f}"


def summarise(name: str, per_impl: dict) -> dict:
    label, unit, _ = WORKLOADS[name]
    row: dict = {"workload": name, "label": f"{label}, ns per {unit}", "errors": []}
    for impl in IMPLS:
        good = [r for r in per_impl[impl] if "error" not in r]
        row["errors"] += [
            {"impl": impl, "error": r["error"]} for r in per_impl[impl] if "error" in r
        ]
        row[impl] = min(good, key=lambda r: r["ns"]) if good else None
        if per_impl[impl] and not good:
            row[impl] = {"failed": True}
    c, g = row["corolet"], row["greenlet"]
    row["ratio"] = c["ns"] / g["ns"] if c and g and "ns" in c and "ns" in g else None
    return row


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| workload | corolet | greenlet | ratio | page faults per op (corolet / greenlet) |",
        "|---|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        c, g = (x if x and "ns" in x else None for x in (r["corolet"], r["greenlet"]))
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        cells = [
            "FAILED" if x and "failed" in x else fmt_ns(x["ns"] if x else None)
            for x in (r["corolet"], r["greenlet"])
        ]

        def both(key: str, fmt: str, pair: tuple = (c, g)) -> str:
            return " / ".join(format(x[key], fmt) if x else "—" for x in pair)

        row = f"| {r['label']} | {cells[0]} | {cells[1]} | {ratio} | {both('faults', '.3g')} |"
        lines.append(row)

        if r["workload"] == "echo":
            notes.append(f"echo: requests/s (corolet / greenlet) {both('req_per_s', ',.0f')}")
        if r["workload"] == "crowd":
            notes.append(
                f"crowd of {CROWD:,} (corolet / greenlet): create + park {both('park_us', '.2f')}"
                f" µs per greenlet, wake {both('wake_us', '.2f')} µs per greenlet, RSS "
                f"{both('rss_per', ',.0f')} B per parked greenlet, a full collection while "
                f"they are parked {both('gc_ms', '.1f')} ms"
            )
    return "\n".join(lines + ([""] + notes if notes else []))


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = SimpleNamespace(**vars(FAST if args.fast else FULL))
    for key in ("rounds", "repeats", "scale"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    cpu = args.cpu if args.cpu is not None else common.default_cpu()
    impls = args.impl or list(IMPLS)
    try:
        env = environment(args.python or sys.executable)
        pythons = {impl: gevent_venv(args.python or sys.executable, impl, env) for impl in impls}
    except (common.BenchError, OSError, subprocess.CalledProcessError) as e:
        common.log(f"bench_gevent: cannot set up: {e}")
        return 2
    names = args.workload or list(WORKLOADS)
    results = common.alternate_rounds(
        names,
        impls,
        settings.rounds,
        lambda impl, name: run_worker(pythons[impl], impl, name, settings, cpu),
    )
    rows = [summarise(name, results[name]) for name in names]
    mach = common.machine()
    header = (
        f"{mach['cpu']}, {mach['cpus']} CPUs (workers pinned to CPU {cpu}); Python "
        f"{env['sys_version'].split()[0]}; gevent {GEVENT_VERSION} on corolet {env['corolet']} "
        f"vs on greenlet {common.GREENLET_VERSION}; best of {settings.rounds} round(s) x "
        f"{settings.repeats} run(s), scale {settings.scale:g}; ratio = corolet / greenlet "
        "(lower is better)"
    )
    print(table(rows, header))
    elapsed = time.monotonic() - started
    common.log(f"took {elapsed:.1f} s")
    if args.json:
        doc = {
            "machine": mach,
            "python": env["sys_version"],
            "gevent_version": GEVENT_VERSION,
            "greenlet_version": common.GREENLET_VERSION,
            "corolet_version": env["corolet"],
            "cpu": cpu,
            "settings": vars(settings),
            "elapsed_s": round(elapsed, 2),
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    failed = [r["workload"] for r in rows if r["errors"]]
    if failed:
        common.log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--python", help="interpreter with corolet (default: this one)")
    p.add_argument("--fast", action="store_true", help="one round of small runs (for CI)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--workload", action="append", choices=list(WORKLOADS), help="repeatable")
    p.add_argument("--impl", action="append", choices=IMPLS, help="only these (repeatable)")
    p.add_argument("--rounds", type=int, help="alternating corolet/greenlet rounds")
    p.add_argument("--repeats", type=int, help="timed runs per worker (after a warm-up)")
    p.add_argument("--scale", type=float, help="workload size (1: full, 0.1: --fast)")
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
    scale = args.scale if args.scale is not None else FULL.scale
    repeats = args.repeats if args.repeats is not None else FULL.repeats
    print(json.dumps(worker(args.worker, args.workload[0], scale, repeats, args.cpu)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except common.BenchError as e:
        common.log(f"bench_gevent: {e}")
        sys.exit(1)
