#define _GNU_SOURCE
#include "support/redis.h"
#include "support/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define START_TIMEOUT_MS 5000
#define STOP_TIMEOUT_MS 5000

const char *t_redis_binary(void)
{
    static const char *const known[] = {"/usr/bin/redis-server", "/usr/local/bin/redis-server",
                                        "/usr/sbin/redis-server", NULL};
    static char found[512];
    return t_find_program("redis-server", known, found, sizeof found) ? found : NULL;
}

/* True when something on port answers an inline PING with a RESP reply
 * ("+PONG", or "-NOAUTH ..." from a server with a password). */
static bool answers(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6) {
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        ok = n > 0 && (buf[0] == '+' || buf[0] == '-');
    }
    close(fd);
    return ok;
}

/* Spawns redis-server and waits until it answers; false when it exited
 * (e.g. the port was taken meanwhile) — the caller may retry. Fails the
 * test on a timeout. */
static bool spawn(t_redis *r)
{
    const char *bin = t_redis_binary();
    if (!bin)
        fail_msg("redis-server is not installed (apt-get install redis-server)");
    char port[16], out[128];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(out, sizeof out, "%s/redis.out", r->dir);
    const char *argv[16 + T_REDIS_MAX_ARGS] = {
        bin,     "--port", port,           "--bind", "127.0.0.1",   "--save", "",
        "--dir", r->dir,   "--appendonly", "no",     "--daemonize", "no"};
    size_t argc = 13;
    for (size_t i = 0; r->args[i]; i++)
        argv[argc++] = r->args[i];
    argv[argc] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Do not outlive a test binary that crashes or is killed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
    int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
    for (;;) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            r->pid = 0;
            return false;
        }
        if (answers(r->port))
            return true;
        if (t_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            r->pid = 0;
            fail_msg("redis-server did not come up on port %d within %d ms (see %s)", r->port,
                     START_TIMEOUT_MS, out);
        }
        t_sleep_ms(10);
    }
}

static void dump_output(const t_redis *r)
{
    char path[128], line[256];
    snprintf(path, sizeof path, "%s/redis.out", r->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "redis-server: %s", line);
    fclose(f);
}

static void free_args(t_redis *r)
{
    for (size_t i = 0; i <= T_REDIS_MAX_ARGS; i++) {
        free(r->args[i]);
        r->args[i] = NULL;
    }
}

void t_redis_start_with(t_redis *r, const char *const *extra_args)
{
    memset(r, 0, sizeof *r);
    for (size_t i = 0; extra_args && extra_args[i]; i++) {
        if (i == T_REDIS_MAX_ARGS)
            fail_msg("t_redis_start_with: more than %d arguments", T_REDIS_MAX_ARGS);
        r->args[i] = strdup(extra_args[i]);
        if (!r->args[i])
            fail_msg("out of memory");
    }
    snprintf(r->dir, sizeof r->dir, "/tmp/loom-redis-XXXXXX");
    if (!mkdtemp(r->dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = t_free_port();
        if (r->port <= 0)
            fail_msg("no free loopback port");
        if (spawn(r))
            return;
    }
    dump_output(r);
    fail_msg("redis-server exits at start (output in %s)", r->dir);
}

void t_redis_start(t_redis *r)
{
    t_redis_start_with(r, NULL);
}

static void reap(t_redis *r, int sig, int timeout_ms)
{
    if (r->paused && r->pid > 0)
        kill(r->pid, SIGCONT); /* a stopped process would not act on SIGTERM */
    r->paused = false;
    t_reap_pid(r->pid, sig, timeout_ms);
    r->pid = 0;
}

void t_redis_stop(t_redis *r)
{
    reap(r, SIGTERM, STOP_TIMEOUT_MS);
    if (r->dir[0] && strncmp(r->dir, "/tmp/loom-redis-", 16) == 0)
        t_remove_tree(r->dir);
    r->dir[0] = '\0';
    free_args(r);
}

void t_redis_kill(t_redis *r)
{
    reap(r, SIGKILL, STOP_TIMEOUT_MS);
}

void t_redis_restart(t_redis *r)
{
    if (r->pid > 0)
        fail_msg("t_redis_restart: redis-server is still running");
    /* redis-server binds with SO_REUSEADDR; a few tries cover a port that
     * is briefly busy. */
    for (int attempt = 0; attempt < 20; attempt++) {
        if (spawn(r))
            return;
        t_sleep_ms(50);
    }
    dump_output(r);
    fail_msg("redis-server does not restart on port %d", r->port);
}

void t_redis_pause(t_redis *r)
{
    if (r->pid > 0 && !r->paused && kill(r->pid, SIGSTOP) == 0)
        r->paused = true;
}

void t_redis_resume(t_redis *r)
{
    if (r->pid > 0 && r->paused && kill(r->pid, SIGCONT) == 0)
        r->paused = false;
}

const char *t_redis_url(const t_redis *r)
{
    static struct {
        const t_redis *r;
        char url[48];
    } slots[16];
    static unsigned next;
    size_t i;
    for (i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slots[i].r == r)
            break;
    if (i == sizeof slots / sizeof slots[0]) {
        i = next++ % (sizeof slots / sizeof slots[0]);
        slots[i].r = r;
    }
    snprintf(slots[i].url, sizeof slots[i].url, "redis://127.0.0.1:%d", r->port);
    return slots[i].url;
}
