//! Rust's view of the per-greenlet interpreter state kept by `pystate.c`.
//!
//! The C file is compiled against the headers of the interpreter being built for; Rust only
//! holds its state as an opaque, suitably aligned blob ([`PyState`]) and calls the functions
//! below. The protocol (save before leaving a stack, restore right after coming back, no
//! Python code in between) is described at the top of `pystate.c`.

use std::cell::UnsafeCell;
use std::ffi::c_void;

use pyo3::ffi;

/// Bytes reserved for the C struct; `pystate.c` checks that it fits.
const CAPACITY: usize = 320;

/// One greenlet's saved interpreter state (opaque; laid out by `pystate.c`).
#[repr(C, align(16))]
pub struct PyState(UnsafeCell<[u8; CAPACITY]>);

impl Default for PyState {
    fn default() -> Self {
        PyState(UnsafeCell::new([0; CAPACITY]))
    }
}

impl PyState {
    /// Raw pointer for the C functions. The blob is only touched with the GIL held, by the
    /// greenlet's own thread (or by the GC, which also holds the GIL).
    pub fn as_ptr(&self) -> *mut PyState {
        self as *const PyState as *mut PyState
    }
}

type Visit = unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void) -> i32;

extern "C" {
    /// `sizeof` the C struct.
    pub fn corolet_pystate_size() -> usize;
    /// Moves the running greenlet's state out of the thread state into `s`.
    pub fn corolet_pystate_save(s: *mut PyState);
    /// Moves `s` back into the thread state.
    pub fn corolet_pystate_restore(s: *mut PyState);
    /// Runs `body(arg)` as the first code of a new greenlet (see `pystate.c`).
    pub fn corolet_pystate_run_fresh(
        body: unsafe extern "C" fn(*mut c_void),
        arg: *mut c_void,
        state: *mut PyState,
        root_chunk: *mut c_void,
        root_chunk_size: usize,
        c_levels: i32,
        stack_low: usize,
        stack_high: usize,
    );
    /// Lets go of a suspended greenlet that will never run again; 1 if the memory its frames
    /// live in may be reused (see `pystate.c`).
    pub fn corolet_pystate_abandon(s: *mut PyState, root_chunk: *mut c_void) -> i32;
    /// Drops the references held by `s`.
    pub fn corolet_pystate_clear(s: *mut PyState);
    /// GC traversal of the references held by `s`.
    pub fn corolet_pystate_traverse(s: *mut PyState, visit: Visit, arg: *mut c_void) -> i32;
    /// GC traversal of what the suspended frames of `s` hold (see `pystate.c`).
    pub fn corolet_pystate_traverse_frames(
        s: *mut PyState,
        visit: Visit,
        arg: *mut c_void,
        ahead: *const c_void,
        behind: *const c_void,
    ) -> i32;
    /// Whether the garbage collector is collecting right now (`gcstate.c`).
    pub fn corolet_gc_collecting() -> i32;
    /// Borrowed saved context (or null).
    pub fn corolet_pystate_context(s: *const PyState) -> *mut ffi::PyObject;
    /// Replaces the saved context, stealing a reference.
    pub fn corolet_pystate_set_context(s: *mut PyState, context: *mut ffi::PyObject);
    /// The frame a suspended greenlet resumes in: a new reference, or null (with an
    /// exception set only on failure).
    pub fn corolet_pystate_frame(s: *mut PyState) -> *mut ffi::PyObject;
    /// Borrowed context of the running greenlet (or null).
    pub fn corolet_tstate_context() -> *mut ffi::PyObject;
    /// Replaces the running greenlet's context, stealing a reference.
    pub fn corolet_tstate_set_context(context: *mut ffi::PyObject);
    /// The thread's trashcan nesting (< 3.13).
    pub fn corolet_trash_delete_nesting() -> i32;
    /// `PY_VERSION_HEX` of the headers the C file was built with.
    pub fn corolet_compiled_version() -> std::ffi::c_ulong;
    /// `PyObject_Call(run, args, kwargs)` from a frame unwinders see as the outermost of the
    /// stack (see `outermost.c`): a greenlet's `run` is called through it.
    pub fn corolet_call_run(
        run: *mut ffi::PyObject,
        args: *mut ffi::PyObject,
        kwargs: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    /// `PyObject_CallOneArg(run, arg)`, likewise.
    pub fn corolet_call_run_one(
        run: *mut ffi::PyObject,
        arg: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    pub fn corolet_compiled_debug() -> i32;
    /// Pause CPython's tracing and profiling around a greenlet trace call.
    pub fn corolet_enter_tracing();
    /// Undo `corolet_enter_tracing`.
    pub fn corolet_leave_tracing();
    /// `Py_SET_REFCNT`.
    pub fn corolet_set_refcnt(obj: *mut ffi::PyObject, refcnt: ffi::Py_ssize_t);
    /// The C library's `clock()`.
    pub fn corolet_clock() -> std::ffi::c_long;
    /// The C library's `CLOCKS_PER_SEC`.
    pub fn corolet_clocks_per_sec() -> std::ffi::c_long;
    /// Whether the interpreter is finalizing.
    pub fn corolet_is_finalizing() -> i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_large_enough_for_the_c_struct() {
        // SAFETY: a pure function of the compiled headers.
        let size = unsafe { corolet_pystate_size() };
        assert!(size <= CAPACITY, "{size} > {CAPACITY}");
    }
}
