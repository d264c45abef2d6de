/*
 * loom — broker adapter ABI.
 *
 * A broker adapter moves loom messages between processes (or, for the
 * built-in "memory" adapter, between runtimes of one process). It is a const
 * table of operations, registered for a URL scheme. Everything that is not
 * transport lives in the core: topic names and their escaping, group names,
 * request/reply correlation, timeouts, resubscription after a reconnect,
 * retries and statistics. An adapter is therefore small.
 *
 * Topics use the MQTT layout (docs/adapters.md): '/'-separated, already
 * escaped segments; filters may contain '+' (one segment) and a trailing '#'.
 * Adapters for other brokers map these names to their own.
 *
 * Rules for every adapter:
 *  - It never runs user code: host->deliver only enqueues onto the core's
 *    worker pool and returns quickly.
 *  - It never calls a host upcall while holding one of its own locks.
 *  - Operations may be called from any thread, concurrently, between init
 *    and fini; fini is called once, after stop.
 *  - Fields are only ever appended to these structs; check abi_version.
 */
#ifndef LOOM_ADAPTER_H
#define LOOM_ADAPTER_H

#include "../loom.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_ADAPTER_ABI_VERSION 1

/* Capability flags (loom_adapter_ops.caps). */
enum {
    /* Hands the decoded loom_msg to deliver() instead of bytes: the core then
     * never serializes for this adapter (the memory broker). */
    LOOM_CAP_IN_PROCESS = 1u << 0,
    /* Supports subscription groups (one member of a group gets each message). */
    LOOM_CAP_GROUPS = 1u << 1,
    /* Supports retained messages (discovery announcements). */
    LOOM_CAP_RETAIN = 1u << 2,
    /* Supports a last-will message published by the broker on a lost client. */
    LOOM_CAP_WILL = 1u << 3,
    /* Carries a response topic, correlation data and user properties, so
     * plain clients of the broker can call commands with bare JSON. */
    LOOM_CAP_PROPERTIES = 1u << 4,
    /* Reports "no subscriber" on publish (LOOM_EUNAVAILABLE) synchronously. */
    LOOM_CAP_KNOWS_RECEIVERS = 1u << 5,
};

typedef enum loom_broker_state {
    LOOM_BROKER_DISCONNECTED = 0,
    LOOM_BROKER_CONNECTING,
    LOOM_BROKER_CONNECTED,
    LOOM_BROKER_FAILED, /* gave up; detail says why */
} loom_broker_state;

/* One outgoing message. Everything is borrowed for the call, except msg,
 * which an in-process adapter keeps on LOOM_OK (and releases when done). */
typedef struct loom_publish {
    const char *topic;
    loom_msg *msg;    /* the decoded message; always set */
    const void *data; /* its serialized bytes; NULL for in-process adapters */
    size_t len;
    const char *response_topic; /* NULL = none */
    const void *correlation;    /* correlation data, NULL = none */
    size_t correlation_len;
    const char *status; /* "status" user property for bare replies, or NULL */
    int qos;            /* 0, 1 or 2: what the core asks for */
    bool retain;
} loom_publish;

/* One incoming message, borrowed for the duration of deliver(). */
typedef struct loom_delivery {
    void *token;       /* what the core passed to subscribe() */
    const char *topic; /* the topic it was published on */
    loom_msg *msg;     /* in-process adapters: the message (the core retains
                          it if it keeps it); others: NULL */
    const void *data;  /* others: the payload bytes */
    size_t len;
    const char *response_topic;
    const void *correlation;
    size_t correlation_len;
    bool retained; /* a retained message replayed on subscribe */
} loom_delivery;

/* Upcalls the core gives an adapter. Safe from any adapter thread. */
typedef struct loom_adapter_host {
    void *core;
    /* Enqueues a delivery onto the worker pool (copies what it needs) and
     * returns LOOM_OK, or LOOM_EOVERLOAD when the queue is full: an adapter
     * with acknowledgements may then withhold its ack or drop the message.*/
    loom_err (*deliver)(void *core, const loom_delivery *d);
    /* Reports connection changes; detail may be NULL. On every
     * LOOM_BROKER_CONNECTED the core (re)subscribes everything. May come
     * from an adapter-owned thread; none after close(). */
    void (*state_changed)(void *core, loom_broker_state state, const char *detail);
    /* Completes a subscribe(): LOOM_OK; LOOM_EUNAVAILABLE when the broker
     * refused it; LOOM_EIO when it was never answered (the connection was
     * lost: the core subscribes again on the next CONNECTED). */
    void (*subscribed)(void *core, void *token, loom_err err);
    void (*log)(void *core, loom_log_level level, const char *fmt, ...) LOOM_PRINTF(3, 4);
} loom_adapter_host;

/* Options for init(); strings are borrowed for the call (copy them). */
typedef struct loom_adapter_options {
    const char *url;         /* e.g. "mqtt://127.0.0.1:1883" */
    const char *instance_id; /* this runtime's id (default client id) */
    const cJSON *options;    /* the `broker:` configuration subtree, or NULL */
    /* Last will: published by the broker when this client is lost (retained,
     * empty payload = clear). NULL topic = none. */
    const char *will_topic;
    /* limits.max_message (appended in ABI 1: 0 = unknown): the largest
     * message payload the core accepts. An adapter whose protocol lets a
     * client cap what the server sends (MQTT 5 Maximum Packet Size) should
     * declare it, so oversized messages are refused before they are read. */
    size_t max_message;
} loom_adapter_options;

typedef struct loom_adapter_ops {
    uint32_t abi_version; /* LOOM_ADAPTER_ABI_VERSION at build time */
    const char *scheme;   /* URL scheme served, e.g. "mqtt" */
    uint32_t caps;        /* LOOM_CAP_* */

    /* Allocates the adapter's state. Does no I/O. Errors: LOOM_EINVAL or
     * LOOM_ECONFIG (bad URL or options; log why through host->log). */
    loom_err (*init)(void **self, const loom_adapter_host *host,
                     const loom_adapter_options *opts);
    /* Starts connecting and returns at once; progress is reported through
     * host->state_changed, and reconnection after a loss is the adapter's job
     * (with backoff) until close(). */
    loom_err (*connect)(void *self);
    /* Subscribes to a topic filter, asynchronously: the outcome is reported
     * once through host->subscribed(core, token, err). group NULL: every
     * instance gets each message; otherwise one member of the named group
     * does. token is handed back in every delivery for this subscription,
     * so one topic matching two subscriptions is delivered twice, once per
     * token. Subscriptions need not survive a reconnect: the core calls
     * subscribe again for each of them whenever the adapter reports
     * LOOM_BROKER_CONNECTED (an adapter may treat a repeat as a no-op).
     * LOOM_EUNAVAILABLE when disconnected (nothing is reported then). */
    loom_err (*subscribe)(void *self, const char *filter, const char *group, void *token,
                          int qos);
    loom_err (*unsubscribe)(void *self, const char *filter, const char *group, void *token);
    /* Publishes. On LOOM_OK the adapter owns p->msg (in-process adapters
     * hand it to receivers; others release it). On failure nothing is kept.
     * LOOM_EUNAVAILABLE when disconnected and its bounded buffer is full, or
     * (LOOM_CAP_KNOWS_RECEIVERS) when nobody subscribes to the topic;
     * LOOM_EOVERLOAD when connected but the client's send queue is full. */
    loom_err (*publish)(void *self, const loom_publish *p);
    /* Begins an orderly disconnect (no will). Does not block for long. */
    void (*close)(void *self);
    /* Waits for the adapter's threads to finish; no upcall happens after it
     * returns. */
    void (*stop)(void *self);
    /* Frees the state. */
    void (*fini)(void *self);
} loom_adapter_ops;

/* Registers an adapter for ops->scheme, process-wide, before creating the
 * runtimes that use it. The table must outlive them. LOOM_EEXIST when the
 * scheme is taken, LOOM_EINVAL for an ABI version this library does not
 * know. Built in: "memory", "mqtt", "mqtts". */
LOOM_API loom_err loom_adapter_register(const loom_adapter_ops *ops);

/* Topic helpers for adapter authors. */

/* True when topic matches the MQTT-style filter ('+', trailing '#'). */
LOOM_API bool loom_topic_matches(const char *filter, const char *topic);

#ifdef __cplusplus
}
#endif
#endif
