/* Internal: a small HTTP/1.1 server seam over libmicrohttpd, so the bridge
 * (bridge.c) never sees an MHD type and the engine could be replaced.
 *
 * Model. The server calls the application back on its own threads (a small
 * pool, each with its own poll loop), at most one callback at a time per
 * request:
 *   on_headers  the request line and headers are in. Respond now (e.g. 404,
 *               401, 413 from Content-Length, 415) or continue: the body is
 *               then read into memory, up to max_body bytes.
 *   on_request  the whole body is in (or it was too large: see
 *               loom__hs_req_body_too_large). Respond now, or suspend.
 *   on_resume   after loom__hs_resume() of a suspended request: respond.
 *   on_done     the request is over (answered, or the connection was lost).
 *               The request must not be used afterwards.
 * A request answered in on_headers while a body is on the way closes the
 * connection after the response (the unread body cannot be skipped safely);
 * without a body the connection stays open for the next request.
 * on_done comes exactly once for every request that reached on_headers,
 * also when the connection is lost, including while suspended (then after
 * the resume).
 *
 * Suspension. on_request may return LOOM__HS_SUSPEND; the connection then
 * holds no server thread until loom__hs_resume(req) is called, from any
 * thread, exactly once. Resuming before the server has actually parked the
 * connection is fine (the server notices and answers at once): the caller
 * does not have to order the two.
 *
 * Limits. max_header bounds the memory for the request line and headers of
 * one request; a request over it is answered 431 by the engine and the
 * connection is closed. idle_timeout_s closes a connection that makes no
 * progress (a slow or stalled client) without holding a thread. Over
 * max_connections the server stops accepting: new connections wait in the
 * kernel's backlog until a slot frees.
 */
#ifndef LOOM_HTTP_SERVER_H
#define LOOM_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "loom.h"

typedef struct loom__hs loom__hs;
typedef struct loom__hs_req loom__hs_req;
typedef struct loom__hs_resp loom__hs_resp;

typedef enum loom__hs_action {
    LOOM__HS_CONTINUE = 0, /* on_headers: read the body, then call on_request */
    LOOM__HS_RESPONDED,    /* a response was set with loom__hs_respond() */
    LOOM__HS_SUSPEND,      /* on_request: park; loom__hs_resume() comes later */
} loom__hs_action;

typedef struct loom__hs_callbacks {
    loom__hs_action (*on_headers)(void *user, loom__hs_req *req);
    loom__hs_action (*on_request)(void *user, loom__hs_req *req);
    /* Must respond (loom__hs_respond); the connection is closed otherwise. */
    void (*on_resume)(void *user, loom__hs_req *req);
    /* responded: a response was handed to the engine for this request. */
    void (*on_done)(void *user, loom__hs_req *req, bool responded);
    /* Engine diagnostics (one line, no newline), may be NULL. */
    void (*log)(void *user, const char *line);
} loom__hs_callbacks;

typedef struct loom__hs_config {
    const char *listen; /* "HOST:PORT" or "[V6]:PORT"; port 0 = any free port */
    unsigned threads;   /* >= 1 */
    size_t max_body;    /* bytes of request body kept; more is "too large" */
    size_t max_header;  /* bytes for the request line and headers */
    unsigned max_connections;
    unsigned idle_timeout_s;
    loom__hs_callbacks cb;
    void *user;
} loom__hs_config;

/* Creates and starts a server (it listens when this returns LOOM_OK).
 * LOOM_EINVAL for a bad listen address, LOOM_EIO when it cannot be bound
 * (errbuf says why), LOOM_ENOMEM. cfg is copied. */
loom_err loom__hs_start(loom__hs **out, const loom__hs_config *cfg, char *errbuf,
                        size_t errbuf_len);

/* The TCP port bound. */
int loom__hs_port(const loom__hs *s);

/* Stops accepting new connections (existing ones keep being served). */
void loom__hs_quiesce(loom__hs *s);

/* Requests currently parked (suspended or resumed but not yet answered). */
long loom__hs_parked(const loom__hs *s);

/* Requests between their first callback and on_done. */
long loom__hs_active(const loom__hs *s);

/* Closes every connection and joins the server's threads. Every parked
 * request must have been resumed first (the engine forbids stopping with
 * suspended connections); this waits up to wait_ms for them to be answered.
 * Then frees s. Accepts NULL. Not from a server thread. */
void loom__hs_stop(loom__hs *s, int wait_ms);

/* --- requests (valid from the first callback until on_done returns; only
 *     from inside a callback for this request, except loom__hs_resume) --- */

/* "GET", "POST", ... as sent. */
const char *loom__hs_req_method(const loom__hs_req *r);
/* The request target exactly as sent: "/path?query", not decoded. */
const char *loom__hs_req_target(const loom__hs_req *r);
/* A header by name, case-insensitive; the first one when repeated; NULL
 * when absent. */
const char *loom__hs_req_header(const loom__hs_req *r, const char *name);
/* How many times a header occurs (case-insensitive name). */
unsigned loom__hs_req_header_count(const loom__hs_req *r, const char *name);
/* "HTTP/1.1" or "HTTP/1.0" (MHD refuses other versions). */
const char *loom__hs_req_version(const loom__hs_req *r);
/* The size of the header fields as received (names, values, separators);
 * *bad_name when a field name is not a token (e.g. a space before the
 * colon). */
size_t loom__hs_req_header_bytes(const loom__hs_req *r, bool *bad_name);
/* How many headers have a name that starts with name but is longer (e.g.
 * "Content-Length8": what libmicrohttpd 0.9.75 makes of an obs-folded
 * "Content-Length:\r\n 8", or "Transfer-Encoding " with a space before
 * the colon). */
unsigned loom__hs_req_header_lookalikes(const loom__hs_req *r, const char *name);
/* The body read so far (NUL-terminated for convenience; may contain NULs).
 * NULL with *len 0 when there is none. */
const char *loom__hs_req_body(const loom__hs_req *r, size_t *len);
/* True when the body went over max_body (its bytes were discarded). */
bool loom__hs_req_body_too_large(const loom__hs_req *r);
/* The application's pointer for this request. */
void loom__hs_req_set_user(loom__hs_req *r, void *user);
void *loom__hs_req_user(const loom__hs_req *r);

/* Wakes a suspended request: on_resume follows on a server thread. Any
 * thread; call it exactly once per LOOM__HS_SUSPEND. */
void loom__hs_resume(loom__hs_req *r);

/* --- responses --- */

/* A response with body (malloc'd, taken over even on failure; may be NULL
 * when len is 0) and its Content-Type (NULL: none). NULL on ENOMEM. */
loom__hs_resp *loom__hs_resp_new(int status, const char *content_type, char *body, size_t len);
/* Adds a header; false when the engine refuses it (bad characters) or on
 * ENOMEM. */
bool loom__hs_resp_header(loom__hs_resp *resp, const char *name, const char *value);
/* Asks the engine to close the connection after this response. */
void loom__hs_resp_close(loom__hs_resp *resp);
/* Frees a response that was not handed over. Accepts NULL. */
void loom__hs_resp_free(loom__hs_resp *resp);
/* Sets the answer of r (taken over). Only from on_headers, on_request or
 * on_resume, at most once, and the callback then returns RESPONDED (or, for
 * on_resume, simply returns). */
void loom__hs_respond(loom__hs_req *r, loom__hs_resp *resp);

#endif
