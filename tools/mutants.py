"""The mutants ``tools/mutate.py`` applies, one at a time: each is a small, plausible bug in the
switch, throw, C API, interpreter-check or bridge code, or in the suite runners' verdicts, with
the test files that should catch it.

Each ``old`` text must occur exactly once in its file, any run of white space in it matching any
other (the runner refuses otherwise), so when
the code it names changes, the mutant is updated here rather than silently skipped. A mutant
that survives gets a test, or a comment here saying why it is equivalent (no test can tell it
from the original).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]


THROW = ("tests/test_throw.py", "tests/test_capi_ext.py")
SWITCH = (
    "tests/test_switching.py",
    "tests/test_capi_ext.py",
    "tests/test_tracing.py",
    "tests/test_lifecycle.py",
)
CHECK = ("tests/test_interpreter_check.py",)
BRIDGE = ("tests/test_bridge.py",)
INSTALL = ("tests/test_install.py",)
RUNNERS = ("tests/test_runners.py",)
GC = ("tests/test_gc.py",)

MUTANTS: tuple[Mutant, ...] = (
    # --- src/switch.rs: what a switch delivers ------------------------------------------------
    Mutant(
        "switch-no-unwrap",
        "src/switch.rs",
        "if ffi::PyTuple_CheckExact(obj) != 0 && ffi::PyTuple_GET_SIZE(obj) == 1 {",
        "if false && ffi::PyTuple_CheckExact(obj) != 0 && ffi::PyTuple_GET_SIZE(obj) == 1 {",
        "a one-tuple of arguments is delivered as the tuple (C API switch with ('one',))",
        SWITCH,
    ),
    Mutant(
        "switch-kwargs-only-as-pair",
        "src/switch.rs",
        "if ffi::PyTuple_Size(args) == 0 { ffi::Py_DECREF(args);",
        "if false { ffi::Py_DECREF(args);",
        "keyword arguments alone are delivered as ((), kwargs) instead of the dict",
        SWITCH,
    ),
    Mutant(
        "switch-one-arg-drops-kwargs",
        "src/switch.rs",
        "let kind = if nkw == 0 && n == 1 {",
        "let kind = if n == 1 {",
        "switch(x, k=v) delivers x and drops the keywords",
        SWITCH,
    ),
    Mutant(
        "deliver-throw-traced-as-switch",
        "src/switch.rs",
        "let event = match payload.kind { Some(Kind::Raise(_)) => globals().str_throw,",
        "let event = match payload.kind { Some(Kind::Raise(_)) => globals().str_switch,",
        "a throw into a suspended greenlet is traced as a 'switch' event",
        SWITCH,
    ),
    Mutant(
        "first-throw-traced-as-switch",
        "src/switch.rs",
        "let event = match first.kind { Some(Kind::Raise(_)) => globals().str_throw,",
        "let event = match first.kind { Some(Kind::Raise(_)) => globals().str_switch,",
        "a throw into an unstarted greenlet is traced as a 'switch' event",
        SWITCH,
    ),
    Mutant(
        "exit-not-a-return-value",
        "src/switch.rs",
        "Err(e) if e.matches(globals().exit) => {",
        "Err(e) if false && e.matches(globals().exit) => {",
        "a greenlet ending in GreenletExit raises it in the parent instead of returning it",
        SWITCH,
    ),
    Mutant(
        "no-thread-check",
        "src/switch.rs",
        "if main != ts.main {",
        "if false && main != ts.main {",
        "switching to another thread's greenlet is not refused",
        ("tests/test_threads.py", "tests/test_capi_ext.py"),
    ),
    # --- src/switch.rs: throw -----------------------------------------------------------------
    Mutant(
        "throw-instance-drops-traceback",
        "src/switch.rs",
        "if !tb.is_null() { ffi::PyException_SetTraceback(typ, tb); }",
        "",
        "throw(instance, None, tb) drops the traceback",
        THROW,
    ),
    Mutant(
        "throw-class-drops-traceback",
        "src/switch.rs",
        "if !tb.is_null() { err.set_traceback(tb); }",
        "",
        "throw(cls, value, tb) drops the traceback",
        THROW,
    ),
    Mutant(
        "throw-wraps-instance",
        "src/switch.rs",
        "ffi::PyErr_SetObject(typ, if val.is_null() { ffi::Py_None() } else { val });",
        "ffi::PyErr_SetObject(typ, if val.is_null() { ffi::Py_None() } "
        "else if ffi::PyObject_TypeCheck(val, typ.cast()) != 0 { ffi::PyTuple_Pack(1, val) } "
        "else { val });",
        "throw(cls, instance_of_cls) raises a new cls(instance) instead of the instance",
        THROW,
    ),
    Mutant(
        "throw-instance-accepts-value",
        "src/switch.rs",
        "if !val.is_null() && val != ffi::Py_None() {",
        "if false && !val.is_null() && val != ffi::Py_None() {",
        "throw(instance, value) is accepted instead of raising TypeError",
        THROW,
    ),
    Mutant(
        "throw-default-not-greenlet-exit",
        "src/switch.rs",
        "let mut typ: *mut ffi::PyObject = globals().exit;",
        "let mut typ: *mut ffi::PyObject = ffi::PyExc_SystemExit;",
        "throw() without arguments raises SystemExit instead of GreenletExit",
        THROW,
    ),
    Mutant(
        "throw-dead-exit-raises",
        "src/switch.rs",
        "green(target).life.get() == Life::Dead && err.matches(globals().exit)",
        "green(target).life.get() == Life::Dead && false && err.matches(globals().exit)",
        "throwing GreenletExit into a dead greenlet raises it instead of returning it",
        THROW,
    ),
    Mutant(
        "kill-no-context",
        "src/switch.rs",
        "ffi::PyException_SetContext(exc, handled); // steals `handled`",
        "ffi::Py_DECREF(handled);",
        "the GreenletExit of a dropped greenlet loses the dropper's handled exception",
        THROW,
    ),
    # --- src/capi.rs ------------------------------------------------------------------------
    Mutant(
        "capi-started-means-active",
        "src/capi.rs",
        "(green(g).life.get() != Life::Unstarted) as c_int",
        "(green(g).life.get() == Life::Active) as c_int",
        "PyGreenlet_STARTED is false for a finished greenlet",
        ("tests/test_capi_ext.py",),
    ),
    Mutant(
        "capi-switch-drops-kwargs",
        "src/capi.rs",
        "let kwargs = if kwargs.is_null() || ffi::PyDict_Check(kwargs) == 0 {",
        "let kwargs = if true {",
        "PyGreenlet_Switch ignores its keyword arguments",
        ("tests/test_capi_ext.py",),
    ),
    # --- src/module.rs: the interpreter check -------------------------------------------------
    Mutant(
        "check-major-only",
        "src/module.rs",
        "if built >> 16 != running >> 16 {",
        "if built >> 24 != running >> 24 {",
        "the interpreter check compares only the major version (3.11 build imports on 3.12)",
        CHECK,
    ),
    Mutant(
        "check-no-debug",
        "src/module.rs",
        "if built_debug != running_debug {",
        "if false && built_debug != running_debug {",
        "a release build imports into a debug interpreter",
        CHECK,
    ),
    # --- python/corolet/bridge.py -------------------------------------------------------------
    Mutant(
        "spawn-context-not-created",
        "python/corolet/bridge.py",
        "contextvars.copy_context() context = driver.gr_context",
        "pass",
        "greenlet_spawn does not share the context when the coroutine has none yet",
        BRIDGE,
    ),
    Mutant(
        "spawn-context-copied",
        "python/corolet/bridge.py",
        "child.gr_context = context",
        "child.gr_context = contextvars.copy_context()",
        "the spawned greenlet runs in a copy of the driver's context, not the same one",
        BRIDGE,
    ),
    Mutant(
        "await-only-refused-not-closed",
        "python/corolet/bridge.py",
        "    _close_unawaited(awaitable) raise MissingGreenlet",
        "raise MissingGreenlet",
        "await_only outside a spawned greenlet does not close the awaitable it refuses",
        BRIDGE,
    ),
    Mutant(
        "unwind-not-closed",
        "python/corolet/bridge.py",
        "        _close_unawaited(awaitable) awaitable = child.throw(exit_)",
        "awaitable = child.throw(exit_)",
        "a closed greenlet_spawn does not close the awaitables it abandons",
        BRIDGE,
    ),
    Mutant(
        "foreign-note-never-shown",
        "python/corolet/bridge.py",
        'if module is None or getattr(module, "__corolet__", False):',
        "if True:",
        "MissingGreenlet never notes that the real greenlet is imported",
        BRIDGE,
    ),
    Mutant(
        "throw-into-spawned-loses-exception",
        "python/corolet/bridge.py",
        "result = child.throw(exc)",
        "result = child.throw(type(exc))",
        "an exception from an awaitable reaches await_only as a new instance",
        BRIDGE,
    ),
    Mutant(
        "in-greenlet-always",
        "python/corolet/bridge.py",
        "return bool(getattr(getcurrent(), _PROVIDER, False))",
        "return True",
        "in_greenlet() is true everywhere",
        BRIDGE,
    ),
    # --- python/corolet/__init__.py: install() ------------------------------------------------
    Mutant(
        "install-attribute-error",
        "python/corolet/__init__.py",
        'if getattr(existing, "__corolet__", False):',
        "if existing.__corolet__:",
        "install() raises AttributeError instead of its message when greenlet is imported",
        INSTALL,
    ),
    Mutant(
        "install-not-idempotent",
        "python/corolet/__init__.py",
        'if getattr(existing, "__corolet__", False): return',
        'if getattr(existing, "__corolet__", False): pass',
        "a second install() refuses",
        INSTALL,
    ),
    Mutant(
        "install-private-module-missing",
        "python/corolet/__init__.py",
        '    sys.modules["greenlet._greenlet"] = _corolet',
        "pass",
        "install() does not map greenlet._greenlet",
        INSTALL,
    ),
    # --- tools/upstream.py, tools/gevent_suite.py: the runners' verdicts --------------------
    Mutant(
        "upstream-listed-excuses-any-failure",
        "tools/upstream.py",
        "elif entry.expects(outcome_word(result), report_text(result)):",
        "elif True:",
        "a listed upstream test passes the run however it fails (a crash included)",
        RUNNERS,
    ),
    Mutant(
        "upstream-signal-not-a-crash",
        "tools/upstream.py",
        "if self.returncode < 0:",
        "if self.returncode < -64:",
        "a unittest process killed by a signal is not seen as a crash",
        RUNNERS,
    ),
    Mutant(
        "upstream-passing-listed-ignored",
        "tools/upstream.py",
        "elif result.status in PASSING and result.id in known:",
        "elif False:",
        "a listed upstream test that passes does not fail the run",
        RUNNERS,
    ),
    Mutant(
        "gevent-listed-excuses-any-failure",
        "tools/gevent_suite.py",
        "if entry.expects(result.status, report_text(result)):",
        "if True:",
        "a listed gevent file passes the run however it fails (a crash included)",
        RUNNERS,
    ),
    Mutant(
        "gevent-absent-ignored",
        "tools/gevent_suite.py",
        "return len(verdict.unexpected) + len(verdict.now_passing) + len(verdict.absent)",
        "return len(verdict.unexpected) + len(verdict.now_passing)",
        "a listed gevent file that is no longer run does not fail the run",
        RUNNERS,
    ),
    # --- src/pystate.c: the collector's record of a parked greenlet's frame references ---------
    Mutant(
        "gc-cache-kept-after-gr-frame",
        "src/pystate.c",
        "    s->gc_cache = GC_CACHE_OFF;\n#if PY313\n    struct _PyInterpreterFrame **slot",
        "#if PY313\n    struct _PyInterpreterFrame **slot",
        "a local rebound through gr_frame while parked leaves the collector reporting the old,"
        " freed object",
        GC,
    ),
    Mutant(
        "gc-cache-kept-across-a-run",
        "src/pystate.c",
        "s->gc_cache = GC_CACHE_EMPTY; /* these frames are new to the collector */",
        "/* kept */",
        "a greenlet that ran since the last collection is reported with its old frames' references",
        GC,
    ),
)
