/* Internal: the logger every part of the library writes through. */
#ifndef LOOM_CORE_LOG_H
#define LOOM_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#include "loom.h"

/* Longest message kept, in bytes. Longer ones are cut at a UTF-8 character
 * boundary and end with "..." (the whole stays within this size). */
#define LOOM__LOG_MAX_MESSAGE 4096

/* A logger is plain configuration, filled once by its owner (the runtime)
 * and then only read, so any number of threads may log through it. */
typedef struct loom__logger {
    loom_log_level level; /* records below are dropped; LOOM_LOG_OFF drops all */
    loom_log_format format;
    loom_log_fn fn; /* NULL = write lines to stderr */
    void *user;
    char instance[64]; /* "" = unknown */
} loom__logger;

/* Formats and emits one record (service, command, trace_id may be NULL).
 * Thread-safe; one write(2) per line so lines from several threads never
 * interleave. Messages are truncated at LOOM__LOG_MAX_MESSAGE bytes.
 *
 * With fn set, fn receives the record (the message as formatted, truncated
 * but otherwise untouched). Without, one line goes to file descriptor 2:
 *   text: "2026-11-22T01:02:03.456Z INFO  [users.create trace=ID] message"
 *         (control characters escaped as \n, \r, \t, \xHH; invalid UTF-8
 *         replaced by U+FFFD, so a record is always exactly one line)
 *   json: {"time":..,"level":"info","instance":..,"service":..,
 *          "command":..,"traceId":..,"msg":..}, unknown fields omitted;
 *         always valid JSON and valid UTF-8.
 * lg NULL drops the record. Records whose level is not TRACE..ERROR are
 * dropped. */
void loom__log(const loom__logger *lg, loom_log_level level, const char *service,
               const char *command, const char *trace_id, const char *fmt, ...) LOOM_PRINTF(6, 7);
void loom__logv(const loom__logger *lg, loom_log_level level, const char *service,
                const char *command, const char *trace_id, const char *fmt, va_list ap)
    LOOM_PRINTF(6, 0);

/* The fields of one HTTP access record (the bridge's access log). Strings
 * may be NULL (principal: unknown). */
typedef struct loom__log_access {
    const char *method;
    const char *route; /* the route label, or the raw path when none matched */
    int status;
    int64_t duration_us;
    const char *principal;
} loom__log_access;

/* Logs one access record at info as service "http" with trace_id:
 *   text: "... INFO  [http trace=ID] GET /api/v1/x/{id} 200 0.412 ms principal=P"
 *   json: the usual object with the same "msg" and
 *         "http":{"method","route","status","durationMs","principal"?}
 * A custom sink gets the record with that message, at once. Lines for fd 2
 * are batched (see loom__log_flush) so that a busy bridge pays a memcpy per
 * request, not a write(2). */
void loom__log_access_line(const loom__logger *lg, const char *trace_id, const loom__log_access *a);
/* Writes the access lines not yet written (they go out in batches: at most
 * 20 ms late, before any other line, and at exit). */
void loom__log_flush(void);

/* True when a record of this level would be emitted: check it before costly
 * formatting. */
static inline bool loom__log_enabled(const loom__logger *lg, loom_log_level level)
{
    return level >= lg->level && lg->level != LOOM_LOG_OFF && level != LOOM_LOG_OFF;
}

/* "trace", "debug", "info", "warn", "error"; "?" for anything else. */
const char *loom__log_level_name(loom_log_level level);

#endif
