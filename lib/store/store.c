#define _GNU_SOURCE
#include "store.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec/json.h"
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
    registry[registry_len++] = &loom__store_redis_ops;
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
