/* Internal helpers shared by every part of the library. */
#ifndef LOOM_CORE_UTIL_H
#define LOOM_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"

#define LOOM__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Wall clock, epoch milliseconds (coarse: a few ms resolution). */
int64_t loom__now_ms(void);
/* Monotonic clock, milliseconds. */
int64_t loom__mono_ms(void);
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
/* Number of online CPUs (>= 1). */
unsigned loom__cpu_count(void);

#endif
