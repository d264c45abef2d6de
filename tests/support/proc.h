/* Child processes for integration tests.
 *
 * Two kinds: one-shot runs (t_run_prog: stdin from /dev/null, stdout and
 * stderr captured through pipes, killed after a timeout) and background
 * processes (t_proc_start: output to a log file). Background processes are
 * tracked until they are reaped, so a test's teardown can call
 * t_proc_reap_all() to kill whatever a failed test left running. Every
 * child also gets SIGKILL when the test binary dies (PR_SET_PDEATHSIG),
 * and inherits no descriptor besides 0, 1 and 2.
 *
 * Every wait is bounded. Not thread-safe: use from the test's main thread
 * (the thread that forks: a child's death signal follows that thread).
 * Failures fail the test (cmocka). */
#ifndef LOOM_TEST_PROC_H
#define LOOM_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define T_EXIT_TIMEOUT (-1) /* status of a child that had to be killed */

int64_t t_mono_ms(void);
void t_sleep_ms(int ms);

/* The path of an executable: the first of known (NULL-terminated) that
 * exists, else name found on PATH, written to out. False when none. */
bool t_find_program(const char *name, const char *const *known, char *out, size_t outlen);

/* Removes dir and everything below it (best effort). */
void t_remove_tree(const char *dir);

/* Sends sig to pid, waits up to timeout_ms for it to exit, then SIGKILLs
 * and reaps it. */
void t_reap_pid(pid_t pid, int sig, int timeout_ms);

/* A TCP port that was free on 127.0.0.1 a moment ago (someone else may
 * take it before the caller binds it: retry on failure). */
int t_free_port(void);

/* A growable NUL-terminated byte buffer; free(b->data) when done. */
typedef struct t_buf {
    char *data;
    size_t len, cap;
} t_buf;
void t_buf_add(t_buf *b, const void *p, size_t n);

/* The whole file as a NUL-terminated string ("" when it cannot be read);
 * free() it. */
char *t_read_file(const char *path);

/* An environment for children: the test's own without LOOM_* variables
 * (LOOM_TEST_* are kept) and without TMPDIR, so that no deployment leaks
 * in from the caller's shell, plus the "NAME=VALUE" entries of extra
 * (NULL-terminated, may be NULL). Everything is copied; free it with
 * t_env_free. */
char **t_env_new(const char *const *extra);
void t_env_free(char **env);

/* Forks and execs prog with args (NULL-terminated, without argv[0]; may be
 * NULL) in env, stdin from /dev/null, stdout and stderr on the given
 * descriptors. Returns the pid; the caller reaps it.
 *
 * When the environment variable LOOM_TEST_WRAP is set (e.g. by `make
 * valgrind`: "valgrind --error-exitcode=1 --leak-check=full ..."), programs
 * of this tree (any path not under /usr, /bin or /sbin: the shop, the fault
 * service) are run through that command, split at spaces. */
pid_t t_spawn(const char *prog, const char *const *args, char *const *env, int out_fd, int err_fd);

/* The path of a helper program (e.g. "fault_service") in the directory
 * $LOOM_TEST_HELPERS, or else next to the running test binary, in a static
 * buffer; fails the test when it is not there. */
const char *t_helper_path(const char *name);

/* True when children run under LOOM_TEST_WRAP (slower: tests may scale
 * their timeouts). */
bool t_wrapped(void);

/* A waitpid status as an exit code: the code, or 128 + the signal. */
int t_exit_status(int wait_status);

/* A one-shot run. */
typedef struct t_run {
    int status; /* exit code, 128 + signal, or T_EXIT_TIMEOUT */
    t_buf out, err;
} t_run;

/* Runs prog to completion, capturing its output; it is killed after
 * timeout_ms. out and err are always non-NULL afterwards. */
void t_run_prog(t_run *r, const char *prog, const char *const *args, char *const *env,
                int timeout_ms);
void t_run_free(t_run *r);
const char *t_run_out(const t_run *r);
const char *t_run_err(const t_run *r);

/* A background process. */
typedef struct t_proc {
    pid_t pid;  /* 0 once reaped */
    int status; /* exit status once reaped (t_exit_status, or T_EXIT_TIMEOUT) */
    char name[32];
    char log_path[256];
} t_proc;

/* Starts prog in the background with stdout and stderr appended to
 * log_path (created when missing) and tracks it. */
void t_proc_start(t_proc *p, const char *name, const char *prog, const char *const *args,
                  char *const *env, const char *log_path);
/* True while it runs; reaps it (and records its status) once it exited. */
bool t_proc_running(t_proc *p);
/* Sends sig (0: none, e.g. when several were signalled at once), waits up
 * to timeout_ms for the exit, then SIGKILLs. Returns the exit status, or
 * T_EXIT_TIMEOUT when it had to be killed. A process already reaped
 * returns its recorded status. */
int t_proc_stop(t_proc *p, int sig, int timeout_ms);
/* SIGKILL and reap. */
void t_proc_kill(t_proc *p);
/* Its log so far (free() it). */
char *t_proc_log(const t_proc *p);
/* Counts the lines of its log that contain needle. */
size_t t_proc_log_count(const t_proc *p, const char *needle);
/* Prints the last max_bytes of its log on stderr, under its name. */
void t_proc_print_log(const t_proc *p, size_t max_bytes);

/* SIGTERMs every tracked process still running, waits for them together
 * up to timeout_ms, SIGKILLs the rest and reaps them all. The t_proc
 * structs themselves are not touched (they may be gone with a failed
 * test's stack). */
void t_proc_reap_all(int timeout_ms);

#endif
