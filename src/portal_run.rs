//! The portal's greenlet side: the `PortalGreenlet` type, the job a portal greenlet runs (its
//! stepping loop), and `await_`'s native path.
//!
//! Model: a portal greenlet *P* runs a [`PortalJob`] (its `run`): the job steps the task's
//! coroutine and switches each thing it yields to P's parent, the *driver* (the greenlet the
//! event loop runs in, see `portal.rs`), which hands it to the loop; the loop's answer comes
//! back by the next switch. `await_` does the same from sync code in P or in a greenlet under
//! P, for the awaitable it was given. These messages carry a *tag* beside the value (by value
//! in the switch, `switch::switch_to_tagged`): the greenlet the driver resumes with the loop's
//! next answer, or `None` for P itself. An untagged switch from a live P is an awaitable sent
//! by the greenlet bridge protocol (SQLAlchemy's `await_only`); P's end (its return value,
//! or its exception) is the job's outcome.
//!
//! Invariants:
//! - Nothing on P's native stack holds a strong reference while P is suspended: the job
//!   (reported by P's `run` to the collector) holds the coroutine, so a cycle through an
//!   abandoned portal is seen and broken; the driver is read from P's parent at each switch.
//! - `await_` looks its portal up again before every switch (P can be re-parented, or the
//!   calling greenlet moved, between steps).
//! - The job's outcome is P's: a result, or an exception raised from P's last switch;
//!   `GreenletExit` (which a greenlet's end turns into a value) travels in a [`Raised`].

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::greenlet::{self, globals, green};
use crate::pyerr::{keep_forever, ErrState, NULL};
use crate::switch::{self, Kind};
use crate::thread::ThreadState;

/// Objects the portal code uses, made once at import.
pub struct PortalGlobals {
    /// The `PortalGreenlet` type (a heap subtype of the greenlet type).
    pub ty: *mut ffi::PyTypeObject,
    /// `_Detach`: thrown into P to end its loop without touching the coroutine.
    pub detach: *mut ffi::PyObject,
    pub str_throw: *mut ffi::PyObject,
    pub str_close: *mut ffi::PyObject,
    pub str_gr_context: *mut ffi::PyObject,
}
// SAFETY: objects kept forever, used with the GIL only.
unsafe impl Send for PortalGlobals {}
// SAFETY: as above.
unsafe impl Sync for PortalGlobals {}

static PORTAL: OnceLock<PortalGlobals> = OnceLock::new();

/// The portal's module-wide objects (the module must have been imported).
#[inline]
pub fn portal_globals() -> &'static PortalGlobals {
    PORTAL.get().expect("corolet._corolet is initialised")
}

/// Makes `PortalGreenlet` and `_Detach` and adds them (and the job type) to the module.
pub fn init(m: &Bound<'_, PyModule>, base: *mut ffi::PyTypeObject) -> PyResult<()> {
    let py = m.py();
    let slots = keep_forever(Box::new([
        ffi::PyType_Slot {
            slot: ffi::Py_tp_doc,
            pfunc: c"The greenlet a portal steps its task's coroutine in; a spawned greenlet in \
SQLAlchemy's sense (its parent is the driver), so greenlet bridges' await_only works in it."
                .as_ptr() as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        },
    ]));
    let spec = keep_forever(Box::new(ffi::PyType_Spec {
        name: c"corolet.portal.PortalGreenlet".as_ptr(),
        basicsize: 0,
        itemsize: 0,
        // The GC flag, layout and slots are the base's (no __dict__ of its own: the base
        // has one).
        // Immutable: no `run` can be added to it, so starting switches read `run` directly
        // (`greenlet::register_plain_subtype`).
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE | ffi::Py_TPFLAGS_IMMUTABLETYPE)
            as _,
        slots: slots.cast::<ffi::PyType_Slot>(),
    }));
    // SAFETY: GIL held; leaked spec; `base` is our live type.
    let ty = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyType_FromSpecWithBases(spec, base as *mut ffi::PyObject),
        )?
    };
    // SAFETY: GIL held; a ready heap type has its own dictionary, changed here behind its
    // attribute cache before any instance exists.
    unsafe {
        let dict = (*(ty.as_ptr() as *mut ffi::PyTypeObject)).tp_dict;
        if ffi::PyDict_SetItemString(
            dict,
            c"__sqlalchemy_greenlet_provider__".as_ptr(),
            ffi::Py_True(),
        ) < 0
        {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(ty.as_ptr() as *mut ffi::PyTypeObject);
    }
    greenlet::register_plain_subtype(ty.as_ptr() as *mut ffi::PyTypeObject);
    // SAFETY: GIL held.
    let detach = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyErr_NewExceptionWithDoc(
                c"corolet.portal._Detach".as_ptr(),
                c"Thrown into a portal's greenlet to end its stepping loop without touching the coroutine.".as_ptr(),
                ffi::PyExc_BaseException,
                ptr::null_mut(),
            ),
        )?
    };
    m.add("PortalGreenlet", &ty)?;
    m.add("_Detach", &detach)?;
    let intern = |s: &str| pyo3::types::PyString::intern(py, s).unbind().into_ptr();
    let _ = PORTAL.set(PortalGlobals {
        ty: ty.clone().unbind().into_ptr() as *mut ffi::PyTypeObject,
        detach: detach.unbind().into_ptr(),
        str_throw: intern("throw"),
        str_close: intern("close"),
        str_gr_context: intern("gr_context"),
    });
    m.add_class::<PortalJob>()?;
    m.add_class::<Raised>()?;
    Ok(())
}

/// Whether `obj` is exactly a portal greenlet.
///
/// # Safety
/// GIL held; `obj` live.
#[inline]
pub unsafe fn is_portal_greenlet(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: live object.
    unsafe { ffi::Py_TYPE(obj) == portal_globals().ty }
}

/// The portal greenlet `g` is, or runs under (borrowed; null if none).
///
/// # Safety
/// GIL held; `g` a live greenlet.
pub unsafe fn portal_of(mut g: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: every greenlet on a parent chain is kept alive by its child.
    unsafe {
        while !g.is_null() {
            if is_portal_greenlet(g) {
                return g;
            }
            g = green(g).parent.get();
        }
        ptr::null_mut()
    }
}

/// A `GreenletExit` that ended a portal's job, which a greenlet's end would otherwise turn
/// into a plain value: the driver raises it.
#[pyclass(module = "corolet.portal", frozen)]
pub struct Raised {
    #[pyo3(get)]
    pub error: Py<PyAny>,
}

/// What a portal greenlet runs: step `coro` to its end, or call the sync `(fn, args,
/// kwargs)`. Called once, with the first step's value.
#[pyclass(module = "corolet.portal", frozen)]
pub struct PortalJob {
    coro: Option<Py<PyAny>>,
    sync: Option<Py<PyTuple>>,
}

impl PortalJob {
    pub fn new(coro: Option<Py<PyAny>>, sync: Option<Py<PyTuple>>) -> Self {
        PortalJob { coro, sync }
    }
}

/// `corolet.portal._core._portal_main(value)`, the Python frame at the bottom of P that
/// holds the loop's answers (see [`step_to_end`]); set once by `_portal_set_main`.
static PORTAL_MAIN: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());

/// `_portal_set_main(fn)`: the function P's job calls to step its coroutine from a Python
/// frame (`fn(value)`, which calls `_portal_step(held)`); kept forever.
#[pyfunction]
pub fn _portal_set_main(f: Bound<'_, PyAny>) {
    let old = PORTAL_MAIN.swap(f.unbind().into_ptr(), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: GIL held (a pyfunction); the reference the static held.
        unsafe { ffi::Py_DECREF(old) };
    }
}

#[pymethods]
impl PortalJob {
    fn __call__(slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let outcome = match (&me.coro, &me.sync) {
            (Some(_), _) => {
                let main = PORTAL_MAIN.load(Ordering::Acquire);
                if main.is_null() {
                    // corolet.portal._core not imported: step without the holding frame.
                    me.step(py, &pyo3::types::PyList::new(py, [value])?)
                } else {
                    // SAFETY: GIL held; `main` is kept forever, `value` is live. The job is
                    // not an argument: a native call's arguments stay on the calling frame's
                    // evaluation stack, which the collector does not see, and would keep an
                    // abandoned portal's cycle alive; `_portal_step` finds the job as P's run.
                    unsafe {
                        let r = ffi::PyObject_CallOneArg(main, value.as_ptr());
                        Bound::from_owned_ptr_or_err(py, r).map(Bound::unbind)
                    }
                }
            }
            (None, Some(sync)) => call_sync(sync.bind(py)),
            (None, None) => Err(PyRuntimeError::new_err(
                "corolet.portal: a job with no work",
            )),
        };
        // SAFETY: GIL held; `exit` is a live exception class, kept forever.
        let exit = unsafe { Bound::from_borrowed_ptr(py, globals().exit) };
        match outcome {
            Err(e) if e.is_instance(py, &exit) => Ok(Py::new(
                py,
                Raised {
                    error: e.into_value(py).into_any(),
                },
            )?
            .into_any()),
            other => other,
        }
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(c) = &self.coro {
            visit.call(c)?;
        }
        if let Some(s) = &self.sync {
            visit.call(s)?;
        }
        Ok(())
    }
}

impl PortalJob {
    /// Steps the job's coroutine to its end, starting with `held[0]`, each answer of the
    /// loop kept in `held` (see [`step_to_end`]).
    fn step(&self, py: Python<'_>, held: &Bound<'_, pyo3::types::PyList>) -> PyResult<Py<PyAny>> {
        let Some(coro) = &self.coro else {
            return Err(PyRuntimeError::new_err(
                "corolet.portal: a job with no coroutine",
            ));
        };
        let first = held.get_item(0)?;
        if held.len() != 1 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "PortalJob.step() needs a list of one item",
            ));
        }
        // SAFETY: GIL held; the job (P's `run`) keeps `coro` alive while it runs, `held` is
        // a list of one item that the calling frame keeps.
        let r = unsafe { step_to_end(coro.as_ptr(), first.into_ptr(), true, held.as_ptr()) };
        // SAFETY: GIL held; a new reference or null with the error set.
        unsafe { Bound::from_owned_ptr_or_err(py, r) }.map(Bound::unbind)
    }
}

/// `_portal_step(held)`: called by `_portal_main` in a portal's greenlet P: steps P's job
/// (P's `run`, which P holds until it finishes) to its end, from `held[0]`, each answer kept
/// in `held` (see [`step_to_end`]).
#[pyfunction]
pub fn _portal_step(py: Python<'_>, held: Bound<'_, pyo3::types::PyList>) -> PyResult<Py<PyAny>> {
    // SAFETY: GIL held; the current greenlet is live, its `run` (if any) held by it.
    let job = unsafe {
        let ts = ThreadState::get();
        if ts.is_null() {
            return Err(PyErr::fetch(py));
        }
        let run = green((*ts).current()).run.get();
        if run.is_null() {
            return Err(PyRuntimeError::new_err(
                "_portal_step() runs only in a portal's greenlet",
            ));
        }
        // Borrowed, not owned: a reference of ours on this stack while P is suspended would be
        // one the collector cannot see, keeping an abandoned portal's cycle alive.
        pyo3::Borrowed::from_ptr(py, run)
    };
    let job = job
        .cast::<PortalJob>()
        .map_err(|_| PyRuntimeError::new_err("_portal_step() runs only in a portal's greenlet"))?;
    job.get().step(py, &held)
}

fn call_sync(job: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
    let py = job.py();
    let f = job.get_item(0)?;
    let args = job.get_item(1)?.cast_into::<PyTuple>()?;
    let kwargs = job.get_item(2)?;
    let kwargs = kwargs.cast::<PyDict>().ok();
    match f.call(args, kwargs) {
        Ok(r) => Ok(r.unbind()),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            // Would read as the end of the awaiting coroutine.
            let err = PyRuntimeError::new_err(format!("{} raised StopIteration", f.repr()?));
            err.set_cause(py, Some(e));
            Err(err)
        }
        Err(e) => Err(e),
    }
}

/// One step of `aw`: send `value` (stolen), or throw `err`. Returns the status and the
/// yielded or returned object (new reference; null on error, with it set).
///
/// # Safety
/// GIL held; `aw` live.
unsafe fn step(
    aw: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    err: Option<ErrState>,
) -> (ffi::PySendResult, *mut ffi::PyObject) {
    // SAFETY: GIL held; owned `value`, live `aw`.
    unsafe {
        match err {
            None => {
                let mut out = ptr::null_mut();
                let status = ffi::PyIter_Send(aw, value, &mut out);
                ffi::Py_DECREF(value);
                (status, out)
            }
            Some(err) => {
                let exc = ffi::Py_NewRef(err.value());
                drop(err);
                let r = ffi::PyObject_CallMethodOneArg(aw, portal_globals().str_throw, exc);
                ffi::Py_DECREF(exc);
                if !r.is_null() {
                    return (ffi::PySendResult::PYGEN_NEXT, r);
                }
                if ffi::PyErr_ExceptionMatches(ffi::PyExc_StopIteration) != 0 {
                    let stop = ErrState::fetch();
                    let v = ffi::PyObject_GetAttrString(stop.value(), c"value".as_ptr());
                    return if v.is_null() {
                        (ffi::PySendResult::PYGEN_ERROR, NULL)
                    } else {
                        (ffi::PySendResult::PYGEN_RETURN, v)
                    };
                }
                (ffi::PySendResult::PYGEN_ERROR, NULL)
            }
        }
    }
}

/// Keeps `answer` (borrowed; a value or an exception the loop sent in, or None) as item 0 of
/// `held`, the list the calling Python frame holds (see [`step_to_end`]), dropping the one
/// before.
///
/// # Safety
/// GIL held; `held` is a list of one item, `answer` live.
unsafe fn hold(held: *mut ffi::PyObject, answer: *mut ffi::PyObject) {
    // SAFETY: GIL held; index 0 exists, so SetItem cannot fail: it steals the new reference
    // and drops the previous item (which may run code, as a frame's rebinding would).
    unsafe {
        ffi::PyList_SetItem(held, 0, ffi::Py_NewRef(answer));
    }
}

/// Steps `aw` until it finishes, switching each thing it yields to the driver of the
/// portal the running greenlet is (or runs under). `value` (stolen) goes in first.
/// `in_job`: the loop of P's own job (a `GeneratorExit` or `GreenletExit` arriving at a
/// switch closes `aw`; `_Detach` ends the loop). Returns the result, or null with the error.
///
/// `held`: a one-item list that a Python frame of the caller (the frame `aw` runs above)
/// holds as a local; each answer of the loop (value or exception) is item 0 while `aw` runs
/// the step it answers, as the local of a stepping loop written in Python would keep it.
/// This matters for what is freed where: an answer (trio's `Error(Cancelled)` of a timeout)
/// can hold a traceback whose frames link back, once `aw` has finished, to that caller frame,
/// so the answer and the frames it keeps (and their locals) form a cycle, collected by the
/// garbage collector in whatever task runs it, as under greenback; without it they would be
/// freed by the event loop itself, between tasks, where a finalizer that awaits (greenback's
/// `autoawait` `__del__`) cannot run. Item 0 goes back to None before each switch away: the
/// list is also on the caller frame's evaluation stack (the argument of this native call),
/// which the collector does not see, so what it holds while the greenlet is suspended would
/// stay alive even in an abandoned cycle.
///
/// # Safety
/// GIL held; `aw` live for the call (the caller holds it); `held` a list of one item.
pub unsafe fn step_to_end(
    aw: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    in_job: bool,
    held: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held; every reference below is owned or borrowed from a live object.
    unsafe {
        let mut value = value;
        let mut err: Option<ErrState> = None;
        loop {
            let (status, out) = step(aw, value, err.take());
            match status {
                ffi::PySendResult::PYGEN_NEXT => {}
                ffi::PySendResult::PYGEN_RETURN => return out,
                _ => return NULL,
            }
            let ts = ThreadState::get();
            if ts.is_null() {
                ffi::Py_DECREF(out);
                return NULL;
            }
            let cur = (*ts).current();
            let portal = portal_of(cur);
            let driver = if portal.is_null() {
                ptr::null_mut()
            } else {
                green(portal).parent.get()
            };
            if driver.is_null() {
                ffi::Py_DECREF(out);
                crate::pyerr::set_error(
                    ffi::PyExc_RuntimeError,
                    c"corolet.portal: the awaiting greenlet is no longer under a portal with a driver",
                );
                value = ptr::null_mut();
                err = Some(ErrState::fetch());
                continue;
            }
            let tag = if cur == portal {
                ffi::Py_NewRef(ffi::Py_None())
            } else {
                ffi::Py_NewRef(cur)
            };
            hold(held, ffi::Py_None());
            let mut received = ptr::null_mut();
            let r = switch::switch_to_tagged(driver, Kind::Value(out), tag, &mut received);
            ffi::Py_XDECREF(received);
            if !r.is_null() {
                hold(held, r);
                value = r;
                continue;
            }
            if in_job {
                let pg = portal_globals();
                if ffi::PyErr_ExceptionMatches(pg.detach) != 0 {
                    ffi::PyErr_Clear();
                    return crate::pyerr::none();
                }
                if ffi::PyErr_ExceptionMatches(ffi::PyExc_GeneratorExit) != 0
                    || ffi::PyErr_ExceptionMatches(globals().exit) != 0
                {
                    let pending = ErrState::fetch();
                    let closed = ffi::PyObject_CallMethodNoArgs(aw, pg.str_close);
                    if closed.is_null() {
                        return NULL; // the coroutine ignored it: RuntimeError
                    }
                    ffi::Py_DECREF(closed);
                    pending.restore();
                    return NULL;
                }
            }
            value = ptr::null_mut();
            let e = ErrState::fetch();
            hold(held, e.value());
            err = Some(e);
        }
    }
}

/// `_portal_await(aw, held=None)`: `await_`'s native path. A native coroutine awaited from a
/// portal is stepped here, each answer of the loop kept in `held` (a one-item list, a local
/// of the calling frame: see [`step_to_end`]; a list of this call's own when None, as for the
/// helper greenlet of `Portal`'s bridge, which has no frame of its own); anything else goes
/// to `corolet.portal._await._await_slow`.
#[pyfunction]
#[pyo3(signature = (aw, held = None))]
pub fn _portal_await(
    py: Python<'_>,
    aw: Bound<'_, PyAny>,
    held: Option<Bound<'_, pyo3::types::PyList>>,
) -> PyResult<Py<PyAny>> {
    let held = match held {
        Some(h) => h,
        None => pyo3::types::PyList::new(py, [py.None()])?,
    };
    // SAFETY: GIL held; `aw` is held by this call.
    unsafe {
        let ts = ThreadState::get();
        if ts.is_null() {
            return Err(PyErr::fetch(py));
        }
        let cur = (*ts).current();
        if ffi::PyCoro_CheckExact(aw.as_ptr()) == 0 || portal_of(cur).is_null() {
            return py
                .import("corolet.portal._await")?
                .getattr("_await_slow")?
                .call1((aw,))
                .map(Bound::unbind);
        }
        if held.len() != 1 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "_portal_await() needs a list of one item to hold the loop's answers in",
            ));
        }
        let r = step_to_end(aw.as_ptr(), crate::pyerr::none(), false, held.as_ptr());
        Bound::from_owned_ptr_or_err(py, r).map(Bound::unbind)
    }
}

/// `_portal_switch(driver, yielded, resume)`: the message of `await_`'s Python path: switch
/// `yielded` to the driver, naming `resume` (None: the portal greenlet itself).
#[pyfunction]
pub fn _portal_switch(
    py: Python<'_>,
    driver: Bound<'_, PyAny>,
    yielded: Bound<'_, PyAny>,
    resume: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    // SAFETY: GIL held; live arguments.
    unsafe {
        if driver.is_none() || !greenlet::is_greenlet(driver.as_ptr()) {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "_portal_switch() needs a greenlet to switch to",
            ));
        }
        let mut received = ptr::null_mut();
        let r = switch::switch_to_tagged(
            driver.as_ptr(),
            Kind::Value(yielded.into_ptr()),
            resume.into_ptr(),
            &mut received,
        );
        ffi::Py_XDECREF(received);
        Bound::from_owned_ptr_or_err(py, r).map(Bound::unbind)
    }
}
