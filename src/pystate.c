/*
 * The per-greenlet part of CPython's thread state, saved and restored around a switch.
 *
 * CPython keeps per thread what a greenlet must own: the current frame, recursion depths,
 * the handled-exception stack, the context, the frame data stack (3.11+), trashcan state and
 * the C-frame record (3.10-3.12). This file is compiled against the headers of the very
 * interpreter being built for, so the field layout can never drift from the real one; Rust
 * sees only an opaque, fixed-size blob and the functions below.
 *
 * Protocol, for every logical switch from greenlet A to greenlet B of one thread:
 *   A calls corolet_pystate_save(&A->state) before it leaves its stack;
 *   B calls corolet_pystate_restore(&B->state) right after it is back on its stack, or,
 *   on its first run, corolet_pystate_run_fresh() starts it with a fresh state.
 * No Python code may run between the save and the restore: the thread state then describes
 * nobody. The error indicator is deliberately not switched: an exception crosses a switch
 * as the pending error.
 *
 * Versions: 3.10 to 3.15 (GIL builds). 3.14 moved C recursion checks to stack addresses:
 * there each greenlet carries the C-stack limits of its own native stack (see PY314 below).
 */
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x03100000
#error "corolet supports CPython 3.10 to 3.15"
#endif
#ifdef Py_GIL_DISABLED
#error "corolet does not support free-threaded CPython builds (3.13t, 3.14t, ...) yet: build it with the interpreter's GIL build (python3.x, not python3.xt)"
#endif

#define PY311 (PY_VERSION_HEX >= 0x030B0000)
#define PY312 (PY_VERSION_HEX >= 0x030C0000)
#define PY313 (PY_VERSION_HEX >= 0x030D0000)
#define PY314 (PY_VERSION_HEX >= 0x030E0000)
#define PY315 (PY_VERSION_HEX >= 0x030F0000)

#if PY311
/* The interpreter-frame layout, to walk an abandoned greenlet's frames. Only this file
 * sees CPython's internals. */
#define Py_BUILD_CORE 1
#if PY314
/* 3.14: the frame layout with its _PyStackRef accessors, and _PyThreadStateImpl, where the
 * C-stack limits are. */
#include "internal/pycore_interpframe.h"
#include "internal/pycore_pythonrun.h"
#include "internal/pycore_tstate.h"
#else
#include "internal/pycore_frame.h"
#endif
#endif

#if PY311
/* The frame-reference cache of a suspended greenlet (gc_cache): */
#define GC_CACHE_EMPTY 0 /* not filled since the greenlet was last suspended (a zeroed blob) */
#define GC_CACHE_OFF 1   /* not to be filled until it is suspended again */
#define GC_CACHE_FIRST 2 /* filled: GC_CACHE_FIRST + n, n references in gc_refs */
#define GC_CACHE_SLOTS 16
#endif

typedef struct {
#if PY313
    struct _PyInterpreterFrame *current_frame;
#elif PY311
    _PyCFrame *cframe;
    /* cframe->current_frame as it was when the greenlet was suspended (it does not change
     * until the greenlet runs again): read without touching the greenlet's native stack,
     * where cframe lives (a page the collector would otherwise miss on). */
    struct _PyInterpreterFrame *suspended_frame;
#else
    CFrame *cframe;
    PyFrameObject *frame; /* borrowed, as in the thread state */
#endif
    int py_depth;
#if PY314
    /* The C-stack limits recursion checks compare the stack pointer with: the thread's own
     * for the main greenlet, computed from its native stack for any other. */
    uintptr_t c_stack_top;
    uintptr_t c_stack_soft_limit;
    uintptr_t c_stack_hard_limit;
    PyObject *current_executor; /* the JIT's running executor; borrowed, as in the thread */
#if PY315
    struct _PyInterpreterFrame *last_profiled_frame; /* the remote profiler's anchor */
#endif
#elif PY312
    int c_depth;
#endif
#if PY314
    /* delete_later stays with the thread: see corolet_pystate_run_fresh. */
#elif PY313
    PyObject *delete_later;
#else
    int trash_delete_nesting;
#endif
#if PY311
    _PyStackChunk *datastack_chunk;
    PyObject **datastack_top;
    PyObject **datastack_limit;
#endif
    _PyErr_StackItem *exc_info;
    _PyErr_StackItem exc_state; /* by value: owns its exception references */
    PyObject *context;          /* owned */
#if PY311
    /* What the frames of the suspended greenlet refer to, as corolet_pystate_traverse_frames
     * last reported it (borrowed: the frames own them), so that the collector's further
     * visits need not read the frames again: GC_CACHE_EMPTY, GC_CACHE_OFF, or
     * GC_CACHE_FIRST + the number of entries. See corolet_pystate_traverse_frames. */
    int gc_cache;
    PyObject *gc_refs[GC_CACHE_SLOTS];
#endif
} corolet_pystate;

/* The Rust side reserves this many bytes for the blob (see pystate.rs). */
#define COROLET_PYSTATE_CAPACITY 320
_Static_assert(sizeof(corolet_pystate) <= COROLET_PYSTATE_CAPACITY, "grow the Rust blob");

size_t corolet_pystate_size(void) { return sizeof(corolet_pystate); }

#if PY314
/* No C recursion counter: checks compare the stack pointer with per-thread limits. */
#elif PY313
#define C_LIMIT Py_C_RECURSION_LIMIT
#elif PY312
#define C_LIMIT C_RECURSION_LIMIT
#endif

/* The top frame of a suspended greenlet (NULL if it never ran): saved at its last switch
 * out, and unchanged until it runs again. */
#if PY311
static inline struct _PyInterpreterFrame *suspended_top(const corolet_pystate *s)
{
#if PY313
    return s->current_frame;
#else
    return s->cframe ? s->suspended_frame : NULL;
#endif
}
#endif

void corolet_pystate_save(corolet_pystate *s)
{
    PyThreadState *ts = PyThreadState_GET();
#if PY314
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    s->current_frame = ts->current_frame;
    s->py_depth = ts->py_recursion_limit - ts->py_recursion_remaining;
    s->c_stack_top = impl->c_stack_top;
    s->c_stack_soft_limit = impl->c_stack_soft_limit;
    s->c_stack_hard_limit = impl->c_stack_hard_limit;
    s->current_executor = ts->current_executor;
#if PY315
    s->last_profiled_frame = ts->last_profiled_frame;
#endif
#elif PY313
    s->current_frame = ts->current_frame;
    s->py_depth = ts->py_recursion_limit - ts->py_recursion_remaining;
    s->c_depth = C_LIMIT - ts->c_recursion_remaining;
    s->delete_later = ts->delete_later;
#elif PY312
    s->cframe = ts->cframe;
    s->suspended_frame = ts->cframe->current_frame;
    s->py_depth = ts->py_recursion_limit - ts->py_recursion_remaining;
    s->c_depth = C_LIMIT - ts->c_recursion_remaining;
    s->trash_delete_nesting = ts->trash.delete_nesting;
#elif PY311
    s->cframe = ts->cframe;
    s->suspended_frame = ts->cframe->current_frame;
    s->py_depth = ts->recursion_limit - ts->recursion_remaining;
    s->trash_delete_nesting = ts->trash_delete_nesting;
#else
    s->cframe = ts->cframe;
    s->frame = ts->frame;
    s->py_depth = ts->recursion_depth;
    s->trash_delete_nesting = ts->trash_delete_nesting;
#endif
#if PY311
    s->datastack_chunk = ts->datastack_chunk;
    s->datastack_top = ts->datastack_top;
    s->datastack_limit = ts->datastack_limit;
#endif
    s->exc_info = ts->exc_info;
    s->exc_state = ts->exc_state;
    s->context = ts->context; /* the reference moves into the blob */
#if PY311
    s->gc_cache = GC_CACHE_EMPTY; /* these frames are new to the collector */
#endif
}

/* Tracing turned on in one greenlet goes on in the next (3.10/3.11 keep the flag in the
 * C-frame record, which is per stack). */
#if !PY312
#define CARRY_USE_TRACING(ts, target_cframe)                    \
    do {                                                        \
        (target_cframe)->use_tracing = (ts)->cframe->use_tracing; \
    } while (0)
#endif

void corolet_pystate_restore(corolet_pystate *s)
{
    PyThreadState *ts = PyThreadState_GET();
#if PY314
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    ts->current_frame = s->current_frame;
    ts->py_recursion_remaining = ts->py_recursion_limit - s->py_depth;
    impl->c_stack_top = s->c_stack_top;
    impl->c_stack_soft_limit = s->c_stack_soft_limit;
    impl->c_stack_hard_limit = s->c_stack_hard_limit;
    ts->current_executor = s->current_executor;
#if PY315
    ts->last_profiled_frame = s->last_profiled_frame;
#endif
#elif PY313
    ts->current_frame = s->current_frame;
    ts->py_recursion_remaining = ts->py_recursion_limit - s->py_depth;
    ts->c_recursion_remaining = C_LIMIT - s->c_depth;
    ts->delete_later = s->delete_later;
    s->delete_later = NULL;
#elif PY312
    ts->cframe = s->cframe;
    ts->py_recursion_remaining = ts->py_recursion_limit - s->py_depth;
    ts->c_recursion_remaining = C_LIMIT - s->c_depth;
    ts->trash.delete_nesting = s->trash_delete_nesting;
#elif PY311
    CARRY_USE_TRACING(ts, s->cframe);
    ts->cframe = s->cframe;
    ts->recursion_remaining = ts->recursion_limit - s->py_depth;
    ts->trash_delete_nesting = s->trash_delete_nesting;
#else
    CARRY_USE_TRACING(ts, s->cframe);
    ts->cframe = s->cframe;
    ts->frame = s->frame;
    ts->recursion_depth = s->py_depth;
    ts->trash_delete_nesting = s->trash_delete_nesting;
#endif
#if PY311
    ts->datastack_chunk = s->datastack_chunk;
    ts->datastack_top = s->datastack_top;
    ts->datastack_limit = s->datastack_limit;
#endif
    ts->exc_state = s->exc_state;
    ts->exc_info = s->exc_info ? s->exc_info : &ts->exc_state;
    memset(&s->exc_state, 0, sizeof(s->exc_state));
    s->exc_info = NULL;
    ts->context = s->context;
    ts->context_ver++;
    s->context = NULL;
}

/* Frees the frame data-stack chunks CPython allocated for a greenlet (from the object arena
 * allocator), stopping at `root`, the chunk we placed in the greenlet's own stack mapping. */
#if PY311
static void free_datastack(_PyStackChunk *chunk, void *root)
{
    PyObjectArenaAllocator alloc;
    PyObject_GetArenaAllocator(&alloc);
    while (chunk != NULL && (void *)chunk != root) {
        _PyStackChunk *previous = chunk->previous;
        if (alloc.free != NULL) {
            alloc.free(alloc.ctx, chunk, chunk->size);
        }
        chunk = previous;
    }
}
#endif

/*
 * Runs body(arg) as the first code of a new greenlet, on its own stack: with no frame below
 * it, an empty exception stack, no context, its own data stack, the recursion depth of the
 * greenlet that started it, and the context *s holds (if one was given before the start).
 * On 3.11+ the data stack starts in `root` (`root_size` bytes at the top of the greenlet's
 * own stack slot, above its native stack: a new greenlet costs no allocation, and a root
 * chunk larger than a thread's means ordinary code never crosses into chunks CPython maps and
 * unmaps itself, which deeper calls still do). On 3.12 and 3.13, where C recursion has its
 * own counter, the greenlet gets `c_levels` levels of it at most (what its stack can hold).
 * On 3.14+, where recursion checks compare the stack pointer with limits, the limits are
 * placed in the greenlet's own native stack, [stack_low, stack_high).
 * When body returns, the greenlet's data stack is freed, what it still owns (its context) is
 * moved into *s, and the thread state points at nothing of this stack any more. The caller switches away right after, restoring another greenlet.
 */
#if PY314
#if !_Py_STACK_GROWS_DOWN
#error "corolet places the C-stack limits for stacks that grow down"
#endif
/*
 * 3.14+: points the thread's C-stack limits at a greenlet's native stack [low, high), the way
 * CPython places a thread's (tstate_set_stack): the hard limit (a fatal error below it) one
 * margin above the low end, the soft limit (RecursionError below it) two margins above. The
 * checks act only while the stack pointer is between the low end and the soft limit, and
 * _Py_Dealloc defers deallocations to the thread's delete_later list while it is within two
 * margins of the soft limit: with the thread's own limits on a greenlet stack mapped below
 * the thread's stack, every check would pass (deep recursion would hit the guard page) and
 * every deallocation of a GC object would be deferred.
 */
static void set_c_stack_limits(PyThreadState *ts, uintptr_t low, uintptr_t high)
{
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    impl->c_stack_top = high;
    impl->c_stack_hard_limit = low + _PyOS_STACK_MARGIN_BYTES;
    impl->c_stack_soft_limit = low + 2 * _PyOS_STACK_MARGIN_BYTES;
}
#endif

void corolet_pystate_run_fresh(void (*body)(void *), void *arg, corolet_pystate *s, void *root,
                               size_t root_size, int c_levels, uintptr_t stack_low,
                               uintptr_t stack_high)
{
    PyThreadState *ts = PyThreadState_GET();
#if PY314
    (void)c_levels;
    set_c_stack_limits(ts, stack_low, stack_high);
    /* current_executor stays the starter's, as for any call made from its code.
     * delete_later stays the thread's: the objects on it are unreachable, waiting for any
     * code of the thread to deallocate them where the stack has room (every check is against
     * the running greenlet's own limits). Kept per greenlet, those deferred by a greenlet
     * whose stack never has that much room (a small one) would wait for it to run again. */
#if PY315
    ts->last_profiled_frame = NULL; /* a new frame chain: nothing profiled in it yet */
#endif
#else
    (void)stack_low;
    (void)stack_high;
#endif
#if PY312 && !PY314
    /* A new stack: the C recursion budget is the interpreter's limit, or what this stack
     * can hold if that is less, so deep C recursion raises RecursionError, not a crash. */
    ts->c_recursion_remaining = c_levels < C_LIMIT ? c_levels : C_LIMIT;
#else
    (void)c_levels;
#endif
#if PY313
    /* 3.15 ends a thread's frame chain in a sentinel frame inside its thread state, which
     * only profilers look for. A greenlet's chain ends in NULL instead, as greenlet's do: it
     * can outlive its thread (and so the sentinel), and its frames can still be walked then. */
    ts->current_frame = NULL;
#if !PY314
    ts->delete_later = NULL;
#endif
#else
#if PY311
    _PyCFrame cframe;
    cframe.current_frame = NULL;
#else
    CFrame cframe;
    ts->frame = NULL;
#endif
    cframe.previous = &ts->root_cframe;
#if !PY312
    cframe.use_tracing = ts->cframe->use_tracing;
#endif
    ts->cframe = &cframe;
#if PY312
    ts->trash.delete_nesting = 0;
#else
    ts->trash_delete_nesting = 0;
#endif
#endif
#if PY311
    _PyStackChunk *chunk = (_PyStackChunk *)root;
    chunk->previous = NULL;
    chunk->size = root_size;
    chunk->top = 0;
    ts->datastack_chunk = chunk;
    /* Slot 0 stays unused, as in CPython's own root chunks: a frame at data[0] would make
     * CPython pop (and free) the chunk. */
    ts->datastack_top = &chunk->data[1];
    ts->datastack_limit = (PyObject **)((char *)chunk + root_size);
#else
    (void)root;
    (void)root_size;
#endif
    ts->exc_state.exc_value = NULL;
#if !PY311
    ts->exc_state.exc_type = NULL;
    ts->exc_state.exc_traceback = NULL;
#endif
    ts->exc_state.previous_item = NULL;
    ts->exc_info = &ts->exc_state;
    ts->context = s->context; /* a context given to gr_context before the start, or NULL */
    s->context = NULL;
    ts->context_ver++;

    body(arg);

#if PY311
    free_datastack(ts->datastack_chunk, root);
    ts->datastack_chunk = NULL;
    ts->datastack_top = NULL;
    ts->datastack_limit = NULL;
#endif
#if !PY313
    /* The local C-frame record is about to go away with this stack frame. */
#if !PY312
    ts->root_cframe.use_tracing = cframe.use_tracing;
#endif
    ts->cframe = &ts->root_cframe;
#endif
    /* Everything *s held moved into the thread state at the start. */
    memset(s, 0, sizeof(*s));
    s->context = ts->context;
    ts->context = NULL;
    s->exc_state = ts->exc_state;
    memset(&ts->exc_state, 0, sizeof(ts->exc_state));
    ts->exc_info = &ts->exc_state;
}

#if PY315
/*
 * 3.15: releases what the frames of an abandoned chain own (fast locals, evaluation stack,
 * locals dict, frame object, function, code), as greenlet does from 3.15 on. The references
 * are first moved out of all the frames, and only then dropped: dropping one can run any
 * code (a __del__, a generator finalised while it "executes"), which must not find the chain
 * half walked. Returns -1 (nothing moved) if the list cannot be allocated.
 */
static int release_frames(struct _PyInterpreterFrame *top)
{
    Py_ssize_t room = 0;
    for (struct _PyInterpreterFrame *f = top; f != NULL; f = f->previous) {
        PyObject *executable = PyStackRef_AsPyObjectBorrow(f->f_executable);
        if (f->owner == FRAME_OWNED_BY_THREAD && executable != NULL && PyCode_Check(executable)) {
            PyCodeObject *code = (PyCodeObject *)executable;
            room += code->co_nlocalsplus + code->co_stacksize + 4;
        }
    }
    PyObject **owned = PyMem_Malloc((size_t)(room > 0 ? room : 1) * sizeof(PyObject *));
    if (owned == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t n = 0;
#define TAKE_REF(ref)                                                                         \
    do {                                                                                      \
        if (PyStackRef_RefcountOnObject(ref)) {                                               \
            owned[n++] = PyStackRef_AsPyObjectBorrow(ref); /* the reference moves */          \
        }                                                                                     \
        (ref) = PyStackRef_NULL;                                                              \
    } while (0)
    for (struct _PyInterpreterFrame *f = top; f != NULL; f = f->previous) {
        PyObject *executable = PyStackRef_AsPyObjectBorrow(f->f_executable);
        if (f->owner != FRAME_OWNED_BY_THREAD || executable == NULL ||
            !PyCode_Check(executable)) {
            continue; /* generator frames belong to their generators */
        }
        PyCodeObject *code = (PyCodeObject *)executable;
        _PyStackRef *base = f->localsplus;
        _PyStackRef *sp = f->stackpointer; /* spilled when the frame made its last call */
        if (sp == NULL || sp < base + code->co_nlocalsplus ||
            sp > base + code->co_nlocalsplus + code->co_stacksize) {
            sp = base + code->co_nlocalsplus;
        }
        for (_PyStackRef *slot = base; slot < sp; slot++) {
            TAKE_REF(*slot);
        }
        f->stackpointer = base;
        TAKE_REF(f->f_funcobj);
        TAKE_REF(f->f_executable);
        if (f->f_locals != NULL) {
            owned[n++] = f->f_locals;
            f->f_locals = NULL;
        }
        if (f->frame_obj != NULL) {
            owned[n++] = (PyObject *)f->frame_obj;
            f->frame_obj = NULL;
        }
    }
#undef TAKE_REF
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(owned[i]);
    }
    PyMem_Free(owned);
    return 0;
}
#endif

/*
 * A suspended greenlet will never run again (its thread is gone, or the interpreter is
 * shutting down): drop what its saved state holds and decide whether the memory its frames
 * live in (its native stack and data stack) may be reused. It may not if a frame object of
 * one of its frames is referenced from elsewhere (a traceback, gr_frame kept by the user):
 * that object points into the memory. Otherwise its frame objects, which only the abandoned
 * frames own, are taken out of the garbage collector's view (they leak, with what those
 * frames held; on 3.15 what the frames held is released instead), the data-stack chunks
 * CPython allocated are freed, and 1 is returned.
 */
int corolet_pystate_abandon(corolet_pystate *s, void *root)
{
    Py_CLEAR(s->context);
#if PY311
    struct _PyInterpreterFrame *top = suspended_top(s);
    struct _PyInterpreterFrame *f;
    for (f = top; f != NULL; f = f->previous) {
        if (f->owner == FRAME_OWNED_BY_THREAD && f->frame_obj != NULL &&
            Py_REFCNT(f->frame_obj) > 1) {
            return 0;
        }
    }
#if PY315
    if (release_frames(top) < 0)
#endif
    {
        for (f = top; f != NULL; f = f->previous) {
            if (f->owner == FRAME_OWNED_BY_THREAD && f->frame_obj != NULL &&
                PyObject_GC_IsTracked((PyObject *)f->frame_obj)) {
                PyObject_GC_UnTrack(f->frame_obj);
            }
        }
    }
    free_datastack(s->datastack_chunk, root);
    s->datastack_chunk = NULL;
    s->datastack_top = NULL;
    s->datastack_limit = NULL;
    s->gc_cache = GC_CACHE_OFF;
#else
    /* 3.10: frames are heap objects, each owned by the evaluation call on the abandoned
     * stack that runs it (generator frames excepted: their generator owns them). Drop
     * those owners' references: unreferenced frames are freed with their locals, frames
     * still referenced elsewhere stay valid (nothing of theirs lives on the stack). */
    (void)root;
    PyFrameObject *f = s->frame;
    s->frame = NULL;
    while (f != NULL) {
        PyFrameObject *back = f->f_back; /* kept alive by its own evaluation call */
        if (f->f_gen == NULL) {
            Py_DECREF(f);
        }
        f = back;
    }
#endif
    return 1;
}

/* Drops the references a saved state holds (a greenlet that will never run again). */
void corolet_pystate_clear(corolet_pystate *s)
{
    Py_CLEAR(s->context);
    Py_CLEAR(s->exc_state.exc_value);
#if !PY311
    Py_CLEAR(s->exc_state.exc_type);
    Py_CLEAR(s->exc_state.exc_traceback);
#endif
}

int corolet_pystate_traverse(corolet_pystate *s, visitproc visit, void *arg)
{
    Py_VISIT(s->context);
    Py_VISIT(s->exc_state.exc_value);
#if !PY311
    Py_VISIT(s->exc_state.exc_type);
    Py_VISIT(s->exc_state.exc_traceback);
#endif
    return 0;
}

/*
 * Lets the garbage collector see the references held by the Python frames of a suspended
 * greenlet, so that reference cycles through them (a greenlet whose own frame is all that
 * refers to it) can be found. Only references the frames own are reported, and only those
 * CPython keeps in a known place (the function, code, locals dict, frame object and the fast
 * locals and cells); values on a frame's evaluation stack are not, which can only make the
 * collector keep more, never free too much.
 *
 * 3.14+: frames hold _PyStackRefs, and a tagged one (deferred, immortal, a tagged int or
 * NULL) owns no reference: only those that do are reported, as CPython's own collector counts
 * only references held on the object.
 *
 * The cache: a suspended frame's references cannot change until the greenlet runs again,
 * except through a frame object (3.13's f_locals writes to the frame; any version's
 * f_locals dict or trace hooks). So the first visit after a suspension also records what it
 * reports in s->gc_refs (up to GC_CACHE_SLOTS references), and later visits (the collector
 * visits every object two or three times a collection, and a parked greenlet sees many
 * collections) report the recorded ones without reading the frames, which for a crowd are
 * each a cache miss away (a chain of them). Invariants:
 * - Filled only if no frame has a frame object anyone else holds (its reference count is 1,
 *   the frame's own, and the collector does not track it, so nothing can reach it) and the
 *   references fit; otherwise GC_CACHE_OFF: the frames are read every time.
 * - corolet_pystate_save empties it (the greenlet ran: new frames, new references);
 *   corolet_pystate_frame turns it off (a frame object is handed out); so does abandoning.
 * - The recorded references are borrowed from the frames, which keep them as long as the
 *   cache is filled: a filled cache reports exactly what reading the frames would.
 */
#if PY314
#define REF_OBJECT(ref) (PyStackRef_RefcountOnObject(ref) ? PyStackRef_AsPyObjectBorrow(ref) : NULL)
#else
#define REF_OBJECT(ref) ((PyObject *)(ref))
#endif

/* Reports one reference (NULL: none) and, while filling the cache, records it. */
#define REPORT(op)                                                                            \
    do {                                                                                      \
        PyObject *op_ = (PyObject *)(op);                                                     \
        if (op_ != NULL) {                                                                    \
            if (filling) {                                                                    \
                if (n < GC_CACHE_SLOTS) {                                                     \
                    s->gc_refs[n++] = op_;                                                    \
                } else {                                                                      \
                    filling = 0;                                                              \
                }                                                                             \
            }                                                                                 \
            int r_ = visit(op_, arg);                                                         \
            if (r_ != 0) {                                                                    \
                return r_;                                                                    \
            }                                                                                 \
        }                                                                                     \
    } while (0)

int corolet_pystate_traverse_frames(corolet_pystate *s, visitproc visit, void *arg,
                                    const void *ahead, const void *behind)
{
#if PY311
    if (s->gc_cache >= GC_CACHE_FIRST) {
        int cached = s->gc_cache - GC_CACHE_FIRST;
        for (int i = 0; i < cached; i++) {
            Py_VISIT(s->gc_refs[i]);
        }
        return 0;
    }
    int filling = s->gc_cache == GC_CACHE_EMPTY;
    int n = 0;
    struct _PyInterpreterFrame *f = suspended_top(s);
    /* The frames sit together at the bottom of the greenlet's data stack, cold in the cache
     * on a full collection. `ahead` and `behind` are the data stacks of greenlets the
     * collector may visit soon, whichever way its list runs (src/readahead.rs; only ever
     * prefetched, so stale addresses are harmless): ask for as many of their lines as these
     * frames take, guessing that their frames are as deep, then for all of these frames'
     * lines at once rather than one miss after the other down the chain. */
    const char *chunk = (const char *)s->datastack_chunk;
    const char *top = (const char *)s->datastack_top;
    if (f != NULL && chunk != NULL && top > chunk && top - chunk <= 4096) {
        for (ptrdiff_t at = 0; at < top - chunk; at += 64) {
            if (ahead != NULL) {
                __builtin_prefetch((const char *)ahead + at);
            }
            if (behind != NULL) {
                __builtin_prefetch((const char *)behind + at);
            }
        }
        for (const char *line = chunk; line < top; line += 64) {
            __builtin_prefetch(line);
        }
    }
    for (; f != NULL; f = f->previous) {
        if (f->owner != FRAME_OWNED_BY_THREAD) {
            continue; /* generator frames are their generator's to report */
        }
#if PY314
        PyCodeObject *code = (PyCodeObject *)PyStackRef_AsPyObjectBorrow(f->f_executable);
        REPORT(REF_OBJECT(f->f_executable));
        REPORT(REF_OBJECT(f->f_funcobj));
#elif PY313
        PyCodeObject *code = (PyCodeObject *)f->f_executable;
        REPORT(f->f_executable);
        REPORT(f->f_funcobj);
#elif PY312
        PyCodeObject *code = f->f_code;
        REPORT(f->f_code);
        REPORT(f->f_funcobj);
#else
        PyCodeObject *code = f->f_code;
        REPORT(f->f_code);
        REPORT(f->f_func);
#endif
        REPORT(f->f_locals);
        PyObject *frame_obj = (PyObject *)f->frame_obj;
        if (frame_obj != NULL && (Py_REFCNT(frame_obj) != 1 || PyObject_GC_IsTracked(frame_obj))) {
            filling = 0; /* someone can reach the frame through it */
        }
        REPORT(frame_obj);
        if (code == NULL || !PyCode_Check((PyObject *)code)) {
            continue;
        }
        for (int i = 0; i < code->co_nlocalsplus; i++) {
            REPORT(REF_OBJECT(f->localsplus[i]));
        }
    }
    if (s->gc_cache == GC_CACHE_EMPTY) {
        s->gc_cache = filling ? GC_CACHE_FIRST + n : GC_CACHE_OFF;
    }
#else
    (void)ahead;
    (void)behind;
    /* 3.10: each frame is an object owned by the evaluation call running it (on the
     * greenlet's stack). A frame that has escaped is tracked by the collector, which then
     * sees what it holds: report the call's reference to it. A running frame is not
     * tracked: report what it holds ourselves (what frame_traverse would). */
    for (PyFrameObject *f = s->frame; f != NULL; f = f->f_back) {
        if (f->f_gen != NULL) {
            continue;
        }
        if (PyObject_GC_IsTracked((PyObject *)f)) {
            Py_VISIT(f);
            continue;
        }
        PyCodeObject *code = f->f_code;
        Py_VISIT(f->f_code);
        Py_VISIT(f->f_builtins);
        Py_VISIT(f->f_globals);
        Py_VISIT(f->f_locals);
        Py_VISIT(f->f_trace);
        Py_ssize_t slots = code->co_nlocals + PyTuple_GET_SIZE(code->co_cellvars) +
                           PyTuple_GET_SIZE(code->co_freevars);
        for (Py_ssize_t i = 0; i < slots; i++) {
            Py_VISIT(f->f_localsplus[i]);
        }
    }
#endif
    return 0;
}

/* Borrowed: the saved context, or NULL. */
PyObject *corolet_pystate_context(const corolet_pystate *s) { return s->context; }

/* Replaces the saved context, stealing a reference to `context` (may be NULL). */
void corolet_pystate_set_context(corolet_pystate *s, PyObject *context)
{
    PyObject *old = s->context;
    s->context = context;
    Py_XDECREF(old);
}

/*
 * The frame a suspended greenlet will resume in, as a new reference; NULL if it has no
 * Python frame (or, with an exception set, if the frame object could not be made). Frame
 * objects are made on demand, not at every switch: CPython makes them for the current frame
 * only, so the suspended frame is made current for that one call, with the garbage collector
 * off so that no Python code can run meanwhile.
 */
PyObject *corolet_pystate_frame(corolet_pystate *s)
{
#if PY311
    PyThreadState *ts = PyThreadState_GET();
    struct _PyInterpreterFrame *suspended = suspended_top(s);
    /* Through a frame object, Python code can change what a suspended frame refers to
     * (3.13's f_locals writes to the frame itself): the collector must read the frames from
     * now on until the greenlet is suspended again. */
    s->gc_cache = GC_CACHE_OFF;
#if PY313
    struct _PyInterpreterFrame **slot = &ts->current_frame;
#else
    struct _PyInterpreterFrame **slot = &ts->cframe->current_frame;
#endif
    if (suspended == NULL) {
        return NULL;
    }
    struct _PyInterpreterFrame *running = *slot;
    int was_enabled = PyGC_Disable();
    *slot = suspended;
    PyFrameObject *frame = PyThreadState_GetFrame(ts);
    *slot = running;
    if (was_enabled) {
        PyGC_Enable();
    }
    return (PyObject *)frame;
#else
    return Py_XNewRef((PyObject *)s->frame);
#endif
}

/* Borrowed: the running greenlet's context, or NULL. */
PyObject *corolet_tstate_context(void) { return PyThreadState_GET()->context; }

/* Replaces the running greenlet's context, stealing a reference (may be NULL). */
void corolet_tstate_set_context(PyObject *context)
{
    PyThreadState *ts = PyThreadState_GET();
    PyObject *old = ts->context;
    ts->context = context;
    ts->context_ver++;
    Py_XDECREF(old);
}

/* The trashcan nesting of this thread, for the upstream test helper (< 3.13 only). */
int corolet_trash_delete_nesting(void)
{
#if PY313
    return 0;
#elif PY312
    return PyThreadState_GET()->trash.delete_nesting;
#else
    return PyThreadState_GET()->trash_delete_nesting;
#endif
}

/* PY_VERSION_HEX of the headers this file was compiled against. */
unsigned long corolet_compiled_version(void) { return PY_VERSION_HEX; }

/* Whether those headers were a debug build's (Py_DEBUG: another object layout and ABI). */
int corolet_compiled_debug(void)
{
#ifdef Py_DEBUG
    return 1;
#else
    return 0;
#endif
}

/* Trace calls into the greenlet trace function run with CPython's own tracing and profiling
 * paused, as for any tracing hook. */
void corolet_enter_tracing(void)
{
#if PY311
    PyThreadState_EnterTracing(PyThreadState_GET());
#else
    PyThreadState *ts = PyThreadState_GET();
    ts->tracing++;
    ts->cframe->use_tracing = 0;
#endif
}

void corolet_leave_tracing(void)
{
#if PY311
    PyThreadState_LeaveTracing(PyThreadState_GET());
#else
    PyThreadState *ts = PyThreadState_GET();
    ts->tracing--;
    ts->cframe->use_tracing = (ts->tracing <= 0 && (ts->c_tracefunc != NULL || ts->c_profilefunc != NULL));
#endif
}

/* Whether the interpreter is shutting down (greenlets must not be switched into then). */
int corolet_is_finalizing(void)
{
#if PY313
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* Py_SET_REFCNT for the resurrection dance in tp_dealloc (a macro, not exported). */
void corolet_set_refcnt(PyObject *obj, Py_ssize_t refcnt) { Py_SET_REFCNT(obj, refcnt); }

#include <time.h>
/* The C library's CLOCKS_PER_SEC, for greenlet's provisional clean-up API. */
long corolet_clocks_per_sec(void) { return (long)CLOCKS_PER_SEC; }

/* The C library's clock(), in CLOCKS_PER_SEC units. */
long corolet_clock(void) { return (long)clock(); }
