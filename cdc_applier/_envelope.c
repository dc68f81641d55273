/* A small interpreter of Avro-reading programs: the compiled part of cdc_applier/envelope_reader.py.
 *
 * envelope_reader.py compiles a writer schema into a program once (a tuple of ints and a tuple of
 * constants); Program.read runs it over one record's body. Every read is bounds-checked; anything
 * malformed raises ValueError (UnicodeDecodeError for bad UTF-8), never reads past the buffer.
 *
 * Opcodes (arguments follow the opcode in the code):
 *   SKIP_LONG                      advance past a varint
 *   SKIP_BYTES                     advance past a length-prefixed string or bytes
 *   SKIP_FIXED  n                  advance n bytes
 *   NULL                           push None
 *   BOOL LONG FLOAT DOUBLE STRING BYTES
 *                                  read one value and push it
 *   FIXED  n                       push n bytes
 *   ENUM  k                        push consts[k][index]
 *   UNION  n  len_1 .. len_n       read a branch index, run that branch's code (the branches'
 *                                  codes follow, of len_i ints each), continue after the last
 *   RECORD  k                      pop len(consts[k]) values, push a dict of them by consts[k]'s names
 *   ARRAY  len  push               read blocks; run the next len ints once per item; when push,
 *                                  each run pushes one value and the items become one list
 *   MAP  len  push                 the same with a string key before each item, into a dict
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum {
    OP_SKIP_LONG = 1, OP_SKIP_BYTES, OP_SKIP_FIXED, OP_NULL, OP_BOOL, OP_LONG, OP_FLOAT, OP_DOUBLE,
    OP_STRING, OP_BYTES, OP_FIXED, OP_ENUM, OP_UNION, OP_RECORD, OP_ARRAY, OP_MAP,
};

typedef struct {
    PyObject_HEAD
    int *code;
    Py_ssize_t len;
    PyObject *consts; /* tuple */
} Program;

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t pos;
} Cursor;

static int fail(const char *what, Cursor *c) {
    PyErr_Format(PyExc_ValueError, "%s at byte %zd", what, c->pos);
    return -1;
}

static int read_varint(Cursor *c, long long *out) {
    unsigned long long n = 0;
    int shift = 0;
    for (;;) {
        if (c->pos >= c->len) return fail("a number runs past the record's end", c);
        unsigned char b = c->buf[c->pos++];
        if (shift == 63 && (b & 0x7E)) return fail("a number longer than 64 bits", c);
        n |= (unsigned long long)(b & 0x7F) << shift;
        if (!(b & 0x80)) break;
        shift += 7;
        if (shift > 63) return fail("a number longer than 64 bits", c);
    }
    *out = (long long)(n >> 1) ^ -(long long)(n & 1);
    return 0;
}

static int read_length(Cursor *c, Py_ssize_t *out) {
    long long n;
    if (read_varint(c, &n) < 0) return -1;
    if (n < 0) return fail("a negative length", c);
    if (n > c->len - c->pos) return fail("a value runs past the record's end", c);
    *out = (Py_ssize_t)n;
    return 0;
}

static int push(PyObject *stack, PyObject *v) {
    if (v == NULL) return -1;
    int r = PyList_Append(stack, v);
    Py_DECREF(v);
    return r;
}

static int run(Program *p, Py_ssize_t pc, Py_ssize_t end, Cursor *c, PyObject *stack, int depth);

/* Blocks of an array or a map: count (negative: followed by the block's size in bytes), items, 0. */
static int run_blocks(Program *p, Py_ssize_t body, Py_ssize_t body_end, int is_map, int keep, Cursor *c,
                      PyObject *stack, int depth) {
    PyObject *out = NULL;
    if (keep) {
        out = is_map ? PyDict_New() : PyList_New(0);
        if (out == NULL) return -1;
    }
    for (;;) {
        long long n;
        if (read_varint(c, &n) < 0) goto error;
        if (n == 0) break;
        if (n < 0) {
            long long size;
            if (n == LLONG_MIN) { fail("a block count out of range", c); goto error; }
            n = -n;
            if (read_varint(c, &size) < 0) goto error;
        }
        if (n > c->len - c->pos + 1) { fail("a block count past the record's end", c); goto error; }
        for (long long i = 0; i < n; i++) {
            PyObject *key = NULL;
            if (is_map) {
                Py_ssize_t klen;
                if (read_length(c, &klen) < 0) goto error;
                if (keep) {
                    key = PyUnicode_DecodeUTF8((const char *)c->buf + c->pos, klen, NULL);
                    if (key == NULL) goto error;
                }
                c->pos += klen;
            }
            if (run(p, body, body_end, c, stack, depth + 1) < 0) { Py_XDECREF(key); goto error; }
            if (keep) {
                Py_ssize_t top = PyList_GET_SIZE(stack) - 1;
                PyObject *v = PyList_GET_ITEM(stack, top);
                int r = is_map ? PyDict_SetItem(out, key, v) : PyList_Append(out, v);
                Py_XDECREF(key);
                if (r < 0 || PyList_SetSlice(stack, top, top + 1, NULL) < 0) goto error;
            }
        }
    }
    return keep ? push(stack, out) : 0;
error:
    Py_XDECREF(out);
    return -1;
}

static int run(Program *p, Py_ssize_t pc, Py_ssize_t end, Cursor *c, PyObject *stack, int depth) {
    const int *code = p->code;
    if (depth > 64) {
        PyErr_SetString(PyExc_ValueError, "the program nests too deep");
        return -1;
    }
    while (pc < end) {
        int op = code[pc++];
        switch (op) {
        case OP_SKIP_LONG: {
            long long ignored;
            if (read_varint(c, &ignored) < 0) return -1;
            break;
        }
        case OP_SKIP_BYTES: {
            Py_ssize_t n;
            if (read_length(c, &n) < 0) return -1;
            c->pos += n;
            break;
        }
        case OP_SKIP_FIXED: {
            Py_ssize_t n = code[pc++];
            if (n > c->len - c->pos) return fail("a fixed value runs past the record's end", c);
            c->pos += n;
            break;
        }
        case OP_NULL:
            Py_INCREF(Py_None);
            if (push(stack, Py_None) < 0) return -1;
            break;
        case OP_BOOL: {
            if (c->pos >= c->len) return fail("a boolean past the record's end", c);
            unsigned char b = c->buf[c->pos];
            if (b > 1) return fail("a boolean byte other than 0 or 1", c);
            c->pos++;
            PyObject *v = b ? Py_True : Py_False;
            Py_INCREF(v);
            if (push(stack, v) < 0) return -1;
            break;
        }
        case OP_LONG: {
            long long n;
            if (read_varint(c, &n) < 0) return -1;
            if (push(stack, PyLong_FromLongLong(n)) < 0) return -1;
            break;
        }
        case OP_FLOAT: {
            float f;
            if (c->len - c->pos < 4) return fail("a float past the record's end", c);
            memcpy(&f, c->buf + c->pos, 4); /* Avro is little-endian, as this host */
            c->pos += 4;
            if (push(stack, PyFloat_FromDouble((double)f)) < 0) return -1;
            break;
        }
        case OP_DOUBLE: {
            double d;
            if (c->len - c->pos < 8) return fail("a double past the record's end", c);
            memcpy(&d, c->buf + c->pos, 8);
            c->pos += 8;
            if (push(stack, PyFloat_FromDouble(d)) < 0) return -1;
            break;
        }
        case OP_STRING:
        case OP_BYTES: {
            Py_ssize_t n;
            if (read_length(c, &n) < 0) return -1;
            const char *s = (const char *)c->buf + c->pos;
            c->pos += n;
            if (push(stack, op == OP_STRING ? PyUnicode_DecodeUTF8(s, n, NULL) : PyBytes_FromStringAndSize(s, n)) < 0)
                return -1;
            break;
        }
        case OP_FIXED: {
            Py_ssize_t n = code[pc++];
            if (n > c->len - c->pos) return fail("a fixed value runs past the record's end", c);
            const char *s = (const char *)c->buf + c->pos;
            c->pos += n;
            if (push(stack, PyBytes_FromStringAndSize(s, n)) < 0) return -1;
            break;
        }
        case OP_ENUM: {
            PyObject *symbols = PyTuple_GET_ITEM(p->consts, code[pc++]);
            long long i;
            if (read_varint(c, &i) < 0) return -1;
            if (i < 0 || i >= PyTuple_GET_SIZE(symbols)) return fail("an enum index out of range", c);
            PyObject *v = PyTuple_GET_ITEM(symbols, i);
            Py_INCREF(v);
            if (push(stack, v) < 0) return -1;
            break;
        }
        case OP_UNION: {
            int n = code[pc++];
            long long i;
            if (read_varint(c, &i) < 0) return -1;
            if (i < 0 || i >= n) return fail("a union branch out of range", c);
            Py_ssize_t start = pc + n;
            for (int b = 0; b < i; b++) start += code[pc + b];
            Py_ssize_t after = pc + n;
            for (int b = 0; b < n; b++) after += code[pc + b];
            if (run(p, start, start + code[pc + i], c, stack, depth + 1) < 0) return -1;
            pc = after;
            break;
        }
        case OP_RECORD: {
            PyObject *names = PyTuple_GET_ITEM(p->consts, code[pc++]);
            Py_ssize_t n = PyTuple_GET_SIZE(names);
            Py_ssize_t top = PyList_GET_SIZE(stack);
            if (top < n) {
                PyErr_SetString(PyExc_RuntimeError, "a record program pushed fewer values than its fields");
                return -1;
            }
            PyObject *d = PyDict_New();
            if (d == NULL) return -1;
            for (Py_ssize_t f = 0; f < n; f++) {
                if (PyDict_SetItem(d, PyTuple_GET_ITEM(names, f), PyList_GET_ITEM(stack, top - n + f)) < 0) {
                    Py_DECREF(d);
                    return -1;
                }
            }
            if (PyList_SetSlice(stack, top - n, top, NULL) < 0 || push(stack, d) < 0) return -1;
            break;
        }
        case OP_ARRAY:
        case OP_MAP: {
            Py_ssize_t len = code[pc];
            int keep = code[pc + 1];
            pc += 2;
            if (run_blocks(p, pc, pc + len, op == OP_MAP, keep, c, stack, depth) < 0) return -1;
            pc += len;
            break;
        }
        default:
            PyErr_Format(PyExc_RuntimeError, "opcode %d at %zd is not one this reader knows", op, pc - 1);
            return -1;
        }
    }
    return 0;
}

static PyObject *Program_read(Program *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n", &view, &pos)) return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start position outside the record");
        return NULL;
    }
    Cursor c = {(const unsigned char *)view.buf, view.len, pos};
    PyObject *stack = PyList_New(0);
    PyObject *result = NULL;
    if (stack != NULL && run(self, 0, self->len, &c, stack, 0) == 0) {
        if (c.pos != c.len) {
            PyErr_Format(PyExc_ValueError, "the record has %zd bytes more than its schema reads", c.len - c.pos);
        } else if (PyList_GET_SIZE(stack) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "the program did not leave exactly one value");
        } else {
            result = PyList_GET_ITEM(stack, 0);
            Py_INCREF(result);
        }
    }
    Py_XDECREF(stack);
    PyBuffer_Release(&view);
    return result;
}

static int Program_init(Program *self, PyObject *args, PyObject *kwds) {
    PyObject *code, *consts;
    static char *kwlist[] = {"code", "consts", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!", kwlist, &PyTuple_Type, &code, &PyTuple_Type, &consts))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(code);
    int *ints = PyMem_Malloc(sizeof(int) * (n ? n : 1));
    if (ints == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(code, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(ints);
            return -1;
        }
        ints[i] = (int)v;
    }
    PyMem_Free(self->code);
    self->code = ints;
    self->len = n;
    Py_INCREF(consts);
    Py_XSETREF(self->consts, consts);
    return 0;
}

static void Program_dealloc(Program *self) {
    PyMem_Free(self->code);
    Py_XDECREF(self->consts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Program_methods[] = {
    {"read", (PyCFunction)Program_read, METH_VARARGS,
     "read(buf, pos) -> the value the program reads from buf[pos:], which it must read to the end"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "reshard.cdc_applier._envelope.Program",
    .tp_basicsize = sizeof(Program),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An Avro-reading program compiled from a writer schema (see envelope_reader.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Program_init,
    .tp_dealloc = (destructor)Program_dealloc,
    .tp_methods = Program_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_envelope", "Runs Avro-reading programs compiled by envelope_reader.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__envelope(void) {
    if (PyType_Ready(&ProgramType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ProgramType);
    if (PyModule_AddObject(m, "Program", (PyObject *)&ProgramType) < 0) {
        Py_DECREF(&ProgramType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
