/* The "file" state store: the conformance suite (support/store_suite.c),
 * and what only a file has: format, persistence, cross-store and
 * cross-process consistency, corrupt files, limits, URL forms. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support/proc.h"
#include "support/store_suite.h"
#include "support/support.h"

#include "core/util.h"
#include "loom/store.h"
#include "store/store.h"

/* Per test: a fresh directory and a store file path inside it. */
typedef struct fixture {
    char dir[64];
    char path[128];
    char url[160];
} fixture;

/* Names in dir that contain ".tmp." (a save's temporary file). */
static int count_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp."))
            n++;
    closedir(d);
    return n;
}

static int fixture_init(fixture *f)
{
    strcpy(f->dir, "/tmp/loom-fstore-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/state.json", f->dir);
    snprintf(f->url, sizeof f->url, "file:%s", f->path);
    return 0;
}

/* Every test ends without a temporary file left behind. */
static int fixture_fini(fixture *f)
{
    int tmp = count_tmp(f->dir);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", f->dir, de->d_name);
            if (unlink(p) != 0)
                rmdir(p);
        }
        closedir(d);
    }
    rmdir(f->dir);
    if (tmp) {
        fprintf(stderr, "teardown: %d temporary file(s) left behind\n", tmp);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || fixture_init(f) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int rc = fixture_fini(f);
    free(f);
    return rc;
}

/* The suite's store: a new file in a new directory for each test. */
static int suite_reset(void *ctx)
{
    return fixture_init(ctx);
}

static int suite_cleanup(void *ctx)
{
    return fixture_fini(ctx);
}

static loom_store *suite_open(void *ctx)
{
    return t_store_open(((fixture *)ctx)->url, NULL);
}

static fixture suite_fixture;
/* Every write rewrites and fsyncs the file: fewer operations than the
 * memory store's, and a TTL that outlasts a few of them. */
static const t_store_factory file_factory = {
    .name = "file",
    .reset = suite_reset,
    .open = suite_open,
    .cleanup = suite_cleanup,
    .ctx = &suite_fixture,
    .ttl_ms = 300,
    .threads = 4,
    .ops = 150,
    .cas_rounds = 50,
    .json_only = true,
};

/* The stored text of key, exactly, through the adapter. */
static char *raw_get(loom_store *s, const char *key)
{
    char *json = NULL;
    loom_err err = s->ops->get(s->self, key, &json);
    if (err != LOOM_OK)
        fail_msg("raw get %s: %s", key, loom_strerror(err));
    return json;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    buf[n] = '\0';
    fclose(fp);
    if (len)
        *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* Replaces path like another process would: a new file renamed over it. */
static void replace_file(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.other", path);
    write_file(tmp, text, strlen(text));
    assert_int_equal(rename(tmp, path), 0);
}

/* ---------------------------------------------------------------------- */

/* What the file holds, and that reading creates nothing. */
static void test_format(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    t_store_assert_absent(s, "k");
    assert_int_equal(access(f->path, F_OK), -1); /* reads create nothing */
    t_store_set_text(s, "k1", "[1,2.5,-3,\"s\"]", 0);
    assert_int_equal(loom_store_incr(s, "c", -1, NULL), LOOM_OK);

    /* The file is a JSON object of {"v": value} entries. */
    char *text = read_file(f->path, NULL);
    assert_non_null(text);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    assert_non_null(doc);
    assert_true(cJSON_IsObject(doc));
    assert_true(t_json_eq(cJSON_GetObjectItemCaseSensitive(doc, "c"), "{\"v\":-1}"));
    assert_true(t_json_eq(cJSON_GetObjectItemCaseSensitive(doc, "k1"), "{\"v\":[1,2.5,-3,\"s\"]}"));
    assert_null(cJSON_GetObjectItemCaseSensitive(doc, "never"));
    cJSON_Delete(doc);
    loom__store_close(s);
}

/* Expiries are in the file, and a save leaves expired entries out. */
static void test_ttl_in_file(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "short", "1", 50);
    t_store_set_text(s, "long", "2", 60000);
    char *text = read_file(f->path, NULL);
    assert_non_null(strstr(text, "\"exp\":"));
    free(text);
    t_sleep_ms(80);
    t_store_set_text(s, "k", "3", 0);
    text = read_file(f->path, NULL);
    assert_null(strstr(text, "\"short\""));
    assert_non_null(strstr(text, "\"long\""));
    free(text);
    loom__store_close(s);
}

static void test_persistence(void **state)
{
    fixture *f = *state;
    /* Keys and strings that need escaping, and non-ASCII bytes. */
    static const char *keys[] = {
        "plain",       "with \"quotes\"",  "back\\slash",        "new\nline", "ctl\x01\x1f",
        "caf\xc3\xa9", "\xf0\x9f\x98\x80", "not utf-8 \xff\xfe", "/slash/",
    };
    loom_store *s = t_store_open(f->url, NULL);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        /* Keys may be any bytes; a value must be valid JSON text, so a
         * string that is not UTF-8 is refused (it could not be read back). */
        bool utf8 = loom__utf8_valid(keys[i], strlen(keys[i]));
        cJSON *v = cJSON_CreateString(utf8 ? keys[i] : "x");
        assert_int_equal(loom_store_set(s, keys[i], v, 0), LOOM_OK);
        cJSON_Delete(v);
        if (!utf8) {
            v = cJSON_CreateString(keys[i]);
            assert_int_equal(loom_store_set(s, "bad", v, 0), LOOM_EINVAL);
            cJSON_Delete(v);
        }
    }
    /* Beyond 2^53 a double would round: the file keeps the exact text. */
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "big", 9007199254740993LL, &n), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "max", INT64_MAX, &n), LOOM_OK);
    t_store_set_text(s, "ttl", "\"later\"", 60000);
    loom__store_close(s);

    s = t_store_open(f->url, NULL);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        cJSON *v = NULL;
        assert_int_equal(loom_store_get(s, keys[i], &v), LOOM_OK);
        assert_true(cJSON_IsString(v));
        bool utf8 = loom__utf8_valid(keys[i], strlen(keys[i]));
        assert_string_equal(v->valuestring, utf8 ? keys[i] : "x");
        cJSON_Delete(v);
    }
    t_store_assert_absent(s, "bad");
    char *raw = raw_get(s, "big");
    assert_string_equal(raw, "9007199254740993");
    free(raw);
    assert_int_equal(loom_store_incr(s, "big", 1, &n), LOOM_OK);
    assert_true(n == 9007199254740994LL);
    assert_int_equal(loom_store_incr(s, "max", 0, &n), LOOM_OK);
    assert_true(n == INT64_MAX);
    t_store_assert_value(s, "ttl", "\"later\"");
    loom__store_close(s);

    /* The file itself is JSON that cJSON reads back with the same keys. */
    char *text = read_file(f->path, NULL);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    assert_non_null(doc);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++)
        assert_non_null(cJSON_GetObjectItemCaseSensitive(doc, keys[i]));
    cJSON_Delete(doc);
}

static void test_two_stores(void **state)
{
    fixture *f = *state;
    char url2[200];
    snprintf(url2, sizeof url2, "file://%s", f->path); /* file:///abs */
    loom_store *a = t_store_open(f->url, NULL);
    loom_store *b = t_store_open(url2, NULL);

    t_store_set_text(a, "k", "\"from a\"", 0);
    t_store_assert_value(b, "k", "\"from a\"");
    t_store_set_text(b, "k", "\"from b\"", 0);
    t_store_assert_value(a, "k", "\"from b\"");
    cJSON *one = t_json("1");
    assert_int_equal(loom_store_add(a, "k", one, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_delete(b, "k"), LOOM_OK);
    t_store_assert_absent(a, "k");
    assert_int_equal(loom_store_delete(a, "k"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_add(a, "k", one, 0), LOOM_OK);
    t_store_assert_value(b, "k", "1");
    cJSON_Delete(one);

    /* Alternating writers, each write immediately after the other's: the
     * cache must notice every change even within one timestamp tick. */
    int64_t v = 0;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(loom_store_incr(i % 2 ? a : b, "n", 1, &v), LOOM_OK);
        assert_int_equal(v, i + 1);
    }
    for (int i = 0; i < 50; i++) {
        assert_int_equal(loom_store_incr(a, "m", 1, NULL), LOOM_OK);
        assert_int_equal(loom_store_incr(a, "m", 1, NULL), LOOM_OK);
        assert_int_equal(loom_store_incr(b, "m", 0, &v), LOOM_OK);
        assert_int_equal(v, 2 * (i + 1));
    }

    /* The file removed from outside: both see an empty store. */
    assert_int_equal(unlink(f->path), 0);
    t_store_assert_absent(a, "n");
    t_store_assert_absent(b, "k");
    t_store_set_text(b, "again", "true", 0);
    t_store_assert_value(a, "again", "true");

    /* Replaced from outside (a new file renamed over it). */
    replace_file(f->path, "{\"ext\":{\"v\":\"outside\"}}");
    t_store_assert_value(a, "ext", "\"outside\"");
    t_store_assert_absent(b, "again");
    loom__store_close(a);
    loom__store_close(b);
}

/* Replaces path with text and gives it the mtime t (seconds). */
static void replace_at(const char *path, const char *text, time_t t)
{
    replace_file(path, text);
    struct timespec times[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
}

/* Files of equal size and mtime written one after another by someone else:
 * the store must still see each one, even if the filesystem hands the
 * inode of the file it cached to a newer file. */
static void test_same_size_and_time(void **state)
{
    fixture *f = *state;
    time_t t = 1000000000;
    replace_at(f->path, "{\"k\":{\"v\":111}}", t);
    loom_store *s = t_store_open(f->url, NULL);
    t_store_assert_value(s, "k", "111");
    for (int i = 0; i < 20; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"k\":{\"v\":%d}}", 200 + i);
        replace_at(f->path, text, t);
        snprintf(text, sizeof text, "{\"k\":{\"v\":%d}}", 300 + i);
        replace_at(f->path, text, t);
        snprintf(text, sizeof text, "%d", 300 + i);
        t_store_assert_value(s, "k", text);
    }
    loom__store_close(s);
}

/* Forks a child that waits until this returns, then runs fn(arg) and
 * exits with its result: the child and the caller start together. */
static pid_t start_child(int (*fn)(void *arg), void *arg)
{
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* No cmocka in the child. */
        close(go[1]);
        char c;
        _exit(read(go[0], &c, 1) == 1 ? fn(arg) : 125);
    }
    close(go[0]);
    assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);
    return pid;
}

/* Waits for a child of start_child, which must have exited with 0. */
static void wait_child(pid_t pid)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Parent and a forked child each increment one counter 500 times, started
 * together. Without the cross-process lock, updates are lost. */
#define PROC_INCRS 500

typedef struct incr_child {
    loom_store *inherited; /* NULL: the child opens its own store */
    const char *url;
} incr_child;

static int child_incr(void *arg)
{
    const incr_child *c = arg;
    loom_store *s = c->inherited;
    if (!s && loom__store_open(&s, c->url, NULL) != LOOM_OK)
        return 3;
    for (int i = 0; i < PROC_INCRS; i++)
        if (loom_store_incr(s, "n", 1, NULL) != LOOM_OK)
            return 4;
    if (!c->inherited)
        loom__store_close(s);
    return 0;
}

static void run_fork_counter(fixture *f, bool inherit)
{
    loom_store *s = t_store_open(f->url, NULL);
    /* Used before fork, so the child inherits an open lock file. */
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    incr_child child = {.inherited = inherit ? s : NULL, .url = f->url};
    pid_t pid = start_child(child_incr, &child);
    for (int i = 0; i < PROC_INCRS; i++)
        assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    wait_child(pid);
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "n", 0, &v), LOOM_OK);
    assert_int_equal(v, 1 + 2 * PROC_INCRS);
    loom__store_close(s);

    loom_store *fresh = t_store_open(f->url, NULL);
    t_store_assert_value(fresh, "n", "1001");
    loom__store_close(fresh);
}

static void test_fork_counter(void **state)
{
    run_fork_counter(*state, false);
}

/* The child keeps using the store it inherited: it must take its own lock,
 * not share the parent's. */
static void test_fork_inherited(void **state)
{
    run_fork_counter(*state, true);
}

static void test_corrupt(void **state)
{
    fixture *f = *state;
    static const char *cases[] = {
        "not json",
        " ",
        "{\"a\":{\"v\":1}",
        "[1,2]",
        "\"str\"",
        "{\"a\":1}",
        "{\"a\":{}}",
        "{\"a\":{\"exp\":99999999999999}}",
        "{\"a\":{\"v\":1,\"x\":2}}",
        "{\"a\":{\"v\":1,\"v\":2}}",
        "{\"a\":{\"v\":1,\"exp\":\"soon\"}}",
        "{\"a\":{\"v\":1,\"exp\":1.5}}",
        "{\"a\":{\"v\":1,\"exp\":0}}",
        "{\"a\":{\"v\":1,\"exp\":-5}}",
        "{\"a\":{\"v\":1},\"a\":{\"v\":2}}",
        "{\"a\":{\"v\":1}} x",
        "{\"a\":{\"v\":1}}{}",
        "{\"a\":{\"v\":[1,2}}",
        "{\"a\":{\"v\":01}}",
        "{\"a\":{\"v\":1.}}",
        "{\"a\":{\"v\":tru}}",
        "{\"a\":{\"v\":\"\\ud800\"}}",
        "{\"a\":{\"v\":\"\\udc00\\ud800\"}}",
        "{\"a\":{\"v\":\"\\x\"}}",
        "{\"a\":{\"v\":\"tab\there\"}}",
        "{\"a\\u0000b\":{\"v\":1}}",
        "{\"a\":{\"v\":1},}",
        "{a:{\"v\":1}}",
        "{\"a\":{\"v\":1}",
        "\xef\xbb\xbf{}", /* a byte order mark is not JSON whitespace */
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(cases); i++) {
        write_file(f->path, cases[i], strlen(cases[i]));
        struct stat before, after;
        assert_int_equal(stat(f->path, &before), 0);

        loom_store *s = t_store_open(f->url, NULL);
        cJSON *v = NULL, *one = t_json("1");
        int64_t n = 7;
        loom_err errs[] = {
            loom_store_get(s, "a", &v),     loom_store_get(s, "missing", &v),
            loom_store_set(s, "a", one, 0), loom_store_add(s, "new", one, 0),
            loom_store_delete(s, "a"),      loom_store_incr(s, "a", 1, &n),
        };
        cJSON_Delete(one);
        for (size_t e = 0; e < LOOM__ARRAY_LEN(errs); e++)
            if (errs[e] != LOOM_EPARSE)
                fail_msg("case %zu (%s), operation %zu: %s", i, cases[i], e,
                         loom_strerror(errs[e]));
        assert_null(v);
        assert_int_equal(n, 7);
        loom__store_close(s);

        /* Untouched: same inode, same bytes. */
        assert_int_equal(stat(f->path, &after), 0);
        assert_true(before.st_ino == after.st_ino);
        size_t len = 0;
        char *text = read_file(f->path, &len);
        assert_int_equal(len, strlen(cases[i]));
        assert_memory_equal(text, cases[i], len);
        free(text);
        assert_int_equal(count_tmp(f->dir), 0);
    }

    /* Once the file is repaired, the same store works again. */
    loom_store *s = t_store_open(f->url, NULL);
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_EPARSE);
    replace_file(f->path, "{\"n\":{\"v\":41}}");
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "n", 1, &n), LOOM_OK);
    assert_int_equal(n, 42);
    loom__store_close(s);
}

/* Nesting: what cJSON parses (1000 levels) is accepted, deeper is not. */
static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 1);
    assert_non_null(s);
    memset(s, '[', (size_t)depth);
    memset(s + depth, ']', (size_t)depth);
    s[depth * 2] = '\0';
    return s;
}

static void test_values_checked(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "keep", "\"kept\"", 0);
    const loom_store_ops *ops = s->ops;
    /* Text that is not exactly one JSON value never enters the file. */
    static const char *bad[] = {
        "",
        " ",
        "{",
        "1 2",
        "[1,]",
        "{\"a\"}",
        "{\"a\":}",
        "nul",
        "NaN",
        "'x'",
        "\"\\x\"",
        "\"unterminated",
        "01",
        "-",
        "1e",
        "[1]]",
        "{\"a\":1,}",
        "\"\\ud800\"",
        "1234567890123456789012345678901234567890123456789012345678901234", /* 64 chars */
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++)
        if (ops->set(s->self, "x", bad[i], 0, false) != LOOM_EINVAL)
            fail_msg("accepted %s", bad[i]);
    t_store_assert_absent(s, "x");
    t_store_assert_value(s, "keep", "\"kept\"");

    /* Raw text is kept as given, whitespace and all. */
    assert_int_equal(ops->set(s->self, "ws", " [ 1 , {\"a\" : null} ]\n", 0, false), LOOM_OK);
    char *raw = raw_get(s, "ws");
    assert_string_equal(raw, " [ 1 , {\"a\" : null} ]\n");
    free(raw);
    t_store_assert_value(s, "ws", "[1,{\"a\":null}]");

    char *deep = nested(CJSON_NESTING_LIMIT);
    cJSON *parsed = cJSON_Parse(deep);
    assert_non_null(parsed); /* the limit is what cJSON accepts */
    cJSON_Delete(parsed);
    assert_int_equal(ops->set(s->self, "deep", deep, 0, false), LOOM_OK);
    cJSON *v = NULL;
    assert_int_equal(loom_store_get(s, "deep", &v), LOOM_OK);
    cJSON_Delete(v);
    free(deep);
    deep = nested(CJSON_NESTING_LIMIT + 1);
    assert_int_equal(ops->set(s->self, "deeper", deep, 0, false), LOOM_EINVAL);
    free(deep);
    loom__store_close(s);

    /* The file still parses and holds what was accepted. */
    s = t_store_open(f->url, NULL);
    t_store_assert_value(s, "keep", "\"kept\"");
    t_store_assert_value(s, "ws", "[1,{\"a\":null}]");
    loom__store_close(s);
}

/* A file written by hand: whitespace, escapes, expiries, key order. */
static void test_handwritten(void **state)
{
    fixture *f = *state;
    char text[512];
    snprintf(text, sizeof text,
             "\n {\r\n"
             "  \"z\" : { \"exp\" : %" PRId64 " , \"v\" : [ 1, 2 ] },\n"
             "  \"caf\\u00e9\" : {\"v\": \"\\u00e9\\ud83d\\ude00\\/\"},\n"
             "  \"old\": {\"v\": 1, \"exp\": 1000},\n"
             "  \"a\": {\"v\": {\"n\": 1.5e3}}\n"
             "}\n",
             loom__now_ms() + 3600000);
    write_file(f->path, text, strlen(text));
    loom_store *s = t_store_open(f->url, NULL);
    t_store_assert_value(s, "z", "[1,2]");
    t_store_assert_value(s, "caf\xc3\xa9", "\"\xc3\xa9\xf0\x9f\x98\x80/\"");
    t_store_assert_value(s, "a", "{\"n\":1500}");
    t_store_assert_absent(s, "old");
    assert_int_equal(loom_store_delete(s, "old"), LOOM_ENOTFOUND);

    /* A write rewrites it: sorted, expired entries gone, one per line. */
    t_store_set_text(s, "m", "true", 0);
    char *now = read_file(f->path, NULL);
    assert_null(strstr(now, "\"old\""));
    char *pa = strstr(now, "\n\"a\":"), *pc = strstr(now, "\n\"caf"), *pm = strstr(now, "\n\"m\":");
    char *pz = strstr(now, "\n\"z\":{\"v\":[ 1, 2 ],\"exp\":");
    assert_true(pa && pc && pm && pz);
    assert_true(pa < pc && pc < pm && pm < pz);
    free(now);
    loom__store_close(s);

    /* Empty file and empty object: an empty store. */
    write_file(f->path, "", 0);
    s = t_store_open(f->url, NULL);
    t_store_assert_absent(s, "z");
    t_store_set_text(s, "k", "1", 0);
    loom__store_close(s);
    write_file(f->path, " {\n} ", 5);
    s = t_store_open(f->url, NULL);
    t_store_assert_absent(s, "k");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_ENOTFOUND);
    loom__store_close(s);
}

static void test_missing_dir(void **state)
{
    fixture *f = *state;
    char url[256], dir[200];
    snprintf(dir, sizeof dir, "%s/nope", f->dir);
    snprintf(url, sizeof url, "file:%s/state.json", dir);
    loom_store *s = t_store_open(url, NULL); /* opening touches nothing */
    cJSON *one = t_json("1");
    t_store_assert_absent(s, "k"); /* nothing there yet: an empty store */
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_EIO);
    assert_int_equal(loom_store_add(s, "k", one, 0), LOOM_EIO);
    assert_int_equal(loom_store_incr(s, "k", 1, NULL), LOOM_EIO);
    assert_int_equal(loom_store_delete(s, "k"), LOOM_EIO);
    assert_int_equal(access(dir, F_OK), -1);
    /* Once the directory exists, the same store works. */
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_OK);
    t_store_assert_value(s, "k", "1");
    loom__store_close(s);
    char p[256];
    snprintf(p, sizeof p, "%s/state.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/state.json.lock", dir);
    unlink(p);
    assert_int_equal(rmdir(dir), 0);

    /* A parent that is a regular file. */
    snprintf(url, sizeof url, "file:%s/sub/state.json", f->path);
    write_file(f->path, "{}", 2);
    s = t_store_open(url, NULL);
    t_store_assert_absent(s, "k");
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_EIO);
    loom__store_close(s);

    /* PATH is a directory. */
    snprintf(dir, sizeof dir, "%s/adir", f->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(url, sizeof url, "file:%s", dir);
    s = t_store_open(url, NULL);
    assert_int_equal(loom_store_get(s, "k", &(cJSON *){NULL}), LOOM_EIO);
    loom__store_close(s);
    cJSON_Delete(one);
}

/* The directory must be one nobody else can create names in: checked at
 * open when it exists, and before the first operation when it appears
 * later. */
static void test_private_dir(void **state)
{
    fixture *f = *state;
    loom_store *s = NULL;
    assert_int_equal(chmod(f->dir, 0777), 0);
    assert_int_equal(loom__store_open(&s, f->url, NULL), LOOM_ECONFIG);
    assert_int_equal(chmod(f->dir, 01777), 0); /* sticky like /tmp: still refused */
    assert_int_equal(loom__store_open(&s, f->url, NULL), LOOM_ECONFIG);
    assert_int_equal(chmod(f->dir, 0755), 0); /* others may read, not write */
    s = t_store_open(f->url, NULL);
    t_store_set_text(s, "k", "1", 0);
    loom__store_close(s);

    char dir[200], url[256];
    snprintf(dir, sizeof dir, "%s/later", f->dir);
    snprintf(url, sizeof url, "file:%s/state.json", dir);
    s = t_store_open(url, NULL);
    assert_int_equal(mkdir(dir, 0777), 0);
    assert_int_equal(chmod(dir, 0777), 0);
    cJSON *one = t_json("1");
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_EIO);
    cJSON_Delete(one);
    assert_int_equal(access(dir, F_OK), 0);
    loom__store_close(s);
    assert_int_equal(rmdir(dir), 0);
}

/* The temporary file of a save is created exclusively under a random name:
 * a file planted at the name the store used to pick (PATH.tmp.<pid>) is
 * neither written nor renamed into place. */
static void test_tmp_exclusive(void **state)
{
    fixture *f = *state;
    char planted[200];
    snprintf(planted, sizeof planted, "%s.tmp.%ld", f->path, (long)getpid());
    int fd = open(planted, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "planted", 7), 7);
    close(fd);
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "k", "\"v\"", 0);
    t_store_assert_value(s, "k", "\"v\"");
    loom__store_close(s);
    char *text = t_read_file(planted);
    assert_non_null(text);
    assert_string_equal(text, "planted");
    free(text);
    assert_int_equal(unlink(planted), 0);
}

/* A state or lock file that others may write, or (as root) that another
 * user owns, is not trusted: operations fail instead of reading it as the
 * user's own. */
static void test_untrusted_files(void **state)
{
    fixture *f = *state;
    replace_file(f->path, "{\"k\":{\"v\":\"planted\"}}");
    assert_int_equal(chmod(f->path, 0666), 0);
    loom_store *s = t_store_open(f->url, NULL);
    char *json = NULL;
    assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_EIO);
    assert_int_equal(chmod(f->path, 0600), 0);
    assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_OK);
    free(json);
    if (geteuid() == 0) { /* a file of another user: uid 54321 needs no account */
        assert_int_equal(chown(f->path, 54321, 54321), 0);
        assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_EIO);
        assert_int_equal(chown(f->path, 0, 0), 0);
    } else {
        fprintf(stderr, "test_untrusted_files: not root, the owner check is not exercised\n");
    }
    loom__store_close(s);

    /* A lock file anyone may open for writing (and so hold). */
    char lock[200];
    snprintf(lock, sizeof lock, "%s.lock", f->path);
    assert_int_equal(chmod(lock, 0666), 0);
    s = t_store_open(f->url, NULL);
    assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_EIO);
    loom__store_close(s);
    assert_int_equal(chmod(lock, 0600), 0);
    if (geteuid() == 0) {
        assert_int_equal(chown(lock, 54321, 54321), 0);
        s = t_store_open(f->url, NULL);
        assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_EIO);
        loom__store_close(s);
        assert_int_equal(chown(lock, 0, 0), 0);
    }
}

/* Waiting for the lock is bounded (state option timeout_ms): a holder that
 * keeps it gives LOOM_ETIMEDOUT, not a hung worker; once it lets go, the
 * store works again. */
static void test_lock_timeout(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, "{\"timeout_ms\": 300}");
    t_store_set_text(s, "k", "1", 0);
    char lock[200];
    snprintf(lock, sizeof lock, "%s.lock", f->path);
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        int fd = open(lock, O_RDWR);
        if (fd < 0 || flock(fd, LOCK_EX) != 0)
            _exit(3);
        if (write(ready[1], "r", 1) != 1)
            _exit(4);
        sleep(6); /* far beyond the store's 300 ms */
        _exit(0);
    }
    close(ready[1]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    cJSON *two = t_json("2");
    int64_t t0 = t_mono_ms();
    assert_int_equal(loom_store_set(s, "k", two, 0), LOOM_ETIMEDOUT);
    char *json = NULL;
    assert_int_equal(s->ops->get(s->self, "k", &json), LOOM_ETIMEDOUT);
    int64_t took = t_mono_ms() - t0;
    assert_true(took >= 500 && took < 3000);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(loom_store_set(s, "k", two, 0), LOOM_OK);
    t_store_assert_value(s, "k", "2");
    cJSON_Delete(two);
    loom__store_close(s);
}

static void test_mode(void **state)
{
    fixture *f = *state;
    mode_t old = umask(022);
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "k", "1", 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* A mode the owner chose survives rewrites. */
    assert_int_equal(chmod(f->path, 0640), 0);
    t_store_set_text(s, "k", "2", 0);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    loom__store_close(s);
    umask(old);
}

static void test_limits(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    const loom_store_ops *ops = s->ops;

    /* A value that alone exceeds 64 MiB is refused before any I/O. */
    size_t huge = ((size_t)64 << 20) + 1;
    char *big = malloc(huge + 1);
    assert_non_null(big);
    memset(big, 'a', huge);
    big[0] = '"';
    big[huge - 1] = '"';
    big[huge] = '\0';
    assert_int_equal(ops->set(s->self, "big", big, 0, false), LOOM_ETOOBIG);
    assert_int_equal(access(f->path, F_OK), -1);

    /* Two 40 MiB values: the second save would exceed the limit. It fails,
     * leaves the file and no tmp file behind, and is not in the cache. */
    size_t forty = (size_t)40 << 20;
    big[forty - 1] = '"';
    big[forty] = '\0';
    assert_int_equal(ops->set(s->self, "one", big, 0, false), LOOM_OK);
    struct stat before, after;
    assert_int_equal(stat(f->path, &before), 0);
    assert_int_equal(ops->set(s->self, "two", big, 0, false), LOOM_ETOOBIG);
    assert_int_equal(count_tmp(f->dir), 0);
    assert_int_equal(stat(f->path, &after), 0);
    assert_true(before.st_ino == after.st_ino && before.st_size == after.st_size);
    char *out = NULL;
    assert_int_equal(ops->get(s->self, "two", &out), LOOM_ENOTFOUND);
    assert_int_equal(ops->get(s->self, "one", &out), LOOM_OK);
    assert_int_equal(strlen(out), forty);
    free(out);
    free(big);
    assert_int_equal(loom_store_delete(s, "one"), LOOM_OK);

    /* A file over the limit is refused by every operation, untouched. */
    int fd = open(f->path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, ((off_t)64 << 20) + 1), 0);
    close(fd);
    cJSON *one = t_json("1");
    assert_int_equal(loom_store_get(s, "k", &(cJSON *){NULL}), LOOM_ETOOBIG);
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_ETOOBIG);
    assert_int_equal(loom_store_incr(s, "k", 1, NULL), LOOM_ETOOBIG);
    assert_int_equal(loom_store_delete(s, "k"), LOOM_ETOOBIG);
    cJSON_Delete(one);
    assert_int_equal(stat(f->path, &after), 0);
    assert_true(after.st_size == ((off_t)64 << 20) + 1);
    loom__store_close(s);
}

/* What cas does to the file. */
static void test_cas_file(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    assert_int_equal(t_store_cas_text(s, "k", NULL, "{\"v\":1}", 0), LOOM_OK);
    /* A mismatch writes nothing. */
    struct stat before, after;
    assert_int_equal(stat(f->path, &before), 0);
    assert_int_equal(t_store_cas_text(s, "k", "{\"v\":0}", "{\"v\":2}", 0), LOOM_EEXIST);
    assert_int_equal(stat(f->path, &after), 0);
    assert_true(before.st_ino == after.st_ino);
    assert_int_equal(t_store_cas_text(s, "k", " { \"v\" : 1 } ", "{\"v\":2}", 0), LOOM_OK);
    loom__store_close(s);

    /* In the file, seen by a store opened later. */
    loom_store *b = t_store_open(f->url, NULL);
    t_store_assert_value(b, "k", "{\"v\":2}");
    /* Only JSON enters the file. */
    assert_int_equal(b->ops->cas(b->self, "k", "{\"v\":2}", "{bad", 0), LOOM_EINVAL);
    assert_int_equal(b->ops->cas(b->self, "k", "{\"v\":2}", "1 2", 0), LOOM_EINVAL);
    t_store_assert_value(b, "k", "{\"v\":2}");
    loom__store_close(b);

    /* A corrupt file is never overwritten. */
    write_file(f->path, "not json", 8);
    s = t_store_open(f->url, NULL);
    assert_int_equal(t_store_cas_text(s, "t", NULL, "1", 0), LOOM_EPARSE);
    assert_int_equal(t_store_cas_text(s, "t", "3", NULL, 0), LOOM_EPARSE);
    loom__store_close(s);
    size_t len = 0;
    char *text = read_file(f->path, &len);
    assert_int_equal(len, 8);
    free(text);
}

/* Parent and a forked child update one document with read-modify-cas
 * loops: no update is lost across processes. */
#define CAS_ROUNDS 150

static int child_cas(void *url)
{
    loom_store *own = NULL;
    if (loom__store_open(&own, url, NULL) != LOOM_OK)
        return 3;
    int failed = t_store_cas_loop(own, CAS_ROUNDS);
    loom__store_close(own);
    return failed ? 2 : 0;
}

static void test_cas_processes(void **state)
{
    fixture *f = *state;
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "doc", "{\"n\":0}", 0);
    pid_t pid = start_child(child_cas, f->url);
    assert_int_equal(t_store_cas_loop(s, CAS_ROUNDS), 0);
    wait_child(pid);
    char want[32];
    snprintf(want, sizeof want, "{\"n\":%d}", 2 * CAS_ROUNDS);
    t_store_assert_value(s, "doc", want);
    loom__store_close(s);
}

static void test_urls(void **state)
{
    fixture *f = *state;
    char url[300];
    loom_store *s = t_store_open(f->url, NULL);
    t_store_set_text(s, "k", "\"here\"", 0);
    loom__store_close(s);

    const char *forms[] = {"file://%s", "file://localhost%s", "FILE:%s", "file://LOCALHOST%s"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(forms); i++) {
        snprintf(url, sizeof url, forms[i], f->path);
        s = t_store_open(url, NULL);
        t_store_assert_value(s, "k", "\"here\"");
        loom__store_close(s);
    }

    /* Relative: to the working directory at open, not later. */
    char *cwd = getcwd(NULL, 0);
    assert_non_null(cwd);
    assert_int_equal(chdir(f->dir), 0);
    s = t_store_open("file:state.json", NULL);
    assert_int_equal(chdir("/"), 0);
    t_store_assert_value(s, "k", "\"here\"");
    t_store_set_text(s, "rel", "1", 0);
    loom__store_close(s);
    assert_int_equal(chdir(f->dir), 0);
    s = t_store_open("file:./state.json", NULL);
    assert_int_equal(chdir(cwd), 0);
    free(cwd);
    t_store_assert_value(s, "rel", "1");
    loom__store_close(s);

    /* Refused. */
    const char *bad[] = {"file:",          "file://", "file://localhost", "file://host/abs/x.json",
                         "file:/tmp/dir/", "file:///"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        s = (loom_store *)1;
        if (loom__store_open(&s, bad[i], NULL) != LOOM_ECONFIG)
            fail_msg("accepted %s", bad[i]);
        assert_null(s);
    }
    char *longp = malloc(PATH_MAX + 16);
    assert_non_null(longp);
    memset(longp, 'a', PATH_MAX + 15);
    memcpy(longp, "file:/", 6);
    longp[PATH_MAX + 15] = '\0';
    assert_int_equal(loom__store_open(&s, longp, NULL), LOOM_ECONFIG);
    free(longp);

    /* The adapter on its own. */
    void *self = (void *)1;
    assert_int_equal(loom__store_file_ops.open(&self, "nocolon", NULL), LOOM_EINVAL);
    assert_null(self);
    assert_int_equal(loom__store_file_ops.open(NULL, "file:/x", NULL), LOOM_EINVAL);
    assert_int_equal(loom__store_file_ops.open(&self, NULL, NULL), LOOM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T_STORE_SUITE(&file_factory),
        cmocka_unit_test_setup_teardown(test_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttl_in_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_stores, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_size_and_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_inherited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handwritten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_private_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tmp_exclusive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cas_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cas_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_urls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
