"""Soak test: many threads running many greenlets for a fixed time, then no crash and no leak.

Model
-----
The run is cut into periods. In each period worker threads start and end continuously (at most
``--threads`` alive at once); each runs a random number of *episodes*, each episode one greenlet
with a chosen fate:

- ``finished``: switches back and forth with its parent, then returns a value;
- ``raised``: switches, then raises, and the exception reaches the parent;
- ``thrown``: suspended, then ``throw()`` ends it (``GreenletExit`` or ``ValueError``);
- ``dropped``: suspended, its last reference dropped in its own thread;
- ``remote``: suspended, its last reference dropped by the dropper thread;
- ``collected``: suspended, kept only by a reference cycle through its own frame, for the
  collector to find (``gc.collect()`` runs in workers and in the main thread);
- ``nested``: starts a child greenlet, re-parents it to the worker's main greenlet and ends first;
  the child is then finished from the worker;
- ``unstarted``: created and dropped without ever running.

Every greenlet is entered in a ledger with its intended fate; its ``run`` records what actually
ended it (from a ``finally`` block), and a weak reference counts its deallocation. Before a
worker ends it waits until the dropper has dropped what it handed over, collects, and calls into
greenlet once more, so that the kills queued for its thread (remote drops, collected cycles) run
while it is alive. Meanwhile the main thread forks now and then: the child, where only the forking
thread exists, finishes a greenlet the main thread had suspended before the fork, runs some
episodes of every fate with a ledger of its own, and exits 0 only if that ledger balances.

At the end of each period all workers are joined and the figures taken: the ledger must balance
(every greenlet created has ended by its intended fate and been deallocated), no greenlet object
and no native stack may be alive, and resident memory and the number of objects of each type are
recorded. The last period's figures are compared with the first's (the first is the warm-up):
a type that gained more than ``OBJECT_SLACK`` objects, or resident memory that grew by more than
``RSS_SLACK_MB`` MiB, is a leak. The exit status is 0 only if every check held, in the parent and
in every child.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import queue
import random
import sys
import threading
import time
import traceback
import warnings
import weakref

import corolet
from corolet import GreenletExit, getcurrent, greenlet

FATES = ("finished", "raised", "thrown", "dropped", "remote", "collected", "nested", "unstarted")
OBJECT_SLACK = 50  # objects a type may gain between the first and the last period (caches)
RSS_SLACK_MB = 16.0
PAGE = os.sysconf("SC_PAGE_SIZE")


class Ledger:
    """What was created with which intended fate, what ended how, and what was deallocated.

    Counting takes no lock: a greenlet's run ends in the thread that created it (its finally
    block may run inside any greenlet call of that thread, in a fork child too), so each thread
    counts into its own counters, which it adds to the totals (under a lock) only when it ends;
    deallocations are counted by discarding weak references from a set, one C-level operation.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.created: collections.Counter = collections.Counter()
        self.ended: collections.Counter = collections.Counter()  # (intended fate, how it ended)
        self.switches = 0
        self.refs: set[weakref.ref] = set()

    def mine(self) -> collections.Counter:
        counts = getattr(self.local, "counts", None)
        if counts is None:
            counts = self.local.counts = collections.Counter()
        return counts

    def add(self, g: greenlet, fate: str) -> None:
        self.mine()["created", fate] += 1
        self.refs.add(weakref.ref(g, self.refs.discard))  # adding hashes the live greenlet

    def end(self, fate: str, how: str) -> None:
        self.mine()["ended", fate, how] += 1

    def count_switches(self, n: int) -> None:
        self.mine()["switches"] += n

    def merge(self) -> None:
        """Adds this thread's counts to the totals (when the thread ends or a period does)."""
        counts = self.mine()
        with self.lock:
            for key, n in counts.items():
                if key[0] == "created":
                    self.created[key[1]] += n
                elif key[0] == "ended":
                    self.ended[key[1:]] += n
                else:
                    self.switches += n
        counts.clear()

    def total(self) -> int:
        return sum(self.created.values())

    def problems(self) -> list[str]:
        """Why the books do not balance (empty when they do); call with every worker ended."""
        out = []
        alive = len(self.refs)
        if alive:
            out.append(f"{self.total()} greenlets created, {alive} not deallocated")
        for fate in FATES:
            want = EXPECTED_END[fate]
            got = {how: n for (f, how), n in self.ended.items() if f == fate}
            expect = 0 if want is None else self.created[fate]
            if got.get(want, 0) != expect or sum(got.values()) != expect:
                out.append(f"{fate}: {self.created[fate]} created, ended {got}")
        return out


# How a greenlet of each fate must end (as its run's finally block sees it).
EXPECTED_END = {
    "finished": "returned",
    "raised": "ValueError",
    "thrown": "thrown",
    "dropped": "GreenletExit",
    "remote": "GreenletExit",
    "collected": "GreenletExit",
    "nested": "returned",
    "unstarted": None,
}
PARKED = ("thrown", "dropped", "remote", "collected")


def body(ledger: Ledger, fate: str, switches: int) -> str:
    """The run of one episode's greenlet."""
    how = "returned"
    # A collected greenlet refers to itself from its own frame: the cycle greenlet -> frame ->
    # greenlet. (Not through an argument: the call of run holds its argument tuple from the C
    # stack, where the collector cannot see it.)
    me = getcurrent() if fate == "collected" else None
    try:
        for i in range(switches):
            # The parent as it is now: a nested greenlet's child is re-parented while suspended.
            got = getcurrent().parent.switch(i)
            assert got == i, (got, i)
        if fate == "raised":
            raise ValueError(fate)
        if fate in PARKED:
            getcurrent().parent.switch("parked")
            raise AssertionError(f"{fate} greenlet resumed")
        return fate
    except GreenletExit:
        how = "thrown" if fate == "thrown" else "GreenletExit"
        raise
    except ValueError as exc:
        how = "thrown" if fate == "thrown" and str(exc) == "thrown" else "ValueError"
        raise
    except BaseException as exc:
        how = type(exc).__name__
        raise
    finally:
        ledger.end(fate, how)
        del me


def nested_body(ledger: Ledger) -> greenlet:
    """Starts a child, hands it to this greenlet's parent and ends while the child is suspended."""
    child = greenlet(body)
    ledger.add(child, "finished")
    assert child.switch(ledger, "finished", 2) == 0
    child.parent = getcurrent().parent
    ledger.end("nested", "returned")
    return child


def episode(ledger: Ledger, rng: random.Random, hand_over, watch: list) -> None:
    """One greenlet with a random fate, run from this thread's current greenlet. Greenlets
    whose end comes later (remote drops, cycles) get a weak reference in ``watch``."""
    fate = rng.choice(FATES)
    g = greenlet(nested_body if fate == "nested" else body)
    ledger.add(g, fate)
    if fate == "unstarted":
        return
    if fate == "nested":
        child = g.switch(ledger)
        assert g.dead and isinstance(child, greenlet)
        assert child.switch(0) == 1
        assert child.switch(1) == "finished" and child.dead
        ledger.count_switches(5)
        return
    n = rng.randrange(1 if fate == "raised" else 0, 6)
    switches = 1
    try:
        got = g.switch(ledger, fate, n)
        while got != "parked" and not g.dead:
            got = g.switch(got)
            switches += 1
    except ValueError as exc:
        assert fate == "raised" and str(exc) == "raised" and g.dead, (fate, exc)
        got = "raised"
    ledger.count_switches(switches)
    assert got == (fate if fate in ("finished", "raised") else "parked"), (fate, got)
    if fate == "thrown":
        try:
            result = g.throw(GreenletExit if rng.random() < 0.5 else ValueError("thrown"))
            assert isinstance(result, GreenletExit), result
        except ValueError:
            pass
        assert g.dead
    elif fate in ("remote", "collected"):
        watch.append(weakref.ref(g))
        if fate == "remote":
            hand_over(g)
    del g


def settle(watch: list, timeout: float = 60.0) -> None:
    """Collects and calls into greenlet until every watched greenlet is gone: the kills other
    threads queued for this one (drops, collections) run in it while it is alive."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        greenlet()
        watch[:] = [ref for ref in watch if ref() is not None]
        if not watch:
            return
        assert time.monotonic() < deadline, f"{len(watch)} greenlets never went"
        time.sleep(0.01)


class Dropper(threading.Thread):
    """Drops, in its own thread, the greenlets the workers hand over."""

    def __init__(self) -> None:
        super().__init__(name="dropper", daemon=True)
        self.inbox: queue.Queue = queue.Queue()

    def run(self) -> None:
        while True:
            g = self.inbox.get()
            if g is None:
                return
            del g  # the last reference: the kill is queued for the greenlet's own thread


def worker(ledger: Ledger, seed: int, episodes: int, dropper: Dropper) -> None:
    rng = random.Random(seed)
    watch: list[weakref.ref] = []
    for _ in range(episodes):
        episode(ledger, rng, dropper.inbox.put, watch)
        if rng.random() < 0.02:
            gc.collect()
    settle(watch)
    ledger.merge()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def object_counts(figures: list) -> collections.Counter:
    """Objects the collector tracks, by type, but for the figures kept of earlier periods."""
    ours = {id(figures)} | {id(x) for f in figures for x in (f, f[1])}
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects() if id(o) not in ours)


def live_greenlets() -> int:
    main = getcurrent()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and o is not main)


def child_after_fork(parked: greenlet, seed: int) -> int:
    """In the child of a fork: finish the parked greenlet, run episodes, balance the books."""
    ledger = Ledger()
    rng = random.Random(seed)
    kept: list[greenlet] = []
    watch: list[weakref.ref] = []
    result = parked.switch("in child")
    if result != "child done":
        print(f"soak: child: parked greenlet returned {result!r}", file=sys.stderr)
        return 1
    for _ in range(200):
        episode(ledger, rng, kept.append, watch)
    kept.clear()  # no dropper thread in the child: its "remote" greenlets are dropped here
    settle(watch)
    ledger.merge()
    problems = ledger.problems()
    for p in problems:
        print(f"soak: child: {p}", file=sys.stderr)
    return 1 if problems else 0


def fork_once(seed: int) -> int:
    """Forks with a greenlet of this thread suspended; returns the child's exit status."""

    def parked_run() -> str:
        got = getcurrent().parent.switch("parked")
        return "child done" if got == "in child" else f"resumed with {got!r}"

    parked = greenlet(parked_run)
    assert parked.switch() == "parked"
    with warnings.catch_warnings():
        # 3.12+ warns that fork() in a process with threads may deadlock in the child; the
        # child here takes no lock another thread may hold (its ledger is its own).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = child_after_fork(parked, seed)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    del parked  # killed here, in the parent
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_period(args, ledger: Ledger, rng, dropper: Dropper, deadline: float, stats) -> None:
    """Workers start and end until the deadline, the main thread runs episodes and forks; then
    every worker is joined and every pending kill has run."""
    threads: list[threading.Thread] = []
    watch: list[weakref.ref] = []
    next_fork = time.monotonic() + args.fork_every
    while time.monotonic() < deadline:
        threads = [t for t in threads if t.is_alive()]
        while len(threads) < args.threads:
            episodes = rng.randrange(50, 400)
            t = threading.Thread(
                target=worker, args=(ledger, rng.randrange(2**32), episodes, dropper)
            )
            t.start()
            threads.append(t)
            stats["threads"] += 1
        for _ in range(20):
            episode(ledger, rng, dropper.inbox.put, watch)
        if rng.random() < 0.2:
            gc.collect()
        if args.fork_every and time.monotonic() >= next_fork:
            stats["forks"] += 1
            if fork_once(rng.randrange(2**32)) != 0:
                stats["failed_forks"] += 1
            next_fork = time.monotonic() + args.fork_every
        time.sleep(0.005)
    for t in threads:
        t.join()
    settle(watch)
    ledger.merge()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="worker threads alive at once")
    parser.add_argument("--fork-every", type=float, default=2.0, help="seconds (0: never)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(
        f"soak: {args.seconds:g} s in {args.periods} periods, {args.threads} threads, "
        f"seed {seed}, Python {sys.version.split()[0]}, corolet {corolet.__version__}",
        flush=True,
    )
    ledger = Ledger()
    dropper = Dropper()
    dropper.start()
    stats = collections.Counter()
    rss_start = rss_mb()
    figures = []
    mains: list[int] = []  # main greenlets alive (of this thread, the dropper's): must not grow
    failures = []
    start = time.monotonic()
    period = args.seconds / args.periods
    for index in range(args.periods):
        run_period(args, ledger, rng, dropper, start + period * (index + 1), stats)
        problems = ledger.problems()
        alive = live_greenlets()
        stacks = corolet._corolet._stack_stats()["live"]
        if alive:
            problems.append(f"{alive} greenlet objects alive")
        if stacks:
            problems.append(f"{stacks} native stacks alive")
        pending = corolet._corolet.get_pending_cleanup_count()
        if pending:
            problems.append(f"{pending} exited threads' greenlets still to release")
        mains.append(corolet._corolet.get_total_main_greenlets())
        failures += [f"period {index + 1}: {p}" for p in problems]
        figures.append((rss_mb(), object_counts(figures)))
        created = ledger.total()
        print(
            f"soak: period {index + 1}/{args.periods}: {created} greenlets, "
            f"{ledger.switches} switches, {stats['threads']} threads, {stats['forks']} forks, "
            f"RSS {figures[-1][0]:.1f} MiB, {sum(figures[-1][1].values())} objects"
            + (f"; {len(problems)} problems" if problems else ""),
            flush=True,
        )
    dropper.inbox.put(None)
    dropper.join()
    (rss_first, objects_first), (rss_last, objects_last) = figures[0], figures[-1]
    grown = {
        name: objects_last[name] - objects_first[name]
        for name in objects_last
        if objects_last[name] - objects_first[name] > OBJECT_SLACK
    }
    if grown:
        failures.append(f"objects grew between the first and the last period: {grown}")
    if mains[-1] > mains[0]:
        failures.append(f"main greenlets alive grew from {mains[0]} to {mains[-1]}")
    if rss_last - rss_first > RSS_SLACK_MB:
        failures.append(f"RSS grew by {rss_last - rss_first:.1f} MiB (first to last period)")
    if stats["failed_forks"]:
        failures.append(f"{stats['failed_forks']} of {stats['forks']} fork children failed")
    created = ledger.total()
    print(
        f"soak: {time.monotonic() - start:.0f} s: {created} greenlets created "
        f"({', '.join(f'{f} {ledger.created[f]}' for f in FATES)}), {ledger.switches} switches, "
        f"{stats['threads']} threads, {stats['forks']} forks ({stats['failed_forks']} failed)"
    )
    print(
        f"soak: RSS {rss_start:.1f} MiB at start, {rss_first:.1f} after period 1, "
        f"{rss_last:.1f} at the end; objects {sum(objects_first.values())} after period 1, "
        f"{sum(objects_last.values())} at the end"
    )
    deltas = {n: objects_last[n] - objects_first[n] for n in objects_first | objects_last}
    largest = sorted((d for d in deltas.items() if d[1]), key=lambda d: -abs(d[1]))[:5]
    print(
        "soak: largest changes in objects by type, first to last period: "
        + (", ".join(f"{name} {n:+d}" for name, n in largest) or "none")
        + f"; main greenlets alive {mains[0]}, then {mains[-1]}"
    )
    for failure in failures:
        print(f"soak: FAIL: {failure}")
    print("soak: " + ("FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
