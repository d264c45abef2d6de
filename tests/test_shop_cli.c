/* The examples as their users run them: the built shop and hello binaries
 * started as subprocesses (fork/exec, output captured through pipes, every
 * run bounded in time), checked by exit code, stdout and stderr. The last
 * test runs the whole order flow through the HTTP bridge with libcurl.
 *
 * The binaries are found under $LOOM_TEST_BUILD (set by `make check` to the
 * variant's build tree; default "."); sample files are read relative to the
 * working directory, the top of the source tree. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support/support.h"

#define RUN_TIMEOUT_MS 30000 /* one one-shot run, generous for sanitizer builds */
#define EXIT_TIMEOUT -1      /* run.status when the child had to be killed */

extern char **environ;

static char shop_path[4096];
static char hello_path[4096];
static char **child_env; /* environ without LOOM_* (except LOOM_TEST_*) */
static char tmpdir_var[128];
static char tmp_dir[] = "/tmp/loom-shop-cli-XXXXXX";

/* --- helpers --------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        assert_non_null(d);
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

typedef struct run {
    int status; /* exit code, 128 + signal, or EXIT_TIMEOUT */
    buf out, err;
} run;

static void run_free(run *r)
{
    free(r->out.data);
    free(r->err.data);
    memset(r, 0, sizeof *r);
}

static const char *out_of(const run *r)
{
    return r->out.data ? r->out.data : "";
}
static const char *err_of(const run *r)
{
    return r->err.data ? r->err.data : "";
}

/* Starts prog with args (argv[0] is prog), stdin from /dev/null; its stdout
 * and stderr go to the given descriptors. Returns the pid. */
static pid_t spawn(const char *prog, const char *const *args, int out_fd, int err_fd)
{
    const char *argv[64] = {prog};
    size_t n = 1;
    for (; args && args[n - 1]; n++) {
        assert_true(n < 63);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
            _exit(126);
        execve(prog, (char *const *)argv, child_env);
        dprintf(2, "exec %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    return pid;
}

static int decode_status(int ws)
{
    if (WIFEXITED(ws))
        return WEXITSTATUS(ws);
    if (WIFSIGNALED(ws))
        return 128 + WTERMSIG(ws);
    return EXIT_TIMEOUT;
}

/* Runs prog to completion (killed after RUN_TIMEOUT_MS) capturing its
 * output. args is NULL-terminated. */
static void run_prog(run *r, const char *prog, const char *const *args)
{
    memset(r, 0, sizeof *r);
    int op[2], ep[2];
    assert_int_equal(pipe2(op, O_CLOEXEC), 0);
    assert_int_equal(pipe2(ep, O_CLOEXEC), 0);
    pid_t pid = spawn(prog, args, op[1], ep[1]);
    close(op[1]);
    close(ep[1]);
    struct pollfd fds[2] = {{.fd = op[0], .events = POLLIN}, {.fd = ep[0], .events = POLLIN}};
    buf *bufs[2] = {&r->out, &r->err};
    int64_t deadline = mono_ms() + RUN_TIMEOUT_MS;
    bool timed_out = false;
    int open_fds = 2;
    while (open_fds > 0) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int k = poll(fds, 2, (int)left);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k >= 0);
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t got = read(fds[i].fd, chunk, sizeof chunk);
            if (got > 0) {
                buf_add(bufs[i], chunk, (size_t)got);
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
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        ;
    r->status = timed_out ? EXIT_TIMEOUT : decode_status(ws);
    if (!r->out.data)
        buf_add(&r->out, "", 0);
    if (!r->err.data)
        buf_add(&r->err, "", 0);
}

#define RUN_SHOP(r, ...) run_prog((r), shop_path, (const char *const[]){__VA_ARGS__, NULL})

/* Fails with the child's output when its exit status is not want. */
static void expect_status(const run *r, int want)
{
    if (r->status != want)
        fail_msg("exit status %d, expected %d\n--- stdout:\n%s\n--- stderr:\n%s", r->status, want,
                 out_of(r), err_of(r));
}

/* Parses text as one JSON value; fails the test otherwise. */
static cJSON *parse_json(const char *text, const char *what)
{
    cJSON *j = cJSON_Parse(text);
    if (!j)
        fail_msg("%s is not JSON:\n%s", what, text);
    return j;
}

static const char *str_at(const cJSON *obj, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

static int int_at(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* The error JSON a failed --call prints on stderr: checks its status and
 * returns it (cJSON_Delete it). */
static cJSON *expect_error_json(const run *r, int status)
{
    if (r->status == 0)
        fail_msg("the call succeeded, expected %d:\n%s", status, out_of(r));
    assert_string_equal(out_of(r), "");
    cJSON *e = parse_json(err_of(r), "stderr");
    assert_int_equal(int_at(e, "status"), status);
    assert_non_null(str_at(e, "message"));
    return e;
}

/* True when some entry of data.errors has this path and its message
 * mentions needle. */
static bool has_detail(const cJSON *error, const char *path, const char *needle)
{
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(
                              cJSON_GetObjectItemCaseSensitive(error, "data"), "errors"))
    {
        const char *p = str_at(d, "path"), *m = str_at(d, "message");
        if (p && m && strcmp(p, path) == 0 && strstr(m, needle))
            return true;
    }
    return false;
}

static char *write_temp(const char *name, const char *text)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", tmp_dir, name) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* --- setup ------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("LOOM_TEST_BUILD");
    if (!build || !*build)
        build = ".";
    snprintf(shop_path, sizeof shop_path, "%s/examples/shop/shop", build);
    snprintf(hello_path, sizeof hello_path, "%s/examples/hello/hello", build);
    if (access(shop_path, X_OK) != 0 || access(hello_path, X_OK) != 0) {
        fprintf(stderr, "test_shop_cli: build the examples first (%s, %s)\n", shop_path,
                hello_path);
        return -1;
    }
    /* The children must not pick up a deployment from the environment. */
    size_t n = 0;
    while (environ[n])
        n++;
    child_env = calloc(n + 3, sizeof *child_env);
    if (!child_env)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((strncmp(environ[i], "LOOM_", 5) != 0 || strncmp(environ[i], "LOOM_TEST_", 10) == 0) &&
            strncmp(environ[i], "TMPDIR=", 7) != 0)
            child_env[k++] = environ[i];
    if (!mkdtemp(tmp_dir))
        return -1;
    /* Each test starts from empty state: the shop's default file store is
     * tested on its own (test_default_state_is_shared_file). */
    snprintf(tmpdir_var, sizeof tmpdir_var, "TMPDIR=%s", tmp_dir);
    child_env[k++] = tmpdir_var;
    child_env[k++] = "LOOM_STATE=memory:";
    signal(SIGPIPE, SIG_IGN);
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_shop_cli: cannot remove %s\n", tmp_dir);
    free(child_env);
    curl_global_cleanup();
    return 0;
}

/* --- one-shot calls ---------------------------------------------------------- */

static void test_call_users_create_prints_user(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}");
    expect_status(&r, 0);
    cJSON *u = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(u, "id"), "u-1");
    assert_string_equal(str_at(u, "name"), "Ada");
    assert_string_equal(str_at(u, "email"), "ada@example.com");
    assert_non_null(str_at(u, "createdAt"));
    /* One-shot runs keep stderr quiet (log level warn) when all went well. */
    assert_string_equal(err_of(&r), "");
    cJSON_Delete(u);
    run_free(&r);
}

static void test_call_missing_field_is_400(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"Ada\"}");
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "", "email"));
    cJSON_Delete(e);
    run_free(&r);
}

static void test_call_wrong_type_is_400(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"Ada\",\"email\":5}");
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "/email", "string"));
    cJSON_Delete(e);
    run_free(&r);

    /* The pattern and additionalProperties: false are enforced as well. */
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"Ada\",\"email\":\"not-an-email\"}");
    e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "/email", ""));
    cJSON_Delete(e);
    run_free(&r);
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"A\",\"email\":\"a@b.io\",\"admin\":true}");
    e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "/admin", "") || has_detail(e, "", "admin"));
    cJSON_Delete(e);
    run_free(&r);
}

static void test_call_payload_not_json(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":");
    expect_status(&r, 2);
    assert_non_null(strstr(err_of(&r), "not valid JSON"));
    assert_string_equal(out_of(&r), "");
    run_free(&r);
}

static void test_call_unknown_command_is_503(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.nosuch", "{}");
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 503);
    cJSON_Delete(e);
    run_free(&r);

    RUN_SHOP(&r, "--call", "nosuch.get");
    expect_status(&r, 1);
    cJSON_Delete(expect_error_json(&r, 503));
    run_free(&r);

    RUN_SHOP(&r, "--call", "nodot");
    expect_status(&r, 2);
    run_free(&r);
}

static void test_call_get_unknown_user_is_404(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "users.get", "--param", "{\"id\":\"u-42\"}");
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 404);
    assert_string_equal(str_at(cJSON_GetObjectItemCaseSensitive(e, "data"), "id"), "u-42");
    cJSON_Delete(e);
    run_free(&r);

    /* The parameter schema requires the id. */
    RUN_SHOP(&r, "--call", "users.get", "--param", "{}");
    e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "", "id"));
    cJSON_Delete(e);
    run_free(&r);
}

static void test_call_charge_rejects_non_positive_amounts(void **state)
{
    (void)state;
    static const char *const bad[] = {"0", "-5", "-0.01"};
    run r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char payload[128];
        snprintf(payload, sizeof payload, "{\"orderId\":\"o-1\",\"amount\":%s}", bad[i]);
        RUN_SHOP(&r, "--call", "payments.charge", payload);
        expect_status(&r, 1);
        cJSON *e = expect_error_json(&r, 400);
        assert_true(has_detail(e, "/amount", ""));
        cJSON_Delete(e);
        run_free(&r);
    }
    RUN_SHOP(&r, "--call", "payments.charge", "{\"orderId\":\"o-1\",\"amount\":12.5}");
    expect_status(&r, 0);
    cJSON *p = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(p, "paymentId"), "p-1");
    assert_string_equal(str_at(p, "orderId"), "o-1");
    assert_string_equal(str_at(p, "status"), "captured");
    assert_string_equal(str_at(p, "currency"), "EUR");
    assert_true(cJSON_GetObjectItemCaseSensitive(p, "amount")->valuedouble == 12.5);
    cJSON_Delete(p);
    run_free(&r);
}

static void test_call_order_for_unknown_user_is_422(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "orders.create",
             "{\"userId\":\"u-7\",\"items\":[{\"sku\":\"book\",\"quantity\":1}],\"amount\":3}");
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 422);
    assert_string_equal(str_at(cJSON_GetObjectItemCaseSensitive(e, "data"), "userId"), "u-7");
    cJSON_Delete(e);
    run_free(&r);

    /* quantity must be an integer >= 1 */
    RUN_SHOP(&r, "--call", "orders.create",
             "{\"userId\":\"u-7\",\"items\":[{\"sku\":\"book\",\"quantity\":0}],\"amount\":3}");
    e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "/items/0/quantity", ""));
    cJSON_Delete(e);
    run_free(&r);
}

static void test_call_notifications_list_empty(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--call", "notifications.list");
    expect_status(&r, 0);
    cJSON *l = parse_json(out_of(&r), "stdout");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(l, "notifications");
    assert_true(cJSON_IsArray(arr));
    assert_int_equal(cJSON_GetArraySize(arr), 0);
    cJSON_Delete(l);
    run_free(&r);
}

/* The order flow with one process per call, the state kept in a file store
 * shared by the processes. */
static void test_call_order_flow_across_processes(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "file:%s/state.json", tmp_dir);
    run r;
    RUN_SHOP(&r, "--state", url, "--call", "users.create",
             "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}");
    expect_status(&r, 0);
    cJSON *u = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(u, "id"), "u-1");
    cJSON_Delete(u);
    run_free(&r);

    RUN_SHOP(&r, "--state", url, "--call", "orders.create",
             "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"book-42\",\"quantity\":2}],"
             "\"amount\":9.5}");
    expect_status(&r, 0);
    cJSON *order = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(order, "id"), "o-1");
    assert_string_equal(str_at(order, "userId"), "u-1");
    assert_string_equal(str_at(order, "status"), "paid");
    assert_string_equal(str_at(order, "paymentId"), "p-1");
    assert_string_equal(str_at(order, "currency"), "EUR");
    assert_true(cJSON_GetObjectItemCaseSensitive(order, "amount")->valuedouble == 9.5);
    run_free(&r);

    RUN_SHOP(&r, "--state", url, "--call", "orders.get", "--param", "{\"id\":\"o-1\"}");
    expect_status(&r, 0);
    cJSON *again = parse_json(out_of(&r), "stdout");
    assert_true(cJSON_Compare(order, again, true));
    cJSON_Delete(again);
    cJSON_Delete(order);
    run_free(&r);

    /* Emails are unique (case-insensitively). */
    RUN_SHOP(&r, "--state", url, "--call", "users.create",
             "{\"name\":\"Ada\",\"email\":\"ADA@example.com\"}");
    cJSON_Delete(expect_error_json(&r, 409));
    run_free(&r);

    /* Charging is idempotent per order: the same payment again, and a
     * different amount for the same order is refused. */
    RUN_SHOP(&r, "--state", url, "--call", "payments.charge",
             "{\"orderId\":\"o-1\",\"amount\":9.5}");
    expect_status(&r, 0);
    cJSON *p = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(p, "paymentId"), "p-1");
    cJSON_Delete(p);
    run_free(&r);
    RUN_SHOP(&r, "--state", url, "--call", "payments.charge", "{\"orderId\":\"o-1\",\"amount\":3}");
    cJSON_Delete(expect_error_json(&r, 409));
    run_free(&r);
}


/* Without --state, the shop keeps its state in $TMPDIR/loom-shop-UID.json,
 * so one-shot calls in separate processes see each other's writes. */
static void test_default_state_is_shared_file(void **state)
{
    (void)state;
    size_t n = 0;
    while (child_env[n])
        n++;
    char **saved = child_env;
    char **env = calloc(n + 1, sizeof *env);
    assert_non_null(env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(saved[i], "LOOM_STATE=", 11) != 0)
            env[k++] = saved[i];
    child_env = env;
    run r;
    RUN_SHOP(&r, "--call", "users.create", "{\"name\":\"Bo\",\"email\":\"bo@example.com\"}");
    expect_status(&r, 0);
    run_free(&r);
    RUN_SHOP(&r, "--call", "orders.create", "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"a\","
                                             "\"quantity\":1}],\"amount\":2}");
    expect_status(&r, 0);
    cJSON *order = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(order, "status"), "paid");
    cJSON_Delete(order);
    run_free(&r);
    child_env = saved;
    free(env);
    char path[256];
    snprintf(path, sizeof path, "%s/loom-shop-%u.json", tmp_dir, (unsigned)getuid());
    assert_int_equal(access(path, R_OK), 0);
}

/* --services chooses what runs here: the others have no receiver. */
static void test_services_selection(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--services", "users", "--call", "payments.charge",
             "{\"orderId\":\"o-1\",\"amount\":1}");
    expect_status(&r, 1);
    cJSON_Delete(expect_error_json(&r, 503));
    run_free(&r);

    RUN_SHOP(&r, "--services", "payments", "--call", "payments.charge",
             "{\"orderId\":\"o-1\",\"amount\":1}");
    expect_status(&r, 0);
    run_free(&r);

    RUN_SHOP(&r, "--services", "nosuch", "--call", "users.get", "--param", "{\"id\":\"u-1\"}");
    expect_status(&r, 2);
    assert_non_null(strstr(err_of(&r), "nosuch"));
    run_free(&r);
}

static void test_emit(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--emit", "orderCreated", "{\"id\":\"o-1\",\"userId\":\"u-1\",\"amount\":2}");
    expect_status(&r, 0);
    assert_string_equal(out_of(&r), "");
    run_free(&r);

    RUN_SHOP(&r, "--emit", "orderCreated", "{not json");
    expect_status(&r, 2);
    run_free(&r);

    RUN_SHOP(&r, "--emit");
    expect_status(&r, 2);
    run_free(&r);
}

/* --- flags ---------------------------------------------------------------------- */

static void test_version_and_help(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--version");
    expect_status(&r, 0);
    assert_non_null(strstr(out_of(&r), LOOM_VERSION_STRING));
    run_free(&r);

    RUN_SHOP(&r, "--help");
    expect_status(&r, 0);
    assert_non_null(strstr(out_of(&r), "Usage"));
    assert_non_null(strstr(out_of(&r), "--call"));
    assert_non_null(strstr(out_of(&r), "--services"));
    run_free(&r);
}

static void test_unknown_flag_exits_2(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--no-such-flag");
    expect_status(&r, 2);
    assert_non_null(strstr(err_of(&r), "--no-such-flag"));
    run_free(&r);

    RUN_SHOP(&r, "--workers", "zero", "--call", "notifications.list");
    expect_status(&r, 2);
    assert_non_null(strstr(err_of(&r), "--workers"));
    run_free(&r);

    RUN_SHOP(&r, "--call");
    expect_status(&r, 2);
    run_free(&r);
}

/* --- configuration files ------------------------------------------------------------ */

/* Each broken file is refused before anything runs: exit 2, and stderr names
 * the file and the line (and the key when there is one). */
static void test_broken_config_rejected_with_line(void **state)
{
    (void)state;
    static const struct {
        const char *name, *yaml, *line, *key;
    } cases[] = {
        {"indent.yaml", "workers: 2\nbroker:\n  url: \"memory:\"\n   prefix: shop\n", ":4:", NULL},
        {"unknown.yaml", "log:\n  level: info\n  colour: true\n", ":3:", "log.colour"},
        {"type.yaml", "workers: 2\nhttp:\n  listen: 127.0.0.1:8080\n  max_body: lots\n",
         ":4:", "http.max_body"},
        {"range.yaml", "# comment\nworkers: 0\n", ":2:", "workers"},
        {"unknown_top.yaml", "workers: 1\nbrokers:\n  url: x\n", ":2:", "brokers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = write_temp(cases[i].name, cases[i].yaml);
        char where[4200];
        snprintf(where, sizeof where, "%s%s", path, cases[i].line);
        run r;
        RUN_SHOP(&r, "--config", path, "--call", "notifications.list");
        expect_status(&r, 2);
        if (!strstr(err_of(&r), where))
            fail_msg("%s: stderr does not name %s:\n%s", cases[i].name, where, err_of(&r));
        if (cases[i].key && !strstr(err_of(&r), cases[i].key))
            fail_msg("%s: stderr does not name %s:\n%s", cases[i].name, cases[i].key, err_of(&r));
        assert_string_equal(out_of(&r), "");
        run_free(&r);
        free(path);
    }
    run r;
    RUN_SHOP(&r, "--config", "/nonexistent/shop.yaml", "--call", "notifications.list");
    expect_status(&r, 2);
    assert_non_null(strstr(err_of(&r), "/nonexistent/shop.yaml"));
    run_free(&r);
}

/* The shipped sample must stay valid, and config.<service> reaches the
 * handlers. */
static void test_sample_config_and_service_config(void **state)
{
    (void)state;
    run r;
    RUN_SHOP(&r, "--config", "examples/shop/shop.yaml", "--log-level", "warn", "--call",
             "payments.charge", "{\"orderId\":\"o-9\",\"amount\":1}");
    expect_status(&r, 0);
    cJSON *p = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(p, "currency"), "EUR");
    cJSON_Delete(p);
    run_free(&r);

    char *path = write_temp("usd.yaml", "config:\n  payments:\n    currency: USD\n");
    RUN_SHOP(&r, "--config", path, "--call", "payments.charge",
             "{\"orderId\":\"o-9\",\"amount\":1}");
    expect_status(&r, 0);
    p = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(p, "currency"), "USD");
    cJSON_Delete(p);
    run_free(&r);
    free(path);
}

/* --- hello ------------------------------------------------------------------------------ */

static void test_hello(void **state)
{
    (void)state;
    run r;
    run_prog(&r, hello_path,
             (const char *const[]){"--call", "greeter.hello", "{\"name\":\"Ada\"}", NULL});
    expect_status(&r, 0);
    cJSON *j = parse_json(out_of(&r), "stdout");
    assert_string_equal(str_at(j, "message"), "Hello, Ada!");
    cJSON_Delete(j);
    run_free(&r);

    run_prog(&r, hello_path, (const char *const[]){"--call", "greeter.hello", "{}", NULL});
    expect_status(&r, 1);
    cJSON *e = expect_error_json(&r, 400);
    assert_true(has_detail(e, "", "name"));
    cJSON_Delete(e);
    run_free(&r);
}

/* --- the order flow over HTTP ---------------------------------------------------------- */

typedef struct http_res {
    long status;
    buf body;
} http_res;

static size_t collect(char *p, size_t size, size_t n, void *user)
{
    buf_add(user, p, size * n);
    return size * n;
}

/* One request; body (may be NULL) is sent as application/json. Returns the
 * status, 0 when the connection failed. */
static long http(http_res *res, int port, const char *method, const char *path, const char *body)
{
    free(res->body.data);
    memset(res, 0, sizeof *res);
    buf_add(&res->body, "", 0);
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *hdrs = NULL;
    if (body)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &res->body);
    if (body) {
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return res->status;
}

static void expect_http(const http_res *res, long want, const char *what)
{
    if (res->status != want)
        fail_msg("%s: HTTP %ld, expected %ld: %s", what, res->status, want, res->body.data);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static char *read_file(const char *path)
{
    buf b = {0};
    buf_add(&b, "", 0);
    FILE *f = fopen(path, "r");
    if (f) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            buf_add(&b, chunk, n);
        fclose(f);
    }
    return b.data;
}

typedef struct server {
    pid_t pid;
    int port;
    char *log_path;
} server;

/* Prints the server's log, frees s and fails the test (no leaks reported
 * on top of the failure). */
static void fail_with_log(const char *what, server *s)
{
    char *log = read_file(s->log_path);
    print_error("%s; the shop's output:\n%s\n", what, log);
    free(log);
    free(s->log_path);
    s->log_path = NULL;
    fail_msg("%s", what);
}

/* Starts `shop --services all --http 127.0.0.1:PORT` and waits until
 * /healthz answers. A free port can be taken by someone else before the
 * child binds it: then another one is tried. */
static void server_start(server *s)
{
    memset(s, 0, sizeof *s);
    for (int attempt = 0; attempt < 3; attempt++) {
        s->port = free_port();
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", s->port);
        free(s->log_path);
        assert_true(asprintf(&s->log_path, "%s/server-%d.log", tmp_dir, attempt) > 0);
        int fd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        s->pid = spawn(
            shop_path,
            (const char *const[]){"--services", "all", "--http", addr, "--log-level", "info", NULL},
            fd, fd);
        close(fd);
        http_res res = {0};
        int64_t deadline = mono_ms() + 20000;
        bool exited = false;
        int ws = 0;
        while (mono_ms() < deadline) {
            if (waitpid(s->pid, &ws, WNOHANG) == s->pid) {
                exited = true;
                break;
            }
            if (http(&res, s->port, "GET", "/healthz", NULL) == 200)
                break;
            usleep(50000);
        }
        long status = res.status;
        free(res.body.data);
        if (status == 200)
            return;
        if (!exited) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &ws, 0);
            fail_with_log("the shop did not answer /healthz within 20 s", s);
        }
        char *log = read_file(s->log_path);
        bool port_taken = strstr(log, "cannot start the HTTP bridge") != NULL;
        free(log);
        if (!port_taken || attempt == 2) {
            char what[96];
            snprintf(what, sizeof what, "the shop exited with %d before serving",
                     decode_status(ws));
            fail_with_log(what, s);
        }
    }
}

/* SIGTERM: a graceful stop exits 0 within the drain time. */
static void server_stop(server *s)
{
    assert_int_equal(kill(s->pid, SIGTERM), 0);
    int ws = 0;
    int64_t deadline = mono_ms() + 15000;
    pid_t got = 0;
    while ((got = waitpid(s->pid, &ws, WNOHANG)) == 0 && mono_ms() < deadline)
        usleep(20000);
    if (got != s->pid) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &ws, 0);
        fail_with_log("the shop did not stop within 15 s of SIGTERM", s);
    }
    if (decode_status(ws) != 0) {
        char what[96];
        snprintf(what, sizeof what, "the shop exited with %d after SIGTERM", decode_status(ws));
        fail_with_log(what, s);
    }
    free(s->log_path);
    s->log_path = NULL;
}

static bool has_path_ending(const cJSON *paths, const char *suffix)
{
    const cJSON *p;
    size_t n = strlen(suffix);
    cJSON_ArrayForEach(p, paths)
    {
        size_t len = p->string ? strlen(p->string) : 0;
        if (len >= n && strcmp(p->string + len - n, suffix) == 0)
            return true;
    }
    return false;
}

static void test_http_order_flow(void **state)
{
    (void)state;
    server s;
    server_start(&s);
    http_res res = {0};
    char body[512], path[256];

    http(&res, s.port, "POST", "/api/v1/users", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}");
    expect_http(&res, 200, "POST /users");
    cJSON *user = parse_json(res.body.data, "the user");
    const char *user_id = str_at(user, "id");
    assert_non_null(user_id);

    http(&res, s.port, "POST", "/api/v1/users", "{\"name\":\"Bob\"}");
    expect_http(&res, 400, "POST /users without email");
    cJSON *e = parse_json(res.body.data, "the error");
    assert_int_equal(int_at(e, "status"), 400);
    assert_true(has_detail(e, "", "email"));
    cJSON_Delete(e);

    http(&res, s.port, "POST", "/api/v1/users", "{\"name\":\"Ada\",\"email\":\"ADA@example.com\"}");
    expect_http(&res, 409, "POST /users with a taken email");

    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"book-42\",\"quantity\":2}],"
             "\"amount\":39.9}",
             user_id);
    http(&res, s.port, "POST", "/api/v1/orders", body);
    expect_http(&res, 200, "POST /orders");
    cJSON *order = parse_json(res.body.data, "the order");
    const char *order_id = str_at(order, "id");
    assert_non_null(order_id);
    assert_string_equal(str_at(order, "userId"), user_id);
    assert_string_equal(str_at(order, "status"), "paid");
    assert_non_null(str_at(order, "paymentId"));

    http(&res, s.port, "POST", "/api/v1/orders",
         "{\"userId\":\"u-999\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}");
    expect_http(&res, 422, "POST /orders for an unknown user");

    http(&res, s.port, "POST", "/api/v1/orders",
         "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":-1}");
    expect_http(&res, 400, "POST /orders with a negative amount");

    snprintf(path, sizeof path, "/api/v1/orders/%s", order_id);
    http(&res, s.port, "GET", path, NULL);
    expect_http(&res, 200, "GET /orders/:id");
    cJSON *again = parse_json(res.body.data, "the order read back");
    assert_true(cJSON_Compare(order, again, true));
    cJSON_Delete(again);

    http(&res, s.port, "GET", "/api/v1/orders/o-999", NULL);
    expect_http(&res, 404, "GET an unknown order");

    snprintf(path, sizeof path, "/api/v1/users/%s", user_id);
    http(&res, s.port, "GET", path, NULL);
    expect_http(&res, 200, "GET /users/:id");

    /* The notification comes from the orderCreated event, asynchronously. */
    snprintf(path, sizeof path, "/api/v1/notifications?userId=%s", user_id);
    bool notified = false;
    for (int64_t deadline = mono_ms() + 10000; !notified && mono_ms() < deadline;) {
        http(&res, s.port, "GET", path, NULL);
        expect_http(&res, 200, "GET /notifications");
        cJSON *l = parse_json(res.body.data, "the notifications");
        const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "notifications"), 0);
        const char *oid = str_at(first, "orderId");
        notified = oid && strcmp(oid, order_id) == 0;
        if (notified) {
            assert_string_equal(str_at(first, "userId"), user_id);
            assert_non_null(strstr(str_at(first, "text"), order_id));
        }
        cJSON_Delete(l);
        if (!notified)
            usleep(50000);
    }
    assert_true(notified);
    http(&res, s.port, "GET", "/api/v1/notifications?userId=u-999", NULL);
    expect_http(&res, 200, "GET /notifications of another user");
    cJSON *none = parse_json(res.body.data, "the notifications");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(none, "notifications")), 0);
    cJSON_Delete(none);

    http(&res, s.port, "GET", "/api/openapi.json", NULL);
    expect_http(&res, 200, "GET /api/openapi.json");
    cJSON *api = parse_json(res.body.data, "the OpenAPI document");
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(api, "paths");
    static const char *const want[] = {"v1/users",       "v1/users/{id}", "v1/orders",
                                       "v1/orders/{id}", "v1/payments",   "v1/notifications"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!has_path_ending(paths, want[i]))
            fail_msg("openapi.json lacks a path ending in %s", want[i]);
    cJSON_Delete(api);

    http(&res, s.port, "GET", "/healthz", NULL);
    expect_http(&res, 200, "GET /healthz");
    http(&res, s.port, "GET", "/metrics", NULL);
    expect_http(&res, 200, "GET /metrics");
    assert_non_null(strstr(res.body.data, "loom_"));

    cJSON_Delete(order);
    cJSON_Delete(user);
    free(res.body.data);
    server_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_users_create_prints_user),
        cmocka_unit_test(test_call_missing_field_is_400),
        cmocka_unit_test(test_call_wrong_type_is_400),
        cmocka_unit_test(test_call_payload_not_json),
        cmocka_unit_test(test_call_unknown_command_is_503),
        cmocka_unit_test(test_call_get_unknown_user_is_404),
        cmocka_unit_test(test_call_charge_rejects_non_positive_amounts),
        cmocka_unit_test(test_call_order_for_unknown_user_is_422),
        cmocka_unit_test(test_call_notifications_list_empty),
        cmocka_unit_test(test_call_order_flow_across_processes),
        cmocka_unit_test(test_default_state_is_shared_file),
        cmocka_unit_test(test_services_selection),
        cmocka_unit_test(test_emit),
        cmocka_unit_test(test_version_and_help),
        cmocka_unit_test(test_unknown_flag_exits_2),
        cmocka_unit_test(test_broken_config_rejected_with_line),
        cmocka_unit_test(test_sample_config_and_service_config),
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_http_order_flow),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
