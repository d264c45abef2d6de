/* Monolithic × 3 behind nginx: three identical shop processes
 * (`--services all`), each with its own HTTP port, sharing one mosquitto and
 * one redis-server, and nginx in front of them running
 * examples/shop/deploy/nginx.conf (round-robin, upstream keepalive; its
 * ports replaced by free ones). Everything on loopback, started and stopped
 * by each test.
 *
 * nginx adds `X-Upstream: $upstream_addr` to every response, so the test
 * knows which instance served each request through it; the instances'
 * logs say the same from their side. Reads go to each instance's own port
 * directly, to show that whatever one instance wrote, every instance finds.
 *
 * The shop binary is found under $LOOM_TEST_BUILD (set by `make check`;
 * default "."); nginx.conf is read from the source tree (the working
 * directory). Every wait is bounded; the per-test teardown kills and reaps
 * every child even when the test failed, and prints their logs then.
 *
 *   T_FILTER=pattern   runs only the tests whose name matches
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support/mosquitto.h"
#include "support/nginx.h"
#include "support/proc.h"
#include "support/redis.h"
#include "support/support.h"

#define N_SHOPS 3
#define NGINX_CONF "examples/shop/deploy/nginx.conf"
#define CMD_TIMEOUT "timeouts.default_ms=4000"
#define START_TIMEOUT_MS 20000  /* an instance up and ready */
#define NOTIFY_TIMEOUT_MS 10000 /* an orderCreated event handled */
#define STORE_DOWN_MS 3000      /* a request while Redis is down answers within */
#define RECOVER_TIMEOUT_MS 15000

static char shop_path[4096];

/* One test's deployment. Only the main thread touches it. */
typedef struct fleet {
    t_broker broker;
    t_redis redis;
    t_nginx lb;
    char dir[64];
    char **env;
    t_proc shops[N_SHOPS];
    int ports[N_SHOPS];
    bool down[N_SHOPS]; /* stopped on purpose */
    int emails;         /* makes each test user's email unique */
    bool passed;        /* set last by each test: teardown prints the logs otherwise */
} fleet;

static fleet F;

/* --- small helpers ---------------------------------------------------------- */

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

/* --- HTTP (libcurl) ---------------------------------------------------------- */

typedef struct http_res {
    long status; /* 0 when the request failed */
    t_buf body;
    char upstream[128]; /* nginx's X-Upstream header, "" when absent */
} http_res;

static size_t collect(char *p, size_t size, size_t n, void *user)
{
    t_buf_add(user, p, size * n);
    return size * n;
}

static size_t header_line(char *p, size_t size, size_t n, void *user)
{
    http_res *res = user;
    size_t len = size * n;
    static const char name[] = "X-Upstream:";
    if (len > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        const char *v = p + sizeof name - 1;
        const char *end = p + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        snprintf(res->upstream, sizeof res->upstream, "%.*s", (int)(end - v), v);
    }
    return len;
}

/* One request to 127.0.0.1:port; body (may be NULL) is sent as JSON. */
static long http(http_res *res, int port, const char *method, const char *path, const char *body)
{
    free(res->body.data);
    memset(res, 0, sizeof *res);
    t_buf_add(&res->body, "", 0);
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
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
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_line);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, res);
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

/* The instance (0-based) that served a request through nginx: the last
 * address of X-Upstream (nginx lists every instance it tried). Fails when
 * the header names none of the instances. */
static int served_by(const http_res *res)
{
    const char *last = strrchr(res->upstream, ' ');
    last = last ? last + 1 : res->upstream;
    const char *colon = strrchr(last, ':');
    int port = colon ? atoi(colon + 1) : 0;
    for (int i = 0; i < N_SHOPS; i++)
        if (F.ports[i] == port)
            return i;
    fail_msg("X-Upstream '%s' names none of the instances", res->upstream);
    return -1;
}

/* --- processes --------------------------------------------------------------- */

/* Starts shop-(i+1) on F.ports[i] (a free port when 0) and waits until its
 * /readyz answers 200. A free port may be taken before the child binds it:
 * then, unless the port was fixed, another is tried. */
static void shop_start(int i)
{
    bool fixed = F.ports[i] != 0;
    char instance[16], log[128];
    snprintf(instance, sizeof instance, "shop-%d", i + 1);
    snprintf(log, sizeof log, "%s/%s.log", F.dir, instance);
    for (int attempt = 0; attempt < 3; attempt++) {
        if (!fixed)
            F.ports[i] = t_free_port();
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", F.ports[i]);
        t_proc *p = &F.shops[i];
        t_proc_start(p, instance, shop_path,
                     (const char *const[]){"--services", "all", "--broker", t_broker_url(&F.broker),
                                           "--state", t_redis_url(&F.redis), "--instance", instance,
                                           "--http", addr, "--workers", "2", "--log-level", "info",
                                           "--set", CMD_TIMEOUT, NULL},
                     F.env, log);
        F.down[i] = false;
        http_res res = {0};
        int64_t deadline = t_mono_ms() + START_TIMEOUT_MS;
        bool up = false;
        while (!up && t_mono_ms() < deadline && t_proc_running(p)) {
            up = http(&res, F.ports[i], "GET", "/readyz", NULL) == 200;
            if (!up)
                t_sleep_ms(50);
        }
        free(res.body.data);
        if (up)
            return;
        if (t_proc_running(p))
            fail_msg("%s: /readyz did not answer 200 within %d ms", instance, START_TIMEOUT_MS);
        if (fixed || t_proc_log_count(p, "cannot start the HTTP bridge") == 0 || attempt == 2)
            fail_msg("%s exited with %d", instance, p->status);
    }
}

/* Replaces the first occurrence of `from` in *text by `to`; fails unless
 * it occurs exactly once (a changed nginx.conf must break this test
 * loudly, not silently proxy elsewhere). */
static void replace_once(char **text, const char *from, const char *to)
{
    char *at = strstr(*text, from);
    if (!at || strstr(at + 1, from))
        fail_msg("%s: expected '%s' exactly once", NGINX_CONF, from);
    char *out = NULL;
    if (asprintf(&out, "%.*s%s%s", (int)(at - *text), *text, to, at + strlen(from)) < 0)
        fail_msg("out of memory");
    free(*text);
    *text = out;
}

/* nginx with the deployment example's configuration, on a free port, in
 * front of the three instances. */
static void lb_start(void)
{
    char *conf = t_read_file(NGINX_CONF);
    if (!*conf)
        fail_msg("cannot read %s (run the test from the source tree)", NGINX_CONF);
    replace_once(&conf, "listen 127.0.0.1:8080;", "listen 127.0.0.1:@PORT@;");
    for (int i = 0; i < N_SHOPS; i++) {
        char from[64], to[64];
        snprintf(from, sizeof from, "server 127.0.0.1:%d ", 8081 + i);
        snprintf(to, sizeof to, "server 127.0.0.1:%d ", F.ports[i]);
        replace_once(&conf, from, to);
    }
    t_nginx_start(&F.lb, conf, F.env);
    free(conf);
}

/* Every instance the test did not stop on purpose is still running. */
static void expect_all_running(void)
{
    for (int i = 0; i < N_SHOPS; i++)
        if (!F.down[i] && !t_proc_running(&F.shops[i]))
            fail_msg("%s exited with %d", F.shops[i].name, F.shops[i].status);
}

/* Ends a test: SIGTERM to every instance still running, all at once, and
 * each must exit 0 within 15 s (graceful; under the sanitizers no error
 * and no leak); nginx must exit 0 too. */
static void stop_all_cleanly(void)
{
    for (int i = 0; i < N_SHOPS; i++)
        if (!F.down[i] && F.shops[i].pid > 0)
            kill(F.shops[i].pid, SIGTERM);
    for (int i = 0; i < N_SHOPS; i++) {
        if (F.down[i])
            continue;
        int status = t_proc_stop(&F.shops[i], 0, 15000);
        F.down[i] = true;
        if (status != 0)
            fail_msg("%s exited with %d after SIGTERM", F.shops[i].name, status);
    }
    int status = t_nginx_stop(&F.lb);
    if (status != 0)
        fail_msg("nginx exited with %d after SIGTERM", status);
}

/* --- the shop's requests ------------------------------------------------------ */

typedef struct placed {
    char user_id[32];
    char order_id[32];
    cJSON *user, *order;   /* as created */
    int user_by, order_by; /* the instances that created them */
} placed;

static void placed_free(placed *o, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cJSON_Delete(o[i].user);
        cJSON_Delete(o[i].order);
    }
}

/* POST /api/v1/users to port; fills o->user and o->user_id. */
static void create_user(placed *o, int port, http_res *res)
{
    char body[160];
    snprintf(body, sizeof body, "{\"name\":\"Ada\",\"email\":\"ada%d@example.com\"}", ++F.emails);
    http(res, port, "POST", "/api/v1/users", body);
    expect_http(res, 200, "POST /api/v1/users");
    o->user = parse_json(res->body.data, "the user");
    const char *id = str_at(o->user, "id");
    assert_non_null(id);
    snprintf(o->user_id, sizeof o->user_id, "%s", id);
}

/* POST /api/v1/orders to port for o's user; fills o->order and o->order_id. */
static void place_order(placed *o, int port, http_res *res)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"book-42\",\"quantity\":2}],"
             "\"amount\":39.9}",
             o->user_id);
    http(res, port, "POST", "/api/v1/orders", body);
    expect_http(res, 200, "POST /api/v1/orders");
    o->order = parse_json(res->body.data, "the order");
    assert_string_equal(str_at(o->order, "status"), "paid");
    assert_string_equal(str_at(o->order, "userId"), o->user_id);
    const char *id = str_at(o->order, "id");
    assert_non_null(id);
    snprintf(o->order_id, sizeof o->order_id, "%s", id);
}

/* GET path from instance i answers 200 with exactly `want`. */
static void expect_same(int i, const char *path, const cJSON *want, http_res *res)
{
    http(res, F.ports[i], "GET", path, NULL);
    if (res->status != 200)
        fail_msg("shop-%d: GET %s answered %ld: %s", i + 1, path, res->status, res->body.data);
    cJSON *got = parse_json(res->body.data, path);
    if (!cJSON_Compare(got, want, true)) {
        char *w = cJSON_PrintUnformatted(want);
        fail_msg("shop-%d: GET %s answered %s, expected %s", i + 1, path, res->body.data,
                 w ? w : "?");
    }
    cJSON_Delete(got);
}

/* The user and the order are found, identical, through every instance
 * that runs. */
static void expect_found_everywhere(const placed *o, http_res *res)
{
    char path[128];
    for (int i = 0; i < N_SHOPS; i++) {
        if (F.down[i])
            continue;
        snprintf(path, sizeof path, "/api/v1/users/%s", o->user_id);
        expect_same(i, path, o->user, res);
        if (o->order) {
            snprintf(path, sizeof path, "/api/v1/orders/%s", o->order_id);
            expect_same(i, path, o->order, res);
        }
    }
}

/* Waits (bounded) until GET /notifications?userId=... on instance i lists
 * exactly one notification, for o's order. */
static void expect_notified_at(int i, const placed *o, int64_t deadline, http_res *res)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/notifications?userId=%s", o->user_id);
    for (;;) {
        http(res, F.ports[i], "GET", path, NULL);
        if (res->status != 200)
            fail_msg("shop-%d: GET %s answered %ld: %s", i + 1, path, res->status, res->body.data);
        cJSON *l = parse_json(res->body.data, "the notifications");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(l, "notifications");
        int n = cJSON_GetArraySize(list);
        const char *oid = str_at(cJSON_GetArrayItem(list, 0), "orderId");
        bool ok = n == 1 && oid && strcmp(oid, o->order_id) == 0;
        if (n > 1)
            fail_msg("shop-%d: %d notifications for user %s (one order): %s", i + 1, n, o->user_id,
                     res->body.data);
        cJSON_Delete(l);
        if (ok)
            return;
        if (t_mono_ms() >= deadline)
            fail_msg("shop-%d: no notification for order %s within %d ms: %s", i + 1, o->order_id,
                     NOTIFY_TIMEOUT_MS, res->body.data);
        t_sleep_ms(50);
    }
}

/* Lines of p's log that contain needle or, with at_end, end with it (a
 * log line ends with the message, so "created user u-1" at the end does
 * not match u-10). */
static size_t lines_with(const t_proc *p, const char *needle, bool at_end)
{
    char *log = t_proc_log(p);
    size_t n = 0, len = strlen(needle);
    for (char *line = log; *line;) {
        char *end = strchr(line, '\n');
        if (!end)
            break; /* a partial line: not yet written completely */
        *end = '\0';
        if (at_end ? (size_t)(end - line) >= len && strcmp(end - len, needle) == 0
                   : strstr(line, needle) != NULL)
            n++;
        line = end + 1;
    }
    free(log);
    return n;
}

/* The instance that logged the formatted needle (see lines_with) once, -1
 * when none did; fails when several did or one did twice. */
static int logged_by(bool at_end, const char *fmt, ...) LOOM_PRINTF(2, 3);
static int logged_by(bool at_end, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *needle = NULL;
    if (vasprintf(&needle, fmt, ap) < 0)
        fail_msg("out of memory");
    va_end(ap);
    int who = -1;
    for (int i = 0; i < N_SHOPS; i++) {
        size_t n = lines_with(&F.shops[i], needle, at_end);
        if (n > 1 || (n && who >= 0))
            fail_msg("'%s' logged more than once (shop-%d)", needle, i + 1);
        if (n)
            who = i;
    }
    free(needle);
    return who;
}

/* Log lines of every instance that contain needle. */
static size_t log_total(const char *needle)
{
    size_t n = 0;
    for (int i = 0; i < N_SHOPS; i++)
        n += t_proc_log_count(&F.shops[i], needle);
    return n;
}

/* --- fixtures ---------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("LOOM_TEST_BUILD");
    if (!build || !*build)
        build = ".";
    snprintf(shop_path, sizeof shop_path, "%s/examples/shop/shop", build);
    if (access(shop_path, X_OK) != 0) {
        fprintf(stderr, "test_scaleout: build the examples first (%s)\n", shop_path);
        return -1;
    }
    if (access(NGINX_CONF, R_OK) != 0) {
        fprintf(stderr, "test_scaleout: run from the source tree (%s)\n", NGINX_CONF);
        return -1;
    }
    if (!t_broker_binary() || !t_redis_binary() || !t_nginx_binary()) {
        fprintf(stderr, "test_scaleout: install mosquitto, redis-server and nginx-light "
                        "(make deps)\n");
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
    memset(&F, 0, sizeof F);
    snprintf(F.dir, sizeof F.dir, "/tmp/loom-scaleout-XXXXXX");
    if (!mkdtemp(F.dir))
        return -1;
    char tmpdir[96];
    snprintf(tmpdir, sizeof tmpdir, "TMPDIR=%s", F.dir);
    F.env = t_env_new((const char *const[]){tmpdir, NULL});
    t_broker_start(&F.broker);
    t_redis_start(&F.redis);
    for (int i = 0; i < N_SHOPS; i++)
        shop_start(i);
    lb_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (!F.passed) {
        for (int i = 0; i < N_SHOPS; i++)
            if (F.shops[i].log_path[0])
                t_proc_print_log(&F.shops[i], 6000);
        if (F.lb.dir[0])
            t_nginx_print_log(&F.lb, 3000);
        fprintf(stderr, "(kept: %s, %s; mosquitto's log: %s/mosquitto.log)\n", F.dir, F.lb.dir,
                F.broker.dir);
    }
    /* SIGTERM to all at once (nginx included), then SIGKILL what is left. */
    t_proc_reap_all(10000);
    t_redis_stop(&F.redis);
    if (F.passed) {
        t_broker_stop(&F.broker);
        t_nginx_cleanup(&F.lb);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", F.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "test_scaleout: cannot remove %s\n", F.dir);
    } else {
        t_broker_kill(&F.broker); /* keeps its directory and log */
    }
    t_env_free(F.env);
    memset(&F, 0, sizeof F);
    return 0;
}

/* --- tests ------------------------------------------------------------------- */

/* Users and orders placed through nginx land on the instances in turn;
 * every user, order and notification is then found through each
 * instance's own port. Events cross instances: an order placed on one is
 * notified once, by whichever instance the broker gave the event to. */
static void test_round_robin_over_shared_state(void **state)
{
    (void)state;
    enum { N = 6 };
    placed o[N];
    memset(o, 0, sizeof o);
    http_res res = {0};
    int users_at[N_SHOPS] = {0}, orders_at[N_SHOPS] = {0};

    for (int i = 0; i < N; i++) {
        create_user(&o[i], F.lb.port, &res);
        o[i].user_by = served_by(&res);
        users_at[o[i].user_by]++;
        if (i > 0 && o[i].user_by == o[i - 1].user_by)
            fail_msg("users %d and %d were both created by shop-%d (X-Upstream %s)", i - 1, i,
                     o[i].user_by + 1, res.upstream);
    }
    for (int i = 0; i < N; i++) {
        place_order(&o[i], F.lb.port, &res);
        o[i].order_by = served_by(&res);
        orders_at[o[i].order_by]++;
        if (i > 0 && o[i].order_by == o[i - 1].order_by)
            fail_msg("orders %d and %d were both placed by shop-%d (X-Upstream %s)", i - 1, i,
                     o[i].order_by + 1, res.upstream);
    }
    /* Round-robin over three: each served a third. */
    for (int i = 0; i < N_SHOPS; i++)
        if (users_at[i] != N / N_SHOPS || orders_at[i] != N / N_SHOPS)
            fail_msg("shop-%d created %d users and placed %d orders, expected %d each", i + 1,
                     users_at[i], orders_at[i], N / N_SHOPS);

    /* The instances agree with nginx: each logged what it served. An
     * order's payment ran in the process that placed it (a local command
     * never crosses the broker). */
    for (int i = 0; i < N; i++) {
        assert_int_equal(logged_by(true, "created user %s", o[i].user_id), o[i].user_by);
        assert_int_equal(
            logged_by(false, "order %s placed for user %s:", o[i].order_id, o[i].user_id),
            o[i].order_by);
        assert_int_equal(logged_by(false, "for order %s:", o[i].order_id), o[i].order_by);
    }

    /* Everything is found through every instance. */
    int64_t deadline = t_mono_ms() + NOTIFY_TIMEOUT_MS;
    for (int i = 0; i < N; i++) {
        expect_found_everywhere(&o[i], &res);
        for (int k = 0; k < N_SHOPS; k++)
            expect_notified_at(k, &o[i], deadline, &res);
    }
    /* Each order was notified exactly once across the fleet. */
    for (int k = 0; k < N_SHOPS; k++) {
        http(&res, F.ports[k], "GET", "/api/v1/notifications", NULL);
        expect_http(&res, 200, "GET /api/v1/notifications");
        cJSON *l = parse_json(res.body.data, "the notifications");
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "notifications")),
                         N);
        cJSON_Delete(l);
    }
    assert_int_equal(log_total("notified user"), N);

    /* Events cross instances: orders placed on shop-1 alone are notified by
     * the subscription group, spread over the fleet by the broker. */
    enum { M = 3 };
    placed d[M];
    memset(d, 0, sizeof d);
    deadline = t_mono_ms() + NOTIFY_TIMEOUT_MS;
    for (int i = 0; i < M; i++) {
        create_user(&d[i], F.ports[0], &res);
        place_order(&d[i], F.ports[0], &res);
    }
    int elsewhere = 0;
    for (int i = 0; i < M; i++) {
        expect_notified_at(2, &d[i], deadline, &res);
        int who = logged_by(false, "notified user %s: Order %s ", d[i].user_id, d[i].order_id);
        assert_true(who >= 0);
        elsewhere += who != 0;
        d[i].user_by = 0;
        expect_found_everywhere(&d[i], &res);
    }
    if (elsewhere == 0)
        fail_msg("every orderCreated event raised on shop-1 was handled on shop-1: the "
                 "instances do not share the subscription group");
    assert_int_equal(log_total("notified user"), N + M);

    placed_free(o, N);
    placed_free(d, M);
    free(res.body.data);
    expect_all_running();
    stop_all_cleanly();
    F.passed = true;
}

/* One instance dies: nginx sends its share to the others, and everything
 * created before is still found (it lives in Redis, not in the dead
 * process). The instance comes back on its port and finds what was
 * created while it was gone; nginx gives it requests again. */
static void test_instance_dies_and_comes_back(void **state)
{
    (void)state;
    http_res res = {0};
    placed before = {0};
    create_user(&before, F.lb.port, &res);
    place_order(&before, F.lb.port, &res);

    F.down[1] = true;
    assert_int_equal(t_proc_stop(&F.shops[1], SIGKILL, 5000), 128 + SIGKILL);
    /* Let nginx see its idle keepalive connections to shop-2 close: a POST
     * already sent on one of them would not be retried elsewhere. */
    t_sleep_ms(300);

    enum { N = 6 };
    placed during[N];
    memset(during, 0, sizeof during);
    bool seen[N_SHOPS] = {false};
    for (int i = 0; i < N; i++) {
        create_user(&during[i], F.lb.port, &res);
        int who = served_by(&res);
        if (who == 1)
            fail_msg("request %d was answered by the dead shop-2 (X-Upstream %s)", i, res.upstream);
        seen[who] = true;
        place_order(&during[i], F.lb.port, &res);
        assert_int_not_equal(served_by(&res), 1);
    }
    assert_true(seen[0] && seen[2]);
    expect_found_everywhere(&before, &res);

    /* Back on the same port: a fresh process with nothing in memory. */
    shop_start(1);
    expect_found_everywhere(&before, &res);
    int64_t deadline = t_mono_ms() + NOTIFY_TIMEOUT_MS;
    for (int i = 0; i < N; i++) {
        expect_found_everywhere(&during[i], &res);
        expect_notified_at(1, &during[i], deadline, &res);
    }
    /* nginx tries it again once its fail_timeout is over. */
    char path[128];
    snprintf(path, sizeof path, "/api/v1/users/%s", before.user_id);
    deadline = t_mono_ms() + RECOVER_TIMEOUT_MS;
    for (;;) {
        http(&res, F.lb.port, "GET", path, NULL);
        expect_http(&res, 200, "GET /api/v1/users/:id through nginx");
        if (served_by(&res) == 1)
            break;
        if (t_mono_ms() >= deadline)
            fail_msg("nginx sent nothing to the restarted shop-2 within %d ms", RECOVER_TIMEOUT_MS);
        t_sleep_ms(100);
    }
    placed_free(&before, 1);
    placed_free(during, N);
    free(res.body.data);
    expect_all_running();
    stop_all_cleanly();
    F.passed = true;
}

/* Redis goes away: every instance answers 503 at once (nginx passes it
 * on) and keeps running; when Redis is back (empty: the test's server does
 * not persist) every instance serves again without a restart. */
static void test_redis_outage(void **state)
{
    (void)state;
    http_res res = {0};
    placed u = {0};
    create_user(&u, F.lb.port, &res);
    char old_email[64];
    snprintf(old_email, sizeof old_email, "\"%s\"", str_at(u.user, "email"));
    placed_free(&u, 1);

    t_redis_kill(&F.redis);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/users/%s", u.user_id);
    for (int i = 0; i < N_SHOPS; i++) {
        int64_t t0 = t_mono_ms();
        http(&res, F.ports[i], "POST", "/api/v1/users",
             "{\"name\":\"Bo\",\"email\":\"bo@example.com\"}");
        expect_http(&res, 503, "POST /api/v1/users while Redis is down");
        http(&res, F.ports[i], "GET", path, NULL);
        expect_http(&res, 503, "GET /api/v1/users/:id while Redis is down");
        if (t_mono_ms() - t0 > STORE_DOWN_MS)
            fail_msg("shop-%d took %lld ms to answer 503 twice", i + 1,
                     (long long)(t_mono_ms() - t0));
    }
    http(&res, F.lb.port, "GET", path, NULL);
    expect_http(&res, 503, "GET /api/v1/users/:id through nginx while Redis is down");
    expect_all_running();

    t_redis_restart(&F.redis);
    /* Each instance recovers by itself (its store backs off for up to a
     * second between attempts). */
    placed after[N_SHOPS];
    memset(after, 0, sizeof after);
    int64_t deadline = t_mono_ms() + RECOVER_TIMEOUT_MS;
    for (int i = 0; i < N_SHOPS; i++) {
        char body[160];
        snprintf(body, sizeof body, "{\"name\":\"Cy\",\"email\":\"cy%d@example.com\"}", i);
        while (http(&res, F.ports[i], "POST", "/api/v1/users", body) != 200) {
            if (t_mono_ms() >= deadline)
                fail_msg("shop-%d did not recover within %d ms of Redis' restart: %ld %s", i + 1,
                         RECOVER_TIMEOUT_MS, res.status, res.body.data);
            t_sleep_ms(100);
        }
        after[i].user = parse_json(res.body.data, "the user");
        snprintf(after[i].user_id, sizeof after[i].user_id, "%s", str_at(after[i].user, "id"));
    }
    for (int i = 0; i < N_SHOPS; i++) {
        expect_found_everywhere(&after[i], &res);
        place_order(&after[i], F.lb.port, &res);
        expect_found_everywhere(&after[i], &res);
    }
    /* The old user went with Redis' data (its id may have been given
     * again since): no instance kept a copy of its own. */
    for (int i = 0; i < N_SHOPS; i++) {
        http(&res, F.ports[i], "GET", path, NULL);
        if (strstr(res.body.data, old_email))
            fail_msg("shop-%d still has the user Redis lost: %s", i + 1, res.body.data);
    }
    placed_free(after, N_SHOPS);
    free(res.body.data);
    expect_all_running();
    stop_all_cleanly();
    F.passed = true;
}

int main(void)
{
    const char *filter = getenv("T_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_robin_over_shared_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_instance_dies_and_comes_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_outage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
