/* The delayed-ACK stall, on mosquitto as users install it.
 *
 * Debian's mosquitto does not set TCP_NODELAY on its sockets. When a
 * client makes the broker send two small segments back to back on one
 * connection (a QoS 1 PUBACK, then the next message), Nagle's algorithm
 * holds the second until the client ACKs the first, and the client's
 * kernel delays that ACK by ~40 ms: every call then takes ~40 ms instead
 * of a fraction of a millisecond. The broker here runs with mosquitto's
 * stock settings (no set_tcp_nodelay), so if the client side brings the
 * stall back, these tests see it.
 *
 * Each test makes 200 sequential calls from one runtime to a service in
 * another (two MQTT connections, as two processes would have) and fails
 * when the median call takes 10 ms or more, or the whole run 4 s or more:
 * with the stall the median is ~40 ms and the run ~8 s; without it a call
 * takes well under a millisecond on loopback, even on a loaded machine
 * under ASan. Not a benchmark (bench/ measures speed); a tripwire with
 * bounds far from the noise on both sides.
 *
 * Cases: a plain command; a command with a success event (the service
 * publishes a QoS 1 event while answering, so the broker sends it a
 * PUBACK right before the next command), with a subscriber; a handler
 * that emits an event of its own before replying; and the success-event
 * command again with commands and replies at QoS 1 (the broker PUBACKs
 * each command right before its reply). Last, a burst of QoS 1 events
 * beyond the broker's in-flight window, and how fast the publisher stops. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/mosquitto.h"
#include "support/proc.h"
#include "support/support.h"

#define CALLS 200
#define MEDIAN_BOUND_US 10000     /* the stall makes it ~40,000 */
#define TOTAL_BOUND_MS 4000       /* the stall makes it ~8,000 */
#define READY_TIMEOUT_MS 10000

static void ping(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *out = cJSON_CreateObject();
    cJSON_AddTrueToObject(out, "ok");
    if (loom_ctx_reply(ctx, out) != LOOM_OK)
        cJSON_Delete(out);
}

static void ping_emit(loom_ctx *ctx, void *user)
{
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddNumberToObject(ev, "n", 1);
    if (loom_ctx_emit(ctx, "pingedByHand", ev) != LOOM_OK)
        cJSON_Delete(ev);
    ping(ctx, user);
}

static pthread_mutex_t burst_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t burst_cv = PTHREAD_COND_INITIALIZER;
static int burst_seen;

static loom_ack on_event(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    return LOOM_ACK;
}

static loom_ack on_burst(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    pthread_mutex_lock(&burst_mu);
    burst_seen++;
    pthread_cond_broadcast(&burst_cv);
    pthread_mutex_unlock(&burst_mu);
    return LOOM_ACK;
}

LOOM_COMMAND(cmd_ping, .name = "ping", .handler = ping);
LOOM_COMMAND(cmd_ping_event, .name = "pingev", .handler = ping, .success_event = "pinged");
LOOM_COMMAND(cmd_ping_emit, .name = "pingemit", .handler = ping_emit);
LOOM_SERVICE(stall_svc, .name = "stall", .version = "1",
             .commands = LOOM_COMMANDS(&cmd_ping, &cmd_ping_event, &cmd_ping_emit));
LOOM_SUBSCRIPTION(sub_pinged, .name = "pinged", .handler = on_event,
                  .filter = {.event_name = "pinged"});
LOOM_SERVICE(watch_svc, .name = "watch", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_pinged));
LOOM_SUBSCRIPTION(sub_burst, .name = "burst", .handler = on_burst,
                  .filter = {.event_name = "burst"});
LOOM_SERVICE(burst_svc, .name = "bursts", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_burst));

static t_broker broker;

static int qos; /* broker.qos.command and .reply of every runtime */

static loom_runtime *start(const loom_service_def *s)
{
    loom_config *cfg = NULL;
    char q[2] = {(char)('0' + qos), 0};
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "broker.qos.command", q), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "broker.qos.reply", q), LOOM_OK);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = t_broker_url(&broker), .workers = 2,
                                 .log_level = LOOM_LOG_WARN, .default_timeout_ms = 5000);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    if (s)
        assert_int_equal(loom_runtime_add_service(rt, s, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, READY_TIMEOUT_MS), LOOM_OK);
    return rt;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* 200 sequential calls of stall.<command> from a client runtime; checks
 * every answer and the bounds. */
static void sequential_calls(const char *command, bool with_subscriber)
{
    t_broker_start(&broker);
    loom_runtime *svc = start(&stall_svc);
    loom_runtime *watch = with_subscriber ? start(&watch_svc) : NULL;
    loom_runtime *client = start(NULL);

    static int64_t took[CALLS];
    int64_t t0 = now_us();
    for (int i = 0; i < CALLS; i++) {
        loom_call c = LOOM_CALL_INIT(.service = "stall", .version = "1", .command = command);
        loom_msg *r = NULL;
        int64_t s = now_us();
        assert_int_equal(loom_runtime_call(client, &c, &r), LOOM_OK);
        took[i] = now_us() - s;
        assert_int_equal(loom_msg_status(r), 200);
        loom_msg_release(r);
    }
    int64_t total_ms = (now_us() - t0) / 1000;
    qsort(took, CALLS, sizeof took[0], cmp_i64);
    int64_t median = took[CALLS / 2];
    printf("# stall.%s, commands and replies at QoS %d: %d sequential calls in %lld ms, median %lld us, max %lld us\n", command, qos,
           CALLS, (long long)total_ms, (long long)median, (long long)took[CALLS - 1]);

    loom_runtime_destroy(client);
    loom_runtime_destroy(watch);
    loom_runtime_destroy(svc);
    t_broker_stop(&broker);

    if (median >= MEDIAN_BOUND_US)
        fail_msg("median call %lld us >= %d us: the delayed-ACK stall is back", (long long)median,
                 MEDIAN_BOUND_US);
    if (total_ms >= TOTAL_BOUND_MS)
        fail_msg("%d calls took %lld ms >= %d ms", CALLS, (long long)total_ms, TOTAL_BOUND_MS);
}

static void test_plain_command(void **state)
{
    (void)state;
    sequential_calls("ping", false);
}

/* A deployment that asks for QoS 1 commands and replies: the broker then
 * PUBACKs every command to the caller right before its reply. */
static void test_qos1_commands_and_replies(void **state)
{
    (void)state;
    qos = 1;
    sequential_calls("pingev", true);
    qos = 0;
}

static void test_command_with_success_event(void **state)
{
    (void)state;
    sequential_calls("pingev", true);
}

static void test_handler_emits_before_replying(void **state)
{
    (void)state;
    sequential_calls("pingemit", false);
}

/* A batch of calls whose replies come back in a burst, answered by nothing
 * until the last one: the broker's Nagle holds the second reply until the
 * caller ACKs the first. 40 rounds of 16 calls at once; with the stall a
 * round takes 40 ms or more, without it a few (under ASan too). */
static pthread_mutex_t batch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t batch_cv = PTHREAD_COND_INITIALIZER;
static int batch_left, batch_bad;

static void on_batch_reply(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    (void)user;
    pthread_mutex_lock(&batch_mu);
    batch_bad += loom_msg_status(resp) != 200;
    if (--batch_left == 0)
        pthread_cond_broadcast(&batch_cv);
    pthread_mutex_unlock(&batch_mu);
}

static void test_batched_calls(void **state)
{
    (void)state;
    enum { ROUNDS = 40, BATCH = 16, ROUND_BOUND_US = 25000 };
    t_broker_start(&broker);
    loom_runtime *svc = start(&stall_svc);
    loom_runtime *client = start(NULL);
    static int64_t took[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        int64_t t0 = now_us();
        batch_left = BATCH;
        for (int i = 0; i < BATCH; i++) {
            loom_call c = LOOM_CALL_INIT(.service = "stall", .version = "1", .command = "ping");
            assert_int_equal(loom_runtime_invoke(client, &c, on_batch_reply, NULL), LOOM_OK);
        }
        pthread_mutex_lock(&batch_mu);
        while (batch_left > 0)
            pthread_cond_wait(&batch_cv, &batch_mu); /* each call ends by its deadline */
        pthread_mutex_unlock(&batch_mu);
        took[r] = now_us() - t0;
    }
    qsort(took, ROUNDS, sizeof took[0], cmp_i64);
    printf("# %d rounds of %d calls at once: median round %lld us, max %lld us\n", ROUNDS, BATCH,
           (long long)took[ROUNDS / 2], (long long)took[ROUNDS - 1]);
    loom_runtime_destroy(client);
    loom_runtime_destroy(svc);
    t_broker_stop(&broker);
    assert_int_equal(batch_bad, 0);
    if (took[ROUNDS / 2] >= ROUND_BOUND_US)
        fail_msg("median round %lld us >= %d us: the delayed-ACK stall is back",
                 (long long)took[ROUNDS / 2], ROUND_BOUND_US);
}

/* mosquitto lets a client have 20 QoS 1 messages unacknowledged (its
 * Receive Maximum); paho 1.3 sends the ones beyond only once a second. 2000
 * events emitted at once must arrive in well under the 100 s that would
 * take, and the publisher, idle again, must stop promptly (paho's own
 * disconnect wait made that 3 s). */
static void test_event_burst_and_stop(void **state)
{
    (void)state;
    enum { N = 2000, DELIVER_BOUND_MS = 10000, STOP_BOUND_MS = 1500 };
    t_broker_start(&broker);
    loom_runtime *sub = start(&burst_svc);
    loom_runtime *pub = start(NULL);
    burst_seen = 0;
    int64_t t0 = now_us();
    for (int i = 0; i < N; i++) {
        cJSON *ev = cJSON_CreateObject();
        cJSON_AddNumberToObject(ev, "i", i);
        assert_int_equal(loom_runtime_emit(pub, "burst", ev), LOOM_OK);
    }
    struct timespec due;
    clock_gettime(CLOCK_REALTIME, &due);
    due.tv_sec += DELIVER_BOUND_MS / 1000;
    pthread_mutex_lock(&burst_mu);
    while (burst_seen < N && pthread_cond_timedwait(&burst_cv, &burst_mu, &due) == 0)
        ;
    int seen = burst_seen;
    pthread_mutex_unlock(&burst_mu);
    int64_t took_ms = (now_us() - t0) / 1000;
    int64_t s = now_us();
    loom_runtime_destroy(pub);
    int64_t stop_ms = (now_us() - s) / 1000;
    printf("# %d QoS 1 events: %d delivered in %lld ms; the idle publisher stopped in %lld ms\n",
           N, seen, (long long)took_ms, (long long)stop_ms);
    loom_runtime_destroy(sub);
    t_broker_stop(&broker);
    assert_int_equal(seen, N);
    assert_true(stop_ms < STOP_BOUND_MS);
}

int main(void)
{
    if (!t_broker_binary()) {
        printf("mosquitto is not installed\n");
        return 1;
    }
    cmocka_set_test_filter(getenv("T_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_command),
        cmocka_unit_test(test_command_with_success_event),
        cmocka_unit_test(test_handler_emits_before_replying),
        cmocka_unit_test(test_qos1_commands_and_replies),
        cmocka_unit_test(test_batched_calls),
        cmocka_unit_test(test_event_burst_and_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
