//! Criterion benchmarks of the Rust core, without Python: taking and returning a pooled
//! stack, a bare fiber round trip (main -> fiber -> main), and a fiber-to-fiber hop through
//! the dispatch loop.

use std::cell::Cell;
use std::hint::black_box;
use std::ptr;
use std::rc::Rc;

use corolet::fiber::{run_from_main, Fiber, Hop};
use corolet::stack::take_stack;
use criterion::{criterion_group, criterion_main, Criterion};

type F = Fiber<u64>;

fn stack_take_return(c: &mut Criterion) {
    c.bench_function("stack take+return (pooled)", |b| {
        b.iter(|| drop(black_box(take_stack().unwrap())))
    });
}

/// A fiber that bounces every payload straight back to main, forever.
fn echo_to_main() -> Box<F> {
    let me: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
    let inner = me.clone();
    let fiber = F::new(take_stack().unwrap(), move |mut x| loop {
        // SAFETY: running on this fiber's own stack.
        x = unsafe { (*inner.get()).suspend(Hop::to_main(x + 1)) };
    });
    me.set(&*fiber);
    fiber
}

fn main_fiber_round_trip(c: &mut Criterion) {
    let fiber = echo_to_main();
    c.bench_function("round trip main->fiber->main", |b| {
        // SAFETY: on the thread's stack; the fiber is alive and suspended between calls.
        b.iter(|| unsafe { run_from_main(&*fiber, black_box(1)) })
    });
    // The fiber never finishes: leak it rather than drop a suspended coroutine.
    std::mem::forget(fiber);
}

fn fiber_to_fiber_hop(c: &mut Criterion) {
    // a hops to b, b hops back to main: one fiber-to-fiber hop per iteration, plus one
    // main->a resume and one b->main suspend.
    let b_ptr: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
    let a_ptr: Rc<Cell<*const F>> = Rc::new(Cell::new(ptr::null()));
    let (a_me, a_to_b) = (a_ptr.clone(), b_ptr.clone());
    let a = F::new(take_stack().unwrap(), move |mut x| loop {
        // SAFETY: running on a's stack; b is alive.
        x = unsafe {
            (*a_me.get()).suspend(Hop {
                to: a_to_b.get(),
                payload: x + 1,
            })
        };
    });
    let b_me = b_ptr.clone();
    let b = F::new(take_stack().unwrap(), move |mut x| loop {
        // SAFETY: running on b's stack.
        x = unsafe { (*b_me.get()).suspend(Hop::to_main(x + 1)) };
    });
    a_ptr.set(&*a);
    b_ptr.set(&*b);
    c.bench_function("main->a, a->b hop, b->main", |bench| {
        // SAFETY: on the thread's stack; both fibers alive and suspended between calls.
        bench.iter(|| unsafe { run_from_main(&*a, black_box(1)) })
    });
    std::mem::forget(a);
    std::mem::forget(b);
}

criterion_group!(
    core,
    stack_take_return,
    main_fiber_round_trip,
    fiber_to_fiber_hop
);
criterion_main!(core);
