/*
 * The MQTT 5 broker adapter, on paho.mqtt.c's synchronous client
 * (MQTTClient) with callbacks.
 *
 * Threads. paho runs one thread of its own (shared by every MQTTClient of
 * the process): it reads the sockets and calls on_message() and
 * on_published(), the latter with paho's global mutex held; a lost
 * connection and a server DISCONNECT are reported on short-lived threads
 * paho starts while its own thread holds that mutex. A publish writes to
 * the socket on the calling thread: a worker's reply goes out without
 * waking any other thread (paho's asynchronous client hands every publish
 * to a sending thread, two wake-ups more per round trip). So this file
 * never holds its own mutex while calling into paho (that would invert the
 * lock order), never calls paho from paho's callbacks, and never holds its
 * mutex while calling a host upcall (the adapter contract). Each adapter
 * also has one small thread of its own, the "control thread": it makes
 * every connection attempt (paho's connect blocks), sends SUBSCRIBE and
 * UNSUBSCRIBE (they wait for the broker's answer), and hands queued
 * messages to paho when PUBACKs open the window, so none of that blocks or
 * sleeps on paho's thread or a caller's. A publish made on paho's thread
 * (from an upcall of on_message()) is queued for it too: paho's publish
 * may wait there for its own thread to finish a partial write.
 *
 * Connection life cycle (a->state, guarded by a->mu):
 *
 *   IDLE --connect()--> WAITING --control thread--> CONNECTING
 *   CONNECTING --CONNACK--> CONNECTED --lost--> WAITING (after backoff)
 *   CONNECTING --failed--> WAITING (exponential backoff, forever)
 *   any --close()--> DISCONNECTING (when connected) --> DOWN
 *
 * paho's own reconnect is not used: ours runs in milliseconds with jitter
 * and treats a failed first connect and a lost connection alike. paho
 * waits for the broker's CONNACK and SUBACK in 10 ms steps, so a connection
 * takes at least that long and SUBSCRIBEs are batched (take_batch_locked()).
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
 * "{filter}") is one broker subscription with an MQTT 5 subscription
 * identifier; the core's tokens hang off it. The broker tags every message
 * with the identifiers of the subscriptions it matched, which map back to
 * tokens. (Two tokens on the same filter share one identifier: the broker
 * keeps only one subscription per filter and session.) A clean session
 * subscribes filters without wildcards in batches, one SUBSCRIBE and one
 * fresh identifier for up to SUB_BATCH filters that differ apart from the
 * group: the identifier names the batch and the topic the member.
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
 * Buffering. Messages published while disconnected are kept here (paho's
 * synchronous client keeps none) and written, in order, as soon as a
 * connection is up, before CONNECTED is reported.
 *
 * In flight. Our sessions are clean, and on a lost connection paho
 * forgets a clean session's QoS >= 1 messages already sent but not yet
 * acknowledged. So each QoS >= 1 message keeps its copy (an out_msg,
 * linked in `flight`, found again by paho's packet id) until its PUBACK;
 * when the connection goes, each goes back into the buffer, ahead of what
 * was published while disconnected, and is sent again on the next
 * connection. A publisher that stays up thus delivers its QoS >= 1
 * messages at least once across a broker crash (a message whose PUBACK was
 * lost with the connection arrives twice; with a durable session paho may
 * also send it again itself).
 *
 * Flow control. The broker's Receive Maximum (mosquitto: 20) bounds our
 * QoS >= 1 publishes awaiting a PUBACK; paho's publish would block its
 * caller beyond it, sleeping in 100 ms steps. So the adapter keeps the
 * window itself: a QoS >= 1 publish goes to paho only while fewer than
 * Receive Maximum are unacknowledged (pub_inflight: the `flight` entries
 * of the current connection, counted by generation so that an old
 * connection's entry cannot leak a slot); otherwise it waits in the same
 * ordered queue as offline messages (bounded by `buffer`), and a PUBACK
 * asks the control thread to send the next ones. Order is kept across
 * kinds: while the queue is not empty every publish joins it.
 *
 * Closing. close() waits (at most CLOSE_FLUSH_MS) until the queue has been
 * written, publishes already past the closing check have returned, the
 * broker has answered a SUBSCRIBE under way (paho would wait 10 s for a
 * SUBACK the disconnect cut off) and acknowledged our QoS >= 1 publishes,
 * then sends DISCONNECT
 * with no wait of paho's own. Everything written before DISCONNECT reaches
 * the broker before it, in order, so the broker sees a last
 * announcement-clearing message and QoS 0 replies either way; the wait is
 * for messages the broker might ask us to send again.
 *
 * Shutdown. Callbacks bracket their upcalls with enter()/leave(); stop()
 * sets `stopped` and waits until none is inside, so after stop() returns no
 * upcall runs or starts. The adapter memory stays valid until fini(), which
 * destroys the paho client first.
 */
#define _GNU_SOURCE
#include <MQTTClient.h>

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
#define CLOSE_FLUSH_MS 300            /* close(): at most this long for the broker's PUBACKs */
#define MAX_PACKET_LIMIT 268435455u   /* MQTT's largest packet */
#define PACKET_OVERHEAD (128u * 1024) /* header, topic, properties */
#define FAIL_WARN_INTERVAL_MS 30000   /* repeated connect failures: one warning */
#define DROP_WARN_INTERVAL_MS 1000    /* dropped messages: one warning */
#define PAHO_MEMORY_ERROR_CODE (-99)  /* paho's PAHO_MEMORY_ERROR (not public) */
#define HOLD_MS 2000                  /* unknown subscription identifiers: grace */
#define HOLD_MAX_MSGS 10000
#define HOLD_MAX_BYTES (64 * 1024 * 1024)
#define QUICKACK_MAX_FDS 8 /* sockets to the broker quick_ack() touches */
#define EARLY_ACKS 256     /* PUBACKs ahead of their publish's return, at most */
#define SUB_BATCH 128      /* filters in one SUBSCRIBE */

typedef enum conn_state {
    CS_IDLE = 0,   /* connect() not called yet */
    CS_WAITING,    /* the control thread starts the next attempt at retry_at */
    CS_CONNECTING, /* the control thread is connecting, outcome pending */
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
    struct out_msg *prev; /* in `flight` only */
    unsigned gen;         /* in `flight` only: the connection it was sent on */
    int msgid;            /* in `flight` only: paho's packet id, 0 until known */
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

/* A SUBSCRIBE or UNSUBSCRIBE for the control thread, which sends it and
 * waits for the broker's answer; queued in order (`reqs`). */
typedef struct sub_req {
    struct sub_req *next;
    void *token; /* SUBSCRIBE: reported to the core with the outcome */
    char *mqtt_filter;
    bool unsubscribe;
    int qos;
    int id; /* subscription identifier, 0 = none */
} sub_req;

typedef struct mqtt_adapter {
    loom_adapter_host host;
    MQTTClient client;

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
    pthread_cond_t cv;         /* state changes, `active` reaching 0, for close() and stop() */
    pthread_cond_t control_cv; /* work for the control thread */
    /* Everything below is guarded by mu. */
    conn_state state;
    bool connect_called;
    bool report_connecting; /* the control thread reports CONNECTING first */
    bool closing;           /* close() was called: no more attempts, no state reports */
    bool stopped;           /* stop() began: callbacks make no upcalls */
    bool quit;              /* the control thread must exit */
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
    sub_req *reqs, *reqs_tail; /* for the control thread, oldest first */
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
    bool flush_wanted; /* the control thread is to flush the queue */
    bool in_req;       /* the control thread awaits a SUBACK or UNSUBACK: paho would
                        * wait 10 s for one a DISCONNECT cut off */
    /* PUBACKs that came before their publish learnt its packet id. */
    struct {
        unsigned gen;
        int msgid;
        int reason; /* the PUBACK's reason code (>= 0x80: refused) */
    } early[EARLY_ACKS];
    int n_early;
    int sending; /* publishes between the closing check and paho's queue */
    unsigned gen;
    out_msg *q_resent;         /* the last message put back after a loss, or NULL */
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
    if (--a->active == 0 && a->stopped)
        pthread_cond_broadcast(&a->cv); /* stop() waits for it */
    unlock(a);
}

static loom_err map_paho(int rc)
{
    switch (rc) {
    case MQTTCLIENT_SUCCESS:
        return LOOM_OK;
    case MQTTCLIENT_DISCONNECTED:
        return LOOM_EUNAVAILABLE;
    case MQTTCLIENT_MAX_MESSAGES_INFLIGHT:
        return LOOM_EOVERLOAD;
    case MQTTCLIENT_BAD_UTF8_STRING:
    case MQTTCLIENT_NULL_PARAMETER:
    case MQTTCLIENT_TOPICNAME_TRUNCATED:
    case MQTTCLIENT_BAD_STRUCTURE:
    case MQTTCLIENT_BAD_QOS:
    case MQTTCLIENT_BAD_MQTT_OPTION:
    case MQTTCLIENT_WRONG_MQTT_VERSION:
        return LOOM_EINVAL;
    case PAHO_MEMORY_ERROR_CODE:
        return LOOM_ENOMEM;
    default:
        return LOOM_EIO;
    }
}

static const char *paho_str(int rc)
{
    if (rc >= MQTTREASONCODE_UNSPECIFIED_ERROR && rc <= 0xff)
        return MQTTReasonCode_toString((enum MQTTReasonCodes)rc);
    const char *s = MQTTClient_strerror(rc);
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

/* Queues r for the control thread (mu held). */
static void push_req_locked(mqtt_adapter *a, sub_req *r)
{
    r->next = NULL;
    if (a->reqs_tail)
        a->reqs_tail->next = r;
    else
        a->reqs = r;
    a->reqs_tail = r;
    pthread_cond_signal(&a->control_cv);
}

static sub_req *pop_req_locked(mqtt_adapter *a)
{
    sub_req *r = a->reqs;
    if (r && !(a->reqs = r->next))
        a->reqs_tail = NULL;
    return r;
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
    o->gen = a->gen;
    o->msgid = 0;
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
    if (o->gen == a->gen && --a->pub_inflight <= 0 && a->closing)
        pthread_cond_broadcast(&a->cv); /* close() waits for it */
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

/* Counts a QoS >= 1 message that will not be delivered; true when the
 * count is due to be logged (into *n). mu held. */
static bool count_undelivered_locked(mqtt_adapter *a, unsigned long *n)
{
    a->undelivered++;
    int64_t now = loom__mono_ms();
    if (now - a->undelivered_warn_ms < DROP_WARN_INTERVAL_MS)
        return false;
    *n = a->undelivered;
    a->undelivered = 0;
    a->undelivered_warn_ms = now;
    return true;
}

/* The entry of `flight` sent on the current connection as packet msgid. */
static out_msg *find_flight_locked(mqtt_adapter *a, int msgid)
{
    for (out_msg *o = a->flight; o; o = o->next)
        if (o->msgid == msgid && o->gen == a->gen)
            return o;
    return NULL;
}

/* After a PUBACK or a failure freed a slot: the control thread hands the
 * next queued messages to paho (never paho's own thread: see the top). */
static void want_flush_locked(mqtt_adapter *a)
{
    if (a->q_head && may_send_locked(a, a->q_head->qos) && !a->flush_wanted) {
        a->flush_wanted = true;
        pthread_cond_signal(&a->control_cv);
    }
}

/* Takes an acknowledged (or refused) message out of `flight` (mu held). */
static void acked_locked(mqtt_adapter *a, out_msg *o, int reason, unsigned long *report)
{
    flight_remove_locked(a, o);
    bool refused = reason >= MQTTREASONCODE_UNSPECIFIED_ERROR;
    if (refused && !a->closing && count_undelivered_locked(a, report) && !enter_locked(a))
        *report = 0; /* stopping: no log line */
    want_flush_locked(a);
}

static void report_undelivered(mqtt_adapter *a, unsigned long n, const char *topic, const char *why)
{
    A_LOG(a, LOOM_LOG_WARN,
          "mqtt: %lu QoS >= 1 message(s) not delivered since the last report (last on %s: %s)", n,
          topic, why);
    leave(a);
}

/* PUBACK (paho's thread, with paho's mutex held: no paho call here). The
 * publish that sent it may not have recorded its packet id yet: then the
 * ack waits in `early` for it (note_msgid()). */
static void on_published(void *ctx, int msgid, int packet_type, MQTTProperties *props,
                         enum MQTTReasonCodes reason)
{
    (void)packet_type;
    (void)props;
    mqtt_adapter *a = ctx;
    quick_ack(a);
    unsigned long report = 0;
    lock(a);
    out_msg *o = find_flight_locked(a, msgid);
    if (o)
        acked_locked(a, o, (int)reason, &report);
    else {
        if (a->n_early == EARLY_ACKS) { /* at most one per publishing thread: never */
            memmove(a->early, a->early + 1, sizeof a->early - sizeof a->early[0]);
            a->n_early--;
        }
        a->early[a->n_early].gen = a->gen;
        a->early[a->n_early].reason = (int)reason;
        a->early[a->n_early++].msgid = msgid;
    }
    unlock(a);
    if (report)
        report_undelivered(a, report, o->topic, MQTTReasonCode_toString(reason));
    free(o);
}

/* A QoS >= 1 publish returned with its packet id: record it, complete
 * the message if its PUBACK came first, or, if the connection went while
 * it was being written (requeue_flight_locked() leaves such messages to
 * their writer), put it back into the buffer. */
static void note_msgid(mqtt_adapter *a, out_msg *o, int msgid)
{
    bool acked = false, drop = false;
    int reason = 0;
    unsigned long report = 0;
    lock(a);
    for (int i = 0; i < a->n_early && !acked; i++) {
        if (a->early[i].msgid == msgid && a->early[i].gen == o->gen) {
            reason = a->early[i].reason;
            a->early[i] = a->early[--a->n_early];
            acked = true;
        }
    }
    if (acked) {
        acked_locked(a, o, reason, &report);
    } else if (o->gen == a->gen && a->state == CS_CONNECTED) {
        o->msgid = msgid;
    } else {
        flight_remove_locked(a, o);
        drop = a->closing || a->stopped || a->q_len >= (size_t)a->buffer;
        if (!drop) {
            requeue_locked(a, o);
            want_flush_locked(a);
        }
    }
    unlock(a);
    if (report)
        report_undelivered(a, report, o->topic,
                           MQTTReasonCode_toString((enum MQTTReasonCodes)reason));
    if (acked || drop)
        free(o);
}

/* The connection is gone: paho forgot the clean session's unacknowledged
 * QoS >= 1 messages, so each goes back into the buffer (unless closing or
 * the buffer is full) to be sent again on the next connection; one still
 * being written (no packet id yet) is its writer's to handle. mu held;
 * returns how many could not be kept. */
static unsigned long requeue_flight_locked(mqtt_adapter *a)
{
    unsigned long lost = 0;
    for (out_msg *o = a->flight, *next; o; o = next) {
        next = o->next;
        if (o->msgid == 0)
            continue;
        flight_remove_locked(a, o);
        if (!a->closing && !a->stopped && a->q_len < (size_t)a->buffer) {
            o->msgid = 0;
            requeue_locked(a, o);
        } else {
            lost++;
            free(o);
        }
    }
    a->n_early = 0;
    return lost;
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
    pthread_cond_broadcast(&a->cv); /* stop() waits for CONNECTING to end */
    pthread_cond_signal(&a->control_cv);
    return delay;
}

/* Why a connection attempt failed: paho's code, or the broker's reason. */
static void connect_failure_text(int rc, char *buf, size_t n)
{
    if (rc >= MQTTREASONCODE_UNSPECIFIED_ERROR && rc <= 0xff)
        snprintf(buf, n, "broker refused: %s (reason code 0x%02x)",
                 MQTTReasonCode_toString((enum MQTTReasonCodes)rc), (unsigned)rc);
    else
        snprintf(buf, n, "%s", paho_str(rc));
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
static void release_held(mqtt_adapter *a);

/* One connection attempt, synchronous (the control thread, without mu):
 * paho's code or the broker's refusal (>= 0x80); *r holds the CONNACK's
 * properties on success (MQTTResponse_free). */
static int connect_once(mqtt_adapter *a, MQTTResponse *r, bool *session)
{
    MQTTClient_connectOptions co = MQTTClient_connectOptions_initializer5;
    MQTTClient_willOptions will = MQTTClient_willOptions_initializer;
    MQTTClient_SSLOptions ssl = MQTTClient_SSLOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;

    co.keepAliveInterval = a->keepalive;
    co.connectTimeout = (a->connect_timeout_ms + 999) / 1000;
    co.reliable = 0;
    co.maxInflightMessages = 65535; /* the window is ours (top of file) */
    co.username = a->username;
    co.password = a->password;
    /* Clean start unless the session is meant to outlive the connection. */
    co.cleanstart = a->session_expiry == 0;
    if (a->session_expiry > 0) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        p.value.integer4 = a->session_expiry;
        if (MQTTProperties_add(&props, &p) != 0)
            return PAHO_MEMORY_ERROR_CODE;
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
    *r = MQTTClient_connect5(a->client, &co, &props, NULL);
    MQTTProperties_free(&props);
    *session = co.returned.sessionPresent != 0;
    return (int)r->reasonCode;
}

/* Waits on cv until due (monotonic ms), a signal or a spurious wake-up;
 * due 0: no time limit. mu held. */
static void wait_until_locked(mqtt_adapter *a, pthread_cond_t *cv, int64_t due)
{
    if (!due) {
        pthread_cond_wait(cv, &a->mu);
        return;
    }
    int64_t wait = due - loom__mono_ms();
    if (wait <= 0)
        return;
    struct timespec ts = loom__mono_after(wait);
    pthread_cond_timedwait(cv, &a->mu, &ts);
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

/* Sends DISCONNECT (normal disconnection: the broker drops the will). Not
 * on paho's thread. */
static void issue_disconnect(mqtt_adapter *a)
{
    /* timeout 0: close() waited for the PUBACKs already */
    int rc = MQTTClient_disconnect5(a->client, 0, MQTTREASONCODE_NORMAL_DISCONNECTION, NULL);
    disconnect_finished(a, rc == MQTTCLIENT_SUCCESS ? "" : " (not cleanly)");
}

/* The CONNACK's Receive Maximum: 65535 when absent (MQTT 5, 3.2.2.3.3). */
static int receive_maximum(MQTTProperties *props)
{
    if (!props || !MQTTProperties_hasProperty(props, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
        return 65535;
    int v = MQTTProperties_getNumericValue(props, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    return v > 0 ? v : 65535;
}

/* CONNACK accepted (the control thread). */
static void connected(mqtt_adapter *a, MQTTProperties *props, bool session)
{
    bool ids = true;
    if (props &&
        MQTTProperties_hasProperty(props, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIERS_AVAILABLE))
        ids = MQTTProperties_getNumericValue(
                  props, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0;
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
    a->n_early = 0;
    a->recv_max = receive_maximum(props);
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

/* A failed attempt (the control thread): back off and try again. */
static void connect_failed(mqtt_adapter *a, int rc)
{
    char why[256];
    connect_failure_text(rc, why, sizeof why);
    lock(a);
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

/* One attempt, with CONNECTING reported before the first (control thread,
 * without mu). */
static void attempt(mqtt_adapter *a, bool report)
{
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
        }
        unlock(a);
        if (closed)
            return;
    }
    MQTTResponse r = MQTTResponse_initializer;
    bool session = false;
    int rc = connect_once(a, &r, &session);
    if (rc == MQTTCLIENT_SUCCESS)
        connected(a, r.properties, session);
    else
        connect_failed(a, rc);
    MQTTResponse_free(r);
}

/* Reports a SUBSCRIBE's outcome to the core: code is the broker's reason
 * (>= 0x80: refused), paho's error (< 0: not answered) or a granted QoS. */
static void sub_finished(mqtt_adapter *a, sub_req *r, int code)
{
    lock(a);
    bool up = enter_locked(a);
    unlock(a);
    if (up) {
        /* Refused by the broker: LOOM_EUNAVAILABLE. Not answered (the
         * connection went first): LOOM_EIO; the core subscribes again on the
         * next CONNECTED anyway. */
        loom_err err = LOOM_OK;
        if (code >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
            err = LOOM_EUNAVAILABLE;
            A_LOG(a, LOOM_LOG_WARN,
                  "mqtt: broker refused the subscription to %s: %s (reason code 0x%02x)",
                  r->mqtt_filter, MQTTReasonCode_toString((enum MQTTReasonCodes)code),
                  (unsigned)code);
        } else if (code < 0) {
            err = LOOM_EIO;
            A_LOG(a, LOOM_LOG_DEBUG, "mqtt: subscription to %s not completed: %s", r->mqtt_filter,
                  paho_str(code));
        }
        if (a->host.subscribed)
            a->host.subscribed(a->host.core, r->token, err);
        leave(a);
    }
    free_req(r);
}

static void run_unsubscribe(mqtt_adapter *a, sub_req *r, bool up)
{
    /* Best effort: if it is lost with the connection, a clean-start
     * session forgets the subscription anyway; a durable one delivers
     * messages with an identifier nobody maps, which are dropped. */
    int code = MQTTCLIENT_DISCONNECTED;
    if (up) {
        MQTTResponse resp = MQTTClient_unsubscribe5(a->client, r->mqtt_filter, NULL);
        code = (int)resp.reasonCode;
        MQTTResponse_free(resp);
    }
    if (code != MQTTCLIENT_SUCCESS)
        A_LOG(a, LOOM_LOG_DEBUG, "mqtt: cannot unsubscribe from %s: %s", r->mqtt_filter,
              paho_str(code));
    free_req(r);
}

/* The filter under a "$share/{group}/" prefix. */
static const char *core_filter(const char *mqtt_filter)
{
    const char *slash;
    if (strncmp(mqtt_filter, "$share/", 7) == 0 && (slash = strchr(mqtt_filter + 7, '/')))
        return slash + 1;
    return mqtt_filter;
}

/* Whether r may join the batch: a SUBSCRIBE of a clean session, with the
 * batch's QoS, to a filter without wildcards that no other member has
 * (whatever the group), so that the topic alone tells which member a
 * message tagged with the batch's identifier is for. */
static bool joins_batch(const mqtt_adapter *a, sub_req *const *batch, int n, const sub_req *r)
{
    if (r->unsubscribe || a->session_expiry > 0 || r->qos != batch[0]->qos ||
        strpbrk(r->mqtt_filter, "+#"))
        return false;
    for (int i = 0; i < n; i++)
        if (strcmp(core_filter(batch[i]->mqtt_filter), core_filter(r->mqtt_filter)) == 0)
            return false;
    return true;
}

/* Takes first and the queued SUBSCRIBEs that may go in the same packet
 * (mu held): paho waits for each SUBACK in 10 ms steps, so a service with
 * many commands would otherwise take seconds to subscribe. A batch of
 * several shares one fresh subscription identifier (a packet carries one). */
static int take_batch_locked(mqtt_adapter *a, sub_req *first, sub_req **batch)
{
    batch[0] = first;
    int n = 1;
    if (!joins_batch(a, batch, 0, first))
        return 1;
    while (n < SUB_BATCH && a->reqs && joins_batch(a, batch, n, a->reqs))
        batch[n++] = pop_req_locked(a);
    if (n > 1 && a->sub_ids) {
        int id = alloc_id(a, first->mqtt_filter);
        for (mqtt_sub *s = a->subs; s; s = s->next)
            for (int i = 0; i < n; i++)
                if (strcmp(s->mqtt_filter, batch[i]->mqtt_filter) == 0)
                    s->id = id;
        for (int i = 0; i < n; i++)
            batch[i]->id = id;
    }
    return n;
}

/* Sends one SUBSCRIBE for the batch, waits for the broker's answer and
 * reports each filter's outcome (the control thread, without mu). */
static void run_subscribe(mqtt_adapter *a, sub_req **batch, int n, bool up)
{
    char *filters[SUB_BATCH];
    int qos[SUB_BATCH];
    MQTTSubscribe_options so[SUB_BATCH];
    for (int i = 0; i < n; i++) {
        filters[i] = batch[i]->mqtt_filter;
        qos[i] = batch[i]->qos;
        /* noLocal must stay 0 (shared subscriptions forbid it, and an
         * instance may call its own commands); retainAsPublished 0 makes
         * the retain flag mean "replayed on subscribe". */
        so[i] = (MQTTSubscribe_options)MQTTSubscribe_options_initializer;
    }
    MQTTResponse resp = MQTTResponse_initializer;
    resp.reasonCode = up ? PAHO_MEMORY_ERROR_CODE : MQTTCLIENT_DISCONNECTED;
    MQTTProperties props = MQTTProperties_initializer;
    MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER};
    p.value.integer4 = (unsigned)batch[0]->id;
    if (up && (!batch[0]->id || MQTTProperties_add(&props, &p) == 0))
        resp = MQTTClient_subscribeMany5(a->client, n, filters, qos, so, &props);
    MQTTProperties_free(&props);
    for (int i = 0; i < n; i++) {
        int code = (int)resp.reasonCode;
        if (code >= 0 && n > 1)
            code = resp.reasonCodes && i < resp.reasonCodeCount ? (int)resp.reasonCodes[i]
                                                                : MQTTCLIENT_FAILURE;
        sub_finished(a, batch[i], code);
    }
    MQTTResponse_free(resp);
}

/* The control thread: starts each attempt when its backoff delay is over,
 * sends SUBSCRIBE and UNSUBSCRIBE, hands queued messages to paho when a
 * PUBACK freed window slots, and drops held messages nobody claimed in
 * time. */
static void *control_main(void *arg)
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
        if (a->reqs) {
            sub_req *r = pop_req_locked(a), *batch[SUB_BATCH] = {r};
            bool up = a->state == CS_CONNECTED && !a->closing;
            int n = r->unsubscribe ? 1 : take_batch_locked(a, r, batch);
            a->in_req = up;
            unlock(a);
            if (r->unsubscribe)
                run_unsubscribe(a, r, up);
            else
                run_subscribe(a, batch, n, up);
            lock(a);
            a->in_req = false;
            if (a->closing)
                pthread_cond_broadcast(&a->cv); /* close() waits for it */
            continue;
        }
        if (a->flush_wanted) {
            a->flush_wanted = false;
            if (!a->flushing && a->q_head && may_send_locked(a, a->q_head->qos)) {
                a->flushing = true;
                unlock(a);
                flush_queue(a);
                lock(a);
            }
            continue;
        }
        if (a->state != CS_WAITING || a->closing) {
            wait_until_locked(a, &a->control_cv, hold_due);
            continue;
        }
        if (now < a->retry_at) {
            wait_until_locked(a, &a->control_cv,
                              hold_due && hold_due < a->retry_at ? hold_due : a->retry_at);
            continue;
        }
        a->state = CS_CONNECTING;
        bool report = a->report_connecting;
        a->report_connecting = false;
        unlock(a);
        attempt(a, report);
        lock(a);
    }
    unlock(a);
    return NULL;
}

/* The broker sent DISCONNECT (a thread paho starts for it): keep its
 * reason for the loss report. */
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

/* The connection broke (a thread paho starts for it while its own thread
 * holds paho's mutex: no paho call here). */
static void on_connection_lost(void *ctx, char *cause)
{
    mqtt_adapter *a = ctx;
    char why[200];
    lock(a);
    if (a->state != CS_CONNECTED && a->state != CS_DISCONNECTING) {
        unlock(a);
        return;
    }
    unsigned long lost = requeue_flight_locked(a);
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
    if (lost)
        A_LOG(a, LOOM_LOG_WARN,
              "mqtt: %lu unacknowledged QoS >= 1 message(s) lost with the connection (buffer "
              "full)",
              lost);
    a->host.state_changed(a->host.core, LOOM_BROKER_DISCONNECTED, why);
    leave(a);
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

/* Appends the tokens of the subscriptions with identifier id that topic
 * matches (one identifier names a whole batch: see run_reqs()). */
static bool collect_id(mqtt_adapter *a, int id, const char *topic, void ***tokens, size_t *n,
                       size_t *cap, void **stack)
{
    for (const mqtt_sub *s = a->subs; s; s = s->next)
        if (s->id == id && loom_topic_matches(s->filter, topic) &&
            !collect(tokens, n, cap, stack, s))
            return false;
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
static bool hold_locked(mqtt_adapter *a, const char *topic, const MQTTClient_message *m,
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
        pthread_cond_signal(&a->control_cv); /* the control thread expires them */
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
        for (int i = 0; i < h->n_ids && !oom; i++)
            oom = !collect_id(a, h->ids[i], h->topic, &tokens, &n, &cap, stack);
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

/* Set on paho's thread while it runs on_message(): a publish made from an
 * upcall there goes through the control thread (see the top). */
static _Thread_local bool on_paho_thread;

/* paho's thread. Never blocks: deliver() only enqueues. Always takes the
 * message (returns 1): a message the core cannot take is dropped, not
 * redelivered in a loop. */
static int on_message(void *ctx, char *topic, int topic_len, MQTTClient_message *m)
{
    on_paho_thread = true;
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
        for (int i = 0; i < n_ids && !oom; i++)
            oom = !collect_id(a, ids[i], topic, &tokens, &n, &cap, stack);
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
        MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    on_paho_thread = false;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Subscribing                                                               */

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
    r->qos = qos;
    r->id = a->sub_ids ? s->id : 0;
    push_req_locked(a, r);
    unlock(a);
    /* A durable session's messages held for this identifier. */
    release_held(a);
    return LOOM_OK;

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
    if (s->n_tokens == 0) {
        unlink_sub(a, s);
        sub_req *r = NULL;
        if (a->state == CS_CONNECTED && !a->closing && (r = calloc(1, sizeof *r))) {
            r->unsubscribe = true;
            r->mqtt_filter = s->mqtt_filter; /* taken over */
            s->mqtt_filter = NULL;
            push_req_locked(a, r);
        }
        free_sub(s);
    }
    unlock(a);
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

/* Writes one message (any thread but paho's, without mu): paho sends it
 * on this thread. `track` (QoS >= 1: the message's copy, already in
 * `flight`; else NULL) learns its packet id. Returns paho's code. */
static int paho_publish(mqtt_adapter *a, const char *topic, const void *data, size_t len, int qos,
                        bool retain, const char *rt, const void *corr, size_t corr_len,
                        const char *status, out_msg *track)
{
    MQTTProperties props = MQTTProperties_initializer;
    static const char content_type[] = "application/json";
    int prc = add_string_prop(&props, MQTTPROPERTY_CODE_CONTENT_TYPE, content_type,
                              sizeof content_type - 1);
    if (prc == 0 && rt)
        prc = add_string_prop(&props, MQTTPROPERTY_CODE_RESPONSE_TOPIC, rt, strlen(rt));
    if (prc == 0 && corr_len > 0)
        prc = add_string_prop(&props, MQTTPROPERTY_CODE_CORRELATION_DATA, corr, corr_len);
    if (prc == 0 && status) {
        MQTTProperty up = {.identifier = MQTTPROPERTY_CODE_USER_PROPERTY};
        up.value.data.data = (char *)"status";
        up.value.data.len = 6;
        up.value.value.data = (char *)status;
        up.value.value.len = (int)strlen(status);
        prc = MQTTProperties_add(&props, &up);
    }
    int rc = PAHO_MEMORY_ERROR_CODE;
    if (prc == 0) {
        MQTTClient_deliveryToken msgid = 0;
        MQTTResponse r =
            MQTTClient_publish5(a->client, topic, (int)len, data, qos, retain, &props, &msgid);
        rc = (int)r.reasonCode;
        MQTTResponse_free(r);
        if (rc == MQTTCLIENT_SUCCESS && track)
            note_msgid(a, track, msgid);
    }
    MQTTProperties_free(&props);
    return rc;
}

/* paho cannot take more now (connected, but the broker does not keep up). */
static bool paho_full(int rc)
{
    return rc == MQTTCLIENT_MAX_MESSAGES_INFLIGHT;
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
 * a free window slot (may_send_locked()); on success it stays there until
 * its PUBACK, on failure the caller keeps it (taken out of `flight`). */
static int send_one(mqtt_adapter *a, out_msg *o)
{
    bool track = o->qos > 0;
    int rc = paho_publish(a, o->topic, o->data, o->len, o->qos, o->retain, o->rt, o->corr,
                          o->corr_len, o->status, track ? o : NULL);
    if (rc != MQTTCLIENT_SUCCESS && track) {
        lock(a);
        flight_remove_locked(a, o);
        unlock(a);
    }
    return rc;
}

/* Hands queued messages to paho, oldest first, while connected and the
 * window allows (the control thread: right after the connection came up,
 * or after PUBACKs). The caller set `flushing`; it is cleared under mu
 * once the queue is empty or blocked, so a PUBACK arriving meanwhile
 * either finds `flushing` set and we take the slot, or finds it clear and
 * asks the control thread for another round: no slot is left unused. */
static void flush_queue(mqtt_adapter *a)
{
    unsigned long failed = 0;
    int last_rc = MQTTCLIENT_SUCCESS;
    lock(a);
    while (a->q_head && may_send_locked(a, a->q_head->qos)) {
        out_msg *o = a->q_head;
        a->q_head = o->next;
        if (!a->q_head)
            a->q_tail = NULL;
        if (a->q_resent == o)
            a->q_resent = NULL;
        a->q_len--;
        bool tracked = o->qos > 0;
        if (tracked)
            flight_add_locked(a, o);
        unlock(a);
        int rc = send_one(a, o);
        lock(a);
        if (rc == MQTTCLIENT_SUCCESS) {
            if (!tracked)
                free(o);
            continue; /* a tracked one is its PUBACK's (it may be gone already) */
        }
        if (rc == MQTTCLIENT_DISCONNECTED || paho_full(rc)) {
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
    if (!a->q_head && !a->flushing && !on_paho_thread && may_send_locked(a, p->qos)) {
        if (o)
            flight_add_locked(a, o);
        a->sending++; /* close() lets it reach the broker before DISCONNECT */
        unlock(a);
        int rc = o ? send_one(a, o)
                   : paho_publish(a, p->topic, p->data, p->len, 0, p->retain, p->response_topic,
                                  p->correlation, p->correlation_len, p->status, NULL);
        lock(a);
        if (--a->sending == 0 && a->closing)
            pthread_cond_broadcast(&a->cv); /* close() waits for it */
        unlock(a);
        if (rc == MQTTCLIENT_SUCCESS) {
            loom_msg_release(p->msg);
            return LOOM_OK;
        }
        if (rc != MQTTCLIENT_DISCONNECTED) {
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
    if (!a->flushing)
        want_flush_locked(a); /* published on paho's thread, or the window opened */
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
    while (a->flight) { /* never acknowledged */
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
    pthread_cond_destroy(&a->control_cv);
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
    pthread_cond_init(&a->control_cv, &ca);
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

    MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
    co.MQTTVersion = MQTTVERSION_5;
    int rc = MQTTClient_createWithOptions(&a->client, uri, a->client_id,
                                          MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    free(uri);
    if (rc != MQTTCLIENT_SUCCESS) {
        A_LOG(a, LOOM_LOG_ERROR,
              "mqtt: cannot create the client for '%.200s' (client id "
              "'%.100s'): %s",
              opts->url, a->client_id, paho_str(rc));
        a->client = NULL;
        free_adapter(a);
        return rc == PAHO_MEMORY_ERROR_CODE ? LOOM_ENOMEM : LOOM_ECONFIG;
    }
    if (MQTTClient_setCallbacks(a->client, a, on_connection_lost, on_message, NULL) !=
            MQTTCLIENT_SUCCESS ||
        MQTTClient_setPublished(a->client, a, on_published) != MQTTCLIENT_SUCCESS ||
        MQTTClient_setDisconnected(a->client, a, on_server_disconnect) != MQTTCLIENT_SUCCESS) {
        MQTTClient_destroy(&a->client);
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
        int rc = pthread_create(&a->thread, NULL, control_main, a);
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
    pthread_cond_signal(&a->control_cv);
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
    while (a->state == CS_CONNECTED &&
           (a->q_head || a->pub_inflight > 0 || a->sending > 0 || a->in_req) &&
           loom__mono_ms() < due)
        wait_until_locked(a, &a->cv, due);
    bool disconnect = false;
    switch (a->state) {
    case CS_CONNECTED:
        a->state = CS_DISCONNECTING;
        disconnect = true;
        break;
    case CS_CONNECTING: /* the control thread sees `closing` and finishes the job */
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
    pthread_cond_signal(&a->control_cv);
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
    int64_t deadline = loom__mono_ms() + ((a->connect_timeout_ms + 999) / 1000) * 1000 + 1000;
    bool timed_out = false;
    while (a->state == CS_CONNECTING || a->state == CS_DISCONNECTING) {
        if (loom__mono_ms() >= deadline) {
            timed_out = true;
            break;
        }
        wait_until_locked(a, &a->cv, deadline);
    }
    a->stopped = true;
    a->quit = true;
    pthread_cond_broadcast(&a->cv);
    pthread_cond_signal(&a->control_cv);
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
        MQTTClient_destroy(&a->client);
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
