/* The answer calls that always take ownership (loom_ctx_reply_take, ...):
 * thin wrappers over loom_ctx_reply / loom_ctx_fail / loom_ctx_emit that
 * free what could not be sent and log why, so that a handler answers in
 * one line. The runtime's own rule (rule 2 in loom.h: ownership passes
 * only on LOOM_OK) stays as it is for callers that want to keep the value. */
#include "loom.h"

loom_err loom_ctx_reply_take(loom_ctx *ctx, cJSON *result)
{
    loom_err err = loom_ctx_reply(ctx, result);
    if (err != LOOM_OK) {
        cJSON_Delete(result);
        if (ctx)
            loom_ctx_log(ctx, LOOM_LOG_WARN, "reply not sent: %s", loom_strerror(err));
    }
    return err;
}

loom_err loom_ctx_fail_take(loom_ctx *ctx, int status, const char *message, cJSON *data)
{
    loom_err err = loom_ctx_fail(ctx, status, message, data);
    if (err != LOOM_OK) {
        cJSON_Delete(data);
        if (ctx)
            loom_ctx_log(ctx, LOOM_LOG_WARN, "error %d not sent: %s", status, loom_strerror(err));
    }
    return err;
}

loom_err loom_ctx_emit_take(loom_ctx *ctx, const char *event_name, cJSON *payload)
{
    loom_err err = loom_ctx_emit(ctx, event_name, payload);
    if (err != LOOM_OK) {
        cJSON_Delete(payload);
        if (ctx)
            loom_ctx_log(ctx, LOOM_LOG_WARN, "event %s not emitted: %s",
                         event_name ? event_name : "(null)", loom_strerror(err));
    }
    return err;
}
