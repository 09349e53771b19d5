//! Read-ahead for the collector's walk over suspended greenlets' frames.
//!
//! Model: on 3.11+ a suspended greenlet's Python frames live at the bottom of its data stack,
//! in its own stack slot, slots 8 MiB apart. A collection visits every suspended greenlet's
//! frames (`tp_traverse`), so in a crowd each visit misses in the cache twice, for the
//! page-table entry and for the frames, one greenlet after the other. The collector walks its
//! lists in the order objects were allocated, which for a crowd is the order greenlets were
//! started in, or (3.13, once a collection has reordered its oldest generation) in the
//! reverse order. So each greenlet keeps the addresses of the data stacks of the greenlets
//! started [`DISTANCE`] starts after it and [`DISTANCE`] starts before it on any thread (its
//! `readahead` field), and visiting it (`corolet_pystate_traverse_frames`) asks the processor
//! to fetch as many bytes at both as its own frames take: whichever way the collector goes, by
//! the time it reaches that greenlet its page-table entry and its frames are on their way.
//!
//! Invariants:
//! - The addresses are only ever prefetched, never read or written through: a prefetch cannot
//!   fault, so an address whose greenlet has finished (its slot reused or unmapped) costs a
//!   useless fetch at worst. Order mismatches (greenlets started out of allocation order)
//!   cost the same and nothing else.
//! - [`RING`] holds the last [`DISTANCE`] greenlets started, with their data stacks, for the
//!   one started [`DISTANCE`] later to exchange addresses with. Only live `Green`s are in it:
//!   `forget` takes one out (leaving its address) before its memory is freed. It is touched
//!   only with the GIL held (one interpreter).

use std::cell::UnsafeCell;
use std::ptr;

use crate::greenlet::Green;

/// How many starts ahead (and behind) a greenlet's read-ahead addresses point: enough to cover
/// the miss latency with the work the collector does per greenlet (its objects, its frames').
pub const DISTANCE: usize = 8;

struct Ring {
    slots: [*const Green; DISTANCE],
    data: [*const u8; DISTANCE],
    next: usize,
}

struct GilRing(UnsafeCell<Ring>);

// SAFETY: only touched with the GIL held (see the invariants), which serializes all access.
unsafe impl Sync for GilRing {}

static RING: GilRing = GilRing(UnsafeCell::new(Ring {
    slots: [ptr::null(); DISTANCE],
    data: [ptr::null(); DISTANCE],
    next: 0,
}));

/// Records that `g` starts now, with its data stack at `data`: the greenlet started
/// [`DISTANCE`] starts ago learns `data` as its address ahead, and `g` learns that greenlet's
/// data stack as its address behind.
///
/// # Safety
/// GIL held; `g` is alive and stays so until [`forget`] is called for it.
pub unsafe fn started(g: *const Green, data: *const u8) {
    // SAFETY: GIL held, so no other access to the ring; its entries are live (invariant).
    unsafe {
        let ring = &mut *RING.0.get();
        let i = ring.next;
        if !ring.slots[i].is_null() {
            (*ring.slots[i]).readahead[0].set(data);
        }
        (*g).readahead[1].set(ring.data[i]);
        ring.slots[i] = g;
        ring.data[i] = data;
        ring.next = (i + 1) % DISTANCE;
    }
}

/// Takes `g` out of the ring before its memory goes.
///
/// # Safety
/// GIL held.
pub unsafe fn forget(g: *const Green) {
    // SAFETY: GIL held, so no other access to the ring.
    unsafe {
        let ring = &mut *RING.0.get();
        for slot in ring.slots.iter_mut() {
            if *slot == g {
                *slot = ptr::null();
            }
        }
    }
}
