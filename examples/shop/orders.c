/*
 * orders: places orders and looks them up.
 *
 * orders.create, in order:
 *   1. users.get checks the user (loom_ctx_call: inline when users runs in
 *      this process, over the broker otherwise). An unknown user is the
 *      caller's mistake in an otherwise valid request: 422 "unknown user".
 *   2. The order is stored as "pending", so that it exists when
 *      payments.charge checks it (payments refuses to charge an order
 *      nobody placed).
 *   3. payments.charge charges the amount the client sends (a demo: a real
 *      shop would price the items itself). A declined charge is 402, and the
 *      pending order is removed again.
 *   4. The order is stored as "paid" and returned; its success event
 *      orderCreated carries the order to every subscriber (notifications).
 * users or payments being unreachable or slow gives 503 / 504.
 *
 * State store keys: orders:seq (ids "o-1", ...), orders:<id> (the order).
 */
#include <stdio.h>
#include <string.h>

#include "shop.h"

static const char create_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"userId\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64},"
    "   \"items\": {\"type\": \"array\", \"minItems\": 1, \"maxItems\": 100,"
    "     \"items\": {\"type\": \"object\","
    "       \"properties\": {"
    "         \"sku\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64},"
    "         \"quantity\": {\"type\": \"integer\", \"minimum\": 1, \"maximum\": 1000}},"
    "       \"required\": [\"sku\", \"quantity\"],"
    "       \"additionalProperties\": false}},"
    "   \"amount\": {\"type\": \"number\", \"exclusiveMinimum\": 0, \"maximum\": 1000000}},"
    " \"required\": [\"userId\", \"items\", \"amount\"],"
    " \"additionalProperties\": false}";

static const char id_parameter_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {\"id\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64}},"
    " \"required\": [\"id\"]}";

static const char order_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"id\": {\"type\": \"string\"}, \"userId\": {\"type\": \"string\"},"
    "   \"items\": {\"type\": \"array\"}, \"amount\": {\"type\": \"number\"},"
    "   \"currency\": {\"type\": \"string\"}, \"status\": {\"enum\": [\"pending\", \"paid\"]},"
    "   \"paymentId\": {\"type\": \"string\"}, \"createdAt\": {\"type\": \"string\"}},"
    " \"required\": [\"id\", \"userId\", \"items\", \"amount\", \"status\", \"createdAt\"]}";

/* Answers a failed downstream call (err, or an error response) and returns
 * false; returns true when resp is a success. what names the step. */
static bool downstream_ok(loom_ctx *ctx, const char *what, loom_err err, const loom_msg *resp)
{
    if (err != LOOM_OK) {
        loom_ctx_log(ctx, LOOM_LOG_WARN, "%s: %s", what, loom_strerror(err));
        loom_ctx_fail_take(ctx, err == LOOM_ETIMEDOUT ? 504 : 503, what, NULL);
        return false;
    }
    int status = loom_msg_status(resp);
    if (status < 300)
        return true;
    const char *message = loom_msg_error(resp);
    loom_ctx_log(ctx, LOOM_LOG_WARN, "%s: %d %s", what, status, message ? message : "");
    loom_ctx_fail_take(ctx, status == 504 ? 504 : 503, what, NULL);
    return false;
}

/* Step 1. True when the user exists; otherwise the command is answered. */
static bool check_user(loom_ctx *ctx, const char *user_id)
{
    cJSON *param = shop_detail("id", user_id);
    if (!param) {
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return false;
    }
    loom_call call =
        LOOM_CALL_INIT(.service = "users", .version = "1", .command = "get", .parameter = param);
    loom_msg *resp = NULL;
    loom_err err = loom_ctx_call(ctx, &call, &resp);
    if (err != LOOM_OK)
        cJSON_Delete(param); /* not taken over */
    bool ok = false;
    int status = err == LOOM_OK ? loom_msg_status(resp) : 0;
    if (status >= 400 && status < 500) {
        /* 404, or 400 for an id users.get finds malformed: no such user. */
        loom_ctx_log(ctx, LOOM_LOG_INFO, "unknown user %s", user_id);
        loom_ctx_fail_take(ctx, 422, "unknown user", shop_detail("userId", user_id));
    } else {
        ok = downstream_ok(ctx, "cannot check the user", err, resp);
    }
    loom_msg_release(resp);
    return ok;
}

/* Step 2. On success returns the payment result (cJSON_Delete it);
 * otherwise answers the command and returns NULL. */
static cJSON *charge(loom_ctx *ctx, const char *order_id, double amount)
{
    cJSON *payload = shop_detail("orderId", order_id);
    if (!payload || !cJSON_AddNumberToObject(payload, "amount", amount)) {
        cJSON_Delete(payload);
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return NULL;
    }
    loom_call call = LOOM_CALL_INIT(.service = "payments", .version = "1", .command = "charge",
                                    .payload = payload);
    loom_msg *resp = NULL;
    loom_err err = loom_ctx_call(ctx, &call, &resp);
    if (err != LOOM_OK)
        cJSON_Delete(payload);
    cJSON *payment = NULL;
    int status = err == LOOM_OK ? loom_msg_status(resp) : 0;
    if (status >= 400 && status < 500) {
        const char *reason = loom_msg_error(resp);
        loom_ctx_log(ctx, LOOM_LOG_INFO, "payment for %s declined: %s", order_id,
                     reason ? reason : "");
        loom_ctx_fail_take(ctx, 402, "payment declined", shop_detail("reason", reason));
    } else if (downstream_ok(ctx, "cannot charge the payment", err, resp)) {
        payment = loom_msg_result_json(resp);
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(payment, "paymentId"))) {
            loom_ctx_log(ctx, LOOM_LOG_ERROR, "payments.charge answered without a paymentId");
            loom_ctx_fail_take(ctx, 500, "bad payment response", NULL);
            cJSON_Delete(payment);
            payment = NULL;
        }
    }
    loom_msg_release(resp);
    return payment;
}

/* The pending order (payment NULL), or the paid one. */
static cJSON *new_order(const char *id, const cJSON *payload, const cJSON *payment,
                        const char *created_at)
{
    const cJSON *currency = cJSON_GetObjectItemCaseSensitive(payment, "currency");
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "id", id) ||
        !cJSON_AddItemToObject(o, "userId",
                               cJSON_Duplicate(cJSON_GetObjectItem(payload, "userId"), 1)) ||
        !cJSON_AddItemToObject(o, "items",
                               cJSON_Duplicate(cJSON_GetObjectItem(payload, "items"), 1)) ||
        !cJSON_AddItemToObject(o, "amount",
                               cJSON_Duplicate(cJSON_GetObjectItem(payload, "amount"), 1)) ||
        !cJSON_AddStringToObject(o, "status", payment ? "paid" : "pending") ||
        !cJSON_AddStringToObject(o, "createdAt", created_at)) {
        cJSON_Delete(o);
        return NULL;
    }
    if (payment &&
        (!cJSON_AddStringToObject(o, "currency",
                                  cJSON_IsString(currency) ? currency->valuestring : "EUR") ||
         !cJSON_AddItemToObject(o, "paymentId",
                                cJSON_Duplicate(cJSON_GetObjectItem(payment, "paymentId"), 1)))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* POST /orders {"userId", "items": [{"sku", "quantity"}], "amount"} -> the order. */
static void create_order(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *p = loom_ctx_payload(ctx);
    const cJSON *user_id = cJSON_GetObjectItemCaseSensitive(p, "userId");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(p, "items");
    const cJSON *amount = cJSON_GetObjectItemCaseSensitive(p, "amount");
    if (!cJSON_IsString(user_id) || !cJSON_IsArray(items) || !cJSON_IsNumber(amount) ||
        !(amount->valuedouble > 0)) {
        loom_ctx_fail_take(ctx, 400, "userId, items and a positive amount are required", NULL);
        return;
    }
    if (!check_user(ctx, user_id->valuestring))
        return;

    loom_store *store = loom_ctx_store(ctx);
    char id[32], key[64];
    loom_err err = shop_next_id(store, "orders:seq", "o", id, sizeof id);
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "allocate an order id", err);
        return;
    }
    char now[32];
    shop_timestamp(now);
    snprintf(key, sizeof key, "orders:%s", id);
    cJSON *pending = new_order(id, p, NULL, now);
    if (!pending) {
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return;
    }
    err = loom_store_set(store, key, pending, 0);
    cJSON_Delete(pending);
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "save the order", err);
        return;
    }
    cJSON *payment = charge(ctx, id, amount->valuedouble);
    if (!payment) {
        loom_store_delete(store, key); /* answered already: declined or unreachable */
        return;
    }
    cJSON *order = new_order(id, p, payment, now);
    cJSON_Delete(payment);
    if (!order) {
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return;
    }
    if ((err = loom_store_set(store, key, order, 0)) != LOOM_OK) {
        /* The charge went through: a real shop would refund it here. */
        cJSON_Delete(order);
        shop_fail_store(ctx, "save the order", err);
        return;
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "order %s placed for user %s: %.2f", id, user_id->valuestring,
                 amount->valuedouble);
    loom_ctx_reply_take(ctx, order); /* also delivered as the event orderCreated */
}

/* GET /orders/:id -> the order, or 404. */
static void get_order(loom_ctx *ctx, void *user)
{
    (void)user;
    const char *id =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(loom_ctx_parameter(ctx), "id"));
    char key[128];
    if (!id || snprintf(key, sizeof key, "orders:%s", id) >= (int)sizeof key) {
        loom_ctx_fail_take(ctx, 404, "order not found", shop_detail("id", id));
        return;
    }
    cJSON *order = NULL;
    loom_err err = loom_store_get(loom_ctx_store(ctx), key, &order);
    if (err == LOOM_ENOTFOUND) {
        loom_ctx_fail_take(ctx, 404, "order not found", shop_detail("id", id));
        return;
    }
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "read the order", err);
        return;
    }
    loom_ctx_reply_take(ctx, order);
}

LOOM_COMMAND(create_cmd, .name = "create",
             .description = "Places an order: checks the user, charges the amount, stores it",
             .handler = create_order, .payload_schema = create_schema,
             .output_schema = order_schema, .http_method = "POST", .http_path = "/orders",
             .http_public = true, .success_event = "orderCreated",
             .errors = LOOM_ERRORS({402, "The payment was declined",
                                    "{\"type\":\"object\",\"required\":[\"reason\"],\"properties\":"
                                    "{\"reason\":{\"type\":\"string\"}}}"},
                                   {422, "The user does not exist",
                                    "{\"type\":\"object\",\"required\":[\"userId\"],\"properties\":"
                                    "{\"userId\":{\"type\":\"string\"}}}"}));

LOOM_COMMAND(get_cmd, .name = "get", .description = "Returns an order by id", .handler = get_order,
             .parameter_schema = id_parameter_schema, .output_schema = order_schema,
             .http_method = "GET", .http_path = "/orders/:id", .http_public = true,
             .errors = LOOM_ERRORS({404, "No order has this id",
                                    "{\"type\":\"object\",\"required\":[\"id\"],\"properties\":{"
                                    "\"id\":{\"type\":\"string\"}}}"}));

LOOM_SERVICE_EXTERN(shop_orders, .name = "orders", .version = "1", .description = "Shop orders",
                    .commands = LOOM_COMMANDS(&create_cmd, &get_cmd));
