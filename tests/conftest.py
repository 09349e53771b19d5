"""Shared fixtures for corolet's own test suite.

Every test runs inside a leak check: it must not leave greenlet objects (nor main greenlets of
threads it started) behind. A test that leaks on purpose says so with
``@pytest.mark.leaks_greenlets(reason=...)``.

The suite also runs against the real greenlet, which is the specification corolet follows:
``make pytest-greenlet`` puts ``tests/against_greenlet`` (a ``corolet`` package that re-exports
greenlet) on ``PYTHONPATH`` in a virtualenv with PyPI's greenlet and sets
``COROLET_TEST_AGAINST_GREENLET=1``. Tests marked ``corolet_only`` (features greenlet does not
have, or deliberate differences, each with its reason) are then skipped.
"""

from __future__ import annotations

import gc
import os
import time

import corolet
import pytest

AGAINST_GREENLET = os.environ.get("COROLET_TEST_AGAINST_GREENLET") == "1"

# How long to wait for other threads' greenlet clean-up (a pending call on the main thread)
# before calling growth a leak.
_SETTLE_SECONDS = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "corolet_only(reason=...): tests a feature the real greenlet does not have, or a "
        "deliberate difference (skipped when COROLET_TEST_AGAINST_GREENLET=1)",
    )
    config.addinivalue_line(
        "markers",
        "leaks_greenlets(reason): the test leaves greenlet objects behind on purpose; "
        "the leak check is not applied",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    if AGAINST_GREENLET:
        where = getattr(corolet, "IMPLEMENTATION_FILE", corolet.__file__)
        return [f"under test: the real greenlet, {where} (through tests/against_greenlet)"]
    return [f"corolet under test: {corolet.__file__}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        only = item.get_closest_marker("corolet_only")
        if AGAINST_GREENLET and only is not None:
            why = only.kwargs.get("reason", "corolet-only feature")
            item.add_marker(pytest.mark.skip(reason=f"{why} (running against greenlet)"))
        leak = item.get_closest_marker("leaks_greenlets")
        if leak is not None and not leak.kwargs.get("reason"):
            raise pytest.UsageError(f"{item.nodeid}: leaks_greenlets needs reason=...")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    # Remember how each phase went, so the leak check can stay quiet after a failure (the
    # failure's traceback holds the test's frames, and with them its greenlets).
    setattr(item, f"_corolet_report_{report.when}", report)
    return report


def _count_live_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, corolet.greenlet))


def _total_main_greenlets() -> int | None:
    helper = getattr(corolet._corolet, "get_total_main_greenlets", None)
    return helper() if helper is not None else None


def _pending_cleanups() -> int:
    helper = getattr(corolet._corolet, "get_pending_cleanup_count", None)
    return helper() if helper is not None else 0


def _snapshot() -> tuple[int, int | None]:
    return _count_live_greenlets(), _total_main_greenlets()


@pytest.fixture(autouse=True)
def greenlet_leak_check(request: pytest.FixtureRequest):
    """Fail the test if it leaves more greenlet objects alive than there were before it."""
    # The main greenlet of this thread is created on first use and lives as long as the thread:
    # make sure it exists before the baseline is taken, so it is counted once, not as a leak.
    corolet.getcurrent()
    if request.node.get_closest_marker("leaks_greenlets") is not None:
        yield
        return
    before = _snapshot()
    yield
    call_report = getattr(request.node, "_corolet_report_call", None)
    if call_report is None or not call_report.passed:
        return
    # Threads that ended leave their greenlet state to be destroyed by a pending call that runs
    # on this thread; give it time to run before judging.
    deadline = time.monotonic() + _SETTLE_SECONDS
    after = _snapshot()
    while (after[0] > before[0] or _grew(before[1], after[1]) or _pending_cleanups()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
        after = _snapshot()
    problems = []
    if after[0] > before[0]:
        problems.append(f"live greenlet objects grew from {before[0]} to {after[0]}")
    if _grew(before[1], after[1]):
        problems.append(f"live main greenlets grew from {before[1]} to {after[1]}")
    if corolet.gettrace() is not None:
        corolet.settrace(None)
        problems.append("a greenlet trace function was left installed")
    if problems:
        pytest.fail("leak check: " + "; ".join(problems), pytrace=False)


def _grew(before: int | None, after: int | None) -> bool:
    return before is not None and after is not None and after > before


@pytest.fixture
def main_greenlet() -> corolet.greenlet:
    """The main greenlet of the thread the test runs in."""
    current = corolet.getcurrent()
    assert current.parent is None, "tests are expected to start in the main greenlet"
    return current
