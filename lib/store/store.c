#define _GNU_SOURCE
#include "store.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec/json.h"
#include "core/features.h"
#include "core/util.h"

/* The scheme registry: process-wide by design (loom_store_register is).
 * Entries are only ever added, and the ops tables they point to are static,
 * so a pointer read under the lock stays valid after it is released. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static const loom_store_ops *registry[LOOM__STORE_MAX_SCHEMES];
static size_t registry_len;
static bool builtins_added;

#define MAX_SCHEME 32

/* Caller holds registry_lock. */
static void add_builtins_locked(void)
{
    if (builtins_added)
        return;
    registry[registry_len++] = &loom__store_memory_ops;
    registry[registry_len++] = &loom__store_file_ops;
#if LOOM_WITH_REDIS
    registry[registry_len++] = &loom__store_redis_ops;
#endif
    builtins_added = true;
}

/* Caller holds registry_lock. */
static const loom_store_ops *find_locked(const char *scheme, size_t len)
{
    for (size_t i = 0; i < registry_len; i++) {
        const char *s = registry[i]->scheme;
        if (strlen(s) == len && strncasecmp(s, scheme, len) == 0)
            return registry[i];
    }
    return NULL;
}

/* RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), bounded here. */
static bool valid_scheme(const char *s, size_t len)
{
    if (len == 0 || len >= MAX_SCHEME)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool other = (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
        if (!alpha && (i == 0 || !other))
            return false;
    }
    return true;
}

loom_err loom_store_register(const loom_store_ops *ops)
{
    /* Fields are only appended, so every version up to ours is readable. */
    if (!ops || ops->abi_version < 1 || ops->abi_version > LOOM_STORE_ABI_VERSION)
        return LOOM_EINVAL;
    if (!ops->scheme || !valid_scheme(ops->scheme, strnlen(ops->scheme, MAX_SCHEME)))
        return LOOM_EINVAL;
    if (!ops->open || !ops->get || !ops->set || !ops->del || !ops->incr || !ops->close)
        return LOOM_EINVAL;

    loom_err err = LOOM_OK;
    pthread_mutex_lock(&registry_lock);
    add_builtins_locked();
    if (find_locked(ops->scheme, strlen(ops->scheme)))
        err = LOOM_EEXIST;
    else if (registry_len == LOOM__ARRAY_LEN(registry))
        err = LOOM_EOVERLOAD;
    else
        registry[registry_len++] = ops;
    pthread_mutex_unlock(&registry_lock);
    return err;
}

loom_err loom__store_open(loom_store **out, const char *url, const cJSON *options)
{
    if (!out)
        return LOOM_EINVAL;
    *out = NULL;
    if (!url)
        return LOOM_EINVAL;
    const char *colon = memchr(url, ':', strnlen(url, MAX_SCHEME));
    if (!colon || !valid_scheme(url, (size_t)(colon - url)))
        return LOOM_EINVAL;

    pthread_mutex_lock(&registry_lock);
    add_builtins_locked();
    const loom_store_ops *ops = find_locked(url, (size_t)(colon - url));
    pthread_mutex_unlock(&registry_lock);
    if (!ops)
        return LOOM_EUNSUPPORTED;

    loom_store *s = malloc(sizeof *s);
    if (!s)
        return LOOM_ENOMEM;
    s->ops = ops;
    s->self = NULL;
    loom_err err = ops->open(&s->self, url, options);
    if (err != LOOM_OK) {
        free(s);
        return err;
    }
    *out = s;
    return LOOM_OK;
}

void loom__store_close(loom_store *s)
{
    if (!s)
        return;
    s->ops->close(s->self);
    free(s);
}

/* --- integers (shared by the stores' incr) ------------------------------ */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}
static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool loom__store_parse_integer(const char *s, int64_t *out)
{
    const char *p = s;
    while (is_ws(*p))
        p++;
    bool neg = *p == '-';
    if (neg)
        p++;
    if (!is_digit(*p) || (p[0] == '0' && is_digit(p[1])))
        return false;

    /* The digits read so far equal mant * 10^zeros: zeros are held back so
     * that trailing ones never overflow mant. */
    uint64_t mant = 0;
    long long zeros = 0, frac = 0, exp = 0;
    bool in_frac = false;
    for (;; p++) {
        if (*p == '.' && !in_frac && is_digit(p[1])) {
            in_frac = true;
            continue;
        }
        if (!is_digit(*p))
            break;
        if (in_frac)
            frac++;
        if (*p == '0') {
            if (mant)
                zeros++;
            continue;
        }
        for (long long z = 0; z <= zeros; z++)
            if (__builtin_mul_overflow(mant, 10, &mant))
                return false; /* more than 20 significant digits */
        if (__builtin_add_overflow(mant, (uint64_t)(*p - '0'), &mant))
            return false;
        zeros = 0;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        bool eneg = *p == '-';
        if (*p == '+' || *p == '-')
            p++;
        if (!is_digit(*p))
            return false;
        for (; is_digit(*p); p++)
            if (exp < 1000000) /* saturate: anything this big fails below */
                exp = exp * 10 + (*p - '0');
        if (eneg)
            exp = -exp;
    }
    while (is_ws(*p))
        p++;
    if (*p)
        return false;

    if (mant == 0) {
        *out = 0;
        return true;
    }
    /* value = mant * 10^e10, and mant has no trailing zero digit. */
    long long e10 = zeros - frac + exp;
    if (e10 < 0)
        return false; /* not integral */
    for (long long i = 0; i < e10; i++)
        if (__builtin_mul_overflow(mant, 10, &mant))
            return false;
    if (neg) {
        if (mant > (uint64_t)INT64_MAX + 1)
            return false;
        *out = mant == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mant;
    } else {
        if (mant > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)mant;
    }
    return true;
}

loom_err loom__store_incr_text(const char *cur_json, int64_t delta, int64_t *sum,
                               char text[LOOM__STORE_INT_TEXT])
{
    int64_t cur = 0, next;
    if (cur_json && !loom__store_parse_integer(cur_json, &cur))
        return LOOM_EINVAL;
    if (__builtin_add_overflow(cur, delta, &next))
        return LOOM_EINVAL;
    snprintf(text, LOOM__STORE_INT_TEXT, "%" PRId64, next);
    *sum = next;
    return LOOM_OK;
}

/* --- public operations -------------------------------------------------- */

static loom_err check_key(const loom_store *s, const char *key)
{
    if (!s || !key)
        return LOOM_EINVAL;
    size_t len = strnlen(key, LOOM__STORE_MAX_KEY + 1);
    if (len == 0 || len > LOOM__STORE_MAX_KEY)
        return LOOM_EINVAL;
    return LOOM_OK;
}

loom_err loom_store_get(loom_store *s, const char *key, cJSON **out)
{
    if (out)
        *out = NULL;
    loom_err err = check_key(s, key);
    if (err != LOOM_OK)
        return err;
    if (!out)
        return LOOM_EINVAL;

    char *json = NULL;
    err = s->ops->get(s->self, key, &json);
    if (err != LOOM_OK) {
        free(json); /* in case a faulty adapter left something behind */
        return err;
    }
    if (!json)
        return LOOM_EPARSE;
    /* The whole text must be one JSON value: anything after it is corrupt. */
    cJSON *v = cJSON_ParseWithOpts(json, NULL, true);
    free(json);
    if (!v)
        return LOOM_EPARSE;
    *out = v;
    return LOOM_OK;
}

static loom_err store_put(loom_store *s, const char *key, const cJSON *value, uint32_t ttl_ms,
                          bool if_absent)
{
    loom_err err = check_key(s, key);
    if (err != LOOM_OK)
        return err;
    if (!value || cJSON_IsInvalid(value))
        return LOOM_EINVAL;
    char *json = loom__json_print(value, &err);
    if (!json)
        return err == LOOM_ENOMEM ? LOOM_ENOMEM : LOOM_EINVAL;
    err = s->ops->set(s->self, key, json, ttl_ms, if_absent);
    free(json);
    return err;
}

loom_err loom_store_set(loom_store *s, const char *key, const cJSON *value, uint32_t ttl_ms)
{
    return store_put(s, key, value, ttl_ms, false);
}

loom_err loom_store_add(loom_store *s, const char *key, const cJSON *value, uint32_t ttl_ms)
{
    return store_put(s, key, value, ttl_ms, true);
}

loom_err loom_store_delete(loom_store *s, const char *key)
{
    loom_err err = check_key(s, key);
    if (err != LOOM_OK)
        return err;
    return s->ops->del(s->self, key);
}

loom_err loom_store_incr(loom_store *s, const char *key, int64_t delta, int64_t *out)
{
    loom_err err = check_key(s, key);
    if (err != LOOM_OK)
        return err;
    int64_t v = 0;
    err = s->ops->incr(s->self, key, delta, &v);
    if (err == LOOM_OK && out)
        *out = v;
    return err;
}

loom_err loom_store_cas(loom_store *s, const char *key, const cJSON *expected, const cJSON *value,
                        uint32_t ttl_ms)
{
    loom_err err = check_key(s, key);
    if (err != LOOM_OK)
        return err;
    if ((expected && cJSON_IsInvalid(expected)) || (value && cJSON_IsInvalid(value)))
        return LOOM_EINVAL;
    /* A version 1 table ends before cas: do not read past it. */
    if (s->ops->abi_version < 2 || !s->ops->cas)
        return LOOM_EUNSUPPORTED;
    loom_err e1 = LOOM_OK, e2 = LOOM_OK;
    char *old_json = expected ? loom__json_print(expected, &e1) : NULL;
    char *new_json = value ? loom__json_print(value, &e2) : NULL;
    if ((expected && !old_json) || (value && !new_json))
        err = e1 == LOOM_ENOMEM || e2 == LOOM_ENOMEM ? LOOM_ENOMEM : LOOM_EINVAL;
    else
        err = s->ops->cas(s->self, key, old_json, new_json, ttl_ms);
    free(old_json);
    free(new_json);
    return err;
}

/* --- list ----------------------------------------------------------------- */

#define LIST_DEFAULT 100
#define LIST_MAX 1000

void loom__store_page_init(loom__store_page *pg, const char *prefix, const char *after,
                           size_t limit)
{
    *pg = (loom__store_page){.prefix = prefix ? prefix : "", .after = after, .limit = limit};
    pg->prefix_len = strlen(pg->prefix);
}

/* strcmp of key (len bytes) against the NUL-terminated s. */
static int cmp_len(const char *key, size_t len, const char *s)
{
    size_t slen = strlen(s);
    int c = memcmp(key, s, len < slen ? len : slen);
    return c ? c : (len > slen) - (len < slen);
}

void loom__store_page_offer(loom__store_page *pg, const char *key, size_t len)
{
    if (pg->nomem || len < pg->prefix_len || memcmp(key, pg->prefix, pg->prefix_len) != 0 ||
        memchr(key, '\0', len))
        return;
    if (pg->after && cmp_len(key, len, pg->after) <= 0)
        return;
    /* Binary search for the insertion point among the kept keys. */
    size_t lo = 0, hi = pg->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_len(key, len, pg->keys[mid]);
        if (c == 0)
            return; /* offered twice (Redis SCAN may repeat a key) */
        if (c > 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == pg->limit)
        return; /* the page is full of smaller keys */
    if (!pg->keys && !(pg->keys = malloc(pg->limit * sizeof *pg->keys))) {
        pg->nomem = true;
        return;
    }
    char *copy = strndup(key, len);
    if (!copy) {
        pg->nomem = true;
        return;
    }
    if (pg->count == pg->limit)
        free(pg->keys[--pg->count]); /* the largest falls off */
    memmove(&pg->keys[lo + 1], &pg->keys[lo], (pg->count - lo) * sizeof *pg->keys);
    pg->keys[lo] = copy;
    pg->count++;
}

loom_err loom__store_page_finish(loom__store_page *pg, char ***keys, size_t *count)
{
    if (pg->nomem) {
        for (size_t i = 0; i < pg->count; i++)
            free(pg->keys[i]);
        free(pg->keys);
        *pg = (loom__store_page){0};
        return LOOM_ENOMEM;
    }
    *keys = pg->keys;
    *count = pg->count;
    pg->keys = NULL;
    pg->count = 0;
    return LOOM_OK;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

/* Checks what a faulty adapter could get wrong: order, bounds, the prefix. */
static bool page_valid(char **keys, size_t n, size_t asked, const char *prefix, const char *after)
{
    if (n > asked || (n && !keys))
        return false;
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || strncmp(keys[i], prefix, plen) != 0 ||
            (after && strcmp(keys[i], after) <= 0) || (i && strcmp(keys[i - 1], keys[i]) >= 0))
            return false;
    }
    return true;
}

loom_err loom_store_list(loom_store *s, const char *prefix, const char *after, size_t limit,
                         cJSON **out, bool *more)
{
    if (out)
        *out = NULL;
    if (more)
        *more = false;
    if (!s || !out || limit > LIST_MAX)
        return LOOM_EINVAL;
    if (!prefix)
        prefix = "";
    if (after && !*after)
        after = NULL;
    if (strnlen(prefix, LOOM__STORE_MAX_KEY + 1) > LOOM__STORE_MAX_KEY ||
        (after && strnlen(after, LOOM__STORE_MAX_KEY + 1) > LOOM__STORE_MAX_KEY))
        return LOOM_EINVAL;
    /* Tables of version 1 and 2 end before list: do not read past them. */
    if (s->ops->abi_version < 3 || !s->ops->list)
        return LOOM_EUNSUPPORTED;
    if (limit == 0)
        limit = LIST_DEFAULT;
    /* One more than asked tells whether another page follows. */
    char **keys = NULL;
    size_t n = 0;
    loom_err err = s->ops->list(s->self, prefix, after, limit + 1, &keys, &n);
    if (err != LOOM_OK) {
        free_keys(keys, n); /* in case a faulty adapter left something behind */
        return err;
    }
    if (!page_valid(keys, n, limit + 1, prefix, after)) {
        free_keys(keys, n);
        return LOOM_EIO;
    }
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n && i < limit; i++) {
        cJSON *k = cJSON_CreateString(keys[i]);
        if (!k || !cJSON_AddItemToArray(arr, k)) {
            cJSON_Delete(k);
            cJSON_Delete(arr);
            arr = NULL;
        }
    }
    free_keys(keys, n);
    if (!arr)
        return LOOM_ENOMEM;
    if (more)
        *more = n > limit;
    *out = arr;
    return LOOM_OK;
}
