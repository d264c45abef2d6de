/* Regular expressions (codec/regex.h): ECMA-262 semantics, limits, errors.
 *
 * The expected results of the table were produced by an ECMA-262 engine
 * (V8: new RegExp(pattern, "u").test(subject), or without "u" for the
 * Annex B forms such as "a{,2}"), so they pin the standard's behaviour, not
 * this implementation's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/regex.h"
#include "core/util.h"
#include "support/support.h"

/* clang-format off */
static const struct {
    const char *pattern, *subject;
    size_t len;
    bool matches;
} table[] = {
    {"^[a-z]+$", "abc", 3, true},
    {"^[a-z]+$", "abc1", 4, false},
    {"^[a-z]+$", "", 0, false},
    {"^[a-z]+$", "ABC", 3, false},
    {"b+", "abbbc", 5, true},
    {"b+", "ac", 2, false},
    {"^\\d{3}-\\d{4}$", "555-1234", 8, true},
    {"^\\d{3}-\\d{4}$", "55-1234", 7, false},
    {"^\\d{3}-\\d{4}$", "555-12345", 9, false},
    {"^\\d{3}-\\d{4}$", "५५५-1234", 14, false},
    {"^\\w+@\\w+\\.com$", "me@x.com", 8, true},
    {"^\\w+@\\w+\\.com$", "me@x.org", 8, false},
    {"^\\w+@\\w+\\.com$", "m e@x.com", 9, false},
    {"\\s", "a b", 3, true},
    {"\\s", "ab", 2, false},
    {"\\s", "a\u00a0b", 4, true},
    {"\\s", "a\u2028b", 5, true},
    {"\\s", "a\tb", 3, true},
    {"^\\S+$", "abc", 3, true},
    {"^\\S+$", "a c", 3, false},
    {"^\\S+$", "", 0, false},
    {"^\\D+$", "abc", 3, true},
    {"^\\D+$", "a1c", 3, false},
    {"^\\W$", "-", 1, true},
    {"^\\W$", "a", 1, false},
    {"^\\W$", "_", 1, false},
    {"^\\W$", "é", 2, true},
    {"^.$", "a", 1, true},
    {"^.$", "é", 2, true},
    {"^.$", "😀", 4, true},
    {"^.$", "\n", 1, false},
    {"^.$", "\r", 1, false},
    {"^.$", "\u2028", 3, false},
    {"^.$", "", 0, false},
    {"^..$", "😀😀", 8, true},
    {"^..$", "😀", 4, false},
    {"^..$", "ab", 2, true},
    {"^[^a]$", "b", 1, true},
    {"^[^a]$", "a", 1, false},
    {"^[^a]$", "😀", 4, true},
    {"^[😀-😂]+$", "😀😁😂", 12, true},
    {"^[😀-😂]+$", "😃", 4, false},
    {"^\\u{1F600}$", "😀", 4, true},
    {"^\\u{1F600}$", "😁", 4, false},
    {"^\\uD83D\\uDE00$", "😀", 4, true},
    {"^\\u00e9\\x41$", "éA", 3, true},
    {"^\\u00e9\\x41$", "eA", 2, false},
    {"^[\\d_-]+$", "1_-2", 4, true},
    {"^[\\d_-]+$", "a", 1, false},
    {"^[a-]$", "-", 1, true},
    {"^[a-]$", "a", 1, true},
    {"^[a-]$", "b", 1, false},
    {"^[-a]$", "-", 1, true},
    {"^[-a]$", "a", 1, true},
    {"^[\\-a]$", "-", 1, true},
    {"^[\\]]$", "]", 1, true},
    {"^[]$", "", 0, false},
    {"^[]$", "a", 1, false},
    {"^[^]$", "a", 1, true},
    {"^[^]$", "\n", 1, true},
    {"^[\\b]$", "\b", 1, true},
    {"^[\\b]$", "b", 1, false},
    {"\\bfoo\\b", "a foo b", 7, true},
    {"\\bfoo\\b", "afoo", 4, false},
    {"\\bfoo\\b", "foo_", 4, false},
    {"\\bfoo\\b", "foo.", 4, true},
    {"\\Boo\\B", "foob", 4, true},
    {"\\Boo\\B", "oo", 2, false},
    {"\\Boo\\B", "foo", 3, false},
    {"^(red|green|)$", "red", 3, true},
    {"^(red|green|)$", "green", 5, true},
    {"^(red|green|)$", "", 0, true},
    {"^(red|green|)$", "blue", 4, false},
    {"^(?:ab)+$", "abab", 4, true},
    {"^(?:ab)+$", "aba", 3, false},
    {"^(?:ab)+$", "", 0, false},
    {"^(?<year>\\d{4})-(?<m>\\d{2})$", "2026-11", 7, true},
    {"^(?<year>\\d{4})-(?<m>\\d{2})$", "26-11", 5, false},
    {"^a{2}$", "aa", 2, true},
    {"^a{2}$", "a", 1, false},
    {"^a{2}$", "aaa", 3, false},
    {"^a{2,}$", "aa", 2, true},
    {"^a{2,}$", "aaaa", 4, true},
    {"^a{2,}$", "a", 1, false},
    {"^a{2,3}$", "aa", 2, true},
    {"^a{2,3}$", "aaa", 3, true},
    {"^a{2,3}$", "aaaa", 4, false},
    {"^a{0}$", "", 0, true},
    {"^a{0}$", "a", 1, false},
    {"^a{,2}$", "a{,2}", 5, true},
    {"^a{,2}$", "aa", 2, false},
    {"^a{$", "a{", 2, true},
    {"^x}$", "x}", 2, true},
    {"^a+?b*?c??$", "aab", 3, true},
    {"^a+?b*?c??$", "a", 1, true},
    {"^a+?b*?c??$", "ac", 2, true},
    {"^(a|ab)(c|bcd)(d*)$", "abcd", 4, true},
    {"^(a|ab)(c|bcd)(d*)$", "abcdd", 5, true},
    {"^(a|ab)(c|bcd)(d*)$", "ac", 2, true},
    {"^(a*)*$", "aaa", 3, true},
    {"^(a*)*$", "", 0, true},
    {"^(a*)*$", "b", 1, false},
    {"^(a*)+b$", "aaab", 4, true},
    {"^(a*)+b$", "b", 1, true},
    {"^(a*)+b$", "aaa", 3, false},
    {"^(|a)+$", "", 0, true},
    {"^(|a)+$", "aa", 2, true},
    {"(^a|b$)", "ab", 2, true},
    {"(^a|b$)", "ba", 2, false},
    {"(^a|b$)", "cc", 2, false},
    {"^\\$\\^\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\/\\\\$", "$^.*+?()[]{}|/\\", 15, true},
    {"^\\t\\n\\r\\f\\v\\0$", "\t\n\r\f\v\0", 6, true},
    {"^\\cJ\\cj$", "\n\n", 2, true},
    {"^[\\s\\S]*$", "anything\n😀", 13, true},
    {"^[\\s\\S]*$", "", 0, true},
    {"^é+$", "ééé", 6, true},
    {"^é+$", "e", 1, false},
    {"^[à-ÿ]+$", "éè", 4, true},
    {"^[à-ÿ]+$", "z", 1, false},
    {"^(a|b)*c(a|b)*$", "ababcabab", 9, true},
    {"^(a|b)*c(a|b)*$", "abab", 4, false},
    {"colou?r", "color", 5, true},
    {"colou?r", "colour", 6, true},
    {"colou?r", "colr", 4, false},
    /* Unicode property escapes. */
    {"^\\p{L}+$", "école", 6, true},
    {"^\\p{L}+$", "a1", 2, false},
    {"^\\p{Letter}$", "中", 3, true},
    {"^\\p{Lu}$", "É", 2, true},
    {"^\\p{Lu}$", "é", 2, false},
    {"^\\p{Ll}$", "é", 2, true},
    {"^\\p{Lt}$", "ǅ", 2, true},
    {"^\\p{Lo}$", "中", 3, true},
    {"^\\p{Lm}$", "ʰ", 2, true},
    {"^\\P{L}$", "1", 1, true},
    {"^\\P{L}$", "a", 1, false},
    {"^[\\p{Nd}_]+$", "٣_1", 4, true},
    {"^\\p{N}$", "½", 2, true},
    {"^\\p{Nd}$", "½", 2, false},
    {"^\\p{P}$", "!", 1, true},
    {"^\\p{S}$", "€", 3, true},
    {"^\\p{Z}$", "　", 3, true},
    {"^\\p{gc=Zs}$", " ", 1, true},
    {"^\\p{General_Category=Decimal_Number}$", "7", 1, true},
    {"^\\p{Script=Greek}+$", "αβ", 4, true},
    {"^\\p{sc=Grek}$", "a", 1, false},
    {"^\\p{Script=Han}$", "中", 3, true},
    {"^\\p{sc=Latn}+$", "abc", 3, true},
    {"^[^\\p{L}]$", "a", 1, false},
    {"^[^\\p{L}]$", "1", 1, true},
    {"^\\p{Any}$", "😀", 4, true},
    {"^\\p{ASCII}$", "é", 2, false},
    {"^\\p{Assigned}$", "a", 1, true},
    {"^\\p{Assigned}$", "󠂀", 4, false},
    /* ^, characters and classes, $ or not: the one-walk path. */
    {"^[A-Z]{3}$", "EUR", 3, true},
    {"^[A-Z]{3}$", "EU", 2, false},
    {"^[A-Z]{3}$", "EURO", 4, false},
    {"^[A-Z]{3}$", "eur", 3, false},
    {"^[A-Z]{3}$", "", 0, false},
    {"^ab", "abc", 3, true},
    {"^ab", "xab", 3, false},
    {"^$", "", 0, true},
    {"^$", "a", 1, false},
    {"^é[à-ö]$", "éö", 4, true},
    {"^é[à-ö]$", "éa", 3, false},
    {"^[^a]x$", "😀x", 5, true},
    {"^a\\b", "a b", 3, true},
    {"^a\\b", "ab", 2, false},
};
/* clang-format on */

static void test_ecma_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < LOOM__ARRAY_LEN(table); i++) {
        loom__regex *re = NULL;
        char err[160];
        if (loom__regex_compile(&re, table[i].pattern, err, sizeof err) != LOOM_OK)
            fail_msg("%s: %s", table[i].pattern, err);
        if (loom__regex_search(re, table[i].subject, table[i].len) != table[i].matches)
            fail_msg("/%s/ on \"%s\": expected %s", table[i].pattern, table[i].subject,
                     table[i].matches ? "a match" : "no match");
        loom__regex_free(re);
    }
}

static bool search(const char *pattern, const char *subject, size_t len)
{
    loom__regex *re = NULL;
    char err[160];
    if (loom__regex_compile(&re, pattern, err, sizeof err) != LOOM_OK)
        fail_msg("%s: %s", pattern, err);
    bool found = loom__regex_search(re, subject, len);
    loom__regex_free(re);
    return found;
}

/* Each malformed byte is one U+FFFD: one character, never a literal. */
static void test_malformed_subject(void **state)
{
    (void)state;
    assert_true(search("^a.b$",
                       "a\xff"
                       "b",
                       3));
    assert_true(search("^a[^x]b$",
                       "a\xc3"
                       "b",
                       3));
    assert_true(search("^a..b$",
                       "a\xe2\x82"
                       "b",
                       4)); /* a truncated sequence */
    assert_false(search("^a.b$",
                        "a\xe2\x82"
                        "b",
                        4));
    assert_true(search("^\\uFFFD$", "\x80", 1));
    assert_false(search("^\\x80$", "\x80", 1));
}

static void test_program_limit(void **state)
{
    (void)state;
    char err[160];
    loom__regex *re = NULL;
    assert_int_equal(loom__regex_compile(&re, "a{10000}", err, sizeof err), LOOM_OK);
    loom__regex_free(re);
    re = NULL;
    assert_int_equal(loom__regex_compile(&re, "a{10001}", err, sizeof err), LOOM_EINVAL);
    assert_null(re);
    assert_string_equal(err, "too complex: its repetitions expand to more than 10000 states");
    /* x{0,n} costs two instructions per copy, alternation two per branch. */
    assert_int_equal(loom__regex_compile(&re, "a{0,5000}b", err, sizeof err), LOOM_EINVAL);
    assert_int_equal(loom__regex_compile(&re, "(a|b){3333}", err, sizeof err), LOOM_EINVAL);
    assert_int_equal(loom__regex_compile(&re, "(a|b){2499}", err, sizeof err), LOOM_OK);
    loom__regex_free(re);
}

/* Each position of the subject costs at most one visit per instruction,
 * so the classic catastrophic-backtracking cases are as quick as any:
 * this finishes long before the test's timeout. */
static void test_no_backtracking(void **state)
{
    (void)state;
    size_t n = 200000;
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, 'a', n);
    s[n] = '\0';
    s[n - 1] = '!';
    assert_false(search("^(a+)+$", s, n));
    assert_false(search("^(a|aa)*$", s, n));
    assert_false(search("(.*a){40}b", s, n));
    assert_false(search("^(\\w+\\s?)*$", s, n));
    s[n - 1] = 'a';
    assert_true(search("^(a|aa)*$", s, n));
    free(s);
}

static void test_property_errors(void **state)
{
    (void)state;
    static const struct {
        const char *pattern, *err;
    } bad[] = {
        {"\\p{Foo}", "unknown Unicode property 'Foo' at offset 2"},
        {"\\p{Script=Nope}", "unknown Unicode property 'Script=Nope' at offset 2"},
        {"\\p{Script_Extensions=Greek}",
         "unknown Unicode property 'Script_Extensions=Greek' at offset 2"},
        {"\\pL", "\\p needs {NAME} at offset 2"},
        {"[\\p{L", "\\p needs {NAME} at offset 3"},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        loom__regex *re = NULL;
        char err[160];
        assert_int_equal(loom__regex_compile(&re, bad[i].pattern, err, sizeof err), LOOM_EINVAL);
        assert_null(re);
        if (strcmp(err, bad[i].err) != 0)
            fail_msg("%s: expected \"%s\", got \"%s\"", bad[i].pattern, bad[i].err, err);
    }
}

static void test_arguments(void **state)
{
    (void)state;
    char err[160] = "x";
    loom__regex *re = (loom__regex *)1;
    assert_int_equal(loom__regex_compile(&re, NULL, err, sizeof err), LOOM_EINVAL);
    assert_string_equal(err, "no pattern");
    assert_int_equal(loom__regex_compile(NULL, "a", NULL, 0), LOOM_EINVAL);
    assert_false(loom__regex_search(NULL, "a", 1));
    assert_int_equal(loom__regex_compile(&re, "", err, sizeof err), LOOM_OK);
    assert_true(loom__regex_search(re, NULL, 0)); /* the empty pattern matches "" */
    assert_false(loom__regex_search(re, NULL, 1));
    loom__regex_free(re);
    loom__regex_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ecma_table),    cmocka_unit_test(test_malformed_subject),
        cmocka_unit_test(test_program_limit), cmocka_unit_test(test_no_backtracking),
        cmocka_unit_test(test_arguments),     cmocka_unit_test(test_property_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
