/* The bridge's metrics (GET /metrics, Prometheus text format 0.0.4).
 *
 * Counters live in "series" found through a fixed-size, grow-only,
 * lock-free hash table (insert by compare-and-swap, never removed until
 * the bridge is destroyed): a request costs a few atomic increments. Routes
 * resolve their series when the table is built, so labels stay few
 * whatever clients send. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/json.h"
#include "core/runtime.h"
#include "http/bridge.h"

#define N_STATUS 500 /* 100..599 */

static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define N_BUCKETS (sizeof bucket_le / sizeof bucket_le[0])

enum { SERIES_HTTP = 1, SERIES_CMD };

struct series {
    int kind;
    char *a, *b; /* http: method, route; command: service, command */
    uint64_t hash;
    _Atomic uint64_t status[N_STATUS];
    _Atomic uint64_t bucket[N_BUCKETS]; /* per bucket, not cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
};

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

series *loom__http_series_http(loom_http *h, const char *method, const char *label)
{
    return series_get(h->slots, SERIES_HTTP, method, label);
}

series *loom__http_series_cmd(loom_http *h, const char *service, const char *command)
{
    return series_get(h->slots, SERIES_CMD, service, command);
}

void loom__http_series_count(series *s, int status)
{
    if (s && status >= 100 && status <= 599)
        atomic_fetch_add_explicit(&s->status[status - 100], 1, memory_order_relaxed);
}

void loom__http_series_observe(series *s, int64_t us)
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

void loom__http_series_free_all(loom_http *h)
{
    if (!h->slots)
        return;
    for (size_t i = 0; i < SERIES_SLOTS; i++)
        series_free(atomic_load(&h->slots[i]));
}

/* ------------------------------------------------------------------------ */
/* The text                                                                  */

/* A Prometheus label value: \ " and newline escaped. */
static void sb_label(loom__sbuf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            loom__sbuf_puts(b, "\\\\");
        else if (*v == '"')
            loom__sbuf_puts(b, "\\\"");
        else if (*v == '\n')
            loom__sbuf_puts(b, "\\n");
        else
            loom__sbuf_add(b, v, 1);
    }
}

static void sb_series_labels(loom__sbuf *sb, const series *s)
{
    loom__sbuf_puts(sb, s->kind == SERIES_HTTP ? "method=\"" : "service=\"");
    sb_label(sb, s->a);
    loom__sbuf_puts(sb, s->kind == SERIES_HTTP ? "\",route=\"" : "\",command=\"");
    sb_label(sb, s->b);
    loom__sbuf_puts(sb, "\"");
}

static void sb_status_lines(loom__sbuf *sb, _Atomic(series *) *slots, int kind, const char *name)
{
    for (size_t i = 0; i < SERIES_SLOTS; i++) {
        series *s = atomic_load(&slots[i]);
        if (!s || s->kind != kind)
            continue;
        for (int k = 0; k < N_STATUS; k++) {
            uint64_t v = atomic_load_explicit(&s->status[k], memory_order_relaxed);
            if (!v)
                continue;
            loom__sbuf_printf(sb, "%s{", name);
            sb_series_labels(sb, s);
            loom__sbuf_printf(sb, ",status=\"%d\"} %" PRIu64 "\n", k + 100, v);
        }
    }
}

/* The runtime's trust counters (docs/security.md). */
static void sb_trust_lines(loom__sbuf *sb, loom_runtime *rt)
{
    static const char *const reasons[LOOM__DROP_N] = {
        [LOOM__DROP_UNSIGNED] = "unsigned",      [LOOM__DROP_BAD] = "bad_signature",
        [LOOM__DROP_SENDER] = "wrong_sender",    [LOOM__DROP_REPLAY] = "replay",
        [LOOM__DROP_REPLY] = "wrong_replier",    [LOOM__DROP_ANNOUNCE] = "announcement",
        [LOOM__DROP_REPLY_TOPIC] = "reply_topic"};
    loom__sbuf_puts(sb, "# HELP loom_messages_refused_total Messages from the broker dropped "
                        "by the trust checks, by reason.\n# TYPE loom_messages_refused_total "
                        "counter\n");
    for (int i = 0; i < LOOM__DROP_N; i++)
        loom__sbuf_printf(sb, "loom_messages_refused_total{reason=\"%s\"} %" PRIu64 "\n",
                          reasons[i], atomic_load(&rt->trust.dropped[i]));
    loom__sbuf_printf(sb,
                      "# HELP loom_messages_verified_total Messages whose signature verified.\n"
                      "# TYPE loom_messages_verified_total counter\n"
                      "loom_messages_verified_total %" PRIu64 "\n"
                      "# HELP loom_announcement_restores_total Times this instance published "
                      "its announcement again after someone cleared or replaced it.\n"
                      "# TYPE loom_announcement_restores_total counter\n"
                      "loom_announcement_restores_total %u\n",
                      atomic_load(&rt->trust.verified), atomic_load(&rt->announce_restores));
}

char *loom__http_metrics_text(loom_http *h)
{
    loom__sbuf sb = {0};
    loom__sbuf_puts(&sb, "# HELP loom_http_requests_total HTTP requests answered by the bridge.\n"
                         "# TYPE loom_http_requests_total counter\n");
    sb_status_lines(&sb, h->slots, SERIES_HTTP, "loom_http_requests_total");
    loom__sbuf_puts(&sb, "# HELP loom_http_request_duration_seconds Time from the request "
                         "headers to the response.\n# TYPE loom_http_request_duration_seconds "
                         "histogram\n");
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
            loom__sbuf_puts(&sb, "loom_http_request_duration_seconds_bucket{");
            sb_series_labels(&sb, s);
            char le[LOOM__JSON_NUMBER_MAX]; /* "%g" would follow LC_NUMERIC */
            loom__json_number(le, bucket_le[k]);
            loom__sbuf_printf(&sb, ",le=\"%s\"} %" PRIu64 "\n", le, cum < count ? cum : count);
        }
        loom__sbuf_puts(&sb, "loom_http_request_duration_seconds_bucket{");
        sb_series_labels(&sb, s);
        loom__sbuf_printf(&sb, ",le=\"+Inf\"} %" PRIu64 "\n", count);
        loom__sbuf_puts(&sb, "loom_http_request_duration_seconds_sum{");
        sb_series_labels(&sb, s);
        uint64_t sum_us = atomic_load(&s->sum_us); /* seconds, without "%f" and LC_NUMERIC */
        loom__sbuf_printf(&sb, "} %" PRIu64 ".%06" PRIu64 "\n", sum_us / 1000000, sum_us % 1000000);
        loom__sbuf_puts(&sb, "loom_http_request_duration_seconds_count{");
        sb_series_labels(&sb, s);
        loom__sbuf_printf(&sb, "} %" PRIu64 "\n", count);
    }
    loom__sbuf_printf(&sb,
                      "# HELP loom_http_in_flight HTTP requests being served.\n"
                      "# TYPE loom_http_in_flight gauge\nloom_http_in_flight %ld\n",
                      atomic_load(&h->in_flight));
    loom__sbuf_puts(&sb, "# HELP loom_command_requests_total Commands invoked through the "
                         "bridge, by the status answered.\n# TYPE loom_command_requests_total "
                         "counter\n");
    sb_status_lines(&sb, h->slots, SERIES_CMD, "loom_command_requests_total");
    sb_trust_lines(&sb, h->rt);
    if (sb.oom) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}
