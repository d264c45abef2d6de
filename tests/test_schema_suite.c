/* The official JSON-Schema-Test-Suite, draft 2020-12, through loom's
 * validator (lib/codec/schema.c).
 *
 * The suite is data kept outside the repository, at
 * $(repo)/../shared/json-schema-test-suite (LOOM_SCHEMA_SUITE overrides
 * it); the repository is found from this binary's path
 * ($(repo)/build/<variant>/tests/test_schema_suite). A missing suite fails
 * the test: it never skips silently.
 *
 * Every required file runs, and the optional format files of the formats
 * loom asserts, with format assertion on. The suite's remotes/ are added to
 * the schema set under http://localhost:1234/, as the suite expects. The
 * few tests loom cannot run are listed in `excluded` below (and in
 * docs/schema.md), each with its reason; the summary prints the counts.
 */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support/support.h"

#include "codec/schema.h"
#include "core/util.h"

#define NO_METASCHEMA "needs the draft 2020-12 metaschema, which the suite does not ship"
#define NUL_IN_STRING "cJSON ends a string at \\u0000, so nothing after it is seen"

/* file: the file name; group: a test group's description, NULL for the
 * whole file; test: one test's description, NULL for the whole group. */
static const struct {
    const char *file, *group, *test, *why;
} excluded[] = {
    {"vocabulary.json", NULL, NULL,
     "custom metaschemas ($vocabulary) are not supported: every vocabulary is on"},
    {"defs.json", "validate definition against metaschema", NULL, NO_METASCHEMA},
    {"ref.json", "remote ref, containing refs itself", NULL, NO_METASCHEMA},
    /* Optional format files. */
    {"date.json", "validation of date strings",
     "invalid: NUL character after an otherwise valid full-date", NUL_IN_STRING},
    {"ipv4.json", "validation of IP addresses", "additional content after an embedded NUL byte",
     NUL_IN_STRING},
};

/* The optional format files run with format assertion. */
static const char *const format_files[] = {
    "date-time.json", "date.json",  "time.json",    "duration.json", "email.json",
    "hostname.json",  "ipv4.json",  "ipv6.json",    "uri.json",      "uri-reference.json",
    "uuid.json",      "regex.json", "unknown.json",
};

static char suite_dir[2048];

typedef struct counts {
    unsigned passed, failed, excluded;
} counts;

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Finds the suite, or fails loudly. */
static int find_suite(void **state)
{
    (void)state;
    const char *env = getenv("LOOM_SCHEMA_SUITE");
    if (env && *env) {
        loom__strlcpy(suite_dir, env, sizeof suite_dir);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0)
            return -1;
        exe[n] = '\0';
        /* exe = REPO/build/VARIANT/tests/test_schema_suite */
        for (int up = 0; up < 4; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash)
                return -1;
            *slash = '\0';
        }
        snprintf(suite_dir, sizeof suite_dir, "%.1900s/../shared/json-schema-test-suite", exe);
    }
    char probe[PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/tests/draft2020-12/type.json", suite_dir);
    struct stat st;
    if (stat(probe, &st) != 0) {
        fprintf(stderr,
                "test_schema_suite: the JSON-Schema-Test-Suite is missing: no %s\n"
                "  (it belongs at $(repo)/../shared/json-schema-test-suite, or set "
                "LOOM_SCHEMA_SUITE)\n",
                probe);
        return -1;
    }
    return 0;
}

/* Adds every remotes/ file under http://localhost:1234/PATH. */
static void add_remotes(loom__schema_set *set, const char *dir, const char *rel)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[PATH_MAX], sub[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            add_remotes(set, path, sub);
            continue;
        }
        char *text = read_text(path);
        assert_non_null(text);
        char uri[PATH_MAX + 32], err[256];
        snprintf(uri, sizeof uri, "http://localhost:1234/%s", sub);
        if (loom__schema_set_add(set, uri, text, err, sizeof err) != LOOM_OK)
            fail_msg("remote %s: %s", uri, err);
        free(text);
    }
    closedir(d);
}

static loom__schema_set *suite_set(unsigned flags)
{
    loom__schema_set *set = NULL;
    assert_int_equal(loom__schema_set_create(&set, flags), LOOM_OK);
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/remotes", suite_dir);
    add_remotes(set, dir, "");
    return set;
}

/* test NULL: is the whole group excluded? */
static const char *exclusion(const char *file, const char *group, const char *test)
{
    for (size_t i = 0; i < LOOM__ARRAY_LEN(excluded); i++)
        if (strcmp(excluded[i].file, file) == 0 &&
            (!excluded[i].group || strcmp(excluded[i].group, group) == 0) &&
            (!excluded[i].test || (test && strcmp(excluded[i].test, test) == 0)))
            return excluded[i].why;
    return NULL;
}

/* cJSON prints numbers with 15 digits, which loses some of the suite's
 * values (9007199254740992): this printer keeps every digit. */
static void print_json(loom__sbuf *b, const cJSON *v)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d && d < 1e18 && d > -1e18)
            loom__sbuf_printf(b, "%lld", (long long)d);
        else
            loom__sbuf_printf(b, "%.17g", d);
    } else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        bool obj = cJSON_IsObject(v);
        loom__sbuf_puts(b, obj ? "{" : "[");
        for (const cJSON *ch = v->child; ch; ch = ch->next) {
            if (obj) {
                cJSON *key = cJSON_CreateString(ch->string);
                char *k = cJSON_PrintUnformatted(key);
                loom__sbuf_puts(b, k);
                loom__sbuf_puts(b, ":");
                cJSON_free(k);
                cJSON_Delete(key);
            }
            print_json(b, ch);
            if (ch->next)
                loom__sbuf_puts(b, ",");
        }
        loom__sbuf_puts(b, obj ? "}" : "]");
    } else {
        char *t = cJSON_PrintUnformatted(v);
        loom__sbuf_puts(b, t);
        cJSON_free(t);
    }
}

static void run_group(loom__schema_set *set, const char *file, const cJSON *g, counts *n)
{
    const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(g, "description"));
    const cJSON *tests = cJSON_GetObjectItem(g, "tests");
    loom__sbuf buf = {0};
    print_json(&buf, cJSON_GetObjectItem(g, "schema"));
    assert_false(buf.oom);
    char *text = buf.p;
    char err[512];
    loom__schema *s = NULL;
    loom_err rc = loom__schema_compile_in(&s, set, text, err, sizeof err);
    const cJSON *t;
    cJSON_ArrayForEach(t, tests)
    {
        const char *what = cJSON_GetStringValue(cJSON_GetObjectItem(t, "description"));
        bool want = cJSON_IsTrue(cJSON_GetObjectItem(t, "valid"));
        if (exclusion(file, desc, what ? what : "")) {
            n->excluded++;
            continue;
        }
        if (rc != LOOM_OK) {
            n->failed++;
            printf("FAIL %s / %s / %s: schema refused: %s\n", file, desc, what, err);
            continue;
        }
        cJSON *details = NULL;
        bool got = loom__schema_validate(s, cJSON_GetObjectItem(t, "data"), &details);
        bool fast = loom__schema_validate(s, cJSON_GetObjectItem(t, "data"), NULL);
        if (got == want && fast == want) {
            n->passed++;
        } else {
            n->failed++;
            char *d = details ? cJSON_PrintUnformatted(details) : NULL;
            printf("FAIL %s / %s / %s: expected %s, got %s%s%s\n", file, desc, what,
                   want ? "valid" : "invalid", got ? "valid" : "invalid", d ? " " : "", d ? d : "");
            cJSON_free(d);
        }
        cJSON_Delete(details);
    }
    loom__schema_free(s);
    free(text);
}

static void run_file(loom__schema_set *set, const char *dir, const char *file, counts *n)
{
    char path[PATH_MAX * 2];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *text = read_text(path);
    if (!text)
        fail_msg("cannot read %s", path);
    cJSON *groups = cJSON_Parse(text);
    free(text);
    assert_non_null(groups);
    const cJSON *g;
    cJSON_ArrayForEach(g, groups)
    {
        const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(g, "description"));
        if (exclusion(file, desc ? desc : "", NULL)) {
            n->excluded += (unsigned)cJSON_GetArraySize(cJSON_GetObjectItem(g, "tests"));
            continue;
        }
        run_group(set, file, g, n);
    }
    cJSON_Delete(groups);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_required(void **state)
{
    (void)state;
    loom__schema_set *set = suite_set(0);
    char dir[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/tests/draft2020-12", suite_dir);
    DIR *d = opendir(dir);
    assert_non_null(d);
    char *names[256];
    size_t nn = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nn < LOOM__ARRAY_LEN(names)) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".json") == 0)
            names[nn++] = loom__strdup(e->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof *names, cmp_names);
    assert_true(nn >= 40);
    counts n = {0};
    for (size_t i = 0; i < nn; i++) {
        run_file(set, dir, names[i], &n);
        free(names[i]);
    }
    loom__schema_set_free(set);
    printf("schema suite, required (%zu files): %u passed, %u failed, %u excluded\n", nn, n.passed,
           n.failed, n.excluded);
    assert_int_equal(n.failed, 0);
    assert_true(n.passed > 1250);
    assert_true(n.excluded < 20); /* the exclusions stay few */
}

static void test_formats(void **state)
{
    (void)state;
    loom__schema_set *set = suite_set(LOOM__SCHEMA_ASSERT_FORMATS);
    char dir[PATH_MAX + 48];
    snprintf(dir, sizeof dir, "%s/tests/draft2020-12/optional/format", suite_dir);
    counts n = {0};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(format_files); i++)
        run_file(set, dir, format_files[i], &n);
    loom__schema_set_free(set);
    printf("schema suite, optional formats (%zu files): %u passed, %u failed, %u excluded\n",
           LOOM__ARRAY_LEN(format_files), n.passed, n.failed, n.excluded);
    assert_int_equal(n.failed, 0);
    assert_true(n.passed > 300);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_formats),
    };
    return cmocka_run_group_tests(tests, find_suite, NULL);
}
