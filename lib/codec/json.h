/* Internal: JSON text in and out (json.c). Every byte of JSON that loom
 * reads from a network or writes to one goes through these functions. */
#ifndef LOOM_CODEC_JSON_H
#define LOOM_CODEC_JSON_H

#include <stddef.h>

#include "core/util.h"
#include "loom.h"

/* Room for any number loom__json_number writes, with its NUL. */
#define LOOM__JSON_NUMBER_MAX 32

/* Parses len bytes of untrusted JSON (not NUL-terminated) into *out: one
 * value, optionally surrounded by whitespace. Refused, with a one-line
 * reason in why (may be NULL): invalid UTF-8, raw control characters,
 * \u0000 escapes, nesting deeper than max_depth containers, data after the
 * value, numbers that are not finite (1e999), malformed JSON. *at (may be
 * NULL) gets the byte offset of the problem when one is known, else len.
 * LOOM_EPARSE, LOOM_ETOOBIG (too deep), LOOM_ENOMEM. */
loom_err loom__json_parse(const char *data, size_t len, int max_depth, cJSON **out, char *why,
                          size_t why_len, size_t *at);

/* Checks that v can be written faithfully and read back by
 * loom__json_parse: at most budget levels of containers below it (a scalar
 * needs none), only finite numbers, only valid UTF-8 in strings and keys.
 * LOOM_OK, LOOM_EINVAL (a string or number), LOOM_ETOOBIG (too deep). NULL
 * is fine. */
loom_err loom__json_check(const cJSON *v, int budget);

/* Appends v, unformatted, to b. Numbers are written as the shortest text
 * that reads back to the same double; v must have passed loom__json_check
 * (a non-finite number would be written as null). */
void loom__json_write(loom__sbuf *b, const cJSON *v);

/* A JSON string literal for the UTF-8 string s. */
void loom__json_write_string(loom__sbuf *b, const char *s);

/* v as a malloc'd string (free()), after loom__json_check(v,
 * LOOM_MAX_NESTING); NULL when the check fails (*err says why; err may be
 * NULL) or on ENOMEM. */
char *loom__json_print(const cJSON *v, loom_err *err);

/* Writes d as the shortest text that reads back to the same double
 * (integers up to 2^53 in plain digits, -0 as "-0"); returns its length.
 * d must be finite. */
size_t loom__json_number(char buf[LOOM__JSON_NUMBER_MAX], double d);

/* strtod in the "C" locale, whatever LC_NUMERIC the host program set: '.'
 * is the decimal point (configuration values, anything loom reads back). */
double loom__strtod_c(const char *s, char **end);

#endif
