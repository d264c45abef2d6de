/*
 * loom — the HTTP bridge: every command with HTTP exposure becomes a REST
 * endpoint, {base}/v{version}{path}, served by libmicrohttpd. Routes come
 * from the runtime's own commands and from the commands other instances
 * announce over the broker, so the bridge may run in a process with no
 * services at all. See docs/http.md.
 */
#ifndef LOOM_HTTP_H
#define LOOM_HTTP_H

#include "../loom.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_http loom_http;

/* What an authentication hook sees of a request. Borrowed for the call. */
typedef struct loom_http_auth_request {
    const char *method;
    const char *path;
    /* A request header by name (case-insensitive), or NULL. */
    const char *(*header)(const struct loom_http_auth_request *req, const char *name);
    void *internal;
} loom_http_auth_request;

/* The identity an authentication hook may set; strings are copied. */
typedef struct loom_http_identity {
    const char *principal_id;
    const char *tenant_id;
} loom_http_identity;

/* Decides whether a request to a protected endpoint may proceed: return true
 * (optionally filling *id) or false for 401. Runs on an HTTP thread,
 * concurrently; must not block for long. */
typedef bool (*loom_http_auth_fn)(const loom_http_auth_request *req, loom_http_identity *id,
                                  void *user);

/* Creates a bridge for rt with the `http:` settings of cfg (listen address,
 * base path, limits, auth, CORS; cfg may be NULL for the defaults; without
 * http.listen it listens on 127.0.0.1 on a free port, see loom_http_port).
 * Does not listen yet. Destroy the bridge before its runtime. Errors:
 * LOOM_EINVAL, LOOM_ENOMEM, LOOM_ECONFIG (logged) — also when a configured
 * token file or environment variable is unreadable or empty: auth is never
 * silently off. */
LOOM_API loom_err loom_http_create(loom_http **out, loom_runtime *rt, const loom_config *cfg);

/* Installs a custom authentication hook (replacing the built-in token
 * check). Only before loom_http_start. */
LOOM_API loom_err loom_http_set_auth(loom_http *h, loom_http_auth_fn fn, void *user);

/* Starts listening. The runtime should be started first. LOOM_EIO when the
 * address cannot be bound, LOOM_ESTATE when already started (a stopped
 * bridge may be started again). */
LOOM_API loom_err loom_http_start(loom_http *h);

/* The TCP port actually bound (useful with port 0), or 0 when not started. */
LOOM_API int loom_http_port(const loom_http *h);

/* Stops accepting, answers every suspended request (503), closes all
 * connections and joins the bridge's threads. Idempotent. Not from an
 * authentication hook or a handler. */
LOOM_API loom_err loom_http_stop(loom_http *h);

/* Stops if needed and frees. Accepts NULL. */
LOOM_API void loom_http_destroy(loom_http *h);

#ifdef __cplusplus
}
#endif
#endif
