//! corolet: greenlet for CPython, rebuilt on native stacks owned by corosensei.
//!
//! Layers, bottom to top; each uses only those above it in this list:
//!
//! - [`stack`]: pooled native stacks carved from large slabs, with guard pages (no Python);
//!   its bookkeeping lives in [`pagevec`]s, arrays whose unused pages go back to the OS;
//!   [`valgrind`] tells it when to reserve less address space.
//! - [`fiber`]: symmetric switching between a thread's main context and its fibers, on top
//!   of corosensei's asymmetric coroutines (no Python).
//! - [`overflow`]: a clear message when a greenlet overflows its stack (signal handler).
//! - [`pystate`]: the per-greenlet part of CPython's thread state, saved and restored by a
//!   C file compiled against the interpreter's own headers (`pystate.c`).
//! - [`pyerr`]: the error indicator as a value, panic guards, reference helpers.
//! - [`messages`]: every error text, greenlet's word for word.
//! - [`thread`]: per-thread state: main greenlet, current greenlet, trace function.
//! - [`greenlet`]: the `greenlet.greenlet` type with greenlet 3.x's object layout.
//! - [`readahead`]: the collector fetches suspended greenlets' frames ahead of its walk.
//! - [`switch`]: `switch()`, `throw()`, starting, finishing and killing greenlets.
//! - [`capi`]: greenlet's C API, as the `_C_API` capsule.
//! - [`portal_run`]: `corolet.portal`'s greenlet side: `PortalGreenlet`, the job its
//!   greenlet runs (the stepping loop), `await_`'s native path.
//! - [`portal`]: `corolet.portal.Portal`, a coroutine whose steps run in a greenlet.
//! - [`portal_factory`]: the asyncio task factory of `corolet.portal.install()`.
//! - [`module`]: the `corolet._corolet` Python module.

pub mod fiber;
pub mod overflow;
pub mod pagevec;
pub mod stack;
pub mod valgrind;

pub mod pyerr;
pub mod pystate;

pub mod capi;
pub mod greenlet;
pub mod messages;
pub mod module;
pub mod portal;
pub mod portal_factory;
pub mod portal_run;
pub mod readahead;
pub mod switch;
pub mod thread;
