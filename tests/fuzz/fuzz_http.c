/* libFuzzer target: the HTTP bridge's request parsing (lib/http/routes.c
 * and the header parsers of bridge.c): path templates and the route table
 * built from them, request paths (split, percent-decoded, matched for 404 /
 * 405 with Allow), query strings, Content-Type and traceparent.
 *
 * Input, one item per line:
 *   line 1            the base path ("/api", or empty)
 *   lines 2 .. n-3    route templates "METHOD /path/:param"
 *   line n-2          the request "METHOD TARGET" (target = path?query)
 *   line n-1          a Content-Type value
 *   line n            a traceparent value
 * Missing lines are empty. Besides "never crashes, never leaks", it checks
 * invariants: decoded values are NUL-free UTF-8, a matched route really
 * matches, every template matches a path made from its own label, and
 * percent-encoding round-trips. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/bridge.h"

#define MAX_LINES 24

static void check_decoded(const char *s)
{
    if (s && !loom__utf8_valid(s, strlen(s)))
        abort();
}

/* "%XX" for every byte: always decodes back to the same bytes. */
static char *pct_encode(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++)
        snprintf(out + 3 * i, 4, "%%%02X", (unsigned char)s[i]);
    out[3 * n] = '\0';
    return out;
}

/* A concrete request path for r: its label with "{name}" replaced by
 * "p". */
static char *path_for(const route *r)
{
    loom__sbuf b = {0};
    for (size_t i = 0; i < r->nseg; i++) {
        loom__sbuf_puts(&b, "/");
        if (r->segs[i].param) {
            loom__sbuf_puts(&b, "p");
        } else {
            char *enc = pct_encode(r->segs[i].text);
            if (enc)
                loom__sbuf_puts(&b, enc);
            else
                b.oom = true;
            free(enc);
        }
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p ? b.p : strdup("/");
}

static void check_table(const routes *t)
{
    for (size_t i = 0; i < t->n; i++) {
        const route *r = &t->v[i];
        char *p = path_for(r);
        if (!p)
            continue;
        pathsegs ps;
        int rc = loom__http_split_path(p, &ps);
        if (rc == 0) {
            char allow[96];
            const route *pm = NULL;
            const route *m = loom__http_match(t, &ps, loom__http_method_index(r->method), allow,
                                              sizeof allow, &pm);
            /* r itself matches, so some route of that method does. */
            if (!m || !pm || strcmp(m->method, r->method) != 0 || m->nseg != r->nseg)
                abort();
            loom__http_pathsegs_fini(&ps);
        } else if (rc != -1) {
            abort(); /* built from a valid template: always decodes */
        }
        free(p);
    }
}

static void request(const routes *t, const char *line)
{
    const char *sp = strchr(line, ' ');
    char method[16] = "";
    if (sp && (size_t)(sp - line) < sizeof method)
        memcpy(method, line, (size_t)(sp - line));
    const char *target = sp ? sp + 1 : line;
    if (target[0] != '/')
        return; /* the bridge answers 400 before parsing */
    size_t plen = strcspn(target, "?#");
    char *path = strndup(target, plen);
    if (!path)
        return;
    pathsegs ps;
    int rc = loom__http_split_path(path, &ps);
    if (rc == 0) {
        for (size_t i = 0; i < ps.n; i++)
            check_decoded(ps.v[i]);
        char allow[96];
        const route *pm = NULL;
        int mi = loom__http_method_index(method);
        const route *r = loom__http_match(t, &ps, mi, allow, sizeof allow, &pm);
        if (strlen(allow) >= sizeof allow)
            abort();
        if (r) {
            if (r->nseg != ps.n || !pm)
                abort();
            for (size_t k = 0; k < r->nseg; k++)
                if (r->segs[k].param ? !ps.v[k][0] : strcmp(r->segs[k].text, ps.v[k]) != 0)
                    abort();
        }
        cJSON *params = cJSON_CreateObject();
        bool bad = false;
        if (params && target[plen] == '?' &&
            loom__http_add_query(params, target + plen + 1, &bad)) {
            int n = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, params)
            {
                if (!cJSON_IsString(it))
                    abort();
                check_decoded(it->string);
                check_decoded(it->valuestring);
                n++;
            }
            if (n > MAX_QUERY_PARAMS)
                abort();
        }
        cJSON_Delete(params);
        loom__http_pathsegs_fini(&ps);
    } else if (rc != 1 && rc != 2 && rc != -1) {
        abort();
    }
    free(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *lines[MAX_LINES];
    size_t n = 0;
    for (char *p = text; n < MAX_LINES;) {
        lines[n++] = p;
        char *nl = strchr(p, '\n');
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    static char empty[] = "";
    while (n < 4)
        lines[n++] = empty;

    /* Decoding on its own, with and without '+' as a space. */
    bool bad;
    for (int plus = 0; plus < 2; plus++) {
        char *d = loom__http_pct_decode(lines[0], strlen(lines[0]), plus, &bad);
        check_decoded(d);
        if (d) {
            char *enc = pct_encode(d);
            char *back = enc ? loom__http_pct_decode(enc, strlen(enc), false, &bad) : NULL;
            if (enc && (!back ? !bad : strcmp(back, d) != 0))
                abort();
            free(back);
            free(enc);
        }
        free(d);
    }

    /* The table: base and templates, as discovery would hand them over. */
    const char *base = lines[0];
    raw_route raw[MAX_LINES];
    size_t nraw = 0;
    for (size_t i = 1; i + 3 < n; i++) {
        const char *sp = strchr(lines[i], ' ');
        if (!sp)
            continue;
        raw_route *r = &raw[nraw];
        memset(r, 0, sizeof *r);
        r->service = strdup("svc");
        r->version = strdup(i % 2 ? "1" : "2");
        char name[16];
        snprintf(name, sizeof name, "c%zu", i);
        r->command = strdup(name);
        r->method = strndup(lines[i], (size_t)(sp - lines[i]));
        r->path = strdup(sp + 1);
        nraw++;
    }
    routes *t = loom__http_routes_from(base, raw, nraw, NULL, NULL);
    if (t) {
        check_table(t);
        request(t, lines[n - 3]);
        loom__http_routes_unref(t);
    }

    loom__http_json_content_type(lines[n - 2]);
    char trace[33], echo[56];
    if (loom__http_parse_traceparent(lines[n - 1], trace, echo)) {
        if (strlen(trace) != 32 || strspn(trace, "0123456789abcdef") != 32 ||
            strspn(trace, "0") == 32 || strlen(echo) != 55)
            abort();
    }
    free(text);
    return 0;
}
