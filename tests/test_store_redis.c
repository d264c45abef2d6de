/* The "redis" state store against real redis-server processes: the
 * conformance suite (support/store_suite.c), and what only Redis has: the
 * data layout, prefixes, databases, passwords, Redis going away and coming
 * back, timeouts, URLs and options. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support/proc.h"
#include "support/redis.h"
#include "support/store_suite.h"
#include "support/support.h"

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"

/* Timing slack for a loaded 2-vCPU machine under sanitizers. */
#define SLACK_MS 400

/* One server shared by the tests that do not stop it; each test uses its
 * own key prefix. */
static t_redis shared;

/* A store on the shared server with prefix "test:<name>:". */
static loom_store *open_prefixed(const char *name)
{
    char opts[128];
    snprintf(opts, sizeof opts, "{\"prefix\":\"test:%s:\"}", name);
    return t_store_open(t_redis_url(&shared), opts);
}

static loom_err try_open(const char *url, const char *options)
{
    cJSON *opts = options ? t_json(options) : NULL;
    loom_store *s = (loom_store *)1;
    loom_err err = loom__store_open(&s, url, opts);
    cJSON_Delete(opts);
    if (err == LOOM_OK)
        loom__store_close(s);
    else
        assert_null(s);
    return err;
}

/* A plain hiredis client, to look at what the store wrote. */
static redisContext *raw_connect(const t_redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    if (!c || c->err)
        fail_msg("raw connect to %d failed", r->port);
    return c;
}

/* Runs a command (hiredis format) and returns its reply; fails the test on
 * a connection error. */
static redisReply *raw_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("raw command failed: %s", c->errstr);
    return r;
}

/* The raw string stored under a Redis key, or NULL when absent. */
static char *raw_get(const t_redis *srv, int db, const char *key)
{
    redisContext *c = raw_connect(srv);
    freeReplyObject(raw_cmd(c, "SELECT %d", db));
    redisReply *r = raw_cmd(c, "GET %s", key);
    char *out = r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : NULL;
    freeReplyObject(r);
    redisFree(c);
    return out;
}

/* ------------------------------------------------------------------------ */

/* The suite's store: the shared server, a new key prefix for each test. */
typedef struct redis_suite {
    int n;
    char options[64];
} redis_suite;

static int suite_reset(void *ctx)
{
    redis_suite *r = ctx;
    snprintf(r->options, sizeof r->options, "{\"prefix\":\"test:suite%d:\"}", ++r->n);
    return 0;
}

static loom_store *suite_open(void *ctx)
{
    return t_store_open(t_redis_url(&shared), ((redis_suite *)ctx)->options);
}

static redis_suite suite_ctx;
static const t_store_factory redis_factory = {
    .name = "redis",
    .reset = suite_reset,
    .open = suite_open,
    .ctx = &suite_ctx,
    .ttl_ms = 100,
    .threads = 8,
    .ops = 2000,
    .cas_rounds = 150,
};

/* What the store leaves in Redis. */
static void test_layout(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("layout");
    /* The value is stored as compact JSON text under PREFIX+key. */
    t_store_set_text(s, "k0", "{ \"n\" : 1 }", 0);
    char *raw = raw_get(&shared, 0, "test:layout:k0");
    assert_non_null(raw);
    assert_string_equal(raw, "{\"n\":1}");
    free(raw);
    /* incr's fallback writes plain digits, which INCRBY then takes natively. */
    assert_int_equal(s->ops->set(s->self, "y", "2e1", 0, false), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "y", 1, NULL), LOOM_OK);
    raw = raw_get(&shared, 0, "test:layout:y");
    assert_string_equal(raw, "21");
    free(raw);
    /* Redis holds the TTL: PTTL of a key set with 60 s. */
    t_store_set_text(s, "long", "1", 60000);
    redisContext *c = raw_connect(&shared);
    redisReply *r = raw_cmd(c, "PTTL %s", "test:layout:long");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 50000 && r->integer <= 60000);
    freeReplyObject(r);
    redisFree(c);
    loom__store_close(s);
}

/* --- prefixes, databases, passwords --------------------------------------- */

static void test_prefix_isolation(void **state)
{
    (void)state;
    loom_store *a = t_store_open(t_redis_url(&shared), "{\"prefix\":\"app-a/\"}");
    loom_store *b = t_store_open(t_redis_url(&shared), "{\"prefix\":\"app-b/\"}");
    loom_store *none = t_store_open(t_redis_url(&shared), "{\"prefix\":\"\"}");
    loom_store *dflt = t_store_open(t_redis_url(&shared), NULL);
    t_store_set_text(a, "k", "\"a\"", 0);
    t_store_set_text(b, "k", "\"b\"", 0);
    t_store_assert_value(a, "k", "\"a\"");
    t_store_assert_value(b, "k", "\"b\"");
    assert_int_equal(loom_store_incr(a, "n", 1, NULL), LOOM_OK);
    t_store_assert_absent(b, "n");
    assert_int_equal(loom_store_delete(b, "k"), LOOM_OK);
    t_store_assert_value(a, "k", "\"a\"");
    /* The prefix is a plain string prepended to the key. */
    t_store_assert_value(none, "app-a/k", "\"a\"");
    t_store_assert_absent(none, "app-b/k");
    t_store_set_text(dflt, "d", "1", 0);
    t_store_assert_value(none, "loom:d", "1");
    assert_int_equal(loom_store_delete(dflt, "d"), LOOM_OK);
    loom__store_close(a);
    loom__store_close(b);
    loom__store_close(none);
    loom__store_close(dflt);
}

static void test_db_selection(void **state)
{
    (void)state;
    char url[96];
    snprintf(url, sizeof url, "%s/3", t_redis_url(&shared));
    loom_store *d3 = t_store_open(url, "{\"prefix\":\"dbsel:\"}");
    snprintf(url, sizeof url, "%s/", t_redis_url(&shared)); /* "/" alone: 0 */
    loom_store *d0 = t_store_open(url, "{\"prefix\":\"dbsel:\"}");
    t_store_set_text(d3, "k", "3", 0);
    t_store_assert_absent(d0, "k");
    t_store_set_text(d0, "k", "0", 0);
    t_store_assert_value(d3, "k", "3");
    char *raw = raw_get(&shared, 3, "dbsel:k");
    assert_string_equal(raw, "3");
    free(raw);
    raw = raw_get(&shared, 0, "dbsel:k");
    assert_string_equal(raw, "0");
    free(raw);
    loom__store_close(d3);
    loom__store_close(d0);
    /* A database the server does not have is refused at open. */
    snprintf(url, sizeof url, "%s/99", t_redis_url(&shared));
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
}

static void test_password(void **state)
{
    (void)state;
    t_redis srv;
    const char *args[] = {"--requirepass", "p@ss:w/rd%", NULL};
    t_redis_start_with(&srv, args);
    char url[160];

    /* Percent-encoded in the URL. */
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d/2", srv.port);
    loom_store *s = t_store_open(url, NULL);
    t_store_set_text(s, "k", "1", 0);
    t_store_assert_value(s, "k", "1");
    loom__store_close(s);
    /* With the default ACL user's name. */
    snprintf(url, sizeof url, "redis://default:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d/2", srv.port);
    s = t_store_open(url, NULL);
    t_store_assert_value(s, "k", "1");
    loom__store_close(s);
    /* From the options; the URL's password wins over the option. */
    s = t_store_open(t_redis_url(&srv), "{\"password\":\"p@ss:w/rd%\"}");
    t_store_assert_absent(s, "k"); /* database 0 */
    loom__store_close(s);
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d", srv.port);
    s = t_store_open(url, "{\"password\":\"wrong\"}");
    loom__store_close(s);

    /* Missing or wrong: refused at open. */
    assert_int_equal(try_open(t_redis_url(&srv), NULL), LOOM_ECONFIG);
    assert_int_equal(try_open(t_redis_url(&srv), "{\"password\":\"nope\"}"), LOOM_ECONFIG);
    snprintf(url, sizeof url, "redis://:nope@127.0.0.1:%d", srv.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
    snprintf(url, sizeof url, "redis://someone:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d", srv.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
    t_redis_stop(&srv);

    /* A password for a server without one is refused too. */
    snprintf(url, sizeof url, "redis://:secret@127.0.0.1:%d", shared.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
}

/* --- concurrency ------------------------------------------------------------ */
/* --- Redis away --------------------------------------------------------------- */

/* Runs op kinds against s and checks each fails with LOOM_EUNAVAILABLE in
 * less than max_ms. */
static void assert_all_unavailable(loom_store *s, int64_t max_ms)
{
    cJSON *v = t_json("{\"x\":1}");
    for (int kind = 0; kind < 6; kind++) {
        int64_t t0 = loom__mono_ms();
        cJSON *out = NULL;
        loom_err err = LOOM_OK;
        switch (kind) {
        case 0:
            err = loom_store_get(s, "k", &out);
            break;
        case 1:
            err = loom_store_set(s, "k", v, 0);
            break;
        case 2:
            err = loom_store_add(s, "k2", v, 0);
            break;
        case 3:
            err = loom_store_delete(s, "k");
            break;
        case 4:
            err = loom_store_incr(s, "n", 1, NULL);
            break;
        case 5:
            err = loom_store_cas(s, "k", NULL, v, 0);
            break;
        }
        int64_t took = loom__mono_ms() - t0;
        assert_null(out);
        if (err != LOOM_EUNAVAILABLE || took > max_ms)
            fail_msg("operation %d: %s after %" PRId64 " ms (limit %" PRId64 ")", kind,
                     loom_strerror(err), took, max_ms);
    }
    cJSON_Delete(v);
}

/* Retries a set until it works; returns how long that took. */
static int64_t wait_back(loom_store *s, int64_t limit_ms)
{
    cJSON *v = t_json("\"back\"");
    int64_t t0 = loom__mono_ms();
    loom_err err;
    while ((err = loom_store_set(s, "k", v, 0)) != LOOM_OK) {
        if (err != LOOM_EUNAVAILABLE)
            fail_msg("while waiting for redis: %s", loom_strerror(err));
        if (loom__mono_ms() - t0 > limit_ms)
            fail_msg("redis store did not recover within %" PRId64 " ms", limit_ms);
        t_sleep_ms(10);
    }
    cJSON_Delete(v);
    t_store_assert_value(s, "k", "\"back\"");
    return loom__mono_ms() - t0;
}

static void test_killed_and_restarted(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    const int timeout = 500;
    loom_store *s = t_store_open(t_redis_url(&srv), "{\"timeout_ms\":500}");
    /* Several pooled connections, all of which die with the server. */
    loom_store *s2 = t_store_open(t_redis_url(&srv), "{\"timeout_ms\":\"500\"}");
    t_store_set_text(s, "k", "1", 0);
    t_store_assert_value(s2, "k", "1");

    t_redis_kill(&srv);
    assert_all_unavailable(s, timeout + SLACK_MS);
    assert_all_unavailable(s2, timeout + SLACK_MS);
    /* Still down a while later (the backoff has grown), still prompt. */
    t_sleep_ms(300);
    assert_all_unavailable(s, timeout + SLACK_MS);

    t_redis_restart(&srv);
    /* The backoff is at most 1 s: back well within 2 s. */
    assert_true(wait_back(s, 2000) < 2000);
    wait_back(s2, 2000);
    /* Without persistence the restarted server is empty; the store works. */
    assert_int_equal(loom_store_incr(s, "n", 2, NULL), LOOM_OK);
    t_store_assert_value(s2, "n", "2");

    /* Killed again while idle: the stale connections are found out. */
    t_redis_kill(&srv);
    t_redis_restart(&srv);
    wait_back(s, 2000);
    wait_back(s2, 2000);
    loom__store_close(s);
    loom__store_close(s2);
    t_redis_stop(&srv);
}

/* The server takes connections but never answers: every operation gives up
 * after timeout_ms, including those waiting for a pooled connection. */
#define STUCK_THREADS 12

typedef struct stuck {
    loom_store *s;
    loom_err err;
    int64_t took;
} stuck;

static void *stuck_worker(void *arg)
{
    stuck *st = arg;
    cJSON *out = NULL;
    int64_t t0 = loom__mono_ms();
    st->err = loom_store_get(st->s, "k", &out);
    st->took = loom__mono_ms() - t0;
    cJSON_Delete(out);
    return NULL;
}

static void test_timeout(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    const int timeout = 300;
    loom_store *s = t_store_open(t_redis_url(&srv), "{\"timeout_ms\":300}");
    t_store_set_text(s, "k", "1", 0);

    t_redis_pause(&srv);
    int64_t t0 = loom__mono_ms();
    cJSON *out = NULL;
    assert_int_equal(loom_store_get(s, "k", &out), LOOM_EUNAVAILABLE);
    int64_t took = loom__mono_ms() - t0;
    assert_true(took >= timeout - 20 && took <= timeout + SLACK_MS);

    /* More callers than connections: all bounded. */
    pthread_t th[STUCK_THREADS];
    stuck st[STUCK_THREADS];
    for (int i = 0; i < STUCK_THREADS; i++) {
        st[i] = (stuck){.s = s};
        assert_int_equal(pthread_create(&th[i], NULL, stuck_worker, &st[i]), 0);
    }
    for (int i = 0; i < STUCK_THREADS; i++) {
        pthread_join(th[i], NULL);
        if (st[i].err != LOOM_EUNAVAILABLE || st[i].took > timeout + SLACK_MS)
            fail_msg("caller %d: %s after %" PRId64 " ms", i, loom_strerror(st[i].err), st[i].took);
    }

    t_redis_resume(&srv);
    wait_back(s, 3000);
    loom__store_close(s);
    t_redis_stop(&srv);
}

/* A fake server that accepts connections and closes them at once: each
 * accepted connection is counted. */
typedef struct closer {
    int fd;
    int port;
    int accepted;
    int stop;
    pthread_t thread;
} closer;

static void *closer_main(void *arg)
{
    closer *c = arg;
    while (!__atomic_load_n(&c->stop, __ATOMIC_SEQ_CST)) {
        int fd = accept(c->fd, NULL, NULL);
        if (fd < 0)
            continue;
        __atomic_add_fetch(&c->accepted, 1, __ATOMIC_SEQ_CST);
        close(fd);
    }
    return NULL;
}

static void closer_start(closer *c)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(c->fd, 64), 0);
    assert_int_equal(getsockname(c->fd, (struct sockaddr *)&sa, &len), 0);
    c->port = ntohs(sa.sin_port);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); /* accept wakes up */
    assert_int_equal(pthread_create(&c->thread, NULL, closer_main, c), 0);
}

/* Stops the fake server; returns how many connections it accepted. */
static int closer_stop(closer *c)
{
    __atomic_store_n(&c->stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(c->thread, NULL);
    close(c->fd);
    return __atomic_load_n(&c->accepted, __ATOMIC_SEQ_CST);
}

/* A down server is not hammered: after a failure, new connections are
 * tried at a growing interval while operations fail at once. */
static void test_backoff(void **state)
{
    (void)state;
    closer c;
    closer_start(&c);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", c.port);
    loom_store *s = t_store_open(url, NULL); /* the PING fails: lazily */
    int ops = 0, unavailable = 0;
    int64_t t0 = loom__mono_ms();
    while (loom__mono_ms() - t0 < 700) {
        cJSON *out = NULL;
        if (loom_store_get(s, "k", &out) == LOOM_EUNAVAILABLE)
            unavailable++;
        cJSON_Delete(out);
        ops++;
        t_sleep_ms(1);
    }
    int accepted = closer_stop(&c);
    loom__store_close(s);
    assert_int_equal(unavailable, ops);
    /* 50, 100, 200, 400 ms apart (plus the one at open): a handful, while
     * the loop ran hundreds of operations. */
    if (accepted > 8 || ops < 100)
        fail_msg("%d connections for %d operations", accepted, ops);
}

/* Writing a large value to a server that hung up raises SIGPIPE, which
 * this process does not ignore: the store absorbs it and leaves the
 * thread's signal mask as it was. */
static void test_sigpipe(void **state)
{
    (void)state;
    closer c;
    closer_start(&c);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", c.port);
    loom_store *s = t_store_open(url, NULL);
    size_t n = 16u << 20;
    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, '7', n);
    text[n] = '\0';
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s->ops->set(s->self, "k", text, 0, false), LOOM_EUNAVAILABLE);
        t_sleep_ms(60); /* past the backoff: the next one connects again */
    }
    free(text);
    sigset_t mask, pending;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    assert_false(sigismember(&mask, SIGPIPE));
    sigpending(&pending);
    assert_false(sigismember(&pending, SIGPIPE));
    closer_stop(&c);
    loom__store_close(s);
}

/* Opening while Redis is down works; operations fail until it is up. */
static void test_open_while_down(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    t_redis_kill(&srv);
    int64_t t0 = loom__mono_ms();
    loom_store *s = t_store_open(t_redis_url(&srv), "{\"timeout_ms\":400}");
    assert_true(loom__mono_ms() - t0 < 400 + SLACK_MS);
    assert_all_unavailable(s, 400 + SLACK_MS);
    t_redis_restart(&srv);
    wait_back(s, 2000);
    loom__store_close(s);
    t_redis_stop(&srv);
}

/* --- sockets, sizes, foreign data ------------------------------------------------ */

/* Every socket of this process connected to port has TCP_NODELAY; returns
 * how many there are. */
static int nodelay_sockets(int port)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] == '.' || fd == dirfd(d))
            continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
            continue;
        int p = ss.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : -1;
        if (p != port)
            continue;
        int on = 0;
        socklen_t olen = sizeof on;
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen), 0);
        if (!on)
            fail_msg("fd %d to port %d without TCP_NODELAY", fd, port);
        n++;
    }
    closedir(d);
    return n;
}

static void test_nodelay_and_ipv6(void **state)
{
    (void)state;
    t_redis srv;
    const char *args[] = {"--bind", "127.0.0.1 ::1", NULL};
    t_redis_start_with(&srv, args);
    char url[64];
    snprintf(url, sizeof url, "redis://[::1]:%d", srv.port);
    loom_store *v6 = t_store_open(url, NULL);
    loom_store *v4 = t_store_open(t_redis_url(&srv), NULL);
    snprintf(url, sizeof url, "redis://localhost:%d/1", srv.port);
    loom_store *named = t_store_open(url, NULL);
    t_store_set_text(v6, "k", "6", 0);
    t_store_assert_value(v4, "k", "6");
    t_store_assert_absent(named, "k");
    assert_int_equal(nodelay_sockets(srv.port), 3);
    loom__store_close(v6);
    loom__store_close(v4);
    loom__store_close(named);
    assert_int_equal(nodelay_sockets(srv.port), 0); /* closed with the stores */
    t_redis_stop(&srv);
}

/* Text of 514 MiB without 514 MiB of memory: one 2 MiB chunk of 'a'
 * mapped again and again, then a page with the NUL. */
#define CHUNK ((size_t)2 << 20)
#define CHUNKS 257

static char *huge_text(size_t *map_len)
{
    int fd = memfd_create("loom-huge", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)CHUNK), 0);
    char *w = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(w != MAP_FAILED);
    memset(w, 'a', CHUNK);
    munmap(w, CHUNK);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    *map_len = CHUNK * CHUNKS + page;
    char *base =
        mmap(NULL, *map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(base != MAP_FAILED);
    for (size_t i = 0; i < CHUNKS; i++)
        assert_true(mmap(base + i * CHUNK, CHUNK, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) !=
                    MAP_FAILED);
    char *tail = mmap(base + CHUNKS * CHUNK, page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    assert_true(tail != MAP_FAILED);
    tail[0] = '\0';
    close(fd);
    return base;
}

static void test_too_big(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("big");
    /* Over Redis's 512 MiB: refused before anything is sent. */
    size_t map_len = 0;
    char *huge = huge_text(&map_len);
    assert_int_equal(s->ops->set(s->self, "huge", huge, 0, false), LOOM_ETOOBIG);
    assert_int_equal(s->ops->set(s->self, "huge", huge, 0, true), LOOM_ETOOBIG);
    assert_int_equal(s->ops->cas(s->self, "huge", NULL, huge, 0), LOOM_ETOOBIG);
    munmap(huge, map_len);
    t_store_assert_absent(s, "huge");
    /* The store still works. */
    t_store_set_text(s, "after", "1", 0);
    t_store_assert_value(s, "after", "1");
    loom__store_close(s);
}

/* Values that other clients put under the prefix. */
static void test_foreign_values(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("foreign");
    redisContext *c = raw_connect(&shared);
    freeReplyObject(raw_cmd(c, "RPUSH %s a b", "test:foreign:list"));
    freeReplyObject(raw_cmd(c, "SET %s %b", "test:foreign:nul", "1\0junk", (size_t)6));
    freeReplyObject(raw_cmd(c, "SET %s %s", "test:foreign:text", "not json"));
    redisFree(c);

    cJSON *out = NULL;
    assert_int_equal(loom_store_get(s, "list", &out), LOOM_EPARSE);
    assert_int_equal(loom_store_get(s, "nul", &out), LOOM_EPARSE);
    assert_int_equal(loom_store_get(s, "text", &out), LOOM_EPARSE);
    assert_null(out);
    assert_int_equal(loom_store_incr(s, "list", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "nul", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "text", 1, NULL), LOOM_EINVAL);
    cJSON *v = t_json("1");
    assert_int_equal(loom_store_add(s, "list", v, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_cas(s, "list", NULL, v, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_cas(s, "list", v, v, 0), LOOM_EEXIST);
    /* set replaces anything; delete removes anything. */
    assert_int_equal(loom_store_set(s, "list", v, 0), LOOM_OK);
    t_store_assert_value(s, "list", "1");
    assert_int_equal(loom_store_delete(s, "nul"), LOOM_OK);
    t_store_assert_absent(s, "nul");
    cJSON_Delete(v);
    loom__store_close(s);
}

/* --- configuration ------------------------------------------------------------------ */

static void test_bad_urls_and_options(void **state)
{
    (void)state;
    char url[128];
    const char *bad_urls[] = {
        "redis:",
        "redis:/",
        "redis:127.0.0.1:6379",
        "redis://",
        "redis://:6379",
        "redis:///0",
        "redis://host:",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:12x",
        "redis://host:-1",
        "redis://host/x",
        "redis://host/-1",
        "redis://host/1/2",
        "redis://host/99999999999",
        "redis://host?db=1",
        "redis://host#frag",
        "redis://ho st",
        "redis://host\n",
        "redis://::1:6379",
        "redis://[::1",
        "redis://[]:6379",
        "redis://[::1]x",
        "redis://user@host",
        "redis://:pa%zzss@host",
        "redis://:pa%0@host",
        "redis://:pa%00ss@host",
        "redis://h\xc3\xa9st",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad_urls); i++) {
        loom_err err = try_open(bad_urls[i], NULL);
        if (err != LOOM_ECONFIG)
            fail_msg("%s: %s, want ECONFIG", bad_urls[i], loom_strerror(err));
    }
    char long_host[300] = "redis://";
    memset(long_host + 8, 'h', 260);
    long_host[268] = '\0';
    assert_int_equal(try_open(long_host, NULL), LOOM_ECONFIG);

    const char *bad_options[] = {
        "[]",
        "\"x\"",
        "{\"prefix\":1}",
        "{\"prefix\":[]}",
        "{\"password\":5}",
        "{\"timeout_ms\":0}",
        "{\"timeout_ms\":-5}",
        "{\"timeout_ms\":1.5}",
        "{\"timeout_ms\":600001}",
        "{\"timeout_ms\":\"12ms\"}",
        "{\"timeout_ms\":\"\"}",
        "{\"timeout_ms\":true}",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad_options); i++) {
        loom_err err = try_open(t_redis_url(&shared), bad_options[i]);
        if (err != LOOM_ECONFIG)
            fail_msg("%s: %s, want ECONFIG", bad_options[i], loom_strerror(err));
    }
    char opts[400] = "{\"prefix\":\"";
    memset(opts + 11, 'p', 257);
    strcpy(opts + 11 + 257, "\"}");
    assert_int_equal(try_open(t_redis_url(&shared), opts), LOOM_ECONFIG);

    /* Good ones: scheme case, nulls, other keys, the longest prefix. */
    snprintf(url, sizeof url, "REDIS://127.0.0.1:%d/0", shared.port);
    assert_int_equal(try_open(url, "{\"url\":\"x\",\"prefix\":null,\"password\":null}"), LOOM_OK);
    opts[11 + 256] = '\0';
    strcat(opts, "\"}");
    assert_int_equal(try_open(t_redis_url(&shared), opts), LOOM_OK);
    /* TLS is not built in. */
    assert_int_equal(try_open("rediss://127.0.0.1:6380", NULL), LOOM_EUNSUPPORTED);
}

static int group_setup(void **state)
{
    (void)state;
    t_redis_start(&shared);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    t_redis_stop(&shared);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T_STORE_SUITE(&redis_factory),           cmocka_unit_test(test_layout),
        cmocka_unit_test(test_prefix_isolation), cmocka_unit_test(test_db_selection),
        cmocka_unit_test(test_password),         cmocka_unit_test(test_killed_and_restarted),
        cmocka_unit_test(test_timeout),          cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_sigpipe),          cmocka_unit_test(test_open_while_down),
        cmocka_unit_test(test_nodelay_and_ipv6), cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_foreign_values),   cmocka_unit_test(test_bad_urls_and_options),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
