#define _GNU_SOURCE
#include "support/mosquitto.h"
#include "support/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define START_TIMEOUT_MS 5000
#define STOP_TIMEOUT_MS 5000

const char *t_broker_binary(void)
{
    /* Debian keeps it in /usr/sbin, which is not on a normal user's PATH. */
    static const char *const known[] = {"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto",
                                        "/usr/bin/mosquitto", "/usr/local/bin/mosquitto", NULL};
    static char found[512];
    return t_find_program("mosquitto", known, found, sizeof found) ? found : NULL;
}

static bool accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static void write_conf(t_broker *b, const char *extra)
{
    char path[128];
    snprintf(path, sizeof path, "%s/mosquitto.conf", b->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    /* When started as root mosquitto drops to the user "mosquitto", who could
     * not write into our directory: name the current user instead. */
    struct passwd *pw = getpwuid(geteuid());
    fprintf(f,
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "log_dest file %s/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            b->port, b->dir, b->dir);
    if (pw && pw->pw_name)
        fprintf(f, "user %s\n", pw->pw_name);
    if (extra)
        fprintf(f, "%s\n", extra);
    fclose(f);
}

/* Spawns mosquitto and waits until it accepts; false when it exited (e.g.
 * the port was taken meanwhile) — the caller may retry. Fails the test on
 * a timeout. */
static bool spawn(t_broker *b)
{
    const char *bin = t_broker_binary();
    if (!bin)
        fail_msg("mosquitto is not installed (apt-get install mosquitto)");
    char conf[128], out[128];
    snprintf(conf, sizeof conf, "%s/mosquitto.conf", b->dir);
    snprintf(out, sizeof out, "%s/mosquitto.out", b->dir);
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
    b->pid = pid;
    int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            b->pid = 0;
            return false;
        }
        if (accepts(b->port))
            return true;
        if (t_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            b->pid = 0;
            fail_msg("mosquitto did not come up on port %d within %d ms (see %s)", b->port,
                     START_TIMEOUT_MS, out);
        }
        t_sleep_ms(10);
    }
}

static void dump_output(const t_broker *b)
{
    char path[128], line[256];
    snprintf(path, sizeof path, "%s/mosquitto.out", b->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "mosquitto: %s", line);
    fclose(f);
}

void t_broker_start_with(t_broker *b, const char *extra_conf)
{
    memset(b, 0, sizeof *b);
    snprintf(b->dir, sizeof b->dir, "/tmp/loom-mosq-XXXXXX");
    if (!mkdtemp(b->dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    for (int attempt = 0; attempt < 5; attempt++) {
        b->port = t_free_port();
        if (b->port <= 0)
            fail_msg("no free loopback port");
        write_conf(b, extra_conf);
        if (spawn(b))
            return;
    }
    dump_output(b);
    fail_msg("mosquitto exits at start (configuration in %s)", b->dir);
}

void t_broker_start(t_broker *b)
{
    t_broker_start_with(b, NULL);
}

static void reap(t_broker *b, int sig, int timeout_ms)
{
    t_reap_pid(b->pid, sig, timeout_ms);
    b->pid = 0;
}

void t_broker_stop(t_broker *b)
{
    reap(b, SIGTERM, STOP_TIMEOUT_MS);
    if (b->dir[0] && strncmp(b->dir, "/tmp/loom-mosq-", 15) == 0)
        t_remove_tree(b->dir);
    b->dir[0] = '\0';
}

void t_broker_kill(t_broker *b)
{
    reap(b, SIGKILL, STOP_TIMEOUT_MS);
}

void t_broker_restart(t_broker *b)
{
    if (b->pid > 0)
        fail_msg("t_broker_restart: mosquitto is still running");
    /* The old listening socket may linger for a moment; mosquitto binds with
     * SO_REUSEADDR, so a few tries are enough. */
    for (int attempt = 0; attempt < 20; attempt++) {
        if (spawn(b))
            return;
        t_sleep_ms(50);
    }
    dump_output(b);
    fail_msg("mosquitto does not restart on port %d", b->port);
}

static struct timespec db_mtime(const t_broker *b)
{
    char path[128];
    snprintf(path, sizeof path, "%s/mosquitto.db", b->dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return (struct timespec){0, 0};
    return st.st_mtim;
}

void t_broker_wait_saved(const t_broker *b)
{
    struct timespec before = db_mtime(b);
    int64_t deadline = t_mono_ms() + 5000;
    for (;;) {
        struct timespec now = db_mtime(b);
        if (now.tv_sec != before.tv_sec || now.tv_nsec != before.tv_nsec)
            return;
        if (t_mono_ms() > deadline)
            fail_msg("mosquitto did not save its database within 5 s (%s)", b->dir);
        t_sleep_ms(20);
    }
}

const char *t_broker_url(const t_broker *b)
{
    static struct {
        const t_broker *b;
        char url[48];
    } slots[16];
    static unsigned next;
    size_t i;
    for (i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slots[i].b == b)
            break;
    if (i == sizeof slots / sizeof slots[0]) {
        i = next++ % (sizeof slots / sizeof slots[0]);
        slots[i].b = b;
    }
    snprintf(slots[i].url, sizeof slots[i].url, "mqtt://127.0.0.1:%d", b->port);
    return slots[i].url;
}
