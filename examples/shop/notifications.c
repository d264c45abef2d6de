/*
 * notifications: tells users about their orders.
 *
 * onOrderCreated reacts to the event orderCreated (the success event of
 * orders.create, or anyone's event of that name carrying {id, userId}) and
 * stores one notification per order. Events can be delivered again (a retry
 * after a failure, a redelivery by a real broker), so the first delivery
 * claims the order with loom_store_add and later ones are acknowledged
 * without a second notification.
 *
 * list returns the most recent notifications first, optionally only one
 * user's (GET /notifications?userId=u-1).
 *
 * State store keys:
 *   notifications:seq             the counter (ids "n-1", ...)
 *   notifications:<N>             the notification {id, orderId, userId, text, createdAt}
 *   notifications:order:<orderId> claims the order (the notification's id)
 */
#include <stdio.h>
#include <string.h>

#include "shop.h"

/* list returns at most LIST_MAX notifications, looking at the newest
 * SCAN_MAX only (a demo's linear scan; a real store would index by user). */
#define LIST_MAX 100
#define SCAN_MAX 10000

/* Events that do not match are dropped (and logged) before the handler. */
static const char order_event_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"id\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64},"
    "   \"userId\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64},"
    "   \"amount\": {\"type\": \"number\"}, \"currency\": {\"type\": \"string\"},"
    "   \"items\": {\"type\": \"array\"}},"
    " \"required\": [\"id\", \"userId\"]}";

/* No parameter (one-shot --call) or {userId?} (HTTP query). */
static const char list_parameter_schema[] =
    "{\"type\": [\"object\", \"null\"],"
    " \"properties\": {\"userId\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64}}}";

static const char list_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {\"notifications\": {\"type\": \"array\","
    "   \"items\": {\"type\": \"object\","
    "     \"properties\": {"
    "       \"id\": {\"type\": \"string\"}, \"orderId\": {\"type\": \"string\"},"
    "       \"userId\": {\"type\": \"string\"}, \"text\": {\"type\": \"string\"},"
    "       \"createdAt\": {\"type\": \"string\"}},"
    "     \"required\": [\"id\", \"orderId\", \"userId\", \"text\"]}}},"
    " \"required\": [\"notifications\"]}";

/* "Order o-1 is confirmed: 3 items, 42.50 EUR." (the parts the event has). */
static void describe(const cJSON *order, const char *order_id, char *out, size_t n)
{
    const cJSON *amount = cJSON_GetObjectItemCaseSensitive(order, "amount");
    const char *currency =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(order, "currency"));
    long long count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(order, "items"))
    {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(item, "quantity");
        if (cJSON_IsNumber(q) && q->valuedouble > 0 && q->valuedouble < 1e6)
            count += (long long)q->valuedouble;
    }
    int len = snprintf(out, n, "Order %s is confirmed", order_id);
    if (len < 0 || (size_t)len >= n)
        return;
    if (count > 0)
        len += snprintf(out + len, n - (size_t)len, ": %lld item%s", count, count == 1 ? "" : "s");
    if (len > 0 && (size_t)len < n && cJSON_IsNumber(amount))
        len += snprintf(out + len, n - (size_t)len, "%s%.2f%s%.3s", count > 0 ? ", " : ": ",
                        amount->valuedouble, currency ? " " : "", currency ? currency : "");
    if (len > 0 && (size_t)len < n)
        snprintf(out + len, n - (size_t)len, ".");
}

static cJSON *new_notification(const char *id, const char *order_id, const char *user_id,
                               const char *text)
{
    char now[32];
    shop_timestamp(now);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "id", id) ||
        !cJSON_AddStringToObject(o, "orderId", order_id) ||
        !cJSON_AddStringToObject(o, "userId", user_id) ||
        !cJSON_AddStringToObject(o, "text", text) ||
        !cJSON_AddStringToObject(o, "createdAt", now)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Store failures are retried (the runtime backs off and gives up after
 * max_retries); malformed events are dropped. */
static loom_ack on_order_created(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *order = loom_ctx_payload(ctx);
    const char *order_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(order, "id"));
    const char *user_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(order, "userId"));
    char claim[128], key[64], id[32], text[256];
    if (!order_id || !user_id ||
        snprintf(claim, sizeof claim, "notifications:order:%s", order_id) >= (int)sizeof claim)
        return LOOM_DROP;

    loom_store *store = loom_ctx_store(ctx);
    loom_err err = shop_next_id(store, "notifications:seq", "n", id, sizeof id);
    if (err != LOOM_OK) {
        loom_ctx_log(ctx, LOOM_LOG_WARN, "cannot allocate an id: %s", loom_strerror(err));
        return LOOM_RETRY;
    }
    cJSON *id_json = cJSON_CreateString(id);
    if (!id_json)
        return LOOM_RETRY;
    err = loom_store_add(store, claim, id_json, 0);
    cJSON_Delete(id_json);
    if (err == LOOM_EEXIST) {
        loom_ctx_log(ctx, LOOM_LOG_DEBUG, "order %s already notified", order_id);
        return LOOM_ACK;
    }
    if (err != LOOM_OK) {
        loom_ctx_log(ctx, LOOM_LOG_WARN, "cannot claim order %s: %s", order_id, loom_strerror(err));
        return LOOM_RETRY;
    }
    describe(order, order_id, text, sizeof text);
    /* id is "n-N": the notification lives at notifications:N. */
    snprintf(key, sizeof key, "notifications:%s", id + 2);
    cJSON *n = new_notification(id, order_id, user_id, text);
    err = n ? loom_store_set(store, key, n, 0) : LOOM_ENOMEM;
    cJSON_Delete(n);
    if (err != LOOM_OK) {
        loom_store_delete(store, claim); /* let the retry claim it again */
        loom_ctx_log(ctx, LOOM_LOG_WARN, "cannot save the notification: %s", loom_strerror(err));
        return LOOM_RETRY;
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "notified user %s: %s", user_id, text);
    return LOOM_ACK;
}

/* GET /notifications[?userId=u-1] -> {"notifications": [newest first]}. */
static void list(loom_ctx *ctx, void *user)
{
    (void)user;
    const char *user_id =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(loom_ctx_parameter(ctx), "userId"));
    loom_store *store = loom_ctx_store(ctx);
    cJSON *seq = NULL;
    loom_err err = loom_store_get(store, "notifications:seq", &seq);
    if (err != LOOM_OK && err != LOOM_ENOTFOUND) {
        shop_fail_store(ctx, "read the notification counter", err);
        return;
    }
    long long last = cJSON_IsNumber(seq) && seq->valuedouble > 0 ? (long long)seq->valuedouble : 0;
    cJSON_Delete(seq);

    cJSON *result = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(result, "notifications");
    if (!arr) {
        cJSON_Delete(result);
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return;
    }
    int found = 0;
    for (long long i = last; i > 0 && i > last - SCAN_MAX && found < LIST_MAX; i--) {
        char key[64];
        snprintf(key, sizeof key, "notifications:%lld", i);
        cJSON *n = NULL;
        err = loom_store_get(store, key, &n);
        if (err == LOOM_ENOTFOUND)
            continue; /* a counter taken by a duplicate event, or a write in progress */
        if (err != LOOM_OK) {
            cJSON_Delete(result);
            shop_fail_store(ctx, "read a notification", err);
            return;
        }
        const char *owner = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(n, "userId"));
        if (user_id && (!owner || strcmp(owner, user_id) != 0)) {
            cJSON_Delete(n);
            continue;
        }
        if (!cJSON_AddItemToArray(arr, n)) {
            cJSON_Delete(n);
            continue;
        }
        found++;
    }
    loom_ctx_log(ctx, LOOM_LOG_DEBUG, "listed %d notifications", found);
    loom_ctx_reply_take(ctx, result);
}

LOOM_SUBSCRIPTION(on_order_created_sub, .name = "onOrderCreated",
                  .description = "Stores a notification for every new order",
                  .handler = on_order_created, .filter = {.event_name = "orderCreated"},
                  .payload_schema = order_event_schema);

LOOM_COMMAND(list_cmd, .name = "list", .description = "Lists notifications, newest first",
             .handler = list, .parameter_schema = list_parameter_schema,
             .output_schema = list_schema, .http_method = "GET", .http_path = "/notifications",
             .http_public = true);

LOOM_SERVICE_EXTERN(shop_notifications, .name = "notifications", .version = "1",
                    .description = "Order notifications", .commands = LOOM_COMMANDS(&list_cmd),
                    .subscriptions = LOOM_SUBSCRIPTIONS(&on_order_created_sub));
