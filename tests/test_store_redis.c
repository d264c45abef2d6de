/* The "redis" state store against real redis-server processes: the memory
 * store's semantics, cas, prefixes, databases, passwords, concurrency,
 * Redis going away and coming back, timeouts, URLs and options. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support/redis.h"
#include "support/support.h"

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"

/* Timing slack for a loaded 2-vCPU machine under sanitizers. */
#define SLACK_MS 400

/* One server shared by the tests that do not stop it; each test uses its
 * own key prefix. */
static t_redis shared;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static loom_store *open_with(const char *url, const char *options)
{
    cJSON *opts = options ? t_json(options) : NULL;
    loom_store *s = NULL;
    loom_err err = loom__store_open(&s, url, opts);
    cJSON_Delete(opts);
    if (err != LOOM_OK)
        fail_msg("open %s %s: %s", url, options ? options : "", loom_strerror(err));
    assert_non_null(s);
    return s;
}

/* A store on the shared server with prefix "test:<name>:". */
static loom_store *open_prefixed(const char *name)
{
    char opts[128];
    snprintf(opts, sizeof opts, "{\"prefix\":\"test:%s:\"}", name);
    return open_with(t_redis_url(&shared), opts);
}

static loom_err try_open(const char *url, const char *options)
{
    cJSON *opts = options ? t_json(options) : NULL;
    loom_store *s = (loom_store *)1;
    loom_err err = loom__store_open(&s, url, opts);
    cJSON_Delete(opts);
    if (err == LOOM_OK)
        loom__store_close(s);
    else
        assert_null(s);
    return err;
}

static void set_text(loom_store *s, const char *key, const char *text, uint32_t ttl)
{
    cJSON *v = t_json(text);
    assert_int_equal(loom_store_set(s, key, v, ttl), LOOM_OK);
    cJSON_Delete(v);
}

static void assert_value(loom_store *s, const char *key, const char *text)
{
    cJSON *v = NULL;
    loom_err err = loom_store_get(s, key, &v);
    if (err != LOOM_OK)
        fail_msg("key %s: %s, want %s", key, loom_strerror(err), text);
    if (!t_json_eq(v, text)) {
        char *got = cJSON_PrintUnformatted(v);
        cJSON_Delete(v);
        fail_msg("key %s: got %s, want %s", key, got, text);
    }
    cJSON_Delete(v);
}

static void assert_absent(loom_store *s, const char *key)
{
    cJSON *v = (cJSON *)1;
    assert_int_equal(loom_store_get(s, key, &v), LOOM_ENOTFOUND);
    assert_null(v);
}

/* A plain hiredis client, to look at what the store wrote. */
static redisContext *raw_connect(const t_redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    if (!c || c->err)
        fail_msg("raw connect to %d failed", r->port);
    return c;
}

/* Runs a command (hiredis format) and returns its reply; fails the test on
 * a connection error. */
static redisReply *raw_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("raw command failed: %s", c->errstr);
    return r;
}

/* The raw string stored under a Redis key, or NULL when absent. */
static char *raw_get(const t_redis *srv, int db, const char *key)
{
    redisContext *c = raw_connect(srv);
    freeReplyObject(raw_cmd(c, "SELECT %d", db));
    redisReply *r = raw_cmd(c, "GET %s", key);
    char *out = r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : NULL;
    freeReplyObject(r);
    redisFree(c);
    return out;
}

/* ------------------------------------------------------------------------ */

static void test_set_get(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("setget");
    const char *values[] = {
        "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"é\\n\\\"x\\\"\"}}",
        "[1,2.5,-3,\"s\"]",
        "\"plain string\"",
        "42",
        "-0.125",
        "true",
        "null",
        "{}",
        "[]",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        char key[32];
        snprintf(key, sizeof key, "k%zu", i);
        set_text(s, key, values[i], 0);
    }
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        char key[32];
        snprintf(key, sizeof key, "k%zu", i);
        assert_value(s, key, values[i]);
    }
    cJSON *v = t_json("{\"n\":1}");
    assert_int_equal(loom_store_set(s, "k0", v, 0), LOOM_OK);
    cJSON_ReplaceItemInObject(v, "n", cJSON_CreateNumber(2));
    assert_value(s, "k0", "{\"n\":1}");
    cJSON_Delete(v);
    set_text(s, "K0", "\"upper\"", 0);
    assert_value(s, "k0", "{\"n\":1}");
    assert_value(s, "K0", "\"upper\"");
    assert_absent(s, "k00");
    assert_absent(s, "never");
    /* Keys are binary-safe byte strings: spaces, CR LF, quotes, UTF-8. */
    const char *odd = "a b\r\n\"c\" é *3";
    set_text(s, odd, "7", 0);
    assert_value(s, odd, "7");
    assert_absent(s, "a b");
    /* The value is stored as compact JSON text under PREFIX+key. */
    char *raw = raw_get(&shared, 0, "test:setget:k0");
    assert_non_null(raw);
    assert_string_equal(raw, "{\"n\":1}");
    free(raw);
    /* The longest key works. */
    char key[LOOM__STORE_MAX_KEY + 1];
    memset(key, 'k', LOOM__STORE_MAX_KEY);
    key[LOOM__STORE_MAX_KEY] = '\0';
    set_text(s, key, "1", 0);
    assert_value(s, key, "1");
    loom__store_close(s);
}

static void test_add_delete(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("adddel");
    cJSON *one = t_json("1"), *two = t_json("2");
    assert_int_equal(loom_store_add(s, "k", one, 0), LOOM_OK);
    assert_int_equal(loom_store_add(s, "k", two, 0), LOOM_EEXIST);
    assert_value(s, "k", "1");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_OK);
    assert_absent(s, "k");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_delete(s, "other"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_add(s, "k", two, 0), LOOM_OK);
    assert_value(s, "k", "2");
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_OK);
    assert_value(s, "k", "1");
    cJSON_Delete(one);
    cJSON_Delete(two);
    loom__store_close(s);
}

static void test_incr(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("incr");
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "c", 5, &v), LOOM_OK);
    assert_int_equal(v, 5);
    assert_int_equal(loom_store_incr(s, "c", -7, &v), LOOM_OK);
    assert_int_equal(v, -2);
    assert_int_equal(loom_store_incr(s, "c", 1, NULL), LOOM_OK);
    assert_value(s, "c", "-1");

    set_text(s, "n", "41", 0);
    assert_int_equal(loom_store_incr(s, "n", 1, &v), LOOM_OK);
    assert_int_equal(v, 42);
    /* cJSON prints 1e15 as "1e+15", which INCRBY refuses: the fallback. */
    cJSON *big = cJSON_CreateNumber(1e15);
    assert_int_equal(loom_store_set(s, "big", big, 0), LOOM_OK);
    cJSON_Delete(big);
    assert_int_equal(loom_store_incr(s, "big", 1, &v), LOOM_OK);
    assert_int_equal(v, 1000000000000001LL);
    set_text(s, "whole", "3.0", 0);
    assert_int_equal(loom_store_incr(s, "whole", 1, &v), LOOM_OK);
    assert_int_equal(v, 4);

    const char *bad[] = {"2.5", "\"3\"", "{\"a\":1}", "[1]", "true", "null", "1e-1"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        set_text(s, "bad", bad[i], 0);
        v = 99;
        assert_int_equal(loom_store_incr(s, "bad", 1, &v), LOOM_EINVAL);
        assert_int_equal(v, 99);
        assert_value(s, "bad", bad[i]);
    }

    assert_int_equal(loom_store_incr(s, "max", INT64_MAX, &v), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "max", 1, &v), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "max", 0, &v), LOOM_OK);
    assert_true(v == INT64_MAX);
    assert_int_equal(loom_store_incr(s, "min", -INT64_MAX, &v), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "min", -1, &v), LOOM_OK);
    assert_true(v == INT64_MIN);
    assert_int_equal(loom_store_incr(s, "min", -1, &v), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "min", 0, &v), LOOM_OK);
    assert_true(v == INT64_MIN);
    assert_int_equal(loom_store_incr(s, "min2", INT64_MIN, &v), LOOM_OK);
    assert_true(v == INT64_MIN);
    loom__store_close(s);
}

/* Raw text through the adapter: the same cases as the memory store's. */
static void test_incr_raw_text(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("incrraw");
    const loom_store_ops *ops = s->ops;
    struct {
        const char *text;
        bool ok;
        int64_t want;
    } cases[] = {
        {"2.50e1", true, 26},
        {"  7 \n", true, 8},
        {"-0", true, 1},
        {"0", true, 1},
        {"1E2", true, 101},
        {"100.000", true, 101},
        {"12e+0", true, 13},
        {"-9223372036854775808", true, -9223372036854775807LL},
        {"9223372036854775806", true, INT64_MAX},
        {"0.00000000000000000000000000000000000000001e41", true, 2},
        {"1000000000000000000000e-21", true, 2},
        {"9223372036854775808", false, 0},
        {"-9223372036854775809", false, 0},
        {"1e19", false, 0},
        {"1e400", false, 0},
        {"1e-400", false, 0},
        {"1.5", false, 0},
        {"01", false, 0},
        {"+1", false, 0},
        {"1.", false, 0},
        {".5", false, 0},
        {"1e", false, 0},
        {"1e+", false, 0},
        {"0x10", false, 0},
        {"1 2", false, 0},
        {"-", false, 0},
        {"", false, 0},
        {"inf", false, 0},
        {"NaN", false, 0},
        {"1.2.3", false, 0},
        {"123456789012345678901234567890", false, 0},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(cases); i++) {
        assert_int_equal(ops->set(s->self, "x", cases[i].text, 0, false), LOOM_OK);
        int64_t v = 0;
        loom_err err = loom_store_incr(s, "x", 1, &v);
        if (cases[i].ok) {
            if (err != LOOM_OK || v != cases[i].want)
                fail_msg("%s: err %d v %" PRId64, cases[i].text, err, v);
        } else if (err != LOOM_EINVAL) {
            fail_msg("%s: err %d, want EINVAL", cases[i].text, err);
        }
    }
    /* The fallback writes plain digits, which INCRBY then takes natively. */
    assert_int_equal(ops->set(s->self, "y", "2e1", 0, false), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "y", 1, NULL), LOOM_OK);
    char *raw = raw_get(&shared, 0, "test:incrraw:y");
    assert_string_equal(raw, "21");
    free(raw);
    loom__store_close(s);
}

static void test_ttl(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("ttl");
    cJSON *v = t_json("{\"x\":1}");
    int64_t t0 = loom__mono_ms();
    assert_int_equal(loom_store_set(s, "short", v, 100), LOOM_OK);
    assert_int_equal(loom_store_set(s, "long", v, 60000), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 100), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 0), LOOM_OK);
    assert_int_equal(loom_store_add(s, "added", v, 100), LOOM_OK);
    assert_int_equal(loom_store_set(s, "gone", v, 100), LOOM_OK);
    int64_t t1 = loom__mono_ms();
    set_text(s, "counter", "10", 100);
    assert_int_equal(loom_store_incr(s, "counter", 1, NULL), LOOM_OK); /* keeps the TTL */
    /* The fallback path keeps it too. */
    assert_int_equal(s->ops->set(s->self, "counter2", "1e1", 100, false), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "counter2", 1, NULL), LOOM_OK);
    bool counters_live = loom__mono_ms() - t1 < 100;
    if (counters_live)
        assert_value(s, "counter2", "11");
    if (loom__mono_ms() - t0 < 90)
        assert_value(s, "short", "{\"x\":1}");
    sleep_ms(150);

    assert_absent(s, "short");
    if (counters_live) {
        assert_absent(s, "counter");
        assert_absent(s, "counter2");
    }
    assert_value(s, "long", "{\"x\":1}");
    assert_value(s, "cleared", "{\"x\":1}");
    assert_int_equal(loom_store_add(s, "added", v, 0), LOOM_OK);
    assert_int_equal(loom_store_delete(s, "gone"), LOOM_ENOTFOUND);
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "short", 3, &n), LOOM_OK);
    assert_int_equal(n, 3);
    sleep_ms(120);
    assert_value(s, "short", "3");
    assert_value(s, "added", "{\"x\":1}");
    /* Redis holds the TTL: PTTL of a key set with 60 s. */
    redisContext *c = raw_connect(&shared);
    redisReply *r = raw_cmd(c, "PTTL %s", "test:ttl:long");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 50000 && r->integer <= 60000);
    freeReplyObject(r);
    redisFree(c);
    cJSON_Delete(v);
    loom__store_close(s);
}

/* --- cas ------------------------------------------------------------------ */

static loom_err cas_text(loom_store *s, const char *key, const char *expected, const char *value,
                         uint32_t ttl)
{
    cJSON *e = expected ? t_json(expected) : NULL;
    cJSON *v = value ? t_json(value) : NULL;
    loom_err err = loom_store_cas(s, key, e, v, ttl);
    cJSON_Delete(e);
    cJSON_Delete(v);
    return err;
}

static void test_cas(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("cas");
    /* expected NULL: only when absent. */
    assert_int_equal(cas_text(s, "k", NULL, "{\"v\":1}", 0), LOOM_OK);
    assert_value(s, "k", "{\"v\":1}");
    assert_int_equal(cas_text(s, "k", NULL, "{\"v\":2}", 0), LOOM_EEXIST);
    assert_value(s, "k", "{\"v\":1}");
    /* A match swaps, a mismatch changes nothing. */
    assert_int_equal(cas_text(s, "k", "{\"v\":0}", "{\"v\":2}", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "k", "{\"v\":1}", "{\"v\":2}", 0), LOOM_OK);
    assert_value(s, "k", "{\"v\":2}");
    assert_int_equal(cas_text(s, "k", "{\"v\":1}", "{\"v\":3}", 0), LOOM_EEXIST);
    assert_value(s, "k", "{\"v\":2}");
    /* Both sides are normalized: spacing does not matter, member order does. */
    assert_int_equal(cas_text(s, "k", " { \"v\" : 2 } ", "[1, 2]", 0), LOOM_OK);
    assert_value(s, "k", "[1,2]");
    set_text(s, "o", "{\"a\":1,\"b\":2}", 0);
    assert_int_equal(cas_text(s, "o", "{\"b\":2,\"a\":1}", "0", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "o", "{\"a\":1,\"b\":2}", "0", 0), LOOM_OK);
    /* An expected value against an absent key differs. */
    assert_int_equal(cas_text(s, "none", "1", "2", 0), LOOM_EEXIST);
    assert_absent(s, "none");
    /* value NULL deletes. */
    assert_int_equal(cas_text(s, "k", "[1,3]", NULL, 0), LOOM_EEXIST);
    assert_value(s, "k", "[1,2]");
    assert_int_equal(cas_text(s, "k", "[1,2]", NULL, 0), LOOM_OK);
    assert_absent(s, "k");
    assert_int_equal(cas_text(s, "k", NULL, NULL, 0), LOOM_OK); /* absent stays absent */
    assert_absent(s, "k");
    /* Counters written by incr compare with cJSON numbers. */
    assert_int_equal(loom_store_incr(s, "n", 123456789012345LL, NULL), LOOM_OK);
    assert_int_equal(cas_text(s, "n", "123456789012345", "-5", 0), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    assert_int_equal(cas_text(s, "n", "-4", "\"s\"", 0), LOOM_OK);
    assert_value(s, "n", "\"s\"");

    /* TTL: set with the swap; 0 clears it. */
    assert_int_equal(cas_text(s, "t", NULL, "1", 80), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", NULL, "1", 80), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", "1", "2", 0), LOOM_OK);
    sleep_ms(130);
    assert_absent(s, "t");
    assert_value(s, "t2", "2");
    /* An expired key is absent for cas. */
    assert_int_equal(cas_text(s, "t", "1", "3", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "t", NULL, "3", 0), LOOM_OK);
    assert_value(s, "t", "3");

    /* Arguments. */
    cJSON *v = t_json("1");
    assert_int_equal(loom_store_cas(NULL, "k", NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, NULL, NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "", NULL, v, 0), LOOM_EINVAL);
    cJSON_Delete(v);
    loom__store_close(s);
}

/* A JSON document updated by read-modify-cas loops from several threads:
 * no update is lost. */
#define CAS_THREADS 4
#define CAS_ROUNDS 150

static void *cas_worker(void *arg)
{
    loom_store *s = arg;
    intptr_t failures = 0;
    for (int i = 0; i < CAS_ROUNDS; i++) {
        for (;;) {
            cJSON *cur = NULL;
            if (loom_store_get(s, "doc", &cur) != LOOM_OK) {
                failures++;
                break;
            }
            cJSON *next = cJSON_Duplicate(cur, true);
            cJSON *n = cJSON_GetObjectItem(next, "n");
            cJSON_SetNumberValue(n, n->valuedouble + 1);
            loom_err err = loom_store_cas(s, "doc", cur, next, 0);
            cJSON_Delete(cur);
            cJSON_Delete(next);
            if (err == LOOM_OK)
                break;
            if (err != LOOM_EEXIST) {
                failures++;
                break;
            }
        }
    }
    return (void *)failures;
}

static void test_cas_concurrent(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("casconc");
    set_text(s, "doc", "{\"n\":0,\"name\":\"x\"}", 0);
    pthread_t th[CAS_THREADS];
    for (int i = 0; i < CAS_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, cas_worker, s), 0);
    for (int i = 0; i < CAS_THREADS; i++) {
        void *ret = NULL;
        pthread_join(th[i], &ret);
        assert_int_equal((intptr_t)ret, 0);
    }
    char want[64];
    snprintf(want, sizeof want, "{\"n\":%d,\"name\":\"x\"}", CAS_THREADS * CAS_ROUNDS);
    assert_value(s, "doc", want);
    loom__store_close(s);
}

/* --- prefixes, databases, passwords --------------------------------------- */

static void test_prefix_isolation(void **state)
{
    (void)state;
    loom_store *a = open_with(t_redis_url(&shared), "{\"prefix\":\"app-a/\"}");
    loom_store *b = open_with(t_redis_url(&shared), "{\"prefix\":\"app-b/\"}");
    loom_store *none = open_with(t_redis_url(&shared), "{\"prefix\":\"\"}");
    loom_store *dflt = open_with(t_redis_url(&shared), NULL);
    set_text(a, "k", "\"a\"", 0);
    set_text(b, "k", "\"b\"", 0);
    assert_value(a, "k", "\"a\"");
    assert_value(b, "k", "\"b\"");
    assert_int_equal(loom_store_incr(a, "n", 1, NULL), LOOM_OK);
    assert_absent(b, "n");
    assert_int_equal(loom_store_delete(b, "k"), LOOM_OK);
    assert_value(a, "k", "\"a\"");
    /* The prefix is a plain string prepended to the key. */
    assert_value(none, "app-a/k", "\"a\"");
    assert_absent(none, "app-b/k");
    set_text(dflt, "d", "1", 0);
    assert_value(none, "loom:d", "1");
    assert_int_equal(loom_store_delete(dflt, "d"), LOOM_OK);
    loom__store_close(a);
    loom__store_close(b);
    loom__store_close(none);
    loom__store_close(dflt);
}

static void test_db_selection(void **state)
{
    (void)state;
    char url[96];
    snprintf(url, sizeof url, "%s/3", t_redis_url(&shared));
    loom_store *d3 = open_with(url, "{\"prefix\":\"dbsel:\"}");
    snprintf(url, sizeof url, "%s/", t_redis_url(&shared)); /* "/" alone: 0 */
    loom_store *d0 = open_with(url, "{\"prefix\":\"dbsel:\"}");
    set_text(d3, "k", "3", 0);
    assert_absent(d0, "k");
    set_text(d0, "k", "0", 0);
    assert_value(d3, "k", "3");
    char *raw = raw_get(&shared, 3, "dbsel:k");
    assert_string_equal(raw, "3");
    free(raw);
    raw = raw_get(&shared, 0, "dbsel:k");
    assert_string_equal(raw, "0");
    free(raw);
    loom__store_close(d3);
    loom__store_close(d0);
    /* A database the server does not have is refused at open. */
    snprintf(url, sizeof url, "%s/99", t_redis_url(&shared));
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
}

static void test_password(void **state)
{
    (void)state;
    t_redis srv;
    const char *args[] = {"--requirepass", "p@ss:w/rd%", NULL};
    t_redis_start_with(&srv, args);
    char url[160];

    /* Percent-encoded in the URL. */
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d/2", srv.port);
    loom_store *s = open_with(url, NULL);
    set_text(s, "k", "1", 0);
    assert_value(s, "k", "1");
    loom__store_close(s);
    /* With the default ACL user's name. */
    snprintf(url, sizeof url, "redis://default:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d/2", srv.port);
    s = open_with(url, NULL);
    assert_value(s, "k", "1");
    loom__store_close(s);
    /* From the options; the URL's password wins over the option. */
    s = open_with(t_redis_url(&srv), "{\"password\":\"p@ss:w/rd%\"}");
    assert_absent(s, "k"); /* database 0 */
    loom__store_close(s);
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d", srv.port);
    s = open_with(url, "{\"password\":\"wrong\"}");
    loom__store_close(s);

    /* Missing or wrong: refused at open. */
    assert_int_equal(try_open(t_redis_url(&srv), NULL), LOOM_ECONFIG);
    assert_int_equal(try_open(t_redis_url(&srv), "{\"password\":\"nope\"}"), LOOM_ECONFIG);
    snprintf(url, sizeof url, "redis://:nope@127.0.0.1:%d", srv.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
    snprintf(url, sizeof url, "redis://someone:p%%40ss%%3Aw%%2Frd%%25@127.0.0.1:%d", srv.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
    t_redis_stop(&srv);

    /* A password for a server without one is refused too. */
    snprintf(url, sizeof url, "redis://:secret@127.0.0.1:%d", shared.port);
    assert_int_equal(try_open(url, NULL), LOOM_ECONFIG);
}

/* --- concurrency ------------------------------------------------------------ */

#define THREADS 8
#define INCRS 2000

typedef struct worker {
    loom_store *store;
    int errors;
    int adds_ok;
    int id;
} worker;

static void *incr_worker(void *arg)
{
    worker *w = arg;
    cJSON *num = cJSON_CreateNumber(w->id);
    for (int i = 0; i < INCRS; i++) {
        if (loom_store_incr(w->store, "total", 1, NULL) != LOOM_OK)
            w->errors++;
        if (i % 10 == 0) {
            char key[32];
            snprintf(key, sizeof key, "once:%d", i);
            loom_err err = loom_store_add(w->store, key, num, 0);
            if (err == LOOM_OK)
                w->adds_ok++;
            else if (err != LOOM_EEXIST)
                w->errors++;
        }
    }
    cJSON_Delete(num);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    /* Two handles: more threads than one pool has connections. */
    loom_store *a = open_prefixed("threads");
    loom_store *b = open_prefixed("threads");
    pthread_t th[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.store = i % 2 ? a : b, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, incr_worker, &w[i]), 0);
    }
    int adds = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].errors, 0);
        adds += w[i].adds_ok;
    }
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "total", 0, &v), LOOM_OK);
    assert_int_equal(v, (int64_t)THREADS * INCRS);
    assert_int_equal(adds, INCRS / 10); /* each key added exactly once */
    loom__store_close(a);
    loom__store_close(b);
}

/* --- Redis away --------------------------------------------------------------- */

/* Runs op kinds against s and checks each fails with LOOM_EUNAVAILABLE in
 * less than max_ms. */
static void assert_all_unavailable(loom_store *s, int64_t max_ms)
{
    cJSON *v = t_json("{\"x\":1}");
    for (int kind = 0; kind < 6; kind++) {
        int64_t t0 = loom__mono_ms();
        cJSON *out = NULL;
        loom_err err = LOOM_OK;
        switch (kind) {
        case 0:
            err = loom_store_get(s, "k", &out);
            break;
        case 1:
            err = loom_store_set(s, "k", v, 0);
            break;
        case 2:
            err = loom_store_add(s, "k2", v, 0);
            break;
        case 3:
            err = loom_store_delete(s, "k");
            break;
        case 4:
            err = loom_store_incr(s, "n", 1, NULL);
            break;
        case 5:
            err = loom_store_cas(s, "k", NULL, v, 0);
            break;
        }
        int64_t took = loom__mono_ms() - t0;
        assert_null(out);
        if (err != LOOM_EUNAVAILABLE || took > max_ms)
            fail_msg("operation %d: %s after %" PRId64 " ms (limit %" PRId64 ")", kind,
                     loom_strerror(err), took, max_ms);
    }
    cJSON_Delete(v);
}

/* Retries a set until it works; returns how long that took. */
static int64_t wait_back(loom_store *s, int64_t limit_ms)
{
    cJSON *v = t_json("\"back\"");
    int64_t t0 = loom__mono_ms();
    loom_err err;
    while ((err = loom_store_set(s, "k", v, 0)) != LOOM_OK) {
        if (err != LOOM_EUNAVAILABLE)
            fail_msg("while waiting for redis: %s", loom_strerror(err));
        if (loom__mono_ms() - t0 > limit_ms)
            fail_msg("redis store did not recover within %" PRId64 " ms", limit_ms);
        sleep_ms(10);
    }
    cJSON_Delete(v);
    assert_value(s, "k", "\"back\"");
    return loom__mono_ms() - t0;
}

static void test_killed_and_restarted(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    const int timeout = 500;
    loom_store *s = open_with(t_redis_url(&srv), "{\"timeout_ms\":500}");
    /* Several pooled connections, all of which die with the server. */
    loom_store *s2 = open_with(t_redis_url(&srv), "{\"timeout_ms\":\"500\"}");
    set_text(s, "k", "1", 0);
    assert_value(s2, "k", "1");

    t_redis_kill(&srv);
    assert_all_unavailable(s, timeout + SLACK_MS);
    assert_all_unavailable(s2, timeout + SLACK_MS);
    /* Still down a while later (the backoff has grown), still prompt. */
    sleep_ms(300);
    assert_all_unavailable(s, timeout + SLACK_MS);

    t_redis_restart(&srv);
    /* The backoff is at most 1 s: back well within 2 s. */
    assert_true(wait_back(s, 2000) < 2000);
    wait_back(s2, 2000);
    /* Without persistence the restarted server is empty; the store works. */
    assert_int_equal(loom_store_incr(s, "n", 2, NULL), LOOM_OK);
    assert_value(s2, "n", "2");

    /* Killed again while idle: the stale connections are found out. */
    t_redis_kill(&srv);
    t_redis_restart(&srv);
    wait_back(s, 2000);
    wait_back(s2, 2000);
    loom__store_close(s);
    loom__store_close(s2);
    t_redis_stop(&srv);
}

/* The server takes connections but never answers: every operation gives up
 * after timeout_ms, including those waiting for a pooled connection. */
#define STUCK_THREADS 12

typedef struct stuck {
    loom_store *s;
    loom_err err;
    int64_t took;
} stuck;

static void *stuck_worker(void *arg)
{
    stuck *st = arg;
    cJSON *out = NULL;
    int64_t t0 = loom__mono_ms();
    st->err = loom_store_get(st->s, "k", &out);
    st->took = loom__mono_ms() - t0;
    cJSON_Delete(out);
    return NULL;
}

static void test_timeout(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    const int timeout = 300;
    loom_store *s = open_with(t_redis_url(&srv), "{\"timeout_ms\":300}");
    set_text(s, "k", "1", 0);

    t_redis_pause(&srv);
    int64_t t0 = loom__mono_ms();
    cJSON *out = NULL;
    assert_int_equal(loom_store_get(s, "k", &out), LOOM_EUNAVAILABLE);
    int64_t took = loom__mono_ms() - t0;
    assert_true(took >= timeout - 20 && took <= timeout + SLACK_MS);

    /* More callers than connections: all bounded. */
    pthread_t th[STUCK_THREADS];
    stuck st[STUCK_THREADS];
    for (int i = 0; i < STUCK_THREADS; i++) {
        st[i] = (stuck){.s = s};
        assert_int_equal(pthread_create(&th[i], NULL, stuck_worker, &st[i]), 0);
    }
    for (int i = 0; i < STUCK_THREADS; i++) {
        pthread_join(th[i], NULL);
        if (st[i].err != LOOM_EUNAVAILABLE || st[i].took > timeout + SLACK_MS)
            fail_msg("caller %d: %s after %" PRId64 " ms", i, loom_strerror(st[i].err), st[i].took);
    }

    t_redis_resume(&srv);
    wait_back(s, 3000);
    loom__store_close(s);
    t_redis_stop(&srv);
}

/* A fake server that accepts connections and closes them at once: each
 * accepted connection is counted. */
typedef struct closer {
    int fd;
    int port;
    int accepted;
    int stop;
    pthread_t thread;
} closer;

static void *closer_main(void *arg)
{
    closer *c = arg;
    while (!__atomic_load_n(&c->stop, __ATOMIC_SEQ_CST)) {
        int fd = accept(c->fd, NULL, NULL);
        if (fd < 0)
            continue;
        __atomic_add_fetch(&c->accepted, 1, __ATOMIC_SEQ_CST);
        close(fd);
    }
    return NULL;
}

static void closer_start(closer *c)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(c->fd, 64), 0);
    assert_int_equal(getsockname(c->fd, (struct sockaddr *)&sa, &len), 0);
    c->port = ntohs(sa.sin_port);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); /* accept wakes up */
    assert_int_equal(pthread_create(&c->thread, NULL, closer_main, c), 0);
}

/* Stops the fake server; returns how many connections it accepted. */
static int closer_stop(closer *c)
{
    __atomic_store_n(&c->stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(c->thread, NULL);
    close(c->fd);
    return __atomic_load_n(&c->accepted, __ATOMIC_SEQ_CST);
}

/* A down server is not hammered: after a failure, new connections are
 * tried at a growing interval while operations fail at once. */
static void test_backoff(void **state)
{
    (void)state;
    closer c;
    closer_start(&c);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", c.port);
    loom_store *s = open_with(url, NULL); /* the PING fails: lazily */
    int ops = 0, unavailable = 0;
    int64_t t0 = loom__mono_ms();
    while (loom__mono_ms() - t0 < 700) {
        cJSON *out = NULL;
        if (loom_store_get(s, "k", &out) == LOOM_EUNAVAILABLE)
            unavailable++;
        cJSON_Delete(out);
        ops++;
        sleep_ms(1);
    }
    int accepted = closer_stop(&c);
    loom__store_close(s);
    assert_int_equal(unavailable, ops);
    /* 50, 100, 200, 400 ms apart (plus the one at open): a handful, while
     * the loop ran hundreds of operations. */
    if (accepted > 8 || ops < 100)
        fail_msg("%d connections for %d operations", accepted, ops);
}

/* Writing a large value to a server that hung up raises SIGPIPE, which
 * this process does not ignore: the store absorbs it and leaves the
 * thread's signal mask as it was. */
static void test_sigpipe(void **state)
{
    (void)state;
    closer c;
    closer_start(&c);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", c.port);
    loom_store *s = open_with(url, NULL);
    size_t n = 16u << 20;
    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, '7', n);
    text[n] = '\0';
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s->ops->set(s->self, "k", text, 0, false), LOOM_EUNAVAILABLE);
        sleep_ms(60); /* past the backoff: the next one connects again */
    }
    free(text);
    sigset_t mask, pending;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    assert_false(sigismember(&mask, SIGPIPE));
    sigpending(&pending);
    assert_false(sigismember(&pending, SIGPIPE));
    closer_stop(&c);
    loom__store_close(s);
}

/* Opening while Redis is down works; operations fail until it is up. */
static void test_open_while_down(void **state)
{
    (void)state;
    t_redis srv;
    t_redis_start(&srv);
    t_redis_kill(&srv);
    int64_t t0 = loom__mono_ms();
    loom_store *s = open_with(t_redis_url(&srv), "{\"timeout_ms\":400}");
    assert_true(loom__mono_ms() - t0 < 400 + SLACK_MS);
    assert_all_unavailable(s, 400 + SLACK_MS);
    t_redis_restart(&srv);
    wait_back(s, 2000);
    loom__store_close(s);
    t_redis_stop(&srv);
}

/* --- sockets, sizes, foreign data ------------------------------------------------ */

/* Every socket of this process connected to port has TCP_NODELAY; returns
 * how many there are. */
static int nodelay_sockets(int port)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] == '.' || fd == dirfd(d))
            continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
            continue;
        int p = ss.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : -1;
        if (p != port)
            continue;
        int on = 0;
        socklen_t olen = sizeof on;
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen), 0);
        if (!on)
            fail_msg("fd %d to port %d without TCP_NODELAY", fd, port);
        n++;
    }
    closedir(d);
    return n;
}

static void test_nodelay_and_ipv6(void **state)
{
    (void)state;
    t_redis srv;
    const char *args[] = {"--bind", "127.0.0.1 ::1", NULL};
    t_redis_start_with(&srv, args);
    char url[64];
    snprintf(url, sizeof url, "redis://[::1]:%d", srv.port);
    loom_store *v6 = open_with(url, NULL);
    loom_store *v4 = open_with(t_redis_url(&srv), NULL);
    snprintf(url, sizeof url, "redis://localhost:%d/1", srv.port);
    loom_store *named = open_with(url, NULL);
    set_text(v6, "k", "6", 0);
    assert_value(v4, "k", "6");
    assert_absent(named, "k");
    assert_int_equal(nodelay_sockets(srv.port), 3);
    loom__store_close(v6);
    loom__store_close(v4);
    loom__store_close(named);
    assert_int_equal(nodelay_sockets(srv.port), 0); /* closed with the stores */
    t_redis_stop(&srv);
}

/* Text of 514 MiB without 514 MiB of memory: one 2 MiB chunk of 'a'
 * mapped again and again, then a page with the NUL. */
#define CHUNK ((size_t)2 << 20)
#define CHUNKS 257

static char *huge_text(size_t *map_len)
{
    int fd = memfd_create("loom-huge", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)CHUNK), 0);
    char *w = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(w != MAP_FAILED);
    memset(w, 'a', CHUNK);
    munmap(w, CHUNK);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    *map_len = CHUNK * CHUNKS + page;
    char *base =
        mmap(NULL, *map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(base != MAP_FAILED);
    for (size_t i = 0; i < CHUNKS; i++)
        assert_true(mmap(base + i * CHUNK, CHUNK, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) !=
                    MAP_FAILED);
    char *tail = mmap(base + CHUNKS * CHUNK, page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    assert_true(tail != MAP_FAILED);
    tail[0] = '\0';
    close(fd);
    return base;
}

static void test_big_values(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("big");
    size_t n = 4u << 20;
    char *str = malloc(n + 1);
    assert_non_null(str);
    for (size_t i = 0; i < n; i++)
        str[i] = (char)('a' + i % 26);
    str[n] = '\0';
    cJSON *v = cJSON_CreateString(str);
    assert_int_equal(loom_store_set(s, "str", v, 0), LOOM_OK);
    cJSON_Delete(v);
    cJSON *got = NULL;
    assert_int_equal(loom_store_get(s, "str", &got), LOOM_OK);
    assert_true(cJSON_IsString(got));
    assert_int_equal(strlen(got->valuestring), n);
    assert_memory_equal(got->valuestring, str, n);
    cJSON_Delete(got);
    free(str);

    /* Over Redis's 512 MiB: refused before anything is sent. */
    size_t map_len = 0;
    char *huge = huge_text(&map_len);
    assert_int_equal(s->ops->set(s->self, "huge", huge, 0, false), LOOM_ETOOBIG);
    assert_int_equal(s->ops->set(s->self, "huge", huge, 0, true), LOOM_ETOOBIG);
    assert_int_equal(s->ops->cas(s->self, "huge", NULL, huge, 0), LOOM_ETOOBIG);
    munmap(huge, map_len);
    assert_absent(s, "huge");
    /* The store still works. */
    set_text(s, "after", "1", 0);
    assert_value(s, "after", "1");
    loom__store_close(s);
}

/* Values that other clients put under the prefix. */
static void test_foreign_values(void **state)
{
    (void)state;
    loom_store *s = open_prefixed("foreign");
    redisContext *c = raw_connect(&shared);
    freeReplyObject(raw_cmd(c, "RPUSH %s a b", "test:foreign:list"));
    freeReplyObject(raw_cmd(c, "SET %s %b", "test:foreign:nul", "1\0junk", (size_t)6));
    freeReplyObject(raw_cmd(c, "SET %s %s", "test:foreign:text", "not json"));
    redisFree(c);

    cJSON *out = NULL;
    assert_int_equal(loom_store_get(s, "list", &out), LOOM_EPARSE);
    assert_int_equal(loom_store_get(s, "nul", &out), LOOM_EPARSE);
    assert_int_equal(loom_store_get(s, "text", &out), LOOM_EPARSE);
    assert_null(out);
    assert_int_equal(loom_store_incr(s, "list", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "nul", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "text", 1, NULL), LOOM_EINVAL);
    cJSON *v = t_json("1");
    assert_int_equal(loom_store_add(s, "list", v, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_cas(s, "list", NULL, v, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_cas(s, "list", v, v, 0), LOOM_EEXIST);
    /* set replaces anything; delete removes anything. */
    assert_int_equal(loom_store_set(s, "list", v, 0), LOOM_OK);
    assert_value(s, "list", "1");
    assert_int_equal(loom_store_delete(s, "nul"), LOOM_OK);
    assert_absent(s, "nul");
    cJSON_Delete(v);
    loom__store_close(s);
}

/* --- configuration ------------------------------------------------------------------ */

static void test_bad_urls_and_options(void **state)
{
    (void)state;
    char url[128];
    const char *bad_urls[] = {
        "redis:",
        "redis:/",
        "redis:127.0.0.1:6379",
        "redis://",
        "redis://:6379",
        "redis:///0",
        "redis://host:",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:12x",
        "redis://host:-1",
        "redis://host/x",
        "redis://host/-1",
        "redis://host/1/2",
        "redis://host/99999999999",
        "redis://host?db=1",
        "redis://host#frag",
        "redis://ho st",
        "redis://host\n",
        "redis://::1:6379",
        "redis://[::1",
        "redis://[]:6379",
        "redis://[::1]x",
        "redis://user@host",
        "redis://:pa%zzss@host",
        "redis://:pa%0@host",
        "redis://:pa%00ss@host",
        "redis://h\xc3\xa9st",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad_urls); i++) {
        loom_err err = try_open(bad_urls[i], NULL);
        if (err != LOOM_ECONFIG)
            fail_msg("%s: %s, want ECONFIG", bad_urls[i], loom_strerror(err));
    }
    char long_host[300] = "redis://";
    memset(long_host + 8, 'h', 260);
    long_host[268] = '\0';
    assert_int_equal(try_open(long_host, NULL), LOOM_ECONFIG);

    const char *bad_options[] = {
        "[]",
        "\"x\"",
        "{\"prefix\":1}",
        "{\"prefix\":[]}",
        "{\"password\":5}",
        "{\"timeout_ms\":0}",
        "{\"timeout_ms\":-5}",
        "{\"timeout_ms\":1.5}",
        "{\"timeout_ms\":600001}",
        "{\"timeout_ms\":\"12ms\"}",
        "{\"timeout_ms\":\"\"}",
        "{\"timeout_ms\":true}",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad_options); i++) {
        loom_err err = try_open(t_redis_url(&shared), bad_options[i]);
        if (err != LOOM_ECONFIG)
            fail_msg("%s: %s, want ECONFIG", bad_options[i], loom_strerror(err));
    }
    char opts[400] = "{\"prefix\":\"";
    memset(opts + 11, 'p', 257);
    strcpy(opts + 11 + 257, "\"}");
    assert_int_equal(try_open(t_redis_url(&shared), opts), LOOM_ECONFIG);

    /* Good ones: scheme case, nulls, other keys, the longest prefix. */
    snprintf(url, sizeof url, "REDIS://127.0.0.1:%d/0", shared.port);
    assert_int_equal(try_open(url, "{\"url\":\"x\",\"prefix\":null,\"password\":null}"), LOOM_OK);
    opts[11 + 256] = '\0';
    strcat(opts, "\"}");
    assert_int_equal(try_open(t_redis_url(&shared), opts), LOOM_OK);
    /* TLS is not built in. */
    assert_int_equal(try_open("rediss://127.0.0.1:6380", NULL), LOOM_EUNSUPPORTED);
}

static int group_setup(void **state)
{
    (void)state;
    t_redis_start(&shared);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    t_redis_stop(&shared);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_add_delete),
        cmocka_unit_test(test_incr),
        cmocka_unit_test(test_incr_raw_text),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_cas),
        cmocka_unit_test(test_cas_concurrent),
        cmocka_unit_test(test_prefix_isolation),
        cmocka_unit_test(test_db_selection),
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_killed_and_restarted),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_sigpipe),
        cmocka_unit_test(test_open_while_down),
        cmocka_unit_test(test_nodelay_and_ipv6),
        cmocka_unit_test(test_big_values),
        cmocka_unit_test(test_foreign_values),
        cmocka_unit_test(test_bad_urls_and_options),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
