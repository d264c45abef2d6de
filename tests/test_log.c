/* The logger: records through a sink, lines on stderr (text and JSON). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "support/support.h"

#include "core/log.h"
#include "core/util.h"

#define TRACE_ID "0123456789abcdef0123456789abcdef"

/* --- a sink that keeps copies of the records ----------------------------- */

typedef struct kept {
    loom_log_level level;
    int64_t time_ms;
    char *instance, *service, *command, *trace_id, *message;
} kept;

typedef struct sink {
    pthread_mutex_t lock;
    kept recs[64];
    size_t n;
} sink;

static void sink_fn(const loom_log_record *rec, void *user)
{
    sink *k = user;
    pthread_mutex_lock(&k->lock);
    if (k->n < LOOM__ARRAY_LEN(k->recs)) {
        kept *r = &k->recs[k->n++];
        r->level = rec->level;
        r->time_ms = rec->time_ms;
        r->instance = loom__strdup(rec->instance);
        r->service = loom__strdup(rec->service);
        r->command = loom__strdup(rec->command);
        r->trace_id = loom__strdup(rec->trace_id);
        r->message = loom__strdup(rec->message);
    }
    pthread_mutex_unlock(&k->lock);
}

static void sink_clear(sink *k)
{
    for (size_t i = 0; i < k->n; i++) {
        kept *r = &k->recs[i];
        free(r->instance);
        free(r->service);
        free(r->command);
        free(r->trace_id);
        free(r->message);
    }
    k->n = 0;
}

/* --- capturing fd 2 through a pipe --------------------------------------- */

typedef struct capture {
    int saved; /* the real stderr */
    int rd;    /* read end of the pipe */
    pthread_t reader;
    char *buf;
    size_t len, cap;
} capture;

/* Drains the pipe while the test writes, so writers never block on it. */
static void *reader_main(void *arg)
{
    capture *c = arg;
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap * 2 + 65536;
            c->buf = realloc(c->buf, c->cap + 1);
            if (!c->buf)
                abort();
        }
        ssize_t n = read(c->rd, c->buf + c->len, c->cap - c->len);
        if (n <= 0)
            break;
        c->len += (size_t)n;
    }
    return NULL;
}

static void capture_start(capture *c)
{
    memset(c, 0, sizeof *c);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    c->rd = p[0];
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(p[1], STDERR_FILENO) == STDERR_FILENO);
    close(p[1]);
    assert_int_equal(pthread_create(&c->reader, NULL, reader_main, c), 0);
}

/* Restores stderr and returns everything written meanwhile (NUL-terminated;
 * free it). */
static char *capture_stop(capture *c, size_t *len)
{
    dup2(c->saved, STDERR_FILENO); /* closes the last write end: EOF */
    close(c->saved);
    pthread_join(c->reader, NULL);
    close(c->rd);
    if (!c->buf)
        c->buf = calloc(1, 1);
    c->buf[c->len] = '\0';
    if (len)
        *len = c->len;
    return c->buf;
}

/* --- checks -------------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static bool valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            min = 0x10000;
        } else {
            return false;
        }
        if (i + k + 1 > n)
            return false;
        unsigned cp = c & (0x3F >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

/* Splits buf into lines (each must end with '\n'); returns the count. */
static size_t split_lines(char *buf, size_t len, char **lines, size_t max)
{
    size_t n = 0;
    char *p = buf;
    while (p < buf + len) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        assert_non_null(nl);
        *nl = '\0';
        if (n < max)
            lines[n] = p;
        n++;
        p = nl + 1;
    }
    return n;
}

/* Checks "YYYY-MM-DDTHH:MM:SS.mmmZ" at s is UTC now (within a few seconds)
 * and returns what follows it. */
static const char *check_timestamp(const char *s)
{
    int y, mo, d, h, mi, sec, ms, used = 0;
    assert_int_equal(
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &y, &mo, &d, &h, &mi, &sec, &ms, &used), 7);
    assert_int_equal(used, 24);
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    time_t now = time(NULL);
    assert_true(t >= now - 5 && t <= now + 1);
    assert_true(ms >= 0 && ms <= 999);
    return s + used;
}

static loom__logger text_logger(loom_log_level level)
{
    return (loom__logger){.level = level, .format = LOOM_LOG_TEXT};
}

/* ------------------------------------------------------------------------ */

static void test_level_parse(void **state)
{
    (void)state;
    struct {
        const char *s;
        loom_log_level want;
    } ok[] = {
        {"trace", LOOM_LOG_TRACE}, {"DEBUG", LOOM_LOG_DEBUG},  {"Info", LOOM_LOG_INFO},
        {"warn", LOOM_LOG_WARN},   {"WARNING", LOOM_LOG_WARN}, {"error", LOOM_LOG_ERROR},
        {"oFF", LOOM_LOG_OFF},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(ok); i++) {
        loom_log_level l = LOOM_LOG_UNSET;
        assert_int_equal(loom_log_level_parse(ok[i].s, &l), LOOM_OK);
        assert_int_equal(l, ok[i].want);
    }
    const char *bad[] = {"", "verbose", "info ", " info", "err", "warnings", "0", "unset"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        loom_log_level l = LOOM_LOG_DEBUG;
        assert_int_equal(loom_log_level_parse(bad[i], &l), LOOM_EINVAL);
        assert_int_equal(l, LOOM_LOG_DEBUG);
    }
    loom_log_level l;
    assert_int_equal(loom_log_level_parse(NULL, &l), LOOM_EINVAL);
    assert_int_equal(loom_log_level_parse("info", NULL), LOOM_EINVAL);
    assert_string_equal(loom__log_level_name(LOOM_LOG_WARN), "warn");
    assert_string_equal(loom__log_level_name((loom_log_level)42), "?");
}

static void test_sink_record(void **state)
{
    (void)state;
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger lg = {.level = LOOM_LOG_TRACE, .fn = sink_fn, .user = &k, .instance = "inst-1"};
    int64_t before = loom__now_ms();
    loom__log(&lg, LOOM_LOG_INFO, "users", "create", TRACE_ID, "x=%d %s", 42, "y");
    int64_t after = loom__now_ms();
    loom__log(&lg, LOOM_LOG_ERROR, NULL, NULL, NULL, "plain");
    loom__log(&lg, LOOM_LOG_DEBUG, "", "", "", "%s", "");
    lg.instance[0] = '\0';
    loom__log(&lg, LOOM_LOG_TRACE, "svc", NULL, NULL, "no instance");
    loom__log(NULL, LOOM_LOG_ERROR, NULL, NULL, NULL, "no logger"); /* dropped */

    assert_int_equal(k.n, 4);
    kept *r = &k.recs[0];
    assert_int_equal(r->level, LOOM_LOG_INFO);
    assert_true(r->time_ms >= before && r->time_ms <= after);
    assert_string_equal(r->instance, "inst-1");
    assert_string_equal(r->service, "users");
    assert_string_equal(r->command, "create");
    assert_string_equal(r->trace_id, TRACE_ID);
    assert_string_equal(r->message, "x=42 y");
    r = &k.recs[1];
    assert_int_equal(r->level, LOOM_LOG_ERROR);
    assert_null(r->service);
    assert_null(r->command);
    assert_null(r->trace_id);
    assert_string_equal(r->message, "plain");
    r = &k.recs[2]; /* empty strings are unknown */
    assert_null(r->service);
    assert_null(r->command);
    assert_null(r->trace_id);
    assert_string_equal(r->message, "");
    r = &k.recs[3];
    assert_null(r->instance);
    assert_string_equal(r->service, "svc");
    sink_clear(&k);
}

static void test_level_filter(void **state)
{
    (void)state;
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger lg = {.level = LOOM_LOG_WARN, .fn = sink_fn, .user = &k};
    for (int l = LOOM_LOG_UNSET; l <= LOOM_LOG_OFF + 1; l++)
        loom__log(&lg, (loom_log_level)l, NULL, NULL, NULL, "level %d", l);
    assert_int_equal(k.n, 2);
    assert_int_equal(k.recs[0].level, LOOM_LOG_WARN);
    assert_string_equal(k.recs[0].message, "level 4");
    assert_int_equal(k.recs[1].level, LOOM_LOG_ERROR);
    sink_clear(&k);

    assert_false(loom__log_enabled(&lg, LOOM_LOG_INFO));
    assert_true(loom__log_enabled(&lg, LOOM_LOG_WARN));
    assert_true(loom__log_enabled(&lg, LOOM_LOG_ERROR));
    assert_false(loom__log_enabled(&lg, LOOM_LOG_OFF));

    lg.level = LOOM_LOG_OFF;
    for (int l = LOOM_LOG_TRACE; l <= LOOM_LOG_OFF; l++)
        loom__log(&lg, (loom_log_level)l, NULL, NULL, NULL, "off %d", l);
    assert_int_equal(k.n, 0);
    assert_false(loom__log_enabled(&lg, LOOM_LOG_ERROR));

    lg.level = LOOM_LOG_TRACE;
    for (int l = LOOM_LOG_TRACE; l <= LOOM_LOG_OFF; l++)
        loom__log(&lg, (loom_log_level)l, NULL, NULL, NULL, "all %d", l);
    assert_int_equal(k.n, 5); /* OFF is not a record level */
    sink_clear(&k);

    /* Filtering applies to stderr lines too. */
    capture c;
    loom__logger tl = text_logger(LOOM_LOG_ERROR);
    capture_start(&c);
    loom__log(&tl, LOOM_LOG_WARN, NULL, NULL, NULL, "dropped");
    loom__log(&tl, LOOM_LOG_ERROR, NULL, NULL, NULL, "kept");
    char *out = capture_stop(&c, NULL);
    assert_null(strstr(out, "dropped"));
    assert_non_null(strstr(out, "kept"));
    free(out);
}

static void test_text_lines(void **state)
{
    (void)state;
    /* Lines are UTC whatever the local zone is. */
    char *old_tz = loom__strdup(getenv("TZ"));
    setenv("TZ", "XYZ+05", 1); /* POSIX form: needs no tzdata */
    tzset();

    loom__logger lg = text_logger(LOOM_LOG_TRACE);
    loom__strlcpy(lg.instance, "inst", sizeof lg.instance);
    capture c;
    capture_start(&c);
    loom__log(&lg, LOOM_LOG_INFO, "users", "create", TRACE_ID, "hello %d", 42);
    loom__log(&lg, LOOM_LOG_WARN, "users", NULL, NULL, "svc only");
    loom__log(&lg, LOOM_LOG_ERROR, NULL, "create", NULL, "cmd only");
    loom__log(&lg, LOOM_LOG_DEBUG, NULL, NULL, TRACE_ID, "trace only");
    loom__log(&lg, LOOM_LOG_TRACE, NULL, NULL, NULL, "bare");
    loom__log(&lg, LOOM_LOG_INFO, "a\nb", NULL, NULL, "two\nlines\r\x01\x7f\ttab \xff end");
    size_t len;
    char *out = capture_stop(&c, &len);

    if (old_tz)
        setenv("TZ", old_tz, 1);
    else
        unsetenv("TZ");
    tzset();
    free(old_tz);

    char *lines[8];
    assert_int_equal(split_lines(out, len, lines, 8), 6);
    assert_string_equal(check_timestamp(lines[0]),
                        " INFO  [users.create trace=" TRACE_ID "] hello 42");
    assert_string_equal(check_timestamp(lines[1]), " WARN  [users] svc only");
    assert_string_equal(check_timestamp(lines[2]), " ERROR [create] cmd only");
    assert_string_equal(check_timestamp(lines[3]), " DEBUG [trace=" TRACE_ID "] trace only");
    assert_string_equal(check_timestamp(lines[4]), " TRACE bare");
    assert_string_equal(check_timestamp(lines[5]),
                        " INFO  [a\\nb] two\\nlines\\r\\x01\\x7f\ttab \xEF\xBF\xBD end");
    free(out);
}

/* Logs msg as JSON to stderr and returns the parsed line. */
static cJSON *json_line(const loom__logger *lg, loom_log_level level, const char *service,
                        const char *command, const char *trace, const char *msg)
{
    capture c;
    capture_start(&c);
    loom__log(lg, level, service, command, trace, "%s", msg);
    size_t len;
    char *out = capture_stop(&c, &len);
    assert_true(len > 0 && out[len - 1] == '\n');
    assert_null(memchr(out, '\n', len - 1)); /* exactly one line */
    if (!valid_utf8((const unsigned char *)out, len))
        fail_msg("not UTF-8: %s", out);
    cJSON *j = cJSON_ParseWithOpts(out, NULL, false);
    if (!j)
        fail_msg("not JSON: %s", out);
    free(out);
    assert_true(cJSON_IsObject(j));
    return j;
}

static const char *jstr(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void test_json_lines(void **state)
{
    (void)state;
    loom__logger lg = {.level = LOOM_LOG_TRACE, .format = LOOM_LOG_JSON, .instance = "i-7"};
    cJSON *j = json_line(&lg, LOOM_LOG_INFO, "users", "create", TRACE_ID, "hello");
    check_timestamp(jstr(j, "time"));
    assert_string_equal(jstr(j, "level"), "info");
    assert_string_equal(jstr(j, "instance"), "i-7");
    assert_string_equal(jstr(j, "service"), "users");
    assert_string_equal(jstr(j, "command"), "create");
    assert_string_equal(jstr(j, "traceId"), TRACE_ID);
    assert_string_equal(jstr(j, "msg"), "hello");
    assert_int_equal(cJSON_GetArraySize(j), 7);
    cJSON_Delete(j);

    /* Unknown fields are left out. */
    lg.instance[0] = '\0';
    j = json_line(&lg, LOOM_LOG_WARN, NULL, NULL, NULL, "m");
    assert_string_equal(jstr(j, "level"), "warn");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "instance"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "service"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "command"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "traceId"));
    assert_int_equal(cJSON_GetArraySize(j), 3);
    cJSON_Delete(j);

    const char *names[] = {"trace", "debug", "info", "warn", "error"};
    for (int l = LOOM_LOG_TRACE; l <= LOOM_LOG_ERROR; l++) {
        j = json_line(&lg, (loom_log_level)l, NULL, NULL, NULL, "x");
        assert_string_equal(jstr(j, "level"), names[l - LOOM_LOG_TRACE]);
        cJSON_Delete(j);
    }

    /* Awkward messages come back exactly, or with U+FFFD for bad bytes. */
    struct {
        const char *in, *want;
    } msgs[] = {
        {"quote \" backslash \\ slash /", "quote \" backslash \\ slash /"},
        {"nl\ncr\rtab\tbs\bff\f", "nl\ncr\rtab\tbs\bff\f"},
        {"ctl \x01\x1f\x7f end", "ctl \x01\x1f\x7f end"},
        {"utf8 é € 😀 \xe2\x80\xa8", "utf8 é € 😀 \xe2\x80\xa8"},
        {"bad \xff\xfe x", "bad \xEF\xBF\xBD\xEF\xBF\xBD x"},
        {"cut \xe2\x82", "cut \xEF\xBF\xBD\xEF\xBF\xBD"},
        {"overlong \xc0\xaf", "overlong \xEF\xBF\xBD\xEF\xBF\xBD"},
        {"surrogate \xed\xa0\x80", "surrogate \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"too big \xf4\x90\x80\x80", "too big \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"{\"json\":\"inside\"}", "{\"json\":\"inside\"}"},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(msgs); i++) {
        j = json_line(&lg, LOOM_LOG_INFO, "s\"vc", "c\\md\n", NULL, msgs[i].in);
        assert_string_equal(jstr(j, "msg"), msgs[i].want);
        assert_string_equal(jstr(j, "service"), "s\"vc");
        assert_string_equal(jstr(j, "command"), "c\\md\n");
        cJSON_Delete(j);
    }
}

/* The bridge's access records: text and JSON, escaped, one line each;
 * nothing below info. */
static void test_access_lines(void **state)
{
    (void)state;
    loom__log_access a = {.method = "GET",
                          .route = "/api/v1/readings/{id}",
                          .status = 200,
                          .duration_us = 1234,
                          .principal = "al\"ice"};
    loom__logger lg = text_logger(LOOM_LOG_INFO);
    capture c;
    capture_start(&c);
    loom__log_access_line(&lg, TRACE_ID, &a);
    a.principal = NULL;
    a.status = 404;
    a.route = "/x\ny";
    loom__log_access_line(&lg, NULL, &a);
    lg.level = LOOM_LOG_WARN;
    loom__log_access_line(&lg, TRACE_ID, &a); /* below the level: nothing */
    loom__log_flush();
    size_t len;
    char *out = capture_stop(&c, &len);
    char *lines[4];
    assert_int_equal(split_lines(out, len, lines, 4), 2);
    assert_string_equal(check_timestamp(lines[0]),
                        " INFO  [http trace=" TRACE_ID "] GET /api/v1/readings/{id} 200 1.234 ms "
                        "principal=al\"ice");
    assert_string_equal(check_timestamp(lines[1]), " INFO  [http] GET /x\\ny 404 1.234 ms");
    free(out);

    loom__logger jl = {.level = LOOM_LOG_INFO, .format = LOOM_LOG_JSON, .instance = "i-1"};
    a = (loom__log_access){.method = "POST",
                           .route = "/api/v1/r\"s",
                           .status = 201,
                           .duration_us = 5,
                           .principal = "bob"};
    capture_start(&c);
    loom__log_access_line(&jl, TRACE_ID, &a);
    /* Batched, but written before any other line. */
    loom__log(&jl, LOOM_LOG_INFO, NULL, NULL, NULL, "after");
    out = capture_stop(&c, &len);
    char *second = memchr(out, '\n', len);
    assert_non_null(second);
    assert_non_null(strstr(second, "\"msg\":\"after\""));
    *second = '\0';
    len = (size_t)(second - out) + 1;
    out[len - 1] = '\n';
    assert_true(len > 0 && out[len - 1] == '\n');
    assert_null(memchr(out, '\n', len - 1));
    cJSON *j = cJSON_ParseWithOpts(out, NULL, false);
    if (!j)
        fail_msg("not JSON: %s", out);
    free(out);
    assert_string_equal(jstr(j, "service"), "http");
    assert_string_equal(jstr(j, "traceId"), TRACE_ID);
    assert_string_equal(jstr(j, "msg"), "POST /api/v1/r\"s 201 0.005 ms principal=bob");
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "http");
    assert_string_equal(jstr(h, "method"), "POST");
    assert_string_equal(jstr(h, "route"), "/api/v1/r\"s");
    assert_string_equal(jstr(h, "principal"), "bob");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(h, "status")->valueint, 201);
    assert_true(cJSON_GetObjectItemCaseSensitive(h, "durationMs")->valuedouble == 0.005);
    cJSON_Delete(j);

    /* A custom sink gets the record with the message. */
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger sl = {.level = LOOM_LOG_INFO, .fn = sink_fn, .user = &k};
    loom__log_access_line(&sl, TRACE_ID, &a);
    assert_int_equal(k.n, 1);
    assert_string_equal(k.recs[0].service, "http");
    assert_string_equal(k.recs[0].message, "POST /api/v1/r\"s 201 0.005 ms principal=bob");
    sink_clear(&k);
}

static void test_truncation(void **state)
{
    (void)state;
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger lg = {.level = LOOM_LOG_TRACE, .fn = sink_fn, .user = &k};
    char *big = malloc(10001);
    assert_non_null(big);
    memset(big, 'x', 10000);
    big[10000] = '\0';
    loom__log(&lg, LOOM_LOG_INFO, NULL, NULL, NULL, "%s", big);
    /* Exactly at the limit: kept whole. */
    big[LOOM__LOG_MAX_MESSAGE] = '\0';
    loom__log(&lg, LOOM_LOG_INFO, NULL, NULL, NULL, "%s", big);
    /* Two-byte characters: never cut in the middle of one. */
    char *wide = malloc(6001);
    assert_non_null(wide);
    for (int i = 0; i < 3000; i++)
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    wide[6000] = '\0';
    loom__log(&lg, LOOM_LOG_INFO, NULL, NULL, NULL, "%s", wide);
    loom__log(&lg, LOOM_LOG_INFO, NULL, NULL, NULL, "x%s", wide); /* other parity */

    assert_int_equal(k.n, 4);
    size_t n = strlen(k.recs[0].message);
    assert_int_equal(n, LOOM__LOG_MAX_MESSAGE);
    assert_string_equal(k.recs[0].message + n - 3, "...");
    assert_memory_equal(k.recs[0].message, big, n - 3);
    assert_string_equal(k.recs[1].message, big);
    for (int i = 2; i < 4; i++) {
        const char *m = k.recs[i].message;
        n = strlen(m);
        assert_true(n <= LOOM__LOG_MAX_MESSAGE && n >= LOOM__LOG_MAX_MESSAGE - 4);
        assert_true(valid_utf8((const unsigned char *)m, n));
        assert_string_equal(m + n - 3, "...");
    }
    sink_clear(&k);

    /* On stderr, in JSON: the escaped message is still complete JSON. */
    loom__logger jl = {.level = LOOM_LOG_TRACE, .format = LOOM_LOG_JSON};
    memset(big, '"', 10000);
    big[10000] = '\0';
    cJSON *j = json_line(&jl, LOOM_LOG_INFO, NULL, NULL, NULL, big);
    const char *m = jstr(j, "msg");
    assert_non_null(m);
    assert_int_equal(strlen(m), LOOM__LOG_MAX_MESSAGE);
    assert_memory_equal(m, big, LOOM__LOG_MAX_MESSAGE - 3);
    cJSON_Delete(j);
    /* Control characters take six bytes each once escaped. */
    memset(big, '\x01', 10000);
    j = json_line(&jl, LOOM_LOG_INFO, NULL, NULL, NULL, big);
    assert_int_equal(strlen(jstr(j, "msg")), LOOM__LOG_MAX_MESSAGE);
    cJSON_Delete(j);

    /* And in text. */
    loom__logger tl = text_logger(LOOM_LOG_TRACE);
    memset(big, 'y', 10000);
    capture c;
    capture_start(&c);
    loom__log(&tl, LOOM_LOG_INFO, NULL, NULL, NULL, "%s", big);
    size_t len;
    char *out = capture_stop(&c, &len);
    assert_int_equal(len, 24 + 7 + LOOM__LOG_MAX_MESSAGE + 1);
    assert_memory_equal(out + len - 4, "...\n", 4);
    free(out);
    free(big);
    free(wide);
}

/* --- concurrency --------------------------------------------------------- */

#define LOG_THREADS 4
#define LOG_LINES 1000

typedef struct log_worker {
    const loom__logger *lg;
    int id;
} log_worker;

static void *log_main(void *arg)
{
    log_worker *w = arg;
    char pad[3001];
    /* Some lines exceed PIPE_BUF once escaped ('"' doubles). */
    memset(pad, '"', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < LOG_LINES; i++) {
        int plen = i % 10 == 0 ? 3000 : 50 + (i * 37) % 400;
        loom__log(w->lg, LOOM_LOG_INFO, "svc", "cmd", TRACE_ID, "T%d N%d %.*s|", w->id, i, plen,
                  pad);
    }
    return NULL;
}

static void test_concurrent_lines(void **state)
{
    (void)state;
    loom__logger lg = {.level = LOOM_LOG_TRACE, .format = LOOM_LOG_JSON, .instance = "c"};
    log_worker w[LOG_THREADS];
    pthread_t th[LOG_THREADS];
    capture c;
    capture_start(&c);
    for (int i = 0; i < LOG_THREADS; i++) {
        w[i] = (log_worker){.lg = &lg, .id = i};
        if (pthread_create(&th[i], NULL, log_main, &w[i]) != 0)
            abort(); /* no cmocka output while stderr is captured */
    }
    for (int i = 0; i < LOG_THREADS; i++)
        pthread_join(th[i], NULL);
    size_t len;
    char *out = capture_stop(&c, &len);

    static char *lines[LOG_THREADS * LOG_LINES + 1];
    assert_int_equal(split_lines(out, len, lines, LOOM__ARRAY_LEN(lines)), LOG_THREADS * LOG_LINES);
    int next[LOG_THREADS] = {0};
    for (size_t i = 0; i < LOG_THREADS * LOG_LINES; i++) {
        cJSON *j = cJSON_Parse(lines[i]);
        if (!j)
            fail_msg("line %zu is not JSON: %.200s", i, lines[i]);
        const char *m = jstr(j, "msg");
        int t = -1, n = -1, used = 0;
        assert_non_null(m);
        assert_int_equal(sscanf(m, "T%d N%d %n", &t, &n, &used), 2);
        assert_true(t >= 0 && t < LOG_THREADS);
        /* Each thread's lines arrive whole and in order. */
        assert_int_equal(n, next[t]);
        next[t]++;
        int plen = n % 10 == 0 ? 3000 : 50 + (n * 37) % 400;
        assert_int_equal(strlen(m + used), (size_t)plen + 1);
        assert_string_equal(jstr(j, "traceId"), TRACE_ID);
        cJSON_Delete(j);
    }
    free(out);
}

/* --- secrets are masked ------------------------------------------------- */

static void expect_masked(const char *in, const char *want)
{
    char out[512];
    size_t n = loom__mask_secrets(in, strlen(in), out, sizeof out);
    if (strcmp(out, want) != 0 || n != strlen(want))
        fail_msg("mask(%s):\n  got  %s\n  want %s", in, out, want);
}

static void test_mask_secrets(void **state)
{
    (void)state;
    expect_masked("cannot connect to mqtt://user:hunter2@127.0.0.1:1883: refused",
                  "cannot connect to mqtt://***@127.0.0.1:1883: refused");
    expect_masked("state 'redis://:hunter2@db:6379/0'", "state 'redis://***@db:6379/0'");
    expect_masked("nats://a:b@h1:4222,nats://c:d@h2:4222", "nats://***@h1:4222,nats://***@h2:4222");
    expect_masked("url mqtts://u:p@ss@h:8883 x",
                  "url mqtts://***@h:8883 x"); /* '@' in a password */
    expect_masked("https://example.com/a and mqtt://h:1", "https://example.com/a and mqtt://h:1");
    expect_masked("password=hunter2 next", "password=*** next");
    expect_masked("broker.password=hunter2", "broker.password=***");
    expect_masked("{\"password\":\"hunter2\",\"x\":1}", "{\"password\":\"***\",\"x\":1}");
    expect_masked("{\"apiKey\": 1, \"api_key\": \"k-123\"}",
                  "{\"apiKey\": ***, \"api_key\": \"***\"}");
    expect_masked("?user=a&token=abc&x=1", "?user=a&token=***&x=1");
    expect_masked("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***");
    expect_masked("client_secret:xyz", "client_secret:***");
    /* Text about secrets, not secrets, stays readable. */
    expect_masked("http.auth.tokens_file: /run/x holds no token",
                  "http.auth.tokens_file: /run/x holds no token");
    /* "key: value" is masked, so a message after "password: " loses a word. */
    expect_masked("broker.password: expected a string, got a list",
                  "broker.password: *** a string, got a list");
    expect_masked("GET /api/v1/users/email:ada@example.com",
                  "GET /api/v1/users/email:ada@example.com");
    expect_masked("", "");
    /* Spaces around the separator. */
    expect_masked("password: hunter2", "password: ***");
    expect_masked("password = x next", "password = *** next");
    expect_masked("{\"password\" : \"x\"}", "{\"password\" : \"***\"}");
    /* Quoted: up to the closing quote; unquoted: ',' and ';' inside stay in. */
    expect_masked("{\"password\":\"p@ss,word\"}", "{\"password\":\"***\"}");
    expect_masked("{\"password\":\"a\\\"b,c\",\"x\":1}", "{\"password\":\"***\",\"x\":1}");
    expect_masked("password='a b;c' x", "password='***' x");
    expect_masked("password=ab;cd", "password=***");
    expect_masked("password=p,w, user=bob; token=t;u; x", "password=***, user=bob; token=***; x");
    /* URL userinfo: RFC 3986 allows ",;&()'" unencoded. */
    expect_masked("mqtt://user:p&ss,x@host", "mqtt://***@host");
    expect_masked("redis://u:a;b@db", "redis://***@db");
    expect_masked("'mqtt://u:(p)'q@h:1/x'", "'mqtt://***@h:1/x'");
    expect_masked("redis://:a;b@db/0?x=@y", "redis://***@db/0?x=@y");
    /* More key spellings; the Authorization scheme stays readable. */
    expect_masked("secret_key=abc", "secret_key=***");
    expect_masked("X-API-Key: abc", "X-API-Key: ***");
    expect_masked("api-key=abc api_key: def", "api-key=*** api_key: ***");
    expect_masked("Authorization: Basic dXNlcjpwYXNz next", "Authorization: Basic *** next");
    expect_masked("authorization=dXNlcjpwYXNz", "authorization=***");
    expect_masked("\"Authorization\": \"Digest a=1, b=2\"", "\"Authorization\": \"Digest ***\"");
    /* Idempotent, and bounded by the output buffer. */
    expect_masked("mqtt://***@h", "mqtt://***@h");
    char small[8];
    assert_int_equal(loom__mask_secrets("mqtt://a@h", 10, small, sizeof small), 7);
    assert_string_equal(small, "mqtt://");
}

/* A line cut at the limit is masked before the cut: the '@' past the cut
 * still marks the userinfo, and a secret's value past it is still hidden. */
static void test_truncation_masks(void **state)
{
    (void)state;
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger lg = {.level = LOOM_LOG_TRACE, .fn = sink_fn, .user = &k};
    size_t pad = LOOM__LOG_MAX_MESSAGE - 20;
    char *fill = malloc(pad + 1);
    assert_non_null(fill);
    memset(fill, 'x', pad);
    fill[pad] = '\0';
    loom__log(&lg, LOOM_LOG_ERROR, NULL, NULL, NULL, "%s mqtt://admin:hunter2hunter2@broker:1883",
              fill);
    loom__log(&lg, LOOM_LOG_ERROR, NULL, NULL, NULL, "%s password=hunter2hunter2 and more", fill);
    assert_int_equal(k.n, 2);
    for (size_t i = 0; i < k.n; i++) {
        assert_int_equal(strlen(k.recs[i].message), LOOM__LOG_MAX_MESSAGE);
        assert_memory_equal(k.recs[i].message, fill, pad);
    }
    assert_string_equal(k.recs[0].message + pad, " mqtt://***@broke...");
    assert_string_equal(k.recs[1].message + pad, " password=*** and...");
    sink_clear(&k);
    free(fill);
}

/* Every record, whoever logs it, reaches the sink masked. */
static void test_log_masks_secrets(void **state)
{
    (void)state;
    static sink k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    loom__logger lg = {.level = LOOM_LOG_TRACE, .fn = sink_fn, .user = &k};
    loom__log(&lg, LOOM_LOG_ERROR, NULL, NULL, NULL, "mqtt: broker URL '%s': bad port",
              "mqtt://admin:hunter2@broker:99999");
    loom__log(&lg, LOOM_LOG_WARN, NULL, NULL, NULL, "dsn=%s", "postgres://admin:hunter2@db/prod");
    assert_int_equal(k.n, 2);
    assert_string_equal(k.recs[0].message, "mqtt: broker URL 'mqtt://***@broker:99999': bad port");
    assert_string_equal(k.recs[1].message, "dsn=postgres://***@db/prod");
    sink_clear(&k);

    /* A runtime refusing its broker URL logs it, masked. */
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.broker_url = "mqtt://admin:hunter2@127.0.0.1:99999",
                                 .log_level = LOOM_LOG_DEBUG, .log_fn = sink_fn, .log_user = &k);
    loom_runtime *rt = NULL;
    loom_err err = loom_runtime_create(&rt, &rc);
    if (err == LOOM_OK) {
        loom_runtime_start(rt);
        loom_runtime_destroy(rt);
    }
    assert_true(k.n > 0);
    for (size_t i = 0; i < k.n; i++)
        if (strstr(k.recs[i].message, "hunter2"))
            fail_msg("a log line shows the password: %s", k.recs[i].message);
    sink_clear(&k);

    /* Configuration errors quote values: masked too. */
    loom_config *cfg = NULL;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "workers", "mqtt://admin:hunter2@h"), LOOM_ECONFIG);
    assert_null(strstr(loom_config_error(cfg), "hunter2"));
    assert_non_null(strstr(loom_config_error(cfg), "mqtt://***@h"));
    loom_config_destroy(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_parse),      cmocka_unit_test(test_sink_record),
        cmocka_unit_test(test_level_filter),     cmocka_unit_test(test_text_lines),
        cmocka_unit_test(test_json_lines),       cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_concurrent_lines), cmocka_unit_test(test_access_lines),
        cmocka_unit_test(test_mask_secrets),     cmocka_unit_test(test_log_masks_secrets),
        cmocka_unit_test(test_truncation_masks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
