/* Internal helpers shared by every part of the library. */
#ifndef LOOM_CORE_UTIL_H
#define LOOM_CORE_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <string.h>

#include "loom.h"
#include "loom/test.h"

#define LOOM__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Wall clock, epoch milliseconds (coarse: a few ms resolution). */
int64_t loom__now_ms(void);
/* Monotonic clock, milliseconds. */
int64_t loom__mono_ms(void);
/* CLOCK_MONOTONIC now plus ms (>= 0): the deadline for pthread_cond_timedwait
 * on the condition variables loom creates (all on the monotonic clock). */
struct timespec loom__mono_after(int64_t ms);
/* The coarse monotonic clock (a few ns to read) in ns, and the shortest
 * span it tells apart from zero for sure: two of its ticks (a span of one
 * tick may be a few ns that crossed a tick). */
int64_t loom__coarse_ns(void);
int64_t loom__coarse_sure_ns(void);
/* 32 random lowercase hex characters + NUL (thread-safe, fast, not crypto). */
void loom__random_id(char out[33]);
/* True when s is exactly 32 lowercase hex characters. */
bool loom__is_id(const char *s);
/* strdup that accepts NULL (returns NULL). */
char *loom__strdup(const char *s);
/* snprintf into a malloc'd string. NULL on failure. */
char *loom__asprintf(const char *fmt, ...) LOOM_PRINTF(1, 2);
/* Copies src into dst of size n, always NUL-terminating (n > 0). */
void loom__strlcpy(char *dst, const char *src, size_t n);
/* Parses a whole decimal integer in [min, max]. */
bool loom__parse_int(const char *s, long long min, long long max, long long *out);
/* How deep this thread is in user code that loom called (handlers, reply
 * callbacks, log and auth callbacks): loom__invoke runs a command inline
 * only at depth 0, i.e. for the application's own threads. */
extern _Thread_local unsigned loom__callback_depth;
/* Initializes a mutex that spins briefly before sleeping (for short,
 * often contended critical sections). */
void loom__mutex_init_adaptive(pthread_mutex_t *mu);
/* Number of online CPUs (>= 1). */
unsigned loom__cpu_count(void);

/* The one masking rule for secrets in text that leaves the process (every
 * log line, configuration errors): copies n bytes of in to out (cap bytes,
 * always NUL-terminated, cut if needed) with credentials replaced by "***":
 * URL userinfo (the "user:pass" of "mqtt://user:pass@host"), the value
 * after a secret key (password, token, api_key, authorization, ...)
 * followed by '=' or ':' (spaces allowed, also as JSON "key" : "value"),
 * and a bearer token ("Bearer ***"); the rules are in util.c and
 * docs/security.md. Returns the length written. Errs on the side of
 * masking (a path with '@' after "://" is masked too). */
size_t loom__mask_secrets(const char *in, size_t n, char *out, size_t cap);

/* UTF-8 (Unicode 15, table 3-7): the length of the well-formed sequence at
 * s (avail >= 1 bytes readable), or 0 when it is malformed: overlong, a
 * surrogate, above U+10FFFF, a stray continuation byte or truncated.
 * Inline: the envelope decoder calls it for every non-ASCII sequence. */
static inline size_t loom__utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0)
        return avail >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3)
            return 0;
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c < 0xF5) {
        if (avail < 4)
            return 0;
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* The value of hex digit c (either case), or -1. */
static inline int loom__hex_digit(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* True when the n bytes at s are well-formed UTF-8 (NUL bytes included). */
bool loom__utf8_valid(const void *s, size_t n);

/* A growable NUL-terminated string buffer. Start from {0}. After an
 * allocation failure `oom` is set and every later write is a no-op, so a
 * builder checks once at the end. p is malloc'd (free it; NULL until the
 * first write). Invariant once p is set: len < cap (room for the NUL). */
typedef struct loom__sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} loom__sbuf;

/* Grows b so that extra more bytes and the NUL fit; false (oom) when it
 * cannot. Use loom__sbuf_reserve. */
bool loom__sbuf_grow(loom__sbuf *b, size_t extra);

/* Makes room for extra more bytes and the NUL; false after a failure. */
static inline bool loom__sbuf_reserve(loom__sbuf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (b->p && extra < b->cap - b->len)
        return true;
    return loom__sbuf_grow(b, extra);
}

/* Appends n bytes (inline: the envelope encoder's hot path). */
static inline void loom__sbuf_add(loom__sbuf *b, const char *s, size_t n)
{
    if (!loom__sbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void loom__sbuf_puts(loom__sbuf *b, const char *s);
void loom__sbuf_printf(loom__sbuf *b, const char *fmt, ...) LOOM_PRINTF(2, 3);

/* --- extensible structs (loom.h, EXTENSIBLE STRUCTS; docs/abi.md) ----------
 * A caller's struct starts with `size_t size`: the sizeof it was compiled
 * with, or 0 for the first layout. LOOM__V0_* is where each first layout
 * ends (the end of its last field): it never changes when fields are
 * appended. Read an appended field only when LOOM__HAS(p, V0, field). */
#define LOOM__END(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
#define LOOM__V0_CALL LOOM__END(loom_call, reply_inline)
#define LOOM__V0_RUNTIME_CONFIG LOOM__END(loom_runtime_config, log_user)
#define LOOM__V0_MAIN_OPTIONS LOOM__END(loom_main_options, users)
#define LOOM__V0_COMMAND_DEF LOOM__END(loom_command_def, errors)
#define LOOM__V0_SUBSCRIPTION_DEF LOOM__END(loom_subscription_def, payload_schema)
#define LOOM__V0_SERVICE_DEF LOOM__END(loom_service_def, assert_formats)
#define LOOM__V0_TEST_OPTIONS LOOM__END(loom_test_options, log_level)
#define LOOM__HAS(p, v0, field)                                                                    \
    (((p)->size ? (p)->size : (v0)) >= offsetof(__typeof__(*(p)), field) + sizeof((p)->field))

/* Checks a caller's struct p of `size` bytes (0 = the first layout, v0
 * bytes) against this library's sizeof `ours`: LOOM_OK; LOOM_EINVAL when
 * size is below the first layout (not set by an _INIT macro); LOOM_EUNSUPPORTED
 * when it is larger and a byte past ours is not zero (a field from a newer
 * loom is set). */
loom_err loom__struct_check(const void *p, size_t size, size_t v0, size_t ours);
#define LOOM__STRUCT_CHECK(p, v0) loom__struct_check((p), (p)->size, (v0), sizeof *(p))
/* LOOM__STRUCT_CHECK of a service definition, its commands and its
 * subscriptions; *what (optional) names the one that failed, e.g.
 * "command 'get'" (static or borrowed from def). */
loom_err loom__service_def_check(const loom_service_def *def, const char **what);

#endif
