"""SQLAlchemy's asyncio ORM over aiosqlite, on corolet against greenlet 3.5.6.

Method
------
SQLAlchemy's asyncio extension runs the whole synchronous ORM inside greenlets
(``greenlet_spawn``) and switches out to the event loop at every driver call (``await_only``).
This benchmark drives a small mapped model through ``AsyncSession`` over aiosqlite on a file
database in a temporary directory, with each implementation in worker processes of its own
(this script with ``--worker corolet|greenlet``):

- corolet: this interpreter's environment (``.venv-<major.minor>``, where SQLAlchemy and
  aiosqlite come from ``tests/requirements.txt`` and the real greenlet is not installed). The
  worker checks that ``greenlet`` is not importable, calls ``corolet.install()`` before
  SQLAlchemy is imported, checks that the greenlets SQLAlchemy runs the ORM in are corolet's,
  and at the end that no real greenlet got loaded.
- greenlet: ``<repo>/.venv-bench-orm-greenlet-<major.minor>``, made with ``python -m venv`` on
  the same interpreter and ``pip install greenlet==3.5.6`` plus the very SQLAlchemy and
  aiosqlite versions the corolet side has (a stamp file records them; the venv is remade when
  they change). ``bench_bridge.py``'s ``.venv-bench-<major.minor>`` is not reused: it owns it
  and remakes it when its own requirements change.

Each worker first pins itself to one CPU with ``os.sched_setaffinity(0, {cpu})`` (``--cpu``, by
default the last CPU this process may use), before anything else starts, so the event loop's
thread and aiosqlite's worker thread (which inherits the mask) share that CPU: the hand-offs
between them then cost the same on both sides and do not depend on where the scheduler
happens to put the threads. Then, ``--runs`` times plus one warm-up, each on a fresh database
file (``PRAGMA synchronous=OFF``, so that fsync latency does not drown what is measured):

- ``insert``: ``--batches`` sessions each adding ``--batch`` new rows (``session.add_all``)
  and committing: rows per second;
- ``get``: ``await session.get(Item, pk)`` for ``--gets`` primary keys spread over the table,
  in one session whose identity map is cleared (``expunge_all``) after every get, so each get
  really queries: gets per second;

and checks the results (the row count after the inserts; every fetched row's contents). Times
are the process's CPU time (``time.process_time_ns()``, both threads, kernel time included):
with both threads on one CPU and fsync off, that is the phase's work, and the time other
processes hold that CPU does not count (wall-clock figures on a busy 2-core machine swung by
30% between runs of the same build). Page
faults (``getrusage(RUSAGE_SELF).ru_minflt``, both threads) are counted over each phase and
reported per row and per get. The parent runs ``--rounds`` rounds, alternating which side
goes first, and keeps each side's best figure over all rounds and runs. The ratio is
corolet / greenlet throughput (above 1, corolet is faster); *per round* gives that ratio's
range when each round's best figures are compared on their own, the noise the best-of ratio
sits in (on this machine's 2 shared cores, 0.9-1.1 for the same build is usual). Most of the
time goes to the ORM's Python code and the two-thread driver; what the greenlet
implementation changes is the cost of the switches and of running the ORM's frames inside a
greenlet.

``--fast`` (one round, one short run per side; CI keeps the benchmark working with it) takes a
few seconds, plus about 15 s the first time, to make the greenlet venv. The exit status is
non-zero only if a worker crashes, times out, or a check fails; the numbers are never judged.

Examples::

    .venv-3.11/bin/python benches/bench_orm.py
    .venv-3.11/bin/python benches/bench_orm.py --fast --json /tmp/orm.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import bench_greenlet as common

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
IMPLS = common.IMPLS
FULL = SimpleNamespace(rounds=3, runs=3, batches=10, batch=1000, gets=3000)
FAST = SimpleNamespace(rounds=1, runs=1, batches=2, batch=1000, gets=300)
WORKER_TIMEOUT_S = 600
METRICS = (
    # key, label, unit; higher is better for the first two
    ("insert_per_s", "insert, 1000 rows per commit", "rows/s"),
    ("get_per_s", "session.get() by primary key", "gets/s"),
    ("insert_faults", "page faults per inserted row", "faults"),
    ("get_faults", "page faults per get", "faults"),
)


# --------------------------------------------------------------------------- worker


def setup_impl(impl: str) -> str:
    """Make ``import greenlet`` give the implementation under test; describe it."""
    if impl == "corolet":
        if importlib.util.find_spec("greenlet") is not None:
            raise common.BenchError(
                f"the real greenlet is importable in {sys.prefix}: the corolet worker must not "
                "see it (pip uninstall greenlet)"
            )
        import corolet

        corolet.install()  # before SQLAlchemy is imported
        return f"corolet {corolet.__version__}"
    import greenlet

    common.check(not getattr(greenlet, "__corolet__", False), "greenlet resolved to corolet")
    common.check(
        greenlet.__version__ == common.GREENLET_VERSION,
        f"greenlet {greenlet.__version__}, expected {common.GREENLET_VERSION}",
    )
    return f"greenlet {greenlet.__version__}"


def check_no_real_greenlet() -> None:
    mod = sys.modules.get("greenlet")
    common.check(getattr(mod, "__corolet__", False), f"greenlet is {mod!r}, not corolet")
    real = [
        name
        for name, m in list(sys.modules.items())
        if name.startswith("greenlet") and "site-packages" in str(getattr(m, "__file__", ""))
    ]
    common.check(not real, f"the real greenlet got loaded: {real}")


def worker(impl: str, settings: SimpleNamespace, tmp: str, cpu: int | None) -> dict:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})  # first: every thread started later inherits it
    described = setup_impl(impl)

    import asyncio

    import aiosqlite
    import greenlet
    import sqlalchemy
    from sqlalchemy import Integer, String, func, select
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    class Item(Base):  # without annotations: they would be strings here (future import)
        __tablename__ = "items"

        id = mapped_column(Integer, primary_key=True)
        name = mapped_column(String(40), nullable=False)
        value = mapped_column(Integer, nullable=False)
        note = mapped_column(String(100))

    def expected(pk: int) -> tuple[str, int]:
        return f"item-{pk}", pk * 7 % 1009

    def greenlet_type(_sync_session) -> type:
        return type(greenlet.getcurrent())

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    async def one_run(db: str, batches: int, gets: int) -> dict:
        engine = common.sqlite_async_engine(db)

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        batch = settings.batch
        rows = batches * batch

        f0 = faults()
        t0 = time.process_time_ns()
        for b in range(batches):
            async with Session() as session:
                session.add_all(
                    Item(id=pk, name=name, value=value, note="x" * (pk % 50))
                    for pk in range(b * batch + 1, (b + 1) * batch + 1)
                    for name, value in (expected(pk),)
                )
                await session.commit()
        insert_ns = time.process_time_ns() - t0
        insert_faults = faults() - f0

        async with Session() as session:
            count = await session.scalar(select(func.count()).select_from(Item))
            common.check(count == rows, f"{count} rows in the table, expected {rows}")
            kind = await session.run_sync(greenlet_type)
        if impl == "corolet":
            common.check(
                issubclass(kind, sys.modules["corolet"].greenlet),
                f"SQLAlchemy runs the ORM in a {kind}, not in a corolet greenlet",
            )
        pks = [(i * 7919) % rows + 1 for i in range(gets)]
        bad = []
        async with Session() as session:
            get = session.get
            clear = session.expunge_all
            f0 = faults()
            t0 = time.process_time_ns()
            for pk in pks:
                item = await get(Item, pk)
                if (item.name, item.value) != expected(pk):
                    bad.append(pk)
                clear()
            get_ns = time.process_time_ns() - t0
            get_faults = faults() - f0
        common.check(not bad, f"wrong rows fetched for primary keys {bad[:5]}")
        await engine.dispose()
        return {
            "insert_per_s": rows / insert_ns * 1e9,
            "get_per_s": gets / get_ns * 1e9,
            "insert_faults": insert_faults / rows,
            "get_faults": get_faults / gets,
            "greenlet_type": f"{kind.__module__}.{kind.__qualname__}",
        }

    async def all_runs() -> list[dict]:
        await one_run(os.path.join(tmp, "warmup.sqlite"), 1, min(200, settings.gets))
        return [
            await one_run(os.path.join(tmp, f"run{i}.sqlite"), settings.batches, settings.gets)
            for i in range(settings.runs)
        ]

    runs = asyncio.run(all_runs())
    if impl == "corolet":
        check_no_real_greenlet()
    best = {
        "insert_per_s": max(r["insert_per_s"] for r in runs),
        "get_per_s": max(r["get_per_s"] for r in runs),
        "insert_faults": min(r["insert_faults"] for r in runs),
        "get_faults": min(r["get_faults"] for r in runs),
    }
    return {
        **best,
        "runs": runs,
        "impl": described,
        "sqlalchemy": sqlalchemy.__version__,
        "aiosqlite": aiosqlite.__version__,
        "cpu": cpu,
    }


# --------------------------------------------------------------------------- environment


def versions(python: str) -> dict:
    """The SQLAlchemy and aiosqlite versions ``python`` has (and corolet's)."""
    out = {}
    for module in ("corolet", "sqlalchemy", "aiosqlite"):
        info = common.probe(python, module)
        if module not in info:
            raise common.BenchError(f"{python} cannot import {module}: {info.get('error')}")
        out[module] = info[module]
        out["sys_version"], out["version"] = info["sys_version"], info["version"]
    return out


def orm_greenlet_venv(python: str, env: dict) -> str:
    """``<repo>/.venv-bench-orm-greenlet-<ver>``'s python, (re)made when stale."""
    venv = REPO / f".venv-bench-orm-greenlet-{env['version']}"
    vpy = venv / "bin" / "python"
    stamp = venv / ".bench-orm-stamp"
    reqs = [
        f"greenlet=={common.GREENLET_VERSION}",
        f"sqlalchemy=={env['sqlalchemy']}",
        f"aiosqlite=={env['aiosqlite']}",
    ]
    wanted = "\n".join([env["sys_version"], *reqs])
    if vpy.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(vpy)
    common.log(f"making {venv} with {', '.join(reqs)} ...")
    base = python_base(python)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *reqs], check=True)
    info = common.probe(str(vpy), "greenlet")
    if info.get("greenlet") != common.GREENLET_VERSION or info["sys_version"] != env["sys_version"]:
        raise common.BenchError(f"{venv} does not provide greenlet {common.GREENLET_VERSION}")
    stamp.write_text(wanted)
    return str(vpy)


def python_base(python: str) -> str:
    """The base interpreter behind ``python`` (which may itself be a venv's)."""
    code = "import sys; print(getattr(sys, '_base_executable', sys.executable))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


# --------------------------------------------------------------------------- parent


def run_worker(python: str, impl: str, settings: SimpleNamespace, cpu: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-orm-") as tmp:
        cmd = [python, str(SCRIPT), "--worker", impl, "--tmp", tmp]
        for key in ("runs", "batches", "batch", "gets"):
            cmd += [f"--{key}", str(getattr(settings, key))]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        env = dict(os.environ)
        if impl == "greenlet":
            env.pop("PYTHONPATH", None)
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        return {"error": f"exit status {out.returncode}\n{tail}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable worker output: {out.stdout[-300:]!r}"}


def best_of(results: list[dict], key: str) -> float | None:
    good = [r[key] for r in results if "error" not in r]
    if not good:
        return None
    return min(good) if key.endswith("faults") else max(good)


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "FAILED"
    return f"{value:.2f}" if key.endswith("faults") else f"{value:,.0f}"


def table(results: dict, header: str) -> tuple[str, list[dict]]:
    lines = [header, "", "| workload | corolet | greenlet | corolet / greenlet | per round |"]
    lines.append("|---|---:|---:|---:|---:|")
    rows = []
    for key, label, unit in METRICS:
        c, g = best_of(results["corolet"], key), best_of(results["greenlet"], key)
        ratio = c / g if c is not None and g else None
        spread = round_ratios(results, key)
        rows.append(
            {"metric": key, "label": f"{label}, {unit}", "corolet": c, "greenlet": g}
            | {"round_ratios": spread}
        )
        if ratio is None or key.endswith("faults"):
            shown = per_round = "—"
        else:
            shown = f"{ratio:.2f}"
            per_round = f"{min(spread):.2f}-{max(spread):.2f}" if spread else "—"
        lines.append(f"| {label}, {unit} | {fmt(c, key)} | {fmt(g, key)} | {shown} | {per_round} |")
    return "\n".join(lines), rows


def round_ratios(results: dict, key: str) -> list[float]:
    """corolet / greenlet for each round on its own (each side's best run of that round):
    their range is the run-to-run noise the best-of ratio sits in."""
    ratios = []
    for c, g in zip(results["corolet"], results["greenlet"], strict=True):
        if "error" not in c and "error" not in g and g[key]:
            ratios.append(c[key] / g[key])
    return ratios


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = SimpleNamespace(**vars(FAST if args.fast else FULL))
    for key in vars(settings):
        if getattr(args, key, None) is not None:
            setattr(settings, key, getattr(args, key))
    cpu = args.cpu if args.cpu is not None else common.default_cpu()
    python = args.python or sys.executable
    try:
        env = versions(python)
        greenlet_py = args.greenlet_python or orm_greenlet_venv(python, env)
    except (common.BenchError, OSError, subprocess.CalledProcessError) as e:
        common.log(f"bench_orm: cannot set up: {e}")
        return 2
    pythons = {"corolet": python, "greenlet": greenlet_py}
    results: dict = {impl: [] for impl in IMPLS}
    for rnd in range(settings.rounds):
        common.log(f"round {rnd + 1}/{settings.rounds}")
        for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
            res = run_worker(pythons[impl], impl, settings, cpu)
            results[impl].append(res)
            if "error" in res:
                common.log(f"  {impl} FAILED: {res['error']}")
    mach = common.machine()
    described = {
        impl: next((r["impl"] for r in results[impl] if "error" not in r), impl) for impl in IMPLS
    }
    header = (
        f"{mach['cpu']}, {mach['cpus']} CPUs (each worker's threads pinned to CPU {cpu}); "
        f"Python {env['sys_version'].split()[0]}; SQLAlchemy {env['sqlalchemy']}, aiosqlite "
        f"{env['aiosqlite']}, file database; {described['corolet']} vs "
        f"{described['greenlet']}; best of {settings.rounds} round(s) x {settings.runs} "
        f"run(s); {settings.batches} x {settings.batch} rows inserted, {settings.gets} gets "
        "per run; ratio = corolet / greenlet throughput (higher is better); per round = "
        "the range of that ratio taken round by round (the run-to-run noise)"
    )
    text, rows = table(results, header)
    print(text)
    elapsed = time.monotonic() - started
    common.log(f"took {elapsed:.1f} s")
    if args.json:
        doc = {
            "machine": mach,
            "python": env["sys_version"],
            "versions": {k: env[k] for k in ("corolet", "sqlalchemy", "aiosqlite")},
            "greenlet_version": common.GREENLET_VERSION,
            "cpu": cpu,
            "settings": vars(settings),
            "elapsed_s": round(elapsed, 2),
            "results": rows,
            "workers": results,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    failed = [impl for impl in IMPLS if any("error" in r for r in results[impl])]
    if failed:
        common.log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--python", help="interpreter with corolet, SQLAlchemy, aiosqlite")
    p.add_argument("--greenlet-python", help="interpreter with greenlet (default: own venv)")
    p.add_argument("--fast", action="store_true", help="one short round (for CI)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--rounds", type=int, help="alternating corolet/greenlet rounds")
    p.add_argument("--runs", type=int, help="timed runs per worker (after one warm-up)")
    p.add_argument("--batches", type=int, help="commits per insert phase")
    p.add_argument("--batch", type=int, help="rows per commit")
    p.add_argument("--gets", type=int, help="session.get() calls per get phase")
    p.add_argument("--cpu", type=int, help="CPU to pin the workers to (default: the last)")
    p.add_argument("--worker", choices=IMPLS, help="internal: one worker, print JSON")
    p.add_argument("--tmp", help="internal: the worker's database directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.worker:
        return parent(args)
    settings = SimpleNamespace(**vars(FULL))
    for key in vars(settings):
        if getattr(args, key, None) is not None:
            setattr(settings, key, getattr(args, key))
    print(json.dumps(worker(args.worker, settings, args.tmp, args.cpu)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except common.BenchError as e:
        common.log(f"bench_orm: {e}")
        sys.exit(1)
