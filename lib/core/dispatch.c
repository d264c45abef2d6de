/* Running handlers: a command's validation, its context and its single
 * answer; a subscription's filter, ack / retry / drop, and its emitted
 * result. All of it runs on a worker thread (or inline for a blocking
 * in-process call).
 *
 * A context is freed by whichever comes last of "the handler returned" and
 * "the answer was given"; both are bits of ctx->flags, set atomically. A
 * deferred context waiting for its answer is on rt->deferred (under
 * rt->ctx_mu) so that destroy can free it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/json.h"
#include "codec/topic.h"
#include "core/runtime.h"
#include "core/util.h"

static void ctx_free(loom_ctx *ctx)
{
    loom_msg_release(ctx->msg);
    free(ctx->reply_topic);
    free(ctx->correlation);
    cJSON_Delete(ctx->sub_result);
    free(ctx);
}

static const char *ctx_target(const loom_ctx *ctx)
{
    return ctx->cmd ? ctx->cmd->def->name : ctx->sub ? ctx->sub->def->name : NULL;
}

static void ctx_logv(const loom_ctx *ctx, loom_log_level level, const char *fmt, va_list ap)
{
    if (!loom__log_enabled(&ctx->rt->log, level))
        return;
    char target[300];
    snprintf(target, sizeof target, "%s.%s", ctx->svc->def->name, ctx_target(ctx));
    loom__logv(&ctx->rt->log, level, ctx->svc->def->name, ctx_target(ctx),
               loom_msg_trace_id(ctx->msg), fmt, ap);
}

void loom_ctx_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...)
{
    if (!ctx || !fmt)
        return;
    va_list ap;
    va_start(ap, fmt);
    ctx_logv(ctx, level, fmt, ap);
    va_end(ap);
}

static void ctx_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...)
    LOOM_PRINTF(3, 4);
static void ctx_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ctx_logv(ctx, level, fmt, ap);
    va_end(ap);
}

/* --- accessors -------------------------------------------------------------- */

const loom_msg *loom_ctx_msg(const loom_ctx *ctx) { return ctx ? ctx->msg : NULL; }
const cJSON *loom_ctx_payload(const loom_ctx *ctx) { return ctx ? loom_msg_payload(ctx->msg) : NULL; }
const cJSON *loom_ctx_parameter(const loom_ctx *ctx)
{
    return ctx ? loom_msg_parameter(ctx->msg) : NULL;
}
const cJSON *loom_ctx_config(const loom_ctx *ctx) { return ctx ? ctx->svc->config : NULL; }
const loom_service_def *loom_ctx_service(const loom_ctx *ctx) { return ctx ? ctx->svc->def : NULL; }
loom_runtime *loom_ctx_runtime(const loom_ctx *ctx) { return ctx ? ctx->rt : NULL; }
loom_store *loom_ctx_store(const loom_ctx *ctx) { return ctx ? ctx->rt->store : NULL; }

/* --- answering a command ------------------------------------------------------ */

/* Sends resp (consumed) where the request asked. */
static void route_response(loom_ctx *ctx, loom_msg *resp)
{
    loom_runtime *rt = ctx->rt;
    switch (ctx->reply_kind) {
    case LOOM__TO_PENDING:
        loom__complete_pending(rt, resp);
        return;
    case LOOM__TO_SLOT:
        ctx->slot->resp = resp;
        return;
    case LOOM__TO_TOPIC: {
        loom_err err = loom__publish(rt, ctx->reply_topic, resp, rt->qos_reply, false, NULL,
                                     ctx->correlation, ctx->correlation_len);
        if (err == LOOM_EINVAL || err == LOOM_ETOOBIG) {
            /* The answer cannot be encoded: the caller gets a 500, not a
             * timeout. */
            ctx_log(ctx, LOOM_LOG_ERROR, "the response cannot be encoded (%s): answering 500",
                    loom_strerror(err));
            loom_msg_release(resp);
            resp = loom__msg_error_for(ctx->msg, 500, "internal server error", NULL, false);
            err = resp ? loom__publish(rt, ctx->reply_topic, resp, rt->qos_reply, false, NULL,
                                       ctx->correlation, ctx->correlation_len)
                       : LOOM_ENOMEM;
            if (!resp)
                return;
        }
        if (err != LOOM_OK) {
            ctx_log(ctx, LOOM_LOG_WARN, "cannot send the response to %s: %s", ctx->reply_topic,
                    loom_strerror(err));
            loom_msg_release(resp);
        }
        return;
    }
    case LOOM__TO_BARE: {
        /* A plain MQTT client: the bare result (or error body) and a status
         * user property. */
        cJSON *body = loom_msg_result_json(resp);
        char *text = body ? loom__json_print(body, NULL) : NULL;
        char status[8];
        snprintf(status, sizeof status, "%d", loom_msg_status(resp));
        loom_publish p = {
            .topic = ctx->reply_topic,
            .msg = resp,
            .data = text ? text : "",
            .len = text ? strlen(text) : 0,
            .correlation = ctx->correlation,
            .correlation_len = ctx->correlation_len,
            .status = status,
            .qos = rt->qos_reply,
        };
        loom_err err = rt->ops->publish(rt->adapter, &p);
        if (err != LOOM_OK) {
            ctx_log(ctx, LOOM_LOG_WARN, "cannot send the response to %s: %s", ctx->reply_topic,
                    loom_strerror(err));
            loom_msg_release(resp);
        }
        free(text);
        cJSON_Delete(body);
        return;
    }
    default:
        loom_msg_release(resp);
        return;
    }
}

/* Marks the context answered; false when it already was. */
static bool mark_replied(loom_ctx *ctx)
{
    int old = atomic_fetch_or(&ctx->flags, LOOM__CTX_REPLIED);
    return !(old & LOOM__CTX_REPLIED);
}

/* After the answer went out: the context leaves the in-flight count and the
 * deferred list, and is freed if its handler has returned. */
static void after_answer(loom_ctx *ctx)
{
    loom_runtime *rt = ctx->rt;
    if (atomic_load(&ctx->flags) & LOOM__CTX_DEFERRED) {
        pthread_mutex_lock(&rt->ctx_mu);
        if (ctx->prev_deferred)
            ctx->prev_deferred->next_deferred = ctx->next_deferred;
        else
            rt->deferred = ctx->next_deferred;
        if (ctx->next_deferred)
            ctx->next_deferred->prev_deferred = ctx->prev_deferred;
        pthread_mutex_unlock(&rt->ctx_mu);
    }
    if (atomic_fetch_or(&ctx->flags, LOOM__CTX_DONE) & LOOM__CTX_RETURNED)
        ctx_free(ctx);
    /* Last: once nothing is in flight, stop may free the services and the
     * runtime this answer used. */
    atomic_fetch_sub(&rt->inflight, 1);
}

static void emit_success_event(loom_ctx *ctx, loom_msg *resp)
{
    const char *event = ctx->cmd->def->success_event;
    char *topic = loom__event_topic(ctx->rt, event, ctx->svc->def->name, ctx->svc->def->version);
    if (!topic)
        return;
    loom_err err = loom__publish(ctx->rt, topic, loom_msg_retain(resp), ctx->rt->qos_event,
                                 false, NULL, NULL, 0);
    if (err != LOOM_OK) {
        loom_msg_release(resp);
        ctx_log(ctx, LOOM_LOG_WARN, "cannot emit event %s: %s", event, loom_strerror(err));
    }
    free(topic);
}

/* Gives the answer: resp is consumed. */
static void deliver_answer(loom_ctx *ctx, loom_msg *resp)
{
    if (resp->type == LOOM_MSG_SUCCESS && ctx->cmd->def->success_event) {
        if (loom__msg_set(resp, &resp->event_name, ctx->cmd->def->success_event) == LOOM_OK)
            emit_success_event(ctx, resp);
    }
    route_response(ctx, resp);
}

static loom_err answer_command(loom_ctx *ctx, loom_msg *resp)
{
    /* The bulkhead slot frees before the caller hears the answer: a caller
     * that calls again as soon as it has it must find the slot free. */
    if (ctx->cmd->max_running)
        atomic_fetch_sub(&ctx->cmd->running, 1);
    deliver_answer(ctx, resp);
    after_answer(ctx);
    return LOOM_OK;
}

static bool valid_status(int status) { return status >= 400 && status <= 599; }

loom_err loom_ctx_reply(loom_ctx *ctx, cJSON *result)
{
    if (!ctx)
        return LOOM_EINVAL;
    if (ctx->sub) {
        if (!mark_replied(ctx))
            return LOOM_ESTATE;
        ctx->sub_result = result;
        return LOOM_OK;
    }
    if (atomic_load(&ctx->flags) & LOOM__CTX_REPLIED)
        return LOOM_ESTATE;
    loom__command *cmd = ctx->cmd;
    if (cmd->output_schema) {
        cJSON *details = NULL;
        if (!loom__schema_validate(cmd->output_schema, result, &details)) {
            if (!mark_replied(ctx)) {
                cJSON_Delete(details);
                return LOOM_ESTATE;
            }
            char *text = details ? cJSON_PrintUnformatted(details) : NULL;
            ctx_log(ctx, LOOM_LOG_ERROR, "output does not match the output schema: %s",
                    text ? text : "?");
            free(text);
            cJSON_Delete(details);
            loom_msg *resp =
                loom__msg_error_for(ctx->msg, 500, "internal server error", NULL, false);
            if (!resp) {
                atomic_fetch_and(&ctx->flags, ~LOOM__CTX_REPLIED);
                return LOOM_ENOMEM;
            }
            cJSON_Delete(result); /* taken over: LOOM_OK is returned */
            return answer_command(ctx, resp);
        }
    }
    loom_err bad = loom__json_check(result, LOOM_MAX_NESTING - 1);
    if (bad != LOOM_OK) {
        /* Invalid UTF-8, a non-finite number or too deep: no transport can
         * carry it faithfully, so the caller gets a 500 now rather than a
         * damaged answer or none at all (a timeout). */
        if (!mark_replied(ctx))
            return LOOM_ESTATE;
        ctx_log(ctx, LOOM_LOG_ERROR,
                "the result cannot be encoded as JSON (%s: invalid UTF-8, a number that is not "
                "finite, or nested too deeply): answering 500",
                loom_strerror(bad));
        loom_msg *resp = loom__msg_error_for(ctx->msg, 500, "internal server error", NULL, false);
        if (!resp) {
            atomic_fetch_and(&ctx->flags, ~LOOM__CTX_REPLIED);
            return LOOM_ENOMEM;
        }
        cJSON_Delete(result); /* taken over: LOOM_OK is returned */
        return answer_command(ctx, resp);
    }
    if (!mark_replied(ctx))
        return LOOM_ESTATE;
    loom_msg *resp = loom__msg_success_for(ctx->msg, result);
    if (!resp) {
        atomic_fetch_and(&ctx->flags, ~LOOM__CTX_REPLIED);
        return LOOM_ENOMEM;
    }
    /* The response's sender is the request's receiver: add our instance. */
    if (loom__msg_set(resp, (char **)&resp->sender.instance, ctx->rt->instance_id) != LOOM_OK) {
        resp->payload = NULL; /* hand result back */
        loom_msg_release(resp);
        atomic_fetch_and(&ctx->flags, ~LOOM__CTX_REPLIED);
        return LOOM_ENOMEM;
    }
    return answer_command(ctx, resp);
}

loom_err loom_ctx_fail(loom_ctx *ctx, int status, const char *message, cJSON *data)
{
    if (!ctx || !valid_status(status))
        return LOOM_EINVAL;
    if (ctx->sub)
        return LOOM_EINVAL; /* subscriptions answer with loom_ack */
    if (!mark_replied(ctx))
        return LOOM_ESTATE;
    bool unexpected = status >= 500 && status != 503 && status != 504;
    if (!unexpected && message && !loom__utf8_valid(message, strlen(message))) {
        ctx_log(ctx, LOOM_LOG_ERROR, "handler failed with %d and a message that is not UTF-8",
                status);
        unexpected = true;
    }
    bool drop_data = !unexpected && loom__json_check(data, LOOM_MAX_NESTING - 2) != LOOM_OK;
    if (drop_data)
        ctx_log(ctx, LOOM_LOG_ERROR,
                "the error data of a %d cannot be encoded as JSON: sent without it", status);
    if (unexpected)
        ctx_log(ctx, LOOM_LOG_ERROR, "handler failed with %d: %s", status,
                message ? message : "");
    /* Unexpected errors become a bare 500: their details stay in the log. */
    loom_msg *resp =
        loom__msg_error_for(ctx->msg, unexpected ? 500 : status,
                            unexpected ? "internal server error" : (message ? message : ""),
                            unexpected || drop_data ? NULL : data, !unexpected);
    if (!resp) {
        atomic_fetch_and(&ctx->flags, ~LOOM__CTX_REPLIED);
        return LOOM_ENOMEM;
    }
    if (unexpected || drop_data)
        cJSON_Delete(data);
    loom__msg_set(resp, (char **)&resp->sender.instance, ctx->rt->instance_id);
    return answer_command(ctx, resp);
}

loom_err loom_ctx_defer(loom_ctx *ctx)
{
    if (!ctx || ctx->sub)
        return LOOM_EINVAL;
    int old = atomic_fetch_or(&ctx->flags, LOOM__CTX_DEFERRED);
    if (old & (LOOM__CTX_DEFERRED | LOOM__CTX_REPLIED | LOOM__CTX_RETURNED)) {
        if (!(old & LOOM__CTX_DEFERRED))
            atomic_fetch_and(&ctx->flags, ~LOOM__CTX_DEFERRED);
        return LOOM_ESTATE;
    }
    if (ctx->reply_kind == LOOM__TO_SLOT && loom__slot_defer(ctx) != LOOM_OK) {
        atomic_fetch_and(&ctx->flags, ~LOOM__CTX_DEFERRED);
        return LOOM_ENOMEM;
    }
    loom_runtime *rt = ctx->rt;
    pthread_mutex_lock(&rt->ctx_mu);
    ctx->prev_deferred = NULL;
    ctx->next_deferred = rt->deferred;
    if (rt->deferred)
        rt->deferred->prev_deferred = ctx;
    rt->deferred = ctx;
    pthread_mutex_unlock(&rt->ctx_mu);
    return LOOM_OK;
}

loom_err loom_ctx_emit(loom_ctx *ctx, const char *event_name, cJSON *payload)
{
    if (!ctx)
        return LOOM_EINVAL;
    return loom__emit(ctx->rt, ctx, event_name, payload);
}

/* --- running a command --------------------------------------------------------- */

static loom_ctx *ctx_new(loom_runtime *rt, loom__service *svc, loom_msg *msg)
{
    loom_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->rt = rt;
    ctx->svc = svc;
    ctx->msg = msg;
    return ctx;
}

static loom_msg *validation_error(const loom_msg *req, const char *what, cJSON *details)
{
    cJSON *data = cJSON_CreateObject();
    if (!data || !details || !cJSON_AddItemToObject(data, "errors", details))
        cJSON_Delete(details); /* not data's when adding it failed */
    char text[64];
    snprintf(text, sizeof text, "invalid %s", what);
    loom_msg *resp = loom__msg_error_for(req, 400, text, data, true);
    if (!resp)
        cJSON_Delete(data); /* taken over only on success */
    return resp;
}

/* Handler run times: every run is timed with the coarse clock (a few ns
 * to read, 1-4 ms resolution: catches a handler that blocks for two ticks
 * or more), every eighth on each thread with the precise one (catches one
 * that is merely slower than LOOM__QUICK_NS); reading the precise clock
 * twice per run would cost a tenth of an inline call. */
static _Thread_local unsigned timed_runs;

static int64_t clock_ns(bool precise)
{
    if (!precise)
        return loom__coarse_ns();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Counts quick runs in a row; writes the shared counter only on change. */
static void note_duration(loom__command *cmd, int64_t ns, bool precise)
{
    unsigned q = atomic_load_explicit(&cmd->quick, memory_order_relaxed);
    if (ns >= (precise ? LOOM__QUICK_NS : loom__coarse_sure_ns())) {
        if (q)
            atomic_store_explicit(&cmd->quick, 0, memory_order_relaxed);
    } else if (q < LOOM__QUICK_RUNS) {
        atomic_fetch_add_explicit(&cmd->quick, 1, memory_order_relaxed);
    }
}

/* Answers without running the handler (validation, deadline, stopping). */
static void answer_early(loom_runtime *rt, loom__command *cmd, loom_msg *msg,
                         const loom__route *to, loom_msg *resp)
{
    loom_ctx tmp = {.rt = rt, .svc = cmd->svc, .cmd = cmd, .msg = msg, .reply_kind = to->kind,
                    .slot = to->slot, .reply_topic = (char *)to->topic,
                    .correlation = (void *)to->corr, .correlation_len = to->corr_len};
    if (resp) {
        loom__msg_set_address(resp, &resp->sender, cmd->svc->def->name, cmd->svc->def->version,
                              cmd->def->name, rt->instance_id);
        route_response(&tmp, resp);
    }
    loom_msg_release(msg);
}

void loom__run_command(loom_runtime *rt, loom__command *cmd, loom_msg *msg,
                       const loom__route *to)
{
    loom_msg *early = NULL;
    if (atomic_load(&rt->drain_over))
        early = loom__msg_error_for(msg, 503, "the service instance is stopping", NULL, false);
    else if (msg->deadline && msg->deadline <= loom__now_ms())
        early = loom__msg_error_for(msg, 504, "the deadline passed before the work started",
                                    NULL, false);
    else {
        cJSON *details = NULL;
        if (cmd->payload_schema &&
            !loom__schema_validate(cmd->payload_schema, loom_msg_payload(msg), &details))
            early = validation_error(msg, "payload", details);
        else if (cmd->parameter_schema &&
                 !loom__schema_validate(cmd->parameter_schema, loom_msg_parameter(msg),
                                        &details))
            early = validation_error(msg, "parameter", details);
    }
    /* The bulkhead: a command never runs more than max_running at once. */
    bool counted = !early && cmd->max_running;
    if (counted && atomic_fetch_add(&cmd->running, 1) >= cmd->max_running)
        early = loom__msg_error_for(msg, 503, "overloaded: too many concurrent requests", NULL,
                                    false);
    if (early) {
        if (counted)
            atomic_fetch_sub(&cmd->running, 1);
        answer_early(rt, cmd, msg, to, early);
        return;
    }
    loom_ctx *ctx = ctx_new(rt, cmd->svc, msg);
    if (ctx && to->topic)
        ctx->reply_topic = strdup(to->topic);
    if (ctx && to->corr_len) {
        ctx->correlation = malloc(to->corr_len);
        if (ctx->correlation)
            memcpy(ctx->correlation, to->corr, to->corr_len);
    }
    if (!ctx || (to->topic && !ctx->reply_topic) || (to->corr_len && !ctx->correlation)) {
        if (ctx) {
            ctx->msg = NULL;
            ctx_free(ctx);
        }
        if (counted)
            atomic_fetch_sub(&cmd->running, 1);
        answer_early(rt, cmd, msg, to,
                     loom__msg_error_for(msg, 503, "out of memory", NULL, false));
        return;
    }
    ctx->cmd = cmd;
    ctx->reply_kind = to->kind;
    ctx->slot = to->slot;
    ctx->correlation_len = to->corr_len;
    atomic_fetch_add(&rt->inflight, 1);

    /* Runs on the workers, and inline runs that LOOM__RUN_AUTO chose, are
     * timed for that choice (loom__invoke); blocking calls and explicitly
     * inline invokes always run inline and are not. */
    bool timed = to->kind != LOOM__TO_SLOT || to->slot->timed;
    bool precise = timed && (timed_runs++ & 7) == 0;
    int64_t t0 = timed ? clock_ns(precise) : 0;
    loom__callback_depth++;
    cmd->def->handler(ctx, cmd->svc->user);
    loom__callback_depth--;
    if (timed)
        note_duration(cmd, clock_ns(precise) - t0, precise);

    int flags = atomic_load(&ctx->flags);
    if (!(flags & (LOOM__CTX_REPLIED | LOOM__CTX_DEFERRED))) {
        ctx_log(ctx, LOOM_LOG_ERROR, "handler returned without a reply");
        loom_ctx_fail(ctx, 500, "handler returned without a reply", NULL);
    }
    /* Whoever sets the second of RETURNED / DONE frees. */
    if (atomic_fetch_or(&ctx->flags, LOOM__CTX_RETURNED) & LOOM__CTX_DONE)
        ctx_free(ctx);
}

void loom__free_deferred(loom_runtime *rt)
{
    pthread_mutex_lock(&rt->ctx_mu);
    loom_ctx *ctx = rt->deferred;
    rt->deferred = NULL;
    pthread_mutex_unlock(&rt->ctx_mu);
    while (ctx) {
        loom_ctx *next = ctx->next_deferred;
        ctx_free(ctx);
        ctx = next;
    }
}

/* --- subscriptions ---------------------------------------------------------------- */

static bool str_match(const char *want, const char *have)
{
    return !want || (have && strcmp(want, have) == 0);
}

bool loom__filter_matches(const loom_filter *f, const loom_msg *m)
{
    unsigned types = f->message_types;
    if (types == 0) {
        /* events: custom messages and success responses with an event name */
        if (!(m->type == LOOM_MSG_CUSTOM || (m->type == LOOM_MSG_SUCCESS && m->event_name)))
            return false;
    } else if (!(types & m->type)) {
        return false;
    }
    return str_match(f->event_name, m->event_name) &&
           str_match(f->sender_service, m->sender.service) &&
           str_match(f->sender_version, m->sender.version) &&
           str_match(f->sender_command, m->sender.target) &&
           str_match(f->principal_id, m->principal_id) && str_match(f->tenant_id, m->tenant_id);
}

typedef struct retry_entry {
    loom__timer timer;
    loom_runtime *rt;
    loom__subscription *sub;
    loom_msg *msg;
    uint32_t attempt;
} retry_entry;

static void retry_job(void *a, void *b, uintptr_t c)
{
    (void)b;
    (void)c;
    retry_entry *r = a;
    loom__run_subscription(r->rt, r->sub, r->msg, r->attempt);
    free(r);
}

/* Schedules another attempt, which keeps the event's count; false when it
 * cannot (the event is then settled by the caller). */
static bool schedule_retry(loom_ctx *ctx, uint32_t attempt)
{
    /* 50 ms, 100, 200 ... capped at 5 s */
    uint32_t delay = 50u << (attempt < 7 ? attempt : 7);
    if (delay > 5000)
        delay = 5000;
    retry_entry *r = calloc(1, sizeof *r);
    if (!r) {
        ctx_log(ctx, LOOM_LOG_ERROR, "out of memory: event dropped instead of retried");
        return false;
    }
    r->rt = ctx->rt;
    r->sub = ctx->sub;
    r->msg = loom_msg_retain(ctx->msg);
    r->attempt = attempt + 1;
    r->timer.heap_index = SIZE_MAX;
    r->timer.job = (loom__job){retry_job, r, NULL, 0};
    loom__timer_add(&ctx->rt->pool, &r->timer, delay);
    return true;
}

static bool handle_event(loom_runtime *rt, loom__subscription *sub, loom_msg *msg,
                         uint32_t attempt);

/* Every event counted in events_pending is settled here once, unless it
 * waits for a retry (which comes back here). */
void loom__run_subscription(loom_runtime *rt, loom__subscription *sub, loom_msg *msg,
                            uint32_t attempt)
{
    if (!handle_event(rt, sub, msg, attempt))
        loom__event_done(rt);
}

/* True when a retry is scheduled. */
static bool handle_event(loom_runtime *rt, loom__subscription *sub, loom_msg *msg, uint32_t attempt)
{
    const loom_subscription_def *def = sub->def;
    if (atomic_load(&rt->drain_over) || !loom__filter_matches(&def->filter, msg)) {
        if (atomic_load(&rt->drain_over))
            loom_runtime_log(rt, LOOM_LOG_WARN, "%s.%s: runtime stopping, event %s not handled",
                         sub->svc->def->name, def->name, msg->event_name ? msg->event_name : "");
        loom_msg_release(msg);
        return false;
    }
    loom_ctx *ctx = ctx_new(rt, sub->svc, msg);
    if (!ctx) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "%s.%s: out of memory, event dropped",
                     sub->svc->def->name, def->name);
        loom_msg_release(msg);
        return false;
    }
    ctx->sub = sub;
    cJSON *details = NULL;
    if (sub->payload_schema &&
        !loom__schema_validate(sub->payload_schema, loom_msg_payload(msg), &details)) {
        char *text = details ? cJSON_PrintUnformatted(details) : NULL;
        ctx_log(ctx, LOOM_LOG_WARN, "event %s dropped: payload invalid: %s",
                msg->event_name ? msg->event_name : "", text ? text : "");
        free(text);
        cJSON_Delete(details);
        ctx_free(ctx);
        return false;
    }
    bool retrying = false;
    loom__callback_depth++;
    loom_ack ack = def->handler(ctx, sub->svc->user);
    loom__callback_depth--;
    switch (ack) {
    case LOOM_ACK:
        if (def->emit_event && ctx->sub_result) {
            cJSON *result = ctx->sub_result;
            ctx->sub_result = NULL;
            loom_err err = loom__emit(rt, ctx, def->emit_event, result);
            if (err != LOOM_OK) {
                cJSON_Delete(result);
                ctx_log(ctx, LOOM_LOG_WARN, "cannot emit %s: %s", def->emit_event,
                        loom_strerror(err));
            }
        }
        break;
    case LOOM_RETRY:
        if (attempt < sub->max_retries) {
            ctx_log(ctx, LOOM_LOG_INFO, "retry %u of %u requested", attempt + 1, sub->max_retries);
            retrying = schedule_retry(ctx, attempt);
        } else {
            ctx_log(ctx, LOOM_LOG_WARN, "event %s dropped after %u retries",
                    msg->event_name ? msg->event_name : "", sub->max_retries);
        }
        break;
    case LOOM_DROP:
        ctx_log(ctx, LOOM_LOG_INFO, "event %s dropped by the handler",
                msg->event_name ? msg->event_name : "");
        break;
    default:
        ctx_log(ctx, LOOM_LOG_ERROR, "handler returned an invalid loom_ack (%d): dropped",
                (int)ack);
        break;
    }
    ctx_free(ctx);
    return retrying;
}
