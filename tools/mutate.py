"""A rerunnable mutation check: small deliberate bugs, one at a time, that the tests must catch.

Model
-----
Each mutant (in ``tools/mutants.py``) is a file, a text that occurs in it once (white space
matching any white space), the text that replaces it, a description, and the test subset that
should catch it. For each mutant the runner writes the mutated file, rebuilds corolet if the
file is Rust or C (Python files are used in place: the editable install imports
``python/corolet`` itself), runs the subset with ``pytest -x``, and restores the file. A mutant
is *killed* when the subset fails (or times out, or the process dies), *survives* when it
passes, and is *unviable* when it does not build. The score is killed / (killed + survived).

Rust mutants are built with ``maturin develop`` into a target directory of their own
(``target/mutate-py<ver>``) with a quicker profile (no LTO, parallel code generation,
incremental), so one changed file rebuilds in well under a minute; the first build makes that
directory from scratch. Before any mutant the unmutated code is built and every subset run: a
failure then stops the run, since nothing could be judged. Afterwards the
original file contents are back (also on error or Ctrl-C) and so is the extension module that
was installed before the run (the quick build directory is left holding the last mutant's).

Usage: ``tools/mutate.py --python .venv-3.11/bin/python [--only NAME,...] [--list]``
(``make mutate``). It is not part of CI: a full run takes several minutes per Rust mutant on a
loaded machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "corolet"
TEST_TIMEOUT = 900.0  # seconds per subset; a mutant that hangs the tests is killed
QUICK_PROFILE = {
    "CARGO_PROFILE_RELEASE_LTO": "false",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
    "CARGO_PROFILE_RELEASE_INCREMENTAL": "true",
}


def needs_build(mutant: Mutant) -> bool:
    return mutant.file.endswith((".rs", ".c", ".h"))


def apply(mutant: Mutant) -> str:
    """Write the mutated file; returns the original text."""
    if mutant.new[:1].isspace():
        # The match starts at the old text's first word, after its indentation.
        raise SystemExit(f"mutant {mutant.name}: its new text must not start with white space")
    path = ROOT / mutant.file
    original = path.read_text()
    matches = list(re.finditer(pattern(mutant.old), original))
    if len(matches) != 1:
        raise SystemExit(
            f"mutant {mutant.name}: its old text occurs {len(matches)} times in {mutant.file} "
            "(must be once): update tools/mutants.py"
        )
    start, end = matches[0].span()
    path.write_text(original[:start] + mutant.new + original[end:])
    return original


def pattern(old: str) -> str:
    """``old`` as a regular expression in which any run of white space matches any other."""
    return r"\s+".join(re.escape(word) for word in old.split())


def build(python: str, version: str) -> bool:
    env = dict(os.environ, **QUICK_PROFILE)
    env["CARGO_TARGET_DIR"] = str(ROOT / "target" / f"mutate-py{version}")
    venv = Path(python).parent.parent
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    maturin = shutil.which("maturin", path=str(venv / "bin")) or "maturin"
    proc = subprocess.run(
        [maturin, "develop", "--release", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print("    build failed:", proc.stderr.strip().splitlines()[-3:], flush=True)
    return proc.returncode == 0


def run_tests(python: str, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, what happened) for one test subset. Files of it that do not exist (yet) are
    left out, so that the same list scores an older checkout's tests too."""
    tests = tuple(t for t in tests if (ROOT / t.partition("::")[0]).exists())
    if not tests:
        return True, "none of its test files exists"
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return False, f"timeout after {TEST_TIMEOUT:g}s"
    if proc.returncode < 0:
        return False, f"killed by signal {-proc.returncode}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = (failed or lines[-1:] or ["no output"])[0]
    if proc.returncode != 0 and os.environ.get("MUTATE_VERBOSE"):
        print("\n".join(lines[-40:]), flush=True)
    return proc.returncode == 0, summary[:160]


def extension_files() -> list[Path]:
    return sorted(PACKAGE.glob("_corolet*.so"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the venv's interpreter")
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    args.python = os.path.abspath(args.python)  # keep the venv's symlink
    return args


def select(only: str | None) -> list[Mutant]:
    names = [mutant.name for mutant in MUTANTS]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise SystemExit(f"duplicate mutant names: {', '.join(sorted(duplicates))}")
    if not only:
        return list(MUTANTS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"no such mutant: {', '.join(unknown)}")
    return [mutant for mutant in MUTANTS if mutant.name in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = select(args.only)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:32} {mutant.file:28} {mutant.description}")
        return 0
    version = subprocess.run(
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    saved = {path: path.read_bytes() for path in extension_files()}
    rust = any(needs_build(mutant) for mutant in mutants)
    results: list[tuple[Mutant, str, str]] = []
    started = time.monotonic()
    try:
        print("baseline: building and running every subset unmutated", flush=True)
        # Cargo judges freshness by modification times: a checkout or copy older than the
        # quick build directory's last (mutated) build would otherwise not be rebuilt.
        for source in (ROOT / "src").iterdir():
            os.utime(source)
        if rust and not build(args.python, version):
            raise SystemExit("the unmutated code does not build")
        every = tuple(sorted({test for mutant in mutants for test in mutant.tests}))
        passed, summary = run_tests(args.python, every)
        if not passed:
            os.environ["MUTATE_VERBOSE"] = "1"
            run_tests(args.python, every)  # again, to show what failed
            raise SystemExit(f"unmutated, the tests fail: {summary}")
        for index, mutant in enumerate(mutants, 1):
            print(f"[{index}/{len(mutants)}] {mutant.name}: {mutant.description}", flush=True)
            original = apply(mutant)
            try:
                if needs_build(mutant):
                    if not build(args.python, version):
                        results.append((mutant, "unviable", "does not build"))
                        continue
                passed, summary = run_tests(args.python, mutant.tests)
            finally:
                (ROOT / mutant.file).write_text(original)
            verdict = "SURVIVED" if passed else "killed"
            print(f"    {verdict}: {summary}", flush=True)
            results.append((mutant, verdict, summary))
    finally:
        # The extension module installed before the run comes back (a mutant's may be there).
        for path in extension_files():
            if path not in saved:
                path.unlink()
        for path, data in saved.items():
            path.write_bytes(data)
    killed = sum(verdict == "killed" for _, verdict, _ in results)
    survived = [mutant for mutant, verdict, _ in results if verdict == "SURVIVED"]
    unviable = sum(verdict == "unviable" for _, verdict, _ in results)
    print()
    for mutant in survived:
        print(f"survived: {mutant.name} ({mutant.file}): {mutant.description}")
    judged = killed + len(survived)
    score = 100.0 * killed / judged if judged else 0.0
    minutes = (time.monotonic() - started) / 60
    print(
        f"mutation score: {killed}/{judged} killed ({score:.0f}%), "
        f"{len(survived)} survived, {unviable} unviable, {minutes:.1f} min"
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
