/*
 * bitgemm_py.h -- buffer-argument helpers of bitgemm_module.c, shared with the other binding files
 * registered in the same module (qgemm_module.c). Each sets a Python exception and returns -1 on
 * failure.
 */
#ifndef LOWBIT_BITGEMM_PY_H
#define LOWBIT_BITGEMM_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bitgemm.h"

/* element type of a buffer from its struct format and itemsize (-1: unsupported, no exception) */
int parse_dtype(const Py_buffer *v, bg_dtype *out);
/* a 2-D strided buffer (released by the caller on success only) */
int get_2d(PyObject *obj, Py_buffer *v, int writable, const char *what);
/* 2-D buffer of itemsize-byte elements (8: 64-bit words when want_signed_or_any == 0; 4: int32 when
 * 1) with unit inner stride; *ld = row stride in elements */
int check_matrix(const Py_buffer *v, Py_ssize_t itemsize, int want_signed_or_any, ptrdiff_t *ld, const char *what);
/* 1-D contiguous byte buffer of exactly `bytes`, 64-byte aligned */
int get_prep(PyObject *obj, Py_buffer *v, int writable, size_t bytes, const char *what);
/* 1-D contiguous int32 vector of length n */
int get_vec_i32(PyObject *obj, Py_buffer *v, Py_ssize_t n, const char *what);
/* a supported path id (not AUTO) */
int check_path_arg(int path);

extern PyMethodDef qg_methods[];

#endif /* LOWBIT_BITGEMM_PY_H */
