/*
 * Whether the garbage collector is running a collection right now.
 *
 * A greenlet's finalizer must not switch greenlets while the collector runs (a switch could
 * leave the collection suspended for as long as another greenlet keeps running): it defers
 * the kill instead. CPython keeps this flag in internal state, so this file alone is built as
 * core code against the interpreter's own headers.
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include "internal/pycore_interp.h"

int corolet_gc_collecting(void) { return PyInterpreterState_Get()->gc.collecting; }
