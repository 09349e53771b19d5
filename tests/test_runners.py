"""The verdicts of the suite runners (tools/upstream.py, tools/gevent_suite.py) and the
known-failure lists they share (tools/_known.py), fed synthetic results.

A runner that passes what it should fail hides every bug the suite it runs would find, so its
judgement is tested like the rest: a listed test that crashes instead of failing as its entry
says, an unlisted failure, a listed test that passes or is gone, each must fail the run; the
known failure itself must not. Nothing here starts a suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import _known  # noqa: E402
import gevent_suite  # noqa: E402
import upstream  # noqa: E402
from _known import Entry, KnownListError  # noqa: E402

# --- tools/_known.py ----------------------------------------------------------------------------

UPSTREAM_OUTCOMES = upstream.OUTCOMES
GEVENT_OUTCOMES = gevent_suite.OUTCOMES


def test_an_entry_names_its_outcome_its_text_and_its_reason():
    entry = _known.parse_line(
        "test_gc.TestGC.test_x  fail: to leak but it did not  # why: it does not", UPSTREAM_OUTCOMES
    )
    assert entry == Entry(
        "test_gc.TestGC.test_x", ("fail",), "to leak but it did not", (), "why: it does not"
    )
    assert entry.expects("fail", "LeakCheckError: Expected <f> to leak but it did not.")
    assert not entry.expects("fail", "AssertionError: 1 != 2")
    assert not entry.expects("crash", "killed by SIGSEGV ... to leak but it did not")
    assert not entry.expects("error", "to leak but it did not")


def test_an_entry_may_allow_several_outcomes_and_modifiers():
    entry = _known.parse_line(
        "test__a.py  flaky failed|timeout  # hangs", GEVENT_OUTCOMES, frozenset({"flaky"})
    )
    assert entry.outcomes == ("failed", "timeout") and entry.modifiers == ("flaky",)
    assert entry.expects("timeout", "") and entry.expects("failed", "exit 1")
    assert not entry.expects("crash", "killed by SIGSEGV")
    assert entry.expectation == "flaky failed|timeout"


@pytest.mark.parametrize(
    "line, message",
    [
        ("test_a.T.test_b  # reason", "no expectation"),
        ("test_a.T.test_b", "no expectation"),
        ("test_a.T.test_b  crashes  # reason", "unknown outcome 'crashes'"),
        ("test_a.T.test_b  fail|oops  # reason", "unknown outcome 'oops'"),
        ("test_a.T.test_b  flaky fail  # reason", "unknown modifier 'flaky'"),
        ("test_a.T.test_b  fail", "no reason"),
        ("test_a.T.test_b  fail  #  ", "no reason"),
        ("test_a.T.test_b  fail:  # reason", "an empty text"),
    ],
)
def test_a_malformed_entry_is_refused(line, message):
    with pytest.raises(KnownListError, match=message):
        _known.parse_line(line, UPSTREAM_OUTCOMES)


def test_a_list_round_trips_and_keeps_its_header(tmp_path):
    path = tmp_path / "3.99.txt"
    path.write_text(
        "# header line\n#\n\n"
        "test_b.T.test_y  crash  # b\n"
        "test_a.T.test_x  fail: some text: with a colon  # a\n"
        "# a comment between entries\n"
    )
    entries = _known.load(path, UPSTREAM_OUTCOMES)
    assert entries["test_a.T.test_x"].match == "some text: with a colon"
    _known.write(path, entries, ["# unused default"])
    assert path.read_text().splitlines()[:3] == ["# header line", "#", ""]
    assert _known.load(path, UPSTREAM_OUTCOMES) == entries


def test_a_list_naming_a_test_twice_is_refused(tmp_path):
    path = tmp_path / "3.99.txt"
    path.write_text("test_a.T.test_x  fail  # a\ntest_a.T.test_x  error  # b\n")
    with pytest.raises(KnownListError, match=r"3\.99\.txt:2: test_a\.T\.test_x is listed twice"):
        _known.load(path, UPSTREAM_OUTCOMES)


@pytest.mark.parametrize("runner", [upstream, gevent_suite])
def test_every_committed_list_reads(runner):
    lists = sorted(runner.KNOWN_DIR.glob("*.txt"))
    assert len(lists) == 6  # 3.10 to 3.15
    for path in lists:
        entries = runner.load_known(path)
        assert entries, path
        for entry in entries.values():
            assert entry.reason and entry.reason != runner.NEW_REASON, (path, entry)


# --- tools/upstream.py --------------------------------------------------------------------------

LEAK = "fail: to leak but it did not"
UNITTEST_OUTPUT = """\
test_finalizer_crash (greenlet.tests.test_gc.TestGC.test_finalizer_crash) ... FAIL
test_ok (greenlet.tests.test_gc.TestGC.test_ok) ... ok
test_skip (greenlet.tests.test_gc.TestGC.test_skip) ... skipped 'no'
test_boom (greenlet.tests.test_gc.TestGC.test_boom) ... ERROR

======================================================================
FAIL: test_finalizer_crash (greenlet.tests.test_gc.TestGC.test_finalizer_crash)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "leakcheck.py", line 1, in wrapper
greenlet.tests.leakcheck.LeakCheckError: Expected <function f> to leak but it did not.

======================================================================
ERROR: test_boom (greenlet.tests.test_gc.TestGC.test_boom)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "test_gc.py", line 9, in test_boom
ValueError: boom

----------------------------------------------------------------------
Ran 4 tests in 0.1s

FAILED (failures=1, errors=1, skipped=1)
"""


def _known_upstream(tmp_path, text: str) -> dict[str, Entry]:
    path = tmp_path / "3.99.txt"
    path.write_text(text)
    return upstream.load_known(path)


def test_upstream_reads_unittest_output():
    results = upstream.parse_unittest(UNITTEST_OUTPUT)
    statuses = {tid: r.status for tid, r in results.items()}
    assert statuses == {
        "test_gc.TestGC.test_finalizer_crash": "fail",
        "test_gc.TestGC.test_ok": "ok",
        "test_gc.TestGC.test_skip": "skipped",
        "test_gc.TestGC.test_boom": "error",
    }
    assert results["test_gc.TestGC.test_boom"].detail == "ValueError: boom"


def test_upstream_passes_the_known_failure_and_fails_the_unlisted_error(tmp_path):
    results = upstream.parse_unittest(UNITTEST_OUTPUT)
    known = _known_upstream(tmp_path, f"test_gc.TestGC.test_finalizer_crash  {LEAK}  # leaks\n")
    verdict = upstream.judge(results, known, {"test_gc.py"})
    assert [r.id for r in verdict.known] == ["test_gc.TestGC.test_finalizer_crash"]
    assert [r.id for r in verdict.unexpected] == ["test_gc.TestGC.test_boom"]
    assert upstream.fails_the_run(verdict)
    del results["test_gc.TestGC.test_boom"]
    verdict = upstream.judge(results, known, {"test_gc.py"})
    assert not upstream.fails_the_run(verdict)


@pytest.mark.parametrize(
    "status, detail",
    [
        ("crash", "killed by SIGSEGV"),
        ("crash", "exit 1 without a unittest summary"),
        ("error", "RuntimeError: Expected leak to leak but it did not"),
        ("fail", "AssertionError: 3 != 4"),
        ("unexpected success", "unexpected success"),
    ],
)
def test_upstream_fails_a_listed_test_that_fails_otherwise(tmp_path, status, detail):
    tid = "test_gc.TestGC.test_finalizer_crash"
    known = _known_upstream(tmp_path, f"{tid}  {LEAK}  # leaks\n")
    results = {tid: upstream.Result(tid, status, detail)}
    verdict = upstream.judge(results, known, {"test_gc.py"})
    assert [(r.id, e.name) for r, e in verdict.mismatched] == [(tid, tid)]
    assert not verdict.known
    assert upstream.fails_the_run(verdict)


def test_upstream_accepts_a_crash_listed_as_one(tmp_path):
    tid = "test_gc.TestGC.test_finalizer_crash"
    known = _known_upstream(tmp_path, f"{tid}  crash: SIGSEGV  # segfaults\n")
    results = {tid: upstream.Result(tid, "crash", "killed by SIGSEGV")}
    assert not upstream.fails_the_run(upstream.judge(results, known, {"test_gc.py"}))
    results = {tid: upstream.Result(tid, "crash", "killed by SIGABRT")}
    assert upstream.fails_the_run(upstream.judge(results, known, {"test_gc.py"}))


@pytest.mark.parametrize("status", ["ok", "expected failure"])
def test_upstream_fails_a_listed_test_that_passes(tmp_path, status):
    tid = "test_gc.TestGC.test_finalizer_crash"
    known = _known_upstream(tmp_path, f"{tid}  {LEAK}  # leaks\n")
    verdict = upstream.judge({tid: upstream.Result(tid, status)}, known, {"test_gc.py"})
    assert verdict.now_passing == [tid] and upstream.fails_the_run(verdict)


def test_upstream_fails_a_listed_test_that_is_gone_but_only_in_the_files_run(tmp_path):
    tid = "test_gc.TestGC.test_finalizer_crash"
    known = _known_upstream(tmp_path, f"{tid}  {LEAK}  # leaks\n")
    verdict = upstream.judge({}, known, {"test_gc.py"})
    assert verdict.absent == [tid] and upstream.fails_the_run(verdict)
    assert not upstream.fails_the_run(upstream.judge({}, known, {"test_greenlet.py"}))


@pytest.mark.parametrize("status", ["fail", "error", "crash", "unexpected success"])
def test_upstream_fails_any_unlisted_failure(status):
    tid = "test_gc.TestGC.test_other"
    verdict = upstream.judge({tid: upstream.Result(tid, status, "x")}, {}, {"test_gc.py"})
    assert [r.id for r in verdict.unexpected] == [tid] and upstream.fails_the_run(verdict)


def test_upstream_calls_a_dying_run_a_crash():
    assert upstream.Child(-11, "").crash_label(60) == "killed by SIGSEGV"
    assert upstream.Child(None, "").crash_label(60) == "timeout after 60s"
    assert upstream.Child(0, "no summary").crash_label(60) == "exit 0 without a unittest summary"
    assert upstream.Child(1, UNITTEST_OUTPUT).crash_label(60) is None


def test_upstream_reruns_a_crashed_file_test_by_test_and_records_the_crash(tmp_path, monkeypatch):
    # A file whose process segfaults: every test reruns alone; the one that dies again is a
    # crash, which its leak-check entry does not excuse.
    source = tmp_path / "test_gc.py"
    source.write_text(
        "class TestGC:\n    def test_finalizer_crash(self): pass\n    def test_ok(self): pass\n"
    )
    alone_ok = "test_ok (greenlet.tests.test_gc.TestGC.test_ok) ... ok\n\n" + "-" * 70
    alone_ok += "\nRan 1 test in 0.0s\n\nOK\n"

    def fake_child(args, setup):
        target = args[-1]
        if target == "greenlet.tests.test_gc.TestGC.test_ok":
            return upstream.Child(0, alone_ok)
        return upstream.Child(-11, "Fatal Python error: Segmentation fault\n")

    monkeypatch.setattr(upstream, "run_child", fake_child)
    setup = upstream.Setup("corolet", "python", "3.99", {}, tmp_path, tmp_path, 60.0)
    results, _ = upstream.run_file(setup, source)
    assert {tid: r.status for tid, r in results.items()} == {
        "test_gc.TestGC.test_finalizer_crash": "crash",
        "test_gc.TestGC.test_ok": "ok",
    }
    known = _known_upstream(tmp_path, f"test_gc.TestGC.test_finalizer_crash  {LEAK}  # leaks\n")
    verdict = upstream.judge(results, known, {"test_gc.py"})
    assert upstream.fails_the_run(verdict)
    assert [r.detail for r, _ in verdict.mismatched] == ["killed by SIGSEGV"]


def test_upstream_update_writes_this_runs_outcome_and_keeps_reasons(tmp_path):
    tid = "test_gc.TestGC.test_finalizer_crash"
    known = _known_upstream(tmp_path, f"{tid}  {LEAK}  # leaks\n")
    results = {
        tid: upstream.Result(tid, "crash", "killed by SIGSEGV"),
        "test_gc.TestGC.test_new": upstream.Result("test_gc.TestGC.test_new", "error", "x"),
    }
    updated = upstream.updated_known(results, known, {"test_gc.py"})
    assert updated[tid] == Entry(tid, ("crash",), reason="leaks")
    assert updated["test_gc.TestGC.test_new"].reason == upstream.NEW_REASON
    still = {tid: upstream.Result(tid, "fail", "LeakCheckError: Expected f to leak but it did not")}
    assert upstream.updated_known(still, known, {"test_gc.py"}) == known


# --- tools/gevent_suite.py ----------------------------------------------------------------------


def _known_gevent(tmp_path, text: str) -> dict[str, Entry]:
    path = tmp_path / "3.99.txt"
    path.write_text(text)
    return gevent_suite.load_known(path)


def _file(name: str, status: str, detail: str = "", cases=()) -> gevent_suite.FileResult:
    result = gevent_suite.FileResult(name, status, detail)
    result.cases = [gevent_suite.Case(case, "fail", "AssertionError: no") for case in cases]
    return result


def _gevent_verdict(mine, base, known):
    mine = {r.name: r for r in mine}
    base = {r.name: r for r in base}
    return gevent_suite.judge(mine, base, known, set(mine))


SUBPROCESS = "test__subprocess.py  failed: test_run_with_shell_timeout  # dash\n"
CASE = "test__subprocess.Test.test_run_with_shell_timeout_and_capture_output"


def test_gevent_passes_a_listed_file_failing_as_listed(tmp_path):
    known = _known_gevent(tmp_path, SUBPROCESS)
    mine = [_file("test__subprocess.py", "failed", "exit 1, 1 failing test cases", [CASE])]
    base = [_file("test__subprocess.py", "failed", "exit 1", [CASE])]
    verdict = _gevent_verdict(mine, base, known)
    assert [name for name, _ in verdict.known] == ["test__subprocess.py"]
    assert gevent_suite.failures(verdict) == 0


@pytest.mark.parametrize(
    "status, detail, cases",
    [
        ("crash", "killed by SIGSEGV (no faulthandler report)", []),
        ("timeout", "killed after the 100s timeout", []),
        ("failed", "exit 1, 1 failing test cases", ["test__subprocess.Test.test_other"]),
    ],
)
def test_gevent_fails_a_listed_file_that_fails_otherwise(tmp_path, status, detail, cases):
    known = _known_gevent(tmp_path, SUBPROCESS)
    mine = [_file("test__subprocess.py", status, detail, cases)]
    base = [_file("test__subprocess.py", "failed", "exit 1", cases)]
    verdict = _gevent_verdict(mine, base, known)
    assert [name for name, _ in verdict.unexpected] == ["test__subprocess.py"]
    assert gevent_suite.failures(verdict) == 1


def test_gevent_fails_a_crash_of_any_listed_file(tmp_path):
    known = _known_gevent(
        tmp_path, "test__a.py  failed  # a\ntest__b.py  flaky failed|timeout  # b\n"
    )
    mine = [_file("test__a.py", "crash", "killed by SIGABRT"), _file("test__b.py", "crash")]
    verdict = _gevent_verdict(mine, [], known)
    assert sorted(name for name, _ in verdict.unexpected) == ["test__a.py", "test__b.py"]
    assert gevent_suite.failures(verdict) == 2


def test_gevent_lets_a_flaky_file_pass_but_not_a_plain_listed_one(tmp_path):
    known = _known_gevent(tmp_path, "test__a.py  failed  # a\ntest__b.py  flaky timeout  # b\n")
    mine = [_file("test__a.py", "passed"), _file("test__b.py", "passed")]
    verdict = _gevent_verdict(mine, [], known)
    assert verdict.now_passing == ["test__a.py"]
    mine = [_file("test__b.py", "timeout", "killed after the 100s timeout")]
    verdict = _gevent_verdict(mine, [_file("test__b.py", "timeout")], known)
    assert gevent_suite.failures(verdict) == 0


@pytest.mark.parametrize("status", ["failed", "timeout", "crash"])
def test_gevent_fails_an_unlisted_file_that_does_not_pass(status):
    mine = [_file("test__a.py", status, "x")]
    base = [_file("test__a.py", "passed")]
    verdict = _gevent_verdict(mine, base, {})
    assert gevent_suite.failures(verdict) == 1


def test_gevent_fails_a_listed_file_gone_from_the_run(tmp_path):
    known = _known_gevent(tmp_path, "test__a.py  failed  # a\n")
    mine = [_file("test__a.py", "not run", "gevent ignores it")]
    verdict = _gevent_verdict(mine, [], known)
    assert verdict.absent == ["test__a.py"] and gevent_suite.failures(verdict) == 1


def test_gevent_calls_a_signal_a_crash_and_an_exit_code_a_failure():
    crash = gevent_suite.outcome("test__a.py", -11, "", 1.0, 100.0, (0,))
    assert crash.status == "crash" and crash.detail.startswith("killed by SIGSEGV")
    failed = gevent_suite.outcome("test__a.py", 1, "Ran 1 test in 0.1s\n\nFAILED", 1.0, 100.0, (0,))
    assert failed.status == "failed"
    timeout = gevent_suite.outcome("test__a.py", None, "", 100.0, 100.0, (0,))
    assert timeout.status == "timeout"
