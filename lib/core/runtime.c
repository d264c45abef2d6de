/* The runtime: configuration, services, the broker adapter and its upcalls,
 * start / stop / destroy.
 *
 * Lifecycle: CREATED -> (start) STARTED -> (stop) STOPPING -> STOPPED.
 * Adapter upcalls may arrive from the adapter's threads at any time between
 * connect and the adapter's stop; they only enqueue work (or complete a
 * blocking caller, which runs no user code). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/adapters.h"
#include "codec/json.h"
#include "codec/topic.h"
#include "config/config.h"
#include "core/features.h"
#include "core/runtime.h"
#include "core/util.h"
#include "store/store.h"

const char *loom_version(void) { return LOOM_VERSION_STRING; }

/* --- adapter registry ------------------------------------------------------- */

#define MAX_ADAPTERS 16
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static const loom_adapter_ops *registry[MAX_ADAPTERS];
static size_t registry_n;

static void register_builtins_locked(void)
{
    if (registry_n)
        return;
    registry[registry_n++] = &loom__memory_adapter;
#if LOOM_WITH_MQTT
    registry[registry_n++] = &loom__mqtt_adapter;
    registry[registry_n++] = &loom__mqtts_adapter;
#endif
#if LOOM_WITH_NATS
    registry[registry_n++] = &loom__nats_adapter;
    registry[registry_n++] = &loom__nats_tls_adapter;
#endif
}

loom_err loom_adapter_register(const loom_adapter_ops *ops)
{
    if (!ops || !ops->scheme || !*ops->scheme || ops->abi_version == 0 ||
        ops->abi_version > LOOM_ADAPTER_ABI_VERSION || !ops->init || !ops->connect ||
        !ops->subscribe || !ops->unsubscribe || !ops->publish || !ops->close || !ops->stop ||
        !ops->fini)
        return LOOM_EINVAL;
    loom_err err = LOOM_OK;
    pthread_mutex_lock(&registry_mu);
    register_builtins_locked();
    for (size_t i = 0; i < registry_n; i++)
        if (strcmp(registry[i]->scheme, ops->scheme) == 0)
            err = LOOM_EEXIST;
    if (err == LOOM_OK && registry_n == MAX_ADAPTERS)
        err = LOOM_ENOMEM;
    if (err == LOOM_OK)
        registry[registry_n++] = ops;
    pthread_mutex_unlock(&registry_mu);
    return err;
}

/* The schemes the built-in adapters serve, for error messages. */
#define BUILTIN_BROKERS "memory:" IF_MQTT(", mqtt://, mqtts://") IF_NATS(", nats://, tls://")
#if LOOM_WITH_MQTT
#define IF_MQTT(s) s
#else
#define IF_MQTT(s)
#endif
#if LOOM_WITH_NATS
#define IF_NATS(s) s
#else
#define IF_NATS(s)
#endif

static const loom_adapter_ops *find_adapter(const char *url)
{
    const char *colon = strchr(url, ':');
    size_t len = colon ? (size_t)(colon - url) : strlen(url);
    const loom_adapter_ops *found = NULL;
    pthread_mutex_lock(&registry_mu);
    register_builtins_locked();
    for (size_t i = 0; i < registry_n && !found; i++)
        if (strlen(registry[i]->scheme) == len && strncmp(registry[i]->scheme, url, len) == 0)
            found = registry[i];
    pthread_mutex_unlock(&registry_mu);
    return found;
}

/* --- logging ------------------------------------------------------------------ */

static void rt_logv(loom_runtime *rt, loom_log_level level, const char *fmt, va_list ap)
{
    if (loom__log_enabled(&rt->log, level))
        loom__logv(&rt->log, level, NULL, NULL, NULL, fmt, ap);
}

void loom_runtime_log(loom_runtime *rt, loom_log_level level, const char *fmt, ...)
{
    if (!rt || !fmt)
        return;
    va_list ap;
    va_start(ap, fmt);
    rt_logv(rt, level, fmt, ap);
    va_end(ap);
}

/* --- topics and publishing ------------------------------------------------------ */

char *loom__event_topic(loom_runtime *rt, const char *event, const char *service,
                        const char *version)
{
    const char *segs[] = {event, service ? service : "", version ? version : ""};
    return loom__topic_build(rt->prefix, "evt", segs, 3);
}

/* Does topic have many readers (events, announcements)? */
static bool to_all(const loom_runtime *rt, const char *topic)
{
    size_t n = strlen(rt->prefix);
    return strncmp(topic, rt->prefix, n) == 0 &&
           (strncmp(topic + n, "/evt/", 5) == 0 || strncmp(topic + n, "/svc/", 5) == 0);
}

loom_err loom__publish(loom_runtime *rt, const char *topic, loom_msg *msg, int qos, bool retain,
                       const char *response_topic, const void *corr, size_t corr_len)
{
    loom_publish p = {
        .topic = topic,
        .msg = msg,
        .response_topic = response_topic,
        .correlation = corr,
        .correlation_len = corr_len,
        .qos = qos,
        .retain = retain,
    };
    char *data = NULL;
    if (msg && !(rt->ops->caps & LOOM_CAP_IN_PROCESS)) {
        loom_err err = loom_msg_encode(msg, &data, &p.len);
        if (err == LOOM_OK)
            err = loom__trust_sign(&rt->trust, msg, to_all(rt, topic), &data, &p.len);
        if (err != LOOM_OK) {
            free(data);
            return err;
        }
        if (p.len > rt->max_message) {
            free(data);
            return LOOM_ETOOBIG;
        }
        p.data = data;
    } else if (!msg) {
        p.data = "";
    }
    loom_err err = rt->ops->publish(rt->adapter, &p);
    free(data);
    return err;
}

loom_err loom__emit(loom_runtime *rt, const loom_ctx *ctx, const char *event, cJSON *payload)
{
    if (!rt || !event || !*event || strlen(event) > 256)
        return LOOM_EINVAL;
    if (!loom__accepting(rt, ctx != NULL))
        return LOOM_ECLOSED;
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    if (!m)
        return LOOM_ENOMEM;
    const char *svc = ctx ? ctx->svc->def->name : NULL;
    const char *ver = ctx ? ctx->svc->def->version : NULL;
    const char *target =
        ctx ? (ctx->cmd ? ctx->cmd->def->name : ctx->sub ? ctx->sub->def->name : NULL) : NULL;
    if (ctx) {
        const loom_msg *pm = ctx->msg;
        memcpy(m->trace_id, pm->trace_id, sizeof m->trace_id);
        if (loom__msg_set(m, &m->principal_id, pm->principal_id) ||
            loom__msg_set(m, &m->tenant_id, pm->tenant_id)) {
            loom_msg_release(m);
            return LOOM_ENOMEM;
        }
    }
    if (!m->trace_id[0])
        loom__random_id(m->trace_id);
    char *topic = loom__event_topic(rt, event, svc, ver);
    if (!topic || loom__msg_set(m, &m->event_name, event) ||
        loom__msg_set_address(m, &m->sender, svc, ver, target, rt->instance_id)) {
        free(topic);
        loom_msg_release(m);
        return LOOM_ENOMEM;
    }
    m->payload = payload;
    loom_err err = loom__publish(rt, topic, m, rt->qos_event, false, NULL, NULL, 0);
    free(topic);
    if (err == LOOM_EUNAVAILABLE && (rt->ops->caps & LOOM_CAP_KNOWS_RECEIVERS)) {
        /* Nobody listens: an event without subscribers is not an error. */
        cJSON_Delete(payload);
        m->payload = NULL;
        loom_msg_release(m);
        return LOOM_OK;
    }
    if (err != LOOM_OK) {
        m->payload = NULL; /* the caller keeps it */
        loom_msg_release(m);
    }
    return err;
}

loom_err loom_runtime_emit(loom_runtime *rt, const char *event_name, cJSON *payload)
{
    return loom__emit(rt, NULL, event_name, payload);
}

/* --- lookups ------------------------------------------------------------------- */

loom__command *loom__find_command(loom_runtime *rt, const char *service, const char *version,
                                  const char *command)
{
    for (size_t i = 0; i < rt->n_services; i++) {
        loom__service *s = &rt->services[i];
        if (strcmp(s->def->name, service) != 0 || strcmp(s->def->version, version) != 0)
            continue;
        for (size_t j = 0; j < s->n_cmds; j++)
            if (strcmp(s->cmds[j].def->name, command) == 0)
                return &s->cmds[j];
    }
    return NULL;
}

/* --- adapter upcalls ----------------------------------------------------------------- */

static void for_each_token(loom_runtime *rt, void (*fn)(loom_runtime *, loom__token *))
{
    fn(rt, &rt->reply_tok);
    fn(rt, &rt->discovery_tok);
    for (size_t i = 0; i < rt->n_services; i++) {
        loom__service *s = &rt->services[i];
        for (size_t j = 0; j < s->n_cmds; j++)
            fn(rt, &s->cmds[j].tok);
        for (size_t j = 0; j < s->n_subs; j++)
            fn(rt, &s->subs[j].tok);
    }
}

static void count_unsubscribed(loom_runtime *rt, loom__token *t)
{
    (void)rt;
    if (!atomic_load(&t->subscribed))
        rt->ready_missing++;
}

static bool all_subscribed(loom_runtime *rt)
{
    pthread_mutex_lock(&rt->ready_mu);
    rt->ready_missing = 0;
    for_each_token(rt, count_unsubscribed);
    bool all = rt->ready_missing == 0;
    pthread_mutex_unlock(&rt->ready_mu);
    return all;
}

static void subscribe_token(loom_runtime *rt, loom__token *t)
{
    atomic_store(&t->subscribed, false);
    loom_err err = rt->ops->subscribe(rt->adapter, t->filter, t->group, t, t->qos);
    if (err != LOOM_OK)
        loom_runtime_log(rt, LOOM_LOG_WARN, "subscribe %s%s%s: %s", t->group ? t->group : "",
                     t->group ? " " : "", t->filter, loom_strerror(err));
}

static void signal_ready(loom_runtime *rt)
{
    pthread_mutex_lock(&rt->ready_mu);
    pthread_cond_broadcast(&rt->ready_cv);
    pthread_mutex_unlock(&rt->ready_mu);
}

static void host_state_changed(void *core, loom_broker_state state, const char *detail)
{
    loom_runtime *rt = core;
    int old = atomic_exchange(&rt->broker_state, (int)state);
    if (state == LOOM_BROKER_CONNECTED) {
        loom_runtime_log(rt, LOOM_LOG_INFO, "broker connected%s%s", detail ? ": " : "",
                     detail ? detail : "");
        int64_t zero = 0;
        atomic_compare_exchange_strong(&rt->connected_mono, &zero, loom__mono_ms());
        if (atomic_load(&rt->state) == LOOM__STARTED)
            for_each_token(rt, subscribe_token);
    } else if (old == LOOM_BROKER_CONNECTED || state == LOOM_BROKER_FAILED) {
        loom_runtime_log(rt, state == LOOM_BROKER_FAILED ? LOOM_LOG_ERROR : LOOM_LOG_WARN,
                     "broker %s%s%s",
                     state == LOOM_BROKER_FAILED ? "failed" : "disconnected",
                     detail ? ": " : "", detail ? detail : "");
    }
    signal_ready(rt);
}

static void host_subscribed(void *core, void *token, loom_err err)
{
    loom_runtime *rt = core;
    loom__token *t = token;
    if (err == LOOM_EIO) {
        loom_runtime_log(rt, LOOM_LOG_INFO, "subscription %s not confirmed (connection lost); "
                                        "retried on reconnect", t->filter);
        return;
    }
    if (err != LOOM_OK) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "the broker refused subscription %s: %s", t->filter,
                     loom_strerror(err));
        return;
    }
    atomic_store(&t->subscribed, true);
    if (t == &rt->discovery_tok)
        loom__discovery_sync(rt);
    if (atomic_load(&rt->state) == LOOM__STARTED && all_subscribed(rt)) {
        loom_err aerr = loom__announce(rt);
        if (aerr != LOOM_OK)
            loom_runtime_log(rt, LOOM_LOG_WARN, "cannot announce services: %s",
                         loom_strerror(aerr));
        signal_ready(rt);
    }
}

static void host_log(void *core, loom_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rt_logv(core, level, fmt, ap);
    va_end(ap);
}

/* A network delivery copied for a worker. */
typedef struct raw_delivery {
    loom__token *tok;
    char *response_topic;
    void *correlation;
    size_t correlation_len;
    const char *topic; /* events only (after data), else NULL */
    size_t len;
    char data[]; /* len bytes + NUL, then the topic of an event */
} raw_delivery;

static void raw_free(raw_delivery *r)
{
    if (!r)
        return;
    free(r->response_topic);
    free(r->correlation);
    free(r);
}

static raw_delivery *raw_copy(const loom_delivery *d)
{
    loom__token *tok = d->token;
    size_t tlen = tok->kind == LOOM__TOK_SUBSCRIPTION && d->topic ? strlen(d->topic) + 1 : 0;
    raw_delivery *r = malloc(sizeof *r + d->len + 1 + tlen);
    if (!r)
        return NULL;
    r->tok = tok;
    r->len = d->len;
    if (d->len)
        memcpy(r->data, d->data, d->len);
    r->data[d->len] = '\0';
    r->topic = tlen ? memcpy(r->data + d->len + 1, d->topic, tlen) : NULL;
    r->response_topic = d->response_topic ? strdup(d->response_topic) : NULL;
    r->correlation = NULL;
    r->correlation_len = 0;
    if (d->correlation_len && (r->correlation = malloc(d->correlation_len))) {
        memcpy(r->correlation, d->correlation, d->correlation_len);
        r->correlation_len = d->correlation_len;
    }
    return r;
}

/* An event arrives on {prefix}/evt/{event}/{sender service}/{version}, the
 * topic its sender publishes it on: subscriptions filter on those levels,
 * so an event whose envelope names another sender (one signed by service
 * A re-published under B's levels, or a forgery) must not pass for it. */
static bool event_on_own_topic(loom_runtime *rt, const char *topic, const loom_msg *m)
{
    if (!topic || !m->event_name)
        return false;
    char *own = loom__event_topic(rt, m->event_name, m->sender.service, m->sender.version);
    bool ok = own && strcmp(own, topic) == 0;
    free(own);
    return ok;
}

/* Rate-limited warning about garbage on loom topics: one line per second. */
static void warn_garbage(loom_runtime *rt, const char *what, const char *why)
{
    int64_t now = loom__mono_ms(), prev = atomic_load(&rt->garbage_warned_mono);
    if (now - prev < 1000 || !atomic_compare_exchange_strong(&rt->garbage_warned_mono, &prev, now))
        return;
    loom_runtime_log(rt, LOOM_LOG_WARN, "dropped a malformed message on %s: %s", what, why);
}

void loom__warn_refused(loom_runtime *rt, const char *what, const char *why)
{
    int64_t now = loom__mono_ms(), prev = atomic_load(&rt->refused_warned_mono);
    if (now - prev < 1000 || !atomic_compare_exchange_strong(&rt->refused_warned_mono, &prev, now))
        return;
    loom_runtime_log(rt, LOOM_LOG_WARN, "refused a message on %s: %s (counted in /metrics)", what,
                     why);
}

/* Decodes and checks a delivery; false (logged, counted) when it is dropped.
 * *bare is set for bytes that are not an envelope at all. */
static bool wire_decode(loom_runtime *rt, const loom__token *tok, const char *what,
                        const void *data, size_t len, loom_msg **m, bool *bare)
{
    char why[160];
    /* Replays are refused per scope: one for every command (so a command
     * seen on one topic is not new on another), each subscription and the
     * reply topic their own (a success response is also its event). */
    uint64_t scope = tok->kind == LOOM__TOK_COMMAND ? 1 : (uint64_t)(uintptr_t)tok;
    /* The direction the signature must have been made for: what this kind
     * of topic carries. */
    loom__dir dir = tok->kind == LOOM__TOK_COMMAND ? LOOM__DIR_COMMAND
                    : tok->kind == LOOM__TOK_REPLY ? LOOM__DIR_REPLY
                                                   : LOOM__DIR_ALL;
    loom_err err = loom__trust_decode(&rt->trust, data, len, dir, scope, m, why, sizeof why);
    if (bare)
        *bare = err != LOOM_OK && err != LOOM_ESTATE;
    if (err == LOOM_ESTATE)
        loom__warn_refused(rt, what, why);
    else if (err != LOOM_OK && !bare)
        warn_garbage(rt, what, why);
    return err == LOOM_OK;
}

/* A bare call refused while signing is on: say so to the plain client. */
static void refuse_bare(loom_runtime *rt, raw_delivery *r)
{
    static const char body[] = "{\"status\":403,\"message\":\"unsigned calls are not "
                               "accepted (security.bare_calls)\"}";
    loom__trust_count(&rt->trust, LOOM__DROP_UNSIGNED);
    loom__warn_refused(rt, r->tok->filter, "a bare call while security.bare_calls is off");
    loom_msg *err = loom__msg_new(LOOM_MSG_ERROR);
    if (!err)
        return;
    loom_publish p = {.topic = r->response_topic,
                      .msg = err,
                      .data = body,
                      .len = sizeof body - 1,
                      .correlation = r->correlation,
                      .correlation_len = r->correlation_len,
                      .status = "403",
                      .qos = rt->qos_reply};
    if (rt->ops->publish(rt->adapter, &p) != LOOM_OK)
        loom_msg_release(err);
}

/* May a command be answered on topic? Not on loom's own topics other than
 * replies: a caller naming an event or announcement topic as its reply
 * topic would have the service publish there with the service's broker
 * rights (its announcement, its events). Topics outside the prefix (a
 * plain client's own) are the caller's business. */
static bool reply_topic_allowed(loom_runtime *rt, const char *topic)
{
    size_t n = strlen(rt->prefix);
    return strncmp(topic, rt->prefix, n) != 0 || topic[n] != '/' ||
           strncmp(topic + n, "/reply/", 7) == 0;
}

static bool refuse_reply_topic(loom_runtime *rt, const char *filter, const char *topic)
{
    if (reply_topic_allowed(rt, topic))
        return false;
    loom__trust_count(&rt->trust, LOOM__DROP_REPLY_TOPIC);
    loom__warn_refused(rt, filter, "a reply topic on loom's topics that is not a reply topic");
    return true;
}

/* A plain MQTT client's request: bare JSON payload, answered bare. */
static void run_bare_command(loom_runtime *rt, loom__command *cmd, raw_delivery *r)
{
    if (!r->response_topic) {
        warn_garbage(rt, cmd->tok.filter, "not an envelope and no response topic");
        return;
    }
    if (refuse_reply_topic(rt, cmd->tok.filter, r->response_topic))
        return;
    if (!rt->trust.bare_calls) {
        refuse_bare(rt, r);
        return;
    }
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    if (!m)
        return;
    m->verified = false; /* nobody vouches for a plain client */
    loom__random_id(m->trace_id);
    m->deadline = m->timestamp + (cmd->timeout_ms ? cmd->timeout_ms : rt->default_timeout_ms);
    loom__msg_set_address(m, &m->receiver, cmd->svc->def->name, cmd->svc->def->version,
                          cmd->def->name, NULL);
    /* The same checks as an envelope's (size: run_raw; UTF-8, NUL, depth,
     * trailing data, non-finite numbers: loom__json_parse), so a handler
     * sees the same kind of payload whichever way it came. Trailing NULs
     * are trimmed as loom_msg_decode does. */
    size_t len = r->len;
    while (len && r->data[len - 1] == '\0')
        len--;
    char why[128] = "";
    loom_err perr = LOOM_OK;
    if (len)
        perr = loom__json_parse(r->data, len, LOOM_MAX_NESTING - 2, &m->payload, why, sizeof why,
                                NULL);
    if (perr == LOOM_ENOMEM) {
        loom_msg_release(m);
        return;
    }
    if (perr) {
        cJSON *data = cJSON_CreateObject();
        if (data && !cJSON_AddStringToObject(data, "reason", why)) {
            cJSON_Delete(data);
            data = NULL;
        }
        loom_msg *err = loom__msg_error_for(m, 400, "the payload is not valid JSON", data, true);
        loom_msg_release(m);
        if (!err)
            return;
        cJSON *body = loom_msg_result_json(err);
        char *text = body ? loom__json_print(body, NULL) : NULL;
        loom_publish p = {.topic = r->response_topic, .msg = err, .data = text ? text : "",
                          .len = text ? strlen(text) : 0, .correlation = r->correlation,
                          .correlation_len = r->correlation_len, .status = "400",
                          .qos = rt->qos_reply};
        if (rt->ops->publish(rt->adapter, &p) != LOOM_OK)
            loom_msg_release(err);
        free(text);
        cJSON_Delete(body);
        return;
    }
    loom__route to = {LOOM__TO_BARE, r->response_topic, r->correlation, r->correlation_len,
                      NULL};
    loom__run_command(rt, cmd, m, &to);
}

/* A delivery to a subscription ends in loom__run_subscription, which
 * settles its events_pending count, or is settled here. */
static void run_raw(loom_runtime *rt, raw_delivery *r)
{
    loom__token *tok = r->tok;
    char why[160];
    loom_msg *m = NULL;
    if (r->len > rt->max_message) {
        snprintf(why, sizeof why, "%zu bytes is over the %zu-byte limit", r->len,
                 rt->max_message);
        warn_garbage(rt, tok->filter, why);
        if (tok->kind == LOOM__TOK_SUBSCRIPTION)
            loom__event_done(rt);
        return;
    }
    if (tok->kind == LOOM__TOK_COMMAND) {
        loom__command *cmd = (loom__command *)tok;
        bool bare = false;
        if (!wire_decode(rt, tok, tok->filter, r->data, r->len, &m, &bare)) {
            if (bare)
                run_bare_command(rt, cmd, r);
            return;
        }
        /* The whole address, not only the command: a signed command for
         * one service or version must not run as another's that happens
         * to share the name (the signature binds the receiver it names). */
        if (m->type != LOOM_MSG_COMMAND || !m->receiver.target || !m->receiver.service ||
            !m->receiver.version || strcmp(m->receiver.target, cmd->def->name) != 0 ||
            strcmp(m->receiver.service, cmd->svc->def->name) != 0 ||
            strcmp(m->receiver.version, cmd->svc->def->version) != 0) {
            warn_garbage(rt, tok->filter, "not a command for this topic");
            loom_msg_release(m);
            return;
        }
        const char *reply_to = m->reply_to ? m->reply_to : r->response_topic;
        if (reply_to && refuse_reply_topic(rt, tok->filter, reply_to)) {
            loom_msg_release(m);
            return;
        }
        char id[33];
        memcpy(id, m->id, 33);
        loom__route to = {reply_to ? LOOM__TO_TOPIC : LOOM__TO_NONE, reply_to, id, 32, NULL};
        loom__run_command(rt, cmd, m, &to);
        return;
    }
    if (!wire_decode(rt, tok, tok->filter, r->data, r->len, &m, NULL)) {
        if (tok->kind == LOOM__TOK_SUBSCRIPTION)
            loom__event_done(rt);
        return;
    }
    switch (tok->kind) {
    case LOOM__TOK_SUBSCRIPTION:
        if (!event_on_own_topic(rt, r->topic, m)) {
            loom__trust_count(&rt->trust, LOOM__DROP_SENDER);
            loom__warn_refused(rt, r->topic, "an event on another sender's topic");
            loom_msg_release(m);
            loom__event_done(rt);
            return;
        }
        loom__run_subscription(rt, (loom__subscription *)tok, m, 0);
        return;
    case LOOM__TOK_REPLY:
        if (m->type != LOOM_MSG_SUCCESS && m->type != LOOM_MSG_ERROR) {
            warn_garbage(rt, tok->filter, "not a response");
            loom_msg_release(m);
            return;
        }
        loom__complete_remote(rt, m);
        return;
    default:
        loom_msg_release(m);
        return;
    }
}

static void raw_job(void *a, void *b, uintptr_t c)
{
    (void)c;
    run_raw(a, b);
    raw_free(b);
}

static void msg_job(void *a, void *b, uintptr_t c)
{
    loom_runtime *rt = a;
    loom_msg *m = b;
    loom__token *tok = (loom__token *)c;
    switch (tok->kind) {
    case LOOM__TOK_COMMAND: {
        loom__command *cmd = (loom__command *)tok;
        if (m->type != LOOM_MSG_COMMAND) {
            loom_msg_release(m);
            return;
        }
        char id[33];
        memcpy(id, m->id, 33);
        loom__route to = {m->reply_to ? LOOM__TO_TOPIC : LOOM__TO_NONE, m->reply_to, id, 32,
                          NULL};
        loom__run_command(rt, cmd, m, &to);
        return;
    }
    case LOOM__TOK_SUBSCRIPTION:
        loom__run_subscription(rt, (loom__subscription *)tok, m, 0);
        return;
    case LOOM__TOK_REPLY:
        loom__complete_pending(rt, m);
        return;
    default:
        loom_msg_release(m);
        return;
    }
}

static loom_err host_deliver(void *core, const loom_delivery *d)
{
    loom_runtime *rt = core;
    loom__token *tok = d->token;
    if (!tok)
        return LOOM_EINVAL;
    if (tok->kind == LOOM__TOK_DISCOVERY) {
        /* Bookkeeping only, no user code: done here. */
        loom_msg *m = d->msg ? loom_msg_retain(d->msg) : NULL;
        bool empty = !d->msg && d->len == 0;
        if (!d->msg && !empty && d->len > rt->max_announcement) {
            loom__trust_count(&rt->trust, LOOM__DROP_ANNOUNCE);
            loom__warn_refused(rt, d->topic, "announcement over limits.announcement bytes");
        } else if (!d->msg && !empty &&
                   !wire_decode(rt, tok, d->topic, d->data, d->len, &m, NULL)) {
            m = NULL;
        } else {
            loom__discovery_received(rt, d->topic, m, empty);
            return LOOM_OK;
        }
        /* Dropped. When it sits on our own topic, someone replaced ours. */
        if (strcmp(d->topic, rt->announce_topic) == 0)
            loom__announce_restore(rt);
        return LOOM_OK;
    }
    if (tok->kind == LOOM__TOK_REPLY) {
        /* A blocking caller waits on a condition variable: wake it here so
         * that replies never need a free worker; a reply_inline callback
         * runs here too. */
        const char *id = d->msg ? d->msg->correlation_id : NULL;
        char idbuf[33];
        if (!id && d->correlation_len == 32) {
            memcpy(idbuf, d->correlation, 32);
            idbuf[32] = '\0';
            id = idbuf;
        }
        if (id && loom__is_id(id) && loom__pending_is_direct(rt, id)) {
            loom_msg *m = d->msg ? loom_msg_retain(d->msg) : NULL;
            if (!m && !wire_decode(rt, tok, d->topic, d->data, d->len, &m, NULL))
                return LOOM_OK;
            if ((m->type == LOOM_MSG_SUCCESS || m->type == LOOM_MSG_ERROR) && d->msg)
                loom__complete_pending(rt, m);
            else if (m->type == LOOM_MSG_SUCCESS || m->type == LOOM_MSG_ERROR)
                loom__complete_remote(rt, m);
            else
                loom_msg_release(m);
            return LOOM_OK;
        }
    }
    loom_err err;
    /* Counted before the job can run, so the count never goes below 0. */
    bool event = tok->kind == LOOM__TOK_SUBSCRIPTION;
    if (event)
        atomic_fetch_add(&rt->events_pending, 1);
    if (d->msg) {
        loom_msg *m = loom_msg_retain(d->msg);
        err = loom__pool_submit(&rt->pool, (loom__job){msg_job, rt, m, (uintptr_t)tok});
        if (err != LOOM_OK) {
            if (event)
                loom__event_done(rt);
            /* Overloaded: answer a command at once rather than drop it. */
            if (tok->kind == LOOM__TOK_COMMAND && m->reply_to && m->type == LOOM_MSG_COMMAND) {
                loom_msg *resp = loom__msg_error_for(m, 503, "overloaded", NULL, false);
                if (resp && loom__publish(rt, m->reply_to, resp, rt->qos_reply, false, NULL,
                                          m->id, 32) != LOOM_OK)
                    loom_msg_release(resp);
            } else if (tok->kind == LOOM__TOK_REPLY) {
                loom__pool_submit_always(&rt->pool,
                                         (loom__job){msg_job, rt, loom_msg_retain(m),
                                                     (uintptr_t)tok});
            }
            loom_msg_release(m);
        }
        return err == LOOM_EOVERLOAD ? LOOM_EOVERLOAD : LOOM_OK;
    }
    raw_delivery *r = raw_copy(d);
    if (!r) {
        if (event)
            loom__event_done(rt);
        return LOOM_ENOMEM;
    }
    loom__job job = {raw_job, rt, r, 0};
    err = tok->kind == LOOM__TOK_REPLY ? loom__pool_submit_always(&rt->pool, job)
                                       : loom__pool_submit(&rt->pool, job);
    if (err != LOOM_OK) {
        raw_free(r);
        if (event)
            loom__event_done(rt);
    }
    return err;
}

/* --- create / add / start / stop / destroy -------------------------------------------- */

static void token_init(loom__token *t, loom__token_kind kind, char *filter, char *group, int qos)
{
    t->kind = kind;
    t->filter = filter;
    t->group = group;
    t->qos = qos;
    atomic_init(&t->subscribed, false);
}

static void token_fini(loom__token *t)
{
    free(t->filter);
    free(t->group);
}

loom_err loom_runtime_create(loom_runtime **out, const loom_runtime_config *cfg)
{
    if (!out)
        return LOOM_EINVAL;
    *out = NULL;
    static const loom_runtime_config defaults = LOOM_RUNTIME_CONFIG_INIT();
    if (!cfg)
        cfg = &defaults;
    loom_err size_err = LOOM__STRUCT_CHECK(cfg, LOOM__V0_RUNTIME_CONFIG);
    if (size_err != LOOM_OK)
        return size_err;
    loom_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return LOOM_ENOMEM;
    loom_err err = LOOM_ENOMEM;
    rt->config = cfg->config ? loom__config_clone(cfg->config) : NULL;
    if (!rt->config && loom_config_create(&rt->config) != LOOM_OK)
        goto fail_early;
    const loom_config *c = rt->config;

    /* logging first, so the rest can report */
    rt->log.level = cfg->log_level;
    if (!rt->log.level && loom_log_level_parse(loom__config_str(c, "log.level", "info"),
                                               &rt->log.level) != LOOM_OK)
        rt->log.level = LOOM_LOG_INFO;
    rt->log.format = cfg->log_format;
    if (!rt->log.format)
        rt->log.format = strcmp(loom__config_str(c, "log.format", "text"), "json") == 0
                             ? LOOM_LOG_JSON
                             : LOOM_LOG_TEXT;
    rt->log.fn = cfg->log_fn;
    rt->log.user = cfg->log_user;

    const char *inst = cfg->instance_id ? cfg->instance_id : loom__config_str(c, "instance", NULL);
    if (inst) {
        if (!*inst || strlen(inst) >= sizeof rt->instance_id) {
            loom_runtime_log(rt, LOOM_LOG_ERROR, "instance id must be 1 to 64 characters");
            err = LOOM_ECONFIG;
            goto fail_early;
        }
        loom__strlcpy(rt->instance_id, inst, sizeof rt->instance_id);
    } else {
        loom__random_id(rt->instance_id);
    }
    loom__strlcpy(rt->log.instance, rt->instance_id, sizeof rt->log.instance);

    rt->workers = cfg->workers ? cfg->workers
                               : (unsigned)loom__config_int(c, "workers", loom__cpu_count());
    rt->invoke_inline = loom__config_bool(c, "invoke.inline", true);
    rt->default_timeout_ms =
        cfg->default_timeout_ms
            ? cfg->default_timeout_ms
            : (uint32_t)loom__config_int(c, "timeouts.default_ms", 30000);
    rt->drain_timeout_ms = cfg->drain_timeout_ms
                               ? cfg->drain_timeout_ms
                               : (uint32_t)loom__config_int(c, "timeouts.drain_ms", 5000);
    rt->max_message = (size_t)loom__config_int(c, "limits.max_message", 1 << 20);
    rt->qos_command = (int)loom__config_int(c, "broker.qos.command", 0);
    rt->qos_reply = (int)loom__config_int(c, "broker.qos.reply", 0);
    rt->qos_event = (int)loom__config_int(c, "broker.qos.event", 1);
    rt->qos_discovery = (int)loom__config_int(c, "broker.qos.discovery", 1);
    rt->max_announcement = (size_t)loom__config_int(c, "limits.announcement", 256 * 1024);
    rt->max_instance_commands = (size_t)loom__config_int(c, "limits.instance_commands", 1024);
    rt->max_routes = (size_t)loom__config_int(c, "limits.routes", 4096);
    if ((err = loom__trust_init(&rt->trust, c, rt)) != LOOM_OK)
        goto fail_early;

    rt->prefix = strdup(loom__config_str(c, "broker.prefix", "loom"));
    if (!rt->prefix)
        goto fail_early;
    if (!loom__topic_prefix_valid(rt->prefix)) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "broker.prefix '%s' is not a valid topic prefix",
                     rt->prefix);
        err = LOOM_ECONFIG;
        goto fail_early;
    }
    const char *url = cfg->broker_url ? cfg->broker_url : loom__config_str(c, "broker.url", "memory:");
    rt->ops = find_adapter(url);
    if (!rt->ops) {
        const char *without = loom__built_without(url);
        if (without)
            loom_runtime_log(rt, LOOM_LOG_ERROR, "broker '%s': %s", url, without);
        else
            loom_runtime_log(rt, LOOM_LOG_ERROR, "no broker adapter for '%s' (built in: %s)", url,
                             BUILTIN_BROKERS);
        err = LOOM_EUNSUPPORTED;
        goto fail_early;
    }
    rt->broker_url = strdup(url);
    /* Brokers that cannot keep an announcement (retained) or clear it when
     * an instance dies (will) get a heartbeat; in-process buses need no
     * will: their instances die with the process. */
    uint32_t caps = rt->ops->caps;
    bool needs_beat = !(caps & LOOM_CAP_RETAIN) ||
                      (!(caps & LOOM_CAP_WILL) && !(caps & LOOM_CAP_IN_PROCESS));
    rt->heartbeat_ms =
        needs_beat ? (uint32_t)loom__config_int(c, "broker.heartbeat_ms", 1000) : 0;
    const char *surl = cfg->state_url ? cfg->state_url : loom__config_str(c, "state.url", "memory:");
    err = loom__store_open(&rt->store, surl, loom_config_get(c, "state"));
    if (err != LOOM_OK) {
        const char *without = err == LOOM_EUNSUPPORTED ? loom__built_without(surl) : NULL;
        loom_runtime_log(rt, LOOM_LOG_ERROR, "cannot open the state store '%s': %s", surl,
                         without ? without : loom_strerror(err));
        goto fail_early;
    }
    const char *iseg[] = {rt->instance_id};
    char *reply = loom__topic_build(rt->prefix, "reply", iseg, 1);
    const char *dseg[] = {NULL};
    char *disc = loom__topic_build(rt->prefix, "svc", dseg, 1);
    rt->reply_topic = reply ? strdup(reply) : NULL;
    rt->announce_topic = loom__topic_build(rt->prefix, "svc", iseg, 1);
    char *sync_seg = loom__asprintf("%s#sync", rt->instance_id);
    const char *sseg[] = {sync_seg};
    rt->sync_topic = sync_seg ? loom__topic_build(rt->prefix, "svc", sseg, 1) : NULL;
    free(sync_seg);
    token_init(&rt->reply_tok, LOOM__TOK_REPLY, reply, NULL, rt->qos_reply);
    token_init(&rt->discovery_tok, LOOM__TOK_DISCOVERY, disc, NULL, rt->qos_discovery);
    if (!reply || !disc || !rt->reply_topic || !rt->broker_url || !rt->announce_topic ||
        !rt->sync_topic) {
        err = LOOM_ENOMEM;
        goto fail;
    }
    if ((err = loom__pending_init(rt)) != LOOM_OK)
        goto fail;
    pthread_mutex_init(&rt->ctx_mu, NULL);
    pthread_mutex_init(&rt->disc_mu, NULL);
    pthread_mutex_init(&rt->ready_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rt->ready_cv, &ca);
    pthread_mutex_init(&rt->events_mu, NULL);
    pthread_cond_init(&rt->events_cv, &ca);
    pthread_condattr_destroy(&ca);
    rt->host = (loom_adapter_host){.core = rt,
                                   .deliver = host_deliver,
                                   .state_changed = host_state_changed,
                                   .subscribed = host_subscribed,
                                   .log = host_log};
    rt->locks_ready = true;
    *out = rt;
    return LOOM_OK;
fail:
fail_early:
    loom_runtime_destroy(rt);
    return err;
}

static bool valid_segment(const char *s, size_t max)
{
    if (!s || !*s || strlen(s) > max)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return false;
    return true;
}

/* Compiles one optional schema of a definition of s; `what` names the
 * definition and `field` the schema in the error. */
static loom_err compile(loom_runtime *rt, loom__service *s, const char *what, const char *field,
                        const char *text, loom__schema **out)
{
    *out = NULL;
    if (!text)
        return LOOM_OK;
    char err[512];
    loom_err e = loom__schema_compile_in(out, s->schemas, text, err, sizeof err);
    if (e != LOOM_OK)
        loom_runtime_log(rt, LOOM_LOG_ERROR, "%s: %s: %s", what, field, err);
    return e;
}

static char *escaped_group(const char *a, const char *b, const char *c)
{
    char *raw = c ? loom__asprintf("%s.%s.%s", a, b, c) : loom__asprintf("%s.%s", a, b);
    char *esc = raw ? loom__topic_escape(raw) : NULL;
    free(raw);
    return esc;
}

static void service_fini(loom__service *s)
{
    for (size_t j = 0; j < s->n_cmds; j++) {
        token_fini(&s->cmds[j].tok);
        loom__schema_free(s->cmds[j].payload_schema);
        loom__schema_free(s->cmds[j].parameter_schema);
        loom__schema_free(s->cmds[j].output_schema);
    }
    for (size_t j = 0; j < s->n_subs; j++) {
        token_fini(&s->subs[j].tok);
        loom__schema_free(s->subs[j].payload_schema);
    }
    free(s->cmds);
    free(s->subs);
    loom__schema_set_free(s->schemas);
}

static bool valid_method(const char *m)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(methods); i++)
        if (strcmp(m, methods[i]) == 0)
            return true;
    return false;
}

static size_t list_len(const void *const *list)
{
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}

/* cd->errors: statuses 400..599, each once, with a description and a data
 * schema that compiles (it is documentation only: not kept). */
static loom_err check_errors(loom_runtime *rt, loom__service *s, const char *what,
                             const loom_command_def *cd)
{
    for (size_t i = 0; cd->errors && cd->errors[i].status; i++) {
        const loom_error_def *e = &cd->errors[i];
        bool dup = false;
        for (size_t k = 0; k < i && !dup; k++)
            dup = cd->errors[k].status == e->status;
        if (e->status < 400 || e->status > 599 || !e->description || !*e->description || dup) {
            loom_runtime_log(rt, LOOM_LOG_ERROR,
                             "%s: errors[%zu]: status %d needs 400..599, once, and a description",
                             what, i, e->status);
            return LOOM_EINVAL;
        }
        char field[48];
        snprintf(field, sizeof field, "errors[%zu].data_schema", i);
        loom__schema *tmp = NULL;
        loom_err err = compile(rt, s, what, field, e->data_schema, &tmp);
        loom__schema_free(tmp);
        if (err)
            return err;
    }
    return LOOM_OK;
}

/* Adds cd as the next command of s (s->cmds has room). */
static loom_err add_command(loom_runtime *rt, loom__service *s, const loom_command_def *cd)
{
    const loom_service_def *def = s->def;
    char what[300];
    snprintf(what, sizeof what, "service %s: command %s", def->name,
             cd->name ? cd->name : "(null)");
    if (!valid_segment(cd->name, 128) || !cd->handler) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "%s: needs a name ([A-Za-z0-9_.-]) and a handler", what);
        return LOOM_EINVAL;
    }
    if ((cd->http_method == NULL) != (cd->http_path == NULL) ||
        (cd->http_method && (!valid_method(cd->http_method) || cd->http_path[0] != '/'))) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                     "%s: http_method (GET|POST|PUT|PATCH|DELETE) and http_path "
                     "(starting with '/') go together",
                     what);
        return LOOM_EINVAL;
    }
    for (size_t k = 0; k < s->n_cmds; k++)
        if (strcmp(s->cmds[k].def->name, cd->name) == 0) {
            loom_runtime_log(rt, LOOM_LOG_ERROR, "%s: defined twice", what);
            return LOOM_EEXIST;
        }
    loom_err err = check_errors(rt, s, what, cd);
    if (err)
        return err;
    loom__command *c = &s->cmds[s->n_cmds++];
    c->svc = s;
    c->def = cd;
    c->timeout_ms = cd->timeout_ms;
    char limit_key[300];
    snprintf(limit_key, sizeof limit_key, "limits.concurrency.%s.%s", def->name, cd->name);
    c->max_running = (int)loom__config_int(rt->config, limit_key, 0);
    atomic_init(&c->running, 0);
    if ((err = compile(rt, s, what, "payload_schema", cd->payload_schema, &c->payload_schema)) ||
        (err = compile(rt, s, what, "parameter_schema", cd->parameter_schema,
                       &c->parameter_schema)) ||
        (err = compile(rt, s, what, "output_schema", cd->output_schema, &c->output_schema)))
        return err;
    const char *segs[] = {def->name, def->version, cd->name};
    char *filter = loom__topic_build(rt->prefix, "cmd", segs, 3);
    char *group = escaped_group(def->name, def->version, NULL);
    token_init(&c->tok, LOOM__TOK_COMMAND, filter, group, rt->qos_command);
    return filter && group ? LOOM_OK : LOOM_ENOMEM;
}

/* Adds sd as the next subscription of s (s->subs has room). */
static loom_err add_subscription(loom_runtime *rt, loom__service *s,
                                 const loom_subscription_def *sd)
{
    const loom_service_def *def = s->def;
    char what[300];
    snprintf(what, sizeof what, "service %s: subscription %s", def->name,
             sd->name ? sd->name : "(null)");
    if (!valid_segment(sd->name, 128) || !sd->handler ||
        (sd->delivery != LOOM_DELIVER_GROUP && sd->delivery != LOOM_DELIVER_ALL)) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "%s: needs a name, a handler and a valid delivery",
                     what);
        return LOOM_EINVAL;
    }
    loom__subscription *sub = &s->subs[s->n_subs++];
    sub->svc = s;
    sub->def = sd;
    sub->max_retries = sd->max_retries ? sd->max_retries : 3;
    loom_err err = compile(rt, s, what, "payload_schema", sd->payload_schema, &sub->payload_schema);
    if (err)
        return err;
    const char *segs[] = {sd->filter.event_name, sd->filter.sender_service,
                          sd->filter.sender_version};
    char *filter = loom__topic_build(rt->prefix, "evt", segs, 3);
    bool grouped = sd->delivery == LOOM_DELIVER_GROUP;
    char *group = grouped ? escaped_group(def->name, def->version, sd->name) : NULL;
    token_init(&sub->tok, LOOM__TOK_SUBSCRIPTION, filter, group, rt->qos_event);
    return filter && (group || !grouped) ? LOOM_OK : LOOM_ENOMEM;
}

/* The set of s->def's shared schemas (and format flag). Each is added,
 * then checked by compiling it alone in the set (so it may $ref the
 * others). */
static loom_err add_shared_schemas(loom_runtime *rt, loom__service *s)
{
    const loom_service_def *def = s->def;
    size_t n = list_len((const void *const *)def->schemas);
    if (!n && !def->assert_formats)
        return LOOM_OK;
    unsigned flags = def->assert_formats ? LOOM__SCHEMA_ASSERT_FORMATS : 0;
    if (loom__schema_set_create(&s->schemas, flags) != LOOM_OK)
        return LOOM_ENOMEM;
    char err[512];
    for (size_t pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            loom__schema *check = NULL;
            loom_err e =
                pass == 0
                    ? loom__schema_set_add(s->schemas, NULL, def->schemas[i], err, sizeof err)
                    : loom__schema_compile_in(&check, s->schemas, def->schemas[i], err, sizeof err);
            loom__schema_free(check);
            if (e != LOOM_OK) {
                loom_runtime_log(rt, LOOM_LOG_ERROR, "service %s: schemas[%zu]: %s", def->name, i,
                                 err);
                return e;
            }
        }
    }
    return LOOM_OK;
}

/* Registers the commands and subscriptions of s->def. */
static loom_err add_definitions(loom_runtime *rt, loom__service *s)
{
    loom_err shared = add_shared_schemas(rt, s);
    if (shared != LOOM_OK)
        return shared;
    size_t nc = list_len((const void *const *)s->def->commands);
    size_t ns = list_len((const void *const *)s->def->subscriptions);
    s->cmds = calloc(nc ? nc : 1, sizeof *s->cmds);
    s->subs = calloc(ns ? ns : 1, sizeof *s->subs);
    if (!s->cmds || !s->subs)
        return LOOM_ENOMEM;
    loom_err err = LOOM_OK;
    for (size_t j = 0; j < nc && !err; j++)
        err = add_command(rt, s, s->def->commands[j]);
    for (size_t j = 0; j < ns && !err; j++)
        err = add_subscription(rt, s, s->def->subscriptions[j]);
    return err;
}

loom_err loom_runtime_add_service(loom_runtime *rt, const loom_service_def *def, void *user)
{
    if (!rt || !def)
        return LOOM_EINVAL;
    if (atomic_load(&rt->state) != LOOM__CREATED)
        return LOOM_ESTATE;
    const char *what;
    loom_err size_err = loom__service_def_check(def, &what);
    if (size_err != LOOM_OK) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "service %s: %s: %s", def->name ? def->name : "?",
                         what,
                         size_err == LOOM_EINVAL
                             ? "bad size field (initialise with the LOOM_* macros)"
                             : "sets fields this loom does not know (built for a newer one)");
        return size_err;
    }
    if (!valid_segment(def->name, 128) || !valid_segment(def->version, 32)) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                     "a service needs a name and a version made of [A-Za-z0-9_.-]");
        return LOOM_EINVAL;
    }
    for (size_t i = 0; i < rt->n_services; i++)
        if (strcmp(rt->services[i].def->name, def->name) == 0 &&
            strcmp(rt->services[i].def->version, def->version) == 0)
            return LOOM_EEXIST;
    loom__service *grown = realloc(rt->services, (rt->n_services + 1) * sizeof *grown);
    if (!grown)
        return LOOM_ENOMEM;
    rt->services = grown;
    loom__service *s = &rt->services[rt->n_services];
    memset(s, 0, sizeof *s);
    s->def = def;
    s->user = user;
    char key[200];
    snprintf(key, sizeof key, "config.%s", def->name);
    s->config = loom_config_get(rt->config, key);
    loom_err err = add_definitions(rt, s);
    if (err != LOOM_OK) {
        service_fini(s);
        return err;
    }
    /* Tokens point into the arrays: fix the back-pointers of earlier
     * services, which realloc may have moved. */
    rt->n_services++;
    for (size_t i = 0; i < rt->n_services; i++) {
        loom__service *sv = &rt->services[i];
        for (size_t j = 0; j < sv->n_cmds; j++)
            sv->cmds[j].svc = sv;
        for (size_t j = 0; j < sv->n_subs; j++)
            sv->subs[j].svc = sv;
    }
    return LOOM_OK;
}

loom_err loom_runtime_start(loom_runtime *rt)
{
    if (!rt)
        return LOOM_EINVAL;
    int expected = LOOM__CREATED;
    if (atomic_load(&rt->state) != LOOM__CREATED)
        return LOOM_ESTATE;
    size_t queue = (size_t)loom__config_int(rt->config, "limits.queue", 65536);
    loom_err err = loom__pool_start(&rt->pool, rt->workers, queue);
    if (err != LOOM_OK)
        return err;
    loom_adapter_options opts = {
        .url = rt->broker_url,
        .instance_id = rt->instance_id,
        .options = loom_config_get(rt->config, "broker"),
        .will_topic = rt->n_services ? rt->announce_topic : NULL,
        .max_message = rt->max_message,
    };
    err = rt->ops->init(&rt->adapter, &rt->host, &opts);
    if (err != LOOM_OK) {
        rt->adapter = NULL;
        loom__pool_stop(&rt->pool);
        loom_runtime_log(rt, LOOM_LOG_ERROR, "broker adapter '%s' refused %s: %s", rt->ops->scheme,
                     rt->broker_url, loom_strerror(err));
        return err;
    }
    atomic_compare_exchange_strong(&rt->state, &expected, LOOM__STARTED);
    loom__heartbeat_start(rt);
    err = rt->ops->connect(rt->adapter);
    if (err != LOOM_OK) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "cannot connect to %s: %s", rt->broker_url,
                     loom_strerror(err));
        loom_runtime_stop(rt);
        return err;
    }
    for (size_t i = 0; i < rt->n_services; i++)
        loom_runtime_log(rt, LOOM_LOG_INFO, "service %s v%s: %zu command(s), %zu subscription(s)",
                     rt->services[i].def->name, rt->services[i].def->version,
                     rt->services[i].n_cmds, rt->services[i].n_subs);
    return LOOM_OK;
}

bool loom__subscriptions_ready(loom_runtime *rt)
{
    return atomic_load(&rt->broker_state) == LOOM_BROKER_CONNECTED && all_subscribed(rt);
}

static bool is_ready(loom_runtime *rt)
{
    return loom__subscriptions_ready(rt) && loom__discovery_synced(rt);
}

loom_err loom_runtime_wait_ready(loom_runtime *rt, uint32_t timeout_ms)
{
    if (!rt)
        return LOOM_EINVAL;
    if (atomic_load(&rt->state) != LOOM__STARTED)
        return LOOM_ESTATE;
    int64_t deadline = loom__mono_ms() + timeout_ms;
    while (!is_ready(rt)) {
        int64_t left = deadline - loom__mono_ms();
        if (left <= 0)
            return LOOM_ETIMEDOUT;
        struct timespec ts = loom__mono_after(left > 50 ? 50 : left);
        pthread_mutex_lock(&rt->ready_mu);
        pthread_cond_timedwait(&rt->ready_cv, &rt->ready_mu, &ts);
        pthread_mutex_unlock(&rt->ready_mu);
    }
    return LOOM_OK;
}

void loom__event_done(loom_runtime *rt)
{
    if (atomic_fetch_sub(&rt->events_pending, 1) != 1)
        return;
    pthread_mutex_lock(&rt->events_mu);
    pthread_cond_broadcast(&rt->events_cv);
    pthread_mutex_unlock(&rt->events_mu);
}

loom_err loom_runtime_wait_events(loom_runtime *rt, uint32_t timeout_ms)
{
    if (!rt)
        return LOOM_EINVAL;
    if (loom__pool_is_worker(&rt->pool))
        return LOOM_ESTATE; /* a handler would wait for itself */
    struct timespec ts = loom__mono_after(timeout_ms);
    loom_err err = LOOM_OK;
    pthread_mutex_lock(&rt->events_mu);
    while (atomic_load(&rt->events_pending) > 0 && err == LOOM_OK)
        if (pthread_cond_timedwait(&rt->events_cv, &rt->events_mu, &ts) == ETIMEDOUT)
            err = atomic_load(&rt->events_pending) > 0 ? LOOM_ETIMEDOUT : LOOM_OK;
    pthread_mutex_unlock(&rt->events_mu);
    return err;
}

bool loom__accepting(loom_runtime *rt, bool from_handler)
{
    int state = atomic_load(&rt->state);
    return state == LOOM__STARTED ||
           (from_handler && state == LOOM__STOPPING && !atomic_load(&rt->drain_over));
}

bool loom__runtime_ready(loom_runtime *rt)
{
    /* Not ready while the broker has lost our announcement: nobody can
     * route to our commands until it is back. */
    return atomic_load(&rt->state) == LOOM__STARTED && is_ready(rt) &&
           !atomic_load(&rt->announce_lost);
}

static void unsubscribe_commands(loom_runtime *rt)
{
    for (size_t i = 0; i < rt->n_services; i++)
        for (size_t j = 0; j < rt->services[i].n_cmds; j++) {
            loom__token *t = &rt->services[i].cmds[j].tok;
            rt->ops->unsubscribe(rt->adapter, t->filter, t->group, t);
        }
}

loom_err loom_runtime_stop(loom_runtime *rt)
{
    if (!rt)
        return LOOM_EINVAL;
    int expected = LOOM__CREATED;
    if (atomic_compare_exchange_strong(&rt->state, &expected, LOOM__STOPPED))
        return LOOM_OK;
    expected = LOOM__STARTED;
    if (!atomic_compare_exchange_strong(&rt->state, &expected, LOOM__STOPPING))
        return LOOM_OK; /* already stopping or stopped */
    if (loom__pool_is_worker(&rt->pool)) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "loom_runtime_stop called from a handler: refused");
        atomic_store(&rt->state, LOOM__STARTED);
        return LOOM_ESTATE;
    }
    loom_runtime_log(rt, LOOM_LOG_INFO, "stopping: draining in-flight work (up to %u ms)",
                 rt->drain_timeout_ms);
    /* Stop taking new work from the broker, tell the others we are gone. */
    loom__unannounce(rt);
    unsubscribe_commands(rt);
    int64_t deadline = loom__mono_ms() + rt->drain_timeout_ms;
    while (atomic_load(&rt->inflight) > 0 && loom__mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
    }
    /* Queued work (commands delivered before we unsubscribed, events for
     * our subscriptions, their retries) runs during the drain too. */
    while (loom__mono_ms() < deadline &&
           (!loom__pool_wait_idle(&rt->pool, deadline) || atomic_load(&rt->inflight) > 0)) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&rt->drain_over, true);
    long left = atomic_load(&rt->inflight);
    if (left > 0)
        loom_runtime_log(rt, LOOM_LOG_WARN, "%ld command(s) still running after the drain limit",
                     left);
    loom__fail_all_pending(rt, 503, "the runtime stopped before the response");
    rt->ops->close(rt->adapter);
    rt->ops->stop(rt->adapter);
    loom__pool_stop(&rt->pool);
    /* Answers that came in while the pool drained. */
    loom__fail_all_pending(rt, 503, "the runtime stopped before the response");
    atomic_store(&rt->state, LOOM__STOPPED);
    loom_runtime_log(rt, LOOM_LOG_INFO, "stopped");
    return LOOM_OK;
}

void loom_runtime_destroy(loom_runtime *rt)
{
    if (!rt)
        return;
    loom_runtime_stop(rt);
    if (rt->adapter)
        rt->ops->fini(rt->adapter);
    for (size_t i = 0; i < rt->n_services; i++)
        service_fini(&rt->services[i]);
    free(rt->services);
    token_fini(&rt->reply_tok);
    token_fini(&rt->discovery_tok);
    if (rt->locks_ready) {
        loom__free_deferred(rt);
        loom__discovery_fini(rt);
        loom__pending_fini(rt);
        pthread_mutex_destroy(&rt->ctx_mu);
        pthread_mutex_destroy(&rt->disc_mu);
        pthread_mutex_destroy(&rt->ready_mu);
        pthread_cond_destroy(&rt->ready_cv);
        pthread_mutex_destroy(&rt->events_mu);
        pthread_cond_destroy(&rt->events_cv);
    }
    loom__store_close(rt->store);
    loom__trust_fini(&rt->trust);
    loom_config_destroy(rt->config);
    free(rt->prefix);
    free(rt->broker_url);
    free(rt->reply_topic);
    free(rt->announce_topic);
    free(rt->sync_topic);
    free(rt);
}

const char *loom_runtime_instance_id(const loom_runtime *rt) { return rt ? rt->instance_id : NULL; }
loom_store *loom_runtime_store(loom_runtime *rt) { return rt ? rt->store : NULL; }
