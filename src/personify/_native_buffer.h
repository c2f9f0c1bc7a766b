/*
 * A bytes object written in place: what the compiled module (ingest/_wire_native.c) builds
 * its output in. ``buf_init`` allocates ``cap`` bytes,
 * the writers grow it by doubling, and ``buf_finish`` cuts it to what was written.
 */
#ifndef PERSONIFY_NATIVE_BUFFER_H
#define PERSONIFY_NATIVE_BUFFER_H

#include <Python.h>
#include <string.h>

typedef struct {
    PyObject *bytes; /* NULL once a resize failed (it frees the object) */
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int buf_init(Buffer *b, Py_ssize_t cap) {
    b->bytes = PyBytes_FromStringAndSize(NULL, cap);
    if (b->bytes == NULL) return -1;
    b->data = PyBytes_AS_STRING(b->bytes);
    b->len = 0;
    b->cap = cap;
    return 0;
}

static int buf_reserve(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + extra) cap = b->len + extra;
    if (_PyBytes_Resize(&b->bytes, cap) < 0) return -1; /* frees it on failure */
    b->data = PyBytes_AS_STRING(b->bytes);
    b->cap = cap;
    return 0;
}

static int buf_write(Buffer *b, const char *text, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, text, (size_t)n);
    b->len += n;
    return 0;
}

/* cut the bytes object to what was written; -1 (and the object freed) if that fails */
static int buf_finish(Buffer *b) { return _PyBytes_Resize(&b->bytes, b->len); }

#endif
