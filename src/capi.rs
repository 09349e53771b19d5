//! greenlet's C API: the `_C_API` capsule that C extensions import with
//! `PyGreenlet_Import()` (see `python/corolet/include/greenlet/greenlet.h`).
//!
//! The capsule holds a table of twelve pointers in greenlet 3.x's order: the type, the two
//! exceptions, then nine functions. Each function does what the matching Python operation
//! does, with greenlet's C-level conventions (NULL for "not given", `BadArgument` for a
//! non-greenlet).

use std::ffi::{c_int, c_void};
use std::ptr;

use pyo3::ffi;

use crate::greenlet::{self, globals, green, is_greenlet, Life};
use crate::pyerr::{guard, keep_forever, NULL};
use crate::switch::{self, Kind};

/// The capsule's name, which `PyCapsule_Import` resolves as `greenlet` + `._C_API`.
pub const CAPSULE_NAME: &std::ffi::CStr = c"greenlet._C_API";

unsafe fn check(g: *mut ffi::PyObject) -> bool {
    // SAFETY: GIL held by the callers' contract (C API functions need it).
    unsafe {
        if g.is_null() || !is_greenlet(g) {
            ffi::PyErr_BadArgument();
            return false;
        }
        true
    }
}

unsafe extern "C" fn new(
    run: *mut ffi::PyObject,
    parent: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called by C code with the GIL.
        unsafe { greenlet::new_with(run, parent) }
    })
}

unsafe extern "C" fn get_current() -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called by C code with the GIL.
        unsafe { crate::module::current_greenlet() }
    })
}

unsafe extern "C" fn throw(
    g: *mut ffi::PyObject,
    typ: *mut ffi::PyObject,
    val: *mut ffi::PyObject,
    tb: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called by C code with the GIL.
        unsafe {
            if !check(g) {
                return NULL;
            }
            match switch::normalize_throw(typ, val, tb) {
                Some(err) => switch::throw_into(g, err),
                None => NULL,
            }
        }
    })
}

unsafe extern "C" fn switch_(
    g: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guard(NULL, || {
        // SAFETY: called by C code with the GIL.
        unsafe {
            if !check(g) {
                return NULL;
            }
            let args = if args.is_null() {
                let empty = ffi::PyTuple_New(0);
                if empty.is_null() {
                    return NULL;
                }
                empty
            } else {
                ffi::Py_NewRef(args)
            };
            let kwargs = if kwargs.is_null() || ffi::PyDict_Check(kwargs) == 0 {
                ptr::null_mut()
            } else {
                ffi::Py_NewRef(kwargs)
            };
            switch::switch_to(g, Kind::Args { args, kwargs })
        }
    })
}

unsafe extern "C" fn set_parent(g: *mut ffi::PyObject, parent: *mut ffi::PyObject) -> c_int {
    guard(-1, || {
        // SAFETY: called by C code with the GIL.
        unsafe {
            if !check(g) {
                return -1;
            }
            greenlet::set_parent(g, parent)
        }
    })
}

// The predicates and `PyGreenlet_GetParent` check their argument as greenlet's do: anything
// but a greenlet sets `TypeError` (`PyErr_BadArgument`) and returns -1 (null).

unsafe extern "C" fn is_main(g: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by C code with the GIL; `check` makes sure `g` is a greenlet.
    unsafe {
        if !check(g) {
            return -1;
        }
        green(g).is_main as c_int
    }
}

unsafe extern "C" fn started(g: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by C code with the GIL; `check` makes sure `g` is a greenlet.
    unsafe {
        if !check(g) {
            return -1;
        }
        (green(g).life.get() != Life::Unstarted) as c_int
    }
}

unsafe extern "C" fn active(g: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by C code with the GIL; `check` makes sure `g` is a greenlet.
    unsafe {
        if !check(g) {
            return -1;
        }
        (green(g).life.get() == Life::Active) as c_int
    }
}

unsafe extern "C" fn get_parent(g: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by C code with the GIL; `check` makes sure `g` is a greenlet.
    unsafe {
        if !check(g) {
            return NULL;
        }
        let parent = green(g).parent.get();
        if parent.is_null() {
            NULL
        } else {
            ffi::Py_NewRef(parent)
        }
    }
}

/// Makes the `_C_API` capsule (a new reference), its table kept for the life of the process.
///
/// # Safety
/// GIL held; the greenlet type and exceptions exist (module initialised).
pub unsafe fn capsule() -> *mut ffi::PyObject {
    let g = globals();
    let table: [*mut c_void; 12] = [
        g.ty as *mut c_void,
        g.error as *mut c_void,
        g.exit as *mut c_void,
        new as *const () as *mut c_void,
        get_current as *const () as *mut c_void,
        throw as *const () as *mut c_void,
        switch_ as *const () as *mut c_void,
        set_parent as *const () as *mut c_void,
        is_main as *const () as *mut c_void,
        started as *const () as *mut c_void,
        active as *const () as *mut c_void,
        get_parent as *const () as *mut c_void,
    ];
    let table = keep_forever(Box::new(table));
    // SAFETY: GIL held; the table lives forever.
    unsafe { ffi::PyCapsule_New(table as *mut c_void, CAPSULE_NAME.as_ptr(), None) }
}
