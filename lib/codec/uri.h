/* Internal: URI references (RFC 3986) for JSON Schema's $id and $ref and
 * for the "uri" / "uri-reference" formats. */
#ifndef LOOM_CODEC_URI_H
#define LOOM_CODEC_URI_H

#include <stdbool.h>
#include <stddef.h>

/* Resolves ref against base (RFC 3986 section 5.2, with dot-segment
 * removal). base may be "" (no base: ref stays as it is, normalized).
 * Returns a malloc'd string, or NULL when memory runs out. */
char *loom__uri_resolve(const char *base, const char *ref);

/* True when s is a URI (absolute, with a scheme) or, with reference set, a
 * URI or a relative reference, by the RFC 3986 grammar (ASCII only). */
bool loom__uri_valid(const char *s, bool reference);

/* The n bytes at s are a dotted-quad IPv4 address (no leading zeros) /
 * an IPv6 address in RFC 4291 text form (no zone). */
bool loom__ipv4_valid(const char *s, size_t n);
bool loom__ipv6_valid(const char *s, size_t n);

#endif
