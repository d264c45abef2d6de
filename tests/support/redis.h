/* A private redis-server for integration tests.
 *
 * Each t_redis is one redis-server process on a free loopback port, without
 * persistence (--save "" --appendonly no): a restart starts empty. Its
 * output goes to a file in its own temporary directory (also its --dir).
 * Not thread-safe: drive it from the test's main thread. */
#ifndef LOOM_TEST_REDIS_H
#define LOOM_TEST_REDIS_H

#include <stdbool.h>
#include <sys/types.h>

#define T_REDIS_MAX_ARGS 8

typedef struct t_redis {
    int port;
    pid_t pid;   /* 0 when not running */
    bool paused; /* stopped with SIGSTOP */
    char dir[64];
    /* Extra arguments given at start, reused by t_redis_restart. */
    char *args[T_REDIS_MAX_ARGS + 1];
} t_redis;

/* Starts `redis-server --port PORT --bind 127.0.0.1 --save "" --appendonly no`
 * on a free loopback port (found by binding 127.0.0.1:0) and waits (bounded,
 * 5 s) until it answers PING. Fails the test (cmocka fail_msg) when
 * redis-server is not installed or does not come up. */
void t_redis_start(t_redis *r);
/* Same, with extra arguments (NULL-terminated, at most T_REDIS_MAX_ARGS,
 * copied), e.g. {"--requirepass", "secret", NULL}. */
void t_redis_start_with(t_redis *r, const char *const *extra_args);
/* SIGTERM, bounded wait (5 s), then SIGKILL; removes the temp dir. Accepts
 * a server that is not running. */
void t_redis_stop(t_redis *r);
/* SIGKILL and wait; keeps the port and arguments for t_redis_restart. */
void t_redis_kill(t_redis *r);
/* Starts again on the same port with the same arguments (after
 * t_redis_kill); waits until it answers PING. */
void t_redis_restart(t_redis *r);
/* SIGSTOP / SIGCONT: the server keeps its sockets but stops answering. */
void t_redis_pause(t_redis *r);
void t_redis_resume(t_redis *r);
/* "redis://127.0.0.1:PORT" in a static per-server buffer. */
const char *t_redis_url(const t_redis *r);
/* The redis-server binary's path, or NULL when it is not installed. */
const char *t_redis_binary(void);

#endif
