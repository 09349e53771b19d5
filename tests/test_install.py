"""corolet.install(): `import greenlet` resolving to corolet.

install() changes sys.modules for the rest of the process, so every test in which it succeeds
runs it in a child interpreter. The child finds corolet the way this process did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import corolet
import pytest

pytestmark = pytest.mark.corolet_only


def _run_child(tmp_path, source: str) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(corolet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_install_makes_import_greenlet_resolve_to_corolet(tmp_path):
    out = _assert_ok(
        _run_child(
            tmp_path,
            """
            import sys
            import corolet
            assert "greenlet" not in sys.modules
            corolet.install()
            import greenlet
            from greenlet import GreenletExit, error, getcurrent, gettrace, settrace
            from greenlet import greenlet as greenlet_type
            assert greenlet_type is corolet.greenlet
            assert getcurrent is corolet.getcurrent
            assert GreenletExit is corolet.GreenletExit
            assert error is corolet.error
            assert settrace is corolet.settrace
            assert gettrace is corolet.gettrace
            assert greenlet.getcurrent() is corolet.getcurrent()
            print("ok")
            """,
        )
    )
    assert out == "ok\n"


def test_install_makes_import_greenlet_private_module_resolve_to_corolet(tmp_path):
    out = _assert_ok(
        _run_child(
            tmp_path,
            """
            import corolet
            corolet.install()
            import greenlet._greenlet
            from greenlet._greenlet import get_pending_cleanup_count, get_total_main_greenlets
            assert greenlet._greenlet.greenlet is corolet.greenlet
            assert get_pending_cleanup_count() == 0
            greenlet._greenlet.getcurrent()
            assert get_total_main_greenlets() == 1
            print("ok")
            """,
        )
    )
    assert out == "ok\n"


def test_install_is_idempotent(tmp_path):
    out = _assert_ok(
        _run_child(
            tmp_path,
            """
            import sys
            import corolet
            corolet.install()
            first = sys.modules["greenlet"], sys.modules["greenlet._greenlet"]
            corolet.install()
            corolet.install()
            assert (sys.modules["greenlet"], sys.modules["greenlet._greenlet"]) == first
            import greenlet
            assert greenlet.greenlet is corolet.greenlet
            print("ok")
            """,
        )
    )
    assert out == "ok\n"


def test_code_written_for_greenlet_runs_on_corolet_after_install(tmp_path):
    (tmp_path / "library_using_greenlet.py").write_text(
        textwrap.dedent(
            """
            from greenlet import getcurrent, greenlet

            def generate(n):
                consumer = getcurrent()

                def producer():
                    for i in range(n):
                        consumer.switch(i)
                    return "end"

                g = greenlet(producer)
                return [g.switch() for _ in range(n + 1)]
            """
        )
    )
    out = _assert_ok(
        _run_child(
            tmp_path,
            """
            import sys
            sys.path.insert(0, ".")
            import corolet
            corolet.install()
            import library_using_greenlet
            print(library_using_greenlet.generate(3))
            print(type(library_using_greenlet.greenlet()) is corolet.greenlet)
            """,
        )
    )
    assert out == "[0, 1, 2, 'end']\nTrue\n"


def test_install_refuses_when_another_greenlet_was_already_imported(tmp_path):
    # A stand-in for the real greenlet package, imported before install() is called.
    package = tmp_path / "other" / "greenlet"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("MARK = 'the other greenlet'\n")
    (package / "_greenlet.py").write_text("MARK = 'the other greenlet._greenlet'\n")
    out = _assert_ok(
        _run_child(
            tmp_path,
            """
            import sys
            sys.path.insert(0, "other")
            import greenlet
            import greenlet._greenlet
            assert greenlet.MARK == "the other greenlet"
            import corolet
            try:
                corolet.install()
            except Exception as exc:
                print(type(exc).__name__)
                print(str(exc).replace("\\n", " "))
            else:
                print("install() did not refuse")
            # Whatever was imported stays as it was.
            assert sys.modules["greenlet"] is greenlet
            assert sys.modules["greenlet._greenlet"] is greenlet._greenlet
            """,
        )
    )
    kind, _, message = out.partition("\n")
    # The design asks for "a clear error" without fixing its type: the child catches any
    # Exception (so not a bare BaseException or a crash) and its message must name greenlet.
    assert kind != "install() did not refuse", out
    assert "greenlet" in message, out


@pytest.mark.parametrize("where", ["/elsewhere/greenlet/__init__.py", None])
def test_install_refusal_is_a_runtime_error_naming_where_greenlet_came_from(monkeypatch, where):
    # In this process: a refusing install() changes nothing, and monkeypatch puts sys.modules
    # back whatever happens. A module without __file__ (a namespace package, a frozen module)
    # is named "?".
    other = types.ModuleType("greenlet")
    if where is not None:
        other.__file__ = where
    monkeypatch.setitem(sys.modules, "greenlet", other)
    monkeypatch.setitem(sys.modules, "greenlet._greenlet", types.ModuleType("greenlet._greenlet"))
    private = sys.modules["greenlet._greenlet"]
    with pytest.raises(RuntimeError) as info:
        corolet.install()
    assert str(info.value) == (
        "corolet.install(): the real greenlet package was already imported "
        f"(from {where or '?'}); call corolet.install() before anything imports greenlet"
    )
    assert sys.modules["greenlet"] is other
    assert sys.modules["greenlet._greenlet"] is private
