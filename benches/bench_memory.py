"""Memory and lifetime cost of parked greenlets: corolet against greenlet 3.5.6.

For N greenlets (10,000, 100,000, 1,000,000 by default), each implementation runs in its own
fresh process: it creates N greenlets, switches into each (each parks three Python frames
deep, in ``main.switch()``), measures, then drops them all (each is killed with
``GreenletExit``) and measures again. Reported per parked greenlet:

- RSS: resident memory (``VmRSS``), which is what ``ps`` and most tools show;
- page tables: ``VmPTE``, kernel memory RSS leaves out (a native stack per greenlet costs
  about one page-table page; greenlet's copied stacks cost almost none);
- create + park and kill times, and how long a full garbage collection takes while they are
  parked: the first one after they parked (the collector reads every parked greenlet's
  frames, and corolet records what they refer to) and the best of the next two (corolet
  reports the record); times are the thread's CPU
  time (kernel time for its page faults included), which other work on a busy machine does
  not inflate: all the measured work runs on that one thread;
- create + park again: a second crowd of N in the same process once the first is killed.
  corolet's stacks are new mappings either way, but the kernel hands them the page-table
  pages the first crowd's stacks freed, and on a virtual machine that matters: a page-table
  page the guest had not used lately can cost several µs to touch (the host backs it on first
  use; Linux's free page reporting hands freed memory back to the host), against a fraction
  of a µs otherwise. The last line measures that without greenlets (a write per 8 MiB region,
  fresh, again, and consecutive pages);
- RSS and page tables left once all are killed, against where the process started; next to
  it, what the same harness leaves with N plain ``object()`` instances in place of greenlets
  (Python's own allocator keeps some of a crowd's memory), so that the greenlets' own share
  can be read off;
- what is still *allocated* then (Python's blocks, malloc's bytes in use), as opposed to kept
  by an allocator for reuse: pymalloc keeps one empty 1 MiB arena, and glibc does not trim
  its heap's top below a threshold it raises when a large block (the crowd's list) is freed.

greenlet comes from ``<repo>/.venv-bench-greenlet-<version>`` (made by bench_greenlet.py's
helper on the same interpreter). ``--fast`` runs 10,000 only. Every run, fast or not, checks what
does not depend on the machine and exits 1 if it is wrong: all N greenlets parked, none left
alive after the kill (nor, for corolet, a native stack still in use), and fewer than N / 10
Python blocks still allocated then (what they held was released). Timings are not judged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import bench_greenlet as common
from corolet.__main__ import PARKED_THREE_DEEP

# Both workers keep nothing allocated while the crowd lives that outlives it: readings and
# timings go into buffers made beforehand and are parsed once the crowd is gone. (A single
# float or dict kept from the middle of the run pins a 1 MiB object arena of Python's, which
# would be counted against whatever is measured.)
COMMON = r"""
import array, ctypes, gc, json, sys, time
readings = [bytearray(16384) for _ in range(3)]
lengths = array.array("q", [0, 0, 0])
times = array.array("d", [0.0] * 4)
gc_passes = array.array("d", [0.0] * 3)
# Memory still allocated (not merely kept by an allocator): Python's blocks, malloc's bytes.
blocks = array.array("q", [0, 0, 0])
in_use = array.array("q", [0, 0, 0])

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

try:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
except AttributeError:  # not glibc 2.33+
    mallinfo2 = None

def read_status(i):
    with open("/proc/self/status", "rb", buffering=0) as f:
        lengths[i] = f.readinto(readings[i])
    blocks[i] = sys.getallocatedblocks()
    if mallinfo2 is not None:
        info = mallinfo2()
        in_use[i] = info.uordblks + info.hblkhd

def status(i):
    text = bytes(readings[i][: lengths[i]]).decode()
    fields = dict(line.split(":", 1) for line in text.splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmPTE")}
"""

CONTROL = r"""
n = int(sys.argv[1])
warm = [object() for _ in range(1000)]
del warm
gc.collect()
read_status(0)
objs = [object() for _ in range(n)]
del objs
gc.collect()
read_status(2)
print(json.dumps({"rss_left_mb": (status(2)["VmRSS"] - status(0)["VmRSS"]) / 1e6}))
"""

# What a page-table page costs on this machine, without greenlets: n regions 8 MiB apart (a
# corolet stack's spacing), one byte written at the top of each, so that each write faults in
# a page and the page-table page mapping it (a page-table page maps 2 MiB); done twice, the
# second time after the first mapping is gone and its page-table pages are freed; and, for
# comparison, n consecutive pages (a page-table page per 512 writes).
PAGE_TABLES = r"""
import ctypes, json, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
n = int(sys.argv[1])
PROT_RW, MAP_PRIVATE_ANON_NORESERVE = 0x3, 0x02 | 0x20 | 0x4000

def touch(spacing):
    size = n * spacing
    base = libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANON_NORESERVE, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    memset = ctypes.memset
    t = time.thread_time()
    for at in range(base + spacing - 64, base + size, spacing):
        memset(at, 1, 1)
    us = (time.thread_time() - t) / n * 1e6
    libc.munmap(base, size)
    return us

print(json.dumps({"fresh_us": touch(8 << 20), "again_us": touch(8 << 20),
                  "dense_us": touch(4096)}))
"""

WORKER = (
    r"""
impl = __import__(sys.argv[1])
n = int(sys.argv[2])
if int(sys.argv[3]):
    impl.stack_size(int(sys.argv[3]))  # corolet only: its native stack size
"""
    + PARKED_THREE_DEEP
    + r"""read_status(0)
times[0] = time.thread_time()
glets = [impl.greenlet(body) for _ in range(n)]
for g in glets:
    g.switch()
del g
times[1] = time.thread_time()
read_status(1)
for i in range(3):
    t = time.thread_time()
    gc.collect()
    gc_passes[i] = time.thread_time() - t
del t, i
alive = sum(1 for g in glets if g) == n
times[2] = time.thread_time()
del glets
gc.collect()
times[3] = time.thread_time()
read_status(2)
# Counted after the last reading, so that the lists these make are not measured.
left = sum(1 for o in gc.get_objects() if isinstance(o, impl.greenlet) and o.parent is not None)
stats = getattr(getattr(impl, "_corolet", None), "_stack_stats", None)
stacks_left = stats()["live"] if stats is not None else 0
before, parked, after = status(0), status(1), status(2)
# A second crowd in the same process, after the first is gone: the page-table pages the kernel
# freed with the first one's stacks are warm now (see PAGE_TABLES below).
t = time.thread_time()
glets = [impl.greenlet(body) for _ in range(n)]
for g in glets:
    g.switch()
again_us = (time.thread_time() - t) / n * 1e6
del glets, g
gc.collect()
print(json.dumps({
    "again_us": again_us,
    "alive": alive,
    "greenlets_left": left,
    "stacks_left": stacks_left,
    "rss_per": (parked["VmRSS"] - before["VmRSS"]) / n,
    "pte_per": (parked["VmPTE"] - before["VmPTE"]) / n,
    "create_us": (times[1] - times[0]) / n * 1e6,
    "kill_us": (times[3] - times[2]) / n * 1e6,
    "gc_first_ms": gc_passes[0] * 1e3,
    "gc_ms": min(gc_passes[1:]) * 1e3,
    "rss_start_mb": before["VmRSS"] / 1e6,
    "rss_left_mb": (after["VmRSS"] - before["VmRSS"]) / 1e6,
    "pte_left_mb": (after["VmPTE"] - before["VmPTE"]) / 1e6,
    "blocks_left": blocks[2] - blocks[0],
    "malloc_left_kb": (in_use[2] - in_use[0]) / 1e3,
}))
"""
)


def run(python: str, module: str, n: int, stack_size: int = 0) -> dict:
    out = subprocess.run(
        [python, "-c", COMMON + WORKER, module, str(n), str(stack_size)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise common.BenchError(f"{module} with {n} greenlets failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    check_result(module, n, result)
    return result


def check_result(module: str, n: int, result: dict) -> None:
    """What must hold whatever the machine: every greenlet parked, then every one freed, and
    what they held released (Python blocks: a leak of one frame per greenlet is n blocks)."""
    common.check(result["alive"], f"{module}: not all {n} greenlets parked")
    common.check(
        result["greenlets_left"] == 0,
        f"{module}: {result['greenlets_left']} of {n} greenlets still alive after the kill",
    )
    common.check(
        result["stacks_left"] == 0, f"{module}: {result['stacks_left']} stacks still in use"
    )
    common.check(
        result["blocks_left"] < n // 10,
        f"{module}: {result['blocks_left']:+,} Python blocks still allocated after killing "
        f"{n} greenlets (a leak of about {result['blocks_left'] / n:.1f} per greenlet)",
    )


def control(python: str, n: int) -> float:
    out = subprocess.run(
        [python, "-c", COMMON + CONTROL, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout)["rss_left_mb"]


def page_tables(python: str, n: int) -> dict:
    out = subprocess.run(
        [python, "-c", PAGE_TABLES, str(n)], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(out.stdout)


def table(rows: list[tuple[int, dict, dict, float]]) -> str:
    lines = [
        "| greenlets | RSS per parked (corolet / greenlet) | page tables per parked "
        "| RSS + page tables per parked "
        "| create + park µs: first crowd; again "
        "| full GC pass while parked, ms: first; later | kill µs "
        "| RSS left after kill, MB (start) "
        "| page tables left, MB | same RSS with plain objects, MB "
        "| still allocated after kill: Python blocks, malloc KB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c, g, plain in rows:
        lines.append(
            f"| {n:,} | {c['rss_per']:,.0f} B / {g['rss_per']:,.0f} B "
            f"| {c['pte_per']:,.0f} B / {g['pte_per']:,.0f} B "
            f"| {c['rss_per'] + c['pte_per']:,.0f} B / {g['rss_per'] + g['pte_per']:,.0f} B "
            f"| {c['create_us']:.2f} / {g['create_us']:.2f}; "
            f"{c['again_us']:.2f} / {g['again_us']:.2f} "
            f"| {c['gc_first_ms']:,.1f} / {g['gc_first_ms']:,.1f}; "
            f"{c['gc_ms']:,.1f} / {g['gc_ms']:,.1f} "
            f"| {c['kill_us']:.2f} / {g['kill_us']:.2f} "
            f"| {c['rss_left_mb']:+.1f} ({c['rss_start_mb']:.0f}) / "
            f"{g['rss_left_mb']:+.1f} ({g['rss_start_mb']:.0f}) "
            f"| {c['pte_left_mb']:+.1f} / {g['pte_left_mb']:+.1f} | {plain:+.1f} "
            f"| {c['blocks_left']:+,}, {c['malloc_left_kb']:+,.0f} / "
            f"{g['blocks_left']:+,}, {g['malloc_left_kb']:+,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter with corolet")
    parser.add_argument("--fast", action="store_true", help="10,000 greenlets only")
    parser.add_argument("--counts", default="10000,100000,1000000")
    parser.add_argument(
        "--stack-size",
        type=int,
        default=0,
        help="corolet.stack_size() for corolet's greenlets, in bytes (default: its own, 8 MiB)",
    )
    args = parser.parse_args(argv)
    counts = [10_000] if args.fast else [int(c) for c in args.counts.split(",")]
    env = common.probe(args.python, "corolet")
    greenlet_python = common.greenlet_venv(args.python, env["sys_version"], env["version"])
    rows = [
        (
            n,
            run(args.python, "corolet", n, args.stack_size),
            run(greenlet_python, "greenlet", n),
            control(args.python, n),
        )
        for n in counts
    ]
    probe = page_tables(args.python, max(counts[:2]))
    mach = common.machine()
    print(
        f"Python {env['sys_version'].split()[0]}, {mach['cpu']}, {mach['cpus']} CPUs; "
        f"greenlet {common.GREENLET_VERSION}; each greenlet parked 3 Python frames deep; "
        f"corolet's stack size {args.stack_size or 'default (8 MiB)'}"
    )
    print(table(rows))
    print(
        f"A write that faults in a page and a new page-table page (regions 8 MiB apart, "
        f"{max(counts[:2]):,} of them): {probe['fresh_us']:.2f} µs; the same once those "
        f"page-table pages were freed: {probe['again_us']:.2f} µs; consecutive pages: "
        f"{probe['dense_us']:.2f} µs (Python's loop included in each)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except common.BenchError as e:
        print(f"bench_memory: {e}", file=sys.stderr)
        sys.exit(1)
