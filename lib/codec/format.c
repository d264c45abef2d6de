/* Format checkers for JSON Schema's "format" (see format.h). Each is a
 * straight parser of its grammar over the bytes; none allocates except
 * "regex", which compiles the pattern. */
#include "codec/format.h"

#include <stdint.h>
#include <string.h>

#include "codec/regex.h"
#include "codec/unicode.h"
#include "codec/uri.h"
#include "core/util.h"

static bool digit(char c)
{
    return c >= '0' && c <= '9';
}

/* n ASCII digits at s (n <= 9) as a number, or -1. */
static int number(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static bool check_date(const char *s, size_t len)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (len != 10 || s[4] != '-' || s[7] != '-')
        return false;
    int y = number(s, 4), m = number(s + 5, 2), d = number(s + 8, 2);
    if (y < 0 || m < 1 || m > 12 || d < 1)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= days[m - 1] + (m == 2 && leap);
}

/* partial-time time-offset; a leap second only at 23:59:60 UTC. */
static bool check_time(const char *s, size_t len)
{
    if (len < 9 || s[2] != ':' || s[5] != ':')
        return false;
    int h = number(s, 2), mi = number(s + 3, 2), se = number(s + 6, 2);
    if (h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 || se > 60)
        return false;
    size_t i = 8;
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && digit(s[i]))
            i++;
        if (i == start)
            return false;
    }
    if (i >= len)
        return false;
    int off = 0; /* minutes east of UTC */
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-') {
        if (len - i != 6 || s[i + 3] != ':')
            return false;
        int oh = number(s + i + 1, 2), om = number(s + i + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return false;
        off = (s[i] == '+' ? 1 : -1) * (oh * 60 + om);
        i += 6;
    } else {
        return false;
    }
    if (i != len)
        return false;
    if (se == 60) {
        int utc = ((h * 60 + mi - off) % 1440 + 1440) % 1440;
        return utc == 23 * 60 + 59;
    }
    return true;
}

static bool check_date_time(const char *s, size_t len)
{
    if (len < 11 || (s[10] != 'T' && s[10] != 't'))
        return false;
    return check_date(s, 10) && check_time(s + 11, len - 11);
}

/* 1*DIGIT followed by unit c at *i. */
static bool dur_unit(const char *s, size_t len, size_t *i, char c)
{
    size_t j = *i;
    while (j < len && digit(s[j]))
        j++;
    if (j == *i || j >= len || s[j] != c)
        return false;
    *i = j + 1;
    return true;
}

/* The first of units (in order) that matches at *i, then each later one
 * may follow only in order and without gaps, as RFC 3339's grammar says. */
static bool dur_chain(const char *s, size_t len, size_t *i, const char *units)
{
    size_t k = 0;
    while (units[k] && !dur_unit(s, len, &(size_t){*i}, units[k]))
        k++;
    if (!units[k])
        return false;
    dur_unit(s, len, i, units[k]);
    for (k++; units[k] && dur_unit(s, len, i, units[k]); k++)
        ;
    return true;
}

static bool check_duration(const char *s, size_t len)
{
    if (len < 2 || s[0] != 'P')
        return false;
    size_t i = 1;
    if (dur_unit(s, len, &(size_t){1}, 'W')) {
        dur_unit(s, len, &i, 'W');
        return i == len;
    }
    if (s[i] != 'T' && !dur_chain(s, len, &i, "YMD"))
        return false;
    if (i < len && s[i] == 'T') {
        i++;
        if (!dur_chain(s, len, &i, "HMS"))
            return false;
    }
    return i == len;
}

/* RFC 3492 Punycode: decodes the n bytes at s into out (room for max code
 * points); the count, or -1 when s is not valid Punycode. */
static int punycode_decode(const char *s, size_t n, uint32_t *out, int max)
{
    enum { BASE = 36, TMIN = 1, TMAX = 26, SKEW = 38, DAMP = 700 };
    size_t b = 0;
    for (size_t j = 0; j < n; j++)
        if (s[j] == '-')
            b = j;
    int count = 0;
    for (size_t j = 0; j < b; j++) {
        if ((unsigned char)s[j] >= 0x80 || count == max)
            return -1;
        out[count++] = (unsigned char)s[j];
    }
    uint32_t cp = 128, bias = 72;
    uint64_t i = 0;
    for (size_t in = b ? b + 1 : 0; in < n;) {
        uint64_t oldi = i, w = 1;
        for (uint32_t k = BASE;; k += BASE) {
            if (in >= n)
                return -1;
            char c = s[in++];
            uint32_t d = c >= 'a' && c <= 'z'   ? (uint32_t)(c - 'a')
                         : c >= 'A' && c <= 'Z' ? (uint32_t)(c - 'A')
                         : digit(c)             ? (uint32_t)(c - '0' + 26)
                                                : BASE;
            if (d >= BASE)
                return -1;
            i += d * w;
            uint32_t t = k <= bias ? TMIN : k >= bias + TMAX ? TMAX : k - bias;
            if (i > 0x10FFFF * 64u || w > 0x10FFFF * 64u)
                return -1;
            if (d < t)
                break;
            w *= BASE - t;
        }
        /* Bias adaptation. */
        uint64_t delta = oldi == 0 ? (i - oldi) / DAMP : (i - oldi) / 2;
        delta += delta / (uint64_t)(count + 1);
        uint32_t k = 0;
        while (delta > ((BASE - TMIN) * TMAX) / 2) {
            delta /= BASE - TMIN;
            k += BASE;
        }
        bias = k + (uint32_t)((BASE - TMIN + 1) * delta / (delta + SKEW));
        cp += (uint32_t)(i / (uint64_t)(count + 1));
        i %= (uint64_t)(count + 1);
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || count == max)
            return -1;
        memmove(out + i + 1, out + i, (size_t)(count - (int)i) * sizeof *out);
        out[i++] = cp;
        count++;
    }
    return count;
}

/* IDNA2008 (RFC 5892) for one code point of a U-label, approximated by
 * its letter, digit and mark categories (the NFKC stability condition is
 * not checked), with the exceptions and the CONTEXTJ / CONTEXTO rules. */
static bool idna_ok(const uint32_t *u, int n, int i)
{
    static const uint32_t pvalid[] = {0x00DF, 0x03C2, 0x06FD, 0x06FE, 0x0F0B, 0x3007};
    static const uint32_t disallowed[] = {0x0640, 0x07FA, 0x302E, 0x302F, 0x3031,
                                          0x3032, 0x3033, 0x3034, 0x3035, 0x303B};
    uint32_t cp = u[i];
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || digit((char)cp) || cp == '-';
    for (size_t k = 0; k < LOOM__ARRAY_LEN(pvalid); k++)
        if (cp == pvalid[k])
            return true;
    for (size_t k = 0; k < LOOM__ARRAY_LEN(disallowed); k++)
        if (cp == disallowed[k])
            return false;
    switch (cp) {
    case 0x00B7: /* MIDDLE DOT: between two 'l' */
        return i > 0 && i + 1 < n && u[i - 1] == 'l' && u[i + 1] == 'l';
    case 0x0375: /* GREEK KERAIA: before Greek */
        return i + 1 < n && loom__unicode_has("sc=Greek", u[i + 1]);
    case 0x05F3: /* HEBREW GERESH, GERSHAYIM: after Hebrew */
    case 0x05F4:
        return i > 0 && loom__unicode_has("sc=Hebrew", u[i - 1]);
    case 0x30FB: /* KATAKANA MIDDLE DOT: with Hiragana, Katakana or Han */
        for (int j = 0; j < n; j++)
            if (loom__unicode_has("sc=Hiragana", u[j]) || loom__unicode_has("sc=Katakana", u[j]) ||
                loom__unicode_has("sc=Han", u[j]))
                return true;
        return false;
    case 0x200D: /* ZERO WIDTH JOINER: after a virama */
        return i > 0 && loom__unicode_has("Canonical_Combining_Class=9", u[i - 1]);
    case 0x200C: { /* ZWNJ: after a virama, or between joining letters */
        if (i > 0 && loom__unicode_has("Canonical_Combining_Class=9", u[i - 1]))
            return true;
        int l = i - 1, r = i + 1;
        while (l >= 0 && loom__unicode_has("Joining_Type=T", u[l]))
            l--;
        while (r < n && loom__unicode_has("Joining_Type=T", u[r]))
            r++;
        return l >= 0 && r < n &&
               (loom__unicode_has("Joining_Type=L", u[l]) ||
                loom__unicode_has("Joining_Type=D", u[l])) &&
               (loom__unicode_has("Joining_Type=R", u[r]) ||
                loom__unicode_has("Joining_Type=D", u[r]));
    }
    default:
        break;
    }
    if (cp >= 0x0660 && cp <= 0x06F9 && (cp <= 0x0669 || cp >= 0x06F0))
        return true; /* Arabic-Indic digits: the mix is checked per label */
    static const char *const ok_cats[] = {"gc=Ll", "gc=Lo", "gc=Lm", "gc=Mn", "gc=Mc", "gc=Nd"};
    for (size_t k = 0; k < LOOM__ARRAY_LEN(ok_cats); k++)
        if (loom__unicode_has(ok_cats[k], cp))
            return true;
    return false;
}

/* An "xn--" label: its Punycode must decode to a valid U-label. */
static bool check_a_label(const char *s, size_t n)
{
    uint32_t u[64];
    int len = punycode_decode(s + 4, n - 4, u, (int)LOOM__ARRAY_LEN(u));
    if (len <= 0 || u[0] == '-' || u[len - 1] == '-' || loom__unicode_has("gc=M", u[0]))
        return false;
    if (len >= 4 && u[2] == '-' && u[3] == '-')
        return false;
    bool indic = false, extended = false;
    for (int i = 0; i < len; i++) {
        indic |= u[i] >= 0x0660 && u[i] <= 0x0669;
        extended |= u[i] >= 0x06F0 && u[i] <= 0x06F9;
        if (!idna_ok(u, len, i))
            return false;
    }
    return !(indic && extended);
}

static bool check_hostname(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.') {
            char c = s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || digit(c) || c == '-'))
                return false;
            continue;
        }
        size_t n = i - start;
        if (n == 0 || n > 63 || s[start] == '-' || s[i - 1] == '-')
            return false;
        /* "--" in the third and fourth place is reserved for "xn--", whose
         * label is Punycode. */
        if (n >= 4 && s[start + 2] == '-' && s[start + 3] == '-') {
            bool xn = (s[start] == 'x' || s[start] == 'X') &&
                      (s[start + 1] == 'n' || s[start + 1] == 'N');
            if (!xn || !check_a_label(s + start, n))
                return false;
        }
        start = i + 1;
    }
    return true;
}

static bool atext(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || digit(c) ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool check_email(const char *s, size_t len)
{
    const char *at = NULL;
    size_t i = 0;
    if (len > 0 && s[0] == '"') {
        for (i = 1; i < len && s[i] != '"'; i++) {
            if (s[i] == '\\')
                i++;
            else if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7F)
                return false;
        }
        if (i >= len || i + 1 >= len || s[i + 1] != '@')
            return false;
        at = s + i + 1;
    } else {
        for (; i < len && s[i] != '@'; i++) {
            if (s[i] == '.') {
                if (i == 0 || s[i - 1] == '.' || i + 1 >= len || s[i + 1] == '@')
                    return false;
            } else if (!atext(s[i])) {
                return false;
            }
        }
        if (i == 0 || i >= len)
            return false;
        at = s + i;
    }
    const char *d = at + 1;
    size_t dn = len - (size_t)(d - s);
    if (dn >= 2 && d[0] == '[' && d[dn - 1] == ']') {
        if (dn > 7 && strncmp(d + 1, "IPv6:", 5) == 0)
            return loom__ipv6_valid(d + 6, dn - 7);
        return loom__ipv4_valid(d + 1, dn - 2);
    }
    return check_hostname(d, dn);
}

static bool check_ipv4(const char *s, size_t len)
{
    return loom__ipv4_valid(s, len);
}

static bool check_ipv6(const char *s, size_t len)
{
    return loom__ipv6_valid(s, len);
}

static bool check_uri(const char *s, size_t len)
{
    return strlen(s) == len && loom__uri_valid(s, false);
}

static bool check_uri_reference(const char *s, size_t len)
{
    return strlen(s) == len && loom__uri_valid(s, true);
}

static bool check_uuid(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < len; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : loom__hex_digit(s[i]) < 0)
            return false;
    }
    return true;
}

static bool check_regex(const char *s, size_t len)
{
    loom__regex *re = NULL;
    if (strlen(s) != len || loom__regex_compile(&re, s, NULL, 0) != LOOM_OK)
        return false;
    loom__regex_free(re);
    return true;
}

static const struct {
    const char *name;
    loom__format_fn fn;
} formats[] = {
    {"date-time", check_date_time},
    {"date", check_date},
    {"time", check_time},
    {"duration", check_duration},
    {"email", check_email},
    {"hostname", check_hostname},
    {"ipv4", check_ipv4},
    {"ipv6", check_ipv6},
    {"uri", check_uri},
    {"uri-reference", check_uri_reference},
    {"uuid", check_uuid},
    {"regex", check_regex},
};

loom__format_fn loom__format_find(const char *name)
{
    for (size_t i = 0; i < LOOM__ARRAY_LEN(formats); i++)
        if (strcmp(formats[i].name, name) == 0)
            return formats[i].fn;
    return NULL;
}
