/* The flattened isolation forest's walk in C (model/fastforest.py): per row, every tree from
 * its root for `depth` steps, summing the leaves' path lengths in tree order, as scikit-learn
 * sums them. Buffers only (no numpy headers); the GIL is released while walking, so threads
 * scoring chunks run on several cores. Node and feature indices are bounds-checked: a damaged
 * forest is an error, never a read outside the arrays. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int check(Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t count, const char *name) {
    if (b->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, b->len, itemsize * count);
        return 0;
    }
    return 1;
}

/* One node in one cache line's share: what a step reads, together (model/fastforest.py NODE). */
typedef struct {
    double threshold;
    int32_t feature;
    int32_t child[2]; /* [right, left]: the next node is child[x <= threshold] */
    int32_t pad;
} node_t;

static PyObject *walk(PyObject *self, PyObject *args) {
    Py_buffer scaled, nodes, roots, leaf, out;
    Py_ssize_t n_rows, n_inputs, depth;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnnw*", &scaled, &nodes, &roots, &leaf, &n_rows, &n_inputs, &depth, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_nodes = nodes.len / (Py_ssize_t)sizeof(node_t);
    Py_ssize_t n_trees = roots.len / (Py_ssize_t)sizeof(intptr_t);
    if (n_rows < 0 || n_inputs < 0 || depth < 0 || !check(&scaled, sizeof(float), n_rows * n_inputs, "scaled") ||
        !check(&nodes, sizeof(node_t), n_nodes, "nodes") || !check(&roots, sizeof(intptr_t), n_trees, "roots") ||
        !check(&leaf, sizeof(double), n_nodes, "leaf_value") || !check(&out, sizeof(double), n_rows, "out"))
        goto done;
    {
        const float *x_all = (const float *)scaled.buf;
        const node_t *node_at = (const node_t *)nodes.buf;
        const intptr_t *root = (const intptr_t *)roots.buf;
        const double *value = (const double *)leaf.buf;
        double *depths = (double *)out.buf;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = 0; r < n_rows; r++) depths[r] = 0.0;
        /* Tree by tree over all rows: a tree's nodes stay in cache for the rows; each row still
         * sums its trees in order, as scikit-learn does. */
        for (Py_ssize_t t = 0; t < n_trees && !bad; t++) {
            for (Py_ssize_t r = 0; r < n_rows; r++) {
                const float *x = x_all + r * n_inputs;
                intptr_t node = root[t];
                for (Py_ssize_t d = 0; d < depth; d++) {
                    if (node < 0 || node >= n_nodes) break;
                    const node_t *n = node_at + node;
                    if (n->feature < 0 || n->feature >= n_inputs) {
                        node = -1;
                        break;
                    }
                    /* float32 input against the float64 threshold, as numpy and the trees compare them */
                    node = n->child[(double)x[n->feature] <= n->threshold];
                }
                if (node < 0 || node >= n_nodes) {
                    bad = 1;
                    break;
                }
                depths[r] += value[node];
            }
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "the forest's node or feature indices leave its arrays");
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&scaled);
    PyBuffer_Release(&nodes);
    PyBuffer_Release(&roots);
    PyBuffer_Release(&leaf);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(scaled_f32, nodes, roots_intp, leaf_f64, n_rows, n_inputs, depth, out_f64): each row's summed leaf "
     "path lengths into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_forest_walk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__forest_walk(void) { return PyModule_Create(&module); }
