//! The `corolet._corolet` module: the greenlet type, its exceptions and functions, the
//! constants, the stack-size setting, and the private helpers greenlet's own test suite
//! imports from `greenlet._greenlet`.
//!
//! The hot functions (`getcurrent`, `settrace`, `gettrace`) are raw C functions; the rest use
//! PyO3.

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyImportError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::greenlet::{self, globals, green};
use crate::messages as msg;
use crate::pyerr::{guard, keep_forever, new_ref_or_none, set_error, NULL};
use crate::pystate;
use crate::stack;
use crate::thread::{ThreadState, MAIN_GREENLETS};

unsafe extern "C" fn getcurrent(
    _m: *mut ffi::PyObject,
    _a: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS call from CPython with the GIL.
    unsafe { current_greenlet() }
}

/// This thread's current greenlet (new reference); `RuntimeError` once the interpreter is
/// finalizing.
///
/// # Safety
/// GIL held.
#[inline]
pub unsafe fn current_greenlet() -> *mut ffi::PyObject {
    // SAFETY: GIL held by contract.
    unsafe {
        if pystate::corolet_is_finalizing() != 0 {
            set_error(ffi::PyExc_RuntimeError, msg::FINALIZING);
            return NULL;
        }
        let ts = ThreadState::get();
        if ts.is_null() {
            return NULL;
        }
        (*ts).drain_deleteme();
        ffi::Py_NewRef((*ts).current())
    }
}

unsafe extern "C" fn settrace(
    _m: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: METH_VARARGS call from CPython with the GIL.
        unsafe {
            let mut func: *mut ffi::PyObject = ptr::null_mut();
            if ffi::PyArg_ParseTuple(args, c"O".as_ptr(), &mut func) == 0 {
                return NULL;
            }
            let ts = ThreadState::get();
            if ts.is_null() {
                return NULL;
            }
            let new = if func == ffi::Py_None() {
                ptr::null_mut()
            } else {
                ffi::Py_NewRef(func)
            };
            let old = (*ts).replace_trace(new);
            if old.is_null() {
                crate::pyerr::none()
            } else {
                old
            }
        }
    })
}

unsafe extern "C" fn gettrace(
    _m: *mut ffi::PyObject,
    _a: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS call from CPython with the GIL.
    unsafe {
        let ts = ThreadState::get();
        if ts.is_null() {
            return NULL;
        }
        new_ref_or_none((*ts).trace())
    }
}

fn raw_function(
    m: &Bound<'_, PyModule>,
    name: &'static std::ffi::CStr,
    meth: ffi::PyCFunction,
    flags: c_int,
    doc: &'static std::ffi::CStr,
) -> PyResult<Py<PyAny>> {
    let def = keep_forever(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: meth },
        ml_flags: flags,
        ml_doc: doc.as_ptr(),
    }));
    let py = m.py();
    // SAFETY: GIL held; the def is leaked ('static); the module is live.
    unsafe {
        let f = ffi::PyCFunction_NewEx(def, m.as_ptr(), ptr::null_mut());
        Ok(Bound::from_owned_ptr_or_err(py, f)?.unbind())
    }
}

/// `stack_size([size])`: the usable stack size, in bytes, that new greenlets get; with an
/// argument, sets it (like `threading.stack_size`) and returns the previous value.
#[pyfunction]
#[pyo3(signature = (size=None))]
fn stack_size(size: Option<usize>) -> PyResult<usize> {
    match size {
        None => Ok(stack::stack_size()),
        Some(size) => stack::set_stack_size(size).map_err(PyValueError::new_err),
    }
}

/// Figures about the native stack pool: stacks in use, slabs read-write, slab releases so
/// far, how guard pages are installed (`"madvise"`: no extra mapping per stack; `"mprotect"`:
/// one; None: no stack yet).
#[pyfunction]
fn _stack_stats(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let stats = stack::pool_stats();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("live", stats.live)?;
    d.set_item("slabs", stats.slabs)?;
    d.set_item("releases", stats.releases)?;
    d.set_item(
        "guard",
        stats.guard_kind.map(|k| match k {
            stack::GuardKind::Madvise => "madvise",
            stack::GuardKind::Mprotect => "mprotect",
        }),
    )?;
    Ok(d)
}

/// Exited threads whose greenlets are still to be released.
#[pyfunction]
fn get_pending_cleanup_count() -> usize {
    crate::thread::dead_threads_pending()
}

#[pyfunction]
fn get_total_main_greenlets() -> usize {
    MAIN_GREENLETS.load(Ordering::Relaxed)
}

#[cfg(not(Py_3_13))]
#[pyfunction]
fn get_tstate_trash_delete_nesting() -> i32 {
    // SAFETY: reads a field of this thread's state with the GIL held.
    unsafe { pystate::corolet_trash_delete_nesting() }
}

#[pyfunction]
fn set_thread_local(
    py: Python<'_>,
    key: Bound<'_, PyAny>,
    value: Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: GIL held; the thread-state dict is borrowed.
    let dict = unsafe { ffi::PyThreadState_GetDict() };
    if dict.is_null() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "no thread-state dict",
        ));
    }
    // SAFETY: borrowed dict, GIL held.
    let dict = unsafe { Bound::from_borrowed_ptr(py, dict) };
    dict.set_item(key, value)
}

/// Turns the optional clean-up after thread exit on or off (see `thread.rs`).
#[pyfunction]
fn enable_optional_cleanup(enabled: bool) {
    crate::thread::enable_optional_cleanup(enabled);
}

/// Processor clocks spent on the optional clean-up after thread exit (None when off).
#[pyfunction]
fn get_clocks_used_doing_optional_cleanup() -> Option<usize> {
    crate::thread::clocks_used_doing_optional_cleanup()
}

unsafe extern "C" fn get_flag(obj: *mut ffi::PyObject, which: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: getter on a greenlet, GIL held.
    unsafe {
        let g = green(obj);
        let v = if which.is_null() {
            g.force_switch_error.get()
        } else {
            g.force_slp_switch_error.get()
        };
        ffi::PyBool_FromLong(v as _)
    }
}

unsafe extern "C" fn set_flag(
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    which: *mut c_void,
) -> c_int {
    // SAFETY: setter on a greenlet, GIL held.
    unsafe {
        if value.is_null() {
            set_error(ffi::PyExc_AttributeError, msg::DELETE_ATTRIBUTE);
            return -1;
        }
        let v = ffi::PyObject_IsTrue(value);
        if v < 0 {
            return -1;
        }
        let g = green(obj);
        if which.is_null() {
            g.force_switch_error.set(v != 0);
        } else {
            g.force_slp_switch_error.set(v != 0);
        }
        0
    }
}

/// `UnswitchableGreenlet`: a greenlet whose switches can be made to fail, for tests.
fn unswitchable_type(py: Python<'_>, base: *mut ffi::PyTypeObject) -> PyResult<Py<PyAny>> {
    let getsets = keep_forever(Box::new([
        ffi::PyGetSetDef {
            name: c"force_switch_error".as_ptr(),
            get: Some(get_flag),
            set: Some(set_flag),
            doc: ptr::null(),
            closure: ptr::null_mut(),
        },
        ffi::PyGetSetDef {
            name: c"force_slp_switch_error".as_ptr(),
            get: Some(get_flag),
            set: Some(set_flag),
            doc: ptr::null(),
            closure: ptr::dangling_mut::<c_void>(),
        },
        ffi::PyGetSetDef {
            name: ptr::null(),
            get: None,
            set: None,
            doc: ptr::null(),
            closure: ptr::null_mut(),
        },
    ]));
    let slots = keep_forever(Box::new([
        ffi::PyType_Slot {
            slot: ffi::Py_tp_getset,
            pfunc: getsets as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        },
    ]));
    let spec = keep_forever(Box::new(ffi::PyType_Spec {
        name: c"greenlet._greenlet.UnswitchableGreenlet".as_ptr(),
        basicsize: 0,
        itemsize: 0,
        // The GC flag and slots are inherited from the base.
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE) as _,
        slots: slots.cast::<ffi::PyType_Slot>(),
    }));
    // SAFETY: GIL held; leaked spec; `base` is our live type.
    unsafe {
        let ty = ffi::PyType_FromSpecWithBases(spec, base as *mut ffi::PyObject);
        Ok(Bound::from_owned_ptr_or_err(py, ty)?.unbind())
    }
}

/// Refuses to load into an interpreter other than the one the module was built for.
fn check_interpreter(py: Python<'_>) -> PyResult<()> {
    // SAFETY: a pure function of the compiled headers.
    let built = unsafe { pystate::corolet_compiled_version() } as u32;
    let sys = py.import("sys")?;
    let running: u32 = sys.getattr("hexversion")?.extract()?;
    let built_for = format!("{}.{}", built >> 24, (built >> 16) & 0xff);
    let running_v = format!("{}.{}", running >> 24, (running >> 16) & 0xff);
    if built >> 16 != running >> 16 {
        return Err(PyImportError::new_err(format!(
            "corolet was built for CPython {built_for} but is imported by CPython {running_v}; \
             rebuild it for this interpreter"
        )));
    }
    // SAFETY: a pure function of the compiled headers.
    let built_debug = unsafe { pystate::corolet_compiled_debug() } != 0;
    let running_debug = sys.hasattr("gettotalrefcount")?;
    if built_debug != running_debug {
        let kind = |debug: bool| {
            if debug {
                "a debug build (Py_DEBUG)"
            } else {
                "a release build (no Py_DEBUG)"
            }
        };
        let executable: String = sys.getattr("executable")?.extract()?;
        return Err(PyImportError::new_err(format!(
            "corolet was built for {} of CPython {built_for} but is imported by {} of \
             CPython {running_v} ({executable}); corolet reads CPython's internal state as \
             those headers define it, so rebuild it with this interpreter: `{executable} -m pip install <corolet's source>`, \
             or `maturin develop` in a virtualenv made with it",
            kind(built_debug),
            kind(running_debug)
        )));
    }
    let sysconfig = py.import("sysconfig")?;
    let gil_disabled = sysconfig.call_method1("get_config_var", ("Py_GIL_DISABLED",))?;
    if gil_disabled.is_truthy()? {
        return Err(PyImportError::new_err(
            "corolet does not support free-threaded CPython builds yet",
        ));
    }
    Ok(())
}

fn new_exception(
    py: Python<'_>,
    name: &'static std::ffi::CStr,
    base: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: GIL held.
    unsafe {
        let e = ffi::PyErr_NewException(name.as_ptr(), base, ptr::null_mut());
        if e.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(e)
    }
}

#[pymodule]
#[pyo3(name = "_corolet")]
fn corolet_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    check_interpreter(py)?;
    crate::overflow::install();
    crate::thread::install_fork_handler();
    // SAFETY: GIL held; the exception classes are kept forever by the module globals.
    let (exit, error) = unsafe {
        (
            new_exception(py, c"greenlet.GreenletExit", ffi::PyExc_BaseException)?,
            new_exception(py, c"greenlet.error", ffi::PyExc_Exception)?,
        )
    };
    // SAFETY: GIL held.
    let ty = unsafe { greenlet::init_type(exit, error) }.ok_or_else(|| PyErr::fetch(py))?;
    let g = globals();
    // SAFETY: GIL held; borrowed globals that live forever.
    let (ty_obj, exit, error) = unsafe {
        (
            Bound::from_borrowed_ptr(py, ty as *mut ffi::PyObject),
            Bound::from_borrowed_ptr(py, g.exit),
            Bound::from_borrowed_ptr(py, g.error),
        )
    };
    let getcurrent_f = raw_function(
        m,
        c"getcurrent",
        getcurrent,
        ffi::METH_NOARGS,
        c"getcurrent() -> greenlet\n\nReturns the current greenlet (i.e. the one which called this function).",
    )?;
    let settrace_f = raw_function(
        m,
        c"settrace",
        settrace,
        ffi::METH_VARARGS,
        c"settrace(callback) -> object\n\nSets a new tracing function and returns the previous one.",
    )?;
    let gettrace_f = raw_function(
        m,
        c"gettrace",
        gettrace,
        ffi::METH_NOARGS,
        c"gettrace() -> object\n\nReturns the currently set tracing function, or None.",
    )?;
    m.add("greenlet", &ty_obj)?;
    m.add("GreenletExit", &exit)?;
    m.add("error", &error)?;
    m.add("getcurrent", &getcurrent_f)?;
    m.add("settrace", &settrace_f)?;
    m.add("gettrace", &gettrace_f)?;
    // Mirrored on the type, as greenlet does (`greenlet.greenlet.getcurrent()`).
    // The type is static and immutable, so these go straight into its dictionary.
    // SAFETY: GIL held; a ready static type has its own dictionary.
    let ty_dict = unsafe { Bound::from_borrowed_ptr(py, (*ty).tp_dict) }.cast_into::<PyDict>()?;
    for (name, obj) in [
        ("getcurrent", getcurrent_f.bind(py).as_any()),
        ("settrace", settrace_f.bind(py).as_any()),
        ("gettrace", gettrace_f.bind(py).as_any()),
        ("GreenletExit", exit.as_any()),
        ("error", error.as_any()),
    ] {
        ty_dict.set_item(name, obj)?;
    }
    // SAFETY: GIL held; the type's dictionary changed behind its attribute cache.
    unsafe { ffi::PyType_Modified(ty) };
    for name in [
        "GREENLET_USE_GC",
        "GREENLET_USE_TRACING",
        "GREENLET_USE_CONTEXT_VARS",
        "GREENLET_USE_STANDARD_THREADING",
    ] {
        m.add(name, 1)?;
    }
    m.add(
        "CLOCKS_PER_SEC", // SAFETY: a constant of the C library.
        unsafe { pystate::corolet_clocks_per_sec() } as i64,
    )?;
    m.add("UnswitchableGreenlet", unswitchable_type(py, ty)?)?;
    crate::portal_run::init(m, ty)?;
    m.add_class::<crate::portal::Portal>()?;
    m.add_class::<crate::portal_factory::PortalTaskFactory>()?;
    crate::portal::install_am_send(&py.get_type::<crate::portal::Portal>());
    m.add_function(wrap_pyfunction!(crate::portal_run::_portal_await, m)?)?;
    m.add_function(wrap_pyfunction!(crate::portal_run::_portal_switch, m)?)?;
    m.add_function(wrap_pyfunction!(crate::portal_run::_portal_set_main, m)?)?;
    m.add_function(wrap_pyfunction!(crate::portal_run::_portal_step, m)?)?;
    // SAFETY: GIL held; the type and exceptions exist now.
    let capsule = unsafe { Bound::from_owned_ptr_or_err(py, crate::capi::capsule())? };
    m.add("_C_API", capsule)?;
    m.add_function(wrap_pyfunction!(stack_size, m)?)?;
    m.add_function(wrap_pyfunction!(_stack_stats, m)?)?;
    m.add_function(wrap_pyfunction!(get_pending_cleanup_count, m)?)?;
    m.add_function(wrap_pyfunction!(get_total_main_greenlets, m)?)?;
    #[cfg(not(Py_3_13))]
    m.add_function(wrap_pyfunction!(get_tstate_trash_delete_nesting, m)?)?;
    m.add_function(wrap_pyfunction!(set_thread_local, m)?)?;
    m.add_function(wrap_pyfunction!(enable_optional_cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(get_clocks_used_doing_optional_cleanup, m)?)?;
    Ok(())
}
