/* Topic names: escaping, building, parsing, prefix rules, MQTT matching. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/topic.h"
#include "loom/adapter.h"
#include "support/support.h"

static const char *const SPECIAL = "/+#$%";

static void test_escape_every_byte(void **state)
{
    (void)state;
    for (int c = 1; c < 256; c++) {
        char in[2] = {(char)c, '\0'};
        char *e = loom__topic_escape(in);
        assert_non_null(e);
        bool special = c < 0x20 || c == 0x7f || strchr(SPECIAL, c);
        if (special) {
            char want[4];
            snprintf(want, sizeof want, "%%%02X", c);
            assert_string_equal(e, want);
        } else {
            assert_string_equal(e, in);
        }
        char *u = loom__topic_unescape(e, strlen(e));
        assert_non_null(u);
        assert_string_equal(u, in);
        free(u);
        free(e);
    }
    /* All of them in one segment. */
    char all[256];
    for (int c = 1; c < 256; c++)
        all[c - 1] = (char)c;
    all[255] = '\0';
    char *e = loom__topic_escape(all);
    for (const char *p = e; *p; p++) {
        assert_null(strchr("/+#$", *p));
        assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);
    }
    char *u = loom__topic_unescape(e, strlen(e));
    assert_string_equal(u, all);
    free(u);
    free(e);
    /* UTF-8 is copied; the empty segment stays empty. */
    e = loom__topic_escape("zoë/🚀");
    assert_string_equal(e, "zoë%2F🚀");
    free(e);
    e = loom__topic_escape("");
    assert_string_equal(e, "");
    free(e);
    assert_null(loom__topic_escape(NULL));
}

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_escape_random_round_trip(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0, cap = 0, expect_len = 0;
    for (int iter = 0; iter < 2000; iter++) {
        char s[64];
        size_t n = rnd() % sizeof s;
        for (size_t i = 0; i < n; i++) {
            /* Bias towards the bytes that matter. */
            s[i] = rnd() % 3 ? (char)(1 + rnd() % 255) : SPECIAL[rnd() % 5];
        }
        s[n] = '\0';
        char *e = loom__topic_escape(s);
        assert_non_null(e);
        assert_null(strpbrk(e, "/+#$"));
        char *u = loom__topic_unescape(e, strlen(e));
        assert_non_null(u);
        assert_string_equal(u, s);
        free(u);
        /* escape_append produces the same bytes, appended. */
        size_t before = len;
        assert_true(loom__topic_escape_append(&buf, &len, &cap, s));
        assert_int_equal(len - before, strlen(e));
        assert_memory_equal(buf + before, e, strlen(e));
        assert_int_equal(buf[len], '\0');
        assert_true(cap > len);
        expect_len += strlen(e);
        free(e);
    }
    assert_int_equal(len, expect_len);
    assert_int_equal(strlen(buf), len);
    free(buf);
}

static void test_escape_append(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    assert_true(loom__topic_escape_append(&buf, &len, &cap, "a/b"));
    assert_string_equal(buf, "a%2Fb");
    assert_int_equal(len, 5);
    /* Literal text is the caller's; only segments go through here. */
    buf[len++] = '/';
    buf[len] = '\0';
    assert_true(loom__topic_escape_append(&buf, &len, &cap, "#1"));
    assert_string_equal(buf, "a%2Fb/%231");
    assert_true(loom__topic_escape_append(&buf, &len, &cap, NULL));
    assert_true(loom__topic_escape_append(&buf, &len, &cap, ""));
    assert_string_equal(buf, "a%2Fb/%231");
    /* Growth well beyond the first allocation. */
    char big[1001];
    memset(big, '%', 1000);
    big[1000] = '\0';
    assert_true(loom__topic_escape_append(&buf, &len, &cap, big));
    assert_int_equal(len, 10 + 3000);
    assert_int_equal(strlen(buf), len);
    free(buf);
    assert_false(loom__topic_escape_append(NULL, &len, &cap, "x"));
}

static void test_unescape_malformed(void **state)
{
    (void)state;
    const char *bad[] = {"%", "%4", "a%", "%G0", "%4G", "%%", "a/b", "+", "a#", "%00", "x%0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *u = loom__topic_unescape(bad[i], strlen(bad[i]));
        if (u)
            fail_msg("\"%s\" unescaped to \"%s\"", bad[i], u);
    }
    /* A raw NUL inside len, and a '%' whose digits lie beyond len. */
    assert_null(loom__topic_unescape("a\0b", 3));
    assert_null(loom__topic_unescape("%41", 2));
    /* Lowercase hex is accepted, '$' raw is tolerated; len bounds the read. */
    char *u = loom__topic_unescape("%2f%2B$x", 8);
    assert_string_equal(u, "/+$x");
    free(u);
    u = loom__topic_unescape("abc/def", 3);
    assert_string_equal(u, "abc");
    free(u);
    u = loom__topic_unescape("", 0);
    assert_string_equal(u, "");
    free(u);
    assert_null(loom__topic_unescape(NULL, 0));
}

static void test_build(void **state)
{
    (void)state;
    const char *segs[] = {"users", "1", "get/by+id"};
    char *t = loom__topic_build("loom", "cmd", segs, 3);
    assert_string_equal(t, "loom/cmd/users/1/get%2Fby%2Bid");
    free(t);
    /* NULL segments are wildcards; the prefix is verbatim. */
    const char *wild[] = {"created", NULL, NULL};
    t = loom__topic_build("acme/prod", "evt", wild, 3);
    assert_string_equal(t, "acme/prod/evt/created/+/+");
    free(t);
    t = loom__topic_build("loom", "reply", NULL, 0);
    assert_string_equal(t, "loom/reply");
    free(t);
    const char *empty[] = {"", "$x"};
    t = loom__topic_build("p", "svc", empty, 2);
    assert_string_equal(t, "p/svc//%24x");
    free(t);
    assert_null(loom__topic_build(NULL, "cmd", segs, 1));
    assert_null(loom__topic_build("p", NULL, segs, 1));
    assert_null(loom__topic_build("p", "cmd", NULL, 1));
}

static void test_parse(void **state)
{
    (void)state;
    char *kind = NULL, *segs[4] = {0};
    int n = loom__topic_parse("loom/cmd/users/1/get%2Fby%2Bid", "loom", &kind, segs, 4);
    assert_int_equal(n, 3);
    assert_string_equal(kind, "cmd");
    assert_string_equal(segs[0], "users");
    assert_string_equal(segs[1], "1");
    assert_string_equal(segs[2], "get/by+id");
    free(kind);
    for (int i = 0; i < n; i++)
        free(segs[i]);

    /* Multi-level prefix, no segments, an empty segment. */
    n = loom__topic_parse("a/b/reply", "a/b", &kind, segs, 4);
    assert_int_equal(n, 0);
    assert_string_equal(kind, "reply");
    free(kind);
    n = loom__topic_parse("p/svc//x", "p", &kind, segs, 4);
    assert_int_equal(n, 2);
    assert_string_equal(segs[0], "");
    assert_string_equal(segs[1], "x");
    free(kind);
    free(segs[0]);
    free(segs[1]);

    /* Failures allocate nothing and leave *kind NULL. */
    memset(segs, 0, sizeof segs);
    const char *bad[] = {
        "loomx/cmd/a",        /* not under the prefix */
        "loom",               /* no kind */
        "loom/",              /* empty kind */
        "loom//a",            /* empty kind */
        "other/cmd/a",        /* other prefix */
        "loom/cmd/a/b/c/d/e", /* more than max */
        "loom/cmd/a%2",       /* malformed escape */
        "loom/cmd/+/x",       /* a wildcard is not a segment */
        "loom/cmd/a/%00",     /* decoded NUL */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        kind = (char *)1;
        n = loom__topic_parse(bad[i], "loom", &kind, segs, 4);
        if (n != -1)
            fail_msg("\"%s\" parsed as %d segments", bad[i], n);
        assert_null(kind);
        for (int j = 0; j < 4; j++)
            assert_null(segs[j]);
    }
    /* Exactly max is fine; max 0 takes only segment-less topics. */
    n = loom__topic_parse("loom/cmd/a/b/c/d", "loom", &kind, segs, 4);
    assert_int_equal(n, 4);
    free(kind);
    for (int i = 0; i < n; i++)
        free(segs[i]);
    n = loom__topic_parse("loom/cmd", "loom", &kind, NULL, 0);
    assert_int_equal(n, 0);
    free(kind);
    assert_int_equal(loom__topic_parse("loom/cmd/a", "loom", &kind, NULL, 0), -1);
    assert_int_equal(loom__topic_parse(NULL, "loom", &kind, segs, 4), -1);
    assert_int_equal(loom__topic_parse("loom/cmd", NULL, &kind, segs, 4), -1);
    assert_int_equal(loom__topic_parse("loom/cmd", "loom", NULL, segs, 4), -1);
}

static void test_build_parse_round_trip(void **state)
{
    (void)state;
    for (int iter = 0; iter < 500; iter++) {
        char store[3][32];
        const char *segs[3];
        for (int s = 0; s < 3; s++) {
            size_t n = rnd() % 31;
            for (size_t i = 0; i < n; i++)
                store[s][i] = rnd() % 2 ? (char)(1 + rnd() % 255) : SPECIAL[rnd() % 5];
            store[s][n] = '\0';
            segs[s] = store[s];
        }
        char *t = loom__topic_build("org/app", "evt", segs, 3);
        assert_non_null(t);
        char *kind, *out[3];
        assert_int_equal(loom__topic_parse(t, "org/app", &kind, out, 3), 3);
        assert_string_equal(kind, "evt");
        for (int s = 0; s < 3; s++) {
            assert_string_equal(out[s], segs[s]);
            free(out[s]);
        }
        free(kind);
        /* A concrete topic matches the wildcard filter of its kind. */
        const char *wild[] = {segs[0], NULL, NULL};
        char *f = loom__topic_build("org/app", "evt", wild, 3);
        assert_true(loom_topic_matches(f, t));
        free(f);
        free(t);
    }
}

static void test_prefix_valid(void **state)
{
    (void)state;
    const char *good[] = {"loom", "acme/prod", "a/b/c", "x-y_z.1", "zoë", "a b"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (!loom__topic_prefix_valid(good[i]))
            fail_msg("\"%s\" refused", good[i]);
    const char *bad[] = {"",     "/loom", "loom/", "a//b",  "a/+", "a/#",
                         "$SYS", "a$b",   "a\tb",  "a\x7f", "/",   "//"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (loom__topic_prefix_valid(bad[i]))
            fail_msg("\"%s\" accepted", bad[i]);
    assert_false(loom__topic_prefix_valid(NULL));
    char p[300];
    memset(p, 'a', sizeof p);
    p[256] = '\0';
    assert_true(loom__topic_prefix_valid(p));
    p[256] = 'a';
    p[257] = '\0';
    assert_false(loom__topic_prefix_valid(p));
}

static void test_matches(void **state)
{
    (void)state;
    static const struct {
        const char *filter, *topic;
        bool match;
    } cases[] = {
        {"a/b/c", "a/b/c", true},
        {"a/b/c", "a/b", false},
        {"a/b", "a/b/c", false},
        {"a/b/c", "a/b/cd", false},
        {"a/+/c", "a/b/c", true},
        {"a/+/c", "a/xyz/c", true},
        {"a/+/c", "a/b/d", false},
        {"a/+/c", "a/b/x/c", false},
        {"a/+/c", "a//c", true}, /* '+' matches an empty level */
        {"+", "a", true},
        {"+", "", false}, /* not a topic */
        {"+", "/a", false},
        {"+/+", "/a", true},
        {"+/+", "a/", true},
        {"a/+", "a/", true},
        {"a/+", "a", false},
        {"#", "a", true},
        {"#", "a/b/c", true},
        {"#", "/", true},
        {"a/#", "a", true}, /* the parent level */
        {"a/#", "a/b", true},
        {"a/#", "a/b/c", true},
        {"a/#", "ab", false},
        {"a/#", "b/a", false},
        {"a/b/#", "a", false},
        {"+/#", "a", true},
        {"+/+/#", "a/b", true},
        {"/+", "/a", true},
        {"/#", "/", true},
        {"/#", "a", false},
        /* '$' topics are not matched by a leading wildcard. */
        {"#", "$SYS/broker", false},
        {"+/broker", "$SYS/broker", false},
        {"$SYS/#", "$SYS/broker", true},
        {"$SYS/+", "$SYS/broker", true},
        {"a/#", "a/$x", true},
        {"a/+", "a/$x", true},
        /* Invalid filters and topics never match. */
        {"a/#/b", "a/x/b", false},
        {"a#", "a#", false},
        {"a+/b", "a+/b", false},
        {"a/b#", "a/b#", false},
        {"", "", false},
        {"a/b", "a/+", false},
        {"a/+", "a/#", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        bool got = loom_topic_matches(cases[i].filter, cases[i].topic);
        if (got != cases[i].match)
            fail_msg("filter \"%s\" topic \"%s\": got %d", cases[i].filter, cases[i].topic, got);
    }
    assert_false(loom_topic_matches(NULL, "a"));
    assert_false(loom_topic_matches("a", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_every_byte),
        cmocka_unit_test(test_escape_random_round_trip),
        cmocka_unit_test(test_escape_append),
        cmocka_unit_test(test_unescape_malformed),
        cmocka_unit_test(test_build),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_build_parse_round_trip),
        cmocka_unit_test(test_prefix_valid),
        cmocka_unit_test(test_matches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
