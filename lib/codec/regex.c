/* Regular expressions for JSON Schema's `pattern` (see regex.h).
 *
 * A pattern is parsed into a small tree, its program size is computed
 * (counted repetitions copy their operand) and refused above the limit, then
 * the tree is emitted as a Thompson NFA program: CHAR and CLASS consume a
 * code point, SPLIT and JMP branch, ASSERT tests a position, MATCH ends.
 * Searching runs every thread of the program in lock step over the subject
 * (a Pike VM without captures), so each position costs at most one visit
 * per instruction. Each class also gets a bitmap of its ASCII members, and
 * an anchored program of only CHAR and CLASS (`^[A-Z]{3}$`) is matched by
 * one walk along the subject, without threads (docs/schema.md, Speed).
 */
#include "codec/regex.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/unicode.h"
#include "core/util.h"

#define MAX_CP 0x10FFFFu
#define INF UINT32_MAX
/* Larger {n,m} bounds saturate here; the program limit refuses them. */
#define MAX_BOUND 1000000u

enum op { OP_CHAR, OP_CLASS, OP_SPLIT, OP_JMP, OP_ASSERT, OP_MATCH };
enum assertion { A_BEGIN, A_END, A_WORD, A_NOT_WORD };

typedef loom__urange range;

/* CHAR: x = code point. CLASS: x = first range, y = count, z = its ASCII
 * bitmap. SPLIT: x, y = targets. JMP: x = target. ASSERT: x = enum
 * assertion. */
typedef struct {
    uint8_t op;
    uint32_t x, y, z;
} inst;

struct loom__regex {
    inst *prog;
    uint32_t n;
    bool anchored;        /* starts with ^: only position 0 can start a match */
    range *ranges;        /* every class's sorted, disjoint ranges */
    uint64_t (*ascii)[2]; /* per class: code points 0-127 in it, so that ASCII
                             text needs no search of the ranges */
    /* ^, then only characters and classes, then $ or not, then the match
     * (`^[A-Z]{3}$`): matched by one walk along the text, no threads. */
    bool linear;
};

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */

enum kind { K_CHAR, K_CLASS, K_ASSERT, K_CAT, K_ALT, K_REPEAT };

/* CHAR: a = code point. CLASS: a = first range, b = count. ASSERT: a =
 * assertion. REPEAT: a = min, b = max (INF), first = operand. CAT and ALT:
 * children from first along next. */
typedef struct {
    uint8_t kind;
    uint32_t a, b;
    int32_t first, next;
} rnode;

typedef struct {
    const char *pat;
    const char *p; /* the cursor */
    char *err;
    size_t errlen;
    loom_err status; /* LOOM_OK until the first failure */
    rnode *nodes;
    size_t nnodes, nodecap;
    range *ranges; /* the classes, as stored in the regex */
    size_t nranges, rangecap;
    range *set; /* the class being parsed */
    size_t nset, setcap;
    const range *prop; /* the last \\p{...}: its ranges, negated or not */
    size_t nprop;
    bool prop_negate;
} parser;

static int fail(parser *P, const char *fmt, ...) LOOM_PRINTF(2, 3);
static int fail(parser *P, const char *fmt, ...)
{
    if (P->status != LOOM_OK)
        return -1;
    P->status = LOOM_EINVAL;
    if (P->err && P->errlen) {
        char what[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        snprintf(P->err, P->errlen, "%s at offset %zu", what, (size_t)(P->p - P->pat));
    }
    return -1;
}

static int oom(parser *P)
{
    if (P->status == LOOM_OK) {
        P->status = LOOM_ENOMEM;
        if (P->err && P->errlen)
            loom__strlcpy(P->err, "out of memory", P->errlen);
    }
    return -1;
}

/* Makes room for `need` elements of size `size` in *v (capacity *cap). */
static bool reserve(void **v, size_t need, size_t *cap, size_t size)
{
    if (need <= *cap)
        return true;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *nv = realloc(*v, ncap * size);
    if (!nv)
        return false;
    *v = nv;
    *cap = ncap;
    return true;
}

static int node(parser *P, enum kind kind, uint32_t a, uint32_t b)
{
    if (!reserve((void **)&P->nodes, P->nnodes + 1, &P->nodecap, sizeof *P->nodes))
        return oom(P);
    P->nodes[P->nnodes] = (rnode){(uint8_t)kind, a, b, -1, -1};
    return (int)P->nnodes++;
}

/* Appends child to the list of parent; *tail is the list's last node. */
static void append(parser *P, int parent, int *tail, int child)
{
    if (*tail < 0)
        P->nodes[parent].first = child;
    else
        P->nodes[*tail].next = child;
    *tail = child;
}

static const range digit_ranges[] = {{'0', '9'}};
static const range word_ranges[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
static const range space_ranges[] = {
    {0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
    {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
static const range line_ranges[] = {{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}};

/* Writes the complement of sorted disjoint ranges in[0..n) to out (room
 * for n + 1); returns how many. */
static size_t complement(const range *in, size_t n, range *out)
{
    size_t k = 0;
    uint32_t next = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i].lo > next)
            out[k++] = (range){next, in[i].lo - 1};
        next = in[i].hi + 1;
    }
    if (next <= MAX_CP)
        out[k++] = (range){next, MAX_CP};
    return k;
}

/* Adds sorted disjoint ranges t[0..n), or their complement. */
static bool add_ranges(parser *P, const range *t, size_t n, bool negate)
{
    if (!reserve((void **)&P->set, P->nset + n + 1, &P->setcap, sizeof *P->set)) {
        oom(P);
        return false;
    }
    if (negate) {
        P->nset += complement(t, n, P->set + P->nset);
    } else {
        memcpy(P->set + P->nset, t, n * sizeof *t);
        P->nset += n;
    }
    return true;
}

static bool add_range(parser *P, uint32_t lo, uint32_t hi)
{
    return add_ranges(P, &(range){lo, hi}, 1, false);
}

/* \d \D \w \W \s \S, and \p \P (the property escape() parsed) */
static bool add_shorthand(parser *P, char c)
{
    switch (c) {
    case 'p':
        return add_ranges(P, P->prop, P->nprop, P->prop_negate);
    case 'd':
    case 'D':
        return add_ranges(P, digit_ranges, LOOM__ARRAY_LEN(digit_ranges), c == 'D');
    case 'w':
    case 'W':
        return add_ranges(P, word_ranges, LOOM__ARRAY_LEN(word_ranges), c == 'W');
    default:
        return add_ranges(P, space_ranges, LOOM__ARRAY_LEN(space_ranges), c == 'S');
    }
}

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Turns the set into a CLASS node: sorted, merged, complemented when
 * negated, and moved to the regex's ranges. */
static int class_node(parser *P, bool negate)
{
    if (P->nset)
        qsort(P->set, P->nset, sizeof *P->set, cmp_range);
    size_t n = 0;
    for (size_t i = 0; i < P->nset; i++) {
        if (n && P->set[i].lo <= P->set[n - 1].hi + 1) {
            if (P->set[i].hi > P->set[n - 1].hi)
                P->set[n - 1].hi = P->set[i].hi;
        } else {
            P->set[n++] = P->set[i];
        }
    }
    P->nset = 0;
    size_t off = P->nranges;
    /* Complementing n disjoint ranges gives at most n + 1. */
    if (!reserve((void **)&P->ranges, off + n + 1, &P->rangecap, sizeof *P->ranges))
        return oom(P);
    if (negate) {
        P->nranges += complement(P->set, n, P->ranges + off);
    } else {
        if (n)
            memcpy(P->ranges + off, P->set, n * sizeof *P->set);
        P->nranges += n;
    }
    return node(P, K_CLASS, (uint32_t)off, (uint32_t)(P->nranges - off));
}

/* The code point of the well-formed n-byte UTF-8 sequence at s. */
static uint32_t utf8_decode(const unsigned char *s, size_t n)
{
    switch (n) {
    case 1:
        return s[0];
    case 2:
        return (s[0] & 0x1Fu) << 6 | (s[1] & 0x3Fu);
    case 3:
        return (s[0] & 0x0Fu) << 12 | (s[1] & 0x3Fu) << 6 | (s[2] & 0x3Fu);
    default:
        return (s[0] & 0x07u) << 18 | (s[1] & 0x3Fu) << 12 | (s[2] & 0x3Fu) << 6 | (s[3] & 0x3Fu);
    }
}

/* The code point at the cursor, which it passes; -1 when malformed. */
static int64_t next_cp(parser *P)
{
    const unsigned char *s = (const unsigned char *)P->p;
    size_t n = loom__utf8_seq(s, strnlen(P->p, 4));
    if (!n)
        return fail(P, "the pattern is not valid UTF-8");
    P->p += n;
    return utf8_decode(s, n);
}

/* n hex digits at the cursor (passed), or -1. */
static int64_t hex_digits(parser *P, int n)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        int h = loom__hex_digit(P->p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    P->p += n;
    return v;
}

/* \u{H...} or \uHHHH (a surrogate pair of two \uHHHH is one code point),
 * the cursor after the 'u'. */
static int64_t unicode_escape(parser *P)
{
    if (*P->p == '{') {
        const char *q = ++P->p;
        int64_t v = 0;
        while (loom__hex_digit(*q) >= 0 && v <= MAX_CP)
            v = v * 16 + loom__hex_digit(*q++);
        if (q == P->p || *q != '}' || v > MAX_CP)
            return fail(P, "\\u{...} needs a code point of at most 10FFFF");
        P->p = q + 1;
        return v;
    }
    int64_t v = hex_digits(P, 4);
    if (v < 0)
        return fail(P, "\\u needs four hex digits or {...}");
    if (v >= 0xD800 && v <= 0xDBFF && P->p[0] == '\\' && P->p[1] == 'u') {
        const char *back = P->p;
        P->p += 2;
        int64_t lo = hex_digits(P, 4);
        if (lo >= 0xDC00 && lo <= 0xDFFF)
            return 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
        P->p = back;
    }
    return v; /* a lone surrogate: valid, never in UTF-8 text */
}

/* \p{NAME} or \P{NAME}, the cursor after the 'p' / 'P': stores the
 * property in P. */
static int64_t property_escape(parser *P, bool negate)
{
    char name[64];
    size_t n = 0;
    if (*P->p != '{')
        return fail(P, "\\p needs {NAME}");
    const char *q = P->p + 1;
    while (n + 1 < sizeof name && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
                                   (*q >= '0' && *q <= '9') || *q == '_' || *q == '='))
        name[n++] = *q++;
    name[n] = '\0';
    if (*q != '}')
        return fail(P, "\\p needs {NAME}");
    bool inverse;
    if (!loom__unicode_property(name, &P->prop, &P->nprop, &inverse))
        return fail(P, "unknown Unicode property '%s'", name);
    P->prop_negate = inverse != negate;
    P->p = q + 1;
    return -2;
}

/* An escape, the cursor after the '\'. A code point, or -1 after an error,
 * or -2 with *shorthand set for \d \D \w \W \s \S and ('p') \p \P. */
static int64_t escape(parser *P, bool in_class, char *shorthand)
{
    char c = *P->p;
    if (!c)
        return fail(P, "'\\' ends the pattern");
    if (c == 'p' || c == 'P') {
        P->p++;
        *shorthand = 'p';
        return property_escape(P, c == 'P');
    }
    if (strchr("dDwWsS", c)) {
        P->p++;
        *shorthand = c;
        return -2;
    }
    if (c >= '1' && c <= '9')
        return fail(P, "backreferences are not supported");
    if (c == '0') {
        if (P->p[1] >= '0' && P->p[1] <= '9')
            return fail(P, "octal escapes are not supported");
        P->p++;
        return 0;
    }
    if (c == 'u' || c == 'x' || c == 'c') {
        P->p++;
        if (c == 'u')
            return unicode_escape(P);
        if (c == 'x') {
            int64_t v = hex_digits(P, 2);
            return v >= 0 ? v : fail(P, "\\x needs two hex digits");
        }
        char l = *P->p;
        if (!((l >= 'a' && l <= 'z') || (l >= 'A' && l <= 'Z')))
            return fail(P, "\\c needs a letter");
        P->p++;
        return l % 32;
    }
    static const char from[] = "tnrfv", to[] = "\t\n\r\f\v";
    const char *f = strchr(from, c);
    if (c && f) {
        P->p++;
        return to[f - from];
    }
    if (in_class && c == 'b') {
        P->p++;
        return '\b';
    }
    if (c == 'k')
        return fail(P, "named backreferences are not supported");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return fail(P, "unknown escape '\\%c'", c);
    return next_cp(P); /* punctuation or any non-ASCII character: itself */
}

/* One member of a class: a code point, -2 after a shorthand (added), or -1. */
static int64_t class_atom(parser *P)
{
    if (*P->p != '\\')
        return next_cp(P);
    P->p++;
    char sh = 0;
    int64_t cp = escape(P, true, &sh);
    if (cp == -2 && !add_shorthand(P, sh))
        return -1;
    return cp;
}

/* A class, the cursor after the '['. */
static int parse_class(parser *P)
{
    bool negate = *P->p == '^';
    if (negate)
        P->p++;
    while (*P->p != ']') {
        if (!*P->p)
            return fail(P, "unterminated character class");
        int64_t lo = class_atom(P);
        if (lo == -1)
            return -1;
        if (P->p[0] != '-' || P->p[1] == ']' || !P->p[1]) {
            if (lo >= 0 && !add_range(P, (uint32_t)lo, (uint32_t)lo))
                return -1;
            continue;
        }
        if (lo == -2) /* [\d-z]: the '-' is a literal (ECMA-262 B.1.2) */
            continue;
        P->p++;
        int64_t hi = class_atom(P);
        if (hi == -1)
            return -1;
        if (hi == -2) { /* [a-\d] */
            if (!add_range(P, (uint32_t)lo, (uint32_t)lo) || !add_range(P, '-', '-'))
                return -1;
            continue;
        }
        if (hi < lo)
            return fail(P, "range out of order in character class");
        if (!add_range(P, (uint32_t)lo, (uint32_t)hi))
            return -1;
    }
    P->p++;
    return class_node(P, negate);
}

/* A decimal bound at the cursor (passed), saturating at MAX_BOUND. */
static uint32_t bound(const char **q)
{
    uint32_t v = 0;
    for (; **q >= '0' && **q <= '9'; (*q)++)
        v = v >= MAX_BOUND ? MAX_BOUND : v * 10 + (uint32_t)(**q - '0');
    return v;
}

/* Is there a quantifier at the cursor? If so *min, *max and *end (just past
 * it, a lazy '?' included) are set. "{" that is no quantifier is a literal. */
static bool quantifier(const char *p, uint32_t *min, uint32_t *max, const char **end)
{
    switch (*p) {
    case '*':
        *min = 0, *max = INF;
        break;
    case '+':
        *min = 1, *max = INF;
        break;
    case '?':
        *min = 0, *max = 1;
        break;
    case '{': {
        const char *q = p + 1;
        if (*q < '0' || *q > '9')
            return false;
        *min = *max = bound(&q);
        if (*q == ',') {
            q++;
            *max = *q >= '0' && *q <= '9' ? bound(&q) : INF;
        }
        if (*q != '}')
            return false;
        p = q;
        break;
    }
    default:
        return false;
    }
    p++;
    if (*p == '?')
        p++;
    *end = p;
    return true;
}

static int parse_alternation(parser *P, int depth);

/* A group, the cursor after the '('. */
static int parse_group(parser *P, int depth)
{
    if (*P->p == '?') {
        const char *q = P->p + 1;
        if (*q == ':') {
            q++;
        } else if (*q == '<' && q[1] != '=' && q[1] != '!') { /* (?<name>...) */
            for (q++; *q && *q != '>'; q++)
                if (!(*q == '_' || *q == '$' || (*q >= 'a' && *q <= 'z') ||
                      (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9')))
                    return fail(P, "invalid group name");
            if (!*q)
                return fail(P, "unterminated group name");
            q++;
        } else {
            return fail(P, *q == '=' || *q == '!' || *q == '<'
                               ? "lookahead and lookbehind are not supported"
                               : "invalid group");
        }
        P->p = q;
    }
    int inner = parse_alternation(P, depth + 1);
    if (inner < 0)
        return -1;
    if (*P->p != ')')
        return fail(P, "missing ')'");
    P->p++;
    return inner;
}

/* An atom; *assertion tells the caller it cannot be repeated. */
static int parse_atom(parser *P, int depth, bool *assertion)
{
    uint32_t min, max;
    const char *end;
    *assertion = false;
    char c = *P->p;
    switch (c) {
    case '(':
        if (depth >= LOOM__REGEX_MAX_NESTING)
            return fail(P, "groups nested deeper than %d", LOOM__REGEX_MAX_NESTING);
        P->p++;
        return parse_group(P, depth);
    case '[':
        P->p++;
        return parse_class(P);
    case '.':
        P->p++;
        return add_ranges(P, line_ranges, LOOM__ARRAY_LEN(line_ranges), true) ? class_node(P, false)
                                                                              : -1;
    case '^':
    case '$':
        P->p++;
        *assertion = true;
        return node(P, K_ASSERT, c == '^' ? A_BEGIN : A_END, 0);
    case '\\': {
        P->p++;
        if (*P->p == 'b' || *P->p == 'B') {
            *assertion = true;
            return node(P, K_ASSERT, *P->p++ == 'b' ? A_WORD : A_NOT_WORD, 0);
        }
        char sh = 0;
        int64_t cp = escape(P, false, &sh);
        if (cp == -2)
            return add_shorthand(P, sh) ? class_node(P, false) : -1;
        return cp < 0 ? -1 : node(P, K_CHAR, (uint32_t)cp, 0);
    }
    default:
        if (quantifier(P->p, &min, &max, &end))
            return fail(P, "nothing to repeat before '%c'", c);
        int64_t cp = next_cp(P);
        return cp < 0 ? -1 : node(P, K_CHAR, (uint32_t)cp, 0);
    }
}

/* A sequence of quantified atoms, up to '|', ')' or the end. */
static int parse_sequence(parser *P, int depth)
{
    int cat = node(P, K_CAT, 0, 0), tail = -1;
    if (cat < 0)
        return -1;
    while (*P->p && *P->p != '|' && *P->p != ')') {
        bool assertion;
        int atom = parse_atom(P, depth, &assertion);
        if (atom < 0)
            return -1;
        uint32_t min, max;
        const char *end;
        if (quantifier(P->p, &min, &max, &end)) {
            if (assertion)
                return fail(P, "nothing to repeat before '%c'", *P->p);
            if (max < min)
                return fail(P, "numbers out of order in {} quantifier");
            P->p = end;
            if (quantifier(P->p, &min, &max, &end))
                return fail(P, "nothing to repeat before '%c' (one quantifier per atom)", *P->p);
            int rep = node(P, K_REPEAT, min, max);
            if (rep < 0)
                return -1;
            P->nodes[rep].first = atom;
            atom = rep;
        }
        append(P, cat, &tail, atom);
    }
    return cat;
}

static int parse_alternation(parser *P, int depth)
{
    int alt = node(P, K_ALT, 0, 0), tail = -1;
    if (alt < 0)
        return -1;
    for (;;) {
        int seq = parse_sequence(P, depth);
        if (seq < 0)
            return -1;
        append(P, alt, &tail, seq);
        if (*P->p != '|')
            return alt;
        P->p++;
    }
}

/* ------------------------------------------------------------------------ */
/* Code generation                                                           */

/* The instructions node i compiles to, saturating above the limit. */
static uint64_t program_size(const parser *P, int i)
{
    const uint64_t over = LOOM__REGEX_MAX_PROGRAM + 1;
    const rnode *n = &P->nodes[i];
    uint64_t size = 0, count = 0;
    switch (n->kind) {
    case K_CAT:
    case K_ALT:
        for (int c = n->first; c >= 0 && size < over; c = P->nodes[c].next, count++)
            size += program_size(P, c);
        if (n->kind == K_ALT && count > 1)
            size += 2 * (count - 1); /* a SPLIT and a JMP per extra branch */
        break;
    case K_REPEAT: {
        uint64_t s = program_size(P, n->first);
        if (n->b == INF)
            size = n->a ? n->a * s + 1 : s + 2;
        else
            size = n->a * s + (uint64_t)(n->b - n->a) * (s + 1);
        break;
    }
    default:
        size = 1;
    }
    return size < over ? size : over;
}

typedef struct {
    const parser *P;
    inst *prog;
    uint32_t pc;
} emitter;

static uint32_t put(emitter *E, enum op op, uint32_t x, uint32_t y)
{
    E->prog[E->pc] = (inst){(uint8_t)op, x, y, 0};
    return E->pc++;
}

/* Points every instruction on the chain (linked through `field`, ending at
 * INF) at target. */
static void patch(emitter *E, uint32_t chain, bool field_y, uint32_t target)
{
    while (chain != INF) {
        uint32_t *f = field_y ? &E->prog[chain].y : &E->prog[chain].x;
        chain = *f;
        *f = target;
    }
}

static void emit(emitter *E, int i)
{
    const rnode *n = &E->P->nodes[i];
    switch (n->kind) {
    case K_CHAR:
        put(E, OP_CHAR, n->a, 0);
        return;
    case K_CLASS:
        put(E, OP_CLASS, n->a, n->b);
        return;
    case K_ASSERT:
        put(E, OP_ASSERT, n->a, 0);
        return;
    case K_CAT:
        for (int c = n->first; c >= 0; c = E->P->nodes[c].next)
            emit(E, c);
        return;
    case K_ALT: {
        uint32_t jumps = INF;
        for (int c = n->first; c >= 0; c = E->P->nodes[c].next) {
            if (E->P->nodes[c].next < 0) {
                emit(E, c);
                break;
            }
            uint32_t split = put(E, OP_SPLIT, E->pc + 1, 0);
            emit(E, c);
            jumps = put(E, OP_JMP, jumps, 0);
            E->prog[split].y = E->pc;
        }
        patch(E, jumps, false, E->pc);
        return;
    }
    default: /* K_REPEAT */
        break;
    }
    uint32_t min = n->a, max = n->b;
    if (max == INF && min > 0) { /* x{min-1} then x+ */
        for (uint32_t k = 1; k < min; k++)
            emit(E, n->first);
        uint32_t loop = E->pc;
        emit(E, n->first);
        put(E, OP_SPLIT, loop, E->pc + 1);
        return;
    }
    for (uint32_t k = 0; k < min; k++)
        emit(E, n->first);
    if (max == INF) { /* x* */
        uint32_t split = put(E, OP_SPLIT, E->pc + 1, 0);
        emit(E, n->first);
        put(E, OP_JMP, split, 0);
        E->prog[split].y = E->pc;
        return;
    }
    uint32_t exits = INF; /* x? nested max - min times */
    for (uint32_t k = min; k < max; k++) {
        exits = put(E, OP_SPLIT, E->pc + 1, exits);
        emit(E, n->first);
    }
    patch(E, exits, true, E->pc);
}

static void parser_free(parser *P)
{
    free(P->nodes);
    free(P->ranges);
    free(P->set);
}

/* Whether re is ^ (CHAR | CLASS)* $? MATCH. */
static bool is_linear(const loom__regex *re)
{
    if (!re->anchored)
        return false;
    uint32_t pc = 1;
    while (pc < re->n && (re->prog[pc].op == OP_CHAR || re->prog[pc].op == OP_CLASS))
        pc++;
    if (pc < re->n && re->prog[pc].op == OP_ASSERT && re->prog[pc].x == A_END)
        pc++;
    return pc + 1 == re->n && re->prog[pc].op == OP_MATCH;
}

/* The ASCII bitmap of every class instruction. */
static bool ascii_maps(loom__regex *re)
{
    uint32_t classes = 0;
    for (uint32_t i = 0; i < re->n; i++)
        classes += re->prog[i].op == OP_CLASS;
    if (!classes)
        return true;
    if (!(re->ascii = calloc(classes, sizeof *re->ascii)))
        return false;
    uint32_t k = 0;
    for (uint32_t i = 0; i < re->n; i++) {
        inst *in = &re->prog[i];
        if (in->op != OP_CLASS)
            continue;
        in->z = k;
        for (uint32_t cp = 0; cp < 128; cp++)
            if (loom__unicode_in(re->ranges + in->x, in->y, cp))
                re->ascii[k][cp / 64] |= UINT64_C(1) << (cp % 64);
        k++;
    }
    return true;
}

loom_err loom__regex_compile(loom__regex **out, const char *pattern, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!out || !pattern) {
        if (err && errlen)
            loom__strlcpy(err, "no pattern", errlen);
        return LOOM_EINVAL;
    }
    *out = NULL;
    parser P = {.pat = pattern, .p = pattern, .err = err, .errlen = errlen};
    int root = parse_alternation(&P, 0);
    if (root >= 0 && *P.p == ')')
        fail(&P, "unmatched ')'");
    uint64_t size = P.status == LOOM_OK ? program_size(&P, root) : 0;
    if (P.status == LOOM_OK && size > LOOM__REGEX_MAX_PROGRAM) {
        P.p = pattern;
        if (err && errlen)
            snprintf(err, errlen, "too complex: its repetitions expand to more than %d states",
                     LOOM__REGEX_MAX_PROGRAM);
        P.status = LOOM_EINVAL;
    }
    loom__regex *re = P.status == LOOM_OK ? calloc(1, sizeof *re) : NULL;
    if (P.status == LOOM_OK && re)
        re->prog = malloc((size + 1) * sizeof *re->prog);
    if (P.status == LOOM_OK && (!re || !re->prog)) {
        free(re);
        re = NULL;
        oom(&P);
    }
    if (P.status != LOOM_OK) {
        parser_free(&P);
        return P.status;
    }
    emitter E = {&P, re->prog, 0};
    emit(&E, root);
    put(&E, OP_MATCH, 0, 0);
    re->n = E.pc;
    re->anchored = re->prog[0].op == OP_ASSERT && re->prog[0].x == A_BEGIN;
    re->ranges = P.ranges; /* moved */
    P.ranges = NULL;
    parser_free(&P);
    re->linear = is_linear(re);
    if (!ascii_maps(re)) {
        loom__regex_free(re);
        if (err && errlen)
            loom__strlcpy(err, "out of memory", errlen);
        return LOOM_ENOMEM;
    }
    *out = re;
    return LOOM_OK;
}

void loom__regex_free(loom__regex *re)
{
    if (!re)
        return;
    free(re->prog);
    free(re->ranges);
    free(re->ascii);
    free(re);
}

/* ------------------------------------------------------------------------ */
/* Searching                                                                 */

typedef struct {
    const loom__regex *re;
    const unsigned char *s;
    size_t len;
    uint32_t *mark;  /* per instruction: the generation that last visited it */
    uint32_t *stack; /* the closure's work list */
    uint32_t gen;
} vm;

typedef struct {
    uint32_t *pc;
    uint32_t n;
} threads;

static bool is_word(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool holds(const vm *M, uint32_t assertion, size_t pos)
{
    switch (assertion) {
    case A_BEGIN:
        return pos == 0;
    case A_END:
        return pos == M->len;
    default: {
        bool before = pos > 0 && is_word(M->s[pos - 1]);
        bool after = pos < M->len && is_word(M->s[pos]);
        return (before != after) == (assertion == A_WORD);
    }
    }
}

/* Adds the threads reachable from pc without consuming, at pos; true when
 * one of them matches. */
static bool add(vm *M, threads *t, uint32_t pc, size_t pos)
{
    const inst *prog = M->re->prog;
    uint32_t sp = 0;
#define PUSH(target)                                                                               \
    do {                                                                                           \
        uint32_t to_ = (target);                                                                   \
        if (M->mark[to_] != M->gen) {                                                              \
            M->mark[to_] = M->gen;                                                                 \
            M->stack[sp++] = to_;                                                                  \
        }                                                                                          \
    } while (0)
    PUSH(pc);
    while (sp) {
        pc = M->stack[--sp];
        const inst *in = &prog[pc];
        switch (in->op) {
        case OP_MATCH:
            return true;
        case OP_JMP:
            PUSH(in->x);
            break;
        case OP_SPLIT:
            PUSH(in->y);
            PUSH(in->x);
            break;
        case OP_ASSERT:
            if (holds(M, in->x, pos))
                PUSH(pc + 1);
            break;
        default:
            t->pc[t->n++] = pc;
        }
    }
#undef PUSH
    return false;
}

/* The code point at s (avail > 0 bytes) and its length; U+FFFD for one
 * malformed byte. */
static uint32_t decode(const unsigned char *s, size_t avail, size_t *len)
{
    size_t n = loom__utf8_seq(s, avail);
    *len = n ? n : 1;
    return n ? utf8_decode(s, n) : 0xFFFD;
}

/* A code point of the text at *pos (< len), moving *pos past it. */
static uint32_t next_at(const unsigned char *s, size_t len, size_t *pos)
{
    size_t adv = 1;
    uint32_t cp = s[*pos] < 0x80 ? s[*pos] : decode(s + *pos, len - *pos, &adv);
    *pos += adv;
    return cp;
}

static bool in_class(const loom__regex *re, const inst *in, uint32_t cp)
{
    if (cp < 128)
        return (re->ascii[in->z][cp / 64] >> (cp % 64)) & 1;
    return loom__unicode_in(re->ranges + in->x, in->y, cp);
}

static bool run(vm *M, threads *cur, threads *next)
{
    const inst *prog = M->re->prog;
    size_t pos = 0;
    M->gen = 1;
    for (;;) {
        if ((pos == 0 || !M->re->anchored) && add(M, cur, 0, pos))
            return true;
        if (pos == M->len || (cur->n == 0 && M->re->anchored))
            return false;
        size_t adv = pos;
        uint32_t cp = next_at(M->s, M->len, &adv);
        adv -= pos;
        if (++M->gen == UINT32_MAX) { /* 4 G positions: start the marks over */
            memset(M->mark, 0, M->re->n * sizeof *M->mark);
            M->gen = 1;
        }
        next->n = 0;
        for (uint32_t i = 0; i < cur->n; i++) {
            const inst *in = &prog[cur->pc[i]];
            bool ok = in->op == OP_CHAR ? in->x == cp : in_class(M->re, in, cp);
            if (ok && add(M, next, cur->pc[i] + 1, pos + adv))
                return true;
        }
        threads *t = cur;
        cur = next;
        next = t;
        pos += adv;
    }
}

/* re->linear: at most one instruction per code point, from position 0. */
static bool linear_search(const loom__regex *re, const unsigned char *s, size_t len)
{
    size_t pos = 0;
    for (uint32_t pc = 1; pc < re->n; pc++) {
        const inst *in = &re->prog[pc];
        if (in->op == OP_MATCH)
            return true;
        if (in->op == OP_ASSERT) /* $, just before the match */
            return pos == len;
        if (pos == len)
            return false;
        uint32_t cp = next_at(s, len, &pos);
        if (in->op == OP_CHAR ? in->x != cp : !in_class(re, in, cp))
            return false;
    }
    return false;
}

bool loom__regex_search(const loom__regex *re, const char *s, size_t len)
{
    if (!re || (!s && len))
        return false;
    if (re->linear)
        return linear_search(re, (const unsigned char *)s, len);
    uint32_t small[4 * 128];
    uint32_t *mem = small;
    if (re->n > 128) {
        mem = calloc(4 * (size_t)re->n, sizeof *mem);
        if (!mem)
            return false;
    } else {
        memset(mem, 0, re->n * sizeof *mem);
    }
    uint32_t n = re->n;
    vm M = {re, (const unsigned char *)s, len, mem, mem + n, 0};
    threads a = {mem + 2 * (size_t)n, 0}, b = {mem + 3 * (size_t)n, 0};
    bool found = run(&M, &a, &b);
    if (mem != small)
        free(mem);
    return found;
}
