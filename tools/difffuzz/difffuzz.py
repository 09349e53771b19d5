"""Differential fuzzer: the same random greenlet programs on corolet and on greenlet, compared.

    python tools/difffuzz/difffuzz.py --corolet-python .venv-3.11/bin/python \\
        --greenlet-python .venv-bench-greenlet-3.11/bin/python --count 1000

Two children on the same interpreter (``run.py corolet`` and ``run.py greenlet``, each in a
virtualenv that has only its own library) run the programs ``gen.py`` makes from seeds
``--start`` .. ``--start + --count - 1``, many programs per child, in step. Their traces must be
equal. A child that dies (a signal, an abort) or stops answering is reported with the seed it
was running, and a new child takes over from the next seed.

Differences that are corolet's by design are classed, counted and shown apart, never counted
as failures:
- ``cycle``: suspended greenlets kept only by a reference cycle (those one library left
  alive after the final collection and the other did not, and those of ``cycle_pair`` ops),
  and the traces first differ, after a collection started, at an event about one of them, or
  in the final list of survivors only by them. On 3.10-3.14 corolet collects them (killing them
  with GreenletExit) and greenlet leaks them; on 3.15 greenlet 3.5.6 frees them without
  running their code and corolet leaves some alive;
- ``greenlet-crash``: greenlet's child crashed and corolet's did not (corolet does not
  reproduce greenlet's crashes);
- ``greenlet-exit-args``: a greenlet that ends with ``GreenletExit`` starts its unstarted
  parent; greenlet 3.5.6 passes the exception object itself as ``run``'s argument tuple
  (undefined behaviour: no arguments when the exception has no ``__dict__``, a segfault when
  it has one), corolet passes the exception as one argument;
- ``orphan-reparented``: a greenlet left suspended by a thread that exited is dead and may be
  given a parent of a live thread (as greenlet allows); switching or throwing into it then
  raises "cannot switch to a different thread (which happens to have exited)" on corolet,
  where greenlet 3.5.6 calls its ``run`` again from the start (3.10) or crashes (3.11+).
Each class has a test in tests/test_fuzz_regressions.py.
Everything else is a failure: a difference (the seed, the program and the first differing
events are printed; ``--show SEED`` prints one program's traces side by side), a corolet crash
or a hang. Exit status 1 on any failure. "Programs without cycles" are those with no
``cycle_pair`` op where no greenlet was left alive by one library and not by the other.
"""

from __future__ import annotations

import argparse
import json
import os
import pprint
import re
import selectors
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen import generate  # noqa: E402

TIMEOUT = 30.0
CLASSES = (
    "same",
    "cycle",
    "greenlet-crash",
    "greenlet-exit-args",
    "orphan-reparented",
    "difference",
    "corolet-crash",
    "hang",
)


class Child:
    """One ``run.py`` process, asked one seed at a time."""

    def __init__(self, python: str, lib: str) -> None:
        self.python, self.lib = python, lib
        self.proc: subprocess.Popen | None = None
        self.buf = b""

    def start(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            [self.python, str(HERE / "run.py"), self.lib],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.buf = b""

    def send(self, seed: int) -> None:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"%d\n" % seed)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def receive(self) -> tuple[str, object]:
        """("ok", trace) | ("crash", description) | ("hang", description)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buf:
                if not sel.select(TIMEOUT):
                    self.proc.kill()
                    self.proc.wait()
                    return "hang", f"no answer in {TIMEOUT:.0f} s" + self.stop()
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.wait()
                    return "crash", f"exit status {code}" + self.stop()
                self.buf += chunk
        finally:
            sel.close()
        line, self.buf = self.buf.split(b"\n", 1)
        return "ok", json.loads(line)[1]

    def stop(self) -> str:
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-1500:]
        self.stderr.close()
        self.proc = None
        return "; stderr tail:\n" + tail

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()
            self.stop()


def first_difference(a: list, b: list) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def after_collection(trace: list, index: int) -> bool:
    """Whether event ``index`` of ``trace`` comes after the start of some gc.collect()."""
    return any(event[0] in ("gc_start", "final_gc") for event in trace[:index])


CYCLE_PAIR = re.compile(r'"(c\d+\.\d)"')


def cycle_labels(co: list, gr: list) -> set:
    """Greenlets known to be in a cycle: those one library left alive and the other did not,
    and those of cycle_pair ops (in a cycle by construction)."""
    one_side = {e[0] for e in leaked(gr)} ^ {e[0] for e in leaked(co)}
    return one_side | set(CYCLE_PAIR.findall(json.dumps(co) + json.dumps(gr)))


def mentions(event: list, labels: set) -> bool:
    text = json.dumps(event)
    return any(json.dumps(label) in text for label in labels)


def leaked(trace: list) -> list:
    for event in reversed(trace):
        if event[0] == "alive":
            return event[1]
    return []


def classify(co: list, gr: list) -> str | None:
    """None when equal, else the by-design class or "difference"."""
    if co == gr:
        return None
    i = first_difference(co, gr)
    if i < len(co) and i < len(gr) and after_collection(co, i):
        cyclic = cycle_labels(co, gr)
        if cyclic and (mentions(co[i], cyclic) or mentions(gr[i], cyclic)):
            return "cycle"
        # Collected without running any code of theirs: only the final list tells.
        if co[i][0] == gr[i][0] == "alive":
            rest = [{tuple(e) for e in t[i][1] if e[0] not in cyclic} for t in (co, gr)]
            if rest[0] == rest[1]:
                return "cycle"
    if i < len(co) and i < len(gr) and exit_to_unstarted(co[i], gr[i]):
        return "greenlet-exit-args"
    if i < len(co) and orphan_refused(co, i):
        return "orphan-reparented"
    return "difference"


EXITED = "'cannot switch to a different thread (which happens to have exited)'"


def orphan_refused(co: list, i: int) -> bool:
    """corolet refuses to switch into the worker's greenlet t1 after its thread exited and it
    was given a parent here (it is dead; its stack is abandoned). greenlet 3.5.6 runs its
    ``run`` again from the start on 3.10 and crashes on 3.11+."""
    event = co[i]
    if event[0] != "caught" or event[2][0] != "error" or event[2][1] != [EXITED]:
        return False
    for before in reversed(co[:i]):
        if before[0] == "state":
            return any(e[0] == "t1" and e[1] and e[3] != "tmain" for e in before[2])
    return False


def exit_to_unstarted(co: list, gr: list) -> bool:
    """A greenlet ended by GreenletExit starts its unstarted parent: corolet passes the
    exception as the one argument; greenlet passes the exception object where the argument
    tuple belongs, so run() gets as many arguments as the exception's __dict__ pointer reads
    as a tuple size (none without a __dict__, a segfault with one)."""
    return (
        co[0] == gr[0] == "start"
        and co[1] == gr[1]
        and gr[2:] == [["tuple", []], ["dict", []]]
        and len(co[2][1]) == 1
        and co[2][1][0][0] == "exc"
        and co[2][1][0][1][0] == "GreenletExit"
    )


def show(seed: int, co: list, gr: list, width: int = 6) -> str:
    i = first_difference(co, gr)
    lines = [f"seed {seed}: traces differ at event {i}"]
    for name, trace in (("corolet", co), ("greenlet", gr)):
        lines.append(f"  {name}:")
        for j in range(max(0, i - width), min(len(trace), i + width)):
            mark = ">>" if j == i else "  "
            lines.append(f"   {mark} {j}: {json.dumps(trace[j])[:300]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corolet-python", required=True)
    ap.add_argument("--greenlet-python", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument(
        "--acyclic",
        type=int,
        default=0,
        help="go on past --count until this many programs without cycles have run",
    )
    ap.add_argument("--show", type=int, help="print one seed's program and both traces")
    ap.add_argument("--max-reports", type=int, default=5)
    opts = ap.parse_args()

    co, gr = Child(opts.corolet_python, "corolet"), Child(opts.greenlet_python, "greenlet")
    if opts.show is not None:
        pprint.pprint(generate(opts.show), width=100)
        for child in (co, gr):
            child.send(opts.show)
            print(f"--- {child.lib}")
            status, trace = child.receive()
            for j, event in enumerate(trace if status == "ok" else [trace]):
                print(f"{j:4}: {json.dumps(event)}")
            child.close()
        return 0

    counts = dict.fromkeys(CLASSES, 0)
    acyclic = 0
    acyclic_counts = dict.fromkeys(CLASSES, 0)
    failures: list[str] = []
    by_design: list[str] = []
    seed = opts.start - 1
    while True:
        seed += 1
        done = seed - opts.start
        if done >= opts.count and (acyclic >= opts.acyclic or done >= 10 * opts.count):
            break
        co.send(seed)
        gr.send(seed)
        (cs, ct), (gs, gt) = co.receive(), gr.receive()
        if cs != "ok":
            counts["corolet-crash" if cs == "crash" else "hang"] += 1
            failures.append(f"seed {seed}: corolet {cs}: {ct}")
            continue
        if gs != "ok":
            if gs == "crash":
                counts["greenlet-crash"] += 1
                by_design.append(f"seed {seed}: greenlet crashed ({str(gt).splitlines()[0]})")
            else:
                counts["hang"] += 1
                failures.append(f"seed {seed}: greenlet {gs}: {gt}")
            continue
        verdict = classify(ct, gt)
        if not cycle_labels(ct, gt):
            acyclic += 1
            acyclic_counts[verdict or "same"] += 1
        if verdict is None:
            counts["same"] += 1
        else:
            counts[verdict] += 1
            if verdict == "difference":
                failures.append(show(seed, ct, gt))
            else:
                by_design.append(f"seed {seed}: {verdict}")
    co.close()
    gr.close()

    total = seed - opts.start
    print(
        f"difffuzz: {total} programs (seeds {opts.start}..{seed - 1}), "
        f"{acyclic} without cycles (no cycle_pair op, no greenlet left alive by one library only)"
    )
    print("  all: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print("  without cycles: " + ", ".join(f"{k}: {v}" for k, v in acyclic_counts.items() if v))
    for line in by_design[:10]:
        print("  by design: " + line)
    if len(by_design) > 10:
        print(f"  ... and {len(by_design) - 10} more by design")
    for report in failures[: opts.max_reports]:
        print("FAILURE " + report)
    if len(failures) > opts.max_reports:
        print(f"... and {len(failures) - opts.max_reports} more failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
