"""What a portal costs: corolet.portal against greenback 1.3 on greenlet 3.5.6, on asyncio.

Method
------
Each side runs in worker subprocesses of its own (this script with ``--worker
corolet|greenback --workload NAME``), pinned to one CPU (``--cpu``, default the last one):

- corolet: this interpreter's environment; portals come from ``corolet.portal.install()``
  (the loop's task factory), so every task of the loop has one from its first step.
- greenback: ``<repo>/.venv-bench-greenback-<major.minor>``, made on the same interpreter with
  ``pip install greenlet==3.5.6 greenback==1.3.0``; each task that needs a portal starts with
  ``await greenback.ensure_portal()`` (greenback has no per-loop switch).

Every workload is timed twice in the same worker, *plain* (ordinary tasks, no portal) and
*portal*, alternating, ``--repeats`` times each after a warm-up, with the garbage collector
off, in the process's CPU time (``time.process_time_ns()``: the worker has one thread, and the
kernel's share of the socket workloads counts, but not the time other processes hold the CPU;
wall-clock figures of ``service`` moved by 30% between runs); the best of each is kept, and the
parent keeps the best over ``--rounds`` rounds (alternating which side goes first). Reported:
ns per unit plain and with a portal on each side, the ratio portal / plain (1.00: a portal
costs nothing), and corolet's portal figure against greenback's. Each workload returns a
checksum that the worker compares between plain and portal and the parent between the two
sides, so a workload that went wrong fails the run instead of giving a fast number. Under the
table, for the workloads that make the kernel switch threads (``orm``: aiosqlite's thread), the
process's context switches per unit on each side (``getrusage``, mean over the timed runs): a
count, not a time, for telling a portal's own cost from the thread hand-offs around it.

Workloads
---------
``step``
    One task doing ``await asyncio.sleep(0)`` N times: the cost of a task step (two switches
    per step with a portal). Unit: one step.
``await``
    From sync code in a portal, ``await_(asyncio.sleep(0))``, against ``await
    asyncio.sleep(0)`` in async code, both in a portal task (plain: the native await). Unit:
    one await.
``await_ready``
    The same with a coroutine that never suspends: what ``await_`` itself costs.
``requests``
    A realistic service: batches of 50 concurrent request tasks (a task per request, as a
    server makes them), each decoding a JSON body, doing some dict work, three "database" calls
    (a future the loop resolves on its next turn, through a small async client) and encoding
    a JSON reply. Portal side: the very same code in tasks that have portals (what
    ``install()`` costs a service that does not use them yet). Unit: one request.
``requests_sync``
    The same service, the portal side written the portal way: the handler is synchronous and
    makes its database calls through ``await_`` (plain: the async handler). Unit: one
    request.

``service``
    The same requests, each a task, but the "database" is a real server on a loopback TCP
    socket in the same loop (asyncio streams, ``TCP_NODELAY``, a connection per concurrent
    request, as a driver's pool): each of the three calls writes a line and reads the JSON row
    the server's connection task sends back, so a request makes system calls and waits for
    the loop's I/O, as a service with a real database does. Portal side: every task of the
    loop has a portal (corolet: ``install()``, so the server's connection tasks too; greenback:
    each request task calls ``ensure_portal()``). Unit: one request.
``service_sync``
    The same, the handler synchronous and its database calls made through ``await_``. Unit:
    one request.

``orm``
    SQLAlchemy's ``AsyncSession`` over aiosqlite (a file database in a temporary directory,
    64 rows made before the clock starts), what portals exist for: batches of 10 concurrent
    request tasks, each opening a session, fetching three rows by primary key
    (``session.get``, the identity map cleared after each, so each really queries) and
    closing it; the connection pool (5 + 10 overflow) serves the 10 at once. Plain: ordinary
    tasks. Portal side: the very same code in tasks that have portals (corolet:
    ``install()``; greenback: each task calls ``ensure_portal()``), SQLAlchemy's own
    ``greenlet_spawn`` running inside them. Both sides import ``greenlet`` through SQLAlchemy:
    corolet's worker calls ``corolet.install()`` first; greenback's venv gets the same
    SQLAlchemy and aiosqlite versions as this environment. aiosqlite's threads inherit the
    worker's CPU. Unit: one request.

``--fast`` (one round, short runs; ``make bench-fast``) checks that every workload runs and
gives the right checksums on both sides; the exit status is non-zero if a worker fails or a
checksum differs, never because of a number.

Examples::

    .venv-3.11/bin/python benches/bench_portal.py
    .venv-3.11/bin/python benches/bench_portal.py --fast --json /tmp/portal.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bench_greenlet as common

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
GREENBACK_VERSION = "1.3.0"
IMPLS = ["corolet", "greenback"]
WORKLOADS = ["step", "await", "await_ready", "requests", "requests_sync", "service"]
WORKLOADS += ["service_sync", "orm"]
UNITS = {"step": "task step", "await": "await", "await_ready": "await"}
UNITS |= {"requests": "request", "requests_sync": "request"}
UNITS |= {"service": "request", "service_sync": "request", "orm": "request"}
ORM_CONCURRENT = 10
ORM_GETS = 3
# What the orm workload needs in greenback's venv too (same versions as this environment).
ORM_PACKAGES = ("sqlalchemy", "aiosqlite")
FULL = SimpleNamespace(rounds=3, repeats=5, scale=1.0)
FAST = SimpleNamespace(rounds=1, repeats=1, scale=0.05)
WORKER_TIMEOUT_S = 300

# --------------------------------------------------------------------------- worker


def load(impl: str) -> SimpleNamespace:
    if impl == "corolet":
        import corolet.portal as portal

        return SimpleNamespace(
            await_=portal.await_,
            ensure=None,
            portal_loop=portal.new_event_loop,
            has_portal=portal.has_portal,
        )
    import greenback

    return SimpleNamespace(
        await_=greenback.await_,
        ensure=greenback.ensure_portal,
        portal_loop=asyncio.new_event_loop,
        has_portal=greenback.has_portal,
    )


async def _give_portal(impl: SimpleNamespace) -> None:
    if impl.ensure is not None:
        await impl.ensure()
    assert impl.has_portal(), "no portal where one was asked for"


async def step_body(impl: SimpleNamespace | None, n: int) -> tuple[int, int]:
    if impl is not None:
        await _give_portal(impl)
    start = time.process_time_ns()
    for _ in range(n):
        await asyncio.sleep(0)
    return time.process_time_ns() - start, n


async def _ready(value: int) -> int:
    return value


def _sync_awaits(impl: SimpleNamespace, n: int, ready: bool) -> int:
    total = 0
    await_ = impl.await_
    for i in range(n):
        total += await_(_ready(i)) if ready else (await_(asyncio.sleep(0)) or 1)
    return total


async def await_body(impl: SimpleNamespace, n: int, ready: bool, native: bool) -> tuple[int, int]:
    await _give_portal(impl)
    start = time.process_time_ns()
    if native:
        total = 0
        for i in range(n):
            total += await _ready(i) if ready else (await asyncio.sleep(0) or 1)
    else:
        total = _sync_awaits(impl, n, ready)
    return time.process_time_ns() - start, total


class FakeDatabase:
    """Each query is answered on the loop's next turn, like a driver's reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rows = {i: {"id": i, "name": f"user{i}", "score": i * 7 % 101} for i in range(64)}

    async def query(self, key: int) -> dict[str, Any]:
        future = self.loop.create_future()
        self.loop.call_soon(future.set_result, self.rows[key % 64])
        return await future


def _handle(body: str, fetch: Any) -> str:
    request = json.loads(body)
    keys = request["keys"]
    rows = [fetch(k) for k in keys]
    scores = {row["name"]: row["score"] for row in rows}
    best = max(scores, key=scores.__getitem__)
    reply = {"id": request["id"], "best": best, "total": sum(scores.values()), "n": len(rows)}
    return json.dumps(reply, sort_keys=True)


async def request_plain(db: Any, body: str) -> str:
    request = json.loads(body)
    rows = [await db.query(k) for k in request["keys"]]
    scores = {row["name"]: row["score"] for row in rows}
    best = max(scores, key=scores.__getitem__)
    reply = {"id": request["id"], "best": best, "total": sum(scores.values()), "n": len(rows)}
    return json.dumps(reply, sort_keys=True)


async def request_portal(impl: SimpleNamespace, db: Any, body: str, sync: bool) -> str:
    if impl.ensure is not None:
        await impl.ensure()
    if not sync:
        return await request_plain(db, body)
    await_ = impl.await_
    return _handle(body, lambda key: await_(db.query(key)))


async def requests_body(
    impl: SimpleNamespace | None, batches: int, sync: bool = False, sockets: bool = False
) -> tuple[int, int]:
    """Batches of 50 concurrent requests against the fake database, or (``sockets``) against
    the one behind a socket, a connection per request slot."""
    server = SocketDatabase() if sockets else None
    if server is not None:
        await server.open()
        dbs: list[Any] = [server.client(i) for i in range(SocketDatabase.CONNECTIONS)]
    else:
        dbs = [FakeDatabase(asyncio.get_running_loop())] * 50
    checksum = 0
    start = time.process_time_ns()
    for b in range(batches):
        bodies = [json.dumps({"id": b * 50 + i, "keys": [i, i + 3, i + 11]}) for i in range(50)]
        if impl is None:
            tasks = [asyncio.ensure_future(request_plain(dbs[i], x)) for i, x in enumerate(bodies)]
        else:
            tasks = [
                asyncio.ensure_future(request_portal(impl, dbs[i], x, sync))
                for i, x in enumerate(bodies)
            ]
        for reply in await asyncio.gather(*tasks):
            checksum += len(reply) + json.loads(reply)["total"]
    elapsed = time.process_time_ns() - start
    if server is not None:
        await server.close()
    return elapsed, checksum


class SocketDatabase:
    """A "database" behind a real loopback TCP socket: a server in the same loop answers each
    line ``<key>`` with a JSON row, and each request slot has a connection of its own (as a
    driver's pool would). A query is a write, the server task's read and reply, and a read:
    system calls and an event-loop turn, as with a real driver."""

    CONNECTIONS = 50

    def __init__(self) -> None:
        self.rows = {i: {"id": i, "name": f"user{i}", "score": i * 7 % 101} for i in range(64)}
        self.server: asyncio.Server | None = None
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(json.dumps(self.rows[int(line) % 64]).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        for _ in range(self.CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            self.conns.append((reader, writer))

    async def close(self) -> None:
        for _, writer in self.conns:
            writer.close()
            await writer.wait_closed()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def client(self, slot: int) -> SocketClient:
        reader, writer = self.conns[slot]
        return SocketClient(reader, writer)


class SocketClient:
    """One connection of ``SocketDatabase``, with ``FakeDatabase``'s ``query``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def query(self, key: int) -> dict[str, Any]:
        self.writer.write(b"%d\n" % key)
        return json.loads(await self.reader.readline())  # type: ignore[no-any-return]


class OrmDatabase:
    """The orm workload's database: an engine, a mapped table of 64 rows, a session maker."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def open(self) -> None:
        from sqlalchemy import Integer, String
        from sqlalchemy.ext.asyncio import async_sessionmaker
        from sqlalchemy.orm import DeclarativeBase, mapped_column

        class Base(DeclarativeBase):
            pass

        class User(Base):  # no annotations: they would be strings here (future import)
            __tablename__ = "users"
            id = mapped_column(Integer, primary_key=True)
            name = mapped_column(String(40), nullable=False)
            score = mapped_column(Integer, nullable=False)

        self.User = User
        self.engine = common.sqlite_async_engine(self.path)

        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        self.Session = async_sessionmaker(self.engine, expire_on_commit=False)
        async with self.Session() as session:
            session.add_all(User(id=i, name=f"user{i}", score=i * 7 % 101) for i in range(64))
            await session.commit()

    async def close(self) -> None:
        await self.engine.dispose()


async def orm_request(impl: SimpleNamespace | None, db: OrmDatabase, rid: int) -> int:
    if impl is not None and impl.ensure is not None:
        await impl.ensure()
    total = 0
    async with db.Session() as session:
        for k in range(ORM_GETS):
            user = await session.get(db.User, (rid * 5 + k * 11) % 64)
            total += user.score + len(user.name)
            session.expunge_all()
    return total


async def orm_body(impl: SimpleNamespace | None, batches: int, path: str) -> tuple[int, int]:
    db = OrmDatabase(path)
    await db.open()
    checksum = 0
    start = time.process_time_ns()
    for b in range(batches):
        tasks = [
            asyncio.ensure_future(orm_request(impl, db, b * ORM_CONCURRENT + i))
            for i in range(ORM_CONCURRENT)
        ]
        checksum += sum(await asyncio.gather(*tasks))
    elapsed = time.process_time_ns() - start
    await db.close()
    return elapsed, checksum


ORM_DIR: list[str] = []  # the worker's temporary directory for the orm database


def one_run(impl: SimpleNamespace, workload: str, portal: bool, scale: float) -> tuple[int, int]:
    """(elapsed ns, checksum) of one timed run; the units are the workload's count."""
    in_portal = portal or workload in ("await", "await_ready")  # both sides in a portal task
    loop = impl.portal_loop() if in_portal else asyncio.new_event_loop()
    try:
        if workload == "step":
            body = step_body(impl if portal else None, count(workload, scale))
        elif workload in ("await", "await_ready"):
            body = await_body(impl, count(workload, scale), workload == "await_ready", not portal)
        elif workload == "orm":
            path = os.path.join(ORM_DIR[0], "orm.sqlite")
            body = orm_body(impl if portal else None, count(workload, scale), path)
        else:
            sync = workload.endswith("_sync")
            sockets = workload.startswith("service")
            body = requests_body(impl if portal else None, count(workload, scale), sync, sockets)
        gc.disable()
        try:
            return loop.run_until_complete(body)
        finally:
            gc.enable()
    finally:
        loop.close()


def count(workload: str, scale: float) -> int:
    base = {"step": 200_000, "await": 200_000, "await_ready": 400_000}
    base |= {"requests": 400, "requests_sync": 400, "service": 60, "service_sync": 60}
    base |= {"orm": 100}
    return max(1, int(base[workload] * scale))


def units(workload: str, scale: float) -> int:
    if workload == "orm":
        return count(workload, scale) * ORM_CONCURRENT
    batched = workload.startswith(("requests", "service"))
    return count(workload, scale) * (50 if batched else 1)


def worker(impl_name: str, workload: str, repeats: int, scale: float, cpu: int | None) -> dict:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # first: aiosqlite's threads inherit it
    if workload == "orm":
        if impl_name == "corolet":
            import corolet

            corolet.install()  # SQLAlchemy imports greenlet: corolet's, before it is imported
        import tempfile

        ORM_DIR.append(tempfile.mkdtemp(prefix="bench-portal-orm-"))
    impl = load(impl_name)
    best = {"plain": None, "portal": None}
    sums = {"plain": set(), "portal": set()}
    switches = {"plain": 0, "portal": 0}  # the kernel's context switches in the timed runs
    one_run(impl, workload, False, scale / 4)  # warm-up
    one_run(impl, workload, True, scale / 4)
    for _ in range(repeats):
        for side in ("plain", "portal"):
            before = context_switches()
            ns, checksum = one_run(impl, workload, side == "portal", scale)
            switches[side] += context_switches() - before
            sums[side].add(checksum)
            if best[side] is None or ns < best[side]:
                best[side] = ns
    for path in ORM_DIR:
        shutil.rmtree(path, ignore_errors=True)
    if len(sums["plain"]) != 1 or sums["plain"] != sums["portal"]:
        raise common.BenchError(f"{workload}: checksums differ: {sums}")
    n = units(workload, scale)
    return {
        "plain_ns": best["plain"] / n,
        "portal_ns": best["portal"] / n,
        "plain_csw": switches["plain"] / (n * repeats),
        "portal_csw": switches["portal"] / (n * repeats),
        "checksum": sums["plain"].pop(),
    }


def context_switches() -> int:
    """The process's context switches so far, voluntary and not, all its threads (aiosqlite's
    included): where the orm workload's CPU time goes besides Python, and what moves it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


# --------------------------------------------------------------------------- parent


def orm_versions() -> dict[str, str]:
    """This environment's versions of what the orm workload needs (none if absent)."""
    import importlib.metadata

    found = {}
    for name in ORM_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def greenback_venv(python: str, sys_version: str, version: str) -> str:
    """The python of ``<repo>/.venv-bench-greenback-<version>``; (re)made if needed, with
    this environment's SQLAlchemy and aiosqlite versions for the orm workload."""
    venv = REPO / f".venv-bench-greenback-{version}"
    vpy = str(venv / "bin" / "python")
    extra = orm_versions()
    if os.path.exists(vpy) and venv_ok(vpy, sys_version, extra):
        return vpy
    pins = [f"greenlet=={common.GREENLET_VERSION}", f"greenback=={GREENBACK_VERSION}"]
    pins += [f"{name}=={v}" for name, v in extra.items()]
    common.log(f"making {venv} with {' '.join(pins)}")
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *pins], check=True)
    if not venv_ok(vpy, sys_version, extra):
        raise common.BenchError(f"{venv} does not provide {' '.join(pins)}")
    return vpy


def venv_ok(vpy: str, sys_version: str, extra: dict[str, str]) -> bool:
    try:
        greenlet = common.probe(vpy, "greenlet")
        greenback = common.probe(vpy, "greenback")
        others = {name: common.probe(vpy, name).get(name) for name in extra}
    except (OSError, subprocess.CalledProcessError, ValueError):
        return False
    return (
        greenlet["sys_version"] == sys_version
        and greenlet.get("greenlet") == common.GREENLET_VERSION
        and greenback.get("greenback") == GREENBACK_VERSION
        and others == extra
    )


def run_worker(python: str, impl: str, workload: str, settings: SimpleNamespace, cpu: Any) -> dict:
    cmd = [python, str(SCRIPT), "--worker", impl, "--workload", workload]
    cmd += ["--repeats", str(settings.repeats), "--scale", str(settings.scale)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    env = dict(os.environ)
    if impl == "greenback":
        env.pop("PYTHONPATH", None)  # nothing of corolet's may shadow the real greenlet
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    if out.returncode != 0:
        return {"error": f"exit status {out.returncode}\n{out.stderr.strip()[-800:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(workload: str, per_impl: dict) -> dict:
    row: dict = {"workload": workload, "unit": UNITS[workload], "errors": []}
    sums = set()
    for impl in IMPLS:
        good = [r for r in per_impl[impl] if "error" not in r]
        row["errors"] += [
            {"impl": impl, "error": r["error"]} for r in per_impl[impl] if "error" in r
        ]
        if not good:
            row[impl] = None
            continue
        plain = min(r["plain_ns"] for r in good)
        portal = min(r["portal_ns"] for r in good)
        sums |= {r["checksum"] for r in good}
        row[impl] = {"plain_ns": plain, "portal_ns": portal, "ratio": portal / plain}
        for side in ("plain", "portal"):
            row[impl][f"{side}_csw"] = sum(r[f"{side}_csw"] for r in good) / len(good)
    if len(sums) > 1:
        row["errors"].append({"impl": "both", "error": f"checksums differ between sides: {sums}"})
    if row["corolet"] and row["greenback"]:
        row["corolet_vs_greenback"] = row["corolet"]["portal_ns"] / row["greenback"]["portal_ns"]
    return row


def table(rows: list[dict], header: str) -> str:
    head = (
        "| workload (ns per unit) | plain | corolet portal | ratio | greenback portal | ratio "
        "| corolet / greenback |"
    )
    lines = [header, "", head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, g = r["corolet"], r["greenback"]

        def cell(x: Any, key: str, fmt: str) -> str:
            return format(x[key], fmt) if x else "-"

        vs = format(r["corolet_vs_greenback"], ".2f") if "corolet_vs_greenback" in r else "-"
        lines.append(
            f"| {r['workload']} (per {r['unit']}) | {cell(c, 'plain_ns', '.0f')} | "
            f"{cell(c, 'portal_ns', '.0f')} | {cell(c, 'ratio', '.2f')} | "
            f"{cell(g, 'portal_ns', '.0f')} | {cell(g, 'ratio', '.2f')} | {vs} |"
        )
    busy = [r for r in rows if any(r[i] and r[i]["portal_csw"] >= 0.05 for i in IMPLS)]
    if busy:
        lines += ["", "Context switches per unit (all threads, timed runs), plain / portal:"]
    for r in busy:
        both = [
            f"{impl} {r[impl]['plain_csw']:.2f} / {r[impl]['portal_csw']:.2f}"
            for impl in IMPLS
            if r[impl]
        ]
        lines.append(f"- {r['workload']}: {'; '.join(both)}")
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = SimpleNamespace(**vars(FAST if args.fast else FULL))
    for key in ("rounds", "repeats", "scale"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    cpu = args.cpu if args.cpu is not None else common.default_cpu()
    python = sys.executable
    env = common.probe(python, "corolet")
    if "corolet" not in env:
        common.log(f"{python} cannot import corolet: {env.get('error')}")
        return 2
    try:
        greenback_py = args.greenback_python or greenback_venv(
            python, env["sys_version"], env["version"]
        )
    except (common.BenchError, OSError, subprocess.CalledProcessError) as e:
        common.log(f"no greenback {GREENBACK_VERSION} to compare with: {e}")
        return 2
    pythons = {"corolet": python, "greenback": greenback_py}
    names = args.workload or WORKLOADS
    results = common.alternate_rounds(
        names,
        IMPLS,
        settings.rounds,
        lambda impl, name: run_worker(pythons[impl], impl, name, settings, cpu),
    )
    rows = [summarise(name, results[name]) for name in names]
    mach = common.machine()
    header = (
        f"{mach['cpu']}, {mach['cpus']} CPUs (workers pinned to CPU {cpu}); Python "
        f"{env['sys_version'].split()[0]}; corolet {env['corolet']}; greenback "
        f"{GREENBACK_VERSION} on greenlet {common.GREENLET_VERSION}; best of "
        f"{settings.rounds} round(s) x {settings.repeats} run(s); ratio = portal / plain"
    )
    print(table(rows, header))
    elapsed = time.monotonic() - started
    common.log(f"took {elapsed:.1f} s")
    if args.json:
        doc = {"machine": mach, "python": env["sys_version"], "settings": vars(settings)}
        doc.update({"cpu": cpu, "elapsed_s": round(elapsed, 2), "results": rows})
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    failed = [r for r in rows if r["errors"]]
    for r in failed:
        for e in r["errors"]:
            common.log(f"{r['workload']} ({e['impl']}): {e['error']}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--greenback-python", help="interpreter with greenback (default: own venv)")
    p.add_argument("--fast", action="store_true", help="one short round that checks results")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable")
    p.add_argument("--rounds", type=int, help="alternating corolet/greenback rounds")
    p.add_argument("--repeats", type=int, help="timed runs per side (default 5; --fast: 1)")
    p.add_argument("--scale", type=float, help="workload size factor (default 1; --fast: 0.05)")
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
    repeats = args.repeats if args.repeats is not None else FULL.repeats
    scale = args.scale if args.scale is not None else FULL.scale
    result = worker(args.worker, args.workload[0], repeats, scale, args.cpu)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except common.BenchError as e:
        common.log(f"bench_portal: {e}")
        sys.exit(1)
