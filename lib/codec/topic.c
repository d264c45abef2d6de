/* Topic names: segment escaping, building and parsing, MQTT filter matching. */
#include "topic.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "loom/adapter.h"

#define PREFIX_MAX 256

static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c == 0x7f || c == '/' || c == '+' || c == '#' || c == '$' || c == '%';
}

static size_t escaped_len(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += needs_escape(*p) ? 3 : 1;
    return n;
}

/* Writes the escaped form of s at dst (room for escaped_len(s) bytes, no
 * NUL) and returns the end. */
static char *write_escaped(char *dst, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (needs_escape(*p)) {
            *dst++ = '%';
            *dst++ = hex[*p >> 4];
            *dst++ = hex[*p & 15];
        } else {
            *dst++ = (char)*p;
        }
    }
    return dst;
}

char *loom__topic_escape(const char *segment)
{
    if (!segment)
        return NULL;
    size_t n = escaped_len(segment);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    *write_escaped(out, segment) = '\0';
    return out;
}

bool loom__topic_escape_append(char **buf, size_t *len, size_t *cap, const char *segment)
{
    if (!buf || !len || !cap)
        return false;
    if (!segment)
        return true;
    size_t n = escaped_len(segment);
    if (n > SIZE_MAX / 2 - *len)
        return false;
    size_t need = *len + n + 1;
    if (!*buf || need > *cap) {
        size_t c = *cap * 2;
        if (c < need)
            c = need;
        if (c < 64)
            c = 64;
        char *p = realloc(*buf, c);
        if (!p)
            return false;
        *buf = p;
        *cap = c;
    }
    char *end = write_escaped(*buf + *len, segment);
    *end = '\0';
    *len = (size_t)(end - *buf);
    return true;
}

char *loom__topic_unescape(const char *segment, size_t len)
{
    if (!segment || len == SIZE_MAX)
        return NULL;
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        char c = segment[i];
        if (c == '%') {
            int hi, lo;
            if (len - i < 3 || (hi = loom__hex_digit(segment[i + 1])) < 0 ||
                (lo = loom__hex_digit(segment[i + 2])) < 0 || (hi | lo) == 0)
                goto malformed;
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '/' || c == '+' || c == '#' || c == '\0') {
            goto malformed;
        } else {
            *o++ = c;
        }
    }
    *o = '\0';
    return out;
malformed:
    free(out);
    return NULL;
}

char *loom__topic_build(const char *prefix, const char *kind, const char *const *segs, size_t n)
{
    if (!prefix || !kind || (n && !segs))
        return NULL;
    /* Exact size first: one allocation. Each term is bounded by a string
     * that exists in memory, so the sum cannot overflow in practice; the
     * checks keep that true for absurd n. */
    size_t plen = strlen(prefix), klen = strlen(kind), total = plen + 1 + klen + 1;
    for (size_t i = 0; i < n; i++) {
        size_t s = segs[i] ? escaped_len(segs[i]) : 1;
        if (s > SIZE_MAX / 2 - total)
            return NULL;
        total += 1 + s;
    }
    char *out = malloc(total), *p = out;
    if (!out)
        return NULL;
    memcpy(p, prefix, plen);
    p += plen;
    *p++ = '/';
    memcpy(p, kind, klen);
    p += klen;
    for (size_t i = 0; i < n; i++) {
        *p++ = '/';
        if (segs[i])
            p = write_escaped(p, segs[i]);
        else
            *p++ = '+';
    }
    *p = '\0';
    return out;
}

int loom__topic_parse(const char *topic, const char *prefix, char **kind, char **segs, int max)
{
    if (kind)
        *kind = NULL;
    if (!topic || !prefix || !kind || max < 0 || (max > 0 && !segs))
        return -1;
    size_t plen = strlen(prefix);
    if (strncmp(topic, prefix, plen) != 0 || topic[plen] != '/')
        return -1;
    const char *k = topic + plen + 1, *kend = strchr(k, '/');
    if (!kend)
        kend = k + strlen(k);
    if (kend == k)
        return -1;
    /* Count before allocating: every '/' after the kind starts a segment. */
    int n = 0;
    for (const char *p = kend; *p; p++) {
        if (*p == '/' && ++n > max)
            return -1;
    }
    char *kd = strndup(k, (size_t)(kend - k));
    if (!kd)
        return -1;
    const char *p = kend;
    for (int i = 0; i < n; i++) {
        const char *s = p + 1, *e = strchr(s, '/');
        if (!e)
            e = s + strlen(s);
        if (!(segs[i] = loom__topic_unescape(s, (size_t)(e - s)))) {
            while (i-- > 0) {
                free(segs[i]);
                segs[i] = NULL;
            }
            free(kd);
            return -1;
        }
        p = e;
    }
    *kind = kd;
    return n;
}

bool loom__topic_prefix_valid(const char *prefix)
{
    if (!prefix)
        return false;
    size_t n = strnlen(prefix, PREFIX_MAX + 1);
    if (n == 0 || n > PREFIX_MAX || prefix[0] == '/' || prefix[n - 1] == '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)prefix[i];
        if (c < 0x20 || c == 0x7f || c == '+' || c == '#' || c == '$')
            return false;
        if (c == '/' && prefix[i + 1] == '/')
            return false;
    }
    return true;
}

/* A topic name: non-empty, no wildcard characters. */
static bool topic_name_valid(const char *t)
{
    return *t && !strpbrk(t, "+#");
}

/* A filter: non-empty; '+' and '#' only as whole levels; '#' only last. */
static bool filter_valid(const char *f)
{
    if (!*f)
        return false;
    for (const char *p = f; *p; p++) {
        if (*p != '+' && *p != '#')
            continue;
        bool starts = p == f || p[-1] == '/';
        bool ends = p[1] == '\0' || p[1] == '/';
        if (!starts || !ends || (*p == '#' && p[1] != '\0'))
            return false;
    }
    return true;
}

bool loom_topic_matches(const char *filter, const char *topic)
{
    if (!filter || !topic || !filter_valid(filter) || !topic_name_valid(topic))
        return false;
    /* MQTT 4.7.2: topics starting with '$' are not matched by a leading
     * wildcard. */
    if (topic[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
        return false;
    const char *f = filter, *t = topic;
    /* Invariant: f and t each point at the start of a level. */
    for (;;) {
        if (f[0] == '#')
            return true; /* the rest, including nothing */
        const char *fe = strchr(f, '/'), *te = strchr(t, '/');
        size_t fl = fe ? (size_t)(fe - f) : strlen(f);
        size_t tl = te ? (size_t)(te - t) : strlen(t);
        if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl) != 0))
            return false;
        if (!fe && !te)
            return true;
        if (!fe)
            return false; /* the topic has more levels */
        if (!te)
            return strcmp(fe + 1, "#") == 0; /* "a/#" matches "a" */
        f = fe + 1;
        t = te + 1;
    }
}
