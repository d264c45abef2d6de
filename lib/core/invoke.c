/* Invoking commands: building the request, the pending-call table (keyed by
 * request id, each entry with a timer that answers 504), local and remote
 * routing, and the blocking variant.
 *
 * Locking: rt->pend_mu protects the table and each entry's `done` flag. It
 * may be held while taking the pool's lock (timer cancel), never the other
 * way round. Callbacks run with no lock held. Whoever removes an entry from
 * the table answers it; if its timer already fired, the timer's job frees
 * it (seeing `done`). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/topic.h"
#include "core/runtime.h"
#include "core/util.h"

/* --- pending table -------------------------------------------------------- */

static size_t id_hash(const char *id)
{
    /* ids are random hex: their first 16 characters are a good hash. */
    size_t h = 0;
    for (int i = 0; i < 16 && id[i]; i++)
        h = h * 31 + (unsigned char)id[i];
    return h;
}

loom_err loom__pending_init(loom_runtime *rt)
{
    pthread_mutex_init(&rt->pend_mu, NULL);
    rt->pend_nbuckets = 256;
    rt->pend_buckets = calloc(rt->pend_nbuckets, sizeof *rt->pend_buckets);
    return rt->pend_buckets ? LOOM_OK : LOOM_ENOMEM;
}

void loom__pending_fini(loom_runtime *rt)
{
    free(rt->pend_buckets);
    rt->pend_buckets = NULL;
    pthread_mutex_destroy(&rt->pend_mu);
}

static void pend_grow_locked(loom_runtime *rt)
{
    size_t n = rt->pend_nbuckets * 2;
    loom__pending **b = calloc(n, sizeof *b);
    if (!b)
        return; /* keep the longer chains */
    for (size_t i = 0; i < rt->pend_nbuckets; i++) {
        loom__pending *p = rt->pend_buckets[i];
        while (p) {
            loom__pending *next = p->next;
            size_t k = id_hash(p->id) & (n - 1);
            p->next = b[k];
            b[k] = p;
            p = next;
        }
    }
    free(rt->pend_buckets);
    rt->pend_buckets = b;
    rt->pend_nbuckets = n;
}

static loom__pending *pend_take_locked(loom_runtime *rt, const char *id)
{
    loom__pending **pp = &rt->pend_buckets[id_hash(id) & (rt->pend_nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->id, id, 33) == 0) {
            loom__pending *p = *pp;
            *pp = p->next;
            rt->pend_count--;
            return p;
        }
    }
    return NULL;
}

static void answer(loom_runtime *rt, loom_reply_fn cb, void *user, loom_msg *resp)
{
    loom__callback_depth++;
    cb(rt, resp, user);
    loom__callback_depth--;
    loom_msg_release(resp);
}

/* Removes the entry for id and returns it with its timer stopped, or NULL.
 * When its timer job is already queued, the entry is left for that job to
 * free and a copy of the callback is returned in *copy. */
static bool pend_take(loom_runtime *rt, const char *id, loom_reply_fn *cb, void **user,
                      const char *from)
{
    pthread_mutex_lock(&rt->pend_mu);
    loom__pending *p = NULL;
    for (p = rt->pend_buckets[id_hash(id) & (rt->pend_nbuckets - 1)]; p; p = p->next)
        if (memcmp(p->id, id, 33) == 0)
            break;
    /* A remote answer must come from the service that was called; anyone
     * else's answer with the right correlation id is not taken, and a call
     * made in this process ("" service) is answered from here only. */
    if (p && from && (!p->service[0] || strcmp(from, p->service) != 0)) {
        pthread_mutex_unlock(&rt->pend_mu);
        loom__trust_count(&rt->trust, LOOM__DROP_REPLY);
        loom__warn_refused(rt, rt->reply_topic, "a reply from a service that was not called");
        return false;
    }
    p = p ? pend_take_locked(rt, id) : NULL;
    if (!p) {
        pthread_mutex_unlock(&rt->pend_mu);
        return false;
    }
    *cb = p->cb;
    *user = p->user;
    bool cancelled = loom__timer_cancel(&rt->pool, &p->timer);
    if (!cancelled)
        p->done = true; /* the timer job frees it */
    pthread_mutex_unlock(&rt->pend_mu);
    if (cancelled)
        free(p);
    return true;
}

static void expire_job(void *a, void *b, uintptr_t c)
{
    (void)c;
    loom_runtime *rt = a;
    loom__pending *p = b;
    pthread_mutex_lock(&rt->pend_mu);
    if (p->done) {
        pthread_mutex_unlock(&rt->pend_mu);
        free(p);
        return;
    }
    loom__pending *q = pend_take_locked(rt, p->id);
    pthread_mutex_unlock(&rt->pend_mu);
    (void)q; /* == p */
    int stopping = atomic_load(&rt->state) >= LOOM__STOPPING;
    loom_msg *resp =
        stopping ? loom__msg_error_for(NULL, 503, "the runtime stopped before the response", NULL,
                                       false)
                 : loom__msg_error_for(NULL, 504, "timed out waiting for the response", NULL,
                                       false);
    if (resp) {
        loom__strlcpy(resp->correlation_id, p->id, sizeof resp->correlation_id);
        if (!stopping) {
            cJSON *data = cJSON_CreateObject();
            if (data && cJSON_AddNumberToObject(data, "timeoutMs", p->timeout_ms))
                resp->error_data = data;
            else
                cJSON_Delete(data);
        }
        answer(rt, p->cb, p->user, resp);
    }
    free(p);
}

static loom__pending *pend_add(loom_runtime *rt, const char *id, loom_reply_fn cb, void *user,
                               uint32_t timeout_ms, bool direct, const char *service)
{
    size_t sl = service ? strlen(service) : 0;
    loom__pending *p = calloc(1, sizeof *p + sl + 1);
    if (!p)
        return NULL;
    if (sl)
        memcpy(p->service, service, sl);
    memcpy(p->id, id, 33);
    p->cb = cb;
    p->user = user;
    p->rt = rt;
    p->direct = direct;
    p->timeout_ms = timeout_ms;
    p->timer.heap_index = SIZE_MAX;
    p->timer.job = (loom__job){expire_job, rt, p, 0};
    /* The 504 comes at the deadline even when every worker is busy. */
    p->timer.on_timer_thread = true;
    pthread_mutex_lock(&rt->pend_mu);
    if (rt->pend_count >= rt->pend_nbuckets * 2)
        pend_grow_locked(rt);
    loom__pending **head = &rt->pend_buckets[id_hash(id) & (rt->pend_nbuckets - 1)];
    p->next = *head;
    *head = p;
    rt->pend_count++;
    /* Scheduled under pend_mu so a fast reply cannot cancel it first. */
    loom__timer_add(&rt->pool, &p->timer, timeout_ms);
    pthread_mutex_unlock(&rt->pend_mu);
    return p;
}

bool loom__complete_pending(loom_runtime *rt, loom_msg *response)
{
    loom_reply_fn cb;
    void *user;
    if (!response->correlation_id[0] ||
        !pend_take(rt, response->correlation_id, &cb, &user, NULL)) {
        loom_msg_release(response);
        return false;
    }
    answer(rt, cb, user, response);
    return true;
}

bool loom__complete_remote(loom_runtime *rt, loom_msg *response)
{
    loom_reply_fn cb;
    void *user;
    const char *from = response->sender.service ? response->sender.service : "";
    if (!response->correlation_id[0] ||
        !pend_take(rt, response->correlation_id, &cb, &user, from)) {
        loom_msg_release(response);
        return false;
    }
    answer(rt, cb, user, response);
    return true;
}

bool loom__pending_is_direct(loom_runtime *rt, const char *id)
{
    bool direct = false;
    pthread_mutex_lock(&rt->pend_mu);
    for (loom__pending *p = rt->pend_buckets[id_hash(id) & (rt->pend_nbuckets - 1)]; p;
         p = p->next)
        if (memcmp(p->id, id, 33) == 0) {
            direct = p->direct;
            break;
        }
    pthread_mutex_unlock(&rt->pend_mu);
    return direct;
}

void loom__fail_all_pending(loom_runtime *rt, int status, const char *message)
{
    for (;;) {
        char id[33] = "";
        pthread_mutex_lock(&rt->pend_mu);
        for (size_t i = 0; i < rt->pend_nbuckets && !id[0]; i++)
            if (rt->pend_buckets[i])
                memcpy(id, rt->pend_buckets[i]->id, 33);
        pthread_mutex_unlock(&rt->pend_mu);
        if (!id[0])
            return;
        loom_reply_fn cb;
        void *user;
        if (!pend_take(rt, id, &cb, &user, NULL))
            continue;
        loom_msg *resp = loom__msg_error_for(NULL, status, message, NULL, false);
        if (resp) {
            memcpy(resp->correlation_id, id, 33);
            answer(rt, cb, user, resp);
        }
    }
}

/* --- building and routing a request -------------------------------------- */

static loom_msg *fail_response(const loom_msg *req, int status, const char *fmt, ...)
    LOOM_PRINTF(3, 4);

static loom_msg *fail_response(const loom_msg *req, int status, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return loom__msg_error_for(req, status, text, NULL, false);
}

static bool valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 256)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20)
            return false;
    return true;
}

/* The command message for call, without payload and parameter yet. */
static loom_msg *build_request(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                               const char *version, uint32_t timeout_ms)
{
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    if (!m)
        return NULL;
    const loom_msg *pm = parent ? parent->msg : NULL;
    const char *trace = pm ? loom_msg_trace_id(pm) : NULL;
    if (call->trace_id) /* checked by prepare */
        memcpy(m->trace_id, call->trace_id, 33);
    else if (trace && loom__is_id(trace))
        memcpy(m->trace_id, trace, 33);
    else
        loom__random_id(m->trace_id);
    const char *principal = call->principal_id ? call->principal_id
                                               : (pm ? pm->principal_id : NULL);
    const char *tenant = call->tenant_id ? call->tenant_id : (pm ? pm->tenant_id : NULL);
    int64_t deadline = call->deadline_ms ? call->deadline_ms : m->timestamp + timeout_ms;
    if (pm && pm->deadline && pm->deadline < deadline)
        deadline = pm->deadline;
    m->deadline = deadline;
    const char *target = parent ? (parent->cmd ? parent->cmd->def->name
                                               : parent->sub ? parent->sub->def->name : NULL)
                                : NULL;
    if (loom__msg_set(m, &m->principal_id, principal) || loom__msg_set(m, &m->tenant_id, tenant) ||
        loom__msg_set(m, &m->reply_to, rt->reply_topic) ||
        loom__msg_set_address(m, &m->sender, parent ? parent->svc->def->name : NULL,
                              parent ? parent->svc->def->version : NULL, target,
                              rt->instance_id) ||
        loom__msg_set_address(m, &m->receiver, call->service, version, call->command, NULL)) {
        loom_msg_release(m);
        return NULL;
    }
    return m;
}

typedef struct local_job {
    loom_runtime *rt;
    loom_msg *msg;
} local_job;

static void run_local(void *a, void *b, uintptr_t c)
{
    (void)c;
    local_job *j = a;
    loom__route to = {.kind = LOOM__TO_PENDING};
    loom__run_command(j->rt, b, j->msg, &to);
    free(j);
}

/* The timeout of a call: the caller's, else the command's own (local, or
 * as its instances announced it), else the runtime's default. */
static uint32_t call_timeout(loom_runtime *rt, const loom_call *call, const loom__command *local,
                             const char *version)
{
    if (call->timeout_ms)
        return call->timeout_ms;
    if (local && local->timeout_ms)
        return local->timeout_ms;
    uint32_t announced =
        local ? 0 : loom__remote_timeout(rt, call->service, version, call->command);
    return announced ? announced : rt->default_timeout_ms;
}

/* A request ready to go: either msg (with local set when this runtime
 * serves it) or, when it cannot even be sent, an immediate response. */
typedef struct prepared {
    loom_msg *msg;
    loom__command *local;
    const char *version;
    loom_msg *early;
} prepared;

/* A service known here (local, or announced) without this command: 404
 * with the list of its commands, rather than waiting for a receiver that
 * cannot exist. Sets p->early and releases m when so. */
static bool unknown_command(loom_runtime *rt, const loom_call *call, prepared *p, loom_msg *m)
{
    if (loom__remote_has_command(rt, call->service, p->version, call->command))
        return false;
    cJSON *names = loom__service_commands(rt, call->service, p->version);
    if (!names)
        return false;
    char list[256] = "";
    size_t len = 0;
    const cJSON *n;
    cJSON_ArrayForEach(n, names)
    {
        int w = snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", n->valuestring);
        if (w < 0 || (size_t)w >= sizeof list - len)
            break;
        len += (size_t)w;
    }
    char text[512];
    snprintf(text, sizeof text, "service %s (version %s) has no command '%s'; its commands: %s",
             call->service, p->version, call->command, len ? list : "none");
    cJSON *data = cJSON_CreateObject();
    if (!data || !cJSON_AddItemToObject(data, "commands", names))
        cJSON_Delete(names); /* not data's when adding it failed */
    p->early = loom__msg_error_for(m, 404, text, data, true);
    if (!p->early)
        cJSON_Delete(data);
    loom_msg_release(m);
    return true;
}

static loom_err prepare(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                        prepared *p)
{
    memset(p, 0, sizeof *p);
    if (call) {
        loom_err size_err = LOOM__STRUCT_CHECK(call, LOOM__V0_CALL);
        if (size_err != LOOM_OK)
            return size_err;
    }
    if (!rt || !call || !valid_name(call->service) || !valid_name(call->command) ||
        (call->version && !valid_name(call->version)) ||
        (call->parameter && !cJSON_IsObject(call->parameter)) ||
        (call->trace_id && !loom__is_id(call->trace_id)))
        return LOOM_EINVAL;
    if (!loom__accepting(rt, parent != NULL))
        return LOOM_ECLOSED;
    p->version = call->version ? call->version : "1";
    p->local = loom__find_command(rt, call->service, p->version, call->command);
    uint32_t timeout = call_timeout(rt, call, p->local, p->version);
    loom_msg *m = build_request(rt, parent, call, p->version, timeout);
    if (!m)
        return LOOM_ENOMEM;
    /* From here on the call cannot fail: take the payload and parameter. */
    m->payload = call->payload;
    m->parameter = call->parameter;
    if (m->deadline <= loom__now_ms()) {
        p->early = fail_response(m, 504, "the deadline passed before the call was made");
        loom_msg_release(m);
        return p->early ? LOOM_OK : LOOM_ENOMEM;
    }
    if (!p->local && unknown_command(rt, call, p, m))
        return p->early ? LOOM_OK : LOOM_ENOMEM;
    /* Nobody announced it: 503 at once, once the announcements that existed
     * when we connected have arrived (before that, send it and let the
     * deadline decide). */
    if (!p->local && !(rt->ops->caps & LOOM_CAP_KNOWS_RECEIVERS) &&
        !loom__remote_has_command(rt, call->service, p->version, call->command) &&
        loom__discovery_synced(rt)) {
        p->early = fail_response(m, 503, "no receiver for %s.%s (version %s)", call->service,
                                 call->command, p->version);
        loom_msg_release(m);
        return p->early ? LOOM_OK : LOOM_ENOMEM;
    }
    p->msg = m;
    return LOOM_OK;
}

static uint32_t remaining_ms(const loom_msg *m)
{
    int64_t left = m->deadline - loom__now_ms();
    return left > 0 ? (uint32_t)left : 1;
}

/* Answers a pending call that could not be sent (resp consumed). */
static void fail_pending(loom_runtime *rt, const char *id, loom_msg *resp)
{
    loom_reply_fn cb;
    void *user;
    if (resp && pend_take(rt, id, &cb, &user, NULL))
        answer(rt, cb, user, resp);
    else
        loom_msg_release(resp);
}

/* Queues a local command for the worker pool; its answer completes the
 * pending entry. */
static void send_local(loom_runtime *rt, const prepared *p, loom_reply_fn cb, void *user)
{
    loom_msg *m = p->msg;
    char id[33];
    memcpy(id, m->id, 33);
    if (!pend_add(rt, id, cb, user, remaining_ms(m), false, NULL)) {
        loom_msg *r = fail_response(m, 503, "out of memory");
        loom_msg_release(m);
        if (r)
            answer(rt, cb, user, r);
        return;
    }
    local_job *j = malloc(sizeof *j);
    loom_err err = LOOM_ENOMEM;
    if (j) {
        *j = (local_job){rt, m};
        err = loom__pool_submit(&rt->pool, (loom__job){run_local, j, p->local, 0});
    }
    if (err == LOOM_OK)
        return;
    free(j);
    loom_msg *r = fail_response(m, 503, "%s: %s.%s refused",
                                err == LOOM_EOVERLOAD ? "overloaded" : "unavailable",
                                m->receiver.service, m->receiver.target);
    loom_msg_release(m);
    fail_pending(rt, id, r);
}

/* Publishes a command for a remote instance; its answer arrives on our
 * reply topic and completes the pending entry. */
static void send_remote(loom_runtime *rt, const prepared *p, loom_reply_fn cb, void *user,
                        bool direct)
{
    loom_msg *m = p->msg;
    char id[33];
    memcpy(id, m->id, 33);
    if (atomic_load(&rt->broker_state) != LOOM_BROKER_CONNECTED) {
        /* A command buffered while the broker is away would reach nobody
         * subscribed yet and time out: say so at once instead. */
        loom_msg *r = fail_response(m, 503, "the broker is not connected");
        loom_msg_release(m);
        if (r)
            answer(rt, cb, user, r);
        return;
    }
    const char *segs[] = {m->receiver.service, m->receiver.version, m->receiver.target};
    char *topic = loom__topic_build(rt->prefix, "cmd", segs, 3);
    loom_msg *r503 = fail_response(m, 503, "no receiver for %s.%s (version %s)",
                                   m->receiver.service, m->receiver.target, p->version);
    if (!topic || !r503 ||
        !pend_add(rt, id, cb, user, remaining_ms(m), direct, m->receiver.service)) {
        free(topic);
        loom_msg_release(m);
        if (r503) {
            loom__msg_set(r503, &r503->error_message, "out of memory");
            answer(rt, cb, user, r503);
        }
        return;
    }
    loom_err err = loom__publish(rt, topic, m, rt->qos_command, false, rt->reply_topic, id, 32);
    free(topic);
    if (err == LOOM_OK) {
        loom_msg_release(r503);
        return;
    }
    if (err != LOOM_EUNAVAILABLE) {
        char *why = loom__asprintf("cannot send to %s.%s: %s", m->receiver.service,
                                   m->receiver.target, loom_strerror(err));
        if (why)
            loom__msg_set(r503, &r503->error_message, why);
        free(why);
    }
    loom_msg_release(m);
    fail_pending(rt, id, r503);
}

static void invoke_inline(loom_runtime *rt, const prepared *p, loom_reply_fn cb, void *user,
                          bool timed);

/* LOOM__RUN_AUTO runs an in-process command on the calling thread when a
 * worker hop would cost more than the handler and nothing depends on the
 * hop: none of the command's latest LOOM__QUICK_RUNS asynchronous runs
 * was seen to take LOOM__QUICK_NS or more (dispatch.c times them), and the
 * caller is application code, not a handler or reply callback that loom is
 * running (so a handler never runs on a broker, timer or HTTP thread, and
 * a callback that invokes again cannot recurse). A quick handler that
 * turns slow resets the count and its next calls go to the workers again.
 * invoke.inline: false turns this off. */
static bool run_here(loom_runtime *rt, const loom__command *cmd, loom__run_mode mode)
{
    if (mode != LOOM__RUN_AUTO)
        return mode == LOOM__RUN_INLINE;
    return rt->invoke_inline && loom__callback_depth == 0 &&
           atomic_load_explicit(&cmd->quick, memory_order_relaxed) >= LOOM__QUICK_RUNS &&
           !loom__pool_is_worker(&rt->pool);
}

loom_err loom__invoke(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                      loom_reply_fn cb, void *user, loom__run_mode mode)
{
    if (!cb)
        return LOOM_EINVAL;
    prepared p;
    loom_err err = prepare(rt, parent, call, &p);
    if (err != LOOM_OK)
        return err;
    if (mode == LOOM__RUN_AUTO && call->run_inline)
        mode = LOOM__RUN_INLINE;
    if (p.early)
        answer(rt, cb, user, p.early);
    else if (p.local && run_here(rt, p.local, mode))
        invoke_inline(rt, &p, cb, user, mode == LOOM__RUN_AUTO);
    else if (p.local)
        send_local(rt, &p, cb, user);
    else
        send_remote(rt, &p, cb, user, call->reply_inline);
    return LOOM_OK;
}

/* --- blocking calls -------------------------------------------------------- */

struct loom__waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loom_msg *resp;
    atomic_int refs; /* the caller and the callback */
};

static loom__waiter *waiter_new(void)
{
    loom__waiter *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&w->refs, 2);
    return w;
}

static void waiter_unref(loom__waiter *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) {
        loom_msg_release(w->resp);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
    }
}

static void waiter_cb(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    loom__waiter *w = user;
    pthread_mutex_lock(&w->mu);
    w->resp = loom_msg_retain((loom_msg *)resp);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    waiter_unref(w);
}

/* Waits for the waiter's response. The pending entry's timer answers 504 at
 * the deadline; the extra second only guards against a pool too busy to run
 * that answer. Drops the caller's reference. */
static loom_msg *waiter_wait(loom__waiter *w, int64_t deadline)
{
    int64_t left = deadline - loom__now_ms();
    if (left < 0)
        left = 0;
    struct timespec ts = loom__mono_after(left + 1000);
    pthread_mutex_lock(&w->mu);
    while (!w->resp)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0)
            break;
    loom_msg *resp = w->resp;
    w->resp = NULL;
    pthread_mutex_unlock(&w->mu);
    waiter_unref(w);
    return resp;
}

loom_err loom__slot_defer(loom_ctx *ctx)
{
    loom__slot *slot = ctx->slot;
    loom__waiter *w = slot->cb ? NULL : waiter_new();
    if (!slot->cb && !w)
        return LOOM_ENOMEM;
    if (!pend_add(ctx->rt, ctx->msg->id, w ? waiter_cb : slot->cb, w ? (void *)w : slot->user,
                  remaining_ms(ctx->msg), w != NULL, NULL)) {
        free(w);
        return LOOM_ENOMEM;
    }
    slot->waiter = w;
    ctx->reply_kind = LOOM__TO_PENDING;
    return LOOM_OK;
}

/* A result that comes after the deadline is replaced by 504, as a remote
 * caller would have had. Consumes resp (may be NULL); never NULL unless out
 * of memory. */
static loom_msg *late_is_504(loom_msg *resp, int64_t deadline, const char *id)
{
    if (resp && deadline < loom__now_ms() && loom_msg_status(resp) < 500) {
        loom_msg_release(resp);
        resp = NULL;
    }
    if (!resp) {
        resp = loom__msg_error_for(NULL, 504, "timed out waiting for the response", NULL, false);
        if (resp)
            memcpy(resp->correlation_id, id, 33);
    }
    return resp;
}

/* An asynchronous invoke run inline: the handler answers here (callback
 * now) or defers (callback later, from the pending table). */
static void invoke_inline(loom_runtime *rt, const prepared *p, loom_reply_fn cb, void *user,
                          bool timed)
{
    char id[33];
    memcpy(id, p->msg->id, 33);
    int64_t deadline = p->msg->deadline;
    loom__slot slot = {.cb = cb, .user = user, .timed = timed};
    loom__route to = {.kind = LOOM__TO_SLOT, .slot = &slot};
    loom__run_command(rt, p->local, p->msg, &to);
    if (slot.resp) {
        loom_msg *resp = late_is_504(slot.resp, deadline, id);
        if (resp)
            answer(rt, cb, user, resp);
    }
    /* else: deferred; the pending entry answers cb */
}

/* The handler runs here, on the caller's thread: no queue, no pending
 * entry, no timer, unless it defers. A result that comes after the
 * deadline is replaced by 504, as a remote caller would have had. */
static loom_msg *call_inline(loom_runtime *rt, const prepared *p)
{
    char id[33];
    memcpy(id, p->msg->id, 33);
    int64_t deadline = p->msg->deadline;
    loom__slot slot = {0};
    loom__route to = {.kind = LOOM__TO_SLOT, .slot = &slot};
    loom__run_command(rt, p->local, p->msg, &to);
    loom_msg *resp = slot.waiter ? waiter_wait(slot.waiter, deadline) : slot.resp;
    return late_is_504(resp, deadline, id);
}

loom_err loom__call(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                    loom_msg **response)
{
    if (!response)
        return LOOM_EINVAL;
    *response = NULL;
    prepared p;
    loom_err err = prepare(rt, parent, call, &p);
    if (err != LOOM_OK)
        return err;
    loom_msg *resp;
    if (p.early) {
        resp = p.early;
    } else if (p.local) {
        resp = call_inline(rt, &p);
    } else {
        loom__waiter *w = waiter_new();
        if (!w) {
            resp = fail_response(p.msg, 503, "out of memory");
            loom_msg_release(p.msg);
        } else {
            int64_t deadline = p.msg->deadline;
            send_remote(rt, &p, waiter_cb, w, true);
            resp = waiter_wait(w, deadline);
            if (!resp)
                resp = loom__msg_error_for(NULL, 504, "timed out waiting for the response",
                                           NULL, false);
        }
    }
    if (!resp)
        return LOOM_ENOMEM;
    *response = resp;
    return LOOM_OK;
}

loom_err loom_runtime_invoke(loom_runtime *rt, const loom_call *call, loom_reply_fn cb,
                             void *user)
{
    return loom__invoke(rt, NULL, call, cb, user, LOOM__RUN_AUTO);
}

loom_err loom_runtime_call(loom_runtime *rt, const loom_call *call, loom_msg **response)
{
    return loom__call(rt, NULL, call, response);
}

loom_err loom_ctx_invoke(loom_ctx *ctx, const loom_call *call, loom_reply_fn cb, void *user)
{
    return ctx ? loom__invoke(ctx->rt, ctx, call, cb, user, LOOM__RUN_AUTO) : LOOM_EINVAL;
}

loom_err loom_ctx_call(loom_ctx *ctx, const loom_call *call, loom_msg **response)
{
    return ctx ? loom__call(ctx->rt, ctx, call, response) : LOOM_EINVAL;
}
