/*
 * loom — a test kit for your own services.
 *
 * A loom_test is a started runtime on a private in-memory broker with a
 * fresh, private memory store, running the services you give it: every
 * test gets its own (create one per test, destroy it at the end). Calls
 * take JSON text and hand back the status and the JSON body, so a test
 * reads like the HTTP exchange it stands for:
 *
 *     loom_test *t;
 *     assert(loom_test_create(&t, LOOM_SERVICES(&sensors, &alerts), NULL) == LOOM_OK);
 *     int status;
 *     cJSON *body;
 *     loom_test_call(t, "sensors.record", "{\"sensor\":\"s1\",\"value\":31}", NULL,
 *                    &status, &body);          // 200, body = the reading
 *     cJSON_Delete(body);
 *     loom_test_emit(t, "readingRecorded", "{\"sensor\":\"s1\",\"value\":99}");
 *     // every subscription has handled it (and what it emitted) by now
 *     loom_test_destroy(t);
 *
 * It fails nothing by itself: every call returns a loom_err, so it works
 * with cmocka, Unity, plain assert() or any other runner. Nothing here
 * polls: waiting for subscriptions uses the runtime's event counter
 * (loom_runtime_wait_events).
 *
 * Threads: use one loom_test from one thread at a time (the test's);
 * handlers run on its worker threads as in production. Installed with the
 * library (make install); documented in docs/testing.md.
 */
#ifndef LOOM_TEST_H
#define LOOM_TEST_H

#include "../loom.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_test loom_test;

/* Every field optional. Copied at create. Initialise with
 * LOOM_TEST_OPTIONS_INIT(.config_yaml = ...). */
typedef struct loom_test_options {
    size_t size; /* sizeof, set by LOOM_TEST_OPTIONS_INIT (loom.h, EXTENSIBLE STRUCTS) */
    /* YAML applied to the test runtime, e.g. the services' own sections:
     * "config:\n  alerts:\n    threshold: 30\n" (loom_ctx_config). */
    const char *config_yaml;
    /* The user pointer of each service, in the order of services. */
    void *const *users;
    unsigned workers;         /* worker threads; default 2 */
    uint32_t timeout_ms;      /* bound of each call and wait; default 5000 */
    loom_log_level log_level; /* default LOOM_LOG_WARN */
} loom_test_options;

// clang-format off
#define LOOM_TEST_OPTIONS_INIT(...) {.size = sizeof(loom_test_options), __VA_ARGS__}
// clang-format on

/* Creates and starts the test runtime with services (NULL-terminated, e.g.
 * LOOM_SERVICES(&a, &b); may be NULL) and waits until it is ready. opts
 * may be NULL. Errors: LOOM_ECONFIG / LOOM_EPARSE (config_yaml, details
 * logged), LOOM_EINVAL (a bad definition), LOOM_ENOMEM. */
LOOM_API loom_err loom_test_create(loom_test **out, const loom_service_def *const *services,
                                   const loom_test_options *opts);
/* Stops and frees everything, the store included. Accepts NULL. */
LOOM_API void loom_test_destroy(loom_test *t);

/* The runtime (for loom_runtime_* calls) and its store (fresh and empty at
 * create; seed it or inspect it with loom_store_*). Owned by t. */
LOOM_API loom_runtime *loom_test_runtime(loom_test *t);
LOOM_API loom_store *loom_test_store(loom_test *t);

/* Calls "service.command" (version "1"; "service.command@2" for another)
 * through the runtime, with payload and parameter as JSON text (NULL:
 * none), validation included. On LOOM_OK *status (optional) is the status
 * (200, 204, the handler's, 400, 404, 503, 504) and *body (optional) a new
 * cJSON: the result, or the error body {"status","message","data"?}; NULL
 * for an empty result. cJSON_Delete it. LOOM_EPARSE when a JSON text does
 * not parse, LOOM_EINVAL for a bad target. */
LOOM_API loom_err loom_test_call(loom_test *t, const char *target, const char *payload_json,
                                 const char *param_json, int *status, cJSON **body);

/* Emits event_name with payload (JSON text or NULL) and waits until every
 * subscription has handled it, retries and the events handlers emitted in
 * turn included. LOOM_ETIMEDOUT after timeout_ms. */
LOOM_API loom_err loom_test_emit(loom_test *t, const char *event_name, const char *payload_json);

/* Waits until every event delivered so far has been handled (after calls
 * whose commands have a success event, for instance; loom_test_call already
 * returns after they are delivered). LOOM_ETIMEDOUT after timeout_ms. */
LOOM_API loom_err loom_test_wait(loom_test *t);

/* Runs one command handler with a fake context: no registration, no
 * routing, no schema validation; the context has the test runtime's store,
 * logger and emit, the service's config section, svc's name and version
 * and user as its user pointer. payload_json and param_json as in
 * loom_test_call; *status and *body as there. A handler that defers is
 * waited for (up to timeout_ms, then 504). svc need not be one of the
 * test's services. */
LOOM_API loom_err loom_test_run_command(loom_test *t, const loom_service_def *svc,
                                        const loom_command_def *cmd, void *user,
                                        const char *payload_json, const char *param_json,
                                        int *status, cJSON **body);

/* Runs one subscription handler with a fake context for an event named
 * event_name with payload (JSON text or NULL), once: no filter, no schema,
 * no retry. *ack (optional) gets what the handler returned and *result
 * (optional) what it gave to loom_ctx_reply (NULL if nothing); the result
 * is NOT emitted. Events the handler emits itself are published as usual. */
LOOM_API loom_err loom_test_run_subscription(loom_test *t, const loom_service_def *svc,
                                             const loom_subscription_def *sub, void *user,
                                             const char *event_name, const char *payload_json,
                                             loom_ack *ack, cJSON **result);

#ifdef __cplusplus
}
#endif
#endif
