# corolet — build, demo and test commands. Every target makes its own virtualenv per
# interpreter (.venv-<major.minor>) and installs what it needs into it from PyPI.
#
#   make demo                 build corolet and run `python -m corolet`
#   make test                 build corolet and run every test (cargo, pytest, our suite on the
#                             real greenlet, differential fuzzing, upstream greenlet suite,
#                             gevent's suite)
#   make fuzz                 differential fuzzing against greenlet, thousands of programs
#   make test-all             `make test` on every supported interpreter: the pyenv ones (PYS),
#                             then 3.14 and 3.15 in a Debian sid chroot (SID_PYS; empty skips it)
#   make sid-chroot           set up that chroot (tools/sid-chroot.sh; test-all does it too)
#   make mutate               the mutation check: deliberate small bugs its tests must catch
#   make test-dbg-host        our suite and greenlet's on Debian's python3.11-dbg under -X dev
#                             (apt-installs it when missing; test-all runs it, and the chroot's
#                             python3.14-dbg and python3.15-dbg: SID_DBG_PYS)
#   make valgrind             most of our suite under memcheck (test-all runs it)
#   make soak                 the soak test for SOAK_SECONDS (600; make test runs 30 s)
#   PYTHON=/path/to/python    choose the interpreter (default: python3)

PYTHON ?= python3
# A debug interpreter (Py_DEBUG) gets a "d" (3.11d): its own virtualenv and cargo target.
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d%s" % (*sys.version_info[:2], \
           "d" * hasattr(sys, "gettotalrefcount")))')
VENV ?= .venv-$(PYVER)
VPY := $(CURDIR)/$(VENV)/bin/python
CARGO_TARGET := $(CURDIR)/target/py$(PYVER)
PYS ?= /root/.pyenv/versions/3.10.13/bin/python /root/.pyenv/versions/3.11.7/bin/python \
       /root/.pyenv/versions/3.12.1/bin/python /root/.pyenv/versions/3.13.0/bin/python
# Debian sid's interpreters, inside the chroot tools/sid-chroot.sh makes.
SID_PYS ?= /usr/bin/python3.14 /usr/bin/python3.15
# Debug interpreters: Debian's on the host (installed by test-dbg-host) and the chroot's.
DBG_HOST_PY ?= /usr/bin/python3.11-dbg
DBG_HOST_PACKAGES := python3.11-dbg python3.11-venv
SID_DBG_PYS ?= /usr/bin/python3.14-dbg /usr/bin/python3.15-dbg
export CARGO_TARGET_DIR := $(CARGO_TARGET)

.PHONY: demo test test-all test-pys test-sid-chroot test-sid sid-chroot test-dbg test-dbg-host venv build cargo-test lint pytest upstream gevent \
        greenback pytest-greenlet fuzz fuzz-fast mutate \
        bench-fast bench valgrind valgrind-here clean soak soak-fast

$(VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r tests/requirements.txt
	# SQLAlchemy 2.0 (what pip picks on 3.10) pulls in the real greenlet; the tests must only
	# ever see corolet (corolet.install() serves SQLAlchemy), so it does not stay.
	$(VPY) -m pip uninstall -y -q greenlet 2>/dev/null || true
	touch $@

venv: $(VENV)/.stamp

build: venv
	cd $(CURDIR) && VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
	    $(VENV)/bin/maturin develop --release --quiet

# The demo's side-by-side timing uses PyPI greenlet from a virtualenv of its own.
GREENLET_VENV := .venv-bench-greenlet-$(PYVER)
$(GREENLET_VENV)/.stamp:
	$(PYTHON) -m venv --clear $(GREENLET_VENV)
	$(GREENLET_VENV)/bin/python -m pip install -q --disable-pip-version-check greenlet==3.5.6
	touch $@

demo: build $(GREENLET_VENV)/.stamp
	$(VPY) -m corolet --greenlet-python $(CURDIR)/$(GREENLET_VENV)/bin/python

cargo-test:
	PYO3_PYTHON=$(PYTHON) cargo test --release --quiet

lint: build
	cargo fmt --check
	PYO3_PYTHON=$(PYTHON) cargo clippy --release --quiet --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples tools
	$(VENV)/bin/ruff format --check python tests benches examples tools
	# Static types: the Python layer strictly, and the stub against the compiled module.
	$(VENV)/bin/mypy --strict --cache-dir=$(CARGO_TARGET)/mypy -p corolet.portal -p corolet.bridge
	$(VENV)/bin/python -m mypy.stubtest corolet._corolet

pytest: build
	$(VPY) -m pytest -q tests

# Our suite against the real greenlet 3.5.6, so that every expectation not marked corolet_only
# is greenlet's: a virtualenv of its own with PyPI greenlet and the test requirements, no
# corolet; tests/against_greenlet is a `corolet` that re-exports greenlet.
GREENLET_TEST_VENV := .venv-test-greenlet-$(PYVER)
$(GREENLET_TEST_VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv --clear $(GREENLET_TEST_VENV)
	$(GREENLET_TEST_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(GREENLET_TEST_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	    -r tests/requirements.txt greenlet==3.5.6
	touch $@

pytest-greenlet: $(GREENLET_TEST_VENV)/.stamp
	COROLET_TEST_AGAINST_GREENLET=1 PYTHONPATH=$(CURDIR)/tests/against_greenlet \
	    $(GREENLET_TEST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# Differential fuzzing against greenlet 3.5.6 (tools/difffuzz): the same random programs run
# on corolet and on greenlet (its own virtualenv, same interpreter), their traces compared.
# `make fuzz` runs FUZZ_COUNT programs from seed FUZZ_START; `fuzz-fast` (in `make test`) the
# first 300.
FUZZ_COUNT ?= 5000
FUZZ_START ?= 0
FUZZ = $(VPY) tools/difffuzz/difffuzz.py --corolet-python $(VPY) \
    --greenlet-python $(CURDIR)/$(GREENLET_VENV)/bin/python

fuzz: build $(GREENLET_VENV)/.stamp
	$(FUZZ) --start $(FUZZ_START) --count $(FUZZ_COUNT)

fuzz-fast: build $(GREENLET_VENV)/.stamp
	$(FUZZ) --start 0 --count 300

upstream: build
	$(VPY) tools/upstream.py --python $(VPY)

# greenback 1.3's own suite against corolet.portal (asyncio and Trio); sdist cached in .cache/.
greenback: build
	$(VPY) tools/greenback_suite.py --python $(VPY)

# gevent's own suite on corolet, compared with gevent on greenlet; makes .venv-gevent-*-$(PYVER).
gevent: build
	$(VPY) tools/gevent_suite.py --python $(VPY)

# The benchmarks' fast mode keeps them working and checks their results (a wrong value, count
# or release exits non-zero; timings are never judged); `make bench` gives the numbers. The
# core benchmarks build with the release profile, whose dependencies cargo-test has built.
bench-fast: build
	PYO3_PYTHON=$(PYTHON) cargo bench --profile release --quiet --bench core -- --fast
	$(VPY) benches/bench_greenlet.py --fast
	$(VPY) benches/bench_memory.py --fast
	$(VPY) benches/bench_bridge.py --fast
	$(VPY) benches/bench_inout.py --fast
	$(VPY) benches/bench_orm.py --fast
	$(VPY) benches/bench_gevent.py --fast
	$(VPY) benches/bench_portal.py --fast

bench: build
	PYO3_PYTHON=$(PYTHON) cargo bench --bench core
	$(VPY) benches/bench_greenlet.py
	$(VPY) benches/bench_memory.py
	$(VPY) benches/bench_bridge.py
	$(VPY) benches/bench_inout.py
	$(VPY) benches/bench_orm.py
	$(VPY) benches/bench_gevent.py
	$(VPY) benches/bench_portal.py

test: build cargo-test lint pytest pytest-greenlet fuzz-fast upstream greenback bench-fast gevent \
      soak-fast

# ---- Soak test (tools/soak.py): threads, greenlets of every fate, forks, for SOAK_SECONDS;
# then no crash, every greenlet accounted for, no growth of memory or objects. make test runs
# a short one.
SOAK_SECONDS ?= 600
soak: build
	$(VPY) tools/soak.py --seconds $(SOAK_SECONDS)

soak-fast: build
	$(VPY) tools/soak.py --seconds 30 --periods 5

# The pyenv interpreters and the chroot's run side by side (two streams of mostly
# single-threaded work on CI's two cores), their output interleaved line by line.
test-all:
	$(MAKE) --no-print-directory -j2 --output-sync=line test-pys test-sid-chroot

# The pyenv stream ends with valgrind (on 3.13, whose build it reuses; empty VALGRIND_PYTHON
# skips it); the chroot's stream ends with the host's debug interpreter (its own virtualenv and
# cargo target, so it never races the pyenv stream), which balances the two.
test-pys:
	set -e; for p in $(PYS); do $(MAKE) --no-print-directory test PYTHON=$$p; done
	$(if $(strip $(VALGRIND_PYTHON)),$(MAKE) --no-print-directory valgrind)

test-sid-chroot:
	$(if $(strip $(SID_PYS)$(SID_DBG_PYS)),tools/sid-chroot.sh run make --no-print-directory \
	    test-sid PYTHON=$(firstword $(SID_PYS) $(SID_DBG_PYS)) SID_PYS="$(SID_PYS)" \
	    SID_DBG_PYS="$(SID_DBG_PYS)")
	$(if $(strip $(DBG_HOST_PY)),$(MAKE) --no-print-directory test-dbg-host)

# Run inside the sid chroot (tools/sid-chroot.sh run make test-sid): `make test` on each of
# its interpreters, then test-dbg on each of its debug interpreters.
test-sid:
	set -e; for p in $(SID_PYS); do $(MAKE) --no-print-directory test PYTHON=$$p; done
	set -e; for p in $(SID_DBG_PYS); do $(MAKE) --no-print-directory test-dbg PYTHON=$$p; done

# ---- Debug interpreters (Py_DEBUG: assertions in CPython, reference-count checks).
# test-dbg runs our suite and greenlet's upstream suite on PYTHON, which must be a debug build,
# in development mode (PYTHONDEVMODE=1 is -X dev, inherited by every child the tests start).
# The known-failure lists are those of the interpreter's major.minor (a debug build fails the
# same upstream tests as the release build).
test-dbg: build
	$(if $(filter %d,$(PYVER)),,$(error test-dbg: $(PYTHON) is not a debug build (no sys.gettotalrefcount)))
	PYTHONDEVMODE=1 $(VPY) -m pytest -q tests
	PYTHONDEVMODE=1 $(VPY) tools/upstream.py --python $(VPY)

# Debian's python3.11-dbg on this host, installed with apt when missing (needs root).
test-dbg-host:
	@test -x $(DBG_HOST_PY) || { echo "installing $(DBG_HOST_PACKAGES) with apt"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(DBG_HOST_PACKAGES) >/dev/null; }
	$(MAKE) --no-print-directory test-dbg PYTHON=$(DBG_HOST_PY)

sid-chroot:
	tools/sid-chroot.sh setup

# ---- Memory errors under valgrind (memcheck): our pytest suite on corolet's native code,
# failing (--error-exitcode) on any invalid read, write or free and any use of an uninitialised
# value. VALGRIND_TESTS picks the files about corolet's native code (switching, throw, parents,
# threads, collection, weak references, contexts, frames, tracing, the C API, stack sizes,
# lifecycle, the native portal: about 70% of the suite's tests; the portal's two files take
# about 2 minutes), without the two tests that make 100,000
# greenlets or run out of mappings (minutes under valgrind). The others: test_datastack.py
# measures resident memory (meaningless under valgrind), test_examples.py and
# test_sqlalchemy.py only start child processes (valgrind does not follow them); the rest
# (attributes, bridge, install, C-API subclasses, stack limits) runs with
# VALGRIND_TESTS="tests --ignore=... ..." at twice the time. A test may take 30 times its
# usual time under valgrind: pytest's per-test timeout is 30 minutes here.
# tools/valgrind.supp holds the suppressions, each with the stack that justifies it. Leaks are
# not counted: CPython 3.12+ never frees its interned strings, so every run, corolet or not,
# "definitely loses" thousands of PyUnicode blocks; the soak test and the suite's own leak
# check cover leaks. CPython 3.10 and 3.11 are refused: their int.from_bytes() reads an
# uninitialised digit at start-up (longobject.c, maybe_small_long) and every later use of the
# small int it picks is reported, so no narrow suppression exists. VALGRIND_FLAGS adds options
# (--track-origins=yes shows where an uninitialised value came from).
VALGRIND_PYTHON ?= /root/.pyenv/versions/3.13.0/bin/python
VALGRIND_FLAGS ?=
VALGRIND_TESTS ?= $(addprefix tests/test_,$(addsuffix .py,switching throw parent threads gc \
    weakref contextvars frames tracing capi stack_size lifecycle portal_protocol portal)) \
    -k "not hundred_thousand_suspended and not running_out_of_mappings"
valgrind:
	$(MAKE) --no-print-directory valgrind-here PYTHON=$(VALGRIND_PYTHON)

valgrind-here: build
	@case "$(PYVER)" in 3.10*|3.11*) echo "make valgrind: CPython $(PYVER) reads uninitialised" \
	    "memory at start-up (see the Makefile); use 3.12 or later (VALGRIND_PYTHON=...)"; \
	    exit 2;; esac
	@command -v valgrind >/dev/null || { echo "installing valgrind with apt"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends valgrind >/dev/null; }
	PYTHONMALLOC=malloc valgrind --error-exitcode=99 --leak-check=no \
	    --suppressions=tools/valgrind.supp --num-callers=40 $(VALGRIND_FLAGS) \
	    --log-file=$(CARGO_TARGET)/valgrind.log \
	    $(VPY) -m pytest -q -p no:cacheprovider --timeout=1800 $(VALGRIND_TESTS) \
	    || { grep -E "ERROR SUMMARY" $(CARGO_TARGET)/valgrind.log; \
	         echo "make valgrind: failed; see $(CARGO_TARGET)/valgrind.log"; exit 1; }
	@grep -E "ERROR SUMMARY" $(CARGO_TARGET)/valgrind.log

# The mutation check (tools/mutate.py; not part of test): small deliberate bugs in the switch,
# throw, C API, interpreter-check, bridge and runner code, one at a time, each of which its
# tests must catch; prints the survivors and the score.
mutate: build
	$(VPY) tools/mutate.py --python $(VPY)

clean:
	rm -rf target .venv-* .cache
