/*
 * loom — an embeddable C SDK for message-driven services.
 *
 * An application defines services (commands that answer requests, subscriptions
 * that react to events) as static descriptors, registers them with a runtime and
 * picks at deploy time, by configuration only, which broker carries the traffic:
 * the embedded in-memory broker ("memory:", the default) or a real one ("mqtt://").
 *
 * OWNERSHIP RULES (they hold for every call in this header and in the loom/ headers)
 *  1. What you create you destroy with the matching call (loom_runtime_create /
 *     loom_runtime_destroy, loom_config_create / loom_config_destroy, ...).
 *     Anything loom returns for you to keep is freed by a loom call
 *     (loom_msg_release, loom_free), never by plain free(). Destroy and release
 *     calls accept NULL.
 *  2. Send, publish and reply calls (loom_runtime_invoke, loom_runtime_emit,
 *     loom_ctx_reply, loom_ctx_fail, ...) take ownership of the cJSON values you
 *     pass only when they return LOOM_OK. On failure you still own them.
 *  3. Messages, contexts and strings handed to a callback are borrowed for the
 *     duration of the callback; call loom_msg_retain() to keep a message longer.
 *  4. Strings, definitions' schemas and configurations passed in are copied
 *     (service and command descriptors themselves must outlive the runtime:
 *     the LOOM_* macros make them static).
 *
 * EXTENSIBLE STRUCTS. The structs you fill in and pass to loom (loom_call,
 * loom_runtime_config, loom_main_options, loom_test_options and the
 * definitions) begin with `size_t size`, so later versions can append fields
 * without breaking programs built against this one (docs/abi.md). Initialise
 * them with their macro, which sets size and zeroes every field you do not
 * name:
 *
 *   loom_call call = LOOM_CALL_INIT(.service = "users", .command = "get");
 *   loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.workers = 2);
 *
 * (LOOM_COMMAND, LOOM_SUBSCRIPTION and LOOM_SERVICE do it for definitions.)
 * A struct with size 0 is read as this first layout, so plain `= {...}`
 * initialisers keep working, but fields appended later are only seen
 * through the macros. A size larger than this library knows is accepted
 * when the unknown tail is zero and refused with LOOM_EUNSUPPORTED
 * otherwise (a program built against a newer loom that uses a newer field).
 *
 * THREADS. Every function here may be called from any thread unless its comment
 * says otherwise. Handlers run on the runtime's worker threads (or, for an
 * in-process command invoked synchronously, on the caller's thread), never on a
 * broker client's I/O thread. If a call that takes a callback fails, the callback
 * never runs (libuv's rule).
 */
#ifndef LOOM_H
#define LOOM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "loom/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

typedef enum loom_err {
    LOOM_OK = 0,
    LOOM_EINVAL,       /* invalid argument */
    LOOM_ENOMEM,       /* out of memory */
    LOOM_ENOTFOUND,    /* no such service, command, key or route */
    LOOM_EEXIST,       /* already registered / already present */
    LOOM_ESTATE,       /* not allowed in the object's current state */
    LOOM_ETIMEDOUT,    /* a deadline passed */
    LOOM_EUNAVAILABLE, /* no receiver, broker or store unreachable */
    LOOM_ECLOSED,      /* the runtime is stopping or stopped */
    LOOM_EPARSE,       /* malformed input (JSON, envelope, YAML) */
    LOOM_ECONFIG,      /* bad configuration value or unknown key */
    LOOM_EIO,          /* operating-system or network error */
    LOOM_EOVERLOAD,    /* a bounded queue or concurrency limit is full */
    LOOM_EUNSUPPORTED, /* the operation or URL scheme is not supported */
    LOOM_ETOOBIG,      /* a message or value exceeds a configured limit */
} loom_err;

/* A short static English description of an error code ("invalid argument").
 * Never returns NULL. */
LOOM_API const char *loom_strerror(loom_err err);

/* Frees memory that loom allocated and handed to you as a plain buffer
 * (loom_msg_encode). Accepts NULL. */
LOOM_API void loom_free(void *ptr);

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */

typedef enum loom_log_level {
    LOOM_LOG_UNSET = 0, /* in configs: use the default (info) */
    LOOM_LOG_TRACE,
    LOOM_LOG_DEBUG,
    LOOM_LOG_INFO,
    LOOM_LOG_WARN,
    LOOM_LOG_ERROR,
    LOOM_LOG_OFF,
} loom_log_level;

typedef enum loom_log_format {
    LOOM_LOG_FORMAT_UNSET = 0, /* in configs: use the default (text) */
    LOOM_LOG_TEXT, /* "2026-11-22T01:02:03.456Z INFO  [users.create trace=ID] message" */
    LOOM_LOG_JSON,     /* one JSON object per line */
} loom_log_format;

/* One log record, borrowed for the duration of a loom_log_fn call. Fields
 * that are unknown are NULL. */
typedef struct loom_log_record {
    loom_log_level level;
    int64_t time_ms; /* epoch milliseconds */
    const char *instance;
    const char *service;
    const char *command; /* command or subscription name */
    const char *trace_id;
    const char *message;
} loom_log_record;

/* A custom log sink. Called from any thread, concurrently; must not call back
 * into the runtime. */
typedef void (*loom_log_fn)(const loom_log_record *rec, void *user);

/* Parses "trace|debug|info|warn|warning|error|off" (case-insensitive);
 * LOOM_EINVAL otherwise. */
LOOM_API loom_err loom_log_level_parse(const char *s, loom_log_level *out);

/* ------------------------------------------------------------------------ */
/* Messages (the decoded wire envelope, see docs/concepts.md)                */

typedef struct loom_msg loom_msg;
typedef struct loom_runtime loom_runtime;
typedef struct loom_ctx loom_ctx;
typedef struct loom_config loom_config;
typedef struct loom_store loom_store;

typedef enum loom_msg_type {
    LOOM_MSG_COMMAND = 1 << 0,          /* "command" */
    LOOM_MSG_SUCCESS = 1 << 1,          /* "commandSuccessResponse" */
    LOOM_MSG_ERROR = 1 << 2,            /* "commandErrorResponse" */
    LOOM_MSG_CUSTOM = 1 << 3,           /* "customMessage" (an emitted event) */
    LOOM_MSG_INFO = 1 << 4,             /* "info*" (service announcements) */
} loom_msg_type;

/* A service address: the sender or receiver of a message. Fields may be NULL. */
typedef struct loom_address {
    const char *service;
    const char *version;
    const char *target; /* command or subscription name */
    const char *instance;
} loom_address;

/* Messages are immutable and reference-counted. Everything below is
 * thread-safe; returned pointers live as long as the message. */
LOOM_API loom_msg *loom_msg_retain(loom_msg *m);
LOOM_API void loom_msg_release(loom_msg *m);

LOOM_API loom_msg_type loom_msg_type_of(const loom_msg *m);
/* "command", "commandSuccessResponse", ... */
LOOM_API const char *loom_msg_type_name(loom_msg_type t);
/* Command: the request payload. Success response: the result. Event: its
 * payload. Error response: NULL. May be NULL (no payload / empty result). */
LOOM_API const cJSON *loom_msg_payload(const loom_msg *m);
/* Command: the parameter object (path and query values over HTTP). */
LOOM_API const cJSON *loom_msg_parameter(const loom_msg *m);
/* Success: 200, or 204 when the result is empty. Error: its status. Others: 0. */
LOOM_API int loom_msg_status(const loom_msg *m);
/* Error response: message and optional data; NULL otherwise. */
LOOM_API const char *loom_msg_error(const loom_msg *m);
LOOM_API const cJSON *loom_msg_error_data(const loom_msg *m);
/* Error response: true when the handler failed on purpose (loom_ctx_fail with
 * a status < 500, or any status given explicitly); false for crashes. */
LOOM_API bool loom_msg_is_handled_error(const loom_msg *m);
LOOM_API const char *loom_msg_id(const loom_msg *m);
LOOM_API const char *loom_msg_trace_id(const loom_msg *m);
LOOM_API const char *loom_msg_correlation_id(const loom_msg *m);
LOOM_API const char *loom_msg_principal_id(const loom_msg *m);
LOOM_API const char *loom_msg_tenant_id(const loom_msg *m);
LOOM_API const char *loom_msg_event_name(const loom_msg *m);
LOOM_API const char *loom_msg_reply_to(const loom_msg *m);
LOOM_API int64_t loom_msg_timestamp(const loom_msg *m); /* epoch ms */
LOOM_API int64_t loom_msg_deadline(const loom_msg *m);  /* epoch ms, 0 = none */
LOOM_API const loom_address *loom_msg_sender(const loom_msg *m);
/* True when the message's identity fields (principal, tenant, sender) can
 * be believed: it was made in this process (by the HTTP bridge after its
 * auth, or by your code), or it came over the broker with a signature that
 * verified (security.signing, docs/security.md). False for messages that
 * crossed a broker unsigned and for plain clients' bare calls. */
LOOM_API bool loom_msg_identity_verified(const loom_msg *m);
/* The keyring identity whose signature or MAC verified, or NULL. */
LOOM_API const char *loom_msg_signer(const loom_msg *m);
LOOM_API const loom_address *loom_msg_receiver(const loom_msg *m);

/* Serializes the message as its JSON envelope. *out is NUL-terminated and
 * freed with loom_free(); *len (optional) gets its length. */
LOOM_API loom_err loom_msg_encode(const loom_msg *m, char **out, size_t *len);
/* Parses a JSON envelope. On failure returns LOOM_EPARSE (or LOOM_ENOMEM,
 * LOOM_ETOOBIG) and, when errbuf is given, a one-line reason such as
 * "field 'id': expected 32 lowercase hex characters". Never crashes on any
 * input, including non-UTF-8 bytes and deep nesting. */
LOOM_API loom_err loom_msg_decode(const void *data, size_t len, loom_msg **out, char *errbuf,
                                  size_t errbuf_len);
/* The error body {"status","message","data"?} of an error response, or the
 * result of a success response, as a new cJSON tree (cJSON_Delete it).
 * Returns NULL for an empty result. */
LOOM_API cJSON *loom_msg_result_json(const loom_msg *m);

/* ------------------------------------------------------------------------ */
/* Definitions: services, commands, subscriptions                            */

/* A command handler. Runs on a worker thread. Read the request through the
 * context, then answer exactly once with loom_ctx_reply() or loom_ctx_fail().
 * To answer later (from any thread), call loom_ctx_defer() before returning;
 * the context then stays valid until the answer. Returning without answering
 * and without deferring answers 500 "handler returned without a reply". */
typedef void (*loom_command_fn)(loom_ctx *ctx, void *user);

typedef enum loom_ack {
    LOOM_ACK = 0, /* handled; done */
    LOOM_RETRY,   /* failed; deliver again later (bounded, with backoff) */
    LOOM_DROP,    /* cannot be handled; discard (logged) */
} loom_ack;

/* A subscription handler. Runs on a worker thread, synchronously. A result
 * given with loom_ctx_reply() is emitted as the subscription's emit_event.
 *
 * Concurrency: the handlers of one subscription run CONCURRENTLY on several
 * worker threads for different events (and alongside every other handler),
 * in no guaranteed order; serialize with the store (loom_store_add,
 * loom_store_cas) or your own lock, or run one worker (--workers 1) when
 * order matters. Command handlers likewise. */
typedef loom_ack (*loom_subscription_fn)(loom_ctx *ctx, void *user);

/* An error response a command declares (loom_command_def.errors): the
 * status it may fail with (400..599, through loom_ctx_fail), what it means,
 * and optionally the JSON Schema of the error's `data`. The OpenAPI
 * document lists each one under the operation's responses. */
typedef struct loom_error_def {
    int status;              /* 400..599; 0 ends the list */
    const char *description; /* required */
    const char *data_schema; /* optional JSON Schema (text) of `data` */
} loom_error_def;

typedef struct loom_command_def {
    size_t size;             /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    const char *name;        /* required; [A-Za-z0-9_.-]+ */
    const char *description;
    loom_command_fn handler; /* required */
    /* Optional JSON Schemas (JSON text, draft 2020-12 as docs/schema.md
     * describes; they may $ref the service's shared `schemas`). */
    const char *payload_schema;
    const char *parameter_schema;
    const char *output_schema;
    /* Optional HTTP exposure: method ("GET", "POST", ...) and a path template
     * such as "/orders/:id", served as {base}/v{version}{path}. */
    const char *http_method;
    const char *http_path;
    bool http_public; /* served without authentication */
    /* When set, a success response is also delivered as this event. */
    const char *success_event;
    uint32_t timeout_ms; /* 0 = the runtime's default */
    /* Optional: the errors it declares, ended by {0} (LOOM_ERRORS). Each
     * status at most once; checked at loom_runtime_add_service (LOOM_EINVAL). */
    const loom_error_def *errors;
} loom_command_def;

typedef enum loom_delivery_mode {
    LOOM_DELIVER_GROUP = 0, /* one instance per subscription group (default) */
    LOOM_DELIVER_ALL,       /* every running instance */
} loom_delivery_mode;

/* What a subscription reacts to. NULL / 0 fields match anything. Embedded
 * in loom_subscription_def, so it never grows within one SONAME (new filter
 * fields go to loom_subscription_def; docs/abi.md). */
typedef struct loom_filter {
    const char *event_name;
    const char *sender_service;
    const char *sender_version;
    const char *sender_command;
    unsigned message_types; /* loom_msg_type bits; 0 = events (custom
                               messages and success responses with an event
                               name) */
    const char *principal_id;
    const char *tenant_id;
} loom_filter;

typedef struct loom_subscription_def {
    size_t size;      /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    const char *name; /* required; group = service.version.name */
    const char *description;
    loom_subscription_fn handler; /* required */
    loom_filter filter;
    loom_delivery_mode delivery;
    const char *emit_event;      /* optional: the handler's result event */
    uint32_t max_retries;        /* 0 = 3; LOOM_RETRY beyond it drops */
    const char *payload_schema;  /* optional; invalid events are dropped */
} loom_subscription_def;

typedef struct loom_service_def {
    size_t size;         /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    const char *name;    /* required; [A-Za-z0-9_-]+ */
    const char *version; /* required, e.g. "1" */
    const char *description;
    const loom_command_def *const *commands;           /* NULL-terminated */
    const loom_subscription_def *const *subscriptions; /* NULL-terminated */
    /* Optional shared JSON Schemas: a NULL-terminated list of JSON texts,
     * each with an "$id" (e.g. "address" or "https://example.com/address").
     * Every schema of this service's commands and subscriptions may $ref
     * them by that id, resolved as a URI reference: "address",
     * "address#/$defs/zip", "address#zip" ($anchor). Compiled at
     * loom_runtime_add_service (a bad one fails it with LOOM_EINVAL). */
    const char *const *schemas;
    /* true: "format" asserts the formats docs/schema.md lists (date-time,
     * email, uuid, ...); false (default): it is only an annotation. */
    bool assert_formats;
} loom_service_def;

/* The macros only generate static const data; the same descriptors can be
 * written by hand and passed to loom_runtime_add_service().
 *
 *   LOOM_COMMAND(get_user, .name = "get", .handler = get_user_fn,
 *                .http_method = "GET", .http_path = "/users/:id");
 *   LOOM_SUBSCRIPTION(on_created, .name = "onCreated", .handler = on_created_fn,
 *                     .filter = {.event_name = "userCreated"});
 *   LOOM_SERVICE(users, .name = "users", .version = "1",
 *                .commands = LOOM_COMMANDS(&get_user),
 *                .subscriptions = LOOM_SUBSCRIPTIONS(&on_created));
 *
 * To use a descriptor from another file (main.c, a test), define it with
 * the _EXTERN form and declare it in a header with LOOM_*_DECLARE:
 *
 *   users.h:  LOOM_SERVICE_DECLARE(users);
 *   users.c:  LOOM_SERVICE_EXTERN(users, .name = "users", .version = "1", ...);
 */
/* Initialisers for definitions written without the macros below (arrays
 * filled at run time, compound literals): `defs[i] = (loom_command_def)
 * LOOM_COMMAND_DEF_INIT(.name = n, .handler = h);`. */
// clang-format off
#define LOOM_COMMAND_DEF_INIT(...) {.size = sizeof(loom_command_def), __VA_ARGS__}
#define LOOM_SUBSCRIPTION_DEF_INIT(...) {.size = sizeof(loom_subscription_def), __VA_ARGS__}
#define LOOM_SERVICE_DEF_INIT(...) {.size = sizeof(loom_service_def), __VA_ARGS__}
// clang-format on
#define LOOM_COMMAND(ident, ...)                                                                   \
    static const loom_command_def ident = LOOM_COMMAND_DEF_INIT(__VA_ARGS__)
#define LOOM_SUBSCRIPTION(ident, ...)                                                              \
    static const loom_subscription_def ident = LOOM_SUBSCRIPTION_DEF_INIT(__VA_ARGS__)
#define LOOM_SERVICE(ident, ...)                                                                   \
    static const loom_service_def ident = LOOM_SERVICE_DEF_INIT(__VA_ARGS__)
#define LOOM_COMMAND_EXTERN(ident, ...)                                                            \
    const loom_command_def ident = LOOM_COMMAND_DEF_INIT(__VA_ARGS__)
#define LOOM_SUBSCRIPTION_EXTERN(ident, ...)                                                       \
    const loom_subscription_def ident = LOOM_SUBSCRIPTION_DEF_INIT(__VA_ARGS__)
#define LOOM_SERVICE_EXTERN(ident, ...)                                                            \
    const loom_service_def ident = LOOM_SERVICE_DEF_INIT(__VA_ARGS__)
#define LOOM_COMMAND_DECLARE(ident) extern const loom_command_def ident
#define LOOM_SUBSCRIPTION_DECLARE(ident) extern const loom_subscription_def ident
#define LOOM_SERVICE_DECLARE(ident) extern const loom_service_def ident
#define LOOM_COMMANDS(...) ((const loom_command_def *const[]){__VA_ARGS__, NULL})
#define LOOM_SUBSCRIPTIONS(...)                                               \
    ((const loom_subscription_def *const[]){__VA_ARGS__, NULL})
#define LOOM_SERVICES(...) ((const loom_service_def *const[]){__VA_ARGS__, NULL})
/* .errors = LOOM_ERRORS({404, "No such order"}, {409, "Already paid", DATA_SCHEMA}) */
#define LOOM_ERRORS(...) ((const loom_error_def[]){__VA_ARGS__, {0}})

/* ------------------------------------------------------------------------ */
/* Runtime                                                                   */

typedef struct loom_runtime_config {
    size_t size; /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    /* Deployment configuration (YAML + environment + flags), or NULL. The
     * fields below override it when set (non-NULL / non-zero). Copied. */
    const loom_config *config;
    const char *instance_id;     /* default: random 32 hex characters */
    const char *broker_url;      /* default "memory:" */
    const char *state_url;       /* default "memory:" */
    unsigned workers;            /* default: number of CPUs */
    uint32_t default_timeout_ms; /* default 30000 */
    uint32_t drain_timeout_ms;   /* default 5000 */
    loom_log_level log_level;    /* default LOOM_LOG_INFO */
    loom_log_format log_format;  /* default LOOM_LOG_TEXT */
    loom_log_fn log_fn; /* default: lines on stderr */
    void *log_user;
} loom_runtime_config;

/* loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.broker_url = url); */
// clang-format off
#define LOOM_RUNTIME_CONFIG_INIT(...) {.size = sizeof(loom_runtime_config), __VA_ARGS__}
// clang-format on

/* Creates a runtime. Nothing runs until loom_runtime_start(). cfg may be NULL
 * (all defaults). Errors: LOOM_EINVAL, LOOM_ECONFIG (bad value; details in
 * the log), LOOM_EUNSUPPORTED (no adapter for the broker or state URL),
 * LOOM_ENOMEM. Any thread. */
LOOM_API loom_err loom_runtime_create(loom_runtime **out, const loom_runtime_config *cfg);

/* Registers a service to run in this runtime, with a user pointer passed to
 * its handlers. Only before start. The descriptor must outlive the runtime;
 * its schemas are compiled now (LOOM_EINVAL with a logged reason when one is
 * invalid). LOOM_EEXIST when the same name and version is already added. */
LOOM_API loom_err loom_runtime_add_service(loom_runtime *rt, const loom_service_def *svc,
                                           void *user);

/* Starts the worker pool, connects the broker (asynchronously for network
 * brokers), subscribes the services' commands and subscriptions and
 * announces them. LOOM_ESTATE when already started. */
LOOM_API loom_err loom_runtime_start(loom_runtime *rt);

/* Waits until the broker is connected, this runtime's subscriptions are in
 * place and the services that other instances had announced are known, up
 * to timeout_ms. LOOM_ETIMEDOUT otherwise. */
LOOM_API loom_err loom_runtime_wait_ready(loom_runtime *rt, uint32_t timeout_ms);

/* Waits until every event delivered so far to this runtime's subscriptions
 * has been handled for good (acknowledged, dropped, or out of retries; an
 * event waiting for a retry still counts), up to timeout_ms: LOOM_OK, or
 * LOOM_ETIMEDOUT. With the in-memory broker an emit delivers before it
 * returns, and an event a handler emits is delivered before that handler
 * finishes, so after loom_runtime_emit (or a command with a success event)
 * this waits for the whole cascade. With a network broker it covers only
 * events that have already arrived. No polling: the last handler to finish
 * wakes the waiters. LOOM_ESTATE from a handler (it would wait for
 * itself). For tests and one-shot programs. */
LOOM_API loom_err loom_runtime_wait_events(loom_runtime *rt, uint32_t timeout_ms);

/* Graceful stop: refuses new work (LOOM_ECLOSED / 503), clears the service
 * announcements, lets in-flight work finish within the drain timeout, fails
 * what is left with 503, disconnects and joins all threads. Idempotent. Must
 * not be called from a handler. */
LOOM_API loom_err loom_runtime_stop(loom_runtime *rt);

/* Stops if needed and frees everything. Accepts NULL. */
LOOM_API void loom_runtime_destroy(loom_runtime *rt);

LOOM_API const char *loom_runtime_instance_id(const loom_runtime *rt);
LOOM_API loom_store *loom_runtime_store(loom_runtime *rt);
/* Writes one log line through the runtime's sink. */
LOOM_API void loom_runtime_log(loom_runtime *rt, loom_log_level level, const char *fmt, ...)
    LOOM_PRINTF(3, 4);

/* What to invoke. service and command are required; version NULL means "1".
 * payload and parameter (either may be NULL) are taken over only on LOOM_OK. */
typedef struct loom_call {
    size_t size; /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    const char *service;
    const char *version;
    const char *command;
    cJSON *payload;
    cJSON *parameter;
    uint32_t timeout_ms;   /* 0 = the command's / runtime's default */
    int64_t deadline_ms;   /* absolute epoch ms; 0 = now + timeout */
    const char *trace_id;  /* 32 hex; NULL = new */
    const char *principal_id;
    const char *tenant_id;
    /* loom_runtime_invoke only: when this runtime serves the command, run
     * its handler on the calling thread (no worker hop); the callback then
     * runs before loom_runtime_invoke returns unless the handler defers.
     * For callers that can afford the handler's time on their thread (the
     * HTTP bridge uses it). Without it, quick in-process commands still run
     * inline when called from an application thread (docs/concepts.md,
     * "Where handlers run"; config invoke.inline). Blocking calls always
     * run in-process handlers inline. */
    bool run_inline;
    /* loom_runtime_invoke only: when the response comes over the broker,
     * the callback may run on the thread that received it (the broker
     * client's own thread) instead of a worker: one thread hop less per
     * call. Only for callbacks that hand the response on and return at
     * once, never blocking nor calling into loom (the HTTP bridge uses it
     * to resume the HTTP connection). */
    bool reply_inline;
} loom_call;

/* loom_call c = LOOM_CALL_INIT(.service = "users", .command = "get"); as an
 * argument: &(loom_call)LOOM_CALL_INIT(...). */
// clang-format off
#define LOOM_CALL_INIT(...) {.size = sizeof(loom_call), __VA_ARGS__}
// clang-format on

/* Called once with the response: a success (status 200/204) or an error
 * response (the handler's status, 400 validation, 503 no receiver or
 * stopping, 504 timeout). The response is borrowed. May run on any thread:
 * the caller's before loom_runtime_invoke returns, a worker, or loom's
 * timer thread at the deadline — keep it short and never block in it (hand
 * longer work to your own thread). */
typedef void (*loom_reply_fn)(loom_runtime *rt, const loom_msg *response, void *user);

/* Invokes a command asynchronously. Returns LOOM_EINVAL (bad call),
 * LOOM_ECLOSED (not started / stopping) or LOOM_ENOMEM, in which case cb
 * never runs; otherwise LOOM_OK and cb runs exactly once. */
LOOM_API loom_err loom_runtime_invoke(loom_runtime *rt, const loom_call *call, loom_reply_fn cb,
                                      void *user);

/* Invokes a command and waits for the response (at most the call's timeout).
 * On LOOM_OK *response is set (release it with loom_msg_release) and its
 * status tells the outcome. Must not be called from a handler without a
 * timeout shorter than the handler's own deadline (use loom_ctx_call). */
LOOM_API loom_err loom_runtime_call(loom_runtime *rt, const loom_call *call,
                                    loom_msg **response);

/* Publishes an event (a customMessage with this event name) from the
 * runtime itself. payload (may be NULL) is taken over on LOOM_OK. */
LOOM_API loom_err loom_runtime_emit(loom_runtime *rt, const char *event_name, cJSON *payload);

/* ------------------------------------------------------------------------ */
/* Handler context (valid during the handler, or until the reply when
 * deferred)                                                                  */

LOOM_API const loom_msg *loom_ctx_msg(const loom_ctx *ctx);
LOOM_API const cJSON *loom_ctx_payload(const loom_ctx *ctx);
LOOM_API const cJSON *loom_ctx_parameter(const loom_ctx *ctx);
/* The service's own configuration: the `config.<service>` YAML subtree, or
 * NULL. */
LOOM_API const cJSON *loom_ctx_config(const loom_ctx *ctx);
LOOM_API const loom_service_def *loom_ctx_service(const loom_ctx *ctx);
LOOM_API loom_runtime *loom_ctx_runtime(const loom_ctx *ctx);
LOOM_API loom_store *loom_ctx_store(const loom_ctx *ctx);
/* Logs with the service, command and traceId of the message. */
LOOM_API void loom_ctx_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...)
    LOOM_PRINTF(3, 4);

/* Answers successfully. result (NULL = empty → 204) is taken over on LOOM_OK.
 * LOOM_ESTATE when already answered. After a deferred context is answered it
 * is freed: do not touch it again. */
LOOM_API loom_err loom_ctx_reply(loom_ctx *ctx, cJSON *result);
/* Answers with an error: an HTTP-like status (400..599), a message shown to
 * the caller and optional data (taken over on LOOM_OK). */
LOOM_API loom_err loom_ctx_fail(loom_ctx *ctx, int status, const char *message, cJSON *data);
/* Promises an answer later, from any thread. Commands only. */
LOOM_API loom_err loom_ctx_defer(loom_ctx *ctx);

/* Invokes another command on behalf of this message: trace, principal,
 * tenant and the remaining deadline are carried over. Same contract as
 * loom_runtime_invoke. */
LOOM_API loom_err loom_ctx_invoke(loom_ctx *ctx, const loom_call *call, loom_reply_fn cb,
                                  void *user);
/* Blocking variant, bounded by the call's timeout and this message's
 * deadline. Runs the target inline when it is a local in-process command. */
LOOM_API loom_err loom_ctx_call(loom_ctx *ctx, const loom_call *call, loom_msg **response);
/* Emits an event as this service (payload taken over on LOOM_OK). With the
 * in-memory broker the event is delivered (queued for the subscriptions'
 * workers) before this returns. */
LOOM_API loom_err loom_ctx_emit(loom_ctx *ctx, const char *event_name, cJSON *payload);

/* The same three, but they ALWAYS take ownership: what could not be sent
 * is freed (and the reason logged at warn through the context), so a
 * handler answers in one line:
 *
 *   return (void)loom_ctx_reply_take(ctx, result);
 *   loom_ctx_fail_take(ctx, 404, "no such reading", NULL);
 *
 * The return value is that of the underlying call, for those who care. */
LOOM_API loom_err loom_ctx_reply_take(loom_ctx *ctx, cJSON *result);
LOOM_API loom_err loom_ctx_fail_take(loom_ctx *ctx, int status, const char *message, cJSON *data);
LOOM_API loom_err loom_ctx_emit_take(loom_ctx *ctx, const char *event_name, cJSON *payload);

/* ------------------------------------------------------------------------ */
/* State store (see loom/store.h for the adapter interface)                  */

/* Keys are 1 to 1024 bytes (LOOM_EINVAL otherwise).
 * Reads a value: on LOOM_OK *out is a new cJSON tree (cJSON_Delete it).
 * LOOM_ENOTFOUND when absent or expired, LOOM_EUNAVAILABLE when a remote
 * store cannot be reached. */
LOOM_API loom_err loom_store_get(loom_store *s, const char *key, cJSON **out);
/* Stores a copy of value. ttl_ms 0 = no expiry. */
LOOM_API loom_err loom_store_set(loom_store *s, const char *key, const cJSON *value,
                                 uint32_t ttl_ms);
/* Stores a copy of value only if the key is absent: LOOM_EEXIST otherwise. */
LOOM_API loom_err loom_store_add(loom_store *s, const char *key, const cJSON *value,
                                 uint32_t ttl_ms);
/* LOOM_ENOTFOUND when absent. */
LOOM_API loom_err loom_store_delete(loom_store *s, const char *key);
/* Atomically adds delta to an integer value (absent = 0) and returns the new
 * value in *out (optional). LOOM_EINVAL when the value is not an integer or
 * the sum overflows int64. */
LOOM_API loom_err loom_store_incr(loom_store *s, const char *key, int64_t delta, int64_t *out);
/* Compare-and-set: atomically replaces the value with a copy of value (ttl_ms
 * as in loom_store_set), or deletes the key when value is NULL, but only if
 * the current value equals expected; expected NULL means "only if absent".
 * Values are compared as the compact JSON text cJSON_PrintUnformatted makes
 * of them, so objects must list their members in the same order; integers
 * written by loom_store_incr compare equal to cJSON numbers below 1e15.
 * LOOM_OK when swapped, LOOM_EEXIST when the current value differs (or is
 * present when expected is NULL), LOOM_EUNSUPPORTED when the store has no
 * cas (an adapter of ABI version 1). */
LOOM_API loom_err loom_store_cas(loom_store *s, const char *key, const cJSON *expected,
                                 const cJSON *value, uint32_t ttl_ms);
/* Lists keys that begin with prefix ("" or NULL = every key), a page at a
 * time, in byte order (strcmp): at most limit keys (1..1000; 0 = 100) that
 * sort after `after` (NULL or "" = from the first; pass the last key of the
 * previous page to get the next one). Expired keys are not listed. On
 * LOOM_OK *keys is a new cJSON array of strings (cJSON_Delete it) and *more
 * (optional) says whether keys are left after this page. A key written
 * while you page is listed when it sorts after your position. Costs: the
 * memory store looks at every key, the file store at the matching ones,
 * Redis SCANs the keys that match the prefix (server-side MATCH). LOOM_EINVAL
 * for a bad limit or a prefix or `after` over 1024 bytes,
 * LOOM_EUNSUPPORTED when the store has no list (an adapter of ABI version
 * 1 or 2). */
LOOM_API loom_err loom_store_list(loom_store *s, const char *prefix, const char *after,
                                  size_t limit, cJSON **keys, bool *more);

/* ------------------------------------------------------------------------ */
/* Deployment configuration (YAML file, environment, flags). A loom_config is
 * not locked: change it from one thread; read-only use from many threads at
 * once is fine.                                                               */

/* Creates an empty configuration (every value at its default). */
LOOM_API loom_err loom_config_create(loom_config **out);
LOOM_API void loom_config_destroy(loom_config *cfg);
/* Loads a YAML file over the current values (maps merge, lists and scalars
 * replace; `key: ~` resets a key to its default). LOOM_EIO when it cannot be
 * read, LOOM_ETOOBIG over 1 MiB, LOOM_EPARSE for broken or unsupported YAML
 * (anchors, aliases, several documents), LOOM_ECONFIG for unknown keys or bad
 * values; loom_config_error() then says "FILE:LINE: KEY: reason". A failed
 * load leaves the configuration as it was. */
LOOM_API loom_err loom_config_load_file(loom_config *cfg, const char *path);
/* Same, from memory; name is used in error messages. */
LOOM_API loom_err loom_config_load_string(loom_config *cfg, const char *yaml, size_t len,
                                          const char *name);
/* Applies LOOM_* environment variables (docs/configuration.md). */
LOOM_API loom_err loom_config_apply_env(loom_config *cfg);
/* Sets one value by dotted key ("broker.url", "workers", "http.listen")
 * from its text form, validated as in a file. */
LOOM_API loom_err loom_config_set(loom_config *cfg, const char *key, const char *value);
/* The last error, or "" when none. Valid until the next call on cfg. */
LOOM_API const char *loom_config_error(const loom_config *cfg);
/* A value by dotted key, or NULL when unset. Borrowed. */
LOOM_API const cJSON *loom_config_get(const loom_config *cfg, const char *key);
/* The whole tree. Borrowed. */
LOOM_API const cJSON *loom_config_tree(const loom_config *cfg);

/* ------------------------------------------------------------------------ */
/* Ready-made main                                                           */

/* Runs a service program: parses flags (--config, --services, --broker,
 * --http, --instance, --workers, --log-level, --log-format, --help,
 * --version, and the one-shot client --call SERVICE.COMMAND [JSON] [--param
 * JSON] [--timeout MS], --emit EVENT [JSON] [--timeout MS]), applies the
 * configuration, runs the selected services until SIGINT/SIGTERM, and
 * returns the process exit code. Call it once from main().
 *
 * One-shot runs: with a network broker (mqtt://, nats://) they run no local
 * service unless --services is on their command line, so the answer comes
 * from the running instances; with memory: every selected service runs in
 * the one-shot process. --timeout bounds the whole run, waiting for the
 * broker included (without it: up to 10 s for the broker, then the call's
 * own timeout). --call and --emit return once the in-process subscriptions
 * their events reached (a command's success event, the emitted event, what
 * those handlers emitted) have handled them (loom_runtime_wait_events),
 * within the same bound; with a network broker nothing runs in process and
 * they return once answered / published. */
LOOM_API int loom_main(int argc, char **argv, const loom_service_def *const *services);

/* What a program tells loom_main_with about itself. Every field is
 * optional (zero = loom's behaviour). Read during the call only. */
typedef struct loom_main_options {
    size_t size; /* sizeof, set by the _INIT macro (see EXTENSIBLE STRUCTS) */
    /* The program: --version prints "NAME VERSION (loom X.Y.Z)"; the
     * OpenAPI document's info.title and info.version (keys
     * http.openapi.title / .version, which the file can still override).
     * name defaults to argv[0]'s file name. */
    const char *name;
    const char *version;
    const char *description; /* --help's first line, OpenAPI info.description */
    /* A YAML file loaded when neither --config nor LOOM_CONFIG names one,
     * and only when it exists (e.g. "/etc/greenhouse.yaml"). */
    const char *config_file;
    /* Program defaults as "KEY=VALUE" texts (the --set syntax), NULL-
     * terminated, under everything else (file, environment, flags):
     *   (const char *const[]){"state.url=file:/var/lib/gh.json", NULL} */
    const char *const *defaults;
    /* The user pointer each service's handlers receive, in the order of
     * the services array (NULL: NULL for all). */
    void *const *users;
} loom_main_options;

// clang-format off
#define LOOM_MAIN_OPTIONS_INIT(...) {.size = sizeof(loom_main_options), __VA_ARGS__}
// clang-format on

/* loom_main with program options (opts may be NULL: same as loom_main). */
LOOM_API int loom_main_with(int argc, char **argv, const loom_service_def *const *services,
                            const loom_main_options *opts);

#ifdef __cplusplus
}
#endif
#endif
