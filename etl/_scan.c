/* etl._scan: one pass in C over a batch of NDJSON lines (see etl/scan.py).
 *
 * For each line: check strictly that it is one JSON object (RFC 8259 grammar, and
 * well-formed UTF-8: outside strings the grammar allows ASCII only, and a string holding
 * any byte over 0x7F is checked as it is skipped), find the top-level keys the schema
 * reads, apply a simple string filter on raw bytes, and copy the raw value tokens of
 * the lines kept into one JSON array per key ("[tok,tok,null,...]"), which orjson
 * then turns into exactly the Python values the dict path would have read.
 *
 * A line gets status 0 (filtered: a valid object whose filter key holds a plain
 * string that fails the filter), 1 (kept: valid, tokens copied) or 2 (unsure: the
 * Python path must look at it). Anything this scanner is not certain about is 2:
 * invalid JSON or UTF-8, blank lines, a BOM, a non-object, nesting deeper than MAX_DEPTH, a
 * lone surrogate escape, a top-level key with escapes, a needed key given twice, a
 * filter key that is absent or not a plain string. So status 0 and 1 are exact.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64
#define MAX_KEYS 1024
#define SLOTS 4096 /* hash slots for the keys: a power of two, over 2 x MAX_KEYS */

typedef const unsigned char *ptr;

static unsigned char plain_char[256]; /* 1: may appear unescaped inside a string */

static inline ptr skip_ws(ptr p, ptr end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

static inline int hex4(ptr p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

/* 1 when [p, end) is well-formed UTF-8 (Unicode's table 3-7: no overlong form, no
 * surrogate, nothing past U+10FFFF), as Python's and orjson's strict decoders require. */
static int utf8_ok(ptr p, ptr end)
{
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            uint64_t w;
            if (end - p >= 8 && (memcpy(&w, p, 8), !(w & 0x8080808080808080u)))
                p += 8; /* 8 ASCII bytes at once */
            else
                p++;
            continue;
        }
        Py_ssize_t left = end - p;
        if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (p[1] & 0xC0) != 0x80)
                return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (left < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
                return 0;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (left < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 ||
                (p[3] & 0xC0) != 0x80)
                return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* p is just past the opening quote; returns just past the closing quote, or NULL (also
 * when the string is not well-formed UTF-8: only a string with a byte over 0x7F is
 * checked, which the search for the closing quote notices on the way, at no cost a
 * byte; a separate pass over the batch cost 4 to 5% of a run, perf). */
static ptr skip_string(ptr p, ptr end, int *escaped)
{
    ptr start = p;
    unsigned high = 0; /* a byte over 0x7F seen before the closing quote */
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\');
        const __m128i low = _mm_set1_epi8(0x1F);
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                                    _mm_cmpeq_epi8(x, slash)),
                                       _mm_cmpeq_epi8(_mm_min_epu8(x, low), x));
            unsigned mask = (unsigned)_mm_movemask_epi8(hit);
            unsigned top = (unsigned)_mm_movemask_epi8(x);
            if (mask) {
                high |= top & ((mask & -mask) - 1); /* the bytes before the hit */
                p += __builtin_ctz(mask);
                goto special;
            }
            high |= top;
            p += 16;
        }
#endif
        while (p < end && plain_char[*p])
            high |= *p++ & 0x80;
        if (p >= end)
            return NULL;
#ifdef __SSE2__
    special:
#endif
        if (*p == '"')
            return high && !utf8_ok(start, p) ? NULL : p + 1;
        if (*p != '\\')
            return NULL; /* a control character */
        *escaped = 1;
        if (end - p < 2)
            return NULL;
        switch (p[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            p += 2;
            break;
        case 'u': {
            unsigned v, w;
            if (end - p < 6 || !hex4(p + 2, &v))
                return NULL;
            p += 6;
            if (v >= 0xDC00 && v <= 0xDFFF)
                return NULL; /* lone low surrogate: unsure */
            if (v >= 0xD800 && v <= 0xDBFF) { /* must be a pair */
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &w) ||
                    w < 0xDC00 || w > 0xDFFF)
                    return NULL;
                p += 6;
            }
            break;
        }
        default:
            return NULL;
        }
    }
}

/* *risky set: an exponent or over 300 digits, so maybe beyond double range (orjson
 * refuses such a number, msgspec reads it: the Python path applies the documented rule) */
static ptr skip_number(ptr p, ptr end, int *risky)
{
    ptr first = p;
    if (*p == '-')
        p++;
    if (p >= end)
        return NULL;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    else
        return NULL;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p - first > 300)
        *risky = 1;
    if (p < end && (*p == 'e' || *p == 'E')) {
        *risky = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    return p;
}

static ptr skip_value(ptr p, ptr end, int depth, int *risky);

static ptr skip_object(ptr p, ptr end, int depth, int *risky) /* p past '{' */
{
    int esc = 0;
    p = skip_ws(p, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (p >= end || *p != '"' || !(p = skip_string(p + 1, end, &esc)))
            return NULL;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return NULL;
        p = skip_ws(p + 1, end);
        if (!(p = skip_value(p, end, depth, risky)))
            return NULL;
        p = skip_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == '}')
            return p + 1;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1, end);
    }
}

static ptr skip_array(ptr p, ptr end, int depth, int *risky) /* p past '[' */
{
    p = skip_ws(p, end);
    if (p < end && *p == ']')
        return p + 1;
    for (;;) {
        if (!(p = skip_value(p, end, depth, risky)))
            return NULL;
        p = skip_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == ']')
            return p + 1;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* Byte compares inline: these run for every literal, needed key and filter value, and
 * a call to memcmp for a handful of bytes cost a tenth of the scanner's time (perf). */
static inline int eq4(ptr p, const char *lit)
{
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, lit, 4);
    return a == b;
}

static inline int same(const void *a, const void *b, Py_ssize_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n >= 4; n -= 4, x += 4, y += 4)
        if (!eq4(x, (const char *)y))
            return 0;
    while (n--)
        if (*x++ != *y++)
            return 0;
    return 1;
}

static ptr skip_value(ptr p, ptr end, int depth, int *risky)
{
    int esc = 0;
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"':
        return skip_string(p + 1, end, &esc);
    case '{':
        return depth >= MAX_DEPTH ? NULL : skip_object(p + 1, end, depth + 1, risky);
    case '[':
        return depth >= MAX_DEPTH ? NULL : skip_array(p + 1, end, depth + 1, risky);
    case 't':
        return end - p >= 4 && eq4(p, "true") ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && eq4(p + 1, "alse") ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && eq4(p, "null") ? p + 4 : NULL;
    default:
        return (*p == '-' || (*p >= '0' && *p <= '9')) ? skip_number(p, end, risky) : NULL;
    }
}

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_put(Buf *b, const void *src, Py_ssize_t n)
{
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *d = PyMem_RawRealloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

/* A string column in Arrow's layout: UTF-8 data, int32 offsets, validity bitmap; rows
 * whose value is neither a string nor null are left null here and listed in ``other``
 * (their row numbers, and their raw tokens as one JSON array) for the Python path. */
typedef struct {
    Buf data, offsets, valid, other_rows, other_json;
    Py_ssize_t nulls, others;
} StrCol;

static inline Py_ssize_t utf8_put(unsigned char *u, unsigned v)
{
    if (v < 0x80) {
        u[0] = (unsigned char)v;
        return 1;
    }
    if (v < 0x800) {
        u[0] = (unsigned char)(0xC0 | (v >> 6));
        u[1] = (unsigned char)(0x80 | (v & 0x3F));
        return 2;
    }
    if (v < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (v >> 12));
        u[1] = (unsigned char)(0x80 | ((v >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (v & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | (v >> 18));
    u[1] = (unsigned char)(0x80 | ((v >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((v >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (v & 0x3F));
    return 4;
}

/* The value of a string's content [p, end) (between its quotes, already validated by
 * skip_string: escapes well formed, surrogates paired), appended to b as UTF-8. */
static int put_unescaped(Buf *b, ptr p, ptr end)
{
    while (p < end) {
        ptr q = memchr(p, '\\', end - p);
        if (!q)
            return buf_put(b, p, end - p);
        if (buf_put(b, p, q - p) < 0)
            return -1;
        unsigned char u[4];
        Py_ssize_t n = 1;
        switch (q[1]) {
        case 'b': u[0] = '\b'; break;
        case 'f': u[0] = '\f'; break;
        case 'n': u[0] = '\n'; break;
        case 'r': u[0] = '\r'; break;
        case 't': u[0] = '\t'; break;
        case 'u': {
            unsigned v = 0, w = 0xDC00;
            hex4(q + 2, &v);
            if (v >= 0xD800 && v <= 0xDBFF) {
                hex4(q + 8, &w);
                v = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00);
                q += 6;
            }
            n = utf8_put(u, v);
            q += 4;
            break;
        }
        default: u[0] = q[1]; /* " \ / */
        }
        if (buf_put(b, u, n) < 0)
            return -1;
        p = q + 2;
    }
    return 0;
}

/* Row ``row`` of a string column from token [t, tend) (NULL: the key is absent). */
static int str_put(StrCol *c, Py_ssize_t row, ptr t, ptr tend, int first_other)
{
    static const unsigned char zero = 0;
    if ((row & 7) == 0 && buf_put(&c->valid, &zero, 1) < 0)
        return -1;
    if (t && *t == '"') {
        if (put_unescaped(&c->data, t + 1, tend - 1) < 0)
            return -1;
        c->valid.data[row >> 3] |= (char)(1 << (row & 7));
    } else {
        c->nulls++;
        if (t && *t != 'n') { /* a number, bool, array or object: the Python path decides */
            int64_t r = row;
            if (buf_put(&c->other_rows, &r, sizeof(r)) < 0 ||
                (!first_other && buf_put(&c->other_json, ",", 1) < 0) ||
                buf_put(&c->other_json, t, tend - t) < 0)
                return -1;
            c->others++;
        }
    }
    if (c->data.len > INT32_MAX)
        return -1;
    int32_t off = (int32_t)c->data.len;
    return buf_put(&c->offsets, &off, sizeof(off));
}

static PyObject *str_result(StrCol *c)
{
    if (buf_put(&c->other_json, "]", 1) < 0)
        return PyErr_NoMemory();
    return Py_BuildValue("(y#y#y#ny#y#)", c->data.data ? c->data.data : "", c->data.len,
                         c->offsets.data, c->offsets.len,
                         c->valid.data ? c->valid.data : "", c->valid.len, c->nulls,
                         c->other_rows.data ? c->other_rows.data : "", c->other_rows.len,
                         c->other_json.data, c->other_json.len);
}

static void str_free(StrCol *c)
{
    PyMem_RawFree(c->data.data);
    PyMem_RawFree(c->offsets.data);
    PyMem_RawFree(c->valid.data);
    PyMem_RawFree(c->other_rows.data);
    PyMem_RawFree(c->other_json.data);
}

typedef struct {
    int nkeys;
    const char *key[MAX_KEYS];
    Py_ssize_t keylen[MAX_KEYS];
    unsigned mask;          /* slots in use - 1 */
    short slot[SLOTS];      /* key index + 1, 0 empty: open addressing, linear probing */
    /* by a key's length (63: 63 or more) and first byte: 0 no needed key, k + 1 only key
     * k, PICK_MANY several (then the hash): most keys of a line are told apart here */
    unsigned char pick[64][256];
    int filter_key; /* -1: no filter here */
    int negate;     /* keep when the value is NOT in the set */
    Py_ssize_t nvalues;
    const char **value;
    Py_ssize_t *valuelen;
} Spec;

enum { FILTERED = 0, KEPT = 1, UNSURE = 2 };
#define PICK_MANY 255

/* O(1): the length and the first, middle and last bytes. Every key of every line is
 * looked up, most of them not needed: a byte-serial hash over whole keys (FNV-1a) was
 * over half of this file's own time (perf). find_key compares whole keys, so a
 * collision costs a compare, never a wrong answer. */
static inline unsigned hash_key(ptr p, Py_ssize_t n)
{
    unsigned h = (unsigned)n * 2654435761u;
    if (n > 0)
        h ^= (p[0] | (unsigned)p[n >> 1] << 8 | (unsigned)p[n - 1] << 16) * 2246822519u;
    return h ^ (h >> 15);
}

/* Index of the needed key [p, p + n), or -1 (p[0] is readable even when n is 0: the
 * closing quote). Most keys of a line are not needed: they are told apart by the pick
 * table, with no hash (the hash's dependent multiplies were a third of this file's own
 * time, perf). */
static inline int find_key(const Spec *s, ptr p, Py_ssize_t n)
{
    unsigned pick = s->pick[n < 63 ? n : 63][p[0]];
    if (pick == 0)
        return -1;
    if (pick != PICK_MANY) {
        int k = (int)pick - 1;
        return s->keylen[k] == n && same(s->key[k], p, n) ? k : -1;
    }
    for (unsigned i = hash_key(p, n) & s->mask;; i = (i + 1) & s->mask) {
        int k = s->slot[i] - 1;
        if (k < 0)
            return -1;
        if (s->keylen[k] == n && same(s->key[k], p, n))
            return k;
    }
}

/* One line from p, the batch ending at end: its status; for KEPT and FILTERED, *stop is
 * the line's end (its LF, or end); for KEPT, tok[k]/tokend[k] (NULL: key absent).
 * No skip above crosses an LF (strings stop at control characters), so the line's end
 * is found by the walk itself: no memchr pass over the line first (2% of a run's CPU). */
static int scan_line(ptr p, ptr end, const Spec *s, ptr *tok, ptr *tokend, ptr *stop)
{
    int filter_plain = 0;
    for (int k = 0; k < s->nkeys; k++)
        tok[k] = NULL;
    if (p >= end || *p != '{')
        return UNSURE;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
    for (;;) {
        int esc = 0, risky = 0;
        ptr key, value;
        if (p >= end || *p != '"')
            return UNSURE;
        key = p + 1;
        if (!(p = skip_string(key, end, &esc)) || esc)
            return UNSURE; /* an escaped top-level key might spell a needed one */
        Py_ssize_t klen = p - 1 - key;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return UNSURE;
        value = p = skip_ws(p + 1, end);
        esc = 0;
        if (p < end && *p == '"')
            p = skip_string(p + 1, end, &esc);
        else
            p = skip_value(p, end, 1, &risky);
        if (!p)
            return UNSURE;
        int k = find_key(s, key, klen);
        if (k >= 0) {
            if (tok[k] || risky)
                return UNSURE; /* given twice, or a number orjson may refuse */
            tok[k] = value;
            tokend[k] = p;
            if (k == s->filter_key)
                filter_plain = *value == '"' && !esc;
        }
        p = skip_ws(p, end);
        if (p >= end)
            return UNSURE;
        if (*p == '}') {
            p++;
            break;
        }
        if (*p != ',')
            return UNSURE;
        p = skip_ws(p + 1, end);
    }
done:
    p = skip_ws(p, end);
    if (p < end && *p != '\n')
        return UNSURE;
    *stop = p;
    if (s->filter_key < 0)
        return KEPT;
    if (!filter_plain)
        return UNSURE; /* absent, null, escaped or not a string: the Python path decides */
    {
        ptr v = tok[s->filter_key] + 1;
        Py_ssize_t vlen = tokend[s->filter_key] - 1 - v;
        int hit = 0;
        for (Py_ssize_t i = 0; i < s->nvalues; i++)
            if (s->valuelen[i] == vlen && same(s->value[i], v, vlen)) {
                hit = 1;
                break;
            }
        return hit != s->negate ? KEPT : FILTERED;
    }
}

PyDoc_STRVAR(scan_doc,
"scan(data, keys, filter_key, values, negate, strings=b'') -> (status, starts, arrays)\n\n"
"data: the lines joined by LF; keys: tuple of bytes (top-level keys to read);\n"
"filter_key: index into keys of the filtered key, or -1; values: tuple of bytes\n"
"(the filter's strings, UTF-8); negate: keep lines whose value is not in values.\n"
"status: bytes, one per line (0 filtered, 1 kept, 2 unsure); starts: int64\n"
"offsets of the lines in data; arrays: one bytes per key, a JSON array of the\n"
"key's raw value in each kept line (null where absent); or, for a key whose byte in\n"
"strings is 1, its values as an Arrow string column: (data, int32 offsets, validity\n"
"bitmap, null count, int64 rows holding neither a string nor null, those rows' raw\n"
"values as a JSON array).");

static PyObject *scan(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    PyObject *keys, *values, *result = NULL;
    int filter_key, negate;
    Spec s;
    Buf out[MAX_KEYS];
    Buf status = {0}, starts = {0};
    ptr tok[MAX_KEYS], tokend[MAX_KEYS];
    const char *strings = "";
    Py_ssize_t nstrings = 0;
    StrCol *cols = NULL;

    if (!PyArg_ParseTuple(args, "y*O!iO!p|y#", &view, &PyTuple_Type, &keys, &filter_key,
                          &PyTuple_Type, &values, &negate, &strings, &nstrings))
        return NULL;
    memset(out, 0, sizeof(out));
    s.nkeys = (int)PyTuple_GET_SIZE(keys);
    s.filter_key = filter_key;
    s.negate = negate;
    s.nvalues = PyTuple_GET_SIZE(values);
    s.value = PyMem_Malloc(sizeof(char *) * (s.nvalues + 1));
    s.valuelen = PyMem_Malloc(sizeof(Py_ssize_t) * (s.nvalues + 1));
    if (!s.value || !s.valuelen) {
        PyErr_NoMemory();
        goto finally;
    }
    if (s.nkeys < 1 || s.nkeys > MAX_KEYS || filter_key >= s.nkeys ||
        (nstrings && nstrings != s.nkeys)) {
        PyErr_SetString(PyExc_ValueError, "scan: 1 to 1024 keys, filter_key one of them or "
                        "-1, strings empty or one byte per key");
        goto finally;
    }
    if (!(cols = PyMem_RawCalloc(s.nkeys, sizeof(StrCol))))
        goto nomem;
    for (int k = 0; k < s.nkeys; k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "scan: keys must be bytes");
            goto finally;
        }
        s.key[k] = PyBytes_AS_STRING(key);
        s.keylen[k] = PyBytes_GET_SIZE(key);
    }
    s.mask = 15;
    while (s.mask + 1 < 2 * (unsigned)s.nkeys)
        s.mask = s.mask * 2 + 1;
    memset(s.slot, 0, sizeof(s.slot));
    memset(s.pick, PICK_MANY, sizeof(s.pick)); /* the hash alone, while it is built */
    for (int k = 0; k < s.nkeys; k++) {
        ptr key = (ptr)s.key[k];
        if (find_key(&s, key, s.keylen[k]) >= 0) {
            PyErr_SetString(PyExc_ValueError, "scan: keys must differ");
            goto finally;
        }
        unsigned i = hash_key(key, s.keylen[k]) & s.mask;
        while (s.slot[i])
            i = (i + 1) & s.mask;
        s.slot[i] = (short)(k + 1);
    }
    memset(s.pick, 0, sizeof(s.pick));
    for (int k = 0; k < s.nkeys; k++) {
        ptr key = (ptr)s.key[k];
        Py_ssize_t n = s.keylen[k];
        unsigned char *pick = &s.pick[n < 63 ? n : 63][n ? key[0] : '"'];
        if (*pick) /* another key here: its index alone would not do */
            *pick = PICK_MANY;
        else
            *pick = k + 1 < PICK_MANY ? (unsigned char)(k + 1) : PICK_MANY;
    }
    for (Py_ssize_t i = 0; i < s.nvalues; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (!PyBytes_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "scan: values must be bytes");
            goto finally;
        }
        s.value[i] = PyBytes_AS_STRING(v);
        s.valuelen[i] = PyBytes_GET_SIZE(v);
    }
    for (int k = 0; k < s.nkeys; k++) {
        static const int32_t zero = 0;
        if (buf_put(&out[k], "[", 1) < 0 || buf_put(&cols[k].other_json, "[", 1) < 0 ||
            buf_put(&cols[k].offsets, &zero, sizeof(zero)) < 0)
            goto nomem;
    }

    {
        ptr data = view.buf, end = data + view.len, line = data;
        int kept = 0;
        Py_ssize_t row = 0; /* kept rows so far */
        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            ptr stop = NULL;
            int64_t at = line - data;
            unsigned char st = (unsigned char)scan_line(line, end, &s, tok, tokend, &stop);
            if (st == UNSURE && !(stop = memchr(line, '\n', end - line)))
                stop = end;
            if (buf_put(&starts, &at, sizeof(at)) < 0 || buf_put(&status, &st, 1) < 0) {
                kept = -1;
                break;
            }
            if (st == KEPT) {
                for (int k = 0; k < s.nkeys; k++) {
                    int bad;
                    if (nstrings && strings[k])
                        bad = str_put(&cols[k], row, tok[k], tok[k] ? tokend[k] : NULL,
                                      cols[k].others == 0);
                    else {
                        bad = kept ? buf_put(&out[k], ",", 1) : 0;
                        bad |= tok[k] ? buf_put(&out[k], tok[k], tokend[k] - tok[k])
                                      : buf_put(&out[k], "null", 4);
                    }
                    if (bad) {
                        kept = -1;
                        break;
                    }
                }
                if (kept < 0)
                    break;
                kept = 1;
                row++;
            }
            if (stop == end)
                break;
            line = stop + 1;
        }
        Py_END_ALLOW_THREADS
        if (kept < 0)
            goto nomem;
    }
    {
        PyObject *arrays = PyTuple_New(s.nkeys);
        if (!arrays)
            goto finally;
        for (int k = 0; k < s.nkeys; k++) {
            PyObject *b;
            if (nstrings && strings[k])
                b = str_result(&cols[k]);
            else if (buf_put(&out[k], "]", 1) < 0)
                b = NULL;
            else
                b = PyBytes_FromStringAndSize(out[k].data, out[k].len);
            if (!b) {
                Py_DECREF(arrays);
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                goto finally;
            }
            PyTuple_SET_ITEM(arrays, k, b);
        }
        result = Py_BuildValue("(y#y#N)", status.data, status.len, starts.data, starts.len,
                               arrays);
    }
    goto finally;
nomem:
    PyErr_NoMemory();
finally:
    for (int k = 0; k < MAX_KEYS; k++)
        PyMem_RawFree(out[k].data);
    PyMem_RawFree(status.data);
    PyMem_RawFree(starts.data);
    if (cols)
        for (int k = 0; k < s.nkeys; k++)
            str_free(&cols[k]);
    PyMem_RawFree(cols);
    PyMem_Free(s.value);
    PyMem_Free(s.valuelen);
    PyBuffer_Release(&view);
    return result;
}

/* ---------------------------------------------------------------- epoch timestamps */

/* One token of a scanner array as microseconds, as etl.coerce.make_timestamp reads it:
 * 1 value (*us set), 0 null (null, false), -1 anything this does not decide exactly
 * (true, an object or array, a string that is not 1-18 plain digits, an integer of
 * over 18 digits, an exponent, a result outside int64): the caller falls back. */
static int epoch_token(ptr *pp, ptr end, int64_t scale, int64_t *us)
{
    ptr p = *pp;
    if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
        *pp = p + 4;
        return 0;
    }
    if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
        *pp = p + 5;
        return 0;
    }
    int quoted = *p == '"', neg = 0, digits = 0;
    int64_t v = 0;
    ptr first = p;
    if (quoted)
        p++;
    else if (*p == '-') {
        neg = 1;
        p++;
    }
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > 18)
            return -1;
        v = v * 10 + (*p++ - '0');
    }
    if (digits == 0)
        return -1;
    if (quoted) {
        if (p >= end || *p != '"')
            return -1;
        p++;
    } else if (p < end && *p == '.') { /* a fraction: double, times scale, half to even */
        p++;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p < end && (*p == 'e' || *p == 'E'))
            return -1;
        char text[64];
        if (p - first >= (Py_ssize_t)sizeof(text))
            return -1;
        memcpy(text, first, p - first);
        text[p - first] = 0;
        double x = nearbyint(strtod(text, NULL) * (double)scale);
        if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0))
            return -1;
        *us = (int64_t)x;
        *pp = p;
        return 1;
    } else if (p < end && (*p == 'e' || *p == 'E'))
        return -1;
    if (neg)
        v = -v;
    if (__builtin_mul_overflow(v, scale, us))
        return -1;
    *pp = p;
    return 1;
}

PyDoc_STRVAR(epoch_us_doc,
"epoch_us(array, scale) -> (values, validity, nulls) or None\n\n"
"array: a JSON array of raw tokens as scan returns for a key; scale: microseconds per\n"
"unit. Epoch integers, fractions and digit strings as int64 microseconds (values: the\n"
"int64 buffer; validity: Arrow's bitmap, or None without nulls), exactly as\n"
"etl.coerce.make_timestamp reads them; None when a token is anything else.");

static PyObject *epoch_us(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    long long scale;
    PyObject *result = NULL;
    Buf values = {0}, valid = {0};
    Py_ssize_t n = 0, nulls = 0;

    if (!PyArg_ParseTuple(args, "y*L", &view, &scale))
        return NULL;
    ptr p = view.buf, end = p + view.len;
    int ok = 1;
    if (p >= end || *p++ != '[')
        ok = 0;
    while (ok && p < end && *p != ']') {
        if (n && *p++ != ',') {
            ok = 0;
            break;
        }
        int64_t us = 0;
        int got = p < end ? epoch_token(&p, end, scale, &us) : -1;
        if (got < 0) {
            ok = 0;
            break;
        }
        if (n % 8 == 0) {
            unsigned char zero = 0;
            if (buf_put(&valid, &zero, 1) < 0)
                goto nomem;
        }
        if (got)
            valid.data[n / 8] |= (unsigned char)(1u << (n % 8));
        else
            nulls++;
        if (buf_put(&values, &us, sizeof(us)) < 0)
            goto nomem;
        n++;
    }
    if (!ok || p >= end || p + 1 != end) { /* not all decided, or not one whole array */
        result = Py_None;
        Py_INCREF(result);
    } else if (nulls)
        result = Py_BuildValue("(y#y#n)", values.data ? values.data : "", values.len,
                               valid.data, valid.len, nulls);
    else
        result = Py_BuildValue("(y#On)", values.data ? values.data : "", values.len, Py_None,
                               nulls);
    goto finally;
nomem:
    PyErr_NoMemory();
finally:
    PyMem_RawFree(values.data);
    PyMem_RawFree(valid.data);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(buffer_doc,
"buffer(n) -> bytearray\n\n"
"A bytearray of n bytes whose contents are not set (bytearray(n) zeroes them first):\n"
"for a reader to fill at once (etl.shards reads plain text straight into each batch).");

static PyObject *buffer(PyObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "buffer size must be >= 0");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, n);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"buffer", buffer, METH_O, buffer_doc},
    {"epoch_us", epoch_us, METH_VARARGS, epoch_us_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "etl._scan",
    .m_doc = "Strict one-pass scan of NDJSON lines: status, line starts, needed raw tokens.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    for (int c = 0; c < 256; c++)
        plain_char[c] = c >= 0x20 && c != '"' && c != '\\';
    return PyModule_Create(&module);
}
