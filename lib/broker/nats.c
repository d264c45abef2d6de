/*
 * The NATS broker adapter, on nats.c (libnats).
 *
 * Topics. A loom topic is '/'-separated, every segment already escaped for
 * MQTT (bytes of "/+#$%" and control bytes are %XX, uppercase). Each segment
 * becomes one NATS token by additionally escaping '.', '*', '>' and ' ' (and
 * any raw control byte) as %XX; tokens are joined with '.'. An empty segment
 * becomes the token "%", which no escaped segment can be. In filters '+'
 * becomes '*' and a trailing '#' becomes '>' (which, unlike MQTT's '#', does
 * not match the parent level itself). The way back decodes exactly those
 * four escapes, so every topic the core builds comes back byte for byte.
 * Groups become queue groups, escaped the same way plus '%' (so distinct
 * groups stay distinct).
 *
 * Threads. nats.c runs, per connection, a read loop, a flusher and (while
 * reconnecting) a reconnect thread; per subscription a delivery thread that
 * calls on_msg(); and, process-wide, one thread that runs every
 * connection's disconnected/reconnected/closed/error callbacks in order.
 * The adapter adds one thread of its own, the worker. The connection
 * callbacks only queue an event for it; the worker
 *   - creates the connection: one synchronous pass over the servers per
 *     attempt, with backoff between attempts, until one answers; from then
 *     on nats.c reconnects by itself, forever, across the cluster (and the
 *     worker starts anew if nats.c ever gives up, e.g. after repeated
 *     authentication errors),
 *   - makes every state_changed() upcall, in the order the events happened,
 *   - completes subscribe() calls: one bounded natsConnection_Flush for all
 *     pending ones, then subscribed(),
 *   - closes and frees nats.c objects (never from a nats.c thread).
 *
 * Locking. a->mu guards the fields marked below. It is never held while
 * calling a host upcall, nor across a nats.c call that may block (connect,
 * flush, publish, close, destroy); short non-blocking nats.c calls
 * (natsSubscription_IsValid) may run under it: nats.c never calls into this
 * file while holding one of its own locks.
 *
 * Lifetime. nats.c may call back into this file until (a) the closed
 * callback of every connection has run (the last event of a connection),
 * and (b) the on-complete callback of every subscription has run (after its
 * last on_msg). stop() waits for both (bounded); callbacks that make upcalls
 * bracket them with enter()/leave(), and stop() sets `stopped` and waits
 * until none is inside, so no upcall runs after it returns. If the bounded
 * wait ever expires, fini() leaks the adapter rather than free memory that
 * a nats.c thread may still touch.
 */
#define _GNU_SOURCE
#include <nats/nats.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/adapters.h"
#include "broker/options.h"
#include "core/util.h"

#define NATS_DEFAULT_PORT 4222
#define MAX_SERVERS 64
#define MAX_TOPIC 65535       /* loom topic bytes, as for MQTT */
#define MAX_SUBJECT 2048      /* mapped subject; the server's control line is 4 KiB */
#define MAX_QUEUE 1024        /* mapped queue group */
#define MAX_STATUS 256        /* the "status" header value */
#define MAX_CORRELATION 65535 /* correlation bytes, as for MQTT */
#define PENDING_MSGS 65536    /* per subscription, in nats.c, before it drops */
#define PENDING_BYTES (64 * 1024 * 1024)
#define BYTES_PER_BUFFERED_MSG 1024 /* `buffer` (messages) -> reconnect buffer bytes */
#define STOP_WAIT_MS 5000           /* for nats.c's callbacks to finish */
#define FAIL_WARN_INTERVAL_MS 30000 /* repeated connect failures: one warning */
#define DROP_WARN_INTERVAL_MS 1000  /* dropped messages: one warning */
#define MAX_EVENTS 32
#define HDR_STATUS "status"
#define HDR_CORRELATION "correlation"

typedef enum ev_kind {
    EV_CONNECTED,    /* connected or reconnected */
    EV_DISCONNECTED, /* lost; nats.c reconnects by itself */
    EV_CLOSED,       /* nats.c gave up on the connection (not by close()) */
} ev_kind;

typedef struct conn_event {
    ev_kind kind;
    char detail[200];
} conn_event;

typedef struct nats_adapter nats_adapter;

/* One NATS subscription: one per (filter, group, token). Its address is the
 * closure of on_msg() and on_complete(), so it is freed only once `done`. */
typedef struct nsub {
    struct nsub *next;
    nats_adapter *a;
    char *filter; /* as the core gave them */
    char *group;  /* NULL = none */
    void *token;
    natsSubscription *ns; /* NULL while being created */
    /* Under a->mu: */
    bool live;          /* in a->subs: deliveries go to the core */
    bool creating;      /* subscribe() is creating ns without the lock */
    bool done;          /* on_complete() ran: nats.c no longer uses this struct */
    int busy;           /* threads using ns without the lock */
    atomic_bool orphan; /* see nats_subscribe() */
} nsub;

struct nats_adapter {
    loom_adapter_host host;

    /* Configuration: set by init, read-only afterwards. */
    bool tls;
    char **servers; /* "nats://host:port" or "tls://host:port" */
    size_t n_servers;
    char *servers_text; /* "host:port,host:port" for log lines */
    char *name;         /* connection name: client_id or the instance id */
    char *username, *password, *token;
    char *tls_ca, *tls_cert, *tls_key;
    bool tls_verify;
    int connect_timeout_ms;
    int reconnect_min_ms, reconnect_max_ms;
    int buffer;      /* messages kept while disconnected; 0 = fail at once */
    int keepalive_s; /* ping interval; 0 = no pings */
    bool randomize, send_asap;

    natsOptions *nopts;         /* built by the worker on its first attempt; worker only */
    loom_broker_state reported; /* last state_changed(); worker (and connect) only */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* every change below; the worker and stop() wait on it */
    /* Everything below is guarded by mu. */
    natsConnection *nc;              /* current connection, NULL when none */
    int nc_users;                    /* threads using nc without the lock */
    unsigned conns_made, closed_cbs; /* connections obtained; closed callbacks seen */
    bool connect_called;
    bool closing; /* close() was called: no more attempts, no state reports */
    bool stopped; /* stop() is finishing: callbacks make no upcalls */
    bool failed;  /* the options could not be built: no more attempts */
    bool leaked;  /* nats.c may still call us: fini() must not free */
    bool thread_started;
    pthread_t thread;
    int active; /* callbacks between enter() and leave() */
    bool up;    /* the worker reported CONNECTED and no loss since */
    conn_event events[MAX_EVENTS];
    size_t ev_head, ev_n;
    bool need_connect; /* the worker creates a connection at retry_at */
    int64_t retry_at;
    int next_delay_ms;
    unsigned rng;
    unsigned fail_count; /* failed attempts since the last success */
    int64_t fail_warn_ms;
    void **pend; /* tokens whose subscribe() awaits completion */
    size_t n_pend, cap_pend;
    bool flush_blocked; /* the last flush found no connection: wait for one */
    bool reap;          /* a subscription in `dead` completed */
    nsub *subs;         /* live subscriptions */
    nsub *dead;         /* unsubscribed or replaced, until done */
    nsub *orphans;      /* closed before on_complete could be set: never freed */
    int64_t drop_warn_ms;
    unsigned long dropped;
    char url_now[256]; /* the server we are connected to, for log lines */
};

#define A_LOG(a, lvl, ...)                                                                         \
    do {                                                                                           \
        if ((a)->host.log)                                                                         \
            (a)->host.log((a)->host.core, (lvl), __VA_ARGS__);                                     \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

static void lock(nats_adapter *a)
{
    pthread_mutex_lock(&a->mu);
}
static void unlock(nats_adapter *a)
{
    pthread_mutex_unlock(&a->mu);
}

/* Called with mu held by a nats.c callback about to make upcalls. */
static bool enter_locked(nats_adapter *a)
{
    if (a->stopped)
        return false;
    a->active++;
    return true;
}

static void leave(nats_adapter *a)
{
    lock(a);
    if (--a->active == 0)
        pthread_cond_broadcast(&a->cv);
    unlock(a);
}

/* Waits on a->cv (mu held) until `deadline` (monotonic ms); false when it
 * has passed. */
static bool wait_until_locked(nats_adapter *a, int64_t deadline)
{
    int64_t left = deadline - loom__mono_ms();
    if (left <= 0)
        return false;
    struct timespec ts = loom__mono_after(left);
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
    return true;
}

static loom_err map_status(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return LOOM_OK;
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_INSUFFICIENT_BUFFER:
    case NATS_DRAINING:
    case NATS_NO_SERVER:
    case NATS_NO_RESPONDERS:
        return LOOM_EUNAVAILABLE;
    case NATS_MAX_PAYLOAD:
        return LOOM_ETOOBIG;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_QUEUE_NAME:
    case NATS_INVALID_SUBSCRIPTION:
        return LOOM_EINVAL;
    case NATS_NO_MEMORY:
        return LOOM_ENOMEM;
    case NATS_TIMEOUT:
        return LOOM_ETIMEDOUT;
    case NATS_NO_SERVER_SUPPORT:
        return LOOM_EUNSUPPORTED;
    case NATS_NOT_PERMITTED:
        return LOOM_EUNAVAILABLE;
    default:
        return LOOM_EIO;
    }
}

/* nats.c's last error on this thread (without its "(file.c:123): "
 * prefix), or its status text. */
static const char *last_error_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    if (t && *t == '(') {
        const char *e = strstr(t, "): ");
        if (e && e - t < 40)
            t = e + 3;
    }
    return t && *t ? t : natsStatus_GetText(s);
}

/* ------------------------------------------------------------------------ */
/* Topic mapping                                                             */

static const char HEX[] = "0123456789ABCDEF";

/* Bytes a NATS token cannot hold verbatim (besides the ones MQTT escaping
 * already removed). */
static bool token_escape(unsigned char c)
{
    return c == '.' || c == '*' || c == '>' || c == ' ' || c < 0x20 || c == 0x7f;
}

static char *put_escape(char *o, unsigned char c)
{
    *o++ = '%';
    *o++ = HEX[c >> 4];
    *o++ = HEX[c & 15];
    return o;
}

typedef enum map_mode { MAP_TOPIC, MAP_FILTER } map_mode;

/* A loom topic (or, MAP_FILTER, a filter with '+' and a trailing '#') as a
 * NATS subject, malloc'd. NULL when invalid (then *oom stays false) or out
 * of memory (*oom set). */
static char *to_subject(const char *topic, map_mode mode, bool *oom)
{
    *oom = false;
    if (!topic || !*topic)
        return NULL;
    size_t n = strnlen(topic, MAX_TOPIC + 1);
    if (n > MAX_TOPIC)
        return NULL;
    char *out = malloc(3 * n + 2);
    if (!out) {
        *oom = true;
        return NULL;
    }
    char *o = out;
    const char *seg = topic;
    for (;;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (mode == MAP_FILTER && len == 1 && *seg == '+') {
            *o++ = '*';
        } else if (mode == MAP_FILTER && len == 1 && *seg == '#' && !end) {
            *o++ = '>';
        } else if (len == 0) {
            *o++ = '%';
        } else {
            for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)seg[i];
                if (c == '+' || c == '#')
                    goto bad; /* a wildcard inside a segment, or one in a topic */
                if (token_escape(c))
                    o = put_escape(o, c);
                else
                    *o++ = (char)c;
            }
        }
        if (!end)
            break;
        *o++ = '.';
        seg = end + 1;
    }
    *o = '\0';
    if ((size_t)(o - out) > MAX_SUBJECT)
        goto bad;
    return out;
bad:
    free(out);
    return NULL;
}

/* A loom group as a NATS queue group name: escaped like a token, and '%'
 * too, so that the mapping is one-to-one. */
static char *to_queue(const char *group, bool *oom);

char *loom__nats_subject(const char *filter)
{
    bool oom;
    return to_subject(filter, MAP_FILTER, &oom);
}

char *loom__nats_queue(const char *group)
{
    bool oom;
    return to_queue(group, &oom);
}

static char *to_queue(const char *group, bool *oom)
{
    *oom = false;
    if (!group || !*group)
        return NULL;
    size_t n = strnlen(group, MAX_QUEUE + 1);
    if (n > MAX_QUEUE)
        return NULL;
    char *out = malloc(3 * n + 1);
    if (!out) {
        *oom = true;
        return NULL;
    }
    char *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)group[i];
        if (token_escape(c) || c == '%')
            o = put_escape(o, c);
        else
            *o++ = (char)c;
    }
    *o = '\0';
    if ((size_t)(o - out) > MAX_QUEUE) {
        free(out);
        return NULL;
    }
    return out;
}

/* A NATS subject as a loom topic: the reverse of to_subject() for every
 * subject it makes. Bytes a loom segment cannot hold raw ('/', '+', '#',
 * from foreign publishers) come back in the core's escaped form. Uses buf
 * when the result fits (cap bytes), else malloc; NULL on ENOMEM. */
static char *to_topic(const char *subject, char *buf, size_t cap)
{
    size_t n = strlen(subject);
    char *out = 3 * n + 1 <= cap ? buf : malloc(3 * n + 1);
    if (!out)
        return NULL;
    char *o = out;
    const char *tok = subject;
    for (;;) {
        const char *end = strchr(tok, '.');
        size_t len = end ? (size_t)(end - tok) : strlen(tok);
        if (!(len == 1 && *tok == '%')) { /* "%" alone: an empty segment */
            for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)tok[i];
                if (c == '%' && i + 2 < len) {
                    int h = loom__hex_digit((unsigned char)tok[i + 1]);
                    int l = loom__hex_digit((unsigned char)tok[i + 2]);
                    int v = h >= 0 && l >= 0 ? h * 16 + l : -1;
                    if (v == '.' || v == '*' || v == '>' || v == ' ') {
                        *o++ = (char)v;
                        i += 2;
                        continue;
                    }
                }
                if (c == '/' || c == '+' || c == '#')
                    o = put_escape(o, c);
                else
                    *o++ = (char)c;
            }
        }
        if (!end)
            break;
        *o++ = '/';
        tok = end + 1;
    }
    *o = '\0';
    return out;
}

static char *hex_encode(const void *data, size_t n)
{
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = "0123456789abcdef"[p[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[p[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

/* Decodes hex text into out (room for strlen(s)/2 bytes); false when s is
 * not an even number of hex digits. */
static bool hex_decode(const char *s, unsigned char *out, size_t *n)
{
    size_t len = strlen(s);
    if (len % 2)
        return false;
    for (size_t i = 0; i < len; i += 2) {
        int h = loom__hex_digit((unsigned char)s[i]), l = loom__hex_digit((unsigned char)s[i + 1]);
        if (h < 0 || l < 0)
            return false;
        out[i / 2] = (unsigned char)(h * 16 + l);
    }
    *n = len / 2;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */

/* Percent-decodes s[0..n) into a new string; false on a malformed escape or
 * a decoded NUL (*out NULL then), or ENOMEM (*oom set). */
static bool pct_decode(const char *s, size_t n, char **out, bool *oom)
{
    *out = NULL;
    char *d = malloc(n + 1);
    if (!d) {
        *oom = true;
        return false;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            d[k++] = s[i];
            continue;
        }
        int h = i + 2 < n ? loom__hex_digit((unsigned char)s[i + 1]) : -1;
        int l = h >= 0 ? loom__hex_digit((unsigned char)s[i + 2]) : -1;
        if (h < 0 || l < 0 || h * 16 + l == 0) {
            free(d);
            return false;
        }
        d[k++] = (char)(h * 16 + l);
        i += 2;
    }
    d[k] = '\0';
    *out = d;
    return true;
}

static bool same_str(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

/* Takes over *v as the URL's credential `*slot`; several servers of one URL
 * must give the same one. */
static loom_err keep_cred(char **slot, char **v, const char *what, char *why, size_t why_len)
{
    if (*slot && !same_str(*slot, *v)) {
        snprintf(why, why_len, "the servers of one URL give different %s", what);
        free(*v);
        *v = NULL;
        return LOOM_ECONFIG;
    }
    if (!*slot) {
        *slot = *v;
        *v = NULL;
    }
    free(*v);
    *v = NULL;
    return LOOM_OK;
}

/* One "[user:pass@]host[:port]" of the list. */
static loom_err parse_server(nats_adapter *a, const char *el, size_t len, const char *scheme,
                             char **user, char **pass, char **token, char *why, size_t why_len)
{
    loom_err err;
    bool oom = false;
    const char *at = NULL;
    for (size_t i = 0; i < len; i++)
        if (el[i] == '@')
            at = el + i; /* the last one: a raw '@' may sit in a password */
    if (at) {
        const char *colon = memchr(el, ':', (size_t)(at - el));
        char *u = NULL, *p = NULL;
        if (at == el || (colon && colon == el)) {
            snprintf(why, why_len, "empty user name before '@'");
            return LOOM_ECONFIG;
        }
        size_t ulen = colon ? (size_t)(colon - el) : (size_t)(at - el);
        if (!pct_decode(el, ulen, &u, &oom) ||
            (colon && !pct_decode(colon + 1, (size_t)(at - colon - 1), &p, &oom))) {
            free(u);
            if (oom)
                return LOOM_ENOMEM;
            snprintf(why, why_len, "malformed %%-escape in the credentials");
            return LOOM_ECONFIG;
        }
        if (colon) {
            if ((err = keep_cred(user, &u, "user names", why, why_len)) ||
                (err = keep_cred(pass, &p, "passwords", why, why_len))) {
                free(p);
                return err;
            }
        } else if ((err = keep_cred(token, &u, "tokens", why, why_len))) {
            return err;
        }
        len -= (size_t)(at + 1 - el);
        el = at + 1;
    }

    const char *end = el + len, *host_end;
    if (len > 0 && *el == '[') {
        const char *close = memchr(el, ']', len);
        if (!close || close == el + 1 || close - el > 60) {
            snprintf(why, why_len, "malformed IPv6 address (expected [address])");
            return LOOM_ECONFIG;
        }
        for (const char *c = el + 1; c < close; c++)
            if (!(loom__hex_digit((unsigned char)*c) >= 0 || *c == ':' || *c == '.')) {
                snprintf(why, why_len, "'%.*s' is not an IPv6 address", (int)(close - el - 1),
                         el + 1);
                return LOOM_ECONFIG;
            }
        host_end = close + 1;
    } else {
        host_end = el;
        while (host_end < end && *host_end != ':') {
            char c = *host_end;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_')) {
                snprintf(why, why_len,
                         "unexpected character '%c' in a host (expected "
                         "[user:password@]host[:port], no path or query)",
                         c);
                return LOOM_ECONFIG;
            }
            host_end++;
        }
        if (host_end == el) {
            snprintf(why, why_len, "missing host");
            return LOOM_ECONFIG;
        }
    }
    size_t host_len = (size_t)(host_end - el);
    if (host_len > 255) {
        snprintf(why, why_len, "host name too long");
        return LOOM_ECONFIG;
    }
    long long port = NATS_DEFAULT_PORT;
    if (host_end < end && *host_end == ':') {
        char digits[8];
        size_t n = (size_t)(end - host_end - 1);
        if (n == 0 || n > 5) {
            snprintf(why, why_len, "port must be a number from 1 to 65535");
            return LOOM_ECONFIG;
        }
        memcpy(digits, host_end + 1, n);
        digits[n] = '\0';
        if (strspn(digits, "0123456789") != n || !loom__parse_int(digits, 1, 65535, &port)) {
            snprintf(why, why_len, "port must be a number from 1 to 65535");
            return LOOM_ECONFIG;
        }
    } else if (host_end < end) {
        snprintf(why, why_len, "unexpected '%.*s' after a host", (int)(end - host_end), host_end);
        return LOOM_ECONFIG;
    }
    char *url = loom__asprintf("%s://%.*s:%lld", scheme, (int)host_len, el, port);
    char *text = loom__asprintf("%s%s%.*s:%lld", a->servers_text ? a->servers_text : "",
                                a->servers_text ? "," : "", (int)host_len, el, port);
    if (!url || !text) {
        free(url);
        free(text);
        return LOOM_ENOMEM;
    }
    a->servers[a->n_servers++] = url;
    free(a->servers_text);
    a->servers_text = text;
    return LOOM_OK;
}

static loom_err parse_url(nats_adapter *a, const char *url, char **user, char **pass, char **token,
                          char *why, size_t why_len)
{
    const char *rest, *scheme;
    if (strncmp(url, "nats://", 7) == 0) {
        a->tls = false;
        scheme = "nats";
        rest = url + 7;
    } else if (strncmp(url, "tls://", 6) == 0) {
        a->tls = true;
        scheme = "tls";
        rest = url + 6;
    } else {
        snprintf(why, why_len, "expected nats://host[:port][,host[:port]...] (or tls://...)");
        return LOOM_ECONFIG;
    }
    a->servers = calloc(MAX_SERVERS, sizeof *a->servers);
    if (!a->servers)
        return LOOM_ENOMEM;
    for (;;) {
        const char *comma = strchr(rest, ',');
        size_t len = comma ? (size_t)(comma - rest) : strlen(rest);
        if (len == 0) {
            snprintf(why, why_len, "empty server in the list");
            return LOOM_ECONFIG;
        }
        if (a->n_servers == MAX_SERVERS) {
            snprintf(why, why_len, "more than %d servers", MAX_SERVERS);
            return LOOM_ECONFIG;
        }
        /* Later elements may repeat the scheme (nats://a:1,nats://b:2), as
         * nats.c and the nats CLI accept; it must be the first one's. */
        size_t slen = strlen(scheme);
        if (rest != url + slen + 3 && len > slen + 3 && strncmp(rest, scheme, slen) == 0 &&
            strncmp(rest + slen, "://", 3) == 0) {
            rest += slen + 3;
            len -= slen + 3;
        }
        loom_err err = parse_server(a, rest, len, scheme, user, pass, token, why, why_len);
        if (err)
            return err;
        if (!comma)
            return LOOM_OK;
        rest = comma + 1;
    }
}

/* The URL for log lines, credentials replaced by "***". */
static char *redact_url(const char *url)
{
    size_t n = strlen(url);
    char *out = malloc(4 * n + 4); /* "***" may be longer than what it hides */
    if (!out)
        return NULL;
    char *o = out;
    const char *p = url;
    const char *body = strstr(url, "://");
    if (body) {
        body += 3;
        memcpy(o, url, (size_t)(body - url));
        o += body - url;
        p = body;
    }
    while (*p) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *at = NULL;
        for (const char *c = p; c < end; c++)
            if (*c == '@')
                at = c;
        if (at) {
            memcpy(o, "***", 3);
            o += 3;
            p = at;
        }
        memcpy(o, p, (size_t)(end - p));
        o += end - p;
        p = end;
        if (comma)
            *o++ = *p++;
    }
    *o = '\0';
    return out;
}

static loom_err read_options(nats_adapter *a, const cJSON *o, char *why, size_t why_len)
{
    loom_err err;
    long long v;
    if (o && !cJSON_IsObject(o)) {
        snprintf(why, why_len, "broker: expected a mapping");
        return LOOM_ECONFIG;
    }
    char *user = NULL, *pw = NULL, *pw_file = NULL;
    if ((err = loom__opt_str(o, "client_id", "client_id", &a->name, why, why_len)) ||
        (err = loom__opt_str(o, "username", "username", &user, why, why_len)) ||
        (err = loom__opt_str(o, "password", "password", &pw, why, why_len)) ||
        (err = loom__opt_str(o, "password_file", "password_file", &pw_file, why, why_len)))
        goto creds_done;
    if (a->name && !*a->name) {
        snprintf(why, why_len, "broker.client_id: must not be empty");
        err = LOOM_ECONFIG;
        goto creds_done;
    }
    if (pw_file && !pw) /* an explicit password wins */
        err = loom__opt_first_line(pw_file, &pw, why, why_len);
creds_done:
    free(pw_file);
    if (err == LOOM_OK && (user || pw)) {
        /* Configured credentials win over the URL's. */
        free(a->username);
        free(a->password);
        a->username = user;
        a->password = pw;
        user = pw = NULL;
    }
    free(user);
    if (pw) {
        explicit_bzero(pw, strlen(pw));
        free(pw);
    }
    if (err)
        return err;

    v = a->connect_timeout_ms;
    if ((err = loom__opt_int(o, "connect_timeout_ms", 1, 600000, &v, why, why_len)))
        return err;
    a->connect_timeout_ms = (int)v;
    v = a->reconnect_min_ms;
    if ((err = loom__opt_int(o, "reconnect_min_ms", 1, 600000, &v, why, why_len)))
        return err;
    a->reconnect_min_ms = (int)v;
    v = a->reconnect_max_ms;
    if ((err = loom__opt_int(o, "reconnect_max_ms", 1, 3600000, &v, why, why_len)))
        return err;
    a->reconnect_max_ms = (int)v;
    if (a->reconnect_max_ms < a->reconnect_min_ms) {
        snprintf(why, why_len, "broker.reconnect_max_ms (%d) is below reconnect_min_ms (%d)",
                 a->reconnect_max_ms, a->reconnect_min_ms);
        return LOOM_ECONFIG;
    }
    v = a->buffer;
    if ((err = loom__opt_int(o, "buffer", 0, 10000000, &v, why, why_len)))
        return err;
    a->buffer = (int)v;
    v = a->keepalive_s;
    if ((err = loom__opt_int(o, "keepalive", 0, 65535, &v, why, why_len)))
        return err;
    a->keepalive_s = (int)v;
    if ((err = loom__opt_bool(o, "randomize", "randomize", &a->randomize, why, why_len)) ||
        (err = loom__opt_bool(o, "send_asap", "send_asap", &a->send_asap, why, why_len)))
        return err;

    const cJSON *tls = loom__opt_get(o, "tls");
    if (tls && !cJSON_IsObject(tls)) {
        snprintf(why, why_len, "broker.tls: expected a mapping");
        return LOOM_ECONFIG;
    }
    if (tls && a->tls) { /* TLS settings only matter for tls:// */
        if ((err = loom__opt_str(tls, "ca", "tls.ca", &a->tls_ca, why, why_len)) ||
            (err = loom__opt_str(tls, "cert", "tls.cert", &a->tls_cert, why, why_len)) ||
            (err = loom__opt_str(tls, "key", "tls.key", &a->tls_key, why, why_len)) ||
            (err = loom__opt_bool(tls, "verify", "tls.verify", &a->tls_verify, why, why_len)))
            return err;
        const char *names[] = {"tls.ca", "tls.cert", "tls.key"};
        const char *paths[] = {a->tls_ca, a->tls_cert, a->tls_key};
        for (size_t i = 0; i < LOOM__ARRAY_LEN(paths); i++) {
            if (paths[i] && access(paths[i], R_OK) != 0) {
                snprintf(why, why_len, "broker.%s: cannot read %s: %s", names[i], paths[i],
                         strerror(errno));
                return LOOM_ECONFIG;
            }
        }
        if (!a->tls_cert != !a->tls_key) {
            snprintf(why, why_len, "broker.tls.cert and broker.tls.key go together");
            return LOOM_ECONFIG;
        }
    }
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Subscription table (under mu)                                             */

static void free_nsub(nsub *s)
{
    if (!s)
        return;
    free(s->filter);
    free(s->group);
    free(s);
}

static nsub *find_live(nats_adapter *a, const char *filter, const char *group, void *token)
{
    for (nsub *s = a->subs; s; s = s->next)
        if (s->token == token && strcmp(s->filter, filter) == 0 && same_str(s->group, group))
            return s;
    return NULL;
}

/* Moves a live subscription to the dead list. */
static void bury(nats_adapter *a, nsub *s)
{
    for (nsub **pp = &a->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    s->live = false;
    s->next = a->dead;
    a->dead = s;
    a->reap = true;
}

/* Unlinks the dead subscriptions nats.c is done with. */
static nsub *take_reapable(nats_adapter *a)
{
    nsub *out = NULL;
    for (nsub **pp = &a->dead; *pp;) {
        nsub *s = *pp;
        if ((s->done || !s->ns) && !s->creating && s->busy == 0) {
            *pp = s->next;
            s->next = out;
            out = s;
        } else {
            pp = &s->next;
        }
    }
    return out;
}

static void destroy_list(nsub *s)
{
    while (s) {
        nsub *next = s->next;
        if (s->ns)
            natsSubscription_Destroy(s->ns);
        free_nsub(s);
        s = next;
    }
}

/* Room for one more pending token (mu held). */
static bool reserve_pend(nats_adapter *a)
{
    if (a->n_pend < a->cap_pend)
        return true;
    size_t cap = a->cap_pend ? a->cap_pend * 2 : 16;
    void **p = realloc(a->pend, cap * sizeof *p);
    if (!p)
        return false;
    a->pend = p;
    a->cap_pend = cap;
    return true;
}

/* ------------------------------------------------------------------------ */
/* nats.c callbacks                                                          */

/* Queues an event for the worker (mu held). When the queue is full the
 * newest event replaces the last one: the latest state is what matters. */
static void push_event_locked(nats_adapter *a, ev_kind kind, const char *detail)
{
    size_t i;
    if (a->ev_n < MAX_EVENTS)
        i = (a->ev_head + a->ev_n++) % MAX_EVENTS;
    else
        i = (a->ev_head + MAX_EVENTS - 1) % MAX_EVENTS;
    a->events[i].kind = kind;
    loom__strlcpy(a->events[i].detail, detail ? detail : "", sizeof a->events[i].detail);
    pthread_cond_broadcast(&a->cv);
}

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_adapter *a = closure;
    lock(a);
    push_event_locked(a, EV_CONNECTED, NULL);
    unlock(a);
}

static void loss_text(nats_adapter *a, natsConnection *nc, const char *what, char *buf, size_t n)
{
    const char *err = NULL;
    natsStatus s = nc ? natsConnection_GetLastError(nc, &err) : NATS_OK;
    char url[sizeof a->url_now];
    lock(a);
    memcpy(url, a->url_now, sizeof url);
    unlock(a);
    snprintf(buf, n, "%s %s%s%s", what, url[0] ? url : a->servers_text,
             s != NATS_OK && err && *err ? ": " : "", s != NATS_OK && err ? err : "");
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    nats_adapter *a = closure;
    char why[200];
    loss_text(a, nc, "lost the connection to", why, sizeof why);
    lock(a);
    if (!a->closing)
        push_event_locked(a, EV_DISCONNECTED, why);
    unlock(a);
}

/* The last callback nats.c makes for a connection. */
static void on_closed(natsConnection *nc, void *closure)
{
    nats_adapter *a = closure;
    char why[200];
    loss_text(a, nc, "the client library gave up on the connection to", why, sizeof why);
    lock(a);
    a->closed_cbs++;
    if (!a->closing)
        push_event_locked(a, EV_CLOSED, why);
    pthread_cond_broadcast(&a->cv);
    unlock(a);
}

/* Logs a failed attempt: a warning for the first after a success and then
 * every FAIL_WARN_INTERVAL_MS, debug lines in between. Any thread. */
static void log_failure(nats_adapter *a, const char *why, int64_t delay_ms)
{
    lock(a);
    int64_t now = loom__mono_ms();
    unsigned count = ++a->fail_count;
    bool warn = count == 1 || now - a->fail_warn_ms >= FAIL_WARN_INTERVAL_MS;
    if (warn)
        a->fail_warn_ms = now;
    bool up = enter_locked(a);
    unlock(a);
    if (!up)
        return;
    A_LOG(a, warn ? LOOM_LOG_WARN : LOOM_LOG_DEBUG,
          "nats: cannot connect to %s: %s (attempt %u, retrying in %lld ms)", a->servers_text, why,
          count, (long long)delay_ms);
    leave(a);
}

/* A delay with +-20% jitter, so instances that lost the same server do not
 * all come back at once (mu held). */
static int jitter_locked(nats_adapter *a, int delay)
{
    int span = delay / 5;
    if (span > 0)
        delay += (int)(rand_r(&a->rng) % (unsigned)(2 * span + 1)) - span;
    return delay < 1 ? 1 : delay;
}

/* nats.c's reconnect thread, after each full pass over the servers failed:
 * exponential backoff from reconnect_min_ms to reconnect_max_ms. */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    nats_adapter *a = closure;
    int64_t delay = a->reconnect_min_ms;
    for (int i = 1; i < attempts && delay < a->reconnect_max_ms; i++)
        delay *= 2;
    if (delay > a->reconnect_max_ms)
        delay = a->reconnect_max_ms;
    lock(a);
    delay = jitter_locked(a, (int)delay);
    unlock(a);
    const char *err = NULL;
    char why[200] = "no server reachable";
    if (natsConnection_GetLastError(nc, &err) != NATS_OK && err && *err)
        snprintf(why, sizeof why, "%s", err);
    log_failure(a, why, delay);
    return delay;
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    nats_adapter *a = closure;
    const char *txt = NULL;
    char why[256];
    natsConnection_GetLastError(nc, &txt);
    snprintf(why, sizeof why, "%s", txt && *txt ? txt : natsStatus_GetText(err));
    bool report = true;
    lock(a);
    if (err == NATS_SLOW_CONSUMER) {
        /* Rate-limited like the overload drops. */
        int64_t now = loom__mono_ms();
        report = now - a->drop_warn_ms >= DROP_WARN_INTERVAL_MS;
        if (report)
            a->drop_warn_ms = now;
    }
    bool up = report && enter_locked(a);
    unlock(a);
    if (!up)
        return;
    if (err == NATS_SLOW_CONSUMER)
        A_LOG(a, LOOM_LOG_WARN, "nats: a subscription%s%s falls behind; nats.c dropped messages",
              sub ? " on " : "", sub ? natsSubscription_GetSubject(sub) : "");
    else /* a refused login shows in the "cannot connect" lines already */
        A_LOG(a, err == NATS_CONNECTION_AUTH_FAILED ? LOOM_LOG_DEBUG : LOOM_LOG_WARN, "nats: %s",
              why);
    leave(a);
}

static void note_drop(nats_adapter *a, const char *topic)
{
    lock(a);
    a->dropped++;
    int64_t now = loom__mono_ms();
    unsigned long n = 0;
    if (now - a->drop_warn_ms >= DROP_WARN_INTERVAL_MS) {
        n = a->dropped;
        a->dropped = 0;
        a->drop_warn_ms = now;
    }
    unlock(a);
    if (n)
        A_LOG(a, LOOM_LOG_WARN,
              "nats: worker queue full, dropped %lu message(s) since the last report (last "
              "on %s)",
              n, topic);
}

/* A subscription's delivery thread. Never blocks: deliver() only enqueues.
 * A message the core cannot take is dropped (NATS core has no redelivery). */
static void on_msg(natsConnection *nc, natsSubscription *ns, natsMsg *m, void *closure)
{
    (void)nc;
    (void)ns;
    nsub *s = closure;
    nats_adapter *a = s->a;
    char tbuf[512], rbuf[256];
    unsigned char cbuf[64];
    char *topic = NULL, *rt = NULL;
    unsigned char *corr = NULL;
    size_t corr_len = 0;
    if (!m)
        return;
    if (atomic_load(&s->orphan)) {
        natsMsg_Destroy(m);
        return;
    }

    lock(a);
    void *token = s->token;
    bool up = s->live && enter_locked(a);
    unlock(a);
    if (!up)
        goto out;
    if (natsMsg_IsNoResponders(m)) {
        /* The server's "no responders" notice for a request we published:
         * it carries no correlation, so the core could not use it (it
         * answers 503 from discovery instead). */
        A_LOG(a, LOOM_LOG_DEBUG, "nats: no responders for a request replying to %s",
              natsMsg_GetSubject(m));
        leave(a);
        goto out;
    }
    const char *subject = natsMsg_GetSubject(m);
    const char *reply = natsMsg_GetReply(m);
    topic = to_topic(subject ? subject : "", tbuf, sizeof tbuf);
    if (reply && *reply)
        rt = to_topic(reply, rbuf, sizeof rbuf);
    const char *hv = NULL;
    if (natsMsgHeader_Get(m, HDR_CORRELATION, &hv) == NATS_OK && hv && *hv) {
        size_t hl = strlen(hv);
        corr = hl / 2 <= sizeof cbuf ? cbuf : malloc(hl / 2 + 1);
        if (corr && !hex_decode(hv, corr, &corr_len)) {
            A_LOG(a, LOOM_LOG_DEBUG, "nats: ignoring a malformed correlation header on %s",
                  subject);
            corr_len = 0;
        }
    }
    if (!topic || (reply && *reply && !rt) || (hv && *hv && !corr)) {
        A_LOG(a, LOOM_LOG_ERROR, "nats: out of memory, dropped a message on %s", subject);
        leave(a);
        goto out;
    }
    int len = natsMsg_GetDataLength(m);
    const char *data = natsMsg_GetData(m);
    loom_delivery d = {.token = token,
                       .topic = topic,
                       .data = data ? data : "",
                       .len = len > 0 ? (size_t)len : 0,
                       .response_topic = rt,
                       .correlation = corr_len ? corr : NULL,
                       .correlation_len = corr_len};
    if (a->host.deliver(a->host.core, &d) == LOOM_EOVERLOAD)
        note_drop(a, topic);
    leave(a);

out:
    if (topic != tbuf)
        free(topic);
    if (rt != rbuf)
        free(rt);
    if (corr != cbuf)
        free(corr);
    natsMsg_Destroy(m);
}

/* After a subscription's last on_msg(). */
static void on_complete(void *closure)
{
    nsub *s = closure;
    nats_adapter *a = s->a;
    lock(a);
    s->done = true;
    a->reap = true;
    pthread_cond_broadcast(&a->cv);
    unlock(a);
}

/* ------------------------------------------------------------------------ */
/* The worker                                                                */

static natsStatus build_options(nats_adapter *a)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, (const char **)a->servers, (int)a->n_servers);
    if (s == NATS_OK && a->username)
        s = natsOptions_SetUserInfo(o, a->username, a->password ? a->password : "");
    else if (s == NATS_OK && a->token)
        s = natsOptions_SetToken(o, a->token);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, a->name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, a->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1); /* forever, across the servers */
    if (s == NATS_OK)
        s = natsOptions_SetCustomReconnectDelay(o, reconnect_delay, a);
    if (s == NATS_OK) {
        long long bytes = (long long)a->buffer * BYTES_PER_BUFFERED_MSG;
        /* buffer 0: publish() refuses while disconnected; nats.c wants > 0 */
        s = natsOptions_SetReconnectBufSize(o, bytes <= 0        ? BYTES_PER_BUFFERED_MSG
                                               : bytes > INT_MAX ? INT_MAX
                                                                 : (int)bytes);
    }
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, (int64_t)a->keepalive_s * 1000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, 2);
    if (s == NATS_OK)
        s = natsOptions_SetNoRandomize(o, !a->randomize);
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(o, a->send_asap);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPendingMsgs(o, PENDING_MSGS);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, a);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_connected, a);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_closed, a);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_error, a);
    if (s == NATS_OK && a->tls) {
        s = natsOptions_SetSecure(o, true);
        if (s == NATS_OK && a->tls_ca)
            s = natsOptions_LoadCATrustedCertificates(o, a->tls_ca);
        if (s == NATS_OK && a->tls_cert)
            s = natsOptions_LoadCertificatesChain(o, a->tls_cert, a->tls_key);
        if (s == NATS_OK)
            s = natsOptions_SkipServerVerification(o, !a->tls_verify);
    }
    if (s != NATS_OK) {
        natsOptions_Destroy(o);
        return s;
    }
    a->nopts = o;
    return NATS_OK;
}

/* Schedules the worker's next connection attempt (exponential backoff with
 * jitter); mu held. */
static int schedule_retry_locked(nats_adapter *a)
{
    int delay = jitter_locked(a, a->next_delay_ms);
    a->retry_at = loom__mono_ms() + delay;
    a->next_delay_ms =
        a->next_delay_ms > a->reconnect_max_ms / 2 ? a->reconnect_max_ms : a->next_delay_ms * 2;
    a->need_connect = true;
    pthread_cond_broadcast(&a->cv);
    return delay;
}

static void try_connect(nats_adapter *a)
{
    if (!a->nopts) {
        natsStatus s = build_options(a);
        if (s != NATS_OK) {
            char why[300];
            snprintf(why, sizeof why, "cannot set up the connection: %s", last_error_text(s));
            lock(a);
            a->failed = true;
            unlock(a);
            A_LOG(a, LOOM_LOG_ERROR, "nats: %s: %s", a->servers_text, why);
            a->reported = LOOM_BROKER_FAILED;
            a->host.state_changed(a->host.core, LOOM_BROKER_FAILED, why);
            return;
        }
    }
    /* One pass over the servers, synchronously (bounded by
     * connect_timeout_ms per server): unlike nats.c's "retry on failed
     * connect", it tells why it failed (e.g. an authorization violation). */
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, a->nopts);
    if (s == NATS_OK) {
        /* From here on nats.c reconnects by itself; on_closed() reports if
         * it ever gives up. Queued, so that a loss reported meanwhile by
         * nats.c's callback thread comes after it. */
        lock(a);
        a->nc = nc;
        a->conns_made++;
        push_event_locked(a, EV_CONNECTED, NULL);
        unlock(a);
        return;
    }
    char why[256];
    snprintf(why, sizeof why, "%s", last_error_text(s));
    lock(a);
    int delay = schedule_retry_locked(a);
    unlock(a);
    log_failure(a, why, delay);
}

/* Forgets a connection nats.c closed by itself and schedules a new one. */
static void drop_connection(nats_adapter *a, const char *why)
{
    lock(a);
    natsConnection *nc = a->nc;
    a->nc = NULL;
    a->up = false;
    int64_t deadline = loom__mono_ms() + STOP_WAIT_MS;
    while (a->nc_users > 0 && wait_until_locked(a, deadline)) {
    }
    bool idle = a->nc_users == 0;
    a->next_delay_ms = a->reconnect_min_ms;
    int delay = schedule_retry_locked(a);
    unlock(a);
    if (nc && idle)
        natsConnection_Destroy(nc); /* else leaked: a thread is stuck in it */
    log_failure(a, why, delay);
}

static void handle_event(nats_adapter *a, const conn_event *ev)
{
    if (ev->kind == EV_CONNECTED) {
        char url[sizeof a->url_now] = "";
        lock(a);
        natsConnection *nc = a->nc;
        unlock(a);
        /* The worker is the only thread that replaces or frees nc. */
        if (nc)
            natsConnection_GetConnectedUrl(nc, url, sizeof url);
        lock(a);
        memcpy(a->url_now, url, sizeof url);
        a->up = true;
        a->flush_blocked = false;
        a->fail_count = 0;
        a->next_delay_ms = a->reconnect_min_ms;
        unlock(a);
        A_LOG(a, LOOM_LOG_INFO, "nats: connected to %s", url[0] ? url : a->servers_text);
        if (a->reported != LOOM_BROKER_CONNECTED) {
            a->reported = LOOM_BROKER_CONNECTED;
            a->host.state_changed(a->host.core, LOOM_BROKER_CONNECTED, NULL);
        }
        return;
    }
    lock(a);
    a->up = false;
    unlock(a);
    bool report = a->reported == LOOM_BROKER_CONNECTED;
    if (report) {
        a->reported = LOOM_BROKER_DISCONNECTED;
        A_LOG(a, LOOM_LOG_WARN, "nats: %s; reconnecting", ev->detail);
        a->host.state_changed(a->host.core, LOOM_BROKER_DISCONNECTED, ev->detail);
    }
    if (ev->kind == EV_CLOSED)
        drop_connection(a, ev->detail);
}

/* Confirms the pending subscriptions with one round trip to the server. */
static void flush_pending(nats_adapter *a)
{
    lock(a);
    void **toks = a->pend;
    size_t n = a->n_pend;
    a->pend = NULL;
    a->n_pend = a->cap_pend = 0;
    natsConnection *nc = a->nc;
    if (nc)
        a->nc_users++;
    unlock(a);

    natsStatus s =
        nc ? natsConnection_FlushTimeout(nc, a->connect_timeout_ms) : NATS_CONNECTION_CLOSED;
    natsConnStatus cs = nc ? natsConnection_Status(nc) : NATS_CONN_STATUS_CLOSED;

    lock(a);
    if (nc && --a->nc_users == 0)
        pthread_cond_broadcast(&a->cv);
    if (s != NATS_OK && !(s == NATS_TIMEOUT && cs == NATS_CONN_STATUS_CONNECTED)) {
        /* No connection to confirm them on: nats.c re-sends the
         * subscriptions when it reconnects; confirm them then. */
        a->flush_blocked = true;
        if (a->n_pend == 0) {
            free(a->pend);
            a->pend = toks;
            a->n_pend = a->cap_pend = n;
            unlock(a);
            return;
        }
        void **m = realloc(toks, (n + a->n_pend) * sizeof *m);
        if (m) {
            memcpy(m + n, a->pend, a->n_pend * sizeof *m);
            free(a->pend);
            a->pend = m;
            a->n_pend += n;
            a->cap_pend = a->n_pend;
            unlock(a);
            return;
        }
        s = NATS_NO_MEMORY; /* report these as failed */
    }
    unlock(a);
    loom_err err = s == NATS_OK ? LOOM_OK : s == NATS_TIMEOUT ? LOOM_ETIMEDOUT : LOOM_ENOMEM;
    if (err != LOOM_OK)
        A_LOG(a, LOOM_LOG_WARN, "nats: %zu subscription(s) not confirmed by %s: %s", n,
              a->servers_text, natsStatus_GetText(s));
    for (size_t i = 0; i < n && a->host.subscribed; i++)
        a->host.subscribed(a->host.core, toks[i], err);
    free(toks);
}

/* Nothing of nats.c's will call us any more (mu held). */
static bool quiet_locked(nats_adapter *a)
{
    if (a->closed_cbs != a->conns_made || a->nc_users > 0)
        return false;
    nsub *lists[] = {a->subs, a->dead};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(lists); i++)
        for (nsub *s = lists[i]; s; s = s->next)
            if ((s->ns && !s->done) || s->creating || s->busy > 0)
                return false;
    return true;
}

/* Closes the connection and waits (bounded) for nats.c's last callbacks. */
static void shutdown_connection(nats_adapter *a)
{
    lock(a);
    natsConnection *nc = a->nc;
    a->nc = NULL;
    a->up = false;
    unlock(a);
    if (nc)
        natsConnection_Close(nc); /* closes every subscription too */
    lock(a);
    int64_t deadline = loom__mono_ms() + STOP_WAIT_MS;
    while (!quiet_locked(a) && wait_until_locked(a, deadline)) {
    }
    bool quiet = quiet_locked(a);
    nsub *all = NULL;
    if (quiet) {
        nsub *lists[] = {a->subs, a->dead};
        for (size_t i = 0; i < LOOM__ARRAY_LEN(lists); i++) {
            while (lists[i]) {
                nsub *s = lists[i];
                lists[i] = s->next;
                s->next = all;
                all = s;
            }
        }
        a->subs = a->dead = NULL;
    } else {
        a->leaked = true;
    }
    unlock(a);
    if (!quiet) {
        A_LOG(a, LOOM_LOG_ERROR,
              "nats: %s: the client library did not finish within %d ms; "
              "leaking the adapter rather than freeing memory it may use",
              a->servers_text, STOP_WAIT_MS);
        return;
    }
    if (nc)
        natsConnection_Destroy(nc);
    destroy_list(all);
}

static void *worker_main(void *arg)
{
    nats_adapter *a = arg;
    lock(a);
    while (!a->closing) {
        if (a->ev_n > 0) {
            conn_event ev = a->events[a->ev_head];
            a->ev_head = (a->ev_head + 1) % MAX_EVENTS;
            a->ev_n--;
            unlock(a);
            handle_event(a, &ev);
            lock(a);
            continue;
        }
        if (a->reap) {
            a->reap = false;
            nsub *r = take_reapable(a);
            if (r) {
                unlock(a);
                destroy_list(r);
                lock(a);
            }
            continue;
        }
        if (a->need_connect && !a->failed) {
            if (loom__mono_ms() >= a->retry_at) {
                a->need_connect = false;
                unlock(a);
                try_connect(a);
                lock(a);
            } else {
                wait_until_locked(a, a->retry_at);
            }
            continue;
        }
        if (a->n_pend > 0 && a->up && a->nc && !a->flush_blocked) {
            unlock(a);
            flush_pending(a);
            lock(a);
            continue;
        }
        pthread_cond_wait(&a->cv, &a->mu);
    }
    unlock(a);
    shutdown_connection(a);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Operations                                                                */

static loom_err nats_subscribe(void *self, const char *filter, const char *group, void *token,
                               int qos)
{
    nats_adapter *a = self;
    if (!a || !filter || qos < 0 || qos > 2)
        return LOOM_EINVAL;
    bool oom = false;
    char *subject = to_subject(filter, MAP_FILTER, &oom);
    char *queue = subject && group ? to_queue(group, &oom) : NULL;
    if (!subject || (group && !queue)) {
        free(subject);
        free(queue);
        return oom ? LOOM_ENOMEM : LOOM_EINVAL;
    }
    loom_err err = LOOM_OK;
    nsub *s = NULL;

    lock(a);
    if (!a->nc || !a->up || a->closing) {
        err = LOOM_EUNAVAILABLE;
        goto unlock_out;
    }
    s = find_live(a, filter, group, token);
    if (s && (s->creating || (s->ns && natsSubscription_IsValid(s->ns)))) {
        /* A repeat (the core resubscribes on every CONNECTED): nats.c kept
         * the subscription across the reconnect. Just confirm it. */
        if (!reserve_pend(a)) {
            err = LOOM_ENOMEM;
            goto unlock_out;
        }
        a->pend[a->n_pend++] = token;
        pthread_cond_broadcast(&a->cv);
        goto unlock_out;
    }
    if (s)
        bury(a, s); /* its connection is gone */
    s = calloc(1, sizeof *s);
    if (!s || !(s->filter = strdup(filter)) || (group && !(s->group = strdup(group)))) {
        free_nsub(s);
        err = LOOM_ENOMEM;
        goto unlock_out;
    }
    s->a = a;
    s->token = token;
    s->live = true;
    s->creating = true;
    s->next = a->subs;
    a->subs = s;
    natsConnection *nc = a->nc;
    a->nc_users++;
    unlock(a);

    natsSubscription *ns = NULL;
    natsStatus st = queue ? natsConnection_QueueSubscribe(&ns, nc, subject, queue, on_msg, s)
                          : natsConnection_Subscribe(&ns, nc, subject, on_msg, s);
    bool orphan = false;
    if (st == NATS_OK) {
        /* Set at once: until then a close would not tell us when on_msg()
         * is done with s. */
        orphan = natsSubscription_SetOnCompleteCB(ns, on_complete, s) != NATS_OK;
        if (!orphan)
            (void)natsSubscription_SetPendingLimits(ns, PENDING_MSGS, PENDING_BYTES);
    }
    char why[200] = "";
    if (st != NATS_OK)
        snprintf(why, sizeof why, "%s", last_error_text(st));

    lock(a);
    if (--a->nc_users == 0)
        pthread_cond_broadcast(&a->cv);
    s->creating = false;
    if (st != NATS_OK || orphan) {
        if (s->live)
            bury(a, s);
        for (nsub **pp = &a->dead; *pp; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        if (orphan) {
            /* Closed under us (the connection is closing), so nats.c will
             * not say when its delivery thread is done with s: s is never
             * freed, and on_msg() leaves the adapter alone. */
            atomic_store(&s->orphan, true);
            s->ns = ns;
            s->next = a->orphans;
            a->orphans = s;
        } else {
            free_nsub(s);
        }
        unlock(a);
        A_LOG(a, LOOM_LOG_DEBUG, "nats: cannot subscribe to %s%s%s: %s", subject,
              queue ? " in queue group " : "", queue ? queue : "",
              orphan ? "the connection is closing" : why);
        free(subject);
        free(queue);
        return orphan ? LOOM_EUNAVAILABLE : map_status(st);
    }
    s->ns = ns;
    bool nomem = !reserve_pend(a);
    if (nomem && s->live)
        bury(a, s); /* nothing is kept on failure */
    else if (!nomem)
        a->pend[a->n_pend++] = token;
    if (!s->live) {
        /* unsubscribe() came while it was being created, or no memory */
        s->busy++;
        unlock(a);
        (void)natsSubscription_Unsubscribe(ns);
        lock(a);
        s->busy--;
        a->reap = true;
    }
    if (nomem)
        err = LOOM_ENOMEM;
    pthread_cond_broadcast(&a->cv);

unlock_out:
    unlock(a);
    free(subject);
    free(queue);
    return err;
}

static loom_err nats_unsubscribe(void *self, const char *filter, const char *group, void *token)
{
    nats_adapter *a = self;
    if (!a || !filter)
        return LOOM_EINVAL;
    lock(a);
    nsub *s = find_live(a, filter, group, token);
    if (!s) {
        unlock(a);
        return LOOM_ENOTFOUND;
    }
    bury(a, s);
    natsSubscription *ns = s->ns; /* NULL while subscribe() creates it: it unsubscribes */
    if (ns)
        s->busy++;
    unlock(a);
    if (ns) {
        /* Best effort: on a closed connection the subscription is gone
         * anyway. Its last on_msg() sees live == false. */
        (void)natsSubscription_Unsubscribe(ns);
        lock(a);
        s->busy--;
        a->reap = true;
        pthread_cond_broadcast(&a->cv);
        unlock(a);
    }
    return LOOM_OK;
}

/* A value a NATS header can carry: no control bytes (no CR/LF). */
static bool valid_header_value(const char *v, size_t max)
{
    size_t n = strnlen(v, max + 1);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return false;
    return true;
}

static loom_err nats_publish(void *self, const loom_publish *p)
{
    nats_adapter *a = self;
    if (!a || !p || p->qos < 0 || p->qos > 2 || (p->len > 0 && !p->data) ||
        (p->correlation_len > 0 && !p->correlation) || p->correlation_len > MAX_CORRELATION ||
        (p->status && !valid_header_value(p->status, MAX_STATUS)))
        return LOOM_EINVAL;
    if (p->len > INT_MAX)
        return LOOM_ETOOBIG;
    bool oom = false;
    char *subject = to_subject(p->topic, MAP_TOPIC, &oom);
    char *reply =
        subject && p->response_topic ? to_subject(p->response_topic, MAP_TOPIC, &oom) : NULL;
    if (!subject || (p->response_topic && !reply)) {
        free(subject);
        free(reply);
        return oom ? LOOM_ENOMEM : LOOM_EINVAL;
    }
    /* NATS core has neither retained messages nor QoS: p->retain and
     * p->qos are ignored (the core re-announces and times out itself). */
    loom_err err = LOOM_OK;
    natsMsg *m = NULL;
    char *hex = NULL;
    lock(a);
    natsConnection *nc = a->closing || a->stopped ? NULL : a->nc;
    if (nc)
        a->nc_users++;
    unlock(a);
    if (!nc) {
        err = LOOM_EUNAVAILABLE;
        goto out;
    }
    if (a->buffer == 0 && natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
        err = LOOM_EUNAVAILABLE; /* no offline buffer */
        goto release;
    }
    int64_t max = natsConnection_GetMaxPayload(nc);
    if (max > 0 && (int64_t)p->len > max) {
        err = LOOM_ETOOBIG;
        goto release;
    }
    natsStatus s;
    if (!p->status && p->correlation_len == 0) {
        s = reply ? natsConnection_PublishRequest(nc, subject, reply, p->data, (int)p->len)
                  : natsConnection_Publish(nc, subject, p->data, (int)p->len);
    } else {
        s = natsMsg_Create(&m, subject, reply, p->data, (int)p->len);
        if (s == NATS_OK && p->status)
            s = natsMsgHeader_Set(m, HDR_STATUS, p->status);
        if (s == NATS_OK && p->correlation_len > 0) {
            hex = hex_encode(p->correlation, p->correlation_len);
            s = hex ? natsMsgHeader_Set(m, HDR_CORRELATION, hex) : NATS_NO_MEMORY;
        }
        if (s == NATS_OK)
            s = natsConnection_PublishMsg(nc, m);
    }
    err = map_status(s);
release:
    lock(a);
    if (--a->nc_users == 0)
        pthread_cond_broadcast(&a->cv);
    unlock(a);
out:
    natsMsg_Destroy(m);
    free(hex);
    free(subject);
    free(reply);
    if (err == LOOM_OK)
        loom_msg_release(p->msg);
    return err;
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                                */

static void free_adapter(nats_adapter *a)
{
    if (!a)
        return;
    destroy_list(a->subs);
    destroy_list(a->dead);
    /* a->orphans: never freed, see nats_subscribe() */
    if (a->nopts)
        natsOptions_Destroy(a->nopts);
    for (size_t i = 0; i < a->n_servers; i++)
        free(a->servers[i]);
    free(a->servers);
    free(a->servers_text);
    free(a->name);
    free(a->username);
    if (a->password) {
        explicit_bzero(a->password, strlen(a->password));
        free(a->password);
    }
    if (a->token) {
        explicit_bzero(a->token, strlen(a->token));
        free(a->token);
    }
    free(a->tls_ca);
    free(a->tls_cert);
    free(a->tls_key);
    free(a->pend);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static loom_err nats_init(void **self, const loom_adapter_host *host,
                          const loom_adapter_options *opts)
{
    if (!self || !host || !host->deliver || !host->state_changed || !opts || !opts->url)
        return LOOM_EINVAL;
    *self = NULL;
    nats_adapter *a = calloc(1, sizeof *a);
    if (!a)
        return LOOM_ENOMEM;
    a->host = *host;
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    a->connect_timeout_ms = 5000;
    a->reconnect_min_ms = 250;
    a->reconnect_max_ms = 10000;
    a->buffer = 10000;
    a->keepalive_s = 30;
    a->randomize = true;
    a->send_asap = true;
    a->tls_verify = true;
    a->reported = LOOM_BROKER_DISCONNECTED;
    a->drop_warn_ms = INT64_MIN / 2;
    a->rng = (unsigned)loom__mono_ms() ^ (unsigned)(uintptr_t)a;

    char why[512] = "";
    char *user = NULL, *pass = NULL, *token = NULL;
    loom_err err = parse_url(a, opts->url, &user, &pass, &token, why, sizeof why);
    if (err == LOOM_OK) {
        a->username = user;
        a->password = pass;
        a->token = token;
        user = pass = token = NULL;
        err = read_options(a, opts->options, why, sizeof why);
    }
    free(user);
    free(pass);
    free(token);
    if (err == LOOM_OK && !a->name) {
        if (opts->instance_id && *opts->instance_id) {
            a->name = strdup(opts->instance_id);
        } else {
            char id[33];
            loom__random_id(id);
            a->name = strdup(id);
        }
        if (!a->name)
            err = LOOM_ENOMEM;
    }
    if (err != LOOM_OK) {
        if (err == LOOM_ENOMEM)
            snprintf(why, sizeof why, "out of memory");
        char *shown = redact_url(opts->url);
        A_LOG(a, LOOM_LOG_ERROR, "nats: broker URL '%.300s': %s", shown ? shown : "?", why);
        free(shown);
        free_adapter(a);
        return err;
    }
    /* opts->will_topic is ignored: NATS core has no last will (no
     * LOOM_CAP_WILL); the core's discovery entries expire instead. */
    a->next_delay_ms = a->reconnect_min_ms;
    *self = a;
    return LOOM_OK;
}

static loom_err nats_connect(void *self)
{
    nats_adapter *a = self;
    if (!a)
        return LOOM_EINVAL;
    lock(a);
    if (a->connect_called || a->closing) {
        unlock(a);
        return LOOM_ESTATE;
    }
    /* The worker idles until need_connect: CONNECTING is reported first. */
    int rc = pthread_create(&a->thread, NULL, worker_main, a);
    if (rc != 0) {
        unlock(a);
        A_LOG(a, LOOM_LOG_ERROR, "nats: cannot start a thread: %s", strerror(rc));
        return rc == EAGAIN ? LOOM_EOVERLOAD : LOOM_EIO;
    }
    a->thread_started = true;
    a->connect_called = true;
    unlock(a);
    A_LOG(a, LOOM_LOG_INFO, "nats: connecting to %s%s", a->servers_text, a->tls ? " (TLS)" : "");
    a->reported = LOOM_BROKER_CONNECTING;
    a->host.state_changed(a->host.core, LOOM_BROKER_CONNECTING, NULL);
    lock(a);
    a->need_connect = true;
    a->retry_at = loom__mono_ms();
    pthread_cond_broadcast(&a->cv);
    unlock(a);
    return LOOM_OK;
}

static void nats_close(void *self)
{
    nats_adapter *a = self;
    if (!a)
        return;
    /* The worker closes the connection: natsConnection_Close blocks. */
    lock(a);
    a->closing = true;
    pthread_cond_broadcast(&a->cv);
    unlock(a);
}

static void nats_stop(void *self)
{
    nats_adapter *a = self;
    if (!a)
        return;
    nats_close(a);
    lock(a);
    bool join = a->thread_started;
    a->thread_started = false;
    unlock(a);
    if (join)
        pthread_join(a->thread, NULL);
    lock(a);
    a->stopped = true;
    while (a->active > 0)
        pthread_cond_wait(&a->cv, &a->mu);
    unlock(a);
}

static void nats_fini(void *self)
{
    nats_adapter *a = self;
    if (!a)
        return;
    lock(a);
    bool stopped = a->stopped && !a->thread_started;
    unlock(a);
    if (!stopped)
        nats_stop(a);
    if (a->leaked)
        return; /* see shutdown_connection() */
    free_adapter(a);
}

const loom_adapter_ops loom__nats_adapter = {
    .abi_version = LOOM_ADAPTER_ABI_VERSION,
    .scheme = "nats",
    .caps = LOOM_CAP_GROUPS | LOOM_CAP_PROPERTIES,
    .init = nats_init,
    .connect = nats_connect,
    .subscribe = nats_subscribe,
    .unsubscribe = nats_unsubscribe,
    .publish = nats_publish,
    .close = nats_close,
    .stop = nats_stop,
    .fini = nats_fini,
};

const loom_adapter_ops loom__nats_tls_adapter = {
    .abi_version = LOOM_ADAPTER_ABI_VERSION,
    .scheme = "tls",
    .caps = LOOM_CAP_GROUPS | LOOM_CAP_PROPERTIES,
    .init = nats_init,
    .connect = nats_connect,
    .subscribe = nats_subscribe,
    .unsubscribe = nats_unsubscribe,
    .publish = nats_publish,
    .close = nats_close,
    .stop = nats_stop,
    .fini = nats_fini,
};
