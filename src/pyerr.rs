//! Small helpers over the raw C API: owned references, the error indicator as a value, and
//! a guard that keeps Rust panics from crossing into C.
//!
//! The switching code moves exceptions between greenlets as values ([`ErrState`]): taken out
//! of the error indicator in one greenlet, put back in another.

use std::ffi::CStr;
use std::ptr;

use pyo3::ffi;

/// The pending exception, taken out of the error indicator.
pub struct ErrState {
    #[cfg(Py_3_12)]
    exc: *mut ffi::PyObject,
    #[cfg(not(Py_3_12))]
    parts: [*mut ffi::PyObject; 3],
}

impl ErrState {
    /// Takes the pending exception (the error indicator must be set). Normalised.
    ///
    /// # Safety
    /// GIL held.
    pub unsafe fn fetch() -> ErrState {
        #[cfg(Py_3_12)]
        // SAFETY: GIL held by contract.
        unsafe {
            ErrState {
                exc: ffi::PyErr_GetRaisedException(),
            }
        }
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held by contract; the three pointers receive owned references.
        unsafe {
            let mut parts = [ptr::null_mut(); 3];
            ffi::PyErr_Fetch(&mut parts[0], &mut parts[1], &mut parts[2]);
            ffi::PyErr_NormalizeException(&mut parts[0], &mut parts[1], &mut parts[2]);
            if !parts[2].is_null() && !parts[1].is_null() {
                ffi::PyException_SetTraceback(parts[1], parts[2]);
            }
            ErrState { parts }
        }
    }

    /// Takes the pending exception (the error indicator must be set) the way greenlet takes a
    /// `GreenletExit` that ended a greenlet, to hand it to the parent as a plain value: the
    /// exception object as it stands, or `None`. Before 3.12 the traceback the indicator
    /// holds is dropped, not attached (greenlet's `PyErr_Fetch` discards it), so the value's
    /// `__traceback__` is whatever it was when the exception was last caught; from 3.12 the
    /// traceback lives on the exception and stays. Returns a new reference.
    ///
    /// # Safety
    /// GIL held.
    pub unsafe fn take_as_value() -> *mut ffi::PyObject {
        #[cfg(Py_3_12)]
        // SAFETY: GIL held by contract.
        let value = unsafe { ffi::PyErr_GetRaisedException() };
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held by contract; the three pointers receive owned references.
        let value = unsafe {
            let mut parts = [ptr::null_mut(); 3];
            ffi::PyErr_Fetch(&mut parts[0], &mut parts[1], &mut parts[2]);
            ffi::Py_XDECREF(parts[0]);
            ffi::Py_XDECREF(parts[2]);
            parts[1]
        };
        if value.is_null() {
            none()
        } else {
            value
        }
    }

    /// Takes the pending exception if there is one (to put back later with `restore`).
    ///
    /// # Safety
    /// GIL held.
    pub unsafe fn take_pending() -> Option<ErrState> {
        // SAFETY: GIL held by contract.
        unsafe {
            if ffi::PyErr_Occurred().is_null() {
                None
            } else {
                Some(Self::fetch())
            }
        }
    }

    /// Builds the exception state from an exception instance (a new reference is taken).
    ///
    /// # Safety
    /// GIL held; `exc` is an exception instance.
    pub unsafe fn from_instance(exc: *mut ffi::PyObject) -> ErrState {
        #[cfg(Py_3_12)]
        // SAFETY: GIL held; taking a new reference to a live object.
        unsafe {
            ErrState {
                exc: ffi::Py_NewRef(exc),
            }
        }
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held; the class and traceback of a live instance.
        unsafe {
            let typ = ffi::Py_NewRef(ffi::Py_TYPE(exc) as *mut ffi::PyObject);
            let tb = ffi::PyException_GetTraceback(exc);
            ErrState {
                parts: [typ, ffi::Py_NewRef(exc), tb],
            }
        }
    }

    /// Puts the exception back into the error indicator.
    ///
    /// # Safety
    /// GIL held.
    pub unsafe fn restore(self) {
        let this = std::mem::ManuallyDrop::new(self);
        #[cfg(Py_3_12)]
        // SAFETY: GIL held; the reference moves into the indicator.
        unsafe {
            ffi::PyErr_SetRaisedException(this.exc)
        };
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held; the references move into the indicator.
        unsafe {
            ffi::PyErr_Restore(this.parts[0], this.parts[1], this.parts[2])
        };
    }

    /// Attaches `tb` (a traceback object) to the exception.
    ///
    /// # Safety
    /// GIL held; `tb` is a live traceback.
    pub unsafe fn set_traceback(&mut self, tb: *mut ffi::PyObject) {
        // SAFETY: GIL held; live objects; the old traceback reference is released.
        unsafe {
            let value = self.value();
            if !value.is_null() {
                ffi::PyException_SetTraceback(value, tb);
            }
            #[cfg(not(Py_3_12))]
            {
                ffi::Py_XDECREF(self.parts[2]);
                self.parts[2] = ffi::Py_NewRef(tb);
            }
        }
    }

    /// Borrowed exception instance (may be null before 3.12 for odd raisers).
    pub fn value(&self) -> *mut ffi::PyObject {
        #[cfg(Py_3_12)]
        {
            self.exc
        }
        #[cfg(not(Py_3_12))]
        {
            self.parts[1]
        }
    }

    /// Whether the exception is an instance of `class`.
    ///
    /// # Safety
    /// GIL held.
    pub unsafe fn matches(&self, class: *mut ffi::PyObject) -> bool {
        let value = self.value();
        // SAFETY: GIL held; live objects.
        unsafe {
            if value.is_null() {
                #[cfg(not(Py_3_12))]
                return ffi::PyErr_GivenExceptionMatches(self.parts[0], class) != 0;
                #[cfg(Py_3_12)]
                return false;
            }
            ffi::PyErr_GivenExceptionMatches(value, class) != 0
        }
    }
}

impl Drop for ErrState {
    fn drop(&mut self) {
        // SAFETY: an ErrState only exists with the GIL held (all code handling it runs in
        // greenlet methods).
        unsafe {
            #[cfg(Py_3_12)]
            ffi::Py_XDECREF(self.exc);
            #[cfg(not(Py_3_12))]
            for p in self.parts {
                ffi::Py_XDECREF(p);
            }
        }
    }
}

/// Sets `exc` with `msg` as the pending error.
///
/// # Safety
/// GIL held; `exc` is an exception class.
pub unsafe fn set_error(exc: *mut ffi::PyObject, msg: &CStr) {
    // SAFETY: GIL held by contract.
    unsafe { ffi::PyErr_SetString(exc, msg.as_ptr()) };
}

/// Sets `exc` with a Rust-formatted message as the pending error.
///
/// # Safety
/// GIL held; `exc` is an exception class.
pub unsafe fn set_error_str(exc: *mut ffi::PyObject, msg: &str) {
    let msg = std::ffi::CString::new(msg.replace('\0', "\\0")).expect("no NUL");
    // SAFETY: GIL held by contract.
    unsafe { ffi::PyErr_SetString(exc, msg.as_ptr()) };
}

/// Runs `f`, turning a Rust panic into a `SystemError` and returning `on_panic`, so that no
/// panic unwinds into the C frames of the interpreter.
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // SAFETY: every caller of `guard` is an entry point called by CPython with the
            // GIL held.
            unsafe {
                set_error_str(
                    ffi::PyExc_SystemError,
                    &format!("corolet internal error (please report): {what}"),
                )
            };
            on_panic
        }
    }
}

/// `None`, as a new reference.
pub fn none() -> *mut ffi::PyObject {
    // SAFETY: Py_None is immortal/static; taking a reference needs no GIL on 3.12+ and is
    // done with the GIL held everywhere we call it.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

/// A new reference to `obj`, or to `None` if it is null.
///
/// # Safety
/// GIL held; `obj` is null or live.
pub unsafe fn new_ref_or_none(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    if obj.is_null() {
        none()
    } else {
        // SAFETY: live object, GIL held.
        unsafe { ffi::Py_NewRef(obj) }
    }
}

/// Addresses of allocations kept for the life of the process (type specs, method tables),
/// held here so that leak checkers see them as reachable, not lost.
static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Keeps `value` for the life of the process and returns a pointer to it.
pub fn keep_forever<T: ?Sized>(value: Box<T>) -> *mut T {
    let ptr = Box::into_raw(value);
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ptr.cast::<u8>() as usize);
    ptr
}

/// Null pointer shorthand.
pub const NULL: *mut ffi::PyObject = ptr::null_mut();

/// The exception being handled (`sys.exception()`), a new reference, or null if none.
///
/// # Safety
/// GIL held.
pub unsafe fn handled_exception() -> *mut ffi::PyObject {
    #[cfg(Py_3_11)]
    // SAFETY: GIL held.
    let exc = unsafe { ffi::PyErr_GetHandledException() };
    #[cfg(not(Py_3_11))]
    // SAFETY: GIL held; the type and traceback references are dropped.
    let exc = unsafe {
        let (mut typ, mut value, mut tb) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        ffi::PyErr_GetExcInfo(&mut typ, &mut value, &mut tb);
        ffi::Py_XDECREF(typ);
        ffi::Py_XDECREF(tb);
        value
    };
    if exc == none() {
        // SAFETY: GIL held; a reference we own.
        unsafe { ffi::Py_DECREF(exc) };
        return ptr::null_mut();
    }
    exc
}
