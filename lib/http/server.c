/* The HTTP server seam (server.h) on libmicrohttpd 0.9.75.
 *
 * Engine setup: internal polling threads (a pool of cfg.threads, each with
 * its own poll loop; see loom__hs_start for why not epoll), suspend/resume
 * enabled (which brings the
 * inter-thread channel that wakes a loop when another thread resumes a
 * connection), a per-connection memory limit that bounds the request line
 * and headers (MHD answers 431 and closes when they do not fit), an idle
 * timeout and a connection limit.
 *
 * Per request state lives in a loom__hs_req allocated by the URI log
 * callback (the first thing MHD calls for a request, with the raw target
 * before any decoding) and freed by the request-completed callback, which
 * MHD calls for every request that reached the URI log callback.
 *
 * Strictness: MHD runs lenient (MHD_OPTION_STRICT_FOR_CLIENT 0) and the
 * bridge applies RFC 9112's rules itself (Host, field names, HTTP/1.0
 * framing, header size), so that those errors get its JSON body: in strict
 * mode MHD 0.9.75 answers a missing Host with its own HTML 400, written
 * twice. What MHD still answers itself (HTML): a request line or field
 * line it cannot parse, and headers beyond the memory pool (max_header +
 * POOL_SLACK); in the last ~150 bytes below that limit not even the
 * bridge's 431 fits, and the connection is closed without an answer.
 *
 * Suspension race: the application may call loom__hs_resume() from another
 * thread before the access handler that returned LOOM__HS_SUSPEND has
 * suspended the connection (MHD forbids resuming a connection that is not
 * suspended). req->mu orders the two: whoever comes second acts. MHD's own
 * locks are taken under req->mu, never the other way round.
 */
#define _GNU_SOURCE
#include "http/server.h"

#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "core/util.h"

/* Bytes of an over-large body read (and dropped) to answer 413 cleanly;
 * beyond that (or max_body if larger) the connection is closed instead. */
#define DISCARD_MIN (1024 * 1024)
/* Room for MHD's own bookkeeping and our response headers in the
 * per-connection memory pool, on top of max_header. */
#define POOL_SLACK 4096

struct loom__hs {
    struct MHD_Daemon *d;
    loom__hs_config cfg;
    char *listen; /* cfg.listen points here */
    int port;
    MHD_socket quiesced_fd; /* MHD_INVALID_SOCKET unless quiesced */
    size_t discard_max;
    atomic_long parked;
    atomic_long active;
};

enum phase {
    PH_NEW = 0,   /* headers not seen yet */
    PH_BODY,      /* reading the body */
    PH_HANDLED,   /* on_request ran and suspended: waiting for resume */
    PH_RESPONDED, /* a response was queued */
};

typedef struct hs_conn hs_conn;

struct loom__hs_req {
    loom__hs *srv;
    hs_conn *owner; /* the connection that tracks it, or NULL */
    struct MHD_Connection *conn;
    char *target;
    const char *method;  /* MHD's, valid for the request */
    const char *version; /* "HTTP/1.1", MHD's, valid for the request */
    enum phase phase;
    bool seen;      /* on_headers ran: on_done is owed */
    bool responded; /* MHD accepted a response */
    bool early;     /* on_headers answered a request without a body */
    char *body;
    size_t body_len, body_cap;
    bool too_large;
    size_t discarded;
    loom__hs_resp *resp;
    void *user;
    /* Suspension handshake, under mu. */
    pthread_mutex_t mu;
    bool suspended;        /* MHD_suspend_connection was called, not resumed yet */
    bool resume_requested; /* loom__hs_resume came first */
    bool parked;           /* counted in srv->parked */
};

struct loom__hs_resp {
    struct MHD_Response *mr;
    int status;
};

/* Per connection: the request between the URI callback and completion.
 * MHD skips the completed callback for some requests it rejects while
 * parsing (query arguments that overflow the memory pool): such a request
 * is released when the next one starts or when the connection closes. */
struct hs_conn {
    loom__hs_req *current;
};

/* --- responses ------------------------------------------------------------- */

loom__hs_resp *loom__hs_resp_new(int status, const char *content_type, char *body, size_t len)
{
    loom__hs_resp *r = malloc(sizeof *r);
    struct MHD_Response *mr =
        r ? (body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                  : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT))
          : NULL;
    if (!mr) {
        free(body);
        free(r);
        return NULL;
    }
    r->mr = mr;
    r->status = status;
    if (content_type &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
        loom__hs_resp_free(r);
        return NULL;
    }
    return r;
}

bool loom__hs_resp_header(loom__hs_resp *resp, const char *name, const char *value)
{
    return resp && name && value && MHD_add_response_header(resp->mr, name, value) == MHD_YES;
}

void loom__hs_resp_close(loom__hs_resp *resp)
{
    if (resp)
        MHD_add_response_header(resp->mr, MHD_HTTP_HEADER_CONNECTION, "close");
}

void loom__hs_resp_free(loom__hs_resp *resp)
{
    if (!resp)
        return;
    MHD_destroy_response(resp->mr);
    free(resp);
}

void loom__hs_respond(loom__hs_req *r, loom__hs_resp *resp)
{
    loom__hs_resp_free(r->resp);
    r->resp = resp;
}

/* Queues the response the application set; closes the connection when
 * there is none. */
static enum MHD_Result queue(loom__hs_req *r)
{
    loom__hs_resp *resp = r->resp;
    r->resp = NULL;
    r->phase = PH_RESPONDED;
    if (!resp)
        return MHD_NO;
    enum MHD_Result q = MHD_queue_response(r->conn, (unsigned)resp->status, resp->mr);
    loom__hs_resp_free(resp);
    if (q == MHD_YES)
        r->responded = true;
    return q;
}

/* --- requests -------------------------------------------------------------- */

const char *loom__hs_req_method(const loom__hs_req *r)
{
    return r->method;
}
const char *loom__hs_req_target(const loom__hs_req *r)
{
    return r->target;
}

const char *loom__hs_req_header(const loom__hs_req *r, const char *name)
{
    return r->conn ? MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name) : NULL;
}

typedef struct header_count {
    const char *name;
    size_t len;
    bool lookalike; /* count longer names with this prefix instead */
    unsigned n;
} header_count;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    (void)value;
    header_count *c = cls;
    if (key && strncasecmp(key, c->name, c->len) == 0 && (key[c->len] != '\0') == c->lookalike)
        c->n++;
    return MHD_YES;
}

static unsigned count_headers(const loom__hs_req *r, const char *name, bool lookalike)
{
    header_count c = {name, name ? strlen(name) : 0, lookalike, 0};
    if (r->conn && name)
        MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_header, &c);
    return c.n;
}

unsigned loom__hs_req_header_count(const loom__hs_req *r, const char *name)
{
    return count_headers(r, name, false);
}

unsigned loom__hs_req_header_lookalikes(const loom__hs_req *r, const char *name)
{
    return count_headers(r, name, true);
}

const char *loom__hs_req_version(const loom__hs_req *r)
{
    return r->version ? r->version : "";
}

typedef struct header_scan {
    size_t bytes;
    bool bad_name;
} header_scan;

/* RFC 9110 5.1: a field name is a token (no whitespace: "Host : x" is not
 * a Host header, and must not pass as some other header either). */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    header_scan *h = cls;
    h->bytes += (key ? strlen(key) : 0) + (value ? strlen(value) : 0) + 4; /* ": " CRLF */
    if (!key || !is_token(key))
        h->bad_name = true;
    return MHD_YES;
}

size_t loom__hs_req_header_bytes(const loom__hs_req *r, bool *bad_name)
{
    header_scan h = {0, false};
    if (r->conn)
        MHD_get_connection_values(r->conn, MHD_HEADER_KIND, scan_header, &h);
    *bad_name = h.bad_name;
    return h.bytes;
}

const char *loom__hs_req_body(const loom__hs_req *r, size_t *len)
{
    *len = r->body ? r->body_len : 0;
    return r->body;
}

bool loom__hs_req_body_too_large(const loom__hs_req *r)
{
    return r->too_large;
}
void loom__hs_req_set_user(loom__hs_req *r, void *user)
{
    r->user = user;
}
void *loom__hs_req_user(const loom__hs_req *r)
{
    return r->user;
}

void loom__hs_resume(loom__hs_req *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    } else {
        r->resume_requested = true;
    }
    pthread_mutex_unlock(&r->mu);
}

static void req_free(loom__hs_req *r)
{
    loom__hs_resp_free(r->resp);
    free(r->body);
    free(r->target);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Appends upload data; false to close the connection. */
static bool take_body(loom__hs *s, loom__hs_req *r, const char *data, size_t n)
{
    if (r->too_large) {
        r->discarded += n;
        return r->discarded <= s->discard_max;
    }
    if (n > s->cfg.max_body - r->body_len) {
        r->too_large = true;
        r->discarded = r->body_len + n;
        free(r->body);
        r->body = NULL;
        r->body_len = r->body_cap = 0;
        return r->discarded <= s->discard_max;
    }
    size_t need = r->body_len + n + 1;
    if (need > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < need)
            cap *= 2;
        if (cap > s->cfg.max_body + 1)
            cap = s->cfg.max_body + 1;
        char *b = realloc(r->body, cap);
        if (!b)
            return false;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return true;
}

/* True when the request announces a body (Content-Length > 0 or a
 * Transfer-Encoding). */
static bool expects_body(const loom__hs_req *r)
{
    const char *cl = loom__hs_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    long long n = 0;
    return loom__hs_req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
           (cl && (!loom__parse_int(cl, 0, LLONG_MAX, &n) || n > 0));
}

/* Sizes the body buffer from Content-Length, up to PRESIZE_MAX: beyond
 * that it grows as bytes arrive, so that a client announcing a large body
 * and sending nothing does not pin max_body bytes. */
#define PRESIZE_MAX (64 * 1024)
static void presize_body(loom__hs *s, loom__hs_req *r)
{
    const char *cl = loom__hs_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    long long n;
    long long max = s->cfg.max_body < PRESIZE_MAX ? (long long)s->cfg.max_body : PRESIZE_MAX;
    if (cl && loom__parse_int(cl, 1, max, &n)) {
        r->body = malloc((size_t)n + 1);
        if (r->body) {
            r->body_cap = (size_t)n + 1;
            r->body[0] = '\0';
        }
    }
}

/* --- MHD callbacks ----------------------------------------------------------- */

static void unpark(loom__hs *s, loom__hs_req *r);

/* Ends a request: on_done when the application saw it, then frees it. */
static void finish_req(loom__hs *s, loom__hs_req *r)
{
    if (r->owner && r->owner->current == r)
        r->owner->current = NULL;
    unpark(s, r);
    if (r->seen) {
        s->cfg.cb.on_done(s->cfg.user, r, r->responded);
        atomic_fetch_sub(&s->active, 1);
    }
    req_free(r);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    loom__hs *s = cls;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    hs_conn *hc = ci ? ci->socket_context : NULL;
    if (hc && hc->current) /* the previous request never completed */
        finish_req(s, hc->current);
    loom__hs_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->srv = s;
    r->target = strdup(uri ? uri : "");
    if (!r->target) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    if (hc) {
        r->owner = hc;
        hc->current = r;
    }
    return r;
}

/* The request leaves the parked count: when the handler runs again after
 * the resume, or when MHD closes the resumed connection without calling it
 * (the client went away meanwhile). Taking r->mu also waits for a resuming
 * thread that may still hold it: the request is freed soon after. */
static void unpark(loom__hs *s, loom__hs_req *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->parked) {
        r->parked = false;
        atomic_fetch_sub(&s->parked, 1);
    }
    pthread_mutex_unlock(&r->mu);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)url;
    loom__hs *s = cls;
    loom__hs_req *r = *con_cls;
    if (!r)
        return MHD_NO; /* out of memory at the URI callback */
    switch (r->phase) {
    case PH_NEW: {
        r->conn = c;
        r->method = method;
        r->version = version;
        r->seen = true;
        atomic_fetch_add(&s->active, 1);
        loom__hs_action act = s->cfg.cb.on_headers(s->cfg.user, r);
        if (act == LOOM__HS_RESPONDED) {
            /* MHD closes the connection after a response queued before the
             * request is complete; without a body it is complete at the
             * next call, so answer there and keep the connection. */
            if (!expects_body(r))
                r->early = true;
            else
                return queue(r);
        }
        r->phase = PH_BODY;
        if (!r->early)
            presize_body(s, r);
        return MHD_YES;
    }
    case PH_BODY: {
        if (r->early) {
            *upload_data_size = 0;
            return queue(r);
        }
        if (*upload_data_size) {
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            return take_body(s, r, upload_data, n) ? MHD_YES : MHD_NO;
        }
        r->phase = PH_HANDLED;
        loom__hs_action act = s->cfg.cb.on_request(s->cfg.user, r);
        if (act == LOOM__HS_RESPONDED)
            return queue(r);
        if (act != LOOM__HS_SUSPEND)
            return MHD_NO;
        pthread_mutex_lock(&r->mu);
        if (r->resume_requested) {
            /* Answered before we could park it: answer now. */
            r->resume_requested = false;
            pthread_mutex_unlock(&r->mu);
            s->cfg.cb.on_resume(s->cfg.user, r);
            return queue(r);
        }
        atomic_fetch_add(&s->parked, 1);
        r->parked = true;
        r->suspended = true;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    case PH_HANDLED:
        /* Called again after MHD_resume_connection. The resuming thread
         * may still hold r->mu: wait for it, since the request (and its
         * mutex) is freed soon after we answer. */
        unpark(s, r);
        *upload_data_size = 0;
        s->cfg.cb.on_resume(s->cfg.user, r);
        return queue(r);
    case PH_RESPONDED:
    default:
        *upload_data_size = 0;
        return MHD_YES;
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    loom__hs *s = cls;
    loom__hs_req *r = *con_cls;
    *con_cls = NULL;
    if (r)
        finish_req(s, r);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    loom__hs *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        hs_conn *hc = *socket_context;
        *socket_context = NULL;
        if (hc && hc->current)
            finish_req(s, hc->current);
        free(hc);
        return;
    }
    /* Request/reply traffic: never wait for Nagle. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int one = 1;
    if (ci)
        setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *socket_context = calloc(1, sizeof(hs_conn)); /* NULL: untracked, still served */
}

static void on_log(void *cls, const char *fmt, va_list ap)
{
    loom__hs *s = cls;
    if (!s->cfg.cb.log)
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (n)
        s->cfg.cb.log(s->cfg.user, line);
}

/* --- start / stop -------------------------------------------------------------- */

/* Splits "HOST:PORT" / "[V6]:PORT" and resolves it (numeric port 0..65535). */
static loom_err resolve(const char *listen, struct sockaddr_storage *ss, socklen_t *sslen,
                        char *err, size_t errlen)
{
    char host[256];
    const char *port;
    if (!listen || !*listen) {
        snprintf(err, errlen, "empty listen address");
        return LOOM_EINVAL;
    }
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':' || (size_t)(close - listen - 1) >= sizeof host) {
            snprintf(err, errlen, "bad listen address '%s'", listen);
            return LOOM_EINVAL;
        }
        memcpy(host, listen + 1, (size_t)(close - listen - 1));
        host[close - listen - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(listen, ':');
        if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host) {
            snprintf(err, errlen, "bad listen address '%s' (expected HOST:PORT)", listen);
            return LOOM_EINVAL;
        }
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        port = colon + 1;
    }
    long long p;
    if (!loom__parse_int(port, 0, 65535, &p)) {
        snprintf(err, errlen, "bad port in listen address '%s'", listen);
        return LOOM_EINVAL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(rc));
        if (res)
            freeaddrinfo(res);
        return LOOM_EIO;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return LOOM_OK;
}

loom_err loom__hs_start(loom__hs **out, const loom__hs_config *cfg, char *errbuf, size_t errbuf_len)
{
    char scratch[8];
    if (!errbuf || !errbuf_len) {
        errbuf = scratch;
        errbuf_len = sizeof scratch;
    }
    errbuf[0] = '\0';
    if (!out || !cfg || !cfg->cb.on_headers || !cfg->cb.on_request || !cfg->cb.on_resume ||
        !cfg->cb.on_done)
        return LOOM_EINVAL;
    *out = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    loom_err err = resolve(cfg->listen, &ss, &sslen, errbuf, errbuf_len);
    if (err != LOOM_OK)
        return err;
    loom__hs *s = calloc(1, sizeof *s);
    if (!s || !(s->listen = strdup(cfg->listen))) {
        free(s);
        return LOOM_ENOMEM;
    }
    s->cfg = *cfg;
    s->cfg.listen = s->listen;
    s->quiesced_fd = MHD_INVALID_SOCKET;
    s->discard_max = cfg->max_body > DISCARD_MIN ? cfg->max_body : DISCARD_MIN;
    /* poll(2), not epoll: libmicrohttpd 0.9.75's edge-triggered epoll loop
     * misses the write event for the 431 it queues when a request's query
     * arguments overflow the connection's memory pool, so such a connection
     * hangs until some other event or the idle timeout. The level-triggered
     * poll loop answers at once, and measured as fast here (wrk -t2 -c64:
     * within noise of epoll, ~100 k command round trips/s). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)(cfg->threads ? cfg->threads : 1), MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(cfg->max_connections ? cfg->max_connections : 1), MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(cfg->max_header + POOL_SLACK), MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_STRICT_FOR_CLIENT, (int)0, MHD_OPTION_END);
    (void)sslen;
    if (!s->d) {
        snprintf(errbuf, errbuf_len, "cannot listen on %s", cfg->listen);
        free(s->listen);
        free(s);
        return LOOM_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    *out = s;
    return LOOM_OK;
}

int loom__hs_port(const loom__hs *s)
{
    return s ? s->port : 0;
}

void loom__hs_quiesce(loom__hs *s)
{
    if (s && s->d && s->quiesced_fd == MHD_INVALID_SOCKET)
        s->quiesced_fd = MHD_quiesce_daemon(s->d);
}

long loom__hs_parked(const loom__hs *s)
{
    return s ? atomic_load(&s->parked) : 0;
}
long loom__hs_active(const loom__hs *s)
{
    return s ? atomic_load(&s->active) : 0;
}

static void nap_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

void loom__hs_stop(loom__hs *s, int wait_ms)
{
    if (!s)
        return;
    loom__hs_quiesce(s);
    /* Let answered requests go out, within wait_ms. Parked requests get
     * longer: the engine aborts when stopped with a connection still
     * suspended, so the application must have resumed them all (the
     * engine itself processes resumed ones at stop). */
    int64_t now = loom__mono_ms();
    int64_t deadline = now + wait_ms, parked_deadline = now + wait_ms + 10000;
    for (;;) {
        long parked = atomic_load(&s->parked), active = atomic_load(&s->active);
        now = loom__mono_ms();
        if ((parked == 0 && (active == 0 || now >= deadline)) || now >= parked_deadline)
            break;
        nap_ms(2);
    }
    if (atomic_load(&s->parked) > 0 && s->cfg.cb.log) {
        char line[96];
        snprintf(line, sizeof line, "stopping with %ld suspended request(s) not answered",
                 atomic_load(&s->parked));
        s->cfg.cb.log(s->cfg.user, line);
    }
    MHD_stop_daemon(s->d);
    if (s->quiesced_fd != MHD_INVALID_SOCKET)
        close(s->quiesced_fd);
    free(s->listen);
    free(s);
}
