/* The split deployment: the shop binary run as separate processes over a
 * real broker, each with some of the services, the HTTP bridge in a
 * process of its own, and runtimes created by the test itself as extra
 * clients (they read which instance served a call, and hold subscriptions
 * of both delivery modes).
 *
 * One suite, two brokers. The tests are written once against a broker
 * fixture (start, stop, kill, restart, URL, a discovery watcher, a plain
 * client of the broker, and flags for what the broker does differently);
 * this file runs them over MQTT (mosquitto) and, compiled again by
 * test_split_nats.c with SPLIT_NATS defined, over NATS (nats-server), where
 * it adds the three-node cluster test. How the brokers differ, and what the
 * tests expect of each:
 *   - MQTT keeps announcements retained and clears a crashed instance's
 *     with its Last Will, at once; NATS core has neither: instances beat
 *     every second and an announcement expires after three missed beats.
 *   - A plain client calls a command with mosquitto_rr (MQTT 5: response
 *     topic, `status` user property) or with a nats.c request (reply
 *     inbox, `status` header).
 *   - Junk is published with mosquitto_pub (some of it retained) or with
 *     nats.c (never retained: NATS keeps nothing).
 *   - mosquitto hands a group's messages out in turn; NATS picks a queue
 *     group member at random, so tests that expect a spread send more.
 *
 * Secure by default, as examples/shop/deploy/split.sh runs the shop
 * (docs/security.md): the suite generates one kit with secure.sh (a broker
 * user, ACL and signing identity per instance name the tests use, and a
 * user "tester" who may publish and subscribe anything, for the plain
 * client, the watcher and the junk); every broker starts with its users
 * and ACLs (mosquitto's dynamic security plugin, nats-server users), every
 * shop process and test runtime logs in as its instance and signs.
 *
 * Each test gets its own broker on free loopback ports
 * (tests/support/mosquitto.h, tests/support/nats.h), its own temporary
 * directory (the state file the shop processes share, their logs) and a
 * watcher of the discovery topics (`mosquitto_sub`, or a nats.c
 * subscription), so a test can wait until an instance has announced itself
 * or its announcement was cleared (or, on NATS, expired). Every process is
 * started with a fixed --instance, so its topics are known. Every wait is
 * bounded; the per-test teardown kills and reaps every child even when the
 * test failed, and prints their logs then.
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
#include <nats/nats.h>

#include "core/runtime.h" /* loom__remote_has_command: what the probe knows */
#include "support/mosquitto.h"
#include "support/nats.h"
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

/* The NATS servers' extra configuration: the junk test publishes 2 MiB
 * (the default limit is 1 MiB). */
#define NATS_CONF "max_payload: 4MB"
#define NATS_WATCH_MAX 64         /* instances the NATS discovery watcher tracks */
#define NATS_EXPIRY_MARGIN_MS 300 /* after an announcement's ttlMs */
#define NATS_REQUEST_TIMEOUT_MS 5000

static char shop_path[4096];

/* The security kit (secure.sh's output), shared by the suite's tests. */
static char kit[128];
static char tester_pass[64], watcher_pass[64];
static char nats_conf[4096];

/* kit/INSTANCE.yaml in a static buffer. */
static const char *kit_yaml(const char *instance)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s.yaml", kit, instance);
    return path;
}
static char rr_path[256], pub_path[256], sub_path[256];

/* What junk_publish sends: a text, nothing (a zero-length message), or a
 * file's bytes. */
typedef enum junk_kind { JUNK_TEXT, JUNK_EMPTY, JUNK_FILE } junk_kind;

typedef struct junk {
    const char *topic;
    junk_kind kind;
    const char *arg; /* the text, or the file's path */
    bool retain;     /* kept by the broker for later subscribers (MQTT only) */
} junk;

/* The broker a test runs on. The suite is written once against this. */
typedef struct broker_fixture {
    const char *name;
    /* Whether this build's tools are there; prints what is missing. */
    bool (*available)(void);
    /* Starts the broker(s) and the discovery watcher; fails the test. */
    void (*start)(void);
    /* Prints where the broker's logs are (a test failed). */
    void (*describe)(void);
    /* Ends the broker(s): a clean stop that removes their files, or (keep)
     * a SIGKILL that keeps them for a look. */
    void (*stop)(bool keep);
    /* A crash, and a start on the same ports afterwards (NULL: not
     * supported, e.g. for a whole cluster). */
    void (*kill)(void);
    void (*restart)(void);
    /* The URL the shop processes and the test's runtimes connect to. */
    const char *(*url)(void);
    /* 1 when the instance's last discovery message is an announcement
     * still in force, 0 when it was cleared (or expired), -1 when none was
     * seen. */
    int (*announcement_state)(const char *instance);
    /* A plain client of the broker sends a bare JSON payload to a command
     * topic and waits for the answer: the bare JSON (cJSON_Delete it) and
     * its `status`. Fails the test when there is none. */
    cJSON *(*plain_request)(const char *topic, const char *payload, int *status);
    /* A plain client publishes junk on a loom topic; must succeed. */
    void (*junk_publish)(const junk *j);
    /* Crashed instances' announcements are cleared at once by the broker
     * (a Last Will) rather than expiring after missed heartbeats, and
     * retained messages exist. */
    bool retained;
    /* A group's messages go to a random member, not to each in turn. */
    bool random_groups;
    /* How long after the last process announced itself a process may
     * still not know all the others' announcements: 0 where the broker
     * replays the retained ones first. On NATS a process learns the others
     * from their heartbeats, and an instance's second beat comes 2 s after
     * its first (the core skips the beat at 1 s: the instance is not ready
     * itself until 1.2 s), while the core already answers 503 "no
     * receiver" for what it has not heard of yet. So the tests let that
     * time pass before a call crosses processes (settle()). */
    int settle_ms;
} broker_fixture;

/* One instance's latest discovery message, as the NATS watcher saw it. */
typedef struct seen_announcement {
    char instance[64];
    bool cleared;   /* an empty message: a graceful stop */
    int64_t at;     /* t_mono_ms() when it was read */
    int64_t ttl_ms; /* the announcement's ttlMs */
} seen_announcement;

/* One test's deployment. Only the main thread touches it. */
typedef struct layout {
    const broker_fixture *fx;
    t_broker broker;           /* MQTT */
    t_nats nats;               /* NATS, one server */
    t_nats_cluster cluster;    /* NATS, three nodes */
    natsConnection *nc;        /* the test's own NATS client */
    natsSubscription *svc_sub; /* {prefix}.svc.*, polled (never a callback) */
    seen_announcement seen[NATS_WATCH_MAX];
    size_t n_seen;
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
    int emails;         /* makes each test user's email unique */
    int64_t settled_at; /* t_mono_ms() when every process started knows the others */
    bool passed;        /* set last by each test: teardown prints the logs otherwise */
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

/* One request to 127.0.0.1:port; body (may be NULL) is sent as JSON. */
static long http_to(http_res *res, int port, const char *method, const char *path, const char *body)
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

static void settle(void);

/* One request to the bridge. */
static long http(http_res *res, const char *method, const char *path, const char *body)
{
    settle();
    return http_to(res, L.http_port, method, path, body);
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

/* Starts `shop --services SERVICES --instance INSTANCE --broker URL`, with
 * the shared file store (state NULL) or the given one, more flags in extra
 * (NULL-terminated, may be NULL). Returns at once. */
static t_proc *shop_start_on(const char *url, const char *instance, const char *services,
                             const char *state, const char *log_level, const char *const *extra)
{
    const char *args[40] = {
        "--services", services,    "--broker",    url,
        "--instance", instance,    "--state",     state ? state : L.state_url,
        "--workers",  "2",         "--log-level", log_level ? log_level : "info",
        "--set",      CMD_TIMEOUT, "--config",    kit_yaml(instance)};
    size_t n = 16;
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

/* The same on the test's broker. */
static t_proc *shop_start(const char *instance, const char *services, const char *state,
                          const char *log_level, const char *const *extra)
{
    return shop_start_on(L.fx->url(), instance, services, state, log_level, extra);
}

/* Starts the MQTT discovery watcher: one line "TOPIC LENGTH" per message
 * on {prefix}/svc/+ (retained ones included), in the order received. */
static void mqtt_watch_start(void)
{
    char port[16], log[128];
    snprintf(port, sizeof port, "%d", L.broker.port);
    snprintf(log, sizeof log, "%s/watch.log", L.dir);
    L.watch = new_proc();
    t_proc_start(L.watch, "mosquitto_sub", sub_path,
                 (const char *const[]){"-h", "127.0.0.1", "-p", port, "-u", "watcher", "-P",
                                       watcher_pass, "-t", "loom/svc/+", "-F", "%t %l", NULL},
                 L.env, log);
}

/* MQTT: 1 when the last discovery message seen for this instance is an
 * announcement, 0 when it was a clear (an empty message: stop or will),
 * -1 when none was seen. */
static int mqtt_announcement_state(const char *instance)
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
    while (L.fx->announcement_state(instance) != want) {
        for (size_t i = 0; i < L.n_procs; i++)
            if (strcmp(L.procs[i].name, instance) == 0 && want == 1 && !L.down[i] &&
                !t_proc_running(&L.procs[i]))
                fail_msg("%s exited with %d before announcing itself", instance, L.procs[i].status);
        if (t_mono_ms() >= deadline)
            fail_msg("%s: no %s on loom/svc/%s within %d ms (%s)", instance,
                     want ? "announcement" : "clear", instance, timeout_ms, L.fx->name);
        t_sleep_ms(20);
    }
}

/* Waits until the instance is announced; it knows the others'
 * announcements settle_ms later (see broker_fixture). */
static void wait_started(const char *instance)
{
    wait_announcement(instance, 1, START_TIMEOUT_MS);
    int64_t at = t_mono_ms() + L.fx->settle_ms;
    if (at > L.settled_at)
        L.settled_at = at;
}

/* Before a call that crosses processes: waits until every process started
 * so far knows the others (at once on MQTT). */
static void settle(void)
{
    int64_t left = L.settled_at - t_mono_ms();
    if (left > 0)
        t_sleep_ms((int)left);
}

/* Starts the shop's service processes and waits until each is announced.
 * A payments-only process charges without asking orders.get whether the
 * order exists (config.payments.verify_orders=false): these tests send
 * charges for made-up orders to exercise the broker; the check itself is
 * tested across processes by test_plain_client_calls_commands. */
static t_proc *service_start(const char *instance, const char *services, const char *log_level)
{
    static const char *const bare_charge[] = {"--set", "config.payments.verify_orders=false", NULL};
    t_proc *p = shop_start(instance, services, NULL, log_level,
                           strcmp(services, "payments") == 0 ? bare_charge : NULL);
    wait_started(instance);
    return p;
}

/* Starts the bridge process D (`--services none --http 127.0.0.1:PORT`)
 * on the broker at url and waits until /healthz answers. A free port may
 * be taken before the child binds it: then another is tried. */
static void bridge_start_on(const char *url)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        L.http_port = t_free_port();
        char addr[64], name[32];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", L.http_port);
        snprintf(name, sizeof name, attempt ? "bridge-%d" : "bridge", attempt);
        L.bridge = shop_start_on(url, name, "none", "memory:", "info",
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

/* The same on the test's broker. */
static void bridge_start(void)
{
    bridge_start_on(L.fx->url());
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

/* A runtime of the test process on the broker at url, started and
 * ready. */
static loom_runtime *probe_start_on(const char *url, const char *instance,
                                    const loom_service_def *svc, void *user)
{
    if (L.n_rts == MAX_RTS)
        fail_msg("too many runtimes in one test");
    loom_config *cfg = NULL;
    if (loom_config_create(&cfg) != LOOM_OK || loom_config_load_file(cfg, kit_yaml(instance)))
        fail_msg("%s: %s", kit_yaml(instance), cfg ? loom_config_error(cfg) : "out of memory");
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .broker_url = url, .instance_id = instance,
                                 .workers = 2, .default_timeout_ms = CALL_TIMEOUT_MS,
                                 .drain_timeout_ms = 1000, .log_level = LOOM_LOG_ERROR);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    L.rts[L.n_rts++] = rt;
    if (svc)
        assert_int_equal(loom_runtime_add_service(rt, svc, user), LOOM_OK);
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, START_TIMEOUT_MS), LOOM_OK);
    return rt;
}

/* The same on the test's broker. */
static loom_runtime *probe_start(const char *instance, const loom_service_def *svc, void *user)
{
    return probe_start_on(L.fx->url(), instance, svc, user);
}

/* Calls service.command with the payload (JSON text, may be NULL) and the
 * parameter (may be NULL). Returns the response (release it), or NULL when
 * the call itself failed (*err says why). */
static loom_msg *call(loom_runtime *rt, const char *service, const char *command,
                      const char *payload, const char *param, loom_err *err)
{
    loom_call c =
        LOOM_CALL_INIT(.service = service, .version = "1", .command = command,
                       .payload = payload ? t_json(payload) : NULL,
                       .parameter = param ? t_json(param) : NULL, .timeout_ms = CALL_TIMEOUT_MS);
    loom_msg *resp = NULL;
    settle();
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

/* --- brokers: MQTT ----------------------------------------------------------------- */

static bool mqtt_available(void)
{
    if (!find_tool("mosquitto_rr", rr_path, sizeof rr_path) ||
        !find_tool("mosquitto_pub", pub_path, sizeof pub_path) ||
        !find_tool("mosquitto_sub", sub_path, sizeof sub_path)) {
        fprintf(stderr, "test_split: install mosquitto-clients (make deps)\n");
        return false;
    }
    if (!t_broker_binary()) {
        fprintf(stderr, "test_split: install mosquitto (make deps)\n");
        return false;
    }
    return true;
}

static void mqtt_start(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/mosquitto-auth.conf", kit);
    char *auth = t_read_file(path);
    t_broker_start_with(&L.broker, auth);
    free(auth);
    mqtt_watch_start();
}

static void mqtt_describe(void)
{
    fprintf(stderr, "(mosquitto's log: %s/mosquitto.log)\n", L.broker.dir);
}

static void mqtt_stop(bool keep)
{
    if (keep)
        t_broker_kill(&L.broker); /* keeps its directory and log */
    else
        t_broker_stop(&L.broker);
}

static void mqtt_kill(void)
{
    t_broker_kill(&L.broker);
}

static void mqtt_restart(void)
{
    t_broker_restart(&L.broker);
}

static const char *mqtt_url(void)
{
    return t_broker_url(&L.broker);
}

/* Runs mosquitto_rr (MQTT 5) against a command topic with a bare JSON
 * payload; on return *status is the `status` user property of the answer
 * and the result is the bare JSON body (cJSON_Delete it). */
static cJSON *mqtt_plain_request(const char *topic, const char *payload, int *status)
{
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    t_run r;
    t_run_prog(&r, rr_path,
               (const char *const[]){
                   "-V", "5",
                   "-h", "127.0.0.1",
                   "-p", port,
                   "-u", "tester",
                   "-P", tester_pass,
                   "-t", topic,
                   "-e", "loom/reply/tester/rr" /* services may answer under loom/reply/ only */,
                   "-m", payload,
                   "-F", "%P|%p",
                   "-W", "5",
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

/* mosquitto_pub -t TOPIC [-r] -m TEXT | -n | -f FILE; must succeed. */
static void mqtt_junk_publish(const junk *j)
{
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    const char *argv[20] = {"-h",     "127.0.0.1", "-p",        port, "-u",
                            "tester", "-P",        tester_pass, "-t", j->topic};
    size_t n = 10;
    if (j->retain)
        argv[n++] = "-r";
    switch (j->kind) {
    case JUNK_TEXT:
        argv[n++] = "-m";
        argv[n++] = j->arg;
        break;
    case JUNK_EMPTY:
        argv[n++] = "-n";
        break;
    case JUNK_FILE:
        argv[n++] = "-f";
        argv[n++] = j->arg;
        break;
    }
    argv[n] = NULL;
    t_run r;
    t_run_prog(&r, pub_path, argv, L.env, TOOL_TIMEOUT_MS);
    if (r.status != 0)
        fail_msg("mosquitto_pub -t %s exited with %d: %s", j->topic, r.status, t_run_err(&r));
    t_run_free(&r);
}

static const broker_fixture mqtt_fixture = {
    .name = "mqtt",
    .available = mqtt_available,
    .start = mqtt_start,
    .describe = mqtt_describe,
    .stop = mqtt_stop,
    .kill = mqtt_kill,
    .restart = mqtt_restart,
    .url = mqtt_url,
    .announcement_state = mqtt_announcement_state,
    .plain_request = mqtt_plain_request,
    .junk_publish = mqtt_junk_publish,
    .retained = true,
    .random_groups = false,
};

/* --- brokers: NATS ------------------------------------------------------------------ */

/* A loom topic as a NATS subject. The tests' topics have no byte the
 * adapter escapes (see docs/adapters.md), so '/' -> '.' is the whole
 * mapping. */
static void nats_subject(const char *topic, char *out, size_t n)
{
    if (strlen(topic) >= n)
        fail_msg("topic too long: %s", topic);
    for (size_t i = 0;; i++) {
        if (topic[i] && strchr(".*> %", topic[i]))
            fail_msg("nats_subject: '%s' needs escaping", topic);
        out[i] = topic[i] == '/' ? '.' : topic[i];
        if (!topic[i])
            break;
    }
}

static void nats_check(natsStatus s, const char *what)
{
    if (s != NATS_OK)
        fail_msg("nats.c: %s: %s (%s)", what, natsStatus_GetText(s), nats_GetLastError(NULL));
}

/* Connects the test's own NATS client to the servers on ports (it
 * reconnects, forever, to any of them) and subscribes to the discovery
 * subjects. The subscription is synchronous: announcement_state() polls
 * it from the main thread, so no nats.c thread touches the layout. */
static void nats_client_start(const int *ports, size_t n)
{
    char urls[T_NATS_CLUSTER_NODES][64];
    const char *servers[T_NATS_CLUSTER_NODES];
    if (n > T_NATS_CLUSTER_NODES)
        fail_msg("nats_client_start: too many servers");
    for (size_t i = 0; i < n; i++) {
        snprintf(urls[i], sizeof urls[i], "nats://127.0.0.1:%d", ports[i]);
        servers[i] = urls[i];
    }
    natsOptions *o = NULL;
    nats_check(natsOptions_Create(&o), "natsOptions_Create");
    natsStatus s = natsOptions_SetServers(o, servers, (int)n);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, "test-watch");
    if (s == NATS_OK)
        s = natsOptions_SetUserInfo(o, "tester", tester_pass);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 100);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsConnection_Connect(&L.nc, o);
    natsOptions_Destroy(o);
    nats_check(s, "connect the test's client");
    nats_check(natsConnection_SubscribeSync(&L.svc_sub, L.nc, "loom.svc.*"), "subscribe");
    nats_check(natsConnection_Flush(L.nc), "flush");
}

static void nats_client_stop(void)
{
    natsSubscription_Destroy(L.svc_sub);
    natsConnection_Destroy(L.nc);
    L.svc_sub = NULL;
    L.nc = NULL;
}

static bool nats_available(void)
{
    if (!t_nats_binary()) {
        fprintf(stderr, "test_split: install nats-server (make deps)\n");
        return false;
    }
    return true;
}

static void nats_start(void)
{
    t_nats_start_with(&L.nats, nats_conf);
    nats_client_start(&L.nats.port, 1);
}

static void nats_describe(void)
{
    fprintf(stderr, "(nats-server's log: %s/nats.log)\n", L.nats.dir);
}

static void nats_stop(bool keep)
{
    nats_client_stop();
    if (keep)
        t_nats_kill(&L.nats); /* keeps its directory and log */
    else
        t_nats_stop(&L.nats);
}

static void nats_kill(void)
{
    t_nats_kill(&L.nats);
}

static void nats_restart(void)
{
    t_nats_restart(&L.nats);
}

static const char *nats_url(void)
{
    return t_nats_url(&L.nats);
}

/* Reads every discovery message that arrived since the last call. */
static void nats_poll_announcements(void)
{
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, L.svc_sub, 0) == NATS_OK) {
        const char *subject = natsMsg_GetSubject(m);
        const char *instance = subject + strlen("loom.svc.");
        int len = natsMsg_GetDataLength(m);
        seen_announcement *a = NULL;
        for (size_t i = 0; i < L.n_seen && !a; i++)
            if (strcmp(L.seen[i].instance, instance) == 0)
                a = &L.seen[i];
        if (!a && L.n_seen < NATS_WATCH_MAX && strlen(instance) < sizeof a->instance) {
            a = &L.seen[L.n_seen++];
            snprintf(a->instance, sizeof a->instance, "%s", instance);
        }
        if (a) {
            a->cleared = len == 0;
            a->at = t_mono_ms();
            a->ttl_ms = 3000; /* the default: three beats of 1 s */
            cJSON *env = len ? cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)len) : NULL;
            const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(env, "payload"), "ttlMs");
            if (cJSON_IsNumber(ttl) && ttl->valuedouble > 0)
                a->ttl_ms = (int64_t)ttl->valuedouble;
            cJSON_Delete(env);
        }
        natsMsg_Destroy(m);
    }
}

/* NATS: 1 while the instance's announcement is repeated in time, 0 once it
 * was cleared (a graceful stop) or has expired (no beat for its ttlMs: a
 * crash), -1 when none was seen. */
static int nats_announcement_state(const char *instance)
{
    nats_poll_announcements();
    for (size_t i = 0; i < L.n_seen; i++) {
        const seen_announcement *a = &L.seen[i];
        if (strcmp(a->instance, instance) != 0)
            continue;
        if (a->cleared || t_mono_ms() - a->at > a->ttl_ms + NATS_EXPIRY_MARGIN_MS)
            return 0;
        return 1;
    }
    return -1;
}

/* A nats.c request (reply inbox) with the bare JSON payload: the answer's
 * `status` header and bare JSON body. */
static cJSON *nats_plain_request(const char *topic, const char *payload, int *status)
{
    char subject[256];
    nats_subject(topic, subject, sizeof subject);
    natsMsg *req = NULL, *rep = NULL;
    natsStatus s = natsMsg_Create(&req, subject, NULL, payload, (int)strlen(payload));
    if (s == NATS_OK)
        s = natsConnection_RequestMsg(&rep, L.nc, req, NATS_REQUEST_TIMEOUT_MS);
    natsMsg_Destroy(req);
    nats_check(s, "request");
    const char *st = NULL;
    if (natsMsgHeader_Get(rep, "status", &st) != NATS_OK || !st) {
        natsMsg_Destroy(rep);
        fail_msg("the answer on %s has no status header", subject);
    }
    *status = atoi(st);
    char *text = strndup(natsMsg_GetData(rep) ? natsMsg_GetData(rep) : "",
                         (size_t)natsMsg_GetDataLength(rep));
    natsMsg_Destroy(rep);
    if (!text)
        fail_msg("out of memory");
    cJSON *body = cJSON_Parse(text);
    if (!body)
        fail_msg("the answer on %s is not JSON: %s", subject, text);
    free(text);
    return body;
}

/* The whole file (binary) in a t_buf; free(b.data). */
static t_buf read_bytes(const char *path)
{
    t_buf b = {0};
    t_buf_add(&b, "", 0);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot read %s", path);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        t_buf_add(&b, chunk, n);
    fclose(f);
    return b;
}

/* Publishes junk as a plain NATS client (never retained: NATS keeps no
 * messages). */
static void nats_junk_publish(const junk *j)
{
    char subject[256];
    nats_subject(j->topic, subject, sizeof subject);
    t_buf b = {0};
    if (j->kind == JUNK_FILE)
        b = read_bytes(j->arg);
    else if (j->kind == JUNK_TEXT)
        t_buf_add(&b, j->arg, strlen(j->arg));
    else
        t_buf_add(&b, "", 0);
    natsStatus s = natsConnection_Publish(L.nc, subject, b.data, (int)b.len);
    if (s == NATS_OK)
        s = natsConnection_Flush(L.nc);
    free(b.data);
    nats_check(s, "publish junk");
}

static const broker_fixture nats_fixture = {
    .name = "nats",
    .available = nats_available,
    .start = nats_start,
    .describe = nats_describe,
    .stop = nats_stop,
    .kill = nats_kill,
    .restart = nats_restart,
    .url = nats_url,
    .announcement_state = nats_announcement_state,
    .plain_request = nats_plain_request,
    .junk_publish = nats_junk_publish,
    .retained = false,
    .random_groups = true,
    .settle_ms = 2300, /* two beats of broker.heartbeat_ms (1000) and a margin */
};

/* --- brokers: a three-node NATS cluster --------------------------------------------- */

static void cluster_start(void)
{
    t_nats_cluster_start_with(&L.cluster, nats_conf);
    int ports[T_NATS_CLUSTER_NODES];
    for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
        ports[i] = L.cluster.node[i].port;
    nats_client_start(ports, T_NATS_CLUSTER_NODES);
}

static void cluster_describe(void)
{
    for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
        fprintf(stderr, "(nats-server node %d's log: %s/nats.log)\n", i, L.cluster.node[i].dir);
}

static void cluster_stop(bool keep)
{
    nats_client_stop();
    if (keep)
        for (int i = 0; i < T_NATS_CLUSTER_NODES; i++)
            t_nats_kill(&L.cluster.node[i]);
    else
        t_nats_cluster_stop(&L.cluster);
}

static const char *cluster_url(void)
{
    return t_nats_cluster_url(&L.cluster, 0);
}

static const broker_fixture nats_cluster_fixture = {
    .name = "nats cluster",
    .available = nats_available,
    .start = cluster_start,
    .describe = cluster_describe,
    .stop = cluster_stop,
    .url = cluster_url,
    .announcement_state = nats_announcement_state,
    .plain_request = nats_plain_request,
    .junk_publish = nats_junk_publish,
    .retained = false,
    .random_groups = true,
    .settle_ms = 2300,
};

/* --- fixtures ---------------------------------------------------------------------- */

/* test_split_nats.c defines SPLIT_NATS and includes this file. */
#ifdef SPLIT_NATS
#define SPLIT_ON_NATS true
#define SUITE_NAME "test_split_nats"
#else
#define SPLIT_ON_NATS false
#define SUITE_NAME "test_split"
#endif

/* The broker this binary runs the suite on. */
static const broker_fixture *suite_fixture(void)
{
    return SPLIT_ON_NATS ? &nats_fixture : &mqtt_fixture;
}

/* The kit: every instance name the tests start, with its services. */
static int kit_setup(void)
{
    snprintf(kit, sizeof kit, "/tmp/loom-split-kit-XXXXXX");
    if (!mkdtemp(kit))
        return -1;
    const char *args[] = {kit,
                          shop_path,
                          "shop-a:shop-a:users,orders,notifications",
                          "notif-2:shop-a:notifications",
                          "pay-1:payments:payments",
                          "pay-2:payments:payments",
                          "pay-3:payments:payments",
                          "bridge:bridge:-",
                          "bridge-1:bridge:-",
                          "bridge-2:bridge:-",
                          "cli:cli:-",
                          "probe:probe:-",
                          "audit-1:audit:audit",
                          "audit-2:audit:audit",
                          "tester::*",
                          "watcher::*", /* its own user: one client id per user */
                          NULL};
    t_run r;
    t_run_prog(&r, "examples/shop/deploy/secure.sh", args, NULL, 30000);
    int status = r.status;
    if (status != 0)
        fprintf(stderr, SUITE_NAME ": secure.sh failed: %s\n", t_run_err(&r));
    t_run_free(&r);
    char path[256];
    snprintf(path, sizeof path, "%s/tester.password", kit);
    char *pass = t_read_file(path);
    snprintf(tester_pass, sizeof tester_pass, "%.*s", (int)strcspn(pass, "\n"), pass);
    free(pass);
    snprintf(path, sizeof path, "%s/watcher.password", kit);
    pass = t_read_file(path);
    snprintf(watcher_pass, sizeof watcher_pass, "%.*s", (int)strcspn(pass, "\n"), pass);
    free(pass);
    snprintf(path, sizeof path, "%s/nats-auth.conf", kit);
    char *auth = t_read_file(path);
    snprintf(nats_conf, sizeof nats_conf, "%s\n%s", NATS_CONF, auth);
    free(auth);
    return status == 0 && tester_pass[0] ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("LOOM_TEST_BUILD");
    if (!build || !*build)
        build = ".";
    snprintf(shop_path, sizeof shop_path, "%s/examples/shop/shop", build);
    if (access(shop_path, X_OK) != 0) {
        fprintf(stderr, SUITE_NAME ": build the examples first (%s)\n", shop_path);
        return -1;
    }
    if (!suite_fixture()->available())
        return -1;
    if (kit_setup() != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    t_proc_reap_all(5000);
    if (kit[0])
        t_remove_tree(kit);
    curl_global_cleanup();
    if (SPLIT_ON_NATS)
        nats_CloseAndWait(5000); /* nats.c's own threads and memory */
    return 0;
}

/* *state is the test's broker fixture (cmocka's initial state). */
static int setup(void **state)
{
    memset(&L, 0, sizeof L);
    L.fx = *state;
    snprintf(L.dir, sizeof L.dir, "/tmp/loom-split-XXXXXX");
    if (!mkdtemp(L.dir))
        return -1;
    snprintf(L.state_url, sizeof L.state_url, "file:%s/state.json", L.dir);
    char tmpdir[96];
    snprintf(tmpdir, sizeof tmpdir, "TMPDIR=%s", L.dir);
    L.env = t_env_new((const char *const[]){tmpdir, NULL});
    L.fx->start();
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
        L.fx->describe();
        fprintf(stderr, "(kept: %s)\n", L.dir);
    }
    /* SIGTERM to all at once (a graceful stop takes about a second), then
     * SIGKILL what is left. */
    t_proc_reap_all(10000);
    L.fx->stop(!L.passed);
    if (L.passed) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", L.dir);
        if (system(cmd) != 0)
            fprintf(stderr, SUITE_NAME ": cannot remove %s\n", L.dir);
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
    const char *oneshot[] = {"--config",  kit_yaml("cli"), "--services", "none",   "--broker",
                             L.fx->url(), "--state",       "memory:",    "--call", "orders.get",
                             "--param",   param,           NULL};
    t_run r;
    settle();
    t_run_prog(&r, shop_path, oneshot, L.env, 30000);
    if (r.status != 0)
        fail_msg("--call orders.get exited with %d: %s", r.status, t_run_err(&r));
    cJSON *order = parse_json(t_run_out(&r), "the one-shot call's output");
    assert_string_equal(str_at(order, "id"), o.order_id);
    assert_string_equal(str_at(order, "paymentId"), o.payment_id);
    cJSON_Delete(order);
    t_run_free(&r);

    oneshot[9] = "notifications.list"; /* after "--call" */
    oneshot[10] = NULL;
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
        loom_call c = LOOM_CALL_INIT(.service = "payments", .version = "1", .command = "charge",
                                     .payload = t_json(payload), .timeout_ms = CALL_TIMEOUT_MS);
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
 * its Last Will (MQTT), or it expires after three missed heartbeats
 * (NATS), and the flow goes on through the other one. With both gone,
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
    /* Every instance learns of pay-2's end from the same cleared
     * announcement, each on its own schedule (the watcher above is another
     * process): a call made before that goes out to nobody and ends as 504
     * at its deadline. Once the probe knows, 503 at once. */
    int64_t give_up = t_mono_ms() + RECOVER_TIMEOUT_MS;
    while (loom__remote_has_command(probe, "payments", "1", "charge")) {
        if (t_mono_ms() >= give_up)
            fail_msg("the probe still lists payments.charge %d ms after pay-2's end",
                     RECOVER_TIMEOUT_MS);
        t_sleep_ms(10);
    }
    int64_t t0 = t_mono_ms();
    assert_int_equal(charge(probe, "none-left", 1, NULL, 0, NULL, 0), 503);
    assert_true(t_mono_ms() - t0 < CALL_TIMEOUT_MS / 2);
    wait_bridge_routes(SHOP_ROUTES - 1, 5000);
    http_res res = {0};
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}",
             o.user_id);
    /* shop-a, which calls payments for the bridge, is another process: a
     * call it made before it saw the clear ends as 504; once it has, 503. */
    give_up = t_mono_ms() + RECOVER_TIMEOUT_MS;
    do {
        free(res.body.data);
        res = (http_res){0};
        t0 = t_mono_ms();
        http(&res, "POST", "/api/v1/orders", body);
    } while (res.status == 504 && t_mono_ms() < give_up);
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
 * subscription sees every event in each. (mosquitto hands a group's
 * events out in turn, so 8 reach both members; NATS picks members at
 * random, so 24 make "one got none" a one-in-ten-million event.) */
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
    const int N = L.fx->random_groups ? 24 : 8;
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
           t_proc_log_count(a, "notified user") + t_proc_log_count(c, "notified user") <
               (size_t)N) {
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
    if (na + nc != (size_t)N || na == 0 || nc == 0)
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

/* A plain client of the broker calls a command: bare JSON in, the bare
 * result and a `status` out (MQTT 5: mosquitto_rr, a user property; NATS:
 * a request, a header), errors as a bare error body. */
static cJSON *rr(const char *topic, const char *payload, int *status)
{
    settle();
    return L.fx->plain_request(topic, payload, status);
}

static void test_plain_client_calls_commands(void **state)
{
    (void)state;
    shop_start("pay-1", "payments", NULL, NULL, NULL); /* checks orders */
    wait_started("pay-1");
    service_start("shop-a", "users,orders,notifications", NULL);
    int status = 0;
    /* No such order: payments asks orders.get (in the other process) and
     * refuses the charge. */
    cJSON *j = rr("loom/cmd/payments/1/charge", "{\"orderId\":\"o-7\",\"amount\":5}", &status);
    assert_int_equal(status, 422);
    assert_string_equal(str_at(j, "message"), "unknown order");
    cJSON_Delete(j);

    /* Another service, across the processes: orders.create calls users and
     * payments over the broker. */
    j = rr("loom/cmd/users/1/create", "{\"name\":\"Rr\",\"email\":\"rr@example.com\"}", &status);
    assert_int_equal(status, 200);
    char payload[160];
    snprintf(payload, sizeof payload,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"a\",\"quantity\":1}],\"amount\":5}",
             str_at(j, "id"));
    cJSON_Delete(j);
    j = rr("loom/cmd/orders/1/create", payload, &status);
    assert_int_equal(status, 200);
    assert_string_equal(str_at(j, "status"), "paid");
    char order_id[64], charge[160];
    snprintf(order_id, sizeof order_id, "%s", str_at(j, "id"));
    cJSON_Delete(j);

    /* The order's charge again: the same payment (charges are idempotent). */
    snprintf(charge, sizeof charge, "{\"orderId\":\"%s\",\"amount\":5}", order_id);
    j = rr("loom/cmd/payments/1/charge", charge, &status);
    assert_int_equal(status, 200);
    assert_string_equal(str_at(j, "orderId"), order_id);
    assert_string_equal(str_at(j, "status"), "captured");
    assert_non_null(str_at(j, "paymentId"));
    assert_int_equal(int_at(j, "amount"), 5);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "messageType")); /* bare, no envelope */
    cJSON_Delete(j);

    snprintf(charge, sizeof charge, "{\"orderId\":\"%s\",\"amount\":6}", order_id);
    j = rr("loom/cmd/payments/1/charge", charge, &status);
    assert_int_equal(status, 409);
    assert_int_equal(int_at(j, "status"), 409);
    assert_non_null(str_at(j, "message"));
    assert_string_equal(str_at(cJSON_GetObjectItemCaseSensitive(j, "data"), "orderId"), order_id);
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
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* The broker (mosquitto, or the one nats-server) is killed and started
 * again on the same port: every process (and the test's own runtime)
 * reconnects by itself, and the flow works again without restarting any
 * of them. */
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

    L.fx->kill();
    http_res res = {0};
    if (!http_until(&res, 503, "GET", "/readyz", NULL, 10000))
        fail_msg("the bridge still reports ready 10 s after the broker died: %ld %s", res.status,
                 res.body.data);
    /* A call made meanwhile fails (503 or 504) at its deadline instead of
     * hanging. (Kept short: the longer the outage, the longer the
     * reconnect backoff has grown.) */
    loom_call c = LOOM_CALL_INIT(.service = "payments", .version = "1", .command = "charge",
                                 .payload = t_json("{\"orderId\":\"while-down\",\"amount\":1}"),
                                 .timeout_ms = 1000);
    loom_msg *down = NULL;
    int64_t t_call = t_mono_ms();
    assert_int_equal(loom_runtime_call(probe, &c, &down), LOOM_OK);
    int down_status = loom_msg_status(down);
    loom_msg_release(down);
    if (down_status != 503 && down_status != 504)
        fail_msg("a charge while the broker is down answered %d", down_status);
    assert_true(t_mono_ms() - t_call < 3000);
    L.fx->restart();

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
    const junk msgs[] = {
        {cmd, JUNK_TEXT, "junk{{"},
        /* bare JSON without a response topic (MQTT 3.1.1 has none; a NATS
         * publish without a reply subject) */
        {cmd, JUNK_TEXT, "{\"orderId\":\"g-1\",\"amount\":1}"},
        {cmd, JUNK_EMPTY},
        {cmd, JUNK_TEXT, cmd_env},
        {cmd, JUNK_FILE, noise},
        {cmd, JUNK_FILE, deep},
        {"loom/cmd/orders/1/create", JUNK_TEXT, "{\"messageType\":\"command\",\"id\":\"zz\"}"},
        {"loom/reply/bridge", JUNK_TEXT, "junk"},
        {"loom/reply/bridge", JUNK_TEXT, reply_env},
        {"loom/reply/shop-a", JUNK_TEXT, "[1,2,3]"},
        {"loom/reply/probe", JUNK_FILE, noise},
        {"loom/reply/probe", JUNK_TEXT, reply_env},
        {"loom/evt/orderCreated/x/1", JUNK_TEXT, "junk"},
        {"loom/evt/orderCreated/x/1", JUNK_TEXT, "{\"id\":5}"},
        {"loom/evt/orderCreated/orders/1", JUNK_TEXT, event_env},
        {"loom/evt/orderCreated/x/1", JUNK_FILE, deep},
        {"loom/svc/x", JUNK_TEXT, "junk"},
        /* retained (MQTT): later processes get it too */
        {"loom/svc/y", JUNK_TEXT, "junk", .retain = L.fx->retained},
        {"loom/svc/z", JUNK_TEXT, announce, .retain = L.fx->retained},
        {"loom/svc/big", JUNK_FILE, noise},
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        L.fx->junk_publish(&msgs[i]);
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

    /* A process that starts now (on MQTT: and reads the retained junk)
     * serves. */
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

/* --- NATS only: a three-node cluster --------------------------------------------- */

/* The cluster node (0-based) that has a client connection named `name` (a
 * loom process names its connection after its instance id), -1 when no
 * running node has one. */
static int node_of(const char *name)
{
    int found = -1;
    http_res res = {0};
    for (int i = 0; i < T_NATS_CLUSTER_NODES && found < 0; i++) {
        const t_nats *n = &L.cluster.node[i];
        if (n->pid <= 0 || http_to(&res, n->http_port, "GET", "/connz?limit=1024", NULL) != 200)
            continue;
        cJSON *j = parse_json(res.body.data, "/connz");
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "connections"))
        {
            const char *cn = str_at(c, "name");
            if (cn && strcmp(cn, name) == 0)
                found = i;
        }
        cJSON_Delete(j);
    }
    free(res.body.data);
    return found;
}

/* Waits (bounded) until `name` is connected to a node other than `dead`. */
static void wait_connected_elsewhere(const char *name, int dead, int64_t deadline)
{
    int node;
    while ((node = node_of(name)) < 0 || node == dead) {
        if (t_mono_ms() >= deadline)
            fail_msg("%s is not connected to another node within %d ms of node %d's death", name,
                     RECOVER_TIMEOUT_MS, dead);
        t_sleep_ms(50);
    }
}

/* Charges through rt until the instance `who` served one (bounded). */
static void expect_serves(loom_runtime *rt, const char *who, const char *tag)
{
    for (int i = 0; i < 40; i++) {
        char order[48], inst[64];
        snprintf(order, sizeof order, "%s-%d", tag, i);
        int status = charge(rt, order, 1, inst, sizeof inst, NULL, 0);
        if (status != 200)
            fail_msg("charge %s answered %d", order, status);
        if (strcmp(inst, who) == 0)
            return;
    }
    fail_msg("%s served none of 40 charges", who);
}

/* The split shop on a three-node NATS cluster, its processes connected to
 * different nodes:
 *
 *   shop-a   --broker nats://N0       node 0 (one server given: it learns
 *   pay-1    --broker nats://N1       node 1  the others from the cluster)
 *   bridge   --broker nats://N1,N0    node 1 or 0 (nats.c picks from a list
 *   pay-2    --broker nats://N2,N0    node 2 or 0  at random)
 *   the test's runtime  nats://N2     node 2
 *
 * Commands, replies, events and discovery cross the routes between the
 * nodes. Node 1 is killed with charges in flight: each of them ends
 * (answered, or 503/504 at its deadline), the processes that were on node
 * 1 fail over to the surviving nodes by themselves, and the flow goes on
 * through the same processes. */
static void test_nats_cluster_failover(void **state)
{
    (void)state;
    const t_nats_cluster *c = &L.cluster;
    char n0[64], n1[64], n2[64], n1n0[96], n2n0[96];
    snprintf(n0, sizeof n0, "nats://127.0.0.1:%d", c->node[0].port);
    snprintf(n1, sizeof n1, "nats://127.0.0.1:%d", c->node[1].port);
    snprintf(n2, sizeof n2, "nats://127.0.0.1:%d", c->node[2].port);
    snprintf(n1n0, sizeof n1n0, "nats://127.0.0.1:%d,127.0.0.1:%d", c->node[1].port,
             c->node[0].port);
    snprintf(n2n0, sizeof n2n0, "nats://127.0.0.1:%d,127.0.0.1:%d", c->node[2].port,
             c->node[0].port);

    t_proc *a = shop_start_on(n0, "shop-a", "users,orders,notifications", NULL, NULL, NULL);
    static const char *const bare_charge[] = {"--set", "config.payments.verify_orders=false",
                                              NULL}; /* see service_start */
    t_proc *pay[2] = {shop_start_on(n1, "pay-1", "payments", NULL, NULL, bare_charge),
                      shop_start_on(n2n0, "pay-2", "payments", NULL, NULL, bare_charge)};
    wait_started("shop-a");
    wait_started("pay-1");
    wait_started("pay-2");
    bridge_start_on(n1n0);
    wait_bridge_routes(SHOP_ROUTES, START_TIMEOUT_MS);
    loom_runtime *probe = probe_start_on(n2, "probe", NULL, NULL);

    static const struct {
        const char *name;
        int node, or_node;
    } placement[] = {
        {"shop-a", 0, 0}, {"pay-1", 1, 1}, {"bridge", 1, 0}, {"pay-2", 2, 0}, {"probe", 2, 2}};
    bool on_node1[sizeof placement / sizeof placement[0]];
    for (size_t i = 0; i < sizeof placement / sizeof placement[0]; i++) {
        int node = node_of(placement[i].name);
        if (node != placement[i].node && node != placement[i].or_node)
            fail_msg("%s is connected to node %d, expected %d or %d", placement[i].name, node,
                     placement[i].node, placement[i].or_node);
        on_node1[i] = node == 1;
    }

    /* The flow across the nodes: the bridge (node 1) -> orders (node 0) ->
     * payments (node 1 or 2); orderCreated -> notifications. */
    placed o;
    http_order_flow(&o);
    expect_captured_by_one(&o, pay, 2, a);
    expect_serves(probe, "pay-1", "before-1");
    expect_serves(probe, "pay-2", "before-2");

    /* Node 1 dies with charges in flight. */
    enum { K = 20 };
    _Atomic(loom_msg *) resp[K];
    for (int i = 0; i < K; i++) {
        char payload[96];
        snprintf(payload, sizeof payload, "{\"orderId\":\"inflight-%d\",\"amount\":3}", i);
        loom_call call_def =
            LOOM_CALL_INIT(.service = "payments", .version = "1", .command = "charge",
                           .payload = t_json(payload), .timeout_ms = CALL_TIMEOUT_MS);
        atomic_init(&resp[i], NULL);
        assert_int_equal(loom_runtime_invoke(probe, &call_def, keep_response, &resp[i]), LOOM_OK);
    }
    pid_t pids[4] = {a->pid, pay[0]->pid, pay[1]->pid, L.bridge->pid};
    int64_t t_kill = t_mono_ms();
    t_nats_cluster_kill(&L.cluster, 1);
    int ok = 0;
    for (int i = 0; i < K; i++) {
        loom_msg *m;
        while (!(m = atomic_load(&resp[i]))) {
            if (t_mono_ms() - t_kill > 2 * CALL_TIMEOUT_MS)
                fail_msg("charge inflight-%d got no answer within %d ms of node 1's death", i,
                         2 * CALL_TIMEOUT_MS);
            t_sleep_ms(5);
        }
        int status = loom_msg_status(m);
        loom_msg_release(m);
        if (status != 200 && status != 503 && status != 504)
            fail_msg("charge inflight-%d answered %d", i, status);
        ok += status == 200;
    }

    /* Whoever was on node 1 connects to another node by itself: pay-1 to
     * one it learnt from the cluster, the bridge (if there) to node 0. */
    int64_t deadline = t_kill + RECOVER_TIMEOUT_MS;
    t_proc *procs[] = {a, pay[0], L.bridge, pay[1], NULL}; /* as in placement */
    for (size_t i = 0; i < sizeof placement / sizeof placement[0]; i++) {
        if (!on_node1[i] || !procs[i])
            continue;
        wait_connected_elsewhere(placement[i].name, 1, deadline);
        while (t_proc_log_count(procs[i], "broker connected") < 2) {
            if (t_mono_ms() >= deadline)
                fail_msg("%s did not log a new connection within %d ms", procs[i]->name,
                         RECOVER_TIMEOUT_MS);
            t_sleep_ms(20);
        }
    }
    wait_bridge_routes(SHOP_ROUTES, (int)(deadline - t_mono_ms()));
    http_res res = {0};
    char body[256];
    snprintf(body, sizeof body,
             "{\"userId\":\"%s\",\"items\":[{\"sku\":\"x\",\"quantity\":1}],\"amount\":1}",
             o.user_id);
    if (!http_until(&res, 200, "POST", "/api/v1/orders", body, (int)(deadline - t_mono_ms())))
        fail_msg("no order went through within %d ms of node 1's death: %ld %s", RECOVER_TIMEOUT_MS,
                 res.status, res.body.data);
    free(res.body.data);
    placed o2;
    http_order_flow(&o2);
    expect_captured_by_one(&o2, pay, 2, a);
    expect_serves(probe, "pay-1", "after-1");
    expect_serves(probe, "pay-2", "after-2");

    /* Nothing ran twice (a duplicated subscription after the failover
     * would answer "already charged"), and nobody was restarted. */
    assert_int_equal(t_proc_log_count(pay[0], "already charged"), 0);
    assert_int_equal(t_proc_log_count(pay[1], "already charged"), 0);
    pid_t now[4] = {a->pid, pay[0]->pid, pay[1]->pid, L.bridge->pid};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(now[i], pids[i]);
    if (getenv("T_VERBOSE"))
        fprintf(stderr, "%d of %d in-flight charges answered 200\n", ok, K);
    expect_all_running();
    stop_all_cleanly();
    L.passed = true;
}

/* The suite: every test runs on the broker this binary was built for. */
#define T(fn, fx) cmocka_unit_test_prestate_setup_teardown(fn, setup, teardown, (void *)(fx))

int main(void)
{
    const char *filter = getenv("T_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const broker_fixture *fx = suite_fixture();
    const struct CMUnitTest tests[] = {
        T(test_order_flow_bridge_started_first, fx),
        T(test_order_flow_services_started_first, fx),
        T(test_two_payments_instances_share_the_load, fx),
        T(test_sigkill_one_payments_instance, fx),
        T(test_group_and_every_instance_subscriptions, fx),
        T(test_plain_client_calls_commands, fx),
        T(test_broker_restart, fx),
        T(test_garbage_on_loom_topics, fx),
        /* NATS only (the last entry): */
        T(test_nats_cluster_failover, &nats_cluster_fixture),
    };
    size_t n = sizeof tests / sizeof tests[0] - (SPLIT_ON_NATS ? 0 : 1);
    return _cmocka_run_group_tests(SUITE_NAME, tests, n, group_setup, group_teardown);
}
