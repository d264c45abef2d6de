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

#endif
