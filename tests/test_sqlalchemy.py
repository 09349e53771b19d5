"""A real client of the bridge: SQLAlchemy's asyncio ORM over aiosqlite, on corolet.

Each scenario of ``sqlalchemy_scenarios.py`` runs in its own child interpreter, which calls
``corolet.install()`` before SQLAlchemy is imported: SQLAlchemy 2.0 (what pip installs on
Python 3.10) imports greenlet eagerly and depends on the real greenlet, so this process never
imports SQLAlchemy, and the child checks that every greenlet SQLAlchemy makes is corolet's and
that the real greenlet was not loaded. The database is a file in the test's ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

SCENARIOS = Path(__file__).with_name("sqlalchemy_scenarios.py")
MISSING = [m for m in ("sqlalchemy", "aiosqlite") if importlib.util.find_spec(m) is None]


def _run(scenario: str, tmp_path: Path) -> str:
    if MISSING:
        pytest.fail(
            f"{', '.join(MISSING)} not installed in {sys.prefix}: "
            "pip install -r tests/requirements.txt"
        )
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONWARNINGS"] = "error::RuntimeWarning"  # e.g. a coroutine never awaited
    result = subprocess.run(
        [sys.executable, str(SCENARIOS), scenario, str(tmp_path / "test.sqlite")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"scenario {scenario} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.splitlines()[-1] == f"ok {scenario}", result.stdout
    return result.stdout


def test_orm_creates_inserts_and_queries_on_corolets_greenlets(tmp_path):
    out = _run("orm", tmp_path)
    assert "greenlet type" in out


def test_exception_in_a_transaction_rolls_it_back(tmp_path):
    _run("rollback", tmp_path)


def test_concurrent_sessions_under_gather_share_a_small_pool(tmp_path):
    _run("concurrent", tmp_path)


def test_timeout_while_waiting_for_the_pool_leaves_it_consistent(tmp_path):
    _run("cancel", tmp_path)


def test_sqlalchemys_await_works_inside_corolets_greenlet_spawn(tmp_path):
    _run("sqlalchemy_await_in_corolet_spawn", tmp_path)


def test_corolets_await_works_inside_sqlalchemys_greenlet_spawn(tmp_path):
    _run("corolet_await_in_sqlalchemy_spawn", tmp_path)


def test_missing_greenlet_from_sqlalchemy_and_from_corolet(tmp_path):
    _run("missing_greenlet", tmp_path)


def test_lazy_load_in_plain_async_code_with_portals_and_missing_greenlet_without(tmp_path):
    _run("portal_lazy_load", tmp_path)
