/* Overload: a flood of HTTP requests against a server whose handlers are
 * slow must be refused fast (503 with Retry-After) instead of queued
 * without bound; the server's memory stays bounded and it serves normally
 * once the flood is over. The bulkhead (limits.concurrency) refuses the
 * same way.
 *
 * The server is tests/fault_service (built next to this binary), run as a
 * subprocess with the HTTP bridge, so its resident set size can be read
 * from /proc/PID/status while the test's own load generator
 * (tests/support/httpload.h) holds hundreds of connections. Under ASan the
 * child's allocator quarantine is capped (ASAN_OPTIONS) so RSS measures
 * live memory. Every wait is bounded; the child is reaped in teardown.
 *
 * The figures (requests, 503s, RSS) are printed for docs/reliability.md. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/httpload.h"
#include "support/proc.h"
#include "support/support.h"

#define START_TIMEOUT_MS 20000

static char dir[64];
static char **env;

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/loom-overload-XXXXXX");
    if (!mkdtemp(dir))
        fail_msg("mkdtemp failed");
    const char *extra[] = {"ASAN_OPTIONS=quarantine_size_mb=4:malloc_context_size=5", NULL};
    env = t_env_new(extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    t_proc_reap_all(5000);
    t_env_free(env);
    env = NULL;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return 0;
}

/* Starts fault_service with the bridge on a free port, extra flags appended;
 * waits until /healthz answers. Returns the port. */
static int start_server(t_proc *p, const char *name, const char *const *extra)
{
    int port = t_free_port();
    char listen[64], log[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/%s.log", dir, name);
    /* Handlers on the runtime's workers, behind its bounded queue: with
     * http.inline (the default with memory:) they would run on the HTTP
     * threads, with neither a queue to refuse from nor a bulkhead to hit
     * (docs/reliability.md, "Known limits"). */
    const char *args[32] = {"--services",  "all",  "--http", listen,
                            "--log-level", "warn", "--set",  "http.inline=false"};
    size_t n = 8;
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    t_proc_start(p, name, t_helper_path("fault_service"), args, env, log);
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
    while (t_http_raw(port, req, sizeof req - 1, 1000, NULL, 0, NULL, 0) != 200) {
        if (!t_proc_running(p) || t_mono_ms() > deadline) {
            t_proc_print_log(p, 4000);
            fail_msg("%s did not come up", name);
        }
        t_sleep_ms(50);
    }
    return port;
}

static int post(int port, const char *path, const char *body, char *head, size_t head_len,
                char *out, size_t out_len, int timeout_ms)
{
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     path, strlen(body), body);
    return t_http_raw(port, req, (size_t)n, timeout_ms, head, head_len, out, out_len);
}

static void print_result(const char *what, const t_load_result *r)
{
    fprintf(stderr,
            "%s: sent %ld, answered %ld (200: %ld, 503: %ld of which %ld with Retry-After, "
            "504: %ld, other: %ld), hung %ld, connection errors %ld, max latency %lld ms\n",
            what, r->sent, r->answered, r->status[200], r->status[503], r->retry_after_503,
            r->status[504], r->answered - r->status[200] - r->status[503] - r->status[504], r->hung,
            r->conn_errors, (long long)r->max_latency_ms);
}

/* 300 connections flood a 100 ms handler served by 2 workers with a queue
 * of 8: almost everything is refused at once, memory does not grow with
 * the flood, and normal requests succeed right after it. */
static void test_flood_bounded(void **state)
{
    (void)state;
    t_proc srv;
    const char *extra[] = {"--workers", "2", "--set", "limits.queue=8", NULL};
    int port = start_server(&srv, "flood", extra);

    /* Warm up (allocator arenas, route table, the first connections). */
    t_load_cfg warm = {.port = port,
                       .method = "POST",
                       .path = "/api/v1/faults/sleep",
                       .body = "{\"ms\":1}",
                       .connections = 50,
                       .request_timeout_ms = 10000};
    t_load *l = t_load_start(&warm);
    t_sleep_ms(1500);
    t_load_result r;
    t_load_stop(l, &r);
    assert_int_equal(r.hung + r.conn_errors, 0);
    long base = t_rss_kib(srv.pid);
    assert_true(base > 0);

    t_load_cfg flood = warm;
    flood.body = "{\"ms\":100}";
    flood.connections = 300;
    l = t_load_start(&flood);
    long peak1 = base, peak2 = base;
    int64_t t0 = t_mono_ms();
    while (t_mono_ms() - t0 < 6000) {
        long rss = t_rss_kib(srv.pid);
        if (t_mono_ms() - t0 < 3000)
            peak1 = rss > peak1 ? rss : peak1;
        else
            peak2 = rss > peak2 ? rss : peak2;
        t_sleep_ms(100);
    }
    t_load_stop(l, &r);
    long after = t_rss_kib(srv.pid);
    print_result("flood", &r);
    fprintf(stderr,
            "flood: RSS %ld KiB before, peak %ld KiB in the first 3 s, %ld KiB in the next 3 s, "
            "%ld KiB after\n",
            base, peak1, peak2, after);
    fprintf(stderr, "flood: a 503 said: %s\n", r.sample[1]);

    /* Every request got an answer: 200, or 503 at once with Retry-After. */
    assert_int_equal(r.hung, 0);
    assert_int_equal(r.conn_errors, 0);
    assert_int_equal(r.answered, r.sent);
    assert_int_equal(r.status[200] + r.status[503], r.answered);
    assert_true(r.status[200] >= 20);   /* the workers kept working */
    assert_true(r.status[503] >= 1000); /* and the rest was refused */
    assert_int_equal(r.retry_after_503, r.status[503]);
    assert_non_null(strstr(r.sample[1], "overloaded"));
    /* Refused fast: a 503 never waited for the slow handler's queue. */
    assert_true(r.max_latency_ms < 5000);
    /* Bounded: the flood costs at most a few MiB, and the second half of
     * it no more than the first. */
    assert_true(peak1 - base < 48 * 1024);
    assert_true(peak2 <= peak1 + 8 * 1024);

    /* Recovered: ordinary requests succeed at once. */
    for (int i = 0; i < 20; i++) {
        char body[256];
        int64_t s = t_mono_ms();
        assert_int_equal(
            post(port, "/api/v1/faults/sleep", "{\"ms\":1}", NULL, 0, body, sizeof body, 5000),
            200);
        assert_true(t_mono_ms() - s < 1000);
    }
    assert_int_equal(t_proc_stop(&srv, SIGTERM, 15000), 0);
}

/* limits.concurrency: at most 2 `sleep` handlers at once although 4
 * workers are free; the others get 503 at once, with Retry-After. */
static void test_bulkhead(void **state)
{
    (void)state;
    t_proc srv;
    const char *extra[] = {"--workers", "4", "--set", "limits.concurrency.faults.sleep=2", NULL};
    int port = start_server(&srv, "bulkhead", extra);
    t_load_cfg cfg = {.port = port,
                      .method = "POST",
                      .path = "/api/v1/faults/sleep",
                      .body = "{\"ms\":200}",
                      .connections = 16,
                      .request_timeout_ms = 10000};
    t_load *l = t_load_start(&cfg);
    t_sleep_ms(2000);
    t_load_result r;
    t_load_stop(l, &r);
    print_result("bulkhead", &r);
    assert_int_equal(r.hung + r.conn_errors, 0);
    assert_int_equal(r.status[200] + r.status[503], r.answered);
    /* 2 at a time for ~2 s of 200 ms: about 20 successes, never 4 x 10. */
    assert_true(r.status[200] >= 10 && r.status[200] <= 30);
    assert_true(r.status[503] > 0);
    assert_int_equal(r.retry_after_503, r.status[503]);
    assert_non_null(strstr(r.sample[1], "too many concurrent"));
    char head[1024], body[256];
    assert_int_equal(post(port, "/api/v1/faults/sleep", "{\"ms\":1}", head, sizeof head, body,
                          sizeof body, 5000),
                     200);
    assert_int_equal(t_proc_stop(&srv, SIGTERM, 15000), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flood_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulkhead, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
