/*
 * The MQTT 5 broker adapter, on paho.mqtt.c's asynchronous client.
 *
 * Threads. paho runs two threads of its own (shared by every client of the
 * process) and calls our callbacks on them; some of those callbacks run
 * with paho's global mutex held. So this file never holds its own mutex
 * while calling into paho (that would invert the lock order), and never
 * while calling a host upcall (the adapter contract). Each adapter also has
 * one small thread of its own, the "retry thread": it starts every connection
 * attempt, so backoff delays never sleep on a paho thread.
 *
 * Connection life cycle (a->state, guarded by a->mu):
 *
 *   IDLE --connect()--> WAITING --retry thread--> CONNECTING
 *   CONNECTING --CONNACK--> CONNECTED --lost--> WAITING (after backoff)
 *   CONNECTING --failed--> WAITING (exponential backoff, forever)
 *   any --close()--> DISCONNECTING (when connected) --> DOWN
 *
 * paho's own automaticReconnect is not used: it counts its delays in whole
 * seconds, while ours runs in milliseconds and treats a failed first
 * connect and a lost connection alike. Note that paho's I/O thread polls
 * its sockets with a one-second select(), so each attempt against a dead
 * broker takes up to a second to fail and a new connection up to about
 * two seconds to complete when other paho clients are already running.
 *
 * Durable sessions (session_expiry > 0). Identifiers are deterministic:
 * a hash of the MQTT filter (which names the subscription and its group)
 * into 1..268435455, probing on a collision with a live subscription. So a
 * process restarted with the same client id (the same --instance) uses the
 * identifiers its old session holds, and the QoS >= 1 messages the broker
 * queued meanwhile map back to tokens. Those messages arrive right after
 * CONNACK, possibly before the core has subscribed again: a message whose
 * identifiers are all unknown is held (at most HOLD_MAX_MSGS messages /
 * HOLD_MAX_BYTES bytes, each for at most HOLD_MS) and delivered as soon as
 * a subscription with one of its identifiers is registered, in arrival
 * order; what is still unclaimed after HOLD_MS is dropped and logged. A
 * hash collision between two filters of one process (two in 2^28) makes
 * the second one's identifier depend on subscription order, so it may
 * miss its old session's messages after a restart.
 *
 * Subscriptions. Each distinct MQTT filter ("$share/{group}/{filter}" or
 * "{filter}") is one broker subscription with one MQTT 5 subscription
 * identifier; the core's tokens hang off it. The broker tags every message
 * with the identifiers of the subscriptions it matched, which map straight
 * back to tokens. (Two tokens on the same filter share one identifier: the
 * broker keeps only one subscription per filter and session.)
 *
 * Delayed ACKs. Brokers as users install them (Debian's mosquitto) leave
 * Nagle's algorithm on. When the broker answers one of our QoS >= 1
 * publishes with a PUBACK and has the next message for us right after it
 * (a command after a handler's event, a reply after a command), Nagle
 * holds that message until we ACK the PUBACK, and our kernel delays the
 * ACK by ~40 ms because we have nothing to send: every such round trip
 * would take 40 ms. The same happens to a burst of messages we do not
 * answer at once (the replies to a batch of calls: the broker holds the
 * second until we ACK the first). So when a PUBACK or a message arrives we
 * set TCP_QUICKACK on our sockets to the broker, which sends the pending
 * ACK at once. paho hides
 * its socket: the descriptors are the ones set_nodelay() finds when a
 * connection comes up (every TCP connection of this process to the
 * broker; a quick ACK on another client's socket is harmless). Commands
 * and replies default to QoS 0 (no PUBACK at all; see docs/mqtt.md); this
 * costs one system call per message received and per QoS >= 1 publish.
 *
 * Buffering. Messages published while disconnected are kept here, not by
 * paho's sendWhileDisconnected: paho 1.3.12 leaks every buffered message
 * still unsent when the client is destroyed, and its limit also counts
 * messages queued while connected. They are handed to paho, in order, as
 * soon as a connection is up, before CONNECTED is reported.
 *
 * In flight. Our sessions are clean, and on a lost connection paho
 * discards a clean session's QoS >= 1 messages already sent but not yet
 * acknowledged, failing them with MQTTASYNC_OPERATION_INCOMPLETE. So each
 * QoS >= 1 message handed to paho keeps its copy (an out_msg, linked in
 * `flight`) until its PUBACK; one failed that way goes back into the
 * buffer, ahead of what was published while disconnected, and is sent
 * again on the next connection. A publisher that stays up thus delivers
 * its QoS >= 1 messages at least once across a broker crash (a message
 * whose PUBACK was lost with the connection arrives twice).
 *
 * Flow control. The broker's Receive Maximum (mosquitto: 20) bounds our
 * QoS >= 1 publishes awaiting a PUBACK. paho queues the ones beyond it,
 * and with them everything after them for this client (a DISCONNECT
 * too), but does not wake its sending thread when a PUBACK frees a slot:
 * they move on only when that thread's one-second wait runs out, 20
 * messages a second. So the adapter keeps the window itself: a QoS >= 1
 * publish goes to paho only while fewer than Receive Maximum are
 * unacknowledged (pub_inflight: the `flight` entries of the current
 * connection, counted by generation so that a callback paho never makes
 * for an old connection cannot leak a slot); otherwise it waits in the same ordered
 * queue as offline messages (bounded by `buffer`), and each PUBACK hands
 * the next ones to paho from paho's thread, which wakes it. Order is kept
 * across kinds: while the queue is not empty every publish joins it.
 *
 * Closing. close() waits (at most CLOSE_FLUSH_MS) until the queue has gone
 * to paho, publishes already past the closing check have reached paho's
 * queue (one queued after DISCONNECT would never be sent, and paho leaks
 * it), and the broker has acknowledged our QoS >= 1 publishes, then
 * sends DISCONNECT with no wait of paho's own: paho checks its in-flight messages only about once a
 * second, which made an idle stop take 3 s. Everything handed to paho
 * before DISCONNECT is written before it, in order, so the broker sees a
 * last announcement-clearing message and QoS 0 replies before the
 * disconnect either way; the wait is for messages the broker might ask us
 * to send again.
 *
 * Shutdown. Callbacks bracket their upcalls with enter()/leave(); stop()
 * sets `stopped` and waits until none is inside, so after stop() returns no
 * upcall runs or starts. The adapter memory stays valid until fini(), which
 * destroys the paho client first.
 */
#define _GNU_SOURCE
#include <MQTTAsync.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker/adapters.h"
#include "broker/options.h"
#include "core/util.h"

#define MQTT_MAX_SUB_ID 268435455            /* largest subscription identifier */
#define MQTT_MAX_PAYLOAD (256 * 1024 * 1024) /* MQTT's packet limit, rounded down */
#define MQTT_MAX_STRING 65535                /* any MQTT UTF-8 string */
#define CLOSE_FLUSH_MS 300 /* close(): at most this long for the broker's PUBACKs */
#define MAX_PACKET_LIMIT 268435455u          /* MQTT's largest packet */
#define PACKET_OVERHEAD (128u * 1024)        /* header, topic, properties */
#define FAIL_WARN_INTERVAL_MS 30000          /* repeated connect failures: one warning */
#define DROP_WARN_INTERVAL_MS 1000           /* dropped messages: one warning */
#define PAHO_MEMORY_ERROR_CODE (-99)         /* paho's PAHO_MEMORY_ERROR (not public) */
#define HOLD_MS 2000                         /* unknown subscription identifiers: grace */
#define HOLD_MAX_MSGS 10000
#define HOLD_MAX_BYTES (64 * 1024 * 1024)
#define QUICKACK_MAX_FDS 8 /* sockets to the broker quick_ack() touches */

typedef enum conn_state {
    CS_IDLE = 0,   /* connect() not called yet */
    CS_WAITING,    /* the retry thread starts the next attempt at retry_at */
    CS_CONNECTING, /* MQTTAsync_connect issued, outcome pending */
    CS_CONNECTED,
    CS_DISCONNECTING, /* orderly DISCONNECT issued by close() */
    CS_DOWN,          /* closed: no more attempts */
} conn_state;

/* One broker subscription: a distinct MQTT filter with its identifier. */
typedef struct mqtt_sub {
    struct mqtt_sub *next;
    char *filter;      /* as the core gave it */
    char *group;       /* NULL = none */
    char *mqtt_filter; /* what the broker sees */
    int id;
    void **tokens;
    size_t n_tokens, cap_tokens;
} mqtt_sub;

/* A message published while disconnected, kept until the next connection
 * (one allocation: the strings and bytes follow the struct). */
typedef struct out_msg {
    struct out_msg *next;
    struct out_msg *prev;   /* in `flight` only */
    struct mqtt_adapter *a; /* in `flight` only: paho's callback context */
    unsigned gen;           /* in `flight` only: the connection it was sent on */
    const char *topic;
    const void *data;
    size_t len;
    const char *rt;   /* NULL = none */
    const void *corr; /* NULL = none */
    size_t corr_len;
    const char *status; /* NULL = none */
    int qos;
    bool retain;
} out_msg;

/* A message whose subscription identifiers are all unknown, held until a
 * subscription claims it or HOLD_MS passes (one allocation: the ids, topic,
 * payload, response topic and correlation data follow the struct). */
typedef struct held_msg {
    struct held_msg *next;
    int64_t since_mono;
    size_t bytes;
    const char *topic;
    const void *data;
    size_t len;
    const char *rt;   /* NULL = none */
    const void *corr; /* NULL = none */
    size_t corr_len;
    bool retained;
    int n_ids;
    int ids[];
} held_msg;

/* One SUBSCRIBE awaiting its SUBACK; paho's callback context. Linked in
 * the adapter so fini() frees those paho never completed. */
typedef struct sub_req {
    struct sub_req *next, *prev;
    struct mqtt_adapter *a;
    void *token;
    char *mqtt_filter; /* for log lines */
} sub_req;

typedef struct mqtt_adapter {
    loom_adapter_host host;
    MQTTAsync client;

    /* Configuration: set by init, read-only afterwards. */
    bool tls;
    char host_name[260]; /* as in the URL, IPv6 with brackets */
    int port;
    int peer_family; /* AF_INET/AF_INET6 when host_name is a literal, else 0 */
    unsigned char peer_addr[16];
    char *client_id;
    char *username;
    char *password;
    char *will_topic;
    char *tls_ca, *tls_cert, *tls_key;
    bool tls_verify;
    int keepalive;
    uint32_t session_expiry;
    uint32_t max_packet; /* MQTT 5 Maximum Packet Size sent at connect; 0 = none */
    int connect_timeout_ms;
    int reconnect_min_ms, reconnect_max_ms;
    int buffer;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* state changes, `active` reaching 0, retry thread wake-ups */
    /* Everything below is guarded by mu. */
    conn_state state;
    bool connect_called;
    bool report_connecting; /* the retry thread reports CONNECTING first */
    bool closing;           /* close() was called: no more attempts, no state reports */
    bool stopped;           /* stop() began: callbacks make no upcalls */
    bool quit;              /* the retry thread must exit */
    bool thread_started;
    pthread_t thread;
    int active;       /* callbacks between enter() and leave() */
    int64_t retry_at; /* monotonic ms */
    int next_delay_ms;
    unsigned rng;
    int64_t fail_warn_ms;  /* when the last connect failure was logged as warning */
    unsigned fail_count;   /* failed attempts since the last success */
    char lost_reason[160]; /* from a server DISCONNECT, for the next loss report */
    bool sub_ids;          /* the broker supports subscription identifiers */
    mqtt_sub *subs;
    sub_req *reqs;
    /* Held messages (see the top of this file), oldest first. */
    held_msg *held_head, *held_tail;
    size_t held_n, held_bytes;
    unsigned long held_dropped; /* since the last report */
    int64_t drop_warn_ms;
    unsigned long dropped; /* since the last warning */
    /* Messages published while not connected, oldest first, at most
     * `buffer`. While `flushing`, the connection is up but older messages
     * are still being handed to paho: new ones queue behind them. */
    out_msg *q_head, *q_tail;
    size_t q_len;
    bool flushing;
    int recv_max; /* the broker's Receive Maximum (CONNACK) */
    /* QoS >= 1 messages handed to paho and not yet acknowledged; those of
     * connection `gen` hold the pub_inflight window slots. */
    out_msg *flight;
    int pub_inflight;
    int sending; /* publishes between the closing check and paho's queue */
    unsigned gen;
    out_msg *q_resent; /* the last message put back after a loss, or NULL */
    unsigned long undelivered; /* refused or not kept, since the last warning */
    int64_t undelivered_warn_ms;
    /* The sockets to the broker found at the last connect (quick_ack()). */
    _Atomic int ack_fds[QUICKACK_MAX_FDS];
    _Atomic int n_ack_fds;
} mqtt_adapter;

#define A_LOG(a, lvl, ...)                                                                         \
    do {                                                                                           \
        if ((a)->host.log)                                                                         \
            (a)->host.log((a)->host.core, (lvl), __VA_ARGS__);                                     \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

static void lock(mqtt_adapter *a)
{
    pthread_mutex_lock(&a->mu);
}
static void unlock(mqtt_adapter *a)
{
    pthread_mutex_unlock(&a->mu);
}

/* Called with mu held by a callback about to make upcalls. */
static bool enter_locked(mqtt_adapter *a)
{
    if (a->stopped)
        return false;
    a->active++;
    return true;
}

static void leave(mqtt_adapter *a)
{
    lock(a);
    if (--a->active == 0)
        pthread_cond_broadcast(&a->cv);
    unlock(a);
}

static loom_err map_paho(int rc)
{
    switch (rc) {
    case MQTTASYNC_SUCCESS:
        return LOOM_OK;
    case MQTTASYNC_DISCONNECTED:
        return LOOM_EUNAVAILABLE;
    case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
    case MQTTASYNC_MAX_BUFFERED_MESSAGES:
    case MQTTASYNC_NO_MORE_MSGIDS:
        return LOOM_EOVERLOAD;
    case MQTTASYNC_BAD_UTF8_STRING:
    case MQTTASYNC_NULL_PARAMETER:
    case MQTTASYNC_TOPICNAME_TRUNCATED:
    case MQTTASYNC_BAD_STRUCTURE:
    case MQTTASYNC_BAD_QOS:
    case MQTTASYNC_BAD_MQTT_OPTION:
    case MQTTASYNC_WRONG_MQTT_VERSION:
        return LOOM_EINVAL;
    case PAHO_MEMORY_ERROR_CODE:
        return LOOM_ENOMEM;
    default:
        return LOOM_EIO;
    }
}

static const char *paho_str(int rc)
{
    const char *s = MQTTAsync_strerror(rc);
    return s ? s : "unknown error";
}

/* A topic to publish to: non-empty, no wildcards, within MQTT's limit. */
static bool valid_topic(const char *t)
{
    if (!t || !*t)
        return false;
    size_t n = strnlen(t, MQTT_MAX_STRING + 1);
    return n <= MQTT_MAX_STRING && !strpbrk(t, "+#");
}

/* A topic filter: '+' only as a whole level, '#' only as the whole last
 * level. A malformed filter would make the broker drop the connection. */
static bool valid_filter(const char *f)
{
    if (!f || !*f || strnlen(f, MQTT_MAX_STRING + 1) > MQTT_MAX_STRING)
        return false;
    const char *level = f;
    for (;;) {
        const char *end = strchr(level, '/');
        size_t len = end ? (size_t)(end - level) : strlen(level);
        bool has_wild = memchr(level, '+', len) || memchr(level, '#', len);
        if (has_wild) {
            if (len != 1)
                return false;
            if (*level == '#' && end)
                return false;
        }
        if (!end)
            return true;
        level = end + 1;
    }
}

/* A shared-subscription group name. */
static bool valid_group(const char *g)
{
    return g && *g && strnlen(g, 1024) < 1024 && !strpbrk(g, "/+#");
}

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */

static loom_err parse_url(mqtt_adapter *a, const char *url, char *why, size_t why_len)
{
    const char *rest;
    if (strncmp(url, "mqtt://", 7) == 0) {
        a->tls = false;
        a->port = 1883;
        rest = url + 7;
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        a->tls = true;
        a->port = 8883;
        rest = url + 8;
    } else {
        snprintf(why, why_len, "expected mqtt://host[:port] or mqtts://host[:port]");
        return LOOM_ECONFIG;
    }

    const char *host_end;
    if (*rest == '[') {
        const char *close = strchr(rest, ']');
        size_t n = close ? (size_t)(close - rest - 1) : 0;
        char lit[64];
        if (!close || n == 0 || n >= sizeof lit) {
            snprintf(why, why_len, "malformed IPv6 address (expected [address])");
            return LOOM_ECONFIG;
        }
        memcpy(lit, rest + 1, n);
        lit[n] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, lit, &a6) != 1) {
            snprintf(why, why_len, "'%s' is not an IPv6 address", lit);
            return LOOM_ECONFIG;
        }
        a->peer_family = AF_INET6;
        memcpy(a->peer_addr, &a6, sizeof a6);
        host_end = close + 1;
    } else {
        host_end = rest;
        while (*host_end && *host_end != ':') {
            char c = *host_end;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_')) {
                snprintf(why, why_len,
                         "unexpected character '%c' in host (only "
                         "host[:port], no user, path or query)",
                         c);
                return LOOM_ECONFIG;
            }
            host_end++;
        }
        if (host_end == rest) {
            snprintf(why, why_len, "missing host");
            return LOOM_ECONFIG;
        }
    }
    size_t host_len = (size_t)(host_end - rest);
    if (host_len >= sizeof a->host_name || host_len > 255) {
        snprintf(why, why_len, "host name too long");
        return LOOM_ECONFIG;
    }
    memcpy(a->host_name, rest, host_len);
    a->host_name[host_len] = '\0';
    if (a->peer_family == 0) {
        struct in_addr a4;
        if (inet_pton(AF_INET, a->host_name, &a4) == 1) {
            a->peer_family = AF_INET;
            memcpy(a->peer_addr, &a4, sizeof a4);
        }
    }

    if (*host_end == ':') {
        long long port;
        const char *p = host_end + 1;
        if (strspn(p, "0123456789") != strlen(p) || strlen(p) > 5 ||
            !loom__parse_int(p, 1, 65535, &port)) {
            snprintf(why, why_len, "port must be a number from 1 to 65535");
            return LOOM_ECONFIG;
        }
        a->port = (int)port;
    } else if (*host_end) {
        snprintf(why, why_len, "unexpected '%s' after the host", host_end);
        return LOOM_ECONFIG;
    }
    return LOOM_OK;
}

static loom_err read_options(mqtt_adapter *a, const cJSON *o, char *why, size_t why_len)
{
    loom_err err;
    long long v;
    if (o && !cJSON_IsObject(o)) {
        snprintf(why, why_len, "broker: expected a mapping");
        return LOOM_ECONFIG;
    }
    if ((err = loom__opt_str(o, "client_id", "client_id", &a->client_id, why, why_len)) ||
        (err = loom__opt_str(o, "username", "username", &a->username, why, why_len)) ||
        (err = loom__opt_str(o, "password", "password", &a->password, why, why_len)))
        return err;
    if (a->client_id && !*a->client_id) {
        snprintf(why, why_len, "broker.client_id: must not be empty");
        return LOOM_ECONFIG;
    }
    char *pw_file = NULL;
    if ((err = loom__opt_str(o, "password_file", "password_file", &pw_file, why, why_len)))
        return err;
    if (pw_file && !a->password) /* an explicit password wins */
        err = loom__opt_first_line(pw_file, &a->password, why, why_len);
    free(pw_file);
    if (err)
        return err;

    v = a->keepalive;
    if ((err = loom__opt_int(o, "keepalive", 0, 65535, &v, why, why_len)))
        return err;
    a->keepalive = (int)v;
    v = a->session_expiry;
    if ((err = loom__opt_int(o, "session_expiry", 0, 4294967295LL, &v, why, why_len)))
        return err;
    a->session_expiry = (uint32_t)v;
    v = a->connect_timeout_ms;
    if ((err = loom__opt_int(o, "connect_timeout_ms", 1, 600000, &v, why, why_len)))
        return err;
    a->connect_timeout_ms = (int)v;
    v = a->reconnect_min_ms;
    if ((err = loom__opt_int(o, "reconnect_min_ms", 1, 600000, &v, why, why_len)))
        return err;
    a->reconnect_min_ms = (int)v;
    v = a->reconnect_max_ms;
    if ((err = loom__opt_int(o, "reconnect_max_ms", 1, 3600000, &v, why, why_len)))
        return err;
    a->reconnect_max_ms = (int)v;
    if (a->reconnect_max_ms < a->reconnect_min_ms) {
        snprintf(why, why_len, "broker.reconnect_max_ms (%d) is below reconnect_min_ms (%d)",
                 a->reconnect_max_ms, a->reconnect_min_ms);
        return LOOM_ECONFIG;
    }
    v = a->buffer;
    if ((err = loom__opt_int(o, "buffer", 0, 10000000, &v, why, why_len)))
        return err;
    a->buffer = (int)v;

    const cJSON *tls = loom__opt_get(o, "tls");
    if (tls && !cJSON_IsObject(tls)) {
        snprintf(why, why_len, "broker.tls: expected a mapping");
        return LOOM_ECONFIG;
    }
    if (tls && a->tls) { /* TLS settings only matter for mqtts:// */
        if ((err = loom__opt_str(tls, "ca", "tls.ca", &a->tls_ca, why, why_len)) ||
            (err = loom__opt_str(tls, "cert", "tls.cert", &a->tls_cert, why, why_len)) ||
            (err = loom__opt_str(tls, "key", "tls.key", &a->tls_key, why, why_len)))
            return err;
        const char *names[] = {"tls.ca", "tls.cert", "tls.key"};
        const char *paths[] = {a->tls_ca, a->tls_cert, a->tls_key};
        for (size_t i = 0; i < LOOM__ARRAY_LEN(paths); i++) {
            if (paths[i] && access(paths[i], R_OK) != 0) {
                snprintf(why, why_len, "broker.%s: cannot read %s: %s", names[i], paths[i],
                         strerror(errno));
                return LOOM_ECONFIG;
            }
        }
        const cJSON *verify = loom__opt_get(tls, "verify");
        if (verify) {
            if (!cJSON_IsBool(verify)) {
                snprintf(why, why_len, "broker.tls.verify: expected true or false");
                return LOOM_ECONFIG;
            }
            a->tls_verify = cJSON_IsTrue(verify);
        }
    }
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Subscription table (all under mu)                                         */

static bool same_group(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

static mqtt_sub *find_sub(mqtt_adapter *a, const char *filter, const char *group)
{
    for (mqtt_sub *s = a->subs; s; s = s->next)
        if (strcmp(s->filter, filter) == 0 && same_group(s->group, group))
            return s;
    return NULL;
}

static mqtt_sub *find_sub_id(mqtt_adapter *a, int id)
{
    for (mqtt_sub *s = a->subs; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void free_sub(mqtt_sub *s)
{
    if (!s)
        return;
    free(s->filter);
    free(s->group);
    free(s->mqtt_filter);
    free(s->tokens);
    free(s);
}

static void unlink_sub(mqtt_adapter *a, mqtt_sub *s)
{
    for (mqtt_sub **pp = &a->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            return;
        }
    }
}

/* The identifier of an MQTT filter: FNV-1a into 1..MQTT_MAX_SUB_ID, the
 * same in every process, then the next one no live subscription uses. */
static int alloc_id(mqtt_adapter *a, const char *mqtt_filter)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)mqtt_filter; *p; p++)
        h = (h ^ *p) * 16777619u;
    int id = (int)(h % MQTT_MAX_SUB_ID) + 1;
    while (find_sub_id(a, id))
        id = id >= MQTT_MAX_SUB_ID ? 1 : id + 1;
    return id;
}

static mqtt_sub *new_sub(mqtt_adapter *a, const char *filter, const char *group)
{
    mqtt_sub *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->filter = strdup(filter);
    s->group = group ? strdup(group) : NULL;
    s->mqtt_filter = group ? loom__asprintf("$share/%s/%s", group, filter) : strdup(filter);
    if (!s->filter || (group && !s->group) || !s->mqtt_filter) {
        free_sub(s);
        return NULL;
    }
    s->id = alloc_id(a, s->mqtt_filter);
    s->next = a->subs;
    a->subs = s;
    return s;
}

static bool sub_has_token(const mqtt_sub *s, const void *token)
{
    for (size_t i = 0; i < s->n_tokens; i++)
        if (s->tokens[i] == token)
            return true;
    return false;
}

static bool sub_add_token(mqtt_sub *s, void *token)
{
    if (s->n_tokens == s->cap_tokens) {
        size_t cap = s->cap_tokens ? s->cap_tokens * 2 : 2;
        void **t = realloc(s->tokens, cap * sizeof *t);
        if (!t)
            return false;
        s->tokens = t;
        s->cap_tokens = cap;
    }
    s->tokens[s->n_tokens++] = token;
    return true;
}

static void sub_remove_token(mqtt_sub *s, const void *token)
{
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (s->tokens[i] == token) {
            s->tokens[i] = s->tokens[--s->n_tokens];
            return;
        }
    }
}

static void unlink_req(mqtt_adapter *a, sub_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        a->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

static void free_req(sub_req *r)
{
    if (r) {
        free(r->mqtt_filter);
        free(r);
    }
}

/* ------------------------------------------------------------------------ */
/* TCP_NODELAY                                                               */

/* paho 1.3.12 never sets TCP_NODELAY and does not expose its socket, so
 * once connected we look for our TCP connections to the broker among the
 * process's descriptors and set it on them. Every MQTT connection to that
 * broker wants it, so touching another client's socket is harmless. The
 * descriptors found are kept for quick_ack(). */
static void set_nodelay(mqtt_adapter *a)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int self_fd = dirfd(d), n_found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long fd;
        if (!loom__parse_int(e->d_name, 0, INT_MAX, &fd) || fd == self_fd)
            continue;
        int type = 0;
        socklen_t len = sizeof type;
        if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
            continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getpeername((int)fd, (struct sockaddr *)&ss, &sl) != 0)
            continue;
        bool match = false;
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
            match = ntohs(s4->sin_port) == a->port &&
                    (a->peer_family == 0 ||
                     (a->peer_family == AF_INET && memcmp(&s4->sin_addr, a->peer_addr, 4) == 0));
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
            match = ntohs(s6->sin6_port) == a->port &&
                    (a->peer_family == 0 ||
                     (a->peer_family == AF_INET6 && memcmp(&s6->sin6_addr, a->peer_addr, 16) == 0));
        }
        int one = 1;
        if (match) {
            (void)setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (n_found < QUICKACK_MAX_FDS)
                atomic_store_explicit(&a->ack_fds[n_found++], (int)fd, memory_order_relaxed);
        }
    }
    closedir(d);
    atomic_store_explicit(&a->n_ack_fds, n_found, memory_order_release);
}

static void flush_queue(mqtt_adapter *a);

/* ACKs what the broker sent us now rather than after the kernel's
 * delayed-ACK timer (see "Delayed ACKs" at the top). A failure (the
 * descriptor went meanwhile) changes nothing. */
static void quick_ack(mqtt_adapter *a)
{
    int n = atomic_load_explicit(&a->n_ack_fds, memory_order_acquire), one = 1;
    for (int i = 0; i < n; i++)
        (void)setsockopt(atomic_load_explicit(&a->ack_fds[i], memory_order_relaxed), IPPROTO_TCP,
                         TCP_QUICKACK, &one, sizeof one);
}

static bool may_send_locked(const mqtt_adapter *a, int qos)
{
    return a->state == CS_CONNECTED && (qos == 0 || a->pub_inflight < a->recv_max);
}

static void flight_add_locked(mqtt_adapter *a, out_msg *o)
{
    o->a = a;
    o->gen = a->gen;
    o->prev = NULL;
    o->next = a->flight;
    if (a->flight)
        a->flight->prev = o;
    a->flight = o;
    a->pub_inflight++;
}

/* Takes o out of `flight`, giving back its window slot. */
static void flight_remove_locked(mqtt_adapter *a, out_msg *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        a->flight = o->next;
    if (o->next)
        o->next->prev = o->prev;
    o->next = o->prev = NULL;
    if (o->gen == a->gen && --a->pub_inflight <= 0)
        pthread_cond_broadcast(&a->cv);
}

/* After a PUBACK or a failure freed a slot: true when the caller is to
 * flush the queue into it (and `flushing` is now set for it). */
static bool claim_flush_locked(mqtt_adapter *a)
{
    bool flush = !a->flushing && a->q_head && may_send_locked(a, a->q_head->qos);
    if (flush)
        a->flushing = true;
    return flush;
}

/* Puts a message lost in flight back into the buffer: after those put back
 * before it, ahead of those published while disconnected. */
static void requeue_locked(mqtt_adapter *a, out_msg *o)
{
    out_msg **at = a->q_resent ? &a->q_resent->next : &a->q_head;
    o->next = *at;
    *at = o;
    if (!o->next)
        a->q_tail = o;
    a->q_resent = o;
    a->q_len++;
}

/* PUBACK (paho's threads): the broker has the message. */
static void on_pub_ok(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    out_msg *o = ctx;
    mqtt_adapter *a = o->a;
    quick_ack(a);
    lock(a);
    flight_remove_locked(a, o);
    bool flush = claim_flush_locked(a);
    unlock(a);
    free(o);
    if (flush)
        flush_queue(a);
}

/* Not acknowledged (paho's threads): lost with the connection — kept for
 * the next one unless closing or the buffer is full — or refused by the
 * broker (a PUBACK reason code >= 0x80). */
static void on_pub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
    out_msg *o = ctx;
    mqtt_adapter *a = o->a;
    int code = r ? r->code : MQTTASYNC_FAILURE;
    lock(a);
    flight_remove_locked(a, o);
    bool keep = code == MQTTASYNC_OPERATION_INCOMPLETE && !a->closing && !a->stopped &&
                a->q_len < (size_t)a->buffer;
    if (keep)
        requeue_locked(a, o);
    unsigned long n = 0;
    if (!keep && !a->closing) {
        a->undelivered++;
        int64_t now = loom__mono_ms();
        if (now - a->undelivered_warn_ms >= DROP_WARN_INTERVAL_MS) {
            n = a->undelivered;
            a->undelivered = 0;
            a->undelivered_warn_ms = now;
        }
    }
    bool flush = claim_flush_locked(a);
    bool report = n && enter_locked(a);
    unlock(a);
    if (report) {
        A_LOG(a, LOOM_LOG_WARN,
              "mqtt: %lu QoS >= 1 message(s) not delivered since the last report (last on %s: "
              "%s)",
              n, o->topic,
              code == MQTTASYNC_OPERATION_INCOMPLETE ? "connection lost, buffer full"
              : r && r->reasonCode                   ? MQTTReasonCode_toString(r->reasonCode)
                                                     : paho_str(code));
        leave(a);
    }
    if (!keep)
        free(o);
    if (flush)
        flush_queue(a);
}

/* ------------------------------------------------------------------------ */
/* Connecting                                                                */

/* Schedules the next attempt with exponential backoff and +-20% jitter, so
 * instances that lost the same broker do not all come back at once. */
static int schedule_retry_locked(mqtt_adapter *a)
{
    int delay = a->next_delay_ms;
    int span = delay / 5;
    if (span > 0)
        delay += (int)(rand_r(&a->rng) % (unsigned)(2 * span + 1)) - span;
    if (delay < 1)
        delay = 1;
    a->retry_at = loom__mono_ms() + delay;
    a->next_delay_ms =
        a->next_delay_ms > a->reconnect_max_ms / 2 ? a->reconnect_max_ms : a->next_delay_ms * 2;
    a->state = CS_WAITING;
    pthread_cond_broadcast(&a->cv);
    return delay;
}

static void failure_text(const MQTTAsync_failureData5 *r, char *buf, size_t n)
{
    if (!r)
        snprintf(buf, n, "unknown error");
    else if (r->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR)
        snprintf(buf, n, "%s (reason code 0x%02x)", MQTTReasonCode_toString(r->reasonCode),
                 (unsigned)r->reasonCode);
    else if (r->code >= MQTTREASONCODE_UNSPECIFIED_ERROR && r->code <= 0xff)
        /* a refused CONNACK: paho passes its reason code in `code` */
        snprintf(buf, n, "broker refused: %s (reason code 0x%02x)",
                 MQTTReasonCode_toString((enum MQTTReasonCodes)r->code), (unsigned)r->code);
    else if (r->message)
        snprintf(buf, n, "%s", r->message);
    else
        snprintf(buf, n, "%s", paho_str(r->code));
}

/* Logs a failed attempt: a warning for the first after a success and then
 * every FAIL_WARN_INTERVAL_MS, debug lines in between. */
static void log_failure(mqtt_adapter *a, const char *why, int delay_ms)
{
    lock(a);
    int64_t now = loom__mono_ms();
    unsigned count = ++a->fail_count;
    bool warn = count == 1 || now - a->fail_warn_ms >= FAIL_WARN_INTERVAL_MS;
    if (warn)
        a->fail_warn_ms = now;
    unlock(a);
    A_LOG(a, warn ? LOOM_LOG_WARN : LOOM_LOG_DEBUG,
          "mqtt: cannot connect to %s:%d: %s (attempt %u, retrying in %d ms)", a->host_name,
          a->port, why, count, delay_ms);
}

static held_msg *take_held_locked(mqtt_adapter *a, int64_t now);
static void deliver_held(mqtt_adapter *a, held_msg *list);
static void report_held_drops(mqtt_adapter *a);
static void on_connect_ok(void *ctx, MQTTAsync_successData5 *r);
static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *r);
static void on_disconnect_done(void *ctx, MQTTAsync_successData5 *r);
static void on_disconnect_fail(void *ctx, MQTTAsync_failureData5 *r);

/* Starts one connection attempt (the retry thread, without mu). */
static int start_connect(mqtt_adapter *a)
{
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;

    co.keepAliveInterval = a->keepalive;
    co.connectTimeout = (a->connect_timeout_ms + 999) / 1000;
    co.automaticReconnect = 0;
    co.username = a->username;
    co.password = a->password;
    co.onSuccess5 = on_connect_ok;
    co.onFailure5 = on_connect_fail;
    co.context = a;
    /* Clean start unless the session is meant to outlive the connection. */
    co.cleanstart = a->session_expiry == 0;
    if (a->session_expiry > 0) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        p.value.integer4 = a->session_expiry;
        if (MQTTProperties_add(&props, &p) != 0)
            return PAHO_MEMORY_ERROR_CODE;
        co.connectProperties = &props;
    }
    if (a->max_packet) {
        /* The broker does not send us larger packets (it drops them), so an
         * oversized message is never read into memory here. */
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE};
        p.value.integer4 = a->max_packet;
        if (MQTTProperties_add(&props, &p) != 0) {
            MQTTProperties_free(&props);
            return PAHO_MEMORY_ERROR_CODE;
        }
        co.connectProperties = &props;
    }
    if (a->will_topic) {
        /* Retained and empty: clears this instance's retained announcement. */
        will.topicName = a->will_topic;
        will.message = NULL;
        will.payload.len = 0;
        will.payload.data = NULL;
        will.retained = 1;
        will.qos = 1;
        co.will = &will;
    }
    if (a->tls) {
        ssl.trustStore = a->tls_ca;
        ssl.keyStore = a->tls_cert;
        ssl.privateKey = a->tls_key;
        ssl.enableServerCertAuth = a->tls_verify;
        ssl.verify = a->tls_verify;
        co.ssl = &ssl;
    }
    int rc = MQTTAsync_connect(a->client, &co);
    MQTTProperties_free(&props);
    return rc;
}

/* Waits on cv until due (monotonic ms), a signal or a spurious wake-up;
 * due 0: no time limit. mu held. */
static void wait_until_locked(mqtt_adapter *a, int64_t due)
{
    if (!due) {
        pthread_cond_wait(&a->cv, &a->mu);
        return;
    }
    int64_t wait = due - loom__mono_ms();
    if (wait <= 0)
        return;
    struct timespec ts = loom__mono_after(wait);
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
}

/* The retry thread: starts each attempt when its backoff delay is over,
 * and drops held messages nobody claimed in time. */
static void *retry_main(void *arg)
{
    mqtt_adapter *a = arg;
    lock(a);
    while (!a->quit) {
        int64_t now = loom__mono_ms();
        int64_t hold_due = a->held_head ? a->held_head->since_mono + HOLD_MS : 0;
        if (hold_due && now >= hold_due) {
            held_msg *claimed = take_held_locked(a, now);
            unlock(a);
            deliver_held(a, claimed);
            report_held_drops(a);
            lock(a);
            continue;
        }
        if (a->state != CS_WAITING || a->closing) {
            wait_until_locked(a, hold_due);
            continue;
        }
        if (now < a->retry_at) {
            wait_until_locked(a, hold_due && hold_due < a->retry_at ? hold_due : a->retry_at);
            continue;
        }
        a->state = CS_CONNECTING;
        bool report = a->report_connecting;
        a->report_connecting = false;
        unlock(a);
        if (report) {
            /* From this thread, before its first attempt: CONNECTING always
             * comes before CONNECTED, and connect() makes no upcall. */
            A_LOG(a, LOOM_LOG_INFO, "mqtt: connecting to %s:%d%s", a->host_name, a->port,
                  a->tls ? " (TLS)" : "");
            a->host.state_changed(a->host.core, LOOM_BROKER_CONNECTING, NULL);
            lock(a);
            bool closed = a->closing;
            if (closed) {
                a->state = CS_DOWN;
                pthread_cond_broadcast(&a->cv);
                continue; /* with mu held, as the loop expects */
            }
            unlock(a);
        }
        int rc = start_connect(a);
        lock(a);
        if (rc != MQTTASYNC_SUCCESS && a->state == CS_CONNECTING) {
            if (a->closing) {
                a->state = CS_DOWN;
                pthread_cond_broadcast(&a->cv);
                continue;
            }
            int delay = schedule_retry_locked(a);
            unlock(a);
            log_failure(a, paho_str(rc), delay);
            lock(a);
        }
    }
    unlock(a);
    return NULL;
}

/* Sends DISCONNECT (normal disconnection: the broker drops the will). */
static void issue_disconnect(mqtt_adapter *a)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
    d.timeout = 0; /* close() waited for the PUBACKs already */
    d.reasonCode = MQTTREASONCODE_NORMAL_DISCONNECTION;
    d.onSuccess5 = on_disconnect_done;
    d.onFailure5 = on_disconnect_fail;
    d.context = a;
    int rc = MQTTAsync_disconnect(a->client, &d);
    if (rc != MQTTASYNC_SUCCESS) {
        lock(a);
        a->state = CS_DOWN;
        pthread_cond_broadcast(&a->cv);
        unlock(a);
    }
}

/* The CONNACK's Receive Maximum: 65535 when absent (MQTT 5, 3.2.2.3.3). */
static int receive_maximum(const MQTTAsync_successData5 *r)
{
    if (!r || !MQTTProperties_hasProperty((MQTTProperties *)&r->properties,
                                          MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
        return 65535;
    int v = MQTTProperties_getNumericValue((MQTTProperties *)&r->properties,
                                           MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    return v > 0 ? v : 65535;
}

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *r)
{
    mqtt_adapter *a = ctx;
    bool ids = true;
    if (r && MQTTProperties_hasProperty(&r->properties,
                                        MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIERS_AVAILABLE))
        ids = MQTTProperties_getNumericValue(
                  &r->properties, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0;
    bool session = r && r->alt.connect.sessionPresent;

    lock(a);
    a->sub_ids = ids;
    if (a->closing || a->stopped) {
        /* close() came while this attempt was under way. */
        a->state = CS_DISCONNECTING;
        unlock(a);
        issue_disconnect(a);
        return;
    }
    a->state = CS_CONNECTED;
    a->gen++; /* what is still in flight from the last connection holds no slot */
    a->pub_inflight = 0;
    a->recv_max = receive_maximum(r);
    a->flushing = a->q_head != NULL;
    a->next_delay_ms = a->reconnect_min_ms;
    a->fail_count = 0;
    a->lost_reason[0] = '\0';
    bool up = enter_locked(a);
    unlock(a);
    if (!up)
        return;
    set_nodelay(a);
    flush_queue(a);
    A_LOG(a, LOOM_LOG_INFO, "mqtt: connected to %s:%d as %s%s%s", a->host_name, a->port,
          a->client_id, session ? " (session resumed)" : "",
          ids ? "" : " (no subscription identifiers)");
    a->host.state_changed(a->host.core, LOOM_BROKER_CONNECTED, NULL);
    leave(a);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *r)
{
    mqtt_adapter *a = ctx;
    char why[256];
    failure_text(r, why, sizeof why);
    lock(a);
    if (a->state != CS_CONNECTING) { /* not ours to handle (paho reports twice?) */
        unlock(a);
        return;
    }
    if (a->closing || a->stopped) {
        a->state = CS_DOWN;
        pthread_cond_broadcast(&a->cv);
        unlock(a);
        return;
    }
    int delay = schedule_retry_locked(a);
    bool up = enter_locked(a);
    unlock(a);
    if (!up)
        return;
    log_failure(a, why, delay);
    leave(a);
}

/* The broker sent DISCONNECT: keep its reason for the loss report. */
static void on_server_disconnect(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
    mqtt_adapter *a = ctx;
    char reason[128] = "";
    MQTTProperty *p =
        props ? MQTTProperties_getProperty(props, MQTTPROPERTY_CODE_REASON_STRING) : NULL;
    if (p && p->value.data.data && p->value.data.len > 0)
        snprintf(reason, sizeof reason, ": %.*s", p->value.data.len > 100 ? 100 : p->value.data.len,
                 p->value.data.data);
    lock(a);
    snprintf(a->lost_reason, sizeof a->lost_reason, "broker disconnected us: %s (0x%02x)%s",
             MQTTReasonCode_toString(rc), (unsigned)rc, reason);
    unlock(a);
}

static void on_connection_lost(void *ctx, char *cause)
{
    mqtt_adapter *a = ctx;
    char why[200];
    lock(a);
    if (a->state != CS_CONNECTED && a->state != CS_DISCONNECTING) {
        unlock(a);
        return;
    }
    if (a->closing || a->stopped) {
        a->state = CS_DOWN;
        pthread_cond_broadcast(&a->cv);
        unlock(a);
        return;
    }
    if (a->lost_reason[0])
        snprintf(why, sizeof why, "%s", a->lost_reason);
    else
        snprintf(why, sizeof why, "connection lost%s%s", cause ? ": " : "", cause ? cause : "");
    a->lost_reason[0] = '\0';
    a->next_delay_ms = a->reconnect_min_ms;
    int delay = schedule_retry_locked(a);
    bool up = enter_locked(a);
    unlock(a);
    if (!up)
        return;
    A_LOG(a, LOOM_LOG_WARN, "mqtt: %s:%d: %s; reconnecting in %d ms", a->host_name, a->port, why,
          delay);
    a->host.state_changed(a->host.core, LOOM_BROKER_DISCONNECTED, why);
    leave(a);
}

static void disconnect_finished(mqtt_adapter *a, const char *how)
{
    lock(a);
    a->state = CS_DOWN;
    pthread_cond_broadcast(&a->cv);
    bool up = enter_locked(a);
    unlock(a);
    if (!up)
        return;
    A_LOG(a, LOOM_LOG_INFO, "mqtt: disconnected from %s:%d%s", a->host_name, a->port, how);
    leave(a);
}

static void on_disconnect_done(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    disconnect_finished(ctx, "");
}

static void on_disconnect_fail(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)r;
    disconnect_finished(ctx, " (not cleanly)");
}

/* ------------------------------------------------------------------------ */
/* Incoming messages                                                         */

static void note_drop(mqtt_adapter *a, const char *topic)
{
    lock(a);
    a->dropped++;
    int64_t now = loom__mono_ms();
    unsigned long n = 0;
    if (now - a->drop_warn_ms >= DROP_WARN_INTERVAL_MS) {
        n = a->dropped;
        a->dropped = 0;
        a->drop_warn_ms = now;
    }
    unlock(a);
    if (n)
        A_LOG(a, LOOM_LOG_WARN,
              "mqtt: worker queue full, dropped %lu message(s) since the last report (last "
              "on %s)",
              n, topic);
}

/* Appends a subscription's tokens to the list being built. */
static bool collect(void ***tokens, size_t *n, size_t *cap, void **stack, const mqtt_sub *s)
{
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (*n == *cap) {
            size_t ncap = *cap * 2;
            void **t =
                *tokens == stack ? malloc(ncap * sizeof *t) : realloc(*tokens, ncap * sizeof *t);
            if (!t)
                return false;
            if (*tokens == stack)
                memcpy(t, stack, *n * sizeof *t);
            *tokens = t;
            *cap = ncap;
        }
        (*tokens)[(*n)++] = s->tokens[i];
    }
    return true;
}

/* --- held messages (unknown subscription identifiers) --- */

static bool held_claimed_locked(mqtt_adapter *a, const held_msg *h)
{
    for (int i = 0; i < h->n_ids; i++)
        if (find_sub_id(a, h->ids[i]))
            return true;
    return false;
}

/* Keeps a copy of a message none of whose identifiers is known (mu held).
 * false when it cannot be held: over the limits, or out of memory. */
static bool hold_locked(mqtt_adapter *a, const char *topic, const MQTTAsync_message *m,
                        const int *ids, int n_ids)
{
    const MQTTProperties *props = &m->properties;
    MQTTProperty *rp =
        MQTTProperties_getProperty((MQTTProperties *)props, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
    MQTTProperty *cp =
        MQTTProperties_getProperty((MQTTProperties *)props, MQTTPROPERTY_CODE_CORRELATION_DATA);
    size_t rlen = rp && rp->value.data.data && rp->value.data.len > 0 &&
                          !memchr(rp->value.data.data, '\0', (size_t)rp->value.data.len)
                      ? (size_t)rp->value.data.len + 1
                      : 0;
    size_t clen =
        cp && cp->value.data.data && cp->value.data.len > 0 ? (size_t)cp->value.data.len : 0;
    size_t len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0;
    size_t tlen = strlen(topic) + 1;
    size_t idlen = (size_t)n_ids * sizeof(int);
    size_t bytes = sizeof(held_msg) + idlen + tlen + len + rlen + clen;
    if (a->held_n >= HOLD_MAX_MSGS || bytes > HOLD_MAX_BYTES - a->held_bytes)
        return false;
    held_msg *h = malloc(bytes);
    if (!h)
        return false;
    memset(h, 0, sizeof *h);
    char *at = (char *)h + sizeof *h;
    memcpy(h->ids, ids, idlen);
    at += idlen;
    h->n_ids = n_ids;
    h->topic = memcpy(at, topic, tlen);
    at += tlen;
    if (len)
        h->data = memcpy(at, m->payload, len);
    h->len = len;
    at += len;
    if (rlen) {
        memcpy(at, rp->value.data.data, rlen - 1);
        at[rlen - 1] = '\0';
        h->rt = at;
        at += rlen;
    }
    if (clen) {
        h->corr = memcpy(at, cp->value.data.data, clen);
        h->corr_len = clen;
    }
    h->retained = m->retained != 0;
    h->bytes = bytes;
    h->since_mono = loom__mono_ms();
    if (!a->held_head)
        pthread_cond_broadcast(&a->cv); /* the retry thread expires them */
    if (a->held_tail)
        a->held_tail->next = h;
    else
        a->held_head = h;
    a->held_tail = h;
    a->held_n++;
    a->held_bytes += bytes;
    return true;
}

/* Takes out, in arrival order, the held messages a live subscription now
 * claims (returned) and those held for HOLD_MS already (freed, counted in
 * held_dropped). mu held. */
static held_msg *take_held_locked(mqtt_adapter *a, int64_t now)
{
    held_msg *claimed = NULL, **tail = &claimed;
    held_msg **pp = &a->held_head, *last = NULL;
    while (*pp) {
        held_msg *h = *pp;
        bool take = held_claimed_locked(a, h);
        if (take || now - h->since_mono >= HOLD_MS) {
            *pp = h->next;
            a->held_n--;
            a->held_bytes -= h->bytes;
            h->next = NULL;
            if (take) {
                *tail = h;
                tail = &h->next;
            } else {
                a->held_dropped++;
                free(h);
            }
            continue;
        }
        last = h;
        pp = &h->next;
    }
    a->held_tail = last;
    return claimed;
}

/* Reports messages dropped from the hold (no lock held). */
static void report_held_drops(mqtt_adapter *a)
{
    lock(a);
    unsigned long n = a->held_dropped;
    a->held_dropped = 0;
    unlock(a);
    if (n)
        A_LOG(a, LOOM_LOG_WARN,
              "mqtt: dropped %lu message(s) whose subscription identifiers no subscription of "
              "this process claimed within %d ms (a durable session's old subscriptions?)",
              n, HOLD_MS);
}

/* Delivers the messages take_held_locked returned, in order, to the tokens
 * of the subscriptions their identifiers name now; frees them. No lock
 * held. */
static void deliver_held(mqtt_adapter *a, held_msg *list)
{
    while (list) {
        held_msg *h = list;
        list = h->next;
        void *stack[16];
        void **tokens = stack;
        size_t n = 0, cap = LOOM__ARRAY_LEN(stack);
        bool oom = false;
        lock(a);
        for (int i = 0; i < h->n_ids && !oom; i++) {
            const mqtt_sub *sub = find_sub_id(a, h->ids[i]);
            if (sub)
                oom = !collect(&tokens, &n, &cap, stack, sub);
        }
        bool up = enter_locked(a);
        unlock(a);
        if (up) {
            if (oom)
                A_LOG(a, LOOM_LOG_ERROR,
                      "mqtt: out of memory, held message on %s not delivered to every "
                      "subscription",
                      h->topic);
            loom_delivery d = {.topic = h->topic,
                               .data = h->data,
                               .len = h->len,
                               .response_topic = h->rt,
                               .correlation = h->corr,
                               .correlation_len = h->corr_len,
                               .retained = h->retained};
            for (size_t i = 0; i < n; i++) {
                d.token = tokens[i];
                if (a->host.deliver(a->host.core, &d) == LOOM_EOVERLOAD)
                    note_drop(a, h->topic);
            }
            leave(a);
        }
        if (tokens != stack)
            free(tokens);
        free(h);
    }
}

/* Delivers what the subscriptions registered so far claim from the hold. */
static void release_held(mqtt_adapter *a)
{
    lock(a);
    held_msg *claimed = a->held_head ? take_held_locked(a, loom__mono_ms()) : NULL;
    unlock(a);
    deliver_held(a, claimed);
    report_held_drops(a);
}

static void free_held(mqtt_adapter *a)
{
    while (a->held_head) {
        held_msg *h = a->held_head;
        a->held_head = h->next;
        free(h);
    }
    a->held_tail = NULL;
    a->held_n = 0;
    a->held_bytes = 0;
}

/* paho's receive thread. Never blocks: deliver() only enqueues. Always
 * takes the message (returns 1): a message the core cannot take is
 * dropped, not redelivered in a loop. */
static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
    mqtt_adapter *a = ctx;
    void *stack[16];
    void **tokens = stack;
    size_t n = 0, cap = LOOM__ARRAY_LEN(stack);
    char rt_stack[256];
    char *rt = NULL;
    bool oom = false;
    int ids_stack[8], *ids = ids_stack;

    /* A burst of messages we answer nothing to (replies to calls made in a
     * batch) would wait on the broker's Nagle for our delayed ACK. */
    quick_ack(a);
    /* loom topics never hold NUL; paho reports such names with topic_len. */
    if (!topic || !m || (topic_len > 0 && memchr(topic, '\0', (size_t)topic_len)))
        goto out;

    MQTTProperties *props = &m->properties;
    int n_ids = MQTTProperties_propertyCount(props, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER);
    if (n_ids > (int)LOOM__ARRAY_LEN(ids_stack) && !(ids = malloc((size_t)n_ids * sizeof *ids))) {
        ids = ids_stack;
        n_ids = (int)LOOM__ARRAY_LEN(ids_stack);
    }
    for (int i = 0; i < n_ids; i++)
        ids[i] =
            MQTTProperties_getNumericValueAt(props, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER, i);

    bool held = false;
    lock(a);
    /* Older held messages a subscription claims by now go first. */
    held_msg *claimed = a->held_head ? take_held_locked(a, loom__mono_ms()) : NULL;
    if (n_ids > 0) {
        for (int i = 0; i < n_ids && !oom; i++) {
            const mqtt_sub *s = find_sub_id(a, ids[i]);
            if (s)
                oom = !collect(&tokens, &n, &cap, stack, s);
        }
        if (n == 0 && !oom)
            held = hold_locked(a, topic, m, ids, n_ids);
    } else {
        /* A broker without subscription identifiers: match the filters. */
        for (const mqtt_sub *s = a->subs; s && !oom; s = s->next)
            if (loom_topic_matches(s->filter, topic))
                oom = !collect(&tokens, &n, &cap, stack, s);
    }
    bool up = enter_locked(a);
    unlock(a);
    if (!up) {
        deliver_held(a, claimed); /* frees them: `stopped` makes no upcall */
        goto out;
    }
    deliver_held(a, claimed);
    report_held_drops(a);
    if (held) {
        leave(a);
        goto out;
    }
    if (n == 0) {
        /* e.g. a durable session's subscription this process no longer has,
         * with the hold full */
        if (oom)
            A_LOG(a, LOOM_LOG_ERROR, "mqtt: out of memory, dropped a message on %s", topic);
        else
            A_LOG(a, LOOM_LOG_DEBUG, "mqtt: dropped a message on %s: no subscription of ours",
                  topic);
        leave(a);
        goto out;
    }

    loom_delivery d = {.topic = topic,
                       .data = m->payload,
                       .len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0,
                       .retained = m->retained != 0};
    MQTTProperty *p = MQTTProperties_getProperty(props, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
    if (p && p->value.data.data && p->value.data.len > 0) {
        /* paho's strings are length-delimited: make a C string. */
        size_t len = (size_t)p->value.data.len;
        rt = len < sizeof rt_stack ? rt_stack : malloc(len + 1);
        if (rt && !memchr(p->value.data.data, '\0', len)) {
            memcpy(rt, p->value.data.data, len);
            rt[len] = '\0';
            d.response_topic = rt;
        }
    }
    p = MQTTProperties_getProperty(props, MQTTPROPERTY_CODE_CORRELATION_DATA);
    if (p && p->value.data.data && p->value.data.len > 0) {
        d.correlation = p->value.data.data;
        d.correlation_len = (size_t)p->value.data.len;
    }
    if (oom)
        A_LOG(a, LOOM_LOG_ERROR,
              "mqtt: out of memory, message on %s not delivered to every "
              "subscription",
              topic);
    for (size_t i = 0; i < n; i++) {
        d.token = tokens[i];
        if (a->host.deliver(a->host.core, &d) == LOOM_EOVERLOAD)
            note_drop(a, topic);
    }
    leave(a);

out:
    if (ids != ids_stack)
        free(ids);
    if (rt && rt != rt_stack)
        free(rt);
    if (tokens != stack)
        free(tokens);
    if (m)
        MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Subscribing                                                               */

static void sub_finished(sub_req *r, const MQTTAsync_failureData5 *fail, int reason)
{
    mqtt_adapter *a = r->a;
    lock(a);
    unlink_req(a, r);
    bool up = enter_locked(a);
    unlock(a);
    if (up) {
        /* Refused by the broker: LOOM_EUNAVAILABLE. Not answered (the
         * connection went first): LOOM_EIO; the core subscribes again on the
         * next CONNECTED anyway. */
        loom_err err = LOOM_OK;
        if (reason >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
            err = LOOM_EUNAVAILABLE;
            A_LOG(a, LOOM_LOG_WARN,
                  "mqtt: broker refused the subscription to %s: %s (reason code 0x%02x)",
                  r->mqtt_filter, MQTTReasonCode_toString((enum MQTTReasonCodes)reason),
                  (unsigned)reason);
        } else if (fail) {
            err = LOOM_EIO;
            char why[256];
            failure_text(fail, why, sizeof why);
            A_LOG(a, LOOM_LOG_DEBUG, "mqtt: subscription to %s not completed: %s", r->mqtt_filter,
                  why);
        }
        if (a->host.subscribed)
            a->host.subscribed(a->host.core, r->token, err);
        leave(a);
    }
    free_req(r);
}

static void on_sub_ok(void *ctx, MQTTAsync_successData5 *r)
{
    /* One filter per SUBSCRIBE: paho puts its reason code in reasonCode
     * (alt.sub is only filled for several filters). */
    sub_finished(ctx, NULL, r ? (int)r->reasonCode : 0);
}

static void on_sub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
    static const MQTTAsync_failureData5 none = MQTTAsync_failureData5_initializer;
    sub_finished(ctx, r ? r : &none, r ? (int)r->reasonCode : 0);
}

static loom_err mqtt_subscribe(void *self, const char *filter, const char *group, void *token,
                               int qos)
{
    mqtt_adapter *a = self;
    if (!a || !valid_filter(filter) || (group && !valid_group(group)) || qos < 0 || qos > 2 ||
        strlen(filter) + (group ? strlen(group) + 8 : 0) > MQTT_MAX_STRING)
        return LOOM_EINVAL;

    sub_req *r = calloc(1, sizeof *r);
    if (!r)
        return LOOM_ENOMEM;
    r->a = a;
    r->token = token;

    lock(a);
    if (a->state != CS_CONNECTED || a->closing) {
        unlock(a);
        free(r);
        return LOOM_EUNAVAILABLE;
    }
    bool created = false, added = false;
    mqtt_sub *s = find_sub(a, filter, group);
    if (!s) {
        if (!(s = new_sub(a, filter, group)))
            goto nomem;
        created = true;
    }
    if (!sub_has_token(s, token)) {
        if (!sub_add_token(s, token))
            goto nomem;
        added = true;
    }
    if (!(r->mqtt_filter = strdup(s->mqtt_filter)))
        goto nomem;
    int id = s->id;
    bool use_ids = a->sub_ids;
    r->next = a->reqs;
    if (a->reqs)
        a->reqs->prev = r;
    a->reqs = r;
    unlock(a);

    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onSuccess5 = on_sub_ok;
    ro.onFailure5 = on_sub_fail;
    ro.context = r;
    /* noLocal must stay 0 (shared subscriptions forbid it, and an instance
     * may call its own commands); retainAsPublished 0 makes the retain flag
     * mean "replayed on subscribe". */
    ro.subscribeOptions.noLocal = 0;
    ro.subscribeOptions.retainAsPublished = 0;
    ro.subscribeOptions.retainHandling = 0;
    int rc = MQTTASYNC_SUCCESS;
    if (use_ids) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER};
        p.value.integer4 = (unsigned)id;
        if (MQTTProperties_add(&ro.properties, &p) != 0)
            rc = PAHO_MEMORY_ERROR_CODE;
    }
    if (rc == MQTTASYNC_SUCCESS)
        rc = MQTTAsync_subscribe(a->client, r->mqtt_filter, qos, &ro);
    MQTTProperties_free(&ro.properties);
    if (rc == MQTTASYNC_SUCCESS) {
        /* A durable session's messages held for this identifier. */
        release_held(a);
        return LOOM_OK;
    }

    /* Not sent, so paho never calls back: undo what this call added. */
    lock(a);
    unlink_req(a, r);
    if ((s = find_sub(a, filter, group))) {
        if (added)
            sub_remove_token(s, token);
        if (created && s->n_tokens == 0) {
            unlink_sub(a, s);
            free_sub(s);
        }
    }
    unlock(a);
    A_LOG(a, LOOM_LOG_DEBUG, "mqtt: cannot subscribe to %s: %s", r->mqtt_filter, paho_str(rc));
    free_req(r);
    return map_paho(rc);

nomem:
    if (s && added)
        sub_remove_token(s, token);
    if (s && created && s->n_tokens == 0) {
        unlink_sub(a, s);
        free_sub(s);
    }
    unlock(a);
    free(r);
    return LOOM_ENOMEM;
}

static loom_err mqtt_unsubscribe(void *self, const char *filter, const char *group, void *token)
{
    mqtt_adapter *a = self;
    if (!a || !filter || (group && !valid_group(group)))
        return LOOM_EINVAL;
    lock(a);
    mqtt_sub *s = find_sub(a, filter, group);
    if (!s || !sub_has_token(s, token)) {
        unlock(a);
        return LOOM_ENOTFOUND;
    }
    sub_remove_token(s, token);
    char *send = NULL;
    if (s->n_tokens == 0) {
        unlink_sub(a, s);
        if (a->state == CS_CONNECTED && !a->closing) {
            send = s->mqtt_filter; /* taken over */
            s->mqtt_filter = NULL;
        }
        free_sub(s);
    }
    unlock(a);
    if (send) {
        /* Best effort: if it is lost with the connection, a clean-start
         * session forgets the subscription anyway; a durable one delivers
         * messages with an identifier nobody maps, which are dropped. */
        int rc = MQTTAsync_unsubscribe(a->client, send, NULL);
        if (rc != MQTTASYNC_SUCCESS)
            A_LOG(a, LOOM_LOG_DEBUG, "mqtt: cannot unsubscribe from %s: %s", send, paho_str(rc));
        free(send);
    }
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Publishing                                                                */

static int add_string_prop(MQTTProperties *props, enum MQTTPropertyCodes id, const void *data,
                           size_t len)
{
    MQTTProperty p = {.identifier = id};
    p.value.data.data = (char *)data;
    p.value.data.len = (int)len;
    return MQTTProperties_add(props, &p);
}

/* Hands one message to paho (any thread, without mu). paho copies the
 * payload and the properties. `track` (QoS >= 1: the message's copy,
 * already in `flight`; else NULL) becomes the context of paho's outcome
 * callbacks. Returns paho's code; on failure no callback runs. */
static int paho_publish(mqtt_adapter *a, const char *topic, const void *data, size_t len, int qos,
                        bool retain, const char *rt, const void *corr, size_t corr_len,
                        const char *status, out_msg *track)
{
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)data;
    msg.payloadlen = (int)len;
    msg.qos = qos;
    msg.retained = retain;

    static const char content_type[] = "application/json";
    int prc = add_string_prop(&msg.properties, MQTTPROPERTY_CODE_CONTENT_TYPE, content_type,
                              sizeof content_type - 1);
    if (prc == 0 && rt)
        prc = add_string_prop(&msg.properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC, rt, strlen(rt));
    if (prc == 0 && corr_len > 0)
        prc = add_string_prop(&msg.properties, MQTTPROPERTY_CODE_CORRELATION_DATA, corr, corr_len);
    if (prc == 0 && status) {
        MQTTProperty up = {.identifier = MQTTPROPERTY_CODE_USER_PROPERTY};
        up.value.data.data = (char *)"status";
        up.value.data.len = 6;
        up.value.value.data = (char *)status;
        up.value.value.len = (int)strlen(status);
        prc = MQTTProperties_add(&msg.properties, &up);
    }
    int rc = PAHO_MEMORY_ERROR_CODE;
    if (prc == 0) {
        /* paho takes the properties from the response options; without
         * them it would send none. */
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        if (track) {
            ro.onSuccess5 = on_pub_ok;
            ro.onFailure5 = on_pub_fail;
            ro.context = track;
        }
        rc = MQTTAsync_sendMessage(a->client, topic, &msg, &ro);
    }
    MQTTProperties_free(&msg.properties);
    return rc;
}

/* paho's queue is full (connected, but the broker does not keep up). */
static bool paho_full(int rc)
{
    return rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_NO_MORE_MSGIDS ||
           rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT;
}

static out_msg *out_new(const loom_publish *p)
{
    size_t tlen = strlen(p->topic) + 1;
    size_t rlen = p->response_topic ? strlen(p->response_topic) + 1 : 0;
    size_t slen = p->status ? strlen(p->status) + 1 : 0;
    out_msg *o = malloc(sizeof *o + tlen + p->len + rlen + p->correlation_len + slen);
    if (!o)
        return NULL;
    char *at = (char *)(o + 1);
    memset(o, 0, sizeof *o);
    o->topic = memcpy(at, p->topic, tlen);
    at += tlen;
    if (p->len > 0)
        o->data = memcpy(at, p->data, p->len);
    o->len = p->len;
    at += p->len;
    if (rlen) {
        o->rt = memcpy(at, p->response_topic, rlen);
        at += rlen;
    }
    if (p->correlation_len > 0) {
        o->corr = memcpy(at, p->correlation, p->correlation_len);
        o->corr_len = p->correlation_len;
        at += p->correlation_len;
    }
    if (slen)
        o->status = memcpy(at, p->status, slen);
    o->qos = p->qos;
    o->retain = p->retain;
    return o;
}

static void free_queue(mqtt_adapter *a)
{
    while (a->q_head) {
        out_msg *o = a->q_head;
        a->q_head = o->next;
        free(o);
    }
    a->q_tail = NULL;
    a->q_len = 0;
    a->q_resent = NULL;
}

/* Hands one message to paho (without mu). A QoS >= 1 one was put into
 * `flight` by the caller, under mu, in the same critical section that saw
 * a free window slot (may_send_locked()); on success it belongs to paho's
 * callbacks, on failure the caller keeps it (taken out of `flight`). */
static int send_one(mqtt_adapter *a, out_msg *o)
{
    bool track = o->qos > 0;
    int rc = paho_publish(a, o->topic, o->data, o->len, o->qos, o->retain, o->rt, o->corr,
                          o->corr_len, o->status, track ? o : NULL);
    if (rc != MQTTASYNC_SUCCESS && track) {
        lock(a);
        flight_remove_locked(a, o);
        unlock(a);
    }
    return rc;
}

/* Hands queued messages to paho, oldest first, while connected and the
 * window allows (paho's thread: right after the connection came up, or
 * after a PUBACK). The caller set `flushing`; it is cleared under mu once
 * the queue is empty or blocked, so a PUBACK arriving meanwhile either
 * sees `flushing` and leaves the job to us, or finds it clear and flushes
 * itself: no slot is ever left unused. */
static void flush_queue(mqtt_adapter *a)
{
    unsigned long failed = 0;
    int last_rc = MQTTASYNC_SUCCESS;
    lock(a);
    while (a->q_head && may_send_locked(a, a->q_head->qos)) {
        out_msg *o = a->q_head;
        a->q_head = o->next;
        if (!a->q_head)
            a->q_tail = NULL;
        if (a->q_resent == o)
            a->q_resent = NULL;
        a->q_len--;
        if (o->qos > 0)
            flight_add_locked(a, o);
        unlock(a);
        int rc = send_one(a, o);
        lock(a);
        if (rc == MQTTASYNC_SUCCESS) {
            if (o->qos == 0)
                free(o);
            continue; /* a QoS >= 1 one is paho's callbacks' now */
        }
        if (rc == MQTTASYNC_DISCONNECTED || paho_full(rc)) {
            /* lost again, or paho is full: keep it for the next round */
            o->next = a->q_head;
            a->q_head = o;
            if (!a->q_tail)
                a->q_tail = o;
            a->q_len++;
            break;
        }
        failed++;
        last_rc = rc;
        free(o);
    }
    a->flushing = false;
    unlock(a);
    if (failed)
        A_LOG(a, LOOM_LOG_WARN, "mqtt: %lu buffered message(s) could not be sent: %s", failed,
              paho_str(last_rc));
}

static loom_err mqtt_publish(void *self, const loom_publish *p)
{
    mqtt_adapter *a = self;
    if (!a || !p)
        return LOOM_EINVAL;
    if (p->len > MQTT_MAX_PAYLOAD)
        return LOOM_ETOOBIG;
    if (!valid_topic(p->topic) || p->qos < 0 || p->qos > 2 || (p->len > 0 && !p->data) ||
        (p->response_topic && !valid_topic(p->response_topic)) ||
        (p->correlation_len > 0 && !p->correlation) || p->correlation_len > MQTT_MAX_STRING ||
        (p->status && strnlen(p->status, MQTT_MAX_STRING + 1) > MQTT_MAX_STRING))
        return LOOM_EINVAL;
    /* QoS >= 1: a copy stays in flight until the PUBACK (top of file). */
    out_msg *o = NULL;
    if (p->qos > 0 && !(o = out_new(p)))
        return LOOM_ENOMEM;

    lock(a);
    if (a->closing || a->stopped) {
        unlock(a);
        free(o);
        return LOOM_EUNAVAILABLE;
    }
    if (!a->q_head && !a->flushing && may_send_locked(a, p->qos)) {
        if (o)
            flight_add_locked(a, o);
        a->sending++; /* close() lets it reach paho's queue before DISCONNECT */
        unlock(a);
        int rc = o ? send_one(a, o)
                   : paho_publish(a, p->topic, p->data, p->len, 0, p->retain,
                                  p->response_topic, p->correlation, p->correlation_len,
                                  p->status, NULL);
        lock(a);
        if (--a->sending == 0)
            pthread_cond_broadcast(&a->cv);
        unlock(a);
        if (rc == MQTTASYNC_SUCCESS) {
            loom_msg_release(p->msg);
            return LOOM_OK;
        }
        if (rc != MQTTASYNC_DISCONNECTED) {
            free(o);
            return paho_full(rc) ? LOOM_EOVERLOAD : map_paho(rc);
        }
        lock(a); /* the connection just went: keep it like any other */
    }
    if (a->q_len >= (size_t)a->buffer) {
        bool up = a->state == CS_CONNECTED;
        unlock(a);
        free(o);
        return up ? LOOM_EOVERLOAD : LOOM_EUNAVAILABLE;
    }
    if (!o && !(o = out_new(p))) {
        unlock(a);
        return LOOM_ENOMEM;
    }
    if (a->q_tail)
        a->q_tail->next = o;
    else
        a->q_head = o;
    a->q_tail = o;
    a->q_len++;
    unlock(a);
    loom_msg_release(p->msg);
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                                */

static void free_adapter(mqtt_adapter *a)
{
    if (!a)
        return;
    while (a->subs) {
        mqtt_sub *s = a->subs;
        a->subs = s->next;
        free_sub(s);
    }
    while (a->reqs) {
        sub_req *r = a->reqs;
        a->reqs = r->next;
        free_req(r);
    }
    free_queue(a);
    while (a->flight) { /* paho fails them all when destroyed; this is in case */
        out_msg *o = a->flight;
        a->flight = o->next;
        free(o);
    }
    free_held(a);
    free(a->client_id);
    free(a->username);
    if (a->password) {
        explicit_bzero(a->password, strlen(a->password));
        free(a->password);
    }
    free(a->will_topic);
    free(a->tls_ca);
    free(a->tls_cert);
    free(a->tls_key);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static loom_err mqtt_init(void **self, const loom_adapter_host *host,
                          const loom_adapter_options *opts)
{
    if (!self || !host || !host->deliver || !host->state_changed || !opts || !opts->url)
        return LOOM_EINVAL;
    *self = NULL;
    mqtt_adapter *a = calloc(1, sizeof *a);
    if (!a)
        return LOOM_ENOMEM;
    a->host = *host;
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    a->keepalive = 30;
    a->connect_timeout_ms = 5000;
    a->reconnect_min_ms = 250;
    a->reconnect_max_ms = 10000;
    a->buffer = 10000;
    a->tls_verify = true;
    a->sub_ids = true;
    a->drop_warn_ms = INT64_MIN / 2;
    a->rng = (unsigned)loom__mono_ms() ^ (unsigned)(uintptr_t)a;

    char why[512] = "";
    loom_err err = parse_url(a, opts->url, why, sizeof why);
    if (err == LOOM_OK)
        err = read_options(a, opts->options, why, sizeof why);
    if (err == LOOM_OK && opts->will_topic && !valid_topic(opts->will_topic)) {
        snprintf(why, sizeof why, "invalid will topic");
        err = LOOM_EINVAL;
    }
    if (err != LOOM_OK) {
        if (err == LOOM_ENOMEM)
            snprintf(why, sizeof why, "out of memory");
        A_LOG(a, LOOM_LOG_ERROR, "mqtt: broker URL '%.200s': %s", opts->url, why);
        free_adapter(a);
        return err;
    }
    a->next_delay_ms = a->reconnect_min_ms;

    if (!a->client_id) {
        if (opts->instance_id && *opts->instance_id) {
            a->client_id = strdup(opts->instance_id);
        } else {
            char id[33];
            loom__random_id(id);
            a->client_id = strdup(id);
        }
    }
    if (opts->will_topic)
        a->will_topic = strdup(opts->will_topic);
    /* The payload limit plus room for the fixed header, the topic and the
     * properties (MQTT caps a packet at 268 435 455 bytes). */
    if (opts->max_message)
        a->max_packet = opts->max_message > MAX_PACKET_LIMIT - PACKET_OVERHEAD
                            ? MAX_PACKET_LIMIT
                            : (uint32_t)(opts->max_message + PACKET_OVERHEAD);
    char *uri = loom__asprintf("%s://%s:%d", a->tls ? "ssl" : "tcp", a->host_name, a->port);
    if (!a->client_id || (opts->will_topic && !a->will_topic) || !uri) {
        free(uri);
        free_adapter(a);
        return LOOM_ENOMEM;
    }

    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    /* We buffer while disconnected ourselves (see the top of this file).
     * paho's limit then only bounds its queue while connected; it must
     * take a whole flush of our buffer. */
    co.sendWhileDisconnected = 0;
    co.maxBufferedMessages = a->buffer > INT_MAX - 65536 ? INT_MAX : a->buffer + 65536;
    co.allowDisconnectedSendAtAnyTime = 0;
    co.deleteOldestMessages = 0;
    co.restoreMessages = 0;
    co.persistQoS0 = 0;
    int rc = MQTTAsync_createWithOptions(&a->client, uri, a->client_id, MQTTCLIENT_PERSISTENCE_NONE,
                                         NULL, &co);
    free(uri);
    if (rc != MQTTASYNC_SUCCESS) {
        A_LOG(a, LOOM_LOG_ERROR,
              "mqtt: cannot create the client for '%.200s' (client id "
              "'%.100s'): %s",
              opts->url, a->client_id, paho_str(rc));
        a->client = NULL;
        free_adapter(a);
        return rc == PAHO_MEMORY_ERROR_CODE ? LOOM_ENOMEM : LOOM_ECONFIG;
    }
    if (MQTTAsync_setCallbacks(a->client, a, on_connection_lost, on_message, NULL) !=
            MQTTASYNC_SUCCESS ||
        MQTTAsync_setDisconnected(a->client, a, on_server_disconnect) != MQTTASYNC_SUCCESS) {
        MQTTAsync_destroy(&a->client);
        free_adapter(a);
        return LOOM_EIO;
    }
    *self = a;
    return LOOM_OK;
}

static loom_err mqtt_connect(void *self)
{
    mqtt_adapter *a = self;
    if (!a)
        return LOOM_EINVAL;
    lock(a);
    if (a->connect_called || a->closing) {
        unlock(a);
        return LOOM_ESTATE;
    }
    if (!a->thread_started) {
        int rc = pthread_create(&a->thread, NULL, retry_main, a);
        if (rc != 0) {
            unlock(a);
            A_LOG(a, LOOM_LOG_ERROR, "mqtt: cannot start a thread: %s", strerror(rc));
            return rc == EAGAIN ? LOOM_EOVERLOAD : LOOM_EIO;
        }
        a->thread_started = true;
    }
    a->connect_called = true;
    a->report_connecting = true;
    a->state = CS_WAITING;
    a->retry_at = loom__mono_ms(); /* now */
    pthread_cond_broadcast(&a->cv);
    unlock(a);
    return LOOM_OK;
}

static void mqtt_close(void *self)
{
    mqtt_adapter *a = self;
    if (!a)
        return;
    lock(a);
    if (a->closing) {
        unlock(a);
        return;
    }
    a->closing = true; /* no new publishes from here on */
    /* Connected: let the queue drain into paho and the broker acknowledge
     * what it got, briefly (see "Closing" at the top). */
    int64_t due = loom__mono_ms() + CLOSE_FLUSH_MS;
    while (a->state == CS_CONNECTED && (a->q_head || a->pub_inflight > 0 || a->sending > 0) &&
           loom__mono_ms() < due)
        wait_until_locked(a, due);
    bool disconnect = false;
    switch (a->state) {
    case CS_CONNECTED:
        a->state = CS_DISCONNECTING;
        disconnect = true;
        break;
    case CS_CONNECTING: /* its callback sees `closing` and finishes the job */
    case CS_DISCONNECTING:
    case CS_DOWN:
        break;
    case CS_IDLE:
    case CS_WAITING:
        a->state = CS_DOWN;
        break;
    }
    size_t dropped = a->q_len;
    free_queue(a);
    pthread_cond_broadcast(&a->cv);
    unlock(a);
    if (dropped)
        A_LOG(a, LOOM_LOG_WARN, "mqtt: closing with %zu message(s) never sent", dropped);
    if (disconnect)
        issue_disconnect(a);
}

static void mqtt_stop(void *self)
{
    mqtt_adapter *a = self;
    if (!a)
        return;
    mqtt_close(a);

    lock(a);
    /* Let an attempt under way and the DISCONNECT finish, bounded. */
    int64_t deadline =
        loom__mono_ms() + ((a->connect_timeout_ms + 999) / 1000) * 1000 + 1000;
    bool timed_out = false;
    while (a->state == CS_CONNECTING || a->state == CS_DISCONNECTING) {
        if (loom__mono_ms() >= deadline) {
            timed_out = true;
            break;
        }
        wait_until_locked(a, deadline);
    }
    a->stopped = true;
    a->quit = true;
    pthread_cond_broadcast(&a->cv);
    while (a->active > 0)
        pthread_cond_wait(&a->cv, &a->mu);
    bool join = a->thread_started;
    a->thread_started = false;
    unlock(a);
    if (join)
        pthread_join(a->thread, NULL);
    if (timed_out)
        A_LOG(a, LOOM_LOG_WARN, "mqtt: %s:%d: gave up waiting for a clean disconnect", a->host_name,
              a->port);
}

static void mqtt_fini(void *self)
{
    mqtt_adapter *a = self;
    if (!a)
        return;
    lock(a);
    bool stopped = a->stopped && !a->thread_started;
    unlock(a);
    if (!stopped)
        mqtt_stop(a);
    /* Callbacks paho makes while destroying see `stopped`: no upcalls. */
    if (a->client)
        MQTTAsync_destroy(&a->client);
    free_adapter(a);
}

const loom_adapter_ops loom__mqtt_adapter = {
    .abi_version = LOOM_ADAPTER_ABI_VERSION,
    .scheme = "mqtt",
    .caps = LOOM_CAP_GROUPS | LOOM_CAP_RETAIN | LOOM_CAP_WILL | LOOM_CAP_PROPERTIES,
    .init = mqtt_init,
    .connect = mqtt_connect,
    .subscribe = mqtt_subscribe,
    .unsubscribe = mqtt_unsubscribe,
    .publish = mqtt_publish,
    .close = mqtt_close,
    .stop = mqtt_stop,
    .fini = mqtt_fini,
};

const loom_adapter_ops loom__mqtts_adapter = {
    .abi_version = LOOM_ADAPTER_ABI_VERSION,
    .scheme = "mqtts",
    .caps = LOOM_CAP_GROUPS | LOOM_CAP_RETAIN | LOOM_CAP_WILL | LOOM_CAP_PROPERTIES,
    .init = mqtt_init,
    .connect = mqtt_connect,
    .subscribe = mqtt_subscribe,
    .unsubscribe = mqtt_unsubscribe,
    .publish = mqtt_publish,
    .close = mqtt_close,
    .stop = mqtt_stop,
    .fini = mqtt_fini,
};
