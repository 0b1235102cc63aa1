/*
 * The tar reader's header decoder for the usual entry, in C.
 *
 * scan(buf, pos) decodes the entry whose header blocks start at buf[pos]:
 * PAX "x" and GNU "L"/"K" meta headers, then a ustar or GNU header, all held
 * in buf.  It returns the entry's fields, in TarEntry's positional order, and
 * the number of bytes its headers take:
 *
 *   (name, type, size, mode, uid, gid, uname, gname, mtime_ns, atime_ns,
 *    ctime_ns, linkname, devmajor, devminor, xattrs, pax, consumed)
 *
 * or None for anything else: headers reaching past the buffer, a bad checksum,
 * the end of the archive, v7 and star headers, base-256 numbers, PAX global
 * headers, meta headers over MAX_META_CHAIN, sparse files, a PAX record or
 * time in an unusual spelling, and every malformed input.  The reader then
 * decodes the same bytes with its Python code, which words the errors; so this
 * file only ever accepts what the Python decoder accepts and gives the same
 * fields (the tests hold the two to that, entry by entry).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512
#define MAX_META (1 << 20)
/* The reader's _MAX_META_CHAIN: what all the meta headers before one entry may
 * take, blocks and padded data (one of each kind at MAX_META).  Past it the
 * Python decoder refuses the archive; here the entry is left to it. */
#define MAX_META_CHAIN (4 * (MAX_META + BLOCK))
#define NS 1000000000LL

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} span;

/* Length of the NUL-terminated field at p (at most n). */
static Py_ssize_t cstr_len(const unsigned char *p, Py_ssize_t n)
{
    const unsigned char *z = memchr(p, 0, (size_t)n);
    return z ? (Py_ssize_t)(z - p) : n;
}

static int is_ws_nul(unsigned char c) { return c == ' ' || c == 0; }

/* An octal header field as the Python decoder reads it (spaces or NULs around
 * the digits, ending at the first NUL; empty is 0).  -1: not for this path. */
static int octal(const unsigned char *f, Py_ssize_t n, int64_t *out)
{
    if (f[0] & 0x80)
        return -1; /* base-256 */
    Py_ssize_t a = 0, b = n;
    while (a < b && is_ws_nul(f[a]))
        a++;
    while (b > a && is_ws_nul(f[b - 1]))
        b--;
    Py_ssize_t len = cstr_len(f + a, b - a);
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = f[a + i];
        if (c < '0' || c > '7')
            return -1;
        v = v * 8 + (c - '0');
    }
    *out = v;
    return 0;
}

static int checksum_ok(const unsigned char *blk)
{
    const unsigned char *f = blk + 148;
    if (f[6] != 0)
        return 0;
    int64_t stored = 0;
    for (int i = 0; i < 6; i++) {
        if (f[i] < '0' || f[i] > '7')
            return 0;
        stored = stored * 8 + (f[i] - '0');
    }
    int64_t unsigned_sum = 8 * ' ', signed_sum = 8 * ' ';
    for (int i = 0; i < BLOCK; i++) {
        if (i >= 148 && i < 156)
            continue;
        unsigned_sum += blk[i];
        signed_sum += (signed char)blk[i];
    }
    return stored == unsigned_sum || stored == signed_sum;
}

static int all_zero(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int all_digits(const unsigned char *p, Py_ssize_t n)
{
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return 1;
}

/* pax.decimal: digits only, within int64. */
static int decimal(span v, int64_t *out)
{
    if (!all_digits(v.p, v.n))
        return -1;
    Py_ssize_t i = 0;
    while (i < v.n && v.p[i] == '0')
        i++;
    if (v.n - i > 19)
        return -1;
    uint64_t x = 0;
    for (; i < v.n; i++)
        x = x * 10 + (uint64_t)(v.p[i] - '0');
    if (x > (uint64_t)INT64_MAX)
        return -1;
    *out = (int64_t)x;
    return 0;
}

/* pax.time_ns, its usual spelling only: seconds (under 19 digits) and at most
 * nine digits of fraction. */
static int pax_time(span v, int64_t *out)
{
    const unsigned char *dot = memchr(v.p, '.', (size_t)v.n);
    Py_ssize_t secs_n = dot ? (Py_ssize_t)(dot - v.p) : v.n;
    if (!all_digits(v.p, secs_n) || secs_n >= 19)
        return -1;
    int64_t secs = 0, frac = 0;
    for (Py_ssize_t i = 0; i < secs_n; i++)
        secs = secs * 10 + (v.p[i] - '0');
    if (dot) {
        const unsigned char *f = dot + 1;
        Py_ssize_t fn = v.n - secs_n - 1;
        if (!all_digits(f, fn) || fn > 9)
            return -1;
        for (Py_ssize_t i = 0; i < fn; i++)
            frac = frac * 10 + (f[i] - '0');
        for (Py_ssize_t i = fn; i < 9; i++)
            frac *= 10;
    }
    if (secs > (INT64_MAX - frac) / NS)
        return -1; /* past int64 nanoseconds: Python's integers take it */
    *out = secs * NS + frac;
    return 0;
}

static PyObject *text(const unsigned char *p, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8((const char *)p, n, "surrogateescape");
}

static int key_is(span k, const char *s)
{
    size_t n = strlen(s);
    return (size_t)k.n == n && memcmp(k.p, s, n) == 0;
}

#define SCHILY "SCHILY.xattr."
#define SCHILY_LEN 13

/* What the PAX records of one "x" header say. */
typedef struct {
    PyObject *records; /* dict str -> bytes */
    int has_path, has_link;
    span path, link;
} pax_info;

/* Parse records into info->records (a new dict).  0, or -1 for "not here"
 * (info->records is then NULL), or -2 on a Python error. */
static int parse_records(const unsigned char *d, Py_ssize_t end, pax_info *info)
{
    PyObject *records = PyDict_New();
    if (!records)
        return -2;
    Py_ssize_t pos = 0;
    info->has_path = info->has_link = 0;
    while (pos < end) {
        Py_ssize_t lim = pos + 21 < end ? pos + 21 : end;
        const unsigned char *sp = memchr(d + pos, ' ', (size_t)(lim - pos));
        if (!sp || sp == d + pos || !all_digits(d + pos, (Py_ssize_t)(sp - d - pos)))
            goto no;
        Py_ssize_t spi = (Py_ssize_t)(sp - d), ndig = spi - pos;
        if (ndig > 18)
            goto no;
        int64_t len = 0;
        for (Py_ssize_t i = pos; i < spi; i++)
            len = len * 10 + (d[i] - '0');
        int64_t nxt = pos + len;
        if (nxt - spi < 4 || nxt > end || d[nxt - 1] != '\n')
            goto no;
        const unsigned char *eq = memchr(d + spi + 1, '=', (size_t)(nxt - 1 - (spi + 1)));
        if (!eq || eq == d + spi + 1)
            goto no;
        span k = {d + spi + 1, (Py_ssize_t)(eq - (d + spi + 1))};
        span v = {eq + 1, (Py_ssize_t)(d + nxt - 1 - (eq + 1))};
        if (memchr(k.p, 0, (size_t)k.n))
            goto no;
        if (k.n >= 11 && memcmp(k.p, "GNU.sparse.", 11) == 0)
            goto no; /* sparse files: the Python decoder */
        int textual = key_is(k, "path") || key_is(k, "linkpath") || key_is(k, "uname") ||
                      key_is(k, "gname");
        if (textual && memchr(v.p, 0, (size_t)v.n))
            goto no;
        PyObject *key = text(k.p, k.n);
        if (!key)
            goto error;
        PyObject *value = PyBytes_FromStringAndSize((const char *)v.p, v.n);
        if (!value) {
            Py_DECREF(key);
            goto error;
        }
        int rc = PyDict_SetItem(records, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0)
            goto error;
        if (key_is(k, "path")) {
            info->has_path = 1;
            info->path = v;
        } else if (key_is(k, "linkpath")) {
            info->has_link = 1;
            info->link = v;
        }
        pos = (Py_ssize_t)nxt;
    }
    info->records = records;
    return 0;
no:
    Py_DECREF(records);
    info->records = NULL;
    return -1;
error:
    Py_DECREF(records);
    info->records = NULL;
    return -2;
}

/* A time in nanoseconds, or None when the archive gives none (a new reference). */
static PyObject *optional_ns(int has, int64_t ns)
{
    if (has)
        return PyLong_FromLongLong(ns);
    Py_INCREF(Py_None);
    return Py_None;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n", &view, &pos))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    PyObject *result = NULL;
    pax_info pax = {NULL, 0, 0, {NULL, 0}, {NULL, 0}};
    span long_name = {NULL, 0}, long_link = {NULL, 0};
    int has_long_name = 0, has_long_link = 0;
    PyObject *xattrs = NULL;
    PyObject *uname = NULL, *gname = NULL, *name_o = NULL, *link_o = NULL, *type_o = NULL;
    unsigned char *joined = NULL;
    Py_ssize_t p = pos;
    const unsigned char *blk;

    if (pos < 0)
        goto none;
    for (;;) {
        if (p + BLOCK > len)
            goto none;
        blk = buf + p;
        if (all_zero(blk, BLOCK) || !checksum_ok(blk))
            goto none;
        p += BLOCK;
        unsigned char t = blk[156];
        if (t == 'g')
            goto none;
        if (t != 'x' && t != 'L' && t != 'K')
            break;
        /* A meta header: its size in the usual spelling, its data in the buffer. */
        if (blk[135] != 0 || !all_digits(blk + 124, 11))
            goto none;
        int64_t size = 0;
        for (int i = 124; i < 135; i++) {
            if (blk[i] > '7')
                goto none;
            size = size * 8 + (blk[i] - '0');
        }
        if (size > MAX_META)
            goto none;
        Py_ssize_t padded = (Py_ssize_t)(size + ((BLOCK - size % BLOCK) % BLOCK));
        if (p + padded > len || p + padded - pos > MAX_META_CHAIN)
            goto none;
        const unsigned char *data = buf + p;
        p += padded;
        if (t == 'x') {
            Py_CLEAR(pax.records);
            int rc = parse_records(data, (Py_ssize_t)size, &pax);
            if (rc == -2)
                goto error;
            if (rc == -1)
                goto none;
        } else if (t == 'L') {
            long_name.p = data;
            long_name.n = cstr_len(data, (Py_ssize_t)size);
            has_long_name = 1;
        } else {
            long_link.p = data;
            long_link.n = cstr_len(data, (Py_ssize_t)size);
            has_long_link = 1;
        }
    }

    /* The entry's own header. */
    unsigned char t = blk[156];
    if (!((t >= '0' && t <= '7') || t == 0))
        goto none;
    int ustar = memcmp(blk + 257, "ustar\0", 6) == 0;
    int gnu = !ustar && memcmp(blk + 257, "ustar  \0", 8) == 0;
    if (!ustar && !gnu)
        goto none; /* v7 */
    if (ustar && memcmp(blk + 508, "tar\0", 4) == 0)
        goto none; /* star */
    if (gnu && (blk[345] || blk[357]))
        goto none; /* GNU atime/ctime */
    int64_t mode, uid, gid, size, mtime, devmajor = 0, devminor = 0;
    if (octal(blk + 100, 8, &mode) || octal(blk + 108, 8, &uid) || octal(blk + 116, 8, &gid) ||
        octal(blk + 124, 12, &size) || octal(blk + 136, 12, &mtime))
        goto none;
    if (t == '3' || t == '4') {
        if (octal(blk + 329, 8, &devmajor) || octal(blk + 337, 8, &devminor))
            goto none;
    }
    mode &= 07777;
    if (mtime > INT64_MAX / NS)
        goto none;

    span name = {blk, cstr_len(blk, 100)};
    span link = {blk + 157, blk[157] ? cstr_len(blk + 157, 100) : 0};
    span prefix = {blk + 345, 0};
    if (ustar && blk[345])
        prefix.n = cstr_len(blk + 345, 155);

    int64_t atime_ns = 0, ctime_ns = 0, mtime_ns = mtime * NS;
    int has_atime = 0, has_ctime = 0;
    if (pax.records) {
        PyObject *k, *v;
        Py_ssize_t i = 0;
        while (PyDict_Next(pax.records, &i, &k, &v)) {
            Py_ssize_t kn;
            const char *ks = PyUnicode_AsUTF8AndSize(k, &kn);
            if (!ks) {
                PyErr_Clear();
                goto none; /* a key that is not UTF-8: the Python decoder */
            }
            span ksp = {(const unsigned char *)ks, kn};
            span vs = {(const unsigned char *)PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)};
            if (kn >= SCHILY_LEN && memcmp(ks, SCHILY, SCHILY_LEN) == 0) {
                if (!xattrs && !(xattrs = PyDict_New()))
                    goto error;
                PyObject *xk = PyUnicode_Substring(k, SCHILY_LEN, PyUnicode_GET_LENGTH(k));
                if (!xk || PyDict_SetItem(xattrs, xk, v) < 0) {
                    Py_XDECREF(xk);
                    goto error;
                }
                Py_DECREF(xk);
                continue;
            }
            if (vs.n == 0)
                continue; /* an empty record leaves the header's value */
            if (key_is(ksp, "atime")) {
                if (pax_time(vs, &atime_ns))
                    goto none;
                has_atime = 1;
            } else if (key_is(ksp, "ctime")) {
                if (pax_time(vs, &ctime_ns))
                    goto none;
                has_ctime = 1;
            } else if (key_is(ksp, "mtime")) {
                if (pax_time(vs, &mtime_ns))
                    goto none;
            } else if (key_is(ksp, "size")) {
                if (decimal(vs, &size))
                    goto none;
            } else if (key_is(ksp, "uid")) {
                if (decimal(vs, &uid))
                    goto none;
            } else if (key_is(ksp, "gid")) {
                if (decimal(vs, &gid))
                    goto none;
            } else if (key_is(ksp, "uname")) {
                Py_XDECREF(uname);
                if (!(uname = text(vs.p, vs.n)))
                    goto error;
            } else if (key_is(ksp, "gname")) {
                Py_XDECREF(gname);
                if (!(gname = text(vs.p, vs.n)))
                    goto error;
            }
        }
    }
    if (!uname && !(uname = text(blk + 265, cstr_len(blk + 265, 32))))
        goto error;
    if (!gname && !(gname = text(blk + 297, cstr_len(blk + 297, 32))))
        goto error;

    /* The name: a GNU long name over a PAX path over the header's (prefix/)name. */
    if (has_long_name)
        name_o = text(long_name.p, long_name.n);
    else if (pax.has_path && pax.path.n)
        name_o = text(pax.path.p, pax.path.n);
    else if (prefix.n) {
        joined = PyMem_Malloc((size_t)(prefix.n + 1 + name.n));
        if (!joined) {
            PyErr_NoMemory();
            goto error;
        }
        memcpy(joined, prefix.p, (size_t)prefix.n);
        joined[prefix.n] = '/';
        memcpy(joined + prefix.n + 1, name.p, (size_t)name.n);
        name_o = text(joined, prefix.n + 1 + name.n);
    } else
        name_o = text(name.p, name.n);
    if (!name_o)
        goto error;
    if (has_long_link)
        link_o = text(long_link.p, long_link.n);
    else if (pax.has_link && pax.link.n)
        link_o = text(pax.link.p, pax.link.n);
    else
        link_o = text(link.p, link.n);
    if (!link_o)
        goto error;

    if (t == 0) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(name_o);
        if (n && PyUnicode_READ_CHAR(name_o, n - 1) == '/')
            t = '5'; /* an old-style directory */
    }
    if (t == '1' || t == '2' || t == '3' || t == '4' || t == '5' || t == '6')
        size = 0; /* header-only types */
    {
        char tc = (char)t;
        type_o = PyUnicode_FromStringAndSize(t ? &tc : "\0", 1);
    }
    if (!type_o)
        goto error;

    PyObject *atime_o = optional_ns(has_atime, atime_ns), *ctime_o = optional_ns(has_ctime, ctime_ns);
    if (!atime_o || !ctime_o) {
        Py_XDECREF(atime_o);
        Py_XDECREF(ctime_o);
        goto error;
    }
    result = Py_BuildValue(
        "(NNLLLLNNLNNNLLOOn)", name_o, type_o, (long long)size, (long long)mode, (long long)uid,
        (long long)gid, uname, gname, (long long)mtime_ns, atime_o, ctime_o, link_o,
        (long long)devmajor, (long long)devminor, xattrs ? xattrs : Py_None,
        pax.records ? pax.records : Py_None, p - pos);
    /* N passed the references on (even when building failed). */
    name_o = type_o = uname = gname = link_o = NULL;
    goto done;

none:
    result = Py_None;
    Py_INCREF(Py_None);
    goto done;
error:
    result = NULL;
done:
    PyMem_Free(joined);
    Py_XDECREF(name_o);
    Py_XDECREF(type_o);
    Py_XDECREF(uname);
    Py_XDECREF(gname);
    Py_XDECREF(link_o);
    Py_XDECREF(xattrs);
    Py_XDECREF(pax.records);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos) -> the fields of the usual entry whose headers start at buf[pos], or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tarscan", "Tar header decoding for the usual entry, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tarscan(void) { return PyModule_Create(&module); }
