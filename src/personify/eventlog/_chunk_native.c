/*
 * The SQLite event log's per-record work, compiled: what a group commit does for every record
 * it writes, done in one pass over the records instead of a Python step per record.
 *
 * - record_hashes(records): the 64-bit dedupe hash of each record's dedupe key (BLAKE2b with an
 *   8-byte digest, read big-endian and signed, 0 turned into 1; 0 where a record has no key),
 *   as the int64 array a chunk row stores. A test holds it to hashlib's value for every key.
 * - pack_columns(records): a chunk's keys, dedupe keys and payloads as the three msgpack arrays
 *   the chunk row stores, byte for byte what msgspec's encoder writes for the three lists.
 * - fresh_results(first_offset, count): the AppendResult of each of ``count`` records appended
 *   from ``first_offset`` on.
 * - HashIndex: the dedupe index (hash -> newest offset, from a floor on) as an open-addressing
 *   table of int64 pairs.
 *
 * Each function answers None where it meets a value it does not handle (a key that is not a
 * str, a payload that is not bytes): the caller then takes the Python path, which is the
 * reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_native_buffer.h"

static PyTypeObject *result_type = NULL; /* eventlog.base.AppendResult */

/* -- BLAKE2b (RFC 7693), unkeyed, 8-byte digest --------------------------------------------- */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#define B2_G(a, b, c, d, x, y)                \
    do {                                      \
        v[a] = v[a] + v[b] + (x);             \
        v[d] = rotr64(v[d] ^ v[a], 32);       \
        v[c] = v[c] + v[d];                   \
        v[b] = rotr64(v[b] ^ v[c], 24);       \
        v[a] = v[a] + v[b] + (y);             \
        v[d] = rotr64(v[d] ^ v[a], 16);       \
        v[c] = v[c] + v[d];                   \
        v[b] = rotr64(v[b] ^ v[c], 63);       \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load_le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= counter; /* the counter's high word stays 0: keys are far shorter than 2^64 */
    if (last) v[14] = ~v[14];
    /* unrolled, the message schedule's indices are constants and v stays in registers:
       a third fewer instructions than the loop */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 12
#endif
    for (int round = 0; round < 12; round++) {
        const uint8_t *s = B2_SIGMA[round % 10];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* int.from_bytes(blake2b(data, digest_size=8).digest(), "big", signed=True) or 1 */
static int64_t dedupe_hash(const uint8_t *data, size_t len) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, 8-byte digest */
    uint64_t counter = 0;
    while (len > 128) {
        counter += 128;
        b2_compress(h, data, counter, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data, len);
    counter += len;
    b2_compress(h, block, counter, 1);
    /* the digest is h[0]'s bytes in little-endian order; read big-endian, that is bswap */
    uint64_t x = h[0], big = 0;
    for (int i = 0; i < 8; i++) {
        big = (big << 8) | (x & 0xff);
        x >>= 8;
    }
    int64_t value = (int64_t)big;
    return value ? value : 1;
}

/* the records' list, each a 3-tuple (payload, key, dedupe_key); -1 (no error set) if not */
static Py_ssize_t record_count(PyObject *records) {
    if (!PyList_CheckExact(records)) return -1;
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != 3) return -1;
    }
    return n;
}

static PyObject *record_hashes(PyObject *self, PyObject *records) {
    Py_ssize_t n = record_count(records);
    if (n < 0) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL) return NULL;
    int64_t *hashes = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(PyList_GET_ITEM(records, i), 2);
        if (key == Py_None) {
            hashes[i] = 0;
            continue;
        }
        if (!PyUnicode_CheckExact(key)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(key, &size);
        if (text == NULL) {
            /* a lone surrogate: str.encode() raises too; the Python path says so */
            PyErr_Clear();
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        hashes[i] = dedupe_hash((const uint8_t *)text, (size_t)size);
    }
    return out;
}

/* -- msgpack columns ------------------------------------------------------------------------ */

static inline void put_be(Buffer *b, uint64_t value, int width) {
    for (int i = width - 1; i >= 0; i--) b->data[b->len++] = (char)((value >> (8 * i)) & 0xff);
}

/* a msgpack header: the smallest of fix (when fix_max > 0), 8-, 16- and 32-bit forms */
static int put_header(Buffer *b, Py_ssize_t n, int fix_base, Py_ssize_t fix_max, int tag8,
                      int tag16, int tag32) {
    if (buf_reserve(b, 5) < 0) return -1;
    if (n < fix_max) {
        b->data[b->len++] = (char)(fix_base | n);
    } else if (tag8 && n < 256) {
        b->data[b->len++] = (char)tag8;
        put_be(b, (uint64_t)n, 1);
    } else if (n < 65536) {
        b->data[b->len++] = (char)tag16;
        put_be(b, (uint64_t)n, 2);
    } else if ((uint64_t)n <= 0xffffffffULL) {
        b->data[b->len++] = (char)tag32;
        put_be(b, (uint64_t)n, 4);
    } else {
        PyErr_SetString(PyExc_OverflowError, "too long for msgpack");
        return -1;
    }
    return 0;
}

/* 1 packed, 0 not a type handled here, -1 error */
static int put_str(Buffer *b, PyObject *value) {
    if (!PyUnicode_CheckExact(value)) return 0;
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (put_header(b, size, 0xa0, 32, 0xd9, 0xda, 0xdb) < 0) return -1;
    return buf_write(b, text, size) < 0 ? -1 : 1;
}

static int put_bin(Buffer *b, PyObject *value) {
    if (!PyBytes_CheckExact(value)) return 0;
    Py_ssize_t size = PyBytes_GET_SIZE(value);
    if (put_header(b, size, 0, 0, 0xc4, 0xc5, 0xc6) < 0) return -1;
    return buf_write(b, PyBytes_AS_STRING(value), size) < 0 ? -1 : 1;
}

static PyObject *pack_columns(PyObject *self, PyObject *records) {
    Py_ssize_t n = record_count(records);
    if (n < 0) Py_RETURN_NONE;
    Buffer columns[3] = {{NULL}, {NULL}, {NULL}};
    Py_ssize_t payload_bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *payload = PyTuple_GET_ITEM(PyList_GET_ITEM(records, i), 0);
        if (PyBytes_CheckExact(payload)) payload_bytes += PyBytes_GET_SIZE(payload) + 5;
    }
    int ok = buf_init(&columns[0], 64 + 24 * n) == 0 && buf_init(&columns[1], 64 + 48 * n) == 0 &&
             buf_init(&columns[2], 16 + payload_bytes) == 0;
    for (int c = 0; ok && c < 3; c++)
        ok = put_header(&columns[c], n, 0x90, 16, 0, 0xdc, 0xdd) == 0;
    int handled = 1;
    for (Py_ssize_t i = 0; ok && handled && i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        int status = put_str(&columns[0], PyTuple_GET_ITEM(record, 1));
        if (status == 1) {
            PyObject *dedupe = PyTuple_GET_ITEM(record, 2);
            if (dedupe == Py_None) {
                status = buf_reserve(&columns[1], 1) < 0 ? -1 : 1;
                if (status == 1) columns[1].data[columns[1].len++] = (char)0xc0;
            } else {
                status = put_str(&columns[1], dedupe);
            }
        }
        if (status == 1) status = put_bin(&columns[2], PyTuple_GET_ITEM(record, 0));
        ok = status >= 0;
        handled = status == 1;
    }
    PyObject *out = NULL;
    if (ok && handled) {
        for (int c = 0; ok && c < 3; c++)
            ok = buf_finish(&columns[c]) == 0;
        if (ok) out = PyTuple_Pack(3, columns[0].bytes, columns[1].bytes, columns[2].bytes);
    }
    for (int c = 0; c < 3; c++) Py_XDECREF(columns[c].bytes);
    if (out == NULL && ok && !handled) Py_RETURN_NONE;
    return out;
}

/* -- append results ------------------------------------------------------------------------- */

static PyObject *offset_text(long long offset) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", offset);
    PyObject *text = PyUnicode_New(n, 127);
    if (text == NULL) return NULL;
    memcpy(PyUnicode_1BYTE_DATA(text), digits, (size_t)n);
    return text;
}

static PyObject *fresh_results(PyObject *self, PyObject *args) {
    long long first_offset;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "Ln:fresh_results", &first_offset, &count)) return NULL;
    if (result_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call setup() first");
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return NULL;
    }
    PyObject *results = PyList_New(count);
    if (results == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *offset = offset_text(first_offset + i);
        PyObject *result = offset ? result_type->tp_alloc(result_type, 2) : NULL;
        if (result == NULL) {
            Py_XDECREF(offset);
            Py_DECREF(results);
            return NULL;
        }
        PyTuple_SET_ITEM(result, 0, offset);
        Py_INCREF(Py_False);
        PyTuple_SET_ITEM(result, 1, Py_False);
        PyList_SET_ITEM(results, i, result);
    }
    return results;
}

static PyObject *setup(PyObject *self, PyObject *type) {
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup(AppendResult)");
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(result_type, (PyTypeObject *)type);
    Py_RETURN_NONE;
}

/* -- HashIndex ------------------------------------------------------------------------------ */

typedef struct {
    int64_t hash; /* 0: an empty slot */
    int64_t offset;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t capacity; /* a power of two */
    int shift;           /* 64 - log2(capacity) */
    Py_ssize_t used;     /* occupied slots, entries below the floor included */
    int64_t floor;
    int64_t max_offset;  /* the highest offset held; below the floor, the table is emptied */
} HashIndex;

#define MIN_CAPACITY 1024

/* Fibonacci hashing (the product's top bits): spreads small test hashes as well as BLAKE2b's */
static inline Py_ssize_t spread(int64_t hash, int shift) {
    return (Py_ssize_t)(((uint64_t)hash * 0x9E3779B97F4A7C15ULL) >> shift);
}

static inline int shift_of(Py_ssize_t capacity) {
    int bits = 0;
    while (((Py_ssize_t)1 << bits) < capacity) bits++;
    return 64 - bits;
}

static inline Py_ssize_t slot_of(const HashIndex *index, int64_t hash) {
    return spread(hash, index->shift);
}

static Slot *find_slot(const HashIndex *index, int64_t hash) {
    Py_ssize_t mask = index->capacity - 1;
    for (Py_ssize_t i = slot_of(index, hash);; i = (i + 1) & mask) {
        Slot *slot = &index->slots[i];
        if (slot->hash == hash || slot->hash == 0) return slot;
    }
}

static int resize(HashIndex *index, Py_ssize_t wanted_entries);

static inline void put(HashIndex *index, int64_t hash, int64_t offset) {
    Slot *slot = find_slot(index, hash);
    if (slot->hash == 0) {
        slot->hash = hash;
        index->used++;
    }
    slot->offset = offset; /* the newest record of a hash wins */
    if (offset > index->max_offset) index->max_offset = offset;
}

/* room for ``extra`` more entries at a load of at most 3/4 */
static int reserve(HashIndex *index, Py_ssize_t extra) {
    if ((index->used + extra) * 4 <= index->capacity * 3) return 0;
    /* count the live entries: the dead ones are left behind by the rebuild */
    Py_ssize_t live = 0;
    for (Py_ssize_t i = 0; i < index->capacity; i++)
        if (index->slots[i].hash != 0 && index->slots[i].offset >= index->floor) live++;
    return resize(index, live + extra);
}

static int resize(HashIndex *index, Py_ssize_t wanted_entries) {
    Py_ssize_t capacity = MIN_CAPACITY;
    while (capacity < 2 * wanted_entries) capacity *= 2; /* at most half full after */
    Slot *fresh = PyMem_Calloc((size_t)capacity, sizeof(Slot));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = index->slots;
    Py_ssize_t old_capacity = index->capacity;
    index->slots = fresh;
    index->capacity = capacity;
    index->shift = shift_of(capacity);
    index->used = 0;
    for (Py_ssize_t i = 0; i < old_capacity; i++)
        if (old[i].hash != 0 && old[i].offset >= index->floor)
            put(index, old[i].hash, old[i].offset);
    PyMem_Free(old);
    return 0;
}

/* an empty index; the table exists from here on, so no method meets a table-less index */
static PyObject *index_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":HashIndex", names)) return NULL;
    HashIndex *index = (HashIndex *)type->tp_alloc(type, 0);
    if (index == NULL) return NULL;
    index->max_offset = -1;
    if (resize(index, 0) < 0) {
        Py_DECREF(index);
        return NULL;
    }
    return (PyObject *)index;
}

static void index_dealloc(HashIndex *index) {
    PyMem_Free(index->slots);
    Py_TYPE(index)->tp_free((PyObject *)index);
}

/* a readable buffer of int64; -1 with an error set if it is not one */
static int int64_buffer(PyObject *object, Py_buffer *view) {
    if (PyObject_GetBuffer(object, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len % (Py_ssize_t)sizeof(int64_t) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "expected a buffer of int64 values");
        return -1;
    }
    return 0;
}

static PyObject *index_add(HashIndex *index, PyObject *args) {
    long long hash, offset;
    if (!PyArg_ParseTuple(args, "LL:add", &hash, &offset)) return NULL;
    if (hash != 0) {
        if (reserve(index, 1) < 0) return NULL;
        put(index, hash, offset);
    }
    Py_RETURN_NONE;
}

static PyObject *index_add_run(HashIndex *index, PyObject *args) {
    PyObject *hashes;
    long long first_offset;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OL:add_run", &hashes, &first_offset)) return NULL;
    if (int64_buffer(hashes, &view) < 0) return NULL;
    const int64_t *values = view.buf;
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(int64_t);
    if (reserve(index, n) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (values[i] != 0) put(index, values[i], first_offset + i);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *index_add_many(HashIndex *index, PyObject *args) {
    PyObject *hashes, *offsets;
    Py_buffer hash_view, offset_view;
    if (!PyArg_ParseTuple(args, "OO:add_many", &hashes, &offsets)) return NULL;
    if (int64_buffer(hashes, &hash_view) < 0) return NULL;
    if (int64_buffer(offsets, &offset_view) < 0) {
        PyBuffer_Release(&hash_view);
        return NULL;
    }
    PyObject *out = NULL;
    Py_ssize_t n = hash_view.len / (Py_ssize_t)sizeof(int64_t);
    if (offset_view.len != hash_view.len) {
        PyErr_SetString(PyExc_ValueError, "hashes and offsets differ in length");
    } else if (reserve(index, n) == 0) {
        const int64_t *h = hash_view.buf, *o = offset_view.buf;
        for (Py_ssize_t i = 0; i < n; i++)
            if (h[i] != 0 && o[i] >= index->floor) put(index, h[i], o[i]);
        out = Py_None;
        Py_INCREF(out);
    }
    PyBuffer_Release(&hash_view);
    PyBuffer_Release(&offset_view);
    return out;
}

static PyObject *index_find(HashIndex *index, PyObject *digests) {
    PyObject *sequence = PySequence_Fast(digests, "find takes a sequence of int");
    if (sequence == NULL) return NULL;
    PyObject *found = PyDict_New();
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    for (Py_ssize_t i = 0; found != NULL && i < n; i++) {
        long long hash = PyLong_AsLongLong(items[i]);
        if (hash == -1 && PyErr_Occurred()) {
            Py_CLEAR(found);
            break;
        }
        if (hash == 0) continue;
        Slot *slot = find_slot(index, hash);
        if (slot->hash != 0 && slot->offset >= index->floor) {
            PyObject *offset = PyLong_FromLongLong(slot->offset);
            if (offset == NULL || PyDict_SetItem(found, items[i], offset) < 0) Py_CLEAR(found);
            Py_XDECREF(offset);
        }
    }
    Py_DECREF(sequence);
    return found;
}

/* True when a hash of ``hashes`` is in the index from the floor on, or is there twice */
static PyObject *index_probe(HashIndex *index, PyObject *hashes) {
    Py_buffer view;
    if (int64_buffer(hashes, &view) < 0) return NULL;
    const int64_t *values = view.buf;
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(int64_t);
    int hit = 0;
    for (Py_ssize_t i = 0; !hit && i < n; i++) {
        if (values[i] == 0) continue;
        Slot *slot = find_slot(index, values[i]);
        hit = slot->hash != 0 && slot->offset >= index->floor;
    }
    if (!hit && n > 1) {
        /* repeats within the records: a small table of their own */
        Py_ssize_t capacity = 16, mask;
        while (capacity < 2 * n) capacity *= 2;
        mask = capacity - 1;
        int shift = shift_of(capacity);
        int64_t *seen = PyMem_Calloc((size_t)capacity, sizeof(int64_t));
        if (seen == NULL) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; !hit && i < n; i++) {
            int64_t hash = values[i];
            if (hash == 0) continue;
            Py_ssize_t at = spread(hash, shift);
            while (seen[at] != 0 && seen[at] != hash) at = (at + 1) & mask;
            hit = seen[at] == hash;
            seen[at] = hash;
        }
        PyMem_Free(seen);
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(hit);
}

static PyObject *index_expire(HashIndex *index, PyObject *arg) {
    long long floor = PyLong_AsLongLong(arg);
    if (floor == -1 && PyErr_Occurred()) return NULL;
    if (floor <= index->floor) Py_RETURN_NONE;
    index->floor = floor;
    if (index->max_offset < floor && index->used) {
        /* everything held has expired: give the memory back */
        if (resize(index, 0) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *index_get_floor(HashIndex *index, void *closure) {
    return PyLong_FromLongLong(index->floor);
}

static PyObject *index_get_capacity(HashIndex *index, void *closure) {
    return PyLong_FromSsize_t(index->capacity);
}

static Py_ssize_t index_len(HashIndex *index) { return index->used; }

static PyMethodDef index_methods[] = {
    {"add", (PyCFunction)index_add, METH_VARARGS,
     "add(digest, offset): record that ``offset`` holds a record with hash ``digest``."},
    {"add_run", (PyCFunction)index_add_run, METH_VARARGS,
     "add_run(hashes, first_offset): hashes[i] (an int64 buffer) at first_offset + i; 0 is "
     "no entry."},
    {"add_many", (PyCFunction)index_add_many, METH_VARARGS,
     "add_many(hashes, offsets): many entries at once (int64 buffers); 0 hashes and offsets "
     "below the floor are skipped."},
    {"find", (PyCFunction)index_find, METH_O,
     "find(digests) -> {digest: offset} for each hash held from the floor on."},
    {"probe", (PyCFunction)index_probe, METH_O,
     "probe(hashes) -> whether a hash of the int64 buffer is held, or repeats in it."},
    {"expire", (PyCFunction)index_expire, METH_O,
     "expire(floor): forget every entry below ``floor`` (the floor never moves back)."},
    {NULL},
};

static PyGetSetDef index_getset[] = {
    {"floor", (getter)index_get_floor, NULL, "Entries below this offset are not found.", NULL},
    {"capacity", (getter)index_get_capacity, NULL, "Slots allocated (16 bytes each).", NULL},
    {NULL},
};

static PySequenceMethods index_as_sequence = {
    .sq_length = (lenfunc)index_len,
};

static PyTypeObject HashIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "personify.eventlog._chunk_native.HashIndex",
    .tp_basicsize = sizeof(HashIndex),
    .tp_dealloc = (destructor)index_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The dedupe index: 64-bit hash -> offset of its newest record, from a floor on.",
    .tp_methods = index_methods,
    .tp_getset = index_getset,
    .tp_as_sequence = &index_as_sequence,
    .tp_new = index_new,
};

/* -- module --------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"setup", setup, METH_O, "setup(AppendResult): the type fresh_results builds."},
    {"record_hashes", record_hashes, METH_O,
     "record_hashes(records) -> bytes: each record's dedupe hash as int64 (0: no key), or "
     "None."},
    {"pack_columns", pack_columns, METH_O,
     "pack_columns(records) -> (keys, dedupe_keys, payloads) packed as msgpack arrays, or "
     "None."},
    {"fresh_results", fresh_results, METH_VARARGS,
     "fresh_results(first_offset, count) -> [AppendResult(str(offset), False), ...]."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chunk_native",
    "The SQLite event log's per-record work, compiled (see the C source's header).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__chunk_native(void) {
    if (PyType_Ready(&HashIndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&HashIndexType);
    if (PyModule_AddObject(m, "HashIndex", (PyObject *)&HashIndexType) < 0) {
        Py_DECREF(&HashIndexType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
