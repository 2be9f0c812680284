/* numpy.histogram(values, bins=len(edges) - 1, range=(edges[0], edges[-1])) for float32
 * values and numpy's own float32 edges, the same counts: a value v in the range goes to
 * the bin i with edges[i] <= v < edges[i + 1], the last bin including its right edge,
 * as numpy's corrected estimate places it; NaN and values outside the range count
 * nowhere. One pass without temporaries and without the GIL: numpy's takes 15 ms for a
 * 32x256x256 smoothed block here, this one 6 ms (tasks/threshold.py). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

/* Four partial counts, so that runs of one bin (a smooth image has them) do not wait on
 * each other's increments */
static void count(const float *restrict values, Py_ssize_t size, const float *restrict edges,
                  Py_ssize_t bins, int64_t *restrict counts, int64_t *restrict parts) {
    float first = edges[0], last = edges[bins], scale = (float)bins / (last - first);
    for (Py_ssize_t k = 0; k < size; k++) {
        float v = values[k];
        if (!(v >= first && v <= last)) continue;
        Py_ssize_t i = (Py_ssize_t)((v - first) * scale); /* an estimate, corrected below */
        if (i > bins - 1) i = bins - 1;
        while (i > 0 && v < edges[i]) i--;
        while (i < bins - 1 && v >= edges[i + 1]) i++;
        parts[(k & 3) * bins + i]++;
    }
    for (Py_ssize_t i = 0; i < bins; i++)
        counts[i] += parts[i] + parts[bins + i] + parts[2 * bins + i] + parts[3 * bins + i];
}

static PyObject *histogram(PyObject *self, PyObject *args) {
    Py_buffer values, edges, counts;
    if (!PyArg_ParseTuple(args, "y*y*w*", &values, &edges, &counts)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t bins = edges.len / (Py_ssize_t)sizeof(float) - 1;
    if (bins < 1 || values.len % (Py_ssize_t)sizeof(float) != 0 ||
        counts.len != bins * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "histogram: sizes do not match");
        goto done;
    }
    int64_t *parts = calloc(4 * (size_t)bins, sizeof(int64_t));
    if (parts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    count(values.buf, values.len / (Py_ssize_t)sizeof(float), edges.buf, bins, counts.buf,
          parts);
    Py_END_ALLOW_THREADS
    free(parts);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&edges);
    PyBuffer_Release(&counts);
    return result;
}

static PyMethodDef methods[] = {
    {"histogram", histogram, METH_VARARGS,
     "histogram(values, edges, counts): add the counts of C-contiguous float32 values "
     "between float32 edges (ascending, bins + 1 of them) to int64 counts (bins)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_histogram", NULL, -1, methods};

PyMODINIT_FUNC PyInit__histogram(void) { return PyModule_Create(&module); }
