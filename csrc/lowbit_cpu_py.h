/*
 * lowbit_cpu_py.h -- the shared path enum and CPU-feature report as Python functions (header only), in the
 * method table of every extension:
 *
 *   path_names() -> tuple       every path name, by id (the enum of lowbit_cpu.h)
 *   supported_paths() -> tuple  the paths this CPU runs, slowest first
 *   best_path() -> str          the fastest of them
 *   cpu_features() -> tuple     the CPU features the kernels test that this CPU (and OS) has
 *
 * lowbit.kernels.dispatch reads them from one extension and checks every other one has the same path_names.
 * lb_check_path_arg validates a path id a binding was given.
 */
#ifndef LOWBIT_CPU_PY_H
#define LOWBIT_CPU_PY_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#include <string.h>

#include "lowbit_cpu.h"

/* A tuple of the names name(i) for i < n with keep(i) (keep NULL: all). */
static inline PyObject *lb__names(int n, const char *(*name)(int), int (*keep)(int))
{
    PyObject *l = PyList_New(0);
    if (!l)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (keep && !keep(i))
            continue;
        PyObject *s = PyUnicode_FromString(name(i));
        if (!s || PyList_Append(l, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *t = PyList_AsTuple(l);
    Py_DECREF(l);
    return t;
}

static inline int lb__has_feature(int f) { return lb_cpu_has((lb_cpu_feature)f); }

static inline PyObject *lb_py_path_names(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return lb__names(LB_NPATHS, lb_path_name, NULL);
}

static inline PyObject *lb_py_supported_paths(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return lb__names(LB_NPATHS, lb_path_name, lb_path_supported);
}

static inline PyObject *lb_py_best_path(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return PyUnicode_FromString(lb_path_name(lb_best_path()));
}

static inline PyObject *lb_py_cpu_features(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return lb__names(LB_CPU_NFEATURES, lb_cpu_feature_name, lb__has_feature);
}

/* A path id argument: one this CPU supports (not LB_PATH_AUTO); returns 0, or -1 with ValueError set. */
static inline int lb_check_path_arg(int path)
{
    if (path < 0 || path >= LB_NPATHS || !lb_path_supported(path)) {
        PyErr_Format(PyExc_ValueError, "kernel path %d is not available on this CPU", path);
        return -1;
    }
    return 0;
}

/* A path argument that may also be LB_PATH_AUTO: the path to run, or -1 with ValueError set. */
static inline int lb_resolve_path_arg(int path)
{
    const int p = lb_resolve_path(path);
    if (p < 0)
        PyErr_Format(PyExc_ValueError, "kernel path %d is not available on this CPU", path);
    return p;
}

/* A binding's ValueError: sets it, and returns NULL for the binding to return. */
static inline PyObject *lb_value_error(const char *msg)
{
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

/* The binding of a prepared layout's size, bytes(path, rows, cols) (bg_prepared_bytes, bc_prepared_bytes):
 * args (path, rows, cols) parsed by fmt ("inn:name"), all checked. */
static inline PyObject *lb_path_size(PyObject *args, const char *fmt, size_t (*bytes)(int, size_t, size_t))
{
    int path;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, fmt, &path, &rows, &cols))
        return NULL;
    if (path < 0 || path >= LB_NPATHS || rows < 0 || cols < 0) {
        PyErr_Format(PyExc_ValueError, "%s: bad argument", strchr(fmt, ':') + 1);
        return NULL;
    }
    return PyLong_FromSize_t(bytes(path, (size_t)rows, (size_t)cols));
}

/* A thread count argument (>= 1); returns 0, or -1 with ValueError set. */
static inline int lb_check_nthreads(int nthreads)
{
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return -1;
    }
    return 0;
}

/* The (path, nthreads) pair most bindings take: path as lb_check_path_arg, then nthreads. */
static inline int lb_check_path_nthreads(int path, int nthreads)
{
    return lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0 ? -1 : 0;
}

#define LB_CPU_PY_METHODS                                                                                       \
    {"path_names", lb_py_path_names, METH_NOARGS, "path_names() -> tuple of all path names, by id"},          \
    {"supported_paths", lb_py_supported_paths, METH_NOARGS, "supported_paths() -> names of the paths this CPU runs"}, \
    {"best_path", lb_py_best_path, METH_NOARGS, "best_path() -> name of the fastest path this CPU runs"},     \
    {"cpu_features", lb_py_cpu_features, METH_NOARGS,                                                          \
     "cpu_features() -> names of the CPU features the kernels test that this CPU (and OS) has"}

#endif /* LOWBIT_CPU_PY_H */
