/* The test kit (include/loom/test.h, docs/testing.md): a started runtime on
 * a private in-memory bus ("memory:loom-test-<random>") with a private
 * memory store, and helpers that speak JSON text.
 *
 * Fake contexts (loom_test_run_command / _run_subscription) are real
 * contexts of the test runtime around a service and command that are not
 * registered: a loom__service / loom__command (or loom__subscription) made
 * here, without schemas. The command goes through loom__run_command with a
 * slot route, as an inline call does, so replies, failures, deferral and
 * the deadline behave as in production. A deferred handler may answer after
 * the kit stopped waiting, so every fake and every wait record lives until
 * loom_test_destroy (the `keep` list), after the runtime has stopped. */
#define _GNU_SOURCE
#include "loom/test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/msg.h"
#include "core/runtime.h"
#include "core/util.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_WORKERS 2

/* Something kept until destroy. */
typedef struct kept {
    struct kept *next;
    void (*fini)(void *p);
    void *p;
} kept;

struct loom_test {
    loom_runtime *rt;
    uint32_t timeout_ms;
    kept *keep;
};

/* A fake command and its service. */
typedef struct fake_cmd {
    loom__service svc;
    loom__command cmd;
} fake_cmd;

/* A fake subscription and its service. */
typedef struct fake_sub {
    loom__service svc;
    loom__subscription sub;
} fake_sub;

/* The answer of a fake command that deferred. */
typedef struct waitrec {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    loom_msg *resp;
} waitrec;

static void waitrec_free(void *p)
{
    waitrec *w = p;
    loom_msg_release(w->resp);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static bool keep(loom_test *t, void *p, void (*fini)(void *))
{
    kept *k = malloc(sizeof *k);
    if (!k)
        return false;
    *k = (kept){t->keep, fini, p};
    t->keep = k;
    return true;
}

/* --- lifetime ---------------------------------------------------------------- */

static loom_err make_config(loom_config **out, const loom_test_options *o)
{
    loom_config *cfg = NULL;
    loom_err err = loom_config_create(&cfg);
    if (err == LOOM_OK && o->config_yaml)
        err = loom_config_load_string(cfg, o->config_yaml, strlen(o->config_yaml), "config_yaml");
    if (err != LOOM_OK) {
        if (cfg && *loom_config_error(cfg))
            fprintf(stderr, "loom_test_create: %s\n", loom_config_error(cfg));
        loom_config_destroy(cfg);
        return err;
    }
    *out = cfg;
    return LOOM_OK;
}

loom_err loom_test_create(loom_test **out, const loom_service_def *const *services,
                          const loom_test_options *opts)
{
    static const loom_test_options none = LOOM_TEST_OPTIONS_INIT();
    if (!out)
        return LOOM_EINVAL;
    *out = NULL;
    const loom_test_options *o = opts ? opts : &none;
    loom_err size_err = LOOM__STRUCT_CHECK(o, LOOM__V0_TEST_OPTIONS);
    if (size_err != LOOM_OK)
        return size_err;
    loom_test *t = calloc(1, sizeof *t);
    if (!t)
        return LOOM_ENOMEM;
    t->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    loom_config *cfg = NULL;
    loom_err err = make_config(&cfg, o);
    if (err != LOOM_OK) {
        free(t);
        return err;
    }
    char bus[64], id[33];
    loom__random_id(id);
    snprintf(bus, sizeof bus, "memory:loom-test-%s", id);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = bus,
                                 .state_url =
                                     "memory:", /* private to this runtime: fresh per test */
                                 .workers = o->workers ? o->workers : DEFAULT_WORKERS,
                                 .default_timeout_ms = t->timeout_ms,
                                 .drain_timeout_ms = t->timeout_ms,
                                 .log_level = o->log_level ? o->log_level : LOOM_LOG_WARN);
    err = loom_runtime_create(&t->rt, &rc);
    loom_config_destroy(cfg);
    for (size_t i = 0; err == LOOM_OK && services && services[i]; i++)
        err = loom_runtime_add_service(t->rt, services[i], o->users ? o->users[i] : NULL);
    if (err == LOOM_OK)
        err = loom_runtime_start(t->rt);
    if (err == LOOM_OK)
        err = loom_runtime_wait_ready(t->rt, t->timeout_ms);
    if (err != LOOM_OK) {
        loom_test_destroy(t);
        return err;
    }
    *out = t;
    return LOOM_OK;
}

void loom_test_destroy(loom_test *t)
{
    if (!t)
        return;
    /* First the runtime: no handler may run on the fakes afterwards. */
    loom_runtime_destroy(t->rt);
    while (t->keep) {
        kept *k = t->keep;
        t->keep = k->next;
        k->fini(k->p);
        free(k);
    }
    free(t);
}

loom_runtime *loom_test_runtime(loom_test *t)
{
    return t ? t->rt : NULL;
}
loom_store *loom_test_store(loom_test *t)
{
    return t ? loom_runtime_store(t->rt) : NULL;
}

/* --- calls --------------------------------------------------------------------- */

/* Parses payload and parameter texts (NULL: none). */
static loom_err parse_args(const char *payload_json, const char *param_json, cJSON **payload,
                           cJSON **param)
{
    *payload = *param = NULL;
    if (payload_json && !(*payload = cJSON_Parse(payload_json)))
        return LOOM_EPARSE;
    if (param_json && !(*param = cJSON_Parse(param_json))) {
        cJSON_Delete(*payload);
        *payload = NULL;
        return LOOM_EPARSE;
    }
    return LOOM_OK;
}

/* Hands the response out as status and body; releases it. */
static loom_err give_response(loom_msg *resp, int *status, cJSON **body)
{
    if (!resp)
        return LOOM_ENOMEM;
    if (status)
        *status = loom_msg_status(resp);
    if (body)
        *body = loom_msg_result_json(resp);
    loom_msg_release(resp);
    return LOOM_OK;
}

loom_err loom_test_call(loom_test *t, const char *target, const char *payload_json,
                        const char *param_json, int *status, cJSON **body)
{
    if (body)
        *body = NULL;
    if (!t || !target)
        return LOOM_EINVAL;
    char service[257], command[257], version[65] = "1";
    const char *at = strchr(target, '@');
    size_t tlen = at ? (size_t)(at - target) : strlen(target);
    const char *dot = memrchr(target, '.', tlen);
    if (!dot || dot == target || (size_t)(dot - target) >= sizeof service ||
        tlen - (size_t)(dot - target) - 1 >= sizeof command || dot + 1 == target + tlen ||
        (at && (!at[1] || strlen(at + 1) >= sizeof version)))
        return LOOM_EINVAL;
    memcpy(service, target, (size_t)(dot - target));
    service[dot - target] = '\0';
    memcpy(command, dot + 1, tlen - (size_t)(dot - target) - 1);
    command[tlen - (size_t)(dot - target) - 1] = '\0';
    if (at)
        loom__strlcpy(version, at + 1, sizeof version);
    cJSON *payload, *param;
    loom_err err = parse_args(payload_json, param_json, &payload, &param);
    if (err != LOOM_OK)
        return err;
    loom_call call =
        LOOM_CALL_INIT(.service = service, .version = version, .command = command,
                       .payload = payload, .parameter = param, .timeout_ms = t->timeout_ms);
    loom_msg *resp = NULL;
    err = loom_runtime_call(t->rt, &call, &resp);
    if (err != LOOM_OK) {
        cJSON_Delete(payload);
        cJSON_Delete(param);
        return err;
    }
    return give_response(resp, status, body);
}

loom_err loom_test_emit(loom_test *t, const char *event_name, const char *payload_json)
{
    if (!t || !event_name)
        return LOOM_EINVAL;
    cJSON *payload = NULL;
    if (payload_json && !(payload = cJSON_Parse(payload_json)))
        return LOOM_EPARSE;
    loom_err err = loom_runtime_emit(t->rt, event_name, payload);
    if (err != LOOM_OK) {
        cJSON_Delete(payload);
        return err;
    }
    return loom_runtime_wait_events(t->rt, t->timeout_ms);
}

loom_err loom_test_wait(loom_test *t)
{
    return t ? loom_runtime_wait_events(t->rt, t->timeout_ms) : LOOM_EINVAL;
}

/* --- fake contexts ----------------------------------------------------------------- */

static void fake_service(loom_test *t, loom__service *fs, const loom_service_def *svc, void *user)
{
    char key[300];
    snprintf(key, sizeof key, "config.%s", svc->name);
    *fs = (loom__service){.def = svc, .user = user, .config = loom_config_get(t->rt->config, key)};
}

static void deferred_answer(loom_runtime *rt, const loom_msg *response, void *user)
{
    (void)rt;
    waitrec *w = user;
    pthread_mutex_lock(&w->mu);
    w->resp = loom_msg_retain((loom_msg *)response);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static waitrec *waitrec_new(void)
{
    waitrec *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    return w;
}

/* The answer of a deferred fake: the pending entry's timer answers 504 at
 * the deadline, so it comes; the extra second only guards against a bug. */
static loom_msg *wait_deferred(waitrec *w, uint32_t timeout_ms)
{
    struct timespec ts = loom__mono_after((int64_t)timeout_ms + 1000);
    pthread_mutex_lock(&w->mu);
    while (!w->resp)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0)
            break;
    loom_msg *resp = w->resp;
    w->resp = NULL;
    pthread_mutex_unlock(&w->mu);
    return resp
               ? resp
               : loom__msg_error_for(NULL, 504, "the deferred handler did not answer", NULL, false);
}

/* A new message of type with a fresh trace and the test's deadline. */
static loom_msg *fake_msg(loom_test *t, loom_msg_type type, const char *service,
                          const char *version, const char *target)
{
    loom_msg *m = loom__msg_new(type);
    if (!m)
        return NULL;
    loom__random_id(m->trace_id);
    m->deadline = m->timestamp + t->timeout_ms;
    if (type == LOOM_MSG_COMMAND &&
        loom__msg_set_address(m, &m->receiver, service, version, target, NULL) != LOOM_OK) {
        loom_msg_release(m);
        return NULL;
    }
    return m;
}

loom_err loom_test_run_command(loom_test *t, const loom_service_def *svc,
                               const loom_command_def *cmd, void *user, const char *payload_json,
                               const char *param_json, int *status, cJSON **body)
{
    if (body)
        *body = NULL;
    if (!t || !svc || !svc->name || !svc->version || !cmd || !cmd->name || !cmd->handler)
        return LOOM_EINVAL;
    loom_err size_err = LOOM__STRUCT_CHECK(svc, LOOM__V0_SERVICE_DEF);
    if (size_err == LOOM_OK)
        size_err = LOOM__STRUCT_CHECK(cmd, LOOM__V0_COMMAND_DEF);
    if (size_err != LOOM_OK)
        return size_err;
    fake_cmd *f = calloc(1, sizeof *f);
    waitrec *w = waitrec_new();
    if (!f || !w || !keep(t, f, free)) {
        free(f);
        if (w)
            waitrec_free(w);
        return LOOM_ENOMEM;
    }
    if (!keep(t, w, waitrec_free)) {
        waitrec_free(w);
        return LOOM_ENOMEM;
    }
    fake_service(t, &f->svc, svc, user);
    f->cmd = (loom__command){.svc = &f->svc, .def = cmd, .timeout_ms = t->timeout_ms};
    cJSON *payload, *param;
    loom_err err = parse_args(payload_json, param_json, &payload, &param);
    if (err != LOOM_OK)
        return err;
    loom_msg *m = fake_msg(t, LOOM_MSG_COMMAND, svc->name, svc->version, cmd->name);
    if (!m) {
        cJSON_Delete(payload);
        cJSON_Delete(param);
        return LOOM_ENOMEM;
    }
    m->payload = payload;
    m->parameter = param;
    /* As an inline asynchronous invoke: an answer lands in the slot, a
     * deferral goes through the pending table to deferred_answer. */
    loom__slot slot = {.cb = deferred_answer, .user = w};
    loom__route to = {.kind = LOOM__TO_SLOT, .slot = &slot};
    loom__run_command(t->rt, &f->cmd, m, &to);
    loom_msg *resp = slot.resp ? slot.resp : wait_deferred(w, t->timeout_ms);
    return give_response(resp, status, body);
}

loom_err loom_test_run_subscription(loom_test *t, const loom_service_def *svc,
                                    const loom_subscription_def *sub, void *user,
                                    const char *event_name, const char *payload_json, loom_ack *ack,
                                    cJSON **result)
{
    if (result)
        *result = NULL;
    if (!t || !svc || !svc->name || !svc->version || !sub || !sub->name || !sub->handler ||
        !event_name)
        return LOOM_EINVAL;
    loom_err size_err = LOOM__STRUCT_CHECK(svc, LOOM__V0_SERVICE_DEF);
    if (size_err == LOOM_OK)
        size_err = LOOM__STRUCT_CHECK(sub, LOOM__V0_SUBSCRIPTION_DEF);
    if (size_err != LOOM_OK)
        return size_err;
    cJSON *payload = NULL;
    if (payload_json && !(payload = cJSON_Parse(payload_json)))
        return LOOM_EPARSE;
    fake_sub *f = calloc(1, sizeof *f);
    loom_ctx *ctx = calloc(1, sizeof *ctx);
    loom_msg *m = fake_msg(t, LOOM_MSG_CUSTOM, NULL, NULL, NULL);
    if (!f || !ctx || !m || loom__msg_set(m, &m->event_name, event_name) != LOOM_OK ||
        !keep(t, f, free)) {
        free(f);
        free(ctx);
        loom_msg_release(m);
        cJSON_Delete(payload);
        return LOOM_ENOMEM;
    }
    m->payload = payload;
    fake_service(t, &f->svc, svc, user);
    f->sub = (loom__subscription){.svc = &f->svc, .def = sub};
    *ctx = (loom_ctx){.rt = t->rt, .svc = &f->svc, .sub = &f->sub, .msg = m};
    loom_ack a = sub->handler(ctx, user);
    if (ack)
        *ack = a;
    if (result)
        *result = ctx->sub_result;
    else
        cJSON_Delete(ctx->sub_result);
    loom_msg_release(ctx->msg);
    free(ctx);
    return LOOM_OK;
}
