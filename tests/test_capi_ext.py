"""C extensions built against corolet's greenlet.h: subclasses of ``greenlet.greenlet`` made
at the C level, and every function of the C API called from C.

``tests/ext/corolet_ctest.c`` is compiled here, at test time, the way gevent's modules are
built against greenlet's header. It defines a static subclass the plain way (``PyType_Ready``,
as C extensions and Cython's cdef classes do) and a heap subclass (``PyType_FromSpec``).
The type's reference counts must stay exact whatever happens to their instances: a static
type holds no reference per instance, and a heap type exactly one, dropped once. A type that
loses references is freed while in use (a crash some twenty instances later).

The extension's ``PyGreenlet_Import()`` imports ``greenlet``, so every check runs in a child
interpreter that calls ``corolet.install()`` first (install() changes ``sys.modules`` for the
rest of a process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

SOURCE = Path(__file__).parent / "ext" / "corolet_ctest.c"

PRELUDE = """
import gc, sys, threading
import corolet
corolet.install()
import greenlet
import corolet_ctest as ct
from corolet import getcurrent, GreenletExit

class PyOfStatic(ct.StaticSub):
    pass

class PyOfHeap(ct.HeapSub):
    pass

class PySub(greenlet.greenlet):
    pass

TYPES = [greenlet.greenlet, ct.StaticSub, PyOfStatic, ct.HeapSub, PyOfHeap, PySub]

def parked():
    getcurrent().parent.switch("parked")

def cycle_of(cls):
    # A suspended greenlet only its own frame refers to: the collector finds it.
    def run():
        me = getcurrent()
        me.parent.switch()
    g = cls(run)
    g.switch()
    return g

def refcounts():
    gc.collect()
    greenlet.greenlet(lambda: None).switch()  # kills what the collection queued here
    gc.collect()
    return [sys.getrefcount(t) for t in TYPES]
"""


@pytest.fixture(scope="module")
def ext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ctest")
    target = out / ("corolet_ctest" + sysconfig.get_config_var("EXT_SUFFIX"))
    command = [
        os.environ.get("CC", "gcc"),
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-Werror",
        "-I",
        sysconfig.get_paths()["include"],
        "-I",
        corolet.get_include(),
        str(SOURCE),
        "-o",
        str(target),
    ]
    subprocess.run(command, check=True)
    return out


def run_child(ext_dir: Path, body: str, timeout: float = 120) -> str:
    env = dict(os.environ, PYTHONPATH=str(ext_dir), PYTHONFAULTHANDLER="1")
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_static_subclass_made_with_pytype_ready_imports(ext_dir: Path) -> None:
    out = run_child(
        ext_dir,
        """
        assert ct.StaticSub.__base__ is greenlet.greenlet
        assert not ct.StaticSub.__flags__ & (1 << 9)  # Py_TPFLAGS_HEAPTYPE
        assert not greenlet.greenlet.__flags__ & (1 << 9)
        g = ct.StaticSub(lambda: 42)
        g.tag = "mine"
        assert isinstance(g, greenlet.greenlet) and ct.check(g)
        assert g.switch() == 42 and g.dead and g.tag == "mine"
        print("ok")
        """,
    )
    assert out.strip() == "ok"


def test_type_refcounts_stay_exact_for_every_kind_of_subclass(ext_dir: Path) -> None:
    out = run_child(
        ext_dir,
        """
        before = refcounts()
        for round in range(3):
            for cls in TYPES:
                for i in range(2000):
                    g = cls(lambda: i)              # created, run to the end
                    assert g.switch() == i
                    g = cls(parked)                 # parked, then killed by its last reference
                    assert g.switch() == "parked"
                    del g
                    g = cls(parked)                 # parked, then thrown into
                    g.switch()
                    try:
                        g.throw(ValueError)
                    except ValueError:
                        pass
                    g = cls(lambda: None)           # never started
                    del g
                for i in range(200):
                    cycle_of(cls)                   # collected through a cycle
                gc.collect()
                gc.collect()
        del cls
        after = refcounts()
        assert before == after, (before, after)
        print("exact", after)
        """,
    )
    assert out.startswith("exact")


def test_resurrected_instances_keep_their_type_reference(ext_dir: Path) -> None:
    # A greenlet dropped in another thread is resurrected and queued for its own thread;
    # one killed by the collector is resurrected until its thread kills it.
    out = run_child(
        ext_dir,
        """
        before = refcounts()
        for cls in TYPES:
            crowd = []
            for i in range(300):
                g = cls(parked)
                g.switch()
                crowd.append(g)
            t = threading.Thread(target=crowd.clear)
            t.start(); t.join()
            greenlet.greenlet(lambda: None).switch()   # runs the queue here, if still needed
            assert corolet._corolet.get_pending_cleanup_count() == 0
        del cls, g
        after = refcounts()
        assert before == after, (before, after)
        print("exact")
        """,
    )
    assert out.strip() == "exact"


def test_instances_alive_at_interpreter_shutdown(ext_dir: Path) -> None:
    out = run_child(
        ext_dir,
        """
        keep = []
        for cls in TYPES:
            for i in range(100):
                g = cls(parked)
                g.switch()
                keep.append(g)
                keep.append(cls(lambda: None))
        print("bye")
        """,
    )
    assert out.strip() == "bye"


def test_c_api_functions(ext_dir: Path) -> None:
    out = run_child(
        ext_dir,
        """
        typ, error, exit_ = ct.objects()
        assert typ is greenlet.greenlet and error is greenlet.error
        assert exit_ is greenlet.GreenletExit
        main = ct.getcurrent()
        assert main is getcurrent() and ct.main(main) is True
        assert ct.started(main) and ct.active(main) and ct.getparent(main) is None

        def run(*args, **kwargs):
            got = main.switch((args, kwargs))
            return got * 2

        g = ct.new(run, None)
        assert ct.check(g) and not ct.check(object()) and not ct.check(None)
        assert not ct.started(g) and not ct.active(g) and ct.getparent(g) is main
        assert ct.switch(g, (1, 2), {"k": 3}) == ((1, 2), {"k": 3})
        assert ct.started(g) and ct.active(g) and not ct.main(g)
        assert ct.switch(g, (21,), None) == 42
        assert ct.started(g) and not ct.active(g) and g.dead
        assert ct.switch(ct.new(lambda: "no args", None), None, None) == "no args"

        # parent: given at creation, set, read
        child_parent = ct.new(lambda: getcurrent().parent, None)
        g = ct.new(lambda: getcurrent().parent, child_parent)
        assert ct.getparent(g) is child_parent
        ct.setparent(g, main)
        assert ct.getparent(g) is main and ct.switch(g, None, None) is main

        # throw: the exception is raised inside, and what comes out comes back
        def catcher():
            try:
                main.switch("ready")
            except KeyError as e:
                return ("caught", e.args)
        g = ct.new(catcher, None)
        assert ct.switch(g, None, None) == "ready"
        assert ct.throw(g, KeyError, "k", None) == ("caught", ("k",))
        g = ct.new(parked, None)
        g.switch()
        try:
            ct.throw(g, ValueError, ValueError("out"), None)
        except ValueError as e:
            assert e.args == ("out",)
        else:
            raise AssertionError("no ValueError")
        g = ct.new(parked, None)
        g.switch()
        assert isinstance(ct.throw(g, GreenletExit, None, None), GreenletExit)
        assert g.dead
        print("ok")
        """,
    )
    assert out.strip() == "ok"


def test_c_api_error_cases(ext_dir: Path) -> None:
    out = run_child(
        ext_dir,
        """
        def raises(exc, fn, *args, match=None):
            try:
                fn(*args)
            except exc as e:
                if match is not None:
                    assert match in str(e), (match, str(e))
                return
            raise AssertionError(f"{fn.__name__}{args} did not raise {exc.__name__}")

        bad = "bad argument type for built-in operation"
        not_g = object()
        for fn in (ct.main, ct.started, ct.active, ct.getparent):
            raises(TypeError, fn, not_g, match=bad)
            raises(TypeError, fn, None, match=bad)
        raises(TypeError, ct.switch, not_g, None, None, match=bad)
        raises(TypeError, ct.throw, not_g, ValueError, None, None, match=bad)
        raises(TypeError, ct.setparent, not_g, getcurrent(), match=bad)
        g = ct.new(lambda: None, None)
        not_a_greenlet = "Expected any type of greenlet, not object"
        raises(TypeError, ct.setparent, g, not_g, match=not_a_greenlet)
        raises(TypeError, ct.new, lambda: None, not_g, match=not_a_greenlet)
        raises(TypeError, ct.throw, g, 42, None, None,
               match="exceptions must be classes, or instances, not int")
        raises(AttributeError, ct.setparent, getcurrent(), g,
               match="cannot set the parent of a main greenlet")
        child = ct.new(lambda: None, g)
        raises(ValueError, ct.setparent, g, child, match="cyclic parent chain")

        # a dead greenlet: switching to it goes to its parent, that is here
        g = ct.new(lambda: None, None)
        ct.switch(g, None, None)
        assert ct.switch(g, (5,), None) == 5

        # another thread's greenlet, while that thread is alive and after it ended
        box, ready, done = [], threading.Event(), threading.Event()
        def other():
            h = ct.new(parked, None)
            h.switch()
            box.append(h)
            ready.set()
            done.wait()
        t = threading.Thread(target=other)
        t.start()
        try:
            ready.wait()
            h = box.pop()
            other_thread = "Cannot switch to a different thread"
            raises(greenlet.error, ct.switch, h, None, None, match=other_thread)
            raises(greenlet.error, ct.throw, h, ValueError, None, None, match=other_thread)
        finally:
            done.set()
            t.join()
        raises(greenlet.error, ct.switch, h, None, None,
               match="cannot switch to a different thread (which happens to have exited)")
        del h
        print("ok")
        """,
    )
    assert out.strip() == "ok"


def test_c_api_switch_and_throw_deliver_what_python_switch_and_throw_do(ext_dir: Path) -> None:
    # PyGreenlet_Switch(g, args, kwargs) delivers what g.switch(*args, **kwargs) would: one
    # positional argument unwrapped, keywords alone as their dict. PyGreenlet_Throw(g, cls,
    # instance, tb) raises that instance, with that traceback.
    out = run_child(
        ext_dir,
        """
        main = getcurrent()

        def echo(*args, **kwargs):
            got = main.switch((args, kwargs))
            while True:
                got = main.switch(got)

        g = ct.new(echo, None)
        assert ct.switch(g, ("one",), None) == (("one",), {})  # the start: run(*args)
        assert ct.switch(g, ("one",), None) == "one"
        assert ct.switch(g, ("one",), {}) == "one"
        assert ct.switch(g, ("a", "b"), None) == ("a", "b")
        assert ct.switch(g, (), None) == ()
        assert ct.switch(g, None, None) == ()
        assert ct.switch(g, None, {"k": 1}) == {"k": 1}
        assert ct.switch(g, ("one",), {"k": 1}) == (("one",), {"k": 1})
        for args, kwargs in [(("one",), None), (("a", "b"), None), ((), {"k": 1})]:
            assert ct.switch(g, args, kwargs) == g.switch(*args, **(kwargs or {}))

        def make_traceback():
            try:
                raise KeyError("original")
            except KeyError as e:
                return e.__traceback__

        def catcher():
            try:
                main.switch("ready")
            except BaseException as e:
                return e
        value_error, os_error = ValueError("out"), FileNotFoundError(2, "gone")
        key_error, instance = KeyError("k"), KeyError("instance")
        for typ, val, tb, expected in [
            (ValueError, value_error, None, value_error),
            (OSError, os_error, None, os_error),
            (KeyError, key_error, make_traceback(), key_error),
            (instance, None, make_traceback(), instance),
        ]:
            h = ct.new(catcher, None)
            assert ct.switch(h, None, None) == "ready"
            got = ct.throw(h, typ, val, tb)
            assert got is expected, (got, expected)
            names = []
            t = got.__traceback__
            while t is not None:
                names.append(t.tb_frame.f_code.co_name)
                t = t.tb_next
            assert names[0] == "catcher", names
            assert ("make_traceback" in names) == (tb is not None), names
        g.throw()
        print("ok")
        """,
    )
    assert out.strip() == "ok"
