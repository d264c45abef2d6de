#define _GNU_SOURCE
#include "support/httpload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define RBUF 8192

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum cstate { C_IDLE, C_CONNECTING, C_SENDING, C_READING, C_PAUSED };

typedef struct conn {
    int fd;
    enum cstate st;
    size_t sent;       /* bytes of the request written */
    int64_t since;     /* request start (ms) */
    int64_t resume_at; /* C_PAUSED: when to send again */
    char buf[RBUF];
    size_t got;
} conn;

struct t_load {
    t_load_cfg cfg;
    char *req;
    size_t req_len;
    pthread_t thread;
    atomic_bool stopping;
    pthread_mutex_t mu; /* res */
    t_load_result res;
    conn *c;
};

static int connect_nb(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void count(t_load *l, void (*fn)(t_load_result *, long, const char *), long v, const char *s)
{
    pthread_mutex_lock(&l->mu);
    fn(&l->res, v, s);
    pthread_mutex_unlock(&l->mu);
}

static void add_sent(t_load_result *r, long v, const char *s)
{
    (void)v;
    (void)s;
    r->sent++;
}
static void add_hung(t_load_result *r, long v, const char *s)
{
    (void)v;
    (void)s;
    r->hung++;
}
static void add_err(t_load_result *r, long v, const char *s)
{
    (void)v;
    (void)s;
    r->conn_errors++;
}

/* Parses a complete response in c->buf: its length (head + body), status,
 * Retry-After and Connection: close. 0 while incomplete, -1 malformed. */
static long parse_response(const char *buf, size_t got, size_t cap, int *status, bool *retry_after,
                           bool *close_after, const char **body, size_t *body_len)
{
    const char *end = memmem(buf, got, "\r\n\r\n", 4);
    if (!end)
        return got >= cap ? -1 : 0;
    size_t head = (size_t)(end - buf) + 4;
    if (got < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(buf + 9);
    *retry_after = false;
    *close_after = false;
    long clen = 0;
    const char *p = memchr(buf, '\n', head); /* the end of the status line */
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
        size_t n = eol ? (size_t)(eol - line) : (size_t)(end - line);
        if (n >= 15 && strncasecmp(line, "Content-Length:", 15) == 0)
            clen = strtol(line + 15, NULL, 10);
        else if (n >= 12 && strncasecmp(line, "Retry-After:", 12) == 0)
            *retry_after = true;
        else if (n >= 11 && strncasecmp(line, "Connection:", 11) == 0 &&
                 memmem(line, n, "close", 5))
            *close_after = true;
        p = eol;
    }
    if (clen < 0 || (size_t)clen > cap - head)
        return -1;
    if (got < head + (size_t)clen)
        return 0;
    *body = buf + head;
    *body_len = (size_t)clen;
    return (long)(head + (size_t)clen);
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->st = C_IDLE;
    c->got = 0;
    c->sent = 0;
}

static void answered(t_load *l, conn *c, int status, bool retry_after, const char *body,
                     size_t body_len)
{
    int64_t lat = now_ms() - c->since;
    pthread_mutex_lock(&l->mu);
    t_load_result *r = &l->res;
    r->answered++;
    if (status >= 0 && status < 600)
        r->status[status]++;
    if (status == 503 && retry_after)
        r->retry_after_503++;
    if (lat > r->max_latency_ms)
        r->max_latency_ms = lat;
    int k = status == 500 ? 0 : status == 503 ? 1 : status == 504 ? 2 : -1;
    if (k >= 0 && !r->sample[k][0]) {
        size_t n = body_len < sizeof r->sample[k] - 1 ? body_len : sizeof r->sample[k] - 1;
        memcpy(r->sample[k], body, n);
        r->sample[k][n] = '\0';
    }
    pthread_mutex_unlock(&l->mu);
}

static void start_request(t_load *l, conn *c)
{
    if (c->fd < 0) {
        c->fd = connect_nb(l->cfg.port);
        if (c->fd < 0) {
            count(l, add_err, 0, NULL);
            c->st = C_PAUSED;
            c->resume_at = now_ms() + 10;
            return;
        }
        c->st = C_CONNECTING;
    } else {
        c->st = C_SENDING;
    }
    c->sent = 0;
    c->got = 0;
    c->since = now_ms();
    count(l, add_sent, 0, NULL);
}

static void *load_main(void *arg)
{
    t_load *l = arg;
    int n = l->cfg.connections;
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    if (!pf)
        return NULL;
    for (;;) {
        bool stopping = atomic_load(&l->stopping);
        int64_t now = now_ms();
        int busy = 0;
        for (int i = 0; i < n; i++) {
            conn *c = &l->c[i];
            if (c->st == C_PAUSED && now >= c->resume_at)
                c->st = C_IDLE;
            if (c->st == C_IDLE && !stopping)
                start_request(l, c);
            if ((c->st == C_CONNECTING || c->st == C_SENDING || c->st == C_READING) &&
                now - c->since > l->cfg.request_timeout_ms) {
                count(l, add_hung, 0, NULL);
                conn_close(c);
            }
            pf[i].fd = c->fd;
            pf[i].events = 0;
            pf[i].revents = 0;
            if (c->st == C_CONNECTING || c->st == C_SENDING)
                pf[i].events = POLLOUT;
            else if (c->st == C_READING)
                pf[i].events = POLLIN;
            else
                pf[i].fd = -1;
            if (c->st == C_CONNECTING || c->st == C_SENDING || c->st == C_READING)
                busy++;
        }
        if (stopping && busy == 0)
            break;
        int k = poll(pf, (nfds_t)n, 20);
        if (k < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n && k > 0; i++) {
            conn *c = &l->c[i];
            if (pf[i].fd < 0 || !pf[i].revents)
                continue;
            if (c->st == C_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    count(l, add_err, 0, NULL);
                    conn_close(c);
                    c->st = C_PAUSED;
                    c->resume_at = now_ms() + 10;
                    continue;
                }
                c->st = C_SENDING;
            }
            if (c->st == C_SENDING) {
                ssize_t w = send(c->fd, l->req + c->sent, l->req_len - c->sent, MSG_NOSIGNAL);
                if (w < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (w <= 0) {
                    count(l, add_err, 0, NULL);
                    conn_close(c);
                    continue;
                }
                c->sent += (size_t)w;
                if (c->sent == l->req_len)
                    c->st = C_READING;
                continue;
            }
            if (c->st == C_READING) {
                ssize_t r = recv(c->fd, c->buf + c->got, RBUF - c->got, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (r <= 0) {
                    count(l, add_err, 0, NULL);
                    conn_close(c);
                    continue;
                }
                c->got += (size_t)r;
                int status;
                bool ra, cl;
                const char *body = NULL;
                size_t blen = 0;
                long used = parse_response(c->buf, c->got, RBUF, &status, &ra, &cl, &body, &blen);
                if (used == 0)
                    continue;
                if (used < 0) {
                    count(l, add_err, 0, NULL);
                    conn_close(c);
                    continue;
                }
                answered(l, c, status, ra, body, blen);
                if (cl || (size_t)used != c->got) {
                    conn_close(c); /* closing, or pipelined garbage */
                } else {
                    c->got = 0;
                    c->st = C_IDLE;
                }
                if (l->cfg.pause_ms > 0) {
                    c->st = C_PAUSED;
                    c->resume_at = now_ms() + l->cfg.pause_ms;
                }
            }
        }
    }
    free(pf);
    return NULL;
}

t_load *t_load_start(const t_load_cfg *cfg)
{
    if (cfg->connections < 1 || cfg->connections > T_LOAD_MAX_CONNS)
        fail_msg("t_load_start: 1 to %d connections", T_LOAD_MAX_CONNS);
    t_load *l = calloc(1, sizeof *l);
    if (!l)
        fail_msg("out of memory");
    l->cfg = *cfg;
    size_t blen = cfg->body ? strlen(cfg->body) : 0;
    int rc = cfg->body ? asprintf(&l->req,
                                  "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                                  "\r\n%s",
                                  cfg->method, cfg->path, blen, cfg->body)
                       : asprintf(&l->req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", cfg->method,
                                  cfg->path);
    if (rc < 0)
        fail_msg("out of memory");
    l->req_len = strlen(l->req);
    l->c = calloc((size_t)cfg->connections, sizeof *l->c);
    if (!l->c)
        fail_msg("out of memory");
    for (int i = 0; i < cfg->connections; i++) {
        l->c[i].fd = -1;
        l->c[i].st = C_IDLE;
    }
    pthread_mutex_init(&l->mu, NULL);
    if (pthread_create(&l->thread, NULL, load_main, l) != 0)
        fail_msg("t_load_start: cannot start a thread");
    return l;
}

void t_load_peek(t_load *l, t_load_result *out)
{
    pthread_mutex_lock(&l->mu);
    *out = l->res;
    pthread_mutex_unlock(&l->mu);
}

void t_load_stop(t_load *l, t_load_result *out)
{
    atomic_store(&l->stopping, true);
    pthread_join(l->thread, NULL);
    for (int i = 0; i < l->cfg.connections; i++)
        if (l->c[i].fd >= 0)
            close(l->c[i].fd);
    *out = l->res;
    pthread_mutex_destroy(&l->mu);
    free(l->c);
    free(l->req);
    free(l);
}

int t_http_raw(int port, const char *request, size_t request_len, int timeout_ms, char *head,
               size_t head_len, char *body, size_t body_len)
{
    enum { MAX_RESPONSE = 16 * 1024 * 1024 };
    if (head && head_len)
        head[0] = '\0';
    if (body && body_len)
        body[0] = '\0';
    int fd = connect_nb(port);
    if (fd < 0)
        return 0;
    int64_t deadline = now_ms() + timeout_ms;
    size_t sent = 0, got = 0, cap = RBUF;
    char *buf = malloc(cap);
    int status = 0;
    while (buf) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = sent < request_len ? POLLOUT : POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        if (sent < request_len) {
            ssize_t w = send(fd, request + sent, request_len - sent, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (w <= 0)
                sent = request_len; /* the server closed: read what it said */
            else
                sent += (size_t)w;
            continue;
        }
        if (got == cap) {
            char *nb = cap < MAX_RESPONSE ? realloc(buf, cap * 2) : NULL;
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        bool ra, cl;
        const char *b = NULL;
        size_t blen = 0;
        long used = parse_response(buf, got, MAX_RESPONSE, &status, &ra, &cl, &b, &blen);
        if (used <= 0) {
            status = 0;
            if (used < 0)
                break;
            continue;
        }
        const char *end = memmem(buf, got, "\r\n\r\n", 4);
        if (head && head_len) {
            size_t n = (size_t)(end - buf);
            n = n < head_len - 1 ? n : head_len - 1;
            memcpy(head, buf, n);
            head[n] = '\0';
        }
        if (body && body_len) {
            size_t n = blen < body_len - 1 ? blen : body_len - 1;
            memcpy(body, b, n);
            body[n] = '\0';
        }
        break;
    }
    close(fd);
    free(buf);
    return status;
}

long t_rss_kib(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = atol(line + 6);
            break;
        }
    fclose(f);
    return kib;
}
