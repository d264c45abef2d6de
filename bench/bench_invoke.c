/* Invoke benchmark: in process (memory broker) or against a remote command.
 *
 *   bench_invoke [seconds] [threads] [scenarios] [options]
 *
 * scenarios is a comma-separated list (default: all four):
 *   direct   - the handler's work called directly with the same cJSON payload
 *              (the reference: what the work itself costs)
 *   call     - loom_runtime_call in a loop on one thread (blocking, inline)
 *   call_mt  - the same on `threads` threads at once
 *   invoke   - loom_runtime_invoke (asynchronous, worker pool), up to
 *              --window in flight (default 256), topped up in quarters
 * options:
 *   --bytes N       request payload of about N bytes ({"n":41,"pad":"xx.."});
 *                   default {"n":41}
 *   --body JSON     request payload as given
 *   --broker URL    broker (default "memory:")
 *   --config FILE   a loom YAML configuration for the client runtime (e.g.
 *                   broker credentials and security.signing)
 *   --target S.C    call command C of service S (version 1) served elsewhere
 *                   instead of the built-in bench.inc; `direct` is skipped
 *   --window W      invocations in flight for `invoke`
 *   --no-inline     invoke.inline=false: `invoke` always goes through the
 *                   worker pool (by default quick in-process commands run
 *                   on the calling thread)
 *   --count N       run exactly N operations of each scenario, untimed, no
 *                   warm-up (for `valgrind --tool=callgrind`: the difference
 *                   between N and 0 calls, divided by N, is the cost of one)
 *
 * Prints one JSON object per scenario (bench.h: ops/s, p50/p99 in
 * microseconds, peak RSS). Timed runs start with a short warm-up. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "loom.h"

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
    cJSON *out = work(loom_ctx_payload(ctx));
    if (loom_ctx_reply(ctx, out) != LOOM_OK)
        cJSON_Delete(out);
}

LOOM_COMMAND(cmd_inc, .name = "inc", .handler = handler);
LOOM_SERVICE(svc, .name = "bench", .version = "1", .commands = LOOM_COMMANDS(&cmd_inc));

/* What every scenario calls, and with what. */
typedef struct target {
    char service[64], command[64];
    cJSON *payload; /* duplicated for each call */
    long count;     /* > 0: exactly this many operations, untimed */
    long window;
} target;

static target T = {.service = "bench", .command = "inc", .count = -1, .window = 256};

/* Every 64th operation is timed, so timing does not dominate. */
#define SAMPLE_EVERY 64
#define WARMUP_OPS 2000

static bool keep_going(long ops, double end)
{
    if (T.count >= 0)
        return ops < T.count;
    return (ops % 1000) != 0 || bench_now() < end;
}

static void bench_direct(double secs)
{
    bench_samples lat = {0};
    long ops = 0;
    double start = bench_now(), end = start + secs;
    for (; keep_going(ops, end); ops++) {
        double t0 = (ops % SAMPLE_EVERY) == 0 ? bench_now() : 0;
        /* what a caller does around a direct call: build the request, get
         * the answer, drop both */
        cJSON *req = cJSON_Duplicate(T.payload, 1);
        cJSON *out = work(req);
        cJSON_Delete(req);
        cJSON_Delete(out);
        if (t0)
            bench_sample_add(&lat, (bench_now() - t0) * 1e6);
    }
    bench_report("direct", ops, bench_now() - start, &lat);
    free(lat.v);
}

static void call_once(loom_runtime *rt)
{
    loom_call c = LOOM_CALL_INIT(.service = T.service, .command = T.command,
                                 .payload = cJSON_Duplicate(T.payload, 1));
    loom_msg *resp = NULL;
    loom_err err = loom_runtime_call(rt, &c, &resp);
    if (err != LOOM_OK || loom_msg_status(resp) != 200) {
        fprintf(stderr, "bench_invoke: call failed: %s, status %d %s\n", loom_strerror(err),
                resp ? loom_msg_status(resp) : 0, resp && loom_msg_error(resp) ? loom_msg_error(resp) : "");
        abort();
    }
    loom_msg_release(resp);
}

typedef struct thread_arg {
    loom_runtime *rt;
    double end;
    long ops;
    bench_samples lat;
} thread_arg;

static void *call_loop(void *p)
{
    thread_arg *a = p;
    for (; keep_going(a->ops, a->end); a->ops++) {
        double t0 = (a->ops % SAMPLE_EVERY) == 0 ? bench_now() : 0;
        call_once(a->rt);
        if (t0)
            bench_sample_add(&a->lat, (bench_now() - t0) * 1e6);
    }
    return NULL;
}

static void bench_call(loom_runtime *rt, double secs, int threads, const char *name)
{
    thread_arg *args = calloc((size_t)threads, sizeof *args);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    if (!args || !th)
        abort();
    double start = bench_now();
    for (int i = 0; i < threads; i++) {
        args[i].rt = rt;
        args[i].end = start + secs;
        if (pthread_create(&th[i], NULL, call_loop, &args[i]) != 0)
            abort();
    }
    long ops = 0;
    bench_samples all = {0};
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ops += args[i].ops;
        bench_samples_merge(&all, &args[i].lat);
        free(args[i].lat.v);
    }
    bench_report(name, ops, bench_now() - start, &all);
    free(all.v);
    free(args);
    free(th);
}

/* Asynchronous: keep up to `window` invocations in flight, topping up when
 * a quarter of them have been answered (a caller woken for every single
 * answer would measure its own wake-ups); latency from invoke to callback
 * for every SAMPLE_EVERY-th one. */
typedef struct async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long inflight, done;
    long low;     /* top up when inflight falls to this */
    bool waiting; /* the issuing thread sleeps in cv */
    bench_samples lat;
} async_state;

typedef struct async_call {
    async_state *s;
    double t0;
} async_call;

static void async_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    if (loom_msg_status(resp) != 200) {
        fprintf(stderr, "bench_invoke: invoke answered %d %s\n", loom_msg_status(resp),
                loom_msg_error(resp) ? loom_msg_error(resp) : "");
        abort();
    }
    async_call *ac = user;
    async_state *s = ac->s;
    double us = ac->t0 ? (bench_now() - ac->t0) * 1e6 : 0;
    free(ac);
    pthread_mutex_lock(&s->mu);
    if (us)
        bench_sample_add(&s->lat, us);
    s->inflight--;
    s->done++;
    if (s->waiting && s->inflight <= s->low)
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void bench_invoke(loom_runtime *rt, double secs)
{
    async_state s = {PTHREAD_MUTEX_INITIALIZER,
                     PTHREAD_COND_INITIALIZER,
                     0,
                     0,
                     T.window - (T.window + 3) / 4,
                     false,
                     {0}};
    long issued = 0;
    double start = bench_now(), end = start + secs;
    while (T.count >= 0 ? issued < T.count : bench_now() < end) {
        pthread_mutex_lock(&s.mu);
        while (s.inflight > s.low) {
            s.waiting = true;
            pthread_cond_wait(&s.cv, &s.mu);
            s.waiting = false;
        }
        long room = T.window - s.inflight;
        if (T.count >= 0 && room > T.count - issued)
            room = T.count - issued;
        s.inflight += room;
        pthread_mutex_unlock(&s.mu);
        for (long i = 0; i < room; i++, issued++) {
            async_call *ac = malloc(sizeof *ac);
            if (!ac)
                abort();
            ac->s = &s;
            ac->t0 = (issued % SAMPLE_EVERY) == 0 ? bench_now() : 0;
            loom_call c = LOOM_CALL_INIT(.service = T.service, .command = T.command,
                                         .payload = cJSON_Duplicate(T.payload, 1));
            loom_err err;
            while ((err = loom_runtime_invoke(rt, &c, async_cb, ac)) == LOOM_EOVERLOAD)
                ;
            if (err != LOOM_OK)
                abort();
        }
    }
    pthread_mutex_lock(&s.mu);
    s.low = 0;
    while (s.inflight > 0) {
        s.waiting = true;
        pthread_cond_wait(&s.cv, &s.mu);
        s.waiting = false;
    }
    long done = s.done;
    pthread_mutex_unlock(&s.mu);
    char name[32];
    snprintf(name, sizeof name, "invoke_%ld", T.window);
    bench_report(name, done, bench_now() - start, &s.lat);
    free(s.lat.v);
}

static bool wanted(const char *list, const char *name)
{
    if (!*list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return true;
    return false;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_invoke [seconds] [threads] [direct,call,call_mt,invoke]\n"
                    "       [--bytes N | --body JSON] [--broker URL] [--config FILE]\n"
                    "       [--target SVC.CMD]\n"
                    "       [--window W] [--count N] [--no-inline]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double secs = 2.0;
    int threads = 2, pos = 0;
    const char *only = "", *broker = "memory:", *body = "{\"n\":41}", *config = NULL;
    char *owned_body = NULL;
    bool remote = false, no_inline = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-inline")) {
            no_inline = true;
            continue;
        }
        if (a[0] != '-' || a[1] != '-') {
            if (pos == 0)
                secs = atof(a);
            else if (pos == 1)
                threads = atoi(a);
            else if (pos == 2)
                only = a;
            else
                usage();
            pos++;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--bytes")) {
            free(owned_body);
            body = owned_body = bench_payload_text((size_t)atol(v));
        } else if (!strcmp(a, "--body")) {
            body = v;
        } else if (!strcmp(a, "--broker")) {
            broker = v;
        } else if (!strcmp(a, "--config")) {
            config = v;
        } else if (!strcmp(a, "--target")) {
            const char *dot = strchr(v, '.');
            if (!dot || dot == v || !dot[1] || (size_t)(dot - v) >= sizeof T.service ||
                strlen(dot + 1) >= sizeof T.command)
                usage();
            snprintf(T.service, sizeof T.service, "%.*s", (int)(dot - v), v);
            snprintf(T.command, sizeof T.command, "%s", dot + 1);
            remote = true;
        } else if (!strcmp(a, "--window")) {
            T.window = atol(v);
        } else if (!strcmp(a, "--count")) {
            T.count = atol(v);
        } else {
            usage();
        }
    }
    if (secs < 0 || threads < 1 || T.window < 1)
        usage();
    T.payload = cJSON_Parse(body);
    free(owned_body);
    if (!T.payload) {
        fprintf(stderr, "bench_invoke: the payload is not JSON\n");
        return 2;
    }
    loom_config *conf = NULL;
    if ((config || no_inline) && loom_config_create(&conf) != LOOM_OK)
        abort();
    if (config && loom_config_load_file(conf, config) != LOOM_OK) {
        fprintf(stderr, "bench_invoke: %s\n", loom_config_error(conf));
        return 2;
    }
    if (no_inline && loom_config_set(conf, "invoke.inline", "false") != LOOM_OK)
        abort();
    loom_runtime_config cfg =
        LOOM_RUNTIME_CONFIG_INIT(.config = conf, .log_level = LOOM_LOG_WARN,
                                 .workers = (unsigned)threads, .broker_url = broker);
    loom_runtime *rt = NULL;
    loom_err cerr = loom_runtime_create(&rt, &cfg);
    loom_config_destroy(conf);
    if (cerr || (!remote && loom_runtime_add_service(rt, &svc, NULL)) || loom_runtime_start(rt) ||
        loom_runtime_wait_ready(rt, 10000)) {
        fprintf(stderr, "bench_invoke: cannot start the runtime\n");
        loom_runtime_destroy(rt);
        cJSON_Delete(T.payload);
        return 1;
    }
    if (T.count < 0) /* warm-up: routes, caches, allocator */
        for (int i = 0; i < WARMUP_OPS / (remote ? 10 : 1); i++)
            call_once(rt);
    if (!remote && wanted(only, "direct"))
        bench_direct(secs);
    if (wanted(only, "call"))
        bench_call(rt, secs, 1, "call");
    if (wanted(only, "call_mt"))
        bench_call(rt, secs, threads, "call_mt");
    if (wanted(only, "invoke"))
        bench_invoke(rt, secs);
    loom_runtime_destroy(rt);
    cJSON_Delete(T.payload);
    return 0;
}
