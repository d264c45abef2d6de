/* A private nginx for integration tests: one process (no master, no
 * workers, no daemon) in its own temporary directory, listening on a free
 * loopback port.
 *
 * The caller gives the whole nginx.conf as text; "@PORT@" in it stands for
 * the port the helper picks (every occurrence is replaced). nginx runs as
 *   nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off; master_process off;'
 * so relative paths in the configuration (pid, logs, temp directories)
 * land in DIR, which has a temp/ subdirectory. A configuration must not set
 * daemon or master_process itself.
 *
 * The process is started with t_proc_start (support/proc.h), so it is
 * tracked: t_proc_reap_all() reaps it after a failed test. Not
 * thread-safe: drive it from the test's main thread. Every wait is bounded;
 * failures fail the test (cmocka fail_msg). */
#ifndef LOOM_TEST_NGINX_H
#define LOOM_TEST_NGINX_H

#include <stddef.h>

#include "support/proc.h"

typedef struct t_nginx {
    int port; /* the listen port ("@PORT@") */
    t_proc proc;
    char dir[64];
} t_nginx;

/* Writes conf (with "@PORT@" replaced by a free loopback port) and starts
 * nginx on it; waits (bounded, 5 s) until it accepts connections. When the
 * port was taken meanwhile, tries another (three attempts). Fails the test
 * when nginx is not installed, refuses the configuration (its error log is
 * printed) or does not come up. env may be NULL (the test's own). */
void t_nginx_start(t_nginx *n, const char *conf, char *const *env);
/* SIGTERM (fast shutdown), bounded wait (5 s), then SIGKILL. Returns the
 * exit status (t_proc_stop). Keeps the directory and logs. Accepts an
 * nginx that is not running. */
int t_nginx_stop(t_nginx *n);
/* Removes the directory (after t_nginx_stop). */
void t_nginx_cleanup(t_nginx *n);
/* Prints the end of nginx's error log on stderr. */
void t_nginx_print_log(const t_nginx *n, size_t max_bytes);

/* The nginx binary's path, or NULL when it is not installed. */
const char *t_nginx_binary(void);

#endif
