#define _GNU_SOURCE
#include "support/nats.h"
#include "support/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define START_TIMEOUT_MS 5000
#define STOP_TIMEOUT_MS 5000
#define ROUTES_TIMEOUT_MS 10000
#define HTTP_TIMEOUT_MS 1000

const char *t_nats_binary(void)
{
    /* Debian keeps it in /usr/sbin, which is not on a normal user's PATH. */
    static const char *const known[] = {"/usr/sbin/nats-server", "/usr/local/sbin/nats-server",
                                        "/usr/bin/nats-server", "/usr/local/bin/nats-server", NULL};
    static char found[512];
    return t_find_program("nats-server", known, found, sizeof found) ? found : NULL;
}

/* A loopback port nobody listens on right now (it may be taken by the time
 * the server binds it: callers retry). */
static int connect_loopback(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool accepts(int port)
{
    int fd = connect_loopback(port, 500);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* GET path from the monitoring port; the body's integer after "key": or
 * -1 (bounded by HTTP_TIMEOUT_MS). */
static int http_get_int(int port, const char *path, const char *key)
{
    int fd = connect_loopback(port, HTTP_TIMEOUT_MS);
    if (fd < 0)
        return -1;
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char buf[256 * 1024];
    size_t len = 0;
    int64_t deadline = t_mono_ms() + HTTP_TIMEOUT_MS;
    while (len < sizeof buf - 1 && t_mono_ms() < deadline) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(buf, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    char *end;
    long v = strtol(p, &end, 10);
    return end == p ? -1 : (int)v;
}

int t_nats_num_routes(const t_nats *n)
{
    return n->pid > 0 ? http_get_int(n->http_port, "/routez", "num_routes") : -1;
}

int t_nats_num_connections(const t_nats *n)
{
    return n->pid > 0 ? http_get_int(n->http_port, "/connz", "num_connections") : -1;
}

static void write_conf(t_nats *n, const char *routes, const char *cluster_name, const char *extra)
{
    char path[128];
    snprintf(path, sizeof path, "%s/nats.conf", n->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    fprintf(f,
            "server_name: %s\n"
            "listen: 127.0.0.1:%d\n"
            "http: 127.0.0.1:%d\n"
            "log_file: \"%s/nats.log\"\n",
            n->name, n->port, n->http_port, n->dir);
    if (n->cluster_port > 0)
        fprintf(f,
                "cluster {\n"
                "  name: %s\n"
                "  listen: 127.0.0.1:%d\n"
                "  routes: [%s]\n"
                "}\n",
                cluster_name, n->cluster_port, routes);
    if (extra)
        fprintf(f, "%s\n", extra);
    fclose(f);
}

/* Spawns nats-server; when wait, waits until it accepts clients. False
 * when it exited (e.g. a port was taken meanwhile): the caller may retry.
 * Fails the test on a timeout. */
static bool spawn(t_nats *n, bool wait)
{
    const char *bin = t_nats_binary();
    if (!bin)
        fail_msg("nats-server is not installed (apt-get install nats-server)");
    char conf[128], out[128];
    snprintf(conf, sizeof conf, "%s/nats.conf", n->dir);
    snprintf(out, sizeof out, "%s/nats.out", n->dir);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Do not outlive a test binary that crashes or is killed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl(bin, bin, "-c", conf, (char *)NULL);
        _exit(127);
    }
    n->pid = pid;
    int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            n->pid = 0;
            return false;
        }
        if (!wait || (accepts(n->port) && http_get_int(n->http_port, "/varz", "port") > 0))
            return true;
        if (t_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            n->pid = 0;
            fail_msg("nats-server did not come up on port %d within %d ms (see %s)", n->port,
                     START_TIMEOUT_MS, out);
        }
        t_sleep_ms(10);
    }
}

static void dump_output(const t_nats *n)
{
    const char *names[] = {"nats.out", "nats.log"};
    for (size_t i = 0; i < 2; i++) {
        char path[128], line[256];
        snprintf(path, sizeof path, "%s/%s", n->dir, names[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        while (fgets(line, sizeof line, f))
            fprintf(stderr, "nats-server: %s", line);
        fclose(f);
    }
}

static void make_dir(t_nats *n)
{
    snprintf(n->dir, sizeof n->dir, "/tmp/loom-nats-XXXXXX");
    if (!mkdtemp(n->dir))
        fail_msg("mkdtemp: %s", strerror(errno));
}

static bool pick_ports(t_nats *n, bool cluster)
{
    n->port = t_free_port();
    n->http_port = t_free_port();
    n->cluster_port = cluster ? t_free_port() : 0;
    return n->port > 0 && n->http_port > 0 && (!cluster || n->cluster_port > 0) &&
           n->port != n->http_port && n->port != n->cluster_port && n->http_port != n->cluster_port;
}

void t_nats_start_with(t_nats *n, const char *extra_conf)
{
    memset(n, 0, sizeof *n);
    make_dir(n);
    snprintf(n->name, sizeof n->name, "loom-%s", n->dir + strlen("/tmp/loom-nats-"));
    for (int attempt = 0; attempt < 5; attempt++) {
        if (!pick_ports(n, false))
            continue;
        write_conf(n, NULL, NULL, extra_conf);
        if (spawn(n, true))
            return;
    }
    dump_output(n);
    fail_msg("nats-server exits at start (configuration in %s)", n->dir);
}

void t_nats_start(t_nats *n)
{
    t_nats_start_with(n, NULL);
}

static void reap(t_nats *n, int sig, int timeout_ms)
{
    t_reap_pid(n->pid, sig, timeout_ms);
    n->pid = 0;
}

void t_nats_stop(t_nats *n)
{
    reap(n, SIGTERM, STOP_TIMEOUT_MS);
    if (n->dir[0] && strncmp(n->dir, "/tmp/loom-nats-", 15) == 0)
        t_remove_tree(n->dir);
    n->dir[0] = '\0';
}

void t_nats_kill(t_nats *n)
{
    reap(n, SIGKILL, STOP_TIMEOUT_MS);
}

void t_nats_restart(t_nats *n)
{
    if (n->pid > 0)
        fail_msg("t_nats_restart: nats-server is still running");
    /* The old listening sockets may linger for a moment: a few tries. */
    for (int attempt = 0; attempt < 40; attempt++) {
        if (spawn(n, true))
            return;
        t_sleep_ms(50);
    }
    dump_output(n);
    fail_msg("nats-server does not restart on port %d", n->port);
}

void t_nats_reconfigure(t_nats *n, const char *extra_conf)
{
    if (!n->dir[0] || n->cluster_port > 0)
        fail_msg("t_nats_reconfigure: not a single server started by t_nats_start");
    write_conf(n, NULL, NULL, extra_conf);
}

const char *t_nats_url(const t_nats *n)
{
    static struct {
        const t_nats *n;
        char url[48];
    } slots[16];
    static unsigned next;
    size_t i;
    for (i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slots[i].n == n)
            break;
    if (i == sizeof slots / sizeof slots[0]) {
        i = next++ % (sizeof slots / sizeof slots[0]);
        slots[i].n = n;
    }
    snprintf(slots[i].url, sizeof slots[i].url, "nats://127.0.0.1:%d", n->port);
    return slots[i].url;
}

/* ------------------------------------------------------------------------ */
/* Three-node cluster                                                        */

static void cluster_conf(t_nats_cluster *c, int i, const char *extra)
{
    char routes[256] = "";
    size_t len = 0;
    for (int j = 0; j < T_NATS_CLUSTER_NODES; j++) {
        if (j == i)
            continue;
        len += (size_t)snprintf(routes + len, sizeof routes - len, "%snats-route://127.0.0.1:%d",
                                len ? ", " : "", c->node[j].cluster_port);
    }
    write_conf(&c->node[i], routes, c->cluster_name, extra);
}

bool t_nats_cluster_wait_routes(const t_nats_cluster *c, int timeout_ms)
{
    int running = 0;
    for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
        running += c->node[i].pid > 0;
    int64_t deadline = t_mono_ms() + timeout_ms;
    for (;;) {
        bool all = true;
        for (int i = 0; i < T_NATS_CLUSTER_NODES && all; i++)
            if (c->node[i].pid > 0)
                all = t_nats_num_routes(&c->node[i]) >= running - 1;
        if (all)
            return true;
        if (t_mono_ms() > deadline)
            return false;
        t_sleep_ms(20);
    }
}

void t_nats_cluster_start_with(t_nats_cluster *c, const char *extra_conf)
{
    memset(c, 0, sizeof *c);
    for (int attempt = 0; attempt < 5; attempt++) {
        for (int i = 0; i < T_NATS_CLUSTER_NODES; i++) {
            t_nats *n = &c->node[i];
            if (!n->dir[0])
                make_dir(n);
            snprintf(n->name, sizeof n->name, "node%d-%s", i + 1,
                     n->dir + strlen("/tmp/loom-nats-"));
            while (!pick_ports(n, true)) {
            }
        }
        snprintf(c->cluster_name, sizeof c->cluster_name, "loomtest-%s",
                 c->node[0].dir + strlen("/tmp/loom-nats-"));
        bool ok = true;
        for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
            cluster_conf(c, i, extra_conf);
        /* Start all, then wait: routes form while the others boot. */
        for (int i = 0; i < T_NATS_CLUSTER_NODES && ok; i++)
            ok = spawn(&c->node[i], false);
        for (int i = 0; i < T_NATS_CLUSTER_NODES && ok; i++) {
            int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
            while (ok && !(accepts(c->node[i].port) &&
                           http_get_int(c->node[i].http_port, "/varz", "port") > 0)) {
                if (waitpid(c->node[i].pid, NULL, WNOHANG) == c->node[i].pid) {
                    c->node[i].pid = 0;
                    ok = false;
                } else if (t_mono_ms() > deadline) {
                    fail_msg("cluster node %d did not come up on port %d", i + 1, c->node[i].port);
                } else {
                    t_sleep_ms(10);
                }
            }
        }
        if (ok && t_nats_cluster_wait_routes(c, ROUTES_TIMEOUT_MS))
            return;
        for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
            reap(&c->node[i], SIGKILL, STOP_TIMEOUT_MS);
        if (ok)
            break; /* up but no routes: not a port clash */
    }
    for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
        dump_output(&c->node[i]);
    t_nats_cluster_stop(c);
    fail_msg("the three-node nats-server cluster did not form");
}

void t_nats_cluster_start(t_nats_cluster *c)
{
    t_nats_cluster_start_with(c, NULL);
}

void t_nats_cluster_kill(t_nats_cluster *c, int i)
{
    if (i < 0 || i >= T_NATS_CLUSTER_NODES)
        fail_msg("t_nats_cluster_kill: no node %d", i);
    t_nats_kill(&c->node[i]);
}

void t_nats_cluster_stop(t_nats_cluster *c)
{
    for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
        if (c->node[i].dir[0] || c->node[i].pid > 0)
            t_nats_stop(&c->node[i]);
}

const char *t_nats_cluster_url(const t_nats_cluster *c, int first)
{
    static struct {
        const t_nats_cluster *c;
        int first;
        char url[128];
    } slots[16];
    static unsigned next;
    size_t i;
    for (i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slots[i].c == c && slots[i].first == first)
            break;
    if (i == sizeof slots / sizeof slots[0]) {
        i = next++ % (sizeof slots / sizeof slots[0]);
        slots[i].c = c;
        slots[i].first = first;
    }
    size_t len = (size_t)snprintf(slots[i].url, sizeof slots[i].url, "nats://");
    for (int k = 0; k < T_NATS_CLUSTER_NODES; k++) {
        int j = (first + k) % T_NATS_CLUSTER_NODES;
        len += (size_t)snprintf(slots[i].url + len, sizeof slots[i].url - len, "%s127.0.0.1:%d",
                                k ? "," : "", c->node[j].port);
    }
    return slots[i].url;
}
