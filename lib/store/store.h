/* Internal: opening state stores by URL, and the built-in stores. */
#ifndef LOOM_STORE_STORE_H
#define LOOM_STORE_STORE_H

#include <string.h>

#include "loom.h"
#include "loom/store.h"

/* Keys are 1..LOOM__STORE_MAX_KEY bytes (checked by loom_store_*). */
#define LOOM__STORE_MAX_KEY 1024
/* At most this many store schemes (built-in ones included) per process. */
#define LOOM__STORE_MAX_SCHEMES 16

/* An open store: the adapter and its instance. Immutable after open, so any
 * thread may use it; the adapter does its own locking. */
struct loom_store {
    const loom_store_ops *ops;
    void *self;
};

/* Opens the store for url ("memory:" or "memory:NAME", "redis://..."): the
 * scheme is the part before ':' (case-insensitive). options = the `state:`
 * config subtree or NULL. Errors: LOOM_EINVAL (NULL argument, no scheme),
 * LOOM_EUNSUPPORTED (unknown scheme), whatever the adapter's open returns
 * (LOOM_ECONFIG, LOOM_EUNAVAILABLE, LOOM_ENOMEM). Any thread. */
loom_err loom__store_open(loom_store **out, const char *url, const cJSON *options);
/* Closes the adapter's instance and frees s. Accepts NULL. No operation on
 * s may be running or start afterwards. */
void loom__store_close(loom_store *s);

/* Parses JSON text that must be exactly one number with an integral value
 * in int64 range ("42", "-7", "1e3", "2.50e1", surrounding JSON whitespace
 * allowed), exactly: no doubles, no locale. False for anything else (other
 * JSON types, fractions, overflow). */
bool loom__store_parse_integer(const char *json, int64_t *out);

/* Room for the text incr stores: "-9223372036854775808" and a NUL. */
#define LOOM__STORE_INT_TEXT 21

/* incr's arithmetic, shared by the stores so that they judge values alike:
 * cur_json is the current value's text (NULL when the key is absent or
 * expired: 0) and must be an integer for loom__store_parse_integer. Puts
 * cur + delta in *sum and its decimal text in text. LOOM_EINVAL when
 * cur_json is no integer or the sum overflows int64 (*sum and text are
 * then left alone). Any thread; touches nothing else. */
loom_err loom__store_incr_text(const char *cur_json, int64_t delta, int64_t *sum,
                               char text[LOOM__STORE_INT_TEXT]);

/* cas's comparison, for stores that do it in C: whether the current value
 * cur (NULL: absent or expired) matches expected_json (NULL: "only if
 * absent") byte for byte, as loom_store_ops.cas defines. */
static inline bool loom__store_cas_match(const char *cur, const char *expected_json)
{
    return expected_json ? cur && strcmp(cur, expected_json) == 0 : !cur;
}

/* list's selection, for stores that enumerate keys in no particular order:
 * offer every live key and the page keeps the `limit` smallest that begin
 * with prefix and sort after `after`, in strcmp order, with memory bounded
 * by limit. Not locked: one thread fills one page. */
typedef struct loom__store_page {
    const char *prefix; /* "" = every key */
    size_t prefix_len;
    const char *after; /* NULL = from the first */
    size_t limit;      /* >= 1 */
    char **keys;       /* sorted; malloc'd strings */
    size_t count;
    bool nomem; /* an allocation failed: finish with LOOM_ENOMEM */
} loom__store_page;

/* Sets up an empty page (allocates nothing yet). */
void loom__store_page_init(loom__store_page *pg, const char *prefix, const char *after,
                           size_t limit);
/* Offers key (len bytes, no NUL inside needed). Any key may be offered:
 * those outside the page are ignored. */
void loom__store_page_offer(loom__store_page *pg, const char *key, size_t len);
/* Hands the page over as list returns it (LOOM_OK, or LOOM_ENOMEM after
 * freeing everything). */
loom_err loom__store_page_finish(loom__store_page *pg, char ***keys, size_t *count);

/* The "memory" store (memory.c), registered lazily by the registry.
 *   "memory:"      a store private to its opener;
 *   "memory:NAME"  shared by everyone in the process who opens the same
 *                  NAME ("memory://NAME" is the same), freed when the last
 *                  of them closes it.
 * Values are kept as JSON text with an optional expiry; expired entries are
 * invisible and purged lazily (on access and when a table grows). */
extern const loom_store_ops loom__store_memory_ops;

/* The "file" store (file.c), registered lazily by the registry.
 *   "file:PATH", "file:///abs/PATH", "file://localhost/abs/PATH"
 * One JSON file shared by every store (in any process on the machine) that
 * opens the same PATH; a relative PATH is resolved against the working
 * directory at open. Each operation locks PATH.lock (flock), reloads the
 * file when it changed and, for writes, replaces it atomically. */
extern const loom_store_ops loom__store_file_ops;

/* The "redis" store (redis.c), registered lazily by the registry.
 *   "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]", HOST may be "[IPv6]";
 *   port 6379 and database 0 by default; the password may also come from
 *   the `password` option (the URL's wins).
 * Options: `prefix` (prepended to every key, default "loom:"), `password`,
 * `timeout_ms` (bounds each operation: waiting for a connection,
 * connecting, each command; default 2000). Up to 8 pooled connections;
 * while Redis is unreachable every operation fails with LOOM_EUNAVAILABLE
 * within timeout_ms, and the store reconnects by itself. open fails with
 * LOOM_ECONFIG for a bad URL or option, or when the server refuses the
 * password or database; an unreachable server is not an open error. */
extern const loom_store_ops loom__store_redis_ops;

#endif
