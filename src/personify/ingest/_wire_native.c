/*
 * The wire path's normaliser for the common case, compiled: a ``WireEvent`` (already decoded
 * and checked by msgspec) in, its log record out, or None.
 *
 * None means "not the common case, ask the Python path": an event whose strings are not plain
 * printable ASCII, whose timestamps are not in the canonical shape YYYY-MM-DDTHH:MM:SS.mmmZ,
 * an alias or group event, one without a messageId, an invalid one (the Python path raises
 * the right error), one over the size limit. So this code never decides a rejection and never
 * reads untrusted bytes as JSON: it only copies strings it has checked to need no escaping and
 * raw objects msgspec has already validated. What it returns must be byte for byte what
 * ``WireNormalizer.normalize`` + ``wire_log_record`` build; a property test holds it to that.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_native_buffer.h"

/* field order of WireEvent: the order msgspec encodes them in, and the order of
 * msgspec.structs.astuple's values (setup checks it against __struct_fields__) */
enum {
    F_TYPE, F_EVENT, F_NAME, F_CATEGORY, F_USER_ID, F_ANONYMOUS_ID, F_PREVIOUS_ID, F_GROUP_ID,
    F_MESSAGE_ID, F_TIMESTAMP, F_ORIGINAL_TIMESTAMP, F_SENT_AT, F_PROPERTIES, F_TRAITS,
    F_CONTEXT, F_INTEGRATIONS, F_CHANNEL, F_VERSION, F_WRITE_KEY, F_RECEIVED_AT, F_SOURCE_ID,
    F_FLAGS, F_COUNT
};

static const char *FIELD_NAMES[F_COUNT] = {
    "type", "event", "name", "category", "userId", "anonymousId", "previousId", "groupId",
    "messageId", "timestamp", "originalTimestamp", "sentAt", "properties", "traits",
    "context", "integrations", "channel", "version", "writeKey", "receivedAt", "sourceId",
    "flags",
};

#define MAX_ID_CHARS 512

typedef struct {
    PyObject *unset;       /* msgspec.UNSET */
    PyObject *raw_type;    /* msgspec.Raw */
    PyObject *record_type; /* eventlog.base.LogRecord */
    PyTypeObject *event_type;        /* WireEvent */
    PyObject *astuple;               /* msgspec.structs.astuple */
} State;

static State state;
static int ready = 0;

/* -- output buffer: the payload is written straight into a bytes object ---------------- */

/* ,"name": (no comma before the first field) */
static int buf_key(Buffer *b, int field) {
    const char *name = FIELD_NAMES[field];
    Py_ssize_t n = (Py_ssize_t)strlen(name);
    if (buf_reserve(b, n + 4) < 0) return -1;
    if (b->len > 1) b->data[b->len++] = ',';
    b->data[b->len++] = '"';
    memcpy(b->data + b->len, name, (size_t)n);
    b->len += n;
    b->data[b->len++] = '"';
    b->data[b->len++] = ':';
    return 0;
}

/* -- values -------------------------------------------------------------------------------- */

/* ASCII lower-cased, 0 for what a PII key name drops ("-", "_", ".", " "): the bytes side of
 * personify.events.hashing.pii_key_name */
static unsigned char KEY_FOLD[256];

/* The ASCII bytes of ``value`` when it is a str of printable ASCII that JSON writes as is
 * (no quote, no backslash, no control character), else NULL. */
static unsigned char PLAIN[256]; /* 1 for a byte JSON writes as is inside a string */

static const char *plain_ascii(PyObject *value, Py_ssize_t *len) {
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value)) return NULL;
    const unsigned char *text = PyUnicode_1BYTE_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    Py_ssize_t i = 0;
    /* eight bytes at a time; every byte is below 0x80 (an ASCII str), so these are exact:
     * a byte below 0x20, or one equal to '"', '\\' or 0x7f, is not written as is */
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, text + i, 8);
        uint64_t quote = w ^ (ones * '"'), slash = w ^ (ones * '\\'), del = w ^ (ones * 0x7f);
        /* below 0x20: subtracting 0x20 sets the high bit (no byte has it set before);
         * equal to c: the classic "has a zero byte" test on w ^ c */
        if (((w - ones * 0x20) & highs) | ((quote - ones) & ~quote & highs) |
            ((slash - ones) & ~slash & highs) | ((del - ones) & ~del & highs))
            return NULL;
    }
    unsigned char all = 1;
    for (; i < n; i++) all &= PLAIN[text[i]];
    if (!all) return NULL;
    *len = n;
    return (const char *)text;
}

static int buf_string(Buffer *b, const char *text, Py_ssize_t n) {
    if (buf_reserve(b, n + 2) < 0) return -1;
    b->data[b->len++] = '"';
    memcpy(b->data + b->len, text, (size_t)n);
    b->len += n;
    b->data[b->len++] = '"';
    return 0;
}

/* 1 written, 0 not the common case, -1 error. Writes ,"field":value unless value is UNSET;
 * value may be None (null) or a plain ASCII str. */
static int put_optional_string(Buffer *b, int field, PyObject *value) {
    if (value == state.unset) return 1;
    if (value == Py_None) {
        if (buf_key(b, field) < 0) return -1;
        return buf_write(b, "null", 4) < 0 ? -1 : 1;
    }
    Py_ssize_t n;
    const char *text = plain_ascii(value, &n);
    if (text == NULL) return 0;
    if (buf_key(b, field) < 0 || buf_string(b, text, n) < 0) return -1;
    return 1;
}

/* an id the Python path keeps exactly as sent: 1..512 characters, no space at either end */
static const char *clean_id(PyObject *value, Py_ssize_t *len) {
    if (value == state.unset || value == Py_None) return NULL;
    const char *text = plain_ascii(value, len);
    if (text == NULL || *len == 0 || *len > MAX_ID_CHARS) return NULL;
    if (text[0] == ' ' || text[*len - 1] == ' ') return NULL;
    return text;
}

/* -- time ---------------------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int digits(const char *t, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (t[i] < '0' || t[i] > '9') return 0;
        v = v * 10 + (t[i] - '0');
    }
    *out = v;
    return 1;
}

/* Milliseconds since the epoch of a canonical timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ"; 0 when
 * ``value`` is not one (the Python path parses every other ISO-8601 shape). */
static int canonical_ms(PyObject *value, int64_t *ms) {
    Py_ssize_t n;
    const char *t = plain_ascii(value, &n);
    if (t == NULL || n != 24) return 0;
    if (t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' || t[16] != ':' ||
        t[19] != '.' || t[23] != 'Z')
        return 0;
    int y, mo, d, h, mi, s, f;
    if (!digits(t, 4, &y) || !digits(t + 5, 2, &mo) || !digits(t + 8, 2, &d) ||
        !digits(t + 11, 2, &h) || !digits(t + 14, 2, &mi) || !digits(t + 17, 2, &s) ||
        !digits(t + 20, 3, &f))
        return 0;
    static const int month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || h > 23 || mi > 59 || s > 59) return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    int last = month_days[mo - 1] + (mo == 2 && leap);
    if (d < 1 || d > last) return 0;
    *ms = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000) + f;
    return 1;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* ``value`` (0 <= value < 10^n) as n decimal digits */
static void put_digits(char *out, int value, int n) {
    for (int i = n - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" of ``us`` microseconds since the epoch (truncated to the
 * millisecond like format_timestamp); 0 when the year is outside 1..9999. */
static int format_us(int64_t us, char out[24]) {
    int64_t ms = floor_div(us, 1000);
    int64_t secs = floor_div(ms, 1000);
    int64_t days = floor_div(secs, 86400);
    int64_t rem = secs - days * 86400;
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 1 || y > 9999) return 0;
    int frac = (int)(ms - secs * 1000);
    int hour = (int)(rem / 3600), minute = (int)(rem % 3600 / 60), second = (int)(rem % 60);
    put_digits(out, (int)y, 4);
    out[4] = '-';
    put_digits(out + 5, m, 2);
    out[7] = '-';
    put_digits(out + 8, d, 2);
    out[10] = 'T';
    put_digits(out + 11, hour, 2);
    out[13] = ':';
    put_digits(out + 14, minute, 2);
    out[16] = ':';
    put_digits(out + 17, second, 2);
    out[19] = '.';
    put_digits(out + 20, frac, 3);
    out[23] = 'Z';
    return 1;
}

/* -- the record ---------------------------------------------------------------------------- */

static int put_raw_object(Buffer *b, int field, PyObject *value) {
    if (value == state.unset) return 1;
    if (Py_TYPE(value) != (PyTypeObject *)state.raw_type) return 0;
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    const char *text = (const char *)view.buf;
    int ok = view.len > 0 && (text[0] == '{' || (view.len == 4 && memcmp(text, "null", 4) == 0));
    int rc = 0;
    if (ok) rc = (buf_key(b, field) < 0 || buf_write(b, text, view.len) < 0) ? -1 : 1;
    PyBuffer_Release(&view);
    return rc;
}

static const char *event_kind(PyObject *route_kind, PyObject *sent_type) {
    PyObject *kind = route_kind != Py_None ? route_kind : sent_type;
    Py_ssize_t n;
    const char *text = plain_ascii(kind, &n);
    if (text == NULL) return NULL;
    if (n == 1) {
        switch (text[0]) {
        case 't': return "track";
        case 'i': return "identify";
        case 'p': return "page";
        case 's': return "screen";
        default: return NULL; /* g and a: group and alias take the Python path */
        }
    }
    static const char *kinds[] = {"track", "identify", "page", "screen"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if ((size_t)n == strlen(kinds[i]) && memcmp(text, kinds[i], (size_t)n) == 0)
            return kinds[i];
    }
    return NULL;
}

typedef struct {
    PyObject *route_kind;
    int64_t received_us;
    PyObject *received_text;
    PyObject *source_id;
    PyObject *sent_default;
    int64_t tolerance_us;
    Py_ssize_t max_bytes;
    PyObject *pii_roots; /* ((field index, probes or None), ...) */
} Args;

/* The record, or NULL with no exception set when the Python path must take the event. */
static PyObject *build(Args *a, PyObject **values) {
    PyObject *unset = state.unset;
    const char *kind = event_kind(a->route_kind, values[F_TYPE]);
    if (kind == NULL) return NULL;

    Py_ssize_t user_len = 0, anon_len = 0, mid_len = 0, src_len = 0, recv_len = 0;
    const char *user = clean_id(values[F_USER_ID], &user_len);
    const char *anon = clean_id(values[F_ANONYMOUS_ID], &anon_len);
    /* a present id that is not clean (or not a plain str) is the Python path's to judge */
    if (user == NULL && values[F_USER_ID] != unset && values[F_USER_ID] != Py_None) return NULL;
    if (anon == NULL && values[F_ANONYMOUS_ID] != unset && values[F_ANONYMOUS_ID] != Py_None)
        return NULL;
    if (user == NULL && anon == NULL) return NULL;
    const char *mid = clean_id(values[F_MESSAGE_ID], &mid_len);
    if (mid == NULL) return NULL;
    if (strcmp(kind, "track") == 0) {
        Py_ssize_t n;
        const char *name = plain_ascii(values[F_EVENT], &n);
        Py_ssize_t i = 0;
        while (name != NULL && i < n && name[i] == ' ') i++;
        if (name == NULL || i == n) return NULL;
    }
    const char *source = plain_ascii(a->source_id, &src_len);
    const char *received = plain_ascii(a->received_text, &recv_len);
    if (source == NULL || received == NULL) return NULL;

    /* clocks: timestamp = receivedAt - (sentAt - client time) */
    PyObject *original_raw = values[F_ORIGINAL_TIMESTAMP];
    PyObject *timestamp_raw = values[F_TIMESTAMP];
    PyObject *sent_raw = values[F_SENT_AT] != unset ? values[F_SENT_AT] : a->sent_default;
    int has_original = original_raw != unset && original_raw != Py_None;
    int has_timestamp = timestamp_raw != unset && timestamp_raw != Py_None;
    int has_sent = sent_raw != unset && sent_raw != Py_None;
    PyObject *client_raw = has_original ? original_raw : (has_timestamp ? timestamp_raw : NULL);
    int64_t client_ms = 0, sent_ms = 0, other_ms = 0;
    if (client_raw != NULL && !canonical_ms(client_raw, &client_ms)) return NULL;
    if (has_sent && !canonical_ms(sent_raw, &sent_ms)) return NULL;
    if (has_original && has_timestamp && !canonical_ms(timestamp_raw, &other_ms)) return NULL;
    char timestamp[24];
    const char *timestamp_text;
    Py_ssize_t timestamp_len = 24;
    int64_t moment_us;
    if (client_raw != NULL && has_sent) {
        moment_us = a->received_us - (sent_ms - client_ms) * 1000;
        if (!format_us(moment_us, timestamp)) return NULL;
        timestamp_text = timestamp;
    } else if (client_raw != NULL) {
        moment_us = client_ms * 1000;
        timestamp_text = PyUnicode_AsUTF8(client_raw);
    } else {
        moment_us = a->received_us;
        timestamp_text = received;
        timestamp_len = recv_len;
    }
    if (timestamp_text == NULL) return NULL;
    int is_future = moment_us - a->received_us > a->tolerance_us;

    Buffer b;
    if (buf_init(&b, 1024) < 0) return NULL;
    int rc;
#define PUT(expr)               \
    do {                        \
        rc = (expr);            \
        if (rc <= 0) goto done; \
    } while (0)
    PUT(buf_write(&b, "{", 1) < 0 ? -1 : 1);
    PUT(buf_key(&b, F_TYPE) < 0 || buf_string(&b, kind, (Py_ssize_t)strlen(kind)) < 0 ? -1 : 1);
    PUT(put_optional_string(&b, F_EVENT, values[F_EVENT]));
    PUT(put_optional_string(&b, F_NAME, values[F_NAME]));
    PUT(put_optional_string(&b, F_CATEGORY, values[F_CATEGORY]));
    if (user != NULL)
        PUT(buf_key(&b, F_USER_ID) < 0 || buf_string(&b, user, user_len) < 0 ? -1 : 1);
    if (anon != NULL)
        PUT(buf_key(&b, F_ANONYMOUS_ID) < 0 || buf_string(&b, anon, anon_len) < 0 ? -1 : 1);
    PUT(put_optional_string(&b, F_PREVIOUS_ID, values[F_PREVIOUS_ID]));
    PUT(put_optional_string(&b, F_GROUP_ID, values[F_GROUP_ID]));
    PUT(buf_key(&b, F_MESSAGE_ID) < 0 || buf_string(&b, mid, mid_len) < 0 ? -1 : 1);
    PUT(buf_key(&b, F_TIMESTAMP) < 0 || buf_string(&b, timestamp_text, timestamp_len) < 0 ? -1 : 1);
    if (client_raw != NULL) {
        Py_ssize_t n;
        const char *text = plain_ascii(client_raw, &n);
        PUT(buf_key(&b, F_ORIGINAL_TIMESTAMP) < 0 || buf_string(&b, text, n) < 0 ? -1 : 1);
    } else {
        PUT(put_optional_string(&b, F_ORIGINAL_TIMESTAMP, original_raw));
    }
    PUT(put_optional_string(&b, F_SENT_AT, sent_raw));
    PUT(put_raw_object(&b, F_PROPERTIES, values[F_PROPERTIES]));
    PUT(put_raw_object(&b, F_TRAITS, values[F_TRAITS]));
    PUT(put_raw_object(&b, F_CONTEXT, values[F_CONTEXT]));
    PUT(put_raw_object(&b, F_INTEGRATIONS, values[F_INTEGRATIONS]));
    PUT(put_optional_string(&b, F_CHANNEL, values[F_CHANNEL]));
    PyObject *version = values[F_VERSION];
    if (PyLong_CheckExact(version)) {
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(version, &overflow);
        rc = 0;
        if (overflow || (number == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            goto done;
        }
        char digits_text[32];
        int n = snprintf(digits_text, sizeof digits_text, "%lld", number);
        PUT(buf_key(&b, F_VERSION) < 0 || buf_write(&b, digits_text, n) < 0 ? -1 : 1);
    } else {
        PUT(put_optional_string(&b, F_VERSION, version));
    }
    PUT(buf_key(&b, F_RECEIVED_AT) < 0 || buf_string(&b, received, recv_len) < 0 ? -1 : 1);
    PUT(buf_key(&b, F_SOURCE_ID) < 0 || buf_string(&b, source, src_len) < 0 ? -1 : 1);
    if (is_future)
        PUT(buf_key(&b, F_FLAGS) < 0 || buf_write(&b, "[\"future_timestamp\"]", 20) < 0 ? -1 : 1);
    PUT(buf_write(&b, "}", 1) < 0 ? -1 : 1);
#undef PUT
    rc = 1;
done:
    if (rc <= 0 || b.len > a->max_bytes) {
        Py_XDECREF(b.bytes); /* NULL when a resize failed */
        return NULL;         /* with an exception set only when rc < 0 */
    }
    if (buf_finish(&b) < 0) return NULL;
    PyObject *payload = b.bytes;
    /* the ordering key: the device when known, else the user */
    PyObject *key = anon != NULL ? PyUnicode_FromStringAndSize(anon, anon_len)
                                 : PyUnicode_FromStringAndSize(user, user_len);
    /* "source:messageId", both plain ASCII */
    PyObject *dedupe = PyUnicode_New(src_len + 1 + mid_len, 127);
    if (dedupe != NULL) {
        char *text = (char *)PyUnicode_1BYTE_DATA(dedupe);
        memcpy(text, source, (size_t)src_len);
        text[src_len] = ':';
        memcpy(text + src_len + 1, mid, (size_t)mid_len);
    }
    PyObject *record = NULL;
    if (key != NULL && dedupe != NULL) {
        /* what tuple.__new__(LogRecord, ...) does; a NamedTuple's own __new__ is Python code */
        PyTypeObject *type = (PyTypeObject *)state.record_type;
        allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
        record = alloc != NULL ? alloc(type, 3) : NULL;
        if (record != NULL) {
            PyTuple_SET_ITEM(record, 0, payload);
            PyTuple_SET_ITEM(record, 1, key);
            PyTuple_SET_ITEM(record, 2, dedupe);
            return record; /* the three references now belong to the record */
        }
    }
    Py_DECREF(payload);
    Py_XDECREF(key);
    Py_XDECREF(dedupe);
    return record;
}

/* Whether ``needle`` (m >= 1 bytes) occurs in ``hay``: memchr for its first byte, then a
 * compare. The raw objects searched are short, where libc's memmem costs more to set up. */
static int contains(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t m) {
    const char *end = hay + n;
    for (const char *at = hay; end - at >= m;) {
        const char *first = memchr(at, needle[0], (size_t)(end - at - m + 1));
        if (first == NULL) return 0;
        if (memcmp(first + 1, needle + 1, (size_t)(m - 1)) == 0) return 1;
        at = first + 1;
    }
    return 0;
}

/* Whether the key name ``name`` (m >= 1 bytes, folded, no separator) occurs in ``hay`` read
 * through KEY_FOLD: letters in either case, separators skipped wherever they are. Any key whose
 * key name holds ``name`` is found (unless it is written with escapes). */
static int contains_key_name(const unsigned char *hay, Py_ssize_t n, const unsigned char *name,
                             Py_ssize_t m) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (KEY_FOLD[hay[i]] != name[0]) continue;
        Py_ssize_t k = 1;
        for (Py_ssize_t j = i + 1; k < m && j < n; j++) {
            unsigned char c = KEY_FOLD[hay[j]];
            if (c == 0) continue;
            if (c != name[k]) break;
            k++;
        }
        if (k == m) return 1;
    }
    return 0;
}

/* Whether a configured PII path may be present in the event (``needs_general_path``): a
 * root field that is a PII path itself, or a raw object holding a \\u escape or one of its
 * probes, key names matched as contains_key_name does. 1 yes, 0 no, -1 error. */
static int may_hold_pii(PyObject *roots, PyObject **values) {
    Py_ssize_t n = PyTuple_GET_SIZE(roots);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *root = PyTuple_GET_ITEM(roots, i);
        Py_ssize_t field = PyLong_AsSsize_t(PyTuple_GET_ITEM(root, 0));
        PyObject *probes = PyTuple_GET_ITEM(root, 1);
        if (field < 0 || field >= F_COUNT) return -1;
        PyObject *value = values[field];
        if (value == state.unset || value == Py_None) continue;
        if (probes == Py_None || Py_TYPE(value) != (PyTypeObject *)state.raw_type) return 1;
        Py_buffer view;
        if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) return -1;
        const char *text = (const char *)view.buf;
        int hit = contains(text, view.len, "\\u", 2);
        for (Py_ssize_t k = 0; !hit && k < PyTuple_GET_SIZE(probes); k++) {
            PyObject *probe = PyTuple_GET_ITEM(probes, k);
            Py_ssize_t size = PyBytes_GET_SIZE(probe);
            hit = size > 0 && contains_key_name((const unsigned char *)text, view.len,
                                                (const unsigned char *)PyBytes_AS_STRING(probe),
                                                size);
        }
        PyBuffer_Release(&view);
        if (hit) return 1;
    }
    return 0;
}

/* ``roots`` is ((int, tuple[bytes, ...] | None), ...): 0, or -1 with a TypeError */
static int check_roots(PyObject *roots) {
    if (!PyTuple_CheckExact(roots)) goto bad;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(roots); i++) {
        PyObject *root = PyTuple_GET_ITEM(roots, i);
        if (!PyTuple_CheckExact(root) || PyTuple_GET_SIZE(root) != 2 ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(root, 0)))
            goto bad;
        PyObject *probes = PyTuple_GET_ITEM(root, 1);
        if (probes == Py_None) continue;
        if (!PyTuple_CheckExact(probes)) goto bad;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(probes); k++)
            if (!PyBytes_CheckExact(PyTuple_GET_ITEM(probes, k))) goto bad;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError, "pii_roots is ((field index, (bytes, ...) or None), ...)");
    return -1;
}

/* The record of one event, None for the Python path, or NULL with an exception set. */
static PyObject *one_record(Args *a, PyObject *raw) {
    if (Py_TYPE(raw) != state.event_type) Py_RETURN_NONE;
    /* the field values through msgspec's public API, never its object layout: the tuple
     * holds its own references, so ``values`` borrows from it while it lives */
    PyObject *fields = PyObject_CallOneArg(state.astuple, raw);
    if (fields == NULL) return NULL;
    PyObject *result = NULL;
    if (!PyTuple_CheckExact(fields) || PyTuple_GET_SIZE(fields) != F_COUNT) {
        PyErr_SetString(PyExc_TypeError, "astuple gave no tuple of every WireEvent field");
        goto out;
    }
    PyObject **values = &PyTuple_GET_ITEM(fields, 0);
    /* a client cannot set what the server sets: those take the Python path */
    if (values[F_RECEIVED_AT] != state.unset || values[F_SOURCE_ID] != state.unset ||
        values[F_FLAGS] != state.unset)
        goto fallback;
    /* an event that may carry PII is hashed by the Python path */
    int pii = may_hold_pii(a->pii_roots, values);
    if (pii < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a pii root is no field");
        goto out;
    }
    if (pii) goto fallback;
    result = build(a, values);
    if (result == NULL && !PyErr_Occurred()) goto fallback;
    goto out;
fallback:
    result = Py_NewRef(Py_None);
out:
    Py_DECREF(fields);
    return result;
}

/* args[1:9] of wire_record / wire_records into ``a``; -1 with an exception on bad ones */
static int parse_args(Args *a, PyObject *const *args) {
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "call setup() first");
        return -1;
    }
    a->route_kind = args[1];
    a->received_us = PyLong_AsLongLong(args[2]);
    a->received_text = args[3];
    a->source_id = args[4];
    a->sent_default = args[5];
    a->tolerance_us = PyLong_AsLongLong(args[6]);
    a->max_bytes = PyLong_AsSsize_t(args[7]);
    a->pii_roots = args[8];
    if (PyErr_Occurred() || check_roots(a->pii_roots) < 0) return -1;
    if (!PyUnicode_Check(a->source_id) || !PyUnicode_Check(a->received_text) ||
        (a->route_kind != Py_None && !PyUnicode_Check(a->route_kind))) {
        PyErr_SetString(PyExc_TypeError, "source_id and received_text (and a route kind) are str");
        return -1;
    }
    return 0;
}

static PyObject *wire_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "wire_record takes 9 arguments");
        return NULL;
    }
    Args a;
    if (parse_args(&a, args) < 0) return NULL;
    return one_record(&a, args[0]);
}

/* (records, fallbacks): records[i] is the record of events[i] or None for the Python path;
 * fallbacks counts the Nones. */
static PyObject *wire_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "wire_records takes a list and 8 more arguments");
        return NULL;
    }
    Args a;
    if (parse_args(&a, args) < 0) return NULL;
    PyObject *events = args[0];
    Py_ssize_t n = PyList_GET_SIZE(events);
    PyObject *records = PyList_New(n);
    if (records == NULL) return NULL;
    Py_ssize_t fallbacks = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = one_record(&a, PyList_GET_ITEM(events, i));
        if (record == NULL) {
            Py_DECREF(records);
            return NULL;
        }
        fallbacks += record == Py_None;
        PyList_SET_ITEM(records, i, record);
    }
    return Py_BuildValue("(Nn)", records, fallbacks);
}

/* 0 when ``event_type.__struct_fields__`` (msgspec's public list of a Struct's fields, in
 * astuple's order) is FIELD_NAMES, else -1 with a TypeError */
static int check_fields(PyObject *event_type) {
    PyObject *names = PyObject_GetAttrString(event_type, "__struct_fields__");
    if (names == NULL) return -1;
    int ok = PyTuple_Check(names) && PyTuple_GET_SIZE(names) == F_COUNT;
    for (int i = 0; ok && i < F_COUNT; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        ok = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, FIELD_NAMES[i]) == 0;
    }
    Py_DECREF(names);
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "the event type's fields are not the ones compiled in");
        return -1;
    }
    return 0;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *unset, *raw_type, *record_type, *event_type, *astuple;
    if (!PyArg_ParseTuple(args, "OOOOO", &unset, &raw_type, &record_type, &event_type,
                          &astuple))
        return NULL;
    if (!PyType_Check(raw_type) || !PyType_Check(event_type) || !PyType_Check(record_type) ||
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type) ||
        !PyCallable_Check(astuple)) {
        PyErr_SetString(PyExc_TypeError, "setup(UNSET, Raw, LogRecord, WireEvent, astuple)");
        return NULL;
    }
    if (check_fields(event_type) < 0) return NULL;
    for (int c = 0; c < 256; c++) PLAIN[c] = c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
    for (int c = 0; c < 256; c++) KEY_FOLD[c] = c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
    KEY_FOLD['-'] = KEY_FOLD['_'] = KEY_FOLD['.'] = KEY_FOLD[' '] = 0;
    if (ready) {
        Py_CLEAR(state.unset);
        Py_CLEAR(state.raw_type);
        Py_CLEAR(state.record_type);
        Py_CLEAR(state.event_type);
        Py_CLEAR(state.astuple);
    }
    state.unset = Py_NewRef(unset);
    state.raw_type = Py_NewRef(raw_type);
    state.record_type = Py_NewRef(record_type);
    state.event_type = (PyTypeObject *)Py_NewRef(event_type);
    state.astuple = Py_NewRef(astuple);
    ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(UNSET, Raw, LogRecord, WireEvent, astuple): the types wire_record reads and "
     "builds, and msgspec.structs.astuple, which reads a WireEvent's fields."},
    {"wire_record", (PyCFunction)(void (*)(void))wire_record, METH_FASTCALL,
     "wire_record(event, route_kind, received_us, received_text, source_id, sent_default, "
     "tolerance_us, max_bytes, pii_roots) -> LogRecord | None"},
    {"wire_records", (PyCFunction)(void (*)(void))wire_records, METH_FASTCALL,
     "wire_records(events, <the rest as wire_record>) -> (list[LogRecord | None], fallbacks)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire_native",
    "The common case of the wire path, compiled (see personify.ingest.wire).", -1, methods,
};

PyMODINIT_FUNC PyInit__wire_native(void) { return PyModule_Create(&module); }
