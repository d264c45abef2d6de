/* Internal: the HTTP bridge's shared structures and the functions its files
 * call in each other (include/loom/http.h is the public side; docs/http.md
 * the behaviour).
 *
 *   bridge.c   request flow, responses, built-in endpoints, the public API
 *   routes.c   route table, path templates, matching, path and query
 *              parsing, percent-decoding (pure functions, fuzzed by
 *              tests/fuzz/fuzz_http.c)
 *   auth.c     tokens, the authentication hook, CORS settings
 *   metrics.c  counters and the Prometheus text
 *   openapi.c  the OpenAPI 3.1 document
 *   asyncapi.c the AsyncAPI 3.0 document
 *
 * Locks, in order: life_mu -> wait_mu -> breq.mu. build_mu -> routes_lock.
 * None is held while calling into the runtime or resuming a request. */
#ifndef LOOM_HTTP_BRIDGE_H
#define LOOM_HTTP_BRIDGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"
#include "http/server.h"
#include "loom/http.h"

#define MAX_SEGMENTS 64   /* segments of a route or a request path */
#define MAX_TEMPLATE 1024 /* bytes of a path template */
#define MAX_NAME 256      /* service, version and command names */
#define MAX_QUERY_PARAMS 256
#define SERIES_SLOTS 4096 /* metrics series; power of two */

/* ------------------------------------------------------------------------ */
/* Methods                                                                   */

enum { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_OPTIONS, M_OTHER, M_COUNT };
extern const char *const loom__http_method_names[M_COUNT];
/* M_GET ... M_OPTIONS, or M_OTHER. */
int loom__http_method_index(const char *m);

/* ------------------------------------------------------------------------ */
/* Routes (routes.c)                                                         */

/* Counters of one route or built-in path (metrics.c). Opaque. */
typedef struct series series;

typedef struct seg {
    char *text; /* literal text, or the parameter name */
    bool param;
} seg;

typedef struct route {
    char *method;
    char *label; /* "/api/v1/users/{id}" */
    char *service, *version, *command;
    seg *segs;
    size_t nseg;
    bool public;
    uint32_t timeout_ms;
    size_t order;
    series *http_series;
    series *cmd_series;
} route;

/* An immutable, refcounted table, sorted for matching (literal segments
 * before parameters, position by position; otherwise announcement order). */
typedef struct routes {
    atomic_int refs;
    unsigned version;
    route *v;
    size_t n;
} routes;

/* What discovery said about one command (every string owned). */
typedef struct raw_route {
    char *service, *version, *command, *method, *path;
    bool public;
    uint32_t timeout_ms;
} raw_route;

/* A request path split at '/' and percent-decoded ("/" has no segment,
 * "/a/" has "a" and ""). */
typedef struct pathsegs {
    char *v[MAX_SEGMENTS + 3];
    size_t n;
} pathsegs;

/* Percent-decodes n bytes of s into a new string ('+' is a space when
 * plus). NULL for a bad escape, a NUL byte or invalid UTF-8 (*bad = true),
 * or on ENOMEM (*bad = false). */
char *loom__http_pct_decode(const char *s, size_t n, bool plus, bool *bad);

/* Appends the segments of a path template ("/a/:b"; ':' starts a parameter
 * only when params_ok) to segs, which has room for MAX_SEGMENTS. Empty
 * segments, bad characters and repeated parameter names are refused (why
 * says which; the caller frees the segments added so far). */
bool loom__http_parse_template(const char *path, bool params_ok, seg *segs, size_t *nseg,
                               const char **why);

/* "{base}/v{version}{path}" as segments and as an OpenAPI-style label
 * ("/api/v1/users/{id}"); both malloc'd. false with why on a bad template
 * (nothing allocated then). */
bool loom__http_route_path(const char *base, const char *version, const char *path, seg **segs_out,
                           size_t *nseg_out, char **label_out, const char **why);

/* [A-Za-z0-9_.-]{1,256} */
bool loom__http_name_ok(const char *s);
/* GET, POST, PUT, PATCH or DELETE. */
bool loom__http_method_ok(const char *m);
/* The string member key of o, or NULL. */
const char *loom__http_jstr(const cJSON *o, const char *key);

/* Builds a table from n raw routes (each one is moved into the table or
 * freed; the array itself stays the caller's). Invalid and duplicate
 * routes are skipped, with one line each through warn (may be NULL).
 * Series are not resolved. NULL on ENOMEM. */
routes *loom__http_routes_from(const char *base, raw_route *v, size_t n,
                               void (*warn)(void *user, const char *line), void *user);
void loom__http_routes_unref(routes *t);

/* Splits and decodes a request path ("/..."). 0: ok; 1: bad encoding;
 * 2: too many segments (no route can match); -1: ENOMEM. */
int loom__http_split_path(const char *path, pathsegs *ps);
void loom__http_pathsegs_fini(pathsegs *ps);

/* The route for the request, or NULL; *path_match is the first route whose
 * path matches whatever its method, and allow (allow_len > 0) lists the
 * methods of those ("GET, HEAD, POST"). */
const route *loom__http_match(const routes *t, const pathsegs *ps, int method, char *allow,
                              size_t allow_len, const route **path_match);

/* Adds the query's values (decoded; '+' is a space) to params for keys not
 * set yet; a key without '=' gets "". Stops at '#'. false on a bad
 * encoding or more than MAX_QUERY_PARAMS parameters (*bad), or ENOMEM. */
bool loom__http_add_query(cJSON *params, const char *q, bool *bad);

/* ------------------------------------------------------------------------ */
/* The bridge                                                                */

typedef struct breq breq;

/* The optional http.openapi.* keys, in loom_http.oa_info. */
enum {
    OA_LICENSE_NAME,     /* then .identifier, .url */
    OA_CONTACT_NAME = 3, /* then .url, .email */
    OA_SERVER = 6,
    OA_INFO_N
};

struct loom_http {
    loom_runtime *rt;
    /* Settings, fixed at create. */
    char *listen;
    char *base;
    char *openapi_path;
    char *asyncapi_path;
    unsigned threads;
    size_t max_body, max_header;
    unsigned max_connections, idle_timeout_s;
    uint32_t request_timeout_ms;
    /* Run in-process commands on the HTTP thread (no worker hop). */
    bool run_inline;
    char **tokens;
    size_t *token_lens;
    size_t n_tokens;
    char *api_key_header;
    bool auth_required;        /* http.auth.required (default true) */
    bool protect_metrics;      /* http.auth.protect_metrics */
    bool protect_docs;         /* http.auth.protect_docs: the OpenAPI and AsyncAPI documents */
    loom_http_auth_fn auth_fn; /* set before start only */
    void *auth_user;
    char **origins;
    size_t n_origins;
    bool cors_any;
    char *cors_headers;
    unsigned cors_max_age;

    pthread_mutex_t life_mu; /* start / stop */
    loom__hs *srv;           /* under life_mu; non-NULL while started */
    atomic_int port;
    atomic_bool stopping;

    pthread_rwlock_t routes_lock; /* protects the routes pointer */
    routes *routes;               /* one reference held here */
    pthread_mutex_t build_mu;     /* one rebuild at a time */

    pthread_mutex_t wait_mu; /* the invoked, unanswered requests */
    breq *waiting;

    atomic_size_t auth_reported; /* protected routes the auth warning last counted */
    _Atomic(series *) *slots;    /* SERIES_SLOTS */
    atomic_long in_flight;

    /* openapi.c: the document's info (http.openapi.*), fixed at create. */
    char *oa_title, *oa_version, *oa_description;
    char *oa_info[OA_INFO_N]; /* optional keys (OA_*), NULL when unset */
    /* access_log.c: one line per request (http.access_log), fixed at create. */
    bool access_log;
};

/* One request. Shared by the server side and, while invoked, the reply
 * callback (refcount); the callback only touches mu, answered, parked,
 * reply and hs. */
struct breq {
    atomic_int refs; /* the server side and, while invoked, the reply callback */
    pthread_mutex_t mu;
    /* Under mu. */
    bool answered;   /* the reply (or the stop) decided the answer */
    bool parked;     /* the server side returned SUSPEND */
    loom_msg *reply; /* retained */
    /* Server side only. */
    loom_http *h;
    loom__hs_req *hs;
    breq *prev, *next; /* h->waiting, under h->wait_mu */
    bool on_list;
    routes *table;
    const route *route;
    series *series;
    int method;
    int64_t t0;
    bool finished;
    bool inflight;
    bool invoked;
    bool close; /* the response closes the connection */
    char trace[33];
    char traceparent[56];
    const char *cors_origin; /* Access-Control-Allow-Origin value or NULL */
    char *path;              /* raw path, without the query */
    const char *query;       /* raw query (points into the target) or NULL */
    cJSON *params;
    char *principal, *tenant;
};

/* bridge.c */
void loom__http_log(loom_http *h, loom_log_level level, const char *fmt, ...) LOOM_PRINTF(3, 4);
/* W3C traceparent "VV-<32 hex trace>-<16 hex parent>-<2 hex flags>": the
 * trace id (lowercase) and the value to echo (55 characters, lowercase). */
bool loom__http_parse_traceparent(const char *s, char trace[33], char echo[56]);
/* application/json or application/...+json; a charset, when given, must be
 * UTF-8. */
bool loom__http_json_content_type(const char *ct);

/* auth.c */
/* Reads http.auth.* (tokens, file, variable, API-key header) and
 * http.cors.*. LOOM_ECONFIG (logged) for an unreadable or empty token
 * source or a bad header name or origin; LOOM_ENOMEM. */
loom_err loom__http_auth_load(loom_http *h, const loom_config *cfg);
/* Frees what loom__http_auth_load kept (tokens are wiped first). */
void loom__http_auth_fini(loom_http *h);
/* True when tokens, API keys or a hook are configured. */
bool loom__http_auth_on(const loom_http *h);
/* The decision for a protected endpoint: with auth on, the credentials are
 * checked; with none configured, 401 unless http.auth.required is false.
 * 0: allowed; 401: refused; 500: the hook returned a bad identity;
 * 503: ENOMEM. Sets b->principal and b->tenant from a hook. */
int loom__http_authenticate(breq *b);
/* Logs at start what auth means for the n_protected protected routes: a
 * warning when they are served without authentication. */
void loom__http_auth_report(loom_http *h, size_t n_protected);
/* The Access-Control-Allow-Origin value for origin, or NULL. */
const char *loom__http_cors_allow(const loom_http *h, const char *origin);

/* metrics.c */
/* The series for (method, route label) or (service, command), created on
 * first use; NULL when the table is full or on ENOMEM (the request is then
 * not counted). Lock-free. */
series *loom__http_series_http(loom_http *h, const char *method, const char *label);
series *loom__http_series_cmd(loom_http *h, const char *service, const char *command);
/* Counts one answer with status; records its duration (µs). NULL s: no-op. */
void loom__http_series_count(series *s, int status);
void loom__http_series_observe(series *s, int64_t us);
void loom__http_series_free_all(loom_http *h);
/* The Prometheus text (malloc'd), or NULL on ENOMEM. */
char *loom__http_metrics_text(loom_http *h);

/* openapi.c */
/* The OpenAPI 3.1 document of the current commands, or NULL on ENOMEM. */
cJSON *loom__http_openapi_doc(loom_http *h);
/* Reads http.openapi.* (the document's info); LOOM_ENOMEM. */
loom_err loom__http_openapi_load(loom_http *h, const loom_config *cfg);
void loom__http_openapi_fini(loom_http *h);
/* A new OpenAPI 3.1 (or, asyncapi, AsyncAPI 3.0) document with its info
 * object (title, version, description, license, contact); NULL on ENOMEM. */
cJSON *loom__http_doc_new(loom_http *h, bool asyncapi);
/* The bridge's URL for documents' servers (malloc'd), or NULL on ENOMEM. */
char *loom__http_server_url(loom_http *h);

/* docschema.c */
/* A copy of a definition's schema for components.schemas[name]: its local
 * references and those to the service's shared schemas (array, may be
 * NULL) made document-wide; NULL on ENOMEM. */
cJSON *loom__http_doc_schema(const cJSON *schema, const char *name, const cJSON *shared,
                             const char *prefix);
/* Adds each shared schema as components.schemas["{prefix}.{$id}"] (once). */
bool loom__http_doc_shared(cJSON *schemas, const cJSON *shared, const char *prefix);
/* Appends "/" and key as a JSON pointer token of a URI fragment. */
void loom__http_pointer_token(loom__sbuf *b, const char *key);

/* asyncapi.c */
/* The AsyncAPI 3.0 document of this runtime's services (their definitions:
 * channels, operations, messages), or NULL on ENOMEM. */
cJSON *loom__http_asyncapi_doc(loom_http *h);

/* access_log.c */
/* Logs the access line of b answered with status, when http.access_log is
 * on and info is enabled: one formatted write, nothing when off. */
void loom__http_access_log(const breq *b, int status, int64_t duration_us);

#endif
