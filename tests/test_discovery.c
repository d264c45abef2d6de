/* Discovery: announcements, the heartbeat for brokers without retained
 * messages, and the expiry of instances that fell silent. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/runtime.h"
#include "support/support.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void echo(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_ctx_reply(ctx, cJSON_Duplicate(loom_ctx_payload(ctx), 1));
}
LOOM_COMMAND(cmd_echo, .name = "echo", .handler = echo, .timeout_ms = 1234,
             .http_method = "POST", .http_path = "/echo");
LOOM_SERVICE(svc, .name = "disc", .version = "2", .commands = LOOM_COMMANDS(&cmd_echo));

/* The memory bus without retained messages: like a NATS core server. */
static loom_adapter_ops noretain_ops;

static void register_noretain(void)
{
    static bool done;
    if (done)
        return;
    noretain_ops = loom__memory_adapter;
    noretain_ops.scheme = "noretain";
    noretain_ops.caps = LOOM_CAP_IN_PROCESS | LOOM_CAP_GROUPS;
    assert_int_equal(loom_adapter_register(&noretain_ops), LOOM_OK);
    assert_int_equal(loom_adapter_register(&noretain_ops), LOOM_EEXIST);
    done = true;
}

static loom_runtime *start(const char *url, const loom_service_def *s)
{
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "broker.heartbeat_ms", "100"), LOOM_OK);
    loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = url,
                                                      .workers = 2, .log_level = LOOM_LOG_WARN);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    if (s)
        assert_int_equal(loom_runtime_add_service(rt, s, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, 2000), LOOM_OK);
    return rt;
}

static int call_status(loom_runtime *rt)
{
    loom_call c = LOOM_CALL_INIT(.service = "disc", .version = "2", .command = "echo",
                                 .payload = cJSON_CreateNumber(7));
    loom_msg *r = NULL;
    assert_int_equal(loom_runtime_call(rt, &c, &r), LOOM_OK);
    int status = loom_msg_status(r);
    loom_msg_release(r);
    return status;
}

static void test_heartbeat_without_retained(void **state)
{
    (void)state;
    register_noretain();
    loom_runtime *server = start("noretain:beat", &svc);
    /* The client starts after the server: with no retained announcement it
     * learns the route from the next heartbeat. */
    loom_runtime *client = start("noretain:beat", NULL);
    int status = 503;
    for (int i = 0; i < 100 && status == 503; i++) {
        status = call_status(client);
        if (status == 503)
            sleep_ms(20);
    }
    assert_int_equal(status, 200);
    assert_int_equal(loom__remote_timeout(client, "disc", "2", "echo"), 1234);
    /* A clean stop withdraws the announcement at once. */
    loom_runtime_destroy(server);
    sleep_ms(20);
    assert_int_equal(call_status(client), 503);
    loom_runtime_destroy(client);
}

static void inject(loom_runtime *rt, const char *topic, const char *doc)
{
    loom_msg *m = NULL;
    char text[1024];
    snprintf(text, sizeof text,
             "{\"messageType\":\"infoServiceAvailable\",\"id\":\"0123456789abcdef0123456789abcdef\","
             "\"timestamp\":1,\"payload\":%s}",
             doc);
    char why[200];
    assert_int_equal(loom_msg_decode(text, strlen(text), &m, why, sizeof why), LOOM_OK);
    loom__discovery_received(rt, topic, m, false);
}

static void test_silent_instances_expire(void **state)
{
    (void)state;
    loom_runtime *rt = start("memory:expire", NULL);
    unsigned v0 = loom__routes_version(rt);
    inject(rt, "loom/svc/ghost",
           "{\"instanceId\":\"ghost\",\"ttlMs\":80,\"services\":[{\"name\":\"g\",\"version\":"
           "\"1\",\"commands\":[{\"name\":\"boo\"}]}]}");
    assert_true(loom__remote_has_command(rt, "g", "1", "boo"));
    assert_false(loom__remote_has_command(rt, "g", "1", "other"));
    assert_true(loom__routes_version(rt) != v0);
    /* the same announcement again (a heartbeat) does not change the routes */
    unsigned v1 = loom__routes_version(rt);
    inject(rt, "loom/svc/ghost",
           "{\"instanceId\":\"ghost\",\"ttlMs\":80,\"services\":[{\"name\":\"g\",\"version\":"
           "\"1\",\"commands\":[{\"name\":\"boo\"}]}]}");
    assert_int_equal(loom__routes_version(rt), v1);
    sleep_ms(150); /* no beat: gone */
    assert_false(loom__remote_has_command(rt, "g", "1", "boo"));
    assert_true(loom__routes_version(rt) != v1);
    /* without ttlMs (retained + will brokers) an announcement stays */
    inject(rt, "loom/svc/steady",
           "{\"instanceId\":\"steady\",\"services\":[{\"name\":\"s\",\"version\":\"1\","
           "\"commands\":[{\"name\":\"x\"}]}]}");
    sleep_ms(100);
    assert_true(loom__remote_has_command(rt, "s", "1", "x"));
    /* garbage announcements are ignored */
    inject(rt, "loom/svc/junk", "{\"services\":7}");
    inject(rt, "loom/svc/junk2", "[1,2]");
    assert_true(loom__remote_has_command(rt, "s", "1", "x"));
    /* an empty message clears */
    loom__discovery_received(rt, "loom/svc/steady", NULL, true);
    assert_false(loom__remote_has_command(rt, "s", "1", "x"));
    loom_runtime_destroy(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heartbeat_without_retained),
        cmocka_unit_test(test_silent_instances_expire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
