"""The scripts in ``examples/`` and the demo (``python -m corolet``) run and print what they
promise.

Each one runs as its own process, the way a reader would run it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The examples' stderr must stay empty: no development mode (make test-dbg sets
    # PYTHONDEVMODE), whose asyncio debug mode reports every callback slower than 0.1 s, as a
    # debug build under load has.
    env.pop("PYTHONDEVMODE", None)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _run(name: str) -> list[str]:
    env = _env()
    env["PYTHONWARNINGS"] = "error"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout.splitlines()


def test_ping_pong_passes_values_back_and_forth():
    lines = _run("ping_pong.py")
    assert lines[:6] == [
        "ping: got 1, sending 2",
        "pong: got 2, sending 4",
        "ping: got 4, sending 5",
        "pong: got 5, sending 10",
        "ping: got 10, sending 11",
        "pong: got 11, sending 22",
    ]
    assert lines[6] == "ping finished holding 22"
    assert lines[-1].startswith("after throw, pong dead: True")


def test_shared_data_producer_and_consumer_take_turns():
    lines = _run("shared_data.py")
    assert lines.count("consumer: drained, 3 consumed so far") == 1
    assert "consumer finished: 8 items, in order: True" in lines
    assert lines[-1] == "producer dead: True; consumer dead: True"


def test_auth_service_offers_the_same_logic_sync_and_async():
    lines = _run("auth_service.py")
    for api in ("sync ", "async"):
        for store in ("sync ", "async"):
            prefix = f"{api} API, {store} store: "
            mine = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
            assert len(mine) == 4, lines
            assert mine[0].startswith("alice    -> ok")
            assert mine[1].startswith("bob      -> refused (bob: bad credentials")
            assert mine[2].startswith("bob      -> ok")
            assert mine[3].startswith("mallory  -> refused")
    assert "50 concurrent async logins: 50 distinct tokens, 50 lookups in flight at once" in lines
    assert "sync API inside greenlet_spawn: ok (token of 32 hex digits)" in lines
    assert lines[-1] == "lockout: refused (bob: account locked)"


def test_bridge_socket_clients_do_real_io_through_the_bridge():
    lines = _run("bridge_socket.py")
    assert lines == [f"client {i}: client-{i}" for i in range(5)] + ["hits: 100 (expected 100)"]


def test_portal_lazy_load_fails_without_portals_and_loads_with_them():
    lines = _run("portal_lazy_load.py")
    assert lines[0].startswith("asyncio.run:        MissingGreenlet:"), lines
    assert "greenlet_spawn has not been" in lines[0]
    assert lines[1] == "corolet.portal.run: ada: ada@example.org, ada@work.example"


def test_demo_shows_the_bridge_driving_real_io():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "corolet"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    assert "4. The bridge driving real async I/O" in out
    bridge_line = next(line for line in out.splitlines() if "sync clients x" in line)
    assert "10 sync clients x 50 requests" in bridge_line and "all replies right" in bridge_line
    assert "5. Portals: await from plain sync code" in out
    portal_line = next(line for line in out.splitlines() if "each a sync call waiting" in line)
    assert "100 tasks" in portal_line and "all right" in portal_line
    # Without --greenlet-python the side-by-side section says how to get it.
    assert "`make demo` prepares a virtualenv" in out
    # The crowd: memory comes back once the 100,000 greenlets are killed.
    killed = next(line for line in out.splitlines() if "killed: RSS" in line)
    numbers = re.findall(r"[\d,]+\.\d", killed)
    rss_before, rss_parked, rss_after, pte_before, pte_parked, pte_after = (
        float(n.replace(",", "")) for n in numbers
    )
    assert rss_parked > rss_before + 300, killed  # ~6 KB each while parked
    assert rss_after < rss_before + 5, killed
    assert pte_after < pte_before + 2, killed


def test_gevent_server_serves_concurrent_clients_on_corolet():
    assert _run("gevent_server.py") == [
        "gevent's greenlet is corolet's: True",
        "Hub is a corolet greenlet: True",
        "50 clients x 20 lines served concurrently; totals match",
    ]
