/* URI references (see uri.h): resolution for $id / $ref and the RFC 3986
 * grammar for the uri formats. Both work on ASCII bytes; JSON Schema
 * identifiers outside ASCII are compared as given. */
#include "codec/uri.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

typedef struct {
    const char *p;
    size_t n;
    bool has;
} part;

typedef struct {
    part scheme, auth, path, query, frag;
} uri;

static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static void split(const char *s, uri *u)
{
    memset(u, 0, sizeof *u);
    const char *p = s;
    if (is_alpha(*p)) {
        const char *q = p;
        while (is_alpha(*q) || is_digit(*q) || *q == '+' || *q == '-' || *q == '.')
            q++;
        if (*q == ':') {
            u->scheme = (part){p, (size_t)(q - p), true};
            p = q + 1;
        }
    }
    if (p[0] == '/' && p[1] == '/') {
        const char *q = p + 2;
        while (*q && *q != '/' && *q != '?' && *q != '#')
            q++;
        u->auth = (part){p + 2, (size_t)(q - p - 2), true};
        p = q;
    }
    const char *q = p;
    while (*q && *q != '?' && *q != '#')
        q++;
    u->path = (part){p, (size_t)(q - p), true};
    p = q;
    if (*p == '?') {
        q = p + 1;
        while (*q && *q != '#')
            q++;
        u->query = (part){p + 1, (size_t)(q - p - 1), true};
        p = q;
    }
    if (*p == '#')
        u->frag = (part){p + 1, strlen(p + 1), true};
}

/* RFC 3986 5.2.4, on the n bytes at in, appended to out. */
static void remove_dots(loom__sbuf *out, const char *in, size_t n)
{
    size_t start = out->len;
    size_t i = 0;
    while (i < n) {
        const char *s = in + i;
        size_t left = n - i;
        if (left >= 3 && memcmp(s, "../", 3) == 0) {
            i += 3;
        } else if (left >= 2 && memcmp(s, "./", 2) == 0) {
            i += 2;
        } else if ((left >= 3 && memcmp(s, "/./", 3) == 0)) {
            i += 2;
        } else if (left == 2 && memcmp(s, "/.", 2) == 0) {
            loom__sbuf_add(out, "/", 1);
            i += 2;
        } else if ((left >= 4 && memcmp(s, "/../", 4) == 0) ||
                   (left == 3 && memcmp(s, "/..", 3) == 0)) {
            if (left == 3) {
                i += 3;
                /* "/.." at the end: drop the last segment, keep a slash. */
                while (out->len > start && out->p[out->len - 1] != '/')
                    out->len--;
                if (out->len > start)
                    out->len--;
                loom__sbuf_add(out, "/", 1);
                continue;
            }
            i += 3;
            while (out->len > start && out->p[out->len - 1] != '/')
                out->len--;
            if (out->len > start)
                out->len--;
            if (out->p)
                out->p[out->len] = '\0';
        } else if ((left == 1 && s[0] == '.') || (left == 2 && memcmp(s, "..", 2) == 0)) {
            i = n;
        } else {
            size_t j = i + (in[i] == '/' ? 1 : 0);
            while (j < n && in[j] != '/')
                j++;
            loom__sbuf_add(out, in + i, j - i);
            i = j;
        }
    }
}

static void add_part(loom__sbuf *b, const char *pre, const part *p)
{
    if (!p->has)
        return;
    loom__sbuf_puts(b, pre);
    loom__sbuf_add(b, p->p, p->n);
}

char *loom__uri_resolve(const char *base, const char *ref)
{
    uri B, R;
    split(base ? base : "", &B);
    split(ref ? ref : "", &R);
    loom__sbuf b = {0};
    loom__sbuf_reserve(&b, 16);
    const part *query;
    if (R.scheme.has) {
        add_part(&b, "", &R.scheme);
        loom__sbuf_puts(&b, ":");
        if (R.auth.has)
            add_part(&b, "//", &R.auth);
        remove_dots(&b, R.path.p, R.path.n);
        query = &R.query;
    } else {
        if (B.scheme.has) {
            add_part(&b, "", &B.scheme);
            loom__sbuf_puts(&b, ":");
        }
        if (R.auth.has) {
            add_part(&b, "//", &R.auth);
            remove_dots(&b, R.path.p, R.path.n);
            query = &R.query;
        } else {
            if (B.auth.has)
                add_part(&b, "//", &B.auth);
            if (R.path.n == 0) {
                loom__sbuf_add(&b, B.path.p, B.path.n);
                query = R.query.has ? &R.query : &B.query;
            } else if (R.path.p[0] == '/') {
                remove_dots(&b, R.path.p, R.path.n);
                query = &R.query;
            } else {
                /* Merge: the base path up to its last slash, then ref. */
                loom__sbuf m = {0};
                if (B.auth.has && B.path.n == 0) {
                    loom__sbuf_puts(&m, "/");
                } else {
                    size_t k = B.path.n;
                    while (k > 0 && B.path.p[k - 1] != '/')
                        k--;
                    loom__sbuf_add(&m, B.path.p, k);
                }
                loom__sbuf_add(&m, R.path.p, R.path.n);
                if (m.oom)
                    b.oom = true;
                else if (m.p)
                    remove_dots(&b, m.p, m.len);
                free(m.p);
                query = &R.query;
            }
        }
    }
    add_part(&b, "?", query);
    add_part(&b, "#", &R.frag);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p ? b.p : loom__strdup("");
}

/* ------------------------------------------------------------------------ */
/* Grammar                                                                   */

static bool unreserved(int c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool sub_delim(int c)
{
    return c && strchr("!$&'()*+,;=", c) != NULL;
}

/* Bytes of s[0..n) are unreserved, sub-delims, pct-encoded or in extra. */
static bool chars_ok(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;
            if (loom__hex_digit(s[i + 1]) < 0 || loom__hex_digit(s[i + 2]) < 0)
                return false;
            i += 2;
        } else if (!unreserved(c) && !sub_delim(c) && !(c && strchr(extra, c))) {
            return false;
        }
    }
    return true;
}

bool loom__ipv4_valid(const char *s, size_t n)
{
    int parts = 0;
    size_t i = 0;
    while (parts < 4) {
        size_t start = i;
        unsigned v = 0;
        while (i < n && is_digit(s[i]) && i - start < 4)
            v = v * 10 + (unsigned)(s[i++] - '0');
        size_t len = i - start;
        if (len == 0 || len > 3 || v > 255 || (len > 1 && s[start] == '0'))
            return false;
        parts++;
        if (parts < 4) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == n;
}

bool loom__ipv6_valid(const char *s, size_t n)
{
    int groups = 0;
    bool gap = false;
    size_t i = 0;
    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        gap = true;
        i = 2;
        if (i == n)
            return true;
    } else if (n > 0 && s[0] == ':') {
        return false;
    }
    while (i < n) {
        size_t start = i;
        while (i < n && loom__hex_digit(s[i]) >= 0 && i - start < 5)
            i++;
        size_t len = i - start;
        if (i < n && s[i] == '.') {
            /* An IPv4 tail counts as two groups. */
            if (!loom__ipv4_valid(s + start, n - start))
                return false;
            groups += 2;
            i = n;
            break;
        }
        if (len == 0 || len > 4)
            return false;
        groups++;
        if (i == n)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < n && s[i] == ':') {
            if (gap)
                return false;
            gap = true;
            i++;
            if (i == n)
                break;
        } else if (i == n) {
            return false;
        }
    }
    return gap ? groups < 8 : groups == 8;
}

static bool authority_ok(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    if (at) {
        if (!chars_ok(s, (size_t)(at - s), ":"))
            return false;
        n -= (size_t)(at - s) + 1;
        s = at + 1;
    }
    size_t hostlen = n;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return false;
        size_t inner = (size_t)(close - s) - 1;
        if (inner > 0 && (s[1] == 'v' || s[1] == 'V')) {
            if (!chars_ok(s + 2, inner - 1, ":."))
                return false;
        } else if (!loom__ipv6_valid(s + 1, inner)) {
            return false;
        }
        hostlen = (size_t)(close - s) + 1;
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon)
            hostlen = (size_t)(colon - s);
        if (!chars_ok(s, hostlen, ""))
            return false;
    }
    if (hostlen < n) {
        if (s[hostlen] != ':')
            return false;
        for (size_t i = hostlen + 1; i < n; i++)
            if (!is_digit(s[i]))
                return false;
    }
    return true;
}

bool loom__uri_valid(const char *s, bool reference)
{
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7F)
            return false;
    uri u;
    split(s, &u);
    if (!u.scheme.has && !reference)
        return false;
    if (u.auth.has && !authority_ok(u.auth.p, u.auth.n))
        return false;
    if (!chars_ok(u.path.p, u.path.n, ":@/"))
        return false;
    if (!u.scheme.has && !u.auth.has) {
        /* path-noscheme: no ':' in the first segment. */
        const char *slash = memchr(u.path.p, '/', u.path.n);
        size_t first = slash ? (size_t)(slash - u.path.p) : u.path.n;
        if (memchr(u.path.p, ':', first))
            return false;
    }
    if (u.query.has && !chars_ok(u.query.p, u.query.n, ":@/?"))
        return false;
    if (u.frag.has && !chars_ok(u.frag.p, u.frag.n, ":@/?"))
        return false;
    return true;
}
