/* Internal: Unicode properties for \p{...} in codec/regex.h, from the
 * tables lib/codec/gen_unicode.py generates (unicode_tables.h). */
#ifndef LOOM_CODEC_UNICODE_H
#define LOOM_CODEC_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct loom__urange {
    uint32_t lo, hi;
} loom__urange;

typedef struct loom__uprop {
    const char *name;
    const loom__urange *r; /* sorted, disjoint */
    size_t n;
} loom__uprop;

/* The code points of a property as ECMA-262 writes it inside \p{...}: a
 * General_Category value, short or long ("L", "Letter", "Lu",
 * "Uppercase_Letter", ...; also "General_Category=Lu" and "gc=Lu"), a
 * Script ("Script=Greek", "sc=Grek"), or "Any", "ASCII", "Assigned". On
 * success *r / *n are the ranges and *negate says that the property is
 * their complement. False for an unknown name. */
bool loom__unicode_property(const char *name, const loom__urange **r, size_t *n, bool *negate);

/* True when cp has property: any name loom__unicode_property knows, or
 * "Joining_Type=X" (X = C, D, L, R, T) or "Canonical_Combining_Class=9"
 * (Virama), which the IDNA rules of the hostname format use. False for an
 * unknown name. */
bool loom__unicode_has(const char *property, uint32_t cp);

/* True when cp is in the n ranges at r. */
bool loom__unicode_in(const loom__urange *r, size_t n, uint32_t cp);

#endif
