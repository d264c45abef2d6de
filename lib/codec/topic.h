/* Internal: topic names (docs: DESIGN.md "Topic layout").
 *
 * A topic is "{prefix}/{kind}/{seg}/{seg}...". The prefix and the kind
 * ("cmd", "reply", "evt", "svc") are written verbatim; every segment is
 * escaped so that it never contains a level separator, a wildcard, a '$' or a
 * control byte, and unescaping gives back exactly the original bytes.
 * All functions are pure and thread-safe.
 */
#ifndef LOOM_CODEC_TOPIC_H
#define LOOM_CODEC_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

/* Escapes one segment losslessly: each byte of "/+#$%" and each byte < 0x20
 * or == 0x7f becomes %XX (uppercase hex); everything else (including UTF-8)
 * is copied. Returns a malloc'd string, NULL on ENOMEM (or a NULL segment). */
char *loom__topic_escape(const char *segment);

/* Appends the escaped form of segment to buf (growing it with realloc);
 * returns false on ENOMEM. *buf may start NULL with *len == *cap == 0; it is
 * kept NUL-terminated. A NULL segment appends nothing. On failure the buffer
 * is left as it was. */
bool loom__topic_escape_append(char **buf, size_t *len, size_t *cap, const char *segment);

/* Reverses loom__topic_escape on segment[0..len). NULL when malformed (a '%'
 * not followed by two hex digits, a raw "/+#" or NUL byte, or a decoded NUL)
 * or on ENOMEM. Lowercase hex digits are accepted. */
char *loom__topic_unescape(const char *segment, size_t len);

/* "{prefix}/{kind}/{seg}/{seg}..." with each seg escaped; a NULL seg is
 * written as the wildcard "+". prefix is inserted verbatim. NULL on ENOMEM
 * (or a NULL prefix or kind). */
char *loom__topic_build(const char *prefix, const char *kind, const char *const *segs, size_t n);

/* Parses a topic "{prefix}/{kind}/{s1}/.../{sn}": on success stores kind
 * (malloc'd) in *kind and up to max unescaped segments (malloc'd each) in
 * segs, returns the segment count; returns -1 (nothing allocated, *kind set
 * to NULL) when the topic is not under prefix, has an empty kind, has more
 * than max segments, or a segment is malformed. */
int loom__topic_parse(const char *topic, const char *prefix, char **kind, char **segs, int max);

/* A valid prefix: non-empty, at most 256 bytes, levels separated by single
 * '/', no empty level, no '+', '#', '$' or control bytes. */
bool loom__topic_prefix_valid(const char *prefix);

#endif
