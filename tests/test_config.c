/* Deployment configuration: YAML file, environment, dotted-key sets. */
#define _GNU_SOURCE
#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "support/support.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static loom_config *mk(void)
{
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_non_null(cfg);
    return cfg;
}

static loom_err ld(loom_config *cfg, const char *yaml)
{
    return loom_config_load_string(cfg, yaml, strlen(yaml), "shop.yaml");
}

/* Writes len bytes into a new temporary file; returns its malloc'd path. */
static char *temp_file(const char *data, size_t len)
{
    const char *dir = getenv("TMPDIR");
    char *path = NULL;
    assert_true(asprintf(&path, "%s/loom-test-config-XXXXXX", dir && *dir ? dir : "/tmp") > 0);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        assert_true(w > 0);
        off += (size_t)w;
    }
    assert_int_equal(close(fd), 0);
    return path;
}

static void rm_temp(char *path)
{
    unlink(path);
    free(path);
}

/* Loading yaml into a fresh config fails with code and exactly msg, and
 * leaves the config empty. */
static void expect_load_error(const char *yaml, loom_err code, const char *msg)
{
    loom_config *cfg = mk();
    loom_err e = ld(cfg, yaml);
    if (e != code || strcmp(loom_config_error(cfg), msg) != 0)
        fail_msg("YAML:\n%s\nwant %d \"%s\"\ngot  %d \"%s\"", yaml, code, msg, e,
                 loom_config_error(cfg));
    assert_null(loom_config_tree(cfg)->child);
    loom_config_destroy(cfg);
}

/* Setting key to value on a fresh config fails with code and exactly msg. */
static void expect_set_error(const char *key, const char *value, loom_err code, const char *msg)
{
    loom_config *cfg = mk();
    loom_err e = loom_config_set(cfg, key, value);
    if (e != code || strcmp(loom_config_error(cfg), msg) != 0)
        fail_msg("set %s=%s: want %d \"%s\", got %d \"%s\"", key, value, code, msg, e,
                 loom_config_error(cfg));
    assert_null(loom_config_tree(cfg)->child);
    loom_config_destroy(cfg);
}

static void expect_set_ok(loom_config *cfg, const char *key, const char *value)
{
    loom_err e = loom_config_set(cfg, key, value);
    if (e != LOOM_OK)
        fail_msg("set %s=%s: %d %s", key, value, e, loom_config_error(cfg));
    assert_string_equal(loom_config_error(cfg), "");
}

static void expect_json(const loom_config *cfg, const char *key, const char *json)
{
    const cJSON *v = loom_config_get(cfg, key);
    if (!v || !t_json_eq(v, json)) {
        char *got = v ? cJSON_PrintUnformatted(v) : NULL;
        fail_msg("%s: want %s, got %s", key, json, got ? got : "(unset)");
    }
}

static void expect_int(const loom_config *cfg, const char *key, long long want)
{
    const cJSON *v = loom_config_get(cfg, key);
    if (!cJSON_IsNumber(v))
        fail_msg("%s: not a number", key);
    assert_true(v->valuedouble == (double)want);
    assert_int_equal(loom__config_int(cfg, key, -1), want);
}

static void expect_str(const loom_config *cfg, const char *key, const char *want)
{
    const cJSON *v = loom_config_get(cfg, key);
    if (!cJSON_IsString(v))
        fail_msg("%s: not a string", key);
    assert_string_equal(v->valuestring, want);
    assert_string_equal(loom__config_str(cfg, key, "default"), want);
}

static const char *const env_vars[] = {
    "LOOM_INSTANCE", "LOOM_SERVICES",        "LOOM_BROKER",          "LOOM_HTTP",
    "LOOM_WORKERS",  "LOOM_LOG_LEVEL",       "LOOM_LOG_FORMAT",      "LOOM_STATE",
    "LOOM_PREFIX",   "LOOM_BROKER_USERNAME", "LOOM_BROKER_PASSWORD", "LOOM_HTTP_TOKENS",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
}

/* ------------------------------------------------------------------------ */
/* A full, valid file                                                        */

static const char full_yaml[] = "# every key loom knows\n"
                                "instance: shop-1\n"
                                "services: [orders, payments]\n"
                                "workers: 8\n"
                                "log:\n"
                                "  level: debug\n"
                                "  format: json\n"
                                "timeouts:\n"
                                "  default_ms: 30000\n"
                                "  drain_ms: 0\n"
                                "limits:\n"
                                "  queue: 1000\n"
                                "  max_message: 1048576\n"
                                "  concurrency:\n"
                                "    orders.create: 4\n"
                                "    charge: 1\n"
                                "broker:\n"
                                "  url: mqtt://127.0.0.1:1883\n"
                                "  prefix: acme/loom\n"
                                "  client_id: shop-client\n"
                                "  username: shop\n"
                                "  password: 's3cret'\n"
                                "  password_file: /run/secrets/broker\n"
                                "  keepalive: 30\n"
                                "  session_expiry: 4294967295\n"
                                "  connect_timeout_ms: 5000\n"
                                "  reconnect_min_ms: 100\n"
                                "  reconnect_max_ms: 30000\n"
                                "  buffer: 0\n"
                                "  qos:\n"
                                "    command: 1\n"
                                "    reply: 0\n"
                                "    event: 2\n"
                                "    discovery: 1\n"
                                "  tls:\n"
                                "    ca: /etc/ssl/ca.pem\n"
                                "    cert: /etc/ssl/cert.pem\n"
                                "    key: /etc/ssl/key.pem\n"
                                "    verify: false\n"
                                "state:\n"
                                "  url: redis://127.0.0.1:6379\n"
                                "  prefix: shop\n"
                                "  password: hunter2\n"
                                "  timeout_ms: 2000\n"
                                "http:\n"
                                "  listen: 0.0.0.0:8080\n"
                                "  base: /api\n"
                                "  threads: 4\n"
                                "  max_body: 1073741824\n"
                                "  max_header: 8192\n"
                                "  max_connections: 1000\n"
                                "  idle_timeout_s: 60\n"
                                "  request_timeout_ms: 30000\n"
                                "  auth:\n"
                                "    tokens:\n"
                                "      - tok-a\n"
                                "      - tok-b\n"
                                "    tokens_file: /run/secrets/tokens\n"
                                "    tokens_env: SHOP_TOKENS\n"
                                "    api_key_header: X-Api-Key\n"
                                "  cors:\n"
                                "    origins: https://a.example, https://b.example\n"
                                "    headers: [content-type]\n"
                                "    max_age: 600\n"
                                "config:\n"
                                "  payments:\n"
                                "    currency: EUR\n"
                                "    fee: 1.5\n"
                                "    retries: [1, 2, 3]\n"
                                "    live: true\n"
                                "    note: ~\n"
                                "    id: '42'\n"
                                "    db: {host: localhost, port: 5432}\n";

static void test_full_file(void **state)
{
    (void)state;
    char *path = temp_file(full_yaml, strlen(full_yaml));
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_OK);
    assert_string_equal(loom_config_error(cfg), "");

    expect_str(cfg, "instance", "shop-1");
    expect_json(cfg, "services", "[\"orders\",\"payments\"]");
    expect_int(cfg, "workers", 8);
    expect_str(cfg, "log.level", "debug");
    expect_str(cfg, "log.format", "json");
    expect_int(cfg, "timeouts.default_ms", 30000);
    expect_int(cfg, "timeouts.drain_ms", 0);
    expect_int(cfg, "limits.queue", 1000);
    expect_int(cfg, "limits.max_message", 1048576);
    expect_json(cfg, "limits.concurrency", "{\"orders.create\":4,\"charge\":1}");
    expect_int(cfg, "limits.concurrency.orders.create", 4);
    expect_int(cfg, "limits.concurrency.charge", 1);
    expect_str(cfg, "broker.url", "mqtt://127.0.0.1:1883");
    expect_str(cfg, "broker.prefix", "acme/loom");
    expect_str(cfg, "broker.client_id", "shop-client");
    expect_str(cfg, "broker.username", "shop");
    expect_str(cfg, "broker.password", "s3cret");
    expect_str(cfg, "broker.password_file", "/run/secrets/broker");
    expect_int(cfg, "broker.keepalive", 30);
    expect_int(cfg, "broker.session_expiry", 4294967295LL);
    expect_int(cfg, "broker.connect_timeout_ms", 5000);
    expect_int(cfg, "broker.reconnect_min_ms", 100);
    expect_int(cfg, "broker.reconnect_max_ms", 30000);
    expect_int(cfg, "broker.buffer", 0);
    expect_int(cfg, "broker.qos.command", 1);
    expect_int(cfg, "broker.qos.reply", 0);
    expect_int(cfg, "broker.qos.event", 2);
    expect_int(cfg, "broker.qos.discovery", 1);
    expect_str(cfg, "broker.tls.ca", "/etc/ssl/ca.pem");
    expect_str(cfg, "broker.tls.cert", "/etc/ssl/cert.pem");
    expect_str(cfg, "broker.tls.key", "/etc/ssl/key.pem");
    assert_true(cJSON_IsFalse(loom_config_get(cfg, "broker.tls.verify")));
    assert_false(loom__config_bool(cfg, "broker.tls.verify", true));
    expect_str(cfg, "state.url", "redis://127.0.0.1:6379");
    expect_str(cfg, "state.prefix", "shop");
    expect_str(cfg, "state.password", "hunter2");
    expect_int(cfg, "state.timeout_ms", 2000);
    expect_str(cfg, "http.listen", "0.0.0.0:8080");
    expect_str(cfg, "http.base", "/api");
    expect_int(cfg, "http.threads", 4);
    expect_int(cfg, "http.max_body", 1073741824);
    expect_int(cfg, "http.max_header", 8192);
    expect_int(cfg, "http.max_connections", 1000);
    expect_int(cfg, "http.idle_timeout_s", 60);
    expect_int(cfg, "http.request_timeout_ms", 30000);
    expect_json(cfg, "http.auth.tokens", "[\"tok-a\",\"tok-b\"]");
    expect_str(cfg, "http.auth.tokens_file", "/run/secrets/tokens");
    expect_str(cfg, "http.auth.tokens_env", "SHOP_TOKENS");
    expect_str(cfg, "http.auth.api_key_header", "X-Api-Key");
    expect_json(cfg, "http.cors.origins", "[\"https://a.example\",\"https://b.example\"]");
    expect_json(cfg, "http.cors.headers", "[\"content-type\"]");
    expect_int(cfg, "http.cors.max_age", 600);
    expect_json(cfg, "config.payments",
                "{\"currency\":\"EUR\",\"fee\":1.5,\"retries\":[1,2,3],\"live\":true,"
                "\"note\":null,\"id\":\"42\",\"db\":{\"host\":\"localhost\",\"port\":5432}}");
    expect_json(cfg, "config.payments.db.port", "5432");

    /* Sections are objects in the tree; nothing else was added. */
    const cJSON *tree = loom_config_tree(cfg);
    assert_int_equal(cJSON_GetArraySize(tree), 10);
    assert_true(cJSON_IsObject(loom_config_get(cfg, "broker.qos")));

    loom_config_destroy(cfg);
    rm_temp(path);
}

static void test_empty_inputs(void **state)
{
    (void)state;
    static const char *const empties[] = {
        "",          "# only a comment\n\n", "---\n", "---\n...\n", "~\n", "{}\n",
        "broker:\n", "broker: {}\n"};
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        loom_config *cfg = mk();
        assert_int_equal(ld(cfg, empties[i]), LOOM_OK);
        assert_string_equal(loom_config_error(cfg), "");
        assert_null(loom_config_tree(cfg)->child);
        loom_config_destroy(cfg);
    }
    /* An empty file on disk. */
    char *path = temp_file("", 0);
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_OK);
    assert_null(loom_config_tree(cfg)->child);
    assert_null(loom_config_get(cfg, "workers"));
    loom_config_destroy(cfg);
    rm_temp(path);
}

static void test_missing_file_and_directory(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_file(cfg, "/nonexistent/dir/shop.yaml"), LOOM_EIO);
    assert_string_equal(loom_config_error(cfg),
                        "/nonexistent/dir/shop.yaml: cannot open: No such file or directory");
    assert_int_equal(loom_config_load_file(cfg, "/"), LOOM_EIO);
    assert_string_equal(loom_config_error(cfg), "/: cannot read: Is a directory");
    assert_null(loom_config_tree(cfg)->child);
    loom_config_destroy(cfg);
}

static void test_file_size_limit(void **state)
{
    (void)state;
    size_t limit = 1024 * 1024;
    char *big = malloc(limit + 1);
    assert_non_null(big);
    /* Exactly 1 MiB: comment lines, then one key. */
    memset(big, '#', limit);
    for (size_t i = 79; i < limit; i += 80)
        big[i] = '\n';
    memcpy(big + limit - 12, "\nworkers: 3\n", 12);
    char *path = temp_file(big, limit);
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_OK);
    expect_int(cfg, "workers", 3);
    rm_temp(path);

    /* One byte more. */
    big[limit] = '\n';
    path = temp_file(big, limit + 1);
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_ETOOBIG);
    char want[512];
    snprintf(want, sizeof want, "%s: larger than the 1 MiB limit for configuration", path);
    assert_string_equal(loom_config_error(cfg), want);
    expect_int(cfg, "workers", 3);
    rm_temp(path);

    assert_int_equal(loom_config_load_string(cfg, big, limit + 1, "big.yaml"), LOOM_ETOOBIG);
    assert_string_equal(loom_config_error(cfg),
                        "big.yaml: larger than the 1 MiB limit for configuration");
    loom_config_destroy(cfg);
    free(big);
}

/* ------------------------------------------------------------------------ */
/* Type and range errors in a file                                           */

static void test_file_type_errors(void **state)
{
    (void)state;
    /* str */
    expect_load_error("broker:\n  url: [a]\n", LOOM_ECONFIG,
                      "shop.yaml:2: broker.url: expected a string, got a list");
    expect_load_error("broker:\n  url:\n    x: 1\n", LOOM_ECONFIG,
                      "shop.yaml:3: broker.url: expected a string, got a mapping");
    /* int */
    expect_load_error("broker:\n  qos:\n    reply: 0\n\n    command: high\n", LOOM_ECONFIG,
                      "shop.yaml:5: broker.qos.command: expected an integer from 0 to 2, got "
                      "\"high\"");
    expect_load_error("workers: 1.5\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got \"1.5\"");
    expect_load_error("workers: ' 4'\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got \" 4\"");
    expect_load_error("workers: [1]\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got a list");
    expect_load_error("workers: {a: 1}\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got a mapping");
    /* bool */
    expect_load_error("broker:\n  tls:\n    verify: maybe\n", LOOM_ECONFIG,
                      "shop.yaml:3: broker.tls.verify: expected true or false, got \"maybe\"");
    expect_load_error("broker:\n  tls:\n    verify: [true]\n", LOOM_ECONFIG,
                      "shop.yaml:3: broker.tls.verify: expected true or false, got a list");
    /* enum */
    expect_load_error("log:\n  level: loud\n", LOOM_ECONFIG,
                      "shop.yaml:2: log.level: expected one of trace, debug, info, warn, error, "
                      "off, got \"loud\"");
    expect_load_error("log:\n  format: {a: 1}\n", LOOM_ECONFIG,
                      "shop.yaml:2: log.format: expected one of text, json, got a mapping");
    /* list */
    expect_load_error("services:\n  a: 1\n", LOOM_ECONFIG,
                      "shop.yaml:2: services: expected a list of strings or a comma-separated "
                      "string, got a mapping");
    expect_load_error("services:\n  - a\n  - [b]\n", LOOM_ECONFIG,
                      "shop.yaml:3: services: list items must be strings, got a list");
    expect_load_error("services:\n  - a\n  - {b: 1}\n", LOOM_ECONFIG,
                      "shop.yaml:3: services: list items must be strings, got a mapping");
    expect_load_error("services:\n  - a\n  -\n", LOOM_ECONFIG,
                      "shop.yaml:3: services: empty list item");
    expect_load_error("services: a,,b\n", LOOM_ECONFIG,
                      "shop.yaml:1: services: empty item in comma-separated list");
    expect_load_error("services: 'a,'\n", LOOM_ECONFIG,
                      "shop.yaml:1: services: empty item in comma-separated list");
    /* map */
    expect_load_error("config: payments\n", LOOM_ECONFIG,
                      "shop.yaml:1: config: expected a mapping, got \"payments\"");
    expect_load_error("config: [a]\n", LOOM_ECONFIG,
                      "shop.yaml:1: config: expected a mapping, got a list");
    /* section */
    expect_load_error("broker: mqtt://x\n", LOOM_ECONFIG,
                      "shop.yaml:1: broker: is a section: expected a mapping of its keys, got "
                      "\"mqtt://x\"");
    expect_load_error("broker:\n  qos: [1]\n", LOOM_ECONFIG,
                      "shop.yaml:2: broker.qos: is a section: expected a mapping of its keys, "
                      "got a list");
    /* the top level */
    expect_load_error("- a\n- b\n", LOOM_ECONFIG,
                      "shop.yaml:1: the top level must be a mapping of keys");
    expect_load_error("hello\n", LOOM_ECONFIG,
                      "shop.yaml:1: the top level must be a mapping of keys");
    /* limits.concurrency values */
    expect_load_error("limits:\n  concurrency:\n    a: 2\n    b: x\n", LOOM_ECONFIG,
                      "shop.yaml:4: limits.concurrency.b: expected an integer from 1 to "
                      "2147483647, got \"x\"");
    expect_load_error("limits:\n  concurrency:\n    a: 0\n", LOOM_ECONFIG,
                      "shop.yaml:3: limits.concurrency.a: expected an integer from 1 to "
                      "2147483647, got 0");
    expect_load_error("limits:\n  concurrency:\n    a: 1.5\n", LOOM_ECONFIG,
                      "shop.yaml:3: limits.concurrency.a: expected an integer from 1 to "
                      "2147483647, got 1.5");
    expect_load_error("limits:\n  concurrency:\n    a: {b: 1}\n", LOOM_ECONFIG,
                      "shop.yaml:3: limits.concurrency.a: expected an integer from 1 to "
                      "2147483647, got a mapping");
}

static void test_file_values_accepted(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "services: all\n"
                             "workers: '12'\n"
                             "log: {level: WARN, format: Text}\n"
                             "broker:\n"
                             "  tls: {verify: yes}\n"
                             "  password: 12345\n"
                             "  prefix: \"loom\"\n"
                             "http:\n"
                             "  base: ''\n"
                             "  auth:\n"
                             "    tokens: ''\n"
                             "  cors:\n"
                             "    origins: ' a , b '\n"),
                     LOOM_OK);
    expect_json(cfg, "services", "[\"all\"]");
    expect_int(cfg, "workers", 12);
    expect_str(cfg, "log.level", "warn");
    expect_str(cfg, "log.format", "text");
    assert_true(loom__config_bool(cfg, "broker.tls.verify", false));
    expect_str(cfg, "broker.password", "12345");
    expect_str(cfg, "broker.prefix", "loom");
    expect_str(cfg, "http.base", "");
    expect_json(cfg, "http.auth.tokens", "[]");
    expect_json(cfg, "http.cors.origins", "[\"a\",\"b\"]");
    assert_int_equal(ld(cfg, "services: none\nbroker: {tls: {verify: off}}\n"), LOOM_OK);
    expect_json(cfg, "services", "[\"none\"]");
    assert_false(loom__config_bool(cfg, "broker.tls.verify", true));
    loom_config_destroy(cfg);
}

/* Every int key: min and max pass, one beyond each fails with the range. */
static void test_int_ranges(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        long long min, max;
    } ints[] = {
        {"workers", 1, 1024},
        {"timeouts.default_ms", 1, 86400000},
        {"timeouts.drain_ms", 0, 3600000},
        {"limits.queue", 1, 10000000},
        {"limits.max_message", 1024, 268435456},
        {"broker.keepalive", 1, 65535},
        {"broker.session_expiry", 0, 4294967295LL},
        {"broker.connect_timeout_ms", 1, 600000},
        {"broker.reconnect_min_ms", 1, 600000},
        {"broker.reconnect_max_ms", 1, 3600000},
        {"broker.buffer", 0, 10000000},
        {"broker.qos.command", 0, 2},
        {"broker.qos.reply", 0, 2},
        {"broker.qos.event", 0, 2},
        {"broker.qos.discovery", 0, 2},
        {"state.timeout_ms", 1, 600000},
        {"http.threads", 1, 1024},
        {"http.max_body", 0, 1073741824},
        {"http.max_header", 256, 1048576},
        {"http.max_connections", 1, 1000000},
        {"http.idle_timeout_s", 1, 86400},
        {"http.request_timeout_ms", 1, 86400000},
        {"http.cors.max_age", 0, 86400},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        loom_config *cfg = mk();
        char v[32], want[256];
        snprintf(v, sizeof v, "%lld", ints[i].min);
        expect_set_ok(cfg, ints[i].key, v);
        expect_int(cfg, ints[i].key, ints[i].min);
        snprintf(v, sizeof v, "%lld", ints[i].max);
        expect_set_ok(cfg, ints[i].key, v);
        expect_int(cfg, ints[i].key, ints[i].max);
        loom_config_destroy(cfg);

        snprintf(v, sizeof v, "%lld", ints[i].min - 1);
        snprintf(want, sizeof want, "%s: expected an integer from %lld to %lld, got \"%s\"",
                 ints[i].key, ints[i].min, ints[i].max, v);
        expect_set_error(ints[i].key, v, LOOM_ECONFIG, want);
        snprintf(v, sizeof v, "%lld", ints[i].max + 1);
        snprintf(want, sizeof want, "%s: expected an integer from %lld to %lld, got \"%s\"",
                 ints[i].key, ints[i].min, ints[i].max, v);
        expect_set_error(ints[i].key, v, LOOM_ECONFIG, want);
    }
    /* The same bounds through a file, with the line. */
    expect_load_error("workers: 0\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got \"0\"");
    expect_load_error("limits:\n  max_message: 1023\n", LOOM_ECONFIG,
                      "shop.yaml:2: limits.max_message: expected an integer from 1024 to "
                      "268435456, got \"1023\"");
    expect_load_error("broker:\n  session_expiry: 4294967296\n", LOOM_ECONFIG,
                      "shop.yaml:2: broker.session_expiry: expected an integer from 0 to "
                      "4294967295, got \"4294967296\"");
    expect_load_error("workers: 99999999999999999999999\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got "
                      "\"99999999999999999999999\"");
    expect_load_error("workers: -3\n", LOOM_ECONFIG,
                      "shop.yaml:1: workers: expected an integer from 1 to 1024, got \"-3\"");
}

/* ------------------------------------------------------------------------ */
/* Keys                                                                      */

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_load_error("workers: 2\n\n\nbrokr:\n  url: x\n", LOOM_ECONFIG,
                      "shop.yaml:4: brokr: unknown key (did you mean 'broker'?)");
    expect_load_error("broker:\n  qos:\n    comand: 1\n", LOOM_ECONFIG,
                      "shop.yaml:3: broker.qos.comand: unknown key (did you mean 'command'?)");
    expect_load_error("http:\n  Listen: 1.2.3.4:80\n", LOOM_ECONFIG,
                      "shop.yaml:2: http.Listen: unknown key (did you mean 'listen'?)");
    expect_load_error("log:\n  colour: yes\n", LOOM_ECONFIG,
                      "shop.yaml:2: log.colour: unknown key (known keys here: level, format)");
    expect_load_error("zzzzzzzzz: 1\n", LOOM_ECONFIG,
                      "shop.yaml:1: zzzzzzzzz: unknown key (known keys here: instance, services, "
                      "workers, invoke, log, timeouts, limits, broker, state, http, security, config)");
    expect_load_error("broker:\n  tls:\n    verify: true\n    cafile: x\n", LOOM_ECONFIG,
                      "shop.yaml:4: broker.tls.cafile: unknown key (known keys here: ca, cert, "
                      "key, verify)");
    /* A dotted key is not a path. */
    expect_load_error("broker.url: x\n", LOOM_ECONFIG,
                      "shop.yaml:1: broker.url: dotted keys are not paths in a file: nest 'url' "
                      "under 'broker'");
    expect_load_error("broker:\n  qos.event: 1\n", LOOM_ECONFIG,
                      "shop.yaml:2: broker.qos.event: dotted keys are not paths in a file: nest "
                      "'event' under 'qos'");
    expect_load_error("broker:\n  x.y: 1\n", LOOM_ECONFIG,
                      "shop.yaml:2: broker.x.y: unknown key (known keys here: url, prefix, "
                      "client_id, username, password, password_file, keepalive, session_expiry, "
                      "connect_timeout_ms, reconnect_min_ms, reconnect_max_ms, buffer, heartbeat_ms, randomize, send_asap, qos, tls)");
    /* A very long key gets no suggestion attempt but the same error. */
    char yaml[300];
    memset(yaml, 'k', 200);
    memcpy(yaml + 200, ": 1\n", 5);
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, yaml), LOOM_ECONFIG);
    assert_non_null(strstr(loom_config_error(cfg), ": unknown key (known keys here:"));
    loom_config_destroy(cfg);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_load_error("workers: 2\nlog: {level: info}\nworkers: 3\n", LOOM_EPARSE,
                      "shop.yaml:3: workers: duplicate key (first defined on line 1)");
    expect_load_error("broker:\n  url: a\nhttp: {}\nbroker:\n  prefix: b\n", LOOM_EPARSE,
                      "shop.yaml:4: broker: duplicate key (first defined on line 1)");
    expect_load_error("broker:\n  qos:\n    event: 1\n    event: 2\n", LOOM_EPARSE,
                      "shop.yaml:4: broker.qos.event: duplicate key (first defined on line 3)");
    expect_load_error("config:\n  svc:\n    a: 1\n    b: 2\n    a: 3\n", LOOM_EPARSE,
                      "shop.yaml:5: config.svc.a: duplicate key (first defined on line 3)");
    expect_load_error("config:\n  svc: {x: 1, x: 2}\n", LOOM_EPARSE,
                      "shop.yaml:2: config.svc.x: duplicate key (first defined on line 2)");
    /* Many keys in one mapping stay fast and are all distinct. */
    size_t n = 20000, cap = n * 24 + 64, o = 0;
    char *yaml = malloc(cap);
    assert_non_null(yaml);
    o += (size_t)snprintf(yaml + o, cap - o, "config:\n  big:\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(yaml + o, cap - o, "    k%zu: %zu\n", i, i);
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, yaml), LOOM_OK);
    assert_int_equal(cJSON_GetArraySize(loom_config_get(cfg, "config.big")), (int)n);
    expect_json(cfg, "config.big.k19999", "19999");
    /* ... and a duplicate at the very end is found. */
    o += (size_t)snprintf(yaml + o, cap - o, "    k7: 0\n");
    assert_int_equal(ld(cfg, yaml), LOOM_EPARSE);
    char want[128];
    snprintf(want, sizeof want,
             "shop.yaml:%zu: config.big.k7: duplicate key (first defined "
             "on line 10)",
             n + 3);
    assert_string_equal(loom_config_error(cfg), want);
    loom_config_destroy(cfg);
    free(yaml);
}

/* ------------------------------------------------------------------------ */
/* YAML that is refused                                                      */

static void test_aliases_anchors_tags(void **state)
{
    (void)state;
    expect_load_error("instance: &id shop\nbroker:\n  client_id: *id\n", LOOM_EPARSE,
                      "shop.yaml:1: instance: anchors and aliases are not supported");
    expect_load_error("config:\n  a: [1]\n  b: *x\n", LOOM_EPARSE,
                      "shop.yaml:3: config.b: aliases are not supported");
    expect_load_error("config: &base\n  a: 1\n", LOOM_EPARSE,
                      "shop.yaml:1: config: anchors and aliases are not supported");
    /* The billion-laughs shape is refused at its first anchor. */
    expect_load_error("config:\n  a: &a [\"lol\", \"lol\"]\n  b: &b [*a, *a]\n  c: [*b, *b]\n",
                      LOOM_EPARSE, "shop.yaml:2: config.a: anchors and aliases are not supported");
    expect_load_error("workers: !!int 5\n", LOOM_EPARSE,
                      "shop.yaml:1: workers: YAML tags are not supported (only !!str)");
    expect_load_error("config: !custom {a: 1}\n", LOOM_EPARSE,
                      "shop.yaml:1: config: YAML tags are not supported (only !!str)");
    /* !!str makes a map value a string. */
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "config:\n  s:\n    n: !!str 5\n    t: ! true\n    u: 5\n"), LOOM_OK);
    expect_json(cfg, "config.s", "{\"n\":\"5\",\"t\":\"true\",\"u\":5}");
    loom_config_destroy(cfg);
}

static void test_malformed_yaml(void **state)
{
    (void)state;
    expect_load_error("workers: 1\n\nlog:\n  level: info\n bad: 1\n", LOOM_EPARSE,
                      "shop.yaml:5: malformed YAML: did not find expected key (column 2)");
    expect_load_error("workers: 1\nlog:\n\tlevel: info\n", LOOM_EPARSE,
                      "shop.yaml:3: malformed YAML: found character that cannot start any "
                      "token (column 1: a tab; indent with spaces)");
    expect_load_error("workers: 1\nbroker:\n  url: \"mqtt://x\n  prefix: p\n", LOOM_EPARSE,
                      "shop.yaml:5: malformed YAML: found unexpected end of stream (column 1), "
                      "while scanning a quoted scalar that starts on line 3");
    expect_load_error("broker:\n  url: 'abc\n", LOOM_EPARSE,
                      "shop.yaml:3: malformed YAML: found unexpected end of stream (column 1), "
                      "while scanning a quoted scalar that starts on line 2");
    expect_load_error("services: [a, b\n", LOOM_EPARSE,
                      "shop.yaml:2: malformed YAML: did not find expected ',' or ']' (column 1)");
    expect_load_error("workers: 1: 2\n", LOOM_EPARSE,
                      "shop.yaml:1: malformed YAML: mapping values are not allowed in this "
                      "context (column 11)");
    expect_load_error("workers: 1\n---\nworkers: 2\n", LOOM_EPARSE,
                      "shop.yaml:2: multiple YAML documents are not supported");
    expect_load_error("---\nworkers: 1\n---\n", LOOM_EPARSE,
                      "shop.yaml:3: multiple YAML documents are not supported");
    expect_load_error("workers: 1\ninstance: \xc3\x28\n", LOOM_EPARSE,
                      "shop.yaml:2: malformed YAML: invalid trailing UTF-8 octet (byte 22)");
    expect_load_error("config:\n  ? [a]\n  : 1\n", LOOM_EPARSE,
                      "shop.yaml:2: config: mapping keys must be strings");
    expect_load_error("'': 1\n", LOOM_EPARSE, "shop.yaml:1: empty key");
    expect_load_error("config:\n  x: \"a\\0b\"\n", LOOM_EPARSE,
                      "shop.yaml:2: config.x: NUL characters are not allowed");

    /* A raw NUL byte inside the given length. */
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_string(cfg, "workers: 1\n\0", 12, "nul.yaml"), LOOM_EPARSE);
    assert_string_equal(loom_config_error(cfg),
                        "nul.yaml:2: malformed YAML: control characters are not allowed "
                        "(byte 11)");
    /* No name: a placeholder is used. */
    assert_int_equal(loom_config_load_string(cfg, "workers: x\n", 11, NULL), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "<string>:1: workers: expected an integer from 1 to 1024, got \"x\"");
    assert_int_equal(loom_config_load_string(cfg, NULL, 5, "x"), LOOM_EINVAL);
    assert_int_equal(loom_config_load_string(cfg, NULL, 0, "x"), LOOM_OK);
    assert_int_equal(loom_config_load_string(NULL, "a", 1, "x"), LOOM_EINVAL);
    assert_int_equal(loom_config_load_file(NULL, "x"), LOOM_EINVAL);
    assert_int_equal(loom_config_load_file(cfg, NULL), LOOM_EINVAL);
    assert_null(loom_config_tree(cfg)->child);
    loom_config_destroy(cfg);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    char yaml[512];
    /* config (depth 2) + 62 more levels is fine; one more is not. */
    int o = snprintf(yaml, sizeof yaml, "config: {a: ");
    for (int i = 0; i < 62; i++)
        yaml[o++] = '[';
    for (int i = 0; i < 62; i++)
        yaml[o++] = ']';
    memcpy(yaml + o, "}\n", 3);
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, yaml), LOOM_OK);
    o = snprintf(yaml, sizeof yaml, "config: {a: ");
    for (int i = 0; i < 63; i++)
        yaml[o++] = '[';
    for (int i = 0; i < 63; i++)
        yaml[o++] = ']';
    memcpy(yaml + o, "}\n", 3);
    assert_int_equal(ld(cfg, yaml), LOOM_EPARSE);
    assert_non_null(strstr(loom_config_error(cfg), "nested deeper than 64 levels"));
    assert_int_equal(strncmp(loom_config_error(cfg), "shop.yaml:1: config.a", 21), 0);
    loom_config_destroy(cfg);
    /* 100000 levels: refused without running out of stack. */
    size_t n = 100000;
    char *deep = malloc(2 * n + 16);
    assert_non_null(deep);
    size_t len = (size_t)sprintf(deep, "config:\n  a: ");
    memset(deep + len, '[', n);
    len += n;
    memset(deep + len, ']', n);
    len += n;
    cfg = mk();
    assert_int_equal(loom_config_load_string(cfg, deep, len, "deep.yaml"), LOOM_EPARSE);
    assert_non_null(strstr(loom_config_error(cfg), "nested deeper than 64 levels"));
    loom_config_destroy(cfg);
    free(deep);
}

/* ------------------------------------------------------------------------ */
/* Line numbers, atomicity, null                                             */

static void test_line_numbers(void **state)
{
    (void)state;
    expect_load_error("# header\n"
                      "\n"
                      "broker:   # the broker\n"
                      "  url: mqtt://x\n"
                      "\n"
                      "  # qos below\n"
                      "  qos:\n"
                      "    command: 1\n"
                      "    reply: >\n"
                      "      folded\n"
                      "      text\n"
                      "    event: 9\n",
                      LOOM_ECONFIG,
                      "shop.yaml:9: broker.qos.reply: expected an integer from 0 to 2, got "
                      "\"folded text\\x0a\"");
    expect_load_error("http:\n"
                      "  cors:\n"
                      "    max_age: 1\n"
                      "    origins:\n"
                      "      - a\n"
                      "      - b\n"
                      "    headers: x\n"
                      "    max_age: 2\n",
                      LOOM_EPARSE,
                      "shop.yaml:8: http.cors.max_age: duplicate key (first defined on line 3)");
    /* The value's own line, not the key's. */
    expect_load_error("broker:\n  keepalive:\n\n    70000\n", LOOM_ECONFIG,
                      "shop.yaml:4: broker.keepalive: expected an integer from 1 to 65535, got "
                      "\"70000\"");
}

static void test_failed_load_keeps_values(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "workers: 4\nbroker:\n  url: mqtt://a\nconfig:\n  s: {x: 1}\n"),
                     LOOM_OK);
    cJSON *before = cJSON_Duplicate(loom_config_tree(cfg), 1);
    assert_non_null(before);

    /* Valid keys first, a bad one last: none of them may land. */
    assert_int_equal(ld(cfg, "workers: 9\nbroker:\n  url: mqtt://b\n  prefix: p\nconfig:\n"
                             "  s: {x: 2}\n  t: 1\nlog:\n  level: nope\n"),
                     LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "shop.yaml:9: log.level: expected one of trace, debug, info, warn, "
                        "error, off, got \"nope\"");
    assert_true(cJSON_Compare(before, loom_config_tree(cfg), 1));
    assert_int_equal(ld(cfg, "workers: 9\nbroker: {url: 'x\n"), LOOM_EPARSE);
    assert_true(cJSON_Compare(before, loom_config_tree(cfg), 1));
    assert_int_equal(loom_config_load_file(cfg, "/nonexistent.yaml"), LOOM_EIO);
    assert_true(cJSON_Compare(before, loom_config_tree(cfg), 1));
    assert_int_equal(loom_config_set(cfg, "workers", "0"), LOOM_ECONFIG);
    assert_true(cJSON_Compare(before, loom_config_tree(cfg), 1));

    /* A good load afterwards applies and clears the error. */
    assert_int_equal(ld(cfg, "workers: 5\n"), LOOM_OK);
    assert_string_equal(loom_config_error(cfg), "");
    expect_int(cfg, "workers", 5);
    expect_str(cfg, "broker.url", "mqtt://a");
    cJSON_Delete(before);
    loom_config_destroy(cfg);
}

static void test_null_resets_and_merge(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "workers: 4\nbroker:\n  url: mqtt://a\n  qos: {command: 2}\n"
                             "config:\n  a: {x: 1, y: [1, 2]}\n  b: 1\n"),
                     LOOM_OK);
    /* A second file overrides key by key; null puts a key back to its
     * default; map values merge deeply. */
    assert_int_equal(ld(cfg, "broker:\n  url:\n  prefix: p\n  qos:\n    command: ~\n"
                             "config:\n  a: {y: [3], z: null}\n  c: 2\n"),
                     LOOM_OK);
    expect_int(cfg, "workers", 4);
    assert_null(loom_config_get(cfg, "broker.url"));
    assert_null(loom_config_get(cfg, "broker.qos")); /* emptied section pruned */
    assert_string_equal(loom__config_str(cfg, "broker.url", "memory:"), "memory:");
    expect_str(cfg, "broker.prefix", "p");
    expect_json(cfg, "config", "{\"a\":{\"x\":1,\"y\":[3],\"z\":null},\"b\":1,\"c\":2}");
    /* null on a map key drops the whole map. */
    assert_int_equal(ld(cfg, "config: null\nbroker:\n  prefix: ~\n"), LOOM_OK);
    assert_null(loom_config_get(cfg, "config"));
    assert_null(loom_config_get(cfg, "broker"));
    expect_int(cfg, "workers", 4);
    loom_config_destroy(cfg);
}

/* ------------------------------------------------------------------------ */
/* Value checks                                                              */

static void test_string_checks(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    static const char *const listen_ok[] = {"127.0.0.1:8080", "0.0.0.0:1", "localhost:65535",
                                            "[::1]:8080",     "[::]:80",   "[fe80::1%eth0]:443"};
    for (size_t i = 0; i < sizeof listen_ok / sizeof listen_ok[0]; i++) {
        expect_set_ok(cfg, "http.listen", listen_ok[i]);
        expect_str(cfg, "http.listen", listen_ok[i]);
    }
    static const char *const listen_bad[] = {"8080",      "host:",    "host:65536",
                                             "host:http", ":8080",    "[::1]8080", "[::1:8080",
                                             "[]:80",     "host:+80", "a b:80",    "host: 80"};
    for (size_t i = 0; i < sizeof listen_bad / sizeof listen_bad[0]; i++) {
        char want[256];
        snprintf(want, sizeof want,
                 "http.listen: expected HOST:PORT with a port from 0 to 65535, got \"%s\"",
                 listen_bad[i]);
        expect_set_error("http.listen", listen_bad[i], LOOM_ECONFIG, want);
    }
    expect_set_error("http.listen", "::1:8080", LOOM_ECONFIG,
                     "http.listen: IPv6 addresses must be in brackets, e.g. [::1]:8080, got "
                     "\"::1:8080\"");
    expect_load_error("http:\n  listen: 1.2.3.4\n", LOOM_ECONFIG,
                      "shop.yaml:2: http.listen: expected HOST:PORT with a port from 0 to "
                      "65535, got \"1.2.3.4\"");

    static const char *const base_ok[] = {"/api", "/a/b-c", ""};
    for (size_t i = 0; i < sizeof base_ok / sizeof base_ok[0]; i++) {
        expect_set_ok(cfg, "http.base", base_ok[i]);
        expect_str(cfg, "http.base", base_ok[i]);
    }
    static const char *const base_bad[] = {"api", "/api/", "/", "/a//b", "/a b", "/a?x"};
    for (size_t i = 0; i < sizeof base_bad / sizeof base_bad[0]; i++) {
        char want[256];
        snprintf(want, sizeof want,
                 "http.base: expected a path that starts with '/' and does not end with '/', "
                 "got \"%s\"",
                 base_bad[i]);
        expect_set_error("http.base", base_bad[i], LOOM_ECONFIG, want);
    }

    expect_set_ok(cfg, "services", "orders, pay_ments,ship-ping");
    expect_json(cfg, "services", "[\"orders\",\"pay_ments\",\"ship-ping\"]");
    expect_set_error("services", "all,orders", LOOM_ECONFIG,
                     "services: \"all\" cannot be combined with other services");
    expect_set_error("services", "orders,none", LOOM_ECONFIG,
                     "services: \"none\" cannot be combined with other services");
    expect_set_error("services", "a.b", LOOM_ECONFIG,
                     "services: \"a.b\" is not a service name (letters, digits, '_' and '-'), "
                     "or \"all\" / \"none\"");
    expect_load_error("services:\n  - orders\n  - all\n", LOOM_ECONFIG,
                      "shop.yaml:2: services: \"all\" cannot be combined with other services");

    expect_set_ok(cfg, "broker.prefix", "acme/loom");
    static const char *const prefix_bad[] = {"",    "$SYS", "/loom", "loom/", "a/+/b",
                                             "a#",  "a//b", "a$b"};
    for (size_t i = 0; i < sizeof prefix_bad / sizeof prefix_bad[0]; i++) {
        char want[256];
        snprintf(want, sizeof want,
                 "broker.prefix: expected a topic prefix (1 to 256 bytes, levels separated by "
                 "single '/', no '+', '#', '$' or control characters), got \"%s\"",
                 prefix_bad[i]);
        expect_set_error("broker.prefix", prefix_bad[i], LOOM_ECONFIG, want);
    }

    expect_set_ok(cfg, "instance", "shop-1.eu");
    expect_set_error("instance", "", LOOM_ECONFIG,
                     "instance: expected 1 to 128 characters without spaces, got \"\"");
    expect_set_error("instance", "a b", LOOM_ECONFIG,
                     "instance: expected 1 to 128 characters without spaces, got \"a b\"");
    /* Echoed values are escaped and bounded. */
    char longv[300];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    longv[0] = '\t';
    assert_int_equal(loom_config_set(cfg, "instance", longv), LOOM_ECONFIG);
    const char *err = loom_config_error(cfg);
    assert_non_null(strstr(err, "got \"\\x09xxx"));
    assert_non_null(strstr(err, "...\""));
    assert_true(strlen(err) < 160);
    loom_config_destroy(cfg);
}

/* ------------------------------------------------------------------------ */
/* loom_config_set                                                           */

static void test_set_each_type(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    expect_set_ok(cfg, "broker.url", "mqtt://h:1883");
    expect_str(cfg, "broker.url", "mqtt://h:1883");
    expect_set_ok(cfg, "broker.password", "");
    expect_str(cfg, "broker.password", "");
    expect_set_ok(cfg, "workers", "16");
    expect_int(cfg, "workers", 16);
    expect_set_ok(cfg, "workers", "+3");
    expect_int(cfg, "workers", 3);

    static const char *const yes[] = {"true", "TRUE", "yes", "Yes", "on", "1"};
    static const char *const no[] = {"false", "False", "no", "NO", "off", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        expect_set_ok(cfg, "broker.tls.verify", no[i]);
        assert_true(cJSON_IsFalse(loom_config_get(cfg, "broker.tls.verify")));
        expect_set_ok(cfg, "broker.tls.verify", yes[i]);
        assert_true(cJSON_IsTrue(loom_config_get(cfg, "broker.tls.verify")));
    }
    expect_set_ok(cfg, "log.level", "Error");
    expect_str(cfg, "log.level", "error");
    expect_set_ok(cfg, "log.format", "json");
    expect_set_ok(cfg, "http.auth.tokens", "t1,t2 , t3");
    expect_json(cfg, "http.auth.tokens", "[\"t1\",\"t2\",\"t3\"]");
    expect_set_ok(cfg, "services", "all");
    expect_json(cfg, "services", "[\"all\"]");
    expect_set_ok(cfg, "http.cors.origins", "");
    expect_json(cfg, "http.cors.origins", "[]");

    /* map: the whole map as YAML, a child as a plain scalar or YAML. */
    expect_set_ok(cfg, "config", "{payments: {currency: EUR, fee: 2}}");
    expect_set_ok(cfg, "config.payments.currency", "USD");
    expect_set_ok(cfg, "config.payments.live", "true");
    expect_set_ok(cfg, "config.payments.label", "a: b # not a comment");
    expect_set_ok(cfg, "config.payments.list", "[1, two, 3.5]");
    expect_set_ok(cfg, "config.shipping.zone.eu", "1");
    expect_json(cfg, "config",
                "{\"payments\":{\"currency\":\"USD\",\"fee\":2,\"live\":true,"
                "\"label\":\"a: b # not a comment\",\"list\":[1,\"two\",3.5]},"
                "\"shipping\":{\"zone\":{\"eu\":1}}}");
    /* A flat map keeps dotted command names whole. */
    expect_set_ok(cfg, "limits.concurrency.orders.create", "3");
    expect_set_ok(cfg, "limits.concurrency", "{charge: 2}");
    expect_json(cfg, "limits.concurrency", "{\"orders.create\":3,\"charge\":2}");
    expect_int(cfg, "limits.concurrency.orders.create", 3);
    loom_config_destroy(cfg);
}

static void test_set_errors(void **state)
{
    (void)state;
    expect_set_error("workers", "x", LOOM_ECONFIG,
                     "workers: expected an integer from 1 to 1024, got \"x\"");
    expect_set_error("workers", "", LOOM_ECONFIG,
                     "workers: expected an integer from 1 to 1024, got \"\"");
    expect_set_error("workers", "4 ", LOOM_ECONFIG,
                     "workers: expected an integer from 1 to 1024, got \"4 \"");
    expect_set_error("broker.tls.verify", "maybe", LOOM_ECONFIG,
                     "broker.tls.verify: expected true or false, got \"maybe\"");
    expect_set_error("log.level", "verbose", LOOM_ECONFIG,
                     "log.level: expected one of trace, debug, info, warn, error, off, got "
                     "\"verbose\"");
    expect_set_error("services", "a,", LOOM_ECONFIG,
                     "services: empty item in comma-separated list");
    expect_set_error("brokr.url", "x", LOOM_ECONFIG,
                     "brokr.url: unknown key (did you mean 'broker.url'?)");
    expect_set_error("worker", "2", LOOM_ECONFIG, "worker: unknown key (did you mean 'workers'?)");
    expect_set_error("nothing.like.it", "2", LOOM_ECONFIG, "nothing.like.it: unknown key");
    expect_set_error("config..x", "2", LOOM_ECONFIG,
                     "config..x: malformed key (an empty name between dots)");
    expect_set_error("config.a.", "2", LOOM_ECONFIG,
                     "config.a.: malformed key (an empty name between dots)");
    expect_set_error(".workers", "2", LOOM_ECONFIG,
                     ".workers: malformed key (an empty name between dots)");
    expect_set_error("broker", "x", LOOM_ECONFIG,
                     "broker: is a section: set one of its keys, such as 'broker.url'");
    expect_set_error("broker.qos", "1", LOOM_ECONFIG,
                     "broker.qos: is a section: set one of its keys, such as "
                     "'broker.qos.command'");
    expect_set_error("config", "payments", LOOM_ECONFIG,
                     "config: expected a mapping, got \"payments\"");
    expect_set_error("config", "[1]", LOOM_ECONFIG, "config: expected a mapping, got a list");
    expect_set_error("config", "{a: 1, a: 2}", LOOM_EPARSE,
                     "config.a: duplicate key "
                     "(first defined on line 1)");
    expect_set_error("config", "{a: [1}", LOOM_EPARSE,
                     "config: malformed YAML: did not find expected ',' or ']' (column 7)");
    expect_set_error("config.s", "[&a 1, *a]", LOOM_EPARSE,
                     "config.s: anchors and aliases are not supported");
    expect_set_error("config", "{a: 1}\n---\n{b: 2}", LOOM_EPARSE,
                     "config: multiple YAML documents are not supported");
    expect_set_error("limits.concurrency.x", "0", LOOM_ECONFIG,
                     "limits.concurrency.x: expected an integer from 1 to 2147483647, got 0");
    expect_set_error("limits.concurrency", "{a: 2, b: no}", LOOM_ECONFIG,
                     "limits.concurrency.b: expected an integer from 1 to 2147483647, got "
                     "\"no\"");
    expect_set_error("http.listen", "nope", LOOM_ECONFIG,
                     "http.listen: expected HOST:PORT with a port from 0 to 65535, got \"nope\"");

    loom_config *cfg = mk();
    assert_int_equal(loom_config_set(cfg, NULL, "1"), LOOM_EINVAL);
    assert_int_equal(loom_config_set(cfg, "workers", NULL), LOOM_EINVAL);
    assert_int_equal(loom_config_set(cfg, "", "1"), LOOM_EINVAL);
    assert_int_equal(loom_config_set(NULL, "workers", "1"), LOOM_EINVAL);
    assert_null(loom_config_tree(cfg)->child);
    loom_config_destroy(cfg);
}

static void test_set_from_label(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(loom__config_set_from(cfg, "--workers", "workers", "x"), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "--workers: expected an integer from 1 to 1024, got \"x\"");
    assert_int_equal(loom__config_set_from(cfg, "--set", "config", "{a: {b: 1, b: 2}}"),
                     LOOM_EPARSE);
    assert_string_equal(loom_config_error(cfg),
                        "--set: config.a.b: duplicate key (first defined on line 1)");
    assert_int_equal(loom__config_set_from(cfg, "--broker", "brokr.url", "x"), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "--broker: unknown key (did you mean 'broker.url'?)");
    assert_int_equal(loom__config_set_from(cfg, "--workers", "workers", "7"), LOOM_OK);
    assert_string_equal(loom_config_error(cfg), "");
    expect_int(cfg, "workers", 7);
    assert_int_equal(loom__config_set_from(cfg, NULL, "workers", "0"), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "workers: expected an integer from 1 to 1024, got \"0\"");
    expect_int(cfg, "workers", 7);
    loom_config_destroy(cfg);
}

/* ------------------------------------------------------------------------ */
/* Environment                                                               */

static void test_env(void **state)
{
    (void)state;
    clear_env();
    loom_config *cfg = mk();
    assert_int_equal(loom_config_apply_env(cfg), LOOM_OK);
    assert_null(loom_config_tree(cfg)->child);

    setenv("LOOM_INSTANCE", "i-1", 1);
    setenv("LOOM_SERVICES", "orders,payments", 1);
    setenv("LOOM_BROKER", "mqtt://b:1883", 1);
    setenv("LOOM_HTTP", "127.0.0.1:9000", 1);
    setenv("LOOM_WORKERS", "3", 1);
    setenv("LOOM_LOG_LEVEL", "trace", 1);
    setenv("LOOM_LOG_FORMAT", "JSON", 1);
    setenv("LOOM_STATE", "memory:", 1);
    setenv("LOOM_PREFIX", "acme", 1);
    setenv("LOOM_BROKER_USERNAME", "u", 1);
    setenv("LOOM_BROKER_PASSWORD", "p w", 1);
    setenv("LOOM_HTTP_TOKENS", "t1, t2", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_OK);
    assert_string_equal(loom_config_error(cfg), "");
    expect_str(cfg, "instance", "i-1");
    expect_json(cfg, "services", "[\"orders\",\"payments\"]");
    expect_str(cfg, "broker.url", "mqtt://b:1883");
    expect_str(cfg, "http.listen", "127.0.0.1:9000");
    expect_int(cfg, "workers", 3);
    expect_str(cfg, "log.level", "trace");
    expect_str(cfg, "log.format", "json");
    expect_str(cfg, "state.url", "memory:");
    expect_str(cfg, "broker.prefix", "acme");
    expect_str(cfg, "broker.username", "u");
    expect_str(cfg, "broker.password", "p w");
    expect_json(cfg, "http.auth.tokens", "[\"t1\",\"t2\"]");
    loom_config_destroy(cfg);
    clear_env();

    /* Empty variables are ignored. */
    cfg = mk();
    setenv("LOOM_WORKERS", "", 1);
    setenv("LOOM_BROKER", "", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_OK);
    assert_null(loom_config_tree(cfg)->child);

    /* Errors name the variable; nothing is applied. */
    setenv("LOOM_BROKER", "mqtt://c", 1);
    setenv("LOOM_WORKERS", "x", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "environment LOOM_WORKERS: expected an integer from 1 to 1024, got \"x\"");
    assert_null(loom_config_tree(cfg)->child);
    setenv("LOOM_WORKERS", "2000", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg), "environment LOOM_WORKERS: expected an integer "
                                                "from 1 to 1024, got \"2000\"");
    unsetenv("LOOM_WORKERS");
    setenv("LOOM_HTTP", "8080", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg), "environment LOOM_HTTP: expected HOST:PORT with a "
                                                "port from 0 to 65535, got \"8080\"");
    unsetenv("LOOM_HTTP");
    setenv("LOOM_SERVICES", "all,orders", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "environment LOOM_SERVICES: \"all\" cannot be combined with other "
                        "services");
    unsetenv("LOOM_SERVICES");
    setenv("LOOM_LOG_LEVEL", "chatty", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_ECONFIG);
    assert_string_equal(loom_config_error(cfg),
                        "environment LOOM_LOG_LEVEL: expected one of trace, debug, info, warn, "
                        "error, off, got \"chatty\"");
    assert_null(loom_config_tree(cfg)->child);
    unsetenv("LOOM_LOG_LEVEL");
    assert_int_equal(loom_config_apply_env(cfg), LOOM_OK);
    expect_str(cfg, "broker.url", "mqtt://c");
    assert_int_equal(loom_config_apply_env(NULL), LOOM_EINVAL);
    loom_config_destroy(cfg);
    clear_env();
}

static void test_override_order(void **state)
{
    (void)state;
    clear_env();
    char *path = temp_file("workers: 2\nbroker:\n  url: mqtt://file\n  prefix: fromfile\n"
                           "log: {level: warn}\nservices: [a, b]\n",
                           strlen("workers: 2\nbroker:\n  url: mqtt://file\n  prefix: fromfile\n"
                                  "log: {level: warn}\nservices: [a, b]\n"));
    loom_config *cfg = mk();
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_OK);
    setenv("LOOM_WORKERS", "4", 1);
    setenv("LOOM_BROKER", "mqtt://env", 1);
    setenv("LOOM_SERVICES", "c", 1);
    assert_int_equal(loom_config_apply_env(cfg), LOOM_OK);
    assert_int_equal(loom__config_set_from(cfg, "--workers", "workers", "6"), LOOM_OK);
    expect_int(cfg, "workers", 6);                /* set wins */
    expect_str(cfg, "broker.url", "mqtt://env");  /* env over file */
    expect_str(cfg, "broker.prefix", "fromfile"); /* file only */
    expect_str(cfg, "log.level", "warn");         /* file only */
    expect_json(cfg, "services", "[\"c\"]");      /* lists replace, not append */
    loom_config_destroy(cfg);
    rm_temp(path);
    clear_env();
}

/* ------------------------------------------------------------------------ */
/* The config map, get and the readers                                      */

/* A host program's LC_NUMERIC (a German locale writes "0,5") changes
 * neither the numbers read from YAML nor those in error messages. */
static void test_numbers_locale(void **state)
{
    (void)state;
    t_comma_locale();
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "config:\n  p:\n    floats: [1.5, -0.25, 1e3, .5, 2.5e-3]\n"),
                     LOOM_OK);
    expect_json(cfg, "config.p.floats", "[1.5,-0.25,1000,0.5,0.0025]");
    loom_config_destroy(cfg);
    expect_load_error("limits:\n  concurrency:\n    a: 1.5\n", LOOM_ECONFIG,
                      "shop.yaml:3: limits.concurrency.a: expected an integer from 1 to "
                      "2147483647, got 1.5");
    setlocale(LC_NUMERIC, "C");
}

static void test_service_config_map(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "config:\n"
                             "  payments:\n"
                             "    ints: [1, -2, 0x10, 0o17, +7]\n"
                             "    floats: [1.5, -0.25, 1e3, .5]\n"
                             "    bools: [true, False, TRUE, yes, no]\n"
                             "    nulls: [null, ~, Null]\n"
                             "    quoted: ['1', \"true\", 'null']\n"
                             "    strings: [1.2.3, 0x, 12abc, .inf, 1e999]\n"
                             "    big: 9007199254740993\n"
                             "    edge: 9007199254740992\n"
                             "    nested:\n"
                             "      deeper:\n"
                             "        list:\n"
                             "          - {id: 1, tags: [a, b]}\n"
                             "          - {id: 2, tags: []}\n"
                             "    block: |\n"
                             "      line1\n"
                             "      line2\n"
                             "  orders: {}\n"),
                     LOOM_OK);
    expect_json(cfg, "config.payments.ints", "[1,-2,16,15,7]");
    expect_json(cfg, "config.payments.floats", "[1.5,-0.25,1000,0.5]");
    expect_json(cfg, "config.payments.bools", "[true,false,true,\"yes\",\"no\"]");
    expect_json(cfg, "config.payments.nulls", "[null,null,null]");
    expect_json(cfg, "config.payments.quoted", "[\"1\",\"true\",\"null\"]");
    expect_json(cfg, "config.payments.strings", "[\"1.2.3\",\"0x\",\"12abc\",\".inf\",\"1e999\"]");
    expect_json(cfg, "config.payments.big", "\"9007199254740993\"");
    expect_json(cfg, "config.payments.edge", "9007199254740992");
    expect_json(cfg, "config.payments.nested.deeper.list",
                "[{\"id\":1,\"tags\":[\"a\",\"b\"]},{\"id\":2,\"tags\":[]}]");
    expect_json(cfg, "config.payments.block", "\"line1\\nline2\\n\"");
    expect_json(cfg, "config.orders", "{}");
    assert_null(loom_config_get(cfg, "config.shipping"));
    assert_null(loom_config_get(cfg, "config.payments.nested.nope"));
    loom_config_destroy(cfg);
}

static void test_get_readers_clone(void **state)
{
    (void)state;
    loom_config *cfg = mk();
    assert_int_equal(ld(cfg, "workers: 2\nbroker:\n  url: mqtt://x\n  tls: {verify: true}\n"
                             "limits:\n  concurrency: {a.b.c: 5, a: 1}\n"),
                     LOOM_OK);
    assert_null(loom_config_get(cfg, ""));
    assert_null(loom_config_get(cfg, NULL));
    assert_null(loom_config_get(NULL, "workers"));
    assert_null(loom_config_get(cfg, "broker.url.x"));
    assert_null(loom_config_get(cfg, "broker."));
    assert_null(loom_config_get(cfg, "nope"));
    assert_non_null(loom_config_get(cfg, "broker"));
    expect_int(cfg, "limits.concurrency.a.b.c", 5);
    expect_int(cfg, "limits.concurrency.a", 1);

    /* Readers: the value, or the default when unset or of another type. */
    assert_int_equal(loom__config_int(cfg, "workers", 9), 2);
    assert_int_equal(loom__config_int(cfg, "http.threads", 9), 9);
    assert_int_equal(loom__config_int(cfg, "broker.url", 9), 9);
    assert_string_equal(loom__config_str(cfg, "broker.url", "d"), "mqtt://x");
    assert_string_equal(loom__config_str(cfg, "state.url", "memory:"), "memory:");
    assert_null(loom__config_str(cfg, "workers", NULL));
    assert_true(loom__config_bool(cfg, "broker.tls.verify", false));
    assert_false(loom__config_bool(cfg, "nope", false));
    assert_int_equal(loom__config_int(NULL, "workers", 4), 4);
    assert_string_equal(loom__config_str(NULL, "x", "d"), "d");
    assert_true(loom__config_bool(NULL, "x", true));

    /* A clone is deep and independent. */
    loom_config *copy = loom__config_clone(cfg);
    assert_non_null(copy);
    assert_true(cJSON_Compare(loom_config_tree(cfg), loom_config_tree(copy), 1));
    expect_set_ok(cfg, "workers", "8");
    expect_set_ok(cfg, "broker.url", "memory:");
    assert_int_equal(loom__config_int(copy, "workers", 0), 2);
    assert_string_equal(loom__config_str(copy, "broker.url", ""), "mqtt://x");
    assert_string_equal(loom_config_error(copy), "");
    assert_null(loom__config_clone(NULL));
    loom_config_destroy(copy);

    /* Errors: "" when none; NULL-safe. */
    assert_string_equal(loom_config_error(NULL), "");
    assert_null(loom_config_tree(NULL));
    assert_int_equal(loom_config_create(NULL), LOOM_EINVAL);
    loom_config_destroy(NULL);
    loom_config_destroy(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_empty_inputs),
        cmocka_unit_test(test_missing_file_and_directory),
        cmocka_unit_test(test_file_size_limit),
        cmocka_unit_test(test_file_type_errors),
        cmocka_unit_test(test_file_values_accepted),
        cmocka_unit_test(test_int_ranges),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_aliases_anchors_tags),
        cmocka_unit_test(test_malformed_yaml),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_line_numbers),
        cmocka_unit_test(test_failed_load_keeps_values),
        cmocka_unit_test(test_null_resets_and_merge),
        cmocka_unit_test(test_string_checks),
        cmocka_unit_test(test_set_each_type),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_set_from_label),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_override_order),
        cmocka_unit_test(test_service_config_map),
        cmocka_unit_test(test_numbers_locale),
        cmocka_unit_test(test_get_readers_clone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
