/* The NATS reference for the split benchmarks: plain nats.c, no loom.
 *
 *   ref_nats_rr responder URL
 *       queue-subscribes to bench.req (group "bench") and answers every
 *       request with the same payload on its reply subject. Runs until
 *       SIGINT/SIGTERM.
 *   ref_nats_rr requester URL [--seconds S] [--inflight N] [--bytes B | --body JSON]
 *       N lanes, each one request outstanding at a time; replies come to
 *       INBOX.<lane> on one wildcard subscription and the callback sends the
 *       lane's next request. Prints one JSON line.
 *   ref_nats_rr pubsub URL [--seconds S] [--subscribers K] [--mode group|all|both]
 *                          [--window W] [--bytes B]
 *       K subscriber connections, each in queue group "bench" on
 *       bench.evt.group and plainly subscribed to bench.evt.all; one
 *       publisher keeping at most W deliveries outstanding, first on the
 *       group subject, then on the all one (one JSON line each). Counts
 *       delivered messages.
 *
 * Connections use SendAsap (each publish written at once), as loom's NATS
 * adapter does. Every measurement runs a 0.5 s warm-up first. */
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

#include <nats/nats.h>

#include "bench.h"

#define WARMUP_S 0.5
#define MAX_LANES 4096
#define MAX_SUBS 64

static void check(const char *what, natsStatus s)
{
    if (s == NATS_OK)
        return;
    fprintf(stderr, "ref_nats_rr: %s: %s\n", what, natsStatus_GetText(s));
    exit(1);
}

static natsConnection *conn_open(const char *url)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    check("options", natsOptions_Create(&o));
    check("url", natsOptions_SetURL(o, url));
    check("send asap", natsOptions_SetSendAsap(o, true));
    check("pending", natsOptions_SetMaxPendingMsgs(o, 1 << 20));
    check("connect", natsConnection_Connect(&nc, o));
    natsOptions_Destroy(o);
    return nc;
}

/* --- responder ---------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void responder_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *user)
{
    (void)sub;
    (void)user;
    const char *reply = natsMsg_GetReply(m);
    if (reply)
        natsConnection_Publish(nc, reply, natsMsg_GetData(m), natsMsg_GetDataLength(m));
    natsMsg_Destroy(m);
}

static int run_responder(const char *url)
{
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    natsConnection *nc = conn_open(url);
    natsSubscription *sub = NULL;
    check("subscribe",
          natsConnection_QueueSubscribe(&sub, nc, "bench.req", "bench", responder_msg, NULL));
    check("flush", natsConnection_FlushTimeout(nc, 5000));
    printf("ready\n");
    fflush(stdout);
    while (!g_stop)
        bench_sleep(0.05);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
    return 0;
}

/* --- requester ---------------------------------------------------------------- */

typedef struct requester {
    natsConnection *nc;
    char inbox[128];
    const char *body;
    int body_len;
    int lanes;
    double sent_at[MAX_LANES];
    atomic_bool measuring, stopping;
    /* Written by the subscription's callback thread only. */
    long done;
    bench_samples lat;
    atomic_int inflight;
} requester;

static requester R;

static void lane_send(int lane)
{
    char reply[160];
    snprintf(reply, sizeof reply, "%s.%d", R.inbox, lane);
    R.sent_at[lane] = bench_now();
    check("publish", natsConnection_PublishRequest(R.nc, "bench.req", reply, R.body, R.body_len));
}

static void requester_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *user)
{
    (void)nc;
    (void)sub;
    (void)user;
    const char *subj = natsMsg_GetSubject(m);
    const char *dot = subj ? strrchr(subj, '.') : NULL;
    int lane = dot ? atoi(dot + 1) : -1;
    natsMsg_Destroy(m);
    if (lane < 0 || lane >= R.lanes)
        return;
    if (atomic_load(&R.measuring)) {
        R.done++;
        bench_sample_add(&R.lat, (bench_now() - R.sent_at[lane]) * 1e6);
    }
    if (!atomic_load(&R.stopping))
        lane_send(lane);
    else
        atomic_fetch_sub(&R.inflight, 1);
}

static int run_requester(const char *url, double secs, int lanes, const char *body)
{
    R.body = body;
    R.body_len = (int)strlen(body);
    R.lanes = lanes;
    R.nc = conn_open(url);
    natsInbox *inbox = NULL;
    check("inbox", natsInbox_Create(&inbox));
    snprintf(R.inbox, sizeof R.inbox, "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    char filter[160];
    snprintf(filter, sizeof filter, "%s.*", R.inbox);
    natsSubscription *sub = NULL;
    check("subscribe", natsConnection_Subscribe(&sub, R.nc, filter, requester_msg, NULL));
    check("flush", natsConnection_FlushTimeout(R.nc, 5000));
    atomic_store(&R.inflight, lanes);
    for (int i = 0; i < lanes; i++)
        lane_send(i);
    bench_sleep(WARMUP_S);
    double t0 = bench_now();
    atomic_store(&R.measuring, true);
    bench_sleep(secs);
    atomic_store(&R.measuring, false);
    double elapsed = bench_now() - t0;
    atomic_store(&R.stopping, true);
    for (int i = 0; i < 2000 && atomic_load(&R.inflight) > 0; i++)
        bench_sleep(0.005);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsConnection_Close(R.nc);
    natsConnection_Destroy(R.nc);
    char name[64];
    snprintf(name, sizeof name, "nats_rr_%d", lanes);
    bench_report(name, R.done, elapsed, &R.lat);
    free(R.lat.v);
    return 0;
}

/* --- publish / subscribe ------------------------------------------------------ */

static pthread_mutex_t P_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t P_cv = PTHREAD_COND_INITIALIZER;
static long P_delivered; /* every delivery, warm-up included; under P_mu */

static void sub_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *user)
{
    (void)nc;
    (void)sub;
    (void)user;
    natsMsg_Destroy(m);
    pthread_mutex_lock(&P_mu);
    P_delivered++;
    pthread_cond_signal(&P_cv);
    pthread_mutex_unlock(&P_mu);
}

/* Publishes to subject for a warm-up plus secs, keeping at most `window`
 * deliveries outstanding, then lets the rest arrive (bounded). */
static void pump(natsConnection *pub, const char *name, const char *subject, long fanout,
                 double secs, long window, const char *body)
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
        while (published * fanout - (P_delivered - base) > window / 2) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&P_cv, &P_mu, &ts) == ETIMEDOUT) {
                /* core NATS is at most once: forget what was lost */
                published = (P_delivered - base + fanout - 1) / fanout;
                break;
            }
        }
        long room = (window - (published * fanout - (P_delivered - base))) / fanout;
        pthread_mutex_unlock(&P_mu);
        for (long i = 0; i < room; i++, published++)
            check("publish", natsConnection_Publish(pub, subject, body, len));
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
    natsConnection *snc[MAX_SUBS];
    natsSubscription *sgroup[MAX_SUBS], *sall[MAX_SUBS];
    for (int i = 0; i < subs; i++) {
        snc[i] = conn_open(url);
        check("subscribe", natsConnection_QueueSubscribe(&sgroup[i], snc[i], "bench.evt.group",
                                                         "bench", sub_msg, NULL));
        check("subscribe",
              natsConnection_Subscribe(&sall[i], snc[i], "bench.evt.all", sub_msg, NULL));
        check("flush", natsConnection_FlushTimeout(snc[i], 5000));
    }
    natsConnection *pub = conn_open(url);
    char name[64];
    if (strcmp(mode, "all") != 0) {
        snprintf(name, sizeof name, "nats_pubsub_group_%d", subs);
        pump(pub, name, "bench.evt.group", 1, secs, window, body);
    }
    if (strcmp(mode, "group") != 0) {
        snprintf(name, sizeof name, "nats_pubsub_all_%d", subs);
        pump(pub, name, "bench.evt.all", subs, secs, window, body);
    }
    natsConnection_Destroy(pub);
    for (int i = 0; i < subs; i++) {
        natsSubscription_Unsubscribe(sgroup[i]);
        natsSubscription_Destroy(sgroup[i]);
        natsSubscription_Unsubscribe(sall[i]);
        natsSubscription_Destroy(sall[i]);
        natsConnection_Close(snc[i]);
        natsConnection_Destroy(snc[i]);
    }
    return 0;
}

/* --- main --------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: ref_nats_rr responder|requester|pubsub nats://HOST:PORT [--seconds S]\n"
                    "       [--inflight N] [--bytes B] [--body JSON]\n"
                    "       [--subscribers K] [--mode group|all|both] [--window W]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    const char *role = argv[1], *url = argv[2];
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
        window < 1 || bytes < 0)
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
    nats_Close();
    return rc;
}
