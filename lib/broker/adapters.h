/* Internal: the broker adapters built into libloom (besides the in-memory
 * one, which lives in lib/core). The core registers these tables for their
 * schemes; their contract is include/loom/adapter.h. */
#ifndef LOOM_BROKER_ADAPTERS_H
#define LOOM_BROKER_ADAPTERS_H

#include "loom/adapter.h"

/* MQTT 5 over paho.mqtt.c's asynchronous client (mqtt.c). Both tables share
 * their functions; the URL's scheme decides whether TLS is used.
 *
 *   mqtt://host[:port]    plain TCP, default port 1883
 *   mqtts://host[:port]   TLS, default port 8883
 *   (IPv6 literals in brackets: mqtt://[::1]:1883)
 *
 * Options, read from the `broker:` configuration subtree (unknown keys are
 * ignored: the subtree also holds the core's own keys):
 *   client_id            default: the runtime's instance id
 *   username, password   credentials
 *   password_file        the password is the file's first line
 *   keepalive            seconds, default 30
 *   session_expiry       seconds, default 0 (clean start). When > 0 the
 *                        session (subscriptions and their queued QoS>0
 *                        messages) survives a reconnect for that long.
 *   connect_timeout_ms   default 5000 (paho counts whole seconds: rounded up)
 *   reconnect_min_ms     first retry delay, default 250
 *   reconnect_max_ms     backoff ceiling, default 10000
 *   buffer               messages kept while disconnected, default 10000
 *                        (0 = publish fails with LOOM_EUNAVAILABLE then)
 *   tls.ca, tls.cert, tls.key, tls.verify (default true)   mqtts only
 */
extern const loom_adapter_ops loom__mqtt_adapter;  /* scheme "mqtt" */
extern const loom_adapter_ops loom__mqtts_adapter; /* scheme "mqtts" (TLS) */

/* NATS core over the nats.c client library (lib/broker/nats.c). Both tables
 * share their functions.
 *
 *   nats://[user:password@]host[:port][,[user:password@]host[:port]...]
 *                         every listed server is a seed of one cluster;
 *                         default port 4222; nats://token@host works too
 *   tls://...             the same over TLS (scheme "tls")
 *
 * Reconnects forever across the cluster's servers (those listed and those
 * the cluster announces), reporting DISCONNECTED on a loss and CONNECTED
 * again. Topics map to subjects segment by segment ('.', '*', '>', ' ' and
 * control bytes escaped as %XX, '+' -> '*', trailing '#' -> '>'); groups
 * are queue groups. Correlation data travels as the hex header
 * "correlation", the status as the header "status", the response topic as
 * the reply subject. No retained messages, no will (caps GROUPS and
 * PROPERTIES only).
 *
 * Options, read from the `broker:` configuration subtree (unknown keys are
 * ignored):
 *   client_id            connection name, default: the runtime's instance id
 *   username, password   credentials (win over the URL's)
 *   password_file        the password is the file's first line
 *   connect_timeout_ms   per server, default 5000; also bounds the round
 *                        trip that confirms a subscription
 *   reconnect_min_ms     first retry delay, default 250
 *   reconnect_max_ms     backoff ceiling, default 10000
 *   buffer               messages kept while reconnecting, default 10000
 *                        (estimated at 1 KiB each; 0 = publish fails with
 *                        LOOM_EUNAVAILABLE then). Before the first
 *                        connection publish always fails so.
 *   keepalive            ping interval in seconds, default 30 (0 = none)
 *   randomize            shuffle the servers, default true
 *   send_asap            write each publish at once (lowest latency),
 *                        default true; false batches writes
 *   tls.ca, tls.cert, tls.key, tls.verify (default true)   tls:// only
 */
extern const loom_adapter_ops loom__nats_adapter;     /* scheme "nats" */
extern const loom_adapter_ops loom__nats_tls_adapter; /* scheme "tls" */

/* The NATS subject of a loom topic or filter ('+' as '*', a trailing '#' as
 * '>'), and the queue group of a loom group, exactly as nats.c maps them
 * (for documents: the AsyncAPI channels). malloc'd; NULL when invalid or
 * on ENOMEM. */
char *loom__nats_subject(const char *filter);
char *loom__nats_queue(const char *group);

#endif
