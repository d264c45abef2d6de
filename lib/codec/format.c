/* Format checkers for JSON Schema's "format" (see format.h). Each is a
 * straight parser of its grammar over the bytes; none allocates except
 * "regex", which compiles the pattern. */
#include "codec/format.h"

#include <stdint.h>
#include <string.h>

#include "codec/regex.h"
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
        /* "--" in the third and fourth place is reserved for "xn--". */
        if (n >= 4 && s[start + 2] == '-' && s[start + 3] == '-' &&
            !((s[start] == 'x' || s[start] == 'X') && (s[start + 1] == 'n' || s[start + 1] == 'N')))
            return false;
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
