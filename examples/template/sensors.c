/* sensors: record and latest. State: "sensors:latest:<sensor>" = the last
 * reading of each sensor. */
#include <stdio.h>

#include "greenhouse.h"

static void record(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *in = loom_ctx_payload(ctx); /* the schema checked it */
    const char *sensor = cJSON_GetObjectItem(in, "sensor")->valuestring;
    char key[128];
    snprintf(key, sizeof key, "sensors:latest:%s", sensor);
    loom_err err = loom_store_set(loom_ctx_store(ctx), key, in, 0);
    if (err != LOOM_OK) {
        loom_ctx_fail_take(ctx, 503, "cannot store the reading", NULL);
        return;
    }
    /* The answer is also delivered as the event readingRecorded. */
    loom_ctx_reply_take(ctx, cJSON_Duplicate(in, 1));
}

static void latest(loom_ctx *ctx, void *user)
{
    (void)user;
    const char *sensor = cJSON_GetObjectItem(loom_ctx_parameter(ctx), "sensor")->valuestring;
    char key[128];
    snprintf(key, sizeof key, "sensors:latest:%s", sensor);
    cJSON *reading = NULL;
    if (loom_store_get(loom_ctx_store(ctx), key, &reading) != LOOM_OK) {
        loom_ctx_fail_take(ctx, 404, "no reading for this sensor", NULL);
        return;
    }
    loom_ctx_reply_take(ctx, reading);
}

LOOM_COMMAND(record_cmd, .name = "record", .description = "Records a reading", .handler = record,
             .success_event = "readingRecorded",
             .payload_schema = "{\"type\":\"object\",\"required\":[\"sensor\",\"value\"],"
                               "\"properties\":{\"sensor\":{\"type\":\"string\",\"minLength\":1,"
                               "\"maxLength\":64},\"value\":{\"type\":\"number\"}}}",
             .http_method = "POST", .http_path = "/readings", .http_public = true);
LOOM_COMMAND(latest_cmd, .name = "latest", .description = "The last reading of a sensor",
             .handler = latest,
             .parameter_schema = "{\"type\":\"object\",\"required\":[\"sensor\"],"
                                 "\"properties\":{\"sensor\":{\"type\":\"string\","
                                 "\"maxLength\":64}}}",
             .http_method = "GET", .http_path = "/sensors/:sensor", .http_public = true);

LOOM_SERVICE_EXTERN(sensors_service, .name = "sensors", .version = "1",
                    .description = "Greenhouse sensors",
                    .commands = LOOM_COMMANDS(&record_cmd, &latest_cmd));
