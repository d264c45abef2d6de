/* Deployment configuration: one YAML file, LOOM_* environment variables and
 * dotted-key sets (command-line flags) merged into one validated cJSON tree.
 *
 * Every change goes through the same two steps: the input is parsed and
 * validated into a scratch "overlay" tree shaped like the real one, then the
 * overlay is merged into a copy of the current tree, which replaces it only
 * when everything succeeded. A failed call therefore leaves the configuration
 * exactly as it was.
 *
 * In an overlay a JSON null at a key means "back to the default": the key is
 * removed from the tree (YAML `key:` or `key: ~`). Inside a map value (the
 * `config` subtree, limits.concurrency) null is ordinary data.
 *
 * YAML is read with libyaml's event API so that aliases, anchors, duplicate
 * keys and extra documents are refused before anything is built (no alias
 * expansion, hence no billion laughs), and so that every error knows its line.
 */
#define _GNU_SOURCE
#include "codec/topic.h"
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h> /* isfinite, a macro: no libm */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "codec/json.h"
#include "core/util.h"

#define MAX_INPUT (1024 * 1024) /* bytes of YAML in one file or string */
#define MAX_DEPTH 64            /* nested mappings and sequences */
#define MAX_KEY 64              /* longer section keys are unknown without a look */
#define ERR_LEN 1024
#define PATH_LEN 512

struct loom_config {
    cJSON *tree; /* always an object; only validated values */
    char err[ERR_LEN];
};

/* ------------------------------------------------------------------------ */
/* The known keys                                                            */

typedef enum key_type { T_STR, T_INT, T_BOOL, T_ENUM, T_LIST, T_MAP } key_type;

/* Extra validation. T_STR: the string; T_LIST: the whole array; T_MAP: each
 * direct child value (such a map is flat: its keys are whole names and may
 * contain dots). Writes a reason and returns false when the value is bad. */
typedef bool (*check_fn)(const cJSON *v, char *why, size_t n);

typedef struct key_def {
    const char *key; /* dotted path; its prefixes are the sections */
    key_type type;
    long long min, max;  /* T_INT */
    const char *choices; /* T_ENUM: "a|b|c" */
    check_fn check;
} key_def;

static bool check_instance(const cJSON *v, char *why, size_t n);
static bool check_services(const cJSON *v, char *why, size_t n);
static bool check_prefix(const cJSON *v, char *why, size_t n);
static bool check_listen(const cJSON *v, char *why, size_t n);
static bool check_base(const cJSON *v, char *why, size_t n);
static bool check_concurrency(const cJSON *v, char *why, size_t n);

/* One line per key: STR("broker.url"), INT("workers", 1, 1024),
 * STR("http.listen", .check = check_listen), ... */
// clang-format off
#define STR(k, ...)    {.key = k, .type = T_STR, __VA_ARGS__}
#define INT(k, lo, hi) {.key = k, .type = T_INT, .min = lo, .max = hi}
#define BOOL(k)        {.key = k, .type = T_BOOL}
#define ENUM(k, list)  {.key = k, .type = T_ENUM, .choices = list}
#define LIST(k, ...)   {.key = k, .type = T_LIST, __VA_ARGS__}
#define MAP(k, ...)    {.key = k, .type = T_MAP, __VA_ARGS__}
// clang-format on

/* The only place keys are defined (keep docs/configuration.md in step).
 * Keep a section's keys together: the "known keys" hint lists them in order. */
static const key_def keys[] = {
    STR("instance", .check = check_instance),
    LIST("services", .check = check_services),
    INT("workers", 1, 1024),
    BOOL("invoke.inline"),
    ENUM("log.level", "trace|debug|info|warn|error|off"),
    ENUM("log.format", "text|json"),
    INT("timeouts.default_ms", 1, 86400000),
    INT("timeouts.drain_ms", 0, 3600000),
    INT("limits.queue", 1, 10000000),
    INT("limits.max_message", 1024, 268435456),
    MAP("limits.concurrency", .check = check_concurrency),
    INT("limits.announcement", 1024, 16777216),
    INT("limits.instance_commands", 1, 100000),
    INT("limits.routes", 1, 1000000),
    STR("broker.url"),
    STR("broker.prefix", .check = check_prefix),
    STR("broker.client_id"),
    STR("broker.username"),
    STR("broker.password"),
    STR("broker.password_file"),
    INT("broker.keepalive", 1, 65535),
    INT("broker.session_expiry", 0, 4294967295LL),
    INT("broker.connect_timeout_ms", 1, 600000),
    INT("broker.reconnect_min_ms", 1, 600000),
    INT("broker.reconnect_max_ms", 1, 3600000),
    INT("broker.buffer", 0, 10000000),
    INT("broker.heartbeat_ms", 100, 600000),
    BOOL("broker.randomize"),
    BOOL("broker.send_asap"),
    INT("broker.qos.command", 0, 2),
    INT("broker.qos.reply", 0, 2),
    INT("broker.qos.event", 0, 2),
    INT("broker.qos.discovery", 0, 2),
    STR("broker.tls.ca"),
    STR("broker.tls.cert"),
    STR("broker.tls.key"),
    BOOL("broker.tls.verify"),
    STR("state.url"),
    STR("state.prefix"),
    STR("state.password"),
    INT("state.timeout_ms", 1, 600000),
    STR("http.listen", .check = check_listen),
    STR("http.base", .check = check_base),
    INT("http.threads", 1, 1024),
    INT("http.max_body", 0, 1073741824),
    INT("http.max_header", 256, 1048576),
    INT("http.max_connections", 1, 1000000),
    INT("http.idle_timeout_s", 1, 86400),
    INT("http.request_timeout_ms", 1, 86400000),
    BOOL("http.inline"),
    LIST("http.auth.tokens"),
    STR("http.auth.tokens_file"),
    STR("http.auth.tokens_env"),
    STR("http.auth.api_key_header"),
    BOOL("http.auth.required"),
    BOOL("http.auth.protect_metrics"),
    BOOL("http.auth.protect_docs"),
    LIST("http.cors.origins"),
    LIST("http.cors.headers"),
    INT("http.cors.max_age", 0, 86400),
    BOOL("http.access_log"),
    STR("http.openapi.title"),
    STR("http.openapi.version"),
    STR("http.openapi.description"),
    STR("http.openapi.server"),
    STR("http.openapi.license.name"),
    STR("http.openapi.license.identifier"),
    STR("http.openapi.license.url"),
    STR("http.openapi.contact.name"),
    STR("http.openapi.contact.url"),
    STR("http.openapi.contact.email"),
    BOOL("security.signing"),
    STR("security.key_file"),
    STR("security.key_env"),
    STR("security.keyring"),
    BOOL("security.bare_calls"),
    INT("security.replay_window_ms", 1000, 86400000),
    MAP("config"), /* config.<service> is handed to that service's handlers */
};

/* Environment variables; each value is parsed like loom_config_set's. */
static const struct {
    const char *var, *key;
} env_keys[] = {
    {"LOOM_INSTANCE", "instance"},
    {"LOOM_SERVICES", "services"},
    {"LOOM_BROKER", "broker.url"},
    {"LOOM_HTTP", "http.listen"},
    {"LOOM_WORKERS", "workers"},
    {"LOOM_LOG_LEVEL", "log.level"},
    {"LOOM_LOG_FORMAT", "log.format"},
    {"LOOM_STATE", "state.url"},
    {"LOOM_PREFIX", "broker.prefix"},
    {"LOOM_BROKER_USERNAME", "broker.username"},
    {"LOOM_BROKER_PASSWORD", "broker.password"},
    {"LOOM_HTTP_TOKENS", "http.auth.tokens"},
    {"LOOM_SECURITY_SIGNING", "security.signing"},
    {"LOOM_SECURITY_KEY_FILE", "security.key_file"},
    {"LOOM_SECURITY_KEYRING", "security.keyring"},
};

static const key_def *find_key(const char *key)
{
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

/* True when key names a section: some known key lies below it. */
static bool is_section(const char *key)
{
    size_t len = strlen(key);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++)
        if (strncmp(keys[i].key, key, len) == 0 && keys[i].key[len] == '.')
            return true;
    return false;
}

/* The T_MAP key that key lies strictly below ("config.payments" -> config). */
static const key_def *find_map_above(const char *key)
{
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        size_t len = strlen(keys[i].key);
        if (keys[i].type == T_MAP && strncmp(keys[i].key, key, len) == 0 && key[len] == '.' &&
            key[len + 1])
            return &keys[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

/* Levenshtein distance, for "did you mean"; both strings at most MAX_KEY. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    size_t row[MAX_KEY + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Writes s into buf as a quoted, escaped, bounded excerpt: "abc", "ab\x01",
 * "a long valu...". Returns buf. */
static const char *quoted(const char *s, char *buf, size_t n)
{
    size_t o = 0;
    buf[o++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (o + 10 > n || o > 64) { /* room left for "...\"" and NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(buf + o, n - o, "\\x%02x", ch);
        } else {
            buf[o++] = (char)ch;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Decimal integer, sign allowed, no spaces, in [min, max]. */
static bool parse_int_text(const char *s, long long min, long long max, long long *out)
{
    if (!(s[0] == '-' || s[0] == '+' || isdigit((unsigned char)s[0])))
        return false;
    return loom__parse_int(s, min, max, out);
}

static bool parse_bool_text(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* "what the key expects", for error messages. */
static const char *describe(const key_def *d, char *buf, size_t n)
{
    switch (d->type) {
    case T_STR:
        return "a string";
    case T_INT:
        snprintf(buf, n, "an integer from %lld to %lld", d->min, d->max);
        return buf;
    case T_BOOL:
        return "true or false";
    case T_ENUM: {
        size_t o = (size_t)snprintf(buf, n, "one of ");
        for (const char *c = d->choices; *c && o + 3 < n; c++) {
            if (*c == '|') {
                buf[o++] = ',';
                buf[o++] = ' ';
            } else {
                buf[o++] = *c;
            }
        }
        buf[o] = '\0';
        return buf;
    }
    case T_LIST:
        return "a list of strings or a comma-separated string";
    case T_MAP:
        return "a mapping";
    }
    return "a value";
}

static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsObject(v))
        return "a mapping";
    if (cJSON_IsArray(v))
        return "a list";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsNumber(v))
        return "a number";
    return "a string";
}

/* YAML 1.2 core schema resolution of a plain scalar, for map values:
 * null/~/"" -> null, true/false -> bool, ints (decimal, 0x, 0o) and floats
 * -> number, anything else a string. Numbers that a double cannot hold
 * exactly (|int| > 2^53, inf, nan) stay strings, so nothing is lost. */
static cJSON *plain_to_json(const char *s)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    static const char *const trues[] = {"true", "True", "TRUE"};
    static const char *const falses[] = {"false", "False", "FALSE"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(nulls); i++)
        if (strcmp(s, nulls[i]) == 0)
            return cJSON_CreateNull();
    for (size_t i = 0; i < LOOM__ARRAY_LEN(trues); i++) {
        if (strcmp(s, trues[i]) == 0)
            return cJSON_CreateTrue();
        if (strcmp(s, falses[i]) == 0)
            return cJSON_CreateFalse();
    }
    const char *p = s;
    int base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
        base = s[1] == 'x' ? 16 : 8;
        p = s + 2;
        if (!*p)
            return cJSON_CreateString(s);
        for (const char *q = p; *q; q++)
            if (base == 16 ? !isxdigit((unsigned char)*q) : (*q < '0' || *q > '7'))
                return cJSON_CreateString(s);
        errno = 0;
        unsigned long long v = strtoull(p, NULL, base);
        if (errno || v > (1ULL << 53))
            return cJSON_CreateString(s);
        return cJSON_CreateNumber((double)v);
    }
    /* [-+]? ( \.[0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
    if (*p == '-' || *p == '+')
        p++;
    size_t int_digits = 0, frac_digits = 0;
    bool is_float = false;
    while (isdigit((unsigned char)*p)) {
        p++;
        int_digits++;
    }
    if (*p == '.') {
        is_float = true;
        p++;
        while (isdigit((unsigned char)*p)) {
            p++;
            frac_digits++;
        }
    }
    if (int_digits == 0 && frac_digits == 0)
        return cJSON_CreateString(s);
    if (*p == 'e' || *p == 'E') {
        is_float = true;
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!isdigit((unsigned char)*p))
            return cJSON_CreateString(s);
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p)
        return cJSON_CreateString(s);
    errno = 0;
    if (!is_float) {
        long long iv = strtoll(s, NULL, 10);
        if (errno || iv > (1LL << 53) || iv < -(1LL << 53))
            return cJSON_CreateString(s);
        return cJSON_CreateNumber((double)iv);
    }
    double v = loom__strtod_c(s, NULL);
    if (errno || !isfinite(v))
        return cJSON_CreateString(s);
    return cJSON_CreateNumber(v);
}

/* ------------------------------------------------------------------------ */
/* Value checks                                                              */

static bool check_instance(const cJSON *v, char *why, size_t n)
{
    const char *s = v->valuestring;
    size_t len = strlen(s);
    bool ok = len > 0 && len <= 128;
    for (const char *p = s; ok && *p; p++)
        ok = (unsigned char)*p > 0x20 && *p != 0x7f;
    if (!ok) {
        char q[80];
        snprintf(why, n, "expected 1 to 128 characters without spaces, got %s",
                 quoted(s, q, sizeof q));
    }
    return ok;
}

static bool check_services(const cJSON *v, char *why, size_t n)
{
    const cJSON *item;
    int count = cJSON_GetArraySize(v);
    cJSON_ArrayForEach(item, v)
    {
        const char *s = item->valuestring;
        char q[80];
        if ((strcmp(s, "all") == 0 || strcmp(s, "none") == 0) && count > 1) {
            snprintf(why, n, "\"%s\" cannot be combined with other services", s);
            return false;
        }
        for (const char *p = s; *p; p++) {
            if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') {
                snprintf(why, n,
                         "%s is not a service name (letters, digits, '_' and '-'), "
                         "or \"all\" / \"none\"",
                         quoted(s, q, sizeof q));
                return false;
            }
        }
    }
    return true;
}

static bool check_prefix(const cJSON *v, char *why, size_t n)
{
    const char *s = v->valuestring;
    /* The same rule the runtime applies, so a prefix that loads also runs. */
    if (!loom__topic_prefix_valid(s) || s[0] == '$') {
        char q[80];
        snprintf(why, n,
                 "expected a topic prefix (1 to 256 bytes, levels separated by single '/', "
                 "no '+', '#', '$' or control characters), got %s",
                 quoted(s, q, sizeof q));
        return false;
    }
    return true;
}

static bool check_listen(const cJSON *v, char *why, size_t n)
{
    const char *s = v->valuestring;
    const char *colon;
    char q[80];
    bool ok = true;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        ok = close && close > s + 1 && close[1] == ':';
        const char *zone = ok ? memchr(s, '%', (size_t)(close - s)) : NULL; /* fe80::1%eth0 */
        for (const char *p = s + 1; ok && p < (zone ? zone : close); p++)
            ok = isxdigit((unsigned char)*p) || *p == ':' || *p == '.';
        for (const char *p = zone ? zone + 1 : close; ok && p < close; p++)
            ok = isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.';
        ok = ok && (!zone || zone + 1 < close);
        colon = ok ? close + 1 : NULL;
    } else {
        colon = strrchr(s, ':');
        if (colon && memchr(s, ':', (size_t)(colon - s))) {
            snprintf(why, n, "IPv6 addresses must be in brackets, e.g. [::1]:8080, got %s",
                     quoted(s, q, sizeof q));
            return false;
        }
        ok = colon && colon > s;
        for (const char *p = s; ok && p < colon; p++)
            ok = (unsigned char)*p > 0x20 && *p != 0x7f && *p != '/';
    }
    long long port;
    if (!ok || !isdigit((unsigned char)colon[1]) || !parse_int_text(colon + 1, 0, 65535, &port)) {
        snprintf(why, n, "expected HOST:PORT with a port from 0 to 65535, got %s",
                 quoted(s, q, sizeof q));
        return false;
    }
    return true;
}

static bool check_base(const cJSON *v, char *why, size_t n)
{
    const char *s = v->valuestring;
    size_t len = strlen(s);
    if (len == 0) /* no base: routes are /v{version}/... */
        return true;
    bool ok = s[0] == '/' && s[len - 1] != '/' && !strstr(s, "//");
    for (const char *p = s; ok && *p; p++)
        ok = (unsigned char)*p > 0x20 && *p != 0x7f && *p != '?' && *p != '#';
    if (!ok) {
        char q[80];
        snprintf(why, n, "expected a path that starts with '/' and does not end with '/', got %s",
                 quoted(s, q, sizeof q));
    }
    return ok;
}

static bool check_concurrency(const cJSON *v, char *why, size_t n)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
    if (cJSON_IsNumber(v) && d >= 1 && d <= 2147483647.0 && d == (double)(long)d)
        return true;
    char q[80];
    if (cJSON_IsString(v))
        snprintf(why, n, "expected an integer from 1 to 2147483647, got %s",
                 quoted(v->valuestring, q, sizeof q));
    else if (cJSON_IsNumber(v) && isfinite(d) && loom__json_number(q, d))
        snprintf(why, n, "expected an integer from 1 to 2147483647, got %s", q);
    else
        snprintf(why, n, "expected an integer from 1 to 2147483647, got %s", json_kind(v));
    return false;
}

/* Runs the key's check on a finished value (null means "unset": fine). */
static bool run_check(const key_def *d, const cJSON *v, char *why, size_t n)
{
    if (!d->check || cJSON_IsNull(v) || d->type == T_MAP)
        return true;
    return d->check(v, why, n);
}

/* ------------------------------------------------------------------------ */
/* Parse context and errors                                                  */

typedef struct pctx {
    yaml_parser_t parser;
    bool parser_ready;
    const char *input; /* for reader errors, which only know a byte offset */
    size_t input_len;
    /* File mode (name set): "NAME:LINE: PATH: reason". Value mode (set and
     * environment): "LABEL: reason", with PATH added when it went deeper
     * than the key being set. */
    const char *name;
    const char *label;
    const char *key;
    char *err; /* ERR_LEN bytes: the config's error buffer */
    char path[PATH_LEN];
    size_t path_len;
    int depth;
} pctx;

static loom_err fail(pctx *c, int line, loom_err code, const char *fmt, ...) LOOM_PRINTF(4, 5);

static loom_err fail(pctx *c, int line, loom_err code, const char *fmt, ...)
{
    int o;
    if (c->name && c->path_len)
        o = snprintf(c->err, ERR_LEN, "%s:%d: %s: ", c->name, line, c->path);
    else if (c->name)
        o = snprintf(c->err, ERR_LEN, "%s:%d: ", c->name, line);
    else if (strcmp(c->path, c->key) == 0)
        o = snprintf(c->err, ERR_LEN, "%s: ", c->label);
    else if (strcmp(c->label, c->key) == 0)
        o = snprintf(c->err, ERR_LEN, "%s: ", c->path);
    else
        o = snprintf(c->err, ERR_LEN, "%s: %s: ", c->label, c->path);
    if (o >= 0 && o < ERR_LEN) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + o, ERR_LEN - (size_t)o, fmt, ap);
        va_end(ap);
    }
    return code;
}

static loom_err fail_nomem(pctx *c)
{
    loom__strlcpy(c->err, "out of memory", ERR_LEN);
    return LOOM_ENOMEM;
}

/* Appends ".seg" (or "seg" at the top) to the path; returns the length to
 * restore with path_pop. The path is only for messages and may truncate. */
static size_t path_push(pctx *c, const char *seg, bool dot)
{
    size_t saved = c->path_len;
    int w = snprintf(c->path + saved, PATH_LEN - saved, "%s%s", dot && saved ? "." : "", seg);
    c->path_len = w < 0 ? saved : saved + (size_t)w;
    if (c->path_len >= PATH_LEN)
        c->path_len = PATH_LEN - 1;
    return saved;
}

static void path_pop(pctx *c, size_t saved)
{
    c->path_len = saved;
    c->path[saved] = '\0';
}

/* A YAML syntax error is about the text, not about the key being read: a
 * file's message leaves the key out, a value's names only the key set. */
static loom_err fail_syntax(pctx *c, int line, const char *fmt, ...) LOOM_PRINTF(3, 4);

static loom_err fail_syntax(pctx *c, int line, const char *fmt, ...)
{
    char why[ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    char path[PATH_LEN];
    size_t saved = c->path_len;
    memcpy(path, c->path, saved + 1);
    path_pop(c, 0);
    if (!c->name)
        path_push(c, c->key, false);
    fail(c, line, LOOM_EPARSE, "%s", why);
    memcpy(c->path, path, saved + 1);
    c->path_len = saved;
    return LOOM_EPARSE;
}

static int ev_line(const yaml_event_t *ev)
{
    return (int)ev->start_mark.line + 1;
}

/* Reads the next event. Refuses aliases, anchors and tags other than the
 * plain !!str/!!map/!!seq, so nothing downstream has to. On error nothing
 * needs deleting. */
static loom_err next_event(pctx *c, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&c->parser, ev)) {
        const yaml_parser_t *p = &c->parser;
        const char *problem = p->problem ? p->problem : "unknown error";
        if (p->error == YAML_MEMORY_ERROR)
            return fail_nomem(c);
        if (p->error == YAML_READER_ERROR) {
            int line = 1;
            for (size_t i = 0; i < p->problem_offset && i < c->input_len; i++)
                line += c->input[i] == '\n';
            return fail_syntax(c, line, "malformed YAML: %s (byte %zu)", problem,
                               p->problem_offset);
        }
        /* Scanner contexts say what was left open ("while scanning a quoted
         * scalar"); parser contexts add nothing the problem does not say. */
        char extra[128] = "";
        size_t at = p->problem_mark.index;
        bool tab = at < c->input_len && c->input[at] == '\t';
        if (!tab && p->error == YAML_SCANNER_ERROR && p->context &&
            strcmp(p->context, "while scanning for the next token") != 0)
            snprintf(extra, sizeof extra, ", %s that starts on line %d", p->context,
                     (int)p->context_mark.line + 1);
        return fail_syntax(c, (int)p->problem_mark.line + 1, "malformed YAML: %s (column %d%s)%s",
                           problem, (int)p->problem_mark.column + 1,
                           tab ? ": a tab; indent with spaces" : "", extra);
    }
    const yaml_char_t *anchor = NULL, *tag = NULL;
    const char *ok1 = NULL, *ok2 = NULL;
    switch (ev->type) {
    case YAML_ALIAS_EVENT: {
        int line = ev_line(ev);
        yaml_event_delete(ev);
        return fail(c, line, LOOM_EPARSE, "aliases are not supported");
    }
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        ok1 = YAML_STR_TAG;
        ok2 = "!";
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        ok1 = YAML_SEQ_TAG;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        ok1 = YAML_MAP_TAG;
        break;
    default:
        break;
    }
    int line = ev_line(ev);
    if (anchor) {
        yaml_event_delete(ev);
        return fail(c, line, LOOM_EPARSE, "anchors and aliases are not supported");
    }
    if (tag && strcmp((const char *)tag, ok1) != 0 &&
        !(ok2 && strcmp((const char *)tag, ok2) == 0)) {
        yaml_event_delete(ev);
        return fail(c, line, LOOM_EPARSE, "YAML tags are not supported (only !!str)");
    }
    return LOOM_OK;
}

/* The scalar's text, or NULL (event deleted, error set) when it holds NUL. */
static const char *scalar_text(pctx *c, yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    if (memchr(s, '\0', ev->data.scalar.length)) {
        fail(c, ev_line(ev), LOOM_EPARSE, "NUL characters are not allowed");
        yaml_event_delete(ev);
        return NULL;
    }
    return s;
}

/* A plain (unquoted, untagged) scalar that YAML reads as null. */
static bool is_plain_null(const yaml_event_t *ev)
{
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || ev->data.scalar.tag)
        return false;
    const char *s = (const char *)ev->data.scalar.value;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static const char *node_kind(const yaml_event_t *ev)
{
    return ev->type == YAML_MAPPING_START_EVENT ? "a mapping" : "a list";
}

/* ------------------------------------------------------------------------ */
/* Duplicate-key detection: a small open-addressing set per mapping, so a
 * 1 MiB file of keys stays linear.                                         */

typedef struct seen_slot {
    char *key;
    int line;
} seen_slot;

typedef struct seen_set {
    seen_slot *slots;
    size_t cap, n;
} seen_set;

static size_t hash_str(const char *s)
{
    size_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* 0 when added, the earlier line when key is already there, -1 on ENOMEM. */
static int seen_add(seen_set *s, const char *key, int line)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        seen_slot *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slots[i].key)
                continue;
            size_t j = hash_str(s->slots[i].key) & (cap - 1);
            while (slots[j].key)
                j = (j + 1) & (cap - 1);
            slots[j] = s->slots[i];
        }
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t j = hash_str(key) & (s->cap - 1);
    for (; s->slots[j].key; j = (j + 1) & (s->cap - 1))
        if (strcmp(s->slots[j].key, key) == 0)
            return s->slots[j].line;
    if (!(s->slots[j].key = strdup(key)))
        return -1;
    s->slots[j].line = line;
    s->n++;
    return 0;
}

static void seen_free(seen_set *s)
{
    for (size_t i = 0; i < s->cap; i++)
        free(s->slots[i].key);
    free(s->slots);
}

/* Reads one mapping key (after MAPPING_START); *done at MAPPING_END. On
 * success *key is a copy the caller frees and the key is recorded in seen. */
static loom_err read_key(pctx *c, seen_set *seen, char **key, int *line, bool *done)
{
    yaml_event_t ev;
    loom_err e = next_event(c, &ev);
    *done = false;
    if (e)
        return e;
    *line = ev_line(&ev);
    if (ev.type == YAML_MAPPING_END_EVENT) {
        yaml_event_delete(&ev);
        *done = true;
        return LOOM_OK;
    }
    if (ev.type != YAML_SCALAR_EVENT) {
        yaml_event_delete(&ev);
        return fail(c, *line, LOOM_EPARSE, "mapping keys must be strings");
    }
    const char *s = scalar_text(c, &ev);
    if (!s)
        return LOOM_EPARSE;
    if (!*s) {
        yaml_event_delete(&ev);
        return fail(c, *line, LOOM_EPARSE, "empty key");
    }
    *key = strdup(s);
    yaml_event_delete(&ev);
    if (!*key)
        return fail_nomem(c);
    int first = seen_add(seen, *key, *line);
    if (first == 0)
        return LOOM_OK;
    if (first < 0) {
        free(*key);
        return fail_nomem(c);
    }
    size_t saved = path_push(c, *key, true);
    e = fail(c, *line, LOOM_EPARSE, "duplicate key (first defined on line %d)", first);
    path_pop(c, saved);
    free(*key);
    return e;
}

/* ------------------------------------------------------------------------ */
/* YAML -> JSON for map values (schema-free data)                            */

static loom_err parse_data(pctx *c, yaml_event_t *ev, cJSON **out);

/* The entries of a mapping (MAPPING_START consumed) into a new object; check
 * (optional) validates each direct child value. */
static loom_err parse_data_mapping(pctx *c, check_fn check, cJSON **out)
{
    cJSON *obj = cJSON_CreateObject();
    seen_set seen = {0};
    loom_err e = obj ? LOOM_OK : fail_nomem(c);
    while (!e) {
        char *key = NULL;
        int line;
        bool done;
        if ((e = read_key(c, &seen, &key, &line, &done)) || done)
            break;
        size_t saved = path_push(c, key, true);
        yaml_event_t ev;
        cJSON *v = NULL;
        if (!(e = next_event(c, &ev))) {
            int vline = ev_line(&ev);
            e = parse_data(c, &ev, &v);
            char why[ERR_LEN];
            if (!e && check && !check(v, why, sizeof why))
                e = fail(c, vline, LOOM_ECONFIG, "%s", why);
        }
        if (!e && !cJSON_AddItemToObject(obj, key, v))
            e = fail_nomem(c);
        else if (!e)
            v = NULL;
        cJSON_Delete(v);
        path_pop(c, saved);
        free(key);
    }
    seen_free(&seen);
    if (e)
        cJSON_Delete(obj);
    else
        *out = obj;
    return e;
}

/* Consumes the node that starts with ev (always deleted). */
static loom_err parse_data(pctx *c, yaml_event_t *ev, cJSON **out)
{
    int line = ev_line(ev);
    *out = NULL;
    if (ev->type == YAML_SCALAR_EVENT) {
        const char *s = scalar_text(c, ev);
        if (!s)
            return LOOM_EPARSE;
        bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !ev->data.scalar.tag;
        *out = plain ? plain_to_json(s) : cJSON_CreateString(s);
        yaml_event_delete(ev);
        return *out ? LOOM_OK : fail_nomem(c);
    }
    if (ev->type != YAML_SEQUENCE_START_EVENT && ev->type != YAML_MAPPING_START_EVENT) {
        yaml_event_delete(ev); /* cannot happen in a well-formed stream */
        return fail(c, line, LOOM_EPARSE, "unexpected YAML event");
    }
    bool mapping = ev->type == YAML_MAPPING_START_EVENT;
    yaml_event_delete(ev);
    if (c->depth >= MAX_DEPTH)
        return fail(c, line, LOOM_EPARSE, "nested deeper than %d levels", MAX_DEPTH);
    c->depth++;
    loom_err e = LOOM_OK;
    if (mapping) {
        e = parse_data_mapping(c, NULL, out);
    } else {
        cJSON *arr = cJSON_CreateArray();
        e = arr ? LOOM_OK : fail_nomem(c);
        for (int i = 0; !e; i++) {
            yaml_event_t item;
            if ((e = next_event(c, &item)))
                break;
            if (item.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&item);
                break;
            }
            char idx[24];
            snprintf(idx, sizeof idx, "[%d]", i);
            size_t saved = path_push(c, idx, false);
            cJSON *v;
            if (!(e = parse_data(c, &item, &v)) && !cJSON_AddItemToArray(arr, v)) {
                cJSON_Delete(v);
                e = fail_nomem(c);
            }
            path_pop(c, saved);
        }
        if (e)
            cJSON_Delete(arr);
        else
            *out = arr;
    }
    c->depth--;
    return e;
}

/* ------------------------------------------------------------------------ */
/* Typed values                                                              */

/* Parses text by the key's type (not T_MAP) into a new JSON value. On a bad
 * value writes the reason and returns LOOM_ECONFIG. */
static loom_err typed_from_text(const key_def *d, const char *s, cJSON **out, char *why, size_t n)
{
    char q[80], what[160];
    *out = NULL;
    switch (d->type) {
    case T_STR:
        *out = cJSON_CreateString(s);
        break;
    case T_INT: {
        long long v;
        if (!parse_int_text(s, d->min, d->max, &v))
            goto bad;
        *out = cJSON_CreateNumber((double)v);
        break;
    }
    case T_BOOL: {
        bool b;
        if (!parse_bool_text(s, &b))
            goto bad;
        *out = cJSON_CreateBool(b);
        break;
    }
    case T_ENUM: {
        const char *c = d->choices;
        size_t len = strlen(s);
        while (*c) {
            size_t clen = strcspn(c, "|");
            if (clen == len && strncasecmp(c, s, len) == 0) {
                char canon[64];
                loom__strlcpy(canon, c, clen + 1 < sizeof canon ? clen + 1 : sizeof canon);
                *out = cJSON_CreateString(canon);
                break;
            }
            c += clen + (c[clen] == '|');
        }
        if (!*c)
            goto bad;
        break;
    }
    case T_LIST: {
        /* One comma-separated string: items trimmed, none may be empty. */
        cJSON *arr = cJSON_CreateArray();
        if (!arr)
            return LOOM_ENOMEM;
        const char *p = s;
        while (*p) {
            size_t len = strcspn(p, ",");
            const char *a = p, *b = p + len;
            while (a < b && isspace((unsigned char)*a))
                a++;
            while (b > a && isspace((unsigned char)b[-1]))
                b--;
            if (a == b) {
                cJSON_Delete(arr);
                snprintf(why, n, "empty item in comma-separated list");
                return LOOM_ECONFIG;
            }
            char *item = strndup(a, (size_t)(b - a));
            cJSON *js = item ? cJSON_CreateString(item) : NULL;
            free(item);
            if (!js || !cJSON_AddItemToArray(arr, js)) {
                cJSON_Delete(js);
                cJSON_Delete(arr);
                return LOOM_ENOMEM;
            }
            p += len + (p[len] == ',');
            if (!*p && p[-1] == ',') {
                cJSON_Delete(arr);
                snprintf(why, n, "empty item in comma-separated list");
                return LOOM_ECONFIG;
            }
        }
        *out = arr;
        break;
    }
    case T_MAP:
        snprintf(why, n, "expected a mapping, got %s", quoted(s, q, sizeof q));
        return LOOM_ECONFIG;
    }
    return *out ? LOOM_OK : LOOM_ENOMEM;
bad:
    snprintf(why, n, "expected %s, got %s", describe(d, what, sizeof what), quoted(s, q, sizeof q));
    return LOOM_ECONFIG;
}

/* A YAML sequence for a T_LIST key (SEQUENCE_START consumed). */
static loom_err parse_list_seq(pctx *c, cJSON **out)
{
    cJSON *arr = cJSON_CreateArray();
    loom_err e = arr ? LOOM_OK : fail_nomem(c);
    while (!e) {
        yaml_event_t ev;
        if ((e = next_event(c, &ev)))
            break;
        int line = ev_line(&ev);
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            const char *kind = node_kind(&ev);
            yaml_event_delete(&ev);
            e = fail(c, line, LOOM_ECONFIG, "list items must be strings, got %s", kind);
            break;
        }
        const char *s = scalar_text(c, &ev);
        if (!s) {
            e = LOOM_EPARSE;
            break;
        }
        bool empty = !*s;
        cJSON *js = empty ? NULL : cJSON_CreateString(s);
        yaml_event_delete(&ev);
        if (empty) {
            e = fail(c, line, LOOM_ECONFIG, "empty list item");
        } else if (!js || !cJSON_AddItemToArray(arr, js)) {
            cJSON_Delete(js);
            e = fail_nomem(c);
        }
    }
    if (e)
        cJSON_Delete(arr);
    else
        *out = arr;
    return e;
}

/* The value node of a known key (ev is its first event, always consumed). */
static loom_err parse_leaf(pctx *c, const key_def *d, yaml_event_t *ev, cJSON **out)
{
    int line = ev_line(ev);
    char why[ERR_LEN], what[160];
    loom_err e;
    *out = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        const char *s = scalar_text(c, ev);
        if (!s)
            return LOOM_EPARSE;
        if (is_plain_null(ev)) {
            yaml_event_delete(ev);
            *out = cJSON_CreateNull();
            return *out ? LOOM_OK : fail_nomem(c);
        }
        e = typed_from_text(d, s, out, why, sizeof why);
        yaml_event_delete(ev);
        if (e == LOOM_ENOMEM)
            return fail_nomem(c);
        if (e)
            return fail(c, line, e, "%s", why);
        break;
    }
    case YAML_SEQUENCE_START_EVENT:
        yaml_event_delete(ev);
        if (d->type != T_LIST)
            return fail(c, line, LOOM_ECONFIG, "expected %s, got a list",
                        describe(d, what, sizeof what));
        if ((e = parse_list_seq(c, out)))
            return e;
        break;
    case YAML_MAPPING_START_EVENT:
        yaml_event_delete(ev);
        if (d->type != T_MAP)
            return fail(c, line, LOOM_ECONFIG, "expected %s, got a mapping",
                        describe(d, what, sizeof what));
        if (c->depth >= MAX_DEPTH)
            return fail(c, line, LOOM_EPARSE, "nested deeper than %d levels", MAX_DEPTH);
        c->depth++;
        e = parse_data_mapping(c, d->check, out);
        c->depth--;
        return e;
    default:
        yaml_event_delete(ev);
        return fail(c, line, LOOM_EPARSE, "unexpected YAML event");
    }
    if (!run_check(d, *out, why, sizeof why)) {
        cJSON_Delete(*out);
        *out = NULL;
        return fail(c, line, LOOM_ECONFIG, "%s", why);
    }
    return LOOM_OK;
}

/* "unknown key" with a suggestion among the siblings under section, or the
 * list of what is allowed there. The caller has pushed key on the path. */
static loom_err unknown_key(pctx *c, int line, const char *section, const char *key)
{
    size_t slen = strlen(section), klen = strlen(key);
    const char *best = NULL;
    size_t best_len = 0, best_d = 3;
    char known[ERR_LEN] = "";
    size_t o = 0;
    for (size_t i = 0; i < LOOM__ARRAY_LEN(keys); i++) {
        const char *k = keys[i].key;
        if (slen && (strncmp(k, section, slen) != 0 || k[slen] != '.'))
            continue;
        const char *seg = slen ? k + slen + 1 : k;
        size_t len = strcspn(seg, ".");
        bool dup = false; /* sections repeat once per key below them */
        for (size_t j = 0; j < i && !dup; j++) {
            const char *kj = keys[j].key;
            dup = strncmp(kj, k, (size_t)(seg - k) + len) == 0 &&
                  (kj[(seg - k) + len] == '.' || !kj[(seg - k) + len]);
        }
        if (dup)
            continue;
        if (klen <= MAX_KEY) {
            size_t dist = edit_distance(key, klen, seg, len);
            if (dist < best_d) {
                best_d = dist;
                best = seg;
                best_len = len;
            }
        }
        if (o + len + 3 < sizeof known) {
            o += (size_t)snprintf(known + o, sizeof known - o, "%s%.*s", o ? ", " : "", (int)len,
                                  seg);
        }
    }
    if (best)
        return fail(c, line, LOOM_ECONFIG, "unknown key (did you mean '%.*s'?)", (int)best_len,
                    best);
    return fail(c, line, LOOM_ECONFIG, "unknown key (known keys here: %s)", known);
}

/* A section mapping of known keys (MAPPING_START consumed) into obj.
 * c->path is the section's dotted path ("" at the top). */
static loom_err parse_section(pctx *c, cJSON *obj)
{
    seen_set seen = {0};
    loom_err e = LOOM_OK;
    char section[PATH_LEN];
    memcpy(section, c->path, c->path_len + 1);
    while (!e) {
        char *key = NULL;
        int line;
        bool done;
        if ((e = read_key(c, &seen, &key, &line, &done)) || done)
            break;
        size_t saved = path_push(c, key, true);
        /* Keys are single names: "broker.url" at the top is not a path. */
        bool plain = strlen(key) <= MAX_KEY && !strchr(key, '.');
        const key_def *d = plain ? find_key(c->path) : NULL;
        bool sub = !d && plain && is_section(c->path);
        yaml_event_t ev;
        cJSON *v = NULL;
        if (!plain && strlen(key) <= MAX_KEY && (find_key(c->path) || is_section(c->path))) {
            const char *dot = strrchr(key, '.');
            e = fail(c, line, LOOM_ECONFIG,
                     "dotted keys are not paths in a file: nest '%s' under '%.*s'", dot + 1,
                     (int)(dot - key), key);
        } else if (!d && !sub) {
            e = unknown_key(c, line, section, key);
        } else if (!(e = next_event(c, &ev))) {
            int vline = ev_line(&ev);
            if (d) {
                e = parse_leaf(c, d, &ev, &v);
            } else if (ev.type == YAML_MAPPING_START_EVENT) {
                yaml_event_delete(&ev);
                if (!(v = cJSON_CreateObject()))
                    e = fail_nomem(c);
                c->depth++;
                if (!e)
                    e = parse_section(c, v);
                c->depth--;
            } else if (ev.type == YAML_SCALAR_EVENT && is_plain_null(&ev)) {
                yaml_event_delete(&ev); /* an empty section */
            } else {
                char got[96];
                if (ev.type == YAML_SCALAR_EVENT)
                    quoted((const char *)ev.data.scalar.value, got, sizeof got);
                else
                    loom__strlcpy(got, node_kind(&ev), sizeof got);
                yaml_event_delete(&ev);
                e = fail(c, vline, LOOM_ECONFIG,
                         "is a section: expected a mapping of its keys, got %s", got);
            }
        }
        if (!e && v) {
            if (cJSON_AddItemToObject(obj, key, v))
                v = NULL;
            else
                e = fail_nomem(c);
        }
        cJSON_Delete(v);
        path_pop(c, saved);
        free(key);
    }
    seen_free(&seen);
    return e;
}

static loom_err parser_start(pctx *c, const char *input, size_t len)
{
    if (!yaml_parser_initialize(&c->parser))
        return fail_nomem(c);
    c->parser_ready = true;
    c->input = input;
    c->input_len = len;
    yaml_parser_set_input_string(&c->parser, (const unsigned char *)input, len);
    return LOOM_OK;
}

static void parser_end(pctx *c)
{
    if (c->parser_ready)
        yaml_parser_delete(&c->parser);
    c->parser_ready = false;
}

/* Reads the one document of the stream and hands its root node's first
 * event to root(). A stream without a document is fine and calls nothing. */
typedef loom_err (*root_fn)(pctx *c, yaml_event_t *ev, void *arg);

static loom_err parse_stream(pctx *c, root_fn root, void *arg)
{
    yaml_event_t ev;
    loom_err e;
    if ((e = next_event(c, &ev))) /* STREAM_START */
        return e;
    yaml_event_delete(&ev);
    if ((e = next_event(c, &ev)))
        return e;
    if (ev.type == YAML_STREAM_END_EVENT) { /* no document at all */
        yaml_event_delete(&ev);
        return LOOM_OK;
    }
    yaml_event_delete(&ev); /* DOCUMENT_START */
    if ((e = next_event(c, &ev)))
        return e;
    if ((e = root(c, &ev, arg)))
        return e;
    if ((e = next_event(c, &ev))) /* DOCUMENT_END */
        return e;
    yaml_event_delete(&ev);
    if ((e = next_event(c, &ev)))
        return e;
    int line = ev_line(&ev);
    bool more = ev.type != YAML_STREAM_END_EVENT;
    yaml_event_delete(&ev);
    if (more)
        return fail(c, line, LOOM_EPARSE, "multiple YAML documents are not supported");
    return LOOM_OK;
}

/* The root of a configuration file: a mapping of known keys, or nothing. */
static loom_err file_root(pctx *c, yaml_event_t *ev, void *arg)
{
    int line = ev_line(ev);
    if (ev->type == YAML_MAPPING_START_EVENT) {
        yaml_event_delete(ev);
        c->depth = 1;
        return parse_section(c, arg);
    }
    bool empty = ev->type == YAML_SCALAR_EVENT && is_plain_null(ev);
    yaml_event_delete(ev);
    if (empty)
        return LOOM_OK;
    return fail(c, line, LOOM_ECONFIG, "the top level must be a mapping of keys");
}

/* The root of a value given as YAML text (set on a map key). */
static loom_err value_root(pctx *c, yaml_event_t *ev, void *arg)
{
    cJSON **out = arg;
    c->depth = 0;
    return parse_data(c, ev, out);
}

/* ------------------------------------------------------------------------ */
/* Merging an overlay                                                        */

/* Puts item (detached, named) into target, replacing a same-named child. */
static bool put_item(cJSON *target, cJSON *item)
{
    cJSON *cur = cJSON_GetObjectItemCaseSensitive(target, item->string);
    if (cur)
        return cJSON_ReplaceItemViaPointer(target, cur, item);
    /* cJSON copies the key: hand it a key that is not item's own. */
    char *k = item->string;
    item->string = NULL;
    bool ok = cJSON_AddItemToObject(target, k, item);
    cJSON_free(k);
    return ok;
}

/* Map values merge deeply: objects key by key, anything else replaces. */
static bool merge_data(cJSON *target, cJSON *src)
{
    cJSON *item = src->child;
    while (item) {
        cJSON *next = item->next;
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(target, item->string);
        if (cur && cJSON_IsObject(cur) && cJSON_IsObject(item)) {
            if (!merge_data(cur, item))
                return false;
        } else {
            cJSON_DetachItemViaPointer(src, item);
            if (!put_item(target, item)) {
                cJSON_Delete(item);
                return false;
            }
        }
        item = next;
    }
    return true;
}

/* Moves the overlay section's values into target (same section). path is
 * the section's dotted path. Empty sections are pruned. */
static bool merge_section(cJSON *target, cJSON *overlay, const char *path)
{
    cJSON *item = overlay->child;
    while (item) {
        cJSON *next = item->next;
        char *full = *path ? loom__asprintf("%s.%s", path, item->string) : strdup(item->string);
        if (!full)
            return false;
        const key_def *d = find_key(full);
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(target, item->string);
        bool ok = true;
        if (!d) { /* a section */
            if (!cur)
                cur = cJSON_AddObjectToObject(target, item->string);
            ok = cur && merge_section(cur, item, full);
            if (ok && !cur->child)
                cJSON_DeleteItemFromObjectCaseSensitive(target, item->string);
        } else if (cJSON_IsNull(item)) {
            cJSON_DeleteItemFromObjectCaseSensitive(target, item->string);
        } else if (d->type == T_MAP && cur && cJSON_IsObject(cur)) {
            ok = merge_data(cur, item);
        } else {
            cJSON_DetachItemViaPointer(overlay, item);
            if (!(ok = put_item(target, item)))
                cJSON_Delete(item);
        }
        free(full);
        if (!ok)
            return false;
        item = next;
    }
    return true;
}

/* Merges overlay (consumed) into a copy of the tree and swaps it in. */
static loom_err commit(loom_config *cfg, cJSON *overlay)
{
    cJSON *next = cJSON_Duplicate(cfg->tree, true);
    bool ok = next && merge_section(next, overlay, "");
    cJSON_Delete(overlay);
    if (!ok) {
        cJSON_Delete(next);
        loom__strlcpy(cfg->err, "out of memory", ERR_LEN);
        return LOOM_ENOMEM;
    }
    cJSON_Delete(cfg->tree);
    cfg->tree = next;
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */

loom_err loom_config_create(loom_config **out)
{
    if (!out)
        return LOOM_EINVAL;
    *out = NULL;
    loom_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return LOOM_ENOMEM;
    if (!(cfg->tree = cJSON_CreateObject())) {
        free(cfg);
        return LOOM_ENOMEM;
    }
    *out = cfg;
    return LOOM_OK;
}

void loom_config_destroy(loom_config *cfg)
{
    if (!cfg)
        return;
    cJSON_Delete(cfg->tree);
    free(cfg);
}

loom_err loom_config_load_string(loom_config *cfg, const char *yaml, size_t len, const char *name)
{
    if (!cfg)
        return LOOM_EINVAL;
    cfg->err[0] = '\0';
    if (!name)
        name = "<string>";
    if (!yaml && len) {
        snprintf(cfg->err, ERR_LEN, "%s: no YAML text given", name);
        return LOOM_EINVAL;
    }
    if (len > MAX_INPUT) {
        snprintf(cfg->err, ERR_LEN, "%s: larger than the 1 MiB limit for configuration", name);
        return LOOM_ETOOBIG;
    }
    cJSON *overlay = cJSON_CreateObject();
    if (!overlay) {
        loom__strlcpy(cfg->err, "out of memory", ERR_LEN);
        return LOOM_ENOMEM;
    }
    pctx c = {.name = name, .err = cfg->err};
    loom_err e = parser_start(&c, yaml ? yaml : "", len);
    if (!e)
        e = parse_stream(&c, file_root, overlay);
    parser_end(&c);
    if (e) {
        cJSON_Delete(overlay);
        return e;
    }
    return commit(cfg, overlay);
}

loom_err loom_config_load_file(loom_config *cfg, const char *path)
{
    if (!cfg || !path)
        return LOOM_EINVAL;
    cfg->err[0] = '\0';
    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(cfg->err, ERR_LEN, "%s: cannot open: %s", path,
                 strerror_r(errno, ebuf, sizeof ebuf));
        return LOOM_EIO;
    }
    /* Read at most MAX_INPUT + 1 bytes, whatever the file claims to be
     * (pipes and /proc files report no size). */
    struct stat st;
    size_t cap = 4096;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0)
        cap = (size_t)st.st_size < MAX_INPUT ? (size_t)st.st_size + 1 : MAX_INPUT + 1;
    char *buf = malloc(cap);
    size_t len = 0;
    loom_err e = buf ? LOOM_OK : LOOM_ENOMEM;
    while (!e) {
        if (len == cap) {
            if (cap == MAX_INPUT + 1) {
                e = LOOM_ETOOBIG;
                break;
            }
            size_t ncap = cap * 2 < MAX_INPUT + 1 ? cap * 2 : MAX_INPUT + 1;
            char *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                e = LOOM_ENOMEM;
                break;
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(cfg->err, ERR_LEN, "%s: cannot read: %s", path,
                     strerror_r(errno, ebuf, sizeof ebuf));
            e = LOOM_EIO;
        } else if (r == 0) {
            break;
        } else {
            len += (size_t)r;
        }
    }
    close(fd);
    if (e == LOOM_ETOOBIG || (!e && len > MAX_INPUT)) {
        snprintf(cfg->err, ERR_LEN, "%s: larger than the 1 MiB limit for configuration", path);
        e = LOOM_ETOOBIG;
    } else if (e == LOOM_ENOMEM) {
        loom__strlcpy(cfg->err, "out of memory", ERR_LEN);
    }
    if (!e)
        e = loom_config_load_string(cfg, buf, len, path);
    free(buf);
    return e;
}

/* Parses one text value for key into overlay (value mode). */
static loom_err set_into(pctx *c, cJSON *overlay, const char *key, const char *value)
{
    const key_def *d = find_key(key);
    const key_def *map = d ? NULL : find_map_above(key);
    char why[ERR_LEN];
    cJSON *v = NULL;
    loom_err e = LOOM_OK;

    if (key[0] == '.' || key[strlen(key) - 1] == '.' || strstr(key, ".."))
        return fail(c, 0, LOOM_ECONFIG, "malformed key (an empty name between dots)");
    if (!d && !map) {
        if (is_section(key)) {
            size_t len = strlen(key);
            const char *example = "";
            for (size_t i = 0; i < LOOM__ARRAY_LEN(keys) && !*example; i++)
                if (strncmp(keys[i].key, key, len) == 0 && keys[i].key[len] == '.')
                    example = keys[i].key;
            return fail(c, 0, LOOM_ECONFIG, "is a section: set one of its keys, such as '%s'",
                        example);
        }
        /* Suggest among all full keys. */
        const char *best = NULL;
        size_t best_d = 3, klen = strlen(key);
        for (size_t i = 0; i < LOOM__ARRAY_LEN(keys) && klen <= MAX_KEY; i++) {
            size_t dist = edit_distance(key, klen, keys[i].key, strlen(keys[i].key));
            if (dist < best_d) {
                best_d = dist;
                best = keys[i].key;
            }
        }
        if (best)
            return fail(c, 0, LOOM_ECONFIG, "unknown key (did you mean '%s'?)", best);
        return fail(c, 0, LOOM_ECONFIG, "unknown key");
    }

    const key_def *typed = d ? d : map;
    size_t skip = strspn(value, " \t");
    if (typed->type == T_MAP && (d || value[skip] == '{' || value[skip] == '[')) {
        /* A map, or a collection inside one, given as YAML ({a: 1}, [1, 2]). */
        e = parser_start(c, value, strlen(value));
        if (!e)
            e = parse_stream(c, value_root, &v);
        parser_end(c);
        if (e) {
            cJSON_Delete(v); /* a root parsed before a later error */
            return e;
        }
        if (d && v && !cJSON_IsObject(v) && !cJSON_IsNull(v)) {
            char got[96];
            if (cJSON_IsString(v))
                quoted(v->valuestring, got, sizeof got);
            else
                snprintf(got, sizeof got, "%s", json_kind(v));
            cJSON_Delete(v);
            return fail(c, 0, LOOM_ECONFIG, "expected a mapping, got %s", got);
        }
        if (!v && !(v = cJSON_CreateNull()))
            return fail_nomem(c);
    } else if (typed->type == T_MAP) {
        if (!(v = plain_to_json(value)))
            return fail_nomem(c);
    } else {
        e = typed_from_text(d, value, &v, why, sizeof why);
        if (e == LOOM_ENOMEM)
            return fail_nomem(c);
        if (e)
            return fail(c, 0, e, "%s", why);
    }

    /* Checks: the key's own, or a flat map's on this child / each child. */
    bool ok = true;
    if (d && d->type != T_MAP) {
        ok = run_check(d, v, why, sizeof why);
    } else if (map && map->check) {
        ok = map->check(v, why, sizeof why);
    } else if (d && d->check && cJSON_IsObject(v)) {
        const cJSON *child;
        cJSON_ArrayForEach(child, v)
        {
            if (!(ok = d->check(child, why, sizeof why))) {
                size_t saved = path_push(c, child->string, true);
                e = fail(c, 0, LOOM_ECONFIG, "%s", why);
                path_pop(c, saved);
                cJSON_Delete(v);
                return e;
            }
        }
    }
    if (!ok) {
        cJSON_Delete(v);
        return fail(c, 0, LOOM_ECONFIG, "%s", why);
    }

    /* Build the overlay path: the key's sections, then, below a map, one
     * object per dotted segment (a flat map takes the rest as one name). */
    char *copy = strdup(key);
    if (!copy) {
        cJSON_Delete(v);
        return fail_nomem(c);
    }
    cJSON *at = overlay;
    size_t map_len = map ? strlen(map->key) : 0;
    char *seg = copy;
    for (;;) {
        char *dot = strchr(seg, '.');
        if (dot && map && map->check && (size_t)(seg - copy) > map_len)
            dot = NULL; /* flat map: the rest is one name */
        if (!dot)
            break;
        *dot = '\0';
        cJSON *sub = cJSON_GetObjectItemCaseSensitive(at, seg);
        if (!sub)
            sub = cJSON_AddObjectToObject(at, seg);
        if (!sub || !cJSON_IsObject(sub)) {
            free(copy);
            cJSON_Delete(v);
            return fail_nomem(c);
        }
        at = sub;
        seg = dot + 1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(at, seg); /* one value per key */
    bool added = cJSON_AddItemToObject(at, seg, v);
    free(copy);
    if (!added) {
        cJSON_Delete(v);
        return fail_nomem(c);
    }
    return LOOM_OK;
}

loom_err loom__config_set_from(loom_config *cfg, const char *source, const char *key,
                               const char *value)
{
    if (!cfg)
        return LOOM_EINVAL;
    cfg->err[0] = '\0';
    if (!key || !value || !*key) {
        snprintf(cfg->err, ERR_LEN, "%s: a key and a value are required", source ? source : "set");
        return LOOM_EINVAL;
    }
    cJSON *overlay = cJSON_CreateObject();
    if (!overlay) {
        loom__strlcpy(cfg->err, "out of memory", ERR_LEN);
        return LOOM_ENOMEM;
    }
    pctx c = {.label = source ? source : key, .key = key, .err = cfg->err};
    path_push(&c, key, false);
    loom_err e = set_into(&c, overlay, key, value);
    if (e) {
        cJSON_Delete(overlay);
        return e;
    }
    return commit(cfg, overlay);
}

loom_err loom_config_set(loom_config *cfg, const char *key, const char *value)
{
    return loom__config_set_from(cfg, NULL, key, value);
}

loom_err loom_config_apply_env(loom_config *cfg)
{
    if (!cfg)
        return LOOM_EINVAL;
    cfg->err[0] = '\0';
    cJSON *overlay = cJSON_CreateObject();
    if (!overlay) {
        loom__strlcpy(cfg->err, "out of memory", ERR_LEN);
        return LOOM_ENOMEM;
    }
    for (size_t i = 0; i < LOOM__ARRAY_LEN(env_keys); i++) {
        const char *value = getenv(env_keys[i].var);
        if (!value || !*value)
            continue;
        char label[64];
        snprintf(label, sizeof label, "environment %s", env_keys[i].var);
        pctx c = {.label = label, .key = env_keys[i].key, .err = cfg->err};
        path_push(&c, env_keys[i].key, false);
        loom_err e = set_into(&c, overlay, env_keys[i].key, value);
        if (e) {
            cJSON_Delete(overlay);
            return e;
        }
    }
    return commit(cfg, overlay);
}

const char *loom_config_error(const loom_config *cfg)
{
    if (!cfg)
        return "";
    /* Errors quote values (a broker URL, a --set argument): mask them once
     * here, where they leave the config (masking is idempotent). */
    char tmp[ERR_LEN];
    size_t n = loom__mask_secrets(cfg->err, strlen(cfg->err), tmp, sizeof tmp);
    memcpy(((loom_config *)cfg)->err, tmp, n + 1);
    return cfg->err;
}

const cJSON *loom_config_tree(const loom_config *cfg)
{
    return cfg ? cfg->tree : NULL;
}

/* Walks obj by a dotted path. A child whose name contains dots (a command
 * name under limits.concurrency) is found too: at each level the whole
 * remaining path is tried first, then each dotted prefix. */
static const cJSON *walk(const cJSON *obj, const char *path, int depth)
{
    if (!cJSON_IsObject(obj) || depth > MAX_DEPTH)
        return NULL;
    const cJSON *hit = cJSON_GetObjectItemCaseSensitive(obj, path);
    if (hit)
        return hit;
    for (const cJSON *child = obj->child; child; child = child->next) {
        size_t len = strlen(child->string);
        if (cJSON_IsObject(child) && strncmp(path, child->string, len) == 0 && path[len] == '.' &&
            (hit = walk(child, path + len + 1, depth + 1)))
            return hit;
    }
    return NULL;
}

const cJSON *loom_config_get(const loom_config *cfg, const char *key)
{
    if (!cfg || !key || !*key)
        return NULL;
    return walk(cfg->tree, key, 0);
}

const char *loom__config_str(const loom_config *cfg, const char *key, const char *def)
{
    const cJSON *v = loom_config_get(cfg, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}

long long loom__config_int(const loom_config *cfg, const char *key, long long def)
{
    const cJSON *v = loom_config_get(cfg, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= -9.2e18 && v->valuedouble <= 9.2e18))
        return def;
    return (long long)v->valuedouble;
}

bool loom__config_bool(const loom_config *cfg, const char *key, bool def)
{
    const cJSON *v = loom_config_get(cfg, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

loom_config *loom__config_clone(const loom_config *cfg)
{
    if (!cfg)
        return NULL;
    loom_config *copy = calloc(1, sizeof *copy);
    if (!copy)
        return NULL;
    if (!(copy->tree = cJSON_Duplicate(cfg->tree, true))) {
        free(copy);
        return NULL;
    }
    return copy;
}
