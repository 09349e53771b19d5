"""The bridge's own overhead: corolet's bridge on corolet vs SQLAlchemy's on the real greenlet.

What is measured (ns per operation, lower is better):

- ``await_only``: one round trip through the bridge, inside a greenlet started by
  ``greenlet_spawn``: ``await_only(coro())`` where ``coro`` returns at once. That is a switch to
  the driver, an ``await`` of the coroutine, a switch back. Creating the coroutine is included, on
  both sides alike; the ``plain await`` line shows what awaiting the same coroutine costs without
  any bridge.
- ``greenlet_spawn``: ``await greenlet_spawn(fn)`` of a function that returns at once (never
  awaits): creating a greenlet, switching into it, finishing it.

Sides:

- ``corolet``: ``corolet.bridge`` on corolet, in this interpreter (which must have corolet).
- ``sqlalchemy+greenlet``: SQLAlchemy's bridge (``sqlalchemy.util.concurrency``) on the real
  greenlet 3.5.6, in its own virtualenv, ``<repo>/.venv-bench-<major.minor>``, created on first
  use from this interpreter's base with ``pip install greenlet==3.5.6 sqlalchemy`` (so the real
  greenlet never shares an environment with corolet's tests).
- ``sqlalchemy+corolet`` (extra, for context): SQLAlchemy's bridge on corolet after
  ``corolet.install()``, in this interpreter; it separates the core's cost from the bridge's.

Each measurement runs in a fresh child process; the sides alternate, each is repeated and the
best (smallest) figure of each is kept, which is the one least disturbed by the machine. The
ratio is the real greenlet's time divided by corolet's: above 1, corolet is faster.

Run: ``python benches/bench_bridge.py`` (10-20 s) or ``--fast`` (a few seconds, for CI; the first
run also spends about 10 s creating the bench virtualenv).
No timing is asserted anywhere: the numbers are printed, not judged. What does not depend on the
machine is checked in every run, ``--fast`` included, and a wrong result exits non-zero: each
``await_only``, ``greenlet_spawn`` and plain ``await`` delivered its value (their sum is the count),
and no spawned greenlet is left alive afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GREENLET_PIN = "greenlet==3.5.6"
BENCH_REQUIREMENTS = [GREENLET_PIN, "sqlalchemy>=2.0.31"]
SIDES = ("corolet", "sqlalchemy+greenlet", "sqlalchemy+corolet")
BENCHMARKS = ("await_only", "greenlet_spawn", "plain await")

# --- the child: one measurement of every benchmark on one side ------------------------------


def child(side: str, await_ops: int, spawn_ops: int) -> dict:
    import asyncio

    if side == "corolet":
        from corolet.bridge import await_only, greenlet_spawn

        impl = _describe_corolet()
    else:
        if side == "sqlalchemy+corolet":
            import corolet

            corolet.install()
        import greenlet
        import sqlalchemy
        from sqlalchemy.util import concurrency

        await_only = getattr(concurrency, "await_", None) or concurrency.await_only
        greenlet_spawn = concurrency.greenlet_spawn
        is_corolet = getattr(greenlet, "__corolet__", False)
        if is_corolet != (side == "sqlalchemy+corolet"):
            raise SystemExit(f"{side}: greenlet resolves to {greenlet.__file__}")
        impl = f"SQLAlchemy {sqlalchemy.__version__} on " + (
            _describe_corolet() if is_corolet else f"greenlet {greenlet.__version__}"
        )

    import gc

    if side == "corolet":
        import corolet as greenlet_module
    else:
        import greenlet as greenlet_module

    def live_greenlets() -> int:
        gc.collect()
        kind = greenlet_module.greenlet
        return sum(1 for o in gc.get_objects() if isinstance(o, kind) and o.parent is not None)

    async def ready() -> int:
        return 1

    def awaiting(n: int) -> int:
        aw = await_only
        make = ready
        total = 0
        for _ in range(n):
            total += aw(make())
        return total

    def returns_at_once() -> int:
        return 1

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise SystemExit(f"{side}: wrong result: {what}")

    async def measure() -> dict:
        # Warm up (first greenlet, stack pool, caches), then time.
        await greenlet_spawn(awaiting, 1000)
        for _ in range(200):
            await greenlet_spawn(returns_at_once)

        start = time.perf_counter_ns()
        total = await greenlet_spawn(awaiting, await_ops)
        await_ns = (time.perf_counter_ns() - start) / await_ops
        check(total == await_ops, f"{total} values from {await_ops} await_only calls")

        spawn = greenlet_spawn
        fn = returns_at_once
        total = 0
        start = time.perf_counter_ns()
        for _ in range(spawn_ops):
            total += await spawn(fn)
        spawn_ns = (time.perf_counter_ns() - start) / spawn_ops
        check(total == spawn_ops, f"{total} values from {spawn_ops} greenlet_spawn calls")

        make = ready
        total = 0
        start = time.perf_counter_ns()
        for _ in range(await_ops):
            total += await make()
        plain_ns = (time.perf_counter_ns() - start) / await_ops
        check(total == await_ops, f"{total} values from {await_ops} plain awaits")
        return {"await_only": await_ns, "greenlet_spawn": spawn_ns, "plain await": plain_ns}

    before = live_greenlets()
    figures = asyncio.run(measure())
    left = live_greenlets() - before
    check(left == 0, f"{left} spawned greenlets still alive after the run")
    return {"impl": impl, "python": sys.version.split()[0], "figures": figures}


def _describe_corolet() -> str:
    import corolet

    return f"corolet {corolet.__version__}"


# --- the parent: environments, alternation, report --------------------------------------------


def bench_venv_python(venv: Path) -> Path:
    """The bench virtualenv's interpreter, creating the venv (once) if it is missing."""
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(BENCH_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {venv} with {', '.join(BENCH_REQUIREMENTS)} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + BENCH_REQUIREMENTS,
        check=True,
    )
    stamp.write_text(wanted)
    return python


def run_child(python: Path, side: str, await_ops: int, spawn_ops: int, clean: bool) -> dict:
    env = dict(os.environ)
    if clean:
        # The real greenlet's venv must not see corolet (nor anything else added to the path).
        env.pop("PYTHONPATH", None)
    cmd = [str(python), __file__, "--child", side]
    cmd += ["--await-ops", str(await_ops), "--spawn-ops", str(spawn_ops)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="fewer operations and repeats (CI)")
    parser.add_argument("--repeats", type=int, help="child runs per side (best one kept)")
    parser.add_argument("--await-ops", type=int, help="await_only round trips per child run")
    parser.add_argument("--spawn-ops", type=int, help="greenlet_spawn calls per child run")
    parser.add_argument(
        "--bench-venv",
        type=Path,
        default=REPO / f".venv-bench-{sys.version_info[0]}.{sys.version_info[1]}",
        help="virtualenv holding the real greenlet and SQLAlchemy (created if missing)",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    repeats = args.repeats or (3 if args.fast else 7)
    await_ops = args.await_ops or (20_000 if args.fast else 200_000)
    spawn_ops = args.spawn_ops or (5_000 if args.fast else 50_000)

    if args.child:
        print(json.dumps(child(args.child, await_ops, spawn_ops)))
        return 0

    pythons = {
        "corolet": (Path(sys.executable), False),
        "sqlalchemy+greenlet": (bench_venv_python(args.bench_venv), True),
        "sqlalchemy+corolet": (Path(sys.executable), False),
    }
    best: dict[str, dict[str, float]] = {side: {} for side in SIDES}
    impls: dict[str, str] = {}
    started = time.perf_counter()
    for _ in range(repeats):
        for side in SIDES:  # alternate, so that drifts in machine load hit every side alike
            python, clean = pythons[side]
            out = run_child(python, side, await_ops, spawn_ops, clean)
            impls[side] = f"{out['impl']}, Python {out['python']}"
            for name, ns in out["figures"].items():
                best[side][name] = min(ns, best[side].get(name, float("inf")))

    print(
        f"bridge overhead, best of {repeats} child runs per side "
        f"({await_ops} await_only round trips, {spawn_ops} spawns each; "
        f"{time.perf_counter() - started:.1f} s in all)"
    )
    for side in SIDES:
        print(f"  {side:<20} {impls[side]}")
    header = f"  {'ns/op':<16}" + "".join(f"{side:>22}" for side in SIDES)
    print(header + f"{'greenlet / corolet':>22}")
    for name in BENCHMARKS:
        row = f"  {name:<16}" + "".join(f"{best[side][name]:>22.0f}" for side in SIDES)
        ratio = best["sqlalchemy+greenlet"][name] / best["corolet"][name]
        print(row + f"{ratio:>21.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
