/*
 * loom — state store adapter interface.
 *
 * A store keeps JSON values by key for handlers (loom_store_get/set/... in
 * loom.h). The built-in "memory" store lives in the process; a shared store
 * (e.g. Redis) lets several instances of a service see the same state. A
 * store is a const table of operations registered for a URL scheme. Values
 * cross this interface as serialized JSON text so remote stores need no
 * cJSON knowledge.
 *
 * Rules: every operation may be called from any thread concurrently; an
 * operation does not block for long (remote stores bound their waits with
 * their own timeout; the file store holds its lock for one operation); a
 * store never calls back into the runtime.
 */
#ifndef LOOM_STORE_H
#define LOOM_STORE_H

#include "../loom.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 2 added cas, 3 added list. Tables of versions 1 and 2 are still accepted
 * (without the operations they lack). */
#define LOOM_STORE_ABI_VERSION 3

typedef struct loom_store_ops {
    uint32_t abi_version; /* LOOM_STORE_ABI_VERSION */
    const char *scheme;   /* "memory", "redis" */

    /* Creates the store for url with the `state:` options subtree (may be
     * NULL). Errors: LOOM_ECONFIG, LOOM_EUNAVAILABLE, LOOM_ENOMEM. */
    loom_err (*open)(void **self, const char *url, const cJSON *options);
    /* On LOOM_OK *json is a NUL-terminated copy allocated with malloc that
     * the core frees. LOOM_ENOTFOUND when absent or expired. */
    loom_err (*get)(void *self, const char *key, char **json);
    /* if_absent: fail with LOOM_EEXIST when the key exists. ttl_ms 0 = none. */
    loom_err (*set)(void *self, const char *key, const char *json, uint32_t ttl_ms, bool if_absent);
    loom_err (*del)(void *self, const char *key);
    loom_err (*incr)(void *self, const char *key, int64_t delta, int64_t *out);
    void (*close)(void *self);

    /* --- abi_version >= 2 --- */

    /* Compare-and-set, atomically: when the current value's JSON text is
     * byte for byte expected_json (NULL: when the key is absent or expired),
     * replaces it with new_json and ttl_ms as set does (NULL: deletes the
     * key; ttl_ms is then ignored) and returns LOOM_OK; otherwise changes
     * nothing and returns LOOM_EEXIST. The core passes both texts printed by
     * cJSON_PrintUnformatted. May be NULL: loom_store_cas then returns
     * LOOM_EUNSUPPORTED. */
    loom_err (*cas)(void *self, const char *key, const char *expected_json, const char *new_json,
                    uint32_t ttl_ms);

    /* --- abi_version >= 3 --- */

    /* Lists live keys that begin with prefix ("" = every key) and sort
     * strictly after `after` by strcmp (NULL = from the first), in strcmp
     * order, at most limit of them (1..1001). On LOOM_OK *keys is a malloc'd
     * array of *count malloc'd NUL-terminated keys (NULL when *count is 0)
     * that the core frees. loom__store_page (lib/store/store.h) does the
     * selection for stores that enumerate in no order. May be NULL:
     * loom_store_list then returns LOOM_EUNSUPPORTED. */
    loom_err (*list)(void *self, const char *prefix, const char *after, size_t limit, char ***keys,
                     size_t *count);
} loom_store_ops;

/* Registers a store for ops->scheme, process-wide and permanently: ops must
 * stay valid for the life of the process. LOOM_EEXIST when the scheme is
 * taken, LOOM_EINVAL for a bad ABI version, scheme or missing operation,
 * LOOM_EOVERLOAD when 16 schemes are registered. */
LOOM_API loom_err loom_store_register(const loom_store_ops *ops);

#ifdef __cplusplus
}
#endif
#endif
