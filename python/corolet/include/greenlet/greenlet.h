/*
 * greenlet's C API, served by corolet.
 *
 * C extensions written against greenlet (gevent's compiled modules, greenlet's own test
 * helpers) include this header and call PyGreenlet_Import() once; the functions then come
 * from the capsule `greenlet._C_API` (corolet's, after corolet.install()). The object layout
 * and the table of twelve entries are greenlet 3.x's, so code compiled against greenlet's own
 * header works unchanged. Find this directory with corolet.get_include().
 */
#ifndef COROLET_GREENLET_H
#define COROLET_GREENLET_H
#ifndef Py_GREENLETOBJECT_H
#define Py_GREENLETOBJECT_H

#include <Python.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Frozen for compatibility; describes nothing. */
#define GREENLET_VERSION "1.0.0"

/* The object: 40 bytes on 64-bit; subclasses compiled in C put their fields after it. */
typedef struct _greenlet {
    PyObject_HEAD
    PyObject *weakreflist;
    PyObject *dict;
    void *pimpl; /* the implementation's state; never touch */
} PyGreenlet;

/* Slots of the capsule's table. */
#define PyGreenlet_API_pointers 12
#define PyGreenlet_Type_NUM 0
#define PyExc_GreenletError_NUM 1
#define PyExc_GreenletExit_NUM 2
#define PyGreenlet_New_NUM 3
#define PyGreenlet_GetCurrent_NUM 4
#define PyGreenlet_Throw_NUM 5
#define PyGreenlet_Switch_NUM 6
#define PyGreenlet_SetParent_NUM 7
#define PyGreenlet_MAIN_NUM 8
#define PyGreenlet_STARTED_NUM 9
#define PyGreenlet_ACTIVE_NUM 10
#define PyGreenlet_GET_PARENT_NUM 11

typedef PyGreenlet *(*_corolet_new_fn)(PyObject *run, PyGreenlet *parent);
typedef PyGreenlet *(*_corolet_getcurrent_fn)(void);
typedef PyObject *(*_corolet_throw_fn)(PyGreenlet *g, PyObject *typ, PyObject *val,
                                       PyObject *tb);
typedef PyObject *(*_corolet_switch_fn)(PyGreenlet *g, PyObject *args, PyObject *kwargs);
typedef int (*_corolet_setparent_fn)(PyGreenlet *g, PyGreenlet *parent);
typedef int (*_corolet_predicate_fn)(PyGreenlet *g);
typedef PyGreenlet *(*_corolet_getparent_fn)(PyGreenlet *g);

/* One table per compilation unit, filled by PyGreenlet_Import(). */
static void **_PyGreenlet_API = NULL;

#define _COROLET_API(num, type) ((type)_PyGreenlet_API[num])

#define PyGreenlet_Type (*_COROLET_API(PyGreenlet_Type_NUM, PyTypeObject *))
#define PyExc_GreenletError _COROLET_API(PyExc_GreenletError_NUM, PyObject *)
#define PyExc_GreenletExit _COROLET_API(PyExc_GreenletExit_NUM, PyObject *)

/* greenlet.greenlet(run, parent); either may be NULL. New reference. */
#define PyGreenlet_New _COROLET_API(PyGreenlet_New_NUM, _corolet_new_fn)
/* greenlet.getcurrent(); new reference, or NULL with an exception (at shutdown). */
#define PyGreenlet_GetCurrent _COROLET_API(PyGreenlet_GetCurrent_NUM, _corolet_getcurrent_fn)
/* g.throw(typ, val, tb). */
#define PyGreenlet_Throw _COROLET_API(PyGreenlet_Throw_NUM, _corolet_throw_fn)
/* g.switch(*args, **kwargs); args NULL means (), kwargs NULL (or not a dict) means none. */
#define PyGreenlet_Switch _COROLET_API(PyGreenlet_Switch_NUM, _corolet_switch_fn)
/* g.parent = parent; 0, or -1 with an exception. */
#define PyGreenlet_SetParent _COROLET_API(PyGreenlet_SetParent_NUM, _corolet_setparent_fn)
/* Predicates: 1 or 0; MAIN gives -1 with TypeError for a non-greenlet. */
#define PyGreenlet_MAIN _COROLET_API(PyGreenlet_MAIN_NUM, _corolet_predicate_fn)
#define PyGreenlet_STARTED _COROLET_API(PyGreenlet_STARTED_NUM, _corolet_predicate_fn)
#define PyGreenlet_ACTIVE _COROLET_API(PyGreenlet_ACTIVE_NUM, _corolet_predicate_fn)
/* g.parent as a new reference; NULL, with no exception, for a main greenlet. */
#define PyGreenlet_GetParent _COROLET_API(PyGreenlet_GET_PARENT_NUM, _corolet_getparent_fn)
#define PyGreenlet_GET_PARENT PyGreenlet_GetParent /* older name */

#define PyGreenlet_Check(op) ((op) && PyObject_TypeCheck((op), &PyGreenlet_Type))

/* Imports the table from the `greenlet` package (corolet after corolet.install()). */
#define PyGreenlet_Import() \
    (_PyGreenlet_API = (void **)PyCapsule_Import("greenlet._C_API", 0))

#ifdef __cplusplus
}
#endif

#endif /* Py_GREENLETOBJECT_H */
#endif /* COROLET_GREENLET_H */
