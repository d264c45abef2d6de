/* The state store: public API, scheme registry, and the memory store. The
 * semantics every store shares are the conformance suite's
 * (support/store_suite.c), run here against named memory stores. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/proc.h"
#include "support/store_suite.h"
#include "support/support.h"

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"

/* The suite's store: a named memory store, a new name for each test, so
 * that every handle a test opens shares its data. */
typedef struct memory_suite {
    int n;
    char url[32];
} memory_suite;

static int suite_reset(void *ctx)
{
    memory_suite *m = ctx;
    snprintf(m->url, sizeof m->url, "memory:suite-%d", ++m->n);
    return 0;
}

static loom_store *suite_open(void *ctx)
{
    return t_store_open(((memory_suite *)ctx)->url, NULL);
}

static memory_suite suite_ctx;
static const t_store_factory memory_factory = {
    .name = "memory",
    .reset = suite_reset,
    .open = suite_open,
    .ctx = &suite_ctx,
    .ttl_ms = 30,
    .threads = 8,
    .ops = 10000,
    .cas_rounds = 2000,
};

/* ---------------------------------------------------------------------- */

/* Many keys: the tables grow, and expired entries are swept when they do. */
static void test_many_keys(void **state)
{
    (void)state;
    loom_store *s = t_store_open("memory:", NULL);
    char key[32];
    cJSON *n = cJSON_CreateNumber(0);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "tmp:%d", i);
        cJSON_SetNumberValue(n, i);
        assert_int_equal(loom_store_set(s, key, n, 20), LOOM_OK);
    }
    t_sleep_ms(30);
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
        t_store_assert_absent(s, key);
    }
    for (int i = 0; i < 50000; i += 2) {
        snprintf(key, sizeof key, "key:%d", i);
        assert_int_equal(loom_store_delete(s, key), LOOM_OK);
    }
    for (int i = 0; i < 50000; i += 1000) {
        snprintf(key, sizeof key, "key:%d", i);
        t_store_assert_absent(s, key);
        snprintf(key, sizeof key, "key:%d", i + 1);
        t_store_assert_value(s, key, key + 4);
    }
    cJSON_Delete(n);
    loom__store_close(s);
}

static void test_named_shared(void **state)
{
    (void)state;
    loom_store *a = t_store_open("memory:shared", NULL);
    loom_store *b = t_store_open("memory://shared", NULL); /* the same name */
    loom_store *c = t_store_open("memory:other", NULL);
    t_store_set_text(a, "k", "\"from a\"", 0);
    t_store_assert_value(b, "k", "\"from a\"");
    t_store_assert_absent(c, "k");
    assert_int_equal(loom_store_incr(b, "n", 2, NULL), LOOM_OK);
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "n", 3, &v), LOOM_OK);
    assert_int_equal(v, 5);
    /* Survives one closer... */
    loom__store_close(a);
    t_store_assert_value(b, "k", "\"from a\"");
    loom_store *d = t_store_open("memory:shared", NULL);
    t_store_assert_value(d, "n", "5");
    loom__store_close(b);
    t_store_assert_value(d, "n", "5");
    /* ...and is gone after the last. */
    loom__store_close(d);
    loom_store *e = t_store_open("memory:shared", NULL);
    t_store_assert_absent(e, "k");
    t_store_assert_absent(e, "n");
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
    loom_store *a = t_store_open("memory:", NULL);
    loom_store *b = t_store_open("memory:", NULL);
    loom_store *c = t_store_open("MEMORY:", NULL); /* schemes are case-insensitive */
    t_store_set_text(a, "k", "1", 0);
    t_store_assert_absent(b, "k");
    t_store_assert_absent(c, "k");
    t_store_set_text(b, "k", "2", 0);
    t_store_assert_value(a, "k", "1");
    t_store_assert_value(b, "k", "2");
    loom__store_close(a);
    loom__store_close(b);
    loom__store_close(c);
    loom__store_close(NULL);
}
/* --- arguments ---------------------------------------------------------- */

static void test_invalid_args(void **state)
{
    (void)state;
    loom_store *s = t_store_open("memory:", NULL);
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
    t_store_assert_absent(s, "k");

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
    cJSON *keys = NULL;
    assert_int_equal(loom_store_list(s, "", NULL, 10, &keys, NULL), LOOM_EUNSUPPORTED);

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
    loom_store *s = t_store_open("fakecas:", NULL);
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
    loom_store *s = t_store_open("oldstore:", NULL);
    cJSON *v = t_json("1"), *out = NULL;
    assert_int_equal(loom_store_cas(s, "k", NULL, v, 0), LOOM_EUNSUPPORTED);
    /* Nor its list (a version 2 field). */
    cJSON *keys = (cJSON *)1;
    assert_int_equal(loom_store_list(s, "", NULL, 10, &keys, NULL), LOOM_EUNSUPPORTED);
    assert_null(keys);
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
    loom_store *s = t_store_open("s0:", NULL);
    loom__store_close(s);
    s = t_store_open("memory:", NULL);
    loom__store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T_STORE_SUITE(&memory_factory),          cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_named_shared),     cmocka_unit_test(test_private),
        cmocka_unit_test(test_invalid_args),     cmocka_unit_test(test_custom_adapter),
        cmocka_unit_test(test_custom_cas),       cmocka_unit_test(test_abi_v1),
        cmocka_unit_test(test_register_invalid), cmocka_unit_test(test_register_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
