/* The window columns in C (model/features.py): for each row, the mean and the standard deviation
 * of the last w rows of each metric, written into the feature matrix as the deviation from the
 * mean and the spread. Every sum is numpy's pairwise sum in numpy's order (8 accumulators up to
 * 128 terms, halves above), over the same w terms numpy's sliding view sums, zeros ahead of the
 * first row included; so these are the figures model/features.py's numpy path computes, bit for
 * bit, without its (rows x metrics x window) work arrays. Buffers only (no numpy headers); the
 * GIL is released, so threads computing chunks run on several cores. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* numpy's pairwise_sum for float64 (numpy/_core/src/umath/loops_utils.h.src), contiguous. */
static double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double res = 0.;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

static PyObject *window_columns(PyObject *self, PyObject *args) {
    Py_buffer x, out;
    Py_ssize_t n_total, n_metrics, begin, end, w, width, dev_col, std_col;
    if (!PyArg_ParseTuple(args, "y*nnnnnw*nnn", &x, &n_total, &n_metrics, &begin, &end, &w, &out, &width, &dev_col,
                          &std_col))
        return NULL;
    PyObject *result = NULL;
    if (n_total < 0 || n_metrics < 1 || w < 2 || begin < 0 || end < begin || end > n_total) {
        PyErr_SetString(PyExc_ValueError, "window_columns: rows, metrics or window out of range");
        goto done;
    }
    if (x.len != (Py_ssize_t)sizeof(double) * n_total * n_metrics ||
        out.len != (Py_ssize_t)sizeof(double) * (end - begin) * width ||
        (dev_col >= 0 && dev_col + n_metrics > width) || (std_col >= 0 && std_col + n_metrics > width)) {
        PyErr_SetString(PyExc_ValueError, "window_columns: buffer sizes do not match the rows and columns");
        goto done;
    }
    {
        const double *X = (const double *)x.buf;
        double *o = (double *)out.buf;
        Py_ssize_t lo = begin - w + 1 > 0 ? begin - w + 1 : 0;
        Py_ssize_t pad = w - 1 - (begin - lo);
        Py_ssize_t length = pad + (end - lo);
        /* one metric's series, zeros ahead, then the squared deviations of one window */
        double *series = malloc(sizeof(double) * (size_t)(length + w));
        if (series == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        double *squares = series + length;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t j = 0; j < n_metrics; j++) {
            memset(series, 0, sizeof(double) * (size_t)pad);
            for (Py_ssize_t i = lo; i < end; i++) series[pad + i - lo] = X[i * n_metrics + j];
            for (Py_ssize_t r = begin; r < end; r++) {
                const double *window = series + (r - begin);
                Py_ssize_t count = r + 1 < w ? r + 1 : w;
                double mean = (0. + pairwise_sum(window, w)) / (double)count;
                double *row = o + (r - begin) * width;
                if (dev_col >= 0) row[dev_col + j] = X[r * n_metrics + j] - mean;
                if (std_col >= 0) {
                    Py_ssize_t zeros = w - count; /* the zeros ahead of the first row: not deviations */
                    for (Py_ssize_t k = 0; k < w; k++) {
                        double d = window[k] - mean;
                        squares[k] = k < zeros ? 0. : d * d;
                    }
                    double var = (0. + pairwise_sum(squares, w)) / (double)(count > 1 ? count - 1 : 1);
                    row[std_col + j] = count > 1 ? sqrt(var) : 0.;
                }
            }
        }
        Py_END_ALLOW_THREADS
        free(series);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"window_columns", window_columns, METH_VARARGS,
     "window_columns(X_f64, n_total, n_metrics, begin, end, w, out_f64, width, dev_col, std_col): rows begin..end-1 "
     "of X's deviation from their window's mean (at dev_col) and its standard deviation (at std_col; -1: not "
     "written) into out's rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_window_stats", NULL, -1, methods};

PyMODINIT_FUNC PyInit__window_stats(void) { return PyModule_Create(&module); }
