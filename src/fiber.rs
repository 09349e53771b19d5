//! Symmetric switching on top of corosensei's asymmetric coroutines.
//!
//! Model: every thread has one *main* context, which runs on the thread's own stack and has no
//! coroutine, and any number of [`Fiber`]s, each a corosensei coroutine on a pooled stack. Any
//! context may hand control to any other context of its thread:
//!
//! - from the main context, [`run_from_main`] resumes the target fiber and then keeps
//!   dispatching: whenever a fiber suspends (or finishes) with a [`Hop`] naming another fiber,
//!   the loop resumes that one; when a hop names the main context, the loop returns its payload.
//! - from a fiber, [`Fiber::suspend`] suspends with a hop; the payload comes back as the
//!   return value of `suspend` when some later hop names this fiber.
//!
//! A fiber is only ever resumed by the loop, which runs on the main stack, so the resumer of
//! every suspended fiber is the loop and `suspend` always lands there. A hop from fiber A to
//! fiber B is two bare stack switches (A to the loop, the loop to B); a hop to or from main is
//! one. The payload travels by value inside the hop: nothing a switch carries is kept in
//! fields that code running during the switch could overwrite. The loop runs no code of the
//! layers above; when a fiber finishes, its stack goes back to the pool right there.
//!
//! Invariants the caller upholds (the `unsafe` contracts below): a fiber is resumed only on
//! the thread that created it, only while suspended (never while running), and it stays alive
//! (not moved, not dropped) while it is suspended or running. A suspended fiber is never
//! dropped: its stack holds foreign frames that cannot be unwound; [`Fiber::abandon`] is the
//! way to let go of one whose thread is gone. This module knows nothing of Python.

use std::cell::{Cell, UnsafeCell};
use std::ptr;

use corosensei::stack::Stack;
use corosensei::{Coroutine, CoroutineResult, Yielder};

use crate::stack::PooledStack;

/// A request to hand control to another context, carrying the payload it receives.
pub struct Hop<P: 'static> {
    /// The fiber to run next; null means the thread's main context.
    pub to: *const Fiber<P>,
    /// What the target receives.
    pub payload: P,
}

impl<P: 'static> Hop<P> {
    /// A hop to the thread's main context.
    pub fn to_main(payload: P) -> Self {
        Hop {
            to: ptr::null(),
            payload,
        }
    }
}

type Coro<P> = Coroutine<P, Hop<P>, Hop<P>, PooledStack>;

/// One suspendable context with its own native stack. It may live inline in another
/// structure ([`Fiber::empty`] then [`Fiber::prepare`]) as long as it does not move while it
/// holds a stack; [`Fiber::new`] boxes one.
pub struct Fiber<P: 'static> {
    coro: UnsafeCell<Option<Coro<P>>>,
    yielder: Cell<*const Yielder<P, Hop<P>>>,
    /// High end of the stack while the fiber holds one, else 0.
    stack_top: Cell<usize>,
    /// The stack's data-stack area (see `stack.rs`), while the fiber holds a stack.
    data_stack: Cell<(*mut u8, usize)>,
    stack_size: Cell<usize>,
}

impl<P: 'static> Fiber<P> {
    /// A fiber with no stack yet.
    pub const fn empty() -> Self {
        Fiber {
            coro: UnsafeCell::new(None),
            yielder: Cell::new(ptr::null()),
            stack_top: Cell::new(0),
            data_stack: Cell::new((ptr::null_mut(), 0)),
            stack_size: Cell::new(0),
        }
    }

    /// Creates a boxed fiber that will run `body` on `stack` when first resumed.
    pub fn new<F>(stack: PooledStack, body: F) -> Box<Self>
    where
        F: FnOnce(P) -> Hop<P> + 'static,
    {
        let fiber = Box::new(Self::empty());
        // SAFETY: the box keeps the fiber at one address; it holds no stack yet.
        unsafe { fiber.prepare(stack, body) };
        fiber
    }

    /// Gives the fiber `stack` and `body`, which runs when the fiber is first resumed: it
    /// gets the first payload and returns the hop to take when it finishes.
    ///
    /// # Safety
    /// The fiber holds no stack, and it does not move until it has finished or been
    /// abandoned (the stack keeps a pointer to it).
    pub unsafe fn prepare<F>(&self, stack: PooledStack, body: F)
    where
        F: FnOnce(P) -> Hop<P> + 'static,
    {
        self.stack_top.set(stack.base().get());
        self.data_stack.set(stack.data_stack());
        self.stack_size
            .set(stack.base().get() - stack.limit().get() - crate::stack::page_size());
        let this: *const Fiber<P> = self;
        let coro = Coroutine::with_stack(stack, move |yielder: &Yielder<P, Hop<P>>, first: P| {
            // SAFETY: per the contract the fiber stays at this address while it runs.
            unsafe { (*this).yielder.set(yielder) };
            body(first)
        });
        // SAFETY: not running, so nothing else holds the coroutine slot.
        unsafe { *self.coro.get() = Some(coro) };
    }

    /// Drops a prepared fiber's stack and body before it ever ran.
    pub fn discard_unstarted(&self) {
        // SAFETY: not running (never started), so nothing else holds the slot.
        let slot = unsafe { &mut *self.coro.get() };
        if slot.as_ref().is_some_and(|c| !c.started()) {
            drop(slot.take());
            self.stack_top.set(0);
        }
    }

    /// Whether the fiber holds a stack (prepared and not finished).
    pub fn has_stack(&self) -> bool {
        // SAFETY: a shared read of the option, as in `started`.
        unsafe { (*self.coro.get()).is_some() }
    }

    /// Whether the fiber has been resumed at least once.
    pub fn started(&self) -> bool {
        // SAFETY: a shared read of the option; the loop holds a `&mut` only inside `resume`,
        // during which no code of this thread outside the fiber runs.
        unsafe { (*self.coro.get()).as_ref().is_none_or(|c| c.started()) }
    }

    /// Whether the fiber has finished (or was abandoned) and no longer holds a stack.
    pub fn finished(&self) -> bool {
        // SAFETY: as in `started`.
        unsafe { (*self.coro.get()).is_none() }
    }

    /// High end of the fiber's stack, or 0 once it has finished.
    pub fn stack_top(&self) -> usize {
        self.stack_top.get()
    }

    /// Usable bytes of the fiber's stack.
    pub fn stack_size(&self) -> usize {
        self.stack_size.get()
    }

    /// The data-stack area of the fiber's stack, above its native stack: start and length.
    pub fn data_stack(&self) -> (*mut u8, usize) {
        self.data_stack.get()
    }

    /// Suspends the running fiber, handing control to `hop.to` with `hop.payload`. Returns
    /// the payload of the hop that later names this fiber.
    ///
    /// # Safety
    /// Must be called on this fiber's own stack, while it runs (not from its first entry's
    /// set-up, not from another fiber or the main context).
    pub unsafe fn suspend(&self, hop: Hop<P>) -> P {
        let yielder = self.yielder.get();
        debug_assert!(!yielder.is_null());
        // SAFETY: the yielder lives at the base of this fiber's stack, which is running.
        unsafe { (*yielder).suspend(hop) }
    }

    /// Lets go of a suspended fiber without running anything on its stack. Whatever the
    /// frames on that stack held is leaked. With `reuse_stack` the stack goes back to the
    /// pool; without, it is leaked too (something may still point into it).
    ///
    /// # Safety
    /// No frame on the fiber's stack may ever run again: its thread is gone, or nothing will
    /// ever resume it. With `reuse_stack`, nothing may point into the stack any more. Must
    /// not be called while the fiber runs.
    pub unsafe fn abandon(&self, reuse_stack: bool) {
        // SAFETY: the fiber is not running, so nobody else holds the coroutine.
        let slot = unsafe { &mut *self.coro.get() };
        if let Some(mut coro) = slot.take() {
            if coro.started() && !coro.done() {
                // SAFETY: per the contract, nothing on that stack needs to run its drops.
                unsafe { coro.force_reset() };
            }
            if reuse_stack {
                drop_coroutine(coro);
            } else {
                std::mem::forget(coro);
            }
        }
        self.stack_top.set(0);
    }
}

/// Drops a finished or never-started coroutine, returning its stack to the pool.
fn drop_coroutine<P>(coro: Coro<P>) {
    if coro.done() {
        drop(coro.into_stack());
    } else {
        // Never started: dropping it only drops the closure, and the stack with it.
        drop(coro);
    }
}

impl<P: 'static> Drop for Fiber<P> {
    fn drop(&mut self) {
        let slot = self.coro.get_mut();
        if let Some(coro) = slot.take() {
            if coro.started() && !coro.done() {
                // A suspended coroutine must never be unwound from here (its frames are
                // foreign): leak it, stack included.
                std::mem::forget(coro);
            } else {
                drop_coroutine(coro);
            }
        }
    }
}

/// Runs fibers from the thread's main context, starting with `first` receiving `payload`,
/// until a hop names the main context; returns that hop's payload.
///
/// # Safety
/// Must be called on the thread's own stack (the main context, never from inside a fiber).
/// Every fiber a hop names must belong to this thread, be suspended or not yet started (not
/// finished), and stay alive until it suspends or finishes.
pub unsafe fn run_from_main<P: 'static>(first: *const Fiber<P>, payload: P) -> P {
    let mut hop = Hop { to: first, payload };
    while !hop.to.is_null() {
        // SAFETY: the caller guarantees the target is alive and not running.
        let fiber = unsafe { &*hop.to };
        // SAFETY: the fiber is not running, so nothing else borrows its coroutine.
        let slot = unsafe { &mut *fiber.coro.get() };
        let coro = slot
            .as_mut()
            .expect("corolet: a hop named a fiber that has finished");
        hop = match coro.resume(hop.payload) {
            CoroutineResult::Yield(next) => next,
            CoroutineResult::Return(next) => {
                if let Some(done) = slot.take() {
                    drop_coroutine(done);
                }
                fiber.stack_top.set(0);
                next
            }
        };
    }
    hop.payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{pool_stats, take_stack};
    use std::rc::Rc;

    type F = Fiber<u64>;

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::stack::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn main_to_fiber_and_back_carries_values() {
        let _serial = serial();
        let fiber = F::new(take_stack().unwrap(), |x| Hop::to_main(x + 1));
        // SAFETY: on the thread's stack; the fiber is alive and unstarted.
        let got = unsafe { run_from_main(&*fiber, 41) };
        assert_eq!(got, 42);
        assert!(fiber.finished());
    }

    #[test]
    fn fiber_suspends_and_resumes_many_times() {
        let _serial = serial();
        let cell: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
        let me = cell.clone();
        let fiber = F::new(take_stack().unwrap(), move |mut x| {
            for _ in 0..1000 {
                // SAFETY: running on this fiber's stack.
                x = unsafe { (*me.get()).suspend(Hop::to_main(x * 2)) };
            }
            Hop::to_main(x + 7)
        });
        cell.set(&*fiber);
        for v in 1..=1000 {
            // SAFETY: on the main stack; the fiber is suspended.
            let doubled = unsafe { run_from_main(&*fiber, v) };
            assert_eq!(doubled, v * 2);
        }
        // SAFETY: as above.
        assert_eq!(unsafe { run_from_main(&*fiber, 5) }, 12);
        assert!(fiber.finished());
    }

    #[test]
    fn fibers_hop_directly_to_each_other() {
        let _serial = serial();
        // a -> b -> a -> main, each hop adding to the payload.
        let a_cell: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
        let b_cell: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
        let (a_me, a_b) = (a_cell.clone(), b_cell.clone());
        let a = F::new(take_stack().unwrap(), move |x| {
            // SAFETY: running on a's stack; b is alive and unstarted.
            let back = unsafe {
                (*a_me.get()).suspend(Hop {
                    to: a_b.get(),
                    payload: x + 10,
                })
            };
            Hop::to_main(back + 1000)
        });
        let a_for_b = a_cell.clone();
        let b = F::new(take_stack().unwrap(), move |x| Hop {
            to: a_for_b.get(),
            payload: x + 100,
        });
        a_cell.set(&*a);
        b_cell.set(&*b);
        // SAFETY: on the main stack; both fibers alive.
        assert_eq!(unsafe { run_from_main(&*a, 1) }, 1111);
        assert!(a.finished() && b.finished());
    }

    #[test]
    fn finished_fibers_return_their_stacks() {
        let _serial = serial();
        let before = pool_stats().live;
        for i in 0..200 {
            let f = F::new(take_stack().unwrap(), Hop::to_main);
            // SAFETY: on the main stack; the fiber is alive and unstarted.
            assert_eq!(unsafe { run_from_main(&*f, i) }, i);
        }
        assert_eq!(pool_stats().live, before);
    }

    #[test]
    fn abandoned_fiber_gives_back_its_stack_without_running() {
        let _serial = serial();
        let cell: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
        let me = cell.clone();
        let ran_after = Rc::new(Cell::new(false));
        let flag = ran_after.clone();
        let fiber = F::new(take_stack().unwrap(), move |x| {
            // SAFETY: running on this fiber's stack.
            let y = unsafe { (*me.get()).suspend(Hop::to_main(x)) };
            flag.set(true);
            Hop::to_main(y)
        });
        cell.set(&*fiber);
        // SAFETY: on the main stack.
        unsafe { run_from_main(&*fiber, 3) };
        // SAFETY: nothing on the suspended stack needs dropping (only integers and Rcs that
        // we accept to leak), and nothing points into it.
        unsafe { fiber.abandon(true) };
        assert!(fiber.finished());
        assert!(!ran_after.get());
    }

    #[test]
    fn deep_native_recursion_survives_a_switch() {
        let _serial = serial();
        fn recurse(depth: u32, fiber: *const F) -> u64 {
            let pad = [depth as u8; 256];
            if depth == 0 {
                // SAFETY: running on the fiber's own stack.
                return unsafe { (*fiber).suspend(Hop::to_main(7)) };
            }
            // The padding keeps each level's frame large and alive across the call.
            let r = recurse(depth - 1, fiber);
            std::hint::black_box(pad);
            r
        }
        let cell: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
        let me = cell.clone();
        let fiber = F::new(take_stack().unwrap(), move |_| {
            Hop::to_main(recurse(1000, me.get()))
        });
        cell.set(&*fiber);
        // SAFETY: on the main stack.
        assert_eq!(unsafe { run_from_main(&*fiber, 0) }, 7);
        // SAFETY: on the main stack; the fiber is suspended 1000 frames deep.
        assert_eq!(unsafe { run_from_main(&*fiber, 99) }, 99);
    }
}
