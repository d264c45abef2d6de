/* The split deployment: the shop binary run as separate processes over a
 * real mosquitto, each with some of the services, the HTTP bridge in a
 * process of its own, and runtimes created by the test itself as extra
 * clients (they read which instance served a call, and hold subscriptions
 * of both delivery modes).
 *
 * Each test gets its own mosquitto on a free loopback port
 * (tests/support/mosquitto.h), its own temporary directory (the state file
 * the shop processes share, their logs) and a `mosquitto_sub` watching the
 * discovery topics, so a test can wait until an instance has announced
 * itself or its announcement was cleared. Every process is started with a
 * fixed --instance, so its topics are known. Every wait is bounded; the
 * per-test teardown kills and reaps every child even when the test failed,
 * and prints their logs then.
 *
 * The shop binary is found under $LOOM_TEST_BUILD (set by `make check`;
 * default "."). mosquitto_rr, mosquitto_pub and mosquitto_sub come from
 * Debian's mosquitto-clients.
 *
 *   T_FILTER=pattern   runs only the tests whose name matches
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support/mosquitto.h"
#include "support/proc.h"
#include "support/support.h"

#define MAX_PROCS 16
#define MAX_RTS 4
#define CMD_TIMEOUT "timeouts.default_ms=4000" /* a lost request fails in 4 s */
#define CALL_TIMEOUT_MS 4000                   /* the test's own calls */
#define START_TIMEOUT_MS 20000                 /* a process up and announced */
#define RECOVER_TIMEOUT_MS 15000               /* after a broker restart */
#define TOOL_TIMEOUT_MS 15000                  /* one mosquitto_* run */
#define SHOP_ROUTES 6                          /* HTTP routes the four services expose */

static char shop_path[4096];
static char rr_path[256], pub_path[256], sub_path[256];

/* One test's deployment. Only the main thread touches it. */
typedef struct layout {
    t_broker broker;
    char dir[64];
    char state_url[128]; /* file: store shared by the service processes */
    char **env;
    t_proc procs[MAX_PROCS];
    bool down[MAX_PROCS]; /* stopped on purpose */
    size_t n_procs;
    t_proc *watch; /* mosquitto_sub -t '{prefix}/svc/+' */
    t_proc *bridge;
    int http_port;
    loom_runtime *rts[MAX_RTS];
    size_t n_rts;
    int emails;  /* makes each test user's email unique */
    bool passed; /* set last by each test: teardown prints the logs otherwise */
} layout;

static layout L;

/* --- small helpers ---------------------------------------------------------- */

static bool find_tool(const char *name, char *out, size_t n)
{
    static const char *const dirs[] = {"/usr/bin", "/usr/local/bin", "/usr/sbin"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(out, n, "%s/%s", dirs[i], name);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

static cJSON *parse_json(const char *text, const char *what)
{
    cJSON *j = cJSON_Parse(text);
    if (!j)
        fail_msg("%s is not JSON: %s", what, text);
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

static char *path_in_dir(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", L.dir, name) < 0)
        fail_msg("out of memory");
    return p;
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

/* --- HTTP (libcurl) ---------------------------------------------------------- */

typedef struct http_res {
    long status; /* 0 when the request failed */
    t_buf body;
} http_res;

static size_t collect(char *p, size_t size, size_t n, void *user)
{
    t_buf_add(user, p, size * n);
    return size * n;
}

/* One request to the bridge; body (may be NULL) is sent as JSON. */
static long http(http_res *res, const char *method, const char *path, const char *body)
{
    free(res->body.data);
    memset(res, 0, sizeof *res);
    t_buf_add(&res->body, "", 0);
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", L.http_port, path);
    CURL *c = curl_easy_init();
    if (!c)
        fail_msg("curl_easy_init failed");
    struct curl_slist *hdrs = NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &res->body);
    if (body) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
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

/* Repeats a request until it answers want (bounded); the last answer stays
 * in res. */
static bool http_until(http_res *res, long want, const char *method, const char *path,
                       const char *body, int timeout_ms)
{
    int64_t deadline = t_mono_ms() + timeout_ms;
    for (;;) {
        if (http(res, method, path, body) == want)
            return true;
        if (t_mono_ms() >= deadline)
            return false;
        t_sleep_ms(100);
    }
}

/* --- processes --------------------------------------------------------------- */

static t_proc *new_proc(void)
{
    if (L.n_procs == MAX_PROCS)
        fail_msg("too many processes in one test");
    return &L.procs[L.n_procs++];
}

/* Starts `shop --services SERVICES --instance INSTANCE` on the test's
 * broker, with the shared file store (state NULL) or the given one, more
 * flags in extra (NULL-terminated, may be NULL). Returns at once. */
static t_proc *shop_start(const char *instance, const char *services, const char *state,
                          const char *log_level, const char *const *extra)
{
    const char *args[40] = {"--services", services,   "--broker",    t_broker_url(&L.broker),
                            "--instance", instance,   "--state",     state ? state : L.state_url,
                            "--workers",  "2",        "--log-level", log_level ? log_level : "info",
                            "--set",      CMD_TIMEOUT};
    size_t n = 14;
    for (size_t i = 0; extra && extra[i]; i++) {
        if (n + 1 >= sizeof args / sizeof args[0])
            fail_msg("too many arguments");
        args[n++] = extra[i];
    }
    args[n] = NULL;
    char log[128];
    snprintf(log, sizeof log, "%s/%s.log", L.dir, instance);
    t_proc *p = new_proc();
    t_proc_start(p, instance, shop_path, args, L.env, log);
    return p;
}

/* Starts the discovery watcher: one line "TOPIC LENGTH" per message on
 * {prefix}/svc/+ (retained ones included), in the order received. */
static void watch_start(void)
{
    char port[16], log[128];
    snprintf(port, sizeof port, "%d", L.broker.port);
    snprintf(log, sizeof log, "%s/watch.log", L.dir);
    L.watch = new_proc();
    t_proc_start(L.watch, "mosquitto_sub", sub_path,
                 (const char *const[]){"-h", "127.0.0.1", "-p", port, "-t", "loom/svc/+", "-F",
                                       "%t %l", NULL},
                 L.env, log);
}

/* 1 when the last discovery message seen for this instance is an
 * announcement, 0 when it was a clear (an empty message: stop or will),
 * -1 when none was seen. */
static int announcement_state(const char *instance)
{
    char prefix[128];
    int n = snprintf(prefix, sizeof prefix, "loom/svc/%s ", instance);
    char *log = t_proc_log(L.watch);
    int state = -1;
    for (char *line = log; *line;) {
        char *end = strchr(line, '\n');
        if (!end)
            break; /* a partial line: not yet written completely */
        *end = '\0';
        if (strncmp(line, prefix, (size_t)n) == 0)
            state = atoi(line + n) > 0 ? 1 : 0;
        line = end + 1;
    }
    free(log);
    return state;
}

/* Waits until the instance is announced (want 1) or cleared (want 0);
 * fails with the logs otherwise. */
static void wait_announcement(const char *instance, int want, int timeout_ms)
{
    int64_t deadline = t_mono_ms() + timeout_ms;
    while (announcement_state(instance) != want) {
        for (size_t i = 0; i < L.n_procs; i++)
            if (strcmp(L.procs[i].name, instance) == 0 && want == 1 && !L.down[i] &&
                !t_proc_running(&L.procs[i]))
                fail_msg("%s exited with %d before announcing itself", instance, L.procs[i].status);
        if (t_mono_ms() >= deadline)
            fail_msg("%s: no %s on loom/svc/%s within %d ms", instance,
                     want ? "announcement" : "clear", instance, timeout_ms);
        t_sleep_ms(20);
    }
}

/* Starts the shop's service processes and waits until each is announced. */
static t_proc *service_start(const char *instance, const char *services, const char *log_level)
{
    t_proc *p = shop_start(instance, services, NULL, log_level, NULL);
    wait_announcement(instance, 1, START_TIMEOUT_MS);
    return p;
}

/* Starts the bridge process D (`--services none --http 127.0.0.1:PORT`)
 * and waits until /healthz answers. A free port may be taken before the
 * child binds it: then another is tried. */
static void bridge_start(void)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        L.http_port = t_free_port();
        char addr[64], name[32];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", L.http_port);
        snprintf(name, sizeof name, attempt ? "bridge-%d" : "bridge", attempt);
        L.bridge = shop_start(name, "none", "memory:", "info",
                              (const char *const[]){"--http", addr, NULL});
        http_res res = {0};
        int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
        bool up = false;
        while (!up && t_mono_ms() < deadline && t_proc_running(L.bridge)) {
            up = http(&res, "GET", "/healthz", NULL) == 200;
            if (!up)
                t_sleep_ms(50);
        }
        free(res.body.data);
        if (up)
            return;
        if (t_proc_running(L.bridge))
            fail_msg("the bridge did not answer /healthz within %d ms", START_TIMEOUT_MS);
        if (t_proc_log_count(L.bridge, "cannot start the HTTP bridge") == 0 || attempt == 2)
            fail_msg("the bridge exited with %d", L.bridge->status);
    }
}

/* Waits until the bridge is ready and knows `routes` routes. */
static void wait_bridge_routes(int routes, int timeout_ms)
{
    http_res res = {0};
    int64_t deadline = t_mono_ms() + timeout_ms;
    int known = -1;
    for (;;) {
        if (http(&res, "GET", "/readyz", NULL) == 200) {
            cJSON *j = parse_json(res.body.data, "/readyz");
            known = int_at(j, "routes");
            cJSON_Delete(j);
            if (known == routes)
                break;
        }
        if (t_mono_ms() >= deadline)
            fail_msg("the bridge knows %d routes after %d ms, expected %d (last /readyz: %ld %s)",
                     known, timeout_ms, routes, res.status, res.body.data);
        t_sleep_ms(50);
    }
    free(res.body.data);
}

/* Stops a process on purpose (SIGTERM: gracefully; SIGKILL: a crash);
 * returns its exit status. */
static int proc_stop(t_proc *p, int sig)
{
    L.down[p - L.procs] = true;
    return t_proc_stop(p, sig, 15000);
}

/* Every process the test did not stop on purpose is still running. */
static void expect_all_running(void)
{
    for (size_t i = 0; i < L.n_procs; i++)
        if (&L.procs[i] != L.watch && !L.down[i] && !t_proc_running(&L.procs[i]))
            fail_msg("%s exited with %d", L.procs[i].name, L.procs[i].status);
}

/* Ends a test: SIGTERM to every shop process still running, all at once,
 * and each must exit 0 within 15 s: a graceful stop, and under the
 * sanitizers no error and no leak (LeakSanitizer exits non-zero). */
static void stop_all_cleanly(void)
{
    for (size_t i = 0; i < L.n_procs; i++)
        if (&L.procs[i] != L.watch && !L.down[i] && L.procs[i].pid > 0)
            kill(L.procs[i].pid, SIGTERM);
    for (size_t i = 0; i < L.n_procs; i++) {
        if (&L.procs[i] == L.watch || L.down[i])
            continue;
        int status = t_proc_stop(&L.procs[i], 0, 15000);
        L.down[i] = true;
        if (status != 0)
            fail_msg("%s exited with %d after SIGTERM", L.procs[i].name, status);
    }
}

/* --- in-test runtimes ---------------------------------------------------------- */

/* A runtime of the test process on the test's broker, started and ready. */
static loom_runtime *probe_start(const char *instance, const loom_service_def *svc, void *user)
{
    if (L.n_rts == MAX_RTS)
        fail_msg("too many runtimes in one test");
    loom_runtime_config rc = {.broker_url = t_broker_url(&L.broker),
                              .instance_id = instance,
                              .workers = 2,
                              .default_timeout_ms = CALL_TIMEOUT_MS,
                              .drain_timeout_ms = 1000,
                              .log_level = LOOM_LOG_ERROR};
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    L.rts[L.n_rts++] = rt;
    if (svc)
        assert_int_equal(loom_runtime_add_service(rt, svc, user), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, START_TIMEOUT_MS), LOOM_OK);
    return rt;
}

/* Calls service.command with the payload (JSON text, may be NULL) and the
 * parameter (may be NULL). Returns the response (release it), or NULL when
 * the call itself failed (*err says why). */
static loom_msg *call(loom_runtime *rt, const char *service, const char *command,
                      const char *payload, const char *param, loom_err *err)
{
    loom_call c = {.service = service,
                   .version = "1",
                   .command = command,
                   .payload = payload ? t_json(payload) : NULL,
                   .parameter = param ? t_json(param) : NULL,
                   .timeout_ms = CALL_TIMEOUT_MS};
    loom_msg *resp = NULL;
    loom_err e = loom_runtime_call(rt, &c, &resp);
    if (err)
        *err = e;
    if (e != LOOM_OK) {
        cJSON_Delete(c.payload);
        cJSON_Delete(c.parameter);
        return NULL;
    }
    return resp;
}

/* payments.charge through rt: the status (0 when the call failed) and, on
 * success, the serving instance and the payment id. */
static int charge(loom_runtime *rt, const char *order_id, double amount, char *instance,
                  size_t instance_len, char *payment_id, size_t payment_id_len)
{
    char payload[160];
    snprintf(payload, sizeof payload, "{\"orderId\":\"%s\",\"amount\":%g}", order_id, amount);
    loom_msg *resp = call(rt, "payments", "charge", payload, NULL, NULL);
    if (!resp)
        return 0;
    int status = loom_msg_status(resp);
    const loom_address *from = loom_msg_sender(resp);
    if (instance)
        snprintf(instance, instance_len, "%s", from && from->instance ? from->instance : "");
    if (payment_id) {
        const char *pid = str_at(loom_msg_payload(resp), "paymentId");
        snprintf(payment_id, payment_id_len, "%s", pid ? pid : "");
    }
    loom_msg_release(resp);
    return status;
}

/* A loom_reply_fn that keeps the response in *(_Atomic(loom_msg *) *)user. */
static void keep_response(loom_runtime *rt, const loom_msg *response, void *user)
{
    (void)rt;
    atomic_store((_Atomic(loom_msg *) *)user, loom_msg_retain((loom_msg *)response));
}

/* --- the order flow through the bridge ----------------------------------------- */

typedef struct placed {
    char user_id[32];
    char order_id[32];
    char payment_id[32];
} placed;

/* The log line payments writes when it captures a payment. */
static void captured_needle(const placed *o, char *out, size_t n)
{
    snprintf(out, n, "captured %s for order %s:", o->payment_id, o->order_id);
}

/* POST /users, POST /orders, GET /orders/:id, then GET /notifications
 * until the order's notification appears (bounded). */
static void http_order_flow(placed *o)
{
    memset(o, 0, sizeof *o);
    http_res res = {0};
    char body[512], path[256];
    snprintf(body, sizeof body, "{\"name\":\"Ada\",\"email\":\"ada%d@example.com\"}", ++L.emails);
    http(&res, "POST", "/api/v1/users", body);
    expect_http(&res, 200, "POST /api/v1/users");
    cJSON *user = parse_json(res.body.data, "the user");
    snprintf(o->user_id, sizeof o->user_id, "%s", str_at(user, "id") ? str_at(user, "id") : "");
    cJSON_Delete(user);
    assert_true(o->user_id[0]);

    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"book-42\",\"quantity\":2}],"
             "\"amount\":39.9}",
             o->user_id);
    http(&res, "POST", "/api/v1/orders", body);
    expect_http(&res, 200, "POST /api/v1/orders");
    cJSON *order = parse_json(res.body.data, "the order");
    assert_string_equal(str_at(order, "status"), "paid");
    assert_string_equal(str_at(order, "userId"), o->user_id);
    assert_non_null(str_at(order, "id"));
    assert_non_null(str_at(order, "paymentId"));
    snprintf(o->order_id, sizeof o->order_id, "%s", str_at(order, "id"));
    snprintf(o->payment_id, sizeof o->payment_id, "%s", str_at(order, "paymentId"));

    snprintf(path, sizeof path, "/api/v1/orders/%s", o->order_id);
    http(&res, "GET", path, NULL);
    expect_http(&res, 200, "GET /api/v1/orders/:id");
    cJSON *again = parse_json(res.body.data, "the order read back");
    assert_true(cJSON_Compare(order, again, true));
    cJSON_Delete(again);
    cJSON_Delete(order);

    /* The notification comes from the orderCreated event, asynchronously. */
    snprintf(path, sizeof path, "/api/v1/notifications?userId=%s", o->user_id);
    bool notified = false;
    for (int64_t deadline = t_mono_ms() + 10000; !notified && t_mono_ms() < deadline;) {
        http(&res, "GET", path, NULL);
        expect_http(&res, 200, "GET /api/v1/notifications");
        cJSON *l = parse_json(res.body.data, "the notifications");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(l, "notifications");
        const cJSON *first = cJSON_GetArrayItem(list, 0);
        const char *oid = str_at(first, "orderId");
        notified = oid && strcmp(oid, o->order_id) == 0;
        if (notified) {
            assert_int_equal(cJSON_GetArraySize(list), 1);
            assert_string_equal(str_at(first, "userId"), o->user_id);
            assert_non_null(strstr(str_at(first, "text"), o->order_id));
        }
        cJSON_Delete(l);
        if (!notified)
            t_sleep_ms(50);
    }
    free(res.body.data);
    if (!notified)
        fail_msg("no notification for order %s within 10 s", o->order_id);
}

/* The order's payment was captured by exactly one of the given processes
 * (and logged there), never by `not_by`. Returns the one that did. */
static t_proc *expect_captured_by_one(const placed *o, t_proc *const *by, size_t n, t_proc *not_by)
{
    char needle[128];
    captured_needle(o, needle, sizeof needle);
    t_proc *who = NULL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = t_proc_log_count(by[i], needle);
        total += k;
        if (k)
            who = by[i];
    }
    if (total != 1)
        fail_msg("'%s' logged %zu times by the payments processes, expected once", needle, total);
    if (not_by)
        assert_int_equal(t_proc_log_count(not_by, "captured "), 0);
    return who;
}

/* --- fixtures ---------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("LOOM_TEST_BUILD");
    if (!build || !*build)
        build = ".";
    snprintf(shop_path, sizeof shop_path, "%s/examples/shop/shop", build);
    if (access(shop_path, X_OK) != 0) {
        fprintf(stderr, "test_split: build the examples first (%s)\n", shop_path);
        return -1;
    }
    if (!find_tool("mosquitto_rr", rr_path, sizeof rr_path) ||
        !find_tool("mosquitto_pub", pub_path, sizeof pub_path) ||
        !find_tool("mosquitto_sub", sub_path, sizeof sub_path)) {
        fprintf(stderr, "test_split: install mosquitto-clients (make deps)\n");
        return -1;
    }
    if (!t_broker_binary()) {
        fprintf(stderr, "test_split: install mosquitto (make deps)\n");
        return -1;
    }
    signal(SIGPIPE, SIG_IGN);
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    t_proc_reap_all(5000);
    curl_global_cleanup();
    return 0;
}

static int setup(void **state)
{
    (void)state;
    memset(&L, 0, sizeof L);
    snprintf(L.dir, sizeof L.dir, "/tmp/loom-split-XXXXXX");
    if (!mkdtemp(L.dir))
        return -1;
    snprintf(L.state_url, sizeof L.state_url, "file:%s/state.json", L.dir);
    char tmpdir[96];
    snprintf(tmpdir, sizeof tmpdir, "TMPDIR=%s", L.dir);
    L.env = t_env_new((const char *const[]){tmpdir, NULL});
    t_broker_start(&L.broker);
    watch_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < L.n_rts; i++)
        loom_runtime_destroy(L.rts[i]);
    if (!L.passed) {
        for (size_t i = 0; i < L.n_procs; i++)
            t_proc_print_log(&L.procs[i], 6000);
        fprintf(stderr, "(mosquitto's log: %s/mosquitto.log; kept: %s)\n", L.broker.dir, L.dir);
    }
    /* SIGTERM to all at once (a graceful stop takes about a second), then
     * SIGKILL what is left. */
    t_proc_reap_all(10000);
    if (L.passed) {
        t_broker_stop(&L.broker);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", L.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "test_split: cannot remove %s\n", L.dir);
    } else {
        t_broker_kill(&L.broker); /* keeps its directory and log */
    }
    t_env_free(L.env);
    memset(&L, 0, sizeof L);
    return 0;
}

/* --- tests ------------------------------------------------------------------------ */

/* The bridge starts first, with nothing to route; the services come later
 * and the bridge learns their routes; a service process that stops is
 * forgotten and one that comes back is learnt again. */
static void test_order_flow_bridge_started_first(void **state)
{
    (void)state;
    bridge_start();
    http_res res = {0};
    http(&res, "GET", "/readyz", NULL);
    expect_http(&res, 503, "/readyz before any service runs");
    http(&res, "POST", "/api/v1/users", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}");
    expect_http(&res, 404, "POST /api/v1/users before any service runs");

    t_proc *a = service_start("shop-a", "users,orders,notifications", NULL);
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);

    placed o;
    http_order_flow(&o);
    /* The payment went through another process. */
    expect_captured_by_one(&o, pay, 2, a);

    /* Errors cross the broker with their status. */
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"u-999\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}");
    http(&res, "POST", "/api/v1/orders", body);
    expect_http(&res, 422, "POST /api/v1/orders for an unknown user");
    http(&res, "POST", "/api/v1/orders",
         "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":-1}");
    expect_http(&res, 400, "POST /api/v1/orders with a negative amount");
    http(&res, "GET", "/api/v1/orders/o-999", NULL);
    expect_http(&res, 404, "GET an unknown order");

    /* The OpenAPI document lists the discovered routes. */
    http(&res, "GET", "/api/openapi.json", NULL);
    expect_http(&res, 200, "GET /api/openapi.json");
    cJSON *api = parse_json(res.body.data, "the OpenAPI document");
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(api, "paths");
    static const char *const want[] = {"v1/users",       "v1/users/{id}", "v1/orders",
                                       "v1/orders/{id}", "v1/payments",   "v1/notifications"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!has_path_ending(paths, want[i]))
            fail_msg("openapi.json lacks a path ending in %s", want[i]);
    cJSON_Delete(api);

    /* A graceful stop clears A's announcement: the bridge forgets its routes
     * (404), and learns them again when A comes back. */
    assert_int_equal(proc_stop(a, SIGTERM), 0);
    wait_announcement("shop-a", 0, 5000);
    wait_bridge_routes(1, 5000); /* POST /payments only */
    http(&res, "POST", "/api/v1/orders", body);
    expect_http(&res, 404, "POST /api/v1/orders after the orders process stopped");

    t_proc *a2 = service_start("shop-a", "users,orders,notifications", NULL);
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    placed o2;
    http_order_flow(&o2);
    expect_captured_by_one(&o2, pay, 2, a2);
    free(res.body.data);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* The services start first, the bridge last: it learns the routes from
 * the retained announcements. One-shot clients (`--services none --call`)
 * reach the services through the broker too, and a command nobody serves
 * fails fast with 503. */
static void test_order_flow_services_started_first(void **state)
{
    (void)state;
    t_proc *a = service_start("shop-a", "users,orders,notifications", NULL);
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    bridge_start();
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    placed o;
    http_order_flow(&o);
    expect_captured_by_one(&o, pay, 2, a);

    /* A one-shot client process with no services of its own. */
    char param[96];
    snprintf(param, sizeof param, "{\"id\":\"%s\"}", o.order_id);
    const char *oneshot[] = {"--services", "none",    "--broker", t_broker_url(&L.broker),
                             "--state",    "memory:", "--call",   "orders.get",
                             "--param",    param,     NULL};
    t_run r;
    t_run_prog(&r, shop_path, oneshot, L.env, 30000);
    if (r.status != 0)
        fail_msg("--call orders.get exited with %d: %s", r.status, t_run_err(&r));
    cJSON *order = parse_json(t_run_out(&r), "the one-shot call's output");
    assert_string_equal(str_at(order, "id"), o.order_id);
    assert_string_equal(str_at(order, "paymentId"), o.payment_id);
    cJSON_Delete(order);
    t_run_free(&r);

    oneshot[7] = "notifications.list";
    oneshot[8] = NULL;
    t_run_prog(&r, shop_path, oneshot, L.env, 30000);
    if (r.status != 0)
        fail_msg("--call notifications.list exited with %d: %s", r.status, t_run_err(&r));
    cJSON *list = parse_json(t_run_out(&r), "the one-shot call's output");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(list, "notifications")),
                     1);
    cJSON_Delete(list);
    t_run_free(&r);

    /* No live instance: 503 at once, not after the timeout. */
    loom_runtime *probe = probe_start("probe", NULL, NULL);
    int64_t t0 = t_mono_ms();
    loom_msg *resp = call(probe, "inventory", "reserve", "{}", NULL, NULL);
    assert_non_null(resp);
    assert_int_equal(loom_msg_status(resp), 503);
    loom_msg_release(resp);
    assert_true(t_mono_ms() - t0 < CALL_TIMEOUT_MS / 2);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* Two payments instances behind one shared subscription: each serves some
 * of the charges, with one shared state (distinct payment ids). */
static void test_two_payments_instances_share_the_load(void **state)
{
    (void)state;
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    loom_runtime *probe = probe_start("probe", NULL, NULL);
    enum { N = 20 };
    size_t served[2] = {0, 0};
    char ids[N][32];
    for (int i = 0; i < N; i++) {
        char order[32], inst[64];
        snprintf(order, sizeof order, "load-%d", i);
        int status = charge(probe, order, 1 + i, inst, sizeof inst, ids[i], sizeof ids[i]);
        if (status != 200)
            fail_msg("charge %d answered %d", i, status);
        if (strcmp(inst, "pay-1") == 0)
            served[0]++;
        else if (strcmp(inst, "pay-2") == 0)
            served[1]++;
        else
            fail_msg("charge %d was served by '%s'", i, inst);
        for (int j = 0; j < i; j++)
            if (strcmp(ids[i], ids[j]) == 0)
                fail_msg("payment id %s given twice", ids[i]);
    }
    if (served[0] == 0 || served[1] == 0)
        fail_msg("pay-1 served %zu charges, pay-2 %zu: expected both to serve some", served[0],
                 served[1]);
    /* Their logs agree with the senders of the responses, and no charge
     * reached both (the second would answer "already charged"). */
    assert_int_equal(t_proc_log_count(pay[0], "captured "), served[0]);
    assert_int_equal(t_proc_log_count(pay[1], "captured "), served[1]);
    assert_int_equal(t_proc_log_count(pay[0], "already charged"), 0);
    assert_int_equal(t_proc_log_count(pay[1], "already charged"), 0);

    /* The same with N calls in flight at once. */
    _Atomic(loom_msg *) resp[N];
    size_t async_served[2] = {0, 0};
    for (int i = 0; i < N; i++) {
        char payload[96];
        snprintf(payload, sizeof payload, "{\"orderId\":\"burst-%d\",\"amount\":2}", i);
        loom_call c = {.service = "payments",
                       .version = "1",
                       .command = "charge",
                       .payload = t_json(payload),
                       .timeout_ms = CALL_TIMEOUT_MS};
        atomic_init(&resp[i], NULL);
        assert_int_equal(loom_runtime_invoke(probe, &c, keep_response, &resp[i]), LOOM_OK);
    }
    int64_t deadline = t_mono_ms() + 2 * CALL_TIMEOUT_MS;
    for (int i = 0; i < N; i++) {
        loom_msg *m;
        while (!(m = atomic_load(&resp[i]))) {
            if (t_mono_ms() > deadline)
                fail_msg("no response to charge burst-%d", i);
            t_sleep_ms(5);
        }
        int status = loom_msg_status(m);
        const char *inst = loom_msg_sender(m)->instance;
        bool pay2 = inst && strcmp(inst, "pay-2") == 0;
        bool known = pay2 || (inst && strcmp(inst, "pay-1") == 0);
        loom_msg_release(m);
        assert_int_equal(status, 200);
        assert_true(known);
        async_served[pay2]++;
    }
    assert_true(async_served[0] > 0 && async_served[1] > 0);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}
/* SIGKILL one payments instance: the broker clears its announcement with
 * its Last Will and the flow goes on through the other one. With both gone,
 * calls fail fast with 503 and the bridge drops the route. */
static void test_sigkill_one_payments_instance(void **state)
{
    (void)state;
    t_proc *a = service_start("shop-a", "users,orders,notifications", NULL);
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    bridge_start();
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    loom_runtime *probe = probe_start("probe", NULL, NULL);
    /* Both serve before. */
    bool seen[2] = {false, false};
    for (int i = 0; i < 40 && !(seen[0] && seen[1]); i++) {
        char order[32], inst[64];
        snprintf(order, sizeof order, "before-%d", i);
        assert_int_equal(charge(probe, order, 1, inst, sizeof inst, NULL, 0), 200);
        seen[strcmp(inst, "pay-2") == 0] = true;
    }
    assert_true(seen[0] && seen[1]);

    assert_int_equal(proc_stop(pay[0], SIGKILL), 128 + SIGKILL);
    wait_announcement("pay-1", 0, 10000);

    /* Every charge goes to pay-2 now; the first one may still be on its
     * way to the dead instance, so wait (bounded) for one success. */
    int64_t deadline = t_mono_ms() + RECOVER_TIMEOUT_MS;
    int status = 0;
    char inst[64];
    while ((status = charge(probe, "after-0", 1, inst, sizeof inst, NULL, 0)) != 200) {
        if (t_mono_ms() >= deadline)
            fail_msg("no charge succeeded within %d ms of pay-1's death (last: %d)",
                     RECOVER_TIMEOUT_MS, status);
        t_sleep_ms(100);
    }
    for (int i = 1; i <= 10; i++) {
        char order[32];
        snprintf(order, sizeof order, "after-%d", i);
        assert_int_equal(charge(probe, order, 1, inst, sizeof inst, NULL, 0), 200);
        assert_string_equal(inst, "pay-2");
    }
    placed o;
    http_order_flow(&o);
    expect_captured_by_one(&o, &pay[1], 1, a);
    wait_bridge_routes(SHOP_ROUTES, 1000);

    /* The last instance gone: no receiver, 503 at once. */
    assert_int_equal(proc_stop(pay[1], SIGKILL), 128 + SIGKILL);
    wait_announcement("pay-2", 0, 10000);
    int64_t t0 = t_mono_ms();
    assert_int_equal(charge(probe, "none-left", 1, NULL, 0, NULL, 0), 503);
    assert_true(t_mono_ms() - t0 < CALL_TIMEOUT_MS / 2);
    wait_bridge_routes(SHOP_ROUTES - 1, 5000);
    http_res res = {0};
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}",
             o.user_id);
    t0 = t_mono_ms();
    http(&res, "POST", "/api/v1/orders", body);
    expect_http(&res, 503, "POST /api/v1/orders without payments");
    assert_true(t_mono_ms() - t0 < CALL_TIMEOUT_MS / 2);
    http(&res, "POST", "/api/v1/payments", "{\"orderId\":\"x\",\"amount\":1}");
    expect_http(&res, 404, "POST /api/v1/payments without payments");
    free(res.body.data);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* Counts the orderCreated events one in-test runtime received, per
 * subscription. */
typedef struct audit {
    atomic_int tally; /* one-per-group subscription */
    atomic_int watch; /* every-instance subscription */
} audit;

static loom_ack on_tally(loom_ctx *ctx, void *user)
{
    (void)ctx;
    atomic_fetch_add(&((audit *)user)->tally, 1);
    return LOOM_ACK;
}

static loom_ack on_watch(loom_ctx *ctx, void *user)
{
    (void)ctx;
    atomic_fetch_add(&((audit *)user)->watch, 1);
    return LOOM_ACK;
}

LOOM_SUBSCRIPTION(tally_sub, .name = "tally", .handler = on_tally,
                  .filter = {.event_name = "orderCreated"});
LOOM_SUBSCRIPTION(watch_sub, .name = "watch", .handler = on_watch,
                  .filter = {.event_name = "orderCreated"}, .delivery = LOOM_DELIVER_ALL);
LOOM_SERVICE(audit_svc, .name = "audit", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&tally_sub, &watch_sub));

static bool audits_reached(const audit *x, const audit *y, int n)
{
    return atomic_load(&x->watch) >= n && atomic_load(&y->watch) >= n &&
           atomic_load(&x->tally) + atomic_load(&y->tally) >= n;
}

/* Two notifications instances (shop processes) share the group of
 * notifications.onOrderCreated: each order is notified once, by one of
 * them. Two in-test runtimes of an "audit" service: its one-per-group
 * subscription sees each event once across both, its every-instance
 * subscription sees every event in each. */
static void test_group_and_every_instance_subscriptions(void **state)
{
    (void)state;
    t_proc *a = service_start("shop-a", "users,orders,notifications", "debug");
    t_proc *c = service_start("notif-2", "notifications", "debug");
    service_start("pay-1", "payments", NULL);
    audit x = {0}, y = {0};
    loom_runtime *rx = probe_start("audit-1", &audit_svc, &x);
    probe_start("audit-2", &audit_svc, &y);

    loom_msg *resp =
        call(rx, "users", "create", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}", NULL, NULL);
    assert_non_null(resp);
    assert_int_equal(loom_msg_status(resp), 200);
    char user_id[32];
    snprintf(user_id, sizeof user_id, "%s", str_at(loom_msg_payload(resp), "id"));
    loom_msg_release(resp);
    enum { N = 8 };
    for (int i = 0; i < N; i++) {
        char payload[160];
        snprintf(payload, sizeof payload,
                 "{\"userId\":\"%s\",\"items\":[{\"sku\":\"s-%d\",\"quantity\":1}],\"amount\":%d}",
                 user_id, i, i + 1);
        resp = call(rx, "orders", "create", payload, NULL, NULL);
        assert_non_null(resp);
        assert_int_equal(loom_msg_status(resp), 200);
        loom_msg_release(resp);
    }

    int64_t deadline = t_mono_ms() + 10000;
    while (!audits_reached(&x, &y, N) ||
           t_proc_log_count(a, "notified user") + t_proc_log_count(c, "notified user") < N) {
        if (t_mono_ms() >= deadline)
            break;
        t_sleep_ms(20);
    }
    t_sleep_ms(500); /* duplicates, if any, would arrive now */
    assert_int_equal(atomic_load(&x.watch), N);
    assert_int_equal(atomic_load(&y.watch), N);
    assert_int_equal(atomic_load(&x.tally) + atomic_load(&y.tally), N);
    if (atomic_load(&x.tally) == 0 || atomic_load(&y.tally) == 0)
        fail_msg("audit.tally: %d and %d events: expected the group to spread them",
                 atomic_load(&x.tally), atomic_load(&y.tally));

    size_t na = t_proc_log_count(a, "notified user"), nc = t_proc_log_count(c, "notified user");
    if (na + nc != N || na == 0 || nc == 0)
        fail_msg("shop-a notified %zu orders, notif-2 %zu: expected %d in all, some each", na, nc,
                 N);
    /* No instance saw an event the other had handled (the shop would log
     * "already notified" at debug level). */
    assert_int_equal(t_proc_log_count(a, "already notified"), 0);
    assert_int_equal(t_proc_log_count(c, "already notified"), 0);

    resp = call(rx, "notifications", "list", NULL, NULL, NULL);
    assert_non_null(resp);
    assert_int_equal(loom_msg_status(resp), 200);
    assert_int_equal(cJSON_GetArraySize(
                         cJSON_GetObjectItemCaseSensitive(loom_msg_payload(resp), "notifications")),
                     N);
    loom_msg_release(resp);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* Runs mosquitto_rr (MQTT 5) against a command topic with a bare JSON
 * payload; on return *status is the `status` user property of the answer
 * and the result is the bare JSON body (cJSON_Delete it). */
static cJSON *rr(const char *topic, const char *payload, int *status)
{
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    t_run r;
    t_run_prog(&r, rr_path,
               (const char *const[]){"-V", "5", "-h", "127.0.0.1", "-p", port, "-t", topic, "-e",
                                     "rr/reply/test", "-m", payload, "-F", "%P|%p", "-W", "5",
                                     NULL},
               L.env, TOOL_TIMEOUT_MS);
    if (r.status != 0)
        fail_msg("mosquitto_rr exited with %d: %s%s", r.status, t_run_out(&r), t_run_err(&r));
    const char *out = t_run_out(&r);
    const char *bar = strchr(out, '|');
    if (strncmp(out, "status:", 7) != 0 || !bar)
        fail_msg("mosquitto_rr printed no status property: %s", out);
    *status = atoi(out + 7);
    cJSON *body = parse_json(bar + 1, "mosquitto_rr's answer");
    t_run_free(&r);
    return body;
}

/* A plain MQTT 5 client calls a command: bare JSON in, the bare result
 * and a `status` user property out, errors as a bare error body. */
static void test_mosquitto_rr_interop(void **state)
{
    (void)state;
    service_start("pay-1", "payments", NULL);
    service_start("shop-a", "users,orders,notifications", NULL);
    int status = 0;
    cJSON *j = rr("loom/cmd/payments/1/charge", "{\"orderId\":\"o-7\",\"amount\":5}", &status);
    assert_int_equal(status, 200);
    assert_string_equal(str_at(j, "orderId"), "o-7");
    assert_string_equal(str_at(j, "status"), "captured");
    assert_non_null(str_at(j, "paymentId"));
    assert_int_equal(int_at(j, "amount"), 5);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "messageType")); /* bare, no envelope */
    cJSON_Delete(j);

    j = rr("loom/cmd/payments/1/charge", "{\"orderId\":\"o-7\",\"amount\":6}", &status);
    assert_int_equal(status, 409);
    assert_int_equal(int_at(j, "status"), 409);
    assert_non_null(str_at(j, "message"));
    assert_string_equal(str_at(cJSON_GetObjectItemCaseSensitive(j, "data"), "orderId"), "o-7");
    cJSON_Delete(j);

    j = rr("loom/cmd/payments/1/charge", "{\"orderId\":\"o-8\",\"amount\":-1}", &status);
    assert_int_equal(status, 400);
    assert_int_equal(int_at(j, "status"), 400);
    const cJSON *errors =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "data"), "errors");
    assert_string_equal(str_at(cJSON_GetArrayItem(errors, 0), "path"), "/amount");
    cJSON_Delete(j);

    j = rr("loom/cmd/payments/1/charge", "{\"orderId\":", &status);
    assert_int_equal(status, 400);
    assert_int_equal(int_at(j, "status"), 400);
    cJSON_Delete(j);

    /* Another service, across the processes: orders.create calls users and
     * payments over the broker. */
    j = rr("loom/cmd/users/1/create", "{\"name\":\"Rr\",\"email\":\"rr@example.com\"}", &status);
    assert_int_equal(status, 200);
    char payload[160];
    snprintf(payload, sizeof payload,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"a\",\"quantity\":1}],\"amount\":2}",
             str_at(j, "id"));
    cJSON_Delete(j);
    j = rr("loom/cmd/orders/1/create", payload, &status);
    assert_int_equal(status, 200);
    assert_string_equal(str_at(j, "status"), "paid");
    cJSON_Delete(j);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* mosquitto is killed and started again on the same port: every process
 * (and the test's own runtime) reconnects by itself, and the flow works
 * again without restarting any of them. */
static void test_broker_restart(void **state)
{
    (void)state;
    t_proc *a = service_start("shop-a", "users,orders,notifications", NULL);
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    bridge_start();
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    loom_runtime *probe = probe_start("probe", NULL, NULL);
    placed o;
    http_order_flow(&o);
    pid_t pids[4] = {a->pid, pay[0]->pid, pay[1]->pid, L.bridge->pid};

    t_broker_kill(&L.broker);
    http_res res = {0};
    if (!http_until(&res, 503, "GET", "/readyz", NULL, 10000))
        fail_msg("the bridge still reports ready 10 s after the broker died: %ld %s", res.status,
                 res.body.data);
    /* A call made meanwhile fails (503 or 504) at its deadline instead of
     * hanging. (Kept short: the longer the outage, the longer the
     * reconnect backoff has grown.) */
    loom_call c = {.service = "payments",
                   .version = "1",
                   .command = "charge",
                   .payload = t_json("{\"orderId\":\"while-down\",\"amount\":1}"),
                   .timeout_ms = 1000};
    loom_msg *down = NULL;
    int64_t t_call = t_mono_ms();
    assert_int_equal(loom_runtime_call(probe, &c, &down), LOOM_OK);
    int down_status = loom_msg_status(down);
    loom_msg_release(down);
    if (down_status != 503 && down_status != 504)
        fail_msg("a charge while the broker is down answered %d", down_status);
    assert_true(t_mono_ms() - t_call < 3000);
    t_broker_restart(&L.broker);

    int64_t t0 = t_mono_ms();
    /* Each process reconnects by itself (it logs "broker connected" again). */
    t_proc *procs[4] = {a, pay[0], pay[1], L.bridge};
    for (size_t i = 0; i < 4; i++)
        while (t_proc_log_count(procs[i], "broker connected") < 2) {
            if (t_mono_ms() - t0 > RECOVER_TIMEOUT_MS)
                fail_msg("%s did not reconnect within %d ms", procs[i]->name, RECOVER_TIMEOUT_MS);
            t_sleep_ms(20);
        }
    wait_bridge_routes(SHOP_ROUTES, RECOVER_TIMEOUT_MS);
    /* A request that reaches a service before it subscribed again is lost
     * (504 after the 4 s timeout): retry until one goes through. */
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}",
             o.user_id);
    if (!http_until(&res, 200, "POST", "/api/v1/orders", body,
                    RECOVER_TIMEOUT_MS - (int)(t_mono_ms() - t0)))
        fail_msg("no order went through within %d ms of the broker's restart: %ld %s",
                 RECOVER_TIMEOUT_MS, res.status, res.body.data);
    free(res.body.data);
    placed o2;
    http_order_flow(&o2);
    expect_captured_by_one(&o2, pay, 2, a);

    char inst[64];
    int status = 0;
    while ((status = charge(probe, "after-restart", 1, inst, sizeof inst, NULL, 0)) != 200)
        if (t_mono_ms() - t0 > RECOVER_TIMEOUT_MS)
            fail_msg("the test's runtime cannot charge after the restart: %d", status);

    /* Nobody was restarted: the same processes. */
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(procs[i]->pid, pids[i]);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* mosquitto_pub with the given arguments after -h/-p; must succeed. */
static void pub(const char *topic, const char *const *args)
{
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    const char *argv[24] = {"-h", "127.0.0.1", "-p", port, "-t", topic};
    size_t n = 6;
    for (size_t i = 0; args[i]; i++) {
        assert_true(n + 1 < sizeof argv / sizeof argv[0]);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    t_run r;
    t_run_prog(&r, pub_path, argv, L.env, TOOL_TIMEOUT_MS);
    if (r.status != 0)
        fail_msg("mosquitto_pub -t %s exited with %d: %s", topic, r.status, t_run_err(&r));
    t_run_free(&r);
}

/* Writes n bytes made by gen(i) to a file in the test's directory. */
static char *write_junk(const char *name, size_t n, int (*gen)(size_t))
{
    char *path = path_in_dir(name);
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s", path);
    for (size_t i = 0; i < n; i++)
        fputc(gen(i), f);
    assert_int_equal(fclose(f), 0);
    return path;
}

static int gen_noise(size_t i)
{
    return (int)((i * 2654435761u) >> 13) & 0xff;
}

static int gen_bracket(size_t i)
{
    (void)i;
    return '[';
}

/* Raw junk published on every kind of loom topic: each process logs and
 * drops what it cannot use and keeps serving. */
static void test_garbage_on_loom_topics(void **state)
{
    (void)state;
    t_proc *a = service_start("shop-a", "users,orders,notifications", NULL);
    t_proc *pay[2] = {service_start("pay-1", "payments", NULL),
                      service_start("pay-2", "payments", NULL)};
    bridge_start();
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    loom_runtime *probe = probe_start("probe", NULL, NULL);

    static const char id[] = "0123456789abcdef0123456789abcdef";
    char reply_env[512], event_env[512], cmd_env[512], announce[512];
    snprintf(reply_env, sizeof reply_env,
             "{\"v\":1,\"messageType\":\"commandSuccessResponse\",\"id\":\"%s\","
             "\"timestamp\":1,\"correlationId\":\"%s\",\"payload\":{\"x\":1}}",
             id, id);
    snprintf(event_env, sizeof event_env,
             "{\"v\":1,\"messageType\":\"customMessage\",\"id\":\"%s\",\"timestamp\":1,"
             "\"eventName\":\"orderCreated\",\"payload\":{\"id\":5}}",
             id);
    snprintf(cmd_env, sizeof cmd_env,
             "{\"v\":1,\"messageType\":\"command\",\"id\":\"%s\",\"timestamp\":1,"
             "\"payload\":{\"payload\":{\"orderId\":\"g\",\"amount\":1}},\"replyTo\":7}",
             id);
    snprintf(announce, sizeof announce,
             "{\"messageType\":\"infoServiceAvailable\",\"id\":\"%s\",\"timestamp\":1,"
             "\"payload\":{\"services\":7}}",
             id);
    char *noise = write_junk("noise.bin", 2 * 1024 * 1024, gen_noise);
    char *deep = write_junk("deep.json", 100000, gen_bracket);

    static const char *const cmd = "loom/cmd/payments/1/charge";
    const struct {
        const char *topic;
        const char *args[4];
    } junk[] = {
        {cmd, {"-m", "junk{{"}},
        /* bare JSON without a response topic (MQTT 3.1.1 has none) */
        {cmd, {"-m", "{\"orderId\":\"g-1\",\"amount\":1}"}},
        {cmd, {"-n"}},
        {cmd, {"-m", cmd_env}},
        {cmd, {"-f", noise}},
        {cmd, {"-f", deep}},
        {"loom/cmd/orders/1/create", {"-m", "{\"messageType\":\"command\",\"id\":\"zz\"}"}},
        {"loom/reply/bridge", {"-m", "junk"}},
        {"loom/reply/bridge", {"-m", reply_env}},
        {"loom/reply/shop-a", {"-m", "[1,2,3]"}},
        {"loom/reply/probe", {"-f", noise}},
        {"loom/reply/probe", {"-m", reply_env}},
        {"loom/evt/orderCreated/x/1", {"-m", "junk"}},
        {"loom/evt/orderCreated/x/1", {"-m", "{\"id\":5}"}},
        {"loom/evt/orderCreated/orders/1", {"-m", event_env}},
        {"loom/evt/orderCreated/x/1", {"-f", deep}},
        {"loom/svc/x", {"-m", "junk"}},
        {"loom/svc/y", {"-r", "-m", "junk"}}, /* retained: later processes get it too */
        {"loom/svc/z", {"-r", "-m", announce}},
        {"loom/svc/big", {"-f", noise}},
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        pub(junk[i].topic, junk[i].args);
    free(noise);
    free(deep);

    /* The junk arrived: each process logged dropping some of it (the
     * warnings are rate-limited, so not one per message). */
    t_proc *all[4] = {a, pay[0], pay[1], L.bridge};
    int64_t deadline = t_mono_ms() + 10000;
    for (size_t i = 0; i < 4; i++)
        while (t_proc_log_count(all[i], "malformed") + t_proc_log_count(all[i], "dropped") == 0) {
            if (t_mono_ms() >= deadline)
                fail_msg("%s logged no dropped message within 10 s", all[i]->name);
            t_sleep_ms(50);
        }
    assert_true(t_proc_log_count(pay[0], cmd) + t_proc_log_count(pay[1], cmd) > 0);
    expect_all_running();

    /* Everyone keeps serving. */
    placed o;
    http_order_flow(&o);
    expect_captured_by_one(&o, pay, 2, a);
    int status = 0;
    cJSON *j = rr(cmd, "{\"orderId\":\"after-junk\",\"amount\":5}", &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    assert_int_equal(charge(probe, "probe-after-junk", 1, NULL, 0, NULL, 0), 200);

    /* A process that starts now reads the retained junk and serves. */
    service_start("pay-3", "payments", NULL);
    bool served = false;
    for (int i = 0; i < 40 && !served; i++) {
        char order[32], inst[64];
        snprintf(order, sizeof order, "pay3-%d", i);
        assert_int_equal(charge(probe, order, 1, inst, sizeof inst, NULL, 0), 200);
        served = strcmp(inst, "pay-3") == 0;
    }
    assert_true(served);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

int main(void)
{
    const char *filter = getenv("T_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_flow_bridge_started_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_flow_services_started_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_payments_instances_share_the_load, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sigkill_one_payments_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_and_every_instance_subscriptions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_mosquitto_rr_interop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_on_loom_topics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
