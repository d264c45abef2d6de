/* The MQTT 5 adapter, driven directly through its ops table against a real
 * mosquitto, with a test host standing in for the core. Every wait is
 * bounded.
 *
 *   T_VERBOSE=1   prints the adapters' log lines
 *   T_FILTER=pat  runs only the tests whose name matches (cmocka pattern)
 */
#define _GNU_SOURCE
#include <MQTTClient.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support/mosquitto.h"
#include "support/support.h"

#include "broker/adapters.h"
#include "codec/msg.h"
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
    bool retained;
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
        r->retained = d->retained;
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

static const loom_adapter_ops *ops = &loom__mqtt_adapter;

/* Quick reconnects so the tests stay short. */
static const char *fast_opts =
    "{\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 200, \"connect_timeout_ms\": 2000}";

static void *adapter_new(t_host *h, const char *url, const char *options_json,
                         const char *will_topic)
{
    cJSON *o = options_json ? t_json(options_json) : NULL;
    char id[33];
    loom__random_id(id);
    loom_adapter_options opts = {
        .url = url, .instance_id = id, .options = o, .will_topic = will_topic};
    void *a = NULL;
    loom_err err = ops->init(&a, &h->host, &opts);
    cJSON_Delete(o);
    if (err != LOOM_OK)
        fail_msg("init(%s) failed: %s", url, loom_strerror(err));
    return a;
}

/* A connected adapter. */
static void *adapter_up(t_host *h, const char *url, const char *options_json,
                        const char *will_topic)
{
    void *a = adapter_new(h, url, options_json ? options_json : fast_opts, will_topic);
    assert_int_equal(ops->connect(a), LOOM_OK);
    if (!wait_state(h, 0, LOOM_BROKER_CONNECTED, 5000))
        fail_msg("adapter did not connect to %s", url);
    return a;
}

/* Connects several adapters at once. paho's I/O thread sleeps in select()
 * for up to a second and only then notices a new socket, so connecting
 * clients one after the other costs about two seconds each; together they
 * share those rounds. */
static void adapters_up(size_t n, t_host *h, void **a, const char *url, const char *options_json)
{
    for (size_t i = 0; i < n; i++)
        a[i] = adapter_new(&h[i], url, options_json ? options_json : fast_opts, NULL);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ops->connect(a[i]), LOOM_OK);
    for (size_t i = 0; i < n; i++)
        if (!wait_state(&h[i], 0, LOOM_BROKER_CONNECTED, 8000))
            fail_msg("adapter %zu did not connect to %s", i, url);
}

static void adapter_down(void *a, t_host *h)
{
    ops->close(a);
    ops->stop(a);
    pthread_mutex_lock(&h->mu);
    h->stopped = true;
    pthread_mutex_unlock(&h->mu);
    ops->fini(a);
    assert_int_equal(h->late_upcalls, 0);
}

/* Subscribes and waits for the broker's answer. */
static loom_err subscribe_wait(void *a, t_host *h, const char *filter, const char *group,
                               void *token, int qos)
{
    pthread_mutex_lock(&h->mu);
    size_t want = h->n_subs + 1;
    pthread_mutex_unlock(&h->mu);
    loom_err err = ops->subscribe(a, filter, group, token, qos);
    if (err != LOOM_OK)
        return err;
    if (!host_wait(h, has_subs, &want, 5000))
        fail_msg("no SUBACK for %s", filter);
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
    bool retain;
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
                      .qos = x->qos,
                      .retain = x->retain};
    loom_err err = ops->publish(a, &p);
    if (err != LOOM_OK)
        loom_msg_release(m);
    return err;
}

static loom_err publish_str(void *a, const char *topic, const char *text)
{
    return publish(a, topic, text, strlen(text), NULL);
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

/* TCP_NODELAY of this process's connection(s) to 127.0.0.1:port: 1 when
 * all have it, 0 when one lacks it, -1 when there is none. */
static int nodelay_to_port(int port)
{
    int result = -1;
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        if (getpeername(fd, (struct sockaddr *)&sa, &len) != 0 || sa.sin_family != AF_INET ||
            ntohs(sa.sin_port) != port)
            continue;
        int on = 0;
        len = sizeof on;
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
        if (!on)
            return 0;
        result = 1;
    }
    return result;
}

/* ------------------------------------------------------------------------ */
/* A raw paho client, to see exactly what goes over the wire                 */

typedef struct raw_msg {
    char topic[128];
    int ids[8];
    int n_ids;
    char content_type[64];
    char status[32];
    char rt[128];
    unsigned char corr[32];
    int corr_len;
    int len;
} raw_msg;

typedef struct raw_client {
    MQTTClient c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    raw_msg msgs[32];
    int n;
} raw_client;

static void copy_lenstr(char *dst, size_t cap, const MQTTLenString *s)
{
    size_t n = s->len > 0 ? (size_t)s->len : 0;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s->data ? s->data : "", n);
    dst[n] = '\0';
}

static int raw_on_msg(void *ctx, char *topic, int topic_len, MQTTClient_message *m)
{
    (void)topic_len;
    raw_client *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->n < (int)LOOM__ARRAY_LEN(r->msgs)) {
        raw_msg *x = &r->msgs[r->n++];
        memset(x, 0, sizeof *x);
        snprintf(x->topic, sizeof x->topic, "%s", topic);
        x->len = m->payloadlen;
        MQTTProperties *p = &m->properties;
        int ni = MQTTProperties_propertyCount(p, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER);
        for (int i = 0; i < ni && i < 8; i++)
            x->ids[x->n_ids++] =
                MQTTProperties_getNumericValueAt(p, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER, i);
        MQTTProperty *q = MQTTProperties_getProperty(p, MQTTPROPERTY_CODE_CONTENT_TYPE);
        if (q)
            copy_lenstr(x->content_type, sizeof x->content_type, &q->value.data);
        q = MQTTProperties_getProperty(p, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
        if (q)
            copy_lenstr(x->rt, sizeof x->rt, &q->value.data);
        q = MQTTProperties_getProperty(p, MQTTPROPERTY_CODE_CORRELATION_DATA);
        if (q && q->value.data.len <= (int)sizeof x->corr) {
            memcpy(x->corr, q->value.data.data, (size_t)q->value.data.len);
            x->corr_len = q->value.data.len;
        }
        int nu = MQTTProperties_propertyCount(p, MQTTPROPERTY_CODE_USER_PROPERTY);
        for (int i = 0; i < nu; i++) {
            q = MQTTProperties_getPropertyAt(p, MQTTPROPERTY_CODE_USER_PROPERTY, i);
            if (q && q->value.data.len == 6 && memcmp(q->value.data.data, "status", 6) == 0)
                copy_lenstr(x->status, sizeof x->status, &q->value.value);
        }
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    return 1;
}

static bool raw_wait(raw_client *r, int *field, int want, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    pthread_mutex_lock(&r->mu);
    while (*field < want && *field >= 0 && mono_ms() < deadline) {
        pthread_mutex_unlock(&r->mu);
        sleep_ms(5);
        pthread_mutex_lock(&r->mu);
    }
    bool ok = *field >= want;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static void raw_open_as(raw_client *r, int port, const char *client_id)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    char uri[64], id[40];
    snprintf(uri, sizeof uri, "tcp://127.0.0.1:%d", port);
    char rid[33];
    loom__random_id(rid);
    snprintf(id, sizeof id, "raw-%.16s", rid);
    if (client_id)
        snprintf(id, sizeof id, "%s", client_id);
    MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
    co.MQTTVersion = MQTTVERSION_5;
    assert_int_equal(
        MQTTClient_createWithOptions(&r->c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co),
        MQTTCLIENT_SUCCESS);
    assert_int_equal(MQTTClient_setCallbacks(r->c, r, NULL, raw_on_msg, NULL), MQTTCLIENT_SUCCESS);
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer5;
    o.connectTimeout = 5;
    MQTTResponse resp = MQTTClient_connect5(r->c, &o, NULL, NULL);
    assert_int_equal(resp.reasonCode, MQTTREASONCODE_SUCCESS);
    MQTTResponse_free(resp);
}

static void raw_open(raw_client *r, int port)
{
    raw_open_as(r, port, NULL);
}

static int raw_subscribe(raw_client *r, const char *filter, int id)
{
    MQTTProperties props = MQTTProperties_initializer;
    if (id > 0) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER};
        p.value.integer4 = (unsigned)id;
        MQTTProperties_add(&props, &p);
    }
    MQTTResponse resp = MQTTClient_subscribe5(r->c, filter, 1, NULL, &props);
    MQTTProperties_free(&props);
    int reason = (int)resp.reasonCode;
    MQTTResponse_free(resp);
    assert_true(reason >= 0); /* answered: a granted QoS or the broker's refusal */
    return reason;
}

static void raw_close(raw_client *r)
{
    MQTTClient_disconnect5(r->c, 0, MQTTREASONCODE_SUCCESS, NULL);
    MQTTClient_destroy(&r->c);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

/* ------------------------------------------------------------------------ */
/* Fixture: one broker for most tests                                        */

static t_broker shared_broker;

static int group_setup(void **state)
{
    (void)state;
    t_broker_start(&shared_broker);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    t_broker_stop(&shared_broker);
    return 0;
}

static const char *url(void)
{
    return t_broker_url(&shared_broker);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */

static void test_tables(void **state)
{
    (void)state;
    assert_int_equal(loom__mqtt_adapter.abi_version, LOOM_ADAPTER_ABI_VERSION);
    assert_string_equal(loom__mqtt_adapter.scheme, "mqtt");
    assert_string_equal(loom__mqtts_adapter.scheme, "mqtts");
    uint32_t want = LOOM_CAP_GROUPS | LOOM_CAP_RETAIN | LOOM_CAP_WILL | LOOM_CAP_PROPERTIES;
    assert_int_equal(loom__mqtt_adapter.caps, want);
    assert_int_equal(loom__mqtts_adapter.caps, want);
    assert_ptr_equal(loom__mqtt_adapter.publish, loom__mqtts_adapter.publish);
}

static loom_err try_init(const char *u, const char *options_json, const char *will, t_host *h)
{
    cJSON *o = options_json ? t_json(options_json) : NULL;
    loom_adapter_options opts = {.url = u, .instance_id = "inst", .options = o, .will_topic = will};
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

static void test_bad_urls_and_options(void **state)
{
    (void)state;
    t_host h;
    host_init(&h);
    static const char *const bad[] = {
        "http://127.0.0.1:1883", "mqtt://",           "mqtt://:1883",       "mqtt://host:0",
        "mqtt://host:65536",     "mqtt://host:12ab",  "mqtt://host:",       "mqtt://user@host",
        "mqtt://host/path",      "mqtt://host:1883/", "mqtt://[::1",        "mqtt://[zz]:1",
        "mqtt://host?x=1",       "mqtt://ho st",      "MQTT://host",        "mqtt:/host",
        "mqtt://[::1]x",         "mqtt://host:+1883", "mqtt://host:018830", "",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        size_t logs = h.n_logs;
        if (try_init(bad[i], NULL, NULL, &h) != LOOM_ECONFIG)
            fail_msg("'%s' accepted", bad[i]);
        /* ... with a logged reason naming the URL */
        assert_true(h.n_logs > logs);
        assert_int_equal(h.log_levels[h.n_logs - 1], LOOM_LOG_ERROR);
        assert_non_null(strstr(h.logs[h.n_logs - 1], bad[i]));
    }
    static const char *const good[] = {
        "mqtt://127.0.0.1",  "mqtt://localhost:1", "mqtts://broker.example.com",
        "mqtt://[::1]:1883", "mqtt://[::1]",       "mqtt://my_host-1.local:65535"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(good); i++)
        if (try_init(good[i], NULL, NULL, &h) != LOOM_OK)
            fail_msg("'%s' rejected", good[i]);

    /* options */
    assert_int_equal(try_init("mqtt://h", "{\"keepalive\": \"abc\"}", NULL, &h), LOOM_ECONFIG);
    assert_non_null(strstr(h.logs[h.n_logs - 1], "keepalive"));
    assert_int_equal(try_init("mqtt://h", "{\"keepalive\": -1}", NULL, &h), LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "{\"keepalive\": 1.5}", NULL, &h), LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "{\"client_id\": 5}", NULL, &h), LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "{\"client_id\": \"\"}", NULL, &h), LOOM_ECONFIG);
    assert_int_equal(
        try_init("mqtt://h", "{\"reconnect_min_ms\": 500, \"reconnect_max_ms\": 100}", NULL, &h),
        LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "{\"session_expiry\": 4294967296}", NULL, &h),
                     LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "{\"password_file\": \"/nonexistent/pw\"}", NULL, &h),
                     LOOM_ECONFIG);
    assert_non_null(strstr(h.logs[h.n_logs - 1], "/nonexistent/pw"));
    assert_int_equal(
        try_init("mqtts://h", "{\"tls\": {\"ca\": \"/nonexistent/ca.pem\"}}", NULL, &h),
        LOOM_ECONFIG);
    assert_int_equal(try_init("mqtts://h", "{\"tls\": {\"verify\": \"yes\"}}", NULL, &h),
                     LOOM_ECONFIG);
    assert_int_equal(try_init("mqtts://h", "{\"tls\": 3}", NULL, &h), LOOM_ECONFIG);
    assert_int_equal(try_init("mqtt://h", "[1]", NULL, &h), LOOM_ECONFIG);
    /* TLS settings are ignored for plain mqtt://; unknown keys belong to the core */
    assert_int_equal(try_init("mqtt://h",
                              "{\"tls\": {\"ca\": \"/nonexistent\"}, \"prefix\": "
                              "\"x\", \"qos\": {\"command\": 1}}",
                              NULL, &h),
                     LOOM_OK);
    assert_int_equal(try_init("mqtt://h",
                              "{\"buffer\": 0, \"keepalive\": \"60\", "
                              "\"session_expiry\": 3600}",
                              NULL, &h),
                     LOOM_OK);
    /* a bad will topic, a missing host */
    assert_int_equal(try_init("mqtt://h", NULL, "a/+/b", &h), LOOM_EINVAL);
    void *a = NULL;
    loom_adapter_options opts = {.url = "mqtt://h"};
    assert_int_equal(ops->init(&a, NULL, &opts), LOOM_EINVAL);
    assert_int_equal(ops->init(&a, &h.host, NULL), LOOM_EINVAL);
    host_fini(&h);
}

static void test_connect_and_validation(void **state)
{
    (void)state;
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, url(), fast_opts, NULL);
    /* not connected yet */
    assert_int_equal(ops->subscribe(a, "t/x", NULL, &h, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_int_equal(ops->connect(a), LOOM_ESTATE);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 5000));
    /* CONNECTING first, then CONNECTED */
    assert_int_equal(h.states[0], LOOM_BROKER_CONNECTING);
    assert_true(count_logs(&h, LOOM_LOG_INFO, "connected to 127.0.0.1") >= 1);
    /* our connection to the broker has Nagle's algorithm off */
    assert_int_equal(nodelay_to_port(shared_broker.port), 1);

    int tok;
    assert_int_equal(ops->subscribe(a, "a/#/b", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b+", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "", NULL, &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", "g/x", &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", "", &tok, 1), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", NULL, &tok, 3), LOOM_EINVAL);
    assert_int_equal(ops->subscribe(a, "a/b", NULL, &tok, -1), LOOM_EINVAL);
    assert_int_equal(ops->unsubscribe(a, "a/b", NULL, &tok), LOOM_ENOTFOUND);

    assert_int_equal(publish_str(a, "t/+/x", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, "t/#", "{}"), LOOM_EINVAL);
    assert_int_equal(publish_str(a, "", "{}"), LOOM_EINVAL);
    pub_args q3 = {.qos = 3};
    assert_int_equal(publish(a, "t/x", "{}", 2, &q3), LOOM_EINVAL);
    assert_int_equal(publish(a, "t/x", NULL, 5, NULL), LOOM_EINVAL);
    pub_args badrt = {.qos = 1, .rt = "r/#"};
    assert_int_equal(publish(a, "t/x", "{}", 2, &badrt), LOOM_EINVAL);
    assert_int_equal(publish(a, "t/x", "{}", (size_t)300 * 1024 * 1024, NULL), LOOM_ETOOBIG);

    adapter_down(a, &h);
    host_fini(&h);
}

static void test_roundtrip_properties(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    int tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/rt/+", NULL, &tok, 1), LOOM_OK);

    static const unsigned char corr[] = {0x01, 0x00, 0xff, 0x7f};
    pub_args x = {
        .qos = 1, .rt = "t/reply/abc", .corr = corr, .corr_len = sizeof corr, .status = "201"};
    const char *body = "{\"a\":1}";
    assert_int_equal(publish(a[1], "t/rt/one", body, strlen(body), &x), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    rec *r = &h[0].d[0];
    assert_ptr_equal(r->token, &tok);
    assert_string_equal(r->topic, "t/rt/one");
    assert_int_equal(r->len, strlen(body));
    assert_memory_equal(r->data, body, r->len);
    assert_non_null(r->rt);
    assert_string_equal(r->rt, "t/reply/abc");
    assert_int_equal(r->corr_len, sizeof corr);
    assert_memory_equal(r->corr, corr, sizeof corr);
    assert_false(r->retained);

    /* a QoS 0 message without properties, and an empty payload */
    pub_args q0 = {.qos = 0};
    assert_int_equal(publish(a[1], "t/rt/two", "", 0, &q0), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 2, 5000));
    r = &h[0].d[1];
    assert_string_equal(r->topic, "t/rt/two");
    assert_int_equal(r->len, 0);
    assert_null(r->rt);
    assert_null(r->corr);

    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

/* What the adapter puts on the wire, and what mosquitto 2.0.11 sends back:
 * subscription identifiers on plain and on shared subscriptions. */
static void test_wire_properties_and_subscription_ids(void **state)
{
    (void)state;
    t_host hp;
    host_init(&hp);
    void *p = adapter_new(&hp, url(), fast_opts, NULL);
    assert_int_equal(ops->connect(p), LOOM_OK); /* in parallel with the raw client */
    raw_client r;
    raw_open(&r, shared_broker.port);
    assert_int_equal(raw_subscribe(&r, "t/wire/plain/#", 77), 1);
    assert_int_equal(raw_subscribe(&r, "$share/grp/t/wire/shared/#", 4242), 1);
    assert_true(wait_state(&hp, 0, LOOM_BROKER_CONNECTED, 8000));

    static const unsigned char corr[] = {9, 8, 7};
    pub_args x = {.qos = 1, .rt = "t/reply/me", .corr = corr, .corr_len = 3, .status = "404"};
    assert_int_equal(publish(p, "t/wire/plain/a", "{}", 2, &x), LOOM_OK);
    assert_int_equal(publish_str(p, "t/wire/shared/b", "[]"), LOOM_OK);
    assert_true(raw_wait(&r, &r.n, 2, 5000));
    pthread_mutex_lock(&r.mu);
    raw_msg *plain = strcmp(r.msgs[0].topic, "t/wire/plain/a") == 0 ? &r.msgs[0] : &r.msgs[1];
    raw_msg *shared = plain == &r.msgs[0] ? &r.msgs[1] : &r.msgs[0];
    assert_string_equal(plain->topic, "t/wire/plain/a");
    assert_string_equal(plain->content_type, "application/json");
    assert_string_equal(plain->status, "404");
    assert_string_equal(plain->rt, "t/reply/me");
    assert_int_equal(plain->corr_len, 3);
    assert_memory_equal(plain->corr, corr, 3);
    assert_int_equal(plain->n_ids, 1);
    assert_int_equal(plain->ids[0], 77);
    /* The finding the adapter relies on: shared subscriptions carry ids too. */
    assert_string_equal(shared->topic, "t/wire/shared/b");
    assert_int_equal(shared->n_ids, 1);
    assert_int_equal(shared->ids[0], 4242);
    assert_string_equal(shared->content_type, "application/json");
    assert_string_equal(shared->status, ""); /* no status: no user property */
    pthread_mutex_unlock(&r.mu);

    raw_close(&r);
    adapter_down(p, &hp);
    host_fini(&hp);
}

static void test_shared_groups(void **state)
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
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/sh/+", "g1", &tok[0], 1), LOOM_OK);
    assert_int_equal(subscribe_wait(a[1], &h[1], "t/sh/+", "g1", &tok[1], 1), LOOM_OK);
    assert_int_equal(subscribe_wait(a[2], &h[2], "t/sh/+", "g2", &tok[2], 1), LOOM_OK);
    assert_int_equal(subscribe_wait(a[3], &h[3], "t/sh/+", NULL, &tok[3], 1), LOOM_OK);
    for (int i = 0; i < N; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%03d", i);
        assert_int_equal(publish_str(a[4], "t/sh/x", body), LOOM_OK);
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
    for (int i = 0; i < 5; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

/* Many filters subscribed at once go out in batched SUBSCRIBEs sharing an
 * identifier: each message still reaches exactly its own subscription,
 * also when two groups of the same process share a filter (never in one
 * batch) and next to a wildcard filter (never batched). */
static void test_batched_subscriptions(void **state)
{
    (void)state;
    enum { N = 200 };
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    static int tok[N], g1, g2, wild;
    char filter[32];
    int64_t t0 = mono_ms();
    for (int i = 0; i < N; i++) {
        snprintf(filter, sizeof filter, "t/batch/%d", i);
        assert_int_equal(ops->subscribe(a[0], filter, i % 2 ? "grp" : NULL, &tok[i], 1), LOOM_OK);
    }
    assert_int_equal(ops->subscribe(a[0], "t/batch/x", "g1", &g1, 1), LOOM_OK);
    assert_int_equal(ops->subscribe(a[0], "t/batch/x", "g2", &g2, 1), LOOM_OK);
    assert_int_equal(ops->subscribe(a[0], "t/batch/w/+", NULL, &wild, 1), LOOM_OK);
    size_t want = N + 3;
    assert_true(host_wait(&h[0], has_subs, &want, 10000));
    /* one SUBSCRIBE each would take paho's 10 ms SUBACK polls: over 2 s */
    assert_true(mono_ms() - t0 < 1500);
    for (size_t i = 0; i < want; i++)
        assert_int_equal(h[0].sub_errs[i], LOOM_OK);
    for (int i = 0; i < N; i++) {
        snprintf(filter, sizeof filter, "t/batch/%d", i);
        assert_int_equal(publish_str(a[1], filter, filter), LOOM_OK);
    }
    assert_int_equal(publish_str(a[1], "t/batch/x", "x"), LOOM_OK);
    assert_int_equal(publish_str(a[1], "t/batch/w/1", "w"), LOOM_OK);
    size_t all = N + 3;
    assert_true(host_wait(&h[0], has_n, &all, 10000));
    sleep_ms(200); /* nothing more may come */
    assert_int_equal(n_deliveries(&h[0]), all);
    int seen_g1 = 0, seen_g2 = 0, seen_w = 0;
    for (size_t i = 0; i < h[0].n; i++) {
        const char *t = h[0].d[i].topic;
        if (strcmp(t, "t/batch/x") == 0) {
            seen_g1 += h[0].d[i].token == &g1;
            seen_g2 += h[0].d[i].token == &g2;
        } else if (strcmp(t, "t/batch/w/1") == 0) {
            assert_ptr_equal(h[0].d[i].token, &wild);
            seen_w++;
        } else {
            int k = atoi(t + strlen("t/batch/"));
            assert_true(k >= 0 && k < N);
            assert_ptr_equal(h[0].d[i].token, &tok[k]);
        }
    }
    assert_int_equal(seen_g1, 1);
    assert_int_equal(seen_g2, 1);
    assert_int_equal(seen_w, 1);
    for (int i = 0; i < 2; i++) {
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
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t1, 1), LOOM_OK);
    assert_int_equal(subscribe_wait(s, hs, "t/two/#", NULL, &t2, 1), LOOM_OK);
    /* the same filter again for another token: one broker subscription */
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t3, 1), LOOM_OK);
    /* and a shared one in the same client */
    assert_int_equal(subscribe_wait(s, hs, "t/two/#", "solo", &t4, 1), LOOM_OK);
    /* subscribing again is harmless (re-sent, same identifier) */
    assert_int_equal(subscribe_wait(s, hs, "t/two/+", NULL, &t1, 1), LOOM_OK);

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

    /* unsubscribe one token of a shared filter: the other keeps receiving */
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t1), LOOM_OK);
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t1), LOOM_ENOTFOUND);
    assert_int_equal(ops->unsubscribe(s, "t/two/#", NULL, &t2), LOOM_OK);
    assert_int_equal(ops->unsubscribe(s, "t/two/#", "solo", &t4), LOOM_OK);
    host_clear_deliveries(hs);
    assert_int_equal(publish_str(p, "t/two/y", "3"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));
    sleep_ms(150);
    assert_int_equal(n_deliveries(hs), 1);
    assert_int_equal(count_token(hs, &t3), 1);
    /* the last token gone: UNSUBSCRIBE went out, nothing arrives */
    assert_int_equal(ops->unsubscribe(s, "t/two/+", NULL, &t3), LOOM_OK);
    sleep_ms(50);
    host_clear_deliveries(hs);
    assert_int_equal(publish_str(p, "t/two/z", "4"), LOOM_OK);
    sleep_ms(250);
    assert_int_equal(n_deliveries(hs), 0);

    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

static void test_retained(void **state)
{
    (void)state;
    t_host h[3];
    void *a[3];
    for (int i = 0; i < 3; i++)
        host_init(&h[i]);
    adapters_up(3, h, a, url(), NULL);
    void *p = a[0], *s1 = a[1], *s2 = a[2];
    pub_args keep = {.qos = 1, .retain = true};
    assert_int_equal(publish(p, "t/ret/a", "v1", 2, &keep), LOOM_OK);
    sleep_ms(100); /* stored by the broker */

    int tok;
    assert_int_equal(subscribe_wait(s1, &h[1], "t/ret/#", NULL, &tok, 1), LOOM_OK);
    assert_true(wait_deliveries(&h[1], 1, 5000));
    assert_string_equal(h[1].d[0].data, "v1");
    assert_true(h[1].d[0].retained);

    /* clear it: an empty retained message, delivered live (not "retained") */
    assert_int_equal(publish(p, "t/ret/a", NULL, 0, &keep), LOOM_OK);
    assert_true(wait_deliveries(&h[1], 2, 5000));
    assert_int_equal(h[1].d[1].len, 0);
    assert_false(h[1].d[1].retained);

    /* a newcomer gets nothing */
    assert_int_equal(subscribe_wait(s2, &h[2], "t/ret/#", NULL, &tok, 1), LOOM_OK);
    sleep_ms(250);
    assert_int_equal(n_deliveries(&h[2]), 0);

    for (int i = 0; i < 3; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
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
    assert_int_equal(subscribe_wait(a[0], hs, "t/ovl", NULL, &tok, 1), LOOM_OK);
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

static void test_no_upcalls_after_stop(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    adapters_up(2, h, a, url(), NULL);
    t_host *hs = &h[0];
    void *s = a[0], *p = a[1];
    int tok;
    assert_int_equal(subscribe_wait(s, hs, "t/late/#", NULL, &tok, 0), LOOM_OK);
    /* a stream of messages racing with the shutdown */
    pub_args q0 = {.qos = 0};
    for (int i = 0; i < 200; i++)
        assert_int_equal(publish(p, "t/late/x", "z", 1, &q0), LOOM_OK);
    ops->close(s);
    assert_int_equal(ops->connect(s), LOOM_ESTATE);
    assert_int_equal(ops->subscribe(s, "t/late/y", NULL, &tok, 0), LOOM_EUNAVAILABLE);
    assert_int_equal(publish_str(s, "t/late/z", "1"), LOOM_EUNAVAILABLE);
    ops->stop(s);
    pthread_mutex_lock(&hs->mu);
    hs->stopped = true;
    pthread_mutex_unlock(&hs->mu);
    for (int i = 0; i < 50; i++)
        assert_int_equal(publish(p, "t/late/x", "z", 1, &q0), LOOM_OK);
    sleep_ms(150);
    ops->stop(s); /* idempotent */
    ops->fini(s);
    assert_int_equal(hs->late_upcalls, 0);
    adapter_down(p, &h[1]);
    host_fini(&h[1]);
    host_fini(hs);
}

/* Published before connect(): kept by paho and sent once connected. A
 * retained message, so the check does not race with the subscription. */
static void test_publish_before_connect_is_buffered(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    a[0] = adapter_new(&h[0], url(), fast_opts, NULL);
    a[1] = adapter_new(&h[1], url(), fast_opts, NULL);
    pub_args keep = {.qos = 1, .retain = true};
    assert_int_equal(publish(a[1], "t/pre/a", "early", 5, &keep), LOOM_OK);
    assert_int_equal(ops->connect(a[0]), LOOM_OK);
    assert_int_equal(ops->connect(a[1]), LOOM_OK);
    assert_true(wait_state(&h[0], 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h[1], 0, LOOM_BROKER_CONNECTED, 8000));
    int tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/pre/#", NULL, &tok, 1), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    assert_string_equal(h[0].d[0].data, "early");
    assert_int_equal(publish(a[1], "t/pre/a", NULL, 0, &keep), LOOM_OK); /* clean up */
    assert_true(wait_deliveries(&h[0], 2, 5000));
    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

static void test_close_sends_no_will(void **state)
{
    (void)state;
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    a[0] = adapter_new(&h[0], url(), fast_opts, NULL);
    a[1] = adapter_new(&h[1], url(), fast_opts, "t/willclose/inst");
    assert_int_equal(ops->connect(a[0]), LOOM_OK);
    assert_int_equal(ops->connect(a[1]), LOOM_OK);
    assert_true(wait_state(&h[0], 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h[1], 0, LOOM_BROKER_CONNECTED, 8000));
    int tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/willclose/#", NULL, &tok, 1), LOOM_OK);
    adapter_down(a[1], &h[1]);
    sleep_ms(300);
    assert_int_equal(n_deliveries(&h[0]), 0);
    adapter_down(a[0], &h[0]);
    host_fini(&h[1]);
    host_fini(&h[0]);
}

/* The will test's child: connects with a will, says so, waits to be killed. */
static int will_child(const char *u, const char *topic)
{
    t_host h;
    host_init(&h);
    cJSON *o = cJSON_Parse(fast_opts);
    loom_adapter_options opts = {
        .url = u, .instance_id = "will-child", .options = o, .will_topic = topic};
    void *a = NULL;
    if (ops->init(&a, &h.host, &opts) != LOOM_OK || ops->connect(a) != LOOM_OK ||
        !wait_state(&h, 0, LOOM_BROKER_CONNECTED, 5000))
        return 1;
    if (write(1, "up\n", 3) != 3)
        return 1;
    for (int i = 0; i < 300; i++) /* killed long before */
        sleep_ms(100);
    return 2;
}

static void test_will_on_abrupt_loss(void **state)
{
    (void)state;
    const char *topic = "t/will/svc/1/inst";
    t_host h[3];
    void *a[3];
    for (int i = 0; i < 3; i++)
        host_init(&h[i]);
    adapters_up(3, h, a, url(), NULL);
    void *p = a[0], *w = a[1], *n = a[2];
    t_host *hw = &h[1];
    /* the instance's retained announcement */
    pub_args keep = {.qos = 1, .retain = true};
    assert_int_equal(publish(p, topic, "{\"svc\":1}", 9, &keep), LOOM_OK);
    int tok;
    assert_int_equal(subscribe_wait(w, hw, "t/will/#", NULL, &tok, 1), LOOM_OK);
    assert_true(wait_deliveries(hw, 1, 5000));
    assert_true(hw->d[0].retained);

    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execl("/proc/self/exe", "test_mqtt_adapter", "--will-child", url(), topic, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    char buf[8] = "";
    bool up = poll(&pfd, 1, 10000) == 1 && read(pipefd[0], buf, sizeof buf - 1) > 0;
    close(pipefd[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_true(up);
    assert_memory_equal(buf, "up", 2);

    /* the broker publishes the will: an empty retained message */
    assert_true(wait_deliveries(hw, 2, 5000));
    assert_string_equal(hw->d[1].topic, topic);
    assert_int_equal(hw->d[1].len, 0);
    /* and the announcement is gone for newcomers */
    assert_int_equal(subscribe_wait(n, &h[2], "t/will/#", NULL, &tok, 1), LOOM_OK);
    sleep_ms(200);
    assert_int_equal(n_deliveries(&h[2]), 0);
    for (int i = 0; i < 3; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
}

static const char *dynsec_plugin(void)
{
    static const char *const known[] = {"/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                                        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                                        "/usr/lib/mosquitto_dynamic_security.so",
                                        "/usr/local/lib/mosquitto_dynamic_security.so"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(known); i++)
        if (access(known[i], R_OK) == 0)
            return known[i];
    return NULL;
}

/* mosquitto's plain acl_file never refuses a SUBSCRIBE; its dynamic
 * security plugin does (reason 0x87, not authorized). */
static void test_refused_subscription(void **state)
{
    (void)state;
    const char *plugin = dynsec_plugin();
    if (!plugin)
        skip();
    char cfg[] = "/tmp/loom-dynsec-XXXXXX";
    int fd = mkstemp(cfg);
    assert_true(fd >= 0);
    const char *json =
        "{\"defaultACLAccess\": {\"publishClientSend\": true, \"publishClientReceive\": true, "
        "\"subscribe\": true, \"unsubscribe\": true}, \"clients\": [], "
        "\"groups\": [{\"groupname\": \"anon\", \"roles\": [{\"rolename\": \"limited\"}], "
        "\"clients\": []}], "
        "\"roles\": [{\"rolename\": \"limited\", \"acls\": [{\"acltype\": "
        "\"subscribePattern\", \"topic\": \"denied/#\", \"priority\": 0, \"allow\": false}, "
        "{\"acltype\": \"subscribePattern\", \"topic\": \"$share/+/denied/#\", \"priority\": 0, "
        "\"allow\": false}]}], "
        "\"anonymousGroup\": \"anon\"}";
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    char extra[512];
    snprintf(extra, sizeof extra, "plugin %s\nplugin_opt_config_file %s", plugin, cfg);
    t_broker b;
    t_broker_start_with(&b, extra);

    t_host h;
    host_init(&h);
    void *a = adapter_up(&h, t_broker_url(&b), NULL, NULL);
    int ok_tok, bad_tok;
    assert_int_equal(subscribe_wait(a, &h, "t/fine", NULL, &ok_tok, 1), LOOM_OK);
    assert_int_equal(subscribe_wait(a, &h, "denied/x", NULL, &bad_tok, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(count_logs(&h, LOOM_LOG_WARN, "refused the subscription to denied/x"), 1);
    assert_int_equal(subscribe_wait(a, &h, "denied/y", "grp", &bad_tok, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(
        count_logs(&h, LOOM_LOG_WARN, "refused the subscription to $share/grp/denied/y"), 1);
    /* still connected and working */
    assert_int_equal(subscribe_wait(a, &h, "t/fine2", "grp", &ok_tok, 1), LOOM_OK);
    adapter_down(a, &h);
    host_fini(&h);
    t_broker_stop(&b);
    unlink(cfg);
}

static void test_credentials(void **state)
{
    (void)state;
    char pw[] = "/tmp/loom-pw-XXXXXX", mine[] = "/tmp/loom-mypw-XXXXXX";
    int fd = mkstemp(pw);
    assert_true(fd >= 0);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "mosquitto_passwd -b %s alice s3cret >/dev/null 2>&1", pw);
    if (system(cmd) != 0) {
        unlink(pw);
        skip(); /* mosquitto's password tool is missing */
    }
    fd = mkstemp(mine);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "s3cret\nignored\n", 15), 15);
    close(fd);
    char extra[256];
    snprintf(extra, sizeof extra, "password_file %s\nallow_anonymous false", pw);
    t_broker b;
    t_broker_start_with(&b, extra); /* the last allow_anonymous wins */

    char opts[512];
    snprintf(opts, sizeof opts,
             "{\"username\": \"alice\", \"password_file\": \"%s\", \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             mine);
    t_host h1, h2;
    host_init(&h1);
    host_init(&h2);
    void *a = adapter_new(&h1, t_broker_url(&b), opts, NULL);
    /* a wrong password keeps failing (and retrying) with the broker's reason */
    void *c = adapter_new(&h2, t_broker_url(&b),
                          "{\"username\": \"alice\", \"password\": \"nope\", "
                          "\"reconnect_min_ms\": 20, \"reconnect_max_ms\": 50}",
                          NULL);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_int_equal(ops->connect(c), LOOM_OK);
    assert_true(wait_state(&h1, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_logs(&h2, LOOM_LOG_DEBUG, "cannot connect", 2, 8000));
    assert_false(wait_state(&h2, 0, LOOM_BROKER_CONNECTED, 1));
    assert_int_equal(count_logs(&h2, LOOM_LOG_WARN, "cannot connect"), 1);
    assert_int_equal(count_logs(&h2, LOOM_LOG_DEBUG, "ot authorized") +
                         count_logs(&h2, LOOM_LOG_DEBUG, "user name or password"),
                     count_logs(&h2, LOOM_LOG_DEBUG, "cannot connect"));
    adapter_down(c, &h2);
    adapter_down(a, &h1);
    host_fini(&h2);
    host_fini(&h1);
    t_broker_stop(&b);
    unlink(pw);
    unlink(mine);
}

static void test_nothing_listening(void **state)
{
    (void)state;
    char u[64];
    snprintf(u, sizeof u, "mqtt://127.0.0.1:%d", unused_port());
    t_host h;
    host_init(&h);
    void *a = adapter_new(
        &h, u, "{\"reconnect_min_ms\": 10, \"reconnect_max_ms\": 80, \"buffer\": 2}", NULL);
    assert_int_equal(ops->connect(a), LOOM_OK);
    /* retrying (each attempt takes paho up to a second to notice) */
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "cannot connect", 2, 8000));
    assert_false(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 1));
    assert_int_equal(h.states[0], LOOM_BROKER_CONNECTING);
    assert_int_equal(count_logs(&h, LOOM_LOG_WARN, "cannot connect"), 1); /* not spammed */
    /* bounded buffering while disconnected */
    assert_int_equal(publish_str(a, "t/buf", "1"), LOOM_OK);
    assert_int_equal(publish_str(a, "t/buf", "2"), LOOM_OK);
    assert_int_equal(publish_str(a, "t/buf", "3"), LOOM_EUNAVAILABLE);
    assert_int_equal(ops->subscribe(a, "t/buf", NULL, &h, 1), LOOM_EUNAVAILABLE);
    int64_t t0 = mono_ms();
    adapter_down(a, &h);
    int64_t took = mono_ms() - t0;
    assert_true(took < 2500);
    host_fini(&h);

    /* without a buffer, publishing while disconnected fails at once */
    host_init(&h);
    a = adapter_new(&h, u, "{\"buffer\": 0}", NULL);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_int_equal(publish_str(a, "t/buf", "1"), LOOM_EUNAVAILABLE);
    adapter_down(a, &h);
    host_fini(&h);
}

/* The first connect fails; the adapter keeps trying and gets there. */
static void test_first_connect_retried(void **state)
{
    (void)state;
    t_broker b;
    t_broker_start(&b);
    t_broker_kill(&b);
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, t_broker_url(&b), fast_opts, NULL);
    assert_int_equal(ops->connect(a), LOOM_OK);
    assert_true(wait_logs(&h, LOOM_LOG_DEBUG, "cannot connect", 1, 8000));
    t_broker_restart(&b);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 8000));
    adapter_down(a, &h);
    host_fini(&h);
    t_broker_stop(&b);
}

/* The broker dies and comes back: DISCONNECTED, then CONNECTED by itself;
 * a publish made meanwhile is buffered and reaches a durable subscriber. */
static void test_broker_restart(void **state)
{
    (void)state;
    t_broker b;
    t_broker_start(&b);
    t_host h[2];
    void *a[2];
    host_init(&h[0]);
    host_init(&h[1]);
    char sopts[256];
    char cid[33];
    loom__random_id(cid);
    snprintf(sopts, sizeof sopts,
             "{\"client_id\": \"dur-%.12s\", \"session_expiry\": 60, \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             cid);
    a[0] = adapter_new(&h[0], t_broker_url(&b), sopts, NULL);
    a[1] = adapter_new(&h[1], t_broker_url(&b), fast_opts, NULL);
    assert_int_equal(ops->connect(a[0]), LOOM_OK);
    assert_int_equal(ops->connect(a[1]), LOOM_OK);
    assert_true(wait_state(&h[0], 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h[1], 0, LOOM_BROKER_CONNECTED, 8000));
    t_host *hs = &h[0], *hp = &h[1];
    void *s = a[0], *p = a[1];
    int tok;
    assert_int_equal(subscribe_wait(s, hs, "t/dur/#", NULL, &tok, 1), LOOM_OK);
    assert_int_equal(publish_str(p, "t/dur/before", "b"), LOOM_OK);
    assert_true(wait_deliveries(hs, 1, 5000));
    t_broker_wait_saved(&b); /* the durable session is on disk */

    size_t s_from = n_states(hs), p_from = n_states(hp);
    t_broker_kill(&b);
    assert_true(wait_state(hs, s_from, LOOM_BROKER_DISCONNECTED, 5000));
    assert_true(wait_state(hp, p_from, LOOM_BROKER_DISCONNECTED, 5000));
    pthread_mutex_lock(&hp->mu);
    for (size_t i = p_from; i < hp->n_states; i++)
        if (hp->states[i] == LOOM_BROKER_DISCONNECTED)
            assert_non_null(hp->details[i]); /* with a reason */
    pthread_mutex_unlock(&hp->mu);
    assert_int_equal(ops->subscribe(s, "t/other", NULL, &tok, 1), LOOM_EUNAVAILABLE);
    assert_int_equal(publish_str(p, "t/dur/during", "d"), LOOM_OK); /* buffered */

    t_broker_restart(&b);
    assert_true(wait_state(hs, s_from, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(hp, p_from, LOOM_BROKER_CONNECTED, 8000));
    /* what the core does on CONNECTED */
    assert_int_equal(subscribe_wait(s, hs, "t/dur/#", NULL, &tok, 1), LOOM_OK);
    assert_true(wait_deliveries(hs, 2, 5000));
    pthread_mutex_lock(&hs->mu);
    bool found = false;
    for (size_t i = 1; i < hs->n; i++)
        found |= strcmp(hs->d[i].topic, "t/dur/during") == 0 && hs->d[i].token == &tok;
    pthread_mutex_unlock(&hs->mu);
    assert_true(found);
    /* and the connection works as before */
    size_t before = n_deliveries(hs);
    assert_int_equal(publish_str(p, "t/dur/after", "a"), LOOM_OK);
    assert_true(wait_deliveries(hs, before + 1, 5000));

    for (int i = 0; i < 2; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
    t_broker_stop(&b);
}

/* The broker drops us (another client took our client id): the loss is
 * reported with a reason and the adapter reconnects by itself. (mosquitto
 * 2.0.11 just closes the socket here; paho reports no DISCONNECT packet.) */
static void test_session_taken_over(void **state)
{
    (void)state;
    char cid[33], opts[256];
    loom__random_id(cid);
    snprintf(opts, sizeof opts,
             "{\"client_id\": \"dup-%.12s\", \"reconnect_min_ms\": 20, \"reconnect_max_ms\": "
             "100}",
             cid);
    t_host h;
    host_init(&h);
    void *a = adapter_new(&h, url(), opts, NULL);
    assert_int_equal(ops->connect(a), LOOM_OK);
    raw_client r;
    raw_open(&r, shared_broker.port); /* in parallel: paho's rounds are slow */
    raw_close(&r);
    assert_true(wait_state(&h, 0, LOOM_BROKER_CONNECTED, 8000));
    size_t from = n_states(&h);
    char dup[40];
    snprintf(dup, sizeof dup, "dup-%.12s", cid);
    raw_open_as(&r, shared_broker.port, dup);
    assert_true(wait_state(&h, from, LOOM_BROKER_DISCONNECTED, 5000));
    pthread_mutex_lock(&h.mu);
    const char *detail = NULL;
    for (size_t i = from; i < h.n_states; i++)
        if (h.states[i] == LOOM_BROKER_DISCONNECTED)
            detail = h.details[i];
    assert_non_null(detail);
    assert_true(strlen(detail) > 0);
    pthread_mutex_unlock(&h.mu);
    /* it comes back by itself (and takes the id back) */
    assert_true(wait_state(&h, from, LOOM_BROKER_CONNECTED, 8000));
    raw_close(&r);
    adapter_down(a, &h);
    host_fini(&h);
}

/* A durable session resumed by a new adapter (a restarted process with the
 * same client id): the broker sends the messages it queued right after
 * CONNACK, before anything is subscribed again. They carry the old
 * process's subscription identifiers, which the new adapter derives the
 * same way (from the filter, not the subscription order), and are held
 * until the subscription is made, then delivered in order. Messages for a
 * subscription the new process never makes again are dropped after the
 * hold (2 s), with one warning. */
static void test_durable_session_held_until_subscribed(void **state)
{
    (void)state;
    char cid[33], sopts[256];
    loom__random_id(cid);
    snprintf(sopts, sizeof sopts,
             "{\"client_id\": \"held-%.12s\", \"session_expiry\": 60, \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             cid);
    t_host h1, hp;
    host_init(&h1);
    host_init(&hp);
    void *s1 = adapter_new(&h1, url(), sopts, NULL);
    void *p = adapter_new(&hp, url(), fast_opts, NULL);
    assert_int_equal(ops->connect(s1), LOOM_OK);
    assert_int_equal(ops->connect(p), LOOM_OK);
    assert_true(wait_state(&h1, 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&hp, 0, LOOM_BROKER_CONNECTED, 8000));
    int gone, kept;
    /* Subscribed in this order here, the other way round after the restart. */
    assert_int_equal(subscribe_wait(s1, &h1, "t/held/gone/#", NULL, &gone, 1), LOOM_OK);
    assert_int_equal(subscribe_wait(s1, &h1, "t/held/kept/#", "grp", &kept, 1), LOOM_OK);
    adapter_down(s1, &h1); /* DISCONNECT: the session stays for 60 s */
    host_fini(&h1);

    for (int i = 0; i < 20; i++) {
        char text[16];
        snprintf(text, sizeof text, "%d", i);
        assert_int_equal(publish_str(p, "t/held/kept/x", text), LOOM_OK);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(publish_str(p, "t/held/gone/x", "g"), LOOM_OK);
    sleep_ms(300); /* acknowledged by the broker */

    t_host h2;
    host_init(&h2);
    void *s2 = adapter_new(&h2, url(), sopts, NULL);
    assert_int_equal(ops->connect(s2), LOOM_OK);
    assert_true(wait_state(&h2, 0, LOOM_BROKER_CONNECTED, 8000));
    sleep_ms(500); /* the queued messages are in: held, not delivered */
    assert_int_equal(n_deliveries(&h2), 0);
    int other, other2, kept2;
    assert_int_equal(subscribe_wait(s2, &h2, "t/held/other", NULL, &other, 1), LOOM_OK);
    assert_int_equal(subscribe_wait(s2, &h2, "t/held/other2", NULL, &other2, 1), LOOM_OK);
    assert_int_equal(n_deliveries(&h2), 0); /* not claimed by the wrong subscription */
    assert_int_equal(subscribe_wait(s2, &h2, "t/held/kept/#", "grp", &kept2, 1), LOOM_OK);
    assert_true(wait_deliveries(&h2, 20, 5000));
    pthread_mutex_lock(&h2.mu);
    for (size_t i = 0; i < 20; i++) {
        char text[16];
        snprintf(text, sizeof text, "%zu", i);
        assert_ptr_equal(h2.d[i].token, &kept2);
        assert_string_equal(h2.d[i].topic, "t/held/kept/x");
        assert_string_equal(h2.d[i].data, text); /* in order */
    }
    pthread_mutex_unlock(&h2.mu);
    /* The old subscription nobody makes again: dropped after the hold. */
    assert_true(wait_logs(&h2, LOOM_LOG_WARN, "dropped 3 message(s)", 1, 5000));
    assert_int_equal(n_deliveries(&h2), 20);
    /* Live traffic flows as usual. */
    assert_int_equal(publish_str(p, "t/held/kept/y", "live"), LOOM_OK);
    assert_true(wait_deliveries(&h2, 21, 5000));
    assert_int_equal(ops->unsubscribe(s2, "t/held/kept/#", "grp", &kept2), LOOM_OK);
    adapter_down(s2, &h2);
    host_fini(&h2);
    adapter_down(p, &hp);
    host_fini(&hp);
}

/* Runs a shell command; false when it fails. */
static bool sh(const char *cmd)
{
    return system(cmd) == 0;
}

/* mqtts:// against a mosquitto TLS listener with a throwaway CA. */
static void test_tls(void **state)
{
    (void)state;
    if (access("/usr/bin/openssl", X_OK) != 0)
        skip();
    char dir[] = "/tmp/loom-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "(cd %s && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
             "-subj /CN=loom-test-ca -keyout ca.key -out ca.pem && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-subj /CN=127.0.0.1 -keyout server.key -out server.csr && "
             "printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-days 2 -extfile ext.cnf -out server.pem && chmod 644 *.key) "
             ">/dev/null 2>&1",
             dir);
    if (!sh(cmd)) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        sh(cmd);
        skip();
    }
    int tls_port = unused_port();
    char extra[512];
    snprintf(extra, sizeof extra,
             "listener %d 127.0.0.1\ncafile %s/ca.pem\ncertfile %s/server.pem\n"
             "keyfile %s/server.key",
             tls_port, dir, dir, dir);
    t_broker b;
    t_broker_start_with(&b, extra);

    char u[64], good[256];
    snprintf(u, sizeof u, "mqtts://127.0.0.1:%d", tls_port);
    snprintf(good, sizeof good,
             "{\"tls\": {\"ca\": \"%s/ca.pem\"}, \"reconnect_min_ms\": 20, "
             "\"reconnect_max_ms\": 100}",
             dir);
    t_host h[3];
    void *a[3];
    for (int i = 0; i < 3; i++)
        host_init(&h[i]);
    cJSON *o = t_json(good);
    loom_adapter_options opts = {.url = u, .instance_id = "tls-a", .options = o};
    assert_int_equal(loom__mqtts_adapter.init(&a[0], &h[0].host, &opts), LOOM_OK);
    opts.instance_id = "tls-b";
    assert_int_equal(loom__mqtts_adapter.init(&a[1], &h[1].host, &opts), LOOM_OK);
    cJSON_Delete(o);
    /* without our CA the server's certificate is not trusted */
    a[2] = adapter_new(&h[2], u, fast_opts, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ops->connect(a[i]), LOOM_OK);
    assert_true(wait_state(&h[0], 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(wait_state(&h[1], 0, LOOM_BROKER_CONNECTED, 8000));
    assert_true(count_logs(&h[0], LOOM_LOG_INFO, "(TLS)") >= 1);
    int tok;
    assert_int_equal(subscribe_wait(a[0], &h[0], "t/tls", NULL, &tok, 1), LOOM_OK);
    assert_int_equal(publish_str(a[1], "t/tls", "secret"), LOOM_OK);
    assert_true(wait_deliveries(&h[0], 1, 5000));
    assert_string_equal(h[0].d[0].data, "secret");
    assert_true(wait_logs(&h[2], LOOM_LOG_WARN, "cannot connect", 1, 8000));
    assert_false(wait_state(&h[2], 0, LOOM_BROKER_CONNECTED, 1));

    for (int i = 0; i < 3; i++) {
        adapter_down(a[i], &h[i]);
        host_fini(&h[i]);
    }
    t_broker_stop(&b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    sh(cmd);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--will-child") == 0)
        return will_child(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_bad_urls_and_options),
        cmocka_unit_test(test_connect_and_validation),
        cmocka_unit_test(test_roundtrip_properties),
        cmocka_unit_test(test_wire_properties_and_subscription_ids),
        cmocka_unit_test(test_shared_groups),
        cmocka_unit_test(test_batched_subscriptions),
        cmocka_unit_test(test_overlapping_subscriptions),
        cmocka_unit_test(test_retained),
        cmocka_unit_test(test_overload_drops_with_one_warning),
        cmocka_unit_test(test_no_upcalls_after_stop),
        cmocka_unit_test(test_publish_before_connect_is_buffered),
        cmocka_unit_test(test_close_sends_no_will),
        cmocka_unit_test(test_will_on_abrupt_loss),
        cmocka_unit_test(test_refused_subscription),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_first_connect_retried),
        cmocka_unit_test(test_broker_restart),
        cmocka_unit_test(test_session_taken_over),
        cmocka_unit_test(test_durable_session_held_until_subscribed),
        cmocka_unit_test(test_tls),
    };
    if (getenv("T_FILTER")) /* e.g. T_FILTER=test_will* */
        cmocka_set_test_filter(getenv("T_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
