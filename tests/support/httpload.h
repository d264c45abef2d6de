/* A closed-loop HTTP/1.1 load generator for fault and overload tests.
 *
 * One thread drives many keep-alive connections to 127.0.0.1:PORT with
 * poll(): each connection sends a request, waits for the whole response,
 * and sends the next one at once (no think time). It counts every
 * outcome, so a test can assert that every request got an answer:
 *   answered     a complete response (by status)
 *   hung         no complete response within request_timeout_ms (the
 *                connection is then closed and opened again)
 *   conn_errors  the connection failed or was closed before the answer
 * Requests are only sent while the load runs; at stop, the requests in
 * flight are waited for (up to request_timeout_ms) and counted too.
 *
 * Thread-safe in the sense that t_load_start / t_load_stop are called from
 * one thread (the test's main thread) while the load runs on its own. */
#ifndef LOOM_TEST_HTTPLOAD_H
#define LOOM_TEST_HTTPLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define T_LOAD_MAX_CONNS 1024

typedef struct t_load_cfg {
    int port;
    const char *method; /* "GET", "POST", ... */
    const char *path;
    const char *body; /* JSON sent with Content-Type: application/json, or NULL */
    int connections;  /* 1 .. T_LOAD_MAX_CONNS */
    int request_timeout_ms;
    int pause_ms; /* between a connection's answer and its next request; 0 = none */
} t_load_cfg;

typedef struct t_load_result {
    long sent;
    long answered;
    long hung;
    long conn_errors;
    long status[600];       /* answered, by status code */
    long retry_after_503;   /* 503 answers that carried Retry-After */
    int64_t max_latency_ms; /* of answered requests */
    char sample[3][200];    /* the first body seen for 500, 503, 504 */
} t_load_result;

typedef struct t_load t_load;

/* Starts the load (its thread connects at once). Fails the test when the
 * thread cannot start. */
t_load *t_load_start(const t_load_cfg *cfg);
/* A copy of the counters so far (sampled while it runs). */
void t_load_peek(t_load *l, t_load_result *out);
/* Stops sending, waits for the requests in flight (bounded by the request
 * timeout), joins the thread, fills *out and frees l. */
void t_load_stop(t_load *l, t_load_result *out);

/* One request on a fresh connection; returns the status (0 when there was
 * no complete answer within timeout_ms). Headers and body of the response
 * go to the optional buffers (NUL-terminated, cut to their size). */
int t_http_raw(int port, const char *request, size_t request_len, int timeout_ms, char *head,
               size_t head_len, char *body, size_t body_len);

/* The resident set size of a process in KiB (/proc/PID/status VmRSS), or -1. */
long t_rss_kib(int pid);

#endif
