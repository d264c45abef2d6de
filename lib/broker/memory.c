/* The in-memory broker ("memory:" / "memory:NAME"): runtimes of one process
 * that use the same URL share a bus. Messages are passed as loom_msg
 * pointers (never serialized); groups get each message once, round-robin
 * among their members; retained messages are replayed to new subscribers.
 *
 * Locking: bus->mu protects the bus's subscriptions and retained messages.
 * Upcalls are made with no lock held; each adapter counts the deliveries in
 * progress towards it so that stop() can wait for them. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/runtime.h"
#include "core/util.h"

typedef struct mem_adapter mem_adapter;

typedef struct mem_sub {
    char *filter;
    char *group; /* NULL: every subscriber */
    void *token;
    mem_adapter *owner;
    struct mem_sub *next;
} mem_sub;

typedef struct mem_retained {
    char *topic;
    loom_msg *msg;
    struct mem_retained *next;
} mem_retained;

typedef struct mem_bus {
    char *name;
    int refs; /* under buses_mu */
    pthread_mutex_t mu;
    mem_sub *subs;
    mem_retained *retained;
    atomic_uint rr; /* round-robin counter for groups */
    struct mem_bus *next;
} mem_bus;

struct mem_adapter {
    mem_bus *bus;
    loom_adapter_host host;
    bool connected; /* under bus->mu */
    atomic_int deliveries; /* upcalls in progress towards this adapter */
};

static pthread_mutex_t buses_mu = PTHREAD_MUTEX_INITIALIZER;
static mem_bus *buses;

static mem_bus *bus_get(const char *name)
{
    pthread_mutex_lock(&buses_mu);
    mem_bus *b = buses;
    while (b && strcmp(b->name, name) != 0)
        b = b->next;
    if (!b && (b = calloc(1, sizeof *b))) {
        b->name = strdup(name);
        if (!b->name) {
            free(b);
            b = NULL;
        } else {
            pthread_mutex_init(&b->mu, NULL);
            b->next = buses;
            buses = b;
        }
    }
    if (b)
        b->refs++;
    pthread_mutex_unlock(&buses_mu);
    return b;
}

static void bus_put(mem_bus *b)
{
    pthread_mutex_lock(&buses_mu);
    if (--b->refs > 0) {
        pthread_mutex_unlock(&buses_mu);
        return;
    }
    for (mem_bus **pp = &buses; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    pthread_mutex_unlock(&buses_mu);
    while (b->retained) {
        mem_retained *r = b->retained;
        b->retained = r->next;
        loom_msg_release(r->msg);
        free(r->topic);
        free(r);
    }
    pthread_mutex_destroy(&b->mu);
    free(b->name);
    free(b);
}

static loom_err mem_init(void **self, const loom_adapter_host *host,
                         const loom_adapter_options *opts)
{
    /* "memory:NAME": the bus is NAME. Any scheme is accepted so that a
     * wrapper registered under another scheme can reuse these operations. */
    const char *url = opts->url ? opts->url : "memory:";
    const char *colon = strchr(url, ':');
    if (!colon) {
        host->log(host->core, LOOM_LOG_ERROR, "memory broker: bad URL '%s'", url);
        return LOOM_ECONFIG;
    }
    mem_adapter *a = calloc(1, sizeof *a);
    if (!a)
        return LOOM_ENOMEM;
    a->host = *host;
    a->bus = bus_get(colon + 1);
    if (!a->bus) {
        free(a);
        return LOOM_ENOMEM;
    }
    *self = a;
    return LOOM_OK;
}

static loom_err mem_connect(void *self)
{
    mem_adapter *a = self;
    pthread_mutex_lock(&a->bus->mu);
    a->connected = true;
    pthread_mutex_unlock(&a->bus->mu);
    a->host.state_changed(a->host.core, LOOM_BROKER_CONNECTED, NULL);
    return LOOM_OK;
}

static bool same(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

/* A target of one delivery, collected under the lock. */
typedef struct target {
    mem_adapter *to;
    void *token;
} target;

typedef struct targets {
    target *v;
    size_t n, cap;
} targets;

static bool targets_push(targets *t, mem_adapter *to, void *token)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        target *v = realloc(t->v, cap * sizeof *v);
        if (!v)
            return false;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = (target){to, token};
    atomic_fetch_add(&to->deliveries, 1);
    return true;
}

static void deliver_all(targets *t, const char *topic, loom_msg *msg, bool retained)
{
    for (size_t i = 0; i < t->n; i++) {
        loom_delivery d = {.token = t->v[i].token, .topic = topic, .msg = msg,
                           .retained = retained};
        mem_adapter *to = t->v[i].to;
        to->host.deliver(to->host.core, &d);
        atomic_fetch_sub(&to->deliveries, 1);
    }
    free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
}

static loom_err mem_subscribe(void *self, const char *filter, const char *group, void *token,
                              int qos)
{
    (void)qos;
    mem_adapter *a = self;
    mem_bus *b = a->bus;
    pthread_mutex_lock(&b->mu);
    if (!a->connected) {
        pthread_mutex_unlock(&b->mu);
        return LOOM_EUNAVAILABLE;
    }
    mem_sub *s = b->subs;
    while (s && !(s->owner == a && s->token == token && same(s->filter, filter) &&
                  same(s->group, group)))
        s = s->next;
    bool fresh = s == NULL;
    if (fresh) {
        s = calloc(1, sizeof *s);
        if (!s || !(s->filter = strdup(filter)) || (group && !(s->group = strdup(group)))) {
            if (s)
                free(s->filter);
            free(s);
            pthread_mutex_unlock(&b->mu);
            return LOOM_ENOMEM;
        }
        s->token = token;
        s->owner = a;
        s->next = b->subs;
        b->subs = s;
    }
    /* Replay retained messages to a new subscription. */
    size_t n = 0;
    for (mem_retained *r = b->retained; fresh && r; r = r->next)
        if (loom_topic_matches(filter, r->topic))
            n++;
    mem_retained *replay = n ? calloc(n, sizeof *replay) : NULL;
    size_t k = 0;
    for (mem_retained *r = b->retained; replay && r; r = r->next)
        if (loom_topic_matches(filter, r->topic) && (replay[k].topic = strdup(r->topic))) {
            replay[k].msg = loom_msg_retain(r->msg);
            k++;
        }
    atomic_fetch_add(&a->deliveries, 1);
    pthread_mutex_unlock(&b->mu);

    a->host.subscribed(a->host.core, token, LOOM_OK);
    for (size_t i = 0; i < k; i++) {
        loom_delivery d = {.token = token, .topic = replay[i].topic, .msg = replay[i].msg,
                           .retained = true};
        a->host.deliver(a->host.core, &d);
        loom_msg_release(replay[i].msg);
        free(replay[i].topic);
    }
    free(replay);
    atomic_fetch_sub(&a->deliveries, 1);
    return LOOM_OK;
}

static void sub_free(mem_sub *s)
{
    free(s->filter);
    free(s->group);
    free(s);
}

static loom_err mem_unsubscribe(void *self, const char *filter, const char *group, void *token)
{
    mem_adapter *a = self;
    mem_bus *b = a->bus;
    pthread_mutex_lock(&b->mu);
    for (mem_sub **pp = &b->subs; *pp; pp = &(*pp)->next) {
        mem_sub *s = *pp;
        if (s->owner == a && s->token == token && same(s->filter, filter) &&
            same(s->group, group)) {
            *pp = s->next;
            sub_free(s);
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return LOOM_OK;
}

static loom_err retain_locked(mem_bus *b, const char *topic, loom_msg *msg)
{
    mem_retained **pp = &b->retained;
    while (*pp && strcmp((*pp)->topic, topic) != 0)
        pp = &(*pp)->next;
    if (*pp) {
        mem_retained *r = *pp;
        loom_msg_release(r->msg);
        if (msg) {
            r->msg = loom_msg_retain(msg);
        } else {
            *pp = r->next;
            free(r->topic);
            free(r);
        }
        return LOOM_OK;
    }
    if (!msg)
        return LOOM_OK;
    mem_retained *r = calloc(1, sizeof *r);
    if (!r || !(r->topic = strdup(topic))) {
        free(r);
        return LOOM_ENOMEM;
    }
    r->msg = loom_msg_retain(msg);
    r->next = b->retained;
    b->retained = r;
    return LOOM_OK;
}

/* Collects the receivers of topic: every plain subscriber, and one member
 * of each group (round-robin). */
static bool collect_locked(mem_bus *b, const char *topic, targets *t)
{
    const char *done_groups[64];
    size_t n_done = 0;
    for (mem_sub *s = b->subs; s; s = s->next) {
        if (!s->owner->connected || !loom_topic_matches(s->filter, topic))
            continue;
        if (!s->group) {
            if (!targets_push(t, s->owner, s->token))
                return false;
            continue;
        }
        bool seen = false;
        for (size_t i = 0; i < n_done && !seen; i++)
            seen = strcmp(done_groups[i], s->group) == 0;
        if (seen)
            continue;
        /* members of this group matching the topic */
        size_t members = 0;
        for (mem_sub *m = s; m; m = m->next)
            if (m->group && strcmp(m->group, s->group) == 0 && m->owner->connected &&
                loom_topic_matches(m->filter, topic))
                members++;
        size_t pick = atomic_fetch_add(&b->rr, 1) % members;
        for (mem_sub *m = s; m; m = m->next)
            if (m->group && strcmp(m->group, s->group) == 0 && m->owner->connected &&
                loom_topic_matches(m->filter, topic) && pick-- == 0) {
                if (!targets_push(t, m->owner, m->token))
                    return false;
                break;
            }
        if (n_done < LOOM__ARRAY_LEN(done_groups))
            done_groups[n_done++] = s->group;
    }
    return true;
}

static loom_err mem_publish(void *self, const loom_publish *p)
{
    mem_adapter *a = self;
    mem_bus *b = a->bus;
    targets t = {0};
    pthread_mutex_lock(&b->mu);
    if (!a->connected) {
        pthread_mutex_unlock(&b->mu);
        return LOOM_EUNAVAILABLE;
    }
    loom_err err = p->retain ? retain_locked(b, p->topic, p->msg) : LOOM_OK;
    if (err == LOOM_OK && !collect_locked(b, p->topic, &t))
        err = LOOM_ENOMEM;
    if (err != LOOM_OK) {
        for (size_t i = 0; i < t.n; i++)
            atomic_fetch_sub(&t.v[i].to->deliveries, 1);
        free(t.v);
        pthread_mutex_unlock(&b->mu);
        return err;
    }
    pthread_mutex_unlock(&b->mu);
    if (t.n == 0 && !p->retain)
        return LOOM_EUNAVAILABLE; /* nobody listens; msg not taken */
    deliver_all(&t, p->topic, p->msg, false);
    loom_msg_release(p->msg);
    return LOOM_OK;
}

static void mem_close(void *self)
{
    mem_adapter *a = self;
    mem_bus *b = a->bus;
    pthread_mutex_lock(&b->mu);
    a->connected = false;
    for (mem_sub **pp = &b->subs; *pp;) {
        mem_sub *s = *pp;
        if (s->owner == a) {
            *pp = s->next;
            sub_free(s);
        } else {
            pp = &s->next;
        }
    }
    pthread_mutex_unlock(&b->mu);
}

static void mem_stop(void *self)
{
    mem_adapter *a = self;
    mem_close(a);
    /* Others may be delivering to us: they hold no lock while they do. */
    while (atomic_load(&a->deliveries) > 0)
        sched_yield();
}

static void mem_fini(void *self)
{
    mem_adapter *a = self;
    if (!a)
        return;
    bus_put(a->bus);
    free(a);
}

const loom_adapter_ops loom__memory_adapter = {
    .abi_version = LOOM_ADAPTER_ABI_VERSION,
    .scheme = "memory",
    .caps = LOOM_CAP_IN_PROCESS | LOOM_CAP_GROUPS | LOOM_CAP_RETAIN | LOOM_CAP_KNOWS_RECEIVERS,
    .init = mem_init,
    .connect = mem_connect,
    .subscribe = mem_subscribe,
    .unsubscribe = mem_unsubscribe,
    .publish = mem_publish,
    .close = mem_close,
    .stop = mem_stop,
    .fini = mem_fini,
};
