"""Run generated programs on one greenlet implementation and print their event traces.

``python run.py corolet`` or ``python run.py greenlet`` (the module to test; the other need not
be installed) reads seeds from stdin, one a line, and for each prints one line of JSON,
``[seed, trace]``. The driver (``difffuzz.py``) runs one such child per implementation on the
same interpreter and compares the lines.

A trace holds only what both implementations must agree on: values switched (by ``repr``),
exceptions (type, arguments, ``__context__``/``__cause__`` chains, ``__suppress_context__``, the
names of the functions in the traceback), ``dead`` and ``bool()`` flags, parents and trace-hook
origins and targets by label (``g1``, ``main``, ``tmain`` for another thread's main greenlet),
context-variable values, unraisable exceptions. Never an address, a repr of a greenlet, a
collection count or a timing.

Invariants: automatic garbage collection is off (collections happen only at ``gc`` ops and at
the end, so a collection is always at the same point of the trace); every greenlet of a
program is held by ``Program.refs`` (or by frames and parents, identically on both), so a
``drop`` op drops the last reference the program holds; after the program, the references are
dropped and a collection runs, then the greenlets still alive are listed (a suspended greenlet
kept only by a cycle stays alive on greenlet and is collected on corolet, by design).
"""

from __future__ import annotations

import contextvars
import faulthandler
import gc
import importlib
import json
import os
import queue
import re
import sys
import threading
import time
import traceback
import weakref

from gen import generate

STEP_BUDGET = 300
ADDRESS = re.compile(r"0x(?:[0-9a-f]+|\(nil\))")
# How long to wait for greenlet to notice that a joined thread has exited (about 1 ms here).
SETTLE_SECONDS = 2.0
DEBUG = os.environ.get("FZ_DEBUG") == "1"


class FzError(Exception):
    pass


EXC = {"ValueError": ValueError, "KeyError": KeyError, "RuntimeError": RuntimeError}
EXC["FzError"] = FzError


def desc(e: BaseException | None, depth: int = 0) -> list | None:
    """An exception as data: type, args, context, cause, suppress flag, traceback functions."""
    if e is None:
        return None
    # greenlet's messages name greenlets by repr, addresses included: those are blanked.
    out = [type(e).__name__, [ADDRESS.sub("0x?", repr(a)) for a in e.args]]
    if depth < 3:
        out += [desc(e.__context__, depth + 1), desc(e.__cause__, depth + 1)]
    out.append(e.__suppress_context__)
    names = []
    tb = e.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    out.append(names)
    return out


def settle(lib, main_ref) -> None:
    """Wait until the main greenlet of a joined thread is known to have exited.

    greenlet learns that a thread exited a moment after ``join()`` returns (its per-thread
    state dies in a thread-local destructor and is cleaned up by a pending call): until then
    switching to that thread's greenlets says "Cannot switch to a different thread" rather
    than "... (which happens to have exited)", and its suspended greenlets are not yet dead.
    The programs ask about the settled state only.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        m = main_ref()
        if m is None or "thread exited" in repr(m):
            return
        del m
        time.sleep(0.0005)


class Program:
    def __init__(self, lib, prog: dict) -> None:
        self.lib = lib
        self.prog = prog
        self.main = lib.getcurrent()
        self.refs: dict = {}
        self.weak: list = []
        self.gens: dict = {}
        self.trace: list = []
        self.steps = 0
        self.cv = contextvars.ContextVar("fz")
        self.worker: Worker | None = None

    # -- recording ------------------------------------------------------------------------
    def emit(self, *event) -> None:
        self.trace.append(list(event))
        if DEBUG:  # FZ_DEBUG=1: each event to stderr as it happens (to see up to a crash)
            print(len(self.trace) - 1, json.dumps(list(event))[:300], file=sys.stderr, flush=True)

    def label(self, g) -> str | None:
        if g is None:
            return None
        if not isinstance(g, self.lib.greenlet):
            return repr(g)
        name = g.__dict__.get("_fz")
        if name:
            return name
        if g.parent is None:
            return "main" if g is self.main else "tmain"
        return "?"

    def cur(self) -> str | None:
        return self.label(self.lib.getcurrent())

    def val(self, v) -> object:
        if isinstance(v, BaseException):
            return ["exc", desc(v)]
        if isinstance(v, self.lib.greenlet):
            return ["greenlet", self.label(v)]
        if isinstance(v, tuple):
            return ["tuple", [self.val(x) for x in v]]
        if isinstance(v, dict):
            return ["dict", [[k, self.val(x)] for k, x in sorted(v.items())]]
        return repr(v)

    def snapshot(self) -> list:
        out = []
        for name in sorted(self.refs):
            g = self.refs[name]
            # gr_frame of a dead greenlet is left out: one left suspended by an exited thread
            # has its frame on greenlet until greenlet cleans up after the thread, then none;
            # corolet keeps it (greenlet's own suite reads it).
            frame = None if g.dead else g.gr_frame is not None
            out.append([name, g.dead, bool(g), self.label(g.parent), frame])
        return out

    def tracer(self, event, args) -> None:
        origin, target = args
        self.emit("trace", event, self.label(origin), self.label(target))

    def raising_tracer(self, event, args) -> None:
        self.emit("trace_raise", event)
        self.lib.settrace(None)
        raise FzError("from tracer")

    # -- bodies ---------------------------------------------------------------------------
    def body(self, name: str):
        spec = self.prog["bodies"][name]

        def run(*args, **kwargs):
            self.emit("start", name, self.val(args), self.val(kwargs))
            self.ops(spec["ops"], spec["catch_exit"])
            return self.end(spec["end"])

        return run

    def end(self, spec):
        kind = spec[0]
        if kind == "return":
            return spec[1]
        if kind == "exit":
            raise self.lib.GreenletExit("end")
        exc, other = EXC[spec[1][0]](spec[1][1]), EXC[spec[2][0]](spec[2][1])
        if kind == "raise":
            raise exc
        if kind == "raise_from":
            raise exc from other
        try:
            raise other
        except Exception:
            raise exc  # noqa: B904 (the implicit chain is the point)

    def thread_body(self):
        self.emit("tstart")
        try:
            self.lib.getcurrent().parent.switch()
            self.emit("tresumed")
        except BaseException as e:
            self.emit("tkilled", desc(e))
            raise

    def tiny_body(self):
        try:
            self.lib.getcurrent().parent.switch()
        except BaseException as e:
            self.emit("tiny_killed", self.cur(), desc(e))
            raise

    # -- ops ------------------------------------------------------------------------------
    def ops(self, ops: list, catch_exit: bool) -> None:
        for op in ops:
            self.one(op, catch_exit)

    def one(self, op: tuple, catch_exit: bool) -> None:
        self.steps += 1
        if self.steps > STEP_BUDGET:
            return
        self.emit("op", self.cur(), op[0])
        try:
            self.do(op, catch_exit)
        except self.lib.GreenletExit as e:
            self.emit("caught", self.cur(), desc(e))
            if not catch_exit:
                raise
        except Exception as e:
            self.emit("caught", self.cur(), desc(e))
        self.emit("state", self.cur(), self.snapshot())

    def get(self, name: str):
        if name not in self.refs:
            self.emit("skip", name)
            return None
        return self.refs[name]

    def args(self, spec) -> tuple[tuple, dict]:
        form, a, b = spec
        return {
            "none": ((), {}),
            "one": ((a,), {}),
            "two": ((a, b), {}),
            "kw": ((), {"k": a}),
            "both": ((a,), {"k": b}),
        }[form]

    def throw_args(self, form: str, spec) -> tuple:
        cls, msg = EXC[spec[0]], spec[1]
        if form == "cls":
            return (cls,)
        if form == "cls_val":
            return (cls, msg)
        if form == "cls_inst":
            return (cls, cls(msg))
        if form == "inst":
            return (cls(msg),)
        if form == "inst_tb":
            try:
                raise cls(msg)
            except Exception as e:
                return (e, None, e.__traceback__)
        if form == "none":
            return ()
        if form == "exit_cls":
            return (self.lib.GreenletExit,)
        if form == "bad_type":
            return (1,)
        if form == "bad_inst_val":
            return (cls(msg), "w")
        return (cls, None, 3)

    def do(self, op: tuple, catch_exit: bool) -> None:  # noqa: C901 (one dispatch table)
        kind = op[0]
        lib = self.lib
        if kind == "new":
            kw = {}
            if op[2] == "main":
                kw["parent"] = self.main
            elif op[2] is not None:
                if self.get(op[2]) is None:
                    return
                kw["parent"] = self.refs[op[2]]
            g = lib.greenlet(self.body(op[1]), **kw)
            g._fz = op[1]
            self.weak.append((op[1], weakref.ref(g)))
            self.refs[op[1]] = g
            del g, kw
        elif kind == "switch":
            if self.get(op[1]) is not None:
                a, kw = self.args(op[2])
                self.emit("switched", self.cur(), self.val(self.refs[op[1]].switch(*a, **kw)))
        elif kind == "switch_parent":
            a, kw = self.args(op[1])
            self.emit("switched", self.cur(), self.val(lib.getcurrent().parent.switch(*a, **kw)))
        elif kind == "throw":
            if self.get(op[1]) is not None:
                args = self.throw_args(op[2], op[3])
                self.emit("thrown", self.cur(), self.val(self.refs[op[1]].throw(*args)))
        elif kind == "throw_self":
            args = self.throw_args(op[1], op[2])
            self.emit("thrown", self.cur(), self.val(lib.getcurrent().throw(*args)))
        elif kind == "set_parent":
            if self.get(op[1]) is None:
                return
            target = op[2]
            if target == "main":
                new = self.main
            elif target == "None":
                new = None
            elif target == "int":
                new = 1
            elif target == "current":
                new = lib.getcurrent()
            else:
                new = self.get(target)
                if new is None:
                    return
            self.refs[op[1]].parent = new
        elif kind == "drop":
            if self.get(op[1]) is not None:
                del self.refs[op[1]]
        elif kind == "drop_new":
            g = lib.greenlet(self.tiny_body)
            g._fz = "tiny"
            g.switch()
            try:
                raise EXC[op[1][0]](op[1][1])
            except Exception:
                del g
            self.emit("dropped_tiny")
        elif kind == "gc":
            self.emit("gc_start")
            gc.collect()
            self.emit("gc_end")
        elif kind == "cv_set":
            self.cv.set(op[1])
        elif kind == "cv_get":
            self.emit("cv", self.cv.get("unset"))
        elif kind == "ctx_set":
            if self.get(op[1]) is not None:
                new = {"copy": contextvars.copy_context, "new": contextvars.Context}.get(op[2])
                self.refs[op[1]].gr_context = new() if new else None
        elif kind == "ctx_get":
            if self.get(op[1]) is not None:
                ctx = self.refs[op[1]].gr_context
                self.emit("ctx", None if ctx is None else ctx.get(self.cv, "unset"))
        elif kind == "trace":
            fn = {"on": self.tracer, "off": None, "raise": self.raising_tracer}[op[1]]
            prev = lib.settrace(fn)
            self.emit("settrace", None if prev is None else prev.__name__)
        elif kind == "raise_caught":
            exc = EXC[op[1][0]](op[1][1])
            try:
                if op[2] is None:
                    raise exc
                if op[2] == "none":
                    raise exc from None
                raise exc from EXC[op[2][0]](op[2][1])
            except Exception as e:
                self.emit("raised", desc(e))
        elif kind == "gen_make":
            self.gens[op[1]] = self.generator(op[2])
        elif kind == "gen_next":
            if op[1] in self.gens:
                self.emit("next", self.val(next(self.gens[op[1]])))
        elif kind == "gen":
            for _ in self.generator(op[1]):
                pass
        elif kind == "except":
            try:
                raise EXC[op[1][0]](op[1][1])
            except Exception:
                self.ops(op[2], catch_exit)
        elif kind == "ctx_run":
            contextvars.copy_context().run(self.ops, op[1], catch_exit)
        elif kind == "cycle_pair":
            self.cycle_pair(op[1])
        elif kind == "thread_op":
            if self.get(op[1]) is not None:
                self.thread_op(op[1], op[2])
        elif kind in ("wcreate", "wpoke", "wexit"):
            if self.worker is None or not self.worker.thread.is_alive():
                self.emit("no_worker")
            else:
                self.worker.call(kind)
        else:
            raise AssertionError(kind)

    def generator(self, ops: list):
        for op in ops:
            self.one(op, False)
            yield op[0]

    def cycle_pair(self, n: int) -> None:
        """Two greenlets suspended with a reference to each other in their frames, dropped:
        only the cycle keeps them (greenlet leaks them; corolet kills them when collected)."""
        box: list = []
        lib = self.lib

        def holder(i: int):
            other = box[1 - i]
            try:
                lib.getcurrent().parent.switch()
            except BaseException as e:
                self.emit("cycle_killed", f"c{n}.{i}", desc(e), other.dead)
                raise

        for i in range(2):
            g = lib.greenlet(lambda i=i: holder(i))
            g._fz = f"c{n}.{i}"
            self.weak.append((g._fz, weakref.ref(g)))
            box.append(g)
        for g in list(box):
            g.switch()
        del g
        box.clear()

    def thread_op(self, name: str, kind: str) -> None:
        """Touch greenlet ``name`` from a new thread (every such touch is an error but one)."""
        result: list = []
        mains: list = []

        def other_thread():
            mains.append(weakref.ref(self.lib.getcurrent()))
            try:
                if kind == "switch":
                    self.refs[name].switch()
                elif kind == "throw":
                    self.refs[name].throw(FzError)
                elif kind == "parent":
                    self.refs[name].parent = self.lib.getcurrent()
                else:
                    child = self.lib.greenlet(lambda: None, parent=self.refs[name])
                    child.switch()
                result.append(None)
            except BaseException as e:
                result.append(desc(e))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(20)
        settle(self.lib, mains[0])
        self.emit("thread_op", kind, result)

    def run(self) -> list:
        if self.prog["worker"]:
            self.worker = Worker(self)
        try:
            self.ops(self.prog["main"], True)
        finally:
            self.emit("end_main", self.cur())
            self.refs.clear()
            self.gens.clear()
            self.emit("cleared")
            self.lib.settrace(None)
            if self.worker is not None and self.worker.thread.is_alive():
                self.worker.call("wpoke")
                self.worker.call("wexit")
            self.emit("final_gc")
            gc.collect()
            alive = []
            g = None
            for name, ref in self.weak:
                g = ref()
                if g is not None:
                    alive.append([name, g.dead, bool(g)])
            del g
            self.emit("alive", alive)
        return self.trace


class Worker:
    """A thread that runs one greenlet, ``t1``, and does what the main thread asks, in step."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.cmds: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def call(self, cmd: str) -> None:
        self.cmds.put(cmd)
        self.done.get(timeout=20)
        if cmd == "wexit":
            self.thread.join(20)
            settle(self.program.lib, self.main_ref)

    def loop(self) -> None:
        p = self.program
        self.main_ref = weakref.ref(p.lib.getcurrent())
        while True:
            cmd = self.cmds.get()
            try:
                if cmd == "wcreate":
                    g = p.lib.greenlet(p.thread_body)
                    g._fz = "t1"
                    p.weak.append(("t1", weakref.ref(g)))
                    p.refs["t1"] = g
                    g.switch()
                    del g
                elif cmd == "wpoke":
                    p.lib.getcurrent()
                    p.emit("poked")
            except BaseException as e:
                p.emit("worker_caught", desc(e))
            self.done.put(None)
            if cmd == "wexit":
                return


def main() -> None:
    lib = importlib.import_module(sys.argv[1])
    faulthandler.enable()
    gc.disable()
    lib.getcurrent()._fz = "main"
    current: list = [None]

    def hook(u) -> None:
        # In place in the trace: greenlet reports an exception it cannot raise (in a kill on
        # deallocation, say) through the unraisable hook.
        if current[0] is not None:
            current[0].emit("unraisable", desc(u.exc_value), u.err_msg)

    sys.unraisablehook = hook
    for line in sys.stdin:
        seed = int(line)
        program = current[0] = Program(lib, generate(seed))
        try:
            trace = program.run()
        except BaseException:
            trace = program.trace + [["runner_error", traceback.format_exc()]]
        current[0] = None
        del program
        sys.stdout.write(json.dumps([seed, trace]) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
