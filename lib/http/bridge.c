/* The HTTP bridge (include/loom/http.h, docs/http.md): every command with
 * HTTP exposure is served as {base}/v{version}{path}, through the server
 * seam in server.h.
 *
 * Request flow (server threads):
 *   on_headers  trace id, CORS, built-in endpoints, route match (404/405),
 *               path and query parameters (400), authentication (401),
 *               Content-Length (413) and Content-Type (415) checks.
 *   on_request  body -> payload (400 / 413), then loom_runtime_invoke. The
 *               reply callback may run on any thread, even inline before
 *               invoke returns: whoever comes second between "the reply is
 *               here" and "the server thread is done with invoke" acts
 *               (breq.mu). When the reply is not there yet the connection
 *               is suspended: no server thread waits for a command.
 *   on_resume   builds the response from the reply (or 503 at stop).
 *   on_done     drops the server side's reference.
 *
 * Lifetimes. A breq is shared by the server side and the reply callback
 * (refcount). The callback only touches the breq, never the bridge, so a
 * reply that arrives after loom_http_destroy is harmless.
 *
 * Routes. An immutable, refcounted table, rebuilt when the runtime's
 * routes version changes (remote announcements). A request takes a
 * reference under a read lock; the rebuild happens on the request thread
 * that notices the change, with a try-lock so that no request waits for a
 * rebuild another thread is doing (it keeps using the old table).
 *
 * Metrics. Counters live in "series" found through a fixed-size, grow-only,
 * lock-free hash table (insert by compare-and-swap, never removed): a
 * request costs a few atomic increments. Routes resolve their series when
 * the table is built.
 *
 * Locks, in order: life_mu -> wait_mu -> breq.mu. build_mu -> routes_lock.
 * None is held while calling into the runtime or resuming a request. */
#define _GNU_SOURCE
#include "loom/http.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/msg.h"
#include "config/config.h"
#include "core/runtime.h"
#include "core/util.h"
#include "http/server.h"

#define DEFAULT_LISTEN "127.0.0.1:0"
#define DEFAULT_BASE "/api"
#define DEFAULT_THREADS 2
#define DEFAULT_MAX_BODY (1024 * 1024)
#define DEFAULT_MAX_HEADER (16 * 1024)
#define DEFAULT_MAX_CONNECTIONS 1024
#define DEFAULT_IDLE_TIMEOUT_S 30
#define DEFAULT_CORS_MAX_AGE 600
#define STOP_WAIT_MS 2000 /* for answered requests to go out at stop */

#define MAX_SEGMENTS 64
#define MAX_TEMPLATE 1024
#define MAX_NAME 256
#define SERIES_SLOTS 4096 /* power of two */
#define N_STATUS 500      /* 100..599 */

/* ------------------------------------------------------------------------ */
/* Small text helpers                                                        */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_add(sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) LOOM_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    sb_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A Prometheus label value: \ " and newline escaped. */
static void sb_label(sbuf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            sb_puts(b, "\\\\");
        else if (*v == '"')
            sb_puts(b, "\\\"");
        else if (*v == '\n')
            sb_puts(b, "\\n");
        else
            sb_add(b, v, 1);
    }
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
static bool valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += k + 1;
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes n bytes of s into a new string ('+' is a space when
 * plus). NULL for a bad escape, a NUL byte or invalid UTF-8 (*bad = true),
 * or on ENOMEM (*bad = false). */
static char *pct_decode(const char *s, size_t n, bool plus, bool *bad)
{
    *bad = false;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                goto bad;
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        if (c == '\0')
            goto bad;
        out[o++] = c;
    }
    out[o] = '\0';
    if (!valid_utf8((const unsigned char *)out, o))
        goto bad;
    return out;
bad:
    free(out);
    *bad = true;
    return NULL;
}

static bool is_hex_n(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return false;
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[n] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Methods                                                                   */

enum { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_OPTIONS, M_OTHER, M_COUNT };
static const char *const method_names[M_COUNT] = {"GET",   "HEAD",   "POST",    "PUT",
                                                  "PATCH", "DELETE", "OPTIONS", "OTHER"};

static int method_index(const char *m)
{
    for (int i = 0; i < M_OTHER; i++)
        if (strcmp(m, method_names[i]) == 0)
            return i;
    return M_OTHER;
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                   */

static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define N_BUCKETS (sizeof bucket_le / sizeof bucket_le[0])

enum { SERIES_HTTP = 1, SERIES_CMD };

typedef struct series {
    int kind;
    char *a, *b; /* http: method, route; command: service, command */
    uint64_t hash;
    _Atomic uint64_t status[N_STATUS];
    _Atomic uint64_t bucket[N_BUCKETS]; /* per bucket, not cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
} series;

static uint64_t series_hash(int kind, const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)kind;
    for (const char *p = a; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = b; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static void series_free(series *s)
{
    if (!s)
        return;
    free(s->a);
    free(s->b);
    free(s);
}

/* The series for (kind, a, b), created on first use; NULL when the table
 * is full or on ENOMEM (the request is then not counted). Lock-free. */
static series *series_get(_Atomic(series *) *slots, int kind, const char *a, const char *b)
{
    uint64_t h = series_hash(kind, a, b);
    series *fresh = NULL;
    for (size_t i = 0; i < SERIES_SLOTS; i++) {
        _Atomic(series *) *slot = &slots[(h + i) & (SERIES_SLOTS - 1)];
        series *s = atomic_load(slot);
        if (!s) {
            if (!fresh) {
                fresh = calloc(1, sizeof *fresh);
                if (!fresh || !(fresh->a = strdup(a)) || !(fresh->b = strdup(b))) {
                    series_free(fresh);
                    return NULL;
                }
                fresh->kind = kind;
                fresh->hash = h;
            }
            series *expected = NULL;
            if (atomic_compare_exchange_strong(slot, &expected, fresh))
                return fresh;
            s = expected;
        }
        if (s->hash == h && s->kind == kind && strcmp(s->a, a) == 0 && strcmp(s->b, b) == 0) {
            series_free(fresh);
            return s;
        }
    }
    series_free(fresh);
    return NULL;
}

static void series_count(series *s, int status)
{
    if (s && status >= 100 && status <= 599)
        atomic_fetch_add_explicit(&s->status[status - 100], 1, memory_order_relaxed);
}

static void series_observe(series *s, int64_t us)
{
    if (!s)
        return;
    if (us < 0)
        us = 0;
    double sec = (double)us / 1e6;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (sec <= bucket_le[i]) {
            atomic_fetch_add_explicit(&s->bucket[i], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_us, (uint64_t)us, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Routes                                                                    */

typedef struct seg {
    char *text; /* literal text, or the parameter name */
    bool param;
} seg;

typedef struct route {
    char *method;
    char *label; /* "/api/v1/users/{id}" */
    char *service, *version, *command;
    seg *segs;
    size_t nseg;
    bool public;
    uint32_t timeout_ms;
    size_t order;
    series *http_series;
    series *cmd_series;
} route;

typedef struct routes {
    atomic_int refs;
    unsigned version;
    route *v;
    size_t n;
} routes;

/* What discovery said about one command, copied out of the discovery lock. */
typedef struct raw_route {
    char *service, *version, *command, *method, *path;
    bool public;
    uint32_t timeout_ms;
} raw_route;

typedef struct raw_list {
    raw_route *v;
    size_t n, cap;
    bool oom;
} raw_list;

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

static void routes_unref(routes *t)
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

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > MAX_NAME)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return false;
    return true;
}

static bool method_ok(const char *m)
{
    int i = m ? method_index(m) : M_OTHER;
    return i == M_GET || i == M_POST || i == M_PUT || i == M_PATCH || i == M_DELETE;
}

/* Runs under the discovery lock: copies only. */
static void collect_route(void *user, const char *service, const char *version,
                          const char *service_description, const cJSON *cmd, bool local)
{
    (void)service_description;
    (void)local;
    raw_list *l = user;
    const cJSON *http = cJSON_GetObjectItemCaseSensitive(cmd, "http");
    const char *method = jstr(http, "method"), *path = jstr(http, "path");
    if (!method || !path || l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        raw_route *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->oom = true;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    raw_route *r = &l->v[l->n];
    memset(r, 0, sizeof *r);
    const cJSON *tmo = cJSON_GetObjectItemCaseSensitive(cmd, "timeoutMs");
    r->public = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(http, "public"));
    if (cJSON_IsNumber(tmo) && tmo->valuedouble >= 1 && tmo->valuedouble <= 86400000.0)
        r->timeout_ms = (uint32_t)tmo->valuedouble;
    r->service = strdup(service);
    r->version = strdup(version);
    r->command = jstr(cmd, "name") ? strdup(jstr(cmd, "name")) : NULL;
    r->method = strdup(method);
    r->path = strdup(path);
    if (!r->service || !r->version || !r->command || !r->method || !r->path) {
        raw_fini(r);
        l->oom = true;
        return;
    }
    l->n++;
}

static bool literal_char_ok(char c)
{
    return isalnum((unsigned char)c) || strchr("-._~!$&'()*+,;=@", c) != NULL;
}

/* Appends the segments of a path ("/a/:b") to segs. Empty segments, bad
 * characters and repeated parameter names are refused (why says which). */
static bool parse_template(const char *path, bool params_ok, seg *segs, size_t *nseg,
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

/* "{base}/v{version}{path}" as segments and as an OpenAPI-style label. */
static bool build_route_path(const char *base, const char *version, const char *path,
                             seg **segs_out, size_t *nseg_out, char **label_out, const char **why)
{
    seg tmp[MAX_SEGMENTS + 2];
    size_t n = 0;
    bool ok = true;
    if (*base)
        ok = parse_template(base, false, tmp, &n, why);
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
        ok = parse_template(path, true, tmp, &n, why);
    sbuf lb = {0};
    for (size_t i = 0; ok && i < n; i++) {
        sb_puts(&lb, "/");
        if (tmp[i].param)
            sb_printf(&lb, "{%s}", tmp[i].text);
        else
            sb_puts(&lb, tmp[i].text);
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

/* ------------------------------------------------------------------------ */
/* The bridge                                                                */

typedef struct breq breq;

struct loom_http {
    loom_runtime *rt;
    /* Settings, fixed at create. */
    char *listen;
    char *base;
    char *openapi_path;
    unsigned threads;
    size_t max_body, max_header;
    unsigned max_connections, idle_timeout_s;
    uint32_t request_timeout_ms;
    char **tokens;
    size_t *token_lens;
    size_t n_tokens;
    char *api_key_header;
    loom_http_auth_fn auth_fn; /* set before start only */
    void *auth_user;
    char **origins;
    size_t n_origins;
    bool cors_any;
    char *cors_headers;
    unsigned cors_max_age;

    pthread_mutex_t life_mu; /* start / stop */
    loom__hs *srv;           /* under life_mu; non-NULL while started */
    atomic_int port;
    atomic_bool stopping;

    pthread_rwlock_t routes_lock; /* protects the routes pointer */
    routes *routes;               /* one reference held here */
    pthread_mutex_t build_mu;     /* one rebuild at a time */

    pthread_mutex_t wait_mu; /* the invoked, unanswered requests */
    breq *waiting;

    _Atomic(series *) *slots;
    atomic_long in_flight;
};

struct breq {
    atomic_int refs; /* the server side and, while invoked, the reply callback */
    pthread_mutex_t mu;
    /* Under mu. */
    bool answered;   /* the reply (or the stop) decided the answer */
    bool parked;     /* the server side returned SUSPEND */
    loom_msg *reply; /* retained */
    /* Server side only. */
    loom_http *h;
    loom__hs_req *hs;
    breq *prev, *next; /* h->waiting, under h->wait_mu */
    bool on_list;
    routes *table;
    const route *route;
    series *series;
    int method;
    int64_t t0;
    bool finished;
    bool inflight;
    bool invoked;
    char trace[33];
    char traceparent[56];
    const char *cors_origin; /* Access-Control-Allow-Origin value or NULL */
    char *path;              /* raw path, without the query */
    const char *query;       /* raw query (points into the target) or NULL */
    cJSON *params;
    char *principal, *tenant;
};

static void breq_unref(breq *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    loom_msg_release(b->reply);
    cJSON_Delete(b->params);
    free(b->path);
    free(b->principal);
    free(b->tenant);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static void hlog(loom_http *h, loom_log_level level, const char *fmt, ...) LOOM_PRINTF(3, 4);
static void hlog(loom_http *h, loom_log_level level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    loom_runtime_log(h->rt, level, "http: %s", line);
}

/* --- route table ------------------------------------------------------------ */

static routes *build_routes(loom_http *h)
{
    routes *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    atomic_init(&t->refs, 1);
    t->version = loom__routes_version(h->rt);
    raw_list l = {0};
    loom__commands_each(h->rt, collect_route, &l);
    if (l.oom) {
        for (size_t i = 0; i < l.n; i++)
            raw_fini(&l.v[i]);
        free(l.v);
        free(t);
        return NULL;
    }
    t->v = calloc(l.n ? l.n : 1, sizeof *t->v);
    if (!t->v) {
        for (size_t i = 0; i < l.n; i++)
            raw_fini(&l.v[i]);
        free(l.v);
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < l.n; i++) {
        raw_route *rr = &l.v[i];
        const char *why = NULL;
        route *r = &t->v[t->n];
        if (!name_ok(rr->service) || !name_ok(rr->version) || !name_ok(rr->command))
            why = "has a bad service, version or command name";
        else if (!method_ok(rr->method))
            why = "has a method other than GET, POST, PUT, PATCH, DELETE";
        if (why || !build_route_path(h->base, rr->version, rr->path, &r->segs, &r->nseg, &r->label,
                                     &why)) {
            hlog(h, LOOM_LOG_WARN, "ignored the route of %.100s.%.100s: its path '%.200s' %s",
                 rr->service, rr->command, rr->path, why);
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
        r->http_series = series_get(h->slots, SERIES_HTTP, r->method, r->label);
        r->cmd_series = series_get(h->slots, SERIES_CMD, r->service, r->command);
        bool dup = false;
        for (size_t j = 0; j < t->n && !dup; j++)
            dup = same_pattern(&t->v[j], r);
        if (dup) {
            hlog(h, LOOM_LOG_WARN, "%s %s of %s.%s is already served by another command: ignored",
                 r->method, r->label, r->service, r->command);
            route_fini(r);
            continue;
        }
        t->n++;
    }
    free(l.v);
    qsort(t->v, t->n, sizeof *t->v, route_cmp);
    return t;
}

/* A reference to the current table, rebuilt first when discovery changed
 * and no other thread is already rebuilding it. */
static routes *routes_acquire(loom_http *h)
{
    pthread_rwlock_rdlock(&h->routes_lock);
    routes *t = h->routes;
    atomic_fetch_add(&t->refs, 1);
    pthread_rwlock_unlock(&h->routes_lock);
    if (t->version == loom__routes_version(h->rt) || pthread_mutex_trylock(&h->build_mu) != 0)
        return t;
    /* Holding build_mu: nobody else replaces the table now. */
    if (h->routes->version != loom__routes_version(h->rt)) {
        routes *fresh = build_routes(h);
        if (fresh) {
            pthread_rwlock_wrlock(&h->routes_lock);
            routes *old = h->routes;
            h->routes = fresh;
            pthread_rwlock_unlock(&h->routes_lock);
            routes_unref(old);
        }
    }
    pthread_mutex_unlock(&h->build_mu);
    routes_unref(t);
    pthread_rwlock_rdlock(&h->routes_lock);
    t = h->routes;
    atomic_fetch_add(&t->refs, 1);
    pthread_rwlock_unlock(&h->routes_lock);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                 */

static const char *reason(int status)
{
    switch (status) {
    case 400:
        return "bad request";
    case 401:
        return "authentication required";
    case 403:
        return "forbidden";
    case 404:
        return "not found";
    case 405:
        return "method not allowed";
    case 409:
        return "conflict";
    case 413:
        return "request body too large";
    case 415:
        return "unsupported media type";
    case 422:
        return "unprocessable entity";
    case 429:
        return "too many requests";
    case 500:
        return "internal error";
    case 502:
        return "bad gateway";
    case 503:
        return "service unavailable";
    case 504:
        return "gateway timeout";
    default:
        return status < 500 ? "request failed" : "server error";
    }
}

static const char *header(const breq *b, const char *name)
{
    return loom__hs_req_header(b->hs, name);
}

/* A response with the headers every answer carries (trace, CORS). */
static loom__hs_resp *resp_new(breq *b, int status, const char *ctype, char *body, size_t len)
{
    loom__hs_resp *r = loom__hs_resp_new(status, ctype, body, len);
    if (!r)
        return NULL;
    bool ok = loom__hs_resp_header(r, "x-trace-id", b->trace);
    if (ok && b->traceparent[0])
        ok = loom__hs_resp_header(r, "traceparent", b->traceparent);
    if (ok && b->h->n_origins) {
        ok = loom__hs_resp_header(r, "Vary", "Origin");
        if (ok && b->cors_origin)
            ok =
                loom__hs_resp_header(r, "Access-Control-Allow-Origin", b->cors_origin) &&
                loom__hs_resp_header(r, "Access-Control-Expose-Headers", "x-trace-id, traceparent");
    }
    if (!ok) {
        loom__hs_resp_free(r);
        return NULL;
    }
    return r;
}

/* Hands r to the server and counts the request. r NULL (ENOMEM) closes
 * the connection. Always returns LOOM__HS_RESPONDED, for tail calls. */
static loom__hs_action send_resp(breq *b, loom__hs_resp *r, int status)
{
    loom_http *h = b->h;
    if (!b->finished) {
        b->finished = true;
        series *s = b->series;
        if (!s)
            s = series_get(h->slots, SERIES_HTTP, method_names[b->method], "unmatched");
        series_count(s, status);
        series_observe(s, mono_us() - b->t0);
        if (b->invoked && b->route)
            series_count(b->route->cmd_series, status);
        if (b->inflight) {
            b->inflight = false;
            atomic_fetch_sub(&h->in_flight, 1);
        }
    }
    loom__hs_respond(b->hs, r);
    return LOOM__HS_RESPONDED;
}

/* body (malloc'd) is taken over. Extra headers follow as name, value
 * pairs, ended by NULL; a NULL value skips its header. */
static loom__hs_action send_body(breq *b, int status, const char *ctype, char *body, size_t len,
                                 ...)
{
    loom__hs_resp *r = resp_new(b, status, ctype, body, len);
    va_list ap;
    va_start(ap, len);
    const char *name;
    while (r && (name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        if (value && !loom__hs_resp_header(r, name, value)) {
            loom__hs_resp_free(r);
            r = NULL;
        }
    }
    va_end(ap);
    return send_resp(b, r, status);
}

/* {"status","message","data"?,"traceId"}; data taken over. NULL on ENOMEM. */
static char *error_text(int status, const char *message, cJSON *data, const char *trace)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddNumberToObject(o, "status", status) ||
        !cJSON_AddStringToObject(o, "message", message)) {
        cJSON_Delete(o);
        cJSON_Delete(data);
        return NULL;
    }
    if (data && !cJSON_AddItemToObject(o, "data", data))
        cJSON_Delete(data);
    char *text = cJSON_AddStringToObject(o, "traceId", trace) ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

/* An error answer; data (may be NULL) is taken over; one optional extra
 * header (hname NULL: none). */
static loom__hs_action send_error(breq *b, int status, const char *message, cJSON *data,
                                  const char *hname, const char *hvalue)
{
    if (!message || !valid_utf8((const unsigned char *)message, strlen(message)))
        message = reason(status);
    char *text = error_text(status, message, data, b->trace);
    if (text && !valid_utf8((const unsigned char *)text, strlen(text))) {
        /* The handler's data holds broken strings: leave it out. */
        free(text);
        text = error_text(status, message, NULL, b->trace);
    }
    if (!text)
        return send_resp(b, NULL, status);
    return send_body(b, status, "application/json", text, strlen(text), hname ? hname : NULL,
                     hvalue, NULL);
}

static cJSON *data_number(const char *key, double v)
{
    cJSON *d = cJSON_CreateObject();
    if (d && !cJSON_AddNumberToObject(d, key, v)) {
        cJSON_Delete(d);
        return NULL;
    }
    return d;
}

/* Answers from a command's response. */
static loom__hs_action respond_msg(breq *b, const loom_msg *m)
{
    if (loom_msg_type_of(m) == LOOM_MSG_SUCCESS) {
        const cJSON *p = loom_msg_payload(m);
        if (!p)
            return send_body(b, 204, NULL, NULL, 0, NULL);
        char *text = cJSON_PrintUnformatted(p);
        if (!text)
            return send_error(b, 503, "out of memory", NULL, NULL, NULL);
        size_t n = strlen(text);
        if (!valid_utf8((const unsigned char *)text, n)) {
            free(text);
            hlog(b->h, LOOM_LOG_ERROR, "%s %s: the result is not valid UTF-8", b->route->method,
                 b->route->label);
            return send_error(b, 500, "the result is not valid UTF-8", NULL, NULL, NULL);
        }
        return send_body(b, 200, "application/json", text, n, NULL);
    }
    int status = loom_msg_status(m);
    if (loom_msg_type_of(m) != LOOM_MSG_ERROR || status < 400 || status > 599)
        status = 500;
    const cJSON *d = loom_msg_error_data(m);
    return send_error(b, status, loom_msg_error(m), d ? cJSON_Duplicate(d, true) : NULL, NULL,
                      NULL);
}

/* The invoked request's answer is decided: the reply, or 503 at stop. */
static loom__hs_action respond_answer(breq *b)
{
    pthread_mutex_lock(&b->mu);
    loom_msg *m = b->reply;
    b->reply = NULL;
    pthread_mutex_unlock(&b->mu);
    if (!m)
        return send_error(b, 503, "the HTTP bridge is stopping", NULL, NULL, NULL);
    loom__hs_action a = respond_msg(b, m);
    loom_msg_release(m);
    return a;
}

/* ------------------------------------------------------------------------ */
/* Request parsing                                                           */

/* W3C traceparent: "VV-<32 hex trace>-<16 hex parent>-<2 hex flags>";
 * version ff is invalid, version 00 has exactly 55 characters, later
 * versions may append "-...". All-zero ids are invalid. */
static bool parse_traceparent(const char *s, char trace[33], char echo[56])
{
    size_t n = strlen(s);
    if (n < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' || !is_hex_n(s, 2) ||
        !is_hex_n(s + 3, 32) || !is_hex_n(s + 36, 16) || !is_hex_n(s + 53, 2))
        return false;
    if (tolower((unsigned char)s[0]) == 'f' && tolower((unsigned char)s[1]) == 'f')
        return false;
    if ((s[0] == '0' && s[1] == '0' && n != 55) || (n > 55 && s[55] != '-'))
        return false;
    if (all_zero(s + 3, 32) || all_zero(s + 36, 16))
        return false;
    lower_copy(echo, s, 55);
    memcpy(trace, echo + 3, 32);
    trace[32] = '\0';
    return true;
}

static void read_trace(breq *b)
{
    const char *tp = header(b, "traceparent");
    if (tp && parse_traceparent(tp, b->trace, b->traceparent))
        return;
    const char *x = header(b, "x-trace-id");
    if (x && strlen(x) == 32 && is_hex_n(x, 32) && !all_zero(x, 32)) {
        lower_copy(b->trace, x, 32);
        return;
    }
    loom__random_id(b->trace);
}

static const char *cors_allow(const loom_http *h, const char *origin)
{
    if (!h->n_origins || !origin)
        return NULL;
    if (h->cors_any)
        return "*";
    for (size_t i = 0; i < h->n_origins; i++)
        if (strcmp(h->origins[i], origin) == 0)
            return h->origins[i];
    return NULL;
}

static bool ieq(const char *a, size_t an, const char *b)
{
    return strlen(b) == an && strncasecmp(a, b, an) == 0;
}

/* application/json or application/...+json; a charset, when given, must be
 * UTF-8. */
static bool json_content_type(const char *ct)
{
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    bool ok =
        ieq(ct, n, "application/json") || (n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
                                           strncasecmp(ct + n - 5, "+json", 5) == 0);
    const char *p = ct + n;
    while (ok && *p) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        if (!*p)
            break;
        size_t pn = strcspn(p, ";");
        const char *eq = memchr(p, '=', pn);
        if (!eq)
            return false;
        size_t kn = (size_t)(eq - p);
        while (kn && (p[kn - 1] == ' ' || p[kn - 1] == '\t'))
            kn--;
        const char *v = eq + 1;
        size_t vn = pn - (size_t)(v - p);
        while (vn && (*v == ' ' || *v == '\t')) {
            v++;
            vn--;
        }
        while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
            vn--;
        if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') {
            v++;
            vn -= 2;
        }
        if (ieq(p, kn, "charset") && !ieq(v, vn, "utf-8") && !ieq(v, vn, "utf8"))
            return false;
        p += pn;
    }
    return ok;
}

typedef struct pathsegs {
    char *v[MAX_SEGMENTS + 3];
    size_t n;
} pathsegs;

static void pathsegs_fini(pathsegs *ps)
{
    for (size_t i = 0; i < ps->n; i++)
        free(ps->v[i]);
    ps->n = 0;
}

/* 0: ok; 1: bad encoding; 2: too many segments (no route can match);
 * -1: ENOMEM. "/" has no segment, "/a/" has "a" and "". */
static int split_path(const char *path, pathsegs *ps)
{
    ps->n = 0;
    if (strcmp(path, "/") == 0)
        return 0;
    const char *p = path + 1;
    for (;;) {
        size_t n = strcspn(p, "/");
        if (ps->n == LOOM__ARRAY_LEN(ps->v)) {
            pathsegs_fini(ps);
            return 2;
        }
        bool bad;
        char *s = pct_decode(p, n, false, &bad);
        if (!s) {
            pathsegs_fini(ps);
            return bad ? 1 : -1;
        }
        ps->v[ps->n++] = s;
        if (!p[n])
            return 0;
        p += n + 1;
    }
}

/* The route for the request, or NULL; *path_match is the first route whose
 * path matches whatever its method, and allow lists the methods of those. */
static const route *match(const routes *t, const pathsegs *ps, int method, char *allow,
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
        int mi = method_index(r->method);
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

/* Adds the query's values (decoded; '+' is a space) for keys the path did
 * not set; a key without '=' gets "". false on a bad encoding (*bad) or
 * ENOMEM. */
#define MAX_QUERY_PARAMS 256
static bool add_query(cJSON *params, const char *q, bool *bad)
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
            char *k = pct_decode(part, kn, true, bad);
            char *v = !k ? NULL : eq ? pct_decode(eq + 1, n - kn - 1, true, bad) : strdup("");
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

static int json_depth(const cJSON *j)
{
    int max = 0;
    for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
        int d = json_depth(c);
        if (d > max)
            max = d;
    }
    return max + 1;
}

/* True when a JSON string in text holds the escape \u0000 (C strings
 * cannot carry it: it would silently cut the value). */
static bool has_nul_escape(const char *text, size_t len)
{
    for (size_t i = 0; i + 6 <= len; i++) {
        if (text[i] != '\\')
            continue;
        if (text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0)
            return true;
        i++; /* skip the escaped character, so "\\u0000" is not one */
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Authentication                                                            */

static bool auth_on(const loom_http *h)
{
    return h->n_tokens > 0 || h->auth_fn;
}

/* Compares cand with every token, in time that depends on the tokens'
 * lengths only. */
static bool token_matches(const loom_http *h, const char *cand, size_t clen)
{
    unsigned ok = 0;
    for (size_t i = 0; i < h->n_tokens; i++) {
        const unsigned char *t = (const unsigned char *)h->tokens[i];
        size_t tl = h->token_lens[i];
        volatile unsigned char d = (unsigned char)(tl != clen);
        for (size_t j = 0; j < tl; j++)
            d |= (unsigned char)(t[j] ^ (j < clen ? (unsigned char)cand[j] : 0));
        ok |= (unsigned)(d == 0);
    }
    return ok != 0;
}

static bool check_token_value(const loom_http *h, const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n > 0 && token_matches(h, v, n);
}

static const char *hook_header(const loom_http_auth_request *req, const char *name)
{
    return req && name && req->internal ? loom__hs_req_header(req->internal, name) : NULL;
}

static bool identity_ok(const char *s)
{
    if (!s)
        return true;
    size_t n = strlen(s);
    if (n == 0 || n > LOOM_MAX_STRING || !valid_utf8((const unsigned char *)s, n))
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* 0: allowed; 401: refused; 500: the hook returned a bad identity;
 * 503: ENOMEM. */
static int authenticate(breq *b)
{
    loom_http *h = b->h;
    if (h->auth_fn) {
        loom_http_auth_request ar = {.method = loom__hs_req_method(b->hs),
                                     .path = b->path,
                                     .header = hook_header,
                                     .internal = b->hs};
        loom_http_identity id = {0};
        if (!h->auth_fn(&ar, &id, h->auth_user))
            return 401;
        if (!identity_ok(id.principal_id) || !identity_ok(id.tenant_id)) {
            hlog(h, LOOM_LOG_ERROR, "the authentication hook returned an invalid identity");
            return 500;
        }
        if ((id.principal_id && !(b->principal = strdup(id.principal_id))) ||
            (id.tenant_id && !(b->tenant = strdup(id.tenant_id))))
            return 503;
        return 0;
    }
    const char *authz = header(b, "Authorization");
    if (authz && strncasecmp(authz, "Bearer", 6) == 0 && (authz[6] == ' ' || authz[6] == '\t') &&
        check_token_value(h, authz + 7))
        return 0;
    const char *key = h->api_key_header ? header(b, h->api_key_header) : NULL;
    if (key && check_token_value(h, key))
        return 0;
    return 401;
}

/* ------------------------------------------------------------------------ */
/* Built-in endpoints                                                        */

static loom__hs_action serve_metrics(breq *b);
static loom__hs_action serve_openapi(breq *b);

static loom__hs_action send_static_json(breq *b, int status, const char *json)
{
    char *text = strdup(json);
    if (!text)
        return send_resp(b, NULL, status);
    return send_body(b, status, "application/json", text, strlen(text), NULL);
}

static loom__hs_action serve_readyz(breq *b)
{
    loom_http *h = b->h;
    routes *t = routes_acquire(h);
    size_t n = t->n;
    routes_unref(t);
    if (!loom__runtime_ready(h->rt))
        return send_error(b, 503,
                          "the broker is not connected or the subscriptions are not in "
                          "place yet",
                          NULL, NULL, NULL);
    if (n == 0 && h->rt->n_services == 0)
        return send_error(b, 503, "no routes are known yet", NULL, NULL, NULL);
    char text[64];
    snprintf(text, sizeof text, "{\"status\":\"ready\",\"routes\":%zu}", n);
    return send_static_json(b, 200, text);
}

/* A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method)
 * or a plain OPTIONS, for a path whose methods are allow. */
static loom__hs_action serve_options(breq *b, const char *allow)
{
    loom_http *h = b->h;
    bool preflight =
        h->n_origins && header(b, "Origin") && header(b, "Access-Control-Request-Method");
    if (!preflight)
        return send_body(b, 204, NULL, NULL, 0, "Allow", allow, NULL);
    if (!b->cors_origin)
        return send_error(b, 403, "this origin is not allowed", NULL, NULL, NULL);
    char age[16];
    snprintf(age, sizeof age, "%u", h->cors_max_age);
    return send_body(b, 204, NULL, NULL, 0, "Access-Control-Allow-Methods", allow,
                     "Access-Control-Allow-Headers", h->cors_headers, "Access-Control-Max-Age", age,
                     NULL);
}

static loom__hs_action serve_builtin(breq *b, const char *which)
{
    loom_http *h = b->h;
    b->series = series_get(h->slots, SERIES_HTTP, method_names[b->method], which);
    if (b->method == M_OPTIONS)
        return serve_options(b, "GET, HEAD");
    if (b->method != M_GET && b->method != M_HEAD)
        return send_error(b, 405, "method not allowed", NULL, "Allow", "GET, HEAD");
    if (strcmp(which, "/healthz") == 0)
        return send_static_json(b, 200, "{\"status\":\"ok\"}");
    if (strcmp(which, "/readyz") == 0)
        return serve_readyz(b);
    if (strcmp(which, "/metrics") == 0)
        return serve_metrics(b);
    return serve_openapi(b);
}

/* --- metrics ---------------------------------------------------------------- */

static void sb_series_labels(sbuf *sb, const series *s)
{
    sb_puts(sb, s->kind == SERIES_HTTP ? "method=\"" : "service=\"");
    sb_label(sb, s->a);
    sb_puts(sb, s->kind == SERIES_HTTP ? "\",route=\"" : "\",command=\"");
    sb_label(sb, s->b);
    sb_puts(sb, "\"");
}

static void sb_status_lines(sbuf *sb, _Atomic(series *) *slots, int kind, const char *name)
{
    for (size_t i = 0; i < SERIES_SLOTS; i++) {
        series *s = atomic_load(&slots[i]);
        if (!s || s->kind != kind)
            continue;
        for (int k = 0; k < N_STATUS; k++) {
            uint64_t v = atomic_load_explicit(&s->status[k], memory_order_relaxed);
            if (!v)
                continue;
            sb_printf(sb, "%s{", name);
            sb_series_labels(sb, s);
            sb_printf(sb, ",status=\"%d\"} %" PRIu64 "\n", k + 100, v);
        }
    }
}

static char *metrics_text(loom_http *h)
{
    sbuf sb = {0};
    sb_puts(&sb, "# HELP loom_http_requests_total HTTP requests answered by the bridge.\n"
                 "# TYPE loom_http_requests_total counter\n");
    sb_status_lines(&sb, h->slots, SERIES_HTTP, "loom_http_requests_total");
    sb_puts(&sb, "# HELP loom_http_request_duration_seconds Time from the request headers to "
                 "the response.\n# TYPE loom_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < SERIES_SLOTS; i++) {
        series *s = atomic_load(&h->slots[i]);
        if (!s || s->kind != SERIES_HTTP)
            continue;
        uint64_t count = atomic_load(&s->count);
        if (!count)
            continue;
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BUCKETS; k++) {
            cum += atomic_load_explicit(&s->bucket[k], memory_order_relaxed);
            sb_puts(&sb, "loom_http_request_duration_seconds_bucket{");
            sb_series_labels(&sb, s);
            sb_printf(&sb, ",le=\"%g\"} %" PRIu64 "\n", bucket_le[k], cum < count ? cum : count);
        }
        sb_puts(&sb, "loom_http_request_duration_seconds_bucket{");
        sb_series_labels(&sb, s);
        sb_printf(&sb, ",le=\"+Inf\"} %" PRIu64 "\n", count);
        sb_puts(&sb, "loom_http_request_duration_seconds_sum{");
        sb_series_labels(&sb, s);
        sb_printf(&sb, "} %.6f\n", (double)atomic_load(&s->sum_us) / 1e6);
        sb_puts(&sb, "loom_http_request_duration_seconds_count{");
        sb_series_labels(&sb, s);
        sb_printf(&sb, "} %" PRIu64 "\n", count);
    }
    sb_printf(&sb,
              "# HELP loom_http_in_flight HTTP requests being served.\n"
              "# TYPE loom_http_in_flight gauge\nloom_http_in_flight %ld\n",
              atomic_load(&h->in_flight));
    sb_puts(&sb, "# HELP loom_command_requests_total Commands invoked through the bridge, by "
                 "the status answered.\n# TYPE loom_command_requests_total counter\n");
    sb_status_lines(&sb, h->slots, SERIES_CMD, "loom_command_requests_total");
    if (sb.oom) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}

static loom__hs_action serve_metrics(breq *b)
{
    char *text = metrics_text(b->h);
    if (!text)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    return send_body(b, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
}

/* --- OpenAPI ------------------------------------------------------------------ */

typedef struct oa_ctx {
    loom_http *h;
    cJSON *paths;
    bool oom;
} oa_ctx;

static cJSON *dup_or(const cJSON *v, const char *fallback_json)
{
    return v ? cJSON_Duplicate(v, true) : cJSON_Parse(fallback_json);
}

static bool add_ref(cJSON *responses, const char *code, const char *name)
{
    cJSON *r = cJSON_AddObjectToObject(responses, code);
    char ref[96];
    snprintf(ref, sizeof ref, "#/components/responses/%s", name);
    return r && cJSON_AddStringToObject(r, "$ref", ref);
}

static bool oa_parameters(cJSON *op, const seg *segs, size_t nseg, const cJSON *pschema)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(pschema, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(pschema, "required");
    cJSON *params = cJSON_CreateArray();
    if (!params || !cJSON_AddItemToObject(op, "parameters", params)) {
        cJSON_Delete(params);
        return false;
    }
    for (size_t i = 0; i < nseg; i++) {
        if (!segs[i].param)
            continue;
        cJSON *p = cJSON_CreateObject();
        if (!p || !cJSON_AddItemToArray(params, p) ||
            !cJSON_AddStringToObject(p, "name", segs[i].text) ||
            !cJSON_AddStringToObject(p, "in", "path") || !cJSON_AddTrueToObject(p, "required"))
            return false;
        cJSON *s =
            dup_or(cJSON_GetObjectItemCaseSensitive(props, segs[i].text), "{\"type\":\"string\"}");
        if (!s || !cJSON_AddItemToObject(p, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    const cJSON *prop;
    const cJSON *props_obj = cJSON_IsObject(props) ? props : NULL;
    cJSON_ArrayForEach(prop, props_obj)
    {
        if (!prop->string)
            continue;
        bool in_path = false;
        for (size_t i = 0; i < nseg && !in_path; i++)
            in_path = segs[i].param && strcmp(segs[i].text, prop->string) == 0;
        if (in_path)
            continue;
        bool required = false;
        const cJSON *r;
        const cJSON *req_list = cJSON_IsArray(req) ? req : NULL;
        cJSON_ArrayForEach(r, req_list)
        {
            if (cJSON_IsString(r) && strcmp(r->valuestring, prop->string) == 0)
                required = true;
        }
        cJSON *p = cJSON_CreateObject();
        cJSON *s = cJSON_Duplicate(prop, true);
        if (!p || !s || !cJSON_AddItemToArray(params, p)) {
            cJSON_Delete(p);
            cJSON_Delete(s);
            return false;
        }
        if (!cJSON_AddStringToObject(p, "name", prop->string) ||
            !cJSON_AddStringToObject(p, "in", "query") ||
            !cJSON_AddBoolToObject(p, "required", required) ||
            !cJSON_AddItemToObject(p, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    return true;
}

static bool oa_operation(oa_ctx *c, cJSON *op, const char *service, const char *version,
                         const cJSON *cmd, const char *name, const seg *segs, size_t nseg,
                         bool public)
{
    char id[3 * MAX_NAME + 8];
    snprintf(id, sizeof id, "%s.v%s.%s", service, version, name);
    const char *desc = jstr(cmd, "description");
    cJSON *tags = cJSON_AddArrayToObject(op, "tags");
    cJSON *tag = cJSON_CreateString(service);
    if (!tags || !tag || !cJSON_AddItemToArray(tags, tag)) {
        cJSON_Delete(tag);
        return false;
    }
    if (!cJSON_AddStringToObject(op, "operationId", id) ||
        (desc && !cJSON_AddStringToObject(op, "summary", desc)))
        return false;
    cJSON *x = cJSON_AddObjectToObject(op, "x-loom");
    const char *event = jstr(cmd, "successEvent");
    if (!x || !cJSON_AddStringToObject(x, "service", service) ||
        !cJSON_AddStringToObject(x, "version", version) ||
        !cJSON_AddStringToObject(x, "command", name) ||
        (event && !cJSON_AddStringToObject(x, "successEvent", event)))
        return false;
    if (!oa_parameters(op, segs, nseg, cJSON_GetObjectItemCaseSensitive(cmd, "parameterSchema")))
        return false;
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(cmd, "payloadSchema");
    if (payload) {
        cJSON *rb = cJSON_AddObjectToObject(op, "requestBody");
        cJSON *content = rb ? cJSON_AddObjectToObject(rb, "content") : NULL;
        cJSON *mt = content ? cJSON_AddObjectToObject(content, "application/json") : NULL;
        cJSON *s = cJSON_Duplicate(payload, true);
        if (!mt || !s || !cJSON_AddTrueToObject(rb, "required") ||
            !cJSON_AddItemToObject(mt, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    cJSON *responses = cJSON_AddObjectToObject(op, "responses");
    cJSON *ok = responses ? cJSON_AddObjectToObject(responses, "200") : NULL;
    cJSON *content = ok ? cJSON_AddObjectToObject(ok, "content") : NULL;
    cJSON *mt = content ? cJSON_AddObjectToObject(content, "application/json") : NULL;
    cJSON *s = dup_or(cJSON_GetObjectItemCaseSensitive(cmd, "outputSchema"), "{}");
    if (!mt || !s || !cJSON_AddStringToObject(ok, "description", "The command's result") ||
        !cJSON_AddItemToObject(mt, "schema", s)) {
        cJSON_Delete(s);
        return false;
    }
    cJSON *empty = cJSON_AddObjectToObject(responses, "204");
    if (!empty || !cJSON_AddStringToObject(empty, "description", "Done, with an empty result") ||
        !add_ref(responses, "400", "BadRequest") ||
        (!public && auth_on(c->h) && !add_ref(responses, "401", "Unauthorized")) ||
        !add_ref(responses, "404", "NotFound") || !add_ref(responses, "413", "TooLarge") ||
        !add_ref(responses, "503", "Unavailable") || !add_ref(responses, "504", "Timeout") ||
        !add_ref(responses, "default", "Error"))
        return false;
    if (public && !cJSON_AddArrayToObject(op, "security"))
        return false;
    return true;
}

/* Runs under the discovery lock: builds JSON only. */
static void oa_command(void *user, const char *service, const char *version,
                       const char *service_description, const cJSON *cmd, bool local)
{
    (void)service_description;
    (void)local;
    oa_ctx *c = user;
    const cJSON *http = cJSON_GetObjectItemCaseSensitive(cmd, "http");
    const char *method = jstr(http, "method"), *path = jstr(http, "path");
    const char *name = jstr(cmd, "name");
    if (c->oom || !method || !path || !method_ok(method) || !name_ok(name) || !name_ok(service) ||
        !name_ok(version))
        return;
    seg *segs = NULL;
    size_t nseg = 0;
    char *label = NULL;
    const char *why;
    if (!build_route_path(c->h->base, version, path, &segs, &nseg, &label, &why))
        return;
    char lm[8];
    lower_copy(lm, method, strlen(method) < 7 ? strlen(method) : 7);
    cJSON *item = cJSON_GetObjectItemCaseSensitive(c->paths, label);
    if (!item)
        item = cJSON_AddObjectToObject(c->paths, label);
    if (!item) {
        c->oom = true;
    } else if (!cJSON_GetObjectItemCaseSensitive(item, lm)) { /* first one wins */
        cJSON *op = cJSON_AddObjectToObject(item, lm);
        bool public = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(http, "public"));
        if (!op || !oa_operation(c, op, service, version, cmd, name, segs, nseg, public))
            c->oom = true;
    }
    for (size_t i = 0; i < nseg; i++)
        free(segs[i].text);
    free(segs);
    free(label);
}

static const char oa_components[] =
    "{\"schemas\":{\"Error\":{\"type\":\"object\",\"required\":[\"status\",\"message\","
    "\"traceId\"],\"properties\":{\"status\":{\"type\":\"integer\",\"minimum\":400,"
    "\"maximum\":599},\"message\":{\"type\":\"string\"},\"data\":{},\"traceId\":{\"type\":"
    "\"string\",\"pattern\":\"^[0-9a-f]{32}$\"}}}},\"responses\":{"
    "\"BadRequest\":{\"description\":\"Invalid input: malformed JSON, bad parameters or a "
    "validation failure (data.errors lists each problem)\",\"content\":{\"application/json\":"
    "{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Unauthorized\":{\"description\":\"Missing or invalid credentials\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"NotFound\":{\"description\":\"Not found\",\"content\":{\"application/json\":{\"schema\":"
    "{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"TooLarge\":{\"description\":\"The request body is too large\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Unavailable\":{\"description\":\"No instance can serve the command right now\","
    "\"content\":{\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Timeout\":{\"description\":\"The command did not answer in time\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Error\":{\"description\":\"An error answered by the command\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}}}}";

static cJSON *openapi_doc(loom_http *h)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *info = doc && cJSON_AddStringToObject(doc, "openapi", "3.1.0")
                      ? cJSON_AddObjectToObject(doc, "info")
                      : NULL;
    cJSON *components = cJSON_Parse(oa_components);
    if (!info || !components || !cJSON_AddStringToObject(info, "title", "loom HTTP bridge") ||
        !cJSON_AddStringToObject(info, "version", LOOM_VERSION_STRING) ||
        !cJSON_AddStringToObject(info, "description",
                                 "Every command with HTTP exposure, served as "
                                 "{base}/v{version}{path}. Errors are JSON "
                                 "{status, message, data?, traceId}."))
        goto fail;
    oa_ctx c = {.h = h, .paths = cJSON_AddObjectToObject(doc, "paths")};
    if (!c.paths)
        goto fail;
    loom__commands_each(h->rt, oa_command, &c);
    if (c.oom)
        goto fail;
    if (auth_on(h)) {
        cJSON *schemes = cJSON_AddObjectToObject(components, "securitySchemes");
        cJSON *bearer = schemes ? cJSON_AddObjectToObject(schemes, "bearerAuth") : NULL;
        cJSON *security = cJSON_AddArrayToObject(doc, "security");
        cJSON *req = security ? cJSON_CreateObject() : NULL;
        if (req && !cJSON_AddItemToArray(security, req)) {
            cJSON_Delete(req);
            req = NULL;
        }
        if (!bearer || !req || !cJSON_AddStringToObject(bearer, "type", "http") ||
            !cJSON_AddStringToObject(bearer, "scheme", "bearer") ||
            !cJSON_AddArrayToObject(req, "bearerAuth"))
            goto fail;
        if (h->api_key_header && !h->auth_fn) {
            cJSON *key = cJSON_AddObjectToObject(schemes, "apiKeyAuth");
            cJSON *req2 = cJSON_CreateObject();
            if (req2 && !cJSON_AddItemToArray(security, req2)) {
                cJSON_Delete(req2);
                req2 = NULL;
            }
            if (!key || !req2 || !cJSON_AddStringToObject(key, "type", "apiKey") ||
                !cJSON_AddStringToObject(key, "in", "header") ||
                !cJSON_AddStringToObject(key, "name", h->api_key_header) ||
                !cJSON_AddArrayToObject(req2, "apiKeyAuth"))
                goto fail;
        }
    }
    if (!cJSON_AddItemToObject(doc, "components", components))
        goto fail;
    return doc;
fail:
    cJSON_Delete(components);
    cJSON_Delete(doc);
    return NULL;
}

static loom__hs_action serve_openapi(breq *b)
{
    cJSON *doc = openapi_doc(b->h);
    char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    if (!text)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    size_t n = strlen(text);
    if (!valid_utf8((const unsigned char *)text, n)) {
        free(text);
        return send_error(b, 500, "an announced schema is not valid UTF-8", NULL, NULL, NULL);
    }
    return send_body(b, 200, "application/json", text, n, NULL);
}

/* ------------------------------------------------------------------------ */
/* Request flow                                                              */

/* The reply callback: any thread, possibly inline in loom_runtime_invoke,
 * possibly after the bridge is gone. Touches only b. */
static void on_reply(loom_runtime *rt, const loom_msg *response, void *user)
{
    (void)rt;
    breq *b = user;
    bool wake = false;
    pthread_mutex_lock(&b->mu);
    if (!b->answered) {
        b->answered = true;
        b->reply = loom_msg_retain((loom_msg *)response);
        wake = b->parked;
    }
    pthread_mutex_unlock(&b->mu);
    /* b->hs stays valid: a parked request cannot finish before this resume. */
    if (wake)
        loom__hs_resume(b->hs);
    breq_unref(b);
}

static void unlist(loom_http *h, breq *b)
{
    if (!b->on_list)
        return;
    pthread_mutex_lock(&h->wait_mu);
    if (b->prev)
        b->prev->next = b->next;
    else
        h->waiting = b->next;
    if (b->next)
        b->next->prev = b->prev;
    pthread_mutex_unlock(&h->wait_mu);
    b->on_list = false;
}

/* payload (may be NULL) and b->params are handed to the runtime. */
static loom__hs_action invoke(breq *b, cJSON *payload)
{
    loom_http *h = b->h;
    const route *r = b->route;
    pthread_mutex_lock(&h->wait_mu);
    if (atomic_load(&h->stopping)) {
        pthread_mutex_unlock(&h->wait_mu);
        cJSON_Delete(payload);
        return send_error(b, 503, "the HTTP bridge is stopping", NULL, NULL, NULL);
    }
    b->prev = NULL;
    b->next = h->waiting;
    if (h->waiting)
        h->waiting->prev = b;
    h->waiting = b;
    b->on_list = true;
    pthread_mutex_unlock(&h->wait_mu);

    /* The command's own timeout (for a remote command the runtime only
     * knows it from the announcement), capped by http.request_timeout_ms. */
    uint32_t timeout = r->timeout_ms;
    if (h->request_timeout_ms) {
        uint32_t own = timeout ? timeout : h->rt->default_timeout_ms;
        timeout = own < h->request_timeout_ms ? own : h->request_timeout_ms;
    }
    loom_call call = {.service = r->service,
                      .version = r->version,
                      .command = r->command,
                      .payload = payload,
                      .parameter = b->params,
                      .timeout_ms = timeout,
                      .trace_id = b->trace,
                      .principal_id = b->principal,
                      .tenant_id = b->tenant};
    b->invoked = true;
    atomic_fetch_add(&b->refs, 1); /* for on_reply */
    loom_err err = loom_runtime_invoke(h->rt, &call, on_reply, b);
    if (err != LOOM_OK) {
        atomic_fetch_sub(&b->refs, 1); /* on_reply will not run */
        cJSON_Delete(payload);
        if (err == LOOM_EINVAL) {
            hlog(h, LOOM_LOG_ERROR, "%s %s: the runtime refused the call to %s.%s", r->method,
                 r->label, r->service, r->command);
            return send_error(b, 500, "the call was refused", NULL, NULL, NULL);
        }
        return send_error(b, 503,
                          err == LOOM_ECLOSED ? "the runtime is not running" : loom_strerror(err),
                          NULL, NULL, NULL);
    }
    b->params = NULL; /* the runtime's now */
    pthread_mutex_lock(&b->mu);
    bool answered = b->answered;
    if (!answered)
        b->parked = true;
    pthread_mutex_unlock(&b->mu);
    return answered ? respond_answer(b) : LOOM__HS_SUSPEND;
}

static loom__hs_action on_headers(void *user, loom__hs_req *hs)
{
    loom_http *h = user;
    breq *b = calloc(1, sizeof *b);
    if (!b) {
        loom__hs_resp *r = loom__hs_resp_new(503, NULL, NULL, 0);
        loom__hs_resp_close(r);
        loom__hs_respond(hs, r);
        return LOOM__HS_RESPONDED;
    }
    atomic_init(&b->refs, 1);
    pthread_mutex_init(&b->mu, NULL);
    b->h = h;
    b->hs = hs;
    b->t0 = mono_us();
    b->method = method_index(loom__hs_req_method(hs));
    b->inflight = true;
    atomic_fetch_add(&h->in_flight, 1);
    loom__hs_req_set_user(hs, b);
    read_trace(b);
    b->cors_origin = cors_allow(h, header(b, "Origin"));

    const char *target = loom__hs_req_target(hs);
    if (target[0] != '/')
        return send_error(b, 400, "the request target must be an absolute path", NULL, NULL, NULL);
    size_t plen = strcspn(target, "?#");
    if (!(b->path = strndup(target, plen)))
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    b->query = target[plen] == '?' ? target + plen + 1 : NULL;
    if (atomic_load(&h->stopping))
        return send_error(b, 503, "the HTTP bridge is stopping", NULL, NULL, NULL);

    if (strcmp(b->path, "/healthz") == 0 || strcmp(b->path, "/readyz") == 0 ||
        strcmp(b->path, "/metrics") == 0 || strcmp(b->path, h->openapi_path) == 0)
        return serve_builtin(b, b->path);

    b->table = routes_acquire(h);
    pathsegs ps;
    int rc = split_path(b->path, &ps);
    if (rc == 1)
        return send_error(b, 400,
                          "the path has an invalid percent-encoding (or a NUL byte, "
                          "or is not UTF-8)",
                          NULL, NULL, NULL);
    if (rc < 0)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    const route *pm = NULL, *r = NULL;
    char allow[96];
    if (rc == 0)
        r = match(b->table, &ps, b->method, allow, sizeof allow, &pm);
    if (!r) {
        pathsegs_fini(&ps);
        if (!pm)
            return send_error(b, 404, "no route matches the request", NULL, NULL, NULL);
        b->series = series_get(h->slots, SERIES_HTTP, method_names[b->method], pm->label);
        if (b->method == M_OPTIONS)
            return serve_options(b, allow);
        return send_error(b, 405, "method not allowed", NULL, "Allow", allow);
    }
    b->route = r;
    b->series = r->http_series;

    if (!r->public && auth_on(h)) {
        int st = authenticate(b);
        if (st == 401) {
            pathsegs_fini(&ps);
            return send_error(b, 401, "authentication required", NULL, "WWW-Authenticate",
                              "Bearer realm=\"loom\"");
        }
        if (st) {
            pathsegs_fini(&ps);
            return send_error(b, st, st == 503 ? "out of memory" : "authentication failed", NULL,
                              NULL, NULL);
        }
    }

    b->params = cJSON_CreateObject();
    bool ok = b->params != NULL;
    for (size_t i = 0; ok && i < r->nseg; i++)
        if (r->segs[i].param)
            ok = cJSON_AddStringToObject(b->params, r->segs[i].text, ps.v[i]) != NULL;
    pathsegs_fini(&ps);
    if (!ok)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    bool bad = false;
    if (b->query && !add_query(b->params, b->query, &bad)) {
        if (bad)
            return send_error(b, 400,
                              "the query has an invalid percent-encoding (or a NUL byte, or is "
                              "not UTF-8, or has more than 256 parameters)",
                              NULL, NULL, NULL);
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    }

    const char *cl = header(b, "Content-Length");
    long long cln = 0;
    if (cl && loom__parse_int(cl, 0, LLONG_MAX, &cln) && cln > (long long)h->max_body)
        return send_error(b, 413, "the request body is too large",
                          data_number("maxBody", (double)h->max_body), NULL, NULL);
    if (cln > 0 || header(b, "Transfer-Encoding")) {
        const char *ct = header(b, "Content-Type");
        if (!ct || !json_content_type(ct))
            return send_error(b, 415, "the body must be JSON (Content-Type: application/json)",
                              NULL, NULL, NULL);
    }
    return LOOM__HS_CONTINUE;
}

static loom__hs_action on_request(void *user, loom__hs_req *hs)
{
    (void)user;
    breq *b = loom__hs_req_user(hs);
    if (!b)
        return LOOM__HS_RESPONDED; /* no response: the connection closes */
    if (loom__hs_req_body_too_large(hs))
        return send_error(b, 413, "the request body is too large",
                          data_number("maxBody", (double)b->h->max_body), NULL, NULL);
    size_t len;
    const char *body = loom__hs_req_body(hs, &len);
    cJSON *payload = NULL;
    if (len) {
        if (memchr(body, '\0', len))
            return send_error(b, 400, "the body contains a NUL byte", NULL, NULL, NULL);
        if (!valid_utf8((const unsigned char *)body, len))
            return send_error(b, 400, "the body is not valid UTF-8", NULL, NULL, NULL);
        const char *end = NULL;
        payload = cJSON_ParseWithLengthOpts(body, len, &end, false);
        size_t pos = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        if (!payload)
            return send_error(b, 400, "the body is not valid JSON",
                              data_number("position", (double)pos), NULL, NULL);
        while (pos < len && strchr(" \t\r\n", body[pos]))
            pos++;
        const char *why = pos < len ? "unexpected data after the JSON value"
                          : json_depth(payload) > LOOM_MAX_NESTING
                              ? "the JSON body is nested too deeply"
                          : has_nul_escape(body, len) ? "the JSON body holds a \\u0000 escape"
                                                      : NULL;
        if (why) {
            cJSON_Delete(payload);
            return send_error(b, 400, why, pos < len ? data_number("position", (double)pos) : NULL,
                              NULL, NULL);
        }
    }
    return invoke(b, payload);
}

static void on_resume(void *user, loom__hs_req *hs)
{
    (void)user;
    breq *b = loom__hs_req_user(hs);
    if (b)
        respond_answer(b);
}

static void on_done(void *user, loom__hs_req *hs, bool responded)
{
    (void)responded;
    loom_http *h = user;
    breq *b = loom__hs_req_user(hs);
    if (!b)
        return;
    unlist(h, b);
    if (b->inflight) {
        b->inflight = false;
        atomic_fetch_sub(&h->in_flight, 1);
    }
    routes_unref(b->table);
    b->table = NULL;
    b->route = NULL;
    breq_unref(b);
}

static void on_server_log(void *user, const char *line)
{
    hlog(user, LOOM_LOG_DEBUG, "%s", line);
}

/* Answers every invoked, unanswered request with 503 (stopping is set, so
 * none joins the list any more). Resumes outside the locks, in batches. */
static void answer_waiting(loom_http *h)
{
    for (;;) {
        breq *batch[64];
        size_t n = 0;
        bool more = false;
        pthread_mutex_lock(&h->wait_mu);
        for (breq *b = h->waiting; b; b = b->next) {
            if (n == LOOM__ARRAY_LEN(batch)) {
                more = true;
                break;
            }
            pthread_mutex_lock(&b->mu);
            if (!b->answered) {
                b->answered = true;
                if (b->parked) {
                    atomic_fetch_add(&b->refs, 1);
                    batch[n++] = b;
                }
            }
            pthread_mutex_unlock(&b->mu);
        }
        pthread_mutex_unlock(&h->wait_mu);
        for (size_t i = 0; i < n; i++) {
            loom__hs_resume(batch[i]->hs);
            breq_unref(batch[i]);
        }
        if (!more)
            return;
    }
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */

static loom_err add_token(loom_http *h, const char *t, size_t n)
{
    while (n && isspace((unsigned char)*t)) {
        t++;
        n--;
    }
    while (n && isspace((unsigned char)t[n - 1]))
        n--;
    if (!n)
        return LOOM_OK;
    char **tokens = realloc(h->tokens, (h->n_tokens + 1) * sizeof *tokens);
    if (!tokens)
        return LOOM_ENOMEM;
    h->tokens = tokens;
    size_t *lens = realloc(h->token_lens, (h->n_tokens + 1) * sizeof *lens);
    if (!lens)
        return LOOM_ENOMEM;
    h->token_lens = lens;
    if (!(h->tokens[h->n_tokens] = strndup(t, n)))
        return LOOM_ENOMEM;
    h->token_lens[h->n_tokens++] = n;
    return LOOM_OK;
}

static loom_err load_tokens(loom_http *h, const loom_config *cfg)
{
    const cJSON *v;
    loom_err err = LOOM_OK;
    const cJSON *list = cfg ? loom_config_get(cfg, "http.auth.tokens") : NULL;
    cJSON_ArrayForEach(v, list)
    {
        if (cJSON_IsString(v) && (err = add_token(h, v->valuestring, strlen(v->valuestring))))
            return err;
    }
    const char *file = loom__config_str(cfg, "http.auth.tokens_file", NULL);
    if (file) {
        FILE *f = fopen(file, "re");
        if (!f) {
            hlog(h, LOOM_LOG_ERROR, "http.auth.tokens_file: cannot read %s: %s", file,
                 strerror(errno));
            return LOOM_ECONFIG;
        }
        size_t before = h->n_tokens;
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (err == LOOM_OK && (n = getline(&line, &cap, f)) >= 0) {
            const char *p = line;
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p != '#')
                err = add_token(h, p, strlen(p));
        }
        free(line);
        fclose(f);
        if (err)
            return err;
        if (h->n_tokens == before) {
            hlog(h, LOOM_LOG_ERROR, "http.auth.tokens_file: %s holds no token", file);
            return LOOM_ECONFIG;
        }
    }
    const char *env = loom__config_str(cfg, "http.auth.tokens_env", NULL);
    if (env) {
        const char *val = getenv(env);
        size_t before = h->n_tokens;
        for (const char *p = val; p && *p && err == LOOM_OK;) {
            size_t n = strcspn(p, ",");
            err = add_token(h, p, n);
            p += n;
            if (*p == ',')
                p++;
        }
        if (err)
            return err;
        if (h->n_tokens == before) {
            hlog(h, LOOM_LOG_ERROR,
                 "http.auth.tokens_env: the environment variable %s is unset or holds no token",
                 env);
            return LOOM_ECONFIG;
        }
    }
    return LOOM_OK;
}

static bool header_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 128)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static loom_err load_cors(loom_http *h, const loom_config *cfg)
{
    const cJSON *v;
    const cJSON *origins = cfg ? loom_config_get(cfg, "http.cors.origins") : NULL;
    size_t n = (size_t)cJSON_GetArraySize(origins);
    if (n) {
        h->origins = calloc(n, sizeof *h->origins);
        if (!h->origins)
            return LOOM_ENOMEM;
    }
    cJSON_ArrayForEach(v, origins)
    {
        if (!cJSON_IsString(v))
            continue;
        const char *o = v->valuestring;
        for (const char *p = o; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
                hlog(h, LOOM_LOG_ERROR, "http.cors.origins: '%.100s' is not an origin", o);
                return LOOM_ECONFIG;
            }
        if (strcmp(o, "*") == 0)
            h->cors_any = true;
        if (!(h->origins[h->n_origins++] = strdup(o)))
            return LOOM_ENOMEM;
    }
    sbuf sb = {0};
    const cJSON *headers = cfg ? loom_config_get(cfg, "http.cors.headers") : NULL;
    cJSON_ArrayForEach(v, headers)
    {
        if (!cJSON_IsString(v))
            continue;
        if (!header_name_ok(v->valuestring)) {
            hlog(h, LOOM_LOG_ERROR, "http.cors.headers: '%.100s' is not a header name",
                 v->valuestring);
            free(sb.p);
            return LOOM_ECONFIG;
        }
        sb_printf(&sb, "%s%s", sb.len ? ", " : "", v->valuestring);
    }
    if (!sb.len) {
        sb_puts(&sb, "Content-Type, Authorization, x-trace-id, traceparent");
        if (h->api_key_header)
            sb_printf(&sb, ", %s", h->api_key_header);
    }
    if (sb.oom) {
        free(sb.p);
        return LOOM_ENOMEM;
    }
    h->cors_headers = sb.p;
    h->cors_max_age = (unsigned)loom__config_int(cfg, "http.cors.max_age", DEFAULT_CORS_MAX_AGE);
    return LOOM_OK;
}

loom_err loom_http_create(loom_http **out, loom_runtime *rt, const loom_config *cfg)
{
    if (!out || !rt)
        return LOOM_EINVAL;
    *out = NULL;
    loom_http *h = calloc(1, sizeof *h);
    if (!h)
        return LOOM_ENOMEM;
    h->rt = rt;
    pthread_mutex_init(&h->life_mu, NULL);
    pthread_rwlock_init(&h->routes_lock, NULL);
    pthread_mutex_init(&h->build_mu, NULL);
    pthread_mutex_init(&h->wait_mu, NULL);
    loom_err err = LOOM_ENOMEM;
    h->listen = strdup(loom__config_str(cfg, "http.listen", DEFAULT_LISTEN));
    h->base = strdup(loom__config_str(cfg, "http.base", DEFAULT_BASE));
    h->threads = (unsigned)loom__config_int(cfg, "http.threads", DEFAULT_THREADS);
    h->max_body = (size_t)loom__config_int(cfg, "http.max_body", DEFAULT_MAX_BODY);
    h->max_header = (size_t)loom__config_int(cfg, "http.max_header", DEFAULT_MAX_HEADER);
    h->max_connections =
        (unsigned)loom__config_int(cfg, "http.max_connections", DEFAULT_MAX_CONNECTIONS);
    h->idle_timeout_s =
        (unsigned)loom__config_int(cfg, "http.idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S);
    h->request_timeout_ms = (uint32_t)loom__config_int(cfg, "http.request_timeout_ms", 0);
    h->slots = calloc(SERIES_SLOTS, sizeof *h->slots);
    if (!h->listen || !h->base || !h->slots)
        goto fail;
    if (!(h->openapi_path = loom__asprintf("%s/openapi.json", h->base)))
        goto fail;
    seg tmp[MAX_SEGMENTS];
    size_t n = 0;
    const char *why = NULL;
    if (h->base[0] && !parse_template(h->base, false, tmp, &n, &why)) {
        hlog(h, LOOM_LOG_ERROR, "http.base: '%.200s' %s", h->base, why);
        err = LOOM_ECONFIG;
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(tmp[i].text);
    const char *key = loom__config_str(cfg, "http.auth.api_key_header", NULL);
    if (key && !header_name_ok(key)) {
        hlog(h, LOOM_LOG_ERROR, "http.auth.api_key_header: '%.100s' is not a header name", key);
        err = LOOM_ECONFIG;
        goto fail;
    }
    if (key && !(h->api_key_header = strdup(key)))
        goto fail;
    if ((err = load_tokens(h, cfg)) != LOOM_OK || (err = load_cors(h, cfg)) != LOOM_OK)
        goto fail;
    *out = h;
    return LOOM_OK;
fail:
    loom_http_destroy(h);
    return err;
}

loom_err loom_http_set_auth(loom_http *h, loom_http_auth_fn fn, void *user)
{
    if (!h)
        return LOOM_EINVAL;
    pthread_mutex_lock(&h->life_mu);
    loom_err err = LOOM_ESTATE;
    if (!h->srv) {
        h->auth_fn = fn;
        h->auth_user = user;
        err = LOOM_OK;
    }
    pthread_mutex_unlock(&h->life_mu);
    return err;
}

loom_err loom_http_start(loom_http *h)
{
    if (!h)
        return LOOM_EINVAL;
    pthread_mutex_lock(&h->life_mu);
    if (h->srv) {
        pthread_mutex_unlock(&h->life_mu);
        return LOOM_ESTATE;
    }
    routes *t = build_routes(h);
    if (!t) {
        pthread_mutex_unlock(&h->life_mu);
        return LOOM_ENOMEM;
    }
    pthread_rwlock_wrlock(&h->routes_lock);
    routes *old = h->routes;
    h->routes = t;
    pthread_rwlock_unlock(&h->routes_lock);
    routes_unref(old);
    atomic_store(&h->stopping, false);
    loom__hs_config sc = {
        .listen = h->listen,
        .threads = h->threads,
        .max_body = h->max_body,
        .max_header = h->max_header,
        .max_connections = h->max_connections,
        .idle_timeout_s = h->idle_timeout_s,
        .cb = {.on_headers = on_headers,
               .on_request = on_request,
               .on_resume = on_resume,
               .on_done = on_done,
               .log = on_server_log},
        .user = h,
    };
    char why[256];
    loom_err err = loom__hs_start(&h->srv, &sc, why, sizeof why);
    if (err != LOOM_OK) {
        h->srv = NULL;
        hlog(h, LOOM_LOG_ERROR, "cannot start on %s: %s", h->listen, why);
        pthread_mutex_unlock(&h->life_mu);
        return err == LOOM_ENOMEM ? err : LOOM_EIO;
    }
    atomic_store(&h->port, loom__hs_port(h->srv));
    hlog(h, LOOM_LOG_INFO, "listening on %s (port %d), %zu route(s) under %s/v*, auth %s",
         h->listen, atomic_load(&h->port), t->n, h->base, auth_on(h) ? "on" : "off");
    pthread_mutex_unlock(&h->life_mu);
    return LOOM_OK;
}

int loom_http_port(const loom_http *h)
{
    return h ? atomic_load(&((loom_http *)h)->port) : 0;
}

loom_err loom_http_stop(loom_http *h)
{
    if (!h)
        return LOOM_EINVAL;
    pthread_mutex_lock(&h->life_mu);
    if (!h->srv) {
        pthread_mutex_unlock(&h->life_mu);
        return LOOM_OK;
    }
    pthread_mutex_lock(&h->wait_mu);
    atomic_store(&h->stopping, true);
    pthread_mutex_unlock(&h->wait_mu);
    loom__hs_quiesce(h->srv);
    answer_waiting(h);
    loom__hs_stop(h->srv, STOP_WAIT_MS);
    h->srv = NULL;
    atomic_store(&h->port, 0);
    hlog(h, LOOM_LOG_INFO, "stopped");
    pthread_mutex_unlock(&h->life_mu);
    return LOOM_OK;
}

void loom_http_destroy(loom_http *h)
{
    if (!h)
        return;
    loom_http_stop(h);
    routes_unref(h->routes);
    if (h->slots) {
        for (size_t i = 0; i < SERIES_SLOTS; i++)
            series_free(atomic_load(&h->slots[i]));
        free(h->slots);
    }
    for (size_t i = 0; i < h->n_tokens; i++) {
        /* Tokens are secrets: do not leave them in freed memory. */
        explicit_bzero(h->tokens[i], h->token_lens[i]);
        free(h->tokens[i]);
    }
    free(h->tokens);
    free(h->token_lens);
    for (size_t i = 0; i < h->n_origins; i++)
        free(h->origins[i]);
    free(h->origins);
    free(h->cors_headers);
    free(h->api_key_header);
    free(h->openapi_path);
    free(h->base);
    free(h->listen);
    pthread_mutex_destroy(&h->life_mu);
    pthread_rwlock_destroy(&h->routes_lock);
    pthread_mutex_destroy(&h->build_mu);
    pthread_mutex_destroy(&h->wait_mu);
    free(h);
}
