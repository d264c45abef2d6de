/* The state store: public API, scheme registry, and the memory store. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/support.h"

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static loom_store *open_store(const char *url)
{
    loom_store *s = NULL;
    assert_int_equal(loom__store_open(&s, url, NULL), LOOM_OK);
    assert_non_null(s);
    return s;
}

/* Stores JSON text for key, parsed from text. */
static void set_text(loom_store *s, const char *key, const char *text, uint32_t ttl)
{
    cJSON *v = t_json(text);
    assert_int_equal(loom_store_set(s, key, v, ttl), LOOM_OK);
    cJSON_Delete(v);
}

static void assert_value(loom_store *s, const char *key, const char *text)
{
    cJSON *v = NULL;
    assert_int_equal(loom_store_get(s, key, &v), LOOM_OK);
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

/* ---------------------------------------------------------------------- */

static void test_set_get(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
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
    /* Overwrite replaces; the stored value is a copy. */
    cJSON *v = t_json("{\"n\":1}");
    assert_int_equal(loom_store_set(s, "k0", v, 0), LOOM_OK);
    cJSON_ReplaceItemInObject(v, "n", cJSON_CreateNumber(2));
    assert_value(s, "k0", "{\"n\":1}");
    cJSON_Delete(v);
    /* Keys are exact byte strings. */
    set_text(s, "K0", "\"upper\"", 0);
    assert_value(s, "k0", "{\"n\":1}");
    assert_value(s, "K0", "\"upper\"");
    assert_absent(s, "k00");
    assert_absent(s, "never");
    loom__store_close(s);
}

static void test_add_delete(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
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
    /* set overwrites what add created */
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_OK);
    assert_value(s, "k", "1");
    cJSON_Delete(one);
    cJSON_Delete(two);
    loom__store_close(s);
}

static void test_incr(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "c", 5, &v), LOOM_OK);
    assert_int_equal(v, 5);
    assert_int_equal(loom_store_incr(s, "c", -7, &v), LOOM_OK);
    assert_int_equal(v, -2);
    assert_int_equal(loom_store_incr(s, "c", 1, NULL), LOOM_OK);
    assert_value(s, "c", "-1");

    /* Values set through the API, written by cJSON in its own forms. */
    set_text(s, "n", "41", 0);
    assert_int_equal(loom_store_incr(s, "n", 1, &v), LOOM_OK);
    assert_int_equal(v, 42);
    cJSON *big = cJSON_CreateNumber(1e15); /* cJSON prints "1e+15" */
    assert_int_equal(loom_store_set(s, "big", big, 0), LOOM_OK);
    cJSON_Delete(big);
    assert_int_equal(loom_store_incr(s, "big", 1, &v), LOOM_OK);
    assert_int_equal(v, 1000000000000001LL);
    set_text(s, "whole", "3.0", 0);
    assert_int_equal(loom_store_incr(s, "whole", 1, &v), LOOM_OK);
    assert_int_equal(v, 4);

    /* Not integral numbers: refused, value untouched. */
    const char *bad[] = {"2.5", "\"3\"", "{\"a\":1}", "[1]", "true", "null", "1e-1"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        set_text(s, "bad", bad[i], 0);
        v = 99;
        assert_int_equal(loom_store_incr(s, "bad", 1, &v), LOOM_EINVAL);
        assert_int_equal(v, 99);
        assert_value(s, "bad", bad[i]);
    }

    /* Overflow both ways. */
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
    loom__store_close(s);
}

/* The memory store's number parser, fed raw text through the adapter. */
static void test_incr_raw_text(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    const loom_store_ops *ops = s->ops;
    struct {
        const char *text;
        bool ok;
        int64_t want; /* after +1 */
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
    loom__store_close(s);
}

static void test_ttl(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    cJSON *v = t_json("{\"x\":1}");
    int64_t t0 = loom__mono_ms();
    assert_int_equal(loom_store_set(s, "short", v, 30), LOOM_OK);
    assert_int_equal(loom_store_set(s, "long", v, 60000), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 30), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 0), LOOM_OK); /* drops the TTL */
    assert_int_equal(loom_store_add(s, "added", v, 30), LOOM_OK);
    assert_int_equal(loom_store_set(s, "gone", v, 30), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "counter", 10, NULL), LOOM_OK);
    assert_int_equal(loom_store_set(s, "counter", v, 0), LOOM_OK);
    int64_t t1 = loom__mono_ms();
    set_text(s, "counter", "10", 30);
    assert_int_equal(loom_store_incr(s, "counter", 1, NULL), LOOM_OK); /* keeps the TTL */
    /* Only meaningful when incr ran before the 30 ms were up. */
    bool counter_live = loom__mono_ms() - t1 < 30;
    if (loom__mono_ms() - t0 < 25)
        assert_value(s, "short", "{\"x\":1}");
    sleep_ms(45);

    assert_absent(s, "short");
    if (counter_live)
        assert_absent(s, "counter");
    assert_value(s, "long", "{\"x\":1}");
    assert_value(s, "cleared", "{\"x\":1}");
    /* Expired entries are invisible to add, incr and delete. */
    assert_int_equal(loom_store_add(s, "added", v, 0), LOOM_OK);
    assert_int_equal(loom_store_delete(s, "gone"), LOOM_ENOTFOUND);
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "short", 3, &n), LOOM_OK);
    assert_int_equal(n, 3);
    /* A counter that incr created has no TTL. */
    sleep_ms(35);
    assert_value(s, "short", "3");
    assert_value(s, "added", "{\"x\":1}");
    cJSON_Delete(v);
    loom__store_close(s);
}

/* Many keys: the tables grow, and expired entries are swept when they do. */
static void test_many_keys(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    char key[32];
    cJSON *n = cJSON_CreateNumber(0);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "tmp:%d", i);
        cJSON_SetNumberValue(n, i);
        assert_int_equal(loom_store_set(s, key, n, 20), LOOM_OK);
    }
    sleep_ms(30);
    for (int i = 0; i < 50000; i++) {
        snprintf(key, sizeof key, "key:%d", i);
        cJSON_SetNumberValue(n, i);
        assert_int_equal(loom_store_set(s, key, n, 0), LOOM_OK);
    }
    for (int i = 0; i < 50000; i++) {
        snprintf(key, sizeof key, "key:%d", i);
        cJSON *v = NULL;
        assert_int_equal(loom_store_get(s, key, &v), LOOM_OK);
        assert_int_equal(v->valueint, i);
        cJSON_Delete(v);
    }
    for (int i = 0; i < 2000; i += 97) {
        snprintf(key, sizeof key, "tmp:%d", i);
        assert_absent(s, key);
    }
    for (int i = 0; i < 50000; i += 2) {
        snprintf(key, sizeof key, "key:%d", i);
        assert_int_equal(loom_store_delete(s, key), LOOM_OK);
    }
    for (int i = 0; i < 50000; i += 1000) {
        snprintf(key, sizeof key, "key:%d", i);
        assert_absent(s, key);
        snprintf(key, sizeof key, "key:%d", i + 1);
        assert_value(s, key, key + 4);
    }
    cJSON_Delete(n);
    loom__store_close(s);
}

static void test_named_shared(void **state)
{
    (void)state;
    loom_store *a = open_store("memory:shared");
    loom_store *b = open_store("memory://shared"); /* the same name */
    loom_store *c = open_store("memory:other");
    set_text(a, "k", "\"from a\"", 0);
    assert_value(b, "k", "\"from a\"");
    assert_absent(c, "k");
    assert_int_equal(loom_store_incr(b, "n", 2, NULL), LOOM_OK);
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "n", 3, &v), LOOM_OK);
    assert_int_equal(v, 5);
    /* Survives one closer... */
    loom__store_close(a);
    assert_value(b, "k", "\"from a\"");
    loom_store *d = open_store("memory:shared");
    assert_value(d, "n", "5");
    loom__store_close(b);
    assert_value(d, "n", "5");
    /* ...and is gone after the last. */
    loom__store_close(d);
    loom_store *e = open_store("memory:shared");
    assert_absent(e, "k");
    assert_absent(e, "n");
    loom__store_close(e);
    loom__store_close(c);

    /* Names are bounded. */
    char url[400] = "memory:";
    memset(url + 7, 'n', 300);
    url[307] = '\0';
    loom_store *s = (loom_store *)1;
    assert_int_equal(loom__store_open(&s, url, NULL), LOOM_ECONFIG);
    assert_null(s);
}

static void test_private(void **state)
{
    (void)state;
    loom_store *a = open_store("memory:");
    loom_store *b = open_store("memory:");
    loom_store *c = open_store("MEMORY:"); /* schemes are case-insensitive */
    set_text(a, "k", "1", 0);
    assert_absent(b, "k");
    assert_absent(c, "k");
    set_text(b, "k", "2", 0);
    assert_value(a, "k", "1");
    assert_value(b, "k", "2");
    loom__store_close(a);
    loom__store_close(b);
    loom__store_close(c);
    loom__store_close(NULL);
}

static void test_big_values(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    size_t n = 4u << 20;
    char *str = malloc(n + 1);
    assert_non_null(str);
    for (size_t i = 0; i < n; i++)
        str[i] = (char)('a' + i % 26);
    str[n] = '\0';
    cJSON *v = cJSON_CreateString(str);
    assert_int_equal(loom_store_set(s, "str", v, 0), LOOM_OK);
    cJSON_Delete(v);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < 20000; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(i));
    assert_int_equal(loom_store_set(s, "arr", arr, 0), LOOM_OK);

    cJSON *got = NULL;
    assert_int_equal(loom_store_get(s, "str", &got), LOOM_OK);
    assert_true(cJSON_IsString(got));
    assert_int_equal(strlen(got->valuestring), n);
    assert_memory_equal(got->valuestring, str, n);
    cJSON_Delete(got);
    assert_int_equal(loom_store_get(s, "arr", &got), LOOM_OK);
    assert_true(cJSON_Compare(got, arr, true));
    cJSON_Delete(got);
    cJSON_Delete(arr);
    free(str);

    /* The longest key works, one more byte does not. */
    char key[LOOM__STORE_MAX_KEY + 2];
    memset(key, 'k', sizeof key);
    key[LOOM__STORE_MAX_KEY] = '\0';
    set_text(s, key, "1", 0);
    assert_value(s, key, "1");
    loom__store_close(s);
}

/* --- compare-and-set ---------------------------------------------------- */

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
    loom_store *s = open_store("memory:");
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
    assert_int_equal(cas_text(s, "none", "1", "2", 0), LOOM_EEXIST);
    assert_absent(s, "none");
    /* value NULL deletes. */
    assert_int_equal(cas_text(s, "k", "[1,3]", NULL, 0), LOOM_EEXIST);
    assert_value(s, "k", "[1,2]");
    assert_int_equal(cas_text(s, "k", "[1,2]", NULL, 0), LOOM_OK);
    assert_absent(s, "k");
    assert_int_equal(cas_text(s, "k", NULL, NULL, 0), LOOM_OK);
    assert_absent(s, "k");
    /* Counters written by incr compare with cJSON numbers below 1e15. */
    assert_int_equal(loom_store_incr(s, "n", 123456789012345LL, NULL), LOOM_OK);
    assert_int_equal(cas_text(s, "n", "123456789012345", "-5", 0), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    assert_int_equal(cas_text(s, "n", "-4", "\"s\"", 0), LOOM_OK);
    assert_value(s, "n", "\"s\"");
    /* TTL: set with the swap; 0 clears it; an expired key is absent. */
    assert_int_equal(cas_text(s, "t", NULL, "1", 30), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", NULL, "1", 30), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", "1", "2", 0), LOOM_OK);
    sleep_ms(45);
    assert_absent(s, "t");
    assert_value(s, "t2", "2");
    assert_int_equal(cas_text(s, "t", "1", "3", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "t", NULL, "3", 0), LOOM_OK);
    assert_value(s, "t", "3");
    /* Shared by the holders of a named store. */
    loom_store *a = open_store("memory:cas"), *b = open_store("memory:cas");
    assert_int_equal(cas_text(a, "x", NULL, "1", 0), LOOM_OK);
    assert_int_equal(cas_text(b, "x", NULL, "2", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(b, "x", "1", "2", 0), LOOM_OK);
    assert_value(a, "x", "2");
    loom__store_close(a);
    loom__store_close(b);

    cJSON *v = t_json("1");
    cJSON bad = {0}; /* cJSON_Invalid */
    assert_int_equal(loom_store_cas(NULL, "k", NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, NULL, NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "", NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "k", &bad, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "k", NULL, &bad, 0), LOOM_EINVAL);
    assert_absent(s, "k");
    cJSON_Delete(v);
    loom__store_close(s);
}

/* Read-modify-cas loops from several threads on one document: none of the
 * updates is lost. */
#define CAS_THREADS 4
#define CAS_ROUNDS 2000

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
    loom_store *s = open_store("memory:");
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

/* --- concurrency -------------------------------------------------------- */

#define THREADS 8
#define OPS 10000

typedef struct worker {
    loom_store *store;
    int id;
    int adds_ok;
    int errors;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    char key[64];
    cJSON *num = cJSON_CreateNumber(0);
    for (int i = 0; i < OPS; i++) {
        loom_err err = LOOM_OK;
        cJSON *v = NULL;
        switch (i % 6) {
        case 0:
            err = loom_store_incr(w->store, "total", 1, NULL);
            break;
        case 1:
            snprintf(key, sizeof key, "mine:%d", w->id);
            err = loom_store_incr(w->store, key, 2, NULL);
            break;
        case 2:
            snprintf(key, sizeof key, "k:%d:%d", w->id, i % 100);
            cJSON_SetNumberValue(num, i);
            err = loom_store_set(w->store, key, num, (i % 12 == 2) ? 1 : 0);
            break;
        case 3:
            snprintf(key, sizeof key, "k:%d:%d", (w->id + 1) % THREADS, i % 100);
            err = loom_store_get(w->store, key, &v);
            if (err == LOOM_OK && !cJSON_IsNumber(v))
                w->errors++;
            cJSON_Delete(v);
            if (err == LOOM_ENOTFOUND)
                err = LOOM_OK;
            break;
        case 4:
            snprintf(key, sizeof key, "once:%d", i % 1200);
            cJSON_SetNumberValue(num, w->id);
            err = loom_store_add(w->store, key, num, 0);
            if (err == LOOM_OK)
                w->adds_ok++;
            else if (err == LOOM_EEXIST)
                err = LOOM_OK;
            break;
        case 5:
            snprintf(key, sizeof key, "k:%d:%d", w->id, (i + 3) % 100);
            err = loom_store_delete(w->store, key);
            if (err == LOOM_ENOTFOUND)
                err = LOOM_OK;
            break;
        }
        if (err != LOOM_OK)
            w->errors++;
    }
    cJSON_Delete(num);
    return NULL;
}

static void test_concurrency(void **state)
{
    (void)state;
    /* Two handles on one named store: half the threads use each. */
    loom_store *a = open_store("memory:concurrent");
    loom_store *b = open_store("memory:concurrent");
    pthread_t th[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.store = i % 2 ? a : b, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    int adds = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].errors, 0);
        adds += w[i].adds_ok;
    }
    int per_kind = OPS / 6 + (OPS % 6 > 0); /* ops with i % 6 == 0 */
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "total", 0, &v), LOOM_OK);
    assert_int_equal(v, (int64_t)THREADS * per_kind);
    for (int i = 0; i < THREADS; i++) {
        char key[32];
        snprintf(key, sizeof key, "mine:%d", i);
        assert_int_equal(loom_store_incr(b, key, 0, &v), LOOM_OK);
        assert_int_equal(v, 2 * (OPS / 6 + (OPS % 6 > 1)));
    }
    /* i % 6 == 4 gives i % 1200 in {4, 10, ..., 1198}: 200 distinct keys,
     * each added exactly once among all threads. */
    assert_int_equal(adds, 200);
    loom__store_close(a);
    loom__store_close(b);
}

/* --- arguments ---------------------------------------------------------- */

static void test_invalid_args(void **state)
{
    (void)state;
    loom_store *s = open_store("memory:");
    cJSON *v = t_json("1");
    cJSON *out = (cJSON *)1;
    char key[LOOM__STORE_MAX_KEY + 2];
    memset(key, 'k', sizeof key);
    key[LOOM__STORE_MAX_KEY + 1] = '\0';

    assert_int_equal(loom_store_get(NULL, "k", &out), LOOM_EINVAL);
    assert_null(out);
    assert_int_equal(loom_store_get(s, NULL, &out), LOOM_EINVAL);
    assert_int_equal(loom_store_get(s, "", &out), LOOM_EINVAL);
    assert_int_equal(loom_store_get(s, key, &out), LOOM_EINVAL);
    assert_int_equal(loom_store_get(s, "k", NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_set(NULL, "k", v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_set(s, NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_set(s, "", v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_set(s, key, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_set(s, "k", NULL, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_add(NULL, "k", v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_add(s, "", v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_add(s, "k", NULL, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_delete(NULL, "k"), LOOM_EINVAL);
    assert_int_equal(loom_store_delete(s, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_delete(s, key), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(NULL, "k", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, NULL, 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "", 1, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, key, 1, NULL), LOOM_EINVAL);
    /* Nothing was stored by the refused calls. */
    assert_absent(s, "k");

    loom_store *o = (loom_store *)1;
    assert_int_equal(loom__store_open(NULL, "memory:", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_open(&o, NULL, NULL), LOOM_EINVAL);
    assert_null(o);
    assert_int_equal(loom__store_open(&o, "", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_open(&o, "memory", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_open(&o, ":x", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_open(&o, "1abc:", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_open(&o, "rediss://localhost", NULL), LOOM_EUNSUPPORTED);
    assert_int_equal(loom__store_open(&o, "memoryx:", NULL), LOOM_EUNSUPPORTED);
    assert_null(o);
    cJSON_Delete(v);
    loom__store_close(s);
}

/* --- a custom adapter --------------------------------------------------- */

typedef struct fake {
    char url[64];
    const cJSON *options;
    char *last_json;
    char last_key[64];
    uint32_t last_ttl;
    bool last_if_absent;
    int *closes;
} fake;

static int fake_closes;

static loom_err fake_open(void **self, const char *url, const cJSON *options)
{
    if (strstr(url, "refuse"))
        return LOOM_ECONFIG;
    fake *f = calloc(1, sizeof *f);
    if (!f)
        return LOOM_ENOMEM;
    loom__strlcpy(f->url, url, sizeof f->url);
    f->options = options;
    f->closes = &fake_closes;
    *self = f;
    return LOOM_OK;
}

/* Answers by key, to exercise the core's handling of what stores return. */
static loom_err fake_get(void *self, const char *key, char **json)
{
    (void)self;
    const char *text = NULL;
    if (strcmp(key, "ok") == 0)
        text = "{\"a\":[1,2]}";
    else if (strcmp(key, "broken") == 0)
        text = "{\"a\":";
    else if (strcmp(key, "trailing") == 0)
        text = "1 2";
    else if (strcmp(key, "empty") == 0)
        text = "";
    else if (strcmp(key, "binary") == 0)
        text = "\"\xff\x01";
    else if (strcmp(key, "null-ok") == 0)
        return LOOM_OK; /* a faulty store: OK without a value */
    else if (strcmp(key, "down") == 0)
        return LOOM_EUNAVAILABLE;
    else
        return LOOM_ENOTFOUND;
    *json = strdup(text);
    return *json ? LOOM_OK : LOOM_ENOMEM;
}

static loom_err fake_set(void *self, const char *key, const char *json, uint32_t ttl_ms,
                         bool if_absent)
{
    fake *f = self;
    free(f->last_json);
    f->last_json = strdup(json);
    loom__strlcpy(f->last_key, key, sizeof f->last_key);
    f->last_ttl = ttl_ms;
    f->last_if_absent = if_absent;
    return strcmp(key, "exists") == 0 ? LOOM_EEXIST : LOOM_OK;
}

static loom_err fake_del(void *self, const char *key)
{
    (void)self;
    return strcmp(key, "present") == 0 ? LOOM_OK : LOOM_ENOTFOUND;
}

static loom_err fake_incr(void *self, const char *key, int64_t delta, int64_t *out)
{
    (void)self;
    if (strcmp(key, "down") == 0)
        return LOOM_EUNAVAILABLE;
    *out = delta * 10;
    return LOOM_OK;
}

static void fake_close(void *self)
{
    fake *f = self;
    (*f->closes)++;
    free(f->last_json);
    free(f);
}

static const loom_store_ops fake_ops = {
    .abi_version = LOOM_STORE_ABI_VERSION,
    .scheme = "fake",
    .open = fake_open,
    .get = fake_get,
    .set = fake_set,
    .del = fake_del,
    .incr = fake_incr,
    .close = fake_close,
};

static void test_custom_adapter(void **state)
{
    (void)state;
    loom_store *s = (loom_store *)1;
    assert_int_equal(loom__store_open(&s, "fake://host", NULL), LOOM_EUNSUPPORTED);
    assert_null(s);
    assert_int_equal(loom_store_register(&fake_ops), LOOM_OK);
    assert_int_equal(loom_store_register(&fake_ops), LOOM_EEXIST);
    loom_store_ops upper = fake_ops;
    upper.scheme = "FAKE";
    assert_int_equal(loom_store_register(&upper), LOOM_EEXIST);
    loom_store_ops mem = fake_ops;
    mem.scheme = "memory";
    assert_int_equal(loom_store_register(&mem), LOOM_EEXIST);

    cJSON *opts = t_json("{\"url\":\"fake://host\",\"timeout\":5}");
    assert_int_equal(loom__store_open(&s, "Fake://host/db", opts), LOOM_OK);
    fake *f = s->self;
    assert_string_equal(f->url, "Fake://host/db");
    assert_ptr_equal(f->options, opts);

    /* Values cross as compact JSON text, with TTL and if_absent. */
    cJSON *v = t_json("{ \"a\" : [ 1 , 2 ] , \"s\" : \"q\\\"\" }");
    assert_int_equal(loom_store_set(s, "key1", v, 250), LOOM_OK);
    assert_string_equal(f->last_json, "{\"a\":[1,2],\"s\":\"q\\\"\"}");
    assert_string_equal(f->last_key, "key1");
    assert_int_equal(f->last_ttl, 250);
    assert_false(f->last_if_absent);
    assert_int_equal(loom_store_add(s, "key2", v, 0), LOOM_OK);
    assert_true(f->last_if_absent);
    assert_int_equal(loom_store_add(s, "exists", v, 0), LOOM_EEXIST);
    cJSON_Delete(v);

    /* Results are parsed; anything that is not exactly one JSON value is
     * LOOM_EPARSE, and adapter errors pass through. */
    cJSON *out = NULL;
    assert_int_equal(loom_store_get(s, "ok", &out), LOOM_OK);
    assert_true(t_json_eq(out, "{\"a\":[1,2]}"));
    cJSON_Delete(out);
    const char *corrupt[] = {"broken", "trailing", "empty", "binary", "null-ok"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(corrupt); i++) {
        out = (cJSON *)1;
        assert_int_equal(loom_store_get(s, corrupt[i], &out), LOOM_EPARSE);
        assert_null(out);
    }
    assert_int_equal(loom_store_get(s, "down", &out), LOOM_EUNAVAILABLE);
    assert_int_equal(loom_store_get(s, "nope", &out), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_delete(s, "present"), LOOM_OK);
    assert_int_equal(loom_store_delete(s, "absent"), LOOM_ENOTFOUND);
    int64_t n = 7;
    assert_int_equal(loom_store_incr(s, "c", 4, &n), LOOM_OK);
    assert_int_equal(n, 40);
    n = 7;
    assert_int_equal(loom_store_incr(s, "down", 4, &n), LOOM_EUNAVAILABLE);
    assert_int_equal(n, 7);
    assert_int_equal(loom_store_incr(s, "c", 4, NULL), LOOM_OK);

    /* No cas in this table: unsupported, whatever the arguments. */
    cJSON *one = t_json("1");
    assert_int_equal(loom_store_cas(s, "c", NULL, one, 0), LOOM_EUNSUPPORTED);
    cJSON_Delete(one);

    int before = fake_closes;
    loom__store_close(s);
    assert_int_equal(fake_closes, before + 1);
    cJSON_Delete(opts);

    /* An adapter's open error is returned as is, with nothing to close. */
    s = (loom_store *)1;
    assert_int_equal(loom__store_open(&s, "fake://refuse", NULL), LOOM_ECONFIG);
    assert_null(s);
    assert_int_equal(fake_closes, before + 1);
}

/* What the core hands a store's cas. */
static struct {
    char *expected, *value;
    bool expected_null, value_null;
    uint32_t ttl;
    int calls;
} cas_seen;

static loom_err fake_cas(void *self, const char *key, const char *expected_json,
                         const char *new_json, uint32_t ttl_ms)
{
    (void)self;
    (void)key;
    free(cas_seen.expected);
    free(cas_seen.value);
    cas_seen.expected = expected_json ? strdup(expected_json) : NULL;
    cas_seen.value = new_json ? strdup(new_json) : NULL;
    cas_seen.expected_null = !expected_json;
    cas_seen.value_null = !new_json;
    cas_seen.ttl = ttl_ms;
    cas_seen.calls++;
    return strcmp(key, "differs") == 0 ? LOOM_EEXIST : LOOM_OK;
}

static void test_custom_cas(void **state)
{
    (void)state;
    static loom_store_ops ops;
    ops = fake_ops;
    ops.scheme = "fakecas";
    ops.cas = fake_cas;
    assert_int_equal(loom_store_register(&ops), LOOM_OK);
    loom_store *s = open_store("fakecas:");
    cJSON *e = t_json("{ \"a\" : [ 1 , 2 ] }"), *v = t_json(" \"new\" ");
    assert_int_equal(loom_store_cas(s, "k", e, v, 500), LOOM_OK);
    assert_string_equal(cas_seen.expected, "{\"a\":[1,2]}");
    assert_string_equal(cas_seen.value, "\"new\"");
    assert_int_equal(cas_seen.ttl, 500);
    assert_int_equal(loom_store_cas(s, "k", NULL, NULL, 0), LOOM_OK);
    assert_true(cas_seen.expected_null && cas_seen.value_null);
    assert_int_equal(loom_store_cas(s, "differs", e, NULL, 0), LOOM_EEXIST);
    assert_false(cas_seen.expected_null);
    assert_true(cas_seen.value_null);
    /* Refused arguments never reach the store. */
    int calls = cas_seen.calls;
    assert_int_equal(loom_store_cas(s, "", e, v, 0), LOOM_EINVAL);
    assert_int_equal(cas_seen.calls, calls);
    cJSON_Delete(e);
    cJSON_Delete(v);
    free(cas_seen.expected);
    free(cas_seen.value);
    loom__store_close(s);
}

/* Tables of ABI version 1 end before cas; they stay accepted. */
static loom_err v1_open(void **self, const char *url, const cJSON *options)
{
    (void)url;
    (void)options;
    *self = NULL;
    return LOOM_OK;
}

static void v1_close(void *self)
{
    (void)self;
}

typedef struct v1_ops {
    uint32_t abi_version;
    const char *scheme;
    loom_err (*open)(void **, const char *, const cJSON *);
    loom_err (*get)(void *, const char *, char **);
    loom_err (*set)(void *, const char *, const char *, uint32_t, bool);
    loom_err (*del)(void *, const char *);
    loom_err (*incr)(void *, const char *, int64_t, int64_t *);
    void (*close)(void *);
} v1_ops;

static void test_abi_v1(void **state)
{
    (void)state;
    /* On the heap, exactly as large as a version 1 table: reading its cas
     * would be caught by AddressSanitizer. Registered tables stay valid for
     * the life of the process, so it is never freed. */
    static v1_ops *old;
    old = malloc(sizeof *old);
    assert_non_null(old);
    *old = (v1_ops){1, "oldstore", v1_open, fake_get, fake_set, fake_del, fake_incr, v1_close};
    assert_int_equal(loom_store_register((const loom_store_ops *)(const void *)old), LOOM_OK);
    loom_store *s = open_store("oldstore:");
    cJSON *v = t_json("1"), *out = NULL;
    assert_int_equal(loom_store_cas(s, "k", NULL, v, 0), LOOM_EUNSUPPORTED);
    assert_int_equal(loom_store_get(s, "ok", &out), LOOM_OK);
    cJSON_Delete(out);
    cJSON_Delete(v);
    loom__store_close(s);
}

static void test_register_invalid(void **state)
{
    (void)state;
    loom_store_ops ops = fake_ops;
    assert_int_equal(loom_store_register(NULL), LOOM_EINVAL);
    ops.scheme = "other";
    ops.abi_version = 0;
    assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    ops.abi_version = LOOM_STORE_ABI_VERSION + 1;
    assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    ops.abi_version = LOOM_STORE_ABI_VERSION;
    const char *bad_schemes[] = {"",           "a b", "1st",
                                 "with:colon", "x/y", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad_schemes); i++) {
        ops.scheme = bad_schemes[i];
        assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    }
    ops.scheme = NULL;
    assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    ops.scheme = "other";
    ops.get = NULL;
    assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    ops.get = fake_ops.get;
    ops.close = NULL;
    assert_int_equal(loom_store_register(&ops), LOOM_EINVAL);
    /* None of the refused ones was registered. */
    loom_store *s = NULL;
    assert_int_equal(loom__store_open(&s, "other:", NULL), LOOM_EUNSUPPORTED);
}

/* Runs last: fills the process-wide table. */
static void test_register_full(void **state)
{
    (void)state;
    static loom_store_ops many[LOOM__STORE_MAX_SCHEMES + 1];
    static char names[LOOM__STORE_MAX_SCHEMES + 1][16];
    int ok = 0;
    loom_err err = LOOM_OK;
    for (int i = 0; i <= LOOM__STORE_MAX_SCHEMES && err == LOOM_OK; i++) {
        snprintf(names[i], sizeof names[i], "s%d", i);
        many[i] = fake_ops;
        many[i].scheme = names[i];
        err = loom_store_register(&many[i]);
        if (err == LOOM_OK)
            ok++;
    }
    assert_int_equal(err, LOOM_EOVERLOAD);
    assert_true(ok > 0 && ok < LOOM__STORE_MAX_SCHEMES);
    /* Registered ones work; the built-in store still does. */
    loom_store *s = open_store("s0:");
    loom__store_close(s);
    s = open_store("memory:");
    loom__store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_add_delete),
        cmocka_unit_test(test_incr),
        cmocka_unit_test(test_incr_raw_text),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_named_shared),
        cmocka_unit_test(test_private),
        cmocka_unit_test(test_big_values),
        cmocka_unit_test(test_cas),
        cmocka_unit_test(test_cas_concurrent),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_custom_adapter),
        cmocka_unit_test(test_custom_cas),
        cmocka_unit_test(test_abi_v1),
        cmocka_unit_test(test_register_invalid),
        cmocka_unit_test(test_register_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
