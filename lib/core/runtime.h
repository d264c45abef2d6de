/* Internal: the runtime's structures, shared by the files of lib/core. */
#ifndef LOOM_CORE_RUNTIME_H
#define LOOM_CORE_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>

#include "codec/msg.h"
#include "codec/schema.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/trust.h"
#include "loom.h"
#include "loom/adapter.h"

typedef struct loom__service loom__service;

/* Every subscription handed to an adapter carries a token whose first member
 * says what it is. */
typedef enum loom__token_kind {
    LOOM__TOK_COMMAND = 1,
    LOOM__TOK_SUBSCRIPTION,
    LOOM__TOK_REPLY,
    LOOM__TOK_DISCOVERY,
} loom__token_kind;

typedef struct loom__token {
    loom__token_kind kind;
    char *filter; /* topic filter */
    char *group;  /* subscription group or NULL */
    int qos;
    atomic_bool subscribed;
} loom__token;

typedef struct loom__command {
    loom__token tok; /* first: deliveries point here */
    loom__service *svc;
    const loom_command_def *def;
    loom__schema *payload_schema;
    loom__schema *parameter_schema;
    loom__schema *output_schema;
    uint32_t timeout_ms;
    int max_running;     /* limits.concurrency."service.command"; 0 = none */
    atomic_int running;  /* handlers started and not yet answered */
    /* How many of its latest asynchronous runs in a row were not seen to
     * take LOOM__QUICK_NS or more (capped at LOOM__QUICK_RUNS): see
     * loom__invoke. */
    atomic_uint quick;
} loom__command;

#define LOOM__QUICK_RUNS 64
#define LOOM__QUICK_NS 50000

typedef struct loom__subscription {
    loom__token tok;
    loom__service *svc;
    const loom_subscription_def *def;
    loom__schema *payload_schema;
    uint32_t max_retries;
} loom__subscription;

struct loom__service {
    const loom_service_def *def;
    void *user;
    const cJSON *config;       /* config.<name>, borrowed from rt->config */
    loom__schema_set *schemas; /* def->schemas and the format flag, or NULL */
    loom__command *cmds;
    size_t n_cmds;
    loom__subscription *subs;
    size_t n_subs;
};

/* A call waiting for its response (remote or local asynchronous). */
typedef struct loom__pending {
    char id[33];
    loom_reply_fn cb;
    void *user;
    loom_runtime *rt;
    loom__timer timer;          /* fires the 504 */
    uint32_t timeout_ms;
    bool done;                  /* completed while its timer job was queued */
    bool direct; /* completes on the thread that receives the response: a
                  * blocking caller, or loom_call.reply_inline */
    struct loom__pending *next; /* hash chain */
    char service[];             /* the called service ("" for local calls) */
} loom__pending;

/* A remote instance's announcement (discovery). */
typedef struct loom__remote {
    char *topic;          /* announcement topic: identifies the instance */
    cJSON *doc;           /* the announcement payload */
    int64_t expires_mono; /* 0 = until cleared (retained + will) */
    struct loom__remote *next;
} loom__remote;

enum { LOOM__CREATED = 0, LOOM__STARTED, LOOM__STOPPING, LOOM__STOPPED };

struct loom_runtime {
    loom__logger log;
    char instance_id[65];
    char *prefix;
    char *broker_url;
    char *announce_topic; /* {prefix}/svc/{instance}: this instance's services */
    cJSON *local_doc;     /* the announcement of this instance's services */
    bool locks_ready;     /* the mutexes below were initialized */
    size_t ready_missing; /* scratch for the readiness check, under ready_mu */
    loom_config *config; /* owned clone, never NULL */
    unsigned workers;
    uint32_t default_timeout_ms;
    bool invoke_inline; /* invoke.inline: quick in-process commands inline */
    uint32_t drain_timeout_ms;
    size_t max_message;
    int qos_command, qos_reply, qos_event, qos_discovery;

    loom__service *services;
    size_t n_services;

    /* broker */
    const loom_adapter_ops *ops;
    void *adapter;
    loom_adapter_host host;
    atomic_int broker_state;
    loom__token reply_tok;
    loom__token discovery_tok;
    char *reply_topic;

    loom_store *store;
    loom__pool pool;

    atomic_int state;
    /* Set when stop's drain limit has passed: from then on queued work is
     * answered 503 / dropped instead of run. */
    atomic_bool drain_over;
    /* Commands being handled here (from start of the handler to its reply). */
    atomic_long inflight;

    /* pending calls, keyed by request id */
    pthread_mutex_t pend_mu;
    loom__pending **pend_buckets;
    size_t pend_nbuckets; /* power of two */
    size_t pend_count;

    /* deferred handler contexts not yet answered (freed at destroy) */
    pthread_mutex_t ctx_mu;
    struct loom_ctx *deferred;

    /* discovery: remote announcements */
    pthread_mutex_t disc_mu;
    loom__remote *remotes;
    atomic_uint routes_version; /* bumped when remotes change */
    /* Without retained messages or a last will, announcements are repeated
     * every heartbeat_ms and expire after three missed beats. */
    uint32_t heartbeat_ms; /* 0 = no heartbeat */
    loom__timer heartbeat;
    /* Discovery is "synced" once the announcements that existed when we
     * subscribed have arrived: with retained messages, when our own marker
     * published after the subscription comes back (the broker replays
     * retained messages before it); without, after one heartbeat. */
    char *sync_topic;
    atomic_bool disc_synced;
    _Atomic int64_t connected_mono;

    _Atomic int64_t garbage_warned_mono; /* rate limit of "dropped a malformed message" */

    /* trust: keys, verification, counters (core/trust.h) */
    loom__trust trust;
    _Atomic int64_t refused_warned_mono; /* rate limit of "refused a message" */
    /* Whether the broker lost our announcement (cleared or replaced by
     * someone else) and we have not seen it back yet. */
    atomic_bool announce_lost;
    atomic_uint announce_restores;
    atomic_bool restore_queued;
    _Atomic int64_t restore_mono; /* when the last restore was scheduled */
    loom__timer restore_timer;    /* a restore delayed by the rate limit */
    /* discovery caps (limits.*) */
    size_t max_announcement, max_instance_commands, max_routes;

    /* readiness */
    pthread_mutex_t ready_mu;
    pthread_cond_t ready_cv;

    /* Events in hand (loom_runtime_wait_events): deliveries to this
     * runtime's subscriptions counted from host_deliver until their handler
     * finished for good (ack, drop, or out of retries; a retry keeps its
     * count while it waits). The one that brings the count to 0 broadcasts
     * events_cv under events_mu, so a waiter that checked the count under
     * events_mu cannot miss it. */
    atomic_long events_pending;
    pthread_mutex_t events_mu;
    pthread_cond_t events_cv; /* on CLOCK_MONOTONIC */
};

/* Where a command's response goes. */
enum {
    LOOM__TO_NONE = 0, /* nobody asked (dropped) */
    LOOM__TO_PENDING,  /* a call of this runtime: completes its pending entry */
    LOOM__TO_TOPIC,    /* a remote loom caller: envelope on reply_topic */
    LOOM__TO_BARE,     /* a plain MQTT client: bare JSON + status property */
    LOOM__TO_SLOT,     /* a blocking in-process caller on this very thread */
};

typedef struct loom__waiter loom__waiter;

/* A blocking in-process call: the handler runs on the caller's thread and
 * its answer lands here, unless the handler defers (then `waiter` is set
 * and the answer comes through the pending table). */
typedef struct loom__slot {
    loom_msg *resp;
    loom__waiter *waiter;
    /* An inline asynchronous invoke: a deferred answer goes to cb. */
    loom_reply_fn cb;
    void *user;
    bool timed; /* chosen by LOOM__RUN_AUTO: the run counts for it */
} loom__slot;

/* Where a command's response goes (see LOOM__TO_*). Borrowed by
 * loom__run_command, which copies what it keeps. */
typedef struct loom__route {
    int kind;
    const char *topic;
    const void *corr;
    size_t corr_len;
    loom__slot *slot;
} loom__route;

/* Handler context. */
struct loom_ctx {
    loom_runtime *rt;
    loom__service *svc;
    loom__command *cmd;      /* commands */
    loom__subscription *sub; /* subscriptions */
    loom_msg *msg;           /* retained */
    /* Where the response goes. */
    int reply_kind; /* LOOM__TO_* */
    loom__slot *slot;
    char *reply_topic;
    void *correlation;
    size_t correlation_len;
    atomic_int flags; /* LOOM__CTX_* */
    cJSON *sub_result; /* subscriptions: what loom_ctx_reply gave */
    struct loom_ctx *next_deferred, *prev_deferred;
};

enum {
    LOOM__CTX_REPLIED = 1,
    LOOM__CTX_DEFERRED = 2,
    LOOM__CTX_RETURNED = 4,
    LOOM__CTX_DONE = 8, /* the answer has been delivered */
};

/* runtime.c */
/* A rate-limited warning (one a second) about a message the trust checks
 * refused; what is the topic or subject, why the reason. */
void loom__warn_refused(loom_runtime *rt, const char *what, const char *why);
loom__command *loom__find_command(loom_runtime *rt, const char *service, const char *version,
                                  const char *command);
/* Publishes msg (taken over on LOOM_OK) on topic through the adapter,
 * serializing it when the adapter is not in-process. */
loom_err loom__publish(loom_runtime *rt, const char *topic, loom_msg *msg, int qos, bool retain,
                       const char *response_topic, const void *corr, size_t corr_len);
/* Emits an event as ctx's service (or the runtime when ctx is NULL);
 * payload taken over on LOOM_OK. */
loom_err loom__emit(loom_runtime *rt, const loom_ctx *ctx, const char *event, cJSON *payload);
char *loom__event_topic(loom_runtime *rt, const char *event, const char *service,
                        const char *version);

/* invoke.c */
/* Where an asynchronous in-process command runs: on the calling thread
 * (LOOM__RUN_INLINE), on the worker pool (LOOM__RUN_POOL), or inline when
 * that is safe and pays (LOOM__RUN_AUTO, see loom__invoke). */
typedef enum { LOOM__RUN_AUTO, LOOM__RUN_INLINE, LOOM__RUN_POOL } loom__run_mode;
loom_err loom__invoke(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                      loom_reply_fn cb, void *user, loom__run_mode mode);
loom_err loom__call(loom_runtime *rt, const loom_ctx *parent, const loom_call *call,
                    loom_msg **response);
/* Completes the pending call response answers (response released here).
 * False when no call waits for it (late or unknown). */
bool loom__complete_pending(loom_runtime *rt, loom_msg *response);
/* The same for a response that came over the broker: it completes the call
 * only when its sender is the service that was called (else it is dropped
 * and counted). */
bool loom__complete_remote(loom_runtime *rt, loom_msg *response);
/* Turns an inline in-process call whose handler defers into a pending
 * call: answered to slot->cb, or to a new waiter (slot->waiter) for a
 * blocking caller. */
loom_err loom__slot_defer(loom_ctx *ctx);
/* True when the pending call with this request id is a blocking caller. */
bool loom__pending_is_direct(loom_runtime *rt, const char *id);
/* Fails every pending call with status (stop). */
void loom__fail_all_pending(loom_runtime *rt, int status, const char *message);
loom_err loom__pending_init(loom_runtime *rt);
void loom__pending_fini(loom_runtime *rt);

/* dispatch.c */
/* Runs a command handler for msg (retained by the caller, released here).
 * The response goes as described by the reply fields. */
void loom__run_command(loom_runtime *rt, loom__command *cmd, loom_msg *msg,
                       const loom__route *to);
void loom__run_subscription(loom_runtime *rt, loom__subscription *sub, loom_msg *msg,
                            uint32_t attempt);
bool loom__filter_matches(const loom_filter *f, const loom_msg *m);
void loom__free_deferred(loom_runtime *rt);

bool loom__runtime_ready(loom_runtime *rt);
/* One event delivered to a subscription is handled for good (see
 * events_pending). */
void loom__event_done(loom_runtime *rt);
/* Connected and every subscription in place (whether or not the others'
 * announcements have arrived yet). */
bool loom__subscriptions_ready(loom_runtime *rt);
/* May new work start? Work from outside only while started; work on behalf
 * of a running handler (parent) also while stop drains. */
bool loom__accepting(loom_runtime *rt, bool from_handler);

/* discovery.c */
/* Calls fn for each command known to this runtime: local ones first, then
 * those announced by live remote instances (each service/version/command
 * once). cmd is the command's announcement object ({"name","description",
 * "http":{"method","path","public"},"payloadSchema",...}) and service_obj its
 * service's ({"name","version","description","schemas":[shared]}), borrowed. Runs
 * under the discovery lock: fn must not call into the runtime. */
void loom__commands_each(loom_runtime *rt,
                         void (*fn)(void *user, const char *service, const char *version,
                                    const cJSON *service_obj, const cJSON *cmd, bool local),
                         void *user);
/* Changes whenever the set of known remote commands changes. */
unsigned loom__routes_version(loom_runtime *rt);
loom_err loom__announce(loom_runtime *rt);
void loom__unannounce(loom_runtime *rt);
/* Starts the re-announcing timer when the broker needs it (heartbeat_ms). */
void loom__heartbeat_start(loom_runtime *rt);
void loom__discovery_received(loom_runtime *rt, const char *topic, loom_msg *msg, bool empty);
/* Something other than our announcement landed on our announcement topic
 * (cleared or replaced): publish ours again. */
void loom__announce_restore(loom_runtime *rt);
/* True when some live remote instance announced service/version/command. */
bool loom__remote_has_command(loom_runtime *rt, const char *service, const char *version,
                              const char *command);
/* The names of the commands of service/version known here (this runtime's
 * own services, then live remote announcements), as a new cJSON array; NULL
 * when no such service is known. Takes the discovery lock. */
cJSON *loom__service_commands(loom_runtime *rt, const char *service, const char *version);
/* The timeout a remote instance announced for the command, or 0. */
uint32_t loom__remote_timeout(loom_runtime *rt, const char *service, const char *version,
                              const char *command);
void loom__discovery_fini(loom_runtime *rt);
/* Publishes the sync marker (once the discovery subscription is in place). */
void loom__discovery_sync(loom_runtime *rt);
bool loom__discovery_synced(loom_runtime *rt);

/* memory.c */
extern const loom_adapter_ops loom__memory_adapter;

#endif
