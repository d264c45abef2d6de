#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* Service, command, trace and instance are cut at this many bytes in lines:
 * they are names and ids, and the bound keeps a line's size computable. */
#define FIELD_MAX 128
/* A line is built here when it fits (the common case), else on the heap. */
#define LINE_STACK 8192
/* Worst case growth of one input byte when escaped ("\u001f"). */
#define ESCAPE_MAX 6
/* Timestamp, level, punctuation and JSON keys. */
#define LINE_OVERHEAD 192

static const char *const level_names[] = {
    [LOOM_LOG_TRACE] = "trace", [LOOM_LOG_DEBUG] = "debug", [LOOM_LOG_INFO] = "info",
    [LOOM_LOG_WARN] = "warn",   [LOOM_LOG_ERROR] = "error", [LOOM_LOG_OFF] = "off",
};

/* Padded to 5 so that messages line up. */
static const char *const level_labels[] = {
    [LOOM_LOG_TRACE] = "TRACE", [LOOM_LOG_DEBUG] = "DEBUG", [LOOM_LOG_INFO] = "INFO ",
    [LOOM_LOG_WARN] = "WARN ",  [LOOM_LOG_ERROR] = "ERROR",
};

/* Serializes writes to fd 2 from this process, so that a line longer than
 * PIPE_BUF (which the kernel may split) still never interleaves with
 * another. Held only around write(2). */
static pthread_mutex_t stderr_lock = PTHREAD_MUTEX_INITIALIZER;

loom_err loom_log_level_parse(const char *s, loom_log_level *out)
{
    if (!s || !out)
        return LOOM_EINVAL;
    for (int l = LOOM_LOG_TRACE; l <= LOOM_LOG_OFF; l++) {
        if (strcasecmp(s, level_names[l]) == 0) {
            *out = (loom_log_level)l;
            return LOOM_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LOOM_LOG_WARN;
        return LOOM_OK;
    }
    return LOOM_EINVAL;
}

const char *loom__log_level_name(loom_log_level level)
{
    if (level < LOOM_LOG_TRACE || level > LOOM_LOG_OFF)
        return "?";
    return level_names[level];
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), or 0
 * when it is not one (overlongs, surrogates and > U+10FFFF included). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
            return 0;
        return 4;
    }
    return 0;
}

static char *put(char *w, const char *s)
{
    size_t n = strlen(s);
    memcpy(w, s, n);
    return w + n;
}

static const char *const json_escapes[128] = {
    ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t",  ['\b'] = "\\b",
    ['\f'] = "\\f", ['"'] = "\\\"", ['\\'] = "\\\\",
};

/* Copies n bytes of s to w made safe for one line: as a JSON string body
 * (json) or as text (control characters escaped). Invalid UTF-8 becomes
 * U+FFFD either way. Writes at most ESCAPE_MAX * n bytes. */
static char *put_clean(char *w, const char *s, size_t n, bool json)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c >= 0x80) {
            size_t k = utf8_len(u + i, n - i);
            if (k) {
                memcpy(w, u + i, k);
                w += k;
                i += k;
            } else {
                w = put(w, "\xEF\xBF\xBD");
                i++;
            }
            continue;
        }
        i++;
        const char *esc = json ? json_escapes[c] : c == '\n' ? "\\n" : c == '\r' ? "\\r" : NULL;
        if (esc) {
            w = put(w, esc);
        } else if ((c < 0x20 && c != '\t') || c == 0x7F) {
            w = put(w, json ? "\\u00" : "\\x");
            *w++ = hex[c >> 4];
            *w++ = hex[c & 15];
        } else {
            *w++ = (char)c;
        }
    }
    return w;
}

/* "2026-11-22T01:02:03.456Z" (UTC) into buf. */
static void format_time(char *buf, size_t n, int64_t ms)
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        secs--;
    }
    struct tm tm;
    if (!gmtime_r(&secs, &tm)) {
        loom__strlcpy(buf, "0000-00-00T00:00:00.000Z", n);
        return;
    }
    snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

static void write_stderr(const char *p, size_t n)
{
    pthread_mutex_lock(&stderr_lock);
    while (n > 0) {
        ssize_t k = write(STDERR_FILENO, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        p += k;
        n -= (size_t)k;
    }
    pthread_mutex_unlock(&stderr_lock);
}

/* A known field: non-empty, with its length capped at FIELD_MAX. */
static size_t field_len(const char *s)
{
    return s ? strnlen(s, FIELD_MAX) : 0;
}

static char *put_json_field(char *w, const char *key, const char *s, size_t n)
{
    if (!n)
        return w;
    w = put(w, ",\"");
    w = put(w, key);
    w = put(w, "\":\"");
    w = put_clean(w, s, n, true);
    return put(w, "\"");
}

static void emit_line(const loom__logger *lg, const loom_log_record *r, size_t msg_len)
{
    size_t il = field_len(r->instance), sl = field_len(r->service), cl = field_len(r->command),
           tl = field_len(r->trace_id);
    char stack[LINE_STACK];
    char *line = stack;
    size_t need = LINE_OVERHEAD + ESCAPE_MAX * (il + sl + cl + tl + msg_len);
    if (need > sizeof stack) {
        line = malloc(need);
        if (!line) {
            /* Keep the record, shortened to what the stack buffer holds. */
            line = stack;
            size_t room = (sizeof stack - LINE_OVERHEAD) / ESCAPE_MAX - (il + sl + cl + tl);
            if (msg_len > room)
                msg_len = room;
        }
    }

    char ts[48];
    format_time(ts, sizeof ts, r->time_ms);
    char *w = line;
    if (lg->format == LOOM_LOG_JSON) {
        w = put(w, "{\"time\":\"");
        w = put(w, ts);
        w = put(w, "\",\"level\":\"");
        w = put(w, level_names[r->level]);
        w = put(w, "\"");
        w = put_json_field(w, "instance", r->instance, il);
        w = put_json_field(w, "service", r->service, sl);
        w = put_json_field(w, "command", r->command, cl);
        w = put_json_field(w, "traceId", r->trace_id, tl);
        w = put(w, ",\"msg\":\"");
        w = put_clean(w, r->message, msg_len, true);
        w = put(w, "\"}\n");
    } else {
        w = put(w, ts);
        *w++ = ' ';
        w = put(w, level_labels[r->level]);
        *w++ = ' ';
        if (sl || cl || tl) {
            *w++ = '[';
            w = put_clean(w, r->service, sl, false);
            if (sl && cl)
                *w++ = '.';
            w = put_clean(w, r->command, cl, false);
            if (tl) {
                if (sl || cl)
                    *w++ = ' ';
                w = put(w, "trace=");
                w = put_clean(w, r->trace_id, tl, false);
            }
            w = put(w, "] ");
        }
        w = put_clean(w, r->message, msg_len, false);
        *w++ = '\n';
    }
    write_stderr(line, (size_t)(w - line));
    if (line != stack)
        free(line);
}

void loom__logv(const loom__logger *lg, loom_log_level level, const char *service,
                const char *command, const char *trace_id, const char *fmt, va_list ap)
{
    if (!lg || level < LOOM_LOG_TRACE || level > LOOM_LOG_ERROR || !loom__log_enabled(lg, level))
        return;

    char msg[LOOM__LOG_MAX_MESSAGE + 1];
    int n = fmt ? vsnprintf(msg, sizeof msg, fmt, ap) : 0;
    size_t len;
    if (n < 0) {
        loom__strlcpy(msg, "(unformattable log message)", sizeof msg);
        len = strlen(msg);
    } else if ((size_t)n > LOOM__LOG_MAX_MESSAGE) {
        /* Cut before a partial character (at most 3 continuation bytes to
         * skip in valid UTF-8), then mark the cut. */
        len = LOOM__LOG_MAX_MESSAGE - 3;
        for (int back = 0; back < 3 && len > 0 && ((unsigned char)msg[len] & 0xC0) == 0x80; back++)
            len--;
        memcpy(msg + len, "...", 4);
        len += 3;
    } else {
        len = (size_t)n;
    }
    if (!fmt)
        msg[0] = '\0';

    /* A copy, NUL-terminated even if the owner filled all 64 bytes. */
    _Static_assert(sizeof lg->instance <= FIELD_MAX, "instance fits a field");
    char instance[FIELD_MAX];
    loom__strlcpy(instance, lg->instance, sizeof lg->instance);
    loom_log_record rec = {
        .level = level,
        .time_ms = loom__now_ms(),
        .instance = instance[0] ? instance : NULL,
        .service = service && service[0] ? service : NULL,
        .command = command && command[0] ? command : NULL,
        .trace_id = trace_id && trace_id[0] ? trace_id : NULL,
        .message = msg,
    };
    if (lg->fn) {
        loom__callback_depth++;
        lg->fn(&rec, lg->user);
        loom__callback_depth--;
    } else
        emit_line(lg, &rec, len);
}

void loom__log(const loom__logger *lg, loom_log_level level, const char *service,
               const char *command, const char *trace_id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom__logv(lg, level, service, command, trace_id, fmt, ap);
    va_end(ap);
}
