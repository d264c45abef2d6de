/*
 * The shop program: links all four services; configuration decides which
 * of them run in this process (--services users,orders | all | none) and
 * which broker connects them (memory: by default, mqtt://... when split).
 *
 *   ./shop --call users.create '{"name":"Ada","email":"ada@example.com"}'
 *   ./shop --services all --http 127.0.0.1:8080          (see demo.sh)
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "shop.h"

int main(int argc, char **argv)
{
    return loom_main(argc, argv,
                     LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications));
}

/* --- helpers shared by the services ------------------------------------- */

loom_err shop_next_id(loom_store *store, const char *seq_key, const char *prefix, char *out,
                      size_t n)
{
    int64_t seq = 0;
    loom_err err = loom_store_incr(store, seq_key, 1, &seq);
    if (err != LOOM_OK)
        return err;
    int len = snprintf(out, n, "%s-%lld", prefix, (long long)seq);
    return len > 0 && (size_t)len < n ? LOOM_OK : LOOM_EINVAL;
}

void shop_timestamp(char out[32])
{
    time_t now = time(NULL);
    struct tm tm;
    if (!gmtime_r(&now, &tm) || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        strcpy(out, "1970-01-01T00:00:00Z");
}

void shop_reply(loom_ctx *ctx, cJSON *result)
{
    if (loom_ctx_reply(ctx, result) != LOOM_OK)
        cJSON_Delete(result);
}

void shop_fail(loom_ctx *ctx, int status, const char *message, cJSON *data)
{
    if (loom_ctx_fail(ctx, status, message, data) != LOOM_OK)
        cJSON_Delete(data);
}

void shop_fail_store(loom_ctx *ctx, const char *what, loom_err err)
{
    loom_ctx_log(ctx, LOOM_LOG_ERROR, "state store: cannot %s: %s", what, loom_strerror(err));
    if (err == LOOM_EUNAVAILABLE)
        shop_fail(ctx, 503, "the state store is unavailable", NULL);
    else
        shop_fail(ctx, 500, "state store error", NULL);
}

cJSON *shop_detail(const char *key, const char *value)
{
    cJSON *o = cJSON_CreateObject();
    if (o && !cJSON_AddStringToObject(o, key, value ? value : "")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}
