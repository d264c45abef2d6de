/* alerts: reacts to readingRecorded. State: "alerts:seq" (a counter) and
 * "alerts:<N>" (zero-padded, so that listing by prefix gives them in
 * order). The subscription's handler may run for several events at once
 * (loom runs handlers concurrently): the counter is atomic. */
#include <stdio.h>

#include "greenhouse.h"

static loom_ack on_reading(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *reading = loom_ctx_payload(ctx);
    const cJSON *value = cJSON_GetObjectItem(reading, "value");
    const cJSON *limit = cJSON_GetObjectItem(loom_ctx_config(ctx), "threshold");
    double threshold = cJSON_IsNumber(limit) ? limit->valuedouble : 30;
    if (!cJSON_IsNumber(value) || value->valuedouble <= threshold)
        return LOOM_ACK;
    loom_store *store = loom_ctx_store(ctx);
    int64_t n = 0;
    if (loom_store_incr(store, "alerts:seq", 1, &n) != LOOM_OK)
        return LOOM_RETRY; /* redelivered with backoff */
    char key[64];
    snprintf(key, sizeof key, "alerts:%012lld", (long long)n);
    if (loom_store_set(store, key, reading, 0) != LOOM_OK)
        return LOOM_RETRY;
    loom_ctx_log(ctx, LOOM_LOG_INFO, "alert %s: %g > %g", key, value->valuedouble, threshold);
    return LOOM_ACK;
}

/* The first 100 alerts, oldest first. */
static void list(loom_ctx *ctx, void *user)
{
    (void)user;
    loom_store *store = loom_ctx_store(ctx);
    cJSON *keys = NULL;
    if (loom_store_list(store, "alerts:0", NULL, 100, &keys, NULL) != LOOM_OK) {
        loom_ctx_fail_take(ctx, 503, "cannot list the alerts", NULL);
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(out, "alerts");
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        cJSON *alert = NULL;
        if (loom_store_get(store, k->valuestring, &alert) == LOOM_OK)
            cJSON_AddItemToArray(arr, alert);
    }
    cJSON_Delete(keys);
    loom_ctx_reply_take(ctx, out);
}

LOOM_SUBSCRIPTION(on_reading_sub, .name = "onReading",
                  .description = "Stores an alert for a reading over the threshold",
                  .handler = on_reading, .filter = {.event_name = "readingRecorded"});
LOOM_COMMAND(list_cmd, .name = "list", .description = "Lists the alerts", .handler = list,
             .http_method = "GET", .http_path = "/alerts", .http_public = true);

LOOM_SERVICE_EXTERN(alerts_service, .name = "alerts", .version = "1",
                    .description = "Greenhouse alerts", .commands = LOOM_COMMANDS(&list_cmd),
                    .subscriptions = LOOM_SUBSCRIPTIONS(&on_reading_sub));
