//! `corolet.portal.Portal`: a coroutine whose steps run in a greenlet, the driver's side.
//!
//! Model: a `Portal` stands where the event loop expects a task's coroutine (asyncio's task
//! factory, Trio's `Task.coro`) or where a coroutine awaits (`with_portal_run`). Each
//! `send`/`throw` the loop makes is one *step*. The first step of an active portal creates
//! its greenlet *P* (a `PortalGreenlet` running a `PortalJob`, `portal_run.rs`) whose parent
//! is the greenlet making the step (the *driver*); a step switches the loop's value into the
//! greenlet waiting for it (`resume`: P, or a greenlet under P waiting in `await_`) and returns
//! what comes back: a tagged message (something to yield to the loop, and whom to resume
//! next), an untagged awaitable from the greenlet bridge protocol (awaited in a helper
//! greenlet under P, which hands P the outcome), or P's end (the job's result, raised as
//! `StopIteration`, or its exception, unchanged).
//!
//! Invariants:
//! - P runs in the context the first active step ran in: the task's own `Context` object.
//! - Before each step P's parent is made the current greenlet if it is not (an eager task's
//!   first step ran in the greenlet that created it): messages reach whoever waits for them.
//! - An inactive portal passes each step straight to its coroutine, in the driver;
//!   `active = True` takes effect at the next step.
//! - `close()` raises `GeneratorExit` wherever the task waits, again at each `await_` that
//!   sync code reaches while unwinding, until P has finished.
//! - No borrow of the object is held across a switch: code running during a step may read
//!   (or close) the very portal that is stepping.

use std::ptr;

use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

use crate::greenlet::{self, green, Life};
use crate::portal_run::{portal_globals, PortalJob, Raised};
use crate::pyerr::{ErrState, NULL};
use crate::pystate;
use crate::switch::{self, Kind};
use crate::thread::ThreadState;

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const FINISHED: u8 = 2;

/// What a step ended with: something to yield to the loop, or the job's result (which
/// `send`/`throw` raise as `StopIteration`, and `am_send` returns as `PYGEN_RETURN`, with no
/// exception made).
pub enum Step {
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
}

/// `send`'s and `throw`'s form of a step's end: the result raised as `StopIteration`.
fn as_iteration(step: PyResult<Step>) -> PyResult<Py<PyAny>> {
    match step? {
        Step::Yield(v) => Ok(v),
        Step::Return(v) => Err(PyStopIteration::new_err((v,))),
    }
}

#[pyclass(module = "corolet.portal", name = "Portal", weakref)]
pub struct Portal {
    coro: Option<Py<PyAny>>,
    sync: Option<Py<PyTuple>>,
    /// P, once the first active step made it.
    greenlet: Option<Py<PyAny>>,
    /// The greenlet the next step switches into; None until P exists and once finished.
    resume: Option<Py<PyAny>>,
    state: u8,
    #[pyo3(get, set)]
    active: bool,
}

/// What a step's switch brought back, taken apart (see the module's model).
fn handle(
    slf: &Bound<'_, Portal>,
    r: *mut ffi::PyObject,
    tag: *mut ffi::PyObject,
) -> PyResult<Step> {
    let py = slf.py();
    // SAFETY: GIL held; `r` and `tag` are owned (or null).
    unsafe {
        if r.is_null() {
            ffi::Py_XDECREF(tag);
            let err = PyErr::fetch(py);
            finish(slf);
            return Err(err);
        }
        let r = Bound::from_owned_ptr(py, r);
        if !tag.is_null() {
            set_resume(slf, Bound::from_owned_ptr(py, tag));
            return Ok(Step::Yield(r.unbind()));
        }
        let p = slf.borrow().greenlet.as_ref().map(|g| g.clone_ref(py));
        let dead = p
            .as_ref()
            .is_none_or(|p| green(p.as_ptr()).life.get() == Life::Dead);
        if dead {
            finish(slf);
            if let Ok(raised) = r.cast::<Raised>() {
                return Err(PyErr::from_value(raised.get().error.bind(py).clone()));
            }
            return Ok(Step::Return(r.unbind()));
        }
        bridge(slf, p.expect("alive"), r)
    }
}

/// A tagged message names the greenlet the loop's next answer goes to: None stands for P.
fn set_resume(slf: &Bound<'_, Portal>, tag: Bound<'_, PyAny>) {
    let py = slf.py();
    let mut me = slf.borrow_mut();
    me.resume = if tag.is_none() {
        me.greenlet.as_ref().map(|g| g.clone_ref(py))
    } else {
        Some(tag.unbind())
    };
}

/// P sent an awaitable by the bridge protocol: await it in a helper greenlet under P, which
/// switches the outcome back into P when it is done.
fn bridge(slf: &Bound<'_, Portal>, p: Py<PyAny>, aw: Bound<'_, PyAny>) -> PyResult<Step> {
    let py = slf.py();
    let run = pyo3::wrap_pyfunction!(crate::portal_run::_portal_await, py)?;
    // SAFETY: GIL held; live arguments.
    let helper =
        unsafe { Bound::from_owned_ptr_or_err(py, greenlet::new_with(run.as_ptr(), p.as_ptr()))? };
    slf.borrow_mut().resume = Some(helper.clone().unbind());
    step_into(slf, &helper, Kind::Value(aw.into_ptr()))
}

/// Switches `kind` into `target` and handles what comes back.
fn step_into(slf: &Bound<'_, Portal>, target: &Bound<'_, PyAny>, kind: Kind) -> PyResult<Step> {
    let mut tag = ptr::null_mut();
    // SAFETY: GIL held; `target` is a live greenlet.
    let r = unsafe { switch::switch_to_tagged(target.as_ptr(), kind, ptr::null_mut(), &mut tag) };
    handle(slf, r, tag)
}

fn finish(slf: &Bound<'_, Portal>) {
    let (g, resume, sync) = {
        let mut me = slf.borrow_mut();
        me.state = FINISHED;
        (me.greenlet.take(), me.resume.take(), me.sync.take())
    };
    drop((g, resume, sync)); // may run code: outside the borrow
}

/// Makes the current greenlet P's parent if it is not already.
fn rebind(slf: &Bound<'_, Portal>) -> PyResult<()> {
    let py = slf.py();
    // SAFETY: GIL held.
    let ts = unsafe { ThreadState::get() };
    if ts.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a live thread state, GIL held.
    let cur = unsafe { (*ts).current() };
    let p = {
        let me = slf.borrow();
        let Some(p) = me.greenlet.as_ref() else {
            return Ok(());
        };
        // SAFETY: GIL held; P is a live greenlet (the portal holds it).
        if unsafe { green(p.as_ptr()).parent.get() } == cur {
            return Ok(()); // every step but an eager task's second: no reference taken
        }
        p.clone_ref(py)
    };
    // SAFETY: GIL held; P is a live greenlet; setting the parent may run code (the old
    // parent's release), outside the borrow.
    if unsafe { greenlet::set_parent(p.as_ptr(), cur) } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// One step of an inactive portal, or a throw before P exists: straight to the coroutine.
fn direct(
    slf: &Bound<'_, Portal>,
    coro: &Bound<'_, PyAny>,
    err: Option<ErrState>,
    value: Bound<'_, PyAny>,
) -> PyResult<Step> {
    let py = slf.py();
    slf.borrow_mut().state = RUNNING;
    // SAFETY: GIL held; live objects.
    unsafe {
        let r = match err {
            None => {
                let mut out = ptr::null_mut();
                match ffi::PyIter_Send(coro.as_ptr(), value.as_ptr(), &mut out) {
                    ffi::PySendResult::PYGEN_NEXT => {
                        return Ok(Step::Yield(Bound::from_owned_ptr(py, out).unbind()))
                    }
                    ffi::PySendResult::PYGEN_RETURN => {
                        finish(slf);
                        return Ok(Step::Return(Bound::from_owned_ptr(py, out).unbind()));
                    }
                    _ => NULL,
                }
            }
            Some(err) => ffi::PyObject_CallMethodOneArg(
                coro.as_ptr(),
                portal_globals().str_throw,
                err.value(),
            ),
        };
        if r.is_null() {
            let e = PyErr::fetch(py);
            finish(slf);
            return Err(e);
        }
        Ok(Step::Yield(Bound::from_owned_ptr(py, r).unbind()))
    }
}

fn first_send(slf: &Bound<'_, Portal>, value: Bound<'_, PyAny>) -> PyResult<Step> {
    let py = slf.py();
    let (state, active, coro, sync) = {
        let me = slf.borrow();
        (
            me.state,
            me.active,
            me.coro.as_ref().map(|c| c.clone_ref(py)),
            me.sync.as_ref().map(|s| s.clone_ref(py)),
        )
    };
    if state == FINISHED {
        return Err(PyRuntimeError::new_err(
            "cannot reuse already awaited coroutine",
        ));
    }
    if !active {
        let Some(coro) = coro else {
            return Err(PyRuntimeError::new_err(
                "corolet.portal: an inactive portal with no coroutine",
            ));
        };
        return direct(slf, coro.bind(py), None, value);
    }
    if coro.is_none() && sync.is_none() {
        return Err(PyRuntimeError::new_err(
            "corolet.portal: a portal with nothing to run",
        ));
    }
    let job = Py::new(py, PortalJob::new(coro, sync))?;
    let pg = portal_globals();
    // SAFETY: GIL held; live objects.
    let p = unsafe {
        let ts = ThreadState::get();
        if ts.is_null() {
            return Err(PyErr::fetch(py));
        }
        let driver = (*ts).current();
        let p =
            Bound::from_owned_ptr_or_err(py, greenlet::new_of_type(pg.ty, job.as_ptr(), driver))?;
        // The task's own context (the driver runs in it), made to exist if it does not yet.
        let mut context = pystate::corolet_tstate_context();
        if context.is_null() {
            let copy = ffi::PyContext_CopyCurrent();
            if copy.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::Py_DECREF(copy);
            context = pystate::corolet_tstate_context();
        }
        // P is unstarted: its saved state takes the context (a new reference).
        pystate::corolet_pystate_set_context(
            green(p.as_ptr()).state.as_ptr(),
            ffi::Py_XNewRef(context),
        );
        p
    };
    {
        let mut me = slf.borrow_mut();
        me.greenlet = Some(p.clone().unbind());
        me.resume = Some(p.clone().unbind());
        me.state = RUNNING;
    }
    step_into(slf, &p, Kind::Value(value.into_ptr()))
}

fn send_impl(slf: &Bound<'_, Portal>, value: Bound<'_, PyAny>) -> PyResult<Step> {
    let py = slf.py();
    let resume = slf.borrow().resume.as_ref().map(|r| r.clone_ref(py));
    let Some(resume) = resume else {
        return first_send(slf, value);
    };
    rebind(slf)?;
    step_into(slf, resume.bind(py), Kind::Value(value.into_ptr()))
}

/// The type's `am_send` slot: what `PyIter_Send` calls, and so asyncio's C task at each
/// step (and an `await` of the portal): a step whose end is the job's result returns it as
/// `PYGEN_RETURN` instead of raising (and then catching) a `StopIteration`.
unsafe extern "C" fn am_send(
    obj: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    presult: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    crate::pyerr::guard(ffi::PySendResult::PYGEN_ERROR, || {
        // SAFETY: called by CPython with the GIL held, `obj` a live Portal (the slot is only
        // on its type), `arg` a live object, `presult` writable.
        unsafe {
            let py = Python::assume_attached();
            let slf = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<Portal>();
            let value = Bound::from_borrowed_ptr(py, arg);
            match send_impl(&slf, value) {
                Ok(Step::Yield(v)) => {
                    *presult = v.into_ptr();
                    ffi::PySendResult::PYGEN_NEXT
                }
                Ok(Step::Return(v)) => {
                    *presult = v.into_ptr();
                    ffi::PySendResult::PYGEN_RETURN
                }
                Err(e) => {
                    e.restore(py);
                    *presult = ptr::null_mut();
                    ffi::PySendResult::PYGEN_ERROR
                }
            }
        }
    })
}

/// Gives the `Portal` type its `am_send` slot (PyO3 has no way to declare it): once, at import,
/// before any instance exists.
pub fn install_am_send(ty: &Bound<'_, pyo3::types::PyType>) {
    // SAFETY: GIL held; `Portal` is a heap type, whose `tp_as_async` points at the async
    // methods inside its own heap-type object (set since it has `__await__`), ours to fill
    // before any instance exists; `PyType_Modified` drops cached lookups.
    unsafe {
        let t = ty.as_ptr() as *mut ffi::PyTypeObject;
        let methods = (*t).tp_as_async;
        assert!(!methods.is_null(), "Portal has __await__, so async methods");
        (*methods).am_send = Some(am_send);
        ffi::PyType_Modified(t);
    }
}

#[pymethods]
impl Portal {
    #[new]
    #[pyo3(signature = (coro, active = true, *, sync = None))]
    fn new(coro: Option<Py<PyAny>>, active: bool, sync: Option<Py<PyTuple>>) -> PyResult<Self> {
        if let Some(s) = &sync {
            // SAFETY: a tuple's size, GIL held (the argument is bound to this call).
            if unsafe { ffi::PyTuple_GET_SIZE(s.as_ptr()) } != 3 {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "Portal(sync=...) takes a (fn, args, kwargs) tuple",
                ));
            }
        }
        if coro.is_none() && sync.is_none() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "Portal() needs a coroutine or sync=(fn, args, kwargs)",
            ));
        }
        Ok(Portal {
            coro,
            sync,
            greenlet: None,
            resume: None,
            state: NOT_STARTED,
            active,
        })
    }

    #[pyo3(signature = (value = None))]
    fn send(slf: &Bound<'_, Self>, value: Option<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let value = value.unwrap_or_else(|| slf.py().None().into_bound(slf.py()));
        as_iteration(send_impl(slf, value))
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        as_iteration(send_impl(slf, slf.py().None().into_bound(slf.py())))
    }

    #[pyo3(signature = (typ, val = None, tb = None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        // SAFETY: GIL held; live (or null) arguments.
        let err = unsafe {
            switch::normalize_throw(
                typ.as_ptr(),
                val.as_ref().map_or(ptr::null_mut(), |v| v.as_ptr()),
                tb.as_ref().map_or(ptr::null_mut(), |t| t.as_ptr()),
            )
        };
        let Some(err) = err else {
            return Err(PyErr::fetch(py));
        };
        let (resume, state, coro) = {
            let me = slf.borrow();
            (
                me.resume.as_ref().map(|r| r.clone_ref(py)),
                me.state,
                me.coro.as_ref().map(|c| c.clone_ref(py)),
            )
        };
        let Some(resume) = resume else {
            if state == FINISHED {
                // SAFETY: GIL held.
                unsafe { err.restore() };
                return Err(PyErr::fetch(py));
            }
            let Some(coro) = coro else {
                // A sync portal not started: nothing to unwind.
                finish(slf);
                // SAFETY: GIL held.
                unsafe { err.restore() };
                return Err(PyErr::fetch(py));
            };
            return as_iteration(direct(
                slf,
                coro.bind(py),
                Some(err),
                py.None().into_bound(py),
            ));
        };
        rebind(slf)?;
        as_iteration(step_into(slf, resume.bind(py), Kind::Raise(err)))
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (resume, state, coro) = {
            let me = slf.borrow();
            (
                me.resume.as_ref().map(|r| r.clone_ref(py)),
                me.state,
                me.coro.as_ref().map(|c| c.clone_ref(py)),
            )
        };
        if resume.is_none() {
            if let Some(coro) = coro {
                if state != FINISHED {
                    coro.bind(py).call_method0("close")?;
                }
            }
            finish(slf);
            return Ok(());
        }
        rebind(slf)?;
        let exit = py.get_type::<pyo3::exceptions::PyGeneratorExit>().call0()?;
        loop {
            let resume = slf.borrow().resume.as_ref().map(|r| r.clone_ref(py));
            let Some(resume) = resume else { return Ok(()) };
            // SAFETY: GIL held; `exit` is a live exception instance.
            let err = unsafe { ErrState::from_instance(exit.as_ptr()) };
            let mut tag = ptr::null_mut();
            // SAFETY: GIL held; `resume` is a live greenlet.
            let r = unsafe {
                switch::switch_to_tagged(
                    resume.as_ptr(),
                    Kind::Raise(err),
                    ptr::null_mut(),
                    &mut tag,
                )
            };
            // SAFETY: GIL held; owned results.
            unsafe {
                if r.is_null() {
                    ffi::Py_XDECREF(tag);
                    let e = PyErr::fetch(py);
                    finish(slf);
                    if e.is_instance_of::<pyo3::exceptions::PyGeneratorExit>(py) {
                        return Ok(());
                    }
                    return Err(e);
                }
                let r = Bound::from_owned_ptr(py, r);
                if !tag.is_null() {
                    set_resume(slf, Bound::from_owned_ptr(py, tag));
                    continue;
                }
                let p = slf.borrow().greenlet.as_ref().map(|g| g.clone_ref(py));
                let dead = p
                    .as_ref()
                    .is_none_or(|p| green(p.as_ptr()).life.get() == Life::Dead);
                if dead {
                    finish(slf);
                    if let Ok(raised) = r.cast::<Raised>() {
                        let e = PyErr::from_value(raised.get().error.bind(py).clone());
                        if !e.is_instance_of::<pyo3::exceptions::PyGeneratorExit>(py) {
                            return Err(e);
                        }
                    }
                    return Ok(());
                }
                // An awaitable offered by the bridge protocol: nothing can be awaited now.
                if ffi::PyCoro_CheckExact(r.as_ptr()) != 0 {
                    r.call_method0("close")?;
                }
                slf.borrow_mut().resume = p;
            }
        }
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// End the portal's job, leaving the coroutine suspended where it is, to be stepped
    /// directly from now on. Only between steps, when no `await_` is pending.
    fn detach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (p, resume) = {
            let me = slf.borrow();
            (
                me.greenlet.as_ref().map(|g| g.clone_ref(py)),
                me.resume.as_ref().map(|r| r.clone_ref(py)),
            )
        };
        if let (Some(p), Some(resume)) = (p, resume) {
            // SAFETY: GIL held; P is a live greenlet.
            let alive = unsafe { green(p.as_ptr()).life.get() != Life::Dead };
            if alive && p.is(&resume) {
                rebind(slf)?;
                // SAFETY: GIL held; `_Detach` is a live exception class.
                let r = unsafe {
                    let exc = ffi::PyObject_CallNoArgs(portal_globals().detach);
                    if exc.is_null() {
                        return Err(PyErr::fetch(py));
                    }
                    let err = ErrState::from_instance(exc);
                    ffi::Py_DECREF(exc);
                    switch::switch_to(p.as_ptr(), Kind::Raise(err))
                };
                // SAFETY: GIL held; a new reference or null with the error set.
                drop(unsafe { Bound::from_owned_ptr_or_err(py, r) }?);
            }
        }
        finish(slf);
        let coro = slf.borrow_mut().coro.take();
        drop(coro);
        Ok(())
    }

    #[getter]
    fn cr_frame(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner_attr(py, "cr_frame", py.None())
    }

    #[getter]
    fn cr_running(&self, py: Python<'_>) -> PyResult<bool> {
        self.inner_flag(py, "cr_running")
    }

    #[getter]
    fn cr_suspended(&self, py: Python<'_>) -> PyResult<bool> {
        self.inner_flag(py, "cr_suspended")
    }

    #[getter]
    fn cr_await(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner_attr(py, "cr_await", py.None())
    }

    #[getter]
    fn cr_code(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner_attr(py, "cr_code", py.None())
    }

    #[getter]
    fn cr_origin(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.inner_attr(py, "cr_origin", py.None())
    }

    /// The coroutine's (asyncio's task repr reads it).
    #[getter]
    fn __name__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.named(py, "__name__")
    }

    /// The coroutine's.
    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.named(py, "__qualname__")
    }

    /// The coroutine this portal steps (None for a sync portal).
    #[getter]
    fn coroutine(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.coro.as_ref().map(|c| c.clone_ref(py))
    }

    /// The portal's greenlet once the first active step has made it, else None.
    #[getter]
    fn greenlet(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.greenlet.as_ref().map(|g| g.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let inner = match (&self.coro, &self.sync) {
            (Some(c), _) => c.bind(py).repr()?.to_string(),
            (None, Some(s)) => s.bind(py).repr()?.to_string(),
            (None, None) => "None".into(),
        };
        Ok(format!("<corolet.portal.Portal of {inner}>"))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for o in [&self.coro, &self.greenlet, &self.resume]
            .into_iter()
            .flatten()
        {
            visit.call(o)?;
        }
        if let Some(s) = &self.sync {
            visit.call(s)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.coro = None;
        self.sync = None;
        self.greenlet = None;
        self.resume = None;
    }
}

impl Portal {
    /// A portal of the coroutine `coro` (for the task factory, `portal_factory.rs`).
    pub fn of(coro: Py<PyAny>, active: bool) -> Self {
        Portal {
            coro: Some(coro),
            sync: None,
            greenlet: None,
            resume: None,
            state: NOT_STARTED,
            active,
        }
    }

    fn inner_attr(&self, py: Python<'_>, name: &str, default: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let Some(coro) = &self.coro else {
            return Ok(default);
        };
        match coro.bind(py).getattr(name) {
            Ok(v) => Ok(v.unbind()),
            Err(e) if e.is_instance_of::<PyAttributeError>(py) => Ok(default),
            Err(e) => Err(e),
        }
    }

    /// The inner coroutine's boolean attribute `name`, false when there is none.
    fn inner_flag(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        let no = false.into_pyobject(py)?.to_owned().into_any().unbind();
        self.inner_attr(py, name, no)?.bind(py).is_truthy()
    }

    fn named(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match &self.coro {
            Some(c) => Ok(c.bind(py).getattr(name)?.unbind()),
            None => Err(PyAttributeError::new_err(format!(
                "'Portal' object has no attribute '{name}'"
            ))),
        }
    }
}
