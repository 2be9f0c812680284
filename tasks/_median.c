/* scipy.ndimage.median_filter(block, size, mode="reflect") for integer images, the same
 * values: the median of a window of k voxels is the one of rank k // 2 among them, as
 * scipy's rank filter takes it, and a median is one of the window's own values, so any
 * exact selection gives scipy's result.
 *
 * Why not scipy itself: its rank filter selects per voxel with branches, 110 ns a pixel
 * for a 3x3 median on a 1024x1024 uint16 chunk and 420 ns a voxel for 3x3x3. Here the
 * windows of 64 neighbouring voxels are gathered side by side and sorted far enough with
 * a min/max network (rank + 1 rounds of selection), which the compiler turns into vector
 * instructions; see tasks/filters.py for the measurements. The caller pads the block by
 * size // 2 on each side (numpy's 'symmetric' is scipy's 'reflect') and names the part
 * of the output it keeps. The GIL is released while sorting. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 64   /* voxels sorted side by side */
#define MAX_WINDOW 125 /* 5x5x5; larger windows go to scipy */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* padded (pz, py, px) -> out (cz, cy, cx): out[z, y, x] = median of padded[z + sz + a,
 * y + sy + b, x + sx + c] over the window a < wz, b < wy, c < wx */
#define MEDIAN_FOR(T, NAME)                                                                   \
    VECTOR_CLONES                                                                             \
    static void NAME(const T *restrict padded, T *restrict out, const Py_ssize_t *pshape,    \
                     const Py_ssize_t *count, const Py_ssize_t *from,                        \
                     const Py_ssize_t *window, T *restrict lanes) {                          \
        Py_ssize_t k = window[0] * window[1] * window[2], rank = k / 2;                      \
        for (Py_ssize_t z = 0; z < count[0]; z++)                                             \
            for (Py_ssize_t y = 0; y < count[1]; y++)                                         \
                for (Py_ssize_t x0 = 0; x0 < count[2]; x0 += LANES) {                        \
                    Py_ssize_t n = count[2] - x0 < LANES ? count[2] - x0 : LANES, j = 0;     \
                    for (Py_ssize_t a = 0; a < window[0]; a++)                                \
                        for (Py_ssize_t b = 0; b < window[1]; b++)                            \
                            for (Py_ssize_t c = 0; c < window[2]; c++, j++) {                 \
                                const T *src = padded +                                       \
                                               ((z + from[0] + a) * pshape[1] + y + from[1] + \
                                                b) * pshape[2] +                              \
                                               x0 + from[2] + c;                              \
                                T *dst = lanes + j * LANES;                                   \
                                for (Py_ssize_t t = 0; t < n; t++) dst[t] = src[t];           \
                            }                                                                 \
                    for (Py_ssize_t i = 0; i <= rank; i++) {                                  \
                        T *low = lanes + i * LANES;                                           \
                        for (Py_ssize_t m = i + 1; m < k; m++) {                              \
                            T *high = lanes + m * LANES;                                      \
                            for (Py_ssize_t t = 0; t < LANES; t++) {                          \
                                T u = low[t], v = high[t];                                    \
                                low[t] = u < v ? u : v;                                       \
                                high[t] = u < v ? v : u;                                      \
                            }                                                                 \
                        }                                                                     \
                    }                                                                         \
                    T *row = out + (z * count[1] + y) * count[2] + x0;                        \
                    const T *median = lanes + rank * LANES;                                   \
                    for (Py_ssize_t t = 0; t < n; t++) row[t] = median[t];                    \
                }                                                                             \
    }

MEDIAN_FOR(uint8_t, median_u8)
MEDIAN_FOR(int8_t, median_i8)
MEDIAN_FOR(uint16_t, median_u16)
MEDIAN_FOR(int16_t, median_i16)
MEDIAN_FOR(uint32_t, median_u32)
MEDIAN_FOR(int32_t, median_i32)

static PyObject *median(PyObject *self, PyObject *args) {
    Py_buffer padded, out;
    const char *type;
    Py_ssize_t p[3], c[3], f[3], w[3];
    if (!PyArg_ParseTuple(args, "y*w*s(nnn)(nnn)(nnn)(nnn)", &padded, &out, &type, &p[0], &p[1],
                          &p[2], &c[0], &c[1], &c[2], &f[0], &f[1], &f[2], &w[0], &w[1], &w[2]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t itemsize = type[1] - '0', k = w[0] * w[1] * w[2];
    int fits = k >= 1 && k <= MAX_WINDOW;
    for (int d = 0; d < 3; d++)
        fits = fits && w[d] >= 1 && c[d] >= 0 && f[d] >= 0 && f[d] + c[d] + w[d] - 1 <= p[d];
    if (!fits || padded.len != p[0] * p[1] * p[2] * itemsize ||
        out.len != c[0] * c[1] * c[2] * itemsize) {
        PyErr_SetString(PyExc_ValueError, "median: sizes do not match");
        goto done;
    }
    void *lanes = calloc((size_t)k * LANES, 4); /* the lanes past a short row: zeros */
    if (lanes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int known = 1;
    Py_BEGIN_ALLOW_THREADS
    if (!strcmp(type, "u1")) median_u8(padded.buf, out.buf, p, c, f, w, lanes);
    else if (!strcmp(type, "i1")) median_i8(padded.buf, out.buf, p, c, f, w, lanes);
    else if (!strcmp(type, "u2")) median_u16(padded.buf, out.buf, p, c, f, w, lanes);
    else if (!strcmp(type, "i2")) median_i16(padded.buf, out.buf, p, c, f, w, lanes);
    else if (!strcmp(type, "u4")) median_u32(padded.buf, out.buf, p, c, f, w, lanes);
    else if (!strcmp(type, "i4")) median_i32(padded.buf, out.buf, p, c, f, w, lanes);
    else known = 0;
    Py_END_ALLOW_THREADS
    free(lanes);
    if (!known) {
        PyErr_Format(PyExc_ValueError, "median: no kernel for type %s", type);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&padded);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"median", median, METH_VARARGS,
     "median(padded, out, type, pshape, count, from, window): the median filter of a "
     "padded C-contiguous 3-d integer block (type u1, i1, u2, i2, u4 or i4) into out of "
     "shape count, output voxel (z, y, x) from the window starting at padded (z, y, x) + "
     "from."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_median", NULL, -1, methods};

PyMODINIT_FUNC PyInit__median(void) { return PyModule_Create(&module); }
