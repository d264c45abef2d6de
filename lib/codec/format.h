/* Internal: the string formats JSON Schema's "format" keyword can assert:
 * date-time, date, time, duration (RFC 3339 and its appendix A), email
 * (RFC 5321 mailbox: dot-atom or quoted local part, host name or address
 * literal), hostname (RFC 1123 labels; "xn--" labels are decoded and
 * checked with the IDNA2008 rules), ipv4, ipv6, uri, uri-reference
 * (RFC 3986), uuid (RFC 4122 text form) and regex (codec/regex.h). */
#ifndef LOOM_CODEC_FORMAT_H
#define LOOM_CODEC_FORMAT_H

#include <stdbool.h>
#include <stddef.h>

/* A checker: true when the len bytes at s have the format. */
typedef bool (*loom__format_fn)(const char *s, size_t len);

/* The checker of a format name, or NULL for a format loom does not know
 * (unknown formats are annotations only). */
loom__format_fn loom__format_find(const char *name);

#endif
