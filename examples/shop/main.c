/*
 * The shop program: links all four services; configuration decides which
 * of them run in this process (--services users,orders | all | none) and
 * which broker connects them (memory: by default, mqtt://... when split).
 *
 *   ./shop --call users.create '{"name":"Ada","email":"ada@example.com"}'
 *   ./shop --services all --http 127.0.0.1:8080          (see demo.sh)
 *
 * Unless the configuration file, LOOM_STATE or --state say otherwise, the
 * shop keeps its state in a file store, $TMPDIR/loom-shop-UID.json, so that
 * one-shot --call processes and a running shop see the same users and
 * orders (a program default, given to loom_main_with). Pass --state memory:
 * for a purely in-memory run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shop.h"

int main(int argc, char **argv)
{
    const loom_service_def *const *services =
        LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications);
    /* The default state, under the file, the environment and the flags. */
    const char *tmp = getenv("TMPDIR");
    char state[512];
    snprintf(state, sizeof state, "state.url=file:%s/loom-shop-%u.json", tmp && *tmp ? tmp : "/tmp",
             (unsigned)getuid());
    loom_main_options opts = {
        .name = "shop",
        .version = SHOP_VERSION,
        .description = "The loom shop example: users, orders, payments and notifications",
        .defaults = (const char *const[]){state, NULL},
    };
    return loom_main_with(argc, argv, services, &opts);
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

void shop_fail_store(loom_ctx *ctx, const char *what, loom_err err)
{
    loom_ctx_log(ctx, LOOM_LOG_ERROR, "state store: cannot %s: %s", what, loom_strerror(err));
    if (err == LOOM_EUNAVAILABLE)
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
