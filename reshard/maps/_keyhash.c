/* PostgreSQL's extended hash functions (Bob Jenkins' lookup3, 64-bit result), compiled: the
 * routing of every change event hashes its key, and in Python the hash was about half of a
 * route. reshard/maps/keyhash.py holds the same functions in Python, the reference these are
 * tested against (tests/unit/test_keyhash.py) and what runs when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

#define MIX(a, b, c) \
    { \
        a -= c; a ^= ROT(c, 4); c += b; \
        b -= a; b ^= ROT(a, 6); a += c; \
        c -= b; c ^= ROT(b, 8); b += a; \
        a -= c; a ^= ROT(c, 16); c += b; \
        b -= a; b ^= ROT(a, 19); a += c; \
        c -= b; c ^= ROT(b, 4); b += a; \
    }

#define FINAL(a, b, c) \
    { \
        c ^= b; c -= ROT(b, 14); \
        a ^= c; a -= ROT(c, 11); \
        b ^= a; b -= ROT(a, 25); \
        c ^= b; c -= ROT(b, 16); \
        a ^= c; a -= ROT(c, 4); \
        b ^= a; b -= ROT(a, 14); \
        c ^= b; c -= ROT(b, 24); \
    }

static uint32_t word(const unsigned char *p) { /* little-endian, as keyhash.py reads words */
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void seeded(uint32_t init, uint64_t seed, uint32_t *a, uint32_t *b, uint32_t *c) {
    *a = *b = *c = init;
    if (seed) {
        *a += (uint32_t)(seed >> 32);
        *b += (uint32_t)seed;
        MIX(*a, *b, *c);
    }
}

static int parse_seed(PyObject *obj, uint64_t *seed) {
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *seed = (uint64_t)v;
    return 0;
}

static PyObject *hash_uint32_extended(PyObject *self, PyObject *args) {
    unsigned long k;
    PyObject *seed_obj;
    uint64_t seed;
    uint32_t a, b, c;
    if (!PyArg_ParseTuple(args, "kO", &k, &seed_obj) || parse_seed(seed_obj, &seed) < 0) return NULL;
    seeded(0x9e3779b9 + 4 + 3923095, seed, &a, &b, &c);
    a += (uint32_t)k;
    FINAL(a, b, c);
    return PyLong_FromUnsignedLongLong(((uint64_t)b << 32) | c);
}

static PyObject *hash_bytes_extended(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *seed_obj;
    uint64_t seed;
    uint32_t a, b, c;
    if (!PyArg_ParseTuple(args, "y*O", &view, &seed_obj)) return NULL;
    if (parse_seed(seed_obj, &seed) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    seeded(0x9e3779b9 + (uint32_t)n + 3923095, seed, &a, &b, &c);
    while (n >= 12) {
        a += word(p);
        b += word(p + 4);
        c += word(p + 8);
        MIX(a, b, c);
        p += 12;
        n -= 12;
    }
    unsigned char tail[12] = {0};
    memcpy(tail, p, (size_t)n); /* bytes 0-3 into a, 4-7 into b, 8-10 into c above its low byte */
    a += word(tail);
    b += word(tail + 4);
    c += ((uint32_t)tail[8] << 8) | ((uint32_t)tail[9] << 16) | ((uint32_t)tail[10] << 24);
    FINAL(a, b, c);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(((uint64_t)b << 32) | c);
}

static PyMethodDef methods[] = {
    {"hash_uint32_extended", hash_uint32_extended, METH_VARARGS,
     "hash_uint32_extended(k, seed): PostgreSQL's hash_uint32_extended (unsigned 64-bit)"},
    {"hash_bytes_extended", hash_bytes_extended, METH_VARARGS,
     "hash_bytes_extended(data, seed): PostgreSQL's hash_bytes_extended (unsigned 64-bit)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_keyhash", "PostgreSQL's extended hash functions, compiled (see keyhash.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__keyhash(void) { return PyModule_Create(&module); }
