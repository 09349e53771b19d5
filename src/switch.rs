//! Switching between greenlets: `switch()`, `throw()`, starting, finishing, killing.
//!
//! One logical switch from the running greenlet A to a target T:
//! 1. *Resolve* (in A, may run Python code): check T belongs to this thread; walk from T up
//!    its parents past dead greenlets; if the first live one is unstarted, look up its `run`
//!    and give it a fiber. Errors here are raised in A.
//! 2. *Transfer* (no Python code): A saves its interpreter state and hands a [`Payload`] to
//!    the target through the fiber layer, by value.
//! 3. *Deliver* (in the target): it restores its own state, becomes current, calls the trace
//!    function, and returns the payload from its pending `switch()` (or raises it).
//!
//! A greenlet's first run happens in [`fiber_main`] on its new stack; when `run` returns or
//! raises, the outcome is resolved against the parent chain in the dying greenlet and the
//! fiber finishes with a hop to whichever greenlet receives it.

use std::ffi::{c_void, CStr};
use std::ptr;

use pyo3::ffi;

use crate::fiber::{run_from_main, Hop};
use crate::greenlet::{globals, green, Life};
use crate::messages as msg;
use crate::pyerr::{guard, none, set_error, set_error_str, ErrState, NULL};
use crate::pystate;
use crate::stack;
use crate::thread::ThreadState;

/// What a switch delivers.
pub enum Kind {
    /// Exactly this object (one positional argument, a return value, a `GreenletExit`).
    Value(*mut ffi::PyObject),
    /// Positional arguments (a tuple) and keyword arguments (a dict or null).
    Args {
        args: *mut ffi::PyObject,
        kwargs: *mut ffi::PyObject,
    },
    /// An exception to raise in the target.
    Raise(ErrState),
}

/// A switch in flight: who sent it, and what it carries. Owns its references.
pub struct Payload {
    origin: *mut ffi::PyObject,
    kind: Option<Kind>,
    /// Strong or null: a note for the receiver beside the value, by value like it (the
    /// portal's messages, `portal_run.rs`); null for every switch made through the API.
    tag: *mut ffi::PyObject,
}

impl Payload {
    fn new(origin: *mut ffi::PyObject, kind: Kind) -> Self {
        // SAFETY: GIL held wherever payloads are made; `origin` is a live greenlet.
        unsafe { ffi::Py_INCREF(origin) };
        Payload {
            origin,
            kind: Some(kind),
            tag: ptr::null_mut(),
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        // SAFETY: payloads live and die with the GIL held; references are owned.
        unsafe {
            ffi::Py_XDECREF(self.origin);
            ffi::Py_XDECREF(self.tag);
            match self.kind.take() {
                Some(Kind::Value(v)) => ffi::Py_XDECREF(v),
                Some(Kind::Args { args, kwargs }) => {
                    ffi::Py_XDECREF(args);
                    ffi::Py_XDECREF(kwargs);
                }
                Some(Kind::Raise(e)) => drop(e),
                None => {}
            }
        }
    }
}

/// Checks that `target` may be switched to from this thread; sets greenlet's error if not.
unsafe fn check_allowed(ts: &ThreadState, target: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: GIL held; `target` is a live greenlet.
    unsafe {
        let main = green(target).lineage_main(target);
        if main.is_null() {
            set_error(globals().error, msg::GARBAGE_COLLECTED);
            return Err(());
        }
        if green(main).thread.as_ref().is_some_and(|t| !t.alive()) {
            set_error(globals().error, msg::THREAD_EXITED);
            return Err(());
        }
        if main != ts.main {
            let current = repr(ts.main);
            let expected = repr(main);
            set_error_str(globals().error, &msg::wrong_thread(&current, &expected));
            return Err(());
        }
        Ok(())
    }
}

unsafe fn repr(obj: *mut ffi::PyObject) -> String {
    // SAFETY: GIL held; live object.
    unsafe {
        let r = ffi::PyObject_Repr(obj);
        if r.is_null() {
            ffi::PyErr_Clear();
            return "<greenlet>".into();
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(r, &mut len);
        let s = if p.is_null() {
            ffi::PyErr_Clear();
            "<greenlet>".into()
        } else {
            String::from_utf8_lossy(std::slice::from_raw_parts(p as *const u8, len as usize))
                .into_owned()
        };
        ffi::Py_DECREF(r);
        s
    }
}

/// Finds the greenlet that actually receives a switch to `target` (skipping dead ones,
/// preparing an unstarted one to start). Errors are set and the payload dropped.
unsafe fn resolve(ts: &ThreadState, target: *mut ffi::PyObject) -> Result<*mut ffi::PyObject, ()> {
    // SAFETY: GIL held; greenlets on a parent chain are kept alive by their children.
    unsafe {
        check_allowed(ts, target)?;
        let mut g = target;
        loop {
            let gr = green(g);
            match gr.life.get() {
                // A greenlet left suspended by a thread that exited may have been given a
                // parent here since (or be the parent of a dead one): its stack never runs
                // again. (greenlet 3.5.6 switches into it and crashes.)
                Life::Active if !gr.is_main && gr.thread_exited() => {
                    set_error(globals().error, msg::THREAD_EXITED);
                    return Err(());
                }
                Life::Active => return Ok(g),
                Life::Unstarted => {
                    if prepare_start(ts, g)? {
                        return Ok(g);
                    }
                    // Started by code that ran during the `run` lookup: switch to it.
                }
                Life::Dead => {
                    g = gr.parent.get();
                    if g.is_null() {
                        set_error(globals().error, msg::GARBAGE_COLLECTED);
                        return Err(());
                    }
                }
            }
        }
    }
}

/// Looks up `run` and gives `g` a fiber. Ok(false) if `g` got started meanwhile.
unsafe fn prepare_start(ts: &ThreadState, g: *mut ffi::PyObject) -> Result<bool, ()> {
    // SAFETY: GIL held; `g` is a live, unstarted greenlet.
    unsafe {
        let run = crate::greenlet::lookup_run(g);
        if run.is_null() {
            return Err(());
        }
        if check_allowed(ts, g).is_err() {
            ffi::Py_DECREF(run);
            return Err(());
        }
        let gr = green(g);
        if gr.life.get() != Life::Unstarted {
            ffi::Py_DECREF(run);
            return Ok(false);
        }
        let stack = match stack::take_stack() {
            Ok(s) => s,
            Err(e) => {
                ffi::Py_DECREF(run);
                set_error_str(ffi::PyExc_MemoryError, &msg::no_stack(&e));
                return Err(());
            }
        };
        let me = g as usize;
        // The state lives at one address for the greenlet's life, and has no stack yet.
        gr.fiber.prepare(stack, move |first| {
            fiber_main(me as *mut ffi::PyObject, first)
        });
        let old_main = gr.main.replace(ffi::Py_NewRef(ts.main));
        ffi::Py_XDECREF(old_main);
        let old_run = gr.starting_run.replace(run);
        ffi::Py_XDECREF(old_run);
        gr.life.set(Life::Active);
        Ok(true)
    }
}

/// Undoes `prepare_start` for a greenlet whose first switch failed.
unsafe fn unprepare_start(g: *mut ffi::PyObject) {
    // SAFETY: GIL held; the fiber never ran.
    unsafe {
        let gr = green(g);
        gr.fiber.discard_unstarted();
        for p in [&gr.main, &gr.starting_run] {
            ffi::Py_XDECREF(p.replace(ptr::null_mut()));
        }
        gr.life.set(Life::Unstarted);
    }
}

/// Hands `payload` from the running greenlet `cur` to `dest` and returns what `cur`
/// receives when it is next switched to.
unsafe fn transfer(
    ts: &ThreadState,
    cur: *mut ffi::PyObject,
    dest: *mut ffi::PyObject,
    payload: Payload,
) -> Result<Payload, ()> {
    // SAFETY: GIL held; `cur` is the running greenlet of this thread, `dest` a live,
    // resolved greenlet of it with a fiber (or its main greenlet).
    unsafe {
        let dg = green(dest);
        let first_time = !dg.is_main && !dg.fiber.started();
        if dg.force_slp_switch_error.get() {
            ffi::Py_FatalError(msg::SLP_SWITCH_FATAL.as_ptr());
        }
        if dg.force_switch_error.get() {
            drop(payload);
            if first_time {
                unprepare_start(dest);
                set_error(ffi::PyExc_SystemError, msg::FIRST_SWITCH_FAILED);
            } else {
                set_error(ffi::PyExc_SystemError, msg::SWITCH_FAILED);
            }
            return Err(());
        }
        let to = dg.hop_target();
        let cg = green(cur);
        let marker = 0u8;
        cg.saved_sp
            .set(std::hint::black_box(&marker) as *const u8 as usize);
        pystate::corolet_pystate_save(cg.state.as_ptr());
        let received = if cg.is_main {
            run_from_main(to, payload)
        } else {
            cg.fiber.suspend(Hop { to, payload })
        };
        pystate::corolet_pystate_restore(cg.state.as_ptr());
        ts.set_current(cur);
        Ok(received)
    }
}

/// Calls the greenlet trace function for a switch that just arrived in `target`.
unsafe fn call_trace(
    ts: &ThreadState,
    trace: *mut ffi::PyObject,
    event: *mut ffi::PyObject,
    origin: *mut ffi::PyObject,
    target: *mut ffi::PyObject,
) -> Result<(), ()> {
    // SAFETY: GIL held; live objects; the trace function is kept alive for the call.
    unsafe {
        ffi::Py_INCREF(trace);
        let pair = ffi::PyTuple_Pack(2, origin, target);
        let result = if pair.is_null() {
            NULL
        } else {
            pystate::corolet_enter_tracing();
            let r = ffi::PyObject_CallFunctionObjArgs(trace, event, pair, NULL);
            pystate::corolet_leave_tracing();
            ffi::Py_DECREF(pair);
            r
        };
        ffi::Py_DECREF(trace);
        if result.is_null() {
            let old = ts.replace_trace(ptr::null_mut());
            ffi::Py_XDECREF(old);
            return Err(());
        }
        ffi::Py_DECREF(result);
        Ok(())
    }
}

/// In the greenlet a switch arrived in: trace it, then return its value or raise it.
unsafe fn deliver(ts: &ThreadState, mut payload: Payload) -> *mut ffi::PyObject {
    // SAFETY: GIL held; this greenlet's state is restored and it is current.
    unsafe {
        let trace = ts.trace();
        if !trace.is_null() {
            let event = match payload.kind {
                Some(Kind::Raise(_)) => globals().str_throw,
                _ => globals().str_switch,
            };
            if call_trace(ts, trace, event, payload.origin, ts.current()).is_err() {
                return NULL;
            }
        }
        match payload.kind.take().expect("a payload is delivered once") {
            Kind::Value(v) => v,
            Kind::Args { args, kwargs } => pack(args, kwargs),
            Kind::Raise(e) => {
                e.restore();
                NULL
            }
        }
    }
}

/// greenlet's value for `switch(*args, **kwargs)`: `x` for one argument, the tuple for
/// several, the dict for keywords only, `(args, kwargs)` for both. Consumes both.
unsafe fn pack(args: *mut ffi::PyObject, kwargs: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; owned references.
    unsafe {
        if kwargs.is_null() || ffi::PyDict_Size(kwargs) == 0 {
            ffi::Py_XDECREF(kwargs);
            return single(args);
        }
        if ffi::PyTuple_Size(args) == 0 {
            ffi::Py_DECREF(args);
            return kwargs;
        }
        let both = ffi::PyTuple_Pack(2, args, kwargs);
        ffi::Py_DECREF(args);
        ffi::Py_DECREF(kwargs);
        both
    }
}

/// Unwraps a 1-tuple. Consumes `obj`.
unsafe fn single(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; owned reference.
    unsafe {
        if ffi::PyTuple_CheckExact(obj) != 0 && ffi::PyTuple_GET_SIZE(obj) == 1 {
            let item = ffi::Py_NewRef(ffi::PyTuple_GET_ITEM(obj, 0));
            ffi::Py_DECREF(obj);
            return item;
        }
        obj
    }
}

/// Switches to `target` with `kind`; returns what this greenlet receives (new reference) or
/// null with an exception set.
///
/// # Safety
/// GIL held; `target` is a live greenlet.
pub unsafe fn switch_to(target: *mut ffi::PyObject, kind: Kind) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `target` is a live greenlet.
    unsafe {
        let mut tag = ptr::null_mut();
        let r = switch_to_tagged(target, kind, ptr::null_mut(), &mut tag);
        ffi::Py_XDECREF(tag);
        r
    }
}

/// [`switch_to`] with a tag travelling beside the value (`tag`, stolen, may be null); the
/// tag of the switch that resumes this greenlet goes to `received` (owned, null if none).
///
/// Inlined into [`switch_to`]: a parked greenlet's native frames must stay as small as they
/// were before tags (on 3.14 a separate frame here pushed a parked greenlet past the top
/// page of its stack slot, `test_parked_greenlet_shares_one_stack_page...`).
///
/// # Safety
/// GIL held; `target` is a live greenlet.
#[inline(always)]
pub unsafe fn switch_to_tagged(
    target: *mut ffi::PyObject,
    kind: Kind,
    tag: *mut ffi::PyObject,
    received: &mut *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `target` is a live greenlet.
    unsafe {
        let ts = ThreadState::get();
        if ts.is_null() {
            drop(Payload {
                origin: ptr::null_mut(),
                kind: Some(kind),
                tag,
            });
            return NULL;
        }
        let ts = &*ts;
        ts.drain_deleteme();
        let cur = ts.current();
        let mut payload = Payload::new(cur, kind);
        payload.tag = tag;
        let dest = match resolve(ts, target) {
            Ok(dest) => dest,
            Err(()) => return NULL,
        };
        let mut received_payload = if dest == cur {
            payload
        } else {
            match transfer(ts, cur, dest, payload) {
                Ok(p) => p,
                Err(()) => return NULL,
            }
        };
        *received = std::mem::replace(&mut received_payload.tag, ptr::null_mut());
        let result = deliver(ts, received_payload);
        if result.is_null() && ffi::PyErr_Occurred().is_null() {
            set_error(globals().error, msg::NULL_WITHOUT_ERROR);
        }
        result
    }
}

/// The first code a greenlet runs, on its own stack. Returns the hop its fiber finishes with.
fn fiber_main(g: *mut ffi::PyObject, first: Payload) -> Hop<Payload> {
    struct Start {
        g: *mut ffi::PyObject,
        first: Option<Payload>,
        hop: Option<Hop<Payload>>,
    }
    unsafe extern "C" fn trampoline(arg: *mut c_void) {
        // SAFETY: `arg` is the `Start` below, alive for this call.
        let start = unsafe { &mut *(arg as *mut Start) };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: GIL held (we were switched to by a greenlet holding it).
            start.hop =
                Some(unsafe { run_and_finish(start.g, start.first.take().expect("first")) });
        }));
        if ok.is_err() {
            // SAFETY: no way to hand control anywhere coherent after a bug here.
            unsafe { ffi::Py_FatalError(c"corolet: internal error starting a greenlet".as_ptr()) };
        }
    }
    let mut start = Start {
        g,
        first: Some(first),
        hop: None,
    };
    // SAFETY: GIL held; `g` is alive (the thread's current reference is taken right away) and
    // its state blob is only touched by this thread.
    unsafe {
        let gr = green(g);
        // 3.10 keeps frames on the heap, not in the data stack.
        #[cfg(Py_3_11)]
        crate::readahead::started(gr, gr.fiber.data_stack().0);
        pystate::corolet_pystate_run_fresh(
            trampoline,
            &mut start as *mut Start as *mut c_void,
            gr.state.as_ptr(),
            gr.fiber.data_stack().0 as *mut c_void,
            gr.fiber.data_stack().1,
            (gr.fiber.stack_size() / stack::BYTES_PER_C_LEVEL).min(i32::MAX as usize) as i32,
            gr.fiber.stack_top() - gr.fiber.stack_size(),
            gr.fiber.stack_top(),
        );
    }
    start
        .hop
        .take()
        .expect("a finished greenlet names where to go")
}

/// Runs `g`'s `run` with the first payload, then resolves where its outcome goes.
unsafe fn run_and_finish(g: *mut ffi::PyObject, first: Payload) -> Hop<Payload> {
    // SAFETY: GIL held, on `g`'s own stack with a fresh interpreter state.
    unsafe {
        let ts = &*ThreadState::existing();
        ts.set_current(g);
        let gr = green(g);
        // The callable looked up by the starting switch replaces `run` now, on this stack:
        // dropping the old one may run code (even switch), which belongs in this greenlet.
        let looked_up = gr.starting_run.replace(ptr::null_mut());
        ffi::Py_XDECREF(gr.run.replace(looked_up));
        let mut first = first;
        let trace = ts.trace();
        let traced = if trace.is_null() {
            Ok(())
        } else {
            let event = match first.kind {
                Some(Kind::Raise(_)) => globals().str_throw,
                _ => globals().str_switch,
            };
            call_trace(ts, trace, event, first.origin, g)
        };
        // Borrowed: the greenlet holds `run` until it finishes. No reference of ours may stay
        // on this stack while it is suspended, or abandoning the stack would leak it.
        let run = gr.run.get();
        let kind = first.kind.take().expect("first payload");
        drop(first);
        let kind = match traced {
            Err(()) => {
                drop(kind);
                outcome(ptr::null_mut())
            }
            Ok(()) => match kind {
                Kind::Raise(e) => {
                    e.restore();
                    outcome(ptr::null_mut())
                }
                Kind::Value(v) => {
                    let r = pystate::corolet_call_run_one(run, v);
                    ffi::Py_DECREF(v);
                    outcome(r)
                }
                Kind::Args { args, kwargs } => {
                    let r = pystate::corolet_call_run(run, args, kwargs);
                    ffi::Py_DECREF(args);
                    ffi::Py_XDECREF(kwargs);
                    outcome(r)
                }
            },
        };
        ffi::Py_XDECREF(gr.run.replace(ptr::null_mut()));
        gr.life.set(Life::Dead);
        let mut payload = Payload::new(g, kind);
        let mut parent = gr.parent.get();
        loop {
            if parent.is_null() {
                ffi::PyErr_WriteUnraisable(g);
                ffi::Py_FatalError(msg::OUT_OF_PARENTS.as_ptr());
            }
            match resolve(ts, parent) {
                Ok(dest) => {
                    return Hop {
                        to: green(dest).hop_target(),
                        payload,
                    };
                }
                Err(()) => {
                    // The outcome could not be delivered there: the new error goes on up.
                    drop(payload);
                    payload = Payload::new(g, Kind::Raise(ErrState::fetch()));
                    parent = green(parent).parent.get();
                }
            }
        }
    }
}

/// What a greenlet's end sends on: `run`'s result (`r`, a new reference), or with `r` null
/// the pending exception, except that a `GreenletExit` is caught and becomes a plain value,
/// taken as greenlet takes it ([`ErrState::take_as_value`]).
///
/// # Safety
/// GIL held; with `r` null, the error indicator is set.
unsafe fn outcome(r: *mut ffi::PyObject) -> Kind {
    if !r.is_null() {
        return Kind::Value(r);
    }
    // SAFETY: GIL held; the error indicator is set.
    unsafe {
        if ffi::PyErr_ExceptionMatches(globals().exit) != 0 {
            Kind::Value(ErrState::take_as_value())
        } else {
            Kind::Raise(ErrState::fetch())
        }
    }
}

/// Throws `err` into `target`, as `target.throw(...)` does after checking its arguments.
///
/// # Safety
/// GIL held; `target` is a live greenlet.
pub unsafe fn throw_into(target: *mut ffi::PyObject, err: ErrState) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `target` is a live greenlet.
    unsafe {
        let kind = if green(target).life.get() == Life::Dead && err.matches(globals().exit) {
            // A dead greenlet turns GreenletExit into a plain return of the exception.
            let v = err.value();
            Kind::Value(if v.is_null() {
                none()
            } else {
                ffi::Py_NewRef(v)
            })
        } else {
            Kind::Raise(err)
        };
        switch_to(target, kind)
    }
}

/// Throws `GreenletExit` into a greenlet that lost its last reference.
///
/// # Safety
/// GIL held; `target` is a live (temporarily resurrected) greenlet of this thread.
pub unsafe fn kill(target: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `target` is a live (temporarily resurrected) greenlet.
    unsafe {
        let text = ffi::PyUnicode_FromString(msg::KILLING.as_ptr());
        if text.is_null() {
            return NULL;
        }
        let exc = ffi::PyObject_CallOneArg(globals().exit, text);
        ffi::Py_DECREF(text);
        if exc.is_null() {
            return NULL;
        }
        // As greenlet: the exception being handled where the greenlet is dropped is the
        // GreenletExit's context.
        let handled = crate::pyerr::handled_exception();
        if !handled.is_null() {
            ffi::PyException_SetContext(exc, handled); // steals `handled`
        }
        let err = ErrState::from_instance(exc);
        ffi::Py_DECREF(exc);
        throw_into(target, err)
    }
}

// ---------------------------------------------------------------------------------------
// Python entry points.

/// `greenlet.switch(*args, **kwargs)`.
///
/// # Safety
/// Called by CPython (vectorcall convention) with the GIL on a greenlet.
pub unsafe extern "C" fn py_switch(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: vectorcall-style call from CPython with the GIL.
        unsafe {
            let n = ffi::PyVectorcall_NARGS(nargsf as usize);
            let nkw = if kwnames.is_null() {
                0
            } else {
                ffi::PyTuple_GET_SIZE(kwnames)
            };
            let kind = if nkw == 0 && n == 1 {
                Kind::Value(ffi::Py_NewRef(*args))
            } else {
                let tuple = ffi::PyTuple_New(n);
                if tuple.is_null() {
                    return NULL;
                }
                for i in 0..n {
                    let item = *args.offset(i);
                    ffi::PyTuple_SET_ITEM(tuple, i, ffi::Py_NewRef(item));
                }
                let mut kwargs = ptr::null_mut();
                if nkw > 0 {
                    kwargs = ffi::PyDict_New();
                    if kwargs.is_null() {
                        ffi::Py_DECREF(tuple);
                        return NULL;
                    }
                    for i in 0..nkw {
                        let key = ffi::PyTuple_GET_ITEM(kwnames, i);
                        if ffi::PyDict_SetItem(kwargs, key, *args.offset(n + i)) < 0 {
                            ffi::Py_DECREF(tuple);
                            ffi::Py_DECREF(kwargs);
                            return NULL;
                        }
                    }
                }
                Kind::Args {
                    args: tuple,
                    kwargs,
                }
            };
            switch_to(slf, kind)
        }
    })
}

/// `greenlet.throw([typ[, val[, tb]]])`.
///
/// # Safety
/// Called by CPython (METH_VARARGS) with the GIL on a greenlet.
pub unsafe extern "C" fn py_throw(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: METH_VARARGS call from CPython with the GIL.
        unsafe {
            let mut typ: *mut ffi::PyObject = globals().exit;
            let mut val: *mut ffi::PyObject = ptr::null_mut();
            let mut tb: *mut ffi::PyObject = ptr::null_mut();
            if ffi::PyArg_UnpackTuple(args, c"throw".as_ptr(), 0, 3, &mut typ, &mut val, &mut tb)
                == 0
            {
                return NULL;
            }
            match normalize_throw(typ, val, tb) {
                Some(err) => throw_into(slf, err),
                None => NULL,
            }
        }
    })
}

/// Checks and normalises `throw()`'s arguments into an exception, as greenlet does (None with
/// the error set if they are not acceptable).
///
/// # Safety
/// GIL held; the arguments are live or null (`typ` must not be null).
pub unsafe fn normalize_throw(
    typ: *mut ffi::PyObject,
    val: *mut ffi::PyObject,
    tb: *mut ffi::PyObject,
) -> Option<ErrState> {
    // SAFETY: GIL held; borrowed live arguments.
    unsafe {
        let tb = if tb == ffi::Py_None() {
            ptr::null_mut()
        } else {
            tb
        };
        if !tb.is_null() && ffi::PyTraceBack_Check(tb) == 0 {
            set_error(ffi::PyExc_TypeError, msg::THROW_TRACEBACK);
            return None;
        }
        let val = if val.is_null() { ptr::null_mut() } else { val };
        if ffi::PyExceptionClass_Check(typ) != 0 {
            // Instantiates the class with `val` (None or absent: no arguments; a tuple: the
            // arguments; anything else: the one argument), as raising it would, but without
            // chaining: the thrower's handled exception is not the thrown one's context (an
            // instance given as `val` keeps the context it had).
            let given = if !val.is_null() && ffi::PyObject_TypeCheck(val, typ.cast()) != 0 {
                ffi::PyException_GetContext(val)
            } else {
                ptr::null_mut()
            };
            ffi::PyErr_SetObject(typ, if val.is_null() { ffi::Py_None() } else { val });
            let mut err = ErrState::fetch();
            let value = err.value();
            if !value.is_null() {
                ffi::PyException_SetContext(value, given); // steals `given`
            } else {
                ffi::Py_XDECREF(given);
            }
            if !tb.is_null() {
                err.set_traceback(tb);
            }
            Some(err)
        } else if ffi::PyExceptionInstance_Check(typ) != 0 {
            if !val.is_null() && val != ffi::Py_None() {
                set_error(ffi::PyExc_TypeError, msg::THROW_INSTANCE_VALUE);
                return None;
            }
            if !tb.is_null() {
                ffi::PyException_SetTraceback(typ, tb);
            }
            Some(ErrState::from_instance(typ))
        } else {
            let name = CStr::from_ptr((*ffi::Py_TYPE(typ)).tp_name).to_string_lossy();
            set_error_str(ffi::PyExc_TypeError, &msg::throw_not_exception(&name));
            None
        }
    }
}
