/* The built-in "redis" state store, on hiredis's blocking API.
 *
 *   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]   (HOST may be [IPv6])
 *
 * A loom key K is the Redis key PREFIX+K (option `prefix`, default "loom:");
 * values are the JSON text as a Redis string. get/set/add/del map to GET,
 * SET [PX] [NX] and DEL; incr is INCRBY, with a compare-and-set fallback for
 * integral values Redis does not read as integers ("1e+15", "2.0e1"); cas is
 * one Lua script, so it is atomic on the server.
 *
 * Connections: a pool of at most POOL_MAX blocking connections per store,
 * made on demand. An operation takes one connection, runs its commands and
 * gives it back, so a connection is used by one thread at a time and no
 * lock is held during network I/O. A pool rather than one connection per
 * thread: the threads that call a store (the core's workers, HTTP threads,
 * the application's own) come and go and are not known to the store;
 * per-thread connections would need a thread-specific key per store and
 * grow with the thread count, while a pool bounds the connections a process
 * opens and an operation holds one only for its round trips.
 *
 * Time: every operation has a deadline, timeout_ms after it starts, that
 * bounds waiting for a free connection, connecting (redisConnectWithTimeout)
 * and each command (redisSetTimeout, shortened when the operation already
 * waited). Name resolution (getaddrinfo) is not bounded by it.
 *
 * Failures: a connection with an I/O error, EOF or timeout is closed and so
 * is every idle connection made before the failure (db->epoch), since they
 * most likely lead to the same dead server. A failed connect, or a new
 * connection that breaks before its first reply, puts the store in the
 * "down" state: for a backoff (BACKOFF_MIN_MS doubling up to BACKOFF_MAX_MS)
 * operations that need a new connection fail at once with
 * LOOM_EUNAVAILABLE, then exactly one of them (the probe) tries while the
 * others keep failing at once; the first reply ends the state. A command is
 * never resent: after a broken connection nobody knows whether it ran, and
 * a repeated incr would count twice.
 *
 * Locking: db->lock guards the pool fields (idle, open, epoch, down,
 * probing, retry_at, backoff_ms); db->freed is signalled when a connection
 * returns to the pool or a slot frees. Nothing else is taken while holding
 * db->lock, and it is never held during I/O. Everything else in redis_db is
 * immutable after open.
 *
 * SIGPIPE: writing to a socket the server closed raises SIGPIPE. When the
 * process does not ignore it (checked at open; loom_main ignores it), each
 * operation blocks it in the calling thread and consumes one it caused.
 */
#define _GNU_SOURCE
#include "store.h"

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
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "core/util.h"

#define POOL_MAX 8
#define DEFAULT_PORT 6379
#define DEFAULT_PREFIX "loom:"
#define DEFAULT_TIMEOUT_MS 2000
#define MAX_TIMEOUT_MS 600000
#define MAX_PREFIX 256
#define MAX_HOST 255
#define MAX_SECRET 512
#define MAX_VALUE ((size_t)512 << 20) /* Redis's limit for one string */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define SLACK_MS 10      /* a command timeout this close to the full one keeps it */
#define INCR_ATTEMPTS 16 /* incr's compare-and-set rounds before LOOM_EOVERLOAD */
#define KEY_BUF (MAX_PREFIX + LOOM__STORE_MAX_KEY + 1)

/* KEYS[1] = key. ARGV: [1] "1" compare with [2], "0" the key must be
 * absent; [3] "1" store [4], "0" delete; [5] TTL in ms: "0" none, "-1" keep
 * the current one. Returns 1 when swapped, 0 when the value differed. A key
 * of another type makes GET fail: the caller reads that as "differs". */
static const char cas_script[] = "local cur = redis.call('GET', KEYS[1])\n"
                                 "if ARGV[1] == '1' then\n"
                                 "  if cur ~= ARGV[2] then return 0 end\n"
                                 "elseif cur then\n"
                                 "  return 0\n"
                                 "end\n"
                                 "if ARGV[3] == '0' then\n"
                                 "  redis.call('DEL', KEYS[1])\n"
                                 "elseif ARGV[5] == '-1' then\n"
                                 "  local ttl = redis.call('PTTL', KEYS[1])\n"
                                 "  redis.call('SET', KEYS[1], ARGV[4])\n"
                                 "  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
                                 "elseif ARGV[5] == '0' then\n"
                                 "  redis.call('SET', KEYS[1], ARGV[4])\n"
                                 "else\n"
                                 "  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])\n"
                                 "end\n"
                                 "return 1\n";

typedef struct conn {
    redisContext *ctx;
    struct conn *next;   /* in db->idle */
    uint64_t epoch;      /* db->epoch when it was made */
    uint32_t timeout_ms; /* the socket timeout currently set on it */
    bool proven;         /* has answered a command of an operation */
} conn;

typedef struct redis_db {
    /* Immutable after open. */
    char *host; /* without brackets */
    int port;
    long long dbnum;
    char *user;     /* NULL = AUTH with the password only */
    char *password; /* NULL = no AUTH */
    char *prefix;
    size_t prefix_len;
    uint32_t timeout_ms;
    bool guard_sigpipe;

    pthread_mutex_t lock;
    pthread_cond_t freed; /* on CLOCK_MONOTONIC */
    conn *idle;           /* LIFO: the most recently used first */
    unsigned open;        /* idle + in use + being connected; <= POOL_MAX */
    uint64_t epoch;       /* bumped by every broken connection */
    bool down;            /* the server looked unreachable (see above) */
    bool probing;         /* an operation is trying it while down */
    int64_t retry_at;     /* mono ms; while down, no connect before it */
    uint32_t backoff_ms;
} redis_db;

/* One operation: its deadline, connection and signal mask. */
typedef struct op {
    redis_db *db;
    conn *c;
    bool broken;   /* c failed: close it */
    bool probe;    /* this operation tries a server that was down */
    bool answered; /* a command got a reply */
    int64_t deadline;
    bool masked;
    sigset_t old_mask;
    char key[KEY_BUF];
    size_t key_len;
} op;

/* --- small helpers --------------------------------------------------------- */

static struct timeval ms_tv(int64_t ms)
{
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static bool starts_with(const char *s, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(s, word, n) == 0;
}

/* The error for an error reply that has no meaning specific to a command. */
static loom_err reply_error(const redisReply *r)
{
    const char *s = r->str ? r->str : "";
    size_t n = r->str ? r->len : 0;
    /* The server cannot serve now, or not to us: retry later. */
    static const char *const unavailable[] = {"LOADING",  "BUSY",   "MASTERDOWN", "READONLY",
                                              "TRYAGAIN", "NOAUTH", "WRONGPASS",  "CLUSTERDOWN",
                                              "MOVED",    "ASK",    "NOPERM"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(unavailable); i++)
        if (starts_with(s, n, unavailable[i]))
            return LOOM_EUNAVAILABLE;
    if (starts_with(s, n, "ERR max number of clients"))
        return LOOM_EUNAVAILABLE;
    if (starts_with(s, n, "OOM"))
        return LOOM_EOVERLOAD;
    if (starts_with(s, n, "ERR unknown command") || starts_with(s, n, "NOSCRIPT"))
        return LOOM_EUNSUPPORTED;
    if (memmem(s, n, "maximum allowed size", 20) || memmem(s, n, "bulk length", 11))
        return LOOM_ETOOBIG;
    return LOOM_EIO;
}

static bool is_wrongtype(const redisReply *r)
{
    return r->str && memmem(r->str, r->len, "WRONGTYPE", 9) != NULL;
}

/* --- SIGPIPE ----------------------------------------------------------------- */

static void pipe_block(op *o)
{
    o->masked = false;
    if (!o->db->guard_sigpipe)
        return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &set, &o->old_mask) == 0)
        o->masked = true;
}

/* Consumes a SIGPIPE raised by this operation, then restores the mask. One
 * pending before (blocked by the caller) is left alone. */
static void pipe_restore(op *o)
{
    if (!o->masked)
        return;
    if (o->broken && !sigismember(&o->old_mask, SIGPIPE)) {
        sigset_t pending, set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
                ;
        }
    }
    pthread_sigmask(SIG_SETMASK, &o->old_mask, NULL);
    o->masked = false;
}

/* --- connections ----------------------------------------------------------- */

static void conn_free(conn *c)
{
    if (!c)
        return;
    redisFree(c->ctx);
    free(c);
}

/* Whether an error reply to AUTH, SELECT or PING at connect means "wrong
 * settings" (LOOM_ECONFIG) rather than "not now". */
static loom_err setup_error(const redisReply *r)
{
    loom_err err = reply_error(r);
    if (err == LOOM_EUNAVAILABLE && !starts_with(r->str, r->len, "NOAUTH") &&
        !starts_with(r->str, r->len, "WRONGPASS") && !starts_with(r->str, r->len, "NOPERM"))
        return LOOM_EUNAVAILABLE;
    return LOOM_ECONFIG;
}

/* Connects, sets TCP_NODELAY and the timeout, authenticates and selects the
 * database in one round trip (plus a PING when probe, which tells whether
 * the server wants a password we do not have). Errors: LOOM_EUNAVAILABLE
 * (unreachable, timed out, busy), LOOM_ECONFIG (the server refused our
 * password or database), LOOM_ENOMEM. No lock held. */
static loom_err conn_new(redis_db *db, int64_t deadline, bool probe, conn **out)
{
    *out = NULL;
    int64_t rem = deadline - loom__mono_ms();
    if (rem <= 0)
        return LOOM_EUNAVAILABLE;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return LOOM_ENOMEM;
    c->ctx = redisConnectWithTimeout(db->host, db->port, ms_tv(rem));
    if (!c->ctx || c->ctx->err) {
        loom_err err = !c->ctx || c->ctx->err == REDIS_ERR_OOM ? LOOM_ENOMEM : LOOM_EUNAVAILABLE;
        conn_free(c);
        return err;
    }
    /* hiredis 0.14 sets it too, but not every hiredis on every path (not
     * when connect() completes at once): cheap to be sure. */
    int one = 1;
    setsockopt(c->ctx->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    rem = deadline - loom__mono_ms();
    if (rem <= 0 || redisSetTimeout(c->ctx, ms_tv(rem)) != REDIS_OK) {
        conn_free(c);
        return LOOM_EUNAVAILABLE;
    }
    c->timeout_ms = (uint32_t)rem;

    const char *argv[3];
    size_t lens[3];
    int sent = 0;
    if (db->password) {
        int argc = 0;
        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (db->user) {
            argv[argc] = db->user;
            lens[argc++] = strlen(db->user);
        }
        argv[argc] = db->password;
        lens[argc++] = strlen(db->password);
        if (redisAppendCommandArgv(c->ctx, argc, argv, lens) != REDIS_OK)
            goto broken;
        sent++;
    }
    char num[24];
    if (db->dbnum != 0) {
        snprintf(num, sizeof num, "%lld", db->dbnum);
        argv[0] = "SELECT";
        lens[0] = 6;
        argv[1] = num;
        lens[1] = strlen(num);
        if (redisAppendCommandArgv(c->ctx, 2, argv, lens) != REDIS_OK)
            goto broken;
        sent++;
    }
    if (probe) {
        argv[0] = "PING";
        lens[0] = 4;
        if (redisAppendCommandArgv(c->ctx, 1, argv, lens) != REDIS_OK)
            goto broken;
        sent++;
    }
    /* Every reply is read, so that the connection stays in step. */
    loom_err err = LOOM_OK;
    for (int i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK || !r)
            goto broken;
        if (r->type == REDIS_REPLY_ERROR && err == LOOM_OK)
            err = setup_error(r);
        freeReplyObject(r);
    }
    if (err != LOOM_OK) {
        conn_free(c);
        return err;
    }
    *out = c;
    return LOOM_OK;
broken : {
    loom_err e = c->ctx->err == REDIS_ERR_OOM ? LOOM_ENOMEM : LOOM_EUNAVAILABLE;
    conn_free(c);
    return e;
}
}

/* Caller holds db->lock. A connect failed, or a new connection failed
 * before its first reply: back off. */
static void mark_down_locked(redis_db *db)
{
    db->down = true;
    db->retry_at = loom__mono_ms() + db->backoff_ms;
    db->backoff_ms = db->backoff_ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : db->backoff_ms * 2;
}

/* Takes a connection for an operation ending at deadline: an idle one, a
 * new one, or (all POOL_MAX in use) the next one given back. *probe is set
 * when this operation is the one allowed to try a down server. */
static loom_err acquire(redis_db *db, int64_t deadline, conn **out, bool *probe)
{
    *probe = false;
    pthread_mutex_lock(&db->lock);
    for (;;) {
        if (db->idle) {
            conn *c = db->idle;
            db->idle = c->next;
            pthread_mutex_unlock(&db->lock);
            c->next = NULL;
            *out = c;
            return LOOM_OK;
        }
        int64_t now = loom__mono_ms();
        if (db->open < POOL_MAX) {
            if (db->down && (db->probing || now < db->retry_at))
                break; /* fail fast: the server was unreachable a moment ago */
            *probe = db->down;
            db->probing |= *probe;
            db->open++;
            pthread_mutex_unlock(&db->lock);

            conn *c = NULL;
            loom_err err = conn_new(db, deadline, false, &c);

            pthread_mutex_lock(&db->lock);
            if (err == LOOM_OK) {
                c->epoch = db->epoch;
                pthread_mutex_unlock(&db->lock);
                *out = c;
                return LOOM_OK; /* probing ends with the operation */
            }
            if (*probe)
                db->probing = false;
            *probe = false;
            db->open--;
            if (err != LOOM_ENOMEM)
                mark_down_locked(db);
            pthread_cond_broadcast(&db->freed);
            pthread_mutex_unlock(&db->lock);
            return err == LOOM_ENOMEM ? LOOM_ENOMEM : LOOM_EUNAVAILABLE;
        }
        if (now >= deadline)
            break;
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000),
                              .tv_nsec = (long)(deadline % 1000) * 1000000L};
        pthread_cond_timedwait(&db->freed, &db->lock, &ts);
    }
    pthread_mutex_unlock(&db->lock);
    return LOOM_EUNAVAILABLE;
}

/* Gives c back after an operation, or closes it when broken or older than
 * the last failure; a broken one also closes every idle connection. A
 * reply (answered) proves the server up; a new connection that breaks
 * before any reply counts as a failed connect. */
static void release(redis_db *db, conn *c, bool broken, bool probe, bool answered)
{
    conn *drop = NULL;
    pthread_mutex_lock(&db->lock);
    if (probe)
        db->probing = false;
    if (answered) {
        c->proven = true;
        db->down = false;
        db->backoff_ms = BACKOFF_MIN_MS;
    } else if (broken && !c->proven) {
        mark_down_locked(db);
    }
    if (broken) {
        db->epoch++;
        drop = db->idle;
        db->idle = NULL;
        for (conn *d = drop; d; d = d->next)
            db->open--;
    }
    if (broken || c->epoch != db->epoch) {
        c->next = drop;
        drop = c;
        db->open--;
        pthread_cond_broadcast(&db->freed);
    } else {
        c->next = db->idle;
        db->idle = c;
        pthread_cond_signal(&db->freed);
    }
    pthread_mutex_unlock(&db->lock);
    while (drop) {
        conn *next = drop->next;
        conn_free(drop);
        drop = next;
    }
}

/* --- operations ------------------------------------------------------------- */

/* Starts an operation on key: builds the Redis key, takes a connection. On
 * LOOM_OK the caller ends it with op_end. */
static loom_err op_begin(op *o, redis_db *db, const char *key)
{
    o->db = db;
    o->c = NULL;
    o->broken = false;
    o->probe = false;
    o->answered = false;
    o->masked = false;
    size_t klen = strnlen(key, LOOM__STORE_MAX_KEY + 1);
    if (klen == 0 || klen > LOOM__STORE_MAX_KEY)
        return LOOM_EINVAL;
    memcpy(o->key, db->prefix, db->prefix_len);
    memcpy(o->key + db->prefix_len, key, klen);
    o->key_len = db->prefix_len + klen;
    o->key[o->key_len] = '\0';
    o->deadline = loom__mono_ms() + db->timeout_ms;
    pipe_block(o);
    loom_err err = acquire(db, o->deadline, &o->c, &o->probe);
    if (err != LOOM_OK) {
        o->broken = true; /* a failed connect may have raised SIGPIPE */
        pipe_restore(o);
    }
    return err;
}

static void op_end(op *o)
{
    release(o->db, o->c, o->broken, o->probe, o->answered);
    o->c = NULL;
    pipe_restore(o);
}

/* Runs one command within the operation's deadline. On LOOM_OK *out is the
 * reply (error replies included). Otherwise nothing was sent (deadline
 * passed) or the connection is marked broken. */
static loom_err op_cmd(op *o, redisReply **out, int argc, const char **argv, const size_t *lens)
{
    *out = NULL;
    conn *c = o->c;
    int64_t rem = o->deadline - loom__mono_ms();
    if (rem <= 0)
        return LOOM_EUNAVAILABLE; /* nothing sent: the connection stays usable */
    uint32_t want = rem + SLACK_MS >= o->db->timeout_ms ? o->db->timeout_ms : (uint32_t)rem;
    if (want != c->timeout_ms) {
        if (redisSetTimeout(c->ctx, ms_tv(want)) != REDIS_OK) {
            o->broken = true;
            return LOOM_EUNAVAILABLE;
        }
        c->timeout_ms = want;
    }
    redisReply *r = redisCommandArgv(c->ctx, argc, argv, lens);
    if (!r) {
        o->broken = true;
        return c->ctx->err == REDIS_ERR_OOM ? LOOM_ENOMEM : LOOM_EUNAVAILABLE;
    }
    o->answered = true;
    /* The server closes the connection after a protocol error. */
    if (r->type == REDIS_REPLY_ERROR && starts_with(r->str, r->len, "ERR Protocol error"))
        o->broken = true;
    *out = r;
    return LOOM_OK;
}

/* Runs "CMD KEY" (GET, DEL) on the operation's key, as op_cmd does. */
static loom_err op_key_cmd(op *o, const char *cmd, redisReply **out)
{
    const char *argv[] = {cmd, o->key};
    size_t lens[] = {strlen(cmd), o->key_len};
    return op_cmd(o, out, 2, argv, lens);
}

/* An operation of one "CMD KEY" command (GET, DEL). On LOOM_OK *r is the
 * reply (error replies included) for the caller to judge and free; the
 * connection is already back in the pool. */
static loom_err key_cmd(redis_db *db, const char *key, const char *cmd, redisReply **r)
{
    op o;
    loom_err err = op_begin(&o, db, key);
    if (err != LOOM_OK)
        return err;
    err = op_key_cmd(&o, cmd, r);
    op_end(&o);
    return err;
}

static loom_err redis_get(void *self, const char *key, char **json)
{
    if (!self || !key || !json)
        return LOOM_EINVAL;
    redisReply *r = NULL;
    loom_err err = key_cmd(self, key, "GET", &r);
    if (err != LOOM_OK)
        return err;
    if (r->type == REDIS_REPLY_NIL) {
        err = LOOM_ENOTFOUND;
    } else if (r->type == REDIS_REPLY_STRING) {
        /* A NUL inside would cut the text short: not ours. */
        if (memchr(r->str, '\0', r->len)) {
            err = LOOM_EPARSE;
        } else {
            *json = malloc(r->len + 1);
            if (*json) {
                memcpy(*json, r->str, r->len);
                (*json)[r->len] = '\0';
            }
            err = *json ? LOOM_OK : LOOM_ENOMEM;
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        err = is_wrongtype(r) ? LOOM_EPARSE : reply_error(r);
    } else {
        err = LOOM_EIO;
    }
    freeReplyObject(r);
    return err;
}

static loom_err redis_set(void *self, const char *key, const char *json, uint32_t ttl_ms,
                          bool if_absent)
{
    redis_db *db = self;
    if (!db || !key || !json)
        return LOOM_EINVAL;
    size_t len = strnlen(json, MAX_VALUE + 1);
    if (len > MAX_VALUE)
        return LOOM_ETOOBIG;
    op o;
    loom_err err = op_begin(&o, db, key);
    if (err != LOOM_OK)
        return err;
    char ttl[16];
    const char *argv[6] = {"SET", o.key, json};
    size_t lens[6] = {3, o.key_len, len};
    int argc = 3;
    if (ttl_ms) {
        snprintf(ttl, sizeof ttl, "%" PRIu32, ttl_ms);
        argv[argc] = "PX";
        lens[argc++] = 2;
        argv[argc] = ttl;
        lens[argc++] = strlen(ttl);
    }
    if (if_absent) {
        argv[argc] = "NX";
        lens[argc++] = 2;
    }
    redisReply *r = NULL;
    err = op_cmd(&o, &r, argc, argv, lens);
    if (err == LOOM_OK) {
        if (r->type == REDIS_REPLY_STATUS)
            err = LOOM_OK;
        else if (r->type == REDIS_REPLY_NIL && if_absent)
            err = LOOM_EEXIST;
        else if (r->type == REDIS_REPLY_ERROR)
            err = reply_error(r);
        else
            err = LOOM_EIO;
    }
    freeReplyObject(r);
    op_end(&o);
    return err;
}

static loom_err redis_del(void *self, const char *key)
{
    if (!self || !key)
        return LOOM_EINVAL;
    redisReply *r = NULL;
    loom_err err = key_cmd(self, key, "DEL", &r);
    if (err != LOOM_OK)
        return err;
    if (r->type == REDIS_REPLY_INTEGER)
        err = r->integer > 0 ? LOOM_OK : LOOM_ENOTFOUND;
    else if (r->type == REDIS_REPLY_ERROR)
        err = reply_error(r);
    else
        err = LOOM_EIO;
    freeReplyObject(r);
    return err;
}

/* The SCAN MATCH pattern for keys that begin with PREFIX+prefix: the glob
 * characters of both escaped with a backslash, then '*'. malloc'd. */
static char *match_pattern(const redis_db *db, const char *prefix, size_t *len)
{
    size_t plen = strlen(prefix);
    char *pat = malloc(2 * (db->prefix_len + plen) + 2);
    if (!pat)
        return NULL;
    size_t n = 0;
    for (int part = 0; part < 2; part++) {
        const char *p = part ? prefix : db->prefix;
        size_t l = part ? plen : db->prefix_len;
        for (size_t i = 0; i < l; i++) {
            if (strchr("*?[]\\", p[i]))
                pat[n++] = '\\';
            pat[n++] = p[i];
        }
    }
    pat[n++] = '*';
    pat[n] = '\0';
    *len = n;
    return pat;
}

/* Takes the keys of one SCAN reply into pg; false when it is no SCAN reply.
 * *cursor_zero says whether the iteration is complete. */
static bool scan_step(redis_db *db, const redisReply *r, loom__store_page *pg, char *cursor,
                      size_t cursor_cap, bool *cursor_zero)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= cursor_cap ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return false;
    memcpy(cursor, r->element[0]->str, r->element[0]->len);
    cursor[r->element[0]->len] = '\0';
    *cursor_zero = strcmp(cursor, "0") == 0;
    const redisReply *keys = r->element[1];
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        if (k->type == REDIS_REPLY_STRING && k->len >= db->prefix_len &&
            memcmp(k->str, db->prefix, db->prefix_len) == 0)
            loom__store_page_offer(pg, k->str + db->prefix_len, k->len - db->prefix_len);
    }
    return true;
}

/* SCAN MATCH over the whole keyspace (one operation, so timeout_ms bounds
 * it all); the page keeps the smallest keys. */
static loom_err redis_list(void *self, const char *prefix, const char *after, size_t limit,
                           char ***keys, size_t *count)
{
    redis_db *db = self;
    if (!db || !prefix || !keys || !count || limit == 0)
        return LOOM_EINVAL;
    size_t pat_len = 0;
    char *pat = match_pattern(db, prefix, &pat_len);
    if (!pat)
        return LOOM_ENOMEM;
    op o;
    loom_err err = op_begin(&o, db, "*"); /* the key is unused: SCAN takes none */
    if (err != LOOM_OK) {
        free(pat);
        return err;
    }
    loom__store_page pg;
    loom__store_page_init(&pg, prefix, after, limit);
    char cursor[32] = "0";
    bool done = false;
    while (!done && err == LOOM_OK) {
        const char *argv[] = {"SCAN", cursor, "MATCH", pat, "COUNT", "1000"};
        size_t lens[] = {4, strlen(cursor), 5, pat_len, 5, 4};
        redisReply *r = NULL;
        err = op_cmd(&o, &r, 6, argv, lens);
        if (err == LOOM_OK && r->type == REDIS_REPLY_ERROR)
            err = reply_error(r);
        else if (err == LOOM_OK && !scan_step(db, r, &pg, cursor, sizeof cursor, &done))
            err = LOOM_EIO;
        freeReplyObject(r);
    }
    op_end(&o);
    free(pat);
    loom_err perr = loom__store_page_finish(&pg, keys, count);
    if (err != LOOM_OK && perr == LOOM_OK) {
        for (size_t i = 0; i < *count; i++)
            free((*keys)[i]);
        free(*keys);
        *keys = NULL;
        *count = 0;
    }
    return err != LOOM_OK ? err : perr;
}

/* Runs the cas script in o. expected NULL = must be absent, value NULL =
 * delete; ttl "0" none, "-1" keep. LOOM_OK swapped, LOOM_EEXIST differed. */
static loom_err run_cas(op *o, const char *expected, size_t expected_len, const char *value,
                        size_t value_len, const char *ttl)
{
    const char *argv[] = {"EVAL",
                          cas_script,
                          "1",
                          o->key,
                          expected ? "1" : "0",
                          expected ? expected : "",
                          value ? "1" : "0",
                          value ? value : "",
                          ttl};
    size_t lens[] = {4,          sizeof cas_script - 1,       1, o->key_len,
                     1,          expected ? expected_len : 0, 1, value ? value_len : 0,
                     strlen(ttl)};
    redisReply *r = NULL;
    loom_err err = op_cmd(o, &r, (int)LOOM__ARRAY_LEN(argv), argv, lens);
    if (err != LOOM_OK)
        return err;
    if (r->type == REDIS_REPLY_INTEGER)
        err = r->integer == 1 ? LOOM_OK : LOOM_EEXIST;
    else if (r->type == REDIS_REPLY_ERROR)
        err = is_wrongtype(r) ? LOOM_EEXIST : reply_error(r);
    else
        err = LOOM_EIO;
    freeReplyObject(r);
    return err;
}

static loom_err redis_cas(void *self, const char *key, const char *expected_json,
                          const char *new_json, uint32_t ttl_ms)
{
    redis_db *db = self;
    if (!db || !key)
        return LOOM_EINVAL;
    size_t elen = expected_json ? strnlen(expected_json, MAX_VALUE + 1) : 0;
    size_t nlen = new_json ? strnlen(new_json, MAX_VALUE + 1) : 0;
    if (nlen > MAX_VALUE)
        return LOOM_ETOOBIG;
    if (elen > MAX_VALUE)
        return LOOM_EEXIST; /* nothing that large can be stored */
    op o;
    loom_err err = op_begin(&o, db, key);
    if (err != LOOM_OK)
        return err;
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%" PRIu32, new_json ? ttl_ms : 0);
    err = run_cas(&o, expected_json, elen, new_json, nlen, ttl);
    op_end(&o);
    return err;
}

/* INCRBY handles canonical integer text, absence (0) and the TTL natively.
 * For anything else it fails, and the value is read and judged exactly as
 * the memory store does (loom__store_parse_integer): an integral value in
 * another spelling is replaced by compare-and-set, keeping its TTL. */
static loom_err redis_incr(void *self, const char *key, int64_t delta, int64_t *out)
{
    redis_db *db = self;
    if (!db || !key)
        return LOOM_EINVAL;
    op o;
    loom_err err = op_begin(&o, db, key);
    if (err != LOOM_OK)
        return err;
    char num[LOOM__STORE_INT_TEXT];
    snprintf(num, sizeof num, "%" PRId64, delta);
    int64_t result = 0;
    err = LOOM_EOVERLOAD;
    for (int attempt = 0; attempt < INCR_ATTEMPTS; attempt++) {
        const char *argv[] = {"INCRBY", o.key, num};
        size_t lens[] = {6, o.key_len, strlen(num)};
        redisReply *r = NULL;
        err = op_cmd(&o, &r, 3, argv, lens);
        if (err != LOOM_OK)
            break;
        if (r->type == REDIS_REPLY_INTEGER) {
            result = r->integer;
            freeReplyObject(r);
            break;
        }
        bool fallback = r->type == REDIS_REPLY_ERROR && starts_with(r->str, r->len, "ERR ");
        err = r->type != REDIS_REPLY_ERROR ? LOOM_EIO
              : is_wrongtype(r)            ? LOOM_EINVAL
                                           : reply_error(r);
        freeReplyObject(r);
        if (!fallback)
            break;

        /* Not an integer for Redis, or the sum overflows: judge the text. */
        err = op_key_cmd(&o, "GET", &r);
        if (err != LOOM_OK)
            break;
        if (r->type == REDIS_REPLY_NIL) {
            freeReplyObject(r); /* deleted meanwhile: INCRBY again */
            err = LOOM_EOVERLOAD;
            continue;
        }
        if (r->type != REDIS_REPLY_STRING) {
            err = r->type == REDIS_REPLY_ERROR && !is_wrongtype(r) ? reply_error(r) : LOOM_EINVAL;
            freeReplyObject(r);
            break;
        }
        char next[LOOM__STORE_INT_TEXT];
        err = memchr(r->str, '\0', r->len) ? LOOM_EINVAL
                                           : loom__store_incr_text(r->str, delta, &result, next);
        if (err != LOOM_OK) {
            freeReplyObject(r);
            break;
        }
        err = run_cas(&o, r->str, r->len, next, strlen(next), "-1");
        freeReplyObject(r);
        if (err != LOOM_EEXIST)
            break;
        err = LOOM_EOVERLOAD; /* changed meanwhile: start over */
    }
    op_end(&o);
    if (err == LOOM_OK && out)
        *out = result;
    return err;
}

/* --- configuration ---------------------------------------------------------- */

static bool digits_in(const char *s, size_t n, long long max, long long *out)
{
    if (n == 0 || n > 10)
        return false;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Percent-decodes s[0..n) into a new string. NULL on a bad escape, an
 * encoded NUL, an overlong result or no memory (*nomem says which). */
static char *pct_decode(const char *s, size_t n, bool *nomem)
{
    if (n > MAX_SECRET * 3)
        return NULL;
    char *out = malloc(n + 1);
    if (!out) {
        *nomem = true;
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3 || loom__hex_digit(s[i + 1]) < 0 || loom__hex_digit(s[i + 2]) < 0) {
                free(out);
                return NULL;
            }
            c = (char)(loom__hex_digit(s[i + 1]) * 16 + loom__hex_digit(s[i + 2]));
            if (c == '\0') {
                free(out);
                return NULL;
            }
            i += 2;
        }
        out[k++] = c;
    }
    out[k] = '\0';
    if (k > MAX_SECRET) {
        free(out);
        return NULL;
    }
    return out;
}

static bool host_char(char c, bool bracketed)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
        c == '-' || c == '_')
        return true;
    return bracketed && (c == ':' || c == '%');
}

/* Fills db's connection fields from url ("redis://..."). */
static loom_err parse_url(redis_db *db, const char *url)
{
    const char *colon = strchr(url, ':');
    if (!colon || colon[1] != '/' || colon[2] != '/')
        return LOOM_ECONFIG;
    const char *auth = colon + 3;
    if (strpbrk(auth, "?# \t\r\n"))
        return LOOM_ECONFIG; /* no query options, no stray spaces */
    const char *slash = strchr(auth, '/');
    const char *end = slash ? slash : auth + strlen(auth);

    /* [[USER]:PASSWORD@]: the last '@' ends it, so an unescaped '@' in a
     * password still works. */
    const char *hostp = auth;
    const char *at = NULL;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    if (at) {
        const char *sep = memchr(auth, ':', (size_t)(at - auth));
        if (!sep)
            return LOOM_ECONFIG; /* "user@" alone: say ":password@" */
        bool nomem = false;
        if (sep > auth) {
            db->user = pct_decode(auth, (size_t)(sep - auth), &nomem);
            if (!db->user)
                return nomem ? LOOM_ENOMEM : LOOM_ECONFIG;
        }
        db->password = pct_decode(sep + 1, (size_t)(at - sep - 1), &nomem);
        if (!db->password)
            return nomem ? LOOM_ENOMEM : LOOM_ECONFIG;
        if (!db->password[0] && !db->user) {
            free(db->password); /* ":@host": no credentials */
            db->password = NULL;
        }
        hostp = at + 1;
    }

    /* HOST[:PORT] or [IPV6][:PORT] */
    const char *hend, *portp = NULL;
    bool bracketed = *hostp == '[';
    if (bracketed) {
        hostp++;
        const char *close = memchr(hostp, ']', (size_t)(end - hostp));
        if (!close)
            return LOOM_ECONFIG;
        hend = close;
        if (close + 1 < end) {
            if (close[1] != ':')
                return LOOM_ECONFIG;
            portp = close + 2;
        }
    } else {
        const char *pc = memchr(hostp, ':', (size_t)(end - hostp));
        hend = pc ? pc : end;
        if (pc)
            portp = pc + 1;
    }
    size_t hlen = (size_t)(hend - hostp);
    if (hlen == 0 || hlen > MAX_HOST)
        return LOOM_ECONFIG;
    for (size_t i = 0; i < hlen; i++)
        if (!host_char(hostp[i], bracketed))
            return LOOM_ECONFIG;
    long long port = DEFAULT_PORT;
    if (portp && (!digits_in(portp, (size_t)(end - portp), 65535, &port) || port == 0))
        return LOOM_ECONFIG;
    db->port = (int)port;
    db->host = strndup(hostp, hlen);
    if (!db->host)
        return LOOM_ENOMEM;

    /* [/DB] */
    db->dbnum = 0;
    if (slash && slash[1] && !digits_in(slash + 1, strlen(slash + 1), INT32_MAX, &db->dbnum))
        return LOOM_ECONFIG;
    return LOOM_OK;
}

/* Reads the `state:` options: password, prefix, timeout_ms. Other keys
 * (url, or another adapter's) are ignored. */
static loom_err parse_options(redis_db *db, const cJSON *options)
{
    const char *prefix = DEFAULT_PREFIX;
    db->timeout_ms = DEFAULT_TIMEOUT_MS;
    if (options && !cJSON_IsNull(options)) {
        if (!cJSON_IsObject(options))
            return LOOM_ECONFIG;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(options, "prefix");
        if (p && !cJSON_IsNull(p)) {
            if (!cJSON_IsString(p) || strnlen(p->valuestring, MAX_PREFIX + 1) > MAX_PREFIX)
                return LOOM_ECONFIG;
            prefix = p->valuestring;
        }
        const cJSON *pw = cJSON_GetObjectItemCaseSensitive(options, "password");
        if (pw && !cJSON_IsNull(pw)) {
            if (!cJSON_IsString(pw) || strnlen(pw->valuestring, MAX_SECRET + 1) > MAX_SECRET)
                return LOOM_ECONFIG;
            /* The URL's password, when it has one, wins. */
            if (!db->password && pw->valuestring[0]) {
                db->password = strdup(pw->valuestring);
                if (!db->password)
                    return LOOM_ENOMEM;
            }
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(options, "timeout_ms");
        if (t && !cJSON_IsNull(t)) {
            long long v = 0;
            if (cJSON_IsNumber(t)) {
                double d = t->valuedouble;
                if (!(d >= 1 && d <= MAX_TIMEOUT_MS) || d != (double)(long long)d)
                    return LOOM_ECONFIG;
                v = (long long)d;
            } else if (!cJSON_IsString(t) ||
                       !digits_in(t->valuestring, strlen(t->valuestring), MAX_TIMEOUT_MS, &v) ||
                       v < 1) {
                return LOOM_ECONFIG;
            }
            db->timeout_ms = (uint32_t)v;
        }
    }
    db->prefix = strdup(prefix);
    if (!db->prefix)
        return LOOM_ENOMEM;
    db->prefix_len = strlen(prefix);
    return LOOM_OK;
}

/* --- lifetime --------------------------------------------------------------- */

static void db_free(redis_db *db)
{
    free(db->host);
    free(db->user);
    if (db->password) {
        explicit_bzero(db->password, strlen(db->password));
        free(db->password);
    }
    free(db->prefix);
    free(db);
}

static bool sigpipe_ignored(void)
{
    struct sigaction sa;
    return sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
           sa.sa_handler == SIG_IGN;
}

static loom_err redis_open(void **self, const char *url, const cJSON *options)
{
    if (!self || !url)
        return LOOM_EINVAL;
    *self = NULL;
    redis_db *db = calloc(1, sizeof *db);
    if (!db)
        return LOOM_ENOMEM;
    loom_err err = parse_url(db, url);
    if (err == LOOM_OK)
        err = parse_options(db, options);
    if (err != LOOM_OK) {
        db_free(db);
        return err;
    }
    db->guard_sigpipe = !sigpipe_ignored();
    db->backoff_ms = BACKOFF_MIN_MS;

    pthread_condattr_t ca;
    bool cond_ok = false;
    if (pthread_condattr_init(&ca) == 0) {
        cond_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                  pthread_cond_init(&db->freed, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cond_ok) {
        db_free(db);
        return LOOM_ENOMEM;
    }
    if (pthread_mutex_init(&db->lock, NULL) != 0) {
        pthread_cond_destroy(&db->freed);
        db_free(db);
        return LOOM_ENOMEM;
    }

    /* One connection now, to refuse a wrong password or database at start.
     * An unreachable server is not an error: the store connects when it is
     * used (start order does not matter), failing with LOOM_EUNAVAILABLE
     * until the server answers. */
    op o = {.db = db};
    pipe_block(&o);
    conn *c = NULL;
    err = conn_new(db, loom__mono_ms() + db->timeout_ms, true, &c);
    o.broken = err != LOOM_OK;
    pipe_restore(&o);
    if (err == LOOM_OK) {
        c->epoch = db->epoch;
        c->proven = true; /* it answered the PING */
        db->idle = c;
        db->open = 1;
    } else if (err == LOOM_EUNAVAILABLE) {
        db->down = true;
        db->retry_at = 0; /* the first operation tries at once */
    } else {
        pthread_mutex_destroy(&db->lock);
        pthread_cond_destroy(&db->freed);
        db_free(db);
        return err;
    }
    *self = db;
    return LOOM_OK;
}

static void redis_close(void *self)
{
    redis_db *db = self;
    if (!db)
        return;
    /* By contract no operation is running, so every connection is idle. */
    while (db->idle) {
        conn *next = db->idle->next;
        conn_free(db->idle);
        db->idle = next;
    }
    pthread_mutex_destroy(&db->lock);
    pthread_cond_destroy(&db->freed);
    db_free(db);
}

const loom_store_ops loom__store_redis_ops = {
    .abi_version = LOOM_STORE_ABI_VERSION,
    .scheme = "redis",
    .open = redis_open,
    .get = redis_get,
    .set = redis_set,
    .del = redis_del,
    .incr = redis_incr,
    .close = redis_close,
    .cas = redis_cas,
    .list = redis_list,
};
