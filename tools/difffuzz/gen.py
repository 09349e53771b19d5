"""Random programs of greenlet operations, generated from a seed.

A program is plain data (tuples, lists, dicts of strings and ints), so the same seed gives the
same program in every process on the same interpreter, and a program can be printed to turn a
difference into a regression test. ``run.py`` interprets it; nothing here imports greenlet.

Shape: ``{"main": [op, ...], "bodies": {label: {"ops": [...], "end": end}}, "worker": bool}``.
Greenlets ``g1``..``gN`` are created by ``("new", label, parent)`` ops that may or may not run;
every op names greenlets by label, and an op whose greenlet does not exist (never created,
already dropped) records that it was skipped, so a program never depends on addresses. ``t1`` is
a greenlet that a worker thread creates (``("wcreate",)``) when the program has a worker.
Each op runs at most once (a body runs once; main's list runs once), so a program always ends.

Whether a program made a reference cycle of suspended greenlets (greenlets whose suspended
frames reference each other, then dropped: greenlet leaks them, corolet collects them) is not
decided here but observed: ``run.py`` reports which greenlets are still alive after the final
collection. ``("cycle_pair", n)`` makes such a pair on purpose; other ops can make one too
(a greenlet suspended in ``other.switch()`` holds ``other``).
"""

from __future__ import annotations

import random

EXC_NAMES = ("ValueError", "KeyError", "FzError", "RuntimeError")
THROW_FORMS = (
    "cls",  # g.throw(E)
    "cls_val",  # g.throw(E, "v")
    "cls_inst",  # g.throw(E, E("v"))
    "inst",  # g.throw(E("v"))
    "inst_tb",  # g.throw(E("v"), None, tb)
    "none",  # g.throw()
    "exit_cls",  # g.throw(GreenletExit)
    "bad_type",  # g.throw(1)
    "bad_inst_val",  # g.throw(E("v"), "w")
    "bad_tb",  # g.throw(E, None, 3)
)
ARG_FORMS = ("none", "one", "two", "kw", "both")


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.n = self.r.randint(2, 5)
        self.labels = [f"g{i}" for i in range(1, self.n + 1)]
        self.worker = self.r.random() < 0.25
        if self.worker:
            self.labels.append("t1")
        self.counter = 0

    def value(self) -> object:
        self.counter += 1
        return self.r.choice((self.counter, f"s{self.counter}", (self.counter, "t")))

    def args(self) -> tuple:
        form = self.r.choice(ARG_FORMS)
        return (form, self.value(), self.value())

    def exc(self) -> tuple:
        self.counter += 1
        return (self.r.choice(EXC_NAMES), f"e{self.counter}")

    def label(self) -> str:
        return self.r.choice(self.labels)

    def op(self, depth: int) -> tuple:
        r = self.r
        kinds = [
            ("new", 6),
            ("switch", 10),
            ("switch_parent", 3),
            ("throw", 6),
            ("throw_self", 1),
            ("set_parent", 3),
            ("drop", 3),
            ("drop_new", 1),
            ("gc", 2),
            ("cv_set", 2),
            ("cv_get", 2),
            ("ctx_set", 2),
            ("ctx_get", 1),
            ("trace", 1),
            ("raise_caught", 2),
            ("gen_make", 1),
            ("gen_next", 2),
            ("thread_op", 1),
            ("cycle_pair", 0.2),
        ]
        if depth < 2:
            kinds += [("except", 3), ("gen", 1), ("ctx_run", 1)]
        if self.worker:
            kinds += [("wpoke", 1), ("wexit", 1), ("wcreate", 1)]
        names = [k for k, _ in kinds]
        kind = r.choices(names, weights=[w for _, w in kinds])[0]
        if kind == "new":
            parent = r.choice((None, None, "main", self.label()))
            return ("new", r.choice(self.labels[: self.n]), parent)
        if kind == "switch":
            return ("switch", self.label(), self.args())
        if kind == "switch_parent":
            return ("switch_parent", self.args())
        if kind == "throw":
            return ("throw", self.label(), r.choice(THROW_FORMS), self.exc())
        if kind == "throw_self":
            return ("throw_self", r.choice(THROW_FORMS[:5]), self.exc())
        if kind == "set_parent":
            target = r.choice(self.labels + ["main", "main", "None", "int", "current"])
            return ("set_parent", self.label(), target)
        if kind == "drop":
            return ("drop", self.label())
        if kind == "drop_new":
            return ("drop_new", self.exc())
        if kind == "gc":
            return ("gc",)
        if kind == "cv_set":
            return ("cv_set", self.value())
        if kind == "cv_get":
            return ("cv_get",)
        if kind == "ctx_set":
            return ("ctx_set", self.label(), r.choice(("copy", "new", "none")))
        if kind == "ctx_get":
            return ("ctx_get", self.label())
        if kind == "trace":
            return ("trace", r.choice(("on", "on", "off", "raise")))
        if kind == "raise_caught":
            cause = r.choice((None, None, self.exc(), "none"))
            return ("raise_caught", self.exc(), cause)
        if kind == "gen_make":
            return ("gen_make", r.choice("ab"), self.ops(depth + 1, 1, 3))
        if kind == "gen_next":
            return ("gen_next", r.choice("ab"))
        if kind == "thread_op":
            return ("thread_op", self.label(), r.choice(("switch", "throw", "parent", "child")))
        if kind == "except":
            return ("except", self.exc(), self.ops(depth + 1, 1, 4))
        if kind == "gen":
            return ("gen", self.ops(depth + 1, 1, 3))
        if kind == "ctx_run":
            return ("ctx_run", self.ops(depth + 1, 1, 3))
        if kind == "cycle_pair":
            self.counter += 1
            return ("cycle_pair", self.counter)
        return (kind,)

    def ops(self, depth: int, lo: int, hi: int) -> list:
        return [self.op(depth) for _ in range(self.r.randint(lo, hi))]

    def end(self) -> tuple:
        r = self.r
        kind = r.choice(("return", "return", "raise", "raise_from", "raise_in_except", "exit"))
        if kind == "return":
            return ("return", self.value())
        if kind == "exit":
            return ("exit",)
        return (kind, self.exc(), self.exc())

    def program(self) -> dict:
        bodies = {
            label: {"ops": self.ops(0, 0, 6), "end": self.end(), "catch_exit": self.catch_exit()}
            for label in self.labels[: self.n]
        }
        # Most programs start by creating some of their greenlets, so that ops find them.
        first = self.labels[: self.r.randint(1, self.n)]
        main = [("new", label, self.r.choice((None, "main"))) for label in first]
        main += self.ops(0, 4, 18)
        if self.worker:
            main.insert(self.r.randint(0, 2), ("wcreate",))
        return {"main": main, "bodies": bodies, "worker": self.worker}

    def catch_exit(self) -> bool:
        # A body that swallows GreenletExit and carries on with its ops (and so may switch
        # while being killed) instead of letting it end the body.
        return self.r.random() < 0.1


def generate(seed: int) -> dict:
    return Gen(seed).program()
