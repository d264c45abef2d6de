/* The JSON Schema draft 2020-12 validator (see schema.h for the keywords).
 *
 * A schema is compiled once into a graph of nodes; every message a
 * validation can produce is formatted at compile time where possible, so
 * validating is a walk of the value that touches the heap only to report an
 * error (and in the two cases schema.h names). The parsed documents stay
 * alive: nodes borrow property names, required names and enum/const values
 * from them, and a compiled schema keeps the set it was compiled in.
 *
 * Compiling first indexes each document: every subschema position (known
 * from the applicator keywords, so "$id" inside an enum or a property named
 * "$ref" is never mistaken for a keyword) gets its base URI and its JSON
 * Pointer, and every $id and $anchor is recorded. Nodes are then made once
 * per schema object (a memo keyed by the cJSON node), so a subschema that
 * is both inline and a $ref target is one node; a $ref only links to its
 * target's node and queues it, so $ref cycles compile to cycles in the
 * graph, never to endless recursion. All nodes live in the schema's arena.
 *
 * Validation is bounded three ways: by LOOM_MAX_NESTING containers of the
 * value (a child applicator always moves one container deeper; parts of the
 * value no subschema covers are only depth-checked), by
 * LOOM__SCHEMA_MAX_CALLS nested evaluations (which catches $ref cycles that
 * consume nothing) and by LOOM__SCHEMA_MAX_WORK evaluations and comparisons
 * in total (which caps exponential anyOf/$ref nests and uniqueItems).
 *
 * $dynamicRef: a $dynamicRef whose static target bookends it (carries the
 * $dynamicAnchor its fragment names) is resolved at validation time in the
 * dynamic scope, a stack of the schema resources (documents and $id
 * subschemas) being evaluated, kept on the C stack and only for schemas that
 * have such a reference. Compiling attaches to each resource reached the
 * $dynamicAnchors it holds; the outermost resource in scope that has the
 * name wins.
 *
 * unevaluatedProperties / unevaluatedItems need the annotations of the
 * in-place applicators: a node that has one keeps a bitmap over the
 * value's members, passes it to its in-place subschemas ($ref, allOf,
 * passing anyOf / oneOf branches, if/then/else, dependentSchemas), which
 * mark what properties, patternProperties, additionalProperties,
 * prefixItems, items and contains evaluated. Without such a keyword no
 * bitmap exists and nothing is tracked.
 *
 * Speed (docs/schema.md): compiling records which keyword families a node
 * has (leaf, *_kw flags), so validation skips what is absent; a scalar
 * against a leaf (no $ref, no in-place applicator) takes validate_leaf, not
 * the full walk; required and properties share one pass over the members.
 * The work and call bounds count the same steps on every path.
 */
#define _GNU_SOURCE
#include "codec/schema.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/format.h"
#include "codec/json.h"
#include "codec/msg.h"
#include "codec/regex.h"
#include "codec/uri.h"
#include "core/util.h"

#define XSTR(x) #x
#define STR(x) XSTR(x)

#define NESTING_MSG "nested deeper than " STR(LOOM_MAX_NESTING) " levels"
#define CALLS_MSG "schema recursion deeper than " STR(LOOM__SCHEMA_MAX_CALLS) " levels"
#define WORK_MSG "validation exceeds " STR(LOOM__SCHEMA_MAX_WORK) " steps"
/* enum/const texts longer than this are summarized in messages. */
#define MAX_VALUE_TEXT 200
/* Largest integer a double holds exactly: the bound for counts. */
#define MAX_COUNT 9007199254740991.0
/* Arrays up to this size are checked for uniqueItems pairwise. */
#define UNIQUE_PAIRWISE 16

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
    C_MULTIPLE,
    C_MIN_LENGTH,
    C_MAX_LENGTH,
    C_PATTERN,
    C_FORMAT,
    C_MIN_ITEMS,
    C_MAX_ITEMS,
    C_MIN_CONTAINS,
    C_MAX_CONTAINS,
    C_MIN_PROPS,
    C_MAX_PROPS,
    C_ENUM,
    C_CONST,
    C_COUNT
};

/* The keyword each check reports as its schemaPath. */
static const char *const check_kw[C_COUNT] = {
    "minimum",   "maximum",     "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength",   "pattern",          "format",           "minItems",
    "maxItems",  "minContains", "maxContains",      "minProperties",    "maxProperties",
    "enum",      "const",
};

typedef struct snode snode;

typedef struct sprop {
    const char *name; /* borrowed from the document */
    snode *schema;
} sprop;

typedef struct spattern {
    loom__regex *re;
    snode *schema;
} spattern;

typedef struct sdepreq {
    const char *name;   /* borrowed */
    const cJSON *names; /* borrowed array of strings */
} sdepreq;

typedef struct slist {
    snode **v;
    size_t n;
} slist;

/* A compiled (sub)schema. Immutable once compiled. */
struct snode {
    bool reject_all;        /* the schema `false` */
    unsigned types;         /* T_* bits; 0 = any type */
    char *type_msg;         /* "string or null", when types != 0 */
    char *loc;              /* JSON Pointer of this schema ("" for the root) */
    snode *ref;             /* $ref target */
    snode *dynref;          /* $dynamicRef's static target */
    char *dyn_name;         /* its dynamic anchor, when the target bookends it */
    const struct sres *res; /* the schema resource this node belongs to */
    /* objects */
    sprop *props; /* sorted by name, names unique */
    size_t nprops;
    spattern *patterns;
    size_t npatterns;
    snode *additional;     /* additionalProperties; NULL = anything */
    snode *names;          /* propertyNames */
    const char **required; /* schema order, unique, borrowed */
    char **required_msg;
    size_t nrequired;
    /* With at most 64 properties: each required name's index in props, or
     * -1, so one pass over the members answers both (check_object). */
    int8_t *required_prop;
    sdepreq *dep_required;
    size_t ndep_required;
    sprop *dep_schemas;
    size_t ndep_schemas;
    snode *uneval_props;
    uint64_t min_props, max_props;
    /* arrays */
    slist prefix;
    snode *items; /* NULL = anything */
    snode *contains;
    snode *uneval_items;
    bool unique;
    uint64_t min_items, max_items, min_contains, max_contains;
    /* in place */
    slist all_of, any_of, one_of;
    snode *not_, *if_, *then_, *else_;
    /* scalars */
    double minimum, maximum, xminimum, xmaximum, multiple;
    uint64_t min_length, max_length;
    const cJSON *enum_values; /* borrowed array */
    const cJSON *const_value; /* borrowed */
    loom__regex *regex;       /* pattern, or NULL */
    loom__format_fn format;   /* asserted format, or NULL */
    char *msg[C_COUNT];
    bool in_place; /* has allOf, anyOf, oneOf, not or if */
    bool leaf;     /* evaluates no subschema on a scalar: validate_leaf */
    bool num_kw;   /* has a number keyword */
    bool eq_kw;    /* has enum or const */
    bool arr_kw;   /* has a keyword for arrays' items (or their count) */
    bool obj_kw;   /* has a keyword for objects' members (or their count) */
    bool str_kw;   /* has a string keyword */
    bool deps;     /* has dependentRequired or dependentSchemas */
    /* Compile time only. */
    const cJSON *src;
    const char *base; /* base URI, borrowed from an index */
    bool compiled;
};

/* ------------------------------------------------------------------------ */
/* Pointer maps                                                              */

typedef struct pslot {
    const void *key;
    void *val;
} pslot;

typedef struct pmap {
    pslot *s;
    size_t cap, n; /* cap is 0 or a power of two */
} pmap;

static size_t phash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static void *pmap_get(const pmap *m, const void *key)
{
    if (!m->cap)
        return NULL;
    for (size_t i = phash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->s[i].key == key)
            return m->s[i].val;
        if (!m->s[i].key)
            return NULL;
    }
}

static bool pmap_put(pmap *m, const void *key, void *val)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        pslot *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return false;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->s[i].key)
                continue;
            size_t j = phash(m->s[i].key) & (ncap - 1);
            while (ns[j].key)
                j = (j + 1) & (ncap - 1);
            ns[j] = m->s[i];
        }
        free(m->s);
        m->s = ns;
        m->cap = ncap;
    }
    size_t i = phash(key) & (m->cap - 1);
    while (m->s[i].key && m->s[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->s[i].key)
        m->n++;
    m->s[i] = (pslot){key, val};
    return true;
}

/* ------------------------------------------------------------------------ */
/* Document index                                                            */

typedef struct ientry {
    const char *base; /* borrowed from the index's resources */
    char *loc;
} ientry;

typedef struct named {
    char *uri; /* a resource's URI (no fragment), or "URI#anchor" */
    const cJSON *node;
} named;

typedef struct sindex {
    pmap entries;                    /* subschema cJSON -> ientry */
    named *res, *anchors, *danchors; /* danchors: "URI#name" of $dynamicAnchor */
    size_t nres, nanchors, capres, capanchors, ndanchors, capdanchors;
    bool oom;
} sindex;

struct loom__schema_set {
    atomic_int refs;
    unsigned flags;
    cJSON **docs;
    size_t ndocs;
    sindex ix;
};

/* A schema resource (a document or a subschema with $id): the dynamic
 * scope of $dynamicRef is a stack of these. */
typedef struct sdyn {
    char *name;
    const snode *node;
} sdyn;

typedef struct sres {
    sdyn *dyn; /* its $dynamicAnchors */
    size_t ndyn;
} sres;

struct loom__schema {
    cJSON *doc; /* the parsed schema text, borrowed from by the nodes */
    sres **res; /* the resources nodes point to */
    size_t nres, capres;
    bool dynamic; /* some node has a $dynamicRef with a dynamic anchor */
    snode *root;
    snode **nodes; /* the arena */
    size_t nnodes, capnodes;
    loom__schema_set *set; /* a reference, or NULL */
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

/* The T_* bit of v, without T_INTEGER (type_ok asks is_integral only
 * when a schema's types need it). cJSON's types are one bit each. */
static inline unsigned value_type(const cJSON *v)
{
    static const unsigned char of_bit[8] = {T_BOOLEAN, T_BOOLEAN, T_NULL,   T_NUMBER,
                                            T_STRING,  T_ARRAY,   T_OBJECT, 0 /* Raw */};
    unsigned t = (unsigned)v->type & 0xFF;
    return t ? of_bit[__builtin_ctz(t)] : 0; /* cJSON_Invalid matches no type */
}

/* Whether v (of type vt) is one of n's types. */
static inline bool type_ok(const snode *n, const cJSON *v, unsigned vt)
{
    return !n->types || (n->types & vt) ||
           ((n->types & T_INTEGER) && vt == T_NUMBER && is_integral(v->valuedouble));
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
    return (v->type & (cJSON_Array | cJSON_Object)) != 0;
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
 * regardless of member order). Each call counts as work, so comparing two
 * huge values of the data stays within the validation's budget; left bounds
 * the recursion (deeper values are invalid anyway). */
typedef struct vshared {
    uint64_t work;
    int calls;
    bool over;       /* a bound was hit: the value is invalid */
    const char *why; /* which bound */
} vshared;

static bool spend(vshared *sh, uint64_t n)
{
    sh->work += n;
    if (sh->work > LOOM__SCHEMA_MAX_WORK && !sh->over) {
        sh->over = true;
        sh->why = WORK_MSG;
    }
    return !sh->over;
}

static bool json_equal(vshared *sh, const cJSON *a, const cJSON *b, int left)
{
    int t = a->type & 0xFF;
    if (t != (b->type & 0xFF) || left < 0 || !spend(sh, 1))
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
            if (!json_equal(sh, x, y, left - 1))
                return false;
        return !x && !y;
    }
    case cJSON_Object: {
        size_t na = 0, nb = 0;
        for (const cJSON *x = a->child; x; x = x->next)
            na++;
        for (const cJSON *y = b->child; y; y = y->next)
            nb++;
        if (na != nb || !spend(sh, na + nb))
            return false;
        for (const cJSON *x = a->child; x; x = x->next) {
            const cJSON *y = b->child;
            uint64_t steps = 0;
            while (y && strcmp(str_or_empty(x->string), str_or_empty(y->string)) != 0) {
                y = y->next;
                steps++;
            }
            if (!spend(sh, steps) || !y || !json_equal(sh, x, y, left - 1))
                return false;
        }
        return true;
    }
    default:
        return false;
    }
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    return x ^ (x >> 33);
}

static uint64_t str_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    return h;
}

/* A hash that equal values (json_equal) share: object members are combined
 * by addition, so their order does not matter. */
static uint64_t json_hash(const cJSON *v, int left)
{
    int t = v->type & 0xFF;
    uint64_t h = mix((uint64_t)t + 1);
    if (left < 0)
        return h;
    switch (t) {
    case cJSON_Number: {
        double d = v->valuedouble == 0 ? 0 : v->valuedouble; /* -0 == 0 */
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        return mix(h ^ bits);
    }
    case cJSON_String:
    case cJSON_Raw:
        return mix(h ^ str_hash(str_or_empty(v->valuestring)));
    case cJSON_Array:
        for (const cJSON *x = v->child; x; x = x->next)
            h = mix(h * 31 + json_hash(x, left - 1));
        return h;
    case cJSON_Object: {
        uint64_t sum = 0;
        for (const cJSON *x = v->child; x; x = x->next)
            sum += mix(str_hash(str_or_empty(x->string)) ^ (json_hash(x, left - 1) * 3));
        return mix(h ^ sum);
    }
    default:
        return h;
    }
}

/* ------------------------------------------------------------------------ */
/* Evaluated members (for unevaluated*)                                      */

typedef struct evalset {
    uint64_t *w;
    size_t n;
    uint64_t small[4]; /* w points here for up to 256 members */
} evalset;

static bool evalset_init(evalset *e, size_t n)
{
    size_t words = (n + 63) / 64;
    e->n = n;
    if (words <= LOOM__ARRAY_LEN(e->small)) {
        memset(e->small, 0, sizeof e->small);
        e->w = e->small;
        return true;
    }
    e->w = calloc(words, sizeof *e->w);
    return e->w != NULL;
}

static void evalset_fini(evalset *e)
{
    if (e->w != e->small)
        free(e->w);
}

static void mark(evalset *e, size_t i)
{
    if (e && i < e->n)
        e->w[i / 64] |= UINT64_C(1) << (i % 64);
}

static bool marked(const evalset *e, size_t i)
{
    return i < e->n && (e->w[i / 64] >> (i % 64)) & 1;
}

static void evalset_merge(evalset *into, const evalset *from)
{
    for (size_t i = 0; i < (into->n + 63) / 64; i++)
        into->w[i] |= from->w[i];
}

static size_t child_count(const cJSON *v)
{
    size_t n = 0;
    for (const cJSON *ch = v->child; ch; ch = ch->next)
        n++;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */

/* The dynamic scope: the resources being evaluated, innermost first, on
 * the C stack. Tracked only when the schema has a dynamic $dynamicRef. */
typedef struct scope {
    const sres *res;
    const struct scope *up;
} scope;

typedef struct vctx {
    const scope *scope;
    bool dynamic;   /* track the dynamic scope */
    cJSON *details; /* created at the first error, when wanted */
    bool want;      /* the caller asked for details */
    bool stop;      /* no further error is wanted */
    unsigned count; /* errors found */
    vshared *sh;
} vctx;

static bool halted(const vctx *c)
{
    return c->stop || c->sh->over;
}

/* The schema location of keyword kw of n (kw NULL: n itself). */
static char *schema_path(const snode *n, const char *kw)
{
    if (!kw)
        return loom__strdup(n->loc);
    return loom__asprintf("%s/%s", n->loc, kw);
}

/* Records an error at `at`. Returns true when the walk should stop. */
static bool report(vctx *c, const step *at, const snode *n, const char *kw, const char *message)
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
    char *spath = n ? schema_path(n, kw) : loom__strdup("");
    cJSON *d = cJSON_CreateObject();
    if (!path || !spath || !d || !cJSON_AddStringToObject(d, "path", path) ||
        !cJSON_AddStringToObject(d, "message", message) ||
        !cJSON_AddStringToObject(d, "schemaPath", spath) || !cJSON_AddItemToArray(c->details, d)) {
        cJSON_Delete(d);
        c->stop = true;
    }
    cJSON_free(path);
    free(spath);
    return c->stop;
}

static bool report_fmt(vctx *c, const step *at, const snode *n, const char *kw, const char *fmt,
                       ...) LOOM_PRINTF(5, 6);

static bool report_fmt(vctx *c, const step *at, const snode *n, const char *kw, const char *fmt,
                       ...)
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
    bool stop = report(c, at, n, kw, message ? message : "");
    free(message);
    return stop;
}

static bool check(vctx *c, const step *at, const snode *n, enum check which)
{
    return report(c, at, n, check_kw[which], n->msg[which]);
}

/* Reports containers nested deeper than the limit in a part of the value
 * that no subschema covers. depth = containers enclosing v. */
static void check_depth(vctx *c, const cJSON *v, const step *at, int depth)
{
    if (!is_container(v))
        return;
    if (depth >= LOOM_MAX_NESTING) {
        report(c, at, NULL, NULL, NESTING_MSG);
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

static inline __attribute__((always_inline)) void
validate_node(vctx *c, const snode *n, const cJSON *v, const step *at, int depth, evalset *ev);

/* Validates silently: true when v passes n. With ev, n's annotations are
 * added to ev only when it passes. */
static bool passes(vctx *c, const snode *n, const cJSON *v, const step *at, int depth, evalset *ev)
{
    vctx sub = {.sh = c->sh, .scope = c->scope, .dynamic = c->dynamic};
    evalset tmp;
    if (ev && !evalset_init(&tmp, ev->n)) {
        c->sh->over = true;
        c->sh->why = "out of memory";
        return false;
    }
    validate_node(&sub, n, v, at, depth, ev ? &tmp : NULL);
    bool ok = sub.count == 0 && !c->sh->over;
    if (ev) {
        if (ok)
            evalset_merge(ev, &tmp);
        evalset_fini(&tmp);
    }
    return ok;
}

static bool is_multiple(double d, double m)
{
    double q = d / m;
    if (!__builtin_isfinite(q))
        return false;
    if (q >= 9007199254740992.0 || q <= -9007199254740992.0)
        return true;
    double r = (double)(int64_t)(q + (q >= 0 ? 0.5 : -0.5));
    double diff = q - r, mag = r < 0 ? -r : r;
    if (diff < 0)
        diff = -diff;
    return diff <= 1e-9 * (mag > 1 ? mag : 1);
}

__attribute__((noinline)) static void check_number(vctx *c, const snode *n, const cJSON *v,
                                                   const step *at)
{
    double d = v->valuedouble;
    /* Negated comparisons, so that NaN fails every bound. */
    if (n->msg[C_MINIMUM] && !(d >= n->minimum) && check(c, at, n, C_MINIMUM))
        return;
    if (n->msg[C_MAXIMUM] && !(d <= n->maximum) && check(c, at, n, C_MAXIMUM))
        return;
    if (n->msg[C_XMINIMUM] && !(d > n->xminimum) && check(c, at, n, C_XMINIMUM))
        return;
    if (n->msg[C_XMAXIMUM] && !(d < n->xmaximum) && check(c, at, n, C_XMAXIMUM))
        return;
    if (n->msg[C_MULTIPLE] && !is_multiple(d, n->multiple))
        check(c, at, n, C_MULTIPLE);
}

__attribute__((noinline)) static void check_string(vctx *c, const snode *n, const cJSON *v,
                                                   const step *at)
{
    const char *s = str_or_empty(v->valuestring);
    size_t bytes = strlen(s);
    /* A string of b bytes has between ceil(b / 4) and b code points: count
     * them only when that range straddles a bound. */
    if ((n->msg[C_MIN_LENGTH] && (bytes + 3) / 4 < n->min_length) ||
        (n->msg[C_MAX_LENGTH] && bytes > n->max_length)) {
        uint64_t len = utf8_length(s);
        if (n->msg[C_MIN_LENGTH] && len < n->min_length && check(c, at, n, C_MIN_LENGTH))
            return;
        if (n->msg[C_MAX_LENGTH] && len > n->max_length && check(c, at, n, C_MAX_LENGTH))
            return;
    }
    if (n->regex && !loom__regex_search(n->regex, s, bytes) && check(c, at, n, C_PATTERN))
        return;
    if (n->format && !n->format(s, bytes))
        check(c, at, n, C_FORMAT);
}

typedef struct hitem {
    uint64_t hash;
    size_t index;
    const cJSON *v;
} hitem;

static int cmp_hitem(const void *a, const void *b)
{
    const hitem *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* uniqueItems: pairwise for small arrays, else by sorted hashes, so that
 * only items with equal hashes are compared. */
static void check_unique(vctx *c, const snode *n, const cJSON *v, const step *at, size_t count)
{
    size_t a = 0, b = 0;
    bool dup = false;
    if (count <= UNIQUE_PAIRWISE) {
        size_t i = 0;
        for (const cJSON *x = v->child; x && !dup; x = x->next, i++) {
            size_t j = i + 1;
            for (const cJSON *y = x->next; y && !dup; y = y->next, j++)
                if (json_equal(c->sh, x, y, LOOM_MAX_NESTING)) {
                    dup = true;
                    a = i;
                    b = j;
                }
        }
    } else {
        hitem *h = malloc(count * sizeof *h);
        if (!h) {
            report(c, at, n, "uniqueItems", "out of memory");
            return;
        }
        size_t i = 0;
        for (const cJSON *x = v->child; x; x = x->next, i++)
            h[i] = (hitem){json_hash(x, LOOM_MAX_NESTING), i, x};
        spend(c->sh, count);
        qsort(h, count, sizeof *h, cmp_hitem);
        for (i = 0; i < count && !dup && !c->sh->over; i++)
            for (size_t j = i + 1; j < count && h[j].hash == h[i].hash && !dup; j++)
                if (json_equal(c->sh, h[i].v, h[j].v, LOOM_MAX_NESTING)) {
                    dup = true;
                    a = h[i].index;
                    b = h[j].index;
                }
        free(h);
    }
    if (dup && !c->sh->over)
        report_fmt(c, at, n, "uniqueItems",
                   "must not contain duplicates (items %zu and %zu are equal)", a < b ? a : b,
                   a < b ? b : a);
}

static void check_contains(vctx *c, const snode *n, const cJSON *v, const step *at, int depth,
                           evalset *ev)
{
    uint64_t found = 0;
    size_t i = 0;
    for (const cJSON *ch = v->child; ch && !c->sh->over; ch = ch->next, i++) {
        step st = {at, NULL, i};
        if (passes(c, n->contains, ch, &st, depth + 1, NULL)) {
            found++;
            mark(ev, i);
        }
    }
    if (c->sh->over)
        return;
    if (found < n->min_contains && check(c, at, n, C_MIN_CONTAINS))
        return;
    if (n->msg[C_MAX_CONTAINS] && found > n->max_contains)
        check(c, at, n, C_MAX_CONTAINS);
}

static void check_array(vctx *c, const snode *n, const cJSON *v, const step *at, int depth,
                        evalset *ev)
{
    size_t count = 0;
    if (n->msg[C_MIN_ITEMS] || n->msg[C_MAX_ITEMS] || n->unique)
        count = child_count(v);
    if (n->msg[C_MIN_ITEMS] && count < n->min_items && check(c, at, n, C_MIN_ITEMS))
        return;
    if (n->msg[C_MAX_ITEMS] && count > n->max_items && check(c, at, n, C_MAX_ITEMS))
        return;
    if (n->unique && count > 1) {
        check_unique(c, n, v, at, count);
        if (halted(c))
            return;
    }
    size_t i = 0;
    for (const cJSON *ch = v->child; ch && !halted(c); ch = ch->next, i++) {
        step st = {at, NULL, i};
        const snode *sub = i < n->prefix.n ? n->prefix.v[i] : n->items;
        if (sub) {
            validate_node(c, sub, ch, &st, depth + 1, NULL);
            mark(ev, i);
        } else {
            check_depth(c, ch, &st, depth + 1);
        }
    }
    if (n->contains && !halted(c))
        check_contains(c, n, v, at, depth, ev);
}

/* strcmp, deciding on the first byte without a call when they differ
 * (member names mostly differ there). */
static inline int name_cmp(const char *a, const char *b)
{
    int d = (unsigned char)a[0] - (unsigned char)b[0];
    return d || !a[0] ? d : strcmp(a + 1, b + 1);
}

static bool has_member(const cJSON *obj, const char *name)
{
    for (const cJSON *m = obj->child; m; m = m->next)
        if (name_cmp(str_or_empty(m->string), name) == 0)
            return true;
    return false;
}

/* Equality of two NUL-terminated strings, inline (names are short). */
static inline bool same_name(const char *a, const char *b)
{
    for (; *a == *b; a++, b++)
        if (!*a)
            return true;
    return false;
}

static long prop_search(const snode *n, const char *name);

/* The index of name in n->props, or -1: a scan of the first bytes for a
 * few properties, else a binary search. */
static inline long prop_index(const snode *n, const char *name)
{
    if (n->nprops > 8)
        return prop_search(n, name);
    for (size_t k = 0; k < n->nprops; k++)
        if (n->props[k].name[0] == name[0] &&
            (!name[0] || same_name(n->props[k].name + 1, name + 1)))
            return (long)k;
    return -1;
}

static long prop_search(const snode *n, const char *name)
{
    size_t lo = 0, hi = n->nprops;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = name_cmp(name, n->props[mid].name);
        if (cmp == 0)
            return (long)mid;
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

static void check_dependencies(vctx *c, const snode *n, const cJSON *v, const step *at, int depth,
                               evalset *ev)
{
    for (size_t i = 0; i < n->ndep_required && !halted(c); i++) {
        if (!has_member(v, n->dep_required[i].name))
            continue;
        for (const cJSON *r = n->dep_required[i].names->child; r; r = r->next)
            if (!has_member(v, r->valuestring) &&
                report_fmt(c, at, n, "dependentRequired",
                           "property '%s' is required when '%s' is present", r->valuestring,
                           n->dep_required[i].name))
                return;
    }
    for (size_t i = 0; i < n->ndep_schemas && !halted(c); i++)
        if (has_member(v, n->dep_schemas[i].name))
            validate_node(c, n->dep_schemas[i].schema, v, at, depth, ev);
}

/* A member's subschema: `false` reports "property 'x' is not allowed" on
 * the object, anything else is validated on the member. */
static inline __attribute__((always_inline)) void check_member_with(vctx *c, const snode *sub,
                                                                    const cJSON *m, const step *at,
                                                                    const step *st, int depth)
{
    if (sub->reject_all)
        report_fmt(c, at, sub, NULL, "property '%s' is not allowed", st->key);
    else
        validate_node(c, sub, m, st, depth + 1, NULL);
}

/* One member: properties (prop: its index in n->props, or -1), then
 * patternProperties, else additionalProperties. */
static void check_member(vctx *c, const snode *n, const cJSON *m, long prop, size_t i,
                         const step *at, int depth, evalset *ev)
{
    const char *name = str_or_empty(m->string);
    step st = {at, name, 0};
    bool covered = false;
    if (prop >= 0) {
        covered = true;
        check_member_with(c, n->props[prop].schema, m, at, &st, depth);
    }
    for (size_t k = 0; k < n->npatterns && !halted(c); k++) {
        if (!loom__regex_search(n->patterns[k].re, name, strlen(name)))
            continue;
        covered = true;
        check_member_with(c, n->patterns[k].schema, m, at, &st, depth);
    }
    if (!covered && n->additional) {
        covered = true;
        check_member_with(c, n->additional, m, at, &st, depth);
    }
    if (covered)
        mark(ev, i);
    else
        check_depth(c, m, &st, depth + 1);
}

/* required. With required_prop, one pass over the members finds the
 * properties present and caches the first 64 members' indices in props
 * (*cached of them) for the member loop. */
static bool check_required(vctx *c, const snode *n, const cJSON *v, const step *at,
                           int8_t cache[64], size_t *cached)
{
    uint64_t present = 0;
    if (n->required_prop) {
        size_t i = 0;
        for (const cJSON *m = v->child; m; m = m->next, i++) {
            long k = prop_index(n, str_or_empty(m->string));
            if (k >= 0)
                present |= UINT64_C(1) << k;
            if (i < 64)
                cache[i] = (int8_t)k;
        }
        *cached = i < 64 ? i : 64;
    }
    for (size_t i = 0; i < n->nrequired; i++) {
        int k = n->required_prop ? n->required_prop[i] : -1;
        bool there = k >= 0 ? (present >> k) & 1 : has_member(v, n->required[i]);
        if (!there && report(c, at, n, "required", n->required_msg[i]))
            return false;
    }
    return true;
}

static void check_object(vctx *c, const snode *n, const cJSON *v, const step *at, int depth,
                         evalset *ev)
{
    int8_t cache[64];
    size_t cached = 0;
    if (n->nrequired && !check_required(c, n, v, at, cache, &cached))
        return;
    if (n->msg[C_MIN_PROPS] || n->msg[C_MAX_PROPS]) {
        size_t count = child_count(v);
        if (n->msg[C_MIN_PROPS] && count < n->min_props && check(c, at, n, C_MIN_PROPS))
            return;
        if (n->msg[C_MAX_PROPS] && count > n->max_props && check(c, at, n, C_MAX_PROPS))
            return;
    }
    if (n->deps)
        check_dependencies(c, n, v, at, depth, ev);
    size_t i = 0;
    for (const cJSON *m = v->child; m && !halted(c); m = m->next, i++) {
        long prop = i < cached ? cache[i] : n->nprops ? prop_index(n, str_or_empty(m->string)) : -1;
        check_member(c, n, m, prop, i, at, depth, ev);
        if (n->names && !halted(c)) {
            cJSON name = {.type = cJSON_String, .valuestring = (char *)str_or_empty(m->string)};
            if (!passes(c, n->names, &name, at, depth + 1, NULL) && !c->sh->over)
                report_fmt(c, at, n, "propertyNames", "property name '%s' is not allowed",
                           name.valuestring);
        }
    }
}

static void check_in_place(vctx *c, const snode *n, const cJSON *v, const step *at, int depth,
                           evalset *ev)
{
    for (size_t i = 0; i < n->all_of.n && !halted(c); i++)
        validate_node(c, n->all_of.v[i], v, at, depth, ev);
    if (n->any_of.n && !halted(c)) {
        bool any = false;
        for (size_t i = 0; i < n->any_of.n && (!any || ev) && !c->sh->over; i++)
            any |= passes(c, n->any_of.v[i], v, at, depth, ev);
        if (!any && !c->sh->over &&
            report(c, at, n, "anyOf", "must match at least one schema in 'anyOf'"))
            return;
    }
    if (n->one_of.n && !halted(c)) {
        size_t matched = 0;
        for (size_t i = 0; i < n->one_of.n && !c->sh->over; i++)
            matched += passes(c, n->one_of.v[i], v, at, depth, ev);
        if (matched != 1 && !c->sh->over &&
            report_fmt(c, at, n, "oneOf", "must match exactly one schema in 'oneOf' (matches %zu)",
                       matched))
            return;
    }
    if (n->not_ && !halted(c) && passes(c, n->not_, v, at, depth, NULL) && !c->sh->over &&
        report(c, at, n, "not", "must not match the schema in 'not'"))
        return;
    if (n->if_ && !halted(c)) {
        bool ok = passes(c, n->if_, v, at, depth, ev);
        const snode *branch = ok ? n->then_ : n->else_;
        if (branch && !c->sh->over)
            validate_node(c, branch, v, at, depth, ev);
    }
}

static void check_unevaluated(vctx *c, const snode *n, const cJSON *v, unsigned vt, const step *at,
                              int depth, evalset *ev)
{
    const snode *u = vt & T_OBJECT ? n->uneval_props : n->uneval_items;
    size_t i = 0;
    for (const cJSON *ch = v->child; ch && !halted(c); ch = ch->next, i++) {
        if (marked(ev, i))
            continue;
        mark(ev, i);
        step st = {at, vt & T_OBJECT ? str_or_empty(ch->string) : NULL, i};
        if (vt & T_OBJECT)
            check_member_with(c, u, ch, at, &st, depth);
        else
            validate_node(c, u, ch, &st, depth + 1, NULL);
    }
}

/* $dynamicRef's target: the outermost resource in the dynamic scope that
 * has the dynamic anchor, else the static target. */
static const snode *dynamic_target(const vctx *c, const snode *n)
{
    const snode *found = n->dynref;
    for (const scope *f = c->scope; f; f = f->up)
        for (size_t i = 0; i < f->res->ndyn; i++)
            if (strcmp(f->res->dyn[i].name, n->dyn_name) == 0)
                found = f->res->dyn[i].node;
    return found;
}

/* enum and const. False when the walk should stop. Out of line, so that
 * validate_node stays small. */
__attribute__((noinline)) static bool check_enum_const(vctx *c, const snode *n, const cJSON *v,
                                                       const step *at)
{
    if (n->msg[C_ENUM]) {
        const cJSON *e = n->enum_values->child;
        while (e && !json_equal(c->sh, e, v, LOOM_MAX_NESTING))
            e = e->next;
        if (!e && !c->sh->over && check(c, at, n, C_ENUM))
            return false;
    }
    if (n->msg[C_CONST] && !json_equal(c->sh, n->const_value, v, LOOM_MAX_NESTING) &&
        !c->sh->over && check(c, at, n, C_CONST))
        return false;
    return true;
}

/* enum, const and the number and string keywords. False when the walk
 * should stop. */
static inline bool check_value(vctx *c, const snode *n, const cJSON *v, unsigned vt, const step *at)
{
    if (n->eq_kw && !check_enum_const(c, n, v, at))
        return false;
    if ((vt & T_NUMBER) && n->num_kw)
        check_number(c, n, v, at);
    else if ((vt & T_STRING) && n->str_kw)
        check_string(c, n, v, at);
    return true;
}

/* validate_node for a scalar against a leaf node (n->leaf): no subschema
 * is evaluated, so no scope, evaluated set or nesting bookkeeping. */
static inline __attribute__((always_inline)) void
validate_leaf(vctx *c, const snode *n, const cJSON *v, unsigned vt, const step *at)
{
    if (!spend(c->sh, 1)) {
        c->count++;
        c->stop = true;
        return;
    }
    if (!type_ok(n, v, vt)) {
        report_fmt(c, at, n, "type", "expected %s, got %s", n->type_msg, value_type_name(v));
        return;
    }
    check_value(c, n, v, vt, at);
}

/* Every keyword but type and unevaluated*, in the order of their cost. */
static void check_keywords(vctx *c, const snode *n, const cJSON *v, unsigned vt, const step *at,
                           int depth, evalset *ev)
{
    unsigned errors = c->count;
    if (n->ref) {
        validate_node(c, n->ref, v, at, depth, ev);
        if (halted(c))
            return;
    }
    if (n->dynref) {
        validate_node(c, n->dyn_name ? dynamic_target(c, n) : n->dynref, v, at, depth, ev);
        if (halted(c))
            return;
    }
    /* A reference that passed on v walked all of it, depth included. */
    bool walked = (n->ref || n->dynref) && c->count == errors;
    if (!check_value(c, n, v, vt, at))
        return;
    if (vt & T_ARRAY) {
        if (n->arr_kw)
            check_array(c, n, v, at, depth, ev);
        else if (!walked)
            check_depth(c, v, at, depth); /* nothing about its items: only their depth */
    } else if (vt & T_OBJECT) {
        if (n->obj_kw)
            check_object(c, n, v, at, depth, ev);
        else if (!walked)
            check_depth(c, v, at, depth);
    }
    if (n->in_place && !halted(c))
        check_in_place(c, n, v, at, depth, ev);
}

/* validate_node for everything but a scalar against a leaf node. */
__attribute__((noinline)) static void validate_full(vctx *c, const snode *n, const cJSON *v,
                                                    unsigned vt, const step *at, int depth,
                                                    evalset *ev)
{
    vshared *sh = c->sh;
    if (!sh->over && sh->calls >= LOOM__SCHEMA_MAX_CALLS) {
        sh->over = true;
        sh->why = CALLS_MSG;
    }
    if (!spend(sh, 1)) {
        c->count++;
        c->stop = true;
        return;
    }
    if (n->reject_all) {
        report(c, at, n, NULL, "value is not allowed");
        return;
    }
    if (!type_ok(n, v, vt)) {
        /* The other keywords would only repeat the same complaint. */
        report_fmt(c, at, n, "type", "expected %s, got %s", n->type_msg, value_type_name(v));
        return;
    }
    if ((vt & (T_OBJECT | T_ARRAY)) && depth >= LOOM_MAX_NESTING) {
        report(c, at, NULL, NULL, NESTING_MSG);
        return;
    }
    const snode *u = vt & T_OBJECT ? n->uneval_props : vt & T_ARRAY ? n->uneval_items : NULL;
    evalset local;
    if (u && !evalset_init(&local, child_count(v))) {
        report(c, at, n, NULL, "out of memory");
        return;
    }
    scope frame;
    const scope *outer = c->scope;
    if (c->dynamic && (!outer || outer->res != n->res)) {
        frame = (scope){n->res, outer};
        c->scope = &frame;
    }
    sh->calls++;
    check_keywords(c, n, v, vt, at, depth, u ? &local : ev);
    if (u) {
        if (!halted(c))
            check_unevaluated(c, n, v, vt, at, depth, &local);
        if (ev)
            evalset_merge(ev, &local);
        evalset_fini(&local);
    }
    sh->calls--;
    c->scope = outer;
}

/* depth = containers enclosing v. ev (optional) collects the members of v
 * that n evaluates, for an enclosing unevaluated* keyword. */
static inline __attribute__((always_inline)) void
validate_node(vctx *c, const snode *n, const cJSON *v, const step *at, int depth, evalset *ev)
{
    unsigned vt = value_type(v);
    if (n->leaf && !(vt & (T_OBJECT | T_ARRAY)) && c->sh->calls < LOOM__SCHEMA_MAX_CALLS)
        validate_leaf(c, n, v, vt, at);
    else
        validate_full(c, n, v, vt, at, depth, ev);
}

bool loom__schema_validate(const loom__schema *s, const cJSON *value, cJSON **details)
{
    if (details)
        *details = NULL;
    if (!s)
        return true;
    /* An absent value is validated as JSON null. */
    cJSON absent = {.type = cJSON_NULL};
    vshared sh = {0};
    vctx c = {.want = details != NULL, .sh = &sh, .dynamic = s->dynamic};
    step root = {0};
    validate_node(&c, s->root, value ? value : &absent, &root, 0, NULL);
    if (sh.over) {
        /* The bound's own detail replaces the last one when they are full. */
        if (c.details && cJSON_GetArraySize(c.details) >= LOOM__SCHEMA_MAX_DETAILS)
            cJSON_DeleteItemFromArray(c.details, LOOM__SCHEMA_MAX_DETAILS - 1);
        c.count = 0;
        report(&c, &root, NULL, NULL, sh.why);
    }
    if (details)
        *details = c.details;
    else
        cJSON_Delete(c.details);
    return c.count == 0;
}

/* ------------------------------------------------------------------------ */
/* Indexing                                                                  */

enum sub_kind { SUB_NONE, SUB_ONE, SUB_MAP, SUB_LIST };

/* Where a keyword holds subschemas. */
static enum sub_kind sub_kind(const char *key)
{
    static const char *const one[] = {"additionalProperties",
                                      "items",
                                      "contains",
                                      "propertyNames",
                                      "not",
                                      "if",
                                      "then",
                                      "else",
                                      "unevaluatedItems",
                                      "unevaluatedProperties",
                                      "contentSchema"};
    static const char *const map[] = {"properties", "patternProperties", "$defs",
                                      "dependentSchemas"};
    static const char *const list[] = {"allOf", "anyOf", "oneOf", "prefixItems"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(one); i++)
        if (strcmp(key, one[i]) == 0)
            return SUB_ONE;
    for (size_t i = 0; i < LOOM__ARRAY_LEN(map); i++)
        if (strcmp(key, map[i]) == 0)
            return SUB_MAP;
    for (size_t i = 0; i < LOOM__ARRAY_LEN(list); i++)
        if (strcmp(key, list[i]) == 0)
            return SUB_LIST;
    return SUB_NONE;
}

static bool named_add(named **v, size_t *n, size_t *cap, char *uri, const cJSON *node)
{
    if (!uri)
        return false;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        named *nv = realloc(*v, ncap * sizeof *nv);
        if (!nv)
            return false;
        *v = nv;
        *cap = ncap;
    }
    (*v)[(*n)++] = (named){uri, node};
    return true;
}

static const named *named_find(const named *v, size_t n, const char *uri)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].uri, uri) == 0)
            return &v[i];
    return NULL;
}

/* Appends "/" and key escaped as a JSON Pointer token. */
static void push_token(loom__sbuf *b, const char *key)
{
    loom__sbuf_puts(b, "/");
    for (const char *k = key; *k; k++) {
        if (*k == '~')
            loom__sbuf_puts(b, "~0");
        else if (*k == '/')
            loom__sbuf_puts(b, "~1");
        else
            loom__sbuf_add(b, k, 1);
    }
}

static void pop_to(loom__sbuf *b, size_t len)
{
    b->len = len;
    if (b->p)
        b->p[len] = '\0';
}

static void scan(sindex *ix, const cJSON *j, const char *base, loom__sbuf *loc, int depth);

static void scan_member(sindex *ix, const cJSON *m, const char *base, loom__sbuf *loc, int depth)
{
    enum sub_kind kind = sub_kind(str_or_empty(m->string));
    if (kind == SUB_NONE)
        return;
    size_t mark_len = loc->len;
    push_token(loc, str_or_empty(m->string));
    if (kind == SUB_ONE) {
        scan(ix, m, base, loc, depth + 1);
    } else if ((kind == SUB_MAP && cJSON_IsObject(m)) || (kind == SUB_LIST && cJSON_IsArray(m))) {
        size_t i = 0;
        for (const cJSON *e = m->child; e; e = e->next, i++) {
            size_t len = loc->len;
            if (kind == SUB_MAP) {
                push_token(loc, str_or_empty(e->string));
            } else {
                char num[24];
                snprintf(num, sizeof num, "/%zu", i);
                loom__sbuf_puts(loc, num);
            }
            scan(ix, e, base, loc, depth + 1);
            pop_to(loc, len);
        }
    }
    pop_to(loc, mark_len);
}

/* Records j (a schema at loc whose enclosing base URI is base), its $id,
 * its anchors, and its subschemas. */
static void scan(sindex *ix, const cJSON *j, const char *base, loom__sbuf *loc, int depth)
{
    if (ix->oom || depth > LOOM__SCHEMA_MAX_DEPTH || (!cJSON_IsObject(j) && !cJSON_IsBool(j)) ||
        pmap_get(&ix->entries, j))
        return;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "$id");
    if (cJSON_IsString(id) && id->valuestring) {
        char *u = loom__uri_resolve(base, id->valuestring);
        size_t n = u ? strlen(u) : 0;
        if (n && u[n - 1] == '#')
            u[n - 1] = '\0'; /* an empty fragment names the resource itself */
        if (!named_add(&ix->res, &ix->nres, &ix->capres, u, j)) {
            free(u);
            ix->oom = true;
            return;
        }
        base = u;
    }
    ientry *e = malloc(sizeof *e);
    if (e)
        *e = (ientry){base, loom__strdup(loc->p ? loc->p : "")};
    if (!e || !e->loc || loc->oom || !pmap_put(&ix->entries, j, e)) {
        if (e)
            free(e->loc);
        free(e);
        ix->oom = true;
        return;
    }
    static const char *const anchor_kws[] = {"$anchor", "$dynamicAnchor"};
    for (size_t k = 0; k < LOOM__ARRAY_LEN(anchor_kws); k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, anchor_kws[k]);
        if (!cJSON_IsString(a) || !a->valuestring)
            continue;
        char *u = loom__asprintf("%s#%s", base, a->valuestring);
        char *du = k == 1 && u ? loom__strdup(u) : NULL;
        if (!named_add(&ix->anchors, &ix->nanchors, &ix->capanchors, u, j)) {
            free(u);
            free(du);
            ix->oom = true;
            return;
        }
        if (k == 1 && !named_add(&ix->danchors, &ix->ndanchors, &ix->capdanchors, du, j)) {
            free(du);
            ix->oom = true;
            return;
        }
    }
    for (const cJSON *m = cJSON_IsObject(j) ? j->child : NULL; m; m = m->next)
        scan_member(ix, m, base, loc, depth);
}

/* Indexes doc under uri (a copy is kept) with locations prefixed by
 * prefix. */
static bool index_doc(sindex *ix, const cJSON *doc, const char *uri, const char *prefix)
{
    char *u = loom__strdup(uri);
    if (!named_add(&ix->res, &ix->nres, &ix->capres, u, doc)) {
        free(u);
        return false;
    }
    loom__sbuf loc = {0};
    loom__sbuf_puts(&loc, prefix);
    scan(ix, doc, u, &loc, 1);
    bool ok = !loc.oom && !ix->oom;
    free(loc.p);
    return ok;
}

static void index_fini(sindex *ix)
{
    for (size_t i = 0; i < ix->entries.cap; i++) {
        ientry *e = ix->entries.s[i].val;
        if (ix->entries.s[i].key) {
            free(e->loc);
            free(e);
        }
    }
    free(ix->entries.s);
    for (size_t i = 0; i < ix->nres; i++)
        free(ix->res[i].uri);
    for (size_t i = 0; i < ix->nanchors; i++)
        free(ix->anchors[i].uri);
    for (size_t i = 0; i < ix->ndanchors; i++)
        free(ix->danchors[i].uri);
    free(ix->danchors);
    free(ix->res);
    free(ix->anchors);
    memset(ix, 0, sizeof *ix);
}

/* ------------------------------------------------------------------------ */
/* Compilation                                                               */

typedef struct cctx {
    char *err;
    size_t errlen;
    loom_err rc;
    const char *prefix; /* location of the schema being compiled from */
    loom__schema *s;
    const sindex *ix, *six; /* the document's index, the set's (or NULL) */
    unsigned flags;
    pmap memo;     /* cJSON -> snode */
    pmap resmap;   /* base URI (the index's pointer) -> sres */
    pmap attached; /* $dynamicAnchor schemas already in their sres */
    snode **queue; /* $ref targets to compile */
    size_t nqueue, capqueue;
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
    if (!at->up && !c->prefix[0]) {
        snprintf(c->err, c->errlen, "schema: %s at the root", reason);
        return;
    }
    char *ptr = at->up ? pointer_of(at) : NULL;
    snprintf(c->err, c->errlen, "schema: %s at %s%s", reason, c->prefix, ptr ? ptr : "");
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

static const ientry *entry_of(const cctx *c, const cJSON *j)
{
    const ientry *e = pmap_get(&c->ix->entries, j);
    if (!e && c->six)
        e = pmap_get(&c->six->entries, j);
    return e;
}

static sres *res_for(cctx *c, const char *base);

/* A new, empty node for j, in the arena and the memo. base and loc are
 * used when the index does not know j (a $ref to an odd place). */
static snode *node_new(cctx *c, const cJSON *j, const char *base, const char *loc)
{
    loom__schema *s = c->s;
    if (s->nnodes == s->capnodes) {
        size_t ncap = s->capnodes ? s->capnodes * 2 : 16;
        snode **nv = realloc(s->nodes, ncap * sizeof *nv);
        if (!nv) {
            coom(c);
            return NULL;
        }
        s->nodes = nv;
        s->capnodes = ncap;
    }
    snode *n = calloc(1, sizeof *n);
    const ientry *e = entry_of(c, j);
    if (n)
        n->loc = loom__strdup(e ? e->loc : loc);
    if (!n || !n->loc || !pmap_put(&c->memo, j, n)) {
        if (n)
            free(n->loc);
        free(n);
        coom(c);
        return NULL;
    }
    s->nodes[s->nnodes++] = n;
    n->src = j;
    n->base = e ? e->base : base;
    if (!(n->res = res_for(c, n->base))) {
        coom(c);
        return NULL;
    }
    return n;
}

static bool compile_body(cctx *c, snode *n, const cJSON *j, const step *at, int depth);

/* The resource of base URI base (a pointer from an index). */
static sres *res_for(cctx *c, const char *base)
{
    sres *r = pmap_get(&c->resmap, base);
    if (r)
        return r;
    loom__schema *s = c->s;
    if (s->nres == s->capres) {
        size_t ncap = s->capres ? s->capres * 2 : 8;
        sres **nv = realloc(s->res, ncap * sizeof *nv);
        if (!nv)
            return NULL;
        s->res = nv;
        s->capres = ncap;
    }
    if (!(r = calloc(1, sizeof *r)))
        return NULL;
    s->res[s->nres++] = r;
    return pmap_put(&c->resmap, base, r) ? r : NULL;
}

/* The node of the subschema j of parent (NULL for a root) at `at`,
 * compiled now unless it already exists (then it is compiled or queued).
 * depth = 1 for a root. */
static snode *compile_sub(cctx *c, const snode *parent, const cJSON *j, const step *at, int depth)
{
    snode *n = pmap_get(&c->memo, j);
    if (n)
        return n;
    if (!(n = node_new(c, j, parent ? parent->base : "", parent ? parent->loc : "")))
        return NULL;
    return compile_body(c, n, j, at, depth) ? n : NULL;
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
    KW_MULTIPLE,
    KW_MIN_PROPS,
    KW_MAX_PROPS,
    KW_UNIQUE,
    KW_CONTAINS,
    KW_MIN_CONTAINS,
    KW_MAX_CONTAINS,
    KW_PREFIX,
    KW_PATTERN_PROPS,
    KW_NAMES,
    KW_DEP_REQUIRED,
    KW_DEP_SCHEMAS,
    KW_UNEVAL_PROPS,
    KW_UNEVAL_ITEMS,
    KW_ALL_OF,
    KW_ANY_OF,
    KW_ONE_OF,
    KW_NOT,
    KW_IF,
    KW_THEN,
    KW_ELSE,
    KW_REF,
    KW_DEFS,
    KW_FORMAT,
    KW_DYNAMIC_REF,
    KW_STRING,     /* an annotation that must be a string */
    KW_ANNOTATION, /* an annotation of any value */
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
    {"multipleOf", KW_MULTIPLE},
    {"minProperties", KW_MIN_PROPS},
    {"maxProperties", KW_MAX_PROPS},
    {"uniqueItems", KW_UNIQUE},
    {"contains", KW_CONTAINS},
    {"minContains", KW_MIN_CONTAINS},
    {"maxContains", KW_MAX_CONTAINS},
    {"prefixItems", KW_PREFIX},
    {"patternProperties", KW_PATTERN_PROPS},
    {"propertyNames", KW_NAMES},
    {"dependentRequired", KW_DEP_REQUIRED},
    {"dependentSchemas", KW_DEP_SCHEMAS},
    {"unevaluatedProperties", KW_UNEVAL_PROPS},
    {"unevaluatedItems", KW_UNEVAL_ITEMS},
    {"allOf", KW_ALL_OF},
    {"anyOf", KW_ANY_OF},
    {"oneOf", KW_ONE_OF},
    {"not", KW_NOT},
    {"if", KW_IF},
    {"then", KW_THEN},
    {"else", KW_ELSE},
    {"$ref", KW_REF},
    {"$defs", KW_DEFS},
    {"format", KW_FORMAT},
    {"$dynamicRef", KW_DYNAMIC_REF},
    /* Annotations: accepted, kept in the document, not asserted. */
    {"$schema", KW_STRING},
    {"$id", KW_STRING},
    {"$anchor", KW_STRING},
    {"$dynamicAnchor", KW_STRING},
    {"$comment", KW_STRING},
    {"title", KW_STRING},
    {"description", KW_STRING},
    {"contentEncoding", KW_STRING},
    {"contentMediaType", KW_STRING},
    {"$vocabulary", KW_ANNOTATION},
    {"default", KW_ANNOTATION},
    {"examples", KW_ANNOTATION},
    {"deprecated", KW_ANNOTATION},
    {"readOnly", KW_ANNOTATION},
    {"writeOnly", KW_ANNOTATION},
    {"contentSchema", KW_ANNOTATION},
};

_Static_assert(LOOM__ARRAY_LEN(keywords) <= 64, "the seen-keyword set is a uint64_t");

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

/* properties and dependentSchemas: an object of schemas. */
static bool compile_schema_map(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                               int depth, sprop **out, size_t *nout)
{
    if (!cJSON_IsObject(j)) {
        cfail(c, at, "'%s' must be an object", key);
        return false;
    }
    size_t count = child_count(j);
    if (count == 0)
        return true;
    if (!(*out = calloc(count, sizeof **out))) {
        coom(c);
        return false;
    }
    step kw = {at, key, 0};
    for (const cJSON *m = j->child; m; m = m->next) {
        const char *name = str_or_empty(m->string);
        step st = {&kw, name, 0};
        snode *sub = compile_sub(c, n, m, &st, depth + 1);
        if (!sub)
            return false;
        (*out)[(*nout)++] = (sprop){name, sub};
    }
    qsort(*out, *nout, sizeof **out, cmp_props);
    for (size_t i = 1; i < *nout; i++) {
        if (strcmp((*out)[i - 1].name, (*out)[i].name) == 0) {
            cfail(c, at, "property '%s' appears twice in '%s'", (*out)[i].name, key);
            return false;
        }
    }
    return true;
}

static bool compile_defs(cctx *c, snode *n, const cJSON *j, const step *at, int depth)
{
    if (!cJSON_IsObject(j)) {
        cfail(c, at, "'$defs' must be an object");
        return false;
    }
    step kw = {at, "$defs", 0};
    for (const cJSON *m = j->child; m; m = m->next) {
        step st = {&kw, str_or_empty(m->string), 0};
        if (!compile_sub(c, n, m, &st, depth + 1))
            return false;
    }
    return true;
}

/* allOf, anyOf, oneOf, prefixItems: a non-empty array of schemas. */
static bool compile_list(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                         int depth, slist *out)
{
    if (!cJSON_IsArray(j) || !j->child) {
        cfail(c, at, "'%s' must be a non-empty array of schemas", key);
        return false;
    }
    size_t count = child_count(j);
    if (!(out->v = calloc(count, sizeof *out->v))) {
        coom(c);
        return false;
    }
    step kw = {at, key, 0};
    for (const cJSON *e = j->child; e; e = e->next) {
        step st = {&kw, NULL, out->n};
        if (!(out->v[out->n] = compile_sub(c, n, e, &st, depth + 1)))
            return false;
        out->n++;
    }
    return true;
}

static bool regex_of(cctx *c, const char *what, const char *pattern, const step *at,
                     loom__regex **out)
{
    char why[160];
    loom_err e = loom__regex_compile(out, pattern, why, sizeof why);
    if (e == LOOM_ENOMEM) {
        coom(c);
        return false;
    }
    if (e != LOOM_OK) {
        cfail(c, at, "invalid %s '%s': %s", what, pattern, why);
        return false;
    }
    return true;
}

static bool compile_pattern_props(cctx *c, snode *n, const cJSON *j, const step *at, int depth)
{
    if (!cJSON_IsObject(j)) {
        cfail(c, at, "'patternProperties' must be an object");
        return false;
    }
    size_t count = child_count(j);
    if (count && !(n->patterns = calloc(count, sizeof *n->patterns))) {
        coom(c);
        return false;
    }
    step kw = {at, "patternProperties", 0};
    for (const cJSON *m = j->child; m; m = m->next) {
        step st = {&kw, str_or_empty(m->string), 0};
        spattern *p = &n->patterns[n->npatterns];
        if (!regex_of(c, "pattern in 'patternProperties'", str_or_empty(m->string), at, &p->re))
            return false;
        n->npatterns++;
        if (!(p->schema = compile_sub(c, n, m, &st, depth + 1)))
            return false;
    }
    return true;
}

static int cmp_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* An array of unique strings (required, dependentRequired's values);
 * returns the count or -1. */
static long string_set(cctx *c, const cJSON *j, const char *key, const step *at)
{
    if (!cJSON_IsArray(j)) {
        cfail(c, at, "'%s' must be an array of strings", key);
        return -1;
    }
    size_t count = 0;
    for (const cJSON *e = j->child; e; e = e->next, count++) {
        if (!cJSON_IsString(e) || !e->valuestring) {
            cfail(c, at, "'%s' must be an array of strings", key);
            return -1;
        }
    }
    if (count < 2)
        return (long)count;
    const char **sorted = calloc(count, sizeof *sorted);
    if (!sorted) {
        coom(c);
        return -1;
    }
    size_t i = 0;
    for (const cJSON *e = j->child; e; e = e->next)
        sorted[i++] = e->valuestring;
    qsort(sorted, count, sizeof *sorted, cmp_strings);
    long rc = (long)count;
    for (i = 1; i < count && rc >= 0; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            cfail(c, at, "'%s' lists '%s' twice", key, sorted[i]);
            rc = -1;
        }
    }
    free(sorted);
    return rc;
}

static bool compile_required(cctx *c, snode *n, const cJSON *j, const step *at)
{
    long count = string_set(c, j, "required", at);
    if (count <= 0)
        return count == 0;
    n->required = calloc((size_t)count, sizeof *n->required);
    n->required_msg = calloc((size_t)count, sizeof *n->required_msg);
    if (!n->required || !n->required_msg) {
        coom(c);
        return false;
    }
    for (const cJSON *e = j->child; e; e = e->next) {
        char *msg = loom__asprintf("required property '%s' is missing", e->valuestring);
        if (!msg) {
            coom(c);
            return false;
        }
        n->required[n->nrequired] = e->valuestring;
        n->required_msg[n->nrequired++] = msg;
    }
    return true;
}

static bool compile_dep_required(cctx *c, snode *n, const cJSON *j, const step *at)
{
    if (!cJSON_IsObject(j)) {
        cfail(c, at, "'dependentRequired' must be an object of string arrays");
        return false;
    }
    size_t count = child_count(j);
    if (count && !(n->dep_required = calloc(count, sizeof *n->dep_required))) {
        coom(c);
        return false;
    }
    for (const cJSON *m = j->child; m; m = m->next) {
        if (string_set(c, m, "dependentRequired", at) < 0)
            return false;
        n->dep_required[n->ndep_required++] = (sdepreq){str_or_empty(m->string), m};
    }
    return true;
}

/* minItems, maxItems, minLength, maxLength, ...: a non-negative integer. */
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

static bool compile_multiple(cctx *c, snode *n, const cJSON *j, const step *at)
{
    if (!cJSON_IsNumber(j) || !__builtin_isfinite(j->valuedouble) || !(j->valuedouble > 0)) {
        cfail(c, at, "'multipleOf' must be a number greater than 0");
        return false;
    }
    n->multiple = j->valuedouble;
    char num[40];
    format_number(num, sizeof num, n->multiple);
    return set_msg(c, &n->msg[C_MULTIPLE], loom__asprintf("must be a multiple of %s", num));
}

static bool compile_length(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                           enum check which, uint64_t *out, const char *what, const char *unit)
{
    if (!compile_count(c, j, key, at, out))
        return false;
    size_t ulen = strlen(unit);
    bool y = ulen && unit[ulen - 1] == 'y'; /* property, properties */
    return set_msg(c, &n->msg[which],
                   loom__asprintf("must %s %llu %.*s%s", what, (unsigned long long)*out,
                                  (int)(ulen - (y && *out != 1)), unit,
                                  *out == 1 ? ""
                                  : y       ? "ies"
                                            : "s"));
}

/* enum and const: keeps the value, checks its depth, formats the message. */
static bool compile_value(cctx *c, snode *n, const cJSON *j, const char *key, const step *at,
                          enum check which)
{
    if (which == C_ENUM) {
        if (!cJSON_IsArray(j)) {
            cfail(c, at, "'enum' must be an array");
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
    if (which == C_ENUM && !j->child)
        msg = loom__strdup("no value is allowed (the 'enum' is empty)");
    else if (strlen(text) <= MAX_VALUE_TEXT)
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
    if (!regex_of(c, "'pattern'", j->valuestring, at, &n->regex))
        return false;
    return set_msg(c, &n->msg[C_PATTERN],
                   loom__asprintf("must match pattern '%s'", j->valuestring));
}

static bool compile_format(cctx *c, snode *n, const cJSON *j, const step *at)
{
    if (!cJSON_IsString(j) || !j->valuestring) {
        cfail(c, at, "'format' must be a string");
        return false;
    }
    if (!(c->flags & LOOM__SCHEMA_ASSERT_FORMATS) ||
        !(n->format = loom__format_find(j->valuestring)))
        return true; /* an annotation */
    return set_msg(c, &n->msg[C_FORMAT], loom__asprintf("must be a valid %s", j->valuestring));
}

/* Decodes %XX escapes in place. */
static void percent_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (r[0] == '%' && loom__hex_digit(r[1]) >= 0 && loom__hex_digit(r[2]) >= 0) {
            *w++ = (char)(loom__hex_digit(r[1]) * 16 + loom__hex_digit(r[2]));
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

/* Follows the JSON Pointer ptr ("/a/0", decoded in place) from root. */
static const cJSON *walk_pointer(const cJSON *root, char *ptr)
{
    const cJSON *at = root;
    while (at && *ptr == '/') {
        char *tok = ptr + 1, *end = strchr(tok, '/');
        ptr = end ? end : tok + strlen(tok);
        char saved = *ptr;
        *ptr = '\0';
        char *w = tok;
        for (const char *r = tok; *r; r++) {
            if (r[0] == '~' && (r[1] == '0' || r[1] == '1')) {
                *w++ = r[1] == '0' ? '~' : '/';
                r++;
            } else {
                *w++ = *r;
            }
        }
        *w = '\0';
        if (cJSON_IsArray(at)) {
            long long idx;
            at = loom__parse_int(tok, 0, INT32_MAX, &idx) ? cJSON_GetArrayItem(at, (int)idx) : NULL;
        } else if (cJSON_IsObject(at)) {
            at = cJSON_GetObjectItemCaseSensitive(at, tok);
        } else {
            at = NULL;
        }
        *ptr = saved;
    }
    return *ptr ? NULL : at;
}

static const named *find_named(const cctx *c, bool anchor, const char *uri)
{
    const named *r = anchor ? named_find(c->ix->anchors, c->ix->nanchors, uri)
                            : named_find(c->ix->res, c->ix->nres, uri);
    if (!r && c->six)
        r = anchor ? named_find(c->six->anchors, c->six->nanchors, uri)
                   : named_find(c->six->res, c->six->nres, uri);
    return r;
}

/* The schema a reference (resolved against base) names, and the base URI
 * of its resource; NULL when nothing has that name. full is consumed. */
static const cJSON *resolve(const cctx *c, char *full, const char **base)
{
    char *hash = strchr(full, '#');
    char *frag = hash ? hash + 1 : full + strlen(full);
    if (hash)
        *hash = '\0';
    const named *r = find_named(c, false, full);
    if (!r)
        return NULL;
    *base = r->uri;
    if (!*frag)
        return r->node;
    if (*frag == '/') {
        percent_decode(frag);
        return walk_pointer(r->node, frag);
    }
    *hash = '#';
    const named *a = find_named(c, true, full);
    return a ? a->node : NULL;
}

/* The node of target (queued for compiling when new). */
static snode *node_for_target(cctx *c, const cJSON *target, const char *base, const char *loc)
{
    snode *t = pmap_get(&c->memo, target);
    if (t)
        return t;
    if (!(t = node_new(c, target, base, loc)))
        return NULL;
    if (c->nqueue == c->capqueue) {
        size_t ncap = c->capqueue ? c->capqueue * 2 : 16;
        snode **nq = realloc(c->queue, ncap * sizeof *nq);
        if (!nq) {
            coom(c);
            return NULL;
        }
        c->queue = nq;
        c->capqueue = ncap;
    }
    c->queue[c->nqueue++] = t;
    return t;
}

/* $ref and $dynamicRef. A $dynamicRef whose target carries the
 * $dynamicAnchor its fragment names is dynamic; otherwise it is a $ref. */
static bool compile_ref(cctx *c, snode *n, const cJSON *j, const char *key, const step *at)
{
    bool dynamic = strcmp(key, "$dynamicRef") == 0;
    if (!cJSON_IsString(j) || !j->valuestring) {
        cfail(c, at, "'%s' must be a string", key);
        return false;
    }
    char *full = loom__uri_resolve(n->base, j->valuestring);
    if (!full) {
        coom(c);
        return false;
    }
    const char *base = "";
    const cJSON *target = resolve(c, full, &base);
    free(full);
    if (!target) {
        cfail(c, at, "cannot resolve '%s' '%s'", key, j->valuestring);
        return false;
    }
    snode *t = node_for_target(c, target, base, j->valuestring);
    if (!t)
        return false;
    if (!dynamic) {
        n->ref = t;
        return true;
    }
    n->dynref = t;
    const char *hash = strchr(j->valuestring, '#');
    const cJSON *anchor = cJSON_GetObjectItemCaseSensitive(target, "$dynamicAnchor");
    if (hash && hash[1] && hash[1] != '/' && cJSON_IsString(anchor) &&
        strcmp(anchor->valuestring, hash + 1) == 0) {
        if (!(n->dyn_name = loom__strdup(hash + 1))) {
            coom(c);
            return false;
        }
        c->s->dynamic = true;
    }
    return true;
}

/* The slot of a keyword that holds one schema, or NULL. */
static snode **single_slot(snode *n, enum kw kw)
{
    switch (kw) {
    case KW_ADDITIONAL:
        return &n->additional;
    case KW_ITEMS:
        return &n->items;
    case KW_CONTAINS:
        return &n->contains;
    case KW_NAMES:
        return &n->names;
    case KW_UNEVAL_PROPS:
        return &n->uneval_props;
    case KW_UNEVAL_ITEMS:
        return &n->uneval_items;
    case KW_NOT:
        return &n->not_;
    case KW_IF:
        return &n->if_;
    case KW_THEN:
        return &n->then_;
    case KW_ELSE:
        return &n->else_;
    default:
        return NULL;
    }
}

/* The slot of a keyword that holds an array of schemas, or NULL. */
static slist *list_slot(snode *n, enum kw kw)
{
    switch (kw) {
    case KW_ALL_OF:
        return &n->all_of;
    case KW_ANY_OF:
        return &n->any_of;
    case KW_ONE_OF:
        return &n->one_of;
    case KW_PREFIX:
        return &n->prefix;
    default:
        return NULL;
    }
}

static bool compile_counted(cctx *c, snode *n, enum kw kw, const char *key, const cJSON *j,
                            const step *at)
{
    switch (kw) {
    case KW_MIN_ITEMS:
        return compile_length(c, n, j, key, at, C_MIN_ITEMS, &n->min_items, "have at least",
                              "item");
    case KW_MAX_ITEMS:
        return compile_length(c, n, j, key, at, C_MAX_ITEMS, &n->max_items, "have at most", "item");
    case KW_MIN_LENGTH:
        return compile_length(c, n, j, key, at, C_MIN_LENGTH, &n->min_length, "have at least",
                              "character");
    case KW_MAX_LENGTH:
        return compile_length(c, n, j, key, at, C_MAX_LENGTH, &n->max_length, "have at most",
                              "character");
    case KW_MIN_PROPS:
        return compile_length(c, n, j, key, at, C_MIN_PROPS, &n->min_props, "have at least",
                              "property");
    case KW_MAX_PROPS:
        return compile_length(c, n, j, key, at, C_MAX_PROPS, &n->max_props, "have at most",
                              "property");
    case KW_MIN_CONTAINS:
        return compile_length(c, n, j, key, at, C_MIN_CONTAINS, &n->min_contains,
                              "contain at least", "matching item");
    default:
        return compile_length(c, n, j, key, at, C_MAX_CONTAINS, &n->max_contains, "contain at most",
                              "matching item");
    }
}

static bool compile_keyword(cctx *c, snode *n, enum kw kw, const char *key, const cJSON *j,
                            const step *at, int depth)
{
    snode **one = single_slot(n, kw);
    if (one) {
        if (kw == KW_ITEMS && cJSON_IsArray(j)) {
            cfail(c, at, "'items' must be a schema (tuples are 'prefixItems')");
            return false;
        }
        step st = {at, key, 0};
        return (*one = compile_sub(c, n, j, &st, depth + 1)) != NULL;
    }
    slist *list = list_slot(n, kw);
    if (list)
        return compile_list(c, n, j, key, at, depth, list);
    switch (kw) {
    case KW_TYPE:
        return compile_type(c, n, j, at);
    case KW_PROPERTIES:
        return compile_schema_map(c, n, j, key, at, depth, &n->props, &n->nprops);
    case KW_DEP_SCHEMAS:
        return compile_schema_map(c, n, j, key, at, depth, &n->dep_schemas, &n->ndep_schemas);
    case KW_PATTERN_PROPS:
        return compile_pattern_props(c, n, j, at, depth);
    case KW_DEFS:
        return compile_defs(c, n, j, at, depth);
    case KW_REQUIRED:
        return compile_required(c, n, j, at);
    case KW_DEP_REQUIRED:
        return compile_dep_required(c, n, j, at);
    case KW_MIN_ITEMS:
    case KW_MAX_ITEMS:
    case KW_MIN_LENGTH:
    case KW_MAX_LENGTH:
    case KW_MIN_PROPS:
    case KW_MAX_PROPS:
    case KW_MIN_CONTAINS:
    case KW_MAX_CONTAINS:
        return compile_counted(c, n, kw, key, j, at);
    case KW_UNIQUE:
        if (!cJSON_IsBool(j)) {
            cfail(c, at, "'uniqueItems' must be a boolean");
            return false;
        }
        n->unique = cJSON_IsTrue(j);
        return true;
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
    case KW_MULTIPLE:
        return compile_multiple(c, n, j, at);
    case KW_PATTERN:
        return compile_pattern(c, n, j, at);
    case KW_FORMAT:
        return compile_format(c, n, j, at);
    case KW_REF:
    case KW_DYNAMIC_REF:
        return compile_ref(c, n, j, key, at);
    case KW_STRING:
        if (!cJSON_IsString(j)) {
            cfail(c, at, "'%s' must be a string", key);
            return false;
        }
        return true;
    default:
        return true;
    }
}

/* Compiles the schema j into n. depth = 1 for a root. */
static bool compile_body(cctx *c, snode *n, const cJSON *j, const step *at, int depth)
{
    n->compiled = true;
    if (depth > LOOM__SCHEMA_MAX_DEPTH) {
        cfail(c, at, "nested deeper than %d levels", LOOM__SCHEMA_MAX_DEPTH);
        return false;
    }
    if (!cJSON_IsBool(j) && !cJSON_IsObject(j)) {
        cfail(c, at, "a schema must be an object or a boolean");
        return false;
    }
    if (cJSON_IsBool(j)) {
        n->reject_all = cJSON_IsFalse(j);
        return true;
    }
    uint64_t seen = 0;
    for (const cJSON *m = j->child; m; m = m->next) {
        const char *key = str_or_empty(m->string);
        size_t k = 0;
        while (k < LOOM__ARRAY_LEN(keywords) && strcmp(keywords[k].name, key) != 0)
            k++;
        if (k == LOOM__ARRAY_LEN(keywords)) {
            if (strncmp(key, "x-", 2) == 0)
                continue; /* an extension: an annotation */
            cfail(c, at, "unsupported keyword '%s'", key);
            return false;
        }
        if (seen & (UINT64_C(1) << k)) {
            cfail(c, at, "keyword '%s' appears twice", key);
            return false;
        }
        seen |= UINT64_C(1) << k;
        if (!compile_keyword(c, n, keywords[k].kw, key, m, at, depth))
            return false;
    }
    n->in_place = n->all_of.n || n->any_of.n || n->one_of.n || n->not_ || n->if_;
    n->deps = n->ndep_required || n->ndep_schemas;
    n->leaf = !n->ref && !n->dynref && !n->in_place;
    n->num_kw = n->msg[C_MINIMUM] || n->msg[C_MAXIMUM] || n->msg[C_XMINIMUM] ||
                n->msg[C_XMAXIMUM] || n->msg[C_MULTIPLE];
    n->eq_kw = n->msg[C_ENUM] || n->msg[C_CONST];
    n->arr_kw = n->prefix.n || n->items || n->contains || n->unique || n->msg[C_MIN_ITEMS] ||
                n->msg[C_MAX_ITEMS];
    n->obj_kw = n->nprops || n->npatterns || n->additional || n->names || n->nrequired ||
                n->msg[C_MIN_PROPS] || n->msg[C_MAX_PROPS] || n->deps;
    n->str_kw = n->msg[C_MIN_LENGTH] || n->msg[C_MAX_LENGTH] || n->regex || n->format;
    if (n->nrequired && n->nprops && n->nprops <= 64) {
        if (!(n->required_prop = malloc(n->nrequired))) {
            coom(c);
            return false;
        }
        for (size_t i = 0; i < n->nrequired; i++)
            n->required_prop[i] = (int8_t)prop_index(n, n->required[i]);
    }
    if (n->contains && !n->msg[C_MIN_CONTAINS]) {
        n->min_contains = 1;
        return set_msg(c, &n->msg[C_MIN_CONTAINS],
                       loom__strdup("must contain at least 1 matching item"));
    }
    return true;
}

static void node_free(snode *n)
{
    free(n->props);
    for (size_t i = 0; i < n->npatterns; i++)
        loom__regex_free(n->patterns[i].re);
    free(n->patterns);
    for (size_t i = 0; i < n->nrequired; i++)
        free(n->required_msg[i]);
    free(n->required);
    free(n->required_msg);
    free(n->required_prop);
    free(n->dep_required);
    free(n->dep_schemas);
    free(n->prefix.v);
    free(n->all_of.v);
    free(n->any_of.v);
    free(n->one_of.v);
    loom__regex_free(n->regex);
    for (size_t i = 0; i < C_COUNT; i++)
        free(n->msg[i]);
    free(n->type_msg);
    free(n->loc);
    free(n->dyn_name);
    free(n);
}

/* ------------------------------------------------------------------------ */
/* Sets and schemas                                                          */

static void set_err(char *err, size_t errlen, const char *fmt, ...) LOOM_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Parses text; on failure sets err. */
static cJSON *parse(const char *text, char *err, size_t errlen)
{
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithOpts(text, &end, 1);
    /* cJSON cannot tell a syntax error from a failed allocation. */
    if (!doc)
        set_err(err, errlen, "schema: malformed JSON near byte %zu",
                end ? (size_t)(end - text) : (size_t)0);
    return doc;
}

loom_err loom__schema_set_create(loom__schema_set **out, unsigned flags)
{
    if (!out)
        return LOOM_EINVAL;
    if (!(*out = calloc(1, sizeof **out)))
        return LOOM_ENOMEM;
    atomic_init(&(*out)->refs, 1);
    (*out)->flags = flags;
    return LOOM_OK;
}

loom_err loom__schema_set_add(loom__schema_set *set, const char *uri, const char *json_text,
                              char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (!set || !json_text) {
        set_err(err, errlen, "schema: no schema given");
        return LOOM_EINVAL;
    }
    cJSON *doc = parse(json_text, err, errlen);
    if (!doc)
        return LOOM_EINVAL;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "$id");
    char *name = uri                  ? loom__strdup(uri)
                 : cJSON_IsString(id) ? loom__uri_resolve("", id->valuestring)
                                      : NULL;
    size_t len = name ? strlen(name) : 0;
    if (len && name[len - 1] == '#')
        name[--len] = '\0';
    loom_err rc = LOOM_EINVAL;
    if (!uri && !cJSON_IsString(id))
        set_err(err, errlen, "schema: a shared schema needs an \"$id\"");
    else if (!len)
        set_err(err, errlen,
                name ? "schema: a shared schema needs a non-empty name" : "schema: out of memory");
    else if (named_find(set->ix.res, set->ix.nres, name))
        set_err(err, errlen, "schema: '%s' is defined twice", name);
    else
        rc = LOOM_OK;
    cJSON **docs = rc == LOOM_OK ? realloc(set->docs, (set->ndocs + 1) * sizeof *docs) : NULL;
    char *prefix = docs ? loom__asprintf("%s#", name) : NULL;
    if (docs)
        set->docs = docs;
    if (rc == LOOM_OK && (!prefix || !index_doc(&set->ix, doc, name, prefix))) {
        set_err(err, errlen, "schema: out of memory");
        rc = LOOM_ENOMEM;
    }
    if (rc == LOOM_OK)
        set->docs[set->ndocs++] = doc;
    else
        cJSON_Delete(doc);
    free(prefix);
    free(name);
    return rc;
}

void loom__schema_set_free(loom__schema_set *set)
{
    if (!set || atomic_fetch_sub(&set->refs, 1) != 1)
        return;
    index_fini(&set->ix);
    for (size_t i = 0; i < set->ndocs; i++)
        cJSON_Delete(set->docs[i]);
    free(set->docs);
    free(set);
}

static bool drain_queue(cctx *c)
{
    step root = {0};
    while (c->nqueue) {
        snode *n = c->queue[--c->nqueue];
        if (n->compiled)
            continue;
        c->prefix = n->loc;
        if (!compile_body(c, n, n->src, &root, 1))
            return false;
    }
    return true;
}

/* Records the $dynamicAnchors of ix whose resource some node belongs to
 * (only those can be in a dynamic scope); *added when any was new. */
static bool attach_anchors(cctx *c, const sindex *ix, bool *added)
{
    for (size_t i = 0; ix && i < ix->ndanchors; i++) {
        const named *d = &ix->danchors[i];
        const ientry *e = entry_of(c, d->node);
        sres *r = e ? pmap_get(&c->resmap, e->base) : NULL;
        if (!r || pmap_get(&c->attached, d->node))
            continue;
        snode *t = node_for_target(c, d->node, e->base, "");
        if (!t)
            return false;
        sdyn *nd = realloc(r->dyn, (r->ndyn + 1) * sizeof *nd);
        if (!nd || !pmap_put(&c->attached, d->node, (void *)d)) {
            if (nd)
                r->dyn = nd;
            coom(c);
            return false;
        }
        r->dyn = nd;
        if (!(r->dyn[r->ndyn].name = loom__strdup(strchr(d->uri, '#') + 1))) {
            coom(c);
            return false;
        }
        r->dyn[r->ndyn++].node = t;
        *added = true;
    }
    return true;
}

/* Compiles the root, then every queued $ref target, each as a root, then
 * (for a dynamic $dynamicRef) the dynamic anchors of every resource
 * reached, until no new one turns up. */
static bool compile_all(cctx *c, loom__schema *s)
{
    step root = {0};
    if (!(s->root = compile_sub(c, NULL, s->doc, &root, 1)) || !drain_queue(c))
        return false;
    for (bool added = s->dynamic; added;) {
        added = false;
        if (!attach_anchors(c, c->ix, &added) || !attach_anchors(c, c->six, &added) ||
            !drain_queue(c))
            return false;
    }
    return true;
}

loom_err loom__schema_compile_in(loom__schema **out, loom__schema_set *set, const char *json_text,
                                 char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (out)
        *out = NULL;
    if (!out || !json_text) {
        set_err(err, errlen, "schema: no schema given");
        return LOOM_EINVAL;
    }
    cJSON *doc = parse(json_text, err, errlen);
    if (!doc)
        return LOOM_EINVAL;
    loom__schema *s = calloc(1, sizeof *s);
    if (!s) {
        cJSON_Delete(doc);
        set_err(err, errlen, "schema: out of memory");
        return LOOM_ENOMEM;
    }
    s->doc = doc;
    if (set) {
        atomic_fetch_add(&set->refs, 1);
        s->set = set;
    }
    sindex ix = {0};
    cctx c = {err, errlen, LOOM_OK, "", s, &ix, set ? &set->ix : NULL, set ? set->flags : 0};
    bool ok;
    if (!index_doc(&ix, doc, "", "")) {
        coom(&c);
        ok = false;
    } else {
        ok = compile_all(&c, s);
    }
    index_fini(&ix);
    free(c.memo.s);
    free(c.resmap.s);
    free(c.attached.s);
    free(c.queue);
    if (!ok) {
        loom__schema_free(s);
        return c.rc != LOOM_OK ? c.rc : LOOM_EINVAL;
    }
    *out = s;
    return LOOM_OK;
}

loom_err loom__schema_compile(loom__schema **out, const char *json_text, char *err, size_t errlen)
{
    return loom__schema_compile_in(out, NULL, json_text, err, errlen);
}

void loom__schema_free(loom__schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nnodes; i++)
        node_free(s->nodes[i]);
    free(s->nodes);
    for (size_t i = 0; i < s->nres; i++) {
        for (size_t k = 0; k < s->res[i]->ndyn; k++)
            free(s->res[i]->dyn[k].name);
        free(s->res[i]->dyn);
        free(s->res[i]);
    }
    free(s->res);
    cJSON_Delete(s->doc);
    loom__schema_set_free(s->set);
    free(s);
}
