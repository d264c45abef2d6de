/* The HTTP bridge's API in a build without it (WITH_HTTP=0, docs/abi.md
 * "Build options"): the same symbols, so programs link either way;
 * loom_http_create fails with LOOM_EUNSUPPORTED and says why, and the rest
 * only ever see the NULL bridge it leaves. The Makefile compiles this file
 * instead of the other lib/http sources. */
#include <cjson/cJSON.h>

#include "loom/http.h"

#include "core/features.h"

loom_err loom_http_create(loom_http **out, loom_runtime *rt, const loom_config *cfg)
{
    (void)cfg;
    if (!out || !rt)
        return LOOM_EINVAL;
    *out = NULL;
    loom_runtime_log(rt, LOOM_LOG_ERROR, "HTTP bridge: %s", loom__built_without_http());
    return LOOM_EUNSUPPORTED;
}

loom_err loom_http_set_auth(loom_http *h, loom_http_auth_fn fn, void *user)
{
    (void)h, (void)fn, (void)user;
    return LOOM_EUNSUPPORTED;
}

loom_err loom_http_start(loom_http *h)
{
    (void)h;
    return LOOM_EUNSUPPORTED;
}

int loom_http_port(const loom_http *h)
{
    (void)h;
    return 0;
}

loom_err loom_http_stop(loom_http *h)
{
    (void)h;
    return LOOM_EUNSUPPORTED;
}

void loom_http_destroy(loom_http *h)
{
    (void)h;
}

/* What loom_main's --openapi and --asyncapi link against; unreachable,
 * since they need the bridge loom_http_create refuses. */
cJSON *loom__http_openapi_doc(loom_http *h)
{
    (void)h;
    return NULL;
}

cJSON *loom__http_asyncapi_doc(loom_http *h)
{
    (void)h;
    return NULL;
}
