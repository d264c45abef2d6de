/* libFuzzer target: the `pattern` regular expressions. The input is a
 * pattern, a newline, and a subject. Compiling never fails other than with
 * an error message, and searching agrees with three rewrites of the
 * pattern that cannot change its meaning (when they still compile: each
 * adds a group or instructions, which may cross a limit). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/regex.h"

/* -1 when the pattern does not compile, else whether it matches. */
static int matches(const char *pattern, const char *subject, size_t len)
{
    loom__regex *re = NULL;
    char err[160] = "";
    loom_err e = loom__regex_compile(&re, pattern, err, sizeof err);
    if (e != LOOM_OK) {
        if (re || !err[0] || (e != LOOM_EINVAL && e != LOOM_ENOMEM))
            abort(); /* a failure always explains itself */
        return -1;
    }
    int found = loom__regex_search(re, subject, len);
    loom__regex_free(re);
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t plen = nl ? (size_t)(nl - data) : size;
    if (plen > 4096)
        return 0;
    char *pattern = malloc(plen + 1), *wrapped = malloc(plen + 16);
    if (!pattern || !wrapped)
        abort();
    memcpy(pattern, data, plen);
    pattern[plen] = '\0';
    const char *subject = nl ? (const char *)nl + 1 : "";
    size_t len = nl ? size - plen - 1 : 0;

    int found = matches(pattern, subject, len);
    if (found >= 0 && strlen(pattern) == plen) {
        snprintf(wrapped, plen + 16, "(?:%s)", pattern);
        int grouped = matches(wrapped, subject, len);
        if (grouped >= 0 && grouped != found)
            abort(); /* a group changes nothing */
        snprintf(wrapped, plen + 16, "%s|[]", pattern);
        int branched = matches(wrapped, subject, len);
        if (branched >= 0 && branched != found)
            abort(); /* nor does a branch that matches nothing */
        snprintf(wrapped, plen + 16, "^(?:%s)", pattern);
        int anchored = matches(wrapped, subject, len);
        if (anchored == 1 && !found)
            abort(); /* an anchored match is a match */
    }
    free(pattern);
    free(wrapped);
    return 0;
}
