/*
 * payments: charges an amount for an order (a pretend payment provider that
 * captures every positive amount).
 *
 * Only orders that exist are charged: payments asks orders.get first (an
 * unknown order is 422), unless config.payments.verify_orders is false
 * (bench/run.py measures the bare charge that way; never in production).
 *
 * Charging is idempotent per order: the payment is stored with
 * loom_store_add under payments:order:<orderId>, so a retried charge returns
 * the first payment instead of charging twice, and a second charge of the
 * same order with another amount is refused (409). A retry is answered from
 * the stored payment before anything else is done (no payment id is spent
 * on it); two first charges racing each other are still settled by
 * loom_store_add.
 *
 * The currency comes from the service configuration, e.g. in YAML:
 *   config:
 *     payments:
 *       currency: EUR
 *
 * State store keys: payments:seq (ids "p-1", ...), payments:order:<orderId>.
 */
#include <stdio.h>
#include <string.h>

#include "shop.h"

/* exclusiveMinimum rejects zero and negative amounts with 400 before the
 * handler runs. */
static const char charge_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"orderId\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64},"
    "   \"amount\": {\"type\": \"number\", \"exclusiveMinimum\": 0, \"maximum\": 1000000}},"
    " \"required\": [\"orderId\", \"amount\"],"
    " \"additionalProperties\": false}";

static const char payment_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"paymentId\": {\"type\": \"string\"}, \"orderId\": {\"type\": \"string\"},"
    "   \"amount\": {\"type\": \"number\", \"exclusiveMinimum\": 0},"
    "   \"currency\": {\"type\": \"string\", \"pattern\": \"^[A-Z]{3}$\"},"
    "   \"status\": {\"enum\": [\"captured\"]}, \"createdAt\": {\"type\": \"string\"}},"
    " \"required\": [\"paymentId\", \"orderId\", \"amount\", \"currency\", \"status\"]}";

/* config.payments.currency when it is an ISO 4217 code ("USD"), else EUR. */
static const char *currency_of(const loom_ctx *ctx)
{
    const char *c =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(loom_ctx_config(ctx), "currency"));
    if (!c || strlen(c) != 3)
        return "EUR";
    for (int i = 0; i < 3; i++)
        if (c[i] < 'A' || c[i] > 'Z')
            return "EUR";
    return c;
}

static cJSON *new_payment(const char *id, const char *order_id, double amount, const char *currency)
{
    char now[32];
    shop_timestamp(now);
    cJSON *p = cJSON_CreateObject();
    if (!p || !cJSON_AddStringToObject(p, "paymentId", id) ||
        !cJSON_AddStringToObject(p, "orderId", order_id) ||
        !cJSON_AddNumberToObject(p, "amount", amount) ||
        !cJSON_AddStringToObject(p, "currency", currency) ||
        !cJSON_AddStringToObject(p, "status", "captured") ||
        !cJSON_AddStringToObject(p, "createdAt", now)) {
        cJSON_Delete(p);
        return NULL;
    }
    return p;
}

/* An earlier charge of the same order (earlier, taken over): the same
 * payment again (200) when the amount matches, 409 otherwise. */
static void answer_repeat(loom_ctx *ctx, cJSON *earlier, const char *order_id, double amount)
{
    const cJSON *was = cJSON_GetObjectItemCaseSensitive(earlier, "amount");
    if (!cJSON_IsNumber(was) || was->valuedouble != amount) {
        cJSON_Delete(earlier);
        loom_ctx_fail_take(ctx, 409, "order already charged with another amount",
                           shop_detail("orderId", order_id));
        return;
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "order %s already charged: same payment again", order_id);
    loom_ctx_reply_take(ctx, earlier);
}

/* True when orders.get finds the order (or the check is turned off);
 * otherwise the command is answered: 422 for an unknown order, 503 / 504
 * when orders cannot tell. */
static bool check_order(loom_ctx *ctx, const char *order_id)
{
    const cJSON *verify = cJSON_GetObjectItemCaseSensitive(loom_ctx_config(ctx), "verify_orders");
    if (cJSON_IsFalse(verify))
        return true;
    cJSON *param = shop_detail("id", order_id);
    if (!param) {
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return false;
    }
    loom_call call =
        LOOM_CALL_INIT(.service = "orders", .version = "1", .command = "get", .parameter = param);
    loom_msg *resp = NULL;
    loom_err err = loom_ctx_call(ctx, &call, &resp);
    if (err != LOOM_OK)
        cJSON_Delete(param); /* not taken over */
    int status = err == LOOM_OK ? loom_msg_status(resp) : 0;
    loom_msg_release(resp);
    if (status >= 200 && status < 300)
        return true;
    if (status >= 400 && status < 500) {
        loom_ctx_log(ctx, LOOM_LOG_INFO, "refused a charge for unknown order %s", order_id);
        loom_ctx_fail_take(ctx, 422, "unknown order", shop_detail("orderId", order_id));
    } else {
        /* Info: the caller sees the 503 / 504; orders logs its own trouble. */
        loom_ctx_log(ctx, LOOM_LOG_INFO, "cannot check order %s: %s (status %d)", order_id,
                     err != LOOM_OK ? loom_strerror(err) : "orders.get failed", status);
        loom_ctx_fail_take(ctx, err == LOOM_ETIMEDOUT || status == 504 ? 504 : 503, "cannot check the order",
                  NULL);
    }
    return false;
}

/* POST /payments {"orderId", "amount"} -> {paymentId, orderId, amount,
 * currency, status: "captured", createdAt}. */
static void charge(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *p = loom_ctx_payload(ctx);
    const char *order_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "orderId"));
    const cJSON *amount = cJSON_GetObjectItemCaseSensitive(p, "amount");
    /* The schema already refuses these; a payment service checks twice. */
    if (!order_id || !cJSON_IsNumber(amount) || !(amount->valuedouble > 0)) {
        loom_ctx_fail_take(ctx, 400, "the amount must be positive",
                           shop_detail("orderId", order_id));
        return;
    }
    loom_store *store = loom_ctx_store(ctx);
    char id[32], key[128];
    if (snprintf(key, sizeof key, "payments:order:%s", order_id) >= (int)sizeof key) {
        loom_ctx_fail_take(ctx, 400, "orderId is too long", NULL);
        return;
    }
    /* A repeat first: its order was checked when it was first charged. */
    cJSON *earlier = NULL;
    loom_err err = loom_store_get(store, key, &earlier);
    if (err == LOOM_OK) {
        answer_repeat(ctx, earlier, order_id, amount->valuedouble);
        return;
    }
    if (err != LOOM_ENOTFOUND) {
        shop_fail_store(ctx, "read the earlier payment", err);
        return;
    }
    if (!check_order(ctx, order_id))
        return;
    err = shop_next_id(store, "payments:seq", "p", id, sizeof id);
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "allocate a payment id", err);
        return;
    }
    cJSON *payment = new_payment(id, order_id, amount->valuedouble, currency_of(ctx));
    if (!payment) {
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return;
    }
    err = loom_store_add(store, key, payment, 0);
    if (err == LOOM_EEXIST) { /* charged meanwhile by a concurrent request */
        cJSON_Delete(payment);
        if ((err = loom_store_get(store, key, &earlier)) == LOOM_OK)
            answer_repeat(ctx, earlier, order_id, amount->valuedouble);
        else
            shop_fail_store(ctx, "read the earlier payment", err);
        return;
    }
    if (err != LOOM_OK) {
        cJSON_Delete(payment);
        shop_fail_store(ctx, "save the payment", err);
        return;
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "captured %s for order %s: %.2f %s", id, order_id,
                 amount->valuedouble, currency_of(ctx));
    loom_ctx_reply_take(ctx, payment);
}

/* Not public: over HTTP it needs a token once auth is configured (orders
 * calls it through the broker, which HTTP auth does not cover). */
LOOM_COMMAND(charge_cmd, .name = "charge", .description = "Charges an amount for an order",
             .handler = charge, .payload_schema = charge_schema, .output_schema = payment_schema,
             .http_method = "POST", .http_path = "/payments",
             .errors = LOOM_ERRORS({409, "The order was already charged with another amount",
                                    "{\"type\":\"object\",\"required\":[\"orderId\"],"
                                    "\"properties\":{\"orderId\":{\"type\":\"string\"}}}"},
                                   {422, "The order does not exist",
                                    "{\"type\":\"object\",\"required\":[\"orderId\"],"
                                    "\"properties\":{\"orderId\":{\"type\":\"string\"}}}"}));

LOOM_SERVICE_EXTERN(shop_payments, .name = "payments", .version = "1",
                    .description = "Shop payments", .commands = LOOM_COMMANDS(&charge_cmd));
