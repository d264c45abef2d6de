/* A private mosquitto broker for integration tests.
 *
 * Each t_broker is one mosquitto process on a free loopback port with its
 * own temporary directory (configuration, persistence database, log). Not
 * thread-safe: drive it from the test's main thread. */
#ifndef LOOM_TEST_MOSQUITTO_H
#define LOOM_TEST_MOSQUITTO_H

#include <sys/types.h>

typedef struct t_broker {
    int port;
    pid_t pid; /* 0 when not running */
    char dir[64];
} t_broker;

/* Starts `mosquitto -c <tmpdir>/mosquitto.conf` on a free loopback port
 * (bind a socket to 127.0.0.1:0 to find one) with: listener PORT 127.0.0.1,
 * allow_anonymous true, persistence true (as Debian's own configuration
 * has it; persistence_location in the temp dir, autosaved (about every 2 s with autosave_interval 1), so
 * restarts keep durable sessions and retained messages), max_queued_messages
 * 100000; everything else as mosquitto ships it (no set_tcp_nodelay: the
 * tests meet the broker users run); waits (bounded, 5 s) until it accepts connections. Fails the test
 * (cmocka fail_msg) when mosquitto is not installed or does not come up. */
void t_broker_start(t_broker *b);
/* Same, with extra configuration lines appended (e.g. "acl_file ..."). */
void t_broker_start_with(t_broker *b, const char *extra_conf);
/* SIGTERM, waitpid (bounded, then SIGKILL); removes the temp dir. */
void t_broker_stop(t_broker *b);
/* SIGKILL, waitpid; keeps the dir (for restart). */
void t_broker_kill(t_broker *b);
/* Starts again on the same port and dir (after t_broker_kill). */
void t_broker_restart(t_broker *b);
/* Waits (bounded, 5 s) until mosquitto has written its persistence
 * database after this call, so that what it held before the call survives
 * t_broker_kill. Fails the test on a timeout. */
void t_broker_wait_saved(const t_broker *b);
/* "mqtt://127.0.0.1:PORT" in a static per-broker buffer. */
const char *t_broker_url(const t_broker *b);
/* The mosquitto binary's path, or NULL when it is not installed. */
const char *t_broker_binary(void);

#endif
