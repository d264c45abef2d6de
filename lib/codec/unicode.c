/* Unicode property lookup (see unicode.h). The tables are sorted by name
 * and searched by bisection. */
#include "codec/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "codec/unicode_tables.h"
#include "core/util.h"

static const loom__urange any_range[] = {{0, 0x10FFFF}};
static const loom__urange ascii_range[] = {{0, 0x7F}};

static int cmp_prop(const void *key, const void *elem)
{
    return strcmp(key, ((const loom__uprop *)elem)->name);
}

static const loom__uprop *find(const loom__uprop *t, size_t n, const char *name)
{
    return bsearch(name, t, n, sizeof *t, cmp_prop);
}

bool loom__unicode_property(const char *name, const loom__urange **r, size_t *n, bool *negate)
{
    *negate = false;
    const loom__uprop *p = NULL;
    const char *eq = strchr(name, '=');
    if (eq) {
        size_t k = (size_t)(eq - name);
        if ((k == 2 && strncmp(name, "gc", 2) == 0) ||
            (k == 16 && strncmp(name, "General_Category", 16) == 0))
            p = find(gc_props, LOOM__ARRAY_LEN(gc_props), eq + 1);
        else if ((k == 2 && strncmp(name, "sc", 2) == 0) ||
                 (k == 6 && strncmp(name, "Script", 6) == 0))
            p = find(script_props, LOOM__ARRAY_LEN(script_props), eq + 1);
    } else if (strcmp(name, "Any") == 0) {
        *r = any_range;
        *n = 1;
        return true;
    } else if (strcmp(name, "ASCII") == 0) {
        *r = ascii_range;
        *n = 1;
        return true;
    } else if (strcmp(name, "Assigned") == 0) {
        p = find(gc_props, LOOM__ARRAY_LEN(gc_props), "Cn");
        *negate = true;
    } else {
        p = find(gc_props, LOOM__ARRAY_LEN(gc_props), name);
    }
    if (!p)
        return false;
    *r = p->r;
    *n = p->n;
    return true;
}

bool loom__unicode_in(const loom__urange *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

bool loom__unicode_has(const char *property, uint32_t cp)
{
    const loom__urange *r;
    size_t n;
    bool negate = false;
    if (!loom__unicode_property(property, &r, &n, &negate)) {
        const loom__uprop *p = find(other_props, LOOM__ARRAY_LEN(other_props), property);
        if (!p)
            return false;
        r = p->r;
        n = p->n;
    }
    return loom__unicode_in(r, n, cp) != negate;
}
