/* The state store conformance suite (see store_suite.h). */
#define _GNU_SOURCE
#include "support/store_suite.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"
#include "support/proc.h"

/* --- helpers ------------------------------------------------------------ */

loom_store *t_store_open(const char *url, const char *options)
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

void t_store_set_text(loom_store *s, const char *key, const char *text, uint32_t ttl_ms)
{
    cJSON *v = t_json(text);
    assert_int_equal(loom_store_set(s, key, v, ttl_ms), LOOM_OK);
    cJSON_Delete(v);
}

void t_store_assert_value(loom_store *s, const char *key, const char *text)
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

void t_store_assert_absent(loom_store *s, const char *key)
{
    cJSON *v = (cJSON *)1;
    assert_int_equal(loom_store_get(s, key, &v), LOOM_ENOTFOUND);
    assert_null(v);
}

loom_err t_store_cas_text(loom_store *s, const char *key, const char *expected, const char *value,
                          uint32_t ttl_ms)
{
    cJSON *e = expected ? t_json(expected) : NULL;
    cJSON *v = value ? t_json(value) : NULL;
    loom_err err = loom_store_cas(s, key, e, v, ttl_ms);
    cJSON_Delete(e);
    cJSON_Delete(v);
    return err;
}

/* --- fixture ------------------------------------------------------------ */

int t_store_suite_setup(void **state)
{
    const t_store_factory *f = *state;
    if (!f || !f->reset || !f->open || f->threads < 1 || f->threads > 16) {
        fprintf(stderr, "store suite: incomplete factory\n");
        return -1;
    }
    return f->reset(f->ctx);
}

int t_store_suite_teardown(void **state)
{
    const t_store_factory *f = *state;
    return f->cleanup ? f->cleanup(f->ctx) : 0;
}

static loom_store *open_handle(const t_store_factory *f)
{
    loom_store *s = f->open(f->ctx);
    assert_non_null(s);
    return s;
}

static void close_handle(const t_store_factory *f, loom_store *s)
{
    if (f->close)
        f->close(f->ctx, s);
    else
        loom__store_close(s);
}

/* --- get, set, add, delete ---------------------------------------------- */

void t_store_suite_set_get(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
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
        t_store_set_text(s, key, values[i], 0);
    }
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        char key[32];
        snprintf(key, sizeof key, "k%zu", i);
        t_store_assert_value(s, key, values[i]);
    }
    /* Overwrite replaces; the stored value is a copy. */
    cJSON *v = t_json("{\"n\":1}");
    assert_int_equal(loom_store_set(s, "k0", v, 0), LOOM_OK);
    cJSON_ReplaceItemInObject(v, "n", cJSON_CreateNumber(2));
    t_store_assert_value(s, "k0", "{\"n\":1}");
    cJSON_Delete(v);
    /* So is what get returns: changing it changes nothing stored. */
    v = NULL;
    assert_int_equal(loom_store_get(s, "k0", &v), LOOM_OK);
    cJSON_ReplaceItemInObject(v, "n", cJSON_CreateNumber(3));
    t_store_assert_value(s, "k0", "{\"n\":1}");
    cJSON_Delete(v);
    /* Keys are exact byte strings. */
    t_store_set_text(s, "K0", "\"upper\"", 0);
    t_store_assert_value(s, "k0", "{\"n\":1}");
    t_store_assert_value(s, "K0", "\"upper\"");
    t_store_assert_absent(s, "k00");
    t_store_assert_absent(s, "never");
    /* Spaces, CR LF, quotes, UTF-8 and glob characters are key bytes too. */
    const char *odd = "a b\r\n\"c\" é *3";
    t_store_set_text(s, odd, "7", 0);
    t_store_assert_value(s, odd, "7");
    t_store_assert_absent(s, "a b");
    /* The longest key works (one more byte is refused by the core). */
    char key[LOOM__STORE_MAX_KEY + 1];
    memset(key, 'k', LOOM__STORE_MAX_KEY);
    key[LOOM__STORE_MAX_KEY] = '\0';
    t_store_set_text(s, key, "1", 0);
    t_store_assert_value(s, key, "1");
    close_handle(f, s);
}

void t_store_suite_add_delete(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    cJSON *one = t_json("1"), *two = t_json("2");
    assert_int_equal(loom_store_add(s, "k", one, 0), LOOM_OK);
    assert_int_equal(loom_store_add(s, "k", two, 0), LOOM_EEXIST);
    t_store_assert_value(s, "k", "1");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_OK);
    t_store_assert_absent(s, "k");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_delete(s, "other"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_add(s, "k", two, 0), LOOM_OK);
    t_store_assert_value(s, "k", "2");
    /* set overwrites what add created */
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_OK);
    t_store_assert_value(s, "k", "1");
    /* Another handle's delete and add are seen at once. */
    loom_store *other = open_handle(f);
    assert_int_equal(loom_store_delete(other, "k"), LOOM_OK);
    t_store_assert_absent(s, "k");
    assert_int_equal(loom_store_add(other, "k", two, 0), LOOM_OK);
    assert_int_equal(loom_store_add(s, "k", one, 0), LOOM_EEXIST);
    t_store_assert_value(s, "k", "2");
    /* A deleted counter starts over at 0. */
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "n", 5, &n), LOOM_OK);
    assert_int_equal(loom_store_delete(s, "n"), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "n", 1, &n), LOOM_OK);
    assert_int_equal(n, 1);
    cJSON_Delete(one);
    cJSON_Delete(two);
    close_handle(f, other);
    close_handle(f, s);
}

/* --- incr --------------------------------------------------------------- */

void t_store_suite_incr(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "c", 5, &v), LOOM_OK);
    assert_int_equal(v, 5);
    assert_int_equal(loom_store_incr(s, "c", -7, &v), LOOM_OK);
    assert_int_equal(v, -2);
    assert_int_equal(loom_store_incr(s, "c", 1, NULL), LOOM_OK);
    t_store_assert_value(s, "c", "-1");
    /* Absent counts as 0, also for a delta of 0 (which stores it). */
    v = 99;
    assert_int_equal(loom_store_incr(s, "zero", 0, &v), LOOM_OK);
    assert_int_equal(v, 0);
    t_store_assert_value(s, "zero", "0");

    /* Values set through the API, written by cJSON in its own forms. */
    t_store_set_text(s, "n", "41", 0);
    assert_int_equal(loom_store_incr(s, "n", 1, &v), LOOM_OK);
    assert_int_equal(v, 42);
    cJSON *big = cJSON_CreateNumber(1e15); /* cJSON prints "1e+15" */
    assert_int_equal(loom_store_set(s, "big", big, 0), LOOM_OK);
    cJSON_Delete(big);
    assert_int_equal(loom_store_incr(s, "big", 1, &v), LOOM_OK);
    assert_int_equal(v, 1000000000000001LL);
    t_store_set_text(s, "whole", "3.0", 0);
    assert_int_equal(loom_store_incr(s, "whole", 1, &v), LOOM_OK);
    assert_int_equal(v, 4);

    /* Not integral numbers: refused, value untouched. */
    const char *bad[] = {"2.5", "\"3\"", "{\"a\":1}", "[1]", "true", "null", "1e-1"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        t_store_set_text(s, "bad", bad[i], 0);
        v = 99;
        assert_int_equal(loom_store_incr(s, "bad", 1, &v), LOOM_EINVAL);
        assert_int_equal(v, 99);
        t_store_assert_value(s, "bad", bad[i]);
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
    assert_int_equal(loom_store_incr(s, "min2", INT64_MIN, &v), LOOM_OK);
    assert_true(v == INT64_MIN);
    close_handle(f, s);
}

/* Number texts fed raw through the adapter: every store judges them as
 * loom__store_parse_integer does. */
void t_store_suite_incr_raw_text(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    const loom_store_ops *ops = s->ops;
    struct {
        const char *text;
        bool ok;
        int64_t want; /* after +1 */
        bool json;    /* exactly one JSON value */
    } cases[] = {
        {"2.50e1", true, 26, true},
        {"  7 \n", true, 8, true},
        {"-0", true, 1, true},
        {"0", true, 1, true},
        {"1E2", true, 101, true},
        {"100.000", true, 101, true},
        {"12e+0", true, 13, true},
        {"-9223372036854775808", true, -9223372036854775807LL, true},
        {"9223372036854775806", true, INT64_MAX, true},
        {"0.00000000000000000000000000000000000000001e41", true, 2, true},
        {"1000000000000000000000e-21", true, 2, true},
        {"9223372036854775808", false, 0, true},
        {"-9223372036854775809", false, 0, true},
        {"1e19", false, 0, true},
        {"1e400", false, 0, true},
        {"1e-400", false, 0, true},
        {"1.5", false, 0, true},
        {"01", false, 0, false},
        {"+1", false, 0, false},
        {"1.", false, 0, false},
        {".5", false, 0, false},
        {"1e", false, 0, false},
        {"1e+", false, 0, false},
        {"0x10", false, 0, false},
        {"1 2", false, 0, false},
        {"-", false, 0, false},
        {"", false, 0, false},
        {"inf", false, 0, false},
        {"NaN", false, 0, false},
        {"1.2.3", false, 0, false},
        {"123456789012345678901234567890", false, 0, true},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(cases); i++) {
        loom_err err = ops->set(s->self, "x", cases[i].text, 0, false);
        if (f->json_only && !cases[i].json) {
            if (err != LOOM_EINVAL)
                fail_msg("%s: stored %s: %s", f->name, cases[i].text, loom_strerror(err));
            continue;
        }
        assert_int_equal(err, LOOM_OK);
        int64_t v = 0;
        err = loom_store_incr(s, "x", 1, &v);
        if (cases[i].ok) {
            if (err != LOOM_OK || v != cases[i].want)
                fail_msg("%s: %s: err %d v %" PRId64, f->name, cases[i].text, err, v);
        } else if (err != LOOM_EINVAL) {
            fail_msg("%s: %s: err %d, want EINVAL", f->name, cases[i].text, err);
        }
    }
    close_handle(f, s);
}

/* --- TTL ------------------------------------------------------------------ */

void t_store_suite_ttl(void **state)
{
    const t_store_factory *f = *state;
    const uint32_t ttl = f->ttl_ms;
    const int64_t margin = ttl * 5 / 6; /* a TTL set less than this ago is live */
    loom_store *s = open_handle(f), *other = open_handle(f);
    cJSON *v = t_json("{\"x\":1}");
    int64_t t0 = loom__mono_ms();
    assert_int_equal(loom_store_set(s, "short", v, ttl), LOOM_OK);
    assert_int_equal(loom_store_set(s, "long", v, 60000), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, ttl), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 0), LOOM_OK); /* drops the TTL */
    assert_int_equal(loom_store_add(s, "added", v, ttl), LOOM_OK);
    assert_int_equal(loom_store_set(s, "gone", v, ttl), LOOM_OK);
    assert_int_equal(loom_store_set(s, "gained", v, 0), LOOM_OK);
    assert_int_equal(loom_store_set(s, "gained", v, ttl), LOOM_OK); /* gets the TTL */
    /* Only meaningful while the TTL has not run out. */
    if (loom__mono_ms() - t0 < margin) {
        t_store_assert_value(s, "short", "{\"x\":1}");
        t_store_assert_value(other, "short", "{\"x\":1}");
    }

    /* A counter incr creates has no TTL; set replaces one. */
    assert_int_equal(loom_store_incr(s, "plain", 10, NULL), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "counter", 10, NULL), LOOM_OK);
    assert_int_equal(loom_store_set(s, "counter", v, 0), LOOM_OK);
    /* incr keeps the TTL, also for a value in another spelling ("1e1"). */
    int64_t t1 = loom__mono_ms();
    t_store_set_text(s, "counter", "10", ttl);
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "counter", 1, &n), LOOM_OK);
    bool counter_live = loom__mono_ms() - t1 < ttl; /* incr ran before expiry */
    if (counter_live)
        assert_int_equal(n, 11);
    int64_t t2 = loom__mono_ms();
    assert_int_equal(s->ops->set(s->self, "counter2", "1e1", ttl, false), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "counter2", 1, NULL), LOOM_OK);
    bool counter2_live = loom__mono_ms() - t2 < ttl;
    if (loom__mono_ms() - t1 < margin)
        t_store_assert_value(other, "counter", "11");
    if (loom__mono_ms() - t2 < margin)
        t_store_assert_value(other, "counter2", "11");
    t_sleep_ms((int)(ttl * 3 / 2));

    t_store_assert_absent(s, "short");
    t_store_assert_absent(other, "short");
    t_store_assert_absent(other, "added");
    t_store_assert_absent(other, "gained");
    if (counter_live)
        t_store_assert_absent(s, "counter");
    if (counter2_live)
        t_store_assert_absent(s, "counter2");
    t_store_assert_value(s, "long", "{\"x\":1}");
    t_store_assert_value(s, "cleared", "{\"x\":1}");
    t_store_assert_value(other, "plain", "10");
    /* Expired entries are invisible to add, incr and delete; incr starts
     * over at 0, without a TTL. */
    assert_int_equal(loom_store_add(other, "added", v, 0), LOOM_OK);
    assert_int_equal(loom_store_delete(s, "gone"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_delete(s, "short"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_incr(s, "short", 3, &n), LOOM_OK);
    assert_int_equal(n, 3);
    if (counter_live) {
        assert_int_equal(loom_store_incr(s, "counter", 1, &n), LOOM_OK);
        assert_int_equal(n, 1);
    }
    t_sleep_ms((int)(ttl * 6 / 5));
    t_store_assert_value(s, "short", "3");
    t_store_assert_value(s, "added", "{\"x\":1}");
    if (counter_live)
        t_store_assert_value(s, "counter", "1");
    cJSON_Delete(v);
    close_handle(f, other);
    close_handle(f, s);
}

/* --- compare-and-set ---------------------------------------------------- */

void t_store_suite_cas(void **state)
{
    const t_store_factory *f = *state;
    const uint32_t ttl = f->ttl_ms;
    loom_store *s = open_handle(f), *other = open_handle(f);
    /* expected NULL: only when absent. */
    assert_int_equal(t_store_cas_text(s, "k", NULL, "{\"v\":1}", 0), LOOM_OK);
    t_store_assert_value(s, "k", "{\"v\":1}");
    assert_int_equal(t_store_cas_text(s, "k", NULL, "{\"v\":2}", 0), LOOM_EEXIST);
    t_store_assert_value(s, "k", "{\"v\":1}");
    /* A match swaps, a mismatch changes nothing. */
    assert_int_equal(t_store_cas_text(s, "k", "{\"v\":0}", "{\"v\":2}", 0), LOOM_EEXIST);
    assert_int_equal(t_store_cas_text(s, "k", "{\"v\":1}", "{\"v\":2}", 0), LOOM_OK);
    t_store_assert_value(s, "k", "{\"v\":2}");
    assert_int_equal(t_store_cas_text(s, "k", "{\"v\":1}", "{\"v\":3}", 0), LOOM_EEXIST);
    t_store_assert_value(s, "k", "{\"v\":2}");
    /* Both sides are normalized: spacing does not matter, member order does. */
    assert_int_equal(t_store_cas_text(s, "k", " { \"v\" : 2 } ", "[1, 2]", 0), LOOM_OK);
    t_store_assert_value(s, "k", "[1,2]");
    t_store_set_text(s, "o", "{\"a\":1,\"b\":2}", 0);
    assert_int_equal(t_store_cas_text(s, "o", "{\"b\":2,\"a\":1}", "0", 0), LOOM_EEXIST);
    assert_int_equal(t_store_cas_text(s, "o", "{\"a\":1,\"b\":2}", "0", 0), LOOM_OK);
    t_store_assert_value(other, "o", "0");
    /* An expected value against an absent key differs. */
    assert_int_equal(t_store_cas_text(s, "none", "1", "2", 0), LOOM_EEXIST);
    t_store_assert_absent(s, "none");
    /* Swapping a value for itself is a match too. */
    assert_int_equal(t_store_cas_text(s, "k", "[1,2]", "[1,2]", 0), LOOM_OK);
    /* value NULL deletes. */
    assert_int_equal(t_store_cas_text(s, "k", "[1,3]", NULL, 0), LOOM_EEXIST);
    t_store_assert_value(s, "k", "[1,2]");
    assert_int_equal(t_store_cas_text(s, "k", "[1,2]", NULL, 0), LOOM_OK);
    t_store_assert_absent(s, "k");
    assert_int_equal(t_store_cas_text(s, "k", NULL, NULL, 0), LOOM_OK); /* absent stays absent */
    t_store_assert_absent(s, "k");
    /* Counters written by incr compare with cJSON numbers below 1e15. */
    assert_int_equal(loom_store_incr(s, "n", 123456789012345LL, NULL), LOOM_OK);
    assert_int_equal(t_store_cas_text(s, "n", "123456789012345", "-5", 0), LOOM_OK);
    t_store_assert_value(other, "n", "-5");
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    assert_int_equal(t_store_cas_text(s, "n", "-4", "\"s\"", 0), LOOM_OK);
    t_store_assert_value(s, "n", "\"s\"");
    /* TTL: set with the swap; 0 clears it; an expired key is absent. */
    assert_int_equal(t_store_cas_text(s, "t", NULL, "1", ttl), LOOM_OK);
    assert_int_equal(t_store_cas_text(s, "t2", NULL, "1", ttl), LOOM_OK);
    assert_int_equal(t_store_cas_text(s, "t2", "1", "2", 0), LOOM_OK);
    t_store_set_text(s, "t3", "1", ttl);
    t_sleep_ms((int)(ttl * 3 / 2));
    t_store_assert_absent(s, "t");
    t_store_assert_value(s, "t2", "2");
    /* Deleting an expired key "only if absent" works, and it stays absent. */
    assert_int_equal(t_store_cas_text(s, "t3", NULL, NULL, 0), LOOM_OK);
    t_store_assert_absent(s, "t3");
    assert_int_equal(t_store_cas_text(s, "t", "1", "3", 0), LOOM_EEXIST);
    assert_int_equal(t_store_cas_text(s, "t", NULL, "3", 0), LOOM_OK);
    t_store_assert_value(s, "t", "3");
    t_store_assert_value(other, "t", "3");
    t_store_assert_value(other, "t2", "2");
    /* Every handle on the store sees the others' swaps. */
    assert_int_equal(t_store_cas_text(s, "x", NULL, "1", 0), LOOM_OK);
    assert_int_equal(t_store_cas_text(other, "x", NULL, "2", 0), LOOM_EEXIST);
    assert_int_equal(t_store_cas_text(other, "x", "1", "2", 0), LOOM_OK);
    t_store_assert_value(s, "x", "2");

    /* Refused arguments. */
    cJSON *v = t_json("1");
    cJSON bad = {0}; /* cJSON_Invalid */
    assert_int_equal(loom_store_cas(NULL, "k", NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, NULL, NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "", NULL, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "k", &bad, v, 0), LOOM_EINVAL);
    assert_int_equal(loom_store_cas(s, "k", NULL, &bad, 0), LOOM_EINVAL);
    t_store_assert_absent(s, "k");
    cJSON_Delete(v);
    close_handle(f, other);
    close_handle(f, s);
}

/* Read-modify-cas loops from several threads on one document: none of the
 * updates is lost. */
#define CAS_THREADS 4

int t_store_cas_loop(loom_store *s, int rounds)
{
    int failures = 0;
    for (int i = 0; i < rounds; i++) {
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
    return failures;
}

typedef struct cas_worker_arg {
    loom_store *store;
    int rounds;
} cas_worker_arg;

static void *cas_worker(void *arg)
{
    const cas_worker_arg *a = arg;
    return (void *)(intptr_t)t_store_cas_loop(a->store, a->rounds);
}

void t_store_suite_cas_threads(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    t_store_set_text(s, "doc", "{\"n\":0,\"name\":\"x\"}", 0);
    cas_worker_arg arg = {.store = s, .rounds = f->cas_rounds};
    pthread_t th[CAS_THREADS];
    for (int i = 0; i < CAS_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, cas_worker, &arg), 0);
    for (int i = 0; i < CAS_THREADS; i++) {
        void *ret = NULL;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_int_equal((intptr_t)ret, 0);
    }
    char want[64];
    snprintf(want, sizeof want, "{\"n\":%d,\"name\":\"x\"}", CAS_THREADS * f->cas_rounds);
    t_store_assert_value(s, "doc", want);
    close_handle(f, s);
}

/* --- threads ------------------------------------------------------------ */

typedef struct worker {
    loom_store *store;
    int id;
    int threads, ops;
    int adds_ok;
    int errors;
} worker;

/* Runs w->ops operations of six kinds in turn. No cmocka here: failures
 * are counted. */
static void *worker_main(void *arg)
{
    worker *w = arg;
    char key[64];
    cJSON *num = cJSON_CreateNumber(0);
    for (int i = 0; i < w->ops; i++) {
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
            snprintf(key, sizeof key, "k:%d:%d", (w->id + 1) % w->threads, i % 100);
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

void t_store_suite_threads(void **state)
{
    const t_store_factory *f = *state;
    /* Two handles on one store: half the threads use each. */
    loom_store *a = open_handle(f), *b = open_handle(f);
    pthread_t th[16];
    worker w[16];
    for (int i = 0; i < f->threads; i++) {
        w[i] = (worker){.store = i % 2 ? a : b, .id = i, .threads = f->threads, .ops = f->ops};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    int adds = 0;
    for (int i = 0; i < f->threads; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].errors, 0);
        adds += w[i].adds_ok;
    }
    int per_kind = f->ops / 6 + (f->ops % 6 > 0); /* ops with i % 6 == 0 */
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "total", 0, &v), LOOM_OK);
    assert_int_equal(v, (int64_t)f->threads * per_kind);
    char total[32];
    snprintf(total, sizeof total, "%" PRId64, v);
    t_store_assert_value(b, "total", total);
    for (int i = 0; i < f->threads; i++) {
        char key[32];
        snprintf(key, sizeof key, "mine:%d", i);
        assert_int_equal(loom_store_incr(b, key, 0, &v), LOOM_OK);
        assert_int_equal(v, 2 * (f->ops / 6 + (f->ops % 6 > 1)));
    }
    /* i % 6 == 4 gives keys once:(i % 1200) in {4, 10, ..., 1198} (200 of
     * them when ops >= 1200), each added exactly once among all threads. */
    int want = 0;
    for (int i = 4; i < f->ops && i < 1200; i += 6)
        want++;
    assert_int_equal(adds, want);
    /* Each holds the id of the thread whose add won. */
    for (int i = 4; i < f->ops && i < 1200; i += 6) {
        char key[32];
        snprintf(key, sizeof key, "once:%d", i);
        cJSON *id = NULL;
        assert_int_equal(loom_store_get(a, key, &id), LOOM_OK);
        bool ok = cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < f->threads;
        cJSON_Delete(id);
        if (!ok)
            fail_msg("%s: %s holds no thread id", f->name, key);
    }
    close_handle(f, a);
    close_handle(f, b);
}

/* --- sizes and arguments ------------------------------------------------ */

void t_store_suite_big_values(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
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
    /* A big value replaced by a small one. */
    t_store_set_text(s, "str", "\"small\"", 0);
    t_store_assert_value(s, "str", "\"small\"");
    close_handle(f, s);
}

/* The adapter's own checks, called directly (the core never passes NULL). */
void t_store_suite_adapter_args(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    const loom_store_ops *ops = s->ops;
    char *out = NULL;
    assert_int_equal(ops->get(NULL, "k", &out), LOOM_EINVAL);
    assert_int_equal(ops->get(s->self, NULL, &out), LOOM_EINVAL);
    assert_int_equal(ops->get(s->self, "k", NULL), LOOM_EINVAL);
    assert_null(out);
    assert_int_equal(ops->set(s->self, "k", NULL, 0, false), LOOM_EINVAL);
    assert_int_equal(ops->set(NULL, "k", "1", 0, false), LOOM_EINVAL);
    assert_int_equal(ops->set(s->self, NULL, "1", 0, false), LOOM_EINVAL);
    assert_int_equal(ops->del(s->self, NULL), LOOM_EINVAL);
    assert_int_equal(ops->del(NULL, "k"), LOOM_EINVAL);
    assert_int_equal(ops->incr(NULL, "k", 1, NULL), LOOM_EINVAL);
    assert_int_equal(ops->incr(s->self, NULL, 1, NULL), LOOM_EINVAL);
    assert_int_equal(ops->cas(NULL, "k", NULL, "1", 0), LOOM_EINVAL);
    assert_int_equal(ops->cas(s->self, NULL, NULL, "1", 0), LOOM_EINVAL);
    char **keys = NULL;
    size_t count = 0;
    assert_int_equal(ops->list(NULL, "", NULL, 1, &keys, &count), LOOM_EINVAL);
    assert_int_equal(ops->list(s->self, NULL, NULL, 1, &keys, &count), LOOM_EINVAL);
    assert_int_equal(ops->list(s->self, "", NULL, 0, &keys, &count), LOOM_EINVAL);
    assert_int_equal(ops->list(s->self, "", NULL, 1, NULL, &count), LOOM_EINVAL);
    assert_null(keys);
    ops->close(NULL);
    /* Nothing was stored by the refused calls. */
    t_store_assert_absent(s, "k");

    /* With good ones it answers as the ABI says. */
    assert_int_equal(ops->get(s->self, "k", &out), LOOM_ENOTFOUND);
    assert_null(out);
    assert_int_equal(ops->set(s->self, "k", "1", 0, true), LOOM_OK);
    assert_int_equal(ops->set(s->self, "k", "2", 0, true), LOOM_EEXIST);
    int64_t n = 0;
    assert_int_equal(ops->incr(s->self, "k", 2, &n), LOOM_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ops->incr(s->self, "k", 1, NULL), LOOM_OK);
    assert_int_equal(ops->get(s->self, "k", &out), LOOM_OK);
    assert_string_equal(out, "4");
    free(out);
    assert_int_equal(ops->del(s->self, "k"), LOOM_OK);
    assert_int_equal(ops->del(s->self, "k"), LOOM_ENOTFOUND);
    close_handle(f, s);
}

/* --- list by prefix --------------------------------------------------------- */

/* Lists one page and compares it with want (a JSON array text). */
static void assert_page(loom_store *s, const char *prefix, const char *after, size_t limit,
                        const char *want, bool want_more)
{
    cJSON *keys = NULL;
    bool more = !want_more;
    loom_err err = loom_store_list(s, prefix, after, limit, &keys, &more);
    if (err != LOOM_OK)
        fail_msg("list '%s' after '%s': %s", prefix ? prefix : "(null)", after ? after : "",
                 loom_strerror(err));
    if (!t_json_eq(keys, want) || more != want_more) {
        char *got = cJSON_PrintUnformatted(keys);
        cJSON_Delete(keys);
        fail_msg("list '%s' after '%s' limit %zu: got %s more=%d, want %s more=%d",
                 prefix ? prefix : "(null)", after ? after : "", limit, got, more, want, want_more);
    }
    cJSON_Delete(keys);
}

void t_store_suite_list(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f), *other = open_handle(f);
    const char *keys[] = {"reading/b", "reading/a", "reading/c", "readings", "alert/1",
                          /* glob characters must match only themselves */
                          "g*1", "g*2", "gx1", "q?", "qa", "[ab]", "a", "b]", "\\x", "\\\\x"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        t_store_set_text(s, keys[i], "1", 0);
    assert_page(other, "reading/", NULL, 0, "[\"reading/a\",\"reading/b\",\"reading/c\"]", false);
    /* Pages: the last key of one page continues with the next. */
    assert_page(other, "reading/", NULL, 2, "[\"reading/a\",\"reading/b\"]", true);
    assert_page(other, "reading/", "reading/b", 2, "[\"reading/c\"]", false);
    assert_page(other, "reading/", "reading/c", 2, "[]", false);
    assert_page(other, "reading/", "", 3, "[\"reading/a\",\"reading/b\",\"reading/c\"]", false);
    /* `after` outside the prefix range. */
    assert_page(other, "reading/", "a", 1, "[\"reading/a\"]", true);
    assert_page(other, "reading/", "z", 10, "[]", false);
    assert_page(other, "reading", NULL, 10,
                "[\"reading/a\",\"reading/b\",\"reading/c\",\"readings\"]", false);
    assert_page(other, "g*", NULL, 10, "[\"g*1\",\"g*2\"]", false);
    assert_page(other, "q?", NULL, 10, "[\"q?\"]", false);
    assert_page(other, "[a", NULL, 10, "[\"[ab]\"]", false);
    assert_page(other, "b]", NULL, 10, "[\"b]\"]", false);
    assert_page(other, "\\", NULL, 10, "[\"\\\\\\\\x\",\"\\\\x\"]", false);
    assert_page(other, "nothing", NULL, 10, "[]", false);
    /* Every key, in byte order. */
    assert_page(other, NULL, NULL, 0,
                "[\"[ab]\",\"\\\\\\\\x\",\"\\\\x\",\"a\",\"alert/1\",\"b]\",\"g*1\",\"g*2\","
                "\"gx1\",\"q?\",\"qa\",\"reading/a\",\"reading/b\",\"reading/c\",\"readings\"]",
                false);
    /* Deleted and expired keys are not listed. */
    assert_int_equal(loom_store_delete(s, "reading/b"), LOOM_OK);
    t_store_set_text(s, "reading/d", "1", f->ttl_ms);
    t_sleep_ms((int)(f->ttl_ms * 3 / 2));
    assert_page(other, "reading/", NULL, 10, "[\"reading/a\",\"reading/c\"]", false);

    /* Bad arguments. */
    cJSON *out = (cJSON *)1;
    assert_int_equal(loom_store_list(s, "a", NULL, 1001, &out, NULL), LOOM_EINVAL);
    assert_null(out);
    assert_int_equal(loom_store_list(s, "a", NULL, 10, NULL, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_list(NULL, "a", NULL, 10, &out, NULL), LOOM_EINVAL);
    char *big = malloc(1026);
    assert_non_null(big);
    memset(big, 'k', 1025);
    big[1025] = '\0';
    assert_int_equal(loom_store_list(s, big, NULL, 10, &out, NULL), LOOM_EINVAL);
    assert_int_equal(loom_store_list(s, "a", big, 10, &out, NULL), LOOM_EINVAL);
    free(big);
    close_handle(f, other);
    close_handle(f, s);
}

/* Pages through many keys: each key exactly once, in order. */
void t_store_suite_list_many(void **state)
{
    const t_store_factory *f = *state;
    loom_store *s = open_handle(f);
    enum { N = 1100 };
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "item/%05d", i);
        t_store_set_text(s, key, "0", 0);
    }
    t_store_set_text(s, "other", "0", 0);
    char after[32] = "";
    int seen = 0, pages = 0;
    bool more = true;
    while (more) {
        cJSON *page = NULL;
        assert_int_equal(loom_store_list(s, "item/", after, 1000, &page, &more), LOOM_OK);
        pages++;
        const cJSON *k;
        cJSON_ArrayForEach(k, page)
        {
            snprintf(key, sizeof key, "item/%05d", seen);
            assert_string_equal(k->valuestring, key);
            seen++;
        }
        assert_true(cJSON_GetArraySize(page) > 0);
        snprintf(after, sizeof after, "%s",
                 cJSON_GetArrayItem(page, -1 + cJSON_GetArraySize(page))->valuestring);
        cJSON_Delete(page);
    }
    assert_int_equal(seen, N);
    assert_int_equal(pages, 2);
    close_handle(f, s);
}
