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
#   PYTHON=/path/to/python    choose the interpreter (default: python3)

PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV ?= .venv-$(PYVER)
VPY := $(CURDIR)/$(VENV)/bin/python
CARGO_TARGET := $(CURDIR)/target/py$(PYVER)
PYS ?= /root/.pyenv/versions/3.10.13/bin/python /root/.pyenv/versions/3.11.7/bin/python \
       /root/.pyenv/versions/3.12.1/bin/python /root/.pyenv/versions/3.13.0/bin/python
# Debian sid's interpreters, inside the chroot tools/sid-chroot.sh makes.
SID_PYS ?= /usr/bin/python3.14 /usr/bin/python3.15
export CARGO_TARGET_DIR := $(CARGO_TARGET)

.PHONY: demo test test-all test-pys test-sid-chroot test-sid sid-chroot venv build cargo-test lint pytest upstream gevent \
        greenback \
        bench-fast bench valgrind clean pytest-greenlet fuzz fuzz-fast mutate

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

test: build cargo-test lint pytest pytest-greenlet fuzz-fast upstream greenback bench-fast gevent

# The pyenv interpreters and the chroot's run side by side (two streams of mostly
# single-threaded work on CI's two cores), their output interleaved line by line.
test-all:
	$(MAKE) --no-print-directory -j2 --output-sync=line test-pys test-sid-chroot

test-pys:
	set -e; for p in $(PYS); do $(MAKE) --no-print-directory test PYTHON=$$p; done

test-sid-chroot:
	$(if $(strip $(SID_PYS)),tools/sid-chroot.sh run make --no-print-directory test-sid \
	    PYTHON=$(firstword $(SID_PYS)) SID_PYS="$(SID_PYS)")

# Run inside the sid chroot (tools/sid-chroot.sh run make test-sid): `make test` on each of
# its interpreters.
test-sid:
	set -e; for p in $(SID_PYS); do $(MAKE) --no-print-directory test PYTHON=$$p; done

sid-chroot:
	tools/sid-chroot.sh setup

# Memory errors under valgrind: fails on any invalid read, write or free, or on memory
# definitely lost. CPython's own start-up noise is suppressed in tools/valgrind.supp.
valgrind: build
	PYTHONMALLOC=malloc valgrind --leak-check=full --show-leak-kinds=definite \
	    --errors-for-leak-kinds=definite --suppressions=tools/valgrind.supp \
	    --log-file=$(CARGO_TARGET)/valgrind.log $(VPY) tools/valgrind_smoke.py
	@grep -E "ERROR SUMMARY|definitely lost" $(CARGO_TARGET)/valgrind.log
	@! grep -E "Invalid (read|write|free)|definitely lost: [1-9]" $(CARGO_TARGET)/valgrind.log

# The mutation check (tools/mutate.py; not part of test): small deliberate bugs in the switch,
# throw, C API, interpreter-check, bridge and runner code, one at a time, each of which its
# tests must catch; prints the survivors and the score.
mutate: build
	$(VPY) tools/mutate.py --python $(VPY)

clean:
	rm -rf target .venv-* .cache
