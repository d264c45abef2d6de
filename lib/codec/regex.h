/* Internal: the regular expressions of JSON Schema's `pattern` keyword.
 *
 * The syntax is the ECMA-262 subset JSON Schema recommends for
 * interoperability: literals (any Unicode code point), `.`, classes
 * `[a-z]`/`[^...]`, the escapes \d \D \w \W \s \S \t \n \r \f \v \0 \xHH
 * \uHHHH \u{H...} \cX and `\` before any punctuation, `^`, `$`, \b, \B,
 * groups `(...)`, `(?:...)`, `(?<name>...)`, alternation, and the
 * quantifiers * + ? {n} {n,} {n,m} (a trailing `?` — lazy — is accepted:
 * it changes which match is found, never whether one is). Refused with a
 * reason: backreferences, lookaround, a quantifier with nothing to repeat
 * (`a**`), and patterns that would compile to more than
 * LOOM__REGEX_MAX_PROGRAM instructions (`(a{1000}){1000}`).
 *
 * Matching is a Thompson-NFA simulation: time linear in the subject times
 * the program size, memory linear in the program size, whatever the
 * pattern or the subject, so neither a careless pattern nor a hostile
 * string can stall a validation. The subject is UTF-8 and matched by code
 * point; a malformed byte matches only classes that admit U+FFFD.
 */
#ifndef LOOM_CODEC_REGEX_H
#define LOOM_CODEC_REGEX_H

#include <stdbool.h>
#include <stddef.h>

#include "loom.h"

#define LOOM__REGEX_MAX_PROGRAM 10000
/* Groups may nest at most this deep. */
#define LOOM__REGEX_MAX_NESTING 64

typedef struct loom__regex loom__regex;

/* Compiles pattern (NUL-terminated UTF-8). On success *out is a new
 * immutable regex (free with loom__regex_free). On failure *out is NULL,
 * the result is LOOM_EINVAL or LOOM_ENOMEM, and err (errlen bytes) gets a
 * one-line reason such as "unmatched ')' at offset 3". Any thread. */
loom_err loom__regex_compile(loom__regex **out, const char *pattern, char *err, size_t errlen);

/* True when the len bytes at s contain a match (unanchored, as in JSON
 * Schema). Any thread, concurrently on the same regex. On out of memory it
 * returns false: the check fails closed. */
bool loom__regex_search(const loom__regex *re, const char *s, size_t len);

void loom__regex_free(loom__regex *re);

#endif
