/* The MQTT reference for the split benchmarks: plain paho MQTT 5, no loom.
 *
 *   ref_mqtt_rr responder URL [--qos Q]
 *       subscribes to bench/req (shared group "bench") and answers every
 *       request with the same payload on its Response Topic, with its
 *       Correlation Data. Runs until SIGINT/SIGTERM.
 *   ref_mqtt_rr requester URL [--seconds S] [--inflight N] [--bytes B | --body JSON] [--qos Q]
 *       N independent lanes, each one request outstanding at a time: the
 *       reply's arrival sends the lane's next request from paho's callback
 *       thread (what a minimal request/reply client does). Prints one JSON
 *       line (round trips/s, p50/p99 in microseconds).
 *   ref_mqtt_rr pubsub URL [--seconds S] [--subscribers K] [--mode group|all|both]
 *                          [--window W] [--bytes B] [--qos Q]
 *       K subscriber clients, each with a shared subscription to
 *       bench/evt/group (each message to one of them) and a plain one to
 *       bench/evt/all (each message to every one); one publisher keeping at
 *       most W deliveries outstanding, first on the group topic, then on the
 *       all topic (one JSON line each). Counts delivered messages (QoS 0 may
 *       be dropped by the broker; what arrives is what counts).
 *
 * URL is mqtt://HOST:PORT (or tcp://). Every measurement runs a 0.5 s
 * warm-up first, outside the figures. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <MQTTAsync.h>

#include "bench.h"

#define WARMUP_S 0.5
#define MAX_LANES 4096
#define MAX_SUBS 64

static int g_qos = 1;

static void die(const char *what, int rc)
{
    fprintf(stderr, "ref_mqtt_rr: %s: %s (%d)\n", what, MQTTAsync_strerror(rc), rc);
    exit(1);
}

/* --- connect / subscribe, synchronously -------------------------------------- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done; /* 0 pending, 1 ok, -1 failed */
} waiter;

static void w_set(waiter *w, int v)
{
    pthread_mutex_lock(&w->mu);
    w->done = v;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void on_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    w_set(ctx, 1);
}

static void on_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)r;
    w_set(ctx, -1);
}

static int w_wait(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->done == 0)
        pthread_cond_wait(&w->cv, &w->mu);
    int v = w->done;
    w->done = 0;
    pthread_mutex_unlock(&w->mu);
    return v;
}

static void conn_lost(void *ctx, char *cause)
{
    (void)ctx;
    fprintf(stderr, "ref_mqtt_rr: connection lost: %s\n", cause ? cause : "?");
    _exit(1);
}

static int g_port; /* the broker's, for set_nodelay */

/* paho never sets TCP_NODELAY and hides its socket: like loom's adapter,
 * set it on every TCP connection of this process to the broker's port
 * (without it each round trip waits ~40 ms for Nagle + delayed ACKs). */
static void set_nodelay(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (fd <= 2 || fd == dirfd(d) || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
            continue;
        if (ss.ss_family != AF_INET || ntohs(((struct sockaddr_in *)&ss)->sin_port) != g_port)
            continue;
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    closedir(d);
}

/* Subscribes, synchronously. */
static void client_subscribe(MQTTAsync c, const char *filter)
{
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onSuccess5 = on_ok5;
    ro.onFailure5 = on_fail5;
    ro.context = &w;
    int rc = MQTTAsync_subscribe(c, filter, g_qos, &ro);
    if (rc != MQTTASYNC_SUCCESS)
        die("subscribe", rc);
    if (w_wait(&w) != 1)
        die("subscribe", MQTTASYNC_FAILURE);
}

/* Creates, connects and subscribes (filter may be NULL) one client. */
static MQTTAsync client_open(const char *url, const char *id, const char *filter,
                             MQTTAsync_messageArrived *on_msg, void *ctx)
{
    MQTTAsync c;
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    co.maxBufferedMessages = 1 << 20; /* paho counts queued sends against it */
    int rc = MQTTAsync_createWithOptions(&c, url, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS)
        die("create", rc);
    if ((rc = MQTTAsync_setCallbacks(c, ctx, conn_lost, on_msg, NULL)) != MQTTASYNC_SUCCESS)
        die("callbacks", rc);
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer5;
    opts.cleanstart = 1;
    opts.keepAliveInterval = 30;
    opts.onSuccess5 = on_ok5;
    opts.onFailure5 = on_fail5;
    opts.context = &w;
    if ((rc = MQTTAsync_connect(c, &opts)) != MQTTASYNC_SUCCESS)
        die("connect", rc);
    if (w_wait(&w) != 1)
        die("connect", MQTTASYNC_FAILURE);
    set_nodelay();
    if (filter)
        client_subscribe(c, filter);
    return c;
}

static void client_close(MQTTAsync c)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    d.timeout = 1000;
    MQTTAsync_disconnect(c, &d);
    for (int i = 0; i < 100 && MQTTAsync_isConnected(c); i++)
        bench_sleep(0.01);
    MQTTAsync_destroy(&c);
}

/* Publishes data with an optional response topic and correlation data. */
static int publish(MQTTAsync c, const char *topic, const void *data, int len, const char *resp,
                   const void *corr, int corr_len)
{
    MQTTAsync_message m = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;
    if (resp) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_RESPONSE_TOPIC};
        p.value.data.data = (char *)resp;
        p.value.data.len = (int)strlen(resp);
        MQTTProperties_add(&props, &p);
    }
    if (corr) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA};
        p.value.data.data = (char *)corr;
        p.value.data.len = corr_len;
        MQTTProperties_add(&props, &p);
    }
    m.payload = (void *)data;
    m.payloadlen = len;
    m.qos = g_qos;
    m.properties = props;
    int rc = MQTTAsync_sendMessage(c, topic, &m, &ro);
    MQTTProperties_free(&props);
    return rc;
}

/* --- responder ---------------------------------------------------------------- */

static MQTTAsync g_resp_client;
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int responder_msg(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    (void)ctx;
    (void)tlen;
    MQTTProperty *rt = MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
    MQTTProperty *cd =
        MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
    if (rt && rt->value.data.len > 0 && rt->value.data.len < 256) {
        char resp[256];
        memcpy(resp, rt->value.data.data, (size_t)rt->value.data.len);
        resp[rt->value.data.len] = 0;
        publish(g_resp_client, resp, m->payload, m->payloadlen, NULL,
                cd ? cd->value.data.data : NULL, cd ? cd->value.data.len : 0);
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

static int run_responder(const char *url)
{
    char id[64];
    snprintf(id, sizeof id, "ref-responder-%d", (int)getpid());
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    g_resp_client = client_open(url, id, "$share/bench/bench/req", responder_msg, NULL);
    printf("ready\n");
    fflush(stdout);
    while (!g_stop)
        bench_sleep(0.05);
    client_close(g_resp_client);
    return 0;
}

/* --- requester ---------------------------------------------------------------- */

typedef struct requester {
    MQTTAsync c;
    char reply_topic[96];
    const char *body;
    int body_len;
    int lanes;
    double sent_at[MAX_LANES];
    atomic_bool measuring, stopping;
    /* Written by paho's callback thread only; read after the drain. */
    long done;
    bench_samples lat;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
} requester;

static requester R;

static void lane_send(int lane)
{
    R.sent_at[lane] = bench_now();
    uint32_t corr = (uint32_t)lane;
    int rc = publish(R.c, "bench/req", R.body, R.body_len, R.reply_topic, &corr, sizeof corr);
    if (rc != MQTTASYNC_SUCCESS)
        die("publish", rc);
}

static int requester_msg(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    (void)ctx;
    (void)tlen;
    MQTTProperty *cd =
        MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
    uint32_t lane = UINT32_MAX;
    if (cd && cd->value.data.len == (int)sizeof lane)
        memcpy(&lane, cd->value.data.data, sizeof lane);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    if (lane >= (uint32_t)R.lanes)
        return 1;
    if (atomic_load(&R.measuring)) {
        R.done++;
        bench_sample_add(&R.lat, (bench_now() - R.sent_at[lane]) * 1e6);
    }
    if (!atomic_load(&R.stopping)) {
        lane_send((int)lane);
    } else {
        pthread_mutex_lock(&R.mu);
        R.inflight--;
        pthread_cond_signal(&R.cv);
        pthread_mutex_unlock(&R.mu);
    }
    return 1;
}

static int run_requester(const char *url, double secs, int lanes, const char *body)
{
    R.body = body;
    R.body_len = (int)strlen(body);
    R.lanes = lanes;
    pthread_mutex_init(&R.mu, NULL);
    pthread_cond_init(&R.cv, NULL);
    char id[64];
    snprintf(id, sizeof id, "ref-requester-%d", (int)getpid());
    snprintf(R.reply_topic, sizeof R.reply_topic, "bench/rep/%s", id);
    R.c = client_open(url, id, R.reply_topic, requester_msg, NULL);
    R.inflight = lanes;
    for (int i = 0; i < lanes; i++)
        lane_send(i);
    bench_sleep(WARMUP_S);
    double t0 = bench_now();
    atomic_store(&R.measuring, true);
    bench_sleep(secs);
    atomic_store(&R.measuring, false);
    double elapsed = bench_now() - t0;
    atomic_store(&R.stopping, true);
    /* Let every lane's last request come back (bounded). */
    double give_up = bench_now() + 10;
    pthread_mutex_lock(&R.mu);
    while (R.inflight > 0 && bench_now() < give_up) {
        pthread_mutex_unlock(&R.mu);
        bench_sleep(0.005);
        pthread_mutex_lock(&R.mu);
    }
    pthread_mutex_unlock(&R.mu);
    client_close(R.c);
    char name[64];
    snprintf(name, sizeof name, "mqtt_rr_%d", lanes);
    bench_report(name, R.done, elapsed, &R.lat);
    free(R.lat.v);
    return 0;
}

/* --- publish / subscribe ------------------------------------------------------ */

static pthread_mutex_t P_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t P_cv = PTHREAD_COND_INITIALIZER;
static long P_delivered; /* every delivery, warm-up included; under P_mu */

static int sub_msg(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    (void)ctx;
    (void)tlen;
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    pthread_mutex_lock(&P_mu);
    P_delivered++;
    pthread_cond_signal(&P_cv);
    pthread_mutex_unlock(&P_mu);
    return 1;
}

/* Publishes to topic for a warm-up plus secs, keeping at most `window`
 * deliveries outstanding, then lets the rest arrive (bounded). Reports the
 * deliveries counted after the warm-up. */
static void pump(MQTTAsync pub, const char *name, const char *topic, long fanout, double secs,
                 long window, const char *body)
{
    int len = (int)strlen(body);
    pthread_mutex_lock(&P_mu);
    long base = P_delivered, published = 0, at_start = 0;
    pthread_mutex_unlock(&P_mu);
    double start = bench_now(), t0 = 0, end = start + WARMUP_S + secs;
    bool measuring = false;
    for (;;) {
        double now = bench_now();
        if (!measuring && now >= start + WARMUP_S) {
            measuring = true;
            t0 = now;
            pthread_mutex_lock(&P_mu);
            at_start = P_delivered;
            pthread_mutex_unlock(&P_mu);
        }
        if (now >= end)
            break;
        pthread_mutex_lock(&P_mu);
        /* Wait until at most half the window is outstanding, bounded so
         * the deadline and lost QoS 0 messages cannot stall the loop. */
        while (published * fanout - (P_delivered - base) > window / 2) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&P_cv, &P_mu, &ts) == ETIMEDOUT) {
                if (g_qos == 0) /* forget the lost ones */
                    published = (P_delivered - base + fanout - 1) / fanout;
                break;
            }
        }
        long room = (window - (published * fanout - (P_delivered - base))) / fanout;
        pthread_mutex_unlock(&P_mu);
        for (long i = 0; i < room; i++, published++) {
            int rc = publish(pub, topic, body, len, NULL, NULL, 0);
            if (rc != MQTTASYNC_SUCCESS)
                die("publish", rc);
        }
    }
    pthread_mutex_lock(&P_mu);
    long got = P_delivered - at_start;
    double elapsed = bench_now() - t0;
    double give_up = bench_now() + 1;
    while (P_delivered - base < published * fanout && bench_now() < give_up) {
        pthread_mutex_unlock(&P_mu);
        bench_sleep(0.005);
        pthread_mutex_lock(&P_mu);
    }
    pthread_mutex_unlock(&P_mu);
    bench_samples none = {0};
    bench_report(name, got, elapsed, &none);
}

static int run_pubsub(const char *url, double secs, int subs, const char *mode, long window,
                      const char *body)
{
    MQTTAsync sub[MAX_SUBS];
    char id[64];
    for (int i = 0; i < subs; i++) {
        snprintf(id, sizeof id, "ref-sub-%d-%d", (int)getpid(), i);
        sub[i] = client_open(url, id, "$share/bench/bench/evt/group", sub_msg, NULL);
        client_subscribe(sub[i], "bench/evt/all");
    }
    snprintf(id, sizeof id, "ref-pub-%d", (int)getpid());
    MQTTAsync pub = client_open(url, id, NULL, sub_msg, NULL);
    char name[64];
    if (strcmp(mode, "all") != 0) {
        snprintf(name, sizeof name, "mqtt_pubsub_group_%d", subs);
        pump(pub, name, "bench/evt/group", 1, secs, window, body);
    }
    if (strcmp(mode, "group") != 0) {
        snprintf(name, sizeof name, "mqtt_pubsub_all_%d", subs);
        pump(pub, name, "bench/evt/all", subs, secs, window, body);
    }
    client_close(pub);
    for (int i = 0; i < subs; i++)
        client_close(sub[i]);
    return 0;
}

/* --- main --------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: ref_mqtt_rr responder|requester|pubsub mqtt://HOST:PORT [--seconds S]\n"
                    "       [--inflight N] [--bytes B] [--body JSON] [--qos Q]\n"
                    "       [--subscribers K] [--mode group|all|both] [--window W]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    const char *role = argv[1];
    char url[256];
    const char *u = argv[2];
    if (strncmp(u, "mqtt://", 7) == 0)
        snprintf(url, sizeof url, "tcp://%s", u + 7);
    else
        snprintf(url, sizeof url, "%s", u);
    const char *colon = strrchr(url, ':');
    g_port = colon ? atoi(colon + 1) : 1883;
    double secs = 3;
    int inflight = 1, subs = 2;
    long window = 256, bytes = 0;
    const char *mode = "both";
    const char *body_arg = NULL;
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--seconds"))
            secs = atof(v);
        else if (!strcmp(a, "--inflight"))
            inflight = atoi(v);
        else if (!strcmp(a, "--bytes"))
            bytes = atol(v);
        else if (!strcmp(a, "--body"))
            body_arg = v;
        else if (!strcmp(a, "--qos"))
            g_qos = atoi(v);
        else if (!strcmp(a, "--subscribers"))
            subs = atoi(v);
        else if (!strcmp(a, "--window"))
            window = atol(v);
        else if (!strcmp(a, "--mode"))
            mode = v;
        else
            usage();
    }
    if (secs <= 0 || inflight < 1 || inflight > MAX_LANES || subs < 1 || subs > MAX_SUBS ||
        window < 1 || bytes < 0 || g_qos < 0 || g_qos > 2)
        usage();
    char *body = body_arg ? strdup(body_arg) : bench_payload_text((size_t)(bytes ? bytes : 100));
    if (!body)
        return 1;
    int rc;
    if (!strcmp(role, "responder"))
        rc = run_responder(url);
    else if (!strcmp(role, "requester"))
        rc = run_requester(url, secs, inflight, body);
    else if (!strcmp(role, "pubsub"))
        rc = run_pubsub(url, secs, subs, mode, window, body);
    else
        usage(), rc = 2;
    free(body);
    return rc;
}
