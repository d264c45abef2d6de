/* The state store conformance suite: the semantics every store must have
 * (get/set/add/delete, incr, TTL, compare-and-set, threads, big values,
 * adapter arguments, listing by prefix), written once and run by each store's test binary
 * against the store a factory gives it:
 *
 *     static const t_store_factory factory = {
 *         .name = "memory", .reset = ..., .open = ..., .ctx = ...,
 *         .ttl_ms = 30, .threads = 8, .ops = 10000, .cas_rounds = 2000,
 *     };
 *     const struct CMUnitTest tests[] = {
 *         T_STORE_SUITE(&factory),
 *         cmocka_unit_test(test_something_only_this_store_has),
 *     };
 *
 * Each suite test calls reset before it runs (a new, empty store) and
 * cleanup after it, and opens one or two handles with open: every handle
 * opened between two resets sees the same data, but the data need not
 * outlive the last handle (a named memory store does not). Store-specific
 * behaviour (files, pools, servers going away) stays in the store's own
 * tests.
 *
 * Also the small helpers those tests share. Everything here fails the
 * running cmocka test on error; use it from the test's main thread, except
 * what the suite's own workers do. */
#ifndef LOOM_TEST_STORE_SUITE_H
#define LOOM_TEST_STORE_SUITE_H

#include <stdbool.h>
#include <stdint.h>

#include "support/support.h"

typedef struct t_store_factory {
    const char *name; /* in failure messages */
    /* Before each suite test: from now on open gives handles on a new,
     * empty store. 0 on success (anything else fails the test). */
    int (*reset)(void *ctx);
    /* A new handle on the current store; fails the test when it cannot. */
    loom_store *(*open)(void *ctx);
    /* Closes a handle from open. NULL: loom__store_close. */
    void (*close)(void *ctx, loom_store *s);
    /* After each suite test, even a failed one. 0 on success. May be NULL. */
    int (*cleanup)(void *ctx);
    void *ctx;

    /* A TTL the store honours to the millisecond or so and that a test
     * can outrun: a handful of operations take well under ttl_ms * 5 / 6.
     * Tests wait ttl_ms * 3 / 2 for such a TTL to pass. */
    uint32_t ttl_ms;
    int threads;    /* threads of the concurrency tests (1..16) */
    int ops;        /* operations per thread in the mixed-operations test */
    int cas_rounds; /* successful swaps per thread in the cas loop test */
    /* The adapter's set refuses text that is not exactly one JSON value
     * (with LOOM_EINVAL) instead of storing it. */
    bool json_only;
} t_store_factory;

/* The suite's tests, as entries of a CMUnitTest array (data only). f must
 * stay valid while the tests run; the group state, when a group setup
 * sets one, must be NULL (cmocka would hand it to the tests instead). */
#define T_STORE_SUITE_TEST(name, f)                                                                \
    cmocka_unit_test_prestate_setup_teardown(name, t_store_suite_setup, t_store_suite_teardown,    \
                                             (void *)(f))
#define T_STORE_SUITE(f)                                                                           \
    T_STORE_SUITE_TEST(t_store_suite_set_get, f), T_STORE_SUITE_TEST(t_store_suite_add_delete, f), \
        T_STORE_SUITE_TEST(t_store_suite_incr, f),                                                 \
        T_STORE_SUITE_TEST(t_store_suite_incr_raw_text, f),                                        \
        T_STORE_SUITE_TEST(t_store_suite_ttl, f), T_STORE_SUITE_TEST(t_store_suite_cas, f),        \
        T_STORE_SUITE_TEST(t_store_suite_cas_threads, f),                                          \
        T_STORE_SUITE_TEST(t_store_suite_threads, f),                                              \
        T_STORE_SUITE_TEST(t_store_suite_big_values, f),                                           \
        T_STORE_SUITE_TEST(t_store_suite_adapter_args, f),                                         \
        T_STORE_SUITE_TEST(t_store_suite_list, f), T_STORE_SUITE_TEST(t_store_suite_list_many, f)

int t_store_suite_setup(void **state);
int t_store_suite_teardown(void **state);
void t_store_suite_set_get(void **state);
void t_store_suite_add_delete(void **state);
void t_store_suite_incr(void **state);
void t_store_suite_incr_raw_text(void **state);
void t_store_suite_ttl(void **state);
void t_store_suite_cas(void **state);
void t_store_suite_cas_threads(void **state);
void t_store_suite_threads(void **state);
void t_store_suite_big_values(void **state);
void t_store_suite_adapter_args(void **state);
void t_store_suite_list(void **state);
void t_store_suite_list_many(void **state);

/* --- helpers ------------------------------------------------------------ */

/* Opens url with options (JSON text, or NULL for none) through the
 * registry; fails the test with the error when it cannot. */
loom_store *t_store_open(const char *url, const char *options);
/* Stores the JSON value text for key. */
void t_store_set_text(loom_store *s, const char *key, const char *text, uint32_t ttl_ms);
/* The value of key is the JSON value text (compared as JSON). */
void t_store_assert_value(loom_store *s, const char *key, const char *text);
/* key is absent: LOOM_ENOTFOUND, and the out value stays NULL. */
void t_store_assert_absent(loom_store *s, const char *key);
/* loom_store_cas with expected and value given as JSON text (NULL: NULL). */
loom_err t_store_cas_text(loom_store *s, const char *key, const char *expected, const char *value,
                          uint32_t ttl_ms);
/* Adds 1 to member "n" of the JSON object under key "doc", rounds times,
 * each by a read-modify-cas loop that retries while the document changes
 * under it (LOOM_EEXIST). Returns how many rounds failed otherwise (0: all
 * done). No cmocka inside: for worker threads and forked children. */
int t_store_cas_loop(loom_store *s, int rounds);

#endif
