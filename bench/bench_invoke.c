/* In-process invoke benchmark (memory broker).
 *
 *   bench_invoke [seconds] [threads]
 *
 * Prints one JSON object per scenario:
 *   direct   - the handler called directly with the same cJSON payload (the
 *              reference: what the work itself costs)
 *   call     - loom_runtime_call in a loop on one thread (blocking, inline)
 *   call_mt  - the same on N threads at once
 *   invoke   - loom_runtime_invoke (asynchronous, worker pool), 256 in flight
 * with operations per second and p50/p99 latency in microseconds. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The work: read a field of the payload, answer a small object. */
static cJSON *work(const cJSON *payload)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(payload, "n");
    cJSON *out = cJSON_CreateObject();
    cJSON_AddNumberToObject(out, "n", cJSON_IsNumber(n) ? n->valuedouble + 1 : 0);
    return out;
}

static void handler(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_reply(ctx, work(loom_ctx_payload(ctx)));
}

LOOM_COMMAND(cmd_inc, .name = "inc", .handler = handler);
LOOM_SERVICE(svc, .name = "bench", .version = "1", .commands = LOOM_COMMANDS(&cmd_inc));

/* --- latency samples --------------------------------------------------------- */

typedef struct samples {
    double *v;
    size_t n, cap;
} samples;

static void sample_add(samples *s, double us)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1 << 16;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            abort();
    }
    s->v[s->n++] = us;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(samples *s, double p)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof *s->v, cmp);
    return s->v[(size_t)(p * (double)(s->n - 1))];
}

static void report(const char *name, long ops, double secs, samples *lat)
{
    printf("{\"scenario\":\"%s\",\"ops\":%ld,\"seconds\":%.3f,\"ops_per_s\":%.0f,"
           "\"p50_us\":%.3f,\"p99_us\":%.3f}\n",
           name, ops, secs, (double)ops / secs, pct(lat, 0.50), pct(lat, 0.99));
    fflush(stdout);
}

/* Every 64th operation is timed, so timing does not dominate. */
#define SAMPLE_EVERY 64

static void bench_direct(double secs)
{
    cJSON *payload = cJSON_Parse("{\"n\":41}");
    samples lat = {0};
    long ops = 0;
    double start = now_s(), end = start + secs;
    while (now_s() < end) {
        for (int i = 0; i < 1000; i++, ops++) {
            double t0 = (ops % SAMPLE_EVERY) == 0 ? now_s() : 0;
            /* what a caller does around a direct call: build the request,
             * get the answer, drop both */
            cJSON *req = cJSON_Duplicate(payload, 1);
            cJSON *out = work(req);
            cJSON_Delete(req);
            cJSON_Delete(out);
            if (t0)
                sample_add(&lat, (now_s() - t0) * 1e6);
        }
    }
    report("direct", ops, now_s() - start, &lat);
    cJSON_Delete(payload);
    free(lat.v);
}

typedef struct thread_arg {
    loom_runtime *rt;
    double end;
    long ops;
    samples lat;
} thread_arg;

static void *call_loop(void *p)
{
    thread_arg *a = p;
    cJSON *payload = cJSON_Parse("{\"n\":41}");
    while (now_s() < a->end) {
        for (int i = 0; i < 1000; i++, a->ops++) {
            double t0 = (a->ops % SAMPLE_EVERY) == 0 ? now_s() : 0;
            loom_call c = {.service = "bench", .command = "inc",
                           .payload = cJSON_Duplicate(payload, 1)};
            loom_msg *resp = NULL;
            if (loom_runtime_call(a->rt, &c, &resp) != LOOM_OK || loom_msg_status(resp) != 200)
                abort();
            loom_msg_release(resp);
            if (t0)
                sample_add(&a->lat, (now_s() - t0) * 1e6);
        }
    }
    cJSON_Delete(payload);
    return NULL;
}

static void bench_call(loom_runtime *rt, double secs, int threads, const char *name)
{
    thread_arg *args = calloc((size_t)threads, sizeof *args);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    double start = now_s();
    for (int i = 0; i < threads; i++) {
        args[i].rt = rt;
        args[i].end = start + secs;
        pthread_create(&th[i], NULL, call_loop, &args[i]);
    }
    long ops = 0;
    samples all = {0};
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ops += args[i].ops;
        for (size_t k = 0; k < args[i].lat.n; k++)
            sample_add(&all, args[i].lat.v[k]);
        free(args[i].lat.v);
    }
    report(name, ops, now_s() - start, &all);
    free(all.v);
    free(args);
    free(th);
}

/* Asynchronous: keep `window` invocations in flight. */
typedef struct async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long inflight, done;
} async_state;

static void async_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    if (loom_msg_status(resp) != 200)
        abort();
    async_state *s = user;
    pthread_mutex_lock(&s->mu);
    s->inflight--;
    s->done++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void bench_invoke(loom_runtime *rt, double secs, long window)
{
    async_state s = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    cJSON *payload = cJSON_Parse("{\"n\":41}");
    double start = now_s(), end = start + secs;
    while (now_s() < end) {
        pthread_mutex_lock(&s.mu);
        while (s.inflight >= window)
            pthread_cond_wait(&s.cv, &s.mu);
        long room = window - s.inflight;
        s.inflight += room;
        pthread_mutex_unlock(&s.mu);
        for (long i = 0; i < room; i++) {
            loom_call c = {.service = "bench", .command = "inc",
                           .payload = cJSON_Duplicate(payload, 1)};
            loom_err err;
            while ((err = loom_runtime_invoke(rt, &c, async_cb, &s)) == LOOM_EOVERLOAD)
                ;
            if (err != LOOM_OK)
                abort();
        }
    }
    pthread_mutex_lock(&s.mu);
    while (s.inflight > 0)
        pthread_cond_wait(&s.cv, &s.mu);
    long done = s.done;
    pthread_mutex_unlock(&s.mu);
    samples none = {0};
    report("invoke", done, now_s() - start, &none);
    cJSON_Delete(payload);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    const char *only = argc > 3 ? argv[3] : "";
    loom_runtime_config cfg = {.log_level = LOOM_LOG_WARN, .workers = (unsigned)threads};
    loom_runtime *rt = NULL;
    if (loom_runtime_create(&rt, &cfg) || loom_runtime_add_service(rt, &svc, NULL) ||
        loom_runtime_start(rt) || loom_runtime_wait_ready(rt, 5000)) {
        fprintf(stderr, "bench_invoke: cannot start the runtime\n");
        return 1;
    }
    if (!*only || !strcmp(only, "direct"))
        bench_direct(secs);
    if (!*only || !strcmp(only, "call"))
        bench_call(rt, secs, 1, "call");
    if (!*only || !strcmp(only, "call_mt"))
        bench_call(rt, secs, threads, "call_mt");
    if (!*only || !strcmp(only, "invoke"))
        bench_invoke(rt, secs, 256);
    loom_runtime_destroy(rt);
    return 0;
}
