//! Native stacks for greenlets, handed out by a process-wide pool.
//!
//! Model: stacks are carved out of large *slabs*, each one anonymous mapping reserved with
//! `MAP_NORESERVE`, so address space is reserved but a page costs memory only once it is
//! touched. A slab holds `SLOTS_PER_SLAB` slots; a slot is one guard page followed by the
//! usable stack (stacks grow down, so the guard sits below each stack).
//!
//! Guards: `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+) makes the page fault on access without
//! splitting the mapping, so a slab of any number of stacks stays *one* entry against
//! `vm.max_map_count`. Where the kernel lacks it (`EINVAL`), `mprotect(PROT_NONE)` is the
//! fallback, which costs one extra mapping per stack.
//!
//! Reuse: a returned stack joins its size class's warm set (up to `WARM_STACKS`, handed out
//! first, pages kept: re-faulting a page costs more than creating a greenlet); beyond that its
//! touched pages go back to the OS with `MADV_DONTNEED` and its slot is marked free in its
//! slab's bitmap. Slabs are cut from large address-space reservations and never unmapped.
//!
//! Scratch area: the top `SCRATCH_BYTES` of every slot are not part of the native stack but a
//! small area the layer above may use for data that lives exactly as long as the stack (the
//! interpreter's first data-stack chunk). It shares its page with the top of the stack, so a
//! parked greenlet that uses both touches as few pages as possible.
//!
//! Invariants: a `PooledStack` is owned by exactly one coroutine (or is free in the pool); its
//! `base()` is the low end of the scratch area and `limit()` the low end of its guard page,
//! both 16-byte aligned. This module knows nothing of Python.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use corosensei::stack::{Stack, StackPointer};

/// Stacks per slab (one bit each in the slab's free bitmap): a slab of 8 MiB stacks is
/// 512 MiB of address space.
const SLOTS_PER_SLAB: usize = 64;
/// Address space reserved at a time, from which slabs are cut (256 slabs of 8 MiB stacks).
/// Keeping all stacks in a few large reservations keeps other mappings (Python's object
/// arenas) out of the range they span: interleaved, those cost the allocator's address index
/// a node per arena region, memory that stays after the greenlets are gone.
const REGION_BYTES: usize = 1 << 37;
/// Free stacks per size class that keep their pages resident.
const WARM_STACKS: usize = 32;
/// `MADV_GUARD_INSTALL` (Linux 6.13+); not yet in every libc crate release.
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Bytes at the top of each stack set aside as its scratch area.
pub const SCRATCH_BYTES: usize = 1024;

/// The smallest usable stack size accepted by `set_stack_size`.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

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

    /// The scratch area: `SCRATCH_BYTES` bytes at the top of the slot, above the stack.
    pub fn scratch(&self) -> *mut u8 {
        (self.top() - SCRATCH_BYTES) as *mut u8
    }
}

// SAFETY: the slot is a valid mapping of `guard page + size` bytes that stays mapped for the
// life of the process; the guard page faults on access; the stack proper, below the scratch
// area, has `size - SCRATCH_BYTES >= MIN_STACK_SIZE - SCRATCH_BYTES > 4096` bytes; both
// addresses are 16-byte aligned (page aligned, and a page minus SCRATCH_BYTES).
unsafe impl Stack for PooledStack {
    fn base(&self) -> StackPointer {
        StackPointer::new(self.top() - SCRATCH_BYTES).expect("stack base is never 0")
    }

    fn limit(&self) -> StackPointer {
        StackPointer::new(self.guard).expect("stack guard is never 0")
    }
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        POOL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .give_back(self.guard, self.size);
    }
}

/// Where the first reservation is asked for (a hint the kernel may ignore): far below the
/// area where the kernel places other mappings by default, so that stacks and everything else
/// (Python's object arenas above all) each stay in one compact range.
const FIRST_REGION_HINT: usize = 1 << 44;

/// Reserves `len` bytes of address space, at `hint` if that is free: no access, no memory, no
/// commit charge, huge pages off (stacks want small pages). One mapping however many slabs
/// are later cut from it.
fn reserve(hint: usize, len: usize) -> io::Result<usize> {
    // SAFETY: an anonymous private mapping; the address is only a hint (no MAP_FIXED), so
    // nothing already mapped can be replaced.
    let base = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: advice on our own fresh mapping; failure only loses the hint.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    Ok(base as usize)
}

/// How guard pages are installed on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardKind {
    /// `MADV_GUARD_INSTALL`: no extra mapping per stack.
    Madvise,
    /// `mprotect(PROT_NONE)`: one extra mapping per stack.
    Mprotect,
}

/// The stacks of one size: a few warm ones (pages still resident, handed out first), and a
/// bitmap of cold free slots per slab, so that bookkeeping costs per slab, not per stack.
struct SizeClass {
    size: usize,
    /// Free stacks that keep their pages (at most `WARM_STACKS`).
    warm: Vec<usize>,
    /// Slab base -> bitmap of its cold free slots (bit i: slot i).
    slabs: BTreeMap<usize, u64>,
    /// Slabs with at least one cold free slot.
    with_free: Vec<usize>,
}

struct Pool {
    /// The unused rest of the current reservation.
    region_next: usize,
    region_end: usize,
    stack_size: usize,
    classes: Vec<SizeClass>,
    guard_kind: Option<GuardKind>,
    slabs: usize,
    live: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    region_next: 0,
    region_end: 0,
    stack_size: 0,
    classes: Vec::new(),
    guard_kind: None,
    slabs: 0,
    live: 0,
});

impl SizeClass {
    fn slot(&self) -> usize {
        self.size + page_size()
    }

    fn take_cold(&mut self) -> Option<usize> {
        let slot = self.slot();
        while let Some(&base) = self.with_free.last() {
            let mask = self.slabs.get_mut(&base).expect("listed slab exists");
            if *mask == 0 {
                self.with_free.pop();
                continue;
            }
            let i = mask.trailing_zeros() as usize;
            *mask &= !(1u64 << i);
            if *mask == 0 {
                self.with_free.pop();
            }
            return Some(base + i * slot);
        }
        None
    }

    fn put_cold(&mut self, guard: usize) {
        let slot = self.slot();
        let (&base, mask) = self
            .slabs
            .range_mut(..=guard)
            .next_back()
            .expect("a stack comes from one of our slabs");
        if *mask == 0 {
            self.with_free.push(base);
        }
        *mask |= 1u64 << ((guard - base) / slot);
    }
}

impl Pool {
    fn class(&mut self, size: usize) -> &mut SizeClass {
        let idx = match self.classes.iter().position(|c| c.size == size) {
            Some(idx) => idx,
            None => {
                self.classes.push(SizeClass {
                    size,
                    warm: Vec::new(),
                    slabs: BTreeMap::new(),
                    with_free: Vec::new(),
                });
                self.classes.len() - 1
            }
        };
        &mut self.classes[idx]
    }

    fn take(&mut self, size: usize) -> io::Result<usize> {
        let class = self.class(size);
        if let Some(guard) = class.warm.pop().or_else(|| class.take_cold()) {
            self.live += 1;
            return Ok(guard);
        }
        self.new_slab(size)?;
        self.take(size)
    }

    fn give_back(&mut self, guard: usize, size: usize) {
        self.live -= 1;
        let page = page_size();
        let class = self.class(size);
        if class.warm.len() < WARM_STACKS {
            class.warm.push(guard);
            return;
        }
        // SAFETY: the usable range of this slot is our own mapping and nothing lives on it
        // any more (its coroutine has finished or was reset).
        unsafe {
            libc::madvise(
                (guard + page) as *mut libc::c_void,
                size,
                libc::MADV_DONTNEED,
            );
        }
        class.put_cold(guard);
    }

    fn new_slab(&mut self, size: usize) -> io::Result<()> {
        let page = page_size();
        let slot = size + page;
        let len = slot * SLOTS_PER_SLAB;
        let base = self.carve(len)?;
        for i in 0..SLOTS_PER_SLAB {
            let guard = base + i * slot;
            if let Err(e) = self.install_guard(guard, page) {
                // SAFETY: back to reserved-only; no stack was handed out from this slab.
                unsafe { libc::mprotect(base as *mut libc::c_void, len, libc::PROT_NONE) };
                return Err(e);
            }
        }
        self.slabs += 1;
        record_slab(base, slot, size);
        let class = self.class(size);
        class.slabs.insert(base, u64::MAX);
        class.with_free.push(base);
        Ok(())
    }

    /// `len` bytes of fresh read-write address space for a slab, cut from the current
    /// region; a new region is reserved when it runs out.
    fn carve(&mut self, len: usize) -> io::Result<usize> {
        if self.region_next + len > self.region_end {
            let want = REGION_BYTES.max(len);
            // Next to the previous reservation, so that all stacks stay in one range.
            let hint = if self.region_end == 0 {
                FIRST_REGION_HINT
            } else {
                self.region_end
            };
            let (base, size) = reserve(hint, want)
                .map(|b| (b, want))
                .or_else(|_| reserve(hint, len).map(|b| (b, len)))?;
            self.region_next = base;
            self.region_end = base + size;
        }
        let base = self.region_next;
        // SAFETY: making a never-used piece of our own reservation accessible.
        let rc = unsafe {
            libc::mprotect(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.region_next += len;
        Ok(base)
    }
    fn install_guard(&mut self, addr: usize, page: usize) -> io::Result<()> {
        if self.guard_kind != Some(GuardKind::Mprotect) {
            // SAFETY: advice on one page of our own mapping.
            let rc = unsafe { libc::madvise(addr as *mut libc::c_void, page, MADV_GUARD_INSTALL) };
            if rc == 0 {
                self.guard_kind = Some(GuardKind::Madvise);
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) || self.guard_kind.is_some() {
                return Err(err);
            }
            self.guard_kind = Some(GuardKind::Mprotect);
        }
        // SAFETY: changing the protection of one page of our own mapping.
        let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, page, libc::PROT_NONE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Slabs recorded for the fault handler: base, slot size, usable size; lock-free so that a
/// signal handler may read it. Entries are written before `SLAB_COUNT` publishes them.
const MAX_SLABS: usize = 1 << 16;
static SLAB_TABLE: [[AtomicUsize; 3]; MAX_SLABS] =
    [const { [const { AtomicUsize::new(0) }; 3] }; MAX_SLABS];
static SLAB_COUNT: AtomicUsize = AtomicUsize::new(0);

fn record_slab(base: usize, slot: usize, size: usize) {
    // Called with the pool lock held: one writer at a time.
    let i = SLAB_COUNT.load(Ordering::Relaxed);
    if i >= MAX_SLABS {
        return;
    }
    SLAB_TABLE[i][0].store(base, Ordering::Relaxed);
    SLAB_TABLE[i][1].store(slot, Ordering::Relaxed);
    SLAB_TABLE[i][2].store(size, Ordering::Relaxed);
    SLAB_COUNT.store(i + 1, Ordering::Release);
}

/// If `addr` lies in the guard page of one of our stacks, that stack's usable size.
/// Async-signal-safe (no locks, no allocation).
pub fn guard_page_stack_size(addr: usize) -> Option<usize> {
    let page = page_size();
    let count = SLAB_COUNT.load(Ordering::Acquire).min(MAX_SLABS);
    SLAB_TABLE[..count].iter().find_map(|entry| {
        let base = entry[0].load(Ordering::Relaxed);
        let slot = entry[1].load(Ordering::Relaxed);
        let in_slab = addr >= base && addr < base + slot * SLOTS_PER_SLAB;
        (in_slab && (addr - base) % slot < page).then(|| entry[2].load(Ordering::Relaxed))
    })
}

/// Default usable stack size for new greenlets: a thread's, so that recursion which raises
/// `RecursionError` on a thread raises it in a greenlet too. It is only reserved; a parked
/// greenlet touches a page or two of it, and page tables cost the same (one page-table page
/// per stack) for any size from 2 MiB up.
pub const DEFAULT_STACK_SIZE: usize = 8 * 1024 * 1024;

/// Native stack a level of C recursion is assumed to need at most, for interpreters that
/// count C recursion separately (3.12+): a greenlet's budget is its stack size over this.
pub const BYTES_PER_C_LEVEL: usize = 512;

fn current_size(pool: &Pool) -> usize {
    if pool.stack_size == 0 {
        DEFAULT_STACK_SIZE
    } else {
        pool.stack_size
    }
}

/// The usable size new stacks get.
pub fn stack_size() -> usize {
    current_size(&POOL.lock().unwrap_or_else(|e| e.into_inner()))
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
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let old = current_size(&pool);
    pool.stack_size = rounded;
    Ok(old)
}

/// Takes a stack of the current size from the pool, mapping a new slab if needed.
pub fn take_stack() -> io::Result<PooledStack> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
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
    /// Slabs mapped so far.
    pub slabs: usize,
    /// How guards are installed (None until the first slab).
    pub guard_kind: Option<GuardKind>,
}

/// Current pool figures.
pub fn pool_stats() -> PoolStats {
    let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    PoolStats {
        live: pool.live,
        slabs: pool.slabs,
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

    #[test]
    fn stacks_are_distinct_aligned_and_writable() {
        let _serial = serial();
        let a = take_stack().unwrap();
        let b = take_stack().unwrap();
        assert_ne!(a.guard, b.guard);
        assert_eq!(a.base().get() % 16, 0);
        assert_eq!(a.limit().get() % page_size(), 0);
        assert_eq!(
            a.base().get() - a.limit().get(),
            a.size() + page_size() - SCRATCH_BYTES
        );
        assert_eq!(a.scratch() as usize, a.base().get());
        // The top page of the usable range is writable.
        let top = (a.top() - 8) as *mut u64;
        // SAFETY: inside the usable range of a stack we own.
        unsafe {
            top.write_volatile(42);
            assert_eq!(top.read_volatile(), 42);
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
    }

    #[test]
    fn guard_page_is_installed() {
        let _serial = serial();
        let _a = take_stack().unwrap();
        assert!(pool_stats().guard_kind.is_some());
        assert!(pool_stats().slabs >= 1);
    }
}
