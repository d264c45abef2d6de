#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
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
/* A masked message: one byte more than kept, so a longer one is seen, cut
 * and marked. */
#define LOG_MASKED (LOOM__LOG_MAX_MESSAGE + 2)

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

/* Access lines (loom__log_access_line) are many and small: they are
 * gathered in abuf and written in batches, by whoever writes next to fd 2,
 * when abuf is full, or by the flusher thread at most FLUSH_MS after the
 * first line of a batch (and at exit). Everything under stderr_lock, so
 * lines keep their order. */
#define ABUF_SIZE 65536
#define FLUSH_MS 20
static char abuf[ABUF_SIZE];
static size_t abuf_len;
static bool flusher_started;
static pthread_cond_t abuf_cv = PTHREAD_COND_INITIALIZER; /* abuf got its first line */

/* Caller holds stderr_lock. */
static void write_all_locked(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(STDERR_FILENO, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        p += k;
        n -= (size_t)k;
    }
}

/* Caller holds stderr_lock. */
static void flush_locked(void)
{
    if (abuf_len) {
        write_all_locked(abuf, abuf_len);
        abuf_len = 0;
    }
}

static void write_stderr(const char *p, size_t n)
{
    pthread_mutex_lock(&stderr_lock);
    flush_locked();
    write_all_locked(p, n);
    pthread_mutex_unlock(&stderr_lock);
}

void loom__log_flush(void)
{
    pthread_mutex_lock(&stderr_lock);
    flush_locked();
    pthread_mutex_unlock(&stderr_lock);
}

static void flush_at_exit(void)
{
    loom__log_flush();
}

/* A forked child starts without the flusher and without the parent's
 * unwritten lines (the parent writes them). */
static void after_fork_child(void)
{
    abuf_len = 0;
    flusher_started = false;
}

static void *flusher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&stderr_lock);
    for (;;) {
        while (abuf_len == 0)
            pthread_cond_wait(&abuf_cv, &stderr_lock);
        /* Let the batch grow for FLUSH_MS, then write it. */
        pthread_mutex_unlock(&stderr_lock);
        struct timespec ts = {0, FLUSH_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&stderr_lock);
        flush_locked();
    }
    return NULL;
}

/* Caller holds stderr_lock. False when no flusher can run: write now. */
static bool start_flusher_locked(void)
{
    static bool registered;
    if (!registered) {
        if (atexit(flush_at_exit) != 0 || pthread_atfork(NULL, NULL, after_fork_child) != 0)
            return false;
        registered = true;
    }
    pthread_attr_t attr;
    pthread_t t;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the flusher takes no signal */
    bool attr_ok = pthread_attr_init(&attr) == 0;
    bool ok = attr_ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
              pthread_create(&t, &attr, flusher_main, NULL) == 0;
    if (attr_ok)
        pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    flusher_started = ok;
    return ok;
}

/* Appends one access line to the batch. */
static void buffer_stderr(const char *p, size_t n)
{
    pthread_mutex_lock(&stderr_lock);
    if (!flusher_started && !start_flusher_locked()) {
        flush_locked();
        write_all_locked(p, n);
    } else {
        if (abuf_len + n > ABUF_SIZE)
            flush_locked();
        if (n > ABUF_SIZE) {
            write_all_locked(p, n);
        } else {
            if (abuf_len == 0)
                pthread_cond_signal(&abuf_cv);
            memcpy(abuf + abuf_len, p, n);
            abuf_len += n;
        }
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

/* The message, masked, in out: masked before it is cut at
 * LOOM__LOG_MAX_MESSAGE bytes, so that a cut never hides the '@' that
 * shows a URL's userinfo to the masking. Secrets never reach a sink, whoever
 * wrote the line (loom, an adapter, a handler). */
static size_t log_message(char out[LOG_MASKED], const char *fmt, va_list ap)
{
    out[0] = '\0';
    if (!fmt)
        return 0;
    char small[LOOM__LOG_MAX_MESSAGE + 1], *full = NULL;
    const char *text = small;
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= 0 && (size_t)n >= sizeof small && (full = malloc((size_t)n + 1)) != NULL &&
        vsnprintf(full, (size_t)n + 1, fmt, aq) == n)
        text = full;
    va_end(aq);
    if (n < 0 || ((size_t)n >= sizeof small && text != full)) {
        free(full);
        loom__strlcpy(out, "(unformattable log message)", LOG_MASKED);
        return strlen(out);
    }
    size_t len = loom__mask_secrets(text, (size_t)n, out, LOG_MASKED);
    free(full);
    if (len > LOOM__LOG_MAX_MESSAGE) {
        /* Cut before a partial character (at most 3 continuation bytes to
         * skip in valid UTF-8), then mark the cut. */
        len = LOOM__LOG_MAX_MESSAGE - 3;
        for (int back = 0; back < 3 && len > 0 && ((unsigned char)out[len] & 0xC0) == 0x80; back++)
            len--;
        memcpy(out + len, "...", 4);
        len += 3;
    }
    return len;
}

void loom__logv(const loom__logger *lg, loom_log_level level, const char *service,
                const char *command, const char *trace_id, const char *fmt, va_list ap)
{
    if (!lg || level < LOOM_LOG_TRACE || level > LOOM_LOG_ERROR || !loom__log_enabled(lg, level))
        return;

    char masked[LOG_MASKED];
    size_t len = log_message(masked, fmt, ap);

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
        .message = masked,
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

/* --- access lines ---------------------------------------------------------- */

/* The time stamp up to the seconds ("2026-11-22T01:02:03."), kept per
 * thread and made again only when the second changes. */
static const char *time_prefix(int64_t ms)
{
    static _Thread_local int64_t sec = INT64_MIN;
    static _Thread_local char text[48];
    if (ms / 1000 != sec) {
        format_time(text, sizeof text, ms - ms % 1000);
        text[strlen(text) - 4] = '\0'; /* cut "000Z" */
        sec = ms / 1000;
    }
    return text;
}

static char *put_uint(char *w, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *w++ = tmp[--n];
    return w;
}

/* "12.345" milliseconds from microseconds. */
static char *put_ms(char *w, int64_t us)
{
    if (us < 0)
        us = 0;
    w = put_uint(w, (uint64_t)us / 1000);
    unsigned frac = (unsigned)(us % 1000);
    *w++ = '.';
    *w++ = (char)('0' + frac / 100);
    *w++ = (char)('0' + frac / 10 % 10);
    *w++ = (char)('0' + frac % 10);
    return w;
}

/* "GET /route 200 1.234 ms[ principal=P]", cleaned for text or JSON. */
static char *put_access_msg(char *w, const loom__log_access *a, bool json)
{
    w = put_clean(w, a->method ? a->method : "-", a->method ? field_len(a->method) : 1, json);
    *w++ = ' ';
    w = put_clean(w, a->route ? a->route : "-", a->route ? field_len(a->route) : 1, json);
    *w++ = ' ';
    w = put_uint(w, (uint64_t)(a->status > 0 ? a->status : 0));
    *w++ = ' ';
    w = put_ms(w, a->duration_us);
    w = put(w, " ms");
    if (a->principal) {
        w = put(w, " principal=");
        w = put_clean(w, a->principal, field_len(a->principal), json);
    }
    return w;
}

/* Method, route, principal, trace and instance are cut at FIELD_MAX, each
 * written twice at most (msg and the http object): this bounds a line. */
#define ACCESS_LINE (LINE_OVERHEAD + 2 * ESCAPE_MAX * 5 * FIELD_MAX)

void loom__log_access_line(const loom__logger *lg, const char *trace_id, const loom__log_access *a)
{
    if (!lg || !a || !loom__log_enabled(lg, LOOM_LOG_INFO))
        return;
    int64_t now = loom__now_ms();
    size_t tl = field_len(trace_id), il = strnlen(lg->instance, sizeof lg->instance);
    char line[ACCESS_LINE];
    char *w = line;
    if (lg->fn) {
        /* A custom sink: the record with the text message. */
        w = put_access_msg(w, a, false);
        *w = '\0';
        char instance[FIELD_MAX];
        loom__strlcpy(instance, lg->instance, sizeof lg->instance);
        loom_log_record rec = {.level = LOOM_LOG_INFO,
                               .time_ms = now,
                               .instance = il ? instance : NULL,
                               .service = "http",
                               .trace_id = tl ? trace_id : NULL,
                               .message = line};
        lg->fn(&rec, lg->user);
        return;
    }
    char ms[4] = {(char)('0' + now % 1000 / 100), (char)('0' + now % 100 / 10),
                  (char)('0' + now % 10), '\0'};
    if (lg->format == LOOM_LOG_JSON) {
        w = put(w, "{\"time\":\"");
        w = put(w, time_prefix(now));
        w = put(w, ms);
        w = put(w, "Z\",\"level\":\"info\"");
        w = put_json_field(w, "instance", lg->instance, il);
        w = put(w, ",\"service\":\"http\"");
        w = put_json_field(w, "traceId", trace_id, tl);
        w = put(w, ",\"msg\":\"");
        w = put_access_msg(w, a, true);
        w = put(w, "\",\"http\":{\"method\":\"");
        w = put_clean(w, a->method ? a->method : "", field_len(a->method), true);
        w = put(w, "\",\"route\":\"");
        w = put_clean(w, a->route ? a->route : "", field_len(a->route), true);
        w = put(w, "\",\"status\":");
        w = put_uint(w, (uint64_t)(a->status > 0 ? a->status : 0));
        w = put(w, ",\"durationMs\":");
        w = put_ms(w, a->duration_us);
        if (a->principal) {
            w = put(w, ",\"principal\":\"");
            w = put_clean(w, a->principal, field_len(a->principal), true);
            w = put(w, "\"");
        }
        w = put(w, "}}\n");
    } else {
        w = put(w, time_prefix(now));
        w = put(w, ms);
        w = put(w, "Z INFO  [http");
        if (tl) {
            w = put(w, " trace=");
            w = put_clean(w, trace_id, tl, false);
        }
        w = put(w, "] ");
        w = put_access_msg(w, a, false);
        *w++ = '\n';
    }
    buffer_stderr(line, (size_t)(w - line));
}
