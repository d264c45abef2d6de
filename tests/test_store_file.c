/* The "file" state store: format, persistence, cross-store and
 * cross-process consistency, corrupt files, limits, URL forms. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

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

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    strcpy(f->dir, "/tmp/loom-fstore-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/state.json", f->dir);
    snprintf(f->url, sizeof f->url, "file:%s", f->path);
    *state = f;
    return 0;
}

/* Every test ends without a temporary file left behind. */
static int teardown(void **state)
{
    fixture *f = *state;
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
    free(f);
    if (tmp) {
        fprintf(stderr, "teardown: %d temporary file(s) left behind\n", tmp);
        return -1;
    }
    return 0;
}

static loom_store *open_url(const char *url)
{
    loom_store *s = NULL;
    loom_err err = loom__store_open(&s, url, NULL);
    if (err != LOOM_OK)
        fail_msg("open %s: %s", url, loom_strerror(err));
    assert_non_null(s);
    return s;
}

static void set_text(loom_store *s, const char *key, const char *text, uint32_t ttl)
{
    cJSON *v = t_json(text);
    assert_int_equal(loom_store_set(s, key, v, ttl), LOOM_OK);
    cJSON_Delete(v);
}

static void assert_value(loom_store *s, const char *key, const char *text)
{
    cJSON *v = NULL;
    loom_err err = loom_store_get(s, key, &v);
    if (err != LOOM_OK)
        fail_msg("get %s: %s", key, loom_strerror(err));
    if (!t_json_eq(v, text)) {
        char *got = cJSON_PrintUnformatted(v);
        cJSON_Delete(v);
        fail_msg("key %s: got %s, want %s", key, got, text);
    }
    cJSON_Delete(v);
}

static void assert_absent(loom_store *s, const char *key)
{
    cJSON *v = (cJSON *)1;
    assert_int_equal(loom_store_get(s, key, &v), LOOM_ENOTFOUND);
    assert_null(v);
}

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

static void test_basic(void **state)
{
    fixture *f = *state;
    loom_store *s = open_url(f->url);
    assert_absent(s, "k");
    assert_int_equal(access(f->path, F_OK), -1); /* reads create nothing */

    const char *values[] = {
        "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"é\\n\\\"x\\\"\"}}",
        "[1,2.5,-3,\"s\"]",
        "\"plain\"",
        "42",
        "-0.125",
        "true",
        "null",
        "{}",
        "[]",
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        char key[16];
        snprintf(key, sizeof key, "k%zu", i);
        set_text(s, key, values[i], 0);
    }
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        char key[16];
        snprintf(key, sizeof key, "k%zu", i);
        assert_value(s, key, values[i]);
    }
    set_text(s, "k0", "{\"n\":1}", 0);
    assert_value(s, "k0", "{\"n\":1}");

    /* add, delete */
    cJSON *one = t_json("1"), *two = t_json("2");
    assert_int_equal(loom_store_add(s, "a", one, 0), LOOM_OK);
    assert_int_equal(loom_store_add(s, "a", two, 0), LOOM_EEXIST);
    assert_value(s, "a", "1");
    assert_int_equal(loom_store_delete(s, "a"), LOOM_OK);
    assert_absent(s, "a");
    assert_int_equal(loom_store_delete(s, "a"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_add(s, "a", two, 0), LOOM_OK);
    assert_value(s, "a", "2");
    cJSON_Delete(one);
    cJSON_Delete(two);

    /* incr, as in the memory store */
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "c", 5, &v), LOOM_OK);
    assert_int_equal(v, 5);
    assert_int_equal(loom_store_incr(s, "c", -7, &v), LOOM_OK);
    assert_int_equal(v, -2);
    assert_int_equal(loom_store_incr(s, "c", 1, NULL), LOOM_OK);
    assert_value(s, "c", "-1");
    set_text(s, "whole", "3.0", 0);
    assert_int_equal(loom_store_incr(s, "whole", 1, &v), LOOM_OK);
    assert_int_equal(v, 4);
    const char *bad[] = {"2.5", "\"3\"", "{\"a\":1}", "[1]", "true", "null"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        set_text(s, "bad", bad[i], 0);
        v = 99;
        assert_int_equal(loom_store_incr(s, "bad", 1, &v), LOOM_EINVAL);
        assert_int_equal(v, 99);
        assert_value(s, "bad", bad[i]);
    }
    assert_int_equal(loom_store_incr(s, "max", INT64_MAX, &v), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "max", 1, &v), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "min", INT64_MIN, &v), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "min", -1, &v), LOOM_EINVAL);
    assert_int_equal(loom_store_incr(s, "min", 0, &v), LOOM_OK);
    assert_true(v == INT64_MIN);

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

static void test_ttl(void **state)
{
    fixture *f = *state;
    loom_store *s = open_url(f->url);
    loom_store *other = open_url(f->url);
    cJSON *v = t_json("{\"x\":1}");
    assert_int_equal(loom_store_set(s, "short", v, 300), LOOM_OK);
    assert_int_equal(loom_store_set(s, "long", v, 60000), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 300), LOOM_OK);
    assert_int_equal(loom_store_set(s, "cleared", v, 0), LOOM_OK); /* drops the TTL */
    assert_int_equal(loom_store_add(s, "added", v, 300), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "counter", 10, NULL), LOOM_OK);
    set_text(s, "ctr_ttl", "5", 300);
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "ctr_ttl", 1, &n), LOOM_OK); /* keeps the TTL */
    assert_int_equal(n, 6);

    /* The expiry is in the file: another store sees it too. */
    char *text = read_file(f->path, NULL);
    assert_non_null(strstr(text, "\"exp\":"));
    free(text);
    assert_value(other, "short", "{\"x\":1}");
    assert_value(other, "ctr_ttl", "6");

    sleep_ms(450);
    assert_absent(s, "short");
    assert_absent(other, "short");
    assert_absent(other, "added");
    assert_absent(s, "ctr_ttl");
    assert_value(s, "long", "{\"x\":1}");
    assert_value(s, "cleared", "{\"x\":1}");
    assert_value(other, "counter", "10");
    assert_int_equal(loom_store_delete(s, "short"), LOOM_ENOTFOUND);
    /* An expired key is absent for add and incr (which starts over at 0
     * without a TTL). */
    assert_int_equal(loom_store_add(other, "added", v, 0), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "ctr_ttl", 1, &n), LOOM_OK);
    assert_int_equal(n, 1);
    sleep_ms(80);
    assert_value(s, "ctr_ttl", "1");
    assert_value(s, "added", "{\"x\":1}");

    /* The last save dropped the expired entries from the file. */
    text = read_file(f->path, NULL);
    assert_null(strstr(text, "\"short\""));
    assert_non_null(strstr(text, "\"long\""));
    free(text);
    cJSON_Delete(v);
    loom__store_close(other);
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
    loom_store *s = open_url(f->url);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        cJSON *v = cJSON_CreateString(keys[i]);
        assert_int_equal(loom_store_set(s, keys[i], v, 0), LOOM_OK);
        cJSON_Delete(v);
    }
    /* Beyond 2^53 a double would round: the file keeps the exact text. */
    int64_t n = 0;
    assert_int_equal(loom_store_incr(s, "big", 9007199254740993LL, &n), LOOM_OK);
    assert_int_equal(loom_store_incr(s, "max", INT64_MAX, &n), LOOM_OK);
    set_text(s, "ttl", "\"later\"", 60000);
    loom__store_close(s);

    s = open_url(f->url);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        cJSON *v = NULL;
        assert_int_equal(loom_store_get(s, keys[i], &v), LOOM_OK);
        assert_true(cJSON_IsString(v));
        assert_string_equal(v->valuestring, keys[i]);
        cJSON_Delete(v);
    }
    char *raw = raw_get(s, "big");
    assert_string_equal(raw, "9007199254740993");
    free(raw);
    assert_int_equal(loom_store_incr(s, "big", 1, &n), LOOM_OK);
    assert_true(n == 9007199254740994LL);
    assert_int_equal(loom_store_incr(s, "max", 0, &n), LOOM_OK);
    assert_true(n == INT64_MAX);
    assert_value(s, "ttl", "\"later\"");
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
    loom_store *a = open_url(f->url);
    loom_store *b = open_url(url2);

    set_text(a, "k", "\"from a\"", 0);
    assert_value(b, "k", "\"from a\"");
    set_text(b, "k", "\"from b\"", 0);
    assert_value(a, "k", "\"from b\"");
    cJSON *one = t_json("1");
    assert_int_equal(loom_store_add(a, "k", one, 0), LOOM_EEXIST);
    assert_int_equal(loom_store_delete(b, "k"), LOOM_OK);
    assert_absent(a, "k");
    assert_int_equal(loom_store_delete(a, "k"), LOOM_ENOTFOUND);
    assert_int_equal(loom_store_add(a, "k", one, 0), LOOM_OK);
    assert_value(b, "k", "1");
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
    assert_absent(a, "n");
    assert_absent(b, "k");
    set_text(b, "again", "true", 0);
    assert_value(a, "again", "true");

    /* Replaced from outside (a new file renamed over it). */
    replace_file(f->path, "{\"ext\":{\"v\":\"outside\"}}");
    assert_value(a, "ext", "\"outside\"");
    assert_absent(b, "again");
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
    loom_store *s = open_url(f->url);
    assert_value(s, "k", "111");
    for (int i = 0; i < 20; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"k\":{\"v\":%d}}", 200 + i);
        replace_at(f->path, text, t);
        snprintf(text, sizeof text, "{\"k\":{\"v\":%d}}", 300 + i);
        replace_at(f->path, text, t);
        snprintf(text, sizeof text, "%d", 300 + i);
        assert_value(s, "k", text);
    }
    loom__store_close(s);
}

/* Incremented from several threads through two stores on one file (two
 * flocks in one process): no update may be lost. */
#define THREADS 4
#define THREAD_INCRS 100

static void *incr_thread(void *arg)
{
    loom_store *s = arg;
    for (int i = 0; i < THREAD_INCRS; i++)
        if (loom_store_incr(s, "n", 1, NULL) != LOOM_OK)
            return (void *)1;
    return NULL;
}

static void test_threads(void **state)
{
    fixture *f = *state;
    loom_store *a = open_url(f->url);
    loom_store *b = open_url(f->url);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, incr_thread, i % 2 ? a : b), 0);
    for (int i = 0; i < THREADS; i++) {
        void *ret = NULL;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_null(ret);
    }
    int64_t v = 0;
    assert_int_equal(loom_store_incr(a, "n", 0, &v), LOOM_OK);
    assert_int_equal(v, THREADS * THREAD_INCRS);
    loom__store_close(a);
    loom__store_close(b);
}

/* Parent and a forked child each increment one counter 500 times, started
 * together. Without the cross-process lock, updates are lost. */
#define PROC_INCRS 500

/* Runs in the child: no cmocka here. */
static int child_incr(loom_store *s, const char *url, int go_fd)
{
    char c;
    if (read(go_fd, &c, 1) != 1)
        return 2;
    bool own = s == NULL;
    if (own && loom__store_open(&s, url, NULL) != LOOM_OK)
        return 3;
    for (int i = 0; i < PROC_INCRS; i++)
        if (loom_store_incr(s, "n", 1, NULL) != LOOM_OK)
            return 4;
    if (own)
        loom__store_close(s);
    return 0;
}

static void run_fork_counter(fixture *f, bool inherit)
{
    loom_store *s = open_url(f->url);
    /* Used before fork, so the child inherits an open lock file. */
    assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        _exit(child_incr(inherit ? s : NULL, f->url, go[0]));
    }
    close(go[0]);
    assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);
    for (int i = 0; i < PROC_INCRS; i++)
        assert_int_equal(loom_store_incr(s, "n", 1, NULL), LOOM_OK);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    int64_t v = 0;
    assert_int_equal(loom_store_incr(s, "n", 0, &v), LOOM_OK);
    assert_int_equal(v, 1 + 2 * PROC_INCRS);
    loom__store_close(s);

    loom_store *fresh = open_url(f->url);
    assert_value(fresh, "n", "1001");
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

        loom_store *s = open_url(f->url);
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
    loom_store *s = open_url(f->url);
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
    loom_store *s = open_url(f->url);
    set_text(s, "keep", "\"kept\"", 0);
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
    assert_absent(s, "x");
    assert_value(s, "keep", "\"kept\"");

    /* Raw text is kept as given, whitespace and all. */
    assert_int_equal(ops->set(s->self, "ws", " [ 1 , {\"a\" : null} ]\n", 0, false), LOOM_OK);
    char *raw = raw_get(s, "ws");
    assert_string_equal(raw, " [ 1 , {\"a\" : null} ]\n");
    free(raw);
    assert_value(s, "ws", "[1,{\"a\":null}]");

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

    /* Bad arguments at the adapter. */
    char *out = NULL;
    assert_int_equal(ops->get(NULL, "k", &out), LOOM_EINVAL);
    assert_int_equal(ops->get(s->self, NULL, &out), LOOM_EINVAL);
    assert_int_equal(ops->get(s->self, "k", NULL), LOOM_EINVAL);
    assert_int_equal(ops->set(s->self, "k", NULL, 0, false), LOOM_EINVAL);
    assert_int_equal(ops->set(NULL, "k", "1", 0, false), LOOM_EINVAL);
    assert_int_equal(ops->del(s->self, NULL), LOOM_EINVAL);
    assert_int_equal(ops->incr(NULL, "k", 1, NULL), LOOM_EINVAL);
    ops->close(NULL);
    loom__store_close(s);

    /* The file still parses and holds what was accepted. */
    s = open_url(f->url);
    assert_value(s, "keep", "\"kept\"");
    assert_value(s, "ws", "[1,{\"a\":null}]");
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
    loom_store *s = open_url(f->url);
    assert_value(s, "z", "[1,2]");
    assert_value(s, "caf\xc3\xa9", "\"\xc3\xa9\xf0\x9f\x98\x80/\"");
    assert_value(s, "a", "{\"n\":1500}");
    assert_absent(s, "old");
    assert_int_equal(loom_store_delete(s, "old"), LOOM_ENOTFOUND);

    /* A write rewrites it: sorted, expired entries gone, one per line. */
    set_text(s, "m", "true", 0);
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
    s = open_url(f->url);
    assert_absent(s, "z");
    set_text(s, "k", "1", 0);
    loom__store_close(s);
    write_file(f->path, " {\n} ", 5);
    s = open_url(f->url);
    assert_absent(s, "k");
    assert_int_equal(loom_store_delete(s, "k"), LOOM_ENOTFOUND);
    loom__store_close(s);
}

static void test_missing_dir(void **state)
{
    fixture *f = *state;
    char url[256], dir[200];
    snprintf(dir, sizeof dir, "%s/nope", f->dir);
    snprintf(url, sizeof url, "file:%s/state.json", dir);
    loom_store *s = open_url(url); /* opening touches nothing */
    cJSON *one = t_json("1");
    assert_absent(s, "k"); /* nothing there yet: an empty store */
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_EIO);
    assert_int_equal(loom_store_add(s, "k", one, 0), LOOM_EIO);
    assert_int_equal(loom_store_incr(s, "k", 1, NULL), LOOM_EIO);
    assert_int_equal(loom_store_delete(s, "k"), LOOM_EIO);
    assert_int_equal(access(dir, F_OK), -1);
    /* Once the directory exists, the same store works. */
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_OK);
    assert_value(s, "k", "1");
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
    s = open_url(url);
    assert_absent(s, "k");
    assert_int_equal(loom_store_set(s, "k", one, 0), LOOM_EIO);
    loom__store_close(s);

    /* PATH is a directory. */
    snprintf(dir, sizeof dir, "%s/adir", f->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(url, sizeof url, "file:%s", dir);
    s = open_url(url);
    assert_int_equal(loom_store_get(s, "k", &(cJSON *){NULL}), LOOM_EIO);
    loom__store_close(s);
    cJSON_Delete(one);
}

static void test_mode(void **state)
{
    fixture *f = *state;
    mode_t old = umask(022);
    loom_store *s = open_url(f->url);
    set_text(s, "k", "1", 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* A mode the owner chose survives rewrites. */
    assert_int_equal(chmod(f->path, 0640), 0);
    set_text(s, "k", "2", 0);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    loom__store_close(s);
    umask(old);
}

static void test_limits(void **state)
{
    fixture *f = *state;
    loom_store *s = open_url(f->url);
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

static loom_err cas_text(loom_store *s, const char *key, const char *expected, const char *value,
                         uint32_t ttl)
{
    cJSON *e = expected ? t_json(expected) : NULL;
    cJSON *v = value ? t_json(value) : NULL;
    loom_err err = loom_store_cas(s, key, e, v, ttl);
    cJSON_Delete(e);
    cJSON_Delete(v);
    return err;
}

static void test_cas(void **state)
{
    fixture *f = *state;
    loom_store *s = open_url(f->url);
    /* expected NULL: only when absent. */
    assert_int_equal(cas_text(s, "k", NULL, "{\"v\":1}", 0), LOOM_OK);
    assert_int_equal(cas_text(s, "k", NULL, "{\"v\":2}", 0), LOOM_EEXIST);
    assert_value(s, "k", "{\"v\":1}");
    /* A match swaps, a mismatch changes nothing (and writes nothing). */
    struct stat before, after;
    assert_int_equal(stat(f->path, &before), 0);
    assert_int_equal(cas_text(s, "k", "{\"v\":0}", "{\"v\":2}", 0), LOOM_EEXIST);
    assert_int_equal(stat(f->path, &after), 0);
    assert_true(before.st_ino == after.st_ino);
    assert_int_equal(cas_text(s, "k", " { \"v\" : 1 } ", "{\"v\":2}", 0), LOOM_OK);
    assert_value(s, "k", "{\"v\":2}");
    set_text(s, "o", "{\"a\":1,\"b\":2}", 0);
    assert_int_equal(cas_text(s, "o", "{\"b\":2,\"a\":1}", "0", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "o", "{\"a\":1,\"b\":2}", "0", 0), LOOM_OK);
    assert_int_equal(cas_text(s, "none", "1", "2", 0), LOOM_EEXIST);
    assert_absent(s, "none");
    /* value NULL deletes. */
    assert_int_equal(cas_text(s, "k", "{\"v\":3}", NULL, 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "k", "{\"v\":2}", NULL, 0), LOOM_OK);
    assert_absent(s, "k");
    assert_int_equal(cas_text(s, "k", NULL, NULL, 0), LOOM_OK);
    /* Counters written by incr compare with cJSON numbers below 1e15. */
    assert_int_equal(loom_store_incr(s, "n", 123456789012345LL, NULL), LOOM_OK);
    assert_int_equal(cas_text(s, "n", "123456789012345", "-5", 0), LOOM_OK);
    /* TTL with the swap; an expired key is absent. */
    assert_int_equal(cas_text(s, "t", NULL, "1", 30), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", NULL, "1", 30), LOOM_OK);
    assert_int_equal(cas_text(s, "t2", "1", "2", 0), LOOM_OK);
    sleep_ms(45);
    assert_absent(s, "t");
    assert_int_equal(cas_text(s, "t", "1", "3", 0), LOOM_EEXIST);
    assert_int_equal(cas_text(s, "t", NULL, "3", 0), LOOM_OK);
    loom__store_close(s);

    /* In the file, seen by another store. */
    loom_store *b = open_url(f->url);
    assert_value(b, "t", "3");
    assert_value(b, "t2", "2");
    assert_value(b, "n", "-5");
    assert_value(b, "o", "0");
    /* Only JSON enters the file. */
    assert_int_equal(b->ops->cas(b->self, "t", "3", "{bad", 0), LOOM_EINVAL);
    assert_int_equal(b->ops->cas(b->self, "t", "3", "1 2", 0), LOOM_EINVAL);
    assert_value(b, "t", "3");
    loom__store_close(b);

    /* A corrupt file is never overwritten. */
    write_file(f->path, "not json", 8);
    s = open_url(f->url);
    assert_int_equal(cas_text(s, "t", NULL, "1", 0), LOOM_EPARSE);
    assert_int_equal(cas_text(s, "t", "3", NULL, 0), LOOM_EPARSE);
    loom__store_close(s);
    size_t len = 0;
    char *text = read_file(f->path, &len);
    assert_int_equal(len, 8);
    free(text);
}

/* Parent and a forked child update one document with read-modify-cas
 * loops: no update is lost across processes. */
#define CAS_ROUNDS 150

static int cas_rounds(loom_store *s)
{
    for (int i = 0; i < CAS_ROUNDS; i++) {
        for (;;) {
            cJSON *cur = NULL;
            if (loom_store_get(s, "doc", &cur) != LOOM_OK)
                return 1;
            cJSON *next = cJSON_Duplicate(cur, true);
            cJSON *n = cJSON_GetObjectItem(next, "n");
            cJSON_SetNumberValue(n, n->valuedouble + 1);
            loom_err err = loom_store_cas(s, "doc", cur, next, 0);
            cJSON_Delete(cur);
            cJSON_Delete(next);
            if (err == LOOM_OK)
                break;
            if (err != LOOM_EEXIST)
                return 2;
        }
    }
    return 0;
}

static void test_cas_processes(void **state)
{
    fixture *f = *state;
    loom_store *s = open_url(f->url);
    set_text(s, "doc", "{\"n\":0}", 0);
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        char c;
        loom_store *own = NULL;
        if (read(go[0], &c, 1) != 1 || loom__store_open(&own, f->url, NULL) != LOOM_OK)
            _exit(3);
        int rc = cas_rounds(own);
        loom__store_close(own);
        _exit(rc);
    }
    close(go[0]);
    assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);
    assert_int_equal(cas_rounds(s), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    char want[32];
    snprintf(want, sizeof want, "{\"n\":%d}", 2 * CAS_ROUNDS);
    assert_value(s, "doc", want);
    loom__store_close(s);
}

static void test_urls(void **state)
{
    fixture *f = *state;
    char url[300];
    loom_store *s = open_url(f->url);
    set_text(s, "k", "\"here\"", 0);
    loom__store_close(s);

    const char *forms[] = {"file://%s", "file://localhost%s", "FILE:%s", "file://LOCALHOST%s"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(forms); i++) {
        snprintf(url, sizeof url, forms[i], f->path);
        s = open_url(url);
        assert_value(s, "k", "\"here\"");
        loom__store_close(s);
    }

    /* Relative: to the working directory at open, not later. */
    char *cwd = getcwd(NULL, 0);
    assert_non_null(cwd);
    assert_int_equal(chdir(f->dir), 0);
    s = open_url("file:state.json");
    assert_int_equal(chdir("/"), 0);
    assert_value(s, "k", "\"here\"");
    set_text(s, "rel", "1", 0);
    loom__store_close(s);
    assert_int_equal(chdir(f->dir), 0);
    s = open_url("file:./state.json");
    assert_int_equal(chdir(cwd), 0);
    free(cwd);
    assert_value(s, "rel", "1");
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
        cmocka_unit_test_setup_teardown(test_basic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_stores, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_size_and_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_inherited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handwritten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cas_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_urls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
