/* The runtime on the in-memory broker: routing, validation, timeouts and
 * deadlines, async completion, stop/drain, and many threads at once. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loom/test.h"
#include "support/proc.h"
#include "support/support.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* --- test services ----------------------------------------------------------- */

static void echo_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *out = cJSON_CreateObject();
    const cJSON *p = loom_ctx_payload(ctx);
    const cJSON *q = loom_ctx_parameter(ctx);
    if (p)
        cJSON_AddItemToObject(out, "payload", cJSON_Duplicate(p, 1));
    if (q)
        cJSON_AddItemToObject(out, "parameter", cJSON_Duplicate(q, 1));
    const loom_msg *m = loom_ctx_msg(ctx);
    if (loom_msg_principal_id(m))
        cJSON_AddStringToObject(out, "principal", loom_msg_principal_id(m));
    cJSON_AddStringToObject(out, "traceId", loom_msg_trace_id(m));
    assert_int_equal(loom_ctx_reply(ctx, out), LOOM_OK);
    /* A second answer is refused. */
    assert_int_equal(loom_ctx_reply(ctx, NULL), LOOM_ESTATE);
}

static void empty_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_reply(ctx, NULL);
}

static void fail_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_fail(ctx, 404, "no such thing", cJSON_CreateString("detail"));
}

static void crash_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_fail(ctx, 502, "secret internal detail", cJSON_CreateString("secret"));
}

static void noreply_fn(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
}

static atomic_int slow_started;
static void slow_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&slow_started, 1);
    const cJSON *ms = cJSON_GetObjectItem(loom_ctx_payload(ctx), "ms");
    sleep_ms(ms ? ms->valueint : 300);
    loom_ctx_reply(ctx, cJSON_CreateString("slept"));
}

static void badout_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_reply(ctx, cJSON_CreateNumber(42)); /* output schema wants a string */
}

static atomic_int started_count;
static void count_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started_count, 1);
    loom_ctx_reply(ctx, NULL);
}

/* Answers later from another thread. */
static void *later_thread(void *arg)
{
    loom_ctx *ctx = arg;
    sleep_ms(50);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "answered", "later");
    loom_ctx_reply(ctx, r);
    return NULL;
}

static void deferred_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    assert_int_equal(loom_ctx_defer(ctx), LOOM_OK);
    assert_int_equal(loom_ctx_defer(ctx), LOOM_ESTATE);
    pthread_t t;
    pthread_create(&t, NULL, later_thread, ctx);
    pthread_detach(t);
}

/* Calls echo through the context (trace and principal carried over). */
static void chain_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_call call = LOOM_CALL_INIT(.service = "test", .command = "echo",
                                    .payload = cJSON_CreateString("inner"));
    loom_msg *resp = NULL;
    assert_int_equal(loom_ctx_call(ctx, &call, &resp), LOOM_OK);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddNumberToObject(out, "status", loom_msg_status(resp));
    cJSON_AddItemToObject(out, "inner", loom_msg_result_json(resp));
    loom_msg_release(resp);
    loom_ctx_reply(ctx, out);
}

static void store_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_store *s = loom_ctx_store(ctx);
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "hits", 1, &n), LOOM_OK);
    const cJSON *cfg = loom_ctx_config(ctx);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddNumberToObject(out, "hits", (double)n);
    if (cfg)
        cJSON_AddItemToObject(out, "config", cJSON_Duplicate(cfg, 1));
    loom_ctx_reply(ctx, out);
}

LOOM_COMMAND(cmd_echo, .name = "echo", .handler = echo_fn);
LOOM_COMMAND(cmd_empty, .name = "empty", .handler = empty_fn);
LOOM_COMMAND(cmd_fail, .name = "fail", .handler = fail_fn);
LOOM_COMMAND(cmd_crash, .name = "crash", .handler = crash_fn);
LOOM_COMMAND(cmd_noreply, .name = "noreply", .handler = noreply_fn);
LOOM_COMMAND(cmd_slow, .name = "slow", .handler = slow_fn, .timeout_ms = 100);
LOOM_COMMAND(cmd_badout, .name = "badout", .handler = badout_fn,
             .output_schema = "{\"type\":\"string\"}");
LOOM_COMMAND(cmd_count, .name = "count", .handler = count_fn);
LOOM_COMMAND(cmd_deferred, .name = "deferred", .handler = deferred_fn);
LOOM_COMMAND(cmd_chain, .name = "chain", .handler = chain_fn);
LOOM_COMMAND(cmd_store, .name = "store", .handler = store_fn);
LOOM_COMMAND(cmd_valid, .name = "valid", .handler = echo_fn,
             .payload_schema = "{\"type\":\"object\",\"properties\":{\"email\":{\"type\":"
                               "\"string\"}},\"required\":[\"email\"]}",
             .parameter_schema = "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":"
                                 "\"string\",\"pattern\":\"^[0-9]+$\"}}}");

LOOM_SERVICE(svc_test, .name = "test", .version = "1", .description = "test service",
             .commands = LOOM_COMMANDS(&cmd_echo, &cmd_empty, &cmd_fail, &cmd_crash,
                                       &cmd_noreply, &cmd_slow, &cmd_badout, &cmd_count,
                                       &cmd_deferred, &cmd_chain, &cmd_store, &cmd_valid));

/* Log capture: tests assert on what the runtime logs. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[65536];
static void capture_log(const loom_log_record *rec, void *user)
{
    (void)user;
    pthread_mutex_lock(&log_mu);
    size_t len = strlen(log_buf);
    if (len + strlen(rec->message) + 2 < sizeof log_buf) {
        strcat(log_buf, rec->message);
        strcat(log_buf, "\n");
    }
    pthread_mutex_unlock(&log_mu);
}

static bool log_contains(const char *s)
{
    pthread_mutex_lock(&log_mu);
    bool found = strstr(log_buf, s) != NULL;
    pthread_mutex_unlock(&log_mu);
    return found;
}

static loom_runtime *start_rt(const char *broker, const loom_service_def *svc)
{
    loom_runtime_config cfg =
        LOOM_RUNTIME_CONFIG_INIT(.broker_url = broker, .workers = 4, .log_fn = capture_log,
                                 .drain_timeout_ms = 2000);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &cfg), LOOM_OK);
    if (svc)
        assert_int_equal(loom_runtime_add_service(rt, svc, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, 2000), LOOM_OK);
    return rt;
}

static loom_msg *call(loom_runtime *rt, const char *cmd, const char *payload)
{
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = cmd,
                                 .payload = payload ? t_json(payload) : NULL);
    loom_msg *resp = NULL;
    assert_int_equal(loom_runtime_call(rt, &c, &resp), LOOM_OK);
    assert_non_null(resp);
    return resp;
}

/* --- tests ------------------------------------------------------------------- */

static void test_sync_call_success(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:sync", &svc_test);
    loom_msg *r = call(rt, "echo", "{\"a\":1}");
    assert_int_equal(loom_msg_status(r), 200);
    assert_int_equal(loom_msg_type_of(r), LOOM_MSG_SUCCESS);
    assert_true(t_json_eq(cJSON_GetObjectItem(loom_msg_payload(r), "payload"), "{\"a\":1}"));
    assert_non_null(loom_msg_correlation_id(r));
    loom_msg_release(r);

    /* a blocking call whose in-process handler defers and answers from
     * another thread */
    r = call(rt, "deferred", NULL);
    assert_int_equal(loom_msg_status(r), 200);
    assert_true(t_json_eq(loom_msg_payload(r), "{\"answered\":\"later\"}"));
    loom_msg_release(r);

    r = call(rt, "empty", NULL);
    assert_int_equal(loom_msg_status(r), 204);
    assert_null(loom_msg_result_json(r));
    loom_msg_release(r);
    loom_runtime_destroy(rt);
}

static void test_handler_errors(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:errors", &svc_test);
    loom_msg *r = call(rt, "fail", NULL);
    assert_int_equal(loom_msg_status(r), 404);
    assert_string_equal(loom_msg_error(r), "no such thing");
    assert_true(loom_msg_is_handled_error(r));
    assert_true(t_json_eq(loom_msg_error_data(r), "\"detail\""));
    loom_msg_release(r);

    /* Unexpected errors: a bare 500, details only in the log. */
    r = call(rt, "crash", NULL);
    assert_int_equal(loom_msg_status(r), 500);
    assert_string_equal(loom_msg_error(r), "internal server error");
    assert_null(loom_msg_error_data(r));
    assert_false(loom_msg_is_handled_error(r));
    assert_true(log_contains("secret internal detail"));
    loom_msg_release(r);

    r = call(rt, "noreply", NULL);
    assert_int_equal(loom_msg_status(r), 500);
    assert_true(log_contains("handler returned without a reply"));
    loom_msg_release(r);

    r = call(rt, "badout", NULL);
    assert_int_equal(loom_msg_status(r), 500);
    assert_string_equal(loom_msg_error(r), "internal server error");
    assert_true(log_contains("output does not match the output schema"));
    loom_msg_release(r);
    loom_runtime_destroy(rt);
}

/* An unknown command of a service that runs here: 404 with the service's
 * commands. An unknown service (or version): 503 no receiver. Both at
 * once, not after a timeout. */
static void test_unknown_command_404_service_503(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:unknown", &svc_test);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    loom_msg *r = call(rt, "nosuch", NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_int_equal(loom_msg_status(r), 404);
    assert_true(loom_msg_is_handled_error(r));
    assert_non_null(strstr(loom_msg_error(r), "has no command 'nosuch'"));
    assert_non_null(strstr(loom_msg_error(r), "echo, empty"));
    const cJSON *cmds = cJSON_GetObjectItemCaseSensitive(loom_msg_error_data(r), "commands");
    assert_int_equal(cJSON_GetArraySize(cmds), 12);
    assert_string_equal(cJSON_GetArrayItem(cmds, 0)->valuestring, "echo");
    /* not after a timeout: well under the 30 s default */
    assert_true(b.tv_sec - a.tv_sec < 2);
    loom_msg_release(r);

    loom_call c = LOOM_CALL_INIT(.service = "other", .command = "x");
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 503);
    assert_non_null(strstr(loom_msg_error(r), "no receiver"));
    loom_msg_release(r);
    c = (loom_call)LOOM_CALL_INIT(.service = "test", .version = "2", .command = "echo");
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 503);
    loom_msg_release(r);
    loom_runtime_destroy(rt);
}

static void test_validation_400(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:valid", &svc_test);
    loom_msg *r = call(rt, "valid", "{\"name\":\"x\"}");
    assert_int_equal(loom_msg_status(r), 400);
    assert_string_equal(loom_msg_error(r), "invalid payload");
    char *details = cJSON_PrintUnformatted(loom_msg_error_data(r));
    assert_non_null(strstr(details, "email"));
    free(details);
    loom_msg_release(r);

    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "valid",
                                 .payload = t_json("{\"email\":\"a@b\"}"),
                                 .parameter = t_json("{\"id\":\"abc\"}"));
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 400);
    assert_string_equal(loom_msg_error(r), "invalid parameter");
    loom_msg_release(r);

    c.payload = t_json("{\"email\":\"a@b\"}");
    c.parameter = t_json("{\"id\":\"123\"}");
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 200);
    loom_msg_release(r);

    /* A parameter that is not an object is refused before anything runs,
     * and the caller keeps ownership. */
    cJSON *bad = cJSON_CreateString("x");
    c.payload = NULL;
    c.parameter = bad;
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_EINVAL);
    cJSON_Delete(bad);
    loom_runtime_destroy(rt);
}

static void test_timeout_and_deadline(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:timeout", &svc_test);
    /* A blocking call runs an in-process handler inline; the handler
     * finishes but its caller has its answer at the deadline: slow sleeps
     * 300 ms against a 100 ms timeout. */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    loom_call c =
        LOOM_CALL_INIT(.service = "test", .command = "slow", .payload = t_json("{\"ms\":300}"));
    loom_msg *r = NULL;
    assert_int_equal(loom_runtime_invoke(rt, &c, NULL, NULL), LOOM_EINVAL); /* no callback */
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    (void)a;
    (void)b;
    assert_int_equal(loom_msg_status(r), 504);
    loom_msg_release(r);

    /* Work past its deadline is not started. */
    atomic_store(&started_count, 0);
    loom_call d = LOOM_CALL_INIT(.service = "test", .command = "count", .deadline_ms = 1);
    assert_int_equal(loom_runtime_call(rt, &d, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 504);
    assert_int_equal(atomic_load(&started_count), 0);
    loom_msg_release(r);
    loom_runtime_destroy(rt);
}

typedef struct async_result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int status;
    int count;
    cJSON *body;
} async_result;

static void async_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    async_result *a = user;
    pthread_mutex_lock(&a->mu);
    a->status = loom_msg_status(resp);
    cJSON_Delete(a->body);
    a->body = loom_msg_result_json(resp);
    a->count++;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void async_wait(async_result *a, int count)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    pthread_mutex_lock(&a->mu);
    while (a->count < count)
        if (pthread_cond_timedwait(&a->cv, &a->mu, &ts) != 0)
            break;
    pthread_mutex_unlock(&a->mu);
    assert_int_equal(a->count, count);
}

static void test_async_and_deferred(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:async", &svc_test);
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "deferred");
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    async_wait(&a, 1);
    assert_int_equal(a.status, 200);
    assert_true(t_json_eq(a.body, "{\"answered\":\"later\"}"));

    /* async to a slow handler times out at 100 ms */
    c.command = "slow";
    c.payload = t_json("{\"ms\":400}");
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    async_wait(&a, 2);
    assert_int_equal(a.status, 504);
    cJSON_Delete(a.body);
    loom_runtime_destroy(rt);
}

static void test_chain_carries_trace(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:chain", &svc_test);
    const char *trace = "0123456789abcdef0123456789abcdef";
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "chain", .trace_id = trace,
                                 .principal_id = "alice");
    loom_msg *r = NULL;
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 200);
    const cJSON *inner = cJSON_GetObjectItem(loom_msg_payload(r), "inner");
    assert_string_equal(cJSON_GetObjectItem(inner, "traceId")->valuestring, trace);
    assert_string_equal(cJSON_GetObjectItem(inner, "principal")->valuestring, "alice");
    assert_string_equal(loom_msg_trace_id(r), trace);
    loom_msg_release(r);

    c.trace_id = "not-hex";
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_EINVAL);
    loom_runtime_destroy(rt);
}

static void test_store_and_service_config(void **state)
{
    (void)state;
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    const char *yaml = "config:\n  test:\n    greeting: hi\n";
    assert_int_equal(loom_config_load_string(cfg, yaml, strlen(yaml), "t.yaml"), LOOM_OK);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = "memory:store", .workers = 2);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg); /* copied */
    assert_int_equal(loom_runtime_add_service(rt, &svc_test, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(rt, &svc_test, NULL), LOOM_EEXIST);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(rt, &svc_test, NULL), LOOM_ESTATE);
    for (int i = 1; i <= 3; i++) {
        loom_msg *r = call(rt, "store", NULL);
        assert_int_equal(cJSON_GetObjectItem(loom_msg_payload(r), "hits")->valueint, i);
        assert_true(t_json_eq(cJSON_GetObjectItem(loom_msg_payload(r), "config"),
                              "{\"greeting\":\"hi\"}"));
        loom_msg_release(r);
    }
    loom_runtime_destroy(rt);
}

/* --- across runtimes on one bus: remote routing, groups, every-instance --- */

static atomic_int seen_a, seen_b, seen_all_a, seen_all_b, retries, emitted_seen;

static loom_ack on_group(loom_ctx *ctx, void *user)
{
    (void)ctx;
    atomic_fetch_add(user ? &seen_b : &seen_a, 1);
    return LOOM_ACK;
}

static loom_ack on_all(loom_ctx *ctx, void *user)
{
    (void)ctx;
    atomic_fetch_add(user ? &seen_all_b : &seen_all_a, 1);
    return LOOM_ACK;
}

static loom_ack on_retry(loom_ctx *ctx, void *user)
{
    (void)user;
    (void)ctx;
    return atomic_fetch_add(&retries, 1) < 2 ? LOOM_RETRY : LOOM_ACK;
}

static loom_ack on_transform(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "from", loom_msg_event_name(loom_ctx_msg(ctx)));
    loom_ctx_reply(ctx, out);
    return LOOM_ACK;
}

static loom_ack on_transformed(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *from = cJSON_GetObjectItem(loom_ctx_payload(ctx), "from");
    if (cJSON_IsString(from) && strcmp(from->valuestring, "ping") == 0)
        atomic_fetch_add(&emitted_seen, 1);
    return LOOM_ACK;
}

static atomic_int principal_seen;
static loom_ack on_principal(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&principal_seen, 1);
    return LOOM_ACK;
}

LOOM_SUBSCRIPTION(sub_group, .name = "grouped", .handler = on_group,
                  .filter = {.event_name = "ping"});
LOOM_SUBSCRIPTION(sub_all, .name = "everyone", .handler = on_all,
                  .filter = {.event_name = "ping"}, .delivery = LOOM_DELIVER_ALL);
LOOM_SUBSCRIPTION(sub_retry, .name = "retrying", .handler = on_retry,
                  .filter = {.event_name = "flaky"}, .max_retries = 5);
LOOM_SUBSCRIPTION(sub_transform, .name = "transform", .handler = on_transform,
                  .filter = {.event_name = "ping"}, .emit_event = "pong");
LOOM_SUBSCRIPTION(sub_transformed, .name = "transformed", .handler = on_transformed,
                  .filter = {.event_name = "pong", .sender_service = "events"});
LOOM_SUBSCRIPTION(sub_principal, .name = "principal", .handler = on_principal,
                  .filter = {.event_name = "ping", .principal_id = "bob"});
LOOM_SERVICE(svc_events, .name = "events", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_group, &sub_all, &sub_retry,
                                                 &sub_transform, &sub_transformed,
                                                 &sub_principal));

static bool wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms / 5 && atomic_load(v) < want; i++)
        sleep_ms(5);
    return atomic_load(v) >= want;
}

static void test_subscriptions_groups_and_all(void **state)
{
    (void)state;
    loom_runtime_config cfg = LOOM_RUNTIME_CONFIG_INIT(.broker_url = "memory:events", .workers = 2,
                                                       .log_fn = capture_log);
    loom_runtime *a = NULL, *b = NULL;
    assert_int_equal(loom_runtime_create(&a, &cfg), LOOM_OK);
    assert_int_equal(loom_runtime_create(&b, &cfg), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(a, &svc_events, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(b, &svc_events, (void *)1), LOOM_OK);
    assert_int_equal(loom_runtime_start(a), LOOM_OK);
    assert_int_equal(loom_runtime_start(b), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(a, 2000), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(b, 2000), LOOM_OK);
    atomic_store(&seen_a, 0);
    atomic_store(&seen_b, 0);
    atomic_store(&seen_all_a, 0);
    atomic_store(&seen_all_b, 0);
    atomic_store(&emitted_seen, 0);
    const int n = 100;
    for (int i = 0; i < n; i++)
        assert_int_equal(loom_runtime_emit(a, "ping", cJSON_CreateNumber(i)), LOOM_OK);
    assert_true(wait_for(&seen_all_a, n, 3000));
    assert_true(wait_for(&seen_all_b, n, 3000));
    for (int i = 0; i < 100 && atomic_load(&seen_a) + atomic_load(&seen_b) < n; i++)
        sleep_ms(10);
    sleep_ms(50); /* nothing more may arrive */
    /* one instance per group: each event handled once in total */
    assert_int_equal(atomic_load(&seen_a) + atomic_load(&seen_b), n);
    assert_true(atomic_load(&seen_a) > 0 && atomic_load(&seen_b) > 0);
    assert_int_equal(atomic_load(&seen_all_a), n);
    assert_int_equal(atomic_load(&seen_all_b), n);
    /* the transform subscription emitted pong once per ping */
    assert_true(wait_for(&emitted_seen, n, 3000));
    sleep_ms(50);
    assert_int_equal(atomic_load(&emitted_seen), n);
    loom_runtime_destroy(a);
    loom_runtime_destroy(b);
}

static void test_subscription_retry_and_filter(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:retry", &svc_events);
    atomic_store(&retries, 0);
    assert_int_equal(loom_runtime_emit(rt, "flaky", NULL), LOOM_OK);
    assert_true(wait_for(&retries, 3, 3000)); /* 2 retries, then ack */
    sleep_ms(300);
    assert_int_equal(atomic_load(&retries), 3);

    /* The principal filter: only bob's pings. Emitted from a handler
     * context to carry a principal: use a call with principal and a
     * command that emits. Plain runtime emits carry none. */
    atomic_store(&principal_seen, 0);
    assert_int_equal(loom_runtime_emit(rt, "ping", NULL), LOOM_OK);
    sleep_ms(100);
    assert_int_equal(atomic_load(&principal_seen), 0);
    loom_runtime_destroy(rt);
}

/* loom_runtime_wait_events returns once every event is handled: retries
 * (with their backoff) and events emitted by handlers included, with no
 * sleep in the test. */
static void test_wait_events(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:wait", &svc_events);
    atomic_store(&retries, 0);
    assert_int_equal(loom_runtime_emit(rt, "flaky", NULL), LOOM_OK);
    assert_int_equal(loom_runtime_wait_events(rt, 10000), LOOM_OK);
    assert_int_equal(atomic_load(&retries), 3); /* 2 retries (50 + 100 ms), then ack */

    atomic_store(&seen_all_a, 0);
    atomic_store(&emitted_seen, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(loom_runtime_emit(rt, "ping", cJSON_CreateNumber(i)), LOOM_OK);
    assert_int_equal(loom_runtime_wait_events(rt, 10000), LOOM_OK);
    assert_int_equal(atomic_load(&seen_all_a), 100);
    assert_int_equal(atomic_load(&emitted_seen), 100); /* pong, emitted by a handler */
    /* Nothing in hand: at once. */
    assert_int_equal(loom_runtime_wait_events(rt, 0), LOOM_OK);
    assert_int_equal(loom_runtime_wait_events(NULL, 0), LOOM_EINVAL);
    loom_runtime_destroy(rt);
}

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;

static loom_ack on_gated(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    return LOOM_ACK;
}

LOOM_SUBSCRIPTION(sub_gated, .name = "gated", .handler = on_gated,
                  .filter = {.event_name = "gated"});
LOOM_SERVICE(svc_gated, .name = "gated", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_gated));

/* A handler that has not finished keeps wait_events waiting. */
static void test_wait_events_times_out(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:gated", &svc_gated);
    gate_open = false;
    assert_int_equal(loom_runtime_emit(rt, "gated", NULL), LOOM_OK);
    assert_int_equal(loom_runtime_wait_events(rt, 100), LOOM_ETIMEDOUT);
    pthread_mutex_lock(&gate_mu);
    gate_open = true;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
    assert_int_equal(loom_runtime_wait_events(rt, 10000), LOOM_OK);
    loom_runtime_destroy(rt);
}

/* The _take calls free what they could not send: under ASan a leak here
 * fails the run. */
static atomic_int take_results;
static void take_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    int ok = 0;
    ok += loom_ctx_emit_take(ctx, NULL, cJSON_CreateString("refused")) == LOOM_EINVAL;
    ok += loom_ctx_emit_take(ctx, "taken", cJSON_CreateString("sent")) == LOOM_OK;
    ok += loom_ctx_reply_take(ctx, cJSON_CreateString("first")) == LOOM_OK;
    ok += loom_ctx_reply_take(ctx, cJSON_CreateString("second")) == LOOM_ESTATE;
    ok += loom_ctx_fail_take(ctx, 409, "late", cJSON_CreateString("data")) == LOOM_ESTATE;
    ok += loom_ctx_reply_take(NULL, cJSON_CreateString("no context")) == LOOM_EINVAL;
    atomic_store(&take_results, ok);
}
LOOM_COMMAND(cmd_take, .name = "take", .handler = take_fn);
LOOM_SERVICE(svc_take, .name = "take", .version = "1", .commands = LOOM_COMMANDS(&cmd_take));

static void test_take_calls_free_what_they_cannot_send(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:take", &svc_take);
    loom_call c = LOOM_CALL_INIT(.service = "take", .command = "take");
    loom_msg *r = NULL;
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 200);
    assert_string_equal(cJSON_GetStringValue(loom_msg_payload(r)), "first");
    loom_msg_release(r);
    assert_int_equal(atomic_load(&take_results), 6);
    loom_runtime_destroy(rt);
}

/* loom_main_with: the user pointer per service, program defaults and the
 * default config file reach the handler of a one-shot --call run in this
 * process; a missing default file is skipped. */
static void *seen_user;
static char seen_greeting[64];
static void who_fn(loom_ctx *ctx, void *user)
{
    seen_user = user;
    const char *g = cJSON_GetStringValue(cJSON_GetObjectItem(loom_ctx_config(ctx), "greeting"));
    snprintf(seen_greeting, sizeof seen_greeting, "%s", g ? g : "(none)");
    loom_ctx_reply_take(ctx, NULL);
}
LOOM_COMMAND(cmd_who, .name = "who", .handler = who_fn);
LOOM_SERVICE(svc_who, .name = "who", .version = "1", .commands = LOOM_COMMANDS(&cmd_who));
LOOM_SERVICE(svc_other, .name = "other", .version = "1", .commands = LOOM_COMMANDS(&cmd_who));

static void test_main_with_options(void **state)
{
    (void)state;
    char path[] = "/tmp/loom-main-with-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char yaml[] = "config:\n  who:\n    greeting: from-the-file\n";
    assert_int_equal(write(fd, yaml, sizeof yaml - 1), (ssize_t)(sizeof yaml - 1));
    close(fd);
    static int marker_a, marker_b;
    char *argv[] = {"prog", "--call", "who.who", NULL};
    loom_main_options opts =
        LOOM_MAIN_OPTIONS_INIT(.name = "prog", .version = "9.9", .config_file = path,
                               .defaults =
                                   (const char *const[]){"log.level=error",
                                                         "config.who.greeting=default", NULL},
                               .users = (void *const[]){&marker_a, &marker_b}, );
    seen_user = NULL;
    assert_int_equal(loom_main_with(3, argv, LOOM_SERVICES(&svc_who, &svc_other), &opts), 0);
    assert_ptr_equal(seen_user, &marker_a);
    assert_string_equal(seen_greeting, "from-the-file"); /* the file over the defaults */
    /* The second service gets the second pointer. */
    char *argv2[] = {"prog", "--call", "other.who", NULL};
    assert_int_equal(loom_main_with(3, argv2, LOOM_SERVICES(&svc_who, &svc_other), &opts), 0);
    assert_ptr_equal(seen_user, &marker_b);
    unlink(path);
    /* Without the file: the program default. */
    assert_int_equal(loom_main_with(3, argv, LOOM_SERVICES(&svc_who, &svc_other), &opts), 0);
    assert_string_equal(seen_greeting, "default");
    /* A bad default is a usage error (2), not a crash. */
    opts.defaults = (const char *const[]){"no-equals-sign", NULL};
    assert_int_equal(loom_main_with(3, argv, LOOM_SERVICES(&svc_who, &svc_other), &opts), 2);
}

/* The test kit passes the user pointers and config_yaml on; a bad YAML is
 * refused. */
static void test_kit_options(void **state)
{
    (void)state;
    static int marker;
    loom_test_options o =
        LOOM_TEST_OPTIONS_INIT(.users = (void *const[]){&marker},
                               .config_yaml = "config:\n  who:\n    greeting: kit\n");
    loom_test *t = NULL;
    assert_int_equal(loom_test_create(&t, LOOM_SERVICES(&svc_who), &o), LOOM_OK);
    int status = 0;
    assert_int_equal(loom_test_call(t, "who.who", NULL, NULL, &status, NULL), LOOM_OK);
    assert_int_equal(status, 204);
    assert_ptr_equal(seen_user, &marker);
    assert_string_equal(seen_greeting, "kit");
    /* The fake context gets the user and the config section too. */
    seen_user = NULL;
    assert_int_equal(loom_test_run_command(t, &svc_who, &cmd_who, &o, NULL, NULL, &status, NULL),
                     LOOM_OK);
    assert_int_equal(status, 204);
    assert_ptr_equal(seen_user, &o);
    loom_test_destroy(t);
    o.config_yaml = "config: [";
    assert_int_not_equal(loom_test_create(&t, LOOM_SERVICES(&svc_who), &o), LOOM_OK);
    assert_null(t);
}

static void test_remote_call_across_runtimes(void **state)
{
    (void)state;
    /* Server runtime has the service; client runtime has none and calls it
     * over the bus. */
    loom_runtime *server = start_rt("memory:remote", &svc_test);
    loom_runtime *client = start_rt("memory:remote", NULL);
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "echo", .payload = t_json("[1,2]"));
    loom_msg *r = NULL;
    assert_int_equal(loom_runtime_call(client, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 200);
    assert_true(t_json_eq(cJSON_GetObjectItem(loom_msg_payload(r), "payload"), "[1,2]"));
    assert_string_equal(loom_msg_sender(r)->instance, loom_runtime_instance_id(server));
    loom_msg_release(r);

    /* async over the bus too */
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    c.command = "fail";
    c.payload = NULL;
    assert_int_equal(loom_runtime_invoke(client, &c, async_cb, &a), LOOM_OK);
    async_wait(&a, 1);
    assert_int_equal(a.status, 404);
    cJSON_Delete(a.body);
    a.body = NULL;

    /* timeouts over the bus */
    c.command = "slow";
    c.payload = t_json("{\"ms\":300}");
    assert_int_equal(loom_runtime_call(client, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 504);
    loom_msg_release(r);

    /* the server stops: 503 at once, not a timeout */
    loom_runtime_destroy(server);
    c.command = "echo";
    c.payload = NULL;
    assert_int_equal(loom_runtime_call(client, &c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 503);
    loom_msg_release(r);
    loom_runtime_destroy(client);
}

/* --- stop and drain ------------------------------------------------------------ */

static void test_stop_drains_in_flight(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:drain", &svc_test);
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "slow",
                                 .payload = t_json("{\"ms\":80}"), .timeout_ms = 5000);
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    sleep_ms(20); /* the handler is running */
    assert_int_equal(loom_runtime_stop(rt), LOOM_OK);
    /* in-flight work finished within the drain limit */
    async_wait(&a, 1);
    assert_int_equal(a.status, 200);
    cJSON_Delete(a.body);
    /* after stop: refused, callback never runs */
    c.payload = NULL;
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_ECLOSED);
    assert_int_equal(loom_runtime_emit(rt, "x", NULL), LOOM_ECLOSED);
    assert_int_equal(loom_runtime_stop(rt), LOOM_OK); /* idempotent */
    loom_runtime_destroy(rt);
    loom_runtime_destroy(NULL);
}

static void test_stop_answers_what_is_left(void **state)
{
    (void)state;
    loom_runtime_config cfg =
        LOOM_RUNTIME_CONFIG_INIT(.broker_url = "memory:left", .workers = 1, .drain_timeout_ms = 50,
                                 .log_fn = capture_log);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &cfg), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(rt, &svc_test, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    /* one worker: the first runs 300 ms, the others queue behind it */
    for (int i = 0; i < 5; i++) {
        loom_call c = LOOM_CALL_INIT(.service = "test", .command = "slow",
                                     .payload = t_json("{\"ms\":300}"), .timeout_ms = 10000);
        assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    }
    sleep_ms(20);
    assert_int_equal(loom_runtime_stop(rt), LOOM_OK);
    /* every caller got an answer: 200 for the one that ran, 503 for the
     * rest; nothing hangs, nothing leaks */
    async_wait(&a, 5);
    cJSON_Delete(a.body);
    loom_runtime_destroy(rt);
}


static void test_concurrency_limit(void **state)
{
    (void)state;
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "limits.concurrency.test.slow", "1"), LOOM_OK);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = "memory:bulkhead", .workers = 4,
                                 .log_fn = capture_log);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    assert_int_equal(loom_runtime_add_service(rt, &svc_test, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    async_result b = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "slow",
                                 .payload = t_json("{\"ms\":300}"), .timeout_ms = 5000);
    atomic_store(&slow_started, 0);
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    assert_true(wait_for(&slow_started, 1, 3000)); /* the first one runs */
    c.payload = t_json("{\"ms\":1}");
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &b), LOOM_OK);
    async_wait(&b, 1);
    assert_int_equal(b.status, 503);
    async_wait(&a, 1);
    assert_int_equal(a.status, 200);
    /* the slot is free again */
    c.payload = t_json("{\"ms\":1}");
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &b), LOOM_OK);
    async_wait(&b, 2);
    assert_int_equal(b.status, 200);
    cJSON_Delete(a.body);
    cJSON_Delete(b.body);
    loom_runtime_destroy(rt);
}


static void test_stop_runs_queued_events(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:queued", &svc_events);
    atomic_store(&seen_all_a, 0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(loom_runtime_emit(rt, "ping", NULL), LOOM_OK);
    /* stop at once: what was queued before the stop still runs, and the
     * events the handlers emit while draining (pong) are accepted */
    assert_int_equal(loom_runtime_stop(rt), LOOM_OK);
    assert_int_equal(atomic_load(&seen_all_a), 50);
    assert_false(log_contains("cannot emit pong"));
    loom_runtime_destroy(rt);
}


static void test_invoke_inline(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:inline", &svc_test);
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    /* answered on this thread, before invoke returns */
    loom_call c = LOOM_CALL_INIT(.service = "test", .command = "echo",
                                 .payload = t_json("{\"x\":1}"), .run_inline = true);
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    assert_int_equal(a.count, 1);
    assert_int_equal(a.status, 200);
    /* a deferring handler answers later, through the pending table */
    c.command = "deferred";
    c.payload = NULL;
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    assert_int_equal(a.count, 1);
    async_wait(&a, 2);
    assert_int_equal(a.status, 200);
    /* a result after the deadline becomes 504 */
    c.command = "slow";
    c.payload = t_json("{\"ms\":150}");
    c.timeout_ms = 50;
    assert_int_equal(loom_runtime_invoke(rt, &c, async_cb, &a), LOOM_OK);
    assert_int_equal(a.count, 3);
    assert_int_equal(a.status, 504);
    /* a remote command is not inline: it goes through the bus */
    loom_runtime *client = start_rt("memory:inline", NULL);
    c = (loom_call)LOOM_CALL_INIT(.service = "test", .command = "echo", .run_inline = true);
    assert_int_equal(loom_runtime_invoke(client, &c, async_cb, &a), LOOM_OK);
    async_wait(&a, 4);
    assert_int_equal(a.status, 200);
    cJSON_Delete(a.body);
    loom_runtime_destroy(client);
    loom_runtime_destroy(rt);
}

/* Where callbacks ran: on the invoking thread or elsewhere. */
typedef struct where {
    loom_runtime *rt;
    pthread_t caller;
    atomic_int here, elsewhere;
    atomic_int nested_here, nested_elsewhere;
    bool reinvoke;       /* invoke "empty" again from the next callback */
    bool reinvoked_here; /* ... and that callback ran on the caller */
} where;

static void nested_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    (void)resp;
    where *w = user;
    atomic_fetch_add(
        pthread_equal(pthread_self(), w->caller) ? &w->nested_here : &w->nested_elsewhere, 1);
}

static void where_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    assert_true(loom_msg_status(resp) == 200 || loom_msg_status(resp) == 204);
    where *w = user;
    if (w->reinvoke) {
        w->reinvoke = false;
        w->reinvoked_here = pthread_equal(pthread_self(), w->caller);
        loom_call c = LOOM_CALL_INIT(.service = "test", .command = "empty");
        assert_int_equal(loom_runtime_invoke(w->rt, &c, nested_cb, w), LOOM_OK);
    }
    atomic_fetch_add(pthread_equal(pthread_self(), w->caller) ? &w->here : &w->elsewhere, 1);
}

/* Invokes cmd n times one after the other (each answered before the next). */
static void invoke_n(where *w, const char *cmd, const char *payload, int n)
{
    for (int i = 0; i < n; i++) {
        int before = atomic_load(&w->here) + atomic_load(&w->elsewhere);
        loom_call c = LOOM_CALL_INIT(.service = "test", .command = cmd,
                                     .payload = payload ? t_json(payload) : NULL);
        assert_int_equal(loom_runtime_invoke(w->rt, &c, where_cb, w), LOOM_OK);
        for (int ms = 0; atomic_load(&w->here) + atomic_load(&w->elsewhere) == before; ms++) {
            if (ms > 5000)
                fail_msg("invoke %d of %s was not answered within 5 s", i, cmd);
            sleep_ms(1);
        }
    }
}

static void test_invoke_auto_inline(void **state)
{
    (void)state;
    where w = {.rt = start_rt("memory:auto", &svc_test), .caller = pthread_self()};
    /* A quick command runs on the workers until its latest 64 runs were all
     * quick, then on the caller's thread. A run that a loaded machine (or
     * valgrind) makes look slow sends the next 64 to the workers again, so
     * the calls go on until 200 ran here (at most 20,000). */
    for (int i = 0; i < 20000 && atomic_load(&w.here) < 200; i++)
        invoke_n(&w, "empty", NULL, 1);
    assert_true(atomic_load(&w.elsewhere) >= 64);
    assert_true(atomic_load(&w.here) >= 200);
    /* A callback run inline that invokes again does not recurse: the
     * nested call goes to the workers. */
    for (int i = 0; i < 100 && !w.reinvoked_here; i++) {
        w.reinvoke = true;
        invoke_n(&w, "empty", NULL, 1);
        for (int ms = 0; atomic_load(&w.nested_elsewhere) + atomic_load(&w.nested_here) <= i;
             ms++) {
            if (ms > 5000)
                fail_msg("the nested invoke was not answered within 5 s");
            sleep_ms(1);
        }
    }
    assert_true(w.reinvoked_here);
    assert_int_equal(atomic_load(&w.nested_here), 0);
    /* A slow command (1 ms a run) stays on the workers. */
    atomic_store(&w.here, 0);
    invoke_n(&w, "slow", "{\"ms\":1}", 100);
    assert_int_equal(atomic_load(&w.here), 0);
    loom_runtime_destroy(w.rt);

    /* invoke.inline: false keeps every asynchronous call on the workers. */
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "invoke.inline", "false"), LOOM_OK);
    loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = "memory:noauto",
                                                      .workers = 2, .log_fn = capture_log);
    where v = {.caller = pthread_self()};
    atomic_store(&slow_started, 0);
    assert_int_equal(loom_runtime_create(&v.rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    assert_int_equal(loom_runtime_add_service(v.rt, &svc_test, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(v.rt), LOOM_OK);
    invoke_n(&v, "empty", NULL, 300);
    assert_int_equal(atomic_load(&v.here), 0);
    /* After that run of quick jobs the pool wakes fewer workers; a job
     * queued while a worker is taken by a slow one (300 ms) must still
     * start on the other worker at once, not after the slow one. */
    loom_call slow =
        LOOM_CALL_INIT(.service = "test", .command = "slow", .payload = t_json("{\"ms\":300}"));
    async_result a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    assert_int_equal(loom_runtime_invoke(v.rt, &slow, async_cb, &a), LOOM_OK);
    for (int ms = 0; atomic_load(&slow_started) == 0 && ms < 5000; ms++)
        sleep_ms(1);
    int64_t t0 = t_mono_ms();
    int done = atomic_load(&v.elsewhere);
    loom_call quick = LOOM_CALL_INIT(.service = "test", .command = "empty");
    assert_int_equal(loom_runtime_invoke(v.rt, &quick, where_cb, &v), LOOM_OK);
    while (atomic_load(&v.elsewhere) == done && t_mono_ms() - t0 < 5000)
        sleep_ms(1);
    assert_true(t_mono_ms() - t0 < 150);
    async_wait(&a, 1); /* the slow call's 504 (its timeout is 100 ms) */
    cJSON_Delete(a.body);
    loom_runtime_destroy(v.rt);
}

/* --- many threads ------------------------------------------------------------- */

typedef struct worker_arg {
    loom_runtime *rt;
    int ok;
} worker_arg;

static void *hammer(void *p)
{
    worker_arg *w = p;
    for (int i = 0; i < 2000; i++) {
        loom_call c =
            LOOM_CALL_INIT(.service = "test", .command = "echo", .payload = cJSON_CreateNumber(i));
        loom_msg *r = NULL;
        if (loom_runtime_call(w->rt, &c, &r) == LOOM_OK && loom_msg_status(r) == 200 &&
            cJSON_GetObjectItem(loom_msg_payload(r), "payload")->valueint == i)
            w->ok++;
        loom_msg_release(r);
    }
    return NULL;
}

static atomic_int async_done, async_other;
static void count_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    (void)user;
    if (loom_msg_status(resp) == 204)
        atomic_fetch_add(&async_done, 1);
    else
        atomic_fetch_add(&async_other, 1);
}

static void *hammer_async(void *p)
{
    worker_arg *w = p;
    for (int i = 0; i < 2000; i++) {
        loom_call c = LOOM_CALL_INIT(.service = "test", .command = "empty");
        if (loom_runtime_invoke(w->rt, &c, count_cb, NULL) == LOOM_OK)
            w->ok++;
        else
            i--; /* overloaded queue: try again */
    }
    return NULL;
}

static void test_concurrency(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:conc", &svc_test);
    enum { T = 8 };
    pthread_t th[T];
    worker_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (worker_arg){rt, 0};
        pthread_create(&th[i], NULL, i % 2 ? hammer : hammer_async, &args[i]);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++)
        assert_int_equal(args[i].ok, 2000);
    atomic_int *done = &async_done;
    assert_true(wait_for(done, 2000 * T / 2, 10000));
    assert_int_equal(atomic_load(&async_other), 0);
    loom_runtime_destroy(rt);
}

LOOM_COMMAND(bad_schema, .name = "x", .handler = echo_fn, .payload_schema = "{\"type\":7}");
LOOM_SERVICE(svc_bad, .name = "bad", .version = "1", .commands = LOOM_COMMANDS(&bad_schema));
LOOM_COMMAND(no_handler, .name = "y");
LOOM_SERVICE(svc_bad2, .name = "bad2", .version = "1", .commands = LOOM_COMMANDS(&no_handler));
LOOM_SERVICE(svc_bad3, .name = "has/slash", .version = "1");
LOOM_COMMAND(bad_http, .name = "z", .handler = echo_fn, .http_method = "GET");
LOOM_SERVICE(svc_bad4, .name = "bad4", .version = "1", .commands = LOOM_COMMANDS(&bad_http));

static void test_bad_definitions(void **state)
{
    (void)state;
    loom_runtime *rt = NULL;
    loom_runtime_config cfg = LOOM_RUNTIME_CONFIG_INIT(.log_fn = capture_log);
    assert_int_equal(loom_runtime_create(&rt, &cfg), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(rt, &svc_bad, NULL), LOOM_EINVAL);
    assert_true(log_contains("service bad: command x: payload_schema"));
    assert_int_equal(loom_runtime_add_service(rt, &svc_bad2, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_bad3, NULL), LOOM_EINVAL);
    assert_int_equal(loom_runtime_add_service(rt, &svc_bad4, NULL), LOOM_EINVAL);
    loom_runtime_destroy(rt);

    loom_runtime_config unknown =
        LOOM_RUNTIME_CONFIG_INIT(.broker_url = "carrier-pigeon://x", .log_fn = capture_log);
    assert_int_equal(loom_runtime_create(&rt, &unknown), LOOM_EUNSUPPORTED);
    assert_null(rt);
    assert_int_equal(loom_runtime_create(NULL, NULL), LOOM_EINVAL);
    assert_string_equal(loom_strerror(LOOM_ETIMEDOUT), loom_strerror(LOOM_ETIMEDOUT));
    assert_non_null(loom_version());
}

/* Extensible structs (loom.h, EXTENSIBLE STRUCTS; docs/abi.md): size 0
 * reads as the first layout; a larger size (a program built against a
 * newer loom) passes while its unknown tail is zero and is refused with
 * LOOM_EUNSUPPORTED once a byte of it is set; a size below the first
 * layout is refused with LOOM_EINVAL. */
typedef struct newer_call {
    loom_call c;
    uint64_t newer;
} newer_call;
typedef struct newer_config {
    loom_runtime_config c;
    uint64_t newer;
} newer_config;
typedef struct newer_cmd {
    loom_command_def c;
    uint64_t newer;
} newer_cmd;

static void never_called(loom_runtime *rt, const loom_msg *response, void *user)
{
    (void)rt, (void)response, (void)user;
    fail_msg("the callback of a refused invoke ran");
}

static void test_struct_sizes_calls(void **state)
{
    (void)state;
    loom_runtime *rt = start_rt("memory:sizes", &svc_test);
    loom_msg *r = NULL;
    loom_call plain = {.service = "test", .command = "empty"}; /* size 0 */
    assert_int_equal(loom_runtime_call(rt, &plain, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 204);
    loom_msg_release(r);

    newer_call n = {.c = LOOM_CALL_INIT(.service = "test", .command = "empty")};
    assert_int_equal(n.c.size, sizeof(loom_call));
    n.c.size = sizeof n;
    r = NULL;
    assert_int_equal(loom_runtime_call(rt, &n.c, &r), LOOM_OK);
    assert_int_equal(loom_msg_status(r), 204);
    loom_msg_release(r);
    n.newer = 1;
    r = NULL;
    assert_int_equal(loom_runtime_call(rt, &n.c, &r), LOOM_EUNSUPPORTED);
    assert_null(r);
    assert_int_equal(loom_runtime_invoke(rt, &n.c, never_called, NULL), LOOM_EUNSUPPORTED);

    loom_call small = LOOM_CALL_INIT(.service = "test", .command = "empty");
    small.size = sizeof(size_t);
    assert_int_equal(loom_runtime_call(rt, &small, &r), LOOM_EINVAL);
    assert_int_equal(loom_runtime_invoke(rt, &small, never_called, NULL), LOOM_EINVAL);
    loom_runtime_destroy(rt);
}

static void test_struct_sizes_configs(void **state)
{
    (void)state;
    loom_runtime *rt = NULL;
    newer_config nc = {.c = LOOM_RUNTIME_CONFIG_INIT(.log_fn = capture_log)};
    nc.c.size = sizeof nc;
    assert_int_equal(loom_runtime_create(&rt, &nc.c), LOOM_OK);

    newer_cmd cmd = {.c = LOOM_COMMAND_DEF_INIT(.name = "x", .handler = empty_fn)};
    cmd.c.size = sizeof cmd;
    cmd.newer = 1;
    loom_service_def svc =
        LOOM_SERVICE_DEF_INIT(.name = "sizes", .version = "1",
                              .commands = (const loom_command_def *const[]){&cmd.c, NULL});
    assert_int_equal(loom_runtime_add_service(rt, &svc, NULL), LOOM_EUNSUPPORTED);
    assert_true(log_contains("service sizes: x: sets fields this loom does not know"));
    cmd.newer = 0;
    assert_int_equal(loom_runtime_add_service(rt, &svc, NULL), LOOM_OK);
    loom_runtime_destroy(rt);

    nc.newer = 7;
    rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &nc.c), LOOM_EUNSUPPORTED);
    assert_null(rt);
    loom_runtime_config tiny = LOOM_RUNTIME_CONFIG_INIT();
    tiny.size = 3;
    assert_int_equal(loom_runtime_create(&rt, &tiny), LOOM_EINVAL);

    loom_test *t = NULL;
    loom_test_options to = LOOM_TEST_OPTIONS_INIT();
    to.size = 3;
    assert_int_equal(loom_test_create(&t, NULL, &to), LOOM_EINVAL);
    assert_null(t);
    loom_main_options mo = LOOM_MAIN_OPTIONS_INIT();
    mo.size = 3;
    char *argv[] = {"prog", "--version", NULL};
    assert_int_equal(loom_main_with(2, argv, NULL, &mo), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_call_success),
        cmocka_unit_test(test_handler_errors),
        cmocka_unit_test(test_unknown_command_404_service_503),
        cmocka_unit_test(test_validation_400),
        cmocka_unit_test(test_timeout_and_deadline),
        cmocka_unit_test(test_async_and_deferred),
        cmocka_unit_test(test_chain_carries_trace),
        cmocka_unit_test(test_store_and_service_config),
        cmocka_unit_test(test_subscriptions_groups_and_all),
        cmocka_unit_test(test_subscription_retry_and_filter),
        cmocka_unit_test(test_wait_events),
        cmocka_unit_test(test_wait_events_times_out),
        cmocka_unit_test(test_take_calls_free_what_they_cannot_send),
        cmocka_unit_test(test_main_with_options),
        cmocka_unit_test(test_kit_options),
        cmocka_unit_test(test_remote_call_across_runtimes),
        cmocka_unit_test(test_stop_drains_in_flight),
        cmocka_unit_test(test_stop_answers_what_is_left),
        cmocka_unit_test(test_stop_runs_queued_events),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_concurrency_limit),
        cmocka_unit_test(test_invoke_inline),
        cmocka_unit_test(test_invoke_auto_inline),
        cmocka_unit_test(test_bad_definitions),
        cmocka_unit_test(test_struct_sizes_calls),
        cmocka_unit_test(test_struct_sizes_configs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
