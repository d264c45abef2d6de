/*
 * The shop program: links all four services; configuration decides which
 * of them run in this process (--services users,orders | all | none) and
 * which broker connects them (memory: by default, mqtt://... when split).
 *
 *   ./shop --call users.create '{"name":"Ada","email":"ada@example.com"}'
 *   ./shop --services all --http 127.0.0.1:8080          (see demo.sh)
 *
 * Unless --state, --config, LOOM_STATE or LOOM_CONFIG say otherwise, the
 * shop keeps its state in a file store, $TMPDIR/loom-shop-UID/state.json, so
 * that one-shot --call processes and a running shop see the same users and
 * orders. The directory is created private (0700) and must stay so: in a
 * shared /tmp anyone could otherwise plant the state, lock or temporary
 * files. Pass --state memory: for a purely in-memory run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shop.h"

static bool state_configured(int argc, char **argv)
{
    const char *env[] = {"LOOM_STATE", "LOOM_CONFIG"};
    for (size_t i = 0; i < 2; i++)
        if (getenv(env[i]) && *getenv(env[i]))
            return true;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--state") == 0 || strncmp(argv[i], "--state=", 8) == 0 ||
            strcmp(argv[i], "--config") == 0 || strncmp(argv[i], "--config=", 9) == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const loom_service_def *const *services =
        LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications);
    if (state_configured(argc, argv))
        return loom_main(argc, argv, services);
    const char *tmp = getenv("TMPDIR");
    char dir[400], state[512];
    snprintf(dir, sizeof dir, "%s/loom-shop-%u", tmp && *tmp ? tmp : "/tmp", (unsigned)getuid());
    /* Ours and private, or refused: never state that someone else could
     * have planted or can read. */
    struct stat st;
    if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || lstat(dir, &st) != 0 ||
        !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
        fprintf(stderr,
                "%s: the state directory %s is not a private directory of this user (mode 0700); "
                "remove it or pass --state\n",
                argv[0], dir);
        return 2;
    }
    snprintf(state, sizeof state, "--state=file:%s/state.json", dir);
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (!args)
        return 1;
    memcpy(args, argv, (size_t)argc * sizeof *args);
    args[argc] = state;
    int rc = loom_main(argc + 1, args, services);
    free(args);
    return rc;
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
    if (err == LOOM_EUNAVAILABLE || err == LOOM_ETIMEDOUT) /* e.g. its lock held too long */
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
