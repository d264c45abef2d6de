/* The HTTP bridge (include/loom/http.h, docs/http.md): every command with
 * HTTP exposure is served as {base}/v{version}{path}, through the server
 * seam in server.h. This file holds the request flow, the responses, the
 * built-in endpoints and the public API; bridge.h lists the other parts.
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
 * Routes. An immutable, refcounted table (routes.c), rebuilt when the
 * runtime's routes version changes (remote announcements). A request takes
 * a reference under a read lock; the rebuild happens on the request thread
 * that notices the change, with a try-lock so that no request waits for a
 * rebuild another thread is doing (it keeps using the old table).
 *
 * Overload. Every 503 carries Retry-After: 1 (no receiver, overloaded queue
 * or bulkhead, stopping): the condition is temporary and clients should
 * back off instead of hammering. Memory is bounded by http.max_connections
 * (each holds at most one request and max_body bytes of body) and by the
 * runtime's bounded queue (limits.queue), which answers 503 when full.
 *
 * Locks: see bridge.h. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/json.h"
#include "codec/msg.h"
#include "config/config.h"
#include "core/runtime.h"
#include "http/bridge.h"

#define DEFAULT_LISTEN "127.0.0.1:0"
#define DEFAULT_BASE "/api"
#define DEFAULT_THREADS 2
#define DEFAULT_MAX_BODY (1024 * 1024)
#define DEFAULT_MAX_HEADER (16 * 1024)
#define DEFAULT_MAX_CONNECTIONS 1024
#define DEFAULT_IDLE_TIMEOUT_S 30
#define STOP_WAIT_MS 2000 /* for answered requests to go out at stop */
#define RETRY_AFTER_S "1" /* Retry-After of every 503 */

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

static bool is_hex_n(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
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

static bool valid_utf8(const char *s)
{
    return loom__utf8_valid(s, strlen(s));
}

void loom__http_log(loom_http *h, loom_log_level level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    loom_runtime_log(h->rt, level, "http: %s", line);
}

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

/* ------------------------------------------------------------------------ */
/* Route table                                                               */

/* What discovery said, copied out of the discovery lock. */
typedef struct raw_list {
    raw_route *v;
    size_t n, cap;
    bool oom;
} raw_list;

/* Runs under the discovery lock: copies only. */
static void collect_route(void *user, const char *service, const char *version,
                          const cJSON *service_obj, const cJSON *cmd, bool local)
{
    (void)service_obj;
    (void)local;
    raw_list *l = user;
    const cJSON *http = cJSON_GetObjectItemCaseSensitive(cmd, "http");
    const char *method = loom__http_jstr(http, "method"), *path = loom__http_jstr(http, "path");
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
    const char *name = loom__http_jstr(cmd, "name");
    r->service = strdup(service);
    r->version = strdup(version);
    r->command = name ? strdup(name) : NULL;
    r->method = strdup(method);
    r->path = strdup(path);
    if (!r->service || !r->version || !r->command || !r->method || !r->path) {
        free(r->service);
        free(r->version);
        free(r->command);
        free(r->method);
        free(r->path);
        l->oom = true;
        return;
    }
    l->n++;
}

static void warn_route(void *user, const char *line)
{
    loom__http_log(user, LOOM_LOG_WARN, "%s", line);
}

/* What auth means for the protected routes of t, said at start and again
 * whenever discovery brings more of them than were last counted (a bridge
 * of a split deployment starts with none). */
static void report_auth(loom_http *h, const routes *t, bool at_start)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += !t->v[i].public;
    if (!at_start && n <= atomic_load(&h->auth_reported))
        return;
    atomic_store(&h->auth_reported, n);
    loom__http_auth_report(h, n);
}

/* report: say what auth means when more protected routes appeared. */
static routes *build_routes(loom_http *h, bool report)
{
    unsigned version = loom__routes_version(h->rt);
    raw_list l = {0};
    loom__commands_each(h->rt, collect_route, &l);
    if (l.oom) {
        for (size_t i = 0; i < l.n; i++) {
            free(l.v[i].service);
            free(l.v[i].version);
            free(l.v[i].command);
            free(l.v[i].method);
            free(l.v[i].path);
        }
        free(l.v);
        return NULL;
    }
    routes *t = loom__http_routes_from(h->base, l.v, l.n, warn_route, h);
    free(l.v);
    if (!t)
        return NULL;
    t->version = version;
    for (size_t i = 0; i < t->n; i++) {
        route *r = &t->v[i];
        r->http_series = loom__http_series_http(h, r->method, r->label);
        r->cmd_series = loom__http_series_cmd(h, r->service, r->command);
    }
    if (report)
        report_auth(h, t, false);
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
        routes *fresh = build_routes(h, true);
        if (fresh) {
            pthread_rwlock_wrlock(&h->routes_lock);
            routes *old = h->routes;
            h->routes = fresh;
            pthread_rwlock_unlock(&h->routes_lock);
            loom__http_routes_unref(old);
        }
    }
    pthread_mutex_unlock(&h->build_mu);
    loom__http_routes_unref(t);
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
    if (b->close)
        loom__hs_resp_close(r);
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
            s = loom__http_series_http(h, loom__http_method_names[b->method], "unmatched");
        int64_t took = mono_us() - b->t0;
        loom__http_series_count(s, status);
        loom__http_series_observe(s, took);
        if (h->access_log)
            loom__http_access_log(b, status, took);
        if (b->invoked && b->route)
            loom__http_series_count(b->route->cmd_series, status);
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
    char *text = cJSON_AddStringToObject(o, "traceId", trace) ? loom__json_print(o, NULL) : NULL;
    cJSON_Delete(o);
    return text;
}

/* An error answer; data (may be NULL) is taken over; one optional extra
 * header (hname NULL: none; a 503 then gets Retry-After). */
static loom__hs_action send_error(breq *b, int status, const char *message, cJSON *data,
                                  const char *hname, const char *hvalue)
{
    if (!message || !valid_utf8(message))
        message = reason(status);
    if (status == 503 && !hname) {
        hname = "Retry-After";
        hvalue = RETRY_AFTER_S;
    }
    char *text = error_text(status, message, data, b->trace);
    if (!text && data)
        /* The handler's data cannot be written (broken strings): leave it
         * out. */
        text = error_text(status, message, NULL, b->trace);
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
        loom_err err;
        char *text = loom__json_print(p, &err);
        if (!text && err == LOOM_ENOMEM)
            return send_error(b, 503, "out of memory", NULL, NULL, NULL);
        if (!text) {
            /* The runtime refuses such results; a custom path could not. */
            loom__http_log(b->h, LOOM_LOG_ERROR, "%s %s: the result cannot be written as JSON",
                           b->route->method, b->route->label);
            return send_error(b, 500, "internal server error", NULL, NULL, NULL);
        }
        return send_body(b, 200, "application/json", text, strlen(text), NULL);
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
bool loom__http_parse_traceparent(const char *s, char trace[33], char echo[56])
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

/* Request smuggling guard (RFC 9112, section 6): a request whose body
 * length is ambiguous is refused (status) and its connection closed, so a
 * proxy in front and this server can never disagree on where the next
 * request starts. NULL when the framing is sound. */
static const char *framing_error(breq *b, int *status)
{
    unsigned n_cl = loom__hs_req_header_count(b->hs, "Content-Length");
    unsigned n_te = loom__hs_req_header_count(b->hs, "Transfer-Encoding");
    *status = 400;
    if (loom__hs_req_header_lookalikes(b->hs, "Content-Length") ||
        loom__hs_req_header_lookalikes(b->hs, "Transfer-Encoding"))
        return "a malformed Content-Length or Transfer-Encoding header (folded, or a space "
               "before the colon)";
    if (n_cl && n_te)
        return "the request has both Content-Length and Transfer-Encoding";
    if (n_cl > 1)
        return "the request has more than one Content-Length";
    if (n_te > 1)
        return "the request has more than one Transfer-Encoding";
    if (n_cl) {
        const char *v = header(b, "Content-Length");
        size_t n = v ? strlen(v) : 0;
        if (n == 0 || n > 19 || strspn(v, "0123456789") != n)
            return "the Content-Length is not a decimal number";
    }
    if (n_te) {
        const char *v = header(b, "Transfer-Encoding");
        v = v ? v : "";
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strlen(v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n == 7 && strncasecmp(v, "chunked", 7) == 0)
            return NULL;
        /* A list: chunked anywhere in it (it must be alone) is malformed,
         * any other coding unsupported. */
        for (const char *t = v; t < v + n;) {
            size_t tn = strcspn(t, ",");
            if (tn > (size_t)(v + n - t))
                tn = (size_t)(v + n - t);
            const char *e = t + tn;
            while (t < e && (*t == ' ' || *t == '\t'))
                t++;
            while (e > t && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e - t == 7 && strncasecmp(t, "chunked", 7) == 0)
                return "chunked must be the only transfer coding";
            t += tn + 1;
        }
        *status = 501;
        return "this transfer coding is not supported (only chunked)";
    }
    return NULL;
}

/* What RFC 9112 requires of a request that the engine (run lenient, so
 * that these errors get the bridge's JSON body) leaves to us: header fields
 * within http.max_header (431), field names that are tokens (no space
 * before the colon), exactly one Host in HTTP/1.1 and at most one in 1.0,
 * no Transfer-Encoding in HTTP/1.0 (its framing would be guessed). */
static const char *syntax_error(breq *b, int *status)
{
    bool bad_name = false;
    size_t bytes = loom__hs_req_header_bytes(b->hs, &bad_name) +
                   strlen(loom__hs_req_target(b->hs)) + strlen(loom__hs_req_method(b->hs)) + 16;
    *status = 400;
    if (bytes > b->h->max_header) {
        *status = 431;
        return "the request's header fields are too large";
    }
    if (bad_name)
        return "a header field name is not a token (whitespace before the colon?)";
    bool v11 = strcmp(loom__hs_req_version(b->hs), "HTTP/1.1") == 0;
    unsigned hosts = loom__hs_req_header_count(b->hs, "Host");
    if (hosts > 1)
        return "the request has more than one Host header";
    if (v11 && hosts == 0)
        return "the request has no Host header (required in HTTP/1.1)";
    if (!v11 && loom__hs_req_header_count(b->hs, "Transfer-Encoding"))
        return "Transfer-Encoding is not allowed in HTTP/1.0";
    return NULL;
}

/* The path of an absolute-form target ("http://host/p?q" -> "/p?q", or
 * "/" alone), which RFC 9112 3.2.2 says a server must accept; NULL when the
 * target is neither that nor an origin-form path. */
static const char *origin_form(const char *target)
{
    if (target[0] == '/')
        return target;
    size_t skip = strncasecmp(target, "http://", 7) == 0    ? 7
                  : strncasecmp(target, "https://", 8) == 0 ? 8
                                                            : 0;
    if (!skip)
        return NULL;
    const char *p = target + skip;
    size_t auth = strcspn(p, "/?#");
    if (auth == 0)
        return NULL;
    return p[auth] == '/' ? p + auth : p[auth] ? NULL : "/";
}

static void read_trace(breq *b)
{
    const char *tp = header(b, "traceparent");
    if (tp && loom__http_parse_traceparent(tp, b->trace, b->traceparent))
        return;
    const char *x = header(b, "x-trace-id");
    if (x && strlen(x) == 32 && is_hex_n(x, 32) && !all_zero(x, 32)) {
        lower_copy(b->trace, x, 32);
        return;
    }
    loom__random_id(b->trace);
}

static bool ieq(const char *a, size_t an, const char *b)
{
    return strlen(b) == an && strncasecmp(a, b, an) == 0;
}

/* application/json or application/...+json; a charset, when given, must be
 * UTF-8. */
bool loom__http_json_content_type(const char *ct)
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

/* ------------------------------------------------------------------------ */
/* Built-in endpoints                                                        */

static loom__hs_action serve_metrics(breq *b);
static loom__hs_action serve_document(breq *b, cJSON *doc);

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
    loom__http_routes_unref(t);
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

static loom__hs_action send_auth_error(breq *b, int st)
{
    if (st == 401)
        return send_error(b, 401, "authentication required", NULL, "WWW-Authenticate",
                          "Bearer realm=\"loom\"");
    return send_error(b, st, st == 503 ? "out of memory" : "authentication failed", NULL, NULL,
                      NULL);
}

static loom__hs_action serve_builtin(breq *b, const char *which)
{
    loom_http *h = b->h;
    b->series = loom__http_series_http(h, loom__http_method_names[b->method], which);
    if (b->method == M_OPTIONS)
        return serve_options(b, "GET, HEAD");
    if (b->method != M_GET && b->method != M_HEAD)
        return send_error(b, 405, "method not allowed", NULL, "Allow", "GET, HEAD");
    bool is_metrics = strcmp(which, "/metrics") == 0;
    bool is_docs = strcmp(which, h->openapi_path) == 0 || strcmp(which, h->asyncapi_path) == 0;
    if ((is_metrics && h->protect_metrics) || (is_docs && h->protect_docs)) {
        int st = loom__http_authenticate(b);
        if (st)
            return send_auth_error(b, st);
    }
    if (strcmp(which, "/healthz") == 0)
        return send_static_json(b, 200, "{\"status\":\"ok\"}");
    if (strcmp(which, "/readyz") == 0)
        return serve_readyz(b);
    if (strcmp(which, "/metrics") == 0)
        return serve_metrics(b);
    return serve_document(b, strcmp(which, h->openapi_path) == 0 ? loom__http_openapi_doc(h)
                                                                 : loom__http_asyncapi_doc(h));
}

static loom__hs_action serve_metrics(breq *b)
{
    char *text = loom__http_metrics_text(b->h);
    if (!text)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    return send_body(b, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
}

/* Takes doc (NULL: ENOMEM). */
static loom__hs_action serve_document(breq *b, cJSON *doc)
{
    loom_err err = LOOM_ENOMEM;
    char *text = doc ? loom__json_print(doc, &err) : NULL;
    cJSON_Delete(doc);
    if (!text && err == LOOM_ENOMEM)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    if (!text)
        return send_error(b, 500, "an announced schema is not valid UTF-8", NULL, NULL, NULL);
    return send_body(b, 200, "application/json", text, strlen(text), NULL);
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

    /* 0: the runtime picks the command's own timeout (announced, for a
     * remote one) or its default; http.request_timeout_ms caps that. */
    uint32_t timeout = 0;
    if (h->request_timeout_ms) {
        uint32_t own = r->timeout_ms ? r->timeout_ms : h->rt->default_timeout_ms;
        timeout = own < h->request_timeout_ms ? own : h->request_timeout_ms;
    }
    loom_call call =
        LOOM_CALL_INIT(.service = r->service, .version = r->version, .command = r->command,
                       .payload = payload, .parameter = b->params, .timeout_ms = timeout,
                       .trace_id = b->trace, .principal_id = b->principal, .tenant_id = b->tenant,
                       .run_inline = h->run_inline,
                       .reply_inline = true); /* on_reply only resumes the connection */
    b->invoked = true;
    atomic_fetch_add(&b->refs, 1); /* for on_reply */
    /* Without http.inline the handler must not run on this thread. */
    loom_err err = loom__invoke(h->rt, NULL, &call, on_reply, b,
                                h->run_inline ? LOOM__RUN_INLINE : LOOM__RUN_POOL);
    if (err != LOOM_OK) {
        atomic_fetch_sub(&b->refs, 1); /* on_reply will not run */
        cJSON_Delete(payload);
        if (err == LOOM_EINVAL) {
            loom__http_log(h, LOOM_LOG_ERROR, "%s %s: the runtime refused the call to %s.%s",
                           r->method, r->label, r->service, r->command);
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
    b->method = loom__http_method_index(loom__hs_req_method(hs));
    b->inflight = true;
    atomic_fetch_add(&h->in_flight, 1);
    loom__hs_req_set_user(hs, b);
    read_trace(b);
    b->cors_origin = loom__http_cors_allow(h, header(b, "Origin"));
    int fst;
    const char *framing = framing_error(b, &fst);
    if (!framing)
        framing = syntax_error(b, &fst);
    if (framing) {
        b->close = true;
        return send_error(b, fst, framing, NULL, NULL, NULL);
    }

    const char *target = origin_form(loom__hs_req_target(hs));
    if (!target)
        return send_error(b, 400, "the request target must be an absolute path or URL", NULL, NULL,
                          NULL);
    size_t plen = strcspn(target, "?#");
    if (!(b->path = strndup(target, plen)))
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    b->query = target[plen] == '?' ? target + plen + 1 : NULL;
    if (atomic_load(&h->stopping))
        return send_error(b, 503, "the HTTP bridge is stopping", NULL, NULL, NULL);

    if (strcmp(b->path, "/healthz") == 0 || strcmp(b->path, "/readyz") == 0 ||
        strcmp(b->path, "/metrics") == 0 || strcmp(b->path, h->openapi_path) == 0 ||
        strcmp(b->path, h->asyncapi_path) == 0)
        return serve_builtin(b, b->path);

    b->table = routes_acquire(h);
    pathsegs ps;
    int rc = loom__http_split_path(b->path, &ps);
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
        r = loom__http_match(b->table, &ps, b->method, allow, sizeof allow, &pm);
    if (!r) {
        loom__http_pathsegs_fini(&ps);
        if (!pm)
            return send_error(b, 404, "no route matches the request", NULL, NULL, NULL);
        b->series = loom__http_series_http(h, loom__http_method_names[b->method], pm->label);
        if (b->method == M_OPTIONS)
            return serve_options(b, allow);
        return send_error(b, 405, "method not allowed", NULL, "Allow", allow);
    }
    b->route = r;
    b->series = r->http_series;

    if (!r->public) {
        int st = loom__http_authenticate(b);
        if (st) {
            loom__http_pathsegs_fini(&ps);
            return send_auth_error(b, st);
        }
    }

    b->params = cJSON_CreateObject();
    bool ok = b->params != NULL;
    for (size_t i = 0; ok && i < r->nseg; i++)
        if (r->segs[i].param)
            ok = cJSON_AddStringToObject(b->params, r->segs[i].text, ps.v[i]) != NULL;
    loom__http_pathsegs_fini(&ps);
    if (!ok)
        return send_error(b, 503, "out of memory", NULL, NULL, NULL);
    bool bad = false;
    if (b->query && !loom__http_add_query(b->params, b->query, &bad)) {
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
        if (!ct || !loom__http_json_content_type(ct))
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
        char why[128];
        size_t pos;
        loom_err err =
            loom__json_parse(body, len, LOOM_MAX_NESTING, &payload, why, sizeof why, &pos);
        if (err == LOOM_ENOMEM)
            return send_error(b, 503, "out of memory", NULL, NULL, NULL);
        if (err) {
            cJSON *data = pos < len ? data_number("position", (double)pos) : cJSON_CreateObject();
            if (data && !cJSON_AddStringToObject(data, "reason", why)) {
                cJSON_Delete(data); /* the 400 goes out without its details */
                data = NULL;
            }
            return send_error(b, 400, "the body is not valid JSON", data, NULL, NULL);
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
    loom__http_routes_unref(b->table);
    b->table = NULL;
    b->route = NULL;
    breq_unref(b);
}

static void on_server_log(void *user, const char *line)
{
    loom__http_log(user, LOOM_LOG_DEBUG, "%s", line);
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
    /* Inline by default when every command is in this process (memory:):
     * a handler blocking on a remote call would otherwise hold an HTTP
     * thread. */
    h->run_inline =
        loom__config_bool(cfg, "http.inline", (rt->ops->caps & LOOM_CAP_IN_PROCESS) != 0);
    h->slots = calloc(SERIES_SLOTS, sizeof *h->slots);
    if (!h->listen || !h->base || !h->slots)
        goto fail;
    if (!(h->openapi_path = loom__asprintf("%s/openapi.json", h->base)) ||
        !(h->asyncapi_path = loom__asprintf("%s/asyncapi.json", h->base)))
        goto fail;
    seg tmp[MAX_SEGMENTS];
    size_t n = 0;
    const char *why = NULL;
    if (h->base[0] && !loom__http_parse_template(h->base, false, tmp, &n, &why)) {
        for (size_t i = 0; i < n; i++)
            free(tmp[i].text);
        loom__http_log(h, LOOM_LOG_ERROR, "http.base: '%.200s' %s", h->base, why);
        err = LOOM_ECONFIG;
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(tmp[i].text);
    if ((err = loom__http_auth_load(h, cfg)) != LOOM_OK)
        goto fail;
    h->access_log = loom__config_bool(cfg, "http.access_log", true);
    if ((err = loom__http_openapi_load(h, cfg)) != LOOM_OK)
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
    routes *t = build_routes(h, false);
    if (!t) {
        pthread_mutex_unlock(&h->life_mu);
        return LOOM_ENOMEM;
    }
    pthread_rwlock_wrlock(&h->routes_lock);
    routes *old = h->routes;
    h->routes = t;
    pthread_rwlock_unlock(&h->routes_lock);
    loom__http_routes_unref(old);
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
        loom__http_log(h, LOOM_LOG_ERROR, "cannot start on %s: %s", h->listen, why);
        pthread_mutex_unlock(&h->life_mu);
        return err == LOOM_ENOMEM ? err : LOOM_EIO;
    }
    atomic_store(&h->port, loom__hs_port(h->srv));
    loom__http_log(h, LOOM_LOG_INFO, "listening on %s (port %d), %zu route(s) under %s/v*, auth %s",
                   h->listen, atomic_load(&h->port), t->n, h->base,
                   loom__http_auth_on(h) ? "on"
                   : h->auth_required ? "required (none configured)"
                                      : "off");
    report_auth(h, t, true);
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
    loom__http_log(h, LOOM_LOG_INFO, "stopped");
    pthread_mutex_unlock(&h->life_mu);
    return LOOM_OK;
}

void loom_http_destroy(loom_http *h)
{
    if (!h)
        return;
    loom_http_stop(h);
    loom__http_routes_unref(h->routes);
    loom__http_series_free_all(h);
    free(h->slots);
    loom__http_auth_fini(h);
    loom__http_openapi_fini(h);
    free(h->openapi_path);
    free(h->asyncapi_path);
    free(h->base);
    free(h->listen);
    pthread_mutex_destroy(&h->life_mu);
    pthread_rwlock_destroy(&h->routes_lock);
    pthread_mutex_destroy(&h->build_mu);
    pthread_mutex_destroy(&h->wait_mu);
    free(h);
}
