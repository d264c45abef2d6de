/* The bridge's route table and everything parsed from a request target:
 * path templates ("/orders/:id"), the table built from them, matching a
 * request path against it (404 / 405 with Allow), percent-decoding, and
 * the query string. Pure functions on their arguments (no bridge, no
 * runtime), so tests/fuzz/fuzz_http.c drives them directly.
 *
 * Hostile input: every length is bounded (MAX_TEMPLATE, MAX_SEGMENTS,
 * MAX_QUERY_PARAMS), nothing recurses, and decoded values are refused
 * when they hold a NUL byte or invalid UTF-8. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "http/bridge.h"

/* ------------------------------------------------------------------------ */
/* Methods                                                                   */

const char *const loom__http_method_names[M_COUNT] = {"GET",   "HEAD",   "POST",    "PUT",
                                                      "PATCH", "DELETE", "OPTIONS", "OTHER"};

int loom__http_method_index(const char *m)
{
    for (int i = 0; i < M_OTHER; i++)
        if (strcmp(m, loom__http_method_names[i]) == 0)
            return i;
    return M_OTHER;
}

bool loom__http_method_ok(const char *m)
{
    int i = m ? loom__http_method_index(m) : M_OTHER;
    return i == M_GET || i == M_POST || i == M_PUT || i == M_PATCH || i == M_DELETE;
}

bool loom__http_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > MAX_NAME)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return false;
    return true;
}

const char *loom__http_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ------------------------------------------------------------------------ */
/* Percent-decoding                                                          */

char *loom__http_pct_decode(const char *s, size_t n, bool plus, bool *bad)
{
    *bad = false;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3 || loom__hex_digit(s[i + 1]) < 0 || loom__hex_digit(s[i + 2]) < 0)
                goto bad;
            c = (char)(loom__hex_digit(s[i + 1]) * 16 + loom__hex_digit(s[i + 2]));
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        if (c == '\0')
            goto bad;
        out[o++] = c;
    }
    out[o] = '\0';
    if (!loom__utf8_valid(out, o))
        goto bad;
    return out;
bad:
    free(out);
    *bad = true;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Templates                                                                 */

static bool literal_char_ok(char c)
{
    return isalnum((unsigned char)c) || strchr("-._~!$&'()*+,;=@", c) != NULL;
}

bool loom__http_parse_template(const char *path, bool params_ok, seg *segs, size_t *nseg,
                               const char **why)
{
    if (path[0] != '/') {
        *why = "does not start with '/'";
        return false;
    }
    if (strlen(path) > MAX_TEMPLATE) {
        *why = "is too long";
        return false;
    }
    if (strcmp(path, "/") == 0)
        return true;
    const char *p = path + 1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0) {
            *why = "has an empty segment";
            return false;
        }
        if (*nseg == MAX_SEGMENTS) {
            *why = "has too many segments";
            return false;
        }
        bool param = params_ok && p[0] == ':';
        size_t start = param ? 1 : 0;
        if (param && n == 1) {
            *why = "has a parameter without a name";
            return false;
        }
        for (size_t i = start; i < n; i++)
            if (param ? !(isalnum((unsigned char)p[i]) || p[i] == '_') : !literal_char_ok(p[i])) {
                *why = "has a character that is not allowed";
                return false;
            }
        char *text = strndup(p + start, n - start);
        if (!text) {
            *why = "out of memory";
            return false;
        }
        if (param)
            for (size_t i = 0; i < *nseg; i++)
                if (segs[i].param && strcmp(segs[i].text, text) == 0) {
                    free(text);
                    *why = "repeats a parameter name";
                    return false;
                }
        segs[*nseg].text = text;
        segs[*nseg].param = param;
        (*nseg)++;
        if (!end)
            return true;
        p = end + 1;
    }
}

bool loom__http_route_path(const char *base, const char *version, const char *path, seg **segs_out,
                           size_t *nseg_out, char **label_out, const char **why)
{
    seg tmp[MAX_SEGMENTS + 2];
    size_t n = 0;
    bool ok = true;
    if (*base)
        ok = loom__http_parse_template(base, false, tmp, &n, why);
    char vseg[MAX_NAME + 2];
    if (ok && n >= MAX_SEGMENTS) {
        *why = "has too many segments";
        ok = false;
    }
    if (ok) {
        snprintf(vseg, sizeof vseg, "v%s", version);
        tmp[n].text = strdup(vseg);
        tmp[n].param = false;
        if (!tmp[n].text) {
            *why = "out of memory";
            ok = false;
        } else {
            n++;
        }
    }
    if (ok)
        ok = loom__http_parse_template(path, true, tmp, &n, why);
    loom__sbuf lb = {0};
    for (size_t i = 0; ok && i < n; i++) {
        loom__sbuf_puts(&lb, "/");
        if (tmp[i].param)
            loom__sbuf_printf(&lb, "{%s}", tmp[i].text);
        else
            loom__sbuf_puts(&lb, tmp[i].text);
    }
    seg *segs = ok ? malloc((n ? n : 1) * sizeof *segs) : NULL;
    if (!ok || lb.oom || !segs || !lb.p) {
        if (ok)
            *why = "out of memory";
        for (size_t i = 0; i < n; i++)
            free(tmp[i].text);
        free(segs);
        free(lb.p);
        return false;
    }
    memcpy(segs, tmp, n * sizeof *segs);
    *segs_out = segs;
    *nseg_out = n;
    *label_out = lb.p;
    return true;
}

/* ------------------------------------------------------------------------ */
/* The table                                                                 */

static void route_fini(route *r)
{
    free(r->method);
    free(r->label);
    free(r->service);
    free(r->version);
    free(r->command);
    for (size_t i = 0; i < r->nseg; i++)
        free(r->segs[i].text);
    free(r->segs);
}

void loom__http_routes_unref(routes *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    for (size_t i = 0; i < t->n; i++)
        route_fini(&t->v[i]);
    free(t->v);
    free(t);
}

static void raw_fini(raw_route *r)
{
    free(r->service);
    free(r->version);
    free(r->command);
    free(r->method);
    free(r->path);
}

/* Literal segments sort before parameters, position by position, so
 * "/orders/stats" wins over "/orders/:id"; otherwise announcement order. */
static int route_cmp(const void *x, const void *y)
{
    const route *a = x, *b = y;
    size_t n = a->nseg < b->nseg ? a->nseg : b->nseg;
    for (size_t i = 0; i < n; i++)
        if (a->segs[i].param != b->segs[i].param)
            return a->segs[i].param ? 1 : -1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static bool same_pattern(const route *a, const route *b)
{
    if (a->nseg != b->nseg || strcmp(a->method, b->method) != 0)
        return false;
    for (size_t i = 0; i < a->nseg; i++)
        if (a->segs[i].param != b->segs[i].param ||
            (!a->segs[i].param && strcmp(a->segs[i].text, b->segs[i].text) != 0))
            return false;
    return true;
}

static void warnf(void (*warn)(void *, const char *), void *user, const char *fmt, ...)
    LOOM_PRINTF(3, 4);
static void warnf(void (*warn)(void *, const char *), void *user, const char *fmt, ...)
{
    if (!warn)
        return;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    warn(user, line);
}

routes *loom__http_routes_from(const char *base, raw_route *v, size_t n,
                               void (*warn)(void *user, const char *line), void *user)
{
    routes *t = calloc(1, sizeof *t);
    route *rv = t ? calloc(n ? n : 1, sizeof *rv) : NULL;
    if (!rv) {
        for (size_t i = 0; i < n; i++)
            raw_fini(&v[i]);
        free(t);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->v = rv;
    for (size_t i = 0; i < n; i++) {
        raw_route *rr = &v[i];
        const char *why = NULL;
        route *r = &t->v[t->n];
        if (!loom__http_name_ok(rr->service) || !loom__http_name_ok(rr->version) ||
            !loom__http_name_ok(rr->command))
            why = "has a bad service, version or command name";
        else if (!loom__http_method_ok(rr->method))
            why = "has a method other than GET, POST, PUT, PATCH, DELETE";
        else if (!rr->path)
            why = "is missing";
        if (why || !loom__http_route_path(base, rr->version, rr->path, &r->segs, &r->nseg,
                                          &r->label, &why)) {
            warnf(warn, user, "ignored the route of %.100s.%.100s: its path '%.200s' %s",
                  rr->service ? rr->service : "?", rr->command ? rr->command : "?",
                  rr->path ? rr->path : "?", why);
            raw_fini(rr);
            continue;
        }
        r->method = rr->method;
        r->service = rr->service;
        r->version = rr->version;
        r->command = rr->command;
        free(rr->path);
        r->public = rr->public;
        r->timeout_ms = rr->timeout_ms;
        r->order = i;
        bool dup = false;
        for (size_t j = 0; j < t->n && !dup; j++)
            dup = same_pattern(&t->v[j], r);
        if (dup) {
            warnf(warn, user, "%s %s of %s.%s is already served by another command: ignored",
                  r->method, r->label, r->service, r->command);
            route_fini(r);
            memset(r, 0, sizeof *r);
            continue;
        }
        t->n++;
    }
    qsort(t->v, t->n, sizeof *t->v, route_cmp);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Request paths and queries                                                 */

void loom__http_pathsegs_fini(pathsegs *ps)
{
    for (size_t i = 0; i < ps->n; i++)
        free(ps->v[i]);
    ps->n = 0;
}

int loom__http_split_path(const char *path, pathsegs *ps)
{
    ps->n = 0;
    if (strcmp(path, "/") == 0)
        return 0;
    const char *p = path + 1;
    for (;;) {
        size_t n = strcspn(p, "/");
        if (ps->n == LOOM__ARRAY_LEN(ps->v)) {
            loom__http_pathsegs_fini(ps);
            return 2;
        }
        bool bad;
        char *s = loom__http_pct_decode(p, n, false, &bad);
        if (!s) {
            loom__http_pathsegs_fini(ps);
            return bad ? 1 : -1;
        }
        ps->v[ps->n++] = s;
        if (!p[n])
            return 0;
        p += n + 1;
    }
}

const route *loom__http_match(const routes *t, const pathsegs *ps, int method, char *allow,
                              size_t allow_len, const route **path_match)
{
    int want = method == M_HEAD ? M_GET : method;
    bool seen[M_COUNT] = {false};
    *path_match = NULL;
    allow[0] = '\0';
    for (size_t i = 0; i < t->n; i++) {
        const route *r = &t->v[i];
        if (r->nseg != ps->n)
            continue;
        bool ok = true;
        for (size_t k = 0; ok && k < r->nseg; k++)
            ok = r->segs[k].param ? ps->v[k][0] != '\0' : strcmp(r->segs[k].text, ps->v[k]) == 0;
        if (!ok)
            continue;
        if (!*path_match)
            *path_match = r;
        int mi = loom__http_method_index(r->method);
        if (mi == want)
            return r;
        if (!seen[mi]) {
            seen[mi] = true;
            size_t used = strlen(allow);
            snprintf(allow + used, allow_len - used, "%s%s%s", used ? ", " : "", r->method,
                     mi == M_GET ? ", HEAD" : "");
        }
    }
    return NULL;
}

bool loom__http_add_query(cJSON *params, const char *q, bool *bad)
{
    size_t count = 0;
    *bad = false;
    size_t qlen = strcspn(q, "#");
    size_t i = 0;
    while (i < qlen) {
        size_t n = strcspn(q + i, "&#");
        if (n) {
            if (++count > MAX_QUERY_PARAMS) {
                *bad = true;
                return false;
            }
            const char *part = q + i;
            const char *eq = memchr(part, '=', n);
            size_t kn = eq ? (size_t)(eq - part) : n;
            char *k = loom__http_pct_decode(part, kn, true, bad);
            char *v = !k   ? NULL
                      : eq ? loom__http_pct_decode(eq + 1, n - kn - 1, true, bad)
                           : strdup("");
            bool ok = k && v;
            if (ok && *k && !cJSON_GetObjectItemCaseSensitive(params, k))
                ok = cJSON_AddStringToObject(params, k, v) != NULL;
            free(k);
            free(v);
            if (!ok)
                return false;
        }
        i += n;
        if (i < qlen && q[i] == '&')
            i++;
    }
    return true;
}
