#define _GNU_SOURCE
#include "support/nginx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define START_TIMEOUT_MS 5000
#define STOP_TIMEOUT_MS 5000
#define ATTEMPTS 3

const char *t_nginx_binary(void)
{
    static const char *const known[] = {"/usr/sbin/nginx", "/usr/local/sbin/nginx",
                                        "/usr/bin/nginx", "/usr/local/nginx/sbin/nginx", NULL};
    static char found[512];
    return t_find_program("nginx", known, found, sizeof found) ? found : NULL;
}

/* True when something accepts TCP connections on 127.0.0.1:port. */
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

/* conf with every "@PORT@" replaced by port; free() it. */
static char *with_port(const char *conf, int port)
{
    static const char mark[] = "@PORT@";
    char digits[16];
    int nd = snprintf(digits, sizeof digits, "%d", port);
    t_buf b = {0};
    t_buf_add(&b, "", 0);
    for (const char *p = conf;;) {
        const char *m = strstr(p, mark);
        if (!m) {
            t_buf_add(&b, p, strlen(p));
            break;
        }
        t_buf_add(&b, p, (size_t)(m - p));
        t_buf_add(&b, digits, (size_t)nd);
        p = m + sizeof mark - 1;
    }
    return b.data;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    if (fwrite(text, 1, n, f) != n || fclose(f) != 0)
        fail_msg("cannot write %s", path);
}

void t_nginx_print_log(const t_nginx *n, size_t max_bytes)
{
    char path[128];
    snprintf(path, sizeof path, "%s/error.log", n->dir);
    char *log = t_read_file(path);
    size_t len = strlen(log);
    const char *from = len > max_bytes ? log + len - max_bytes : log;
    fprintf(stderr, "---- nginx (%s)%s ----\n%s%s", path, from != log ? ", the end" : "", from,
            len && log[len - 1] != '\n' ? "\n" : "");
    free(log);
}

void t_nginx_start(t_nginx *n, const char *conf, char *const *env)
{
    const char *bin = t_nginx_binary();
    if (!bin)
        fail_msg("nginx is not installed (apt-get install nginx-light)");
    memset(n, 0, sizeof *n);
    snprintf(n->dir, sizeof n->dir, "/tmp/loom-nginx-XXXXXX");
    if (!mkdtemp(n->dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    char temp[96], conf_path[96], err_path[96], out_path[96];
    snprintf(temp, sizeof temp, "%s/temp", n->dir);
    snprintf(conf_path, sizeof conf_path, "%s/nginx.conf", n->dir);
    snprintf(err_path, sizeof err_path, "%s/error.log", n->dir);
    snprintf(out_path, sizeof out_path, "%s/nginx.out", n->dir);
    if (mkdir(temp, 0700) != 0)
        fail_msg("mkdir %s: %s", temp, strerror(errno));
    for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
        n->port = t_free_port();
        char *text = with_port(conf, n->port);
        write_file(conf_path, text);
        free(text);
        t_proc_start(&n->proc, "nginx", bin,
                     (const char *const[]){"-p", n->dir, "-e", err_path, "-c", conf_path, "-g",
                                           "daemon off; master_process off;", NULL},
                     env, out_path);
        int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
        while (t_proc_running(&n->proc) && !accepts(n->port)) {
            if (t_mono_ms() >= deadline) {
                t_proc_kill(&n->proc);
                t_nginx_print_log(n, 4000);
                fail_msg("nginx did not accept connections on 127.0.0.1:%d within %d ms", n->port,
                         START_TIMEOUT_MS);
            }
            t_sleep_ms(10);
        }
        if (t_proc_running(&n->proc))
            return;
        /* It exited: a port taken meanwhile is worth another try, anything
         * else (a configuration error) is not. */
        char *log = t_read_file(err_path);
        bool in_use = strstr(log, "Address already in use") != NULL;
        free(log);
        if (!in_use || attempt == ATTEMPTS - 1) {
            t_nginx_print_log(n, 4000);
            fail_msg("nginx exited with %d (configuration %s)", n->proc.status, conf_path);
        }
    }
}

int t_nginx_stop(t_nginx *n)
{
    if (n->proc.pid <= 0)
        return n->proc.status;
    return t_proc_stop(&n->proc, SIGTERM, STOP_TIMEOUT_MS);
}

void t_nginx_cleanup(t_nginx *n)
{
    if (!n->dir[0])
        return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", n->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "t_nginx_cleanup: cannot remove %s\n", n->dir);
    n->dir[0] = '\0';
}
