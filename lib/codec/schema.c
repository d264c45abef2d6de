/* The JSON Schema subset validator (see schema.h for the keywords).
 *
 * A schema is compiled once into a tree of nodes; every message a validation
 * can produce is formatted at compile time where possible, so validating is a
 * walk of the value that touches the heap only to report an error. The
 * parsed schema document stays alive inside the compiled schema: nodes borrow
 * property names, required names and enum/const values from it.
 *
 * Recursion is bounded everywhere: compiling by LOOM__SCHEMA_MAX_DEPTH,
 * validating by LOOM_MAX_NESTING containers of the value (a subschema always
 * sits one container deeper than its parent, and parts of the value no
 * subschema covers are only depth-checked), and enum/const comparison by the
 * depth of the schema's own values, which compiling limits to the same bound.
 */
#define _GNU_SOURCE
#include "codec/schema.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/json.h"
#include "codec/msg.h"
#include "codec/regex.h"
#include "core/util.h"

#define XSTR(x) #x
#define STR(x) XSTR(x)

#define NESTING_MSG "nested deeper than " STR(LOOM_MAX_NESTING) " levels"
/* enum/const texts longer than this are summarized in messages. */
#define MAX_VALUE_TEXT 200
/* Largest integer a double holds exactly: the bound for counts. */
#define MAX_COUNT 9007199254740991.0

enum {
    T_NULL = 1 << 0,
    T_BOOLEAN = 1 << 1,
    T_OBJECT = 1 << 2,
    T_ARRAY = 1 << 3,
    T_STRING = 1 << 4,
    T_NUMBER = 1 << 5,  /* every number */
    T_INTEGER = 1 << 6, /* a value bit for integral numbers, a schema bit for "integer" */
};

static const struct {
    const char *name;
    unsigned bit;
} type_names[] = {
    {"null", T_NULL},     {"boolean", T_BOOLEAN}, {"object", T_OBJECT},   {"array", T_ARRAY},
    {"string", T_STRING}, {"number", T_NUMBER},   {"integer", T_INTEGER},
};

/* Checks with a fixed message; the message is present exactly when the
 * schema uses the keyword. */
enum check {
    C_MINIMUM,
    C_MAXIMUM,
    C_XMINIMUM,
    C_XMAXIMUM,
    C_MIN_LENGTH,
    C_MAX_LENGTH,
    C_PATTERN,
    C_MIN_ITEMS,
    C_MAX_ITEMS,
    C_ENUM,
    C_CONST,
    C_COUNT
};

typedef struct snode snode;

typedef struct sprop {
    const char *name; /* borrowed from the document */
    snode *schema;
} sprop;

/* A compiled (sub)schema. Immutable once compiled. */
struct snode {
    bool reject_all; /* the schema `false` */
    unsigned types;  /* T_* bits; 0 = any type */
    char *type_msg;  /* "string or null", when types != 0 */
    sprop *props;    /* sorted by name, names unique */
    size_t nprops;
    const char **required; /* schema order, unique, borrowed */
    char **required_msg;
    size_t nrequired;
    snode *additional; /* additionalProperties; NULL = anything */
    snode *items;      /* NULL = anything */
    double minimum, maximum, xminimum, xmaximum;
    uint64_t min_length, max_length, min_items, max_items;
    const cJSON *enum_values; /* borrowed array */
    const cJSON *const_value; /* borrowed */
    loom__regex *regex;       /* pattern, or NULL */
    char *msg[C_COUNT];
};

struct loom__schema {
    cJSON *doc; /* the parsed schema text, borrowed from by the nodes */
    snode *root;
};

/* ------------------------------------------------------------------------ */
/* JSON Pointers                                                             */

/* One token of a JSON Pointer, kept on the C stack while walking, so that a
 * path costs nothing until an error needs it. The root step has up == NULL
 * and no token. */
typedef struct step {
    const struct step *up;
    const char *key; /* the token, or NULL for an array index */
    size_t index;
} step;

static size_t escaped_len(const char *key)
{
    size_t n = 0;
    for (const char *k = key; *k; k++)
        n += (*k == '~' || *k == '/') ? 2 : 1;
    return n;
}

/* The pointer of `at` in a cJSON_malloc'd string ("" for the root), or
 * NULL when memory runs out. */
static char *pointer_of(const step *at)
{
    char num[24];
    size_t len = 0;
    for (const step *s = at; s->up; s = s->up)
        len +=
            1 + (s->key ? escaped_len(s->key) : (size_t)snprintf(num, sizeof num, "%zu", s->index));
    char *out = cJSON_malloc(len + 1);
    if (!out)
        return NULL;
    /* Filled from the end, since the steps run from the leaf up. */
    size_t pos = len;
    out[pos] = '\0';
    for (const step *s = at; s->up; s = s->up) {
        if (s->key) {
            pos -= escaped_len(s->key);
            char *w = out + pos;
            for (const char *k = s->key; *k; k++) {
                if (*k == '~' || *k == '/') {
                    *w++ = '~';
                    *w++ = *k == '~' ? '0' : '1';
                } else {
                    *w++ = *k;
                }
            }
        } else {
            size_t n = (size_t)snprintf(num, sizeof num, "%zu", s->index);
            pos -= n;
            memcpy(out + pos, num, n);
        }
        out[--pos] = '/';
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static bool is_integral(double d)
{
    if (!__builtin_isfinite(d))
        return false;
    if (d >= 9007199254740992.0 || d <= -9007199254740992.0)
        return true; /* every double this large is an integer */
    return d == (double)(int64_t)d;
}

/* Writes d in its shortest exact form ("1", "0.5", "1e+300"). */
static void format_number(char *buf, size_t len, double d)
{
    char num[LOOM__JSON_NUMBER_MAX];
    loom__json_number(num, d == 0 ? 0 : d); /* "must be < 0", not "-0" */
    loom__strlcpy(buf, num, len);
}

/* Unicode code points in a UTF-8 string: bytes that do not continue a
 * sequence. Invalid UTF-8 is counted approximately, never overrun. */
static uint64_t utf8_length(const char *s)
{
    uint64_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

static unsigned value_type(const cJSON *v)
{
    switch (v->type & 0xFF) {
    case cJSON_NULL:
        return T_NULL;
    case cJSON_False:
    case cJSON_True:
        return T_BOOLEAN;
    case cJSON_Object:
        return T_OBJECT;
    case cJSON_Array:
        return T_ARRAY;
    case cJSON_String:
        return T_STRING;
    case cJSON_Number:
        return T_NUMBER | (is_integral(v->valuedouble) ? T_INTEGER : 0);
    default:
        return 0; /* cJSON_Raw / cJSON_Invalid: matches no type */
    }
}

static const char *value_type_name(const cJSON *v)
{
    switch (v->type & 0xFF) {
    case cJSON_NULL:
        return "null";
    case cJSON_False:
    case cJSON_True:
        return "boolean";
    case cJSON_Object:
        return "object";
    case cJSON_Array:
        return "array";
    case cJSON_String:
        return "string";
    case cJSON_Number:
        return "number";
    default:
        return "an unknown value";
    }
}

static bool is_container(const cJSON *v)
{
    return cJSON_IsArray(v) || cJSON_IsObject(v);
}

/* True when v has at most `left` levels of containers. */
static bool depth_within(const cJSON *v, int left)
{
    if (!is_container(v))
        return true;
    if (left == 0)
        return false;
    for (const cJSON *ch = v->child; ch; ch = ch->next)
        if (!depth_within(ch, left - 1))
            return false;
    return true;
}

/* Deep equality as JSON Schema defines it (numbers by value, objects
 * regardless of member order). a comes from the schema, whose depth is
 * bounded at compile time, which bounds the recursion. */
static bool json_equal(const cJSON *a, const cJSON *b)
{
    int t = a->type & 0xFF;
    if (t != (b->type & 0xFF))
        return false;
    switch (t) {
    case cJSON_NULL:
    case cJSON_False:
    case cJSON_True:
        return true;
    case cJSON_Number:
        return a->valuedouble == b->valuedouble;
    case cJSON_String:
    case cJSON_Raw:
        return strcmp(str_or_empty(a->valuestring), str_or_empty(b->valuestring)) == 0;
    case cJSON_Array: {
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            if (!json_equal(x, y))
                return false;
        return !x && !y;
    }
    case cJSON_Object: {
        size_t na = 0, nb = 0;
        for (const cJSON *x = a->child; x; x = x->next)
            na++;
        for (const cJSON *y = b->child; y; y = y->next)
            nb++;
        if (na != nb)
            return false;
        for (const cJSON *x = a->child; x; x = x->next) {
            const cJSON *y = b->child;
            while (y && strcmp(str_or_empty(x->string), str_or_empty(y->string)) != 0)
                y = y->next;
            if (!y || !json_equal(x, y))
                return false;
        }
        return true;
    }
    default:
        return false;
    }
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */

typedef struct vctx {
    cJSON *details; /* created at the first error, when wanted */
    bool want;      /* the caller asked for details */
    bool stop;      /* no further error is wanted */
    unsigned count; /* errors found */
} vctx;

/* Records an error at `at`. Returns true when the walk should stop. */
static bool report(vctx *c, const step *at, const char *message)
{
    c->count++;
    if (!c->want || c->count >= LOOM__SCHEMA_MAX_DETAILS)
        c->stop = true;
    if (!c->want)
        return true;
    if (!c->details && !(c->details = cJSON_CreateArray())) {
        c->stop = true; /* out of memory: the value is invalid all the same */
        return true;
    }
    char *path = pointer_of(at);
    cJSON *d = cJSON_CreateObject();
    if (!path || !d || !cJSON_AddStringToObject(d, "path", path) ||
        !cJSON_AddStringToObject(d, "message", message) || !cJSON_AddItemToArray(c->details, d)) {
        cJSON_Delete(d);
        c->stop = true;
    }
    cJSON_free(path);
    return c->stop;
}

static bool report_fmt(vctx *c, const step *at, const char *fmt, ...) LOOM_PRINTF(3, 4);

static bool report_fmt(vctx *c, const step *at, const char *fmt, ...)
{
    char *message = NULL;
    if (c->want) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&message, fmt, ap) < 0)
            message = NULL;
        va_end(ap);
        if (!message) {
            c->count++;
            c->stop = true;
            return true;
        }
    }
    bool stop = report(c, at, message ? message : "");
    free(message);
    return stop;
}

/* Reports containers nested deeper than the limit in a part of the value
 * that no subschema covers. depth = containers enclosing v. */
static void check_depth(vctx *c, const cJSON *v, const step *at, int depth)
{
    if (!is_container(v))
        return;
    if (depth >= LOOM_MAX_NESTING) {
        report(c, at, NESTING_MSG);
        return;
    }
    bool array = cJSON_IsArray(v);
    size_t i = 0;
    for (const cJSON *ch = v->child; ch && !c->stop; ch = ch->next, i++) {
        if (!is_container(ch))
            continue;
        step st = {at, array ? NULL : str_or_empty(ch->string), i};
        check_depth(c, ch, &st, depth + 1);
    }
}

static void validate_node(vctx *c, const snode *n, const cJSON *v, const step *at, int depth);

static void check_number(vctx *c, const snode *n, const cJSON *v, const step *at)
{
    double d = v->valuedouble;
    /* Negated comparisons, so that NaN fails every bound. */
    if (n->msg[C_MINIMUM] && !(d >= n->minimum) && report(c, at, n->msg[C_MINIMUM]))
        return;
    if (n->msg[C_MAXIMUM] && !(d <= n->maximum) && report(c, at, n->msg[C_MAXIMUM]))
        return;
    if (n->msg[C_XMINIMUM] && !(d > n->xminimum) && report(c, at, n->msg[C_XMINIMUM]))
        return;
    if (n->msg[C_XMAXIMUM] && !(d < n->xmaximum))
        report(c, at, n->msg[C_XMAXIMUM]);
}

static void check_string(vctx *c, const snode *n, const cJSON *v, const step *at)
{
    const char *s = str_or_empty(v->valuestring);
    if (n->msg[C_MIN_LENGTH] || n->msg[C_MAX_LENGTH]) {
        uint64_t len = utf8_length(s);
        if (n->msg[C_MIN_LENGTH] && len < n->min_length && report(c, at, n->msg[C_MIN_LENGTH]))
            return;
        if (n->msg[C_MAX_LENGTH] && len > n->max_length && report(c, at, n->msg[C_MAX_LENGTH]))
            return;
    }
    if (n->regex && !loom__regex_search(n->regex, s, strlen(s)))
        report(c, at, n->msg[C_PATTERN]);
}

static void check_array(vctx *c, const snode *n, const cJSON *v, const step *at, int depth)
{
    if (n->msg[C_MIN_ITEMS] || n->msg[C_MAX_ITEMS]) {
        uint64_t count = 0;
        for (const cJSON *ch = v->child; ch; ch = ch->next)
            count++;
        if (n->msg[C_MIN_ITEMS] && count < n->min_items && report(c, at, n->msg[C_MIN_ITEMS]))
            return;
        if (n->msg[C_MAX_ITEMS] && count > n->max_items && report(c, at, n->msg[C_MAX_ITEMS]))
            return;
    }
    size_t i = 0;
    for (const cJSON *ch = v->child; ch && !c->stop; ch = ch->next, i++) {
        step st = {at, NULL, i};
        if (n->items)
            validate_node(c, n->items, ch, &st, depth + 1);
        else
            check_depth(c, ch, &st, depth + 1);
    }
}

static bool has_member(const cJSON *obj, const char *name)
{
    for (const cJSON *m = obj->child; m; m = m->next)
        if (strcmp(str_or_empty(m->string), name) == 0)
            return true;
    return false;
}

static const snode *find_property(const snode *n, const char *name)
{
    size_t lo = 0, hi = n->nprops;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name, n->props[mid].name);
        if (cmp == 0)
            return n->props[mid].schema;
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static void check_object(vctx *c, const snode *n, const cJSON *v, const step *at, int depth)
{
    for (size_t i = 0; i < n->nrequired; i++)
        if (!has_member(v, n->required[i]) && report(c, at, n->required_msg[i]))
            return;
    for (const cJSON *m = v->child; m && !c->stop; m = m->next) {
        const char *name = str_or_empty(m->string);
        const snode *sub = find_property(n, name);
        if (!sub)
            sub = n->additional;
        if (sub && sub->reject_all) {
            if (report_fmt(c, at, "property '%s' is not allowed", name))
                return;
            continue;
        }
        step st = {at, name, 0};
        if (sub)
            validate_node(c, sub, m, &st, depth + 1);
        else
            check_depth(c, m, &st, depth + 1);
    }
}

/* depth = containers enclosing v; a subschema's value is always one deeper
 * than its parent's, so this recursion is bounded by the schema's depth. */
static void validate_node(vctx *c, const snode *n, const cJSON *v, const step *at, int depth)
{
    if (n->reject_all) {
        report(c, at, "value is not allowed");
        return;
    }
    unsigned vt = value_type(v);
    if (n->types && !(n->types & vt)) {
        /* The other keywords would only repeat the same complaint. */
        report_fmt(c, at, "expected %s, got %s", n->type_msg, value_type_name(v));
        return;
    }
    if ((vt & (T_OBJECT | T_ARRAY)) && depth >= LOOM_MAX_NESTING) {
        report(c, at, NESTING_MSG);
        return;
    }
    if (n->msg[C_ENUM]) {
        const cJSON *e = n->enum_values->child;
        while (e && !json_equal(e, v))
            e = e->next;
        if (!e && report(c, at, n->msg[C_ENUM]))
            return;
    }
    if (n->msg[C_CONST] && !json_equal(n->const_value, v) && report(c, at, n->msg[C_CONST]))
        return;
    if (vt & T_NUMBER)
        check_number(c, n, v, at);
    else if (vt & T_STRING)
        check_string(c, n, v, at);
    else if (vt & T_ARRAY)
        check_array(c, n, v, at, depth);
    else if (vt & T_OBJECT)
        check_object(c, n, v, at, depth);
}

bool loom__schema_validate(const loom__schema *s, const cJSON *value, cJSON **details)
{
    if (details)
        *details = NULL;
    if (!s)
        return true;
    /* An absent value is validated as JSON null. */
    cJSON absent = {.type = cJSON_NULL};
    vctx c = {.want = details != NULL};
    step root = {0};
    validate_node(&c, s->root, value ? value : &absent, &root, 0);
    if (details)
        *details = c.details;
    else
        cJSON_Delete(c.details);
    return c.count == 0;
}

/* ------------------------------------------------------------------------ */
/* Compilation                                                               */

typedef struct cctx {
    char *err;
    size_t errlen;
    loom_err rc;
} cctx;

static void cfail(cctx *c, const step *at, const char *fmt, ...) LOOM_PRINTF(3, 4);

/* Records a compile error: "schema: REASON at POINTER". */
static void cfail(cctx *c, const step *at, const char *fmt, ...)
{
    c->rc = LOOM_EINVAL;
    if (!c->err || c->errlen == 0)
        return;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (!at->up) {
        snprintf(c->err, c->errlen, "schema: %s at the root", reason);
        return;
    }
    char *ptr = pointer_of(at);
    snprintf(c->err, c->errlen, "schema: %s at %s", reason, ptr ? ptr : "(unknown)");
    cJSON_free(ptr);
}

static void coom(cctx *c)
{
    c->rc = LOOM_ENOMEM;
    if (c->err && c->errlen)
        snprintf(c->err, c->errlen, "schema: out of memory");
}

/* Stores a newly formatted message (NULL = out of memory). */
static bool set_msg(cctx *c, char **slot, char *msg)
{
    if (!msg) {
        coom(c);
        return false;
    }
    free(*slot);
    *slot = msg;
    return true;
}

enum kw {
    KW_TYPE,
    KW_PROPERTIES,
    KW_REQUIRED,
    KW_ADDITIONAL,
    KW_ITEMS,
    KW_MIN_ITEMS,
    KW_MAX_ITEMS,
    KW_ENUM,
    KW_CONST,
    KW_MINIMUM,
    KW_MAXIMUM,
    KW_XMINIMUM,
    KW_XMAXIMUM,
    KW_MIN_LENGTH,
    KW_MAX_LENGTH,
    KW_PATTERN,
    KW_ANNOTATION,
};

static const struct {
    const char *name;
    enum kw kw;
} keywords[] = {
    {"type", KW_TYPE},
    {"properties", KW_PROPERTIES},
    {"required", KW_REQUIRED},
    {"additionalProperties", KW_ADDITIONAL},
    {"items", KW_ITEMS},
    {"minItems", KW_MIN_ITEMS},
    {"maxItems", KW_MAX_ITEMS},
    {"enum", KW_ENUM},
    {"const", KW_CONST},
    {"minimum", KW_MINIMUM},
    {"maximum", KW_MAXIMUM},
    {"exclusiveMinimum", KW_XMINIMUM},
    {"exclusiveMaximum", KW_XMAXIMUM},
    {"minLength", KW_MIN_LENGTH},
    {"maxLength", KW_MAX_LENGTH},
    {"pattern", KW_PATTERN},
    /* Annotations: accepted and ignored ("format" is not asserted). */
    {"$schema", KW_ANNOTATION},
    {"$id", KW_ANNOTATION},
    {"title", KW_ANNOTATION},
    {"description", KW_ANNOTATION},
    {"default", KW_ANNOTATION},
    {"examples", KW_ANNOTATION},
    {"format", KW_ANNOTATION},
};

_Static_assert(LOOM__ARRAY_LEN(keywords) <= 32, "the seen-keyword set is a uint32_t");

static snode *compile_node(cctx *c, const cJSON *j, const step *at, int depth);

static bool compile_type(cctx *c, snode *n, const cJSON *j, const step *at)
{
    const cJSON *one = j;
    if (cJSON_IsArray(j)) {
        one = j->child;
        if (!one) {
            cfail(c, at, "'type' must not be an empty array");
            return false;
        }
    } else if (!cJSON_IsString(j)) {
        cfail(c, at, "'type' must be a type name or an array of type names");
        return false;
    }
    const char *names[LOOM__ARRAY_LEN(type_names)];
    size_t count = 0;
    for (; one; one = cJSON_IsArray(j) ? one->next : NULL) {
        if (!cJSON_IsString(one) || !one->valuestring) {
            cfail(c, at, "'type' must be a type name or an array of type names");
            return false;
        }
        size_t t = 0;
        while (t < LOOM__ARRAY_LEN(type_names) && strcmp(type_names[t].name, one->valuestring))
            t++;
        if (t == LOOM__ARRAY_LEN(type_names)) {
            cfail(c, at, "unknown type '%s' in 'type'", one->valuestring);
            return false;
        }
        if (n->types & type_names[t].bit) {
            cfail(c, at, "'type' lists '%s' twice", one->valuestring);
            return false;
        }
        n->types |= type_names[t].bit;
        names[count++] = type_names[t].name;
    }
    /* "a", "a or b", "a, b or c", in the schema's order. */
    char buf[128];
    size_t len = 0;
    for (size_t i = 0; i < count; i++) {
        const char *sep = i == 0 ? "" : i + 1 == count ? " or " : ", ";
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", sep, names[i]);
    }
    return set_msg(c, &n->type_msg, loom__strdup(buf));
}

static int cmp_props(const void *a, const void *b)
{
    return strcmp(((const sprop *)a)->name, ((const sprop *)b)->name);
}

static bool compile_properties(cctx *c, snode *n, const cJSON *j, const step *at, int depth)
{
    if (!cJSON_IsObject(j)) {
        cfail(c, at, "'properties' must be an object");
        return false;
    }
    size_t count = 0;
    for (const cJSON *m = j->child; m; m = m->next)
        count++;
    if (count == 0)
        return true;
    if (!(n->props = calloc(count, sizeof *n->props))) {
        coom(c);
        return false;
    }
    step kw = {at, "properties", 0};
    for (const cJSON *m = j->child; m; m = m->next) {
        const char *name = str_or_empty(m->string);
        step st = {&kw, name, 0};
        snode *sub = compile_node(c, m, &st, depth + 1);
        if (!sub)
            return false;
        n->props[n->nprops++] = (sprop){name, sub};
    }
    qsort(n->props, n->nprops, sizeof *n->props, cmp_props);
    for (size_t i = 1; i < n->nprops; i++) {
        if (strcmp(n->props[i - 1].name, n->props[i].name) == 0) {
            cfail(c, at, "property '%s' appears twice in 'properties'", n->props[i].name);
            return false;
        }
    }
    return true;
}

static int cmp_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool compile_required(cctx *c, snode *n, const cJSON *j, const step *at)
{
    if (!cJSON_IsArray(j)) {
        cfail(c, at, "'required' must be an array of strings");
        return false;
    }
    size_t count = 0;
    for (const cJSON *e = j->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring) {
            cfail(c, at, "'required' must be an array of strings");
            return false;
        }
        count++;
    }
    if (count == 0)
        return true;
    n->required = calloc(count, sizeof *n->required);
    n->required_msg = calloc(count, sizeof *n->required_msg);
    const char **sorted = calloc(count, sizeof *sorted);
    bool ok = n->required && n->required_msg && sorted;
    for (const cJSON *e = j->child; ok && e; e = e->next) {
        char *msg = loom__asprintf("required property '%s' is missing", e->valuestring);
        if (!msg) {
            ok = false;
            break;
        }
        sorted[n->nrequired] = e->valuestring;
        n->required[n->nrequired] = e->valuestring;
        n->required_msg[n->nrequired++] = msg;
    }
    if (!ok) {
        free(sorted);
        coom(c);
        return false;
    }
    qsort(sorted, count, sizeof *sorted, cmp_strings);
    for (size_t i = 1; i < count; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            cfail(c, at, "'required' lists '%s' twice", sorted[i]);
            ok = false;
            break;
        }
    }
    free(sorted);
    return ok;
}

/* minItems, maxItems, minLength, maxLength. */
static bool compile_count(cctx *c, const cJSON *j, const char *key, const step *at, uint64_t *out)
{
    double d = j->valuedouble;
    if (!cJSON_IsNumber(j) || !(d >= 0) || d > MAX_COUNT || d != (double)(uint64_t)d) {
        cfail(c, at, "'%s' must be a non-negative integer", key);
        return false;
    }
    *out = (uint64_t)d;
    return true;
}

/* minimum, maximum, exclusiveMinimum, exclusiveMaximum: "must be OP N". */
static bool compile_bound(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                          enum check which, const char *op, double *out)
{
    if (!cJSON_IsNumber(j) || !__builtin_isfinite(j->valuedouble)) {
        cfail(c, at, "'%s' must be a number", key);
        return false;
    }
    *out = j->valuedouble;
    char num[40];
    format_number(num, sizeof num, *out);
    return set_msg(c, &n->msg[which], loom__asprintf("must be %s %s", op, num));
}

static bool compile_length(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                           enum check which, uint64_t *out, const char *least_most,
                           const char *unit)
{
    if (!compile_count(c, j, key, at, out))
        return false;
    return set_msg(c, &n->msg[which],
                   loom__asprintf("must have %s %llu %s%s", least_most, (unsigned long long)*out,
                                  unit, *out == 1 ? "" : "s"));
}

/* enum and const: keeps the value, checks its depth, formats the message. */
static bool compile_value(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                          enum check which)
{
    if (which == C_ENUM) {
        if (!cJSON_IsArray(j) || !j->child) {
            cfail(c, at, "'enum' must be a non-empty array");
            return false;
        }
        for (const cJSON *e = j->child; e; e = e->next) {
            if (!depth_within(e, LOOM_MAX_NESTING)) {
                cfail(c, at, "'enum' value is %s", NESTING_MSG);
                return false;
            }
        }
        n->enum_values = j;
    } else {
        if (!depth_within(j, LOOM_MAX_NESTING)) {
            cfail(c, at, "'%s' value is %s", key, NESTING_MSG);
            return false;
        }
        n->const_value = j;
    }
    char *text = cJSON_PrintUnformatted(j);
    if (!text) {
        coom(c);
        return false;
    }
    char *msg;
    if (strlen(text) <= MAX_VALUE_TEXT)
        msg = which == C_ENUM ? loom__asprintf("must be one of %s", text)
                              : loom__asprintf("must be %s", text);
    else if (which == C_ENUM)
        msg = loom__asprintf("must be one of the %d allowed values", cJSON_GetArraySize(j));
    else
        msg = loom__strdup("must be equal to the value the schema requires");
    cJSON_free(text);
    return set_msg(c, &n->msg[which], msg);
}

static bool compile_pattern(cctx *c, snode *n, const cJSON *j, const step *at)
{
    if (!cJSON_IsString(j) || !j->valuestring) {
        cfail(c, at, "'pattern' must be a string");
        return false;
    }
    char why[160];
    loom_err e = loom__regex_compile(&n->regex, j->valuestring, why, sizeof why);
    if (e == LOOM_ENOMEM) {
        coom(c);
        return false;
    }
    if (e != LOOM_OK) {
        cfail(c, at, "invalid 'pattern' '%s': %s", j->valuestring, why);
        return false;
    }
    return set_msg(c, &n->msg[C_PATTERN],
                   loom__asprintf("must match pattern '%s'", j->valuestring));
}

static bool compile_keyword(cctx *c, snode *n, enum kw kw, const char *key, const cJSON *j,
                            const step *at, int depth)
{
    switch (kw) {
    case KW_TYPE:
        return compile_type(c, n, j, at);
    case KW_PROPERTIES:
        return compile_properties(c, n, j, at, depth);
    case KW_REQUIRED:
        return compile_required(c, n, j, at);
    case KW_ADDITIONAL: {
        step st = {at, key, 0};
        return (n->additional = compile_node(c, j, &st, depth + 1)) != NULL;
    }
    case KW_ITEMS: {
        if (cJSON_IsArray(j)) {
            cfail(c, at, "'items' must be a schema (tuples are not supported)");
            return false;
        }
        step st = {at, key, 0};
        return (n->items = compile_node(c, j, &st, depth + 1)) != NULL;
    }
    case KW_MIN_ITEMS:
        return compile_length(c, n, j, key, at, C_MIN_ITEMS, &n->min_items, "at least", "item");
    case KW_MAX_ITEMS:
        return compile_length(c, n, j, key, at, C_MAX_ITEMS, &n->max_items, "at most", "item");
    case KW_MIN_LENGTH:
        return compile_length(c, n, j, key, at, C_MIN_LENGTH, &n->min_length, "at least",
                              "character");
    case KW_MAX_LENGTH:
        return compile_length(c, n, j, key, at, C_MAX_LENGTH, &n->max_length, "at most",
                              "character");
    case KW_ENUM:
        return compile_value(c, n, j, key, at, C_ENUM);
    case KW_CONST:
        return compile_value(c, n, j, key, at, C_CONST);
    case KW_MINIMUM:
        return compile_bound(c, n, j, key, at, C_MINIMUM, ">=", &n->minimum);
    case KW_MAXIMUM:
        return compile_bound(c, n, j, key, at, C_MAXIMUM, "<=", &n->maximum);
    case KW_XMINIMUM:
        return compile_bound(c, n, j, key, at, C_XMINIMUM, ">", &n->xminimum);
    case KW_XMAXIMUM:
        return compile_bound(c, n, j, key, at, C_XMAXIMUM, "<", &n->xmaximum);
    case KW_PATTERN:
        return compile_pattern(c, n, j, at);
    case KW_ANNOTATION:
        return true;
    }
    return true;
}

static void node_free(snode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nprops; i++)
        node_free(n->props[i].schema);
    free(n->props);
    for (size_t i = 0; i < n->nrequired; i++)
        free(n->required_msg[i]);
    free(n->required);
    free(n->required_msg);
    node_free(n->additional);
    node_free(n->items);
    loom__regex_free(n->regex);
    for (size_t i = 0; i < C_COUNT; i++)
        free(n->msg[i]);
    free(n->type_msg);
    free(n);
}

/* depth = 1 for the root schema. */
static snode *compile_node(cctx *c, const cJSON *j, const step *at, int depth)
{
    if (depth > LOOM__SCHEMA_MAX_DEPTH) {
        cfail(c, at, "nested deeper than %d levels", LOOM__SCHEMA_MAX_DEPTH);
        return NULL;
    }
    if (!cJSON_IsBool(j) && !cJSON_IsObject(j)) {
        cfail(c, at, "a schema must be an object or a boolean");
        return NULL;
    }
    snode *n = calloc(1, sizeof *n);
    if (!n) {
        coom(c);
        return NULL;
    }
    if (cJSON_IsBool(j)) {
        n->reject_all = cJSON_IsFalse(j);
        return n;
    }
    uint32_t seen = 0;
    for (const cJSON *m = j->child; m; m = m->next) {
        const char *key = str_or_empty(m->string);
        size_t k = 0;
        while (k < LOOM__ARRAY_LEN(keywords) && strcmp(keywords[k].name, key) != 0)
            k++;
        if (k == LOOM__ARRAY_LEN(keywords)) {
            cfail(c, at, "unsupported keyword '%s'", key);
            goto fail;
        }
        if (seen & (UINT32_C(1) << k)) {
            cfail(c, at, "keyword '%s' appears twice", key);
            goto fail;
        }
        seen |= UINT32_C(1) << k;
        if (!compile_keyword(c, n, keywords[k].kw, key, m, at, depth))
            goto fail;
    }
    return n;
fail:
    node_free(n);
    return NULL;
}

loom_err loom__schema_compile(loom__schema **out, const char *json_text, char *err, size_t errlen)
{
    cctx c = {err, errlen, LOOM_OK};
    if (err && errlen)
        err[0] = '\0';
    if (out)
        *out = NULL;
    if (!out || !json_text) {
        if (err && errlen)
            snprintf(err, errlen, "schema: no schema given");
        return LOOM_EINVAL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithOpts(json_text, &end, 1);
    if (!doc) {
        /* cJSON cannot tell a syntax error from a failed allocation. */
        if (err && errlen)
            snprintf(err, errlen, "schema: malformed JSON near byte %zu",
                     end ? (size_t)(end - json_text) : (size_t)0);
        return LOOM_EINVAL;
    }
    loom__schema *s = calloc(1, sizeof *s);
    if (!s) {
        cJSON_Delete(doc);
        coom(&c);
        return LOOM_ENOMEM;
    }
    s->doc = doc;
    step root = {0};
    s->root = compile_node(&c, doc, &root, 1);
    if (!s->root) {
        loom__schema_free(s);
        return c.rc != LOOM_OK ? c.rc : LOOM_EINVAL;
    }
    *out = s;
    return LOOM_OK;
}

void loom__schema_free(loom__schema *s)
{
    if (!s)
        return;
    node_free(s->root);
    cJSON_Delete(s->doc);
    free(s);
}
