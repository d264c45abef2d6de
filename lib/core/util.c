#define _GNU_SOURCE
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <strings.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int64_t loom__now_ms(void)
{
    /* The coarse clock (a few ms resolution, no clock read): timestamps and
     * deadlines are whole milliseconds and every message needs one. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t loom__mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct timespec loom__mono_after(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (ms < 0)
        ms = 0;
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int64_t loom__coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t loom__coarse_sure_ns(void)
{
    static _Atomic int64_t sure;
    int64_t s = atomic_load_explicit(&sure, memory_order_relaxed);
    if (!s) {
        struct timespec r;
        s = clock_getres(CLOCK_MONOTONIC_COARSE, &r) == 0
                ? 2 * ((int64_t)r.tv_sec * 1000000000 + r.tv_nsec)
                : 2 * 4000000;
        atomic_store_explicit(&sure, s, memory_order_relaxed);
    }
    return s;
}

/* xoshiro256** per thread, seeded from getrandom(); ids only need to be
 * unique, not secret. */
static _Thread_local uint64_t rng[4];
static _Thread_local bool rng_ready;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    if (!rng_ready) {
        if (getrandom(rng, sizeof rng, 0) != (ssize_t)sizeof rng) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            rng[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
            rng[1] = (uint64_t)(uintptr_t)&rng ^ (uint64_t)ts.tv_sec;
            rng[2] = 0x9e3779b97f4a7c15ull;
            rng[3] = 0xbf58476d1ce4e5b9ull;
        }
        rng_ready = true;
    }
    uint64_t result = rotl(rng[1] * 5, 7) * 9;
    uint64_t t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

/* 16 lowercase hex digits from the 64 bits of v, in no particular order
 * (the bits are random): each byte of the two halves holds one nibble, and
 * adding 0x30 ('0'), plus 0x27 for the nibbles above 9, makes it a digit. */
static void hex16(uint64_t v, char out[16])
{
    const uint64_t nib = 0x0F0F0F0F0F0F0F0Full, ones = 0x0101010101010101ull;
    uint64_t half[2] = {v & nib, (v >> 4) & nib};
    for (int i = 0; i < 2; i++) {
        uint64_t above9 = ((half[i] + 6 * ones) >> 4) & ones;
        half[i] += 0x30 * ones + above9 * ('a' - '0' - 10);
    }
    memcpy(out, half, 16);
}

void loom__random_id(char out[33])
{
    hex16(rng_next(), out);
    hex16(rng_next(), out + 16);
    out[32] = '\0';
}

/* 1 for the characters of an id (0-9, a-f). */
static const unsigned char id_char[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
};

bool loom__is_id(const char *s)
{
    if (!s)
        return false;
    for (int i = 0; i < 32; i++)
        if (!id_char[(unsigned char)s[i]]) /* also stops at the NUL */
            return false;
    return s[32] == '\0';
}

char *loom__strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *loom__asprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

void loom__strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strnlen(src, n - 1);
    memcpy(dst, src, len);
    dst[len] = '\0';
}

bool loom__parse_int(const char *s, long long min, long long max, long long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

_Thread_local unsigned loom__callback_depth;

void loom__mutex_init_adaptive(pthread_mutex_t *mu)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
}

unsigned loom__cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

bool loom__utf8_valid(const void *data, size_t n)
{
    const unsigned char *s = data;
    for (size_t i = 0; i < n;) {
        /* ASCII eight bytes at a time: JSON text mostly is. */
        uint64_t w;
        if (n - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ULL) == 0)) {
            i += 8;
            continue;
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = loom__utf8_seq(s + i, n - i);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

bool loom__sbuf_grow(loom__sbuf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (extra > SIZE_MAX / 4 - b->len) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + extra + 1, cap = b->cap ? b->cap * 2 : 256;
    if (cap < need)
        cap = need;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    if (!b->p)
        p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return true;
}

void loom__sbuf_puts(loom__sbuf *b, const char *s)
{
    loom__sbuf_add(b, s, strlen(s));
}

void loom__sbuf_printf(loom__sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        loom__sbuf_add(b, tmp, (size_t)n);
        return;
    }
    if (!loom__sbuf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ------------------------------------------------------------------------ */
/* Masking secrets                                                           */

static const char *const secret_keys[] = {
    "password", "passwd", "secret",     "secret_key",  "token",         "api_key",
    "api-key",  "apikey", "access_key", "private_key", "authorization",
};

/* The rules (docs/security.md):
 * - URL userinfo: after "scheme://", everything up to the last '@' before
 *   the authority ends (at '/', '?', '#', whitespace, '"', '<', '>', '`'
 *   or the end): RFC 3986 allows ",;&()'" and more unencoded there.
 * - A key above (on a word boundary, any case), an optional closing '"',
 *   spaces, '=' or ':', spaces, then the value: quoted ('"' or '\''), up to
 *   the closing quote (a '\\' escapes the next byte); unquoted, up to
 *   whitespace, a closing delimiter ("'<>`&{}()[]) or a ',' or ';' that is
 *   followed by whitespace or the end (so "a;b" and "p,w" are one value).
 * - After "Authorization", a scheme word ("Basic ", "Digest ") is kept;
 *   "Bearer " anywhere is kept and the token after it hidden. */

/* Where a URL's authority ends. */
static bool authority_stop(char c)
{
    return isspace((unsigned char)c) || strchr("/?#\"<>`", c);
}

/* Where an unquoted value ends (at in[i]). */
static bool value_stop(const char *in, size_t n, size_t i)
{
    char c = in[i];
    if (c == '\0' || isspace((unsigned char)c) || strchr("\"'<>`&{}()[]", c))
        return true;
    return (c == ',' || c == ';') && (i + 1 == n || isspace((unsigned char)in[i + 1]));
}

typedef struct mask_out {
    char *p;
    size_t len, cap;
} mask_out;

static void mask_put(mask_out *o, const char *s, size_t n)
{
    size_t room = o->cap - 1 - o->len;
    if (n > room)
        n = room;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* "scheme://" at in[i]: the length of the userinfo to hide (up to the last
 * '@' before the authority's end), or 0. */
static size_t userinfo_len(const char *in, size_t n, size_t i)
{
    size_t at = 0, j = i;
    for (; j < n && !authority_stop(in[j]); j++)
        if (in[j] == '@')
            at = j;
    return at > i ? at - i : 0;
}

static size_t skip_spaces(const char *in, size_t n, size_t j)
{
    while (j < n && (in[j] == ' ' || in[j] == '\t'))
        j++;
    return j;
}

/* A secret key at in[i] (on a word boundary): the length of the key,
 * separator and opening quote to keep, or 0; *quote is the quote. */
static size_t secret_key_len(const char *in, size_t n, size_t i, char *quote)
{
    if (i > 0 && isalnum((unsigned char)in[i - 1]))
        return 0;
    for (size_t k = 0; k < LOOM__ARRAY_LEN(secret_keys); k++) {
        size_t kl = strlen(secret_keys[k]);
        if (n - i < kl || strncasecmp(in + i, secret_keys[k], kl) != 0)
            continue;
        size_t j = i + kl;
        if (j < n && in[j] == '"')
            j++;
        j = skip_spaces(in, n, j);
        if (j >= n || (in[j] != '=' && in[j] != ':'))
            continue;
        j = skip_spaces(in, n, j + 1);
        *quote = j < n && (in[j] == '"' || in[j] == '\'') ? in[j] : 0;
        if (*quote)
            j++;
        if (strcmp(secret_keys[k], "authorization") == 0) { /* keep the scheme */
            size_t w = j;
            while (w < n && isalpha((unsigned char)in[w]))
                w++;
            if (w > j && w + 1 < n && in[w] == ' ' && !value_stop(in, n, w + 1))
                j = w + 1;
        }
        if (j >= n || (*quote ? in[j] == *quote : value_stop(in, n, j)))
            return 0;
        return j - i;
    }
    return 0;
}

/* The end of the value starting at in[i]. */
static size_t value_end(const char *in, size_t n, size_t i, char quote)
{
    if (!quote) {
        while (i < n && !value_stop(in, n, i))
            i++;
        return i;
    }
    for (; i < n && in[i] != quote; i++)
        if (in[i] == '\\' && i + 1 < n)
            i++;
    return i;
}

size_t loom__mask_secrets(const char *in, size_t n, char *out, size_t cap)
{
    if (!cap)
        return 0;
    mask_out o = {out, 0, cap};
    size_t i = 0;
    while (i < n && o.len < cap - 1) {
        size_t keep = 0, hide = 0;
        char quote = 0;
        if (i >= 1 && n - i >= 3 && memcmp(in + i, "://", 3) == 0 &&
            isalnum((unsigned char)in[i - 1])) {
            keep = 3;
            hide = userinfo_len(in, n, i + 3);
        } else if (n - i > 7 && strncasecmp(in + i, "bearer ", 7) == 0 &&
                   !value_stop(in, n, i + 7)) {
            keep = 7;
            hide = 1;
        } else if ((keep = secret_key_len(in, n, i, &quote)) > 0) {
            hide = 1;
        }
        if (!hide) {
            mask_put(&o, in + i, keep ? keep : 1);
            i += keep ? keep : 1;
            continue;
        }
        mask_put(&o, in + i, keep);
        i += keep;
        if (hide == 1) /* a value: up to where it stops */
            i = value_end(in, n, i, quote);
        else
            i += hide;
        mask_put(&o, "***", 3);
    }
    out[o.len] = '\0';
    return o.len;
}

loom_err loom__struct_check(const void *p, size_t size, size_t v0, size_t ours)
{
    if (size == 0)
        return LOOM_OK;
    if (size < v0)
        return LOOM_EINVAL;
    for (size_t i = ours; i < size; i++)
        if (((const unsigned char *)p)[i])
            return LOOM_EUNSUPPORTED;
    return LOOM_OK;
}

loom_err loom__service_def_check(const loom_service_def *def, const char **what)
{
    const char *unused;
    if (!what)
        what = &unused;
    *what = "the service definition";
    loom_err err = LOOM__STRUCT_CHECK(def, LOOM__V0_SERVICE_DEF);
    for (size_t i = 0; err == LOOM_OK && def->commands && def->commands[i]; i++) {
        *what = def->commands[i]->name ? def->commands[i]->name : "a command";
        err = LOOM__STRUCT_CHECK(def->commands[i], LOOM__V0_COMMAND_DEF);
    }
    for (size_t i = 0; err == LOOM_OK && def->subscriptions && def->subscriptions[i]; i++) {
        *what = def->subscriptions[i]->name ? def->subscriptions[i]->name : "a subscription";
        err = LOOM__STRUCT_CHECK(def->subscriptions[i], LOOM__V0_SUBSCRIPTION_DEF);
    }
    return err;
}
