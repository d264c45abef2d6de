/* Private nats-server processes for integration tests: one server, or a
 * three-node cluster on loopback.
 *
 * Each t_nats is one nats-server on free loopback ports (client, cluster
 * route and monitoring) with its own temporary directory (configuration,
 * log, output). Not thread-safe: drive them from the test's main thread.
 * Every wait is bounded; failures fail the test (cmocka fail_msg). */
#ifndef LOOM_TEST_NATS_H
#define LOOM_TEST_NATS_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct t_nats {
    int port;         /* client port */
    int cluster_port; /* route listener; 0 when not in a cluster */
    int http_port;    /* monitoring endpoint (/varz, /routez, /connz) */
    pid_t pid;        /* 0 when not running */
    char dir[64];
    char name[32]; /* server_name */
} t_nats;

/* Starts `nats-server -c <tmpdir>/nats.conf` listening on 127.0.0.1 (client
 * port, and a monitoring port) and waits (bounded, 5 s) until it accepts
 * connections. Fails the test when nats-server is not installed or does not
 * come up. */
void t_nats_start(t_nats *n);
/* Same, with extra configuration lines appended (e.g. an authorization
 * block, or "tls { ... }"). */
void t_nats_start_with(t_nats *n, const char *extra_conf);
/* SIGTERM, waitpid (bounded, then SIGKILL); removes the temp dir. */
void t_nats_stop(t_nats *n);
/* SIGKILL, waitpid; keeps the dir and the ports (for t_nats_restart). */
void t_nats_kill(t_nats *n);
/* Starts again with the same configuration and ports (after t_nats_kill). */
void t_nats_restart(t_nats *n);
/* Rewrites the configuration of a server started with t_nats_start*, same
 * ports, other extra lines; takes effect at the next t_nats_restart. */
void t_nats_reconfigure(t_nats *n, const char *extra_conf);
/* "nats://127.0.0.1:PORT" in a static per-server buffer. */
const char *t_nats_url(const t_nats *n);
/* The nats-server binary's path, or NULL when it is not installed. */
const char *t_nats_binary(void);

/* Asks the monitoring endpoint: the number of routes (/routez num_routes)
 * or of client connections (/connz num_connections); -1 when it does not
 * answer. */
int t_nats_num_routes(const t_nats *n);
int t_nats_num_connections(const t_nats *n);

#define T_NATS_CLUSTER_NODES 3

/* Three servers on loopback with distinct client, route and monitoring
 * ports, one cluster name, each routing to the other two. */
typedef struct t_nats_cluster {
    t_nats node[T_NATS_CLUSTER_NODES];
    char cluster_name[32];
} t_nats_cluster;

/* Starts the three servers and waits (bounded, 10 s) until every node
 * accepts clients and has routes to both others. */
void t_nats_cluster_start(t_nats_cluster *c);
/* Same, with extra configuration lines for every node. */
void t_nats_cluster_start_with(t_nats_cluster *c, const char *extra_conf);
/* Waits (bounded) until every running node has a route to every other
 * running node; false on timeout. */
bool t_nats_cluster_wait_routes(const t_nats_cluster *c, int timeout_ms);
/* SIGKILL one node (0-based). */
void t_nats_cluster_kill(t_nats_cluster *c, int i);
/* Stops every node that runs; removes the temp dirs. */
void t_nats_cluster_stop(t_nats_cluster *c);
/* "nats://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3" starting with node
 * `first` (then the others in order), in a static per-cluster buffer. */
const char *t_nats_cluster_url(const t_nats_cluster *c, int first);

#endif
