//! Per-thread greenlet state: the thread's main greenlet, the greenlet running now, the trace
//! function, and the greenlets other threads dropped that must be killed here.
//!
//! Model: the state is created lazily, the first time a thread uses greenlets, and lives as
//! long as the thread. What other threads may look at (whether the thread is alive, its queue
//! of greenlets to kill) sits in a shared, reference-counted [`ThreadShared`]; main greenlets
//! keep it, so a greenlet can tell that its thread has exited. A thread-local guard marks the
//! thread dead when it exits; it touches no Python object (the interpreter may be gone by
//! then).
//!
//! All fields are touched only with the GIL held: `Cell`s suffice.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::ffi;

/// A greenlet queued for its own thread: to drop (its last reference went away in another
/// thread), or to kill first (the garbage collector found it unreachable).
pub struct SendPtr(pub *mut ffi::PyObject, pub bool);
// SAFETY: the pointer is only dereferenced with the GIL held, by the owning thread.
unsafe impl Send for SendPtr {}

/// Bumped in a child process after `fork()`: only the forking thread lives on there.
static FORK_GENERATION: AtomicUsize = AtomicUsize::new(0);

extern "C" fn after_fork_in_child() {
    let generation = FORK_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    let _ = STATE.try_with(|s| {
        let state = s.get();
        if !state.is_null() {
            // SAFETY: this thread's own live state.
            unsafe { (*state).shared.as_ref() }
                .generation
                .store(generation, Ordering::Release);
        }
    });
}

/// Makes greenlets of threads that do not exist in a forked child count as belonging to
/// exited threads there (once per process).
pub fn install_fork_handler() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a child handler that only touches atomics and thread-locals.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    }
}

/// What other threads may know about a thread.
pub struct ThreadShared {
    alive: AtomicBool,
    /// `FORK_GENERATION` when the thread was last known to exist in this process.
    generation: AtomicUsize,
    /// Greenlets of this thread to drop (and maybe kill), with a reference each.
    deleteme: Mutex<Vec<SendPtr>>,
    has_deleteme: AtomicBool,
    /// High end of the thread's own stack (for `_stack_saved` of its main greenlet).
    pub stack_top: usize,
}

impl ThreadShared {
    /// Whether the thread is still running (in this process: after a fork, only the
    /// forking thread is).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == FORK_GENERATION.load(Ordering::Acquire)
    }

    /// Empties the queue, handing over the references it held.
    fn take_deleteme(&self) -> Vec<SendPtr> {
        let queued = std::mem::take(&mut *self.deleteme.lock().unwrap_or_else(|e| e.into_inner()));
        self.has_deleteme.store(false, Ordering::Release);
        queued
    }

    /// Queues a greenlet (a reference is handed over) to be dropped by this thread, after
    /// killing it with `GreenletExit` if `kill`.
    pub fn queue_for_deletion(&self, g: *mut ffi::PyObject, kill: bool) {
        self.deleteme
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SendPtr(g, kill));
        self.has_deleteme.store(true, Ordering::Release);
    }
}

/// The greenlet state of the current thread.
pub struct ThreadState {
    /// The main greenlet (strong).
    pub main: *mut ffi::PyObject,
    current: Cell<*mut ffi::PyObject>,
    trace: Cell<*mut ffi::PyObject>,
    pub shared: Arc<ThreadShared>,
}

/// Live main greenlets (for `get_total_main_greenlets`).
pub static MAIN_GREENLETS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STATE: Cell<*const ThreadState> = const { Cell::new(ptr::null()) };
    static EXIT: ExitGuard = const { ExitGuard(Cell::new(ptr::null())) };
}

/// The states of exited threads, waiting to release their Python objects under the GIL.
struct DeadState(*const ThreadState);
// SAFETY: only dereferenced with the GIL held, after its thread is gone.
unsafe impl Send for DeadState {}

static DEAD_THREADS: Mutex<Vec<DeadState>> = Mutex::new(Vec::new());
/// Set while `DEAD_THREADS` may be non-empty: checked on every greenlet entry point.
static DEAD_PENDING: AtomicBool = AtomicBool::new(false);

/// Hands the thread's state over to be released, once, when the thread ends. Two things
/// notice the end: the thread-state dictionary being cleared (a capsule we keep there is
/// destroyed, with the GIL, before `Thread.join()` returns), and, as a fallback for threads
/// that never had one, the thread-local guard's destructor at OS-thread exit (without the
/// GIL, after Python's state for the thread is gone). Either way only atomics and our own
/// queue are touched; the Python objects are released later under the GIL.
struct ExitGuard(Cell<*const ThreadState>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        hand_over(self.0.replace(ptr::null()));
    }
}

fn hand_over(state: *const ThreadState) {
    if state.is_null() {
        return;
    }
    let _ = STATE.try_with(|s| {
        if s.get() == state {
            s.set(ptr::null());
        }
    });
    // SAFETY: the state is leaked for the life of the thread, which is ending; only its
    // atomics are touched here.
    unsafe { (*state).shared.as_ref() }
        .alive
        .store(false, Ordering::Release);
    let mut dead = DEAD_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    dead.push(DeadState(state));
    let first = dead.len() == 1;
    drop(dead);
    DEAD_PENDING.store(true, Ordering::Release);
    // SAFETY: both calls are documented as callable without a thread state or the GIL.
    unsafe {
        if first && ffi::Py_IsInitialized() != 0 && crate::pystate::corolet_is_finalizing() == 0 {
            ffi::Py_AddPendingCall(Some(release_dead_threads_cb), ptr::null_mut());
        }
    }
}

const SENTINEL_NAME: &std::ffi::CStr = c"corolet.thread";

unsafe extern "C" fn sentinel_destroyed(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython when the capsule we made is freed.
    let state = unsafe { ffi::PyCapsule_GetPointer(capsule, SENTINEL_NAME.as_ptr()) };
    let state = state as *const ThreadState;
    let _ = EXIT.try_with(|g| {
        if g.0.get() == state {
            g.0.set(ptr::null());
            hand_over(state);
        }
    });
}

/// Puts the sentinel capsule into the thread-state dictionary (best effort).
///
/// # Safety
/// GIL held; `state` is this thread's new state.
unsafe fn install_sentinel(state: *const ThreadState) {
    // SAFETY: GIL held; the dictionary is borrowed, the capsule ours.
    unsafe {
        let dict = ffi::PyThreadState_GetDict();
        if dict.is_null() {
            return;
        }
        let capsule = ffi::PyCapsule_New(
            state as *mut std::ffi::c_void,
            SENTINEL_NAME.as_ptr(),
            Some(sentinel_destroyed),
        );
        if capsule.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        if ffi::PyDict_SetItemString(dict, c"__corolet_thread__".as_ptr(), capsule) < 0 {
            ffi::PyErr_Clear();
        }
        ffi::Py_DECREF(capsule);
    }
}

extern "C" fn release_dead_threads_cb(_: *mut std::ffi::c_void) -> std::ffi::c_int {
    // SAFETY: pending calls run with the GIL held.
    unsafe { release_dead_threads() };
    0
}

static OPTIONAL_CLEANUP: AtomicBool = AtomicBool::new(true);
static CLOCKS_USED: AtomicUsize = AtomicUsize::new(0);

/// Turns the clean-up of dangling main-greenlet references on or off (greenlet's
/// provisional `enable_optional_cleanup`).
pub fn enable_optional_cleanup(enabled: bool) {
    OPTIONAL_CLEANUP.store(enabled, Ordering::Relaxed);
}

/// Processor clocks spent in that clean-up, or None when it is off.
pub fn clocks_used_doing_optional_cleanup() -> Option<usize> {
    OPTIONAL_CLEANUP
        .load(Ordering::Relaxed)
        .then(|| CLOCKS_USED.load(Ordering::Relaxed))
}

/// Drops our reference to the main greenlet of an exited thread. A thread that ended in its
/// main greenlet after another greenlet switched to it with `getcurrent().parent.switch()`
/// leaves one reference to the main greenlet on that greenlet's abandoned stack, where no
/// one can reach it. As greenlet does (optionally), if exactly one reference remains and the
/// garbage collector knows of no referrer, take it to be that one and drop it too.
///
/// # Safety
/// GIL held; `main` is the dead thread's main greenlet and we own one reference.
unsafe fn release_main_of_dead_thread(main: *mut ffi::PyObject) {
    // SAFETY: GIL held; `main` stays alive while its count is above zero.
    unsafe {
        if !OPTIONAL_CLEANUP.load(Ordering::Relaxed) || ffi::Py_REFCNT(main) != 2 {
            ffi::Py_DECREF(main);
            return;
        }
        let start = crate::pystate::corolet_clock();
        ffi::Py_DECREF(main);
        let gc = ffi::PyImport_ImportModule(c"gc".as_ptr());
        let referrers = if gc.is_null() {
            ptr::null_mut()
        } else {
            let r = ffi::PyObject_CallMethod(gc, c"get_referrers".as_ptr(), c"O".as_ptr(), main);
            ffi::Py_DECREF(gc);
            r
        };
        if referrers.is_null() {
            ffi::PyErr_Clear();
        } else {
            let unreferenced =
                ffi::PyList_Check(referrers) != 0 && ffi::PyList_Size(referrers) == 0;
            ffi::Py_DECREF(referrers);
            if unreferenced && ffi::Py_REFCNT(main) == 1 {
                ffi::Py_DECREF(main);
            }
        }
        let used = (crate::pystate::corolet_clock() - start).max(1);
        CLOCKS_USED.fetch_add(used as usize, Ordering::Relaxed);
    }
}

/// Exited threads whose greenlet state has not been released yet.
pub fn dead_threads_pending() -> usize {
    DEAD_THREADS.lock().map(|d| d.len()).unwrap_or(0)
}

/// Releases what exited threads' states hold: the trace function, the current and main
/// greenlets, the greenlets queued for deletion. Their suspended greenlets are then freed
/// without running (their thread is gone).
///
/// # Safety
/// GIL held.
pub unsafe fn release_dead_threads() {
    let dead = std::mem::take(&mut *DEAD_THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    DEAD_PENDING.store(false, Ordering::Release);
    // SAFETY: reads the runtime's finalizing flag.
    if unsafe { crate::pystate::corolet_is_finalizing() } != 0 {
        // Too late to run destructors safely: leave it all to the process exit.
        std::mem::forget(dead);
        return;
    }
    // SAFETY: GIL held; each state was leaked by its thread and is now ours alone.
    unsafe {
        let saved = crate::pyerr::ErrState::take_pending();
        for DeadState(state) in dead {
            let state = Box::from_raw(state as *mut ThreadState);
            for SendPtr(g, _) in state.shared.take_deleteme() {
                ffi::Py_DECREF(g);
            }
            ffi::Py_XDECREF(state.trace.replace(ptr::null_mut()));
            let current = state.current.replace(ptr::null_mut());
            crate::greenlet::green(current).running.set(false);
            ffi::Py_DECREF(current);
            if current == state.main {
                release_main_of_dead_thread(state.main);
            } else {
                ffi::Py_DECREF(state.main);
            }
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_WriteUnraisable(ptr::null_mut());
            }
        }
        if let Some(saved) = saved {
            saved.restore();
        }
    }
}

fn thread_stack_top() -> usize {
    // SAFETY: querying our own thread's attributes into a zeroed, then destroyed, attr.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let mut addr: *mut libc::c_void = ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return 0;
        }
        addr as usize + size
    }
}

impl ThreadState {
    /// This thread's state, created on first use (with its main greenlet). Null with a
    /// Python error set if the main greenlet cannot be created.
    ///
    /// # Safety
    /// GIL held.
    #[inline]
    pub unsafe fn get() -> *const ThreadState {
        let state = STATE.with(|s| s.get());
        if !state.is_null() {
            return state;
        }
        // SAFETY: GIL held by contract.
        unsafe { Self::create() }
    }

    /// This thread's state if it exists already.
    pub fn existing() -> *const ThreadState {
        STATE.try_with(|s| s.get()).unwrap_or(ptr::null())
    }

    #[cold]
    unsafe fn create() -> *const ThreadState {
        let shared = Arc::new(ThreadShared {
            alive: AtomicBool::new(true),
            generation: AtomicUsize::new(FORK_GENERATION.load(Ordering::Acquire)),
            deleteme: Mutex::new(Vec::new()),
            has_deleteme: AtomicBool::new(false),
            stack_top: thread_stack_top(),
        });
        // SAFETY: GIL held by contract.
        let main = unsafe { crate::greenlet::new_main(shared.clone()) };
        if main.is_null() {
            return ptr::null();
        }
        MAIN_GREENLETS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `main` is a live greenlet and we hold a reference for `current` too.
        unsafe { ffi::Py_INCREF(main) };
        let state = Box::into_raw(Box::new(ThreadState {
            main,
            current: Cell::new(main),
            trace: Cell::new(ptr::null_mut()),
            shared: shared.clone(),
        }));
        // The state and the references it holds are kept for the life of the thread, then
        // handed over to be released.
        let _ = EXIT.try_with(|g| g.0.set(state));
        // SAFETY: GIL held by contract.
        unsafe { install_sentinel(state) };
        crate::overflow::ensure_alt_stack();
        STATE.with(|s| s.set(state));
        // SAFETY: marking the main greenlet as running on this thread.
        unsafe { crate::greenlet::green(main).running.set(true) };
        state
    }

    /// The greenlet running now (borrowed).
    #[inline]
    pub fn current(&self) -> *mut ffi::PyObject {
        self.current.get()
    }

    /// Makes `g` the running greenlet.
    ///
    /// # Safety
    /// GIL held; `g` is a live greenlet of this thread whose interpreter state has just been
    /// restored. Dropping the previous reference may run arbitrary code.
    #[inline]
    pub unsafe fn set_current(&self, g: *mut ffi::PyObject) {
        let old = self.current.replace(g);
        // SAFETY: both are live greenlets; GIL held.
        unsafe {
            ffi::Py_INCREF(g);
            crate::greenlet::green(old).running.set(false);
            crate::greenlet::green(g).running.set(true);
            ffi::Py_DECREF(old);
        }
    }

    /// The greenlet trace function (borrowed, may be null).
    pub fn trace(&self) -> *mut ffi::PyObject {
        self.trace.get()
    }

    /// Replaces the trace function (`func` null or a new reference); returns the old one
    /// (owned, may be null).
    pub fn replace_trace(&self, func: *mut ffi::PyObject) -> *mut ffi::PyObject {
        self.trace.replace(func)
    }

    /// Drops the greenlets other threads queued for deletion here. Their last reference
    /// goes away in this, their own, thread, which kills them properly.
    ///
    /// # Safety
    /// GIL held.
    #[inline]
    pub unsafe fn drain_deleteme(&self) {
        if self.shared.has_deleteme.load(Ordering::Acquire) {
            // SAFETY: GIL held by contract.
            unsafe { self.drain_deleteme_slow() }
        }
        if DEAD_PENDING.load(Ordering::Relaxed) {
            // SAFETY: GIL held by contract.
            unsafe { release_dead_threads() }
        }
    }

    #[cold]
    unsafe fn drain_deleteme_slow(&self) {
        let queued = self.shared.take_deleteme();
        if queued.is_empty() {
            return;
        }
        // SAFETY: GIL held; the queue handed us one reference to each greenlet.
        unsafe {
            let saved = crate::pyerr::ErrState::take_pending();
            for SendPtr(g, kill) in queued {
                if kill && crate::greenlet::green(g).suspended_in_live_thread() {
                    crate::greenlet::kill_now(g, self);
                }
                ffi::Py_DECREF(g);
                if !ffi::PyErr_Occurred().is_null() {
                    ffi::PyErr_WriteUnraisable(ptr::null_mut());
                }
            }
            if let Some(saved) = saved {
                saved.restore();
            }
        }
    }
}
