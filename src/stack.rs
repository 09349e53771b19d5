//! Native stacks for greenlets, handed out by a process-wide pool.
//!
//! Model: each stack size has its own *regions*, large address-space reservations
//! (`PROT_NONE`, `MAP_NORESERVE`: no memory, no commit charge), cut into *slabs* of
//! `SLOTS_PER_SLAB` slots. A slot is one guard page followed by the usable stack (stacks grow
//! down, so the guard sits below each stack). A slab is made read-write when first needed; a
//! page costs memory only once touched.
//!
//! Guards: `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+) makes a page fault on access without
//! splitting the mapping, so any number of stacks stays a handful of entries against
//! `vm.max_map_count`. Where the kernel lacks it, `mprotect(PROT_NONE)` is the fallback,
//! which costs one extra mapping per stack (about 32,000 stacks under the default limit).
//!
//! Reuse and giving memory back, cheapest first:
//! - a returned stack joins its size's warm set (up to `WARM_STACKS`, handed out first, pages
//!   kept: re-faulting a page costs more than creating a greenlet);
//! - beyond that, up to `TEPID_STACKS` more are kept *tepid*: guard installed, the native
//!   stack's pages given back but for the four at the split (`MADV_DONTNEED` of one range,
//!   about 1.3 us, made only if `mincore` finds a page to give back just below them or at
//!   the bottom), the data-stack area kept (at most `DATA_STACK_MAX`, a page or two for most
//!   greenlets). Going cold and coming back costs a guard removal, a zap of the
//!   whole slot, a guard install and fresh page-table and stack pages, about 12 us per stack,
//!   which a server whose concurrent greenlets outnumber the warm set would pay for every
//!   greenlet it starts;
//! - beyond that it goes *cold*: its pages go back to the OS (`MADV_DONTNEED`) and, with
//!   madvise guards, its guard is removed too, so that the page tables that held its pages can
//!   be freed by the kernel (Linux 6.15+ frees empty ones on `MADV_DONTNEED`); the guard is
//!   put back when the slot is handed out again;
//! - a slab whose slots are all cold is *released* (one per size is kept as a spare, so that
//!   a crowd going up and down by a few stacks does not release and re-make a slab each
//!   time): mapped afresh as `PROT_NONE`, which frees its pages, page tables and guards on any
//!   kernel. Its address range stays reserved and is reused first.
//!
//! The warm and tepid sets and the spare prefer low addresses, so that a shrinking crowd
//! leaves the high end of its regions free to be released and its bookkeeping dropped.
//! Bookkeeping costs per slab (a 64-bit free mask), not per stack.
//!
//! Data stack: the top of every slot (`data_stack_len` bytes, up to 61.5 KiB) is set aside
//! for the interpreter's first frame data-stack chunk, which grows up while the native stack
//! grows down from just below it. A thread's first chunk is 16 KiB; one this large means
//! Python code inside a greenlet never maps and unmaps chunks as its call depth goes up and
//! down (CPython's chunk after the first is a fresh mapping, freed again when its frames
//! return). The split sits 2.5 KiB into the top page, so a parked greenlet with a shallow
//! native stack and a few Python frames touches that one page for both; deeper frames commit
//! further pages only when touched, and they go back with the stack's other pages.
//!
//! Invariants: a `PooledStack` is owned by exactly one coroutine (or is free in the pool); its
//! `base()` is the start of the slot's data-stack area (`top() - data_stack_len(size)`,
//! 16-byte aligned) and `limit()` the low end of its guard page (page aligned); a stack handed
//! out always has its guard installed. This module knows nothing of
//! Python.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use corosensei::stack::{Stack, StackPointer};

use crate::pagevec::PageVec;

/// Stacks per slab (one bit each in the slab's free mask): a slab of 8 MiB stacks is
/// 512 MiB of address space.
const SLOTS_PER_SLAB: usize = 64;
/// Every slot of a slab free.
const ALL_FREE: u64 = u64::MAX;
/// Address space reserved at a time for one stack size (2,047 slabs of 8 MiB stacks, some
/// 130,000 stacks). Keeping all stacks in a few large reservations keeps other mappings
/// (Python's object arenas) out of the range they span: interleaved, those cost the
/// allocator's address index a node per arena region, memory that stays after the greenlets
/// are gone.
const REGION_BYTES: usize = 1 << 40;
/// What is reserved at a time instead when running under valgrind: memcheck keeps shadow
/// bookkeeping for each 64 KiB of a mapping outside the low range its primary map covers, and
/// a 1 TiB region made the first switch take 8 s and 1.5 GB there. 1 GiB still holds two
/// slabs of 8 MiB stacks; more regions are reserved as needed, up to `MAX_REGIONS`.
const VALGRIND_REGION_BYTES: usize = 1 << 30;
/// Slabs per region at most (what 8 MiB stacks fit in `REGION_BYTES`): small stacks get
/// smaller regions, so that the region table the fault handler reads stays short.
const MAX_REGION_SLABS: usize = 2048;
/// Where the first reservation is asked for (a hint the kernel may ignore): far below the
/// area where the kernel places other mappings by default.
const FIRST_REGION_HINT: usize = 1 << 44;
/// Free stacks per size that keep their pages resident.
const WARM_STACKS: usize = 32;
/// Free stacks per size beyond the warm ones that keep their guard, their data-stack area and
/// the native stack's pages at the split (`trim_to_split`): four slabs' worth.
const TEPID_STACKS: usize = 4 * SLOTS_PER_SLAB;
/// Native-stack pages a tepid stack keeps below the page holding the split: a portal task's
/// greenlet (asyncio's or Trio's task stepped in it, some JSON) goes about three deep.
const KEEP_BELOW_SPLIT: usize = 3;
/// Pages below the kept ones that `trim_to_split` asks `mincore` about before trimming.
const PROBE_PAGES: usize = 8;
/// `MADV_GUARD_INSTALL` / `MADV_GUARD_REMOVE` (Linux 6.13+); not in every libc crate release.
const MADV_GUARD_INSTALL: libc::c_int = 102;
const MADV_GUARD_REMOVE: libc::c_int = 103;
/// Environment variable that forces `mprotect` guards (to exercise the fallback on kernels
/// that have guard markers).
const GUARD_ENV: &str = "COROLET_GUARD_PAGES";

/// Most bytes at the top of a slot set aside for the data stack (see `data_stack_len`).
const DATA_STACK_MAX: usize = 64 * 1024;
/// Native stack bytes left in the top page of a slot below the data stack: a parked
/// greenlet's native frames (about 1.9 KB at the top of a greenlet) fit, and its first
/// Python frames share the page.
const NATIVE_IN_TOP_PAGE: usize = 2560;

/// The smallest usable stack size accepted by `set_stack_size`.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// Default usable stack size for new greenlets: a thread's, so that recursion which raises
/// `RecursionError` on a thread raises it in a greenlet too. It is only reserved; a parked
/// greenlet touches a page or two of it, and page tables cost the same (one page-table page
/// per stack) for any size from 2 MiB up.
pub const DEFAULT_STACK_SIZE: usize = 8 * 1024 * 1024;

/// Native stack a level of C recursion is assumed to need at most, for interpreters that
/// count C recursion separately (3.12+): a greenlet's budget is its stack size over this.
pub const BYTES_PER_C_LEVEL: usize = 512;

/// The system page size (asked once).
#[inline]
pub fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let page = PAGE.load(Ordering::Relaxed);
    if page != 0 {
        return page;
    }
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if size > 0 { size as usize } else { 4096 };
    PAGE.store(page, Ordering::Relaxed);
    page
}

/// One native stack from the pool. Returned to the pool on drop.
#[derive(Debug)]
pub struct PooledStack {
    /// Lowest address of the slot: the guard page.
    guard: usize,
    /// Usable bytes above the guard.
    size: usize,
    // Tells valgrind that this range is a stack while the handle exists.
    _valgrind: corosensei::stack::valgrind::ValgrindStackRegistration,
}

impl PooledStack {
    /// Usable bytes of this stack.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Highest address of the slot (exclusive).
    pub fn top(&self) -> usize {
        self.guard + page_size() + self.size
    }

    /// The data-stack area at the top of the slot, above the native stack (`base()`):
    /// its start (16-byte aligned) and length, read-write while the handle exists.
    pub fn data_stack(&self) -> (*mut u8, usize) {
        let len = data_stack_len(self.size);
        ((self.top() - len) as *mut u8, len)
    }
}

/// Bytes at the top of a slot of `size` usable bytes set aside for the data stack: up to
/// `DATA_STACK_MAX` and an eighth of the slot, beginning `NATIVE_IN_TOP_PAGE` bytes into
/// its first page (pages are 4 KiB or more). At least 5.5 KiB (`MIN_STACK_SIZE` / 8 - 2.5 KiB)
/// with 4 KiB pages.
pub fn data_stack_len(size: usize) -> usize {
    let page = page_size();
    DATA_STACK_MAX.min(size / 8 / page * page).max(page) - NATIVE_IN_TOP_PAGE
}

// SAFETY: the slot is a read-write mapping of `guard page + size` bytes, with its guard page
// installed, for as long as the handle exists (a slab is released only once all its slots are
// back in the pool); the native stack is what lies between the guard and the data-stack area
// (`size - data_stack_len(size)`, at least 58.5 KiB since `size >= MIN_STACK_SIZE`); the base
// is 16-byte aligned, the limit page aligned.
unsafe impl Stack for PooledStack {
    fn base(&self) -> StackPointer {
        StackPointer::new(self.top() - data_stack_len(self.size)).expect("stack base is never 0")
    }

    fn limit(&self) -> StackPointer {
        StackPointer::new(self.guard).expect("stack guard is never 0")
    }
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        lock_pool().give_back(self.guard, self.size);
    }
}

/// How guard pages are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardKind {
    /// `MADV_GUARD_INSTALL`: no extra mapping per stack.
    Madvise,
    /// `mprotect(PROT_NONE)`: one extra mapping per stack.
    Mprotect,
}

/// Whether this kernel has guard markers: tried on a scratch mapping. `COROLET_GUARD_PAGES=
/// mprotect` forces the fallback.
fn probe_guard_kind() -> GuardKind {
    if std::env::var_os(GUARD_ENV).is_some_and(|v| v == "mprotect") {
        return GuardKind::Mprotect;
    }
    let page = page_size();
    // SAFETY: a fresh anonymous private mapping of one page, at an address the kernel picks.
    let probe = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if probe == libc::MAP_FAILED {
        return GuardKind::Mprotect;
    }
    // SAFETY: advice on, then unmapping of, the page just mapped, which nothing else uses.
    let rc = unsafe {
        let rc = libc::madvise(probe, page, MADV_GUARD_INSTALL);
        libc::munmap(probe, page);
        rc
    };
    if rc == 0 {
        GuardKind::Madvise
    } else {
        GuardKind::Mprotect
    }
}

/// Maps `len` bytes at `addr` afresh as reserved-only address space (no access, no memory, no
/// commit charge, huge pages off: stacks want small pages). With `fixed`, replaces what was
/// there (our own slab), which frees its pages, page tables and guards; otherwise `addr` is
/// a hint and nothing mapped is touched.
fn map_reserved(addr: usize, len: usize, fixed: bool) -> io::Result<usize> {
    map_anonymous(addr, len, libc::PROT_NONE, fixed)
}

/// `mmap` of fresh anonymous `MAP_NORESERVE` memory with protection `prot` and huge pages
/// off, at `addr` (a hint, or exactly there with `fixed`).
fn map_anonymous(addr: usize, len: usize, prot: libc::c_int, fixed: bool) -> io::Result<usize> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let flags = if fixed {
        flags | libc::MAP_FIXED
    } else {
        flags
    };
    // SAFETY: an anonymous private mapping. Without MAP_FIXED the address is only a hint, so
    // nothing already mapped can be replaced; with it, callers pass a range of their own.
    let base = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: advice on our own fresh mapping; failure only loses the advice.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    Ok(base as usize)
}

/// `madvise` on a range of our own, as a `Result`.
fn advise(addr: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: callers pass ranges inside slabs of our own regions; the advice used here
    // (guards, DONTNEED on free slots) touches no memory anything still uses.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives back the native-stack pages of the free slot at `guard` (a stack of `size` bytes)
/// below the page under the split (the page holding the split, where a shallow greenlet's
/// native frames and first Python frames live, and the one below stay); the guard and the
/// data-stack area stay. A failure leaves pages that could have been given back.
///
/// Only if there is something to give back: when `mincore` (which reads the page tables and
/// changes nothing) finds no resident page just below the kept ones nor at the slot's bottom,
/// nothing is done. The
/// `MADV_DONTNEED` of an empty range is not free: besides the call it flushes the TLB of
/// the whole process, and a server whose concurrent greenlets outnumber the warm set returns
/// one such stack for nearly every greenlet it starts (measured on 3.11: bench_portal's
/// `requests`, 50 portal tasks alive at a time, each going about 3 pages deep, lost 2-3 us
/// a task to trims that re-faulted the same pages, before the kept pages went from two to
/// `KEEP_BELOW_SPLIT + 1`, and to empty trims after).
fn trim_to_split(guard: usize, size: usize) -> io::Result<()> {
    let page = page_size();
    let top = guard + page + size;
    let split_page = (top - data_stack_len(size)) & !(page - 1);
    let keep_from = split_page - KEEP_BELOW_SPLIT * page;
    // A stack is touched downwards from the top, so what a deeper use left resident starts
    // right below what is kept: asking about the first `PROBE_PAGES` there, and about the
    // slot's deepest page (an overflow's), finds it without a `mincore` of the whole slot,
    // which cost a greenlet's life 2.6 us at 200 alive. Pages only between the two, below an
    // untouched run, stay resident: never freed too much.
    let low = guard + page;
    let probe_from = keep_from.saturating_sub(PROBE_PAGES * page).max(low);
    if !any_resident(probe_from, keep_from) && !any_resident(low, (low + page).min(keep_from)) {
        return Ok(());
    }
    advise(
        guard + page,
        keep_from - (guard + page),
        libc::MADV_DONTNEED,
    )
}

/// Whether any page of `[low, high)` (page-aligned, inside one of our slabs) is resident,
/// looked at from the top down (a stack is touched downwards); true when that cannot be told
/// (so that callers do what they would have done without asking).
fn any_resident(low: usize, high: usize) -> bool {
    const CHUNK: usize = 4096;
    let page = page_size();
    let mut vec = [0 as libc::c_uchar; CHUNK];
    let mut end = high;
    while end > low {
        let pages = ((end - low) / page).min(CHUNK);
        let start = end - pages * page;
        // SAFETY: `start` is page-aligned inside a mapping of ours, the range `pages` pages
        // long, and `vec` has a byte for each.
        let rc =
            unsafe { libc::mincore(start as *mut libc::c_void, pages * page, vec.as_mut_ptr()) };
        if rc != 0 || vec[..pages].iter().any(|b| b & 1 != 0) {
            return true;
        }
        end = start;
    }
    false
}

/// `mprotect` on a range of our own, as a `Result`.
fn protect(addr: usize, len: usize, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: callers pass ranges inside slabs of our own regions that hold no live stack,
    // or a single guard page.
    let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An `ENOMEM` from splitting mappings most likely means `vm.max_map_count`: say so.
fn explain_map_error(err: io::Error, kind: GuardKind) -> io::Error {
    if err.raw_os_error() != Some(libc::ENOMEM) || kind != GuardKind::Mprotect {
        return err;
    }
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "the process reached vm.max_map_count ({limit}): this kernel has no \
             MADV_GUARD_INSTALL (Linux 6.13+), so a stack and its guard page cost two \
             mappings; raise vm.max_map_count or keep fewer greenlets alive"
        ),
    )
}

/// A slab's state: which slots are cold and free, and whether it is read-write at all.
#[derive(Clone, Copy)]
struct Slab {
    /// Bit i: slot i is free and cold (0 while it is handed out or in the warm set).
    free: u64,
    /// Read-write (made so, not yet released).
    active: bool,
}

/// One reservation of one stack size: slabs cut from its start as needed.
struct Region {
    base: usize,
    /// How many slabs fit.
    capacity: usize,
    /// The slabs cut so far, in address order; released slabs at the end are dropped (their
    /// range is reserved-only, like the uncut rest).
    slabs: PageVec<Slab>,
}

impl Region {
    /// Whether slab `i` is reserved-only (released, or not cut yet).
    fn is_reserved_only(&self, i: usize) -> bool {
        self.slabs.get(i).is_none_or(|s| !s.active)
    }

    /// Drops released slabs from the end (their bookkeeping's pages go back as it shrinks).
    fn trim(&mut self) {
        while self.slabs.last().is_some_and(|s| !s.active) {
            self.slabs.pop();
        }
    }
}

/// Address space to reserve at a time for one stack size.
fn region_bytes() -> usize {
    if crate::valgrind::running() {
        VALGRIND_REGION_BYTES
    } else {
        REGION_BYTES
    }
}

/// Adds `stack` to `set` (at most `cap` entries, the lowest addresses kept, so that a
/// shrinking crowd leaves the high end of its regions free): the stack that does not fit
/// (`stack` itself, or the set's highest when `stack` is lower), or None.
fn keep_lowest(set: &mut Vec<usize>, cap: usize, stack: usize) -> Option<usize> {
    if set.len() < cap {
        set.push(stack);
        return None;
    }
    let (i, &highest) = set.iter().enumerate().max_by_key(|&(_, &s)| s)?;
    if highest < stack {
        return Some(stack);
    }
    // The returned stack is handed out next (its pages are the most likely cached).
    set.remove(i);
    set.push(stack);
    Some(highest)
}

/// Room in a size's slab lists: more slabs than address space can hold.
const MAX_LISTED_SLABS: usize = 1 << 25;

fn no_memory() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOMEM)
}

/// The stacks of one size.
struct SizeClass {
    size: usize,
    guard_kind: GuardKind,
    /// Free stacks that keep their pages and guard (at most `WARM_STACKS`): guard address.
    warm: Vec<usize>,
    /// Free stacks that keep their guard, their data-stack area and the native stack's two
    /// pages at the split, the rest given back (at most `TEPID_STACKS`): guard address.
    tepid: Vec<usize>,
    regions: Vec<Region>,
    /// (region, slab) of active slabs with cold free slots; entries whose slab has none
    /// left, or was released, are dropped when met.
    with_free: PageVec<(u32, u32)>,
    /// (region, slab) of released slabs, reused before new ones are cut; entries for slabs
    /// made active again or dropped by `Region::trim` are skipped when met.
    released: PageVec<(u32, u32)>,
    /// Active slabs.
    active: usize,
    /// The active slab with every slot cold and free, kept rather than released (every other
    /// wholly free slab is released).
    spare: Option<(u32, u32)>,
}

struct Pool {
    /// Where the next reservation is asked for.
    next_hint: usize,
    /// Usable size of new stacks (0: the default).
    stack_size: usize,
    classes: Vec<SizeClass>,
    /// Guard kind for new sizes (None until probed).
    guard_kind: Option<GuardKind>,
    live: usize,
    releases: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    next_hint: FIRST_REGION_HINT,
    stack_size: 0,
    classes: Vec::new(),
    guard_kind: None,
    live: 0,
    releases: 0,
});

fn lock_pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a slot is: region, slab, slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotRef {
    region: usize,
    slab: usize,
    index: usize,
}

/// The span a page-table page above the last level maps (x86-64, aarch64 with 4 KiB pages:
/// a PMD page, 1 GiB). A page-table page is freed only when a release covers its whole span,
/// so a release is widened over released neighbours up to these boundaries.
const PMD_SPAN: usize = 1 << 30;

impl SizeClass {
    fn new(size: usize, guard_kind: GuardKind) -> io::Result<Self> {
        let list = || PageVec::with_capacity(MAX_LISTED_SLABS).ok_or_else(no_memory);
        Ok(SizeClass {
            size,
            guard_kind,
            warm: Vec::new(),
            tepid: Vec::new(),
            regions: Vec::new(),
            with_free: list()?,
            released: list()?,
            active: 0,
            spare: None,
        })
    }

    fn slot_len(&self) -> usize {
        self.size + page_size()
    }

    fn slab_len(&self) -> usize {
        self.slot_len() * SLOTS_PER_SLAB
    }

    fn slab_base(&self, region: usize, slab: usize) -> usize {
        self.regions[region].base + slab * self.slab_len()
    }

    fn guard_of(&self, at: SlotRef) -> usize {
        self.slab_base(at.region, at.slab) + at.index * self.slot_len()
    }

    fn locate(&self, guard: usize) -> SlotRef {
        let slab_len = self.slab_len();
        let region = self
            .regions
            .iter()
            .position(|r| guard >= r.base && guard < r.base + r.capacity * slab_len)
            .expect("a stack comes from one of its size's regions");
        let offset = guard - self.regions[region].base;
        SlotRef {
            region,
            slab: offset / slab_len,
            index: offset % slab_len / self.slot_len(),
        }
    }

    fn slab(&mut self, (region, slab): (u32, u32)) -> Option<&mut Slab> {
        self.regions[region as usize].slabs.get_mut(slab as usize)
    }

    /// Takes a cold free slot out of the masks (its guard still to be installed, for madvise
    /// guards).
    fn take_cold(&mut self) -> Option<SlotRef> {
        while let Some(&entry) = self.with_free.last() {
            let Some(state) = self.slab(entry).filter(|s| s.active && s.free != 0) else {
                self.with_free.pop();
                continue;
            };
            let index = state.free.trailing_zeros() as usize;
            state.free &= !(1u64 << index);
            if state.free == 0 {
                self.with_free.pop();
            }
            if self.spare == Some(entry) {
                self.spare = None;
            }
            return Some(SlotRef {
                region: entry.0 as usize,
                slab: entry.1 as usize,
                index,
            });
        }
        None
    }

    /// Marks a slot cold and free. If that leaves its slab wholly free, it becomes the spare
    /// unless a lower one is: the slab that is not kept is returned, to be released.
    fn put_cold(&mut self, at: SlotRef) -> Option<(u32, u32)> {
        let state = &mut self.regions[at.region].slabs[at.slab];
        let was_full = state.free == 0;
        state.free |= 1u64 << at.index;
        let now_empty = state.free == ALL_FREE;
        let entry = (at.region as u32, at.slab as u32);
        if was_full {
            // Cannot be full: it has room for more slabs than there is address space.
            let _ = self.with_free.push(entry);
        }
        if !now_empty {
            return None;
        }
        match self.spare {
            Some(spare) if self.slab_base_of(spare) < self.slab_base_of(entry) => Some(entry),
            spare => {
                self.spare = Some(entry);
                spare
            }
        }
    }

    fn slab_base_of(&self, (region, slab): (u32, u32)) -> usize {
        self.slab_base(region as usize, slab as usize)
    }

    /// Keeps the lowest stacks warm: returns the stack that leaves the warm set instead
    /// (`stack` itself, or the highest warm one when `stack` is lower), or None if the warm
    /// set had room. A stack is its guard address.
    fn keep_warm(&mut self, stack: usize) -> Option<usize> {
        keep_lowest(&mut self.warm, WARM_STACKS, stack)
    }

    /// The same for the tepid set: the stack that goes cold instead, or None.
    fn keep_tepid(&mut self, stack: usize) -> Option<usize> {
        keep_lowest(&mut self.tepid, TEPID_STACKS, stack)
    }

    /// A released slab to make active again, if any.
    fn pop_released(&mut self) -> Option<(usize, usize)> {
        while let Some(entry) = self.released.pop() {
            if self.slab(entry).is_some_and(|s| !s.active) {
                return Some((entry.0 as usize, entry.1 as usize));
            }
        }
        None
    }

    /// Drops stale entries from the lists once they outnumber live ones, so that their
    /// memory goes too when a crowd is gone.
    fn compact(&mut self) {
        if self.with_free.len() > 2 * self.active + 16 {
            let regions = &self.regions;
            self.with_free.retain(|&(r, s)| {
                regions[r as usize]
                    .slabs
                    .get(s as usize)
                    .is_some_and(|s| s.active && s.free != 0)
            });
        }
        let released: usize =
            self.regions.iter().map(|r| r.slabs.len()).sum::<usize>() - self.active;
        if self.released.len() > 2 * released + 16 {
            let regions = &self.regions;
            self.released.retain(|&(r, s)| {
                regions[r as usize]
                    .slabs
                    .get(s as usize)
                    .is_some_and(|s| !s.active)
            });
        }
    }

    /// The range a release of slab `slab` may cover: the slab, widened over reserved-only
    /// neighbours (within the region) up to the page-table boundaries around it, so that
    /// page-table pages shared with released neighbours are freed too.
    fn release_range(&self, region: usize, slab: usize) -> (usize, usize) {
        let r = &self.regions[region];
        let slab_len = self.slab_len();
        let start = self.slab_base(region, slab);
        let end = start + slab_len;
        let floor = start & !(PMD_SPAN - 1);
        let ceiling = (end + PMD_SPAN - 1) & !(PMD_SPAN - 1);
        let mut lo = slab;
        while lo > 0 && r.is_reserved_only(lo - 1) && r.base + lo * slab_len > floor {
            lo -= 1;
        }
        let mut hi = slab + 1;
        while hi < r.capacity && r.is_reserved_only(hi) && r.base + hi * slab_len < ceiling {
            hi += 1;
        }
        (r.base + lo * slab_len, (hi - lo) * slab_len)
    }
}

impl Pool {
    fn class_index(&mut self, size: usize) -> io::Result<usize> {
        if let Some(idx) = self.classes.iter().position(|c| c.size == size) {
            return Ok(idx);
        }
        let kind = *self.guard_kind.get_or_insert_with(probe_guard_kind);
        self.classes.push(SizeClass::new(size, kind)?);
        Ok(self.classes.len() - 1)
    }

    /// A stack of `size` bytes: its guard address.
    fn take(&mut self, size: usize) -> io::Result<usize> {
        let c = self.class_index(size)?;
        let class = &mut self.classes[c];
        if let Some(stack) = class.warm.pop().or_else(|| class.tepid.pop()) {
            self.live += 1;
            return Ok(stack);
        }
        loop {
            let class = &mut self.classes[c];
            if let Some(at) = class.take_cold() {
                let guard = class.guard_of(at);
                if class.guard_kind == GuardKind::Madvise {
                    if let Err(e) = advise(guard, page_size(), MADV_GUARD_INSTALL) {
                        class.put_cold(at);
                        return Err(e);
                    }
                }
                self.live += 1;
                return Ok(guard);
            }
            self.activate_slab(c)?;
        }
    }

    fn give_back(&mut self, guard: usize, size: usize) {
        self.live -= 1;
        let c = self
            .classes
            .iter()
            .position(|c| c.size == size)
            .expect("a stack comes from its size's class");
        let class = &mut self.classes[c];
        let Some(out) = class.keep_warm(guard) else {
            return;
        };
        // `out` leaves the warm set. Kept tepid, its native pages go back (a failure only
        // keeps them); the stack that does not fit there (already trimmed, or `out`) goes cold.
        let evicted = class.keep_tepid(out);
        if evicted != Some(out) {
            let _ = trim_to_split(out, size);
        }
        let Some(guard) = evicted else {
            return;
        };
        let page = page_size();
        // Failures below only keep memory that could have been given back.
        let _ = if class.guard_kind == GuardKind::Madvise {
            advise(guard, page, MADV_GUARD_REMOVE)
                .and_then(|()| advise(guard, page + size, libc::MADV_DONTNEED))
        } else {
            advise(guard + page, size, libc::MADV_DONTNEED)
        };
        let at = class.locate(guard);
        let released = class.put_cold(at);
        if let Some((region, slab)) = released {
            self.release_slab(c, region as usize, slab as usize);
        }
    }

    /// Makes a slab read-write for class `c`: a released one if any, else a new one cut from
    /// the class's last region (a new region is reserved when that is full).
    fn activate_slab(&mut self, c: usize) -> io::Result<()> {
        let page = page_size();
        let (region, slab) = match self.classes[c].pop_released() {
            Some(at) => at,
            None => self.cut_slab(c)?,
        };
        let class = &mut self.classes[c];
        let base = class.slab_base(region, slab);
        let len = class.slab_len();
        let made = protect(base, len, libc::PROT_READ | libc::PROT_WRITE).and_then(|()| {
            if class.guard_kind == GuardKind::Mprotect {
                for i in 0..SLOTS_PER_SLAB {
                    protect(base + i * class.slot_len(), page, libc::PROT_NONE)?;
                }
            }
            Ok(())
        });
        if let Err(e) = made {
            // Back to reserved-only; nothing was handed out from this slab.
            let _ = map_reserved(base, len, true);
            let _ = class.released.push((region as u32, slab as u32)); // room: see with_free
            return Err(explain_map_error(e, class.guard_kind));
        }
        class.regions[region].slabs[slab] = Slab {
            free: ALL_FREE,
            active: true,
        };
        let _ = class.with_free.push((region as u32, slab as u32)); // room: see put_cold
        class.active += 1;
        // Wholly free, and the only such slab: there was no cold slot left.
        class.spare = Some((region as u32, slab as u32));
        Ok(())
    }

    /// Cuts a new (still reserved-only) slab for class `c` from the first region with room,
    /// reserving a new region when all are full.
    fn cut_slab(&mut self, c: usize) -> io::Result<(usize, usize)> {
        let class = &mut self.classes[c];
        // The first region with room: trimmed regions are cut again from where they end.
        let room = class
            .regions
            .iter()
            .position(|r| r.slabs.len() < r.capacity);
        let region = if let Some(region) = room {
            region
        } else {
            let slab_len = class.slab_len();
            let want = (region_bytes() / slab_len).clamp(1, MAX_REGION_SLABS) * slab_len;
            // Next to the previous reservation, so that all stacks stay in one range.
            let hint = self.next_hint;
            let (base, len) = map_reserved(hint, want, false)
                .map(|b| (b, want))
                .or_else(|_| map_reserved(hint, slab_len, false).map(|b| (b, slab_len)))?;
            let capacity = len / slab_len;
            let Some(slabs) = PageVec::with_capacity(capacity) else {
                // SAFETY: unmapping what was just mapped here, which nothing uses yet.
                unsafe { libc::munmap(base as *mut libc::c_void, len) };
                return Err(no_memory());
            };
            record_region(base, len, class.slot_len(), class.size);
            self.next_hint = base + len;
            class.regions.push(Region {
                base,
                capacity,
                slabs,
            });
            class.regions.len() - 1
        };
        let slabs = &mut class.regions[region].slabs;
        // The region has room (checked above), and its list holds `capacity` slabs.
        let pushed = slabs.push(Slab {
            free: 0,
            active: false,
        });
        debug_assert!(pushed);
        Ok((region, slabs.len() - 1))
    }

    /// Maps a wholly free slab afresh as reserved-only address space: its pages, page tables
    /// and guards go back to the OS; its range is reused first when stacks are needed again.
    fn release_slab(&mut self, c: usize, region: usize, slab: usize) {
        let class = &mut self.classes[c];
        class.regions[region].slabs[slab].active = false;
        let (start, len) = class.release_range(region, slab);
        if map_reserved(start, len, true).is_err() {
            class.regions[region].slabs[slab].active = true;
            return; // stays active: its slots are handed out again before a new slab
        }
        class.regions[region].slabs[slab].free = 0;
        class.active -= 1;
        let _ = class.released.push((region as u32, slab as u32)); // room: see put_cold
        class.regions[region].trim();
        class.compact();
        self.releases += 1;
    }
}

/// Regions recorded for the fault handler: base, length, slot length, usable stack size;
/// lock-free so that a signal handler may read it. Entries are written before `REGION_COUNT`
/// publishes them and never change after.
const MAX_REGIONS: usize = 1024;
static REGION_TABLE: [[AtomicUsize; 4]; MAX_REGIONS] =
    [const { [const { AtomicUsize::new(0) }; 4] }; MAX_REGIONS];
static REGION_COUNT: AtomicUsize = AtomicUsize::new(0);

fn record_region(base: usize, len: usize, slot: usize, size: usize) {
    // Called with the pool lock held: one writer at a time.
    let i = REGION_COUNT.load(Ordering::Relaxed);
    if i >= MAX_REGIONS {
        return;
    }
    for (cell, value) in REGION_TABLE[i].iter().zip([base, len, slot, size]) {
        cell.store(value, Ordering::Relaxed);
    }
    REGION_COUNT.store(i + 1, Ordering::Release);
}

/// If `addr` lies in the guard page of one of our stacks, that stack's usable size.
/// Async-signal-safe (no locks, no allocation).
pub fn guard_page_stack_size(addr: usize) -> Option<usize> {
    let page = page_size();
    let count = REGION_COUNT.load(Ordering::Acquire).min(MAX_REGIONS);
    REGION_TABLE[..count].iter().find_map(|entry| {
        let [base, len, slot, size] = entry.each_ref().map(|v| v.load(Ordering::Relaxed));
        let inside = addr >= base && addr - base < len;
        (inside && (addr - base) % slot < page).then_some(size)
    })
}

fn current_size(pool: &Pool) -> usize {
    if pool.stack_size == 0 {
        DEFAULT_STACK_SIZE
    } else {
        pool.stack_size
    }
}

/// The usable size new stacks get.
pub fn stack_size() -> usize {
    current_size(&lock_pool())
}

/// Sets the usable size of stacks handed out from now on (rounded up to whole pages).
/// Returns the previous size. Stacks already handed out keep their size.
pub fn set_stack_size(size: usize) -> Result<usize, String> {
    if size < MIN_STACK_SIZE {
        return Err(format!(
            "size not valid: {size} bytes; a greenlet stack needs at least {MIN_STACK_SIZE} bytes"
        ));
    }
    let page = page_size();
    let rounded = size
        .checked_add(page - 1)
        .ok_or_else(|| format!("size not valid: {size} bytes"))?
        / page
        * page;
    let mut pool = lock_pool();
    let old = current_size(&pool);
    pool.stack_size = rounded;
    Ok(old)
}

/// Takes a stack of the current size from the pool, mapping a new slab if needed.
pub fn take_stack() -> io::Result<PooledStack> {
    let mut pool = lock_pool();
    let size = current_size(&pool);
    let guard = pool.take(size)?;
    drop(pool);
    let page = page_size();
    Ok(PooledStack {
        guard,
        size,
        _valgrind: corosensei::stack::valgrind::ValgrindStackRegistration::new(
            (guard + page) as *mut u8,
            size,
        ),
    })
}

/// Figures about the pool, for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Stacks handed out and not yet returned.
    pub live: usize,
    /// Slabs read-write now.
    pub slabs: usize,
    /// Slabs released so far (pages, page tables and guards given back; address space kept).
    pub releases: usize,
    /// How guards are installed (None until the first stack).
    pub guard_kind: Option<GuardKind>,
}

/// Current pool figures.
pub fn pool_stats() -> PoolStats {
    let pool = lock_pool();
    PoolStats {
        live: pool.live,
        slabs: pool.classes.iter().map(|c| c.active).sum(),
        releases: pool.releases,
        guard_kind: pool.guard_kind,
    }
}

/// Serialises tests that reason about the shared pool.
#[cfg(test)]
pub static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with new stacks of `size` bytes (a size class of its own).
    fn with_size<T>(size: usize, f: impl FnOnce() -> T) -> T {
        let old = set_stack_size(size).unwrap();
        let out = f();
        set_stack_size(old).unwrap();
        out
    }

    /// Resident pages of a range, from mincore.
    fn resident_pages(addr: usize, len: usize) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: mincore only writes one byte per page into `vec`, which is long enough.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Writes to the lowest usable page of `stack` (the page above its guard; `limit()` is
    /// the guard's low end).
    fn touch_deep(stack: &PooledStack) {
        let deep = (stack.limit().get() + page_size()) as *mut u64;
        // SAFETY: inside the usable range of a stack we own (its lowest page).
        unsafe {
            deep.write_volatile(7);
            assert_eq!(deep.read_volatile(), 7);
        }
    }

    fn touch_top(stack: &PooledStack) {
        let top = (stack.top() - 8) as *mut u64;
        // SAFETY: inside the usable range of a stack we own.
        unsafe {
            top.write_volatile(42);
            assert_eq!(top.read_volatile(), 42);
        }
    }

    #[test]
    fn stacks_are_distinct_aligned_and_writable() {
        let _serial = serial();
        with_size(136 * 1024, fresh_stacks_are_distinct_aligned_and_writable);
    }

    fn fresh_stacks_are_distinct_aligned_and_writable() {
        let a = take_stack().unwrap();
        let b = take_stack().unwrap();
        assert_ne!(a.guard, b.guard);
        assert_eq!(a.base().get() % 16, 0);
        assert_eq!(a.limit().get() % page_size(), 0);
        assert_eq!(a.top() - a.limit().get(), a.size() + page_size());
        touch_top(&a);
        // The data stack: aligned, writable, above the native stack, ending at the top.
        for stack in [&a, &b] {
            let (data, len) = stack.data_stack();
            assert_eq!(data as usize % 16, 0);
            assert_eq!(data as usize, stack.base().get());
            assert_eq!(data as usize + len, stack.top());
            assert_eq!(stack.top() - data as usize, data_stack_len(stack.size()));
            // SAFETY: the data-stack area of a stack we own.
            unsafe { data.add(len - 1).write_volatile(7) };
        }
    }

    #[test]
    fn returned_stacks_are_reused() {
        let _serial = serial();
        let a = take_stack().unwrap();
        let guard = a.guard;
        drop(a);
        let b = take_stack().unwrap();
        assert_eq!(
            b.guard, guard,
            "the warm stack just returned is handed out first"
        );
    }

    #[test]
    fn too_small_stack_size_is_refused() {
        let _serial = serial();
        assert!(set_stack_size(1024).is_err());
    }

    #[test]
    fn guard_pages_are_recognised() {
        let _serial = serial();
        let a = take_stack().unwrap();
        assert_eq!(guard_page_stack_size(a.guard), Some(a.size()));
        assert_eq!(
            guard_page_stack_size(a.guard + page_size() - 1),
            Some(a.size())
        );
        assert_eq!(guard_page_stack_size(a.guard + page_size()), None);
        assert_eq!(guard_page_stack_size(a.top() - 8), None);
        assert!(pool_stats().guard_kind.is_some());
        assert!(pool_stats().slabs >= 1);
    }

    /// Runs `f` with sizes first used inside it getting `kind` guards.
    fn with_guard_kind<T>(kind: GuardKind, f: impl FnOnce() -> T) -> T {
        let old = lock_pool().guard_kind.replace(kind);
        let out = f();
        lock_pool().guard_kind = old;
        out
    }

    fn crowd_round_trip(size: usize) {
        with_size(size, || {
            let kept_slabs = (WARM_STACKS + TEPID_STACKS).div_ceil(SLOTS_PER_SLAB);
            let count = SLOTS_PER_SLAB * (kept_slabs + 5);
            let before = pool_stats();
            let stacks: Vec<_> = (0..count).map(|_| take_stack().unwrap()).collect();
            stacks.iter().for_each(touch_top);
            stacks.iter().for_each(touch_deep);
            let grown = pool_stats();
            assert_eq!(grown.live, before.live + count);
            assert!(grown.slabs >= before.slabs + 5, "{before:?} {grown:?}");
            let tops: Vec<usize> = stacks.iter().map(|s| s.top() - page_size()).collect();
            let deeps: Vec<usize> = stacks
                .iter()
                .map(|s| s.limit().get() + page_size())
                .collect();
            drop(stacks);
            let after = pool_stats();
            assert_eq!(after.live, before.live);
            // The warm and tepid stacks keep their slabs (one more where they straddle two),
            // plus a spare; the rest are released.
            assert!(
                after.slabs <= before.slabs + kept_slabs + 2,
                "{before:?} {after:?}"
            );
            // Only warm stacks keep their deep native pages; tepid ones keep their tops.
            let deep: usize = deeps.iter().map(|&d| resident_pages(d, 1)).sum();
            assert!(deep <= WARM_STACKS, "{deep} deep pages still resident");
            assert!(
                after.releases >= before.releases + 3,
                "{before:?} {after:?}"
            );
            let resident: usize = tops.iter().map(|&t| resident_pages(t, 1)).sum();
            assert!(
                resident <= WARM_STACKS + TEPID_STACKS,
                "{resident} top pages still resident"
            );
            // Released slabs come back writable, with guards, at the same addresses.
            let again: Vec<_> = (0..count).map(|_| take_stack().unwrap()).collect();
            again.iter().for_each(touch_top);
            for s in &again {
                assert_eq!(guard_page_stack_size(s.guard), Some(s.size()));
            }
            let highest = |v: &[usize]| v.iter().copied().max().unwrap();
            let again_tops: Vec<usize> = again.iter().map(|s| s.top() - page_size()).collect();
            assert_eq!(highest(&again_tops), highest(&tops), "no new address space");
            assert_eq!(pool_stats().slabs, grown.slabs);
        });
    }

    #[test]
    fn a_crowd_gives_its_memory_and_slabs_back() {
        let _serial = serial();
        crowd_round_trip(200 * 1024);
    }

    #[test]
    fn a_crowd_gives_its_memory_and_slabs_back_with_mprotect_guards() {
        let _serial = serial();
        with_guard_kind(GuardKind::Mprotect, || crowd_round_trip(196 * 1024));
    }
}
