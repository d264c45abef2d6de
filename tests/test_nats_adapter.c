/* The NATS adapter, driven directly through its ops table against real
 * nats-server processes (one server, and a three-node cluster), with a
 * test host standing in for the core. Nothing here relies on retained
 * messages or wills: NATS core has neither. Every wait is bounded. */
#define _GNU_SOURCE
#include <nats/nats.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support/nats.h"
#include "support/support.h"

#include "broker/adapters.h"
#include "codec/msg.h"
#include "codec/topic.h"
#include "core/util.h"

/* ------------------------------------------------------------------------ */
/* Test host                                                                 */

typedef struct rec {
    void *token;
    char *topic;
    char *data;
    size_t len;
    char *rt;
    char *corr;
    size_t corr_len;
} rec;

#define MAX_STATES 64
#define MAX_LOGS 512
#define MAX_SUBS 256

typedef struct t_host {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec *d;
    size_t n, cap;
    loom_broker_state states[MAX_STATES];
    char *details[MAX_STATES];
    size_t n_states;
    void *sub_tokens[MAX_SUBS];
    loom_err sub_errs[MAX_SUBS];
    size_t n_subs;
    loom_log_level log_levels[MAX_LOGS];
    char *logs[MAX_LOGS];
    size_t n_logs;
    loom_err deliver_result; /* what deliver() returns */
    size_t deliver_calls;
    bool stopped; /* set by the test after stop(): any upcall then is a bug */
    int late_upcalls;
    loom_adapter_host host;
} t_host;

static void note_late(t_host *h)
{
    if (h->stopped)
        h->late_upcalls++;
}

static loom_err h_deliver(void *core, const loom_delivery *d)
{
    t_host *h = core;
    pthread_mutex_lock(&h->mu);
    note_late(h);
    h->deliver_calls++;
    loom_err res = h->deliver_result;
    if (res == LOOM_OK) {
        if (h->n == h->cap) {
            h->cap = h->cap ? h->cap * 2 : 64;
            h->d = realloc(h->d, h->cap * sizeof *h->d);
            assert_non_null(h->d);
        }
        rec *r = &h->d[h->n++];
        memset(r, 0, sizeof *r);
        r->token = d->token;
        r->topic = strdup(d->topic);
        r->data = malloc(d->len + 1);
        memcpy(r->data, d->data ? d->data : "", d->len);
        r->data[d->len] = '\0';
        r->len = d->len;
        r->rt = d->response_topic ? strdup(d->response_topic) : NULL;
        if (d->correlation) {
            r->corr = malloc(d->correlation_len);
            memcpy(r->corr, d->correlation, d->correlation_len);
            r->corr_len = d->correlation_len;
        }
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return res;
}

static void h_state(void *core, loom_broker_state state, const char *detail)
{
    t_host *h = core;
    pthread_mutex_lock(&h->mu);
    note_late(h);
    if (h->n_states < MAX_STATES) {
        h->states[h->n_states] = state;
        h->details[h->n_states] = detail ? strdup(detail) : NULL;
        h->n_states++;
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void h_subscribed(void *core, void *token, loom_err err)
{
    t_host *h = core;
    pthread_mutex_lock(&h->mu);
    note_late(h);
    if (h->n_subs < MAX_SUBS) {
        h->sub_tokens[h->n_subs] = token;
        h->sub_errs[h->n_subs] = err;
        h->n_subs++;
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void h_log(void *core, loom_log_level level, const char *fmt, ...) LOOM_PRINTF(3, 4);
static void h_log(void *core, loom_log_level level, const char *fmt, ...)
{
    t_host *h = core;
    va_list ap;
    va_start(ap, fmt);
    char *line = NULL;
    if (vasprintf(&line, fmt, ap) < 0)
        line = NULL;
    va_end(ap);
    if (getenv("T_VERBOSE"))
        fprintf(stderr, "%lld [%p %d] %s\n", (long long)(loom__mono_ms() % 100000), (void *)h,
                (int)level, line ? line : "?");
    pthread_mutex_lock(&h->mu);
    note_late(h);
    if (h->n_logs < MAX_LOGS && line) {
        h->logs[h->n_logs] = line;
        h->log_levels[h->n_logs] = level;
        h->n_logs++;
        line = NULL;
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    free(line);
}

static void host_init(t_host *h)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    h->host = (loom_adapter_host){.core = h,
                                  .deliver = h_deliver,
                                  .state_changed = h_state,
                                  .subscribed = h_subscribed,
                                  .log = h_log};
}

static void host_clear_deliveries(t_host *h)
{
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n; i++) {
        free(h->d[i].topic);
        free(h->d[i].data);
        free(h->d[i].rt);
        free(h->d[i].corr);
    }
    h->n = 0;
    pthread_mutex_unlock(&h->mu);
}

static void host_fini(t_host *h)
{
    host_clear_deliveries(h);
    free(h->d);
    for (size_t i = 0; i < h->n_states; i++)
        free(h->details[i]);
    for (size_t i = 0; i < h->n_logs; i++)
        free(h->logs[i]);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
}

static int64_t mono_ms(void)
{
    return loom__mono_ms();
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Waits on the host's condition until pred(h, arg) holds; false on timeout. */
static bool host_wait(t_host *h, bool (*pred)(t_host *, const void *), const void *arg,
                      int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    pthread_mutex_lock(&h->mu);
    bool ok;
    while (!(ok = pred(h, arg))) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t wait = left > 50 ? 50 : left;
        ts.tv_nsec += (long)wait * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return ok;
}

typedef struct state_arg {
    size_t from;
    loom_broker_state state;
} state_arg;

static bool has_state(t_host *h, const void *arg)
{
    const state_arg *s = arg;
    for (size_t i = s->from; i < h->n_states; i++)
        if (h->states[i] == s->state)
            return true;
    return false;
}

/* Waits for `state` reported at index >= from. */
static bool wait_state(t_host *h, size_t from, loom_broker_state state, int timeout_ms)
{
    state_arg a = {from, state};
    return host_wait(h, has_state, &a, timeout_ms);
}

static size_t n_states(t_host *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->n_states;
    pthread_mutex_unlock(&h->mu);
    return n;
}

static bool has_n(t_host *h, const void *arg)
{
    return h->n >= *(const size_t *)arg;
}

static bool wait_deliveries(t_host *h, size_t n, int timeout_ms)
{
    return host_wait(h, has_n, &n, timeout_ms);
}

static size_t n_deliveries(t_host *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->n;
    pthread_mutex_unlock(&h->mu);
    return n;
}

static bool has_calls(t_host *h, const void *arg)
{
    return h->deliver_calls >= *(const size_t *)arg;
}

static bool has_subs(t_host *h, const void *arg)
{
    return h->n_subs >= *(const size_t *)arg;
}

static size_t count_token(t_host *h, void *token)
{
    pthread_mutex_lock(&h->mu);
    size_t c = 0;
    for (size_t i = 0; i < h->n; i++)
        c += h->d[i].token == token;
    pthread_mutex_unlock(&h->mu);
    return c;
}

/* Deliveries with this body. */
static size_t count_body(t_host *h, const char *body)
{
    pthread_mutex_lock(&h->mu);
    size_t c = 0;
    for (size_t i = 0; i < h->n; i++)
        c += strcmp(h->d[i].data, body) == 0;
    pthread_mutex_unlock(&h->mu);
    return c;
}

static size_t count_logs_locked(t_host *h, loom_log_level min_level, const char *needle)
{
    size_t c = 0;
    for (size_t i = 0; i < h->n_logs; i++)
        c += h->log_levels[i] >= min_level && strstr(h->logs[i], needle) != NULL;
    return c;
}

static size_t count_logs(t_host *h, loom_log_level min_level, const char *needle)
{
    pthread_mutex_lock(&h->mu);
    size_t c = count_logs_locked(h, min_level, needle);
    pthread_mutex_unlock(&h->mu);
    return c;
}

typedef struct log_arg {
    loom_log_level level;
    const char *needle;
    size_t n;
} log_arg;

static bool has_logs(t_host *h, const void *arg)
{
    const log_arg *l = arg;
    return count_logs_locked(h, l->level, l->needle) >= l->n;
}

/* Waits until n log lines at level or above contain needle. */
static bool wait_logs(t_host *h, loom_log_level level, const char *needle, size_t n, int timeout_ms)
{
    log_arg l = {level, needle, n};
    return host_wait(h, has_logs, &l, timeout_ms);
}

/* ------------------------------------------------------------------------ */
/* Adapter helpers                                                           */

static const loom_adapter_ops *ops = &loom__nats_adapter;

/* Quick reconnects so the tests stay short. */
static const char *fast_opts =
    "{\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 200, \"connect_timeout_ms\": 2000}";

static void *adapter_new_ops(const loom_adapter_ops *o, t_host *h, const char *url,
                             const char *options_json)
{
    cJSON *js = options_json ? t_json(options_json) : NULL;
    char id[33];
    loom__random_id(id);
    loom_adapter_options opts = {.url = url, .instance_id = id, .options = js};
    void *a = NULL;
    loom_err err = o->init(&a, &h->host, &opts);
    cJSON_Delete(js);
    if (err != LOOM_OK)
        fail_msg("init(%s) failed: %s", url, loom_strerror(err));
    return a;
}

static void *adapter_new(t_host *h, const char *url, const char *options_json)
{
    return adapter_new_ops(ops, h, url, options_json);
}

/* Connects several adapters at once. */
static void adapters_up(size_t n, t_host *h, void **a, const char *url, const char *options_json)
{
    for (size_t i = 0; i < n; i++)
        a[i] = adapter_new(&h[i], url, options_json ? options_json : fast_opts);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ops->connect(a[i]), LOOM_OK);
    for (size_t i = 0; i < n; i++)
        if (!wait_state(&h[i], 0, LOOM_BROKER_CONNECTED, 8000))
            fail_msg("adapter %zu did not connect to %s", i, url);
}

static void adapter_down_ops(const loom_adapter_ops *o, void *a, t_host *h)
{
    o->close(a);
    o->stop(a);
    pthread_mutex_lock(&h->mu);
    h->stopped = true;
    pthread_mutex_unlock(&h->mu);
    o->fini(a);
    assert_int_equal(h->late_upcalls, 0);
}

static void adapter_down(void *a, t_host *h)
{
    adapter_down_ops(ops, a, h);
}

/* Subscribes and waits for the completion. */
static loom_err subscribe_wait(void *a, t_host *h, const char *filter, const char *group,
                               void *token)
{
    pthread_mutex_lock(&h->mu);
    size_t want = h->n_subs + 1;
    pthread_mutex_unlock(&h->mu);
    loom_err err = ops->subscribe(a, filter, group, token, 1);
    if (err != LOOM_OK)
        return err;
    if (!host_wait(h, has_subs, &want, 5000))
        fail_msg("subscription to %s not completed", filter);
    pthread_mutex_lock(&h->mu);
    assert_ptr_equal(h->sub_tokens[want - 1], token);
    err = h->sub_errs[want - 1];
    pthread_mutex_unlock(&h->mu);
    return err;
}

typedef struct pub_args {
    const char *rt;
    const void *corr;
    size_t corr_len;
    const char *status;
    int qos;
} pub_args;

/* Publishes; on failure the message is still ours to release. */
static loom_err publish(void *a, const char *topic, const char *data, size_t len, const pub_args *x)
{
    static const pub_args none = {.qos = 1};
    if (!x)
        x = &none;
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_non_null(m);
    loom_publish p = {.topic = topic,
                      .msg = m,
                      .data = data,
                      .len = len,
                      .response_topic = x->rt,
                      .correlation = x->corr,
                      .correlation_len = x->corr_len,
                      .status = x->status,
                      .qos = x->qos};
    loom_err err = ops->publish(a, &p);
    if (err != LOOM_OK)
        loom_msg_release(m);
    return err;
}

static loom_err publish_str(void *a, const char *topic, const char *text)
{
    return publish(a, topic, text, strlen(text), NULL);
}

/* Publishes `body` on topic every 50 ms until h has a delivery with it
 * (subscription interest travels between cluster nodes asynchronously). */
static bool publish_until_seen(void *p, const char *topic, const char *body, t_host *h,
                               int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    while (mono_ms() < deadline) {
        loom_err err = publish_str(p, topic, body);
        if (err != LOOM_OK && err != LOOM_EUNAVAILABLE)
            fail_msg("publish on %s: %s", topic, loom_strerror(err));
        int64_t step = mono_ms() + 50;
        while (mono_ms() < step) {
            if (count_body(h, body) > 0)
                return true;
            sleep_ms(5);
        }
    }
    return count_body(h, body) > 0;
}

static int unused_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* The last "connected to ..." line's URL port, or 0. */
static int connected_port(t_host *h)
{
    int port = 0;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n_logs; i++) {
        const char *p = strstr(h->logs[i], "nats: connected to ");
        const char *colon = p ? strrchr(p, ':') : NULL;
        if (colon)
            port = atoi(colon + 1);
    }
    pthread_mutex_unlock(&h->mu);
    return port;
}

/* ------------------------------------------------------------------------ */
/* A raw nats.c client, to see exactly what goes over the wire               */

typedef struct raw_client {
    natsConnection *nc;
    natsSubscription *sub;
} raw_client;

static void raw_open(raw_client *r, const char *url, const char *subject)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(natsConnection_ConnectTo(&r->nc, url), NATS_OK);
    if (subject) {
        assert_int_equal(natsConnection_SubscribeSync(&r->sub, r->nc, subject), NATS_OK);
        assert_int_equal(natsConnection_FlushTimeout(r->nc, 2000), NATS_OK);
    }
}

static natsMsg *raw_next(raw_client *r, int timeout_ms)
{
    natsMsg *m = NULL;
    if (natsSubscription_NextMsg(&m, r->sub, timeout_ms) != NATS_OK)
        return NULL;
    return m;
}

static const char *raw_header(natsMsg *m, const char *key)
{
    const char *v = NULL;
    return natsMsgHeader_Get(m, key, &v) == NATS_OK ? v : NULL;
}

static void raw_close(raw_client *r)
{
    natsSubscription_Destroy(r->sub);
    natsConnection_Destroy(r->nc);
}

/* ------------------------------------------------------------------------ */
/* Fixture: one server for most tests                                        */

static t_nats shared_server;

static int group_setup(void **state)
{
    (void)state;
    t_nats_start(&shared_server);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    t_nats_stop(&shared_server);
    return 0;
}

static const char *url(void)
{
    return t_nats_url(&shared_server);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */

static void test_tables(void **state)
{
    (void)state;
    assert_int_equal(loom__nats_adapter.abi_version, LOOM_ADAPTER_ABI_VERSION);
    assert_string_equal(loom__nats_adapter.scheme, "nats");
    assert_string_equal(loom__nats_tls_adapter.scheme, "tls");
    /* no RETAIN, no WILL: NATS core has neither (the core compensates) */
    uint32_t want = LOOM_CAP_GROUPS | LOOM_CAP_PROPERTIES;
    assert_int_equal(loom__nats_adapter.caps, want);
    assert_int_equal(loom__nats_tls_adapter.caps, want);
    assert_ptr_equal(loom__nats_adapter.publish, loom__nats_tls_adapter.publish);
}

static loom_err try_init(const char *u, const char *options_json, t_host *h)
{
    cJSON *o = options_json ? t_json(options_json) : NULL;
    loom_adapter_options opts = {.url = u, .instance_id = "inst", .options = o};
    void *a = NULL;
    loom_err err = ops->init(&a, &h->host, &opts);
    cJSON_Delete(o);
    if (err == LOOM_OK) {
        assert_non_null(a);
        ops->fini(a); /* never connected: fini alone must do */
    } else {
        assert_null(a);
    }
    return err;
}

static const char *last_log(t_host *h)
{
    return h->n_logs ? h->logs[h->n_logs - 1] : "";
}

static void test_bad_urls_and_options(void **state)
{
    (void)state;
    t_host h;
    host_init(&h);
    static const char *const bad[] = {
        "mqtt://127.0.0.1:4222",
        "nats://",
        "nats://:4222",
        "nats://host:0",
        "nats://host:65536",
        "nats://host:12ab",
        "nats://host:",
        "nats://host/path",
        "nats://host:4222/",
        "nats://[::1",
        "nats://[zz]:1",
        "nats://host?x=1",
        "nats://ho st",
        "NATS://host",
        "nats:/host",
        "nats://[::1]x",
        "nats://host:+4222",
        "nats://host:042220",
        "",
        "nats://a:1,",
        "nats://a:1,,b:2",
        "nats://,a:1",
        "nats://@host",
        "nats://:pw@host",
        "nats://u%zz:p@host",
        "nats://u:p%00@host",
        "nats://u:p@a:1,v:q@b:2",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        size_t logs = h.n_logs;
        if (try_init(bad[i], NULL, &h) != LOOM_ECONFIG)
            fail_msg("'%s' accepted", bad[i]);
        /* ... with a logged reason naming the URL */
        assert_true(h.n_logs > logs);
        assert_int_equal(h.log_levels[h.n_logs - 1], LOOM_LOG_ERROR);
        if (!strchr(bad[i], '@'))
            assert_non_null(strstr(last_log(&h), bad[i]));
    }
    /* credentials never reach the log */
    assert_int_equal(try_init("nats://u:s3cret@a:1,b:c", NULL, &h), LOOM_ECONFIG);
    assert_null(strstr(last_log(&h), "s3cret"));
    assert_non_null(strstr(last_log(&h), "***@a:1"));

    static const char *const good[] = {
        "nats://127.0.0.1",
        "nats://localhost:1",
        "tls://broker.example.com",
        "nats://[::1]:4222",
        "nats://[::1]",
        "nats://my_host-1.local:65535",
        "nats://a:1,b:2,c:3",
        "nats://u:p@a:1,b:2",
        "nats://u:p@a:1,u:p@b:2",
        "nats://tok3n@a",
        "nats://us%40er:p%3Aw@h:4222",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(good); i++)
        if (try_init(good[i], NULL, &h) != LOOM_OK)
            fail_msg("'%s' rejected: %s", good[i], last_log(&h));

    /* options */
    assert_int_equal(try_init("nats://h", "{\"keepalive\": \"abc\"}", &h), LOOM_ECONFIG);
    assert_non_null(strstr(last_log(&h), "keepalive"));
    assert_int_equal(try_init("nats://h", "{\"keepalive\": -1}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"buffer\": 1.5}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"client_id\": 5}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"client_id\": \"\"}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"randomize\": \"no\"}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"send_asap\": 1}", &h), LOOM_ECONFIG);
    assert_int_equal(
        try_init("nats://h", "{\"reconnect_min_ms\": 500, \"reconnect_max_ms\": 100}", &h),
        LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"connect_timeout_ms\": 0}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "{\"password_file\": \"/nonexistent/pw\"}", &h),
                     LOOM_ECONFIG);
    assert_non_null(strstr(last_log(&h), "/nonexistent/pw"));
    assert_int_equal(try_init("tls://h", "{\"tls\": {\"ca\": \"/nonexistent/ca.pem\"}}", &h),
                     LOOM_ECONFIG);
    assert_int_equal(try_init("tls://h", "{\"tls\": {\"verify\": \"yes\"}}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("tls://h", "{\"tls\": {\"cert\": \"/dev/null\"}}", &h),
                     LOOM_ECONFIG); /* a certificate without its key */
    assert_int_equal(try_init("tls://h", "{\"tls\": 3}", &h), LOOM_ECONFIG);
    assert_int_equal(try_init("nats://h", "[1]", &h), LOOM_ECONFIG);
    /* TLS settings are ignored for plain nats://; unknown keys belong to the core */
    assert_int_equal(try_init("nats://h",
                              "{\"tls\": {\"ca\": \"/nonexistent\"}, \"prefix\": "
                              "\"x\", \"qos\": {\"command\": 1}}",
                              &h),
                     LOOM_OK);
    assert_int_equal(try_init("nats://h",
                              "{\"buffer\": 0, \"keepalive\": \"60\", "
                              "\"randomize\": false, \"send_asap\": false}",
                              &h),
                     LOOM_OK);
    void *a = NULL;
    loom_adapter_options opts = {.url = "nats://h"};
    assert_int_equal(ops->init(&a, NULL, &opts), LOOM_EINVAL);
    assert_int_equal(ops->init(&a, &h.host, NULL), LOOM_EINVAL);
    loom_adapter_options nourl = {.url = NULL};
    assert_int_equal(ops->init(&a, &h.host, &nourl), LOOM_EINVAL);
    host_fini(&h);
}

static void test_connect_and_validation(void **state)
{
    (void)state;
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, url(), fast_opts);
    int tok;
    /* not connected yet */
    assert_int_equal(ops->subscribe(a, "t/x", NULL, &tok, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(publish_str(a, "t/x", "{}"), LOOM_EUNAVAILABLE);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_int_equal(ops->connect(a), LOOM_ESTATE);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 5000));
    /* CONNECTING first, then CONNECTED, and nothing else */
    assert_int_equal(h.states[0], LOOM_BROKER_CONNECTING);
    assert_int_equal(h.states[1], LOOM_BROKER_CONNECTED);
    assert_int_equal(connected_port(&h), shared_server.port);

    assert_int_equal(ops->subscribe(a, "a/#/b", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b+", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/#x", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, NULL, NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", "", &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", NULL, &tok, 3), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", NULL, &tok, -1), LOOM_EINVAL);
    char *huge = malloc(70000);
    memset(huge, 'x', 69999);
    huge[69999] = '\0';
    assert_int_equal(ops->subscribe(a, huge, NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->unsubscribe(a, "a/b", NULL, &tok), LOOM_ENOTFOUND);

    assert_int_equal(publish_str(a, "t/+/x", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, "t/#", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, "t/a+b", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, "", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, huge, "{}"), LOOM_EINVAL);
    free(huge);
    pub_args q3 = {.qos = 3};
    assert_int_equal(publish(a, "t/x", "{}", 2, &q3), LOOM_EINVAL);
    assert_int_equal(publish(a, "t/x", NULL, 5, NULL), LOOM_EINVAL);
    pub_args badrt = {.qos = 1, .rt = "r/#"};
    assert_int_equal(publish(a, "t/x", "{}", 2, &badrt), LOOM_EINVAL);
    pub_args badstatus = {.qos = 1, .status = "200\r\nX: y"}; /* header injection */
    assert_int_equal(publish(a, "t/x", "{}", 2, &badstatus), LOOM_EINVAL);
    pub_args badcorr = {.qos = 1, .corr_len = 4};
    assert_int_equal(publish(a, "t/x", "{}", 2, &badcorr), LOOM_EINVAL);
    /* the server's limit (1 MiB by default) */
    size_t big = 2u * 1024 * 1024;
    char *blob = calloc(1, big);
    assert_int_equal(publish(a, "t/x", blob, big, NULL), LOOM_ETOOBIG);
    free(blob);
    assert_int_equal(publish(a, "t/x", "{}", (size_t)3 * 1024 * 1024 * 1024, NULL), LOOM_ETOOBIG);

    adapter_down(a, &h);
    host_fini(&h);
}

/* Adapter to adapter: reply subject and correlation come back; a plain
 * NATS client sees the headers; a plain NATS request gets a bare reply. */
static void test_roundtrip_headers(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    raw_client r;
    raw_open(&r, url(), "t.wire.>");
    int tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/wire/+", NULL, &tok), LOOM_OK);

    static const unsigned char corr[] = {0x01, 0x00, 0xff, 0x7f};
    pub_args x = {
        .qos = 1, .rt = "t/reply/abc", .corr = corr, .corr_len = sizeof corr, .status = "201"};
    const char *body = "{\"a\":1}";
    assert_int_equal(publish(a[1], "t/wire/one", body, strlen(body), &x), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    rec *d = &h[0].d[0];
    assert_ptr_equal(d->token, &tok);
    assert_string_equal(d->topic, "t/wire/one");
    assert_int_equal(d->len, strlen(body));
    assert_memory_equal(d->data, body, d->len);
    assert_non_null(d->rt);
    assert_string_equal(d->rt, "t/reply/abc");
    assert_int_equal(d->corr_len, sizeof corr);
    assert_memory_equal(d->corr, corr, sizeof corr);

    /* what a plain NATS client sees */
    natsMsg *m = raw_next(&r, 5000);
    assert_non_null(m);
    assert_string_equal(natsMsg_GetSubject(m), "t.wire.one");
    assert_string_equal(natsMsg_GetReply(m), "t.reply.abc");
    assert_string_equal(raw_header(m, "status"), "201");
    assert_string_equal(raw_header(m, "correlation"), "0100ff7f");
    natsMsg_Destroy(m);

    /* no properties: no headers at all, and an empty payload */
    pub_args q0 = {.qos = 0};
    assert_int_equal(publish(a[1], "t/wire/two", "", 0, &q0), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 2, 5000));
    d = &h[0].d[1];
    assert_string_equal(d->topic, "t/wire/two");
    assert_int_equal(d->len, 0);
    assert_null(d->rt);
    assert_null(d->corr);
    m = raw_next(&r, 5000);
    assert_non_null(m);
    assert_null(natsMsg_GetReply(m));
    assert_null(raw_header(m, "status"));
    natsMsg_Destroy(m);

    /* a plain NATS request (bare JSON, an inbox to reply to) */
    host_clear_deliveries(&h[0]);
    int cmd_tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/cmd/svc/1/do", "svc.1", &cmd_tok), LOOM_OK);
    raw_client inbox;
    raw_open(&inbox, url(), "_INBOX.loomtest.>");
    const char *req = "{\"n\":2}";
    assert_int_equal(natsConnection_PublishRequest(r.nc, "t.cmd.svc.1.do", "_INBOX.loomtest.7", req,
                                                   (int)strlen(req)),
                     NATS_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    d = &h[0].d[0];
    assert_ptr_equal(d->token, &cmd_tok);
    assert_string_equal(d->topic, "t/cmd/svc/1/do");
    assert_string_equal(d->data, req);
    assert_string_equal(d->rt, "_INBOX/loomtest/7");
    assert_null(d->corr);
    /* what the core does for a bare request: a bare reply with a status */
    pub_args bare = {.qos = 1, .status = "200"};
    const char *res = "{\"r\":4}";
    assert_int_equal(publish(a[0], d->rt, res, strlen(res), &bare), LOOM_OK);
    m = raw_next(&inbox, 5000);
    assert_non_null(m);
    assert_string_equal(natsMsg_GetSubject(m), "_INBOX.loomtest.7");
    assert_string_equal(natsMsg_GetData(m), res);
    assert_string_equal(raw_header(m, "status"), "200");
    assert_null(raw_header(m, "correlation"));
    natsMsg_Destroy(m);
    raw_close(&inbox);

    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
    raw_close(&r);
}

/* Queue groups: two members of one group split the messages, another
 * group gets them all, and so does a plain subscription. */
static void test_queue_groups(void **state)
{
    (void)state;
    enum { N = 100 };
    t_host h[5];
    void *a[5];
    int tok[5];
    for (int i = 0; i < 5; i++)
        host_init(&h[i]);
    adapters_up(5, h, a, url(), NULL);
    /* 0 and 1 share group g1, 2 is alone in g2, 3 subscribes plainly; 4 publishes */
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/q/+", "svc.1.g1", &tok[0]), LOOM_OK);
    assert_int_equal(subscribe_wait(a[1], &h[1], "t/q/+", "svc.1.g1", &tok[1]), LOOM_OK);
    assert_int_equal(subscribe_wait(a[2], &h[2], "t/q/+", "svc.1.g2", &tok[2]), LOOM_OK);
    assert_int_equal(subscribe_wait(a[3], &h[3], "t/q/+", NULL, &tok[3]), LOOM_OK);
    for (int i = 0; i < N; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%03d", i);
        assert_int_equal(publish_str(a[4], "t/q/x", body), LOOM_OK);
    }
    int64_t deadline = mono_ms() + 10000;
    while (mono_ms() < deadline && (n_deliveries(&h[0]) + n_deliveries(&h[1]) < N ||
                                    n_deliveries(&h[2]) < N || n_deliveries(&h[3]) < N))
        sleep_ms(10);
    sleep_ms(200); /* nothing more may come */
    size_t n0 = n_deliveries(&h[0]), n1 = n_deliveries(&h[1]);
    assert_int_equal(n0 + n1, N);
    assert_true(n0 > 0 && n1 > 0);
    assert_int_equal(n_deliveries(&h[2]), N);
    assert_int_equal(n_deliveries(&h[3]), N);
    /* disjoint halves */
    bool seen[N] = {false};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < h[k].n; i++) {
            int m = atoi(h[k].d[i].data + 1);
            assert_true(m >= 0 && m < N);
            assert_false(seen[m]);
            seen[m] = true;
            assert_ptr_equal(h[k].d[i].token, &tok[k]);
        }
    }
    /* the queue group's name on the wire: '.' escaped like in subjects */
    raw_client r;
    raw_open(&r, url(), NULL);
    natsSubscription *qs = NULL;
    assert_int_equal(natsConnection_QueueSubscribeSync(&qs, r.nc, "t.q.*", "svc%2E1%2Eg2"),
                     NATS_OK);
    assert_int_equal(natsConnection_FlushTimeout(r.nc, 2000), NATS_OK);
    host_clear_deliveries(&h[2]);
    for (int i = 0; i < 40; i++)
        assert_int_equal(publish_str(a[4], "t/q/y", "shared"), LOOM_OK);
    int raw_got = 0;
    natsMsg *m;
    while (natsSubscription_NextMsg(&m, qs, 300) == NATS_OK) {
        raw_got++;
        natsMsg_Destroy(m);
    }
    assert_true(raw_got > 0);
    assert_int_equal((size_t)raw_got + n_deliveries(&h[2]), 40); /* one group: split */
    natsSubscription_Destroy(qs);
    raw_close(&r);

    for (int i = 0; i < 5; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

static void test_overlapping_subscriptions(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    t_host *hs = &h[0];
    void *s = a[0], *p = a[1];
    int t1, t2, t3, t4;
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t1), LOOM_OK);
    assert_int_equal(subscribe_wait(s, hs, "t/two/#", NULL, &t2), LOOM_OK);
    /* the same filter again for another token */
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t3), LOOM_OK);
    /* and a queue group in the same client */
    assert_int_equal(subscribe_wait(s, hs, "t/two/#", "solo", &t4), LOOM_OK);
    /* subscribing again is a no-op (confirmed, no second subscription) */
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t1), LOOM_OK);
    assert_int_equal(subscribe_wait(s, hs, "t/two/#", "solo", &t4), LOOM_OK);

    assert_int_equal(publish_str(p, "t/two/x", "1"), LOOM_OK);
    assert_true(wait_deliveries(hs, 4, 5000));
    sleep_ms(200);
    assert_int_equal(n_deliveries(hs), 4);
    assert_int_equal(count_token(hs, &t1), 1);
    assert_int_equal(count_token(hs, &t2), 1);
    assert_int_equal(count_token(hs, &t3), 1);
    assert_int_equal(count_token(hs, &t4), 1);

    /* t/two/a/b only matches '#' */
    host_clear_deliveries(hs);
    assert_int_equal(publish_str(p, "t/two/a/b", "2"), LOOM_OK);
    assert_true(wait_deliveries(hs, 2, 5000));
    sleep_ms(150);
    assert_int_equal(n_deliveries(hs), 2);
    assert_int_equal(count_token(hs, &t2), 1);
    assert_int_equal(count_token(hs, &t4), 1);

    /* unsubscribe one token of a filter: the other keeps receiving */
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t1), LOOM_OK);
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t1), LOOM_ENOTFOUND);
    assert_int_equal(ops->unsubscribe(s, "t/two/#", "other", &t4), LOOM_ENOTFOUND);
    assert_int_equal(ops->unsubscribe(s, "t/two/#", NULL, &t2), LOOM_OK);
    assert_int_equal(ops->unsubscribe(s, "t/two/#", "solo", &t4), LOOM_OK);
    host_clear_deliveries(hs);
    assert_int_equal(publish_str(p, "t/two/y", "3"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));
    sleep_ms(150);
    assert_int_equal(n_deliveries(hs), 1);
    assert_int_equal(count_token(hs, &t3), 1);
    /* the last one gone: nothing arrives */
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t3), LOOM_OK);
    host_clear_deliveries(hs);
    assert_int_equal(publish_str(p, "t/two/z", "4"), LOOM_OK);
    sleep_ms(250);
    assert_int_equal(n_deliveries(hs), 0);
    /* and subscribing again works */
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t1), LOOM_OK);
    assert_int_equal(publish_str(p, "t/two/w", "5"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));
    assert_int_equal(count_token(hs, &t1), 1);

    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

/* Segments holding bytes NATS gives a meaning ('.', '*', '>', ' ') or
 * that the core escapes ('%', '/', '+', '#', '$', tabs): each stays one
 * token, and every topic comes back byte for byte. */
static void test_segment_escaping(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    raw_client r;
    raw_open(&r, url(), "t.esc.>");
    int one, all;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/esc/+", NULL, &one), LOOM_OK);
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/esc/#", NULL, &all), LOOM_OK);

    static const struct {
        const char *raw;  /* the original segment */
        const char *wire; /* the NATS token */
    } segs[] = {
        {"a.b", "a%2Eb"},
        {"x*y", "x%2Ay"},
        {"p>q", "p%3Eq"},
        {"*", "%2A"},
        {">", "%3E"},
        {"50%", "50%25"},
        {"with space", "with%20space"},
        {"tab\there", "tab%09here"},
        {"a/b", "a%2Fb"},
        {"+", "%2B"},
        {"#", "%23"},
        {"$sys", "%24sys"},
        {"%2E", "%252E"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},
        {"", "%"},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(segs); i++) {
        char *esc = loom__topic_escape(segs[i].raw);
        assert_non_null(esc);
        char topic[128], wire[128];
        snprintf(topic, sizeof topic, "t/esc/%s", esc);
        snprintf(wire, sizeof wire, "t.esc.%s", segs[i].wire);
        free(esc);
        host_clear_deliveries(&h[0]);
        assert_int_equal(publish_str(a[1], topic, "v"), LOOM_OK);
        assert_true(wait_deliveries(&h[0], 2, 5000));
        sleep_ms(20);
        /* one segment: '+' matches it, and '#' does */
        assert_int_equal(n_deliveries(&h[0]), 2);
        assert_int_equal(count_token(&h[0], &one), 1);
        assert_int_equal(count_token(&h[0], &all), 1);
        for (size_t k = 0; k < 2; k++) {
            assert_string_equal(h[0].d[k].topic, topic);
            char *back = loom__topic_unescape(h[0].d[k].topic + 6, strlen(topic) - 6);
            assert_non_null(back);
            assert_string_equal(back, segs[i].raw);
            free(back);
        }
        natsMsg *m = raw_next(&r, 5000);
        assert_non_null(m);
        assert_string_equal(natsMsg_GetSubject(m), wire);
        natsMsg_Destroy(m);
    }
    /* two segments: only '#' */
    host_clear_deliveries(&h[0]);
    assert_int_equal(publish_str(a[1], "t/esc/a.b/c d", "w"), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    sleep_ms(100);
    assert_int_equal(n_deliveries(&h[0]), 1);
    assert_int_equal(count_token(&h[0], &all), 1);
    assert_string_equal(h[0].d[0].topic, "t/esc/a.b/c d");
    natsMsg *m = raw_next(&r, 5000);
    assert_non_null(m);
    assert_string_equal(natsMsg_GetSubject(m), "t.esc.a%2Eb.c%20d");
    natsMsg_Destroy(m);
    /* a reply topic with such segments survives too */
    host_clear_deliveries(&h[0]);
    pub_args x = {.qos = 1, .rt = "t/reply/in.st ance/%25"};
    assert_int_equal(publish(a[1], "t/esc/q", "r", 1, &x), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 2, 5000));
    assert_string_equal(h[0].d[0].rt, "t/reply/in.st ance/%25");
    /* what foreign publishers may send: '/', '+' and '#' inside a token come
     * back escaped (still one segment), a lone '%' is an empty segment */
    host_clear_deliveries(&h[0]);
    assert_int_equal(natsConnection_PublishString(r.nc, "t.esc.a/b+c#d", "f"), NATS_OK);
    assert_true(wait_deliveries(&h[0], 2, 5000));
    assert_string_equal(h[0].d[0].topic, "t/esc/a%2Fb%2Bc%23d");
    host_clear_deliveries(&h[0]);
    assert_int_equal(natsConnection_PublishString(r.nc, "t.esc.%", "g"), NATS_OK);
    assert_true(wait_deliveries(&h[0], 2, 5000));
    assert_string_equal(h[0].d[0].topic, "t/esc/");

    raw_close(&r);
    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

/* A request to a subject nobody serves: the server's "no responders"
 * notice reaches the reply subscription, and is not handed to the core. */
static void test_no_responders_dropped(void **state)
{
    (void)state;
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, url(), fast_opts);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 5000));
    int tok;
    assert_int_equal(subscribe_wait(a, &h, "t/nr/reply/me", NULL, &tok), LOOM_OK);
    static const unsigned char corr[] = {1, 2, 3};
    pub_args x = {.qos = 1, .rt = "t/nr/reply/me", .corr = corr, .corr_len = 3};
    assert_int_equal(publish(a, "t/nr/cmd/nobody", "{}", 2, &x), LOOM_OK);
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "no responders", 1, 5000));
    sleep_ms(100);
    assert_int_equal(h.deliver_calls, 0);
    /* a real reply still arrives */
    assert_int_equal(publish_str(a, "t/nr/reply/me", "{\"ok\":1}"), LOOM_OK);
    assert_true(wait_deliveries(&h, 1, 5000));
    adapter_down(a, &h);
    host_fini(&h);
}

static void test_overload_drops_with_one_warning(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    t_host *hs = &h[0];
    int tok;
    assert_int_equal(subscribe_wait(a[0], hs, "t/ovl", NULL, &tok), LOOM_OK);
    pthread_mutex_lock(&hs->mu);
    hs->deliver_result = LOOM_EOVERLOAD;
    pthread_mutex_unlock(&hs->mu);
    for (int i = 0; i < 5; i++)
        assert_int_equal(publish_str(a[1], "t/ovl", "x"), LOOM_OK);
    size_t five = 5;
    assert_true(host_wait(hs, has_calls, &five, 5000));
    sleep_ms(100);
    assert_int_equal(hs->deliver_calls, 5); /* taken once each, not redelivered */
    assert_int_equal(count_logs(hs, LOOM_LOG_WARN, "dropped"), 1);
    pthread_mutex_lock(&hs->mu);
    hs->deliver_result = LOOM_OK;
    pthread_mutex_unlock(&hs->mu);
    assert_int_equal(publish_str(a[1], "t/ovl", "y"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));
    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

typedef struct pump {
    void *a;
    atomic_bool stop;
    atomic_int sent;
} pump;

static void *pump_main(void *arg)
{
    pump *p = arg;
    pub_args q0 = {.qos = 0};
    while (!atomic_load(&p->stop)) {
        if (publish(p->a, "t/late/x", "zz", 2, &q0) == LOOM_OK)
            atomic_fetch_add(&p->sent, 1);
        if (atomic_load(&p->sent) % 32 == 0)
            sleep_ms(1);
    }
    return NULL;
}

/* Subscribers stopped while messages stream in: after stop() no upcall,
 * and (under ASan) no callback of nats.c touches freed memory. */
static void test_no_upcalls_after_stop(void **state)
{
    (void)state;
    t_host hp;
    host_init(&hp);
    void *p = adapter_new(&hp, url(), fast_opts);
    assert_int_equal(ops->connect(p), LOOM_OK);
    assert_true(wait_state(&hp, 0, LOOM_BROKER_CONNECTED, 5000));
    pump pm = {.a = p};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, pump_main, &pm), 0);
    for (int round = 0; round < 4; round++) {
        t_host h[3];
        void *s[3];
        int tok[3][3];
        for (int i = 0; i < 3; i++)
            host_init(&h[i]);
        adapters_up(3, h, s, url(), NULL);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(subscribe_wait(s[i], &h[i], "t/late/#", NULL, &tok[i][0]), LOOM_OK);
            assert_int_equal(subscribe_wait(s[i], &h[i], "t/late/+", "g", &tok[i][1]), LOOM_OK);
            assert_int_equal(ops->subscribe(s[i], "t/late/x", NULL, &tok[i][2], 0), LOOM_OK);
        }
        assert_true(wait_deliveries(&h[0], 50, 5000));
        /* round 0: close first, as the core does; later rounds: stop at once */
        if (round == 0) {
            ops->close(s[0]);
            assert_int_equal(ops->connect(s[0]), LOOM_ESTATE);
            assert_int_equal(ops->subscribe(s[0], "t/late/y", NULL, &tok[0][0], 0),
                             LOOM_EUNAVAILABLE);
            assert_int_equal(publish_str(s[0], "t/late/z", "1"), LOOM_EUNAVAILABLE);
        }
        for (int i = 0; i < 3; i++) {
            ops->stop(s[i]);
            pthread_mutex_lock(&h[i].mu);
            h[i].stopped = true;
            pthread_mutex_unlock(&h[i].mu);
        }
        sleep_ms(50); /* anything late would show now */
        for (int i = 0; i < 3; i++) {
            ops->fini(s[i]);
            assert_int_equal(h[i].late_upcalls, 0);
            host_fini(&h[i]);
        }
    }
    atomic_store(&pm.stop, true);
    pthread_join(th, NULL);
    assert_true(atomic_load(&pm.sent) > 0);
    adapter_down(p, &hp);
    host_fini(&hp);
}

static void test_nothing_listening(void **state)
{
    (void)state;
    char u[64];
    snprintf(u, sizeof u, "nats://127.0.0.1:%d", unused_port());
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, u, "{\"reconnect_min_ms\": 10, \"reconnect_max_ms\": 80}");
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "cannot connect", 3, 5000));
    assert_false(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 1));
    assert_int_equal(h.states[0], LOOM_BROKER_CONNECTING);
    assert_int_equal(n_states(&h), 1);
    assert_int_equal(count_logs(&h, LOOM_LOG_WARN, "cannot connect"), 1);    /* not spammed */
    assert_true(count_logs(&h, LOOM_LOG_DEBUG, "No server available") >= 1); /* says why */
    int tok;
    assert_int_equal(ops->subscribe(a, "t/buf", NULL, &tok, 1), LOOM_EUNAVAILABLE);
    /* nothing to buffer into before the first connection */
    assert_int_equal(publish_str(a, "t/buf", "1"), LOOM_EUNAVAILABLE);
    int64_t t0 = mono_ms();
    adapter_down(a, &h);
    assert_true(mono_ms() - t0 < 2500);
    host_fini(&h);

    /* never connected, never connect()ed: stop and fini alone */
    host_init(&h);
    a = adapter_new(&h, u, NULL);
    adapter_down(a, &h);
    host_fini(&h);
}

/* The first connect fails; the adapter keeps trying and gets there. */
static void test_first_connect_retried(void **state)
{
    (void)state;
    t_nats n;
    t_nats_start(&n);
    t_nats_kill(&n);
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, t_nats_url(&n), fast_opts);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "cannot connect", 1, 5000));
    t_nats_restart(&n);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 8000));
    int tok;
    assert_int_equal(subscribe_wait(a, &h, "t/first", NULL, &tok), LOOM_OK);
    assert_int_equal(publish_str(a, "t/first", "1"), LOOM_OK);
    assert_true(wait_deliveries(&h, 1, 5000));
    adapter_down(a, &h);
    host_fini(&h);
    t_nats_stop(&n);
}

/* The server dies and comes back: DISCONNECTED (with a reason), then
 * CONNECTED by itself. nats.c re-sends the subscriptions, so messages flow
 * before the core subscribes again, and the core's repeat is a no-op. */
static void test_server_restart(void **state)
{
    (void)state;
    t_nats n;
    t_nats_start(&n);
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, t_nats_url(&n), NULL);
    t_host *hs = &h[0], *hp = &h[1];
    void *s = a[0], *p = a[1];
    int tok;
    assert_int_equal(subscribe_wait(s, hs, "t/rs/#", NULL, &tok), LOOM_OK);
    assert_int_equal(publish_str(p, "t/rs/before", "b"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));

    t_host hsm, hno;
    host_init(&hsm);
    host_init(&hno);
    void *small = adapter_new(&hsm, t_nats_url(&n), "{\"buffer\": 2, \"reconnect_min_ms\": 20}");
    void *none = adapter_new(&hno, t_nats_url(&n), "{\"buffer\": 0, \"reconnect_min_ms\": 20}");
    assert_int_equal(ops->connect(small), LOOM_OK);
    assert_int_equal(ops->connect(none), LOOM_OK);
    assert_true(wait_state(&hsm, 0, LOOM_BROKER_CONNECTED, 5000));
    assert_true(wait_state(&hno, 0, LOOM_BROKER_CONNECTED, 5000));
    assert_int_equal(publish_str(none, "t/rs/buf", "1"), LOOM_OK);

    size_t s_from = n_states(hs), p_from = n_states(hp);
    t_nats_kill(&n);
    assert_true(wait_state(hs, s_from, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_state(hp, p_from, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_state(&hsm, 0, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_state(&hno, 0, LOOM_BROKER_DISCONNECTED, 5000));
    pthread_mutex_lock(&hp->mu);
    for (size_t i = p_from; i < hp->n_states; i++)
        if (hp->states[i] == LOOM_BROKER_DISCONNECTED) {
            assert_non_null(hp->details[i]); /* with a reason naming the server */
            assert_non_null(strstr(hp->details[i], "127.0.0.1"));
        }
    pthread_mutex_unlock(&hp->mu);
    int other;
    assert_int_equal(ops->subscribe(s, "t/other", NULL, &other, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(publish_str(p, "t/rs/during", "d"), LOOM_OK); /* buffered */
    /* bounded buffering while disconnected (2 KiB for buffer: 2), and none
     * at all with buffer: 0 */
    char chunk[700];
    memset(chunk, 'b', sizeof chunk);
    loom_err err = LOOM_OK;
    int ok = 0;
    for (int i = 0; i < 10 && err == LOOM_OK; i++)
        if ((err = publish(small, "t/rs/buf", chunk, sizeof chunk, NULL)) == LOOM_OK)
            ok++;
    assert_true(ok >= 1 && ok < 10);
    assert_int_equal(err, LOOM_EUNAVAILABLE);
    assert_int_equal(publish_str(none, "t/rs/buf", "1"), LOOM_EUNAVAILABLE);

    t_nats_restart(&n);
    assert_true(wait_state(hs, s_from, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(hp, p_from, LOOM_BROKER_CONNECTED, 8000));
    /* no resubscribe yet: nats.c did it */
    assert_true(publish_until_seen(p, "t/rs/after", "a1", hs, 5000));
    /* what the core does on CONNECTED: a repeat, so still one delivery each */
    assert_int_equal(subscribe_wait(s, hs, "t/rs/#", NULL, &tok), LOOM_OK);
    assert_int_equal(publish_str(p, "t/rs/again", "a2"), LOOM_OK);
    int64_t deadline = mono_ms() + 5000;
    while (count_body(hs, "a2") == 0 && mono_ms() < deadline)
        sleep_ms(5);
    sleep_ms(150);
    assert_int_equal(count_body(hs, "a2"), 1);

    adapter_down(small, &hsm);
    adapter_down(none, &hno);
    host_fini(&hsm);
    host_fini(&hno);
    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
    t_nats_stop(&n);
}

static void test_credentials(void **state)
{
    (void)state;
    char pwfile[] = "/tmp/loom-natspw-XXXXXX";
    int fd = mkstemp(pwfile);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "s3cret\nignored\n", 15), 15);
    close(fd);
    t_nats n;
    t_nats_start_with(&n, "authorization {\n  user: alice\n  password: s3cret\n}");

    char opts[512];
    snprintf(opts, sizeof opts,
             "{\"username\": \"alice\", \"password_file\": \"%s\", \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             pwfile);
    char url_creds[128];
    snprintf(url_creds, sizeof url_creds, "nats://alice:s3cret@127.0.0.1:%d", n.port);
    t_host h1, h2, h3;
    host_init(&h1);
    host_init(&h2);
    host_init(&h3);
    void *a = adapter_new(&h1, t_nats_url(&n), opts);
    void *b = adapter_new(&h3, url_creds, fast_opts);
    /* a wrong password keeps failing (and retrying) with the server's reason */
    void *c = adapter_new(&h2, t_nats_url(&n),
                          "{\"username\": \"alice\", \"password\": \"nope\", "
                          "\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 50}");
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_int_equal(ops->connect(b), LOOM_OK);
    assert_int_equal(ops->connect(c), LOOM_OK);
    assert_true(wait_state(&h1, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h3, 0, LOOM_BROKER_CONNECTED, 8000));
    /* attempts go on past nats.c giving up on a connection (it closes one
     * after the same authentication error twice): the adapter starts anew */
    assert_true(wait_logs(&h2, LOOM_LOG_DEBUG, "cannot connect", 6, 8000));
    assert_false(wait_state(&h2, 0, LOOM_BROKER_CONNECTED, 1));
    assert_int_equal(count_logs(&h2, LOOM_LOG_WARN, "cannot connect"), 1);
    assert_true(count_logs(&h2, LOOM_LOG_DEBUG, "uthorization") >= 1);
    /* the two good ones talk */
    int tok;
    assert_int_equal(subscribe_wait(a, &h1, "t/cred", NULL, &tok), LOOM_OK);
    assert_int_equal(publish_str(b, "t/cred", "hi"), LOOM_OK);
    assert_true(wait_deliveries(&h1, 1, 5000));
    adapter_down(c, &h2);
    adapter_down(b, &h3);
    adapter_down(a, &h1);
    host_fini(&h3);
    host_fini(&h2);
    host_fini(&h1);
    t_nats_stop(&n);
    unlink(pwfile);
}

/* nats.c gives up on a connection by itself when a server refuses the same
 * credentials twice while reconnecting: the adapter starts a new one, keeps
 * trying, and once the credentials work again the core's resubscribe makes
 * fresh subscriptions (the old ones died with the old connection). */
static void test_connection_given_up_is_replaced(void **state)
{
    (void)state;
    const char *good = "authorization {\n  user: alice\n  password: s3cret\n}";
    const char *other = "authorization {\n  user: alice\n  password: changed\n}";
    t_nats n;
    t_nats_start_with(&n, good);
    char u[128];
    snprintf(u, sizeof u, "nats://alice:s3cret@127.0.0.1:%d", n.port);
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, u, fast_opts);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 5000));
    int tok;
    assert_int_equal(subscribe_wait(a, &h, "t/gu/#", NULL, &tok), LOOM_OK);

    size_t from = n_states(&h);
    t_nats_kill(&n);
    t_nats_reconfigure(&n, other);
    t_nats_restart(&n);
    assert_true(wait_state(&h, from, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "gave up on the connection", 1, 8000));
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "Authorization Violation", 3, 8000));
    assert_false(wait_state(&h, from, LOOM_BROKER_CONNECTED, 1));

    t_nats_kill(&n);
    t_nats_reconfigure(&n, good);
    t_nats_restart(&n);
    assert_true(wait_state(&h, from, LOOM_BROKER_CONNECTED, 8000));
    assert_int_equal(subscribe_wait(a, &h, "t/gu/#", NULL, &tok), LOOM_OK);
    assert_int_equal(publish_str(a, "t/gu/x", "back"), LOOM_OK);
    assert_true(wait_deliveries(&h, 1, 5000));
    sleep_ms(100);
    assert_int_equal(count_body(&h, "back"), 1);
    adapter_down(a, &h);
    host_fini(&h);
    t_nats_stop(&n);
}

/* tls:// with a private CA: verified with tls.ca, refused without it,
 * accepted again with tls.verify false. Skipped without openssl. */
static void test_tls(void **state)
{
    (void)state;
    if (system("command -v openssl >/dev/null 2>&1") != 0)
        skip();
    char dir[] = "/tmp/loom-natstls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout ca.key -out ca.pem -days 2 -subj /CN=loom-test-ca && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout server.key -out server.csr -subj /CN=localhost && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext.cnf && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out server.pem -days 2 -extfile ext.cnf",
             dir);
    char quiet[2100];
    snprintf(quiet, sizeof quiet, "(%s) >/dev/null 2>&1", cmd);
    if (system(quiet) != 0)
        fail_msg("openssl could not make test certificates in %s", dir);
    char conf[512];
    snprintf(conf, sizeof conf,
             "tls {\n  cert_file: \"%s/server.pem\"\n  key_file: \"%s/server.key\"\n}", dir, dir);
    t_nats n;
    t_nats_start_with(&n, conf);
    char u[64];
    snprintf(u, sizeof u, "tls://127.0.0.1:%d", n.port);
    const loom_adapter_ops *tls = &loom__nats_tls_adapter;

    char good[512];
    snprintf(good, sizeof good,
             "{\"tls\": {\"ca\": \"%s/ca.pem\"}, \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             dir);
    t_host h1, h2, h3;
    host_init(&h1);
    host_init(&h2);
    host_init(&h3);
    void *a = adapter_new_ops(tls, &h1, u, good);
    void *b = adapter_new_ops(tls, &h2, u, "{\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 50}");
    void *c = adapter_new_ops(tls, &h3, u, "{\"tls\": {\"verify\": false}}");
    assert_int_equal(tls->connect(a), LOOM_OK);
    assert_int_equal(tls->connect(b), LOOM_OK);
    assert_int_equal(tls->connect(c), LOOM_OK);
    assert_true(wait_state(&h1, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h3, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(count_logs(&h1, LOOM_LOG_INFO, "(TLS)") >= 1);
    /* the system's CAs do not know ours */
    assert_true(wait_logs(&h2, LOOM_LOG_DEBUG, "cannot connect", 2, 8000));
    assert_false(wait_state(&h2, 0, LOOM_BROKER_CONNECTED, 1));
    int tok;
    assert_int_equal(subscribe_wait(a, &h1, "t/tls", NULL, &tok), LOOM_OK);
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    loom_publish p = {.topic = "t/tls", .msg = m, .data = "sec", .len = 3};
    assert_int_equal(tls->publish(c, &p), LOOM_OK);
    assert_true(wait_deliveries(&h1, 1, 5000));
    assert_string_equal(h1.d[0].data, "sec");
    adapter_down_ops(tls, a, &h1);
    adapter_down_ops(tls, b, &h2);
    adapter_down_ops(tls, c, &h3);
    host_fini(&h1);
    host_fini(&h2);
    host_fini(&h3);
    t_nats_stop(&n);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Three nodes: A on node 1, B on node 2, messages flow both ways; node 1
 * is killed: A reconnects to another node by itself and messages flow
 * again. */
static void test_cluster_failover(void **state)
{
    (void)state;
    t_nats_cluster c;
    t_nats_cluster_start(&c);
    const char *o = "{\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 200, "
                    "\"connect_timeout_ms\": 2000, \"randomize\": false}";
    t_host ha, hb;
    host_init(&ha);
    host_init(&hb);
    void *A = adapter_new(&ha, t_nats_cluster_url(&c, 0), o);
    void *B = adapter_new(&hb, t_nats_cluster_url(&c, 1), o);
    assert_int_equal(ops->connect(A), LOOM_OK);
    assert_int_equal(ops->connect(B), LOOM_OK);
    assert_true(wait_state(&ha, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&hb, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_int_equal(connected_port(&ha), c.node[0].port);
    assert_int_equal(connected_port(&hb), c.node[1].port);

    int ta, tb, tq;
    assert_int_equal(subscribe_wait(A, &ha, "t/cl/to-a", NULL, &ta), LOOM_OK);
    assert_int_equal(subscribe_wait(B, &hb, "t/cl/to-b", NULL, &tb), LOOM_OK);
    assert_int_equal(subscribe_wait(B, &hb, "t/cl/cmd/+", "svc.1", &tq), LOOM_OK);
    assert_true(publish_until_seen(A, "t/cl/to-b", "a->b", &hb, 5000));
    assert_true(publish_until_seen(B, "t/cl/to-a", "b->a", &ha, 5000));
    /* a request across nodes, with its reply */
    static const unsigned char corr[] = {0xca, 0xfe};
    pub_args req = {.qos = 1, .rt = "t/cl/to-a", .corr = corr, .corr_len = 2};
    host_clear_deliveries(&hb);
    assert_int_equal(publish(A, "t/cl/cmd/do", "{}", 2, &req), LOOM_OK);
    assert_true(wait_deliveries(&hb, 1, 5000));
    assert_ptr_equal(hb.d[0].token, &tq);
    assert_string_equal(hb.d[0].rt, "t/cl/to-a");
    pub_args rep = {.qos = 1, .corr = hb.d[0].corr, .corr_len = hb.d[0].corr_len};
    host_clear_deliveries(&ha);
    assert_int_equal(publish(B, hb.d[0].rt, "{\"r\":1}", 7, &rep), LOOM_OK);
    assert_true(wait_deliveries(&ha, 1, 5000));
    assert_int_equal(ha.d[0].corr_len, 2);
    assert_memory_equal(ha.d[0].corr, corr, 2);

    size_t a_from = n_states(&ha), b_from = n_states(&hb);
    t_nats_cluster_kill(&c, 0);
    assert_true(wait_state(&ha, a_from, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_state(&ha, a_from, LOOM_BROKER_CONNECTED, 8000));
    int port = connected_port(&ha);
    assert_true(port == c.node[1].port || port == c.node[2].port);
    /* B never noticed */
    sleep_ms(100);
    assert_int_equal(n_states(&hb), b_from);
    /* the core resubscribes on CONNECTED: repeats, confirmed */
    assert_int_equal(subscribe_wait(A, &ha, "t/cl/to-a", NULL, &ta), LOOM_OK);
    host_clear_deliveries(&ha);
    host_clear_deliveries(&hb);
    assert_true(publish_until_seen(A, "t/cl/to-b", "a->b again", &hb, 5000));
    assert_true(publish_until_seen(B, "t/cl/to-a", "b->a again", &ha, 5000));
    /* exactly once per message, now that interest has settled */
    assert_int_equal(publish_str(B, "t/cl/to-a", "once"), LOOM_OK);
    int64_t deadline = mono_ms() + 5000;
    while (count_body(&ha, "once") == 0 && mono_ms() < deadline)
        sleep_ms(5);
    sleep_ms(150);
    assert_int_equal(count_body(&ha, "once"), 1);

    adapter_down(A, &ha);
    adapter_down(B, &hb);
    host_fini(&ha);
    host_fini(&hb);
    t_nats_cluster_stop(&c);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_bad_urls_and_options),
        cmocka_unit_test(test_connect_and_validation),
        cmocka_unit_test(test_roundtrip_headers),
        cmocka_unit_test(test_queue_groups),
        cmocka_unit_test(test_overlapping_subscriptions),
        cmocka_unit_test(test_segment_escaping),
        cmocka_unit_test(test_no_responders_dropped),
        cmocka_unit_test(test_overload_drops_with_one_warning),
        cmocka_unit_test(test_no_upcalls_after_stop),
        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_first_connect_retried),
        cmocka_unit_test(test_server_restart),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_connection_given_up_is_replaced),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_cluster_failover),
    };
    if (getenv("T_FILTER")) /* e.g. T_FILTER=test_cluster* */
        cmocka_set_test_filter(getenv("T_FILTER"));
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    /* Let nats.c's process-wide threads finish, so leak checks see a quiet
     * library. Only the test may do this: the adapter never closes the
     * library (other code in the process may use it). */
    nats_CloseAndWait(5000);
    return rc;
}
