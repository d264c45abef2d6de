/* Discovery: each instance that runs services publishes one retained
 * announcement on {prefix}/svc/{instance} describing them (the broker's Last
 * Will clears it if the process dies; stop clears it). Every runtime keeps
 * the announcements of the others, so it knows which commands have a live
 * receiver and the HTTP bridge knows its routes, whatever the start order.
 *
 * rt->disc_mu protects rt->remotes and rt->local_doc. */
#include <stdlib.h>
#include <string.h>

#include "codec/topic.h"
#include "core/runtime.h"
#include "core/util.h"

static cJSON *schema_json(const char *text)
{
    return text ? cJSON_Parse(text) : NULL;
}

static bool add_schema(cJSON *obj, const char *key, const char *text)
{
    if (!text)
        return true;
    cJSON *s = schema_json(text);
    return s && cJSON_AddItemToObject(obj, key, s);
}

/* "errors": [{status, description, dataSchema?}] (docs/http.md, OpenAPI). */
static bool add_errors(cJSON *o, const loom_error_def *errors)
{
    if (!errors || !errors[0].status)
        return true;
    cJSON *list = cJSON_AddArrayToObject(o, "errors");
    if (!list)
        return false;
    for (size_t i = 0; errors[i].status; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(list, e)) {
            cJSON_Delete(e);
            return false;
        }
        if (!cJSON_AddNumberToObject(e, "status", errors[i].status) ||
            !cJSON_AddStringToObject(e, "description", errors[i].description) ||
            !add_schema(e, "dataSchema", errors[i].data_schema))
            return false;
    }
    return true;
}

static cJSON *command_doc(const loom__command *c)
{
    const loom_command_def *d = c->def;
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "name", d->name) ||
        (d->description && !cJSON_AddStringToObject(o, "description", d->description)) ||
        !add_schema(o, "payloadSchema", d->payload_schema) ||
        !add_schema(o, "parameterSchema", d->parameter_schema) ||
        !add_schema(o, "outputSchema", d->output_schema) ||
        (d->success_event && !cJSON_AddStringToObject(o, "successEvent", d->success_event)) ||
        (d->timeout_ms && !cJSON_AddNumberToObject(o, "timeoutMs", d->timeout_ms)) ||
        !add_errors(o, d->errors))
        goto fail;
    if (d->http_method) {
        cJSON *h = cJSON_AddObjectToObject(o, "http");
        if (!h || !cJSON_AddStringToObject(h, "method", d->http_method) ||
            !cJSON_AddStringToObject(h, "path", d->http_path) ||
            !cJSON_AddBoolToObject(h, "public", d->http_public))
            goto fail;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static cJSON *build_local_doc(loom_runtime *rt)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *svcs = doc ? cJSON_AddArrayToObject(doc, "services") : NULL;
    if (!svcs || !cJSON_AddStringToObject(doc, "instanceId", rt->instance_id) ||
        (rt->heartbeat_ms && !cJSON_AddNumberToObject(doc, "ttlMs", 3.0 * rt->heartbeat_ms)))
        goto fail;
    for (size_t i = 0; i < rt->n_services; i++) {
        const loom__service *s = &rt->services[i];
        cJSON *so = cJSON_CreateObject();
        if (!so || !cJSON_AddItemToArray(svcs, so))
            goto fail_item;
        cJSON *cmds = cJSON_AddArrayToObject(so, "commands");
        cJSON *subs = cJSON_AddArrayToObject(so, "subscriptions");
        if (!cmds || !subs || !cJSON_AddStringToObject(so, "name", s->def->name) ||
            !cJSON_AddStringToObject(so, "version", s->def->version) ||
            (s->def->description &&
             !cJSON_AddStringToObject(so, "description", s->def->description)))
            goto fail;
        /* The shared schemas the command schemas may $ref (for documents). */
        cJSON *shared =
            s->def->schemas && s->def->schemas[0] ? cJSON_AddArrayToObject(so, "schemas") : NULL;
        for (size_t j = 0; shared && s->def->schemas[j]; j++) {
            cJSON *one = schema_json(s->def->schemas[j]);
            if (!one || !cJSON_AddItemToArray(shared, one)) {
                cJSON_Delete(one);
                goto fail;
            }
        }
        if (s->def->schemas && s->def->schemas[0] && !shared)
            goto fail;
        for (size_t j = 0; j < s->n_cmds; j++) {
            cJSON *c = command_doc(&s->cmds[j]);
            if (!c || !cJSON_AddItemToArray(cmds, c)) {
                cJSON_Delete(c);
                goto fail;
            }
        }
        for (size_t j = 0; j < s->n_subs; j++) {
            const loom_subscription_def *sd = s->subs[j].def;
            cJSON *o = cJSON_CreateObject();
            if (!o || !cJSON_AddItemToArray(subs, o) ||
                !cJSON_AddStringToObject(o, "name", sd->name) ||
                (sd->filter.event_name &&
                 !cJSON_AddStringToObject(o, "eventName", sd->filter.event_name)))
                goto fail;
        }
        continue;
    fail_item:
        cJSON_Delete(so);
        goto fail;
    }
    return doc;
fail:
    cJSON_Delete(doc);
    return NULL;
}

loom_err loom__announce(loom_runtime *rt)
{
    pthread_mutex_lock(&rt->disc_mu);
    if (!rt->local_doc)
        rt->local_doc = build_local_doc(rt);
    cJSON *copy = rt->local_doc ? cJSON_Duplicate(rt->local_doc, true) : NULL;
    pthread_mutex_unlock(&rt->disc_mu);
    if (!copy)
        return LOOM_ENOMEM;
    if (rt->n_services == 0) {
        cJSON_Delete(copy);
        return LOOM_OK;
    }
    loom_msg *m = loom__msg_new(LOOM_MSG_INFO);
    if (!m || loom__msg_set(m, &m->info_type, "infoServiceAvailable") ||
        loom__msg_set_address(m, &m->sender, NULL, NULL, NULL, rt->instance_id)) {
        loom_msg_release(m);
        cJSON_Delete(copy);
        return LOOM_ENOMEM;
    }
    m->payload = copy;
    bool retain = rt->ops->caps & LOOM_CAP_RETAIN;
    loom_err err =
        loom__publish(rt, rt->announce_topic, m, rt->qos_discovery, retain, NULL, NULL, 0);
    if (err == LOOM_EUNAVAILABLE && !retain && (rt->ops->caps & LOOM_CAP_KNOWS_RECEIVERS))
        err = LOOM_OK; /* nobody listens yet: the next beat tells them */
    if (err != LOOM_OK)
        loom_msg_release(m);
    return err;
}

static void heartbeat_job(void *a, void *b, uintptr_t c)
{
    (void)b;
    (void)c;
    loom_runtime *rt = a;
    if (atomic_load(&rt->state) != LOOM__STARTED)
        return; /* stopping: the timer fired early; do not re-arm */
    if (loom__subscriptions_ready(rt))
        loom__announce(rt);
    loom__timer_add(&rt->pool, &rt->heartbeat, rt->heartbeat_ms);
}

void loom__heartbeat_start(loom_runtime *rt)
{
    if (!rt->heartbeat_ms || rt->n_services == 0)
        return;
    rt->heartbeat.heap_index = SIZE_MAX;
    rt->heartbeat.job = (loom__job){heartbeat_job, rt, NULL, 0};
    loom__timer_add(&rt->pool, &rt->heartbeat, rt->heartbeat_ms);
}

void loom__unannounce(loom_runtime *rt)
{
    if (rt->n_services == 0 || !rt->adapter)
        return;
    bool retain = rt->ops->caps & LOOM_CAP_RETAIN;
    loom_err err = loom__publish(rt, rt->announce_topic, NULL, rt->qos_discovery, retain, NULL,
                                 NULL, 0);
    if (err != LOOM_OK && !(err == LOOM_EUNAVAILABLE && !retain))
        loom_runtime_log(rt, LOOM_LOG_WARN, "cannot clear the service announcement: %s",
                     loom_strerror(err));
}

static void remote_free(loom__remote *r)
{
    free(r->topic);
    cJSON_Delete(r->doc);
    free(r);
}

void loom__discovery_sync(loom_runtime *rt)
{
    if (!(rt->ops->caps & LOOM_CAP_RETAIN) || atomic_load(&rt->disc_synced))
        return;
    loom_err err = loom__publish(rt, rt->sync_topic, NULL, rt->qos_discovery, false, NULL, NULL, 0);
    if (err != LOOM_OK) {
        loom_runtime_log(rt, LOOM_LOG_WARN, "cannot publish the discovery marker: %s",
                     loom_strerror(err));
        atomic_store(&rt->disc_synced, true); /* do not wait for it forever */
    }
}

bool loom__discovery_synced(loom_runtime *rt)
{
    if (atomic_load(&rt->disc_synced))
        return true;
    if (rt->ops->caps & LOOM_CAP_RETAIN)
        return false;
    /* No retained announcements: everyone alive has beaten once by now. */
    int64_t since = atomic_load(&rt->connected_mono);
    if (since && loom__mono_ms() - since >= (int64_t)rt->heartbeat_ms + 200) {
        atomic_store(&rt->disc_synced, true);
        return true;
    }
    return false;
}

static const cJSON *doc_command(const cJSON *doc, const char *service, const char *version,
                                const char *command, const cJSON **svc_out);
static const char *jstr(const cJSON *o, const char *key);

/* Logs each command of r that an earlier announcement (or this process)
 * already serves with a different HTTP exposure: the earlier one stays. */
static void warn_conflicts_locked(loom_runtime *rt, const loom__remote *r)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(r->doc, "services"))
    {
        const char *n = jstr(s, "name"), *v = jstr(s, "version");
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(s, "commands"))
        {
            const char *cn = jstr(c, "name");
            if (!n || !v || !cn)
                continue;
            const cJSON *first = rt->local_doc ? doc_command(rt->local_doc, n, v, cn, NULL) : NULL;
            for (const loom__remote *o = rt->remotes; o && o != r && !first; o = o->next)
                first = doc_command(o->doc, n, v, cn, NULL);
            if (first && !cJSON_Compare(cJSON_GetObjectItemCaseSensitive(first, "http"),
                                        cJSON_GetObjectItemCaseSensitive(c, "http"), true))
                loom_runtime_log(rt, LOOM_LOG_WARN,
                                 "conflicting announcements for %s.%s (version %s): %s "
                                 "exposes it differently; the first announcement stays",
                                 n, cn, v, r->topic);
        }
    }
}

static void restore_job(void *a, void *b, uintptr_t c)
{
    (void)b;
    (void)c;
    loom_runtime *rt = a;
    atomic_store(&rt->restore_queued, false);
    if (atomic_load(&rt->state) == LOOM__STARTED && loom__subscriptions_ready(rt))
        loom__announce(rt);
}

void loom__announce_restore(loom_runtime *rt)
{
    if (atomic_load(&rt->state) != LOOM__STARTED || rt->n_services == 0)
        return;
    atomic_store(&rt->announce_lost, true);
    if (atomic_exchange(&rt->restore_queued, true))
        return; /* one restore at a time */
    unsigned n = atomic_fetch_add(&rt->announce_restores, 1);
    if (n < 3 || n % 100 == 0)
        loom_runtime_log(rt, LOOM_LOG_WARN,
                         "our announcement on %s was cleared or replaced by someone else: "
                         "publishing it again (%u so far)",
                         rt->announce_topic, n + 1);
    /* At most one restore a second: two instances misconfigured with one
     * instance id (or someone clearing in a loop) must not make us flood. */
    int64_t now = loom__mono_ms(), last = atomic_exchange(&rt->restore_mono, now);
    if (now - last >= 1000) {
        loom__pool_submit_always(&rt->pool, (loom__job){restore_job, rt, NULL, 0});
        return;
    }
    atomic_store(&rt->restore_mono, last + 1000);
    rt->restore_timer.heap_index = SIZE_MAX;
    rt->restore_timer.job = (loom__job){restore_job, rt, NULL, 0};
    loom__timer_add(&rt->pool, &rt->restore_timer, (uint32_t)(last + 1000 - now));
}

/* Our own topic: our announcement coming back, or someone else's doing. */
static void own_topic(loom_runtime *rt, loom_msg *msg)
{
    /* Ours: an announcement from this instance, signed by our identity when
     * signing is on (not by id: heartbeats may arrive out of order). */
    bool ours = msg && msg->type == LOOM_MSG_INFO && msg->sender.instance &&
                strcmp(msg->sender.instance, rt->instance_id) == 0 &&
                (!rt->trust.signing || (msg->signer && strcmp(msg->signer, rt->trust.name) == 0));
    loom_msg_release(msg);
    if (ours)
        atomic_store(&rt->announce_lost, false);
    else
        loom__announce_restore(rt);
}

static void refuse_announcement(loom_runtime *rt, const char *topic, const char *why)
{
    loom__trust_count(&rt->trust, LOOM__DROP_ANNOUNCE);
    loom__warn_refused(rt, topic, why);
}

static size_t doc_commands(const cJSON *doc)
{
    size_t n = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(doc, "services")) n +=
        (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s, "commands"));
    return n;
}

/* May this verified announcement stand? Its signer must speak for every
 * service it lists (so only a service states its own routes and public
 * flags), and it must fit the caps. */
/* An announcement belongs on its own instance's topic: a signed one
 * re-published elsewhere (by someone who read it) would otherwise outlive
 * the instance's Last Will and win over its next announcement. */
static bool on_own_topic(loom_runtime *rt, const char *topic, const loom_msg *msg)
{
    const char *inst = msg->sender.instance;
    if (!inst || !*inst)
        return !rt->trust.signing;
    const char *segs[] = {inst};
    char *own = loom__topic_build(rt->prefix, "svc", segs, 1);
    bool ok = own && strcmp(own, topic) == 0;
    free(own);
    return ok;
}

static bool announcement_ok(loom_runtime *rt, const char *topic, const loom_msg *msg)
{
    const cJSON *s;
    if (!on_own_topic(rt, topic, msg)) {
        refuse_announcement(rt, topic, "it names another instance than its topic");
        return false;
    }
    if (rt->trust.signing && msg->signer) {
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(msg->payload, "services"))
        {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(s, "name");
            if (!cJSON_IsString(n) ||
                !loom__trust_allows(&rt->trust, msg->signer, n->valuestring)) {
                refuse_announcement(rt, topic, "it lists a service its signer may not speak for");
                return false;
            }
        }
    }
    size_t n = doc_commands(msg->payload);
    if (n > rt->max_instance_commands) {
        refuse_announcement(rt, topic, "more commands than limits.instance_commands");
        return false;
    }
    size_t total = n;
    pthread_mutex_lock(&rt->disc_mu);
    for (const loom__remote *r = rt->remotes; r; r = r->next)
        if (strcmp(r->topic, topic) != 0)
            total += doc_commands(r->doc);
    pthread_mutex_unlock(&rt->disc_mu);
    if (total > rt->max_routes) {
        refuse_announcement(rt, topic, "the known commands would exceed limits.routes");
        return false;
    }
    return true;
}

void loom__discovery_received(loom_runtime *rt, const char *topic, loom_msg *msg, bool empty)
{
    if (strcmp(topic, rt->announce_topic) == 0) {
        own_topic(rt, msg);
        return;
    }
    if (strcmp(topic, rt->sync_topic) == 0) {
        loom_msg_release(msg);
        atomic_store(&rt->disc_synced, true);
        pthread_mutex_lock(&rt->ready_mu);
        pthread_cond_broadcast(&rt->ready_cv);
        pthread_mutex_unlock(&rt->ready_mu);
        return;
    }
    cJSON *doc = NULL;
    if (!empty) {
        const cJSON *p = msg ? loom_msg_payload(msg) : NULL;
        if (!msg || msg->type != LOOM_MSG_INFO || !cJSON_IsArray(cJSON_GetObjectItem(p, "services"))) {
            loom_runtime_log(rt, LOOM_LOG_WARN, "ignored a malformed announcement on %s", topic);
            loom_msg_release(msg);
            return;
        }
        if (!announcement_ok(rt, topic, msg)) {
            loom_msg_release(msg);
            return;
        }
        doc = cJSON_Duplicate(p, true);
    }
    loom_msg_release(msg);
    pthread_mutex_lock(&rt->disc_mu);
    loom__remote **pp = &rt->remotes;
    while (*pp && strcmp((*pp)->topic, topic) != 0)
        pp = &(*pp)->next;
    const cJSON *ttl = doc ? cJSON_GetObjectItemCaseSensitive(doc, "ttlMs") : NULL;
    int64_t expires = cJSON_IsNumber(ttl) && ttl->valuedouble >= 1 && ttl->valuedouble < 86400000
                          ? loom__mono_ms() + (int64_t)ttl->valuedouble
                          : 0;
    bool changed = true;
    if (*pp) {
        loom__remote *r = *pp;
        if (doc) {
            /* A heartbeat repeating the same announcement changes nothing. */
            changed = !cJSON_Compare(r->doc, doc, true);
            cJSON_Delete(r->doc);
            r->doc = doc;
            r->expires_mono = expires;
        } else {
            *pp = r->next;
            remote_free(r);
        }
    } else if (!doc) {
        changed = false; /* clearing what we never knew (or another's marker) */
    } else {
        loom__remote *r = calloc(1, sizeof *r);
        if (r && (r->topic = strdup(topic))) {
            r->doc = doc;
            r->expires_mono = expires;
            *pp = r; /* at the tail: for a command listed twice, the first wins */
            warn_conflicts_locked(rt, r);
        } else {
            free(r);
            cJSON_Delete(doc);
        }
    }
    if (changed)
        atomic_fetch_add(&rt->routes_version, 1);
    pthread_mutex_unlock(&rt->disc_mu);
}

/* Drops announcements whose heartbeats stopped. Under disc_mu. */
static void purge_expired_locked(loom_runtime *rt)
{
    int64_t now = loom__mono_ms();
    for (loom__remote **pp = &rt->remotes; *pp;) {
        loom__remote *r = *pp;
        if (r->expires_mono && r->expires_mono < now) {
            *pp = r->next;
            remote_free(r);
            atomic_fetch_add(&rt->routes_version, 1);
        } else {
            pp = &r->next;
        }
    }
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Finds the command object in one announcement. */
static const cJSON *doc_command(const cJSON *doc, const char *service, const char *version,
                                const char *command, const cJSON **svc_out)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(doc, "services"))
    {
        const char *n = jstr(s, "name"), *v = jstr(s, "version");
        if (!n || !v || strcmp(n, service) != 0 || strcmp(v, version) != 0)
            continue;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(s, "commands"))
        {
            const char *cn = jstr(c, "name");
            if (cn && (!command || strcmp(cn, command) == 0)) {
                if (svc_out)
                    *svc_out = s;
                return c;
            }
        }
    }
    return NULL;
}

bool loom__remote_has_command(loom_runtime *rt, const char *service, const char *version,
                              const char *command)
{
    bool found = false;
    pthread_mutex_lock(&rt->disc_mu);
    purge_expired_locked(rt);
    for (loom__remote *r = rt->remotes; r && !found; r = r->next)
        found = doc_command(r->doc, service, version, command, NULL) != NULL;
    pthread_mutex_unlock(&rt->disc_mu);
    return found;
}

/* Adds the command names of service/version in one announcement to names
 * (each once); true when the announcement has that service. */
static bool doc_service_commands(const cJSON *doc, const char *service, const char *version,
                                 cJSON *names)
{
    bool known = false;
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(doc, "services"))
    {
        const char *n = jstr(s, "name"), *v = jstr(s, "version");
        if (!n || !v || strcmp(n, service) != 0 || strcmp(v, version) != 0)
            continue;
        known = true;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(s, "commands"))
        {
            const char *cn = jstr(c, "name");
            bool dup = !cn;
            const cJSON *have;
            cJSON_ArrayForEach(have, names) dup = dup || strcmp(have->valuestring, cn) == 0;
            if (!dup && !cJSON_AddItemToArray(names, cJSON_CreateString(cn)))
                break; /* out of memory: a shorter list in an error message */
        }
    }
    return known;
}

cJSON *loom__service_commands(loom_runtime *rt, const char *service, const char *version)
{
    cJSON *names = cJSON_CreateArray();
    if (!names)
        return NULL;
    bool known = false;
    for (size_t i = 0; i < rt->n_services; i++) {
        const loom__service *s = &rt->services[i];
        if (strcmp(s->def->name, service) != 0 || strcmp(s->def->version, version) != 0)
            continue;
        known = true;
        for (size_t j = 0; j < s->n_cmds; j++)
            if (!cJSON_AddItemToArray(names, cJSON_CreateString(s->cmds[j].def->name)))
                break; /* out of memory: a shorter list in an error message */
    }
    pthread_mutex_lock(&rt->disc_mu);
    purge_expired_locked(rt);
    for (loom__remote *r = rt->remotes; r; r = r->next)
        known = doc_service_commands(r->doc, service, version, names) || known;
    pthread_mutex_unlock(&rt->disc_mu);
    if (!known) {
        cJSON_Delete(names);
        return NULL;
    }
    return names;
}

uint32_t loom__remote_timeout(loom_runtime *rt, const char *service, const char *version,
                              const char *command)
{
    uint32_t timeout = 0;
    pthread_mutex_lock(&rt->disc_mu);
    for (loom__remote *r = rt->remotes; r && !timeout; r = r->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(
            doc_command(r->doc, service, version, command, NULL), "timeoutMs");
        if (cJSON_IsNumber(t) && t->valuedouble >= 1 && t->valuedouble <= 86400000)
            timeout = (uint32_t)t->valuedouble;
    }
    pthread_mutex_unlock(&rt->disc_mu);
    return timeout;
}

/* True when an earlier announcement (local doc or a remote before stop)
 * already listed service/version/command. */
static bool listed_before(loom_runtime *rt, const loom__remote *stop, const char *service,
                          const char *version, const char *command)
{
    if (rt->local_doc && doc_command(rt->local_doc, service, version, command, NULL))
        return true;
    for (const loom__remote *r = rt->remotes; r && r != stop; r = r->next)
        if (doc_command(r->doc, service, version, command, NULL))
            return true;
    return false;
}

static void each_in_doc(loom_runtime *rt, const cJSON *doc, const loom__remote *self,
                        void (*fn)(void *, const char *, const char *, const cJSON *, const cJSON *,
                                   bool),
                        void *user)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(doc, "services"))
    {
        const char *n = jstr(s, "name"), *v = jstr(s, "version");
        if (!n || !v)
            continue;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(s, "commands"))
        {
            const char *cn = jstr(c, "name");
            if (!cn || (self && listed_before(rt, self, n, v, cn)))
                continue;
            fn(user, n, v, s, c, self == NULL);
        }
    }
}

void loom__commands_each(loom_runtime *rt,
                         void (*fn)(void *user, const char *service, const char *version,
                                    const cJSON *service_obj, const cJSON *cmd, bool local),
                         void *user)
{
    pthread_mutex_lock(&rt->disc_mu);
    purge_expired_locked(rt);
    if (!rt->local_doc)
        rt->local_doc = build_local_doc(rt);
    if (rt->local_doc)
        each_in_doc(rt, rt->local_doc, NULL, fn, user);
    for (loom__remote *r = rt->remotes; r; r = r->next)
        each_in_doc(rt, r->doc, r, fn, user);
    pthread_mutex_unlock(&rt->disc_mu);
}

unsigned loom__routes_version(loom_runtime *rt)
{
    pthread_mutex_lock(&rt->disc_mu);
    purge_expired_locked(rt);
    pthread_mutex_unlock(&rt->disc_mu);
    return atomic_load(&rt->routes_version);
}

void loom__discovery_fini(loom_runtime *rt)
{
    while (rt->remotes) {
        loom__remote *r = rt->remotes;
        rt->remotes = r->next;
        remote_free(r);
    }
    cJSON_Delete(rt->local_doc);
    rt->local_doc = NULL;
}
