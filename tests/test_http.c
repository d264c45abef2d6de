/* The HTTP bridge over real sockets: libcurl for ordinary requests, raw
 * sockets for the malformed and malicious ones. Every bridge listens on
 * 127.0.0.1 with an ephemeral port (loom_http_port); every runtime uses its
 * own named in-memory bus. Every wait is bounded. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support/support.h"

#include "http/server.h"
#include "loom/http.h"

/* ------------------------------------------------------------------------ */
/* Time                                                                      */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* ------------------------------------------------------------------------ */
/* Deferred answers: a thread that answers contexts when they are due        */

typedef struct delayed {
    loom_ctx *ctx;
    int64_t due;
    struct delayed *next;
} delayed;

static pthread_mutex_t delay_mu = PTHREAD_MUTEX_INITIALIZER;
static delayed *delay_queue;
static atomic_bool delay_stop;
static pthread_t delay_thread;

static void *delayer(void *arg)
{
    (void)arg;
    while (!atomic_load(&delay_stop)) {
        delayed *due = NULL;
        pthread_mutex_lock(&delay_mu);
        int64_t now = now_ms();
        for (delayed **pp = &delay_queue; *pp;) {
            if ((*pp)->due <= now) {
                delayed *d = *pp;
                *pp = d->next;
                d->next = due;
                due = d;
            } else {
                pp = &(*pp)->next;
            }
        }
        pthread_mutex_unlock(&delay_mu);
        while (due) {
            delayed *d = due;
            due = d->next;
            cJSON *r = cJSON_CreateObject();
            cJSON_AddBoolToObject(r, "delayed", true);
            if (loom_ctx_reply(d->ctx, r) != LOOM_OK)
                cJSON_Delete(r);
            free(d);
        }
        sleep_ms(2);
    }
    return NULL;
}

static void answer_later(loom_ctx *ctx, int ms)
{
    delayed *d = calloc(1, sizeof *d);
    assert_non_null(d);
    assert_int_equal(loom_ctx_defer(ctx), LOOM_OK);
    d->ctx = ctx;
    d->due = now_ms() + ms;
    pthread_mutex_lock(&delay_mu);
    d->next = delay_queue;
    delay_queue = d;
    pthread_mutex_unlock(&delay_mu);
}

/* Contexts held until a test answers them. */
static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static loom_ctx *held[64];
static atomic_int n_held;

/* ------------------------------------------------------------------------ */
/* Test services                                                             */

/* What a handler saw: payload, parameter, principal, tenant and trace. */
static cJSON *seen(loom_ctx *ctx)
{
    const loom_msg *m = loom_ctx_msg(ctx);
    cJSON *o = cJSON_CreateObject();
    const cJSON *p = loom_ctx_payload(ctx), *par = loom_ctx_parameter(ctx);
    cJSON_AddItemToObject(o, "payload", p ? cJSON_Duplicate(p, true) : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "parameter", par ? cJSON_Duplicate(par, true) : cJSON_CreateNull());
    if (loom_msg_principal_id(m))
        cJSON_AddStringToObject(o, "principal", loom_msg_principal_id(m));
    if (loom_msg_tenant_id(m))
        cJSON_AddStringToObject(o, "tenant", loom_msg_tenant_id(m));
    cJSON_AddStringToObject(o, "traceId", loom_msg_trace_id(m) ? loom_msg_trace_id(m) : "");
    return o;
}

static const char *param(loom_ctx *ctx, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(loom_ctx_parameter(ctx), key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void h_echo(loom_ctx *ctx, void *u)
{
    (void)u;
    loom_ctx_reply(ctx, seen(ctx));
}

static void h_stats(loom_ctx *ctx, void *u)
{
    (void)u;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "stats", true);
    loom_ctx_reply(ctx, r);
}

static void h_missing(loom_ctx *ctx, void *u)
{
    (void)u;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "id", param(ctx, "id") ? param(ctx, "id") : "?");
    loom_ctx_fail(ctx, 404, "no such thing", d);
}

static void h_conflict(loom_ctx *ctx, void *u)
{
    (void)u;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "reason", "taken");
    loom_ctx_fail(ctx, 409, "already exists", d);
}

static void h_remove(loom_ctx *ctx, void *u)
{
    (void)u;
    loom_ctx_reply(ctx, NULL);
}

static void h_slow(loom_ctx *ctx, void *u)
{
    (void)u;
    const char *ms = param(ctx, "ms");
    answer_later(ctx, ms ? atoi(ms) : 100);
}

static void h_sleepy(loom_ctx *ctx, void *u)
{
    (void)u;
    sleep_ms(700);
    loom_ctx_reply(ctx, cJSON_CreateObject());
}

static void h_open(loom_ctx *ctx, void *u)
{
    (void)u;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "public", true);
    loom_ctx_reply(ctx, r);
}

static void h_hold(loom_ctx *ctx, void *u)
{
    (void)u;
    assert_int_equal(loom_ctx_defer(ctx), LOOM_OK);
    pthread_mutex_lock(&held_mu);
    int i = atomic_load(&n_held);
    if (i < 64) {
        held[i] = ctx;
        atomic_store(&n_held, i + 1);
    }
    pthread_mutex_unlock(&held_mu);
}

static void h_crash(loom_ctx *ctx, void *u)
{
    (void)ctx;
    (void)u;
}

static void h_badutf8(loom_ctx *ctx, void *u)
{
    (void)u;
    loom_ctx_reply(ctx, cJSON_CreateString("\xff\xfe"));
}

static void h_dup(loom_ctx *ctx, void *u)
{
    (void)u;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "dup", true);
    loom_ctx_reply(ctx, r);
}

#define ECHO_PAYLOAD_SCHEMA                                                                        \
    "{\"type\":\"object\",\"properties\":{\"msg\":{\"type\":\"string\"}},\"required\":[\"msg\"]}"

LOOM_COMMAND(c_echo, .name = "echo", .description = "Echoes what it got", .handler = h_echo,
             .payload_schema = ECHO_PAYLOAD_SCHEMA,
             .parameter_schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":"
                                 "\"string\"},\"q\":{\"type\":\"string\"}},\"required\":["
                                 "\"name\"]}",
             .output_schema = "{\"type\":\"object\"}", .http_method = "POST",
             .http_path = "/echo/:name", .success_event = "echoed");
LOOM_COMMAND(c_inspect, .name = "inspect", .handler = h_echo, .http_method = "GET",
             .http_path = "/items/:id");
LOOM_COMMAND(c_stats, .name = "stats", .handler = h_stats, .http_method = "GET",
             .http_path = "/items/stats");
#define MISSING_DATA_SCHEMA "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\"}}}"
LOOM_COMMAND(c_missing, .name = "missing", .handler = h_missing, .http_method = "GET",
             .http_path = "/missing/:id",
             .errors = LOOM_ERRORS({404, "No such thing", MISSING_DATA_SCHEMA},
                                   {503, "The things are being counted"}));
LOOM_COMMAND(c_conflict, .name = "conflict", .handler = h_conflict, .http_method = "PUT",
             .http_path = "/items/:id");
LOOM_COMMAND(c_remove, .name = "remove", .handler = h_remove, .http_method = "DELETE",
             .http_path = "/items/:id");
LOOM_COMMAND(c_slow, .name = "slow", .handler = h_slow, .http_method = "GET", .http_path = "/slow");
LOOM_COMMAND(c_sleepy, .name = "sleepy", .handler = h_sleepy, .http_method = "GET",
             .http_path = "/sleepy", .timeout_ms = 250);
LOOM_COMMAND(c_open, .name = "open", .handler = h_open, .http_method = "GET", .http_path = "/open",
             .http_public = true);
LOOM_COMMAND(c_hold, .name = "hold", .handler = h_hold, .http_method = "GET", .http_path = "/hold");
LOOM_COMMAND(c_crash, .name = "crash", .handler = h_crash, .http_method = "POST",
             .http_path = "/crash");
LOOM_COMMAND(c_badutf8, .name = "badutf8", .handler = h_badutf8, .http_method = "GET",
             .http_path = "/badutf8");
LOOM_COMMAND(c_nohttp, .name = "nohttp", .handler = h_echo);
LOOM_SERVICE(svc_t, .name = "t", .version = "1", .description = "Test service",
             .commands = LOOM_COMMANDS(&c_echo, &c_inspect, &c_stats, &c_missing, &c_conflict,
                                       &c_remove, &c_slow, &c_sleepy, &c_open, &c_hold, &c_crash,
                                       &c_badutf8, &c_nohttp));

LOOM_COMMAND(c_inspect2, .name = "inspect", .handler = h_stats, .http_method = "GET",
             .http_path = "/items/:id");
LOOM_SERVICE(svc_t2, .name = "t", .version = "2", .commands = LOOM_COMMANDS(&c_inspect2));

/* Same method and path as t.echo: the first one announced keeps it. */
LOOM_COMMAND(c_dup, .name = "dup", .handler = h_dup, .http_method = "POST",
             .http_path = "/echo/:name");
LOOM_SERVICE(svc_dup, .name = "dup", .version = "1", .commands = LOOM_COMMANDS(&c_dup));

static const loom_service_def *const all_services[] = {&svc_t, &svc_t2, &svc_dup, NULL};

/* Shared schemas: the command's payload schema $refs "address" by its $id
 * and its $anchor, and "format" is asserted. */
#define ADDRESS_SCHEMA                                                                             \
    "{\"$id\":\"address\",\"type\":\"object\",\"required\":[\"zip\"],\"properties\":{\"zip\":{"    \
    "\"$ref\":\"#/$defs/zip\"}},\"$defs\":{\"zip\":{\"$anchor\":\"zip\",\"type\":\"string\","      \
    "\"pattern\":\"^[0-9]{5}$\"}}}"
LOOM_COMMAND(
    c_order, .name = "order", .handler = h_echo, .http_method = "POST", .http_path = "/orders",
    .payload_schema = "{\"type\":\"object\",\"required\":[\"to\",\"when\"],\"properties\":{\"to\":{"
                      "\"$ref\":\"address\"},\"when\":{\"type\":\"string\",\"format\":\"date\"},"
                      "\"zips\":{\"type\":\"array\",\"items\":{\"$ref\":\"address#zip\"},"
                      "\"uniqueItems\":true}},\"unevaluatedProperties\":false,\"$comment\":\"c\"}");
LOOM_SERVICE(svc_shop, .name = "shop", .version = "1", .commands = LOOM_COMMANDS(&c_order),
             .schemas = (const char *const[]){ADDRESS_SCHEMA, NULL}, .assert_formats = true);
static const loom_service_def *const shop_services[] = {&svc_shop, NULL};

/* Refused at registration: a $ref to nothing, a shared schema without
 * "$id", a bad shared schema. */
LOOM_COMMAND(c_dangling, .name = "d", .handler = h_echo, .payload_schema = "{\"$ref\":\"nope\"}");
LOOM_SERVICE(svc_dangling, .name = "d", .version = "1", .commands = LOOM_COMMANDS(&c_dangling));
LOOM_SERVICE(svc_noid, .name = "n", .version = "1",
             .schemas = (const char *const[]){"{\"type\":\"object\"}", NULL});
LOOM_SERVICE(svc_badshared, .name = "b", .version = "1",
             .schemas = (const char *const[]){"{\"$id\":\"b\",\"minimum\":\"x\"}", NULL});

/* Refused at registration: bad error declarations. */
LOOM_COMMAND(c_err_status, .name = "e", .handler = h_echo, .errors = LOOM_ERRORS({399, "low"}));
LOOM_COMMAND(c_err_desc, .name = "e", .handler = h_echo, .errors = LOOM_ERRORS({404, ""}));
LOOM_COMMAND(c_err_dup, .name = "e", .handler = h_echo,
             .errors = LOOM_ERRORS({404, "a"}, {404, "b"}));
LOOM_COMMAND(c_err_schema, .name = "e", .handler = h_echo,
             .errors = LOOM_ERRORS({404, "a", "{\"minimum\":\"x\"}"}));
LOOM_SERVICE(svc_err_status, .name = "e", .version = "1", .commands = LOOM_COMMANDS(&c_err_status));
LOOM_SERVICE(svc_err_desc, .name = "e", .version = "1", .commands = LOOM_COMMANDS(&c_err_desc));
LOOM_SERVICE(svc_err_dup, .name = "e", .version = "1", .commands = LOOM_COMMANDS(&c_err_dup));
LOOM_SERVICE(svc_err_schema, .name = "e", .version = "1", .commands = LOOM_COMMANDS(&c_err_schema));

/* The services fx_new registers. */
static const loom_service_def *const *fx_services = all_services;

/* ------------------------------------------------------------------------ */
/* Runtimes and bridges                                                      */

static atomic_int log_warnings;
static atomic_int auth_off_warnings, auth_missing_warnings;

static void test_log(const loom_log_record *rec, void *user)
{
    (void)user;
    if (rec->level >= LOOM_LOG_WARN)
        atomic_fetch_add(&log_warnings, 1);
    if (rec->level == LOOM_LOG_WARN && strstr(rec->message, "served to anyone"))
        atomic_fetch_add(&auth_off_warnings, 1);
    if (rec->level == LOOM_LOG_WARN && strstr(rec->message, "protected route(s) answer 401"))
        atomic_fetch_add(&auth_missing_warnings, 1);
    if (getenv("LOOM_TEST_VERBOSE"))
        fprintf(stderr, "[log %d] %s\n", (int)rec->level, rec->message);
}

static void unique_bus(char *out, size_t n)
{
    static atomic_int counter;
    snprintf(out, n, "memory:httptest-%d-%d", (int)getpid(), atomic_fetch_add(&counter, 1));
}

static loom_runtime *new_runtime(const char *bus, const loom_service_def *const *svcs,
                                 unsigned workers)
{
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.broker_url = bus, .workers = workers, .log_level = LOOM_LOG_WARN,
                                 .log_fn = test_log);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    for (; svcs && *svcs; svcs++)
        assert_int_equal(loom_runtime_add_service(rt, *svcs, NULL), LOOM_OK);
    return rt;
}

typedef struct fx {
    loom_runtime *rt;
    loom_config *cfg;
    loom_http *h;
    int port;
} fx;

/* A runtime with the test services and a started bridge. settings are
 * key, value pairs for loom_config_set, NULL-terminated (may be NULL).
 * secure: keep the bridge's default (protected routes need auth); else
 * http.auth.required is false unless settings say otherwise, so that the
 * tests of other features can call protected routes without a token. */
static fx *fx_new_opts(const char *const *settings, loom_http_auth_fn hook, void *hook_user,
                       bool secure)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    char bus[64];
    unique_bus(bus, sizeof bus);
    f->rt = new_runtime(bus, fx_services, 4);
    assert_int_equal(loom_runtime_start(f->rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(f->rt, 5000), LOOM_OK);
    assert_int_equal(loom_config_create(&f->cfg), LOOM_OK);
    if (!secure)
        assert_int_equal(loom_config_set(f->cfg, "http.auth.required", "false"), LOOM_OK);
    for (; settings && settings[0]; settings += 2)
        if (loom_config_set(f->cfg, settings[0], settings[1]) != LOOM_OK)
            fail_msg("config %s=%s: %s", settings[0], settings[1], loom_config_error(f->cfg));
    assert_int_equal(loom_http_create(&f->h, f->rt, f->cfg), LOOM_OK);
    if (hook)
        assert_int_equal(loom_http_set_auth(f->h, hook, hook_user), LOOM_OK);
    assert_int_equal(loom_http_start(f->h), LOOM_OK);
    f->port = loom_http_port(f->h);
    assert_true(f->port > 0);
    return f;
}

static fx *fx_new(const char *const *settings, loom_http_auth_fn hook, void *hook_user)
{
    return fx_new_opts(settings, hook, hook_user, false);
}

static void fx_free(fx *f)
{
    loom_http_destroy(f->h);
    loom_runtime_destroy(f->rt);
    loom_config_destroy(f->cfg);
    free(f);
}

/* ------------------------------------------------------------------------ */
/* An HTTP client (libcurl)                                                  */

typedef struct resp {
    CURLcode rc;
    long status;
    char *body;
    size_t len;
    char *hdrs; /* the last response's header block */
    size_t hlen;
    cJSON *json; /* the body, parsed, or NULL */
} resp;

static size_t grow_append(char **buf, size_t *len, const char *p, size_t n)
{
    char *b = realloc(*buf, *len + n + 1);
    if (!b)
        return 0;
    memcpy(b + *len, p, n);
    *len += n;
    b[*len] = '\0';
    *buf = b;
    return n;
}

static size_t on_body(char *p, size_t sz, size_t n, void *u)
{
    resp *r = u;
    return grow_append(&r->body, &r->len, p, sz * n);
}

static size_t on_header(char *p, size_t sz, size_t n, void *u)
{
    resp *r = u;
    if (sz * n >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new response (after 100) */
        free(r->hdrs);
        r->hdrs = NULL;
        r->hlen = 0;
    }
    return grow_append(&r->hdrs, &r->hlen, p, sz * n);
}

static void resp_free(resp *r)
{
    free(r->body);
    free(r->hdrs);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

static void curl_setup(CURL *c, resp *r, int port, const char *method, const char *path,
                       const char *body, size_t body_len, struct curl_slist *sl)
{
    char url[4096];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(c, CURLOPT_COPYPOSTFIELDS, body);
    }
    if (method && strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (method)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (sl)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, sl);
}

/* One request. headers: NULL-terminated "Name: value" strings, or NULL. */
static resp request_n(int port, const char *method, const char *path, const char *body,
                      size_t body_len, const char *const *headers)
{
    resp r = {0};
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *sl = NULL;
    for (; headers && *headers; headers++)
        sl = curl_slist_append(sl, *headers);
    curl_setup(c, &r, port, method, path, body, body_len, sl);
    r.rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(sl);
    if (r.len)
        r.json = cJSON_ParseWithLength(r.body, r.len);
    return r;
}

static resp request(fx *f, const char *method, const char *path, const char *body,
                    const char *const *headers)
{
    return request_n(f->port, method, path, body, body ? strlen(body) : 0, headers);
}

static resp get(fx *f, const char *path)
{
    return request(f, NULL, path, NULL, NULL);
}

static resp post_json(fx *f, const char *path, const char *json)
{
    const char *h[] = {"Content-Type: application/json", NULL};
    return request(f, "POST", path, json, h);
}

/* A response header's value (copied into out), or NULL. */
static const char *hdr(const resp *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = r->hdrs; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = ll - (size_t)(v - p);
            if (vl >= n)
                vl = n - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return out;
        }
        p = eol ? eol + 2 : p + ll;
    }
    return NULL;
}

static const char *jstr(const cJSON *o, const char *path_a, const char *path_b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, path_a);
    if (path_b)
        v = cJSON_GetObjectItemCaseSensitive(v, path_b);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        v = cJSON_GetObjectItemCaseSensitive(v, b);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static bool is_hex32(const char *s)
{
    if (!s || strlen(s) != 32)
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return false;
    return true;
}

/* The status, and for errors the shape {status, message, traceId} with the
 * traceId of the x-trace-id header. */
#define expect_status(r, status) expect_status_at((r), (status), __LINE__)
static void expect_status_at(const resp *r, long status, int line)
{
    if (r->rc != CURLE_OK)
        fail_msg("line %d: curl: %s", line, curl_easy_strerror(r->rc));
    if (r->status != status)
        fail_msg("line %d: status %ld, want %ld; body: %s", line, r->status, status,
                 r->body ? r->body : "");
    char trace[64];
    assert_non_null(hdr(r, "x-trace-id", trace, sizeof trace));
    assert_true(is_hex32(trace));
    if (status >= 400) {
        assert_non_null(r->json);
        assert_int_equal((long)jnum(r->json, "status", NULL), status);
        assert_non_null(jstr(r->json, "message", NULL));
        assert_string_equal(jstr(r->json, "traceId", NULL), trace);
        char ct[128];
        assert_non_null(hdr(r, "Content-Type", ct, sizeof ct));
        assert_string_equal(ct, "application/json");
    }
}

/* Parallel requests with curl multi; statuses[i] gets each status (0 when
 * the transfer failed). */
static void parallel_get(int port, const char *path, int n, long *statuses)
{
    CURLM *m = curl_multi_init();
    CURL *easy[64];
    resp rs[64];
    assert_true(n <= 64);
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < n; i++) {
        easy[i] = curl_easy_init();
        curl_setup(easy[i], &rs[i], port, NULL, path, NULL, 0, NULL);
        curl_multi_add_handle(m, easy[i]);
    }
    int running = n;
    int64_t deadline = now_ms() + 20000;
    while (running > 0 && now_ms() < deadline) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    for (int i = 0; i < n; i++) {
        statuses[i] = 0;
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &statuses[i]);
        curl_multi_remove_handle(m, easy[i]);
        curl_easy_cleanup(easy[i]);
        resp_free(&rs[i]);
    }
    curl_multi_cleanup(m);
}

/* The value of one metric line (its full name with labels), 0 if absent. */
static double metric(fx *f, const char *series)
{
    resp r = get(f, "/metrics");
    assert_int_equal(r.status, 200);
    double v = 0;
    size_t n = strlen(series);
    for (const char *p = r.body; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    resp_free(&r);
    return v;
}

/* ------------------------------------------------------------------------ */
/* Raw sockets                                                               */

static int raw_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* False when the peer closed or reset (which some tests expect). */
static bool raw_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Reads until the peer closes, buf is full, stop(buf) is true or timeout_ms
 * passes. *closed tells whether the peer closed (or reset). */
static size_t raw_recv(int fd, char *buf, size_t cap, int timeout_ms, bool *closed,
                       bool (*stop)(const char *buf, size_t len, int want), int want)
{
    size_t len = 0;
    int64_t deadline = now_ms() + timeout_ms;
    *closed = false;
    buf[0] = '\0';
    while (len + 1 < cap) {
        if (stop && stop(buf, len, want))
            break;
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, left);
        if (pr <= 0)
            continue;
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            *closed = true;
            break;
        }
        len += (size_t)n;
        buf[len] = '\0';
    }
    return len;
}

/* Counts complete responses (headers + Content-Length body) in buf. */
static int count_responses(const char *buf, size_t len, const char **starts, int max)
{
    int count = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *end = memmem(buf + pos, len - pos, "\r\n\r\n", 4);
        if (!end)
            break;
        size_t hend = (size_t)(end - buf) + 4;
        size_t cl = 0;
        for (const char *p = buf + pos; p < end;) {
            const char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
            if (!eol)
                break;
            if (strncasecmp(p, "Content-Length:", 15) == 0)
                cl = (size_t)strtoul(p + 15, NULL, 10);
            p = eol + 2;
        }
        if (hend + cl > len)
            break;
        if (starts && count < max)
            starts[count] = buf + pos;
        count++;
        pos = hend + cl;
    }
    return count;
}

static bool have_responses(const char *buf, size_t len, int want)
{
    return count_responses(buf, len, NULL, 0) >= want;
}

static void expect_healthy(fx *f)
{
    resp r = get(f, "/healthz");
    expect_status(&r, 200);
    assert_true(t_json_eq(r.json, "{\"status\":\"ok\"}"));
    resp_free(&r);
}

/* ------------------------------------------------------------------------ */
/* Built-in endpoints and basic routing                                      */

static void test_builtins(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    expect_healthy(f);

    resp r = get(f, "/readyz");
    expect_status(&r, 200);
    assert_string_equal(jstr(r.json, "status", NULL), "ready");
    assert_true(jnum(r.json, "routes", NULL) >= 12);
    resp_free(&r);

    r = request(f, "POST", "/healthz", NULL, NULL);
    expect_status(&r, 405);
    char allow[64];
    assert_string_equal(hdr(&r, "Allow", allow, sizeof allow), "GET, HEAD");
    resp_free(&r);

    r = request(f, "HEAD", "/healthz", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    resp_free(&r);

    r = get(f, "/metrics");
    assert_int_equal(r.status, 200);
    char ct[128];
    assert_string_equal(hdr(&r, "Content-Type", ct, sizeof ct),
                        "text/plain; version=0.0.4; charset=utf-8");
    resp_free(&r);
    fx_free(f);
}

static void test_echo_params(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    /* Path values are percent-decoded per segment (%2F stays inside it);
     * query values decode '+' too; a key without '=' is ""; the path wins
     * over the query; repeated keys keep the first value. */
    resp r = post_json(f, "/api/v1/echo/h%C3%A9llo%2Fx?q=a%20b+c&n=1&flag&q=second&name=evil",
                       "{\"msg\":\"hi\"}");
    expect_status(&r, 200);
    assert_true(t_json_eq(cJSON_GetObjectItem(r.json, "payload"), "{\"msg\":\"hi\"}"));
    assert_true(
        t_json_eq(cJSON_GetObjectItem(r.json, "parameter"),
                  "{\"name\":\"h\\u00e9llo/x\",\"q\":\"a b c\",\"n\":\"1\",\"flag\":\"\"}"));
    char ct[128];
    assert_string_equal(hdr(&r, "Content-Type", ct, sizeof ct), "application/json");
    resp_free(&r);

    /* Content-Type parameters and +json types are accepted. */
    const char *h1[] = {"Content-Type: Application/JSON; charset=\"UTF-8\"", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", h1);
    expect_status(&r, 200);
    resp_free(&r);
    const char *h2[] = {"Content-Type: application/merge-patch+json", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", h2);
    expect_status(&r, 200);
    resp_free(&r);

    /* A literal segment beats a parameter; versions are separate routes. */
    r = get(f, "/api/v1/items/stats");
    expect_status(&r, 200);
    assert_true(t_json_eq(r.json, "{\"stats\":true}"));
    resp_free(&r);
    r = get(f, "/api/v1/items/42?x=1");
    expect_status(&r, 200);
    assert_true(t_json_eq(cJSON_GetObjectItem(r.json, "parameter"), "{\"id\":\"42\",\"x\":\"1\"}"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(r.json, "payload")));
    resp_free(&r);
    r = get(f, "/api/v2/items/42");
    expect_status(&r, 200);
    assert_true(t_json_eq(r.json, "{\"stats\":true}"));
    resp_free(&r);

    /* Of two commands with the same route, the first announced serves it. */
    r = post_json(f, "/api/v1/echo/z", "{\"msg\":\"x\"}");
    expect_status(&r, 200);
    assert_non_null(cJSON_GetObjectItem(r.json, "payload"));
    resp_free(&r);

    /* HEAD runs the GET route without a body; OPTIONS lists the methods. */
    r = request(f, "HEAD", "/api/v1/items/1", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    resp_free(&r);
    r = request(f, "OPTIONS", "/api/v1/items/1", NULL, NULL);
    assert_int_equal(r.status, 204);
    char allow[128];
    assert_string_equal(hdr(&r, "Allow", allow, sizeof allow), "GET, HEAD, PUT, DELETE");
    resp_free(&r);
    fx_free(f);
}

/* One 400 detail: path, schemaPath and message. */
static void expect_detail(fx *f, const char *body, const char *path, const char *schema_path,
                          const char *message)
{
    resp r = post_json(f, "/api/v1/orders", body);
    expect_status(&r, 400);
    const cJSON *e =
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "data"), "errors"), 0);
    assert_string_equal(jstr(e, "path", NULL), path);
    assert_string_equal(jstr(e, "schemaPath", NULL), schema_path);
    assert_string_equal(jstr(e, "message", NULL), message);
    resp_free(&r);
}

static void test_shared_schemas(void **state)
{
    (void)state;
    fx_services = shop_services;
    fx *f = fx_new(NULL, NULL, NULL);
    fx_services = all_services;
    /* The documents resolve the $refs: the shared schema is a component of
     * its own (without its $id), references point into the document. */
    const char *docs[] = {"/api/openapi.json", "/api/asyncapi.json"};
    for (int i = 0; i < 2; i++) {
        resp d = get(f, docs[i]);
        expect_status(&d, 200);
        const cJSON *schemas =
            cJSON_GetObjectItem(cJSON_GetObjectItem(d.json, "components"), "schemas");
        const cJSON *addr = cJSON_GetObjectItem(schemas, "shop.v1.address");
        assert_non_null(addr);
        assert_null(cJSON_GetObjectItem(addr, "$id"));
        assert_string_equal(jstr(cJSON_GetObjectItem(addr, "properties"), "zip", "$ref"),
                            "#/components/schemas/shop.v1.address/$defs/zip");
        const cJSON *props = cJSON_GetObjectItem(
            cJSON_GetObjectItem(schemas, "shop.v1.order.payload"), "properties");
        assert_string_equal(jstr(props, "to", "$ref"), "#/components/schemas/shop.v1.address");
        assert_string_equal(jstr(cJSON_GetObjectItem(props, "zips"), "items", "$ref"),
                            "#/components/schemas/shop.v1.address/$defs/zip"); /* the anchor */
        resp_free(&d);
    }
    resp r = post_json(f, "/api/v1/orders",
                       "{\"to\":{\"zip\":\"12345\"},\"when\":\"2026-12-07\",\"zips\":[\"11111\","
                       "\"22222\"]}");
    expect_status(&r, 200);
    resp_free(&r);
    expect_detail(f, "{\"to\":{\"zip\":\"12\"},\"when\":\"2026-12-07\"}", "/to/zip",
                  "address#/$defs/zip/pattern", "must match pattern '^[0-9]{5}$'");
    expect_detail(f, "{\"to\":{\"zip\":\"12345\"},\"when\":\"2026-13-01\"}", "/when",
                  "/properties/when/format", "must be a valid date");
    expect_detail(f, "{\"to\":{\"zip\":\"12345\"},\"when\":\"2026-12-07\",\"x\":1}", "",
                  "/unevaluatedProperties", "property 'x' is not allowed");
    expect_detail(f,
                  "{\"to\":{\"zip\":\"12345\"},\"when\":\"2026-12-07\",\"zips\":[\"11111\","
                  "\"11111\"]}",
                  "/zips", "/properties/zips/uniqueItems",
                  "must not contain duplicates (items 0 and 1 are equal)");
    fx_free(f);

    /* Registration errors. */
    char bus[64];
    unique_bus(bus, sizeof bus);
    loom_runtime *rt = new_runtime(bus, NULL, 1);
    assert_int_equal(loom_runtime_add_service(rt, &svc_dangling, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_noid, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_badshared, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_err_status, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_err_desc, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_err_dup, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_err_schema, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_shop, NULL), LOOM_OK);
    loom_runtime_destroy(rt);
}

static void test_status_mapping(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);

    /* 400: schema validation, with the details. */
    resp r = post_json(f, "/api/v1/echo/a", "{\"msg\":5}");
    expect_status(&r, 400);
    const cJSON *errors = cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "data"), "errors");
    assert_true(cJSON_IsArray(errors) && cJSON_GetArraySize(errors) >= 1);
    assert_non_null(jstr(cJSON_GetArrayItem(errors, 0), "path", NULL));
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "{}");
    expect_status(&r, 400);
    resp_free(&r);
    /* No body at all: the payload schema requires an object. */
    r = request(f, "POST", "/api/v1/echo/a", NULL, NULL);
    expect_status(&r, 400);
    resp_free(&r);

    /* 400: malformed JSON, with the position. */
    r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"x\",}");
    expect_status(&r, 400);
    assert_string_equal(jstr(r.json, "message", NULL), "the body is not valid JSON");
    assert_int_equal((int)jnum(r.json, "data", "position"), 11);
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"x\"} trailing");
    expect_status(&r, 400);
    assert_int_equal((int)jnum(r.json, "data", "position"), 12);
    resp_free(&r);

    /* 404: unknown routes, wrong version, outside the base. */
    const char *nf[] = {"/api/v1/nope",       "/api/v3/items/1", "/other",
                        "/api/v1/items/1/x",  "/api/v1/items/",  "/api/v1//items/1",
                        "/api/openapi.json/x"};
    for (size_t i = 0; i < sizeof nf / sizeof *nf; i++) {
        r = get(f, nf[i]);
        expect_status(&r, 404);
        resp_free(&r);
    }

    /* 405 with Allow. */
    r = get(f, "/api/v1/echo/x");
    expect_status(&r, 405);
    char allow[64];
    assert_string_equal(hdr(&r, "Allow", allow, sizeof allow), "POST");
    resp_free(&r);
    r = request(f, "PATCH", "/api/v1/items/1", "{}", NULL);
    expect_status(&r, 405);
    assert_string_equal(hdr(&r, "Allow", allow, sizeof allow), "GET, HEAD, PUT, DELETE");
    resp_free(&r);

    /* Handler errors keep their status, message and data. */
    r = get(f, "/api/v1/missing/7");
    expect_status(&r, 404);
    assert_string_equal(jstr(r.json, "message", NULL), "no such thing");
    assert_string_equal(jstr(r.json, "data", "id"), "7");
    resp_free(&r);
    const char *json_ct[] = {"Content-Type: application/json", NULL};
    r = request(f, "PUT", "/api/v1/items/7", "{\"a\":1}", json_ct);
    expect_status(&r, 409);
    assert_string_equal(jstr(r.json, "data", "reason"), "taken");
    resp_free(&r);
    r = request(f, "POST", "/api/v1/crash", NULL, NULL);
    expect_status(&r, 500);
    resp_free(&r);
    r = get(f, "/api/v1/badutf8");
    expect_status(&r, 500);
    resp_free(&r);

    /* 204: an empty result. */
    r = request(f, "DELETE", "/api/v1/items/7", NULL, NULL);
    expect_status(&r, 204);
    assert_int_equal(r.len, 0);
    resp_free(&r);

    /* 200 after a deferred answer from another thread. */
    r = get(f, "/api/v1/slow?ms=50");
    expect_status(&r, 200);
    assert_true(t_json_eq(r.json, "{\"delayed\":true}"));
    resp_free(&r);

    /* 504: the command's own timeout (250 ms) passes. */
    int64_t t0 = now_ms();
    r = get(f, "/api/v1/sleepy");
    expect_status(&r, 504);
    assert_true(now_ms() - t0 < 2000);
    resp_free(&r);

    /* 415: a body that is not JSON, or without a Content-Type. */
    const char *text_ct[] = {"Content-Type: text/plain", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", text_ct);
    expect_status(&r, 415);
    resp_free(&r);
    const char *no_ct[] = {"Content-Type:", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", no_ct);
    expect_status(&r, 415);
    resp_free(&r);
    const char *bad_cs[] = {"Content-Type: application/json; charset=latin1", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", bad_cs);
    expect_status(&r, 415);
    resp_free(&r);

    expect_healthy(f);
    fx_free(f);
}

static void test_bad_input(void **state)
{
    (void)state;
    /* Room for more query parameters than the bridge accepts. */
    const char *s[] = {"http.max_header", "65536", NULL};
    fx *f = fx_new(s, NULL, NULL);
    const char *bad_paths[] = {"/api/v1/items/%zz",     "/api/v1/items/%00",
                               "/api/v1/items/%ff",     "/api/v1/items/%4",
                               "/api/v1/items/1?x=%zz", "/api/v1/items/1?x=%00",
                               "/api/v1/items/1?%00=1", "/api/v1/items/1?x=%C0%AF"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof *bad_paths; i++) {
        resp r = get(f, bad_paths[i]);
        if (r.status != 400)
            fail_msg("%s: status %ld", bad_paths[i], r.status);
        expect_status(&r, 400);
        resp_free(&r);
    }
    /* Too many query parameters. */
    char big[4096] = "/api/v1/items/1?";
    for (int i = 0; i < 300; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "k%d&", i);
    resp r = get(f, big);
    expect_status(&r, 400);
    resp_free(&r);

    /* Bodies: a NUL byte, a \u0000 escape, invalid UTF-8, deep nesting. */
    const char *h[] = {"Content-Type: application/json", NULL};
    r = request_n(f->port, "POST", "/api/v1/echo/a", "{\"msg\":\"a\0b\"}", 13, h);
    expect_status(&r, 400);
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"a\\u0000b\"}");
    expect_status(&r, 400);
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"a\\\\u0000b\"}"); /* an escaped backslash */
    expect_status(&r, 200);
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"\xc3\x28\"}");
    expect_status(&r, 400);
    resp_free(&r);
    char deep[512] = "{\"msg\":\"x\",\"d\":";
    for (int i = 0; i < 100; i++)
        strcat(deep, "[");
    for (int i = 0; i < 100; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    r = post_json(f, "/api/v1/echo/a", deep);
    expect_status(&r, 400);
    resp_free(&r);
    r = post_json(f, "/api/v1/echo/a", "   ");
    expect_status(&r, 400);
    resp_free(&r);
    expect_healthy(f);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Timeouts, 503, stop                                                       */

static void test_request_timeout_cap(void **state)
{
    (void)state;
    const char *s[] = {"http.request_timeout_ms", "150", NULL};
    fx *f = fx_new(s, NULL, NULL);
    int64_t t0 = now_ms();
    resp r = get(f, "/api/v1/slow?ms=1500");
    expect_status(&r, 504);
    assert_true(now_ms() - t0 < 1200);
    resp_free(&r);
    r = get(f, "/api/v1/slow?ms=10");
    expect_status(&r, 200);
    resp_free(&r);
    fx_free(f);

    /* A cap above the command's own timeout (250 ms) leaves it alone. On
     * the workers, so the 504 comes at the deadline, from the timer. */
    const char *high[] = {"http.request_timeout_ms", "5000", "http.inline", "false", NULL};
    f = fx_new(high, NULL, NULL);
    t0 = now_ms();
    r = get(f, "/api/v1/sleepy");
    expect_status(&r, 504);
    assert_int_equal((int)jnum(r.json, "data", "timeoutMs"), 250);
    assert_true(now_ms() - t0 < 650);
    resp_free(&r);
    fx_free(f);
}

static void test_runtime_stopped_503(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    assert_int_equal(loom_runtime_stop(f->rt), LOOM_OK);
    resp r = post_json(f, "/api/v1/echo/a", "{\"msg\":\"x\"}");
    expect_status(&r, 503);
    resp_free(&r);
    r = get(f, "/readyz");
    expect_status(&r, 503);
    resp_free(&r);
    expect_healthy(f);
    fx_free(f);
}

typedef struct bg_get {
    int port;
    const char *path;
    int n;
    long statuses[64];
    pthread_t thread;
} bg_get;

static void *bg_get_main(void *arg)
{
    bg_get *g = arg;
    parallel_get(g->port, g->path, g->n, g->statuses);
    return NULL;
}

static void test_stop_answers_suspended(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    atomic_store(&n_held, 0);
    bg_get g = {.port = f->port, .path = "/api/v1/hold", .n = 3};
    assert_int_equal(pthread_create(&g.thread, NULL, bg_get_main, &g), 0);
    int64_t deadline = now_ms() + 5000;
    while (atomic_load(&n_held) < 3 && now_ms() < deadline)
        sleep_ms(5);
    assert_int_equal(atomic_load(&n_held), 3);
    sleep_ms(50); /* let the connections park */

    int64_t t0 = now_ms();
    assert_int_equal(loom_http_stop(f->h), LOOM_OK);
    assert_true(now_ms() - t0 < 3000);
    pthread_join(g.thread, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(g.statuses[i], 503);
    assert_int_equal(loom_http_port(f->h), 0);
    assert_int_equal(loom_http_stop(f->h), LOOM_OK); /* idempotent */

    /* The late answers arrive after the bridge is gone: harmless. */
    loom_http_destroy(f->h);
    f->h = NULL;
    for (int i = 0; i < 3; i++)
        assert_int_equal(loom_ctx_reply(held[i], NULL), LOOM_OK);
    atomic_store(&n_held, 0);
    fx_free(f);
}

static void test_restart(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    assert_int_equal(loom_http_start(f->h), LOOM_ESTATE);
    assert_int_equal(loom_http_stop(f->h), LOOM_OK);
    assert_int_equal(loom_http_start(f->h), LOOM_OK);
    f->port = loom_http_port(f->h);
    assert_true(f->port > 0);
    expect_healthy(f);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Authentication and CORS                                                   */

static void expect_auth(fx *f, const char *header, long status)
{
    const char *h[] = {header, NULL};
    resp r = request(f, NULL, "/api/v1/items/1", NULL, header ? h : NULL);
    expect_status(&r, status);
    if (status == 401) {
        char v[64];
        assert_string_equal(hdr(&r, "WWW-Authenticate", v, sizeof v), "Bearer realm=\"loom\"");
    }
    resp_free(&r);
}

static void test_auth_tokens(void **state)
{
    (void)state;
    const char *s[] = {"http.auth.tokens", "s3cret, other", "http.auth.api_key_header", "X-API-Key",
                       NULL};
    fx *f = fx_new(s, NULL, NULL);
    expect_auth(f, NULL, 401);
    expect_auth(f, "Authorization: Bearer wrong", 401);
    expect_auth(f, "Authorization: Bearer s3cre", 401);
    expect_auth(f, "Authorization: Bearer s3cretX", 401);
    expect_auth(f, "Authorization: Basic czNjcmV0", 401);
    expect_auth(f, "X-API-Key: nope", 401);
    expect_auth(f, "Authorization: Bearer s3cret", 200);
    expect_auth(f, "Authorization: bearer   other", 200);
    expect_auth(f, "X-API-Key: s3cret", 200);

    /* Public commands and the built-ins need nothing. */
    resp r = get(f, "/api/v1/open");
    expect_status(&r, 200);
    resp_free(&r);
    const char *open[] = {"/healthz", "/readyz", "/metrics", "/api/openapi.json"};
    for (int i = 0; i < 4; i++) {
        r = get(f, open[i]);
        assert_int_equal(r.status, 200);
        resp_free(&r);
    }
    /* 401 comes before body checks. */
    const char *text_ct[] = {"Content-Type: text/plain", NULL};
    r = request(f, "POST", "/api/v1/echo/a", "x", text_ct);
    expect_status(&r, 401);
    resp_free(&r);

    /* The OpenAPI document declares the schemes; public operations opt out. */
    r = get(f, "/api/openapi.json");
    const cJSON *schemes =
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "components"), "securitySchemes");
    assert_string_equal(jstr(schemes, "bearerAuth", "scheme"), "bearer");
    assert_string_equal(jstr(schemes, "apiKeyAuth", "name"), "X-API-Key");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(r.json, "security")), 2);
    const cJSON *open_op = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "paths"), "/api/v1/open"), "get");
    const cJSON *sec = cJSON_GetObjectItem(open_op, "security");
    assert_true(cJSON_IsArray(sec) && cJSON_GetArraySize(sec) == 0);
    const cJSON *item_op = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "paths"), "/api/v1/items/{id}"), "get");
    assert_null(cJSON_GetObjectItem(item_op, "security"));
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(item_op, "responses"), "401"));
    resp_free(&r);
    fx_free(f);
}

/* Numbers keep their value through the bridge: the shortest text that
 * reads back to the same double; 1e999 (infinity to cJSON) is refused. */
static void test_numbers(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    resp r = post_json(
        f, "/api/v1/echo/n",
        "{\"msg\":\"n\",\"sum\":0.30000000000000004,\"big\":9007199254740992,\"tiny\":5e-324,"
        "\"z\":-0,\"e\":1e300}");
    expect_status(&r, 200);
    if (!strstr(r.body, "\"sum\":0.30000000000000004,\"big\":9007199254740992,\"tiny\":5e-324,"
                        "\"z\":-0,\"e\":1e+300"))
        fail_msg("numbers changed: %s", r.body);
    resp_free(&r);
    const char *inf[] = {"{\"msg\":\"n\",\"n\":1e999}", "{\"msg\":\"n\",\"n\":-1e999}", "[1e400]"};
    for (int i = 0; i < 3; i++) {
        r = post_json(f, "/api/v1/echo/n", inf[i]);
        expect_status(&r, 400);
        assert_non_null(strstr(r.body, "not finite"));
        resp_free(&r);
    }
    fx_free(f);
}

/* Secure by default: without any token, key or hook a protected route
 * answers 401 (and the start says why); only http.auth.required: false
 * serves it, with a warning. */
static void test_auth_default_secure(void **state)
{
    (void)state;
    int missing0 = atomic_load(&auth_missing_warnings);
    fx *f = fx_new_opts(NULL, NULL, NULL, true);
    assert_int_equal(atomic_load(&auth_missing_warnings), missing0 + 1);
    expect_auth(f, NULL, 401);
    expect_auth(f, "Authorization: Bearer anything", 401);
    resp r = get(f, "/api/v1/open");
    expect_status(&r, 200);
    resp_free(&r);
    r = get(f, "/metrics");
    expect_status(&r, 200);
    resp_free(&r);
    /* The document lists the 401 of protected operations. */
    r = get(f, "/api/openapi.json");
    const cJSON *op = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "paths"), "/api/v1/items/{id}"), "get");
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(op, "responses"), "401"));
    resp_free(&r);
    fx_free(f);

    int off0 = atomic_load(&auth_off_warnings);
    const char *off[] = {"http.auth.required", "false", NULL};
    f = fx_new_opts(off, NULL, NULL, true);
    assert_int_equal(atomic_load(&auth_off_warnings), off0 + 1);
    expect_auth(f, NULL, 200);
    fx_free(f);
}

/* /metrics and the OpenAPI document can be protected like commands. */
static void test_auth_protect_builtins(void **state)
{
    (void)state;
    const char *s[] = {"http.auth.tokens",
                       "s3cret",
                       "http.auth.protect_metrics",
                       "true",
                       "http.auth.protect_docs",
                       "true",
                       NULL};
    fx *f = fx_new(s, NULL, NULL);
    const char *tok[] = {"Authorization: Bearer s3cret", NULL};
    const char *paths[] = {"/metrics", "/api/openapi.json", "/api/asyncapi.json"};
    for (int i = 0; i < 3; i++) {
        resp r = get(f, paths[i]);
        expect_status(&r, 401);
        resp_free(&r);
        r = request(f, NULL, paths[i], NULL, tok);
        expect_status(&r, 200);
        resp_free(&r);
    }
    resp r = get(f, "/healthz"); /* probes stay open */
    expect_status(&r, 200);
    resp_free(&r);
    fx_free(f);
    /* Protected with no token configured: 401 for everyone. */
    const char *none[] = {"http.auth.protect_metrics", "true", "http.auth.required", "true", NULL};
    f = fx_new(none, NULL, NULL);
    r = get(f, "/metrics");
    expect_status(&r, 401);
    resp_free(&r);
    fx_free(f);
}

static void test_auth_sources(void **state)
{
    (void)state;
    char path[] = "/tmp/loom-http-tokens-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *content = "# tokens\n\n  from-file  \n";
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    setenv("LOOM_TEST_HTTP_TOKENS", "env-a, env-b", 1);
    const char *s[] = {"http.auth.tokens_file", path, "http.auth.tokens_env",
                       "LOOM_TEST_HTTP_TOKENS", NULL};
    fx *f = fx_new(s, NULL, NULL);
    expect_auth(f, "Authorization: Bearer from-file", 200);
    expect_auth(f, "Authorization: Bearer env-a", 200);
    expect_auth(f, "Authorization: Bearer env-b", 200);
    expect_auth(f, "Authorization: Bearer # tokens", 401);
    expect_auth(f, NULL, 401);

    /* A configured source that yields nothing is an error, not "auth off". */
    loom_http *h = NULL;
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "http.auth.tokens_file", "/nonexistent/tokens"), LOOM_OK);
    assert_int_equal(loom_http_create(&h, f->rt, cfg), LOOM_ECONFIG);
    assert_null(h);
    loom_config_destroy(cfg);
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    unsetenv("LOOM_TEST_HTTP_TOKENS_UNSET");
    assert_int_equal(loom_config_set(cfg, "http.auth.tokens_env", "LOOM_TEST_HTTP_TOKENS_UNSET"),
                     LOOM_OK);
    assert_int_equal(loom_http_create(&h, f->rt, cfg), LOOM_ECONFIG);
    loom_config_destroy(cfg);
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "# only a comment\n", 17), 17);
    close(fd);
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "http.auth.tokens_file", path), LOOM_OK);
    assert_int_equal(loom_http_create(&h, f->rt, cfg), LOOM_ECONFIG);
    loom_config_destroy(cfg);
    unlink(path);
    unsetenv("LOOM_TEST_HTTP_TOKENS");
    fx_free(f);
}

static atomic_int hook_calls;

static bool test_hook(const loom_http_auth_request *req, loom_http_identity *id, void *user)
{
    assert_string_equal((const char *)user, "hook-user");
    atomic_fetch_add(&hook_calls, 1);
    assert_non_null(req->method);
    assert_true(strncmp(req->path, "/api/", 5) == 0);
    const char *u = req->header(req, "x-user");
    if (!u)
        return false;
    id->principal_id = strcmp(u, "bad") == 0 ? "line\nbreak" : u;
    id->tenant_id = req->header(req, "X-Tenant");
    return true;
}

static void test_auth_hook(void **state)
{
    (void)state;
    atomic_store(&hook_calls, 0);
    fx *f = fx_new(NULL, test_hook, "hook-user");
    assert_int_equal(loom_http_set_auth(f->h, test_hook, NULL), LOOM_ESTATE);
    const char *h[] = {"X-User: ada", "X-Tenant: acme", "Content-Type: application/json", NULL};
    resp r = request(f, "POST", "/api/v1/echo/a", "{\"msg\":\"x\"}", h);
    expect_status(&r, 200);
    assert_string_equal(jstr(r.json, "principal", NULL), "ada");
    assert_string_equal(jstr(r.json, "tenant", NULL), "acme");
    resp_free(&r);
    expect_auth(f, NULL, 401);
    expect_auth(f, "X-User: bad", 500);
    /* Public routes and built-ins do not call the hook. */
    int calls = atomic_load(&hook_calls);
    r = get(f, "/api/v1/open");
    expect_status(&r, 200);
    assert_null(jstr(r.json, "principal", NULL));
    resp_free(&r);
    expect_healthy(f);
    assert_int_equal(atomic_load(&hook_calls), calls);
    /* The OpenAPI document says the API is protected. */
    r = get(f, "/api/openapi.json");
    assert_non_null(cJSON_GetObjectItem(r.json, "security"));
    resp_free(&r);
    fx_free(f);
}

static void test_cors(void **state)
{
    (void)state;
    const char *s[] = {"http.cors.origins", "https://app.example", "http.cors.max_age", "120",
                       NULL};
    fx *f = fx_new(s, NULL, NULL);
    char v[256];
    const char *pre[] = {"Origin: https://app.example", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: content-type", NULL};
    resp r = request(f, "OPTIONS", "/api/v1/echo/x", NULL, pre);
    expect_status(&r, 204);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v), "https://app.example");
    assert_string_equal(hdr(&r, "Access-Control-Allow-Methods", v, sizeof v), "POST");
    assert_non_null(strstr(hdr(&r, "Access-Control-Allow-Headers", v, sizeof v), "Content-Type"));
    assert_string_equal(hdr(&r, "Access-Control-Max-Age", v, sizeof v), "120");
    assert_string_equal(hdr(&r, "Vary", v, sizeof v), "Origin");
    resp_free(&r);

    const char *evil[] = {"Origin: https://evil.example", "Access-Control-Request-Method: POST",
                          NULL};
    r = request(f, "OPTIONS", "/api/v1/echo/x", NULL, evil);
    expect_status(&r, 403);
    assert_null(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v));
    resp_free(&r);

    const char *simple[] = {"Origin: https://app.example", NULL};
    r = request(f, NULL, "/api/v1/items/1", NULL, simple);
    expect_status(&r, 200);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v), "https://app.example");
    assert_non_null(strstr(hdr(&r, "Access-Control-Expose-Headers", v, sizeof v), "x-trace-id"));
    resp_free(&r);
    r = request(f, NULL, "/api/v1/nope", NULL, simple); /* errors carry CORS too */
    expect_status(&r, 404);
    assert_non_null(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v));
    resp_free(&r);
    const char *other[] = {"Origin: https://evil.example", NULL};
    r = request(f, NULL, "/api/v1/items/1", NULL, other);
    expect_status(&r, 200);
    assert_null(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_string_equal(hdr(&r, "Vary", v, sizeof v), "Origin");
    resp_free(&r);
    fx_free(f);

    const char *any[] = {"http.cors.origins", "*", NULL};
    f = fx_new(any, NULL, NULL);
    r = request(f, NULL, "/api/v1/items/1", NULL, other);
    expect_status(&r, 200);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v), "*");
    resp_free(&r);
    fx_free(f);

    /* Without CORS configured, no CORS headers at all. */
    f = fx_new(NULL, NULL, NULL);
    r = request(f, NULL, "/api/v1/items/1", NULL, simple);
    assert_null(hdr(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_null(hdr(&r, "Vary", v, sizeof v));
    resp_free(&r);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Tracing                                                                   */

static void test_tracing(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    char v[128];
    const char *x[] = {"x-trace-id: 0123456789ABCDEF0123456789ABCDEF", NULL};
    resp r = request(f, NULL, "/api/v1/items/1", NULL, x);
    expect_status(&r, 200);
    assert_string_equal(hdr(&r, "x-trace-id", v, sizeof v), "0123456789abcdef0123456789abcdef");
    assert_string_equal(jstr(r.json, "traceId", NULL), "0123456789abcdef0123456789abcdef");
    assert_null(hdr(&r, "traceparent", v, sizeof v));
    resp_free(&r);

    const char *tp[] = {"traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                        "x-trace-id: 0123456789abcdef0123456789abcdef", NULL};
    r = request(f, NULL, "/api/v1/items/1", NULL, tp);
    expect_status(&r, 200);
    assert_string_equal(hdr(&r, "x-trace-id", v, sizeof v), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(hdr(&r, "traceparent", v, sizeof v),
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_string_equal(jstr(r.json, "traceId", NULL), "4bf92f3577b34da6a3ce929d0e0e4736");
    resp_free(&r);

    /* Errors carry the same trace id in the body and the header. */
    r = request(f, NULL, "/api/v1/missing/1", NULL, tp);
    expect_status(&r, 404);
    assert_string_equal(jstr(r.json, "traceId", NULL), "4bf92f3577b34da6a3ce929d0e0e4736");
    resp_free(&r);

    /* Invalid ids are replaced by fresh ones, never echoed. */
    const char *bad[][2] = {
        {"x-trace-id: abc", NULL},
        {"x-trace-id: 00000000000000000000000000000000", NULL},
        {"x-trace-id: 0123456789abcdef0123456789abcdeg", NULL},
        {"traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01", NULL},
        {"traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL},
        {"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", NULL},
        {"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", NULL},
    };
    char first[64] = "";
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = request(f, NULL, "/api/v1/items/1", NULL, bad[i]);
        expect_status(&r, 200);
        hdr(&r, "x-trace-id", v, sizeof v);
        assert_string_not_equal(v, "00000000000000000000000000000000");
        assert_string_not_equal(v, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_string_not_equal(v, first);
        assert_string_equal(jstr(r.json, "traceId", NULL), v);
        assert_null(hdr(&r, "traceparent", v, sizeof v));
        snprintf(first, sizeof first, "%s", jstr(r.json, "traceId", NULL));
        resp_free(&r);
    }
    /* A future version may append fields; the first 55 characters count. */
    const char *future[] = {
        "traceparent: 01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", NULL};
    r = request(f, NULL, "/api/v1/items/1", NULL, future);
    assert_string_equal(hdr(&r, "x-trace-id", v, sizeof v), "4bf92f3577b34da6a3ce929d0e0e4736");
    resp_free(&r);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Metrics and OpenAPI                                                       */

#define ECHO_200                                                                                   \
    "loom_http_requests_total{method=\"POST\",route=\"/api/v1/echo/{name}\",status=\"200\"}"
#define ECHO_400                                                                                   \
    "loom_http_requests_total{method=\"POST\",route=\"/api/v1/echo/{name}\",status=\"400\"}"
#define ECHO_COUNT                                                                                 \
    "loom_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/echo/{name}\"}"
#define ECHO_INF                                                                                   \
    "loom_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/echo/{name}\","     \
    "le=\"+Inf\"}"
#define CMD_200 "loom_command_requests_total{service=\"t\",command=\"echo\",status=\"200\"}"
#define CMD_400 "loom_command_requests_total{service=\"t\",command=\"echo\",status=\"400\"}"
#define MISSING_404 "loom_command_requests_total{service=\"t\",command=\"missing\",status=\"404\"}"
#define UNMATCHED "loom_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
#define HEALTH "loom_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"
#define ECHO_405                                                                                   \
    "loom_http_requests_total{method=\"GET\",route=\"/api/v1/echo/{name}\",status=\"405\"}"

/* Under a host's comma-decimal LC_NUMERIC the exposition still writes
 * "le=\"0.005\"" and "0.123456" (Prometheus reads only '.'). */
static void test_metrics_locale(void **state)
{
    (void)state;
    t_comma_locale();
    fx *f = fx_new(NULL, NULL, NULL);
    resp r = post_json(f, "/api/v1/echo/m", "{\"msg\":\"x\"}");
    expect_status(&r, 200);
    resp_free(&r);
    r = get(f, "/metrics");
    expect_status(&r, 200);
    assert_non_null(strstr(r.body, ",le=\"0.005\"}"));
    assert_non_null(strstr(r.body, ",le=\"2.5\"}"));
    assert_null(strstr(r.body, ",le=\"0,"));
    const char *sum = strstr(r.body, "loom_http_request_duration_seconds_sum{");
    assert_non_null(sum);
    sum = strstr(sum, "} ") + 2; /* routes hold braces too: "{name}" */
    size_t digits = strspn(sum, "0123456789");
    assert_true(digits > 0 && sum[digits] == '.');
    resp_free(&r);
    fx_free(f);
    setlocale(LC_NUMERIC, "C");
}

static void test_metrics(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    assert_true(metric(f, ECHO_200) == 0);
    for (int i = 0; i < 3; i++) {
        resp r = post_json(f, "/api/v1/echo/m", "{\"msg\":\"x\"}");
        expect_status(&r, 200);
        resp_free(&r);
    }
    resp r = post_json(f, "/api/v1/echo/m", "{}");
    expect_status(&r, 400);
    resp_free(&r);
    r = get(f, "/api/v1/missing/1");
    resp_free(&r);
    r = get(f, "/nowhere");
    resp_free(&r);
    r = get(f, "/api/v1/echo/m");
    resp_free(&r);
    expect_healthy(f);

    assert_true(metric(f, ECHO_200) == 3);
    assert_true(metric(f, ECHO_400) == 1);
    assert_true(metric(f, ECHO_COUNT) == 4);
    assert_true(metric(f, ECHO_INF) == 4);
    assert_true(metric(f, CMD_200) == 3);
    assert_true(metric(f, CMD_400) == 1);
    assert_true(metric(f, MISSING_404) == 1);
    assert_true(metric(f, UNMATCHED) == 1);
    assert_true(metric(f, HEALTH) == 1);
    assert_true(metric(f, ECHO_405) == 1);
    assert_true(metric(f, "loom_http_in_flight") == 1); /* the scrape itself */

    r = post_json(f, "/api/v1/echo/m", "{\"msg\":\"x\"}");
    resp_free(&r);
    assert_true(metric(f, ECHO_200) == 4);
    assert_true(metric(f, CMD_200) == 4);

    /* The exposition is well formed: every sample line is NAME{...} VALUE
     * or NAME VALUE, and each family has HELP and TYPE. */
    r = get(f, "/metrics");
    const char *families[] = {"loom_http_requests_total", "loom_http_request_duration_seconds",
                              "loom_http_in_flight", "loom_command_requests_total"};
    for (int i = 0; i < 4; i++) {
        char line[128];
        snprintf(line, sizeof line, "# TYPE %s ", families[i]);
        assert_non_null(strstr(r.body, line));
    }
    for (char *p = r.body; p && *p;) {
        char *eol = strchr(p, '\n');
        assert_non_null(eol);
        if (*p != '#') {
            char *sp = memrchr(p, ' ', (size_t)(eol - p));
            assert_non_null(sp);
            char *end;
            strtod(sp + 1, &end);
            assert_ptr_equal(end, eol);
        }
        p = eol + 1;
    }
    resp_free(&r);
    fx_free(f);
}

/* "/items/:id" -> "/api/v1/items/{id}" */
static void openapi_label(const char *version, const char *path, char *out, size_t n)
{
    snprintf(out, n, "/api/v%s", version);
    for (const char *p = path; *p;) {
        size_t len = strcspn(p + 1, "/") + 1;
        if (p[1] == ':')
            snprintf(out + strlen(out), n - strlen(out), "/{%.*s}", (int)len - 2, p + 2);
        else
            snprintf(out + strlen(out), n - strlen(out), "%.*s", (int)len, p);
        p += len;
    }
}

/* The components.schemas entry a "#/components/schemas/NAME" points at. */
static const cJSON *component(const cJSON *doc, const char *ref)
{
    const char *prefix = "#/components/schemas/";
    assert_non_null(ref);
    assert_memory_equal(ref, prefix, strlen(prefix));
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "components"), "schemas"),
        ref + strlen(prefix));
    if (!c)
        fail_msg("no component %s", ref);
    return c;
}

/* The response codes of an operation, in order, are exactly want ("200 204"). */
static void expect_codes(const cJSON *responses, const char *want)
{
    char got[128] = "";
    const cJSON *it;
    cJSON_ArrayForEach(it, responses)
    {
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", *got ? " " : "", it->string);
    }
    char sorted[128];
    /* Compare as sets: sort the space-separated codes of both. */
    const char *lists[2] = {got, want};
    char norm[2][128];
    for (int k = 0; k < 2; k++) {
        char codes[32][8];
        int n = 0;
        snprintf(sorted, sizeof sorted, "%s", lists[k]);
        for (char *t = strtok(sorted, " "); t && n < 32; t = strtok(NULL, " "))
            snprintf(codes[n++], sizeof codes[0], "%s", t);
        qsort(codes, (size_t)n, sizeof codes[0], (int (*)(const void *, const void *))strcmp);
        norm[k][0] = '\0';
        for (int i = 0; i < n; i++)
            snprintf(norm[k] + strlen(norm[k]), sizeof norm[k] - strlen(norm[k]), "%s%s",
                     i ? " " : "", codes[i]);
    }
    if (strcmp(norm[0], norm[1]) != 0)
        fail_msg("responses: got %s, want %s", norm[0], norm[1]);
}

static void test_openapi(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    resp r = get(f, "/api/openapi.json");
    expect_status(&r, 200);
    assert_non_null(r.json);
    assert_string_equal(jstr(r.json, "openapi", NULL), "3.1.0");
    assert_non_null(jstr(r.json, "info", "title"));
    assert_null(cJSON_GetObjectItem(r.json, "security")); /* auth is off */
    const cJSON *paths = cJSON_GetObjectItem(r.json, "paths");
    assert_true(cJSON_IsObject(paths));
    int ops = 0;
    for (const loom_service_def *const *s = all_services; *s; s++)
        for (const loom_command_def *const *c = (*s)->commands; *c; c++) {
            if (!(*c)->http_method)
                continue;
            char label[256], method[8];
            openapi_label((*s)->version, (*c)->http_path, label, sizeof label);
            size_t ml = strlen((*c)->http_method);
            for (size_t i = 0; i <= ml; i++)
                method[i] = (char)tolower((unsigned char)(*c)->http_method[i]);
            const cJSON *op = cJSON_GetObjectItem(cJSON_GetObjectItem(paths, label), method);
            if (!op)
                fail_msg("%s %s is missing", method, label);
            ops++;
        }
    assert_int_equal(ops, 14);
    int listed = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, paths)
    {
        listed += cJSON_GetArraySize(item);
    }
    assert_int_equal(listed, 13); /* dup shares echo's operation; nohttp is absent */

    const cJSON *echo =
        cJSON_GetObjectItem(cJSON_GetObjectItem(paths, "/api/v1/echo/{name}"), "post");
    assert_string_equal(jstr(echo, "operationId", NULL), "t.v1.echo");
    assert_string_equal(jstr(echo, "summary", NULL), "Echoes what it got");
    const cJSON *schema = cJSON_GetObjectItem(
        cJSON_GetObjectItem(
            cJSON_GetObjectItem(cJSON_GetObjectItem(echo, "requestBody"), "content"),
            "application/json"),
        "schema");
    assert_true(t_json_eq(component(r.json, jstr(schema, "$ref", NULL)), ECHO_PAYLOAD_SCHEMA));
    const cJSON *params = cJSON_GetObjectItem(echo, "parameters");
    assert_int_equal(cJSON_GetArraySize(params), 2);
    assert_true(t_json_eq(cJSON_GetArrayItem(params, 0),
                          "{\"name\":\"name\",\"in\":\"path\",\"required\":true,"
                          "\"schema\":{\"type\":\"string\"}}"));
    assert_true(t_json_eq(cJSON_GetArrayItem(params, 1),
                          "{\"name\":\"q\",\"in\":\"query\",\"required\":false,"
                          "\"schema\":{\"type\":\"string\"}}"));
    const cJSON *responses = cJSON_GetObjectItem(echo, "responses");
    expect_codes(responses, "200 400 413 415 500 503 504"); /* no 401: auth is off */
    const cJSON *out = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(responses, "200"), "content"),
                            "application/json"),
        "schema");
    assert_true(t_json_eq(component(r.json, jstr(out, "$ref", NULL)), "{\"type\":\"object\"}"));
    assert_string_equal(jstr(responses, "400", "$ref"), "#/components/responses/BadRequest");
    assert_string_equal(jstr(responses, "413", "$ref"), "#/components/responses/TooLarge");
    const cJSON *err = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "components"), "schemas"), "Error");
    assert_non_null(err);
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(err, "properties"), "traceId"));
    /* The shared responses, each once. */
    const char *shared[] = {"BadRequest",           "Unauthorized", "MethodNotAllowed", "TooLarge",
                            "UnsupportedMediaType", "Internal",     "Unavailable",      "Timeout"};
    const cJSON *cresp =
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "components"), "responses");
    for (size_t i = 0; i < sizeof shared / sizeof *shared; i++)
        assert_non_null(jstr(cJSON_GetObjectItem(cresp, shared[i]), "description", NULL));

    /* No schemas: a result or none, nothing to validate, no body. */
    const cJSON *inspect =
        cJSON_GetObjectItem(cJSON_GetObjectItem(paths, "/api/v1/items/{id}"), "get");
    expect_codes(cJSON_GetObjectItem(inspect, "responses"), "200 204 500 503 504");
    assert_string_equal(jstr(inspect, "summary", NULL), "inspect"); /* no description */
    /* A PUT takes a body even without a payload schema. */
    const cJSON *conflict =
        cJSON_GetObjectItem(cJSON_GetObjectItem(paths, "/api/v1/items/{id}"), "put");
    expect_codes(cJSON_GetObjectItem(conflict, "responses"), "200 204 413 415 500 503 504");

    /* Declared errors: 404 with its data schema, 503 replacing the shared one. */
    const cJSON *missing =
        cJSON_GetObjectItem(cJSON_GetObjectItem(paths, "/api/v1/missing/{id}"), "get");
    const cJSON *mresp = cJSON_GetObjectItem(missing, "responses");
    expect_codes(mresp, "200 204 404 500 503 504");
    const cJSON *r404 = cJSON_GetObjectItem(mresp, "404");
    assert_string_equal(jstr(r404, "description", NULL), "No such thing");
    const cJSON *all = cJSON_GetObjectItem(
        cJSON_GetObjectItem(
            cJSON_GetObjectItem(cJSON_GetObjectItem(r404, "content"), "application/json"),
            "schema"),
        "allOf");
    assert_string_equal(jstr(cJSON_GetArrayItem(all, 0), "$ref", NULL),
                        "#/components/schemas/Error");
    const char *data_ref =
        jstr(cJSON_GetObjectItem(cJSON_GetArrayItem(all, 1), "properties"), "data", "$ref");
    assert_non_null(data_ref);
    assert_string_equal(data_ref, "#/components/schemas/t.v1.missing.error404");
    assert_true(t_json_eq(component(r.json, data_ref), MISSING_DATA_SCHEMA));
    const cJSON *r503 = cJSON_GetObjectItem(mresp, "503");
    assert_null(cJSON_GetObjectItem(r503, "$ref"));
    assert_string_equal(jstr(r503, "description", NULL), "The things are being counted");
    assert_string_equal(
        jstr(cJSON_GetObjectItem(cJSON_GetObjectItem(r503, "content"), "application/json"),
             "schema", "$ref"),
        "#/components/schemas/Error");

    /* servers: the bound address; one tag per service, described. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", f->port);
    assert_string_equal(
        jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "servers"), 0), "url", NULL), url);
    const cJSON *tag0 = cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "tags"), 0);
    assert_string_equal(jstr(tag0, "name", NULL), "t");
    assert_string_equal(jstr(tag0, "description", NULL), "Test service");
    assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "info"), "license"));
    assert_string_equal(jstr(cJSON_GetObjectItem(echo, "x-loom"), "successEvent", NULL), "echoed");
    resp_free(&r);
    fx_free(f);
}

/* info.license, info.contact and servers from http.openapi.*. */
static void test_openapi_info(void **state)
{
    (void)state;
    const char *set[] = {"http.openapi.license.name",
                         "MIT",
                         "http.openapi.license.identifier",
                         "MIT",
                         "http.openapi.contact.name",
                         "Ops",
                         "http.openapi.contact.email",
                         "ops@example.org",
                         "http.openapi.server",
                         "https://api.example.org",
                         NULL};
    fx *f = fx_new(set, NULL, NULL);
    resp r = get(f, "/api/openapi.json");
    expect_status(&r, 200);
    const cJSON *info = cJSON_GetObjectItem(r.json, "info");
    assert_true(t_json_eq(cJSON_GetObjectItem(info, "license"),
                          "{\"name\":\"MIT\",\"identifier\":\"MIT\"}"));
    assert_true(t_json_eq(cJSON_GetObjectItem(info, "contact"),
                          "{\"name\":\"Ops\",\"email\":\"ops@example.org\"}"));
    assert_string_equal(
        jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "servers"), 0), "url", NULL),
        "https://api.example.org");
    resp_free(&r);
    fx_free(f);

    /* A license needs a name, and an identifier or a url, not both. */
    const char *bad[][4] = {
        {"http.openapi.license.identifier", "MIT", NULL, NULL},
        {"http.openapi.license.name", "MIT", "http.openapi.license.url", "https://x.org/l"},
    };
    for (size_t i = 0; i < 2; i++) {
        loom_config *cfg = NULL;
        assert_int_equal(loom_config_create(&cfg), LOOM_OK);
        for (size_t k = 0; k < 4 && bad[i][k]; k += 2)
            assert_int_equal(loom_config_set(cfg, bad[i][k], bad[i][k + 1]), LOOM_OK);
        if (i == 1)
            assert_int_equal(loom_config_set(cfg, "http.openapi.license.identifier", "MIT"),
                             LOOM_OK);
        char bus[64];
        unique_bus(bus, sizeof bus);
        loom_runtime *rt = new_runtime(bus, NULL, 1);
        loom_http *h = NULL;
        assert_int_equal(loom_http_create(&h, rt, cfg), LOOM_ECONFIG);
        assert_null(h);
        loom_runtime_destroy(rt);
        loom_config_destroy(cfg);
    }
}

/* The AsyncAPI document: request/reply channels and operations per command,
 * the success event sent, messages with the envelope as headers, bindings. */
static void test_asyncapi(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    resp r = get(f, "/api/asyncapi.json");
    expect_status(&r, 200);
    assert_string_equal(jstr(r.json, "asyncapi", NULL), "3.0.0");
    assert_non_null(jstr(r.json, "info", "title"));
    assert_null(cJSON_GetObjectItem(r.json, "servers")); /* memory: has none */
    const cJSON *ch = cJSON_GetObjectItem(r.json, "channels");
    assert_string_equal(jstr(ch, "t.v1.echo.request", "address"), "loom/cmd/t/1/echo");
    const cJSON *reply = cJSON_GetObjectItem(ch, "t.v1.echo.reply");
    assert_string_equal(jstr(reply, "address", NULL), "loom/reply/{instanceId}");
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(reply, "parameters"), "instanceId"));
    assert_string_equal(jstr(ch, "event.echoed.t.v1", "address"), "loom/evt/echoed/t/1");
    assert_non_null(cJSON_GetObjectItem(ch, "t.v1.nohttp.request")); /* HTTP or not */

    const cJSON *ops = cJSON_GetObjectItem(r.json, "operations");
    const cJSON *op = cJSON_GetObjectItem(ops, "t.v1.echo");
    assert_string_equal(jstr(op, "action", NULL), "receive");
    assert_string_equal(jstr(op, "channel", "$ref"), "#/channels/t.v1.echo.request");
    const cJSON *rep = cJSON_GetObjectItem(op, "reply");
    assert_string_equal(jstr(rep, "channel", "$ref"), "#/channels/t.v1.echo.reply");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(rep, "messages")), 2);
    const cJSON *b = cJSON_GetObjectItem(op, "bindings");
    assert_int_equal(jnum(b, "mqtt", "qos") >= 0, 1);
    assert_string_equal(jstr(b, "nats", "queue"), "t%2E1");
    assert_string_equal(jstr(cJSON_GetObjectItem(ops, "event.echoed.t.v1"), "action", NULL),
                        "send");

    const cJSON *comp = cJSON_GetObjectItem(r.json, "components");
    const cJSON *msg =
        cJSON_GetObjectItem(cJSON_GetObjectItem(comp, "messages"), "t.v1.echo.request");
    assert_string_equal(jstr(msg, "headers", "$ref"), "#/components/schemas/Envelope");
    const cJSON *env = cJSON_GetObjectItem(cJSON_GetObjectItem(comp, "schemas"), "Envelope");
    const char *fields[] = {"messageType", "id",       "traceId", "correlationId",
                            "replyTo",     "deadline", "sender",  "principalId"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(env, "properties"), fields[i]));
    const cJSON *pl = cJSON_GetObjectItem(cJSON_GetObjectItem(msg, "payload"), "properties");
    assert_string_equal(jstr(pl, "payload", "$ref"), "#/components/schemas/t.v1.echo.payload");
    assert_true(t_json_eq(component(r.json, jstr(pl, "payload", "$ref")), ECHO_PAYLOAD_SCHEMA));
    /* The declared errors are in the error message's description. */
    const cJSON *err =
        cJSON_GetObjectItem(cJSON_GetObjectItem(comp, "messages"), "t.v1.missing.error");
    assert_non_null(strstr(jstr(err, "title", NULL), "404: No such thing."));
    resp_free(&r);
    fx_free(f);
}

static void test_base_path(void **state)
{
    (void)state;
    const char *s[] = {"http.base", "/x/y", NULL};
    fx *f = fx_new(s, NULL, NULL);
    resp r = get(f, "/x/y/v1/items/3");
    expect_status(&r, 200);
    resp_free(&r);
    r = get(f, "/api/v1/items/3");
    expect_status(&r, 404);
    resp_free(&r);
    r = get(f, "/x/y/openapi.json");
    expect_status(&r, 200);
    assert_non_null(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "paths"), "/x/y/v1/items/{id}"));
    resp_free(&r);
    fx_free(f);

    const char *none[] = {"http.base", "", NULL};
    f = fx_new(none, NULL, NULL);
    r = get(f, "/v1/items/3");
    expect_status(&r, 200);
    resp_free(&r);
    r = get(f, "/openapi.json");
    expect_status(&r, 200);
    resp_free(&r);
    fx_free(f);
}

static void test_api_misuse(void **state)
{
    (void)state;
    loom_http *h = (loom_http *)1;
    assert_int_equal(loom_http_create(&h, NULL, NULL), LOOM_EINVAL);
    assert_int_equal(loom_http_create(NULL, NULL, NULL), LOOM_EINVAL);
    assert_int_equal(loom_http_start(NULL), LOOM_EINVAL);
    assert_int_equal(loom_http_stop(NULL), LOOM_EINVAL);
    assert_int_equal(loom_http_set_auth(NULL, NULL, NULL), LOOM_EINVAL);
    assert_int_equal(loom_http_port(NULL), 0);
    loom_http_destroy(NULL);

    /* Created but never started: port 0, stop is a no-op. */
    char bus[64];
    unique_bus(bus, sizeof bus);
    loom_runtime *rt = new_runtime(bus, all_services, 1);
    assert_int_equal(loom_http_create(&h, rt, NULL), LOOM_OK);
    assert_int_equal(loom_http_port(h), 0);
    assert_int_equal(loom_http_stop(h), LOOM_OK);
    loom_http_destroy(h);

    /* The port is taken: LOOM_EIO. */
    fx *f = fx_new(NULL, NULL, NULL);
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", f->port);
    assert_int_equal(loom_config_set(cfg, "http.listen", listen), LOOM_OK);
    assert_int_equal(loom_http_create(&h, rt, cfg), LOOM_OK);
    assert_int_equal(loom_http_start(h), LOOM_EIO);
    assert_int_equal(loom_http_port(h), 0);
    loom_http_destroy(h);
    loom_config_destroy(cfg);

    /* A base of more segments than a route may have: refused, and the
     * segments parsed before the refusal are freed (ASan checks). */
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    char base[512] = "";
    for (int i = 0; i < 70; i++)
        strcat(base, "/s");
    assert_int_equal(loom_config_set(cfg, "http.base", base), LOOM_OK);
    h = (loom_http *)1;
    assert_int_equal(loom_http_create(&h, rt, cfg), LOOM_ECONFIG);
    assert_null(h);
    loom_config_destroy(cfg);
    fx_free(f);
    loom_runtime_destroy(rt);
}

/* ------------------------------------------------------------------------ */
/* Split mode: the bridge runs with no services                              */

static resp wait_for_status(fx *f, const char *path, long status, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        resp r = get(f, path);
        if (r.status == status || now_ms() > deadline)
            return r;
        resp_free(&r);
        sleep_ms(20);
    }
}

static void test_split_mode(void **state)
{
    (void)state;
    char bus[64];
    unique_bus(bus, sizeof bus);
    fx b = {0};
    b.rt = new_runtime(bus, NULL, 2);
    assert_int_equal(loom_runtime_start(b.rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(b.rt, 5000), LOOM_OK);
    assert_int_equal(loom_config_create(&b.cfg), LOOM_OK);
    assert_int_equal(loom_config_set(b.cfg, "http.auth.required", "false"), LOOM_OK);
    assert_int_equal(loom_http_create(&b.h, b.rt, b.cfg), LOOM_OK);
    assert_int_equal(loom_http_start(b.h), LOOM_OK);
    b.port = loom_http_port(b.h);

    int off0 = atomic_load(&auth_off_warnings);
    /* No services anywhere yet. */
    resp r = get(&b, "/readyz");
    expect_status(&r, 503);
    assert_string_equal(jstr(r.json, "message", NULL), "no routes are known yet");
    resp_free(&r);
    r = get(&b, "/api/v1/items/1");
    expect_status(&r, 404);
    resp_free(&r);

    /* The services start in another runtime on the same bus: the routes
     * arrive through discovery. */
    loom_runtime *svc = new_runtime(bus, all_services, 4);
    assert_int_equal(loom_runtime_start(svc), LOOM_OK);
    r = wait_for_status(&b, "/api/v1/items/1", 200, 5000);
    expect_status(&r, 200);
    /* The start found no protected route; discovery brought some: warned. */
    assert_true(atomic_load(&auth_off_warnings) > off0);
    assert_true(t_json_eq(cJSON_GetObjectItem(r.json, "parameter"), "{\"id\":\"1\"}"));
    resp_free(&r);
    r = get(&b, "/readyz");
    expect_status(&r, 200);
    resp_free(&r);
    r = get(&b, "/api/openapi.json");
    assert_non_null(
        cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "paths"), "/api/v1/echo/{name}"));
    resp_free(&r);

    /* The same statuses as in-process. */
    r = post_json(&b, "/api/v1/echo/s", "{\"msg\":\"remote\"}");
    expect_status(&r, 200);
    assert_string_equal(jstr(r.json, "payload", "msg"), "remote");
    resp_free(&r);
    r = post_json(&b, "/api/v1/echo/s", "{}");
    expect_status(&r, 400);
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "data"), "errors"));
    resp_free(&r);
    r = get(&b, "/api/v1/missing/9");
    expect_status(&r, 404);
    assert_string_equal(jstr(r.json, "data", "id"), "9");
    resp_free(&r);
    r = get(&b, "/api/v1/slow?ms=50");
    expect_status(&r, 200);
    resp_free(&r);
    r = request(&b, "DELETE", "/api/v1/items/1", NULL, NULL);
    expect_status(&r, 204);
    resp_free(&r);
    int64_t t0 = now_ms();
    r = get(&b, "/api/v1/sleepy"); /* the announced timeoutMs applies */
    expect_status(&r, 504);
    assert_true(now_ms() - t0 < 2000);
    resp_free(&r);
    long st[20];
    parallel_get(b.port, "/api/v1/slow?ms=100", 20, st);
    for (int i = 0; i < 20; i++)
        assert_int_equal(st[i], 200);

    /* The services stop: their routes go away. */
    assert_int_equal(loom_runtime_stop(svc), LOOM_OK);
    r = wait_for_status(&b, "/api/v1/items/1", 404, 5000);
    expect_status(&r, 404);
    resp_free(&r);
    loom_http_destroy(b.h);
    loom_runtime_destroy(svc);
    loom_runtime_destroy(b.rt);
    loom_config_destroy(b.cfg);
}

/* ------------------------------------------------------------------------ */
/* Limits and hostile clients                                                */

static void test_body_limits(void **state)
{
    (void)state;
    const char *s[] = {"http.max_body", "1024", NULL};
    fx *f = fx_new(s, NULL, NULL);

    /* Exactly at the limit: fine. */
    char body[2100];
    snprintf(body, sizeof body, "{\"msg\":\"%0*d\"}", 1024 - 10, 0);
    assert_int_equal(strlen(body), 1024);
    resp r = post_json(f, "/api/v1/echo/a", body);
    expect_status(&r, 200);
    resp_free(&r);

    /* Over it, by Content-Length: 413 before reading. */
    snprintf(body, sizeof body, "{\"msg\":\"%0*d\"}", 2000, 0);
    r = post_json(f, "/api/v1/echo/a", body);
    expect_status(&r, 413);
    assert_int_equal((int)jnum(r.json, "data", "maxBody"), 1024);
    resp_free(&r);

    /* Over it, chunked: 413 after reading. */
    char hdrs[] = "POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n";
    int fd = raw_open(f->port);
    char chunk[64];
    snprintf(chunk, sizeof chunk, "%zx\r\n", strlen(body));
    assert_true(raw_send(fd, hdrs, strlen(hdrs)) && raw_send(fd, chunk, strlen(chunk)) &&
                raw_send(fd, body, strlen(body)) && raw_send(fd, "\r\n0\r\n\r\n", 7));
    char buf[8192];
    bool closed;
    raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 1);
    assert_true(strncmp(buf, "HTTP/1.1 413", 12) == 0);
    close(fd);

    /* A small chunked body is fine. */
    fd = raw_open(f->port);
    const char *small = "{\"msg\":\"chunked\"}";
    snprintf(chunk, sizeof chunk, "%zx\r\n", strlen(small));
    assert_true(raw_send(fd, hdrs, strlen(hdrs)) && raw_send(fd, chunk, strlen(chunk)) &&
                raw_send(fd, small, strlen(small)) && raw_send(fd, "\r\n0\r\n\r\n", 7));
    raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 1);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    assert_non_null(strstr(buf, "\"chunked\""));
    close(fd);

    /* An endless chunked body: 413 or the connection closed, never stuck. */
    fd = raw_open(f->port);
    assert_true(raw_send(fd, hdrs, strlen(hdrs)));
    static char big[65536];
    memset(big, ' ', sizeof big);
    snprintf(chunk, sizeof chunk, "%zx\r\n", sizeof big);
    int64_t t0 = now_ms();
    for (int i = 0; i < 160; i++) /* 10 MiB */
        if (!raw_send(fd, chunk, strlen(chunk)) || !raw_send(fd, big, sizeof big) ||
            !raw_send(fd, "\r\n", 2))
            break;
    size_t n = raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 1);
    assert_true(closed || (n >= 12 && strncmp(buf, "HTTP/1.1 413", 12) == 0));
    assert_true(now_ms() - t0 < 10000);
    close(fd);

    /* A huge Content-Length with curl (which waits for 100-continue). */
    char *huge = malloc(3 * 1024 * 1024);
    assert_non_null(huge);
    memset(huge, ' ', 3 * 1024 * 1024);
    const char *h[] = {"Content-Type: application/json", NULL};
    r = request_n(f->port, "POST", "/api/v1/echo/a", huge, 3 * 1024 * 1024, h);
    free(huge);
    expect_status(&r, 413);
    resp_free(&r);
    expect_healthy(f);
    fx_free(f);
}

static void test_header_flood(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL); /* max_header 16 KiB */
    char buf[4096];
    bool closed;

    /* Headers within the limit are fine. */
    char *req = malloc(200000);
    assert_non_null(req);
    snprintf(req, 200000, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: %0*d\r\n\r\n", 8000, 0);
    int fd = raw_open(f->port);
    assert_true(raw_send(fd, req, strlen(req)));
    raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 1);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    close(fd);

    /* One huge header, very many headers, a huge request line: 431 (or
     * 414) and closed, or just closed. */
    const int sizes[] = {0, 1, 2, 3, 3, 3, 3, 3, 3};
    for (int k = 0; k < 9; k++) {
        if (sizes[k] == 0) {
            snprintf(req, 200000, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: %0*d\r\n\r\n", 100000,
                     0);
        } else if (sizes[k] == 1) {
            strcpy(req, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
            for (int i = 0; i < 5000; i++)
                snprintf(req + strlen(req), 200000 - strlen(req), "X-H%d: v\r\n", i);
            strcat(req, "\r\n");
        } else if (sizes[k] == 2) {
            snprintf(req, 200000, "GET /api/v1/items/%0*d HTTP/1.1\r\nHost: t\r\n\r\n", 60000, 0);
        } else {
            /* Query arguments that fill the connection's memory exactly. */
            snprintf(req, 200000, "GET /api/v1/items/1?");
            for (int i = 0; i < 300 + (k - 3) * 3; i++)
                snprintf(req + strlen(req), 200000 - strlen(req), "k%d&", i);
            strcat(req, " HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        int64_t t0 = now_ms();
        fd = raw_open(f->port);
        raw_send(fd, req, strlen(req)); /* may fail half way: the server closed */
        size_t n = raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 1);
        if (sizes[k] == 3) {
            /* Whether they fit or not, the answer comes at once. */
            assert_true(closed || (n && strncmp(buf, "HTTP/1.1 200", 12) == 0));
            assert_true(now_ms() - t0 < 2000);
            close(fd);
            continue;
        }
        if (!closed) /* a response came: the server closes after it */
            raw_recv(fd, buf + n, sizeof buf - n, 5000, &closed, NULL, 0);
        if (n)
            assert_true(strncmp(buf, "HTTP/1.1 431", 12) == 0 ||
                        strncmp(buf, "HTTP/1.1 414", 12) == 0 ||
                        strncmp(buf, "HTTP/1.1 400", 12) == 0);
        assert_true(closed);
        assert_true(now_ms() - t0 < 2000); /* promptly, not at the idle timeout */
        close(fd);
    }
    free(req);
    expect_healthy(f);
    fx_free(f);
}

static void test_slow_client(void **state)
{
    (void)state;
    const char *s[] = {"http.idle_timeout_s", "1", NULL};
    fx *f = fx_new(s, NULL, NULL);
    /* Half a request, then silence; and half a body. */
    int slow = raw_open(f->port);
    const char *part = "GET /healthz HTTP/1.1\r\nHost: t\r\n";
    assert_true(raw_send(slow, part, strlen(part)));
    int slow2 = raw_open(f->port);
    const char *part2 = "POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nContent-Type: "
                        "application/json\r\nContent-Length: 100\r\n\r\n{\"msg\":";
    assert_true(raw_send(slow2, part2, strlen(part2)));
    int64_t t0 = now_ms();
    /* Others keep being served meanwhile. */
    for (int i = 0; i < 5; i++) {
        int64_t t1 = now_ms();
        expect_healthy(f);
        assert_true(now_ms() - t1 < 500);
    }
    char buf[1024];
    bool closed;
    raw_recv(slow, buf, sizeof buf, 5000, &closed, NULL, 0);
    assert_true(closed);
    raw_recv(slow2, buf, sizeof buf, 5000, &closed, NULL, 0);
    assert_true(closed);
    int64_t took = now_ms() - t0;
    assert_true(took >= 700 && took < 5000);
    close(slow);
    close(slow2);
    expect_healthy(f);
    fx_free(f);
}

static void test_pipelining(void **state)
{
    (void)state;
    fx *f = fx_new(NULL, NULL, NULL);
    const char *reqs =
        "GET /healthz HTTP/1.1\r\nHost: t\r\nx-trace-id: 11111111111111111111111111111111\r\n\r\n"
        "POST /api/v1/echo/p HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: 12\r\nx-trace-id: 22222222222222222222222222222222\r\n\r\n"
        "{\"msg\":\"hi\"}"
        "GET /api/v1/slow?ms=30 HTTP/1.1\r\nHost: t\r\nx-trace-id: "
        "33333333333333333333333333333333\r\n\r\n"
        "GET /api/v1/nope HTTP/1.1\r\nHost: t\r\nx-trace-id: "
        "44444444444444444444444444444444\r\n\r\n"
        "GET /api/v1/items/5 HTTP/1.1\r\nHost: t\r\nx-trace-id: "
        "55555555555555555555555555555555\r\n\r\n";
    int fd = raw_open(f->port);
    assert_true(raw_send(fd, reqs, strlen(reqs)));
    char buf[16384];
    bool closed;
    size_t n = raw_recv(fd, buf, sizeof buf, 5000, &closed, have_responses, 5);
    const char *starts[5];
    assert_int_equal(count_responses(buf, n, starts, 5), 5);
    const char *want_status[] = {"200", "200", "200", "404", "200"};
    for (int i = 0; i < 5; i++) {
        char status[16], trace[64];
        snprintf(status, sizeof status, "HTTP/1.1 %s", want_status[i]);
        assert_true(strncmp(starts[i], status, 12) == 0);
        snprintf(trace, sizeof trace, "x-trace-id: %d%d%d%d", i + 1, i + 1, i + 1, i + 1);
        const char *end = strstr(starts[i], "\r\n\r\n");
        const char *t = strstr(starts[i], trace);
        assert_true(t && t < end);
    }
    assert_false(closed);
    close(fd);
    fx_free(f);
}

static void test_concurrency(void **state)
{
    (void)state;
    /* Two HTTP threads, fifty requests that each take 300 ms to answer:
     * 7.5 s if an HTTP thread waited for each command, about 0.3 s when
     * none does. */
    const char *s[] = {"http.threads", "2", NULL};
    fx *f = fx_new(s, NULL, NULL);
    long st[50];
    int64_t t0 = now_ms();
    parallel_get(f->port, "/api/v1/slow?ms=300", 50, st);
    int64_t took = now_ms() - t0;
    for (int i = 0; i < 50; i++)
        assert_int_equal(st[i], 200);
    if (took >= 5000)
        fail_msg("50 concurrent requests took %lld ms", (long long)took);
    /* Mixed traffic. */
    parallel_get(f->port, "/api/v1/items/1", 50, st);
    for (int i = 0; i < 50; i++)
        assert_int_equal(st[i], 200);
    assert_true(metric(f, "loom_http_in_flight") == 1);
    fx_free(f);
}

static void test_garbage(void **state)
{
    (void)state;
    const char *s[] = {"http.idle_timeout_s", "2", NULL};
    fx *f = fx_new(s, NULL, NULL);
    static const struct {
        const char *data;
        size_t len;
    } bad[] = {
        {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello", 26},
        {"GET\r\n\r\n", 7},
        {"GET / HTTP/9.9\r\n\r\n", 18},
        {"GET /healthz HTTP/1.1\r\nNoColonHere\r\n\r\n", 39},
        {"GET /heal\0thz HTTP/1.1\r\nHost: t\r\n\r\n", 35},
        {"POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n", 62},
        {"POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nContent-Length: "
         "99999999999999999999999\r\n\r\n",
         83},
        {"POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         125},
        {"POST /api/v1/echo/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 73},
        {"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 27},
        {"GET http://evil/api/v1/items/1 HTTP/1.1\r\nHost: t\r\n\r\n", 51},
        {"\r\n\r\n\r\n", 6},
        {"BREW /api/v1/items/1 HTTP/1.1\r\nHost: t\r\n\r\n", 42},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int fd = raw_open(f->port);
        raw_send(fd, bad[i].data, bad[i].len);
        shutdown(fd, SHUT_WR);
        char buf[4096];
        bool closed;
        int64_t t0 = now_ms();
        size_t n = raw_recv(fd, buf, sizeof buf, 4000, &closed, NULL, 0);
        if (getenv("LOOM_TEST_VERBOSE"))
            fprintf(stderr, "garbage %zu: %lld ms, closed %d: %.40s\n", i,
                    (long long)(now_ms() - t0), closed, buf);
        if (n)
            assert_true(strncmp(buf, "HTTP/1.", 7) == 0);
        assert_true(closed);
        close(fd);
        expect_healthy(f);
    }
    /* Random bytes. */
    unsigned seed = 12345;
    for (int i = 0; i < 20; i++) {
        char junk[512];
        for (size_t k = 0; k < sizeof junk; k++)
            junk[k] = (char)(rand_r(&seed) & 0xff);
        int fd = raw_open(f->port);
        raw_send(fd, junk, sizeof junk);
        shutdown(fd, SHUT_WR);
        char buf[2048];
        bool closed;
        raw_recv(fd, buf, sizeof buf, 4000, &closed, NULL, 0);
        assert_true(closed);
        close(fd);
    }
    expect_healthy(f);
    fx_free(f);
}

static void test_max_connections(void **state)
{
    (void)state;
    /* Over the limit the server stops accepting: the extra connections
     * wait in the kernel's backlog, unserved, until slots free up. */
    const char *s[] = {"http.max_connections", "4", "http.threads", "1", NULL};
    fx *f = fx_new(s, NULL, NULL);
    int fds[8];
    const char *q = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    char buf[1024];
    bool closed;
    for (int i = 0; i < 8; i++) {
        fds[i] = raw_open(f->port);
        assert_true(raw_send(fds[i], q, strlen(q)));
    }
    for (int i = 0; i < 4; i++) {
        raw_recv(fds[i], buf, sizeof buf, 3000, &closed, have_responses, 1);
        assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    }
    for (int i = 4; i < 8; i++)
        assert_int_equal(raw_recv(fds[i], buf, sizeof buf, 300, &closed, have_responses, 1), 0);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    for (int i = 4; i < 8; i++) {
        raw_recv(fds[i], buf, sizeof buf, 3000, &closed, have_responses, 1);
        assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
        close(fds[i]);
    }
    expect_healthy(f);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* The server seam itself: the suspend/resume handshake                      */

typedef struct seam_fx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loom__hs_req *queue[256];
    int n_queue;
    bool stop;
    loom__hs_req *held;
    atomic_int done, responded;
    pthread_t resumer;
} seam_fx;

/* Resumes queued requests as soon as they are queued, racing the server
 * thread that is about to suspend them. */
static void *seam_resumer(void *arg)
{
    seam_fx *sf = arg;
    pthread_mutex_lock(&sf->mu);
    while (!sf->stop || sf->n_queue) {
        if (!sf->n_queue) {
            pthread_cond_wait(&sf->cv, &sf->mu);
            continue;
        }
        loom__hs_req *r = sf->queue[--sf->n_queue];
        pthread_mutex_unlock(&sf->mu);
        loom__hs_resume(r);
        pthread_mutex_lock(&sf->mu);
    }
    pthread_mutex_unlock(&sf->mu);
    return NULL;
}

static loom__hs_action seam_headers(void *user, loom__hs_req *r)
{
    (void)user;
    (void)r;
    return LOOM__HS_CONTINUE;
}

static loom__hs_action seam_request(void *user, loom__hs_req *r)
{
    seam_fx *sf = user;
    const char *t = loom__hs_req_target(r);
    if (strcmp(t, "/inline") == 0) {
        loom__hs_resume(r); /* before the server has parked it */
    } else if (strcmp(t, "/thread") == 0) {
        pthread_mutex_lock(&sf->mu);
        assert_true(sf->n_queue < 256);
        sf->queue[sf->n_queue++] = r;
        pthread_cond_signal(&sf->cv);
        pthread_mutex_unlock(&sf->mu);
    } else if (strcmp(t, "/hold") == 0) {
        pthread_mutex_lock(&sf->mu);
        sf->held = r;
        pthread_mutex_unlock(&sf->mu);
    } else {
        char *body = strdup("now");
        loom__hs_respond(r, loom__hs_resp_new(200, "text/plain", body, 3));
        return LOOM__HS_RESPONDED;
    }
    return LOOM__HS_SUSPEND;
}

static void seam_resume(void *user, loom__hs_req *r)
{
    (void)user;
    char *body = strdup("resumed");
    loom__hs_resp *out = loom__hs_resp_new(200, "text/plain", body, 7);
    assert_true(loom__hs_resp_header(out, "X-Seam", "1"));
    assert_false(loom__hs_resp_header(out, "X-Bad", "a\r\nInjected: 1"));
    loom__hs_respond(r, out);
}

static void seam_done(void *user, loom__hs_req *r, bool responded)
{
    (void)r;
    seam_fx *sf = user;
    atomic_fetch_add(&sf->done, 1);
    if (responded)
        atomic_fetch_add(&sf->responded, 1);
}

static loom__hs *seam_start(seam_fx *sf)
{
    memset(sf, 0, sizeof *sf);
    pthread_mutex_init(&sf->mu, NULL);
    pthread_cond_init(&sf->cv, NULL);
    assert_int_equal(pthread_create(&sf->resumer, NULL, seam_resumer, sf), 0);
    loom__hs_config c = {.listen = "127.0.0.1:0",
                         .threads = 2,
                         .max_body = 1024,
                         .max_header = 8192,
                         .max_connections = 100,
                         .idle_timeout_s = 5,
                         .cb = {.on_headers = seam_headers,
                                .on_request = seam_request,
                                .on_resume = seam_resume,
                                .on_done = seam_done},
                         .user = sf};
    loom__hs *s = NULL;
    char why[128];
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_OK);
    assert_true(loom__hs_port(s) > 0);
    return s;
}

static void seam_finish(seam_fx *sf)
{
    pthread_mutex_lock(&sf->mu);
    sf->stop = true;
    pthread_cond_signal(&sf->cv);
    pthread_mutex_unlock(&sf->mu);
    pthread_join(sf->resumer, NULL);
    pthread_mutex_destroy(&sf->mu);
    pthread_cond_destroy(&sf->cv);
}

static void test_seam_resume_race(void **state)
{
    (void)state;
    seam_fx sf;
    loom__hs *s = seam_start(&sf);
    int port = loom__hs_port(s);
    long st[64];
    const char *paths[] = {"/inline", "/thread", "/now"};
    for (int round = 0; round < 4; round++)
        for (int p = 0; p < 3; p++) {
            parallel_get(port, paths[p], 64, st);
            for (int i = 0; i < 64; i++)
                assert_int_equal(st[i], 200);
        }
    resp r = request_n(port, NULL, "/thread", NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "resumed");
    char v[16];
    assert_string_equal(hdr(&r, "X-Seam", v, sizeof v), "1");
    assert_null(hdr(&r, "Injected", v, sizeof v));
    resp_free(&r);
    assert_int_equal(loom__hs_parked(s), 0);
    int64_t deadline = now_ms() + 3000;
    while (atomic_load(&sf.done) < 4 * 3 * 64 + 1 && now_ms() < deadline)
        sleep_ms(5);
    assert_int_equal(atomic_load(&sf.done), 4 * 3 * 64 + 1);
    assert_int_equal(atomic_load(&sf.responded), 4 * 3 * 64 + 1);
    loom__hs_stop(s, 1000);
    seam_finish(&sf);
}

static void test_seam_client_gone_while_suspended(void **state)
{
    (void)state;
    seam_fx sf;
    loom__hs *s = seam_start(&sf);
    int fd = raw_open(loom__hs_port(s));
    const char *q = "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_true(raw_send(fd, q, strlen(q)));
    int64_t deadline = now_ms() + 3000;
    loom__hs_req *parked_req = NULL;
    while (!parked_req && now_ms() < deadline) {
        pthread_mutex_lock(&sf.mu);
        parked_req = sf.held;
        pthread_mutex_unlock(&sf.mu);
        sleep_ms(2);
    }
    assert_non_null(parked_req);
    sleep_ms(20);
    assert_int_equal(loom__hs_parked(s), 1);
    close(fd); /* the client goes away while its request is parked */
    sleep_ms(20);
    loom__hs_resume(parked_req);
    while (atomic_load(&sf.done) < 1 && now_ms() < deadline)
        sleep_ms(2);
    assert_int_equal(atomic_load(&sf.done), 1);
    assert_int_equal(loom__hs_parked(s), 0);
    assert_int_equal(loom__hs_active(s), 0);
    int64_t t0 = now_ms();
    loom__hs_stop(s, 1000);
    assert_true(now_ms() - t0 < 1000);
    seam_finish(&sf);

    /* Bad listen addresses. */
    loom__hs_config c = {.listen = "no-port",
                         .threads = 1,
                         .cb = {.on_headers = seam_headers,
                                .on_request = seam_request,
                                .on_resume = seam_resume,
                                .on_done = seam_done}};
    char why[128];
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_EINVAL);
    assert_true(strlen(why) > 0);
    c.listen = "127.0.0.1:99999";
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_EINVAL);
    c.listen = "[::1";
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_EINVAL);
    c.listen = "no.such.host.invalid:80";
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_EIO);
    c.cb.on_done = NULL;
    c.listen = "127.0.0.1:0";
    assert_int_equal(loom__hs_start(&s, &c, why, sizeof why), LOOM_EINVAL);
    loom__hs_stop(NULL, 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    pthread_create(&delay_thread, NULL, delayer, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtins),
        cmocka_unit_test(test_echo_params),
        cmocka_unit_test(test_status_mapping),
        cmocka_unit_test(test_shared_schemas),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_request_timeout_cap),
        cmocka_unit_test(test_runtime_stopped_503),
        cmocka_unit_test(test_stop_answers_suspended),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_auth_tokens),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_auth_default_secure),
        cmocka_unit_test(test_auth_protect_builtins),
        cmocka_unit_test(test_auth_sources),
        cmocka_unit_test(test_auth_hook),
        cmocka_unit_test(test_cors),
        cmocka_unit_test(test_tracing),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_metrics_locale),
        cmocka_unit_test(test_openapi),
        cmocka_unit_test(test_openapi_info),
        cmocka_unit_test(test_asyncapi),
        cmocka_unit_test(test_base_path),
        cmocka_unit_test(test_api_misuse),
        cmocka_unit_test(test_split_mode),
        cmocka_unit_test(test_body_limits),
        cmocka_unit_test(test_header_flood),
        cmocka_unit_test(test_slow_client),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_seam_resume_race),
        cmocka_unit_test(test_seam_client_gone_while_suspended),
    };
    if (getenv("LOOM_TEST_FILTER")) /* e.g. LOOM_TEST_FILTER='test_cors' */
        cmocka_set_test_filter(getenv("LOOM_TEST_FILTER"));
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    atomic_store(&delay_stop, true);
    pthread_join(delay_thread, NULL);
    curl_global_cleanup();
    return rc;
}
