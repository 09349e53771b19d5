/*
 * A C extension built at test time against corolet's greenlet.h, as gevent's compiled modules
 * are built against greenlet's: it defines subclasses of greenlet.greenlet at the C level and
 * wraps every function of the C API so that Python tests can call them with any argument.
 *
 * - StaticSub: a static type made the plain way (PyType_Ready), with a field of its own and
 *   a tp_dealloc that chains to the base's, as Cython's cdef classes do. Instances hold no
 *   reference to their (static) type.
 * - HeapSub: a heap type from PyType_FromSpecWithBases whose tp_dealloc drops the instance's
 *   type reference after chaining to the base's, as CPython requires of heap types.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "greenlet/greenlet.h"

typedef struct {
    PyGreenlet base;
    PyObject *tag;
} SubObject;

static int sub_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((SubObject *)self)->tag);
    return PyGreenlet_Type.tp_traverse(self, visit, arg);
}

static int sub_clear(PyObject *self)
{
    Py_CLEAR(((SubObject *)self)->tag);
    return PyGreenlet_Type.tp_clear(self);
}

/* What a Cython cdef class's deallocator does: finalizer first, own fields, then the base. */
static void chain_dealloc(PyObject *self)
{
    if (Py_TYPE(self)->tp_finalize != NULL && !PyObject_GC_IsFinalized(self)) {
        if (PyObject_CallFinalizerFromDealloc(self) < 0) {
            return; /* resurrected */
        }
    }
    PyObject_GC_UnTrack(self);
    Py_CLEAR(((SubObject *)self)->tag);
    PyObject_GC_Track(self);
    PyGreenlet_Type.tp_dealloc(self);
}

static PyObject *sub_get_tag(PyObject *self, void *closure)
{
    PyObject *tag = ((SubObject *)self)->tag;
    return Py_NewRef(tag ? tag : Py_None);
}

static int sub_set_tag(PyObject *self, PyObject *value, void *closure)
{
    Py_XINCREF(value);
    Py_XSETREF(((SubObject *)self)->tag, value);
    return 0;
}

static PyGetSetDef sub_getset[] = {
    {"tag", sub_get_tag, sub_set_tag, NULL, NULL},
    {NULL},
};

static PyTypeObject StaticSub_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corolet_ctest.StaticSub",
    .tp_basicsize = sizeof(SubObject),
    .tp_dealloc = chain_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = sub_traverse,
    .tp_clear = sub_clear,
    .tp_getset = sub_getset,
};

static void heap_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    chain_dealloc(self);
    Py_DECREF(tp);
}

static PyType_Slot heap_slots[] = {
    {Py_tp_dealloc, heap_dealloc},
    {Py_tp_traverse, sub_traverse},
    {Py_tp_clear, sub_clear},
    {Py_tp_getset, sub_getset},
    {0, NULL},
};

static PyType_Spec heap_spec = {
    .name = "corolet_ctest.HeapSub",
    .basicsize = sizeof(SubObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = heap_slots,
};

/* None stands for NULL, so that tests can pass "no argument" to the C API. */
static PyObject *or_null(PyObject *o) { return o == Py_None ? NULL : o; }

static PyObject *api_new(PyObject *m, PyObject *args)
{
    PyObject *run, *parent;
    if (!PyArg_ParseTuple(args, "OO", &run, &parent)) {
        return NULL;
    }
    return (PyObject *)PyGreenlet_New(or_null(run), (PyGreenlet *)or_null(parent));
}

static PyObject *api_getcurrent(PyObject *m, PyObject *unused)
{
    return (PyObject *)PyGreenlet_GetCurrent();
}

static PyObject *api_switch(PyObject *m, PyObject *args)
{
    PyObject *g, *a, *kw;
    if (!PyArg_ParseTuple(args, "OOO", &g, &a, &kw)) {
        return NULL;
    }
    return PyGreenlet_Switch((PyGreenlet *)or_null(g), or_null(a), or_null(kw));
}

static PyObject *api_throw(PyObject *m, PyObject *args)
{
    PyObject *g, *typ, *val, *tb;
    if (!PyArg_ParseTuple(args, "OOOO", &g, &typ, &val, &tb)) {
        return NULL;
    }
    return PyGreenlet_Throw((PyGreenlet *)or_null(g), typ, or_null(val), or_null(tb));
}

static PyObject *api_setparent(PyObject *m, PyObject *args)
{
    PyObject *g, *parent;
    if (!PyArg_ParseTuple(args, "OO", &g, &parent)) {
        return NULL;
    }
    if (PyGreenlet_SetParent((PyGreenlet *)or_null(g), (PyGreenlet *)or_null(parent)) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *api_getparent(PyObject *m, PyObject *g)
{
    PyObject *parent = (PyObject *)PyGreenlet_GetParent((PyGreenlet *)or_null(g));
    if (parent == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return parent;
}

/* The predicates return -1 with an exception, else 0 or 1. */
static PyObject *predicate(int r)
{
    if (r < 0) {
        return PyErr_Occurred() ? NULL : PyLong_FromLong(r);
    }
    return PyBool_FromLong(r);
}

static PyObject *api_main(PyObject *m, PyObject *g)
{
    return predicate(PyGreenlet_MAIN((PyGreenlet *)or_null(g)));
}

static PyObject *api_started(PyObject *m, PyObject *g)
{
    return predicate(PyGreenlet_STARTED((PyGreenlet *)or_null(g)));
}

static PyObject *api_active(PyObject *m, PyObject *g)
{
    return predicate(PyGreenlet_ACTIVE((PyGreenlet *)or_null(g)));
}

static PyObject *api_check(PyObject *m, PyObject *g)
{
    return PyBool_FromLong(PyGreenlet_Check(g));
}

static PyObject *api_objects(PyObject *m, PyObject *unused)
{
    return Py_BuildValue("(OOO)", (PyObject *)&PyGreenlet_Type, PyExc_GreenletError,
                         PyExc_GreenletExit);
}

static PyMethodDef methods[] = {
    {"new", api_new, METH_VARARGS, "PyGreenlet_New(run, parent)"},
    {"getcurrent", api_getcurrent, METH_NOARGS, "PyGreenlet_GetCurrent()"},
    {"switch", api_switch, METH_VARARGS, "PyGreenlet_Switch(g, args, kwargs)"},
    {"throw", api_throw, METH_VARARGS, "PyGreenlet_Throw(g, typ, val, tb)"},
    {"setparent", api_setparent, METH_VARARGS, "PyGreenlet_SetParent(g, parent)"},
    {"getparent", api_getparent, METH_O, "PyGreenlet_GetParent(g)"},
    {"main", api_main, METH_O, "PyGreenlet_MAIN(g)"},
    {"started", api_started, METH_O, "PyGreenlet_STARTED(g)"},
    {"active", api_active, METH_O, "PyGreenlet_ACTIVE(g)"},
    {"check", api_check, METH_O, "PyGreenlet_Check(g)"},
    {"objects", api_objects, METH_NOARGS, "(PyGreenlet_Type, PyExc_GreenletError, PyExc_GreenletExit)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "corolet_ctest", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit_corolet_ctest(void)
{
    PyGreenlet_Import();
    if (_PyGreenlet_API == NULL) {
        return NULL;
    }
    StaticSub_Type.tp_base = &PyGreenlet_Type;
    if (PyType_Ready(&StaticSub_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *heap = PyType_FromSpecWithBases(&heap_spec, (PyObject *)&PyGreenlet_Type);
    if (heap == NULL || PyModule_AddObject(m, "HeapSub", heap) < 0) {
        Py_XDECREF(heap);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&StaticSub_Type);
    if (PyModule_AddObject(m, "StaticSub", (PyObject *)&StaticSub_Type) < 0) {
        Py_DECREF(&StaticSub_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
