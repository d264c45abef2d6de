/* The bridge's authentication (built-in tokens or an application hook) and
 * its CORS settings. Tokens are compared in constant time and wiped from
 * memory when the bridge is destroyed; a configured token source that is
 * unreadable or empty is a configuration error, never "auth off".
 *
 * Secure by default: a protected endpoint with no token, key or hook
 * configured answers 401; only http.auth.required: false serves it to
 * anyone, and the bridge then says so with a warning at start. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec/msg.h"
#include "config/config.h"
#include "http/bridge.h"

#define DEFAULT_CORS_MAX_AGE 600

bool loom__http_auth_on(const loom_http *h)
{
    return h->n_tokens > 0 || h->auth_fn;
}

/* Compares cand with every token, in time that depends on the tokens'
 * lengths only. */
static bool token_matches(const loom_http *h, const char *cand, size_t clen)
{
    unsigned ok = 0;
    for (size_t i = 0; i < h->n_tokens; i++) {
        const unsigned char *t = (const unsigned char *)h->tokens[i];
        size_t tl = h->token_lens[i];
        volatile unsigned char d = (unsigned char)(tl != clen);
        for (size_t j = 0; j < tl; j++)
            d |= (unsigned char)(t[j] ^ (j < clen ? (unsigned char)cand[j] : 0));
        ok |= (unsigned)(d == 0);
    }
    return ok != 0;
}

static bool check_token_value(const loom_http *h, const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n > 0 && token_matches(h, v, n);
}

static const char *hook_header(const loom_http_auth_request *req, const char *name)
{
    return req && name && req->internal ? loom__hs_req_header(req->internal, name) : NULL;
}

static bool identity_ok(const char *s)
{
    if (!s)
        return true;
    size_t n = strlen(s);
    if (n == 0 || n > LOOM_MAX_STRING || !loom__utf8_valid(s, n))
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

int loom__http_authenticate(breq *b)
{
    loom_http *h = b->h;
    if (!loom__http_auth_on(h))
        return h->auth_required ? 401 : 0;
    if (h->auth_fn) {
        loom_http_auth_request ar = {.method = loom__hs_req_method(b->hs),
                                     .path = b->path,
                                     .header = hook_header,
                                     .internal = b->hs};
        loom_http_identity id = {0};
        loom__callback_depth++;
        bool ok = h->auth_fn(&ar, &id, h->auth_user);
        loom__callback_depth--;
        if (!ok)
            return 401;
        if (!identity_ok(id.principal_id) || !identity_ok(id.tenant_id)) {
            loom__http_log(h, LOOM_LOG_ERROR,
                           "the authentication hook returned an invalid identity");
            return 500;
        }
        if ((id.principal_id && !(b->principal = strdup(id.principal_id))) ||
            (id.tenant_id && !(b->tenant = strdup(id.tenant_id))))
            return 503;
        return 0;
    }
    const char *authz = loom__hs_req_header(b->hs, "Authorization");
    if (authz && strncasecmp(authz, "Bearer", 6) == 0 && (authz[6] == ' ' || authz[6] == '\t') &&
        check_token_value(h, authz + 7))
        return 0;
    const char *key = h->api_key_header ? loom__hs_req_header(b->hs, h->api_key_header) : NULL;
    if (key && check_token_value(h, key))
        return 0;
    return 401;
}

const char *loom__http_cors_allow(const loom_http *h, const char *origin)
{
    if (!h->n_origins || !origin)
        return NULL;
    if (h->cors_any)
        return "*";
    for (size_t i = 0; i < h->n_origins; i++)
        if (strcmp(h->origins[i], origin) == 0)
            return h->origins[i];
    return NULL;
}

void loom__http_auth_report(loom_http *h, size_t n_protected)
{
    if (loom__http_auth_on(h))
        return;
    if (!h->auth_required) {
        if (n_protected || h->protect_metrics || h->protect_docs)
            loom__http_log(h, LOOM_LOG_WARN,
                           "authentication is OFF (http.auth.required: false): %zu protected "
                           "route(s)%s are served to anyone",
                           n_protected, h->protect_metrics || h->protect_docs ? " and endpoints" : "");
        return;
    }
    if (n_protected || h->protect_metrics || h->protect_docs)
        loom__http_log(h, LOOM_LOG_WARN,
                       "no token, API key or hook is configured: %zu protected route(s) answer 401 "
                       "(set http.auth.tokens, or http.auth.required: false to serve them to "
                       "anyone)",
                       n_protected);
}

/* ------------------------------------------------------------------------ */
/* Settings                                                                  */

static loom_err add_token(loom_http *h, const char *t, size_t n)
{
    while (n && isspace((unsigned char)*t)) {
        t++;
        n--;
    }
    while (n && isspace((unsigned char)t[n - 1]))
        n--;
    if (!n)
        return LOOM_OK;
    char **tokens = realloc(h->tokens, (h->n_tokens + 1) * sizeof *tokens);
    if (!tokens)
        return LOOM_ENOMEM;
    h->tokens = tokens;
    size_t *lens = realloc(h->token_lens, (h->n_tokens + 1) * sizeof *lens);
    if (!lens)
        return LOOM_ENOMEM;
    h->token_lens = lens;
    if (!(h->tokens[h->n_tokens] = strndup(t, n)))
        return LOOM_ENOMEM;
    h->token_lens[h->n_tokens++] = n;
    return LOOM_OK;
}

static loom_err load_tokens(loom_http *h, const loom_config *cfg)
{
    const cJSON *v;
    loom_err err = LOOM_OK;
    const cJSON *list = cfg ? loom_config_get(cfg, "http.auth.tokens") : NULL;
    cJSON_ArrayForEach(v, list)
    {
        if (cJSON_IsString(v) && (err = add_token(h, v->valuestring, strlen(v->valuestring))))
            return err;
    }
    const char *file = loom__config_str(cfg, "http.auth.tokens_file", NULL);
    if (file) {
        FILE *f = fopen(file, "re");
        if (!f) {
            loom__http_log(h, LOOM_LOG_ERROR, "http.auth.tokens_file: cannot read %s: %s", file,
                           strerror(errno));
            return LOOM_ECONFIG;
        }
        size_t before = h->n_tokens;
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (err == LOOM_OK && (n = getline(&line, &cap, f)) >= 0) {
            const char *p = line;
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p != '#')
                err = add_token(h, p, strlen(p));
        }
        free(line);
        fclose(f);
        if (err)
            return err;
        if (h->n_tokens == before) {
            loom__http_log(h, LOOM_LOG_ERROR, "http.auth.tokens_file: %s holds no token", file);
            return LOOM_ECONFIG;
        }
    }
    const char *env = loom__config_str(cfg, "http.auth.tokens_env", NULL);
    if (env) {
        const char *val = getenv(env);
        size_t before = h->n_tokens;
        for (const char *p = val; p && *p && err == LOOM_OK;) {
            size_t n = strcspn(p, ",");
            err = add_token(h, p, n);
            p += n;
            if (*p == ',')
                p++;
        }
        if (err)
            return err;
        if (h->n_tokens == before) {
            loom__http_log(h, LOOM_LOG_ERROR,
                           "http.auth.tokens_env: the environment variable %s is unset or holds "
                           "no token",
                           env);
            return LOOM_ECONFIG;
        }
    }
    return LOOM_OK;
}

static bool header_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 128)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static loom_err load_cors(loom_http *h, const loom_config *cfg)
{
    const cJSON *v;
    const cJSON *origins = cfg ? loom_config_get(cfg, "http.cors.origins") : NULL;
    size_t n = (size_t)cJSON_GetArraySize(origins);
    if (n) {
        h->origins = calloc(n, sizeof *h->origins);
        if (!h->origins)
            return LOOM_ENOMEM;
    }
    cJSON_ArrayForEach(v, origins)
    {
        if (!cJSON_IsString(v))
            continue;
        const char *o = v->valuestring;
        for (const char *p = o; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
                loom__http_log(h, LOOM_LOG_ERROR, "http.cors.origins: '%.100s' is not an origin",
                               o);
                return LOOM_ECONFIG;
            }
        if (strcmp(o, "*") == 0)
            h->cors_any = true;
        if (!(h->origins[h->n_origins++] = strdup(o)))
            return LOOM_ENOMEM;
    }
    loom__sbuf sb = {0};
    const cJSON *headers = cfg ? loom_config_get(cfg, "http.cors.headers") : NULL;
    cJSON_ArrayForEach(v, headers)
    {
        if (!cJSON_IsString(v))
            continue;
        if (!header_name_ok(v->valuestring)) {
            loom__http_log(h, LOOM_LOG_ERROR, "http.cors.headers: '%.100s' is not a header name",
                           v->valuestring);
            free(sb.p);
            return LOOM_ECONFIG;
        }
        loom__sbuf_printf(&sb, "%s%s", sb.len ? ", " : "", v->valuestring);
    }
    if (!sb.len) {
        loom__sbuf_puts(&sb, "Content-Type, Authorization, x-trace-id, traceparent");
        if (h->api_key_header)
            loom__sbuf_printf(&sb, ", %s", h->api_key_header);
    }
    if (sb.oom) {
        free(sb.p);
        return LOOM_ENOMEM;
    }
    h->cors_headers = sb.p;
    h->cors_max_age = (unsigned)loom__config_int(cfg, "http.cors.max_age", DEFAULT_CORS_MAX_AGE);
    return LOOM_OK;
}

loom_err loom__http_auth_load(loom_http *h, const loom_config *cfg)
{
    const char *key = loom__config_str(cfg, "http.auth.api_key_header", NULL);
    if (key && !header_name_ok(key)) {
        loom__http_log(h, LOOM_LOG_ERROR, "http.auth.api_key_header: '%.100s' is not a header name",
                       key);
        return LOOM_ECONFIG;
    }
    if (key && !(h->api_key_header = strdup(key)))
        return LOOM_ENOMEM;
    h->auth_required = loom__config_bool(cfg, "http.auth.required", true);
    h->protect_metrics = loom__config_bool(cfg, "http.auth.protect_metrics", false);
    h->protect_docs = loom__config_bool(cfg, "http.auth.protect_docs", false);
    loom_err err = load_tokens(h, cfg);
    return err != LOOM_OK ? err : load_cors(h, cfg);
}

void loom__http_auth_fini(loom_http *h)
{
    for (size_t i = 0; i < h->n_tokens; i++) {
        /* Tokens are secrets: do not leave them in freed memory. */
        explicit_bzero(h->tokens[i], h->token_lens[i]);
        free(h->tokens[i]);
    }
    free(h->tokens);
    free(h->token_lens);
    for (size_t i = 0; i < h->n_origins; i++)
        free(h->origins[i]);
    free(h->origins);
    free(h->cors_headers);
    free(h->api_key_header);
}
