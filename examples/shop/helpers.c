/* Helpers shared by the shop's services (declared in shop.h). Kept apart
 * from main.c so that tests can link the services without the program's
 * main (tests/test_shop_kit.c). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "shop.h"

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

void shop_fail_store(loom_ctx *ctx, const char *what, loom_err err)
{
    loom_ctx_log(ctx, LOOM_LOG_ERROR, "state store: cannot %s: %s", what, loom_strerror(err));
    if (err == LOOM_EUNAVAILABLE || err == LOOM_ETIMEDOUT) /* e.g. its lock held too long */
        loom_ctx_fail_take(ctx, 503, "the state store is unavailable", NULL);
    else
        loom_ctx_fail_take(ctx, 500, "state store error", NULL);
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
