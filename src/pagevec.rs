//! A growable array in an anonymous mapping of its own, whose unused pages go back to the OS.
//!
//! The stack pool's bookkeeping grows with the number of live greenlets (a few bytes per slab
//! of 64 stacks) and shrinks when they go. Kept on the malloc heap, a million greenlets'
//! worth leaves holes there that the heap keeps after they are gone; here the whole capacity
//! is reserved up front (`MAP_NORESERVE`: address space only), pages are touched as the array
//! grows, and given back (`MADV_DONTNEED`) once it has shrunk well below what it touched.
//!
//! Only for `Copy` element types (nothing to drop); no Python, no locking (the owner locks).

use std::ops::{Deref, DerefMut};
use std::ptr;

use crate::stack::page_size;

/// Pages worth of shrinkage before they are given back.
const SLACK_PAGES: usize = 16;

pub struct PageVec<T: Copy> {
    ptr: *mut T,
    len: usize,
    /// Elements the mapping can hold.
    capacity: usize,
    /// Bytes from the start that may be resident (touched since last given back).
    touched: usize,
}

// SAFETY: the mapping is owned by the PageVec alone, like a Vec's buffer; T is Copy + Send.
unsafe impl<T: Copy + Send> Send for PageVec<T> {}

impl<T: Copy> PageVec<T> {
    /// An empty array with room for `capacity` elements (reserved, not committed); None if the
    /// address space cannot be had.
    pub fn with_capacity(capacity: usize) -> Option<Self> {
        let bytes = Self::bytes_for(capacity.max(1));
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(PageVec {
            ptr: ptr as *mut T,
            len: 0,
            capacity: bytes / std::mem::size_of::<T>().max(1),
            touched: 0,
        })
    }

    fn bytes_for(elements: usize) -> usize {
        (elements * std::mem::size_of::<T>()).next_multiple_of(page_size())
    }

    /// Appends `value`; false (and nothing changes) when the array is full.
    pub fn push(&mut self, value: T) -> bool {
        if self.len == self.capacity {
            return false;
        }
        // SAFETY: len < capacity, so the slot lies inside the mapping.
        unsafe { self.ptr.add(self.len).write(value) };
        self.len += 1;
        self.touched = self.touched.max(self.len * std::mem::size_of::<T>());
        true
    }

    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: the element at the old last index was written by push.
        let value = unsafe { self.ptr.add(self.len).read() };
        self.give_back_unused();
        Some(value)
    }

    /// Keeps only the elements for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let value = self[i];
            if keep(&value) {
                self[kept] = value;
                kept += 1;
            }
        }
        self.len = kept;
        self.give_back_unused();
    }

    /// Returns the pages beyond the elements in use, once they are worth a system call.
    fn give_back_unused(&mut self) {
        let page = page_size();
        let used = (self.len * std::mem::size_of::<T>()).next_multiple_of(page);
        if self.touched <= used + SLACK_PAGES * page {
            return;
        }
        // SAFETY: the range lies inside our own mapping and holds no element in use.
        unsafe {
            libc::madvise(
                (self.ptr as *mut u8).add(used) as *mut libc::c_void,
                self.touched.next_multiple_of(page) - used,
                libc::MADV_DONTNEED,
            )
        };
        self.touched = used;
    }
}

impl<T: Copy> Deref for PageVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the first len elements were written by push and lie inside the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Copy> DerefMut for PageVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for deref; we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for PageVec<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, which nothing refers to any more.
        unsafe {
            libc::munmap(
                self.ptr as *mut libc::c_void,
                self.capacity * std::mem::size_of::<T>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_shrinks_and_keeps_order() {
        let mut v = PageVec::<u64>::with_capacity(1 << 20).unwrap();
        assert!(v.is_empty());
        for i in 0..100_000u64 {
            assert!(v.push(i));
        }
        assert_eq!(v.len(), 100_000);
        assert_eq!(v[99_999], 99_999);
        v.retain(|&x| x % 1000 == 0);
        assert_eq!(v.len(), 100);
        assert_eq!(v.last(), Some(&99_000));
        assert_eq!(v.pop(), Some(99_000));
        assert_eq!(
            v.iter().copied().take(3).collect::<Vec<_>>(),
            [0, 1000, 2000]
        );
        // Given back, the pages read as zero again: push over them works as before.
        for i in 0..50_000u64 {
            assert!(v.push(i));
        }
        assert_eq!(v[99 + 49_999], 49_999);
    }

    #[test]
    fn a_full_array_refuses_more() {
        let mut v = PageVec::<u64>::with_capacity(1).unwrap();
        let room = v.capacity;
        for i in 0..room as u64 {
            assert!(v.push(i));
        }
        assert!(!v.push(0));
        assert_eq!(v.len(), room);
    }
}
