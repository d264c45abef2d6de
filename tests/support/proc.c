#define _GNU_SOURCE
#include "support/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

#define LOOM_TEST_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Children started and not reaped yet (pids; 0 = free slot). Only the
 * main thread touches it (see proc.h). */
#define MAX_TRACKED 64
static pid_t tracked[MAX_TRACKED];

static void track(pid_t pid)
{
    for (size_t i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == 0) {
            tracked[i] = pid;
            return;
        }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("proc: more than %d children at once", MAX_TRACKED);
}

static void untrack(pid_t pid)
{
    for (size_t i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] == pid)
            tracked[i] = 0;
}

int64_t t_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void t_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int t_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fail_msg("socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0) {
        int e = errno;
        close(s);
        fail_msg("no free loopback port: %s", strerror(e));
    }
    close(s);
    return ntohs(a.sin_port);
}

void t_buf_add(t_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            fail_msg("out of memory");
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

char *t_read_file(const char *path)
{
    t_buf b = {0};
    t_buf_add(&b, "", 0);
    FILE *f = fopen(path, "r");
    if (f) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            t_buf_add(&b, chunk, n);
        fclose(f);
    }
    return b.data;
}

char **t_env_new(const char *const *extra)
{
    size_t n = 0, n_extra = 0;
    while (environ[n])
        n++;
    while (extra && extra[n_extra])
        n_extra++;
    char **env = calloc(n + n_extra + 1, sizeof *env);
    if (!env)
        fail_msg("out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if ((strncmp(e, "LOOM_", 5) == 0 && strncmp(e, "LOOM_TEST_", 10) != 0) ||
            strncmp(e, "TMPDIR=", 7) == 0)
            continue;
        env[k++] = strdup(e);
    }
    for (size_t i = 0; i < n_extra; i++)
        env[k++] = strdup(extra[i]);
    for (size_t i = 0; i < k; i++)
        if (!env[i])
            fail_msg("out of memory");
    return env;
}

void t_env_free(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void close_from(int lowfd)
{
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = lowfd; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
        close((int)fd);
}

const char *t_helper_path(const char *name)
{
    static char path[4096];
    const char *dir = getenv("LOOM_TEST_HELPERS"); /* set by make (a tool may run the test) */
    if (dir && *dir) {
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (access(path, X_OK) != 0)
            fail_msg("%s is not built (make tests builds the test helpers)", path);
        return path;
    }
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        fail_msg("readlink /proc/self/exe: %s", strerror(errno));
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    if (!slash || (size_t)(slash - path) + strlen(name) + 2 > sizeof path)
        fail_msg("t_helper_path: odd path %s", path);
    strcpy(slash + 1, name);
    if (access(path, X_OK) != 0)
        fail_msg("%s is not built (make tests builds the test helpers)", path);
    return path;
}

bool t_wrapped(void)
{
    const char *w = getenv("LOOM_TEST_WRAP");
    return w && *w;
}

/* Ours: not a system program (mosquitto, nats-server, curl, ...), nor one of
 * our shell scripts (secure.sh: memcheck would check the shell). */
static bool wrap_wanted(const char *prog)
{
    size_t n = strlen(prog);
    return t_wrapped() && strncmp(prog, "/usr/", 5) != 0 && strncmp(prog, "/bin/", 5) != 0 &&
           strncmp(prog, "/sbin/", 6) != 0 && !(n > 3 && strcmp(prog + n - 3, ".sh") == 0);
}

pid_t t_spawn(const char *prog, const char *const *args, char *const *env, int out_fd, int err_fd)
{
    const char *argv[96];
    size_t n = 0;
    static char wrap[1024]; /* split in place: read-only for the child */
    if (wrap_wanted(prog)) {
        snprintf(wrap, sizeof wrap, "%s", getenv("LOOM_TEST_WRAP"));
        for (char *save = NULL, *w = strtok_r(wrap, " ", &save); w && n < 32;
             w = strtok_r(NULL, " ", &save))
            argv[n++] = w;
    }
    const char *exe = n ? argv[0] : prog;
    static char found[1024];
    if (!strchr(exe, '/')) {
        /* Resolved here: the child may only make async-signal-safe calls. */
        const char *path = getenv("PATH");
        for (const char *p = path; p && *p;) {
            size_t len = strcspn(p, ":");
            snprintf(found, sizeof found, "%.*s/%s", (int)len, p, exe);
            if (access(found, X_OK) == 0) {
                exe = found;
                break;
            }
            p += len + (p[len] == ':');
        }
    }
    argv[n++] = prog;
    for (size_t i = 0; args && args[i]; i++) {
        if (n >= LOOM_TEST_ARRAY_LEN(argv) - 1)
            fail_msg("t_spawn: too many arguments for %s", prog);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Do not outlive the test binary, even when it is killed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(125);
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
            _exit(126);
        close_from(3);
        /* The test may ignore SIGPIPE; children start with the default. */
        signal(SIGPIPE, SIG_DFL);
        execve(exe, (char *const *)argv, env ? env : environ);
        static const char msg[] = "t_spawn: exec failed: ";
        ssize_t w = write(2, msg, sizeof msg - 1);
        w = write(2, prog, strlen(prog));
        w = write(2, "\n", 1);
        (void)w;
        _exit(127);
    }
    return pid;
}

int t_exit_status(int ws)
{
    if (WIFEXITED(ws))
        return WEXITSTATUS(ws);
    if (WIFSIGNALED(ws))
        return 128 + WTERMSIG(ws);
    return T_EXIT_TIMEOUT;
}

void t_run_prog(t_run *r, const char *prog, const char *const *args, char *const *env,
                int timeout_ms)
{
    memset(r, 0, sizeof *r);
    t_buf_add(&r->out, "", 0);
    t_buf_add(&r->err, "", 0);
    int op[2], ep[2];
    if (pipe2(op, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    if (pipe2(ep, O_CLOEXEC) != 0) {
        close(op[0]);
        close(op[1]);
        fail_msg("pipe: %s", strerror(errno));
    }
    pid_t pid = t_spawn(prog, args, env, op[1], ep[1]);
    track(pid);
    close(op[1]);
    close(ep[1]);
    struct pollfd fds[2] = {{.fd = op[0], .events = POLLIN}, {.fd = ep[0], .events = POLLIN}};
    t_buf *bufs[2] = {&r->out, &r->err};
    int64_t deadline = t_mono_ms() + timeout_ms;
    bool timed_out = false;
    int open_fds = 2;
    while (open_fds > 0) {
        int64_t left = deadline - t_mono_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int k = poll(fds, 2, (int)left);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            timed_out = true; /* cannot watch it any more: treat as hung */
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t got = read(fds[i].fd, chunk, sizeof chunk);
            if (got > 0) {
                t_buf_add(bufs[i], chunk, (size_t)got);
            } else if (got == 0 || errno != EINTR) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            }
        }
    }
    if (timed_out)
        kill(pid, SIGKILL);
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    untrack(pid);
    r->status = timed_out ? T_EXIT_TIMEOUT : t_exit_status(ws);
}

void t_run_free(t_run *r)
{
    free(r->out.data);
    free(r->err.data);
    memset(r, 0, sizeof *r);
}

const char *t_run_out(const t_run *r)
{
    return r->out.data ? r->out.data : "";
}

const char *t_run_err(const t_run *r)
{
    return r->err.data ? r->err.data : "";
}

void t_proc_start(t_proc *p, const char *name, const char *prog, const char *const *args,
                  char *const *env, const char *log_path)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    if (snprintf(p->log_path, sizeof p->log_path, "%s", log_path) >= (int)sizeof p->log_path)
        fail_msg("t_proc_start: log path too long: %s", log_path);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_msg("cannot open %s: %s", log_path, strerror(errno));
    p->pid = t_spawn(prog, args, env, fd, fd);
    close(fd);
    track(p->pid);
}

/* Reaps p if it exited; true when it did (or was reaped elsewhere). */
static bool try_reap(t_proc *p)
{
    if (p->pid <= 0)
        return true;
    int ws = 0;
    pid_t got = waitpid(p->pid, &ws, WNOHANG);
    if (got == 0)
        return false;
    if (got < 0 && errno == EINTR)
        return false;
    untrack(p->pid);
    /* ECHILD: t_proc_reap_all took it; its status is unknown. */
    p->status = got == p->pid ? t_exit_status(ws) : T_EXIT_TIMEOUT;
    p->pid = 0;
    return true;
}

bool t_proc_running(t_proc *p)
{
    return !try_reap(p);
}

int t_proc_stop(t_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return p->status;
    kill(p->pid, sig);
    int64_t deadline = t_mono_ms() + timeout_ms;
    while (!try_reap(p)) {
        if (t_mono_ms() >= deadline) {
            t_proc_kill(p);
            p->status = T_EXIT_TIMEOUT;
            return p->status;
        }
        t_sleep_ms(5);
    }
    return p->status;
}

void t_proc_kill(t_proc *p)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, SIGKILL);
    int ws = 0;
    pid_t got;
    while ((got = waitpid(p->pid, &ws, 0)) < 0 && errno == EINTR) {
    }
    untrack(p->pid);
    p->status = got == p->pid ? t_exit_status(ws) : T_EXIT_TIMEOUT;
    p->pid = 0;
}

char *t_proc_log(const t_proc *p)
{
    return t_read_file(p->log_path);
}

size_t t_proc_log_count(const t_proc *p, const char *needle)
{
    char *log = t_proc_log(p);
    size_t n = 0;
    for (char *line = log; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if (strstr(line, needle))
            n++;
        line = end ? end + 1 : NULL;
    }
    free(log);
    return n;
}

void t_proc_print_log(const t_proc *p, size_t max_bytes)
{
    char *log = t_proc_log(p);
    size_t len = strlen(log);
    const char *from = len > max_bytes ? log + len - max_bytes : log;
    fprintf(stderr, "---- %s (%s)%s ----\n%s%s", p->name, p->log_path,
            from != log ? ", the end" : "", from, len && log[len - 1] != '\n' ? "\n" : "");
    free(log);
}

void t_proc_reap_all(int timeout_ms)
{
    for (size_t i = 0; i < MAX_TRACKED; i++)
        if (tracked[i] > 0)
            kill(tracked[i], SIGTERM);
    int64_t deadline = t_mono_ms() + timeout_ms;
    for (;;) {
        bool left = false;
        for (size_t i = 0; i < MAX_TRACKED; i++) {
            if (tracked[i] <= 0)
                continue;
            pid_t got = waitpid(tracked[i], NULL, WNOHANG);
            if (got == tracked[i] || (got < 0 && errno == ECHILD))
                tracked[i] = 0;
            else
                left = true;
        }
        if (!left)
            return;
        if (t_mono_ms() >= deadline)
            break;
        t_sleep_ms(10);
    }
    for (size_t i = 0; i < MAX_TRACKED; i++) {
        if (tracked[i] <= 0)
            continue;
        kill(tracked[i], SIGKILL);
        while (waitpid(tracked[i], NULL, 0) < 0 && errno == EINTR) {
        }
        tracked[i] = 0;
    }
}

bool t_find_program(const char *name, const char *const *known, char *out, size_t outlen)
{
    for (size_t i = 0; known && known[i]; i++) {
        if (access(known[i], X_OK) == 0) {
            snprintf(out, outlen, "%s", known[i]);
            return true;
        }
    }
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n > 0 && (size_t)snprintf(out, outlen, "%.*s/%s", (int)n, path, name) < outlen &&
            access(out, X_OK) == 0)
            return true;
        path = end ? end + 1 : NULL;
    }
    return false;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void t_remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

void t_reap_pid(pid_t pid, int sig, int timeout_ms)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    int64_t deadline = t_mono_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return;
        if (t_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return;
        }
        t_sleep_ms(5);
    }
}
