/* Event fan-out benchmark: K subscriber instances and one publisher, each a
 * runtime of its own, on one broker.
 *
 *   bench_events [--broker URL] [--mode group|all|both|direct] [--subscribers K]
 *                [--seconds S] [--window W] [--bytes N] [--workers N]
 *
 * Every subscriber instance runs the same service with two subscriptions:
 *   group   one per group, on event "tick.group": each event reaches one
 *           of the K instances
 *   all     every instance, on "tick.all": each event reaches all K
 * `both` (the default) measures group, then all, in one process; each
 * prints a JSON line, then a line with the time all instances took to stop.
 *   direct  the reference: the subscription's work called directly, once
 *           per event, on one thread
 *
 * URL: "memory:bench" (default; K+1 runtimes of this process on one named
 * in-memory bus), mqtt://HOST:PORT or nats://HOST:PORT (K+1 connections).
 * The publisher keeps at most W deliveries outstanding (published x fan-out
 * minus delivered), so what is counted is what handlers ran, never what
 * piled up in a queue or was dropped. One JSON line (bench.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "loom.h"

#define WARMUP_S 0.5
#define MAX_SUBS 64

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static long g_delivered; /* under g_mu */

/* The work: read a field of the event. */
static bool work(const cJSON *payload)
{
    return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(payload, "n"));
}

static loom_ack on_tick(loom_ctx *ctx, void *user)
{
    (void)user;
    if (!work(loom_ctx_payload(ctx)))
        return LOOM_DROP;
    pthread_mutex_lock(&g_mu);
    g_delivered++;
    pthread_cond_signal(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return LOOM_ACK;
}

LOOM_SUBSCRIPTION(sub_group, .name = "group", .handler = on_tick,
                  .filter = {.event_name = "tick.group"}, .delivery = LOOM_DELIVER_GROUP);
LOOM_SUBSCRIPTION(sub_all, .name = "all", .handler = on_tick,
                  .filter = {.event_name = "tick.all"}, .delivery = LOOM_DELIVER_ALL);
LOOM_SERVICE(svc, .name = "sink", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_group, &sub_all));

/* Starts a runtime; the caller waits until it is ready (so that several
 * connect at once). */
static loom_runtime *open_rt(const char *broker, const loom_service_def *def, unsigned workers)
{
    /* A short drain: events still arriving at the stop are not measured. */
    loom_runtime_config cfg =
        LOOM_RUNTIME_CONFIG_INIT(.log_level = LOOM_LOG_WARN, .broker_url = broker,
                                 .workers = workers, .drain_timeout_ms = 1000);
    loom_runtime *rt = NULL;
    if (loom_runtime_create(&rt, &cfg) || (def && loom_runtime_add_service(rt, def, NULL)) ||
        loom_runtime_start(rt)) {
        fprintf(stderr, "bench_events: cannot start a runtime on %s\n", broker);
        exit(1);
    }
    return rt;
}

static void wait_ready(loom_runtime *rt, const char *broker)
{
    if (loom_runtime_wait_ready(rt, 10000) != LOOM_OK) {
        fprintf(stderr, "bench_events: a runtime on %s is not ready\n", broker);
        exit(1);
    }
}

static void run_direct(double secs, const cJSON *payload)
{
    long ops = 0;
    double start = bench_now(), end = start + secs;
    while (ops % 1000 || bench_now() < end) {
        cJSON *ev = cJSON_Duplicate(payload, 1); /* what the publisher hands over */
        if (!work(ev))
            abort();
        cJSON_Delete(ev);
        ops++;
    }
    bench_samples none = {0};
    bench_report("events_direct", ops, bench_now() - start, &none);
}

/* Emits `event` for a warm-up plus secs, keeping at most `window`
 * deliveries outstanding, then lets the rest arrive (bounded), so that the
 * next phase and the stop start without a backlog. */
static void pump(loom_runtime *pub, const char *name, const char *event, long fanout, double secs,
                 long window, const cJSON *payload)
{
    pthread_mutex_lock(&g_mu);
    long base = g_delivered, published = 0, at_start = 0;
    pthread_mutex_unlock(&g_mu);
    double start = bench_now(), t0 = 0, end = start + WARMUP_S + secs;
    bool measuring = false;
    for (;;) {
        double now = bench_now();
        if (!measuring && now >= start + WARMUP_S) {
            measuring = true;
            t0 = now;
            pthread_mutex_lock(&g_mu);
            at_start = g_delivered;
            pthread_mutex_unlock(&g_mu);
        }
        if (now >= end)
            break;
        pthread_mutex_lock(&g_mu);
        while (published * fanout - (g_delivered - base) > window / 2) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&g_cv, &g_mu, &ts) == ETIMEDOUT)
                break; /* re-check the deadline */
        }
        long room = (window - (published * fanout - (g_delivered - base))) / fanout;
        pthread_mutex_unlock(&g_mu);
        for (long i = 0; i < room; i++) {
            cJSON *ev = cJSON_Duplicate(payload, 1);
            loom_err err = loom_runtime_emit(pub, event, ev);
            if (err == LOOM_EOVERLOAD) {
                cJSON_Delete(ev);
                break;
            }
            if (err != LOOM_OK) {
                fprintf(stderr, "bench_events: emit: %s\n", loom_strerror(err));
                exit(1);
            }
            published++;
        }
    }
    pthread_mutex_lock(&g_mu);
    long got = g_delivered - at_start;
    double elapsed = bench_now() - t0;
    double give_up = bench_now() + 1;
    while (g_delivered - base < published * fanout && bench_now() < give_up) {
        pthread_mutex_unlock(&g_mu);
        bench_sleep(0.005);
        pthread_mutex_lock(&g_mu);
    }
    pthread_mutex_unlock(&g_mu);
    bench_samples none = {0};
    bench_report(name, got, elapsed, &none);
}

static void *destroy_rt(void *rt)
{
    loom_runtime_destroy(rt);
    return NULL;
}

static void run_loom(const char *broker, const char *mode, int subs, double secs, long window,
                     unsigned workers, const cJSON *payload)
{
    loom_runtime *rt[MAX_SUBS + 1];
    for (int i = 0; i < subs; i++)
        rt[i] = open_rt(broker, &svc, workers);
    rt[subs] = open_rt(broker, NULL, workers); /* the publisher */
    for (int i = 0; i <= subs; i++)
        wait_ready(rt[i], broker);
    char name[64];
    if (strcmp(mode, "all") != 0) {
        snprintf(name, sizeof name, "events_group_%d", subs);
        pump(rt[subs], name, "tick.group", 1, secs, window, payload);
    }
    if (strcmp(mode, "group") != 0) {
        snprintf(name, sizeof name, "events_all_%d", subs);
        pump(rt[subs], name, "tick.all", subs, secs, window, payload);
    }
    /* Stop every instance at once (each stop waits for its own broker
     * connection to close) and say how long that took. */
    double t0 = bench_now();
    pthread_t th[MAX_SUBS + 1];
    for (int i = 0; i <= subs; i++)
        if (pthread_create(&th[i], NULL, destroy_rt, rt[i]) != 0)
            abort();
    for (int i = 0; i <= subs; i++)
        pthread_join(th[i], NULL);
    printf("{\"scenario\":\"events_stop\",\"stop_s\":%.3f}\n", bench_now() - t0);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_events [--broker URL] [--mode group|all|both|direct]\n"
                    "       [--subscribers K] [--seconds S] [--window W] [--bytes N]\n"
                    "       [--workers N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *broker = "memory:bench", *mode = "both";
    int subs = 2;
    double secs = 2;
    long window = 256, bytes = 0, workers = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--broker"))
            broker = v;
        else if (!strcmp(a, "--mode"))
            mode = v;
        else if (!strcmp(a, "--subscribers"))
            subs = atoi(v);
        else if (!strcmp(a, "--seconds"))
            secs = atof(v);
        else if (!strcmp(a, "--window"))
            window = atol(v);
        else if (!strcmp(a, "--bytes"))
            bytes = atol(v);
        else if (!strcmp(a, "--workers"))
            workers = atol(v);
        else
            usage();
    }
    if (subs < 1 || subs > MAX_SUBS || secs <= 0 || window < 1 || bytes < 0 || workers < 1 ||
        workers > 1024 ||
        (strcmp(mode, "group") && strcmp(mode, "all") && strcmp(mode, "both") &&
         strcmp(mode, "direct")))
        usage();
    char *text = bytes ? bench_payload_text((size_t)bytes) : NULL;
    cJSON *payload = cJSON_Parse(text ? text : "{\"n\":41}");
    free(text);
    if (!payload)
        abort();
    if (!strcmp(mode, "direct"))
        run_direct(secs, payload);
    else
        run_loom(broker, mode, subs, secs, window, (unsigned)workers, payload);
    cJSON_Delete(payload);
    return 0;
}
