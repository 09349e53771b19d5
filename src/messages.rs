//! Every error text corolet shares with greenlet 3.x, word for word, in one place: code that
//! matches on greenlet's messages keeps working. Messages of our own (stack limits, the
//! interpreter check) live here too.

use std::ffi::CStr;

pub const GARBAGE_COLLECTED: &CStr = c"cannot switch to a garbage collected greenlet";
pub const THREAD_EXITED: &CStr =
    c"cannot switch to a different thread (which happens to have exited)";
/// Followed by the two greenlets' reprs (see `wrong_thread`).
pub fn wrong_thread(current: &str, expected: &str) -> String {
    format!("Cannot switch to a different thread\n\tCurrent:  {current}\n\tExpected: {expected}")
}
pub const CONTEXT_OTHER_THREAD_GET: &CStr =
    c"cannot get context of a greenlet that is running in a different thread";
pub const CONTEXT_OTHER_THREAD_SET: &CStr =
    c"cannot set context of a greenlet that is running in a different thread";
pub const CONTEXT_DELETE: &CStr = c"can't delete context attribute";
pub const CONTEXT_TYPE: &CStr = c"greenlet context must be a contextvars.Context or None";
pub const DELETE_ATTRIBUTE: &CStr = c"can't delete attribute";
pub const CYCLIC_PARENT: &CStr = c"cyclic parent chain";
pub const PARENT_COLLECTED: &CStr = c"parent must not be garbage collected";
pub const PARENT_OTHER_THREAD: &CStr = c"parent cannot be on a different thread";
pub const MAIN_PARENT: &CStr = c"cannot set the parent of a main greenlet";
pub const MAIN_RUN: &CStr = c"Main greenlets do not have a run attribute.";
pub const RUN_AFTER_START: &CStr = c"run cannot be set after the start of the greenlet";
pub const RUN: &CStr = c"run";
pub fn not_a_greenlet(type_name: &str) -> String {
    format!("GreenletChecker: Expected any type of greenlet, not {type_name}")
}
pub const THROW_TRACEBACK: &CStr = c"throw() third argument must be a traceback object";
pub const THROW_INSTANCE_VALUE: &CStr = c"instance exception may not have a separate value";
pub fn throw_not_exception(type_name: &str) -> String {
    format!("exceptions must be classes, or instances, not {type_name}")
}
pub const DICT_DELETE: &CStr = c"__dict__ may not be deleted";
pub const DICT_TYPE: &CStr = c"__dict__ must be a dictionary";
pub fn cannot_serialize(type_name: &str) -> String {
    format!("cannot serialize '{type_name}' object")
}
pub const KILLING: &CStr = c"Killing the greenlet because all references have vanished.";
pub const FINALIZING: &CStr = c"greenlet is being finalized";
pub const FIRST_SWITCH_FAILED: &CStr =
    c"Failed to switch stacks into a greenlet for the first time.";
pub const SWITCH_FAILED: &CStr = c"Failed to switch stacks into a running greenlet.";
pub const SLP_SWITCH_FATAL: &CStr =
    c"greenlet: Failed low-level slp_switch(). The stack is probably corrupt.";
pub const OUT_OF_PARENTS: &CStr =
    c"greenlet: ran out of parent greenlets while propagating exception; cannot continue";
pub const NULL_WITHOUT_ERROR: &CStr = c"Greenlet.switch() returned NULL without an exception set.";

// Ours.
pub fn no_stack(err: &std::io::Error) -> String {
    if err.get_ref().is_some() {
        // The pool's own diagnosis, with its own advice.
        return format!("cannot allocate a stack for a new greenlet: {err}");
    }
    format!(
        "cannot allocate a stack for a new greenlet ({err}); \
         lower corolet.stack_size() or keep fewer greenlets alive"
    )
}
