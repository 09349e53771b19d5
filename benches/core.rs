//! Criterion benchmarks of the Rust core, without Python: taking and returning a pooled
//! stack, a bare fiber round trip (main -> fiber -> main), and a fiber-to-fiber hop through
//! the dispatch loop.
//!
//! Each benchmark checks what it computes, before and after it is timed (the payload each hop
//! adds one to, the stack pool's count of stacks in use), so a broken core fails the run
//! instead of timing nothing: `cargo bench --bench core` panics with the wrong value.
//! `cargo bench --bench core -- --fast` (what `make bench-fast` runs) takes a few samples of
//! each, for CI; the figures are then only a smoke test, not measurements.

use std::cell::Cell;
use std::hint::black_box;
use std::ptr;
use std::rc::Rc;

use std::time::Duration;

use corolet::fiber::{run_from_main, Fiber, Hop};
use corolet::stack::{pool_stats, take_stack};
use criterion::Criterion;

type F = Fiber<u64>;

fn stack_take_return(c: &mut Criterion) {
    let live = pool_stats().live;
    let stack = take_stack().unwrap();
    assert_eq!(
        pool_stats().live,
        live + 1,
        "a taken stack is counted as in use"
    );
    drop(stack);
    assert_eq!(
        pool_stats().live,
        live,
        "a returned stack is no longer in use"
    );
    c.bench_function("stack take+return (pooled)", |b| {
        b.iter(|| drop(black_box(take_stack().unwrap())))
    });
    assert_eq!(pool_stats().live, live, "every stack taken was returned");
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
    // SAFETY: on the thread's stack; the fiber is alive and suspended between calls.
    let echoed = unsafe { [run_from_main(&*fiber, 1), run_from_main(&*fiber, 41)] };
    assert_eq!(echoed, [2, 42], "the fiber adds one to what main sends");
    c.bench_function("round trip main->fiber->main", |b| {
        // SAFETY: on the thread's stack; the fiber is alive and suspended between calls.
        b.iter(|| unsafe { run_from_main(&*fiber, black_box(1)) })
    });
    // SAFETY: as above.
    let after = unsafe { run_from_main(&*fiber, 7) };
    assert_eq!(after, 8, "still echoing after the benchmark");
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
    // SAFETY: on the thread's stack; both fibers alive and suspended between calls.
    let hopped = unsafe { [run_from_main(&*a, 1), run_from_main(&*a, 10)] };
    assert_eq!(
        hopped,
        [3, 12],
        "a and b each add one on the way back to main"
    );
    c.bench_function("main->a, a->b hop, b->main", |bench| {
        // SAFETY: on the thread's stack; both fibers alive and suspended between calls.
        bench.iter(|| unsafe { run_from_main(&*a, black_box(1)) })
    });
    // SAFETY: as above.
    let after = unsafe { run_from_main(&*a, 0) };
    assert_eq!(after, 2, "still hopping after the benchmark");
    std::mem::forget(a);
    std::mem::forget(b);
}

fn main() {
    let fast = std::env::args().any(|arg| arg == "--fast");
    let mut c = if fast {
        // A few short samples: criterion's own argument parsing is skipped, since it does not
        // know `--fast`.
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(20))
            .measurement_time(Duration::from_millis(100))
            .without_plots()
    } else {
        Criterion::default().configure_from_args()
    };
    stack_take_return(&mut c);
    main_fiber_round_trip(&mut c);
    fiber_to_fiber_hop(&mut c);
    c.final_summary();
}
