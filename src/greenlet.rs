//! The `greenlet.greenlet` type: object layout, construction, attributes, destruction.
//!
//! Layout: greenlet 3.x's, so C extensions compiled against greenlet's header (gevent's
//! Cython classes subclass the type at the C level) keep working: `PyObject_HEAD`, the
//! weak-reference list at offset 16, `__dict__` at 24, a pointer to the Rust state
//! ([`Green`]) at 32; 40 bytes in all on 64-bit. The type is built with raw FFI from a spec,
//! not with `#[pyclass]`, whose layout differs.
//!
//! Life of a greenlet: *unstarted* (has a `run`, no stack), *active* (started: running or
//! suspended on its own fiber stack), *dead* (its `run` returned or raised; its stack is back
//! in the pool). Main greenlets are active from birth and run on their thread's stack.
//! Switching lives in `switch.rs`; this file only keeps the state consistent.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::ffi;

use crate::fiber::Fiber;
use crate::messages as msg;
use crate::pyerr::{guard, new_ref_or_none, none, set_error, set_error_str, NULL};
use crate::pystate::{self, PyState};
use crate::readahead;
use crate::switch::{self, Payload};
use crate::thread::{ThreadShared, ThreadState, MAIN_GREENLETS};

/// greenlet 3.x's object layout (`PyGreenlet` in greenlet.h).
#[repr(C)]
pub struct PyGreenlet {
    ob_base: ffi::PyObject,
    weakreflist: *mut ffi::PyObject,
    dict: *mut ffi::PyObject,
    pimpl: *mut Green,
}

const _: () = assert!(std::mem::size_of::<PyGreenlet>() == 40);
// Small enough for Python's small-object allocator (see `alloc_green`).
const _: () = assert!(std::mem::size_of::<Green>() <= 512);

/// Where a greenlet is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Created, never switched to.
    Unstarted,
    /// Started and not finished: running or suspended.
    Active,
    /// Its `run` finished (or it was killed).
    Dead,
}

/// The Rust state of one greenlet. Touched only with the GIL held.
pub struct Green {
    pub life: Cell<Life>,
    /// True while it is the running greenlet of its thread.
    pub running: Cell<bool>,
    /// Main greenlets run on their thread's stack and never finish.
    pub is_main: bool,
    /// Strong; null for main greenlets.
    pub parent: Cell<*mut ffi::PyObject>,
    /// Strong or null: the callable to run (before the start), the looked-up one (while
    /// running its first call).
    pub run: Cell<*mut ffi::PyObject>,
    /// Strong or null: `run` as looked up by the switch that starts it; it replaces `run`
    /// once the greenlet is on its own stack.
    pub starting_run: Cell<*mut ffi::PyObject>,
    /// Strong: the main greenlet of the thread it started in; null until started.
    pub main: Cell<*mut ffi::PyObject>,
    /// Main greenlets only: their thread.
    pub thread: Option<Arc<ThreadShared>>,
    /// The stack it runs on, once started (non-main). Inline: the state never moves.
    pub fiber: Fiber<Payload>,
    /// Its saved interpreter state while not running.
    pub state: PyState,
    /// Approximate stack pointer when it last switched away.
    pub saved_sp: Cell<usize>,
    /// Test hooks of `UnswitchableGreenlet`.
    pub force_switch_error: Cell<bool>,
    pub force_slp_switch_error: Cell<bool>,
    /// The data stacks of greenlets started after and before this one, for the collector
    /// to fetch ahead (see `readahead`); never dereferenced.
    pub readahead: [Cell<*const u8>; 2],
}

impl Green {
    fn new(is_main: bool, parent: *mut ffi::PyObject, thread: Option<Arc<ThreadShared>>) -> Self {
        Green {
            life: Cell::new(if is_main {
                Life::Active
            } else {
                Life::Unstarted
            }),
            running: Cell::new(false),
            is_main,
            parent: Cell::new(parent),
            run: Cell::new(ptr::null_mut()),
            starting_run: Cell::new(ptr::null_mut()),
            main: Cell::new(ptr::null_mut()),
            thread,
            fiber: Fiber::empty(),
            state: PyState::default(),
            saved_sp: Cell::new(0),
            force_switch_error: Cell::new(false),
            force_slp_switch_error: Cell::new(false),
            readahead: [Cell::new(ptr::null()), Cell::new(ptr::null())],
        }
    }

    /// What a hop to this greenlet names: its fiber, or null for a main greenlet (which runs
    /// on its thread's own stack).
    pub fn hop_target(&self) -> *const Fiber<Payload> {
        if self.is_main {
            ptr::null()
        } else {
            &self.fiber
        }
    }

    /// The main greenlet of the thread it belongs to, by its lineage (borrowed, may be
    /// null when the chain is broken).
    pub fn lineage_main(&self, me: *mut ffi::PyObject) -> *mut ffi::PyObject {
        let mut g = me;
        while !g.is_null() {
            // SAFETY: every greenlet on a parent chain is kept alive by its child.
            let gr = unsafe { green(g) };
            if gr.is_main {
                return g;
            }
            let main = gr.main.get();
            if !main.is_null() {
                return main;
            }
            g = gr.parent.get();
        }
        ptr::null_mut()
    }

    /// Whether its thread has exited (started greenlets and main greenlets only).
    pub fn thread_exited(&self) -> bool {
        let main = if self.is_main {
            return self.thread.as_ref().is_some_and(|t| !t.alive());
        } else {
            self.main.get()
        };
        if main.is_null() {
            return false;
        }
        // SAFETY: we hold a reference to our main greenlet.
        unsafe { green(main).thread.as_ref().is_some_and(|t| !t.alive()) }
    }

    /// Lets go of a suspended greenlet that will never run again (its thread is gone, or the
    /// interpreter is finalizing), without running its code. Its stack is reused unless a
    /// frame object of its frames is still referenced elsewhere.
    ///
    /// # Safety
    /// GIL held; the greenlet is not running and never will be.
    pub unsafe fn abandon(&self) {
        // SAFETY: GIL held; the fiber is not running.
        unsafe {
            let fiber = &self.fiber;
            if !fiber.has_stack() || !fiber.started() {
                return;
            }
            let reuse = pystate::corolet_pystate_abandon(
                self.state.as_ptr(),
                fiber.data_stack().0 as *mut c_void,
            ) != 0;
            fiber.abandon(reuse);
            self.life.set(Life::Dead);
        }
    }

    /// Suspended (started, not finished, not running) in a thread that is still alive; not
    /// a main greenlet.
    pub fn suspended_in_live_thread(&self) -> bool {
        !self.is_main
            && self.life.get() == Life::Active
            && !self.running.get()
            && !self.thread_exited()
    }

    /// Dead, or active in a thread that has exited.
    pub fn is_dead(&self) -> bool {
        self.life.get() == Life::Dead || (self.life.get() == Life::Active && self.thread_exited())
    }
}

impl Drop for Green {
    fn drop(&mut self) {
        // SAFETY: runs in tp_dealloc with the GIL held; the pointers are owned references.
        unsafe {
            // Only reached with a suspended fiber for greenlets whose thread is gone or that
            // could not be killed: nothing on that stack may run again.
            self.abandon();
            pystate::corolet_pystate_clear(self.state.as_ptr());
            for p in [&self.parent, &self.run, &self.starting_run, &self.main] {
                let obj = p.replace(ptr::null_mut());
                ffi::Py_XDECREF(obj);
            }
        }
    }
}

/// Allocates the Rust state with Python's small-object allocator: fast, and its arenas go
/// back to the OS once a crowd of greenlets is gone. Null (with `MemoryError`) on failure.
///
/// # Safety
/// GIL held.
unsafe fn alloc_green(green: Green) -> *mut Green {
    // SAFETY: GIL held; the block is sized and (16-byte, as pymalloc guarantees) aligned for
    // a Green, and initialised before use.
    unsafe {
        debug_assert!(std::mem::align_of::<Green>() <= 16);
        let p = ffi::PyObject_Malloc(std::mem::size_of::<Green>()) as *mut Green;
        if p.is_null() {
            ffi::PyErr_NoMemory();
            return p;
        }
        p.write(green);
        p
    }
}

/// Drops and frees what `alloc_green` made.
///
/// # Safety
/// GIL held; `p` came from `alloc_green` and is not used again.
unsafe fn free_green(p: *mut Green) {
    // SAFETY: per contract; a panic in a drop must not unwind into CPython.
    unsafe {
        readahead::forget(p);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ptr::drop_in_place(p)));
        ffi::PyObject_Free(p as *mut c_void);
    }
}

/// Module-wide objects, set once at import.
pub struct Globals {
    pub ty: *mut ffi::PyTypeObject,
    pub exit: *mut ffi::PyObject,
    pub error: *mut ffi::PyObject,
    pub str_run: *mut ffi::PyObject,
    pub str_switch: *mut ffi::PyObject,
    pub str_throw: *mut ffi::PyObject,
}
// SAFETY: immortal-for-our-purposes objects (we hold references forever), used with the GIL.
unsafe impl Send for Globals {}
// SAFETY: as above.
unsafe impl Sync for Globals {}

static GLOBALS: OnceLock<Globals> = OnceLock::new();

/// The module-wide objects (the module must have been imported).
#[inline]
pub fn globals() -> &'static Globals {
    GLOBALS.get().expect("corolet._corolet is initialised")
}

/// The Rust state of a greenlet object.
///
/// # Safety
/// `obj` is a live instance of the greenlet type (or a subtype), GIL held.
#[inline]
pub unsafe fn green<'a>(obj: *mut ffi::PyObject) -> &'a Green {
    // SAFETY: per contract the object has our layout and tp_new set pimpl.
    unsafe { &*(*(obj as *mut PyGreenlet)).pimpl }
}

/// Whether `obj` is a greenlet (any subtype).
///
/// # Safety
/// GIL held; `obj` live.
#[inline]
pub unsafe fn is_greenlet(obj: *mut ffi::PyObject) -> bool {
    let ty = globals().ty;
    // SAFETY: live object.
    unsafe { ffi::Py_TYPE(obj) == ty || ffi::PyType_IsSubtype(ffi::Py_TYPE(obj), ty) != 0 }
}

/// Sets greenlet's TypeError for a non-greenlet.
unsafe fn not_a_greenlet(obj: *mut ffi::PyObject) {
    // SAFETY: live object; GIL held.
    unsafe {
        let name = CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name).to_string_lossy();
        set_error_str(ffi::PyExc_TypeError, &msg::not_a_greenlet(&name));
    }
}

/// Creates the main greenlet of the calling thread (a new reference).
///
/// # Safety
/// GIL held; called once per thread by `ThreadState`.
pub unsafe fn new_main(thread: Arc<ThreadShared>) -> *mut ffi::PyObject {
    // SAFETY: GIL held by contract.
    unsafe {
        alloc_greenlet(
            globals().ty,
            Green::new(true, ptr::null_mut(), Some(thread)),
        )
    }
}

/// Allocates an instance of `ty` (our type or a subtype) holding `green`. New reference,
/// or null with an exception (then `green`'s references are dropped).
///
/// # Safety
/// GIL held.
unsafe fn alloc_greenlet(ty: *mut ffi::PyTypeObject, green: Green) -> *mut ffi::PyObject {
    // SAFETY: GIL held; an instance of our own layout.
    unsafe {
        let obj = ffi::PyType_GenericAlloc(ty, 0);
        if obj.is_null() {
            drop(green);
            return NULL;
        }
        let g = alloc_green(green);
        if g.is_null() {
            ffi::Py_DECREF(obj);
            return NULL;
        }
        (*(obj as *mut PyGreenlet)).pimpl = g;
        obj
    }
}

// ---------------------------------------------------------------------------------------
// Construction.

unsafe extern "C" fn tp_new(
    ty: *mut ffi::PyTypeObject,
    _args: *mut ffi::PyObject,
    _kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called by CPython with the GIL; `ty` is our type or a subtype.
        unsafe {
            let ts = ThreadState::get();
            if ts.is_null() {
                return NULL;
            }
            (*ts).drain_deleteme();
            if (*ty).tp_flags & ffi::Py_TPFLAGS_IS_ABSTRACT != 0 {
                // Let object.__new__ raise its "Can't instantiate abstract class" error.
                let empty = ffi::PyTuple_New(0);
                if empty.is_null() {
                    return NULL;
                }
                let base_new = (*ptr::addr_of_mut!(ffi::PyBaseObject_Type)).tp_new;
                let r = base_new.map_or(NULL, |f| f(ty, empty, ptr::null_mut()));
                ffi::Py_DECREF(empty);
                if r.is_null() {
                    return NULL;
                }
                ffi::Py_DECREF(r);
            }
            let parent = ffi::Py_NewRef((*ts).current());
            alloc_greenlet(ty, Green::new(false, parent, None))
        }
    })
}

unsafe extern "C" fn tp_init(
    obj: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> c_int {
    guard(-1, || {
        // SAFETY: called by CPython with the GIL on an instance of our type.
        unsafe {
            let mut run: *mut ffi::PyObject = ptr::null_mut();
            let mut parent: *mut ffi::PyObject = ptr::null_mut();
            let nargs = ffi::PyTuple_GET_SIZE(args);
            if (kwds.is_null() || ffi::PyDict_Size(kwds) == 0) && nargs <= 2 {
                // The common `greenlet(run[, parent])`, without the argument parser.
                if nargs >= 1 {
                    run = ffi::PyTuple_GET_ITEM(args, 0);
                }
                if nargs == 2 {
                    parent = ffi::PyTuple_GET_ITEM(args, 1);
                }
                return init_run_parent(obj, run, parent);
            }
            let mut kwlist = [
                c"run".as_ptr() as *mut std::ffi::c_char,
                c"parent".as_ptr() as *mut std::ffi::c_char,
                ptr::null_mut(),
            ];
            if ffi::PyArg_ParseTupleAndKeywords(
                args,
                kwds,
                c"|OO:green".as_ptr(),
                kwlist.as_mut_ptr() as _,
                &mut run,
                &mut parent,
            ) == 0
            {
                return -1;
            }
            init_run_parent(obj, run, parent)
        }
    })
}

/// `greenlet(run, parent)` for C callers: either may be null (not given). New reference.
///
/// # Safety
/// GIL held.
pub unsafe fn new_with(run: *mut ffi::PyObject, parent: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held.
    unsafe { new_of_type(globals().ty, run, parent) }
}

/// `ty(run, parent)` for `ty` our type or a subtype that adds no state of its own (as
/// `PortalGreenlet`), without a type call; either may be null. New reference.
///
/// # Safety
/// GIL held; `ty` is the greenlet type or such a subtype.
pub unsafe fn new_of_type(
    ty: *mut ffi::PyTypeObject,
    run: *mut ffi::PyObject,
    parent: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held; creating an instance of our own layout.
    unsafe {
        let g = tp_new(ty, ptr::null_mut(), ptr::null_mut());
        if g.is_null() {
            return NULL;
        }
        if init_run_parent(g, run, parent) < 0 {
            ffi::Py_DECREF(g);
            return NULL;
        }
        g
    }
}

/// `__init__`'s work once its arguments are known (either may be null: not given).
unsafe fn init_run_parent(
    obj: *mut ffi::PyObject,
    run: *mut ffi::PyObject,
    parent: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: GIL held; `obj` is a greenlet; borrowed arguments.
    unsafe {
        if !run.is_null() && set_run(obj, run) < 0 {
            return -1;
        }
        if !parent.is_null() && parent != ffi::Py_None() {
            return set_parent(obj, parent);
        }
        0
    }
}

// ---------------------------------------------------------------------------------------
// Destruction and garbage collection.

unsafe extern "C" fn tp_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the GIL, refcount 0, on an instance of our type.
    unsafe {
        ffi::PyObject_GC_UnTrack(obj as *mut c_void);
        let pimpl = (*(obj as *mut PyGreenlet)).pimpl;
        if !pimpl.is_null() {
            let g = &*pimpl;
            if g.life.get() == Life::Active && !g.is_main && !kill_on_dealloc(obj) {
                return;
            }
        }
        let this = obj as *mut PyGreenlet;
        if !(*this).weakreflist.is_null() {
            ffi::PyObject_ClearWeakRefs(obj);
        }
        let dict = std::mem::replace(&mut (*this).dict, ptr::null_mut());
        ffi::Py_XDECREF(dict);
        if !pimpl.is_null() {
            (*this).pimpl = ptr::null_mut();
            if (*pimpl).is_main {
                MAIN_GREENLETS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            free_green(pimpl);
        }
        // A static type's instances hold no reference to it; a heap subtype's reference is
        // dropped by whoever deallocates it (`subtype_dealloc`, or a C heap type's own
        // `tp_dealloc`), after this returns.
        if let Some(free) = (*ffi::Py_TYPE(obj)).tp_free {
            free(obj as *mut c_void);
        }
    }
}

/// A suspended greenlet lost its last reference: throw `GreenletExit` into it (in its own
/// thread), so its `finally` blocks run. Returns false if the object must not be freed (it
/// was resurrected, queued for its own thread, or refused to die).
unsafe fn kill_on_dealloc(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: GIL held; `obj` has refcount 0 and is ours.
    unsafe {
        let g = green(obj);
        let main = g.main.get();
        let thread = if main.is_null() {
            None
        } else {
            green(main).thread.clone()
        };
        let alive = thread.as_ref().is_some_and(|t| t.alive());
        if pystate::corolet_is_finalizing() != 0 || !alive {
            // Nothing on that stack may run any more: let it go, leaking what its frames held.
            g.abandon();
            g.life.set(Life::Dead);
            return true;
        }
        let ts = ThreadState::existing();
        let thread = thread.expect("alive implies a thread");
        if ts.is_null() || !Arc::ptr_eq(&(*ts).shared, &thread) {
            // Its own thread will drop it next time it runs greenlet code.
            resurrect(obj, 1);
            thread.queue_for_deletion(obj, false);
            return false;
        }
        pystate::corolet_set_refcnt(obj, 1);
        let saved = crate::pyerr::ErrState::take_pending();
        kill_now(obj, &*ts);
        let refcnt = ffi::Py_REFCNT(obj);
        if refcnt == 1 && g.life.get() == Life::Active {
            // Caught GreenletExit and switched away without dying: complain and leak it.
            let stderr = ffi::PySys_GetObject(c"stderr".as_ptr());
            ffi::Py_INCREF(obj);
            if !stderr.is_null() {
                ffi::Py_INCREF(stderr);
                ffi::PyFile_WriteString(c"GreenletExit did not kill ".as_ptr(), stderr);
                ffi::PyFile_WriteObject(obj, stderr, 0);
                ffi::PyFile_WriteString(c"\n".as_ptr(), stderr);
                ffi::Py_DECREF(stderr);
            }
        }
        if let Some(saved) = saved {
            saved.restore();
        }
        let refcnt = ffi::Py_REFCNT(obj) - 1;
        pystate::corolet_set_refcnt(obj, refcnt);
        if refcnt != 0 {
            resurrect(obj, refcnt);
            return false;
        }
        true
    }
}

/// Throws `GreenletExit` into a suspended greenlet of this thread, its parent being, for the
/// time of the kill, the greenlet doing it, so that the outcome comes back here. An
/// exception other than `GreenletExit` coming out is reported as unraisable.
///
/// # Safety
/// GIL held; `obj` is a live greenlet of this thread (`ts`), with no error pending.
pub unsafe fn kill_now(obj: *mut ffi::PyObject, ts: &ThreadState) {
    // SAFETY: GIL held; the temporary parent is a live greenlet of this thread.
    unsafe {
        let g = green(obj);
        let old_parent = g.parent.replace(ffi::Py_NewRef(ts.current()));
        let result = switch::kill(obj);
        if result.is_null() {
            ffi::PyErr_WriteUnraisable(obj);
        } else {
            ffi::Py_DECREF(result);
        }
        let temp_parent = g.parent.replace(old_parent);
        ffi::Py_DECREF(temp_parent);
    }
}

/// Brings a deallocating object back to life with `refcnt` references.
///
/// Our type is static (as greenlet's), so its own instances and those of static subtypes
/// hold no type reference. An instance of a heap subtype does, and whoever called our
/// `tp_dealloc` (`subtype_dealloc`, a C heap type's `tp_dealloc`) drops it once we return:
/// the living object needs a new one.
unsafe fn resurrect(obj: *mut ffi::PyObject, refcnt: ffi::Py_ssize_t) {
    // SAFETY: GIL held; `obj` is in tp_dealloc and untracked; its type is alive.
    unsafe {
        pystate::corolet_set_refcnt(obj, refcnt);
        let ty = ffi::Py_TYPE(obj);
        if (*ty).tp_flags & ffi::Py_TPFLAGS_HEAPTYPE != 0 {
            ffi::Py_INCREF(ty as *mut ffi::PyObject);
        }
        ffi::PyObject_GC_Track(obj as *mut c_void);
    }
}

unsafe extern "C" fn tp_traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: called by the GC with the GIL on an instance of our type.
    unsafe {
        let this = obj as *mut PyGreenlet;
        macro_rules! visit {
            ($e:expr) => {
                let o: *mut ffi::PyObject = $e;
                if !o.is_null() {
                    let r = visit(o, arg);
                    if r != 0 {
                        return r;
                    }
                }
            };
        }
        visit!((*this).dict);
        let pimpl = (*this).pimpl;
        if pimpl.is_null() {
            return 0;
        }
        let g = &*pimpl;
        visit!(g.parent.get());
        visit!(g.run.get());
        visit!(g.starting_run.get());
        visit!(g.main.get());
        let r = pystate::corolet_pystate_traverse(g.state.as_ptr(), visit, arg);
        if r != 0 || !g.suspended_in_live_thread() {
            return r;
        }
        pystate::corolet_pystate_traverse_frames(
            g.state.as_ptr(),
            visit,
            arg,
            g.readahead[0].get() as *const c_void,
            g.readahead[1].get() as *const c_void,
        )
    }
}

/// The collector found a greenlet unreachable. A suspended one can never be switched to
/// again: it must be killed with `GreenletExit`, like one whose last reference goes. That
/// means running its code, which must not happen inside a collection, so it is kept alive
/// (resurrected) and queued; its own thread drops it the next time it runs greenlet code,
/// and the usual kill follows. Outside a collection (a subclass being deallocated), nothing
/// happens here: `tp_dealloc` kills it.
unsafe extern "C" fn tp_finalize(obj: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the GIL on an instance of our type.
    unsafe {
        let pimpl = (*(obj as *mut PyGreenlet)).pimpl;
        if pimpl.is_null() || !(*pimpl).suspended_in_live_thread() {
            return;
        }
        if pystate::corolet_gc_collecting() == 0 {
            return;
        }
        let main = (*pimpl).main.get();
        if let Some(thread) = green(main).thread.as_ref() {
            ffi::Py_INCREF(obj);
            thread.queue_for_deletion(obj, true);
        }
    }
}

unsafe extern "C" fn tp_is_gc(obj: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by the GC with the GIL.
    unsafe {
        let pimpl = (*(obj as *mut PyGreenlet)).pimpl;
        if pimpl.is_null() {
            return 1;
        }
        let g = &*pimpl;
        // A greenlet running in some thread has its frames on that thread's stack, which
        // the collector treats as outside references; every other greenlet takes part.
        (!g.running.get() || g.is_main) as c_int
    }
}

unsafe extern "C" fn tp_clear(obj: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by the GC with the GIL.
    unsafe {
        let this = obj as *mut PyGreenlet;
        let dict = std::mem::replace(&mut (*this).dict, ptr::null_mut());
        ffi::Py_XDECREF(dict);
        let pimpl = (*this).pimpl;
        if pimpl.is_null() {
            return 0;
        }
        let g = &*pimpl;
        if g.life.get() == Life::Active && !g.is_main && !g.thread_exited() {
            return 0;
        }
        pystate::corolet_pystate_clear(g.state.as_ptr());
        if !g.is_main {
            for p in [&g.run, &g.starting_run, &g.parent, &g.main] {
                let o = p.replace(ptr::null_mut());
                ffi::Py_XDECREF(o);
            }
        }
        0
    }
}

// ---------------------------------------------------------------------------------------
// Attributes.

unsafe fn set_run(obj: *mut ffi::PyObject, run: *mut ffi::PyObject) -> c_int {
    // SAFETY: GIL held; `obj` is a greenlet.
    unsafe {
        let g = green(obj);
        if g.is_main {
            set_error(ffi::PyExc_AttributeError, msg::MAIN_RUN);
            return -1;
        }
        if g.life.get() != Life::Unstarted {
            set_error(ffi::PyExc_AttributeError, msg::RUN_AFTER_START);
            return -1;
        }
        let old = g.run.replace(if run.is_null() {
            ptr::null_mut()
        } else {
            ffi::Py_NewRef(run)
        });
        ffi::Py_XDECREF(old);
        0
    }
}

/// `g.parent = parent` (null: delete), with greenlet's checks and errors.
///
/// # Safety
/// GIL held; `obj` is a greenlet.
pub unsafe fn set_parent(obj: *mut ffi::PyObject, parent: *mut ffi::PyObject) -> c_int {
    // SAFETY: GIL held; `obj` is a greenlet.
    unsafe {
        let g = green(obj);
        if parent.is_null() {
            set_error(ffi::PyExc_AttributeError, msg::DELETE_ATTRIBUTE);
            return -1;
        }
        if g.is_main {
            set_error(ffi::PyExc_AttributeError, msg::MAIN_PARENT);
            return -1;
        }
        if !is_greenlet(parent) {
            not_a_greenlet(parent);
            return -1;
        }
        let mut new_main: *mut ffi::PyObject = ptr::null_mut();
        let mut p = parent;
        while !p.is_null() {
            if p == obj {
                set_error(ffi::PyExc_ValueError, msg::CYCLIC_PARENT);
                return -1;
            }
            let pg = green(p);
            new_main = if pg.is_main { p } else { pg.main.get() };
            p = pg.parent.get();
        }
        if new_main.is_null() {
            set_error(ffi::PyExc_ValueError, msg::PARENT_COLLECTED);
            return -1;
        }
        // A greenlet that was suspended when its thread exited belongs to no thread any more:
        // greenlet, once it has cleaned up after that thread, lets it take any parent (it can
        // still never be switched to).
        let bound = match g.life.get() {
            Life::Unstarted => false,
            Life::Active => !g.thread_exited(),
            Life::Dead => true,
        };
        if bound && g.main.get() != new_main {
            set_error(ffi::PyExc_ValueError, msg::PARENT_OTHER_THREAD);
            return -1;
        }
        let old = g.parent.replace(ffi::Py_NewRef(parent));
        ffi::Py_XDECREF(old);
        0
    }
}

/// A heap subtype known not to override `run` (immutable, defines no `run`: `PortalGreenlet`),
/// whose `run` a starting switch reads without an attribute lookup; null if none.
static PLAIN_SUBTYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

/// Registers `ty` as such a subtype (see [`PLAIN_SUBTYPE`]).
pub fn register_plain_subtype(ty: *mut ffi::PyTypeObject) {
    PLAIN_SUBTYPE.store(ty, Ordering::Relaxed);
}

/// `obj.run` as a starting switch looks it up (new reference, or null with the error set):
/// read directly when `obj`'s type cannot override it.
///
/// # Safety
/// GIL held; `obj` a live greenlet.
pub unsafe fn lookup_run(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; live greenlet.
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        if ty == globals().ty || ty == PLAIN_SUBTYPE.load(Ordering::Relaxed) {
            get_run(obj, ptr::null_mut())
        } else {
            ffi::PyObject_GetAttr(obj, globals().str_run)
        }
    }
}

unsafe extern "C" fn get_run(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe {
        let g = green(obj);
        if g.is_main {
            set_error(ffi::PyExc_AttributeError, msg::MAIN_RUN);
            return NULL;
        }
        let run = g.run.get();
        if g.life.get() != Life::Unstarted || run.is_null() {
            set_error(ffi::PyExc_AttributeError, msg::RUN);
            return NULL;
        }
        ffi::Py_NewRef(run)
    }
}

unsafe extern "C" fn set_run_attr(
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    guard(-1, || {
        // SAFETY: setter called with the GIL on a greenlet.
        unsafe { set_run(obj, value) }
    })
}

unsafe extern "C" fn get_parent(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe { new_ref_or_none(green(obj).parent.get()) }
}

unsafe extern "C" fn set_parent_attr(
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    guard(-1, || {
        // SAFETY: setter called with the GIL on a greenlet.
        unsafe { set_parent(obj, value) }
    })
}

unsafe extern "C" fn get_dead(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe { ffi::PyBool_FromLong(green(obj).is_dead() as _) }
}

unsafe extern "C" fn nb_bool(obj: *mut ffi::PyObject) -> c_int {
    // SAFETY: called with the GIL on a greenlet.
    unsafe {
        let g = green(obj);
        (g.life.get() == Life::Active && !g.thread_exited()) as c_int
    }
}

unsafe extern "C" fn get_frame(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe {
        let g = green(obj);
        // A greenlet left suspended by a thread that exited keeps its frame, as greenlet's
        // until it has cleaned up after that thread (upstream's
        // test_throw_to_dead_thread_doesnt_crash reads it); greenlet gives None after.
        if g.running.get() || g.life.get() != Life::Active {
            return none();
        }
        let frame = pystate::corolet_pystate_frame(g.state.as_ptr());
        if frame.is_null() {
            if !ffi::PyErr_Occurred().is_null() {
                return NULL;
            }
            return none();
        }
        frame
    }
}

unsafe extern "C" fn get_context(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe {
        let g = green(obj);
        if g.running.get() {
            let ts = ThreadState::existing();
            if ts.is_null() || (*ts).current() != obj {
                set_error(ffi::PyExc_ValueError, msg::CONTEXT_OTHER_THREAD_GET);
                return NULL;
            }
            return new_ref_or_none(pystate::corolet_tstate_context());
        }
        new_ref_or_none(pystate::corolet_pystate_context(g.state.as_ptr()))
    }
}

unsafe extern "C" fn set_context(
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    // SAFETY: setter called with the GIL on a greenlet.
    unsafe {
        if value.is_null() {
            set_error(ffi::PyExc_AttributeError, msg::CONTEXT_DELETE);
            return -1;
        }
        let context = if value == ffi::Py_None() {
            ptr::null_mut()
        } else if ffi::PyContext_CheckExact(value) != 0 {
            ffi::Py_NewRef(value)
        } else {
            set_error(ffi::PyExc_TypeError, msg::CONTEXT_TYPE);
            return -1;
        };
        let g = green(obj);
        if g.running.get() {
            let ts = ThreadState::existing();
            if ts.is_null() || (*ts).current() != obj {
                ffi::Py_XDECREF(context);
                set_error(ffi::PyExc_ValueError, msg::CONTEXT_OTHER_THREAD_SET);
                return -1;
            }
            pystate::corolet_tstate_set_context(context);
        } else {
            pystate::corolet_pystate_set_context(g.state.as_ptr(), context);
        }
        0
    }
}

unsafe extern "C" fn get_stack_saved(
    obj: *mut ffi::PyObject,
    _: *mut c_void,
) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe {
        let g = green(obj);
        let bytes = if g.running.get() || g.life.get() != Life::Active || g.thread_exited() {
            0
        } else {
            let top = if g.is_main {
                g.thread.as_ref().map_or(0, |t| t.stack_top)
            } else {
                g.fiber.stack_top()
            };
            top.saturating_sub(g.saved_sp.get())
        };
        ffi::PyLong_FromSize_t(bytes)
    }
}

unsafe extern "C" fn get_dict(obj: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter called with the GIL on a greenlet.
    unsafe {
        let this = obj as *mut PyGreenlet;
        if (*this).dict.is_null() {
            (*this).dict = ffi::PyDict_New();
            if (*this).dict.is_null() {
                return NULL;
            }
        }
        ffi::Py_NewRef((*this).dict)
    }
}

unsafe extern "C" fn set_dict(
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    // SAFETY: setter called with the GIL on a greenlet.
    unsafe {
        if value.is_null() {
            set_error(ffi::PyExc_TypeError, msg::DICT_DELETE);
            return -1;
        }
        if ffi::PyDict_Check(value) == 0 {
            set_error(ffi::PyExc_TypeError, msg::DICT_TYPE);
            return -1;
        }
        let this = obj as *mut PyGreenlet;
        let old = std::mem::replace(&mut (*this).dict, ffi::Py_NewRef(value));
        ffi::Py_XDECREF(old);
        0
    }
}

unsafe extern "C" fn tp_repr(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called with the GIL on a greenlet.
        unsafe {
            let g = green(obj);
            let name = CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name).to_string_lossy();
            let main = if g.is_main { obj } else { g.main.get() };
            let otid = if main.is_null() {
                0
            } else {
                green(main)
                    .thread
                    .as_ref()
                    .map_or(0, |t| Arc::as_ptr(t) as usize)
            };
            let exited = g.thread_exited();
            let text = if !g.is_dead() {
                let ts = ThreadState::existing();
                let state = if exited {
                    " (thread exited)"
                } else if !ts.is_null() && (*ts).current() == obj {
                    " current"
                } else if g.life.get() != Life::Unstarted {
                    " suspended"
                } else {
                    ""
                };
                format!(
                    "<{name} object at {obj:p} (otid={otid:#x}){state}{}{}{}>",
                    if g.life.get() == Life::Active {
                        " active"
                    } else {
                        ""
                    },
                    if g.life.get() == Life::Unstarted {
                        " pending"
                    } else {
                        " started"
                    },
                    if g.is_main { " main" } else { "" },
                )
            } else {
                format!(
                    "<{name} object at {obj:p} (otid={otid:#x}) {}dead>",
                    if exited { "(thread exited) " } else { "" }
                )
            };
            ffi::PyUnicode_FromStringAndSize(text.as_ptr() as *const _, text.len() as _)
        }
    })
}

unsafe extern "C" fn getstate(
    obj: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: method called with the GIL.
    unsafe {
        let name = CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name).to_string_lossy();
        set_error_str(ffi::PyExc_TypeError, &msg::cannot_serialize(&name));
    }
    NULL
}

// ---------------------------------------------------------------------------------------
// The type object.

fn leak<T>(v: Vec<T>) -> *mut T {
    crate::pyerr::keep_forever(v.into_boxed_slice()).cast::<T>()
}

fn getset(
    name: &'static CStr,
    get: Option<ffi::getter>,
    set: Option<ffi::setter>,
) -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: name.as_ptr(),
        get,
        set,
        doc: ptr::null(),
        closure: ptr::null_mut(),
    }
}

/// Builds the `greenlet.greenlet` type and the module-wide objects. Called once, at import.
/// None with a Python error set on failure.
///
/// # Safety
/// GIL held.
pub unsafe fn init_type(
    exit: *mut ffi::PyObject,
    error: *mut ffi::PyObject,
) -> Option<*mut ffi::PyTypeObject> {
    if let Some(g) = GLOBALS.get() {
        return Some(g.ty);
    }
    let methods = leak(vec![
        ffi::PyMethodDef {
            ml_name: c"switch".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: switch::py_switch,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: c"switch(*args, **kwargs)\n\nSwitch execution to this greenlet.".as_ptr(),
        },
        ffi::PyMethodDef {
            ml_name: c"throw".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: switch::py_throw,
            },
            ml_flags: ffi::METH_VARARGS,
            ml_doc: c"throw(typ=GreenletExit, val=None, tb=None)\n\nSwitch to this greenlet and raise the given exception in it.".as_ptr(),
        },
        ffi::PyMethodDef {
            ml_name: c"__getstate__".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: getstate },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: ptr::null(),
        },
        ffi::PyMethodDef::zeroed(),
    ]);
    let getsets = leak(vec![
        getset(c"__dict__", Some(get_dict), Some(set_dict)),
        getset(c"run", Some(get_run), Some(set_run_attr)),
        getset(c"parent", Some(get_parent), Some(set_parent_attr)),
        getset(c"gr_frame", Some(get_frame), None),
        getset(c"gr_context", Some(get_context), Some(set_context)),
        getset(c"dead", Some(get_dead), None),
        getset(c"_stack_saved", Some(get_stack_saved), None),
        ffi::PyGetSetDef {
            name: ptr::null(),
            get: None,
            set: None,
            doc: ptr::null(),
            closure: ptr::null_mut(),
        },
    ]);
    let number = leak(vec![ffi::PyNumberMethods {
        nb_bool: Some(nb_bool),
        // SAFETY: every field is an optional function pointer, for which zero means "none".
        ..unsafe { std::mem::zeroed() }
    }]);
    let doc = c"greenlet(run=None, parent=None) -> greenlet\n\nCreates a new greenlet object (without running it).\n\n - *run* -- The callable to invoke.\n - *parent* -- The parent greenlet. The default is the current greenlet.";
    let ty = leak(vec![ffi::PyTypeObject {
        ob_base: ffi::PyVarObject {
            ob_base: ffi::PyObject {
                ob_type: ptr::addr_of_mut!(ffi::PyType_Type),
                ..ffi::PyObject_HEAD_INIT
            },
            ob_size: 0,
        },
        tp_name: c"greenlet.greenlet".as_ptr(),
        tp_basicsize: std::mem::size_of::<PyGreenlet>() as ffi::Py_ssize_t,
        tp_dealloc: Some(tp_dealloc),
        tp_repr: Some(tp_repr),
        tp_as_number: number,
        tp_flags: ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE | ffi::Py_TPFLAGS_HAVE_GC,
        tp_doc: doc.as_ptr(),
        tp_traverse: Some(tp_traverse),
        tp_clear: Some(tp_clear),
        tp_weaklistoffset: std::mem::offset_of!(PyGreenlet, weakreflist) as ffi::Py_ssize_t,
        tp_methods: methods,
        tp_getset: getsets,
        tp_dictoffset: std::mem::offset_of!(PyGreenlet, dict) as ffi::Py_ssize_t,
        tp_init: Some(tp_init),
        tp_alloc: Some(ffi::PyType_GenericAlloc),
        tp_new: Some(tp_new),
        tp_free: Some(ffi::PyObject_GC_Del),
        tp_is_gc: Some(tp_is_gc),
        tp_finalize: Some(tp_finalize),
        // SAFETY: the remaining fields are pointers and optional function pointers that
        // PyType_Ready fills in (or leaves empty) when they are zero.
        ..unsafe { std::mem::zeroed() }
    }]);
    // SAFETY: GIL held; the type object and everything it points to are leaked ('static),
    // as a static type's must be.
    unsafe {
        if ffi::PyType_Ready(ty) < 0 {
            return None;
        }
        let intern = |s: &CStr| ffi::PyUnicode_InternFromString(s.as_ptr());
        let globals = Globals {
            ty,
            exit,
            error,
            str_run: intern(c"run"),
            str_switch: intern(c"switch"),
            str_throw: intern(c"throw"),
        };
        let _ = GLOBALS.set(globals);
        Some(ty)
    }
}
