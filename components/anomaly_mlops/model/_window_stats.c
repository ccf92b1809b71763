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
#include <stdint.h>
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

/* Rows begin..end-1 of X (n_metrics columns): each one's deviation from its window's mean (at
 * dev_col of its out row; -1: none) and the window's standard deviation (at std_col). scratch
 * holds (w - 1) + (end - begin) + w doubles. No Python calls: run without the GIL. */
static void fill_window_columns(const double *X, Py_ssize_t n_metrics, Py_ssize_t begin, Py_ssize_t end, Py_ssize_t w,
                                double *o, Py_ssize_t width, Py_ssize_t dev_col, Py_ssize_t std_col, double *scratch) {
    Py_ssize_t lo = begin - w + 1 > 0 ? begin - w + 1 : 0;
    Py_ssize_t pad = w - 1 - (begin - lo);
    Py_ssize_t length = pad + (end - lo);
    /* one metric's series, zeros ahead, then the squared deviations of one window */
    double *series = scratch;
    double *squares = series + length;
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
}

static int columns_fit(Py_ssize_t n_metrics, Py_ssize_t width, Py_ssize_t dev_col, Py_ssize_t std_col) {
    return (dev_col < 0 || dev_col + n_metrics <= width) && (std_col < 0 || std_col + n_metrics <= width);
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
        !columns_fit(n_metrics, width, dev_col, std_col)) {
        PyErr_SetString(PyExc_ValueError, "window_columns: buffer sizes do not match the rows and columns");
        goto done;
    }
    {
        double *scratch = malloc(sizeof(double) * (size_t)((w - 1) + (end - begin) + w));
        if (scratch == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        fill_window_columns((const double *)x.buf, n_metrics, begin, end, w, (double *)out.buf, width, dev_col,
                            std_col, scratch);
        Py_END_ALLOW_THREADS
        free(scratch);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* The features of the last `last` rows of each of several series, stacked in one matrix: series
 * i's rows go to out rows i*last.., its metrics as they are in columns 0..n_metrics-1 and the
 * window columns at dev_col and std_col, as window_columns writes them for that series alone.
 * Each series is a C-contiguous float64 matrix (rows x n_metrics) of at least `last` rows. The
 * lean server's tick of requests: one call, no matrix of the series side by side. */
static PyObject *stacked_window_features(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_buffer out;
    Py_ssize_t last, n_metrics, w, width, dev_col, std_col;
    if (!PyArg_ParseTuple(args, "Onnnw*nnn", &seq, &last, &n_metrics, &w, &out, &width, &dev_col, &std_col))
        return NULL;
    PyObject *result = NULL, *fast = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t n_series = 0, held = 0;
    if (last < 1 || n_metrics < 1 || w < 2 || width < n_metrics || !columns_fit(n_metrics, width, dev_col, std_col)) {
        PyErr_SetString(PyExc_ValueError, "stacked_window_features: rows, metrics, window or columns out of range");
        goto done;
    }
    fast = PySequence_Fast(seq, "stacked_window_features: the series must be a sequence");
    if (fast == NULL) goto done;
    n_series = PySequence_Fast_GET_SIZE(fast);
    if (out.len != (Py_ssize_t)sizeof(double) * n_series * last * width) {
        PyErr_SetString(PyExc_ValueError, "stacked_window_features: out does not hold series x last rows of width");
        goto done;
    }
    views = PyMem_Calloc((size_t)(n_series > 0 ? n_series : 1), sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_series; i++) {
        Py_buffer *v = &views[i];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        held++;
        const char *format = v->format ? v->format : "B";
        const uint16_t one = 1;
        const int little_endian = *(const unsigned char *)&one == 1;
        if (format[0] == '@' || format[0] == '=' || (format[0] == '<' && little_endian)) format++;
        if (v->ndim != 2 || v->itemsize != (Py_ssize_t)sizeof(double) || strcmp(format, "d") != 0 ||
            v->shape[1] != n_metrics || v->shape[0] < last) {
            PyErr_Format(PyExc_ValueError,
                         "stacked_window_features: series %zd is not a float64 matrix of %zd metrics and at least "
                         "%zd rows",
                         i, n_metrics, last);
            goto done;
        }
    }
    {
        double *scratch = malloc(sizeof(double) * (size_t)((w - 1) + last + w));
        if (scratch == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        double *o = (double *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n_series; i++) {
            const double *X = (const double *)views[i].buf;
            Py_ssize_t n = views[i].shape[0];
            double *block = o + i * last * width;
            for (Py_ssize_t r = 0; r < last; r++)
                memcpy(block + r * width, X + (n - last + r) * n_metrics, sizeof(double) * (size_t)n_metrics);
            fill_window_columns(X, n_metrics, n - last, n, w, block, width, dev_col, std_col, scratch);
        }
        Py_END_ALLOW_THREADS
        free(scratch);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_XDECREF(fast);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"window_columns", window_columns, METH_VARARGS,
     "window_columns(X_f64, n_total, n_metrics, begin, end, w, out_f64, width, dev_col, std_col): rows begin..end-1 "
     "of X's deviation from their window's mean (at dev_col) and its standard deviation (at std_col; -1: not "
     "written) into out's rows"},
    {"stacked_window_features", stacked_window_features, METH_VARARGS,
     "stacked_window_features(series, last, n_metrics, w, out_f64, width, dev_col, std_col): for each float64 "
     "matrix in series, its last `last` rows' metrics (columns 0..n_metrics-1) and window columns, stacked in "
     "out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_window_stats", NULL, -1, methods};

PyMODINIT_FUNC PyInit__window_stats(void) { return PyModule_Create(&module); }
