/*
 * The tar-split recorder, in C: the same lines as tarsplit.Recorder over a
 * tarsplit.Packer, without a Python frame per entry.
 *
 *   Recorder(write, crc, json_name)
 *
 * write(bytes) receives the gathered lines (batches of about 256 KiB, as the
 * Packer writes them); crc(chunk, crc) -> int is the CRC-64/ISO function the
 * store uses (fastcrc's, or the pure twin); json_name(name: bytes) -> bytes
 * gives the name member of names that are not plain printable ASCII, so the
 * rare escaping rules live in one place, Python.  Methods raw, data, header
 * and finish are the TarReader sinks and the end, exactly as the Python
 * recorder's; the tests hold the two to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512
#define BATCH (1 << 18)

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} buffer;

static int grow(buffer *b, Py_ssize_t more)
{
    if (more > PY_SSIZE_T_MAX - b->n) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->n + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more)
        cap = cap > PY_SSIZE_T_MAX / 2 ? b->n + more : cap * 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int put(buffer *b, const void *data, Py_ssize_t n)
{
    if (grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->n, data, (size_t)n);
    b->n += n;
    return 0;
}

static int puts_(buffer *b, const char *s) { return put(b, s, (Py_ssize_t)strlen(s)); }

static int put_int(buffer *b, long long v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    return put(b, tmp, n);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with padding, no newline (binascii.b2a_base64(newline=False)). */
static int put_base64(buffer *b, const unsigned char *s, Py_ssize_t n)
{
    if (n > (PY_SSIZE_T_MAX - 3) / 4 * 3 || grow(b, (n + 2) / 3 * 4) < 0) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    char *o = b->p + b->n;
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = '=';
    }
    b->n = o - b->p;
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *write;
    PyObject *crc_fn;
    PyObject *json_name;
    buffer pending; /* padding and headers since the last entry */
    buffer lines;   /* gathered lines not yet written */
    long long position;
    PyObject *name; /* bytes: the current entry's name */
    long long size, remaining;
    PyObject *crc;  /* int: the current entry's CRC so far */
} Recorder;

static int flush(Recorder *self)
{
    if (!self->lines.n)
        return 0;
    PyObject *r = PyObject_CallFunction(self->write, "y#", self->lines.p, self->lines.n);
    if (!r)
        return -1;
    Py_DECREF(r);
    self->lines.n = 0;
    return 0;
}

/* A line is complete in self->lines: count it, and write the batch once large. */
static int line_done(Recorder *self)
{
    self->position++;
    return self->lines.n >= BATCH ? flush(self) : 0;
}

static int segment(Recorder *self, const unsigned char *data, Py_ssize_t n, int even_empty)
{
    if (!n && !even_empty)
        return 0;
    buffer *b = &self->lines;
    if (puts_(b, "{\"type\":2,\"payload\":\"") < 0 || put_base64(b, data, n) < 0
        || puts_(b, "\",\"position\":") < 0 || put_int(b, self->position) < 0 || puts_(b, "}\n") < 0)
        return -1;
    return line_done(self);
}

static int is_plain(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    return 1;
}

/* The file line of the current entry; crc NULL: an empty file ("payload":null). */
static int file_line(Recorder *self, PyObject *crc)
{
    buffer *b = &self->lines;
    const char *name = PyBytes_AS_STRING(self->name);
    Py_ssize_t len = PyBytes_GET_SIZE(self->name);
    if (puts_(b, "{\"type\":1,") < 0)
        return -1;
    if (is_plain(name, len)) {
        if (puts_(b, "\"name\":\"") < 0 || put(b, name, len) < 0 || puts_(b, "\"") < 0)
            return -1;
    } else {
        PyObject *member = PyObject_CallOneArg(self->json_name, self->name);
        if (!member)
            return -1;
        if (!PyBytes_Check(member)) {
            Py_DECREF(member);
            PyErr_SetString(PyExc_TypeError, "json_name must return bytes");
            return -1;
        }
        int r = put(b, PyBytes_AS_STRING(member), PyBytes_GET_SIZE(member));
        Py_DECREF(member);
        if (r < 0)
            return -1;
    }
    if (puts_(b, ",") < 0)
        return -1;
    if (self->size && (puts_(b, "\"size\":") < 0 || put_int(b, self->size) < 0 || puts_(b, ",") < 0))
        return -1;
    if (crc != NULL && self->size) {
        unsigned long long v = PyLong_AsUnsignedLongLong(crc);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        unsigned char be[8];
        for (int i = 0; i < 8; i++)
            be[i] = (unsigned char)(v >> (56 - 8 * i));
        if (puts_(b, "\"payload\":\"") < 0 || put_base64(b, be, 8) < 0 || puts_(b, "\"") < 0)
            return -1;
    } else if (puts_(b, "\"payload\":null") < 0) {
        return -1;
    }
    if (puts_(b, ",\"position\":") < 0 || put_int(b, self->position) < 0 || puts_(b, "}\n") < 0)
        return -1;
    return line_done(self);
}

/* Raw bytes gathered past this many go out as a segment at once: only a sparse file's
 * data (a few MiB at most of headers come between two entries) gets there, and one
 * segment of it all would be one line as large as the data. */
#define SEGMENT_MAX (4 << 20)

static PyObject *Recorder_raw(Recorder *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int r = put(&self->pending, view.buf, view.len);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    if (self->pending.n >= SEGMENT_MAX) {
        if (segment(self, (unsigned char *)self->pending.p, self->pending.n, 0) < 0)
            return NULL;
        self->pending.n = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Recorder_data(Recorder *self, PyObject *arg)
{
    Py_ssize_t n = PyObject_Length(arg);
    if (n < 0)
        return NULL;
    PyObject *crc = PyObject_CallFunctionObjArgs(self->crc_fn, arg, self->crc, NULL);
    if (!crc)
        return NULL;
    Py_SETREF(self->crc, crc);
    self->remaining -= n;
    if (self->remaining <= 0 && file_line(self, self->crc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Recorder_header(Recorder *self, PyObject *entry)
{
    /* The previous entry's padding and this header are one segment, as the Go
     * disassembler frames them. */
    if (self->pending.n) {
        if (segment(self, (unsigned char *)self->pending.p, self->pending.n, 0) < 0)
            return NULL;
        self->pending.n = 0;
    }
    PyObject *name = PyObject_GetAttrString(entry, "name");
    if (!name)
        return NULL;
    PyObject *raw = PyUnicode_AsEncodedString(name, "utf-8", "surrogateescape");
    Py_DECREF(name);
    if (!raw)
        return NULL;
    Py_SETREF(self->name, raw);
    PyObject *size_o = PyObject_GetAttrString(entry, "size");
    if (!size_o)
        return NULL;
    long long size = PyLong_AsLongLong(size_o);
    Py_DECREF(size_o);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    self->size = self->remaining = size;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero)
        return NULL;
    Py_SETREF(self->crc, zero);
    if (size == 0 && file_line(self, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int all_zero(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static PyObject *Recorder_finish(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    /* The last padding and up to two end blocks, then the bytes after them,
     * then an empty segment: the Go disassembler's framing. */
    const unsigned char *p = (const unsigned char *)self->pending.p;
    Py_ssize_t n = self->pending.n;
    Py_ssize_t end = (Py_ssize_t)((BLOCK - self->size % BLOCK) % BLOCK);
    int zero_blocks = 0;
    while (end < n && zero_blocks < 2) {
        Py_ssize_t len = n - end < BLOCK ? n - end : BLOCK;
        zero_blocks += all_zero(p + end, len);
        end += len;
    }
    if (end > n)
        end = n;
    if (segment(self, p, end, 0) < 0 || segment(self, p + end, n - end, 0) < 0
        || segment(self, p, 0, 1) < 0)
        return NULL;
    self->pending.n = 0;
    if (flush(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Recorder_init(Recorder *self, PyObject *args, PyObject *kwds)
{
    PyObject *write, *crc_fn, *json_name;
    static char *kwlist[] = {"write", "crc", "json_name", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Recorder", kwlist, &write, &crc_fn, &json_name))
        return -1;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero)
        return -1;
    Py_INCREF(write);
    Py_INCREF(crc_fn);
    Py_INCREF(json_name);
    Py_XSETREF(self->write, write);
    Py_XSETREF(self->crc_fn, crc_fn);
    Py_XSETREF(self->json_name, json_name);
    Py_XSETREF(self->crc, zero);
    Py_XSETREF(self->name, PyBytes_FromStringAndSize("", 0));
    if (!self->name)
        return -1;
    self->pending.n = self->lines.n = 0;
    self->position = self->size = self->remaining = 0;
    return 0;
}

static int Recorder_traverse(Recorder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->write);
    Py_VISIT(self->crc_fn);
    Py_VISIT(self->json_name);
    return 0;
}

static int Recorder_clear(Recorder *self)
{
    Py_CLEAR(self->write);
    Py_CLEAR(self->crc_fn);
    Py_CLEAR(self->json_name);
    Py_CLEAR(self->name);
    Py_CLEAR(self->crc);
    return 0;
}

static void Recorder_dealloc(Recorder *self)
{
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    PyMem_Free(self->pending.p);
    PyMem_Free(self->lines.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Recorder_methods[] = {
    {"raw", (PyCFunction)Recorder_raw, METH_O, "raw(bytes): header blocks and padding, in stream order."},
    {"data", (PyCFunction)Recorder_data, METH_O, "data(chunk): file content of the current entry."},
    {"header", (PyCFunction)Recorder_header, METH_O, "header(entry): a new entry begins."},
    {"finish", (PyCFunction)Recorder_finish, METH_NOARGS,
     "finish(): the end of the archive's lines, and write what is gathered."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "graphdriver.layerio._tarsplit.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Recorder(write, crc, json_name): tar-split lines of a tar stream, as the reader's sinks.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Recorder_init,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_methods = Recorder_methods,
};


/* ---- reading lines back: usual(line, entry_type) ---- */

static signed char B64_VALUE[256];
static PyObject *EMPTY_BYTES;

static void b64_table(void)
{
    memset(B64_VALUE, -1, sizeof B64_VALUE);
    for (int i = 0; i < 64; i++)
        B64_VALUE[(unsigned char)B64[i]] = (signed char)i;
}

static PyObject *A2B, *BINASCII_ERROR, *STRICT_KW;

/* What binascii.a2b_base64(strict_mode=True) makes of s, or NULL without an
   error set where it raises binascii.Error. */
static PyObject *a2b_strict(const unsigned char *s, Py_ssize_t n)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)s, n);
    if (!data)
        return NULL;
    PyObject *args[2] = {data, Py_True};
    PyObject *out = PyObject_Vectorcall(A2B, args, 1, STRICT_KW);
    Py_DECREF(data);
    if (!out && PyErr_ExceptionMatches(BINASCII_ERROR))
        PyErr_Clear();
    return out;
}

/* Base64 as binascii.a2b_base64(strict_mode=True) reads it, into bytes; NULL
   without an error set where it would raise.  The canonical form (whole
   quads, zero to two '=' at the very end) is read here; anything else is
   left to binascii, whose strict mode has rules of its own ('=' after a
   whole quad, say). */
static PyObject *decode64(const unsigned char *s, Py_ssize_t n)
{
    if (n % 4)
        return a2b_strict(s, n);
    Py_ssize_t pad = n && s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n / 4 * 3 - pad);
    if (!out)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t full = n - (pad ? 4 : 0), i = 0;
    for (; i < full; i += 4) {
        int a = B64_VALUE[s[i]], b = B64_VALUE[s[i + 1]], c = B64_VALUE[s[i + 2]], d = B64_VALUE[s[i + 3]];
        if ((a | b | c | d) < 0)
            goto bad;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        *o++ = (unsigned char)(v >> 16);
        *o++ = (unsigned char)(v >> 8);
        *o++ = (unsigned char)v;
    }
    if (pad) {
        int a = B64_VALUE[s[i]], b = B64_VALUE[s[i + 1]], c = pad == 1 ? B64_VALUE[s[i + 2]] : 0;
        if ((a | b | c) < 0)
            goto bad;
        *o++ = (unsigned char)(a << 2 | b >> 4);
        if (pad == 1)
            *o++ = (unsigned char)((b & 15) << 4 | c >> 2);
    }
    return out;
bad:
    Py_DECREF(out);
    return a2b_strict(s, n);
}

/* Whether s[from:to] is 1 to 19 ASCII digits (bytes.isdigit); the value in *v. */
static int digits(const char *s, Py_ssize_t from, Py_ssize_t to, unsigned long long *v)
{
    if (to - from < 1 || to - from > 19)
        return 0;
    unsigned long long x = 0;
    for (Py_ssize_t i = from; i < to; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        x = x * 10 + (unsigned)(s[i] - '0');
    }
    *v = x;
    return 1;
}

static int starts(const char *s, Py_ssize_t n, Py_ssize_t at, const char *lit)
{
    Py_ssize_t k = (Py_ssize_t)strlen(lit);
    return at >= 0 && at <= n - k && memcmp(s + at, lit, (size_t)k) == 0;
}

static Py_ssize_t find(const char *s, char c, Py_ssize_t from, Py_ssize_t to)
{
    const char *q = from < to ? memchr(s + from, c, (size_t)(to - from)) : NULL;
    return q ? q - s : -1;
}

/* entry_type(type, payload, name, size, position); steals payload and name (NULL: an error is set). */
static PyObject *make(PyObject *cls, long type, PyObject *payload, PyObject *name,
                      unsigned long long size, unsigned long long position)
{
    PyObject *args[5] = {PyLong_FromLong(type), payload, name, PyLong_FromUnsignedLongLong(size),
                         PyLong_FromUnsignedLongLong(position)};
    PyObject *entry = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4])
        entry = PyObject_Vectorcall(cls, args, 5, NULL);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    return entry;
}

/* The decoded payload, or NULL: None returned to the caller when no error is set. */
#define DECODED_OR_NONE(var, s, n)                                                                  \
    PyObject *var = decode64((const unsigned char *)(s), (n));                                      \
    if (!var)                                                                                       \
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);

#define SEGMENT_HEAD "{\"type\":2,\"payload\":\""
#define FILE_HEAD "{\"type\":1,\"name\":\""
#define SEGMENT_HEAD_LEN 21
#define FILE_HEAD_LEN 18

/* {"type":2,"payload":"B","position":P} */
static PyObject *segment_entry(const char *s, Py_ssize_t n, PyObject *cls)
{
    Py_ssize_t stop = n >= 2 && s[n - 2] == '}' && s[n - 1] == '\n' ? n - 2
                      : s[n - 1] == '}'                              ? n - 1
                                                                     : -1;
    Py_ssize_t end = find(s, '"', SEGMENT_HEAD_LEN, n);
    unsigned long long position;
    if (stop < 0 || end < 0 || !starts(s, n, end, "\",\"position\":") || !digits(s, end + 13, stop, &position))
        Py_RETURN_NONE;
    DECODED_OR_NONE(payload, s + SEGMENT_HEAD_LEN, end - SEGMENT_HEAD_LEN)
    return make(cls, 2, payload, Py_NewRef(EMPTY_BYTES), 0, position);
}

/* {"type":1,"name":"N",["size":S,]"payload":null|"B","position":P} with N plain */
static PyObject *file_entry(const char *s, Py_ssize_t n, PyObject *cls)
{
    Py_ssize_t stop = s[n - 1] == '\n' ? n - 1 : n;
    if (stop < 1 || s[stop - 1] != '}')
        Py_RETURN_NONE;
    Py_ssize_t quote = find(s, '"', FILE_HEAD_LEN, stop);
    if (quote < 0 || !is_plain(s + FILE_HEAD_LEN, quote - FILE_HEAD_LEN))
        Py_RETURN_NONE;
    Py_ssize_t at = quote + 1, pay = -1, pay_end = -1;
    unsigned long long size = 0, position;
    if (starts(s, n, at, ",\"size\":")) {
        Py_ssize_t comma = find(s, ',', at + 8, stop);
        if (comma < 0 || !digits(s, at + 8, comma, &size))
            Py_RETURN_NONE;
        at = comma;
    }
    if (!starts(s, n, at, ",\"payload\":"))
        Py_RETURN_NONE;
    at += 11;
    if (starts(s, n, at, "null")) {
        at += 4;
    } else if (at < stop && s[at] == '"') {
        pay = at + 1;
        pay_end = find(s, '"', pay, stop);
        if (pay_end < 0)
            Py_RETURN_NONE;
        at = pay_end + 1;
    } else {
        Py_RETURN_NONE;
    }
    if (!starts(s, n, at, ",\"position\":") || !digits(s, at + 12, stop - 1, &position))
        Py_RETURN_NONE;
    PyObject *crc = Py_NewRef(Py_None);
    if (pay >= 0) {
        Py_DECREF(crc);
        DECODED_OR_NONE(decoded, s + pay, pay_end - pay)
        crc = decoded;
    }
    PyObject *name = PyBytes_FromStringAndSize(s + FILE_HEAD_LEN, quote - FILE_HEAD_LEN);
    if (!name) {
        Py_DECREF(crc);
        return NULL;
    }
    return make(cls, 1, crc, name, size, position);
}

static PyObject *usual(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !(PyBytes_Check(args[0]) || PyByteArray_Check(args[0]))) {
        PyErr_SetString(PyExc_TypeError, "usual(line: bytes | bytearray, entry_type)");
        return NULL;
    }
    /* Read whole before entry_type runs: nothing here can change a bytearray meanwhile. */
    const char *s = PyBytes_Check(args[0]) ? PyBytes_AS_STRING(args[0]) : PyByteArray_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_Check(args[0]) ? PyBytes_GET_SIZE(args[0]) : PyByteArray_GET_SIZE(args[0]);
    if (n >= SEGMENT_HEAD_LEN && memcmp(s, SEGMENT_HEAD, SEGMENT_HEAD_LEN) == 0)
        return segment_entry(s, n, args[1]);
    if (n >= FILE_HEAD_LEN && memcmp(s, FILE_HEAD, FILE_HEAD_LEN) == 0)
        return file_entry(s, n, args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"usual", (PyCFunction)(void (*)(void))usual, METH_FASTCALL,
     "usual(line, entry_type): the entry of a line in the usual form, else None (tarsplit._usual)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tarsplit", "The tar-split recorder and line reader, in C.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tarsplit(void)
{
    if (PyType_Ready(&RecorderType) < 0)
        return NULL;
    b64_table();
    if (!A2B) {
        PyObject *binascii = PyImport_ImportModule("binascii");
        if (!binascii)
            return NULL;
        A2B = PyObject_GetAttrString(binascii, "a2b_base64");
        BINASCII_ERROR = PyObject_GetAttrString(binascii, "Error");
        STRICT_KW = Py_BuildValue("(s)", "strict_mode");
        Py_DECREF(binascii);
        if (!A2B || !BINASCII_ERROR || !STRICT_KW)
            return NULL;
    }
    if (!EMPTY_BYTES && !(EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0)))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&RecorderType);
    if (PyModule_AddObject(m, "Recorder", (PyObject *)&RecorderType) < 0) {
        Py_DECREF(&RecorderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
