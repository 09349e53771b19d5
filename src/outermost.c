/*
 * The base of a greenlet's stack, as unwinders see it: where a greenlet calls its `run`.
 *
 * Model: a greenlet's stack holds, from its base up, corosensei's entry, our Rust start-up
 * code, then `run`'s Python frames (CPython's C frames). Only one kind of unwinding ever
 * starts in those C frames and wants to cross the greenlet's base: the forced unwind of
 * `pthread_exit`, which CPython 3.10-3.13 calls when a daemon thread wakes up while the
 * interpreter finalizes (3.14 makes such threads hang instead). glibc's forced unwind runs the
 * cleanups of every frame up to the thread's start and then jumps there; our Rust frames
 * cannot be unwound by a foreign unwind (their `extern "C"` entry points abort, as Rust must),
 * so crossing them aborts the process.
 *
 * So `run` is called from the C functions below, whose frames mark the return address as
 * undefined after their prologue: to an unwinder that frame is the outermost of the stack.
 * A forced unwind then ends there (end of stack), and glibc jumps straight to the thread's
 * start, leaving the greenlet's stack and the Rust frames below it untouched; the thread
 * exits as it would have on its own stack. Invariant: nothing but Python code runs above
 * these frames on a greenlet's stack, and no unwinding that Python code does (none: C++
 * exceptions are caught inside the extensions that throw them) needs to go further down.
 * Debuggers and profilers show a greenlet's native backtrace ending here.
 */
#include <Python.h>

#if defined(__x86_64__)
#define COROLET_OUTERMOST() __asm__ volatile(".cfi_undefined rip")
#elif defined(__aarch64__)
#define COROLET_OUTERMOST() __asm__ volatile(".cfi_undefined x30")
#else
#define COROLET_OUTERMOST() ((void)0)
#endif

/* The empty asm after the call keeps the compiler from turning it into a tail call (which
 * would take this frame, and the mark, off the stack). */
__attribute__((noinline)) PyObject *corolet_call_run(PyObject *run, PyObject *args,
                                                     PyObject *kwargs)
{
    COROLET_OUTERMOST();
    PyObject *result = PyObject_Call(run, args, kwargs);
    __asm__ volatile("" : "+r"(result));
    return result;
}

__attribute__((noinline)) PyObject *corolet_call_run_one(PyObject *run, PyObject *arg)
{
    COROLET_OUTERMOST();
    PyObject *result = PyObject_CallOneArg(run, arg);
    __asm__ volatile("" : "+r"(result));
    return result;
}
