/* JSON text, for everything loom reads from or writes to the outside.
 *
 * Reading. loom__json_parse() is the one gate for untrusted JSON: envelopes,
 * bare payloads from plain MQTT clients and HTTP bodies all pass the same
 * checks, in three steps:
 *  1. prescan(): one linear pass over the raw bytes that rejects invalid
 *     UTF-8, raw control characters, escapes cJSON would turn lossy
 *     (\u0000 cuts a C string) and nesting deeper than the limit, so cJSON
 *     never recurses deeply and never sees bytes it would accept silently;
 *  2. cJSON_ParseWithLengthOpts(), bounded by len (the input is not
 *     NUL-terminated), then only whitespace may follow the value;
 *  3. a walk that refuses numbers that are not finite: cJSON reads 1e999 as
 *     infinity, which no JSON text can carry back (it would go out as null).
 *
 * Writing. cJSON prints numbers with %1.15g and, when a sloppy comparison
 * says that lost something, %1.17g: 0.30000000000000004 comes out as 0.3
 * and 2^53 as 9.00719925474099e+15. loom__json_write() prints trees like
 * cJSON_PrintUnformatted, but every number as the shortest text that reads
 * back to the same double. Strings are escaped like cJSON does them. The
 * writer trusts its input: loom__json_check() first (loom__json_print does
 * both), so a tree that cannot be written faithfully is refused instead of
 * sent damaged. */
#define _GNU_SOURCE
#include "json.h"

#include <errno.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/msg.h"

/* 2^53: the integers a double holds exactly, printed as plain digits. */
#define MAX_SAFE_INT 9007199254740992.0

/* ------------------------------------------------------------------------ */
/* Numbers                                                                   */

/* "%g" and strtod follow LC_NUMERIC, which a host program may set to a
 * locale writing "0,3": numbers are printed and read back in the "C" locale,
 * made once (uselocale only switches this thread, and is cheap). */
static locale_t c_numeric;
static pthread_once_t c_numeric_once = PTHREAD_ONCE_INIT;

static void c_numeric_make(void)
{
    c_numeric = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

static locale_t c_numeric_enter(void)
{
    pthread_once(&c_numeric_once, c_numeric_make);
    return c_numeric ? uselocale(c_numeric) : (locale_t)0;
}

static void c_numeric_leave(locale_t prev)
{
    if (prev)
        uselocale(prev);
}

double loom__strtod_c(const char *s, char **end)
{
    locale_t prev = c_numeric_enter();
    double d = strtod(s, end);
    int saved = errno;
    c_numeric_leave(prev);
    errno = saved;
    return d;
}

static size_t shortest_g(char buf[LOOM__JSON_NUMBER_MAX], double d)
{
    /* A normal double is recovered from at most 17 significant digits, and
     * any text of 15 or fewer that reads back as d is what %.15g prints (15
     * digits are always recovered): so the first of 15, 16, 17 that reads
     * back is the shortest. Subnormals have fewer bits: try every length. */
    int n = 0;
    for (int p = fabs(d) >= DBL_MIN ? 15 : 1; p <= 17; p++) {
        n = snprintf(buf, LOOM__JSON_NUMBER_MAX, "%.*g", p, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return (size_t)n;
}

size_t loom__json_number(char buf[LOOM__JSON_NUMBER_MAX], double d)
{
    if (d == 0)
        return (size_t)snprintf(buf, LOOM__JSON_NUMBER_MAX, "%s", signbit(d) ? "-0" : "0");
    if (fabs(d) <= MAX_SAFE_INT && d == (double)(int64_t)d)
        return (size_t)snprintf(buf, LOOM__JSON_NUMBER_MAX, "%lld", (long long)d);
    locale_t prev = c_numeric_enter();
    size_t n = shortest_g(buf, d);
    c_numeric_leave(prev);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */

#define sb_lit(b, s) loom__sbuf_add((b), (s), sizeof(s) - 1)

void loom__json_write_string(loom__sbuf *b, const char *str)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    sb_lit(b, "\"");
    for (;;) {
        const unsigned char *run = s;
        while (*s >= 0x20 && *s != '"' && *s != '\\')
            s++;
        loom__sbuf_add(b, (const char *)run, (size_t)(s - run));
        if (!*s)
            break;
        char e[6] = {'\\', (char)*s, 0, 0, 0, 0};
        size_t n = 2;
        switch (*s) {
        case '"':
        case '\\':
            break;
        case '\b':
            e[1] = 'b';
            break;
        case '\f':
            e[1] = 'f';
            break;
        case '\n':
            e[1] = 'n';
            break;
        case '\r':
            e[1] = 'r';
            break;
        case '\t':
            e[1] = 't';
            break;
        default:
            memcpy(e + 1, "u00", 3);
            e[4] = hex[*s >> 4];
            e[5] = hex[*s & 15];
            n = 6;
        }
        loom__sbuf_add(b, e, n);
        s++;
    }
    sb_lit(b, "\"");
}

void loom__json_write(loom__sbuf *b, const cJSON *v)
{
    if (!v) {
        sb_lit(b, "null");
        return;
    }
    switch (v->type & 0xFF) {
    case cJSON_False:
        sb_lit(b, "false");
        return;
    case cJSON_True:
        sb_lit(b, "true");
        return;
    case cJSON_Number: {
        if (!isfinite(v->valuedouble)) {
            sb_lit(b, "null");
            return;
        }
        char num[LOOM__JSON_NUMBER_MAX];
        loom__sbuf_add(b, num, loom__json_number(num, v->valuedouble));
        return;
    }
    case cJSON_String:
        loom__json_write_string(b, v->valuestring ? v->valuestring : "");
        return;
    case cJSON_Raw:
        loom__sbuf_puts(b, v->valuestring ? v->valuestring : "null");
        return;
    case cJSON_Array:
    case cJSON_Object: {
        bool obj = (v->type & 0xFF) == cJSON_Object;
        loom__sbuf_add(b, obj ? "{" : "[", 1);
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child)
                sb_lit(b, ",");
            if (obj) {
                loom__json_write_string(b, c->string ? c->string : "");
                sb_lit(b, ":");
            }
            loom__json_write(b, c);
        }
        loom__sbuf_add(b, obj ? "}" : "]", 1);
        return;
    }
    default:
        sb_lit(b, "null");
        return;
    }
}

static bool str_utf8(const char *s)
{
    return loom__utf8_valid(s, strlen(s));
}

loom_err loom__json_check(const cJSON *v, int budget)
{
    if (!v)
        return LOOM_OK;
    switch (v->type & 0xFF) {
    case cJSON_False:
    case cJSON_True:
    case cJSON_NULL:
        return LOOM_OK;
    case cJSON_Number:
        return isfinite(v->valuedouble) ? LOOM_OK : LOOM_EINVAL;
    case cJSON_String:
    case cJSON_Raw:
        return v->valuestring && str_utf8(v->valuestring) ? LOOM_OK : LOOM_EINVAL;
    case cJSON_Array:
    case cJSON_Object:
        if (budget < 1)
            return LOOM_ETOOBIG;
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c->string && !str_utf8(c->string))
                return LOOM_EINVAL;
            loom_err e = loom__json_check(c, budget - 1);
            if (e)
                return e;
        }
        return LOOM_OK;
    }
    return LOOM_EINVAL;
}

char *loom__json_print(const cJSON *v, loom_err *err)
{
    loom_err e = loom__json_check(v, LOOM_MAX_NESTING);
    if (e == LOOM_OK) {
        loom__sbuf b = {0};
        loom__json_write(&b, v);
        if (!b.oom && b.p) {
            if (err)
                *err = LOOM_OK;
            return b.p;
        }
        free(b.p);
        e = LOOM_ENOMEM;
    }
    if (err)
        *err = e;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */

typedef struct errsink {
    char *buf;
    size_t len;
    size_t *at;
} errsink;

static loom_err fail(errsink *eb, loom_err code, size_t at, const char *fmt, ...) LOOM_PRINTF(4, 5);

static loom_err fail(errsink *eb, loom_err code, size_t at, const char *fmt, ...)
{
    if (eb->buf && eb->len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb->buf, eb->len, fmt, ap);
        va_end(ap);
    }
    if (eb->at)
        *eb->at = at;
    return code;
}

/* Bytes prescan() must look at; everything else is skipped in a tight loop.
 * Inside strings: controls, '"', '\' and non-ASCII. Outside: also brackets. */
static const unsigned char special_in_string[256] = {
    [0 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1, [0x80 ... 0xff] = 1};
static const unsigned char special_outside[256] = {
    [0 ... 0x1f] = 1, ['"'] = 1, ['{'] = 1, ['['] = 1, ['}'] = 1, [']'] = 1, [0x80 ... 0xff] = 1};

/* The escape at p[i] ('\'), in a string: 0 when fine (or truncated: cJSON
 * reports that), else the failure. */
static loom_err check_escape(const unsigned char *p, size_t n, size_t i, errsink *eb)
{
    if (i + 1 >= n)
        return LOOM_OK;
    switch (p[i + 1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return LOOM_OK;
    case 'u':
        if (n - i >= 6 && memcmp(p + i + 2, "0000", 4) == 0)
            return fail(eb, LOOM_EPARSE, i, "escaped NUL character (\\u0000) at byte %zu", i);
        return LOOM_OK;
    default:
        return fail(eb, LOOM_EPARSE, i, "invalid escape in string at byte %zu", i);
    }
}

/* Step 1: see the top of the file. Only what cJSON would accept wrongly or
 * handle dangerously is checked here; the grammar is cJSON's job. */
static loom_err prescan(const unsigned char *p, size_t n, int max_depth, errsink *eb)
{
    int depth = 0;
    bool in_str = false;
    size_t i = 0;
    for (;;) {
        const unsigned char *special = in_str ? special_in_string : special_outside;
        while (i < n && !special[p[i]])
            i++;
        if (i >= n)
            break;
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t k = loom__utf8_seq(p + i, n - i);
            if (!k)
                return fail(eb, LOOM_EPARSE, i, "invalid UTF-8 at byte %zu", i);
            i += k;
            continue;
        }
        if (in_str) {
            if (c == '"') {
                in_str = false;
            } else if (c == '\\') {
                loom_err e = check_escape(p, n, i, eb);
                if (e)
                    return e;
                i += 2;
                continue;
            } else {
                return fail(eb, LOOM_EPARSE, i, "control character in string at byte %zu", i);
            }
            i++;
            continue;
        }
        switch (c) {
        case '"':
            in_str = true;
            break;
        case '{':
        case '[':
            if (++depth > max_depth)
                return fail(eb, LOOM_ETOOBIG, i, "JSON nested deeper than %d levels", max_depth);
            break;
        case '}':
        case ']':
            if (depth > 0)
                depth--;
            break;
        case '\t':
        case '\n':
        case '\r':
            break;
        default:
            return fail(eb, LOOM_EPARSE, i, "control character at byte %zu", i);
        }
        i++;
    }
    return LOOM_OK;
}

/* Step 3. Recursion is bounded by the prescan's depth limit. */
static bool all_finite(const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return isfinite(v->valuedouble);
    for (const cJSON *c = v->child; c; c = c->next)
        if (!all_finite(c))
            return false;
    return true;
}

loom_err loom__json_parse(const char *data, size_t len, int max_depth, cJSON **out, char *why,
                          size_t why_len, size_t *at)
{
    errsink eb = {why, why_len, at};
    if (why && why_len)
        why[0] = '\0';
    if (at)
        *at = len;
    *out = NULL;
    if (!len)
        return fail(&eb, LOOM_EPARSE, 0, "empty input");
    loom_err e = prescan((const unsigned char *)data, len, max_depth, &eb);
    if (e)
        return e;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, false);
    if (!root) {
        size_t pos = end && end >= data && end <= data + len ? (size_t)(end - data) : 0;
        return fail(&eb, LOOM_EPARSE, pos, "malformed JSON near byte %zu", pos);
    }
    size_t pos = (size_t)(end - data);
    while (pos < len &&
           (data[pos] == ' ' || data[pos] == '\t' || data[pos] == '\n' || data[pos] == '\r'))
        pos++;
    if (pos < len) {
        cJSON_Delete(root);
        return fail(&eb, LOOM_EPARSE, pos, "malformed JSON near byte %zu: data after the value",
                    pos);
    }
    if (!all_finite(root)) {
        cJSON_Delete(root);
        return fail(&eb, LOOM_EPARSE, len, "a number is out of range (not finite)");
    }
    *out = root;
    return LOOM_OK;
}
