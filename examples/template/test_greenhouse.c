/* Tests of the greenhouse services with loom's test kit (loom/test.h),
 * with plain assert(): any runner works. Each test gets a fresh runtime
 * and store. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include <loom/test.h>

#include "greenhouse.h"

#define SERVICES LOOM_SERVICES(&sensors_service, &alerts_service)

static int alert_count(loom_test *t)
{
    int status = 0;
    cJSON *body = NULL;
    assert(loom_test_call(t, "alerts.list", NULL, NULL, &status, &body) == LOOM_OK);
    assert(status == 200);
    int n = cJSON_GetArraySize(cJSON_GetObjectItem(body, "alerts"));
    cJSON_Delete(body);
    return n;
}

static void test_record_and_latest(void)
{
    loom_test *t = NULL;
    assert(loom_test_create(&t, SERVICES, NULL) == LOOM_OK);
    int status = 0;
    cJSON *body = NULL;
    assert(loom_test_call(t, "sensors.latest", NULL, "{\"sensor\":\"s1\"}", &status, &body) ==
           LOOM_OK);
    assert(status == 404);
    cJSON_Delete(body);
    assert(loom_test_call(t, "sensors.record", "{\"sensor\":\"s1\",\"value\":21.5}", NULL, &status,
                          &body) == LOOM_OK);
    assert(status == 200);
    cJSON_Delete(body);
    assert(loom_test_call(t, "sensors.latest", NULL, "{\"sensor\":\"s1\"}", &status, &body) ==
           LOOM_OK);
    assert(status == 200 && cJSON_GetObjectItem(body, "value")->valuedouble == 21.5);
    cJSON_Delete(body);
    assert(loom_test_call(t, "sensors.record", "{\"sensor\":\"s1\"}", NULL, &status, &body) ==
           LOOM_OK);
    assert(status == 400); /* the schema wants a value */
    cJSON_Delete(body);
    loom_test_destroy(t);
}

/* readingRecorded reaches alerts: after loom_test_wait the subscription
 * has handled it (no sleep). The threshold comes from the config. */
static void test_alert_over_threshold(void)
{
    loom_test *t = NULL;
    loom_test_options opts =
        LOOM_TEST_OPTIONS_INIT(.config_yaml = "config:\n  alerts:\n    threshold: 25\n");
    assert(loom_test_create(&t, SERVICES, &opts) == LOOM_OK);
    assert(loom_test_call(t, "sensors.record", "{\"sensor\":\"s1\",\"value\":20}", NULL, NULL,
                          NULL) == LOOM_OK);
    assert(loom_test_call(t, "sensors.record", "{\"sensor\":\"s2\",\"value\":30}", NULL, NULL,
                          NULL) == LOOM_OK);
    assert(loom_test_wait(t) == LOOM_OK);
    assert(alert_count(t) == 1);
    /* An event from outside, straight to the subscription. */
    assert(loom_test_emit(t, "readingRecorded", "{\"sensor\":\"s3\",\"value\":99}") == LOOM_OK);
    assert(alert_count(t) == 2);
    loom_test_destroy(t);
}

/* One handler, a fake context. */
static void test_on_reading_alone(void)
{
    loom_test *t = NULL;
    assert(loom_test_create(&t, NULL, NULL) == LOOM_OK); /* no service runs */
    loom_ack ack = LOOM_DROP;
    assert(loom_test_run_subscription(t, &alerts_service, alerts_service.subscriptions[0], NULL,
                                      "readingRecorded", "{\"sensor\":\"s1\",\"value\":31}", &ack,
                                      NULL) == LOOM_OK);
    assert(ack == LOOM_ACK);
    cJSON *keys = NULL;
    assert(loom_store_list(loom_test_store(t), "alerts:0", NULL, 10, &keys, NULL) == LOOM_OK);
    assert(cJSON_GetArraySize(keys) == 1);
    cJSON_Delete(keys);
    loom_test_destroy(t);
}

int main(void)
{
    test_record_and_latest();
    test_alert_over_threshold();
    test_on_reading_alone();
    printf("test_greenhouse: 3 tests passed\n");
    return 0;
}
