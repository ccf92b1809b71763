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

/* Independent walks advanced together: each step's loads of one lane do not wait for another
 * lane's, so the core overlaps them (one walk alone is a chain of dependent loads). Lane k reads
 * its row at x + k * row_stride (stride 0: every lane walks the same row, in its own tree).
 * `lanes` is a constant at each call, so the compiler unrolls it. Returns 1 when an index
 * leaves the arrays. */
#define LANES 16
static inline int walk_lanes(int lanes, intptr_t *node, const float *x, Py_ssize_t row_stride,
                             const node_t *node_at, Py_ssize_t n_nodes, Py_ssize_t n_inputs, Py_ssize_t depth) {
    for (int k = 0; k < lanes; k++)
        if (node[k] < 0 || node[k] >= n_nodes) return 1;
    for (Py_ssize_t d = 0; d < depth; d++) {
        for (int k = 0; k < lanes; k++) {
            const node_t *n = node_at + node[k];
            if (n->feature < 0 || n->feature >= n_inputs) return 1;
            /* float32 input against the float64 threshold, as numpy and the trees compare them */
            intptr_t next = n->child[(double)x[k * row_stride + n->feature] <= n->threshold];
            if (next < 0 || next >= n_nodes) return 1;
            node[k] = next;
        }
    }
    return 0;
}

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
        if (n_rows < LANES) {
            /* Few rows (serving): LANES trees of one row in lockstep, so their loads overlap. */
            for (Py_ssize_t r = 0; r < n_rows && !bad; r++) {
                const float *x = x_all + r * n_inputs;
                Py_ssize_t t = 0;
                for (; t + LANES <= n_trees && !bad; t += LANES) {
                    intptr_t node[LANES];
                    for (int k = 0; k < LANES; k++) node[k] = root[t + k];
                    bad = walk_lanes(LANES, node, x, 0, node_at, n_nodes, n_inputs, depth);
                    for (int k = 0; k < LANES && !bad; k++) depths[r] += value[node[k]];
                }
                for (; t < n_trees && !bad; t++) {
                    intptr_t node = root[t];
                    bad = walk_lanes(1, &node, x, 0, node_at, n_nodes, n_inputs, depth); /* the trees left over */
                    if (!bad) depths[r] += value[node];
                }
            }
        } else {
            /* Tree by tree over all rows, LANES rows in lockstep: a tree's nodes stay in cache
             * for the rows; each row still sums its trees in order, as scikit-learn does. */
            for (Py_ssize_t t = 0; t < n_trees && !bad; t++) {
                Py_ssize_t r = 0;
                for (; r + LANES <= n_rows && !bad; r += LANES) {
                    intptr_t node[LANES];
                    for (int k = 0; k < LANES; k++) node[k] = root[t];
                    bad = walk_lanes(LANES, node, x_all + r * n_inputs, n_inputs, node_at, n_nodes, n_inputs, depth);
                    for (int k = 0; k < LANES && !bad; k++) depths[r + k] += value[node[k]];
                }
                for (; r < n_rows && !bad; r++) {
                    intptr_t node = root[t];
                    bad = walk_lanes(1, &node, x_all + r * n_inputs, 0, node_at, n_nodes, n_inputs, depth); /* rows left over */
                    if (!bad) depths[r] += value[node];
                }
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
