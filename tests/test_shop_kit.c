/* The shop's services tested the way a user tests their own: through the
 * test kit (include/loom/test.h), in process, each test on its own runtime
 * and fresh store. No broker, no subprocess, no sleep: loom_test_emit and
 * loom_test_wait return once the subscriptions have handled the events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "loom/test.h"
#include "shop.h"

#define SHOP LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications)

static int setup(void **state)
{
    loom_test *t = NULL;
    if (loom_test_create(&t, SHOP, NULL) != LOOM_OK)
        return -1;
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    loom_test_destroy(*state);
    return 0;
}

static const char *str_at(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* Calls target and checks the status; returns the body (cJSON_Delete it). */
static cJSON *call(loom_test *t, const char *target, const char *payload, const char *param,
                   int want)
{
    int status = 0;
    cJSON *body = NULL;
    assert_int_equal(loom_test_call(t, target, payload, param, &status, &body), LOOM_OK);
    if (status != want) {
        char *text = body ? cJSON_PrintUnformatted(body) : NULL;
        fail_msg("%s: status %d, expected %d: %s", target, status, want, text ? text : "");
    }
    return body;
}

static int notification_count(loom_test *t, const char *user_id)
{
    char param[96];
    snprintf(param, sizeof param, "{\"userId\":\"%s\"}", user_id);
    cJSON *l = call(t, "notifications.list", NULL, param, 200);
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "notifications"));
    cJSON_Delete(l);
    return n;
}

static void test_users(void **state)
{
    loom_test *t = *state;
    cJSON *u =
        call(t, "users.create", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}", NULL, 200);
    assert_string_equal(str_at(u, "id"), "u-1");
    cJSON_Delete(u);
    cJSON *again = call(t, "users.get", NULL, "{\"id\":\"u-1\"}", 200);
    assert_string_equal(str_at(again, "name"), "Ada");
    cJSON_Delete(again);
    cJSON_Delete(call(t, "users.get", NULL, "{\"id\":\"u-9\"}", 404));
    cJSON_Delete(call(t, "users.create", "{\"name\":\"Bo\"}", NULL, 400)); /* schema */
    cJSON *e = call(t, "users.nosuch", "{}", NULL, 404);
    assert_non_null(strstr(str_at(e, "message"), "its commands: create, get"));
    cJSON_Delete(e);
    int status = 0;
    assert_int_equal(loom_test_call(t, "users.get", "{not json", NULL, &status, NULL), LOOM_EPARSE);
    assert_int_equal(loom_test_call(t, "nodot", NULL, NULL, &status, NULL), LOOM_EINVAL);
    cJSON_Delete(call(t, "users.get@2", NULL, "{\"id\":\"u-1\"}", 503)); /* no version 2 */
}

/* orders.create answers with the order and announces orderCreated; the
 * notifications subscription has handled it when loom_test_wait returns. */
static void test_order_flow_notifies(void **state)
{
    loom_test *t = *state;
    cJSON_Delete(
        call(t, "users.create", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}", NULL, 200));
    cJSON *o = call(t, "orders.create",
                    "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"b\",\"quantity\":2}],"
                    "\"amount\":12.5}",
                    NULL, 200);
    assert_string_equal(str_at(o, "status"), "paid");
    cJSON_Delete(o);
    assert_int_equal(loom_test_wait(t), LOOM_OK);
    assert_int_equal(notification_count(t, "u-1"), 1);
    cJSON_Delete(call(t, "orders.create",
                      "{\"userId\":\"u-9\",\"items\":[{\"sku\":\"b\",\"quantity\":1}],"
                      "\"amount\":1}",
                      NULL, 422));
}

/* An event from outside, twice: one notification (the claim in the store
 * makes the subscription idempotent). */
static void test_emit_is_idempotent(void **state)
{
    loom_test *t = *state;
    const char *ev = "{\"id\":\"o-7\",\"userId\":\"u-3\",\"amount\":2}";
    assert_int_equal(loom_test_emit(t, "orderCreated", ev), LOOM_OK);
    assert_int_equal(notification_count(t, "u-3"), 1);
    assert_int_equal(loom_test_emit(t, "orderCreated", ev), LOOM_OK);
    assert_int_equal(notification_count(t, "u-3"), 1);
    /* Invalid events are dropped by the schema before the handler. */
    assert_int_equal(loom_test_emit(t, "orderCreated", "{\"id\":\"o-8\"}"), LOOM_OK);
    assert_int_equal(loom_test_emit(t, "orderCreated", "{not json"), LOOM_EPARSE);
}

/* Each test has its own store: nothing from the tests before, and it can
 * be seeded directly. */
static void test_fresh_store(void **state)
{
    loom_test *t = *state;
    cJSON_Delete(call(t, "users.get", NULL, "{\"id\":\"u-1\"}", 404));
    cJSON *n = NULL;
    assert_int_equal(loom_store_get(loom_test_store(t), "notifications:seq", &n), LOOM_ENOTFOUND);
    cJSON *seed = cJSON_Parse("{\"id\":\"u-1\",\"name\":\"Seeded\",\"email\":\"s@example.com\","
                              "\"createdAt\":\"2026-01-01T00:00:00Z\"}");
    assert_int_equal(loom_store_set(loom_test_store(t), "users:u-1", seed, 0), LOOM_OK);
    cJSON_Delete(seed);
    cJSON *u = call(t, "users.get", NULL, "{\"id\":\"u-1\"}", 200);
    assert_string_equal(str_at(u, "name"), "Seeded");
    cJSON_Delete(u);
}

/* One handler, a fake context: no schema in the way, so the handler's own
 * checks answer. */
static void test_run_one_command_handler(void **state)
{
    loom_test *t = *state;
    const loom_command_def *charge = shop_payments.commands[0];
    assert_string_equal(charge->name, "charge");
    int status = 0;
    cJSON *body = NULL;
    assert_int_equal(loom_test_run_command(t, &shop_payments, charge, NULL,
                                           "{\"orderId\":\"o-1\",\"amount\":-3}", NULL, &status,
                                           &body),
                     LOOM_OK);
    assert_int_equal(status, 400); /* the handler's check, not the schema's */
    assert_string_equal(str_at(body, "message"), "the amount must be positive");
    cJSON_Delete(body);
    /* payments checks that the order exists (orders.get, in this runtime) */
    assert_int_equal(loom_test_run_command(t, &shop_payments, charge, NULL,
                                           "{\"orderId\":\"o-1\",\"amount\":3}", NULL, &status,
                                           &body),
                     LOOM_OK);
    assert_int_equal(status, 422);
    cJSON_Delete(body);
    cJSON *order = cJSON_Parse("{\"id\":\"o-1\",\"userId\":\"u-1\",\"items\":[{\"sku\":\"pen\",\"quantity\":1}],\"amount\":3,\"status\":\"pending\",\"createdAt\":\"2026-01-01T00:00:00Z\"}");
    assert_int_equal(loom_store_set(loom_test_store(t), "orders:o-1", order, 0), LOOM_OK);
    cJSON_Delete(order);
    assert_int_equal(loom_test_run_command(t, &shop_payments, charge, NULL,
                                           "{\"orderId\":\"o-1\",\"amount\":3}", NULL, &status,
                                           &body),
                     LOOM_OK);
    assert_int_equal(status, 200);
    assert_string_equal(str_at(body, "status"), "captured");
    cJSON_Delete(body);
    /* It used the test's store. */
    cJSON *p = NULL;
    assert_int_equal(loom_store_get(loom_test_store(t), "payments:order:o-1", &p), LOOM_OK);
    cJSON_Delete(p);
}

static void test_run_one_subscription_handler(void **state)
{
    loom_test *t = *state;
    const loom_subscription_def *sub = shop_notifications.subscriptions[0];
    loom_ack ack = LOOM_ACK;
    /* No userId: the schema would drop it; the handler itself drops it too. */
    assert_int_equal(loom_test_run_subscription(t, &shop_notifications, sub, NULL, "orderCreated",
                                                "{\"id\":\"o-1\"}", &ack, NULL),
                     LOOM_OK);
    assert_int_equal(ack, LOOM_DROP);
    assert_int_equal(loom_test_run_subscription(t, &shop_notifications, sub, NULL, "orderCreated",
                                                "{\"id\":\"o-2\",\"userId\":\"u-5\"}", &ack, NULL),
                     LOOM_OK);
    assert_int_equal(ack, LOOM_ACK);
    assert_int_equal(notification_count(t, "u-5"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_flow_notifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_emit_is_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fresh_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_one_command_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_one_subscription_handler, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
