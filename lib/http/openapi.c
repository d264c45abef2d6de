/* The bridge's OpenAPI 3.1 document (GET {base}/openapi.json), generated
 * on each request from the same command definitions as the routes, so it
 * always matches what is served (docs/http.md, "OpenAPI"). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/runtime.h"
#include "http/bridge.h"

typedef struct oa_ctx {
    loom_http *h;
    cJSON *paths;
    cJSON *schemas; /* components.schemas */
    cJSON *tags;    /* one per service */
    /* The service of the command at hand. */
    const cJSON *shared;           /* its shared schemas (array) or NULL */
    char prefix[2 * MAX_NAME + 8]; /* "{service}.v{version}" */
    bool oom;
} oa_ctx;

/* {"$ref": "#/components/schemas/NAME/properties/KEY"} (KEY escaped). */
static cJSON *property_ref(const char *name, const char *key)
{
    loom__sbuf b = {0};
    loom__sbuf_printf(&b, "#/components/schemas/%s/properties", name);
    loom__http_pointer_token(&b, key);
    cJSON *r = b.oom ? NULL : cJSON_CreateObject();
    if (r && !cJSON_AddStringToObject(r, "$ref", b.p)) {
        cJSON_Delete(r);
        r = NULL;
    }
    free(b.p);
    return r;
}

static bool add_ref(cJSON *responses, const char *code, const char *name)
{
    cJSON *r = cJSON_AddObjectToObject(responses, code);
    char ref[96];
    snprintf(ref, sizeof ref, "#/components/responses/%s", name);
    return r && cJSON_AddStringToObject(r, "$ref", ref);
}

static bool has_ref(const cJSON *node, int depth)
{
    const cJSON *child;
    cJSON_ArrayForEach(child, node)
    {
        if ((child->string && strcmp(child->string, "$ref") == 0) ||
            (depth < 64 && has_ref(child, depth + 1)))
            return true;
    }
    return false;
}

/* A parameter's schema: a copy of the parameter schema's property, or,
 * when the parameter schema has $refs (pname set), a reference to the
 * property in components.schemas[pname], so that they resolve. */
static cJSON *param_schema(const char *pname, const cJSON *prop)
{
    return pname ? property_ref(pname, prop->string) : cJSON_Duplicate(prop, true);
}

/* Path and query parameters. */
static bool oa_parameters(cJSON *op, const char *pname, const seg *segs, size_t nseg,
                          const cJSON *pschema)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(pschema, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(pschema, "required");
    cJSON *params = cJSON_CreateArray();
    if (!params || !cJSON_AddItemToObject(op, "parameters", params)) {
        cJSON_Delete(params);
        return false;
    }
    for (size_t i = 0; i < nseg; i++) {
        if (!segs[i].param)
            continue;
        cJSON *p = cJSON_CreateObject();
        if (!p || !cJSON_AddItemToArray(params, p) ||
            !cJSON_AddStringToObject(p, "name", segs[i].text) ||
            !cJSON_AddStringToObject(p, "in", "path") || !cJSON_AddTrueToObject(p, "required"))
            return false;
        const cJSON *prop = cJSON_GetObjectItemCaseSensitive(props, segs[i].text);
        cJSON *s = prop ? param_schema(pname, prop) : cJSON_Parse("{\"type\":\"string\"}");
        if (!s || !cJSON_AddItemToObject(p, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    const cJSON *prop;
    const cJSON *props_obj = cJSON_IsObject(props) ? props : NULL;
    cJSON_ArrayForEach(prop, props_obj)
    {
        if (!prop->string)
            continue;
        bool in_path = false;
        for (size_t i = 0; i < nseg && !in_path; i++)
            in_path = segs[i].param && strcmp(segs[i].text, prop->string) == 0;
        if (in_path)
            continue;
        bool required = false;
        const cJSON *r;
        const cJSON *req_list = cJSON_IsArray(req) ? req : NULL;
        cJSON_ArrayForEach(r, req_list)
        {
            if (cJSON_IsString(r) && strcmp(r->valuestring, prop->string) == 0)
                required = true;
        }
        cJSON *p = cJSON_CreateObject();
        cJSON *s = param_schema(pname, prop);
        if (!p || !s || !cJSON_AddItemToArray(params, p)) {
            cJSON_Delete(p);
            cJSON_Delete(s);
            return false;
        }
        if (!cJSON_AddStringToObject(p, "name", prop->string) ||
            !cJSON_AddStringToObject(p, "in", "query") ||
            !cJSON_AddBoolToObject(p, "required", required) ||
            !cJSON_AddItemToObject(p, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    return true;
}

/* components.schemas[name] = a copy of schema; returns {"$ref": ...} or NULL. */
static cJSON *oa_component(oa_ctx *c, const char *name, const cJSON *schema)
{
    char ref[4 * MAX_NAME + 64];
    snprintf(ref, sizeof ref, "#/components/schemas/%s", name);
    cJSON *copy = loom__http_doc_schema(schema, name, c->shared, c->prefix);
    cJSON *r = cJSON_CreateObject();
    if (!copy || !r || !cJSON_AddStringToObject(r, "$ref", ref)) {
        cJSON_Delete(copy);
        cJSON_Delete(r);
        return NULL;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(c->schemas, name); /* first one wins */
    if (!cJSON_AddItemToObject(c->schemas, name, copy)) {
        cJSON_Delete(copy);
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

/* o.content["application/json"].schema = schema (taken, also on failure). */
static bool oa_json_content(cJSON *o, cJSON *schema)
{
    cJSON *content = schema ? cJSON_AddObjectToObject(o, "content") : NULL;
    cJSON *mt = content ? cJSON_AddObjectToObject(content, "application/json") : NULL;
    if (!mt || !cJSON_AddItemToObject(mt, "schema", schema)) {
        cJSON_Delete(schema);
        return false;
    }
    return true;
}

/* One declared error: the Error schema, its data narrowed by dataSchema. */
static bool oa_declared_error(oa_ctx *c, cJSON *responses, const char *id, const cJSON *e)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "status");
    const char *desc = loom__http_jstr(e, "description");
    if (!cJSON_IsNumber(st) || st->valuedouble < 400 || st->valuedouble > 599 || !desc)
        return true; /* not from a loom that checked it: left out */
    char code[8], name[4 * MAX_NAME + 32];
    snprintf(code, sizeof code, "%d", (int)st->valuedouble);
    snprintf(name, sizeof name, "%s.error%s", id, code);
    cJSON_DeleteItemFromObjectCaseSensitive(responses, code); /* the declaration wins */
    cJSON *r = cJSON_AddObjectToObject(responses, code);
    if (!r || !cJSON_AddStringToObject(r, "description", desc))
        return false;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(e, "dataSchema");
    if (!data)
        return oa_json_content(r, cJSON_Parse("{\"$ref\":\"#/components/schemas/Error\"}"));
    cJSON *schema = cJSON_Parse("{\"allOf\":[{\"$ref\":\"#/components/schemas/Error\"},"
                                "{\"required\":[\"data\"],\"properties\":{}}]}");
    cJSON *props =
        schema ? cJSON_GetObjectItemCaseSensitive(
                     cJSON_GetArrayItem(cJSON_GetObjectItem(schema, "allOf"), 1), "properties")
               : NULL;
    cJSON *ref = props ? oa_component(c, name, data) : NULL;
    if (!ref || !cJSON_AddItemToObject(props, "data", ref)) {
        cJSON_Delete(ref);
        cJSON_Delete(schema);
        return false;
    }
    return oa_json_content(r, schema);
}

/* What the operation can really answer (docs/http.md, "OpenAPI"): its
 * result, the bridge's own errors where they apply, then the command's
 * declared errors (which replace a shared one of the same status). */
static bool oa_responses(oa_ctx *c, cJSON *op, const char *id, const cJSON *cmd, bool public,
                         bool body)
{
    cJSON *responses = cJSON_AddObjectToObject(op, "responses");
    if (!responses)
        return false;
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(cmd, "outputSchema");
    const char *out_type = loom__http_jstr(out, "type");
    bool empty_only = out_type && strcmp(out_type, "null") == 0;
    if (!empty_only) {
        char name[4 * MAX_NAME + 32];
        snprintf(name, sizeof name, "%s.output", id);
        cJSON *ok = cJSON_AddObjectToObject(responses, "200");
        if (!ok || !cJSON_AddStringToObject(ok, "description", "The command's result") ||
            !oa_json_content(ok, out ? oa_component(c, name, out) : cJSON_CreateObject()))
            return false;
    }
    if ((!out || empty_only) &&
        !cJSON_AddStringToObject(cJSON_AddObjectToObject(responses, "204"), "description",
                                 "Done, with an empty result"))
        return false;
    bool input = cJSON_GetObjectItemCaseSensitive(cmd, "payloadSchema") ||
                 cJSON_GetObjectItemCaseSensitive(cmd, "parameterSchema");
    bool protected = !public && (loom__http_auth_on(c->h) || c->h->auth_required);
    if ((input && !add_ref(responses, "400", "BadRequest")) ||
        (protected && !add_ref(responses, "401", "Unauthorized")) ||
        (body && (!add_ref(responses, "413", "TooLarge") ||
                  !add_ref(responses, "415", "UnsupportedMediaType"))) ||
        !add_ref(responses, "500", "Internal") || !add_ref(responses, "503", "Unavailable") ||
        !add_ref(responses, "504", "Timeout"))
        return false;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(cmd, "errors"))
    {
        if (!oa_declared_error(c, responses, id, e))
            return false;
    }
    return true;
}

/* The service's tag, once, with its description. */
static bool oa_tag(oa_ctx *c, const char *service, const char *description)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, c->tags)
    {
        const char *n = loom__http_jstr(t, "name");
        if (n && strcmp(n, service) == 0)
            return true;
    }
    cJSON *tag = cJSON_CreateObject();
    if (!tag || !cJSON_AddItemToArray(c->tags, tag)) {
        cJSON_Delete(tag);
        return false;
    }
    char fallback[MAX_NAME + 32];
    snprintf(fallback, sizeof fallback, "The %s service", service);
    return cJSON_AddStringToObject(tag, "name", service) &&
           cJSON_AddStringToObject(tag, "description", description ? description : fallback);
}

static bool oa_operation(oa_ctx *c, cJSON *op, const char *service, const char *version,
                         const cJSON *cmd, const char *name, const seg *segs, size_t nseg,
                         bool public, bool body_method)
{
    char id[3 * MAX_NAME + 8];
    snprintf(id, sizeof id, "%s.v%s.%s", service, version, name);
    const char *desc = loom__http_jstr(cmd, "description");
    cJSON *tags = cJSON_AddArrayToObject(op, "tags");
    cJSON *tag = cJSON_CreateString(service);
    if (!tags || !tag || !cJSON_AddItemToArray(tags, tag)) {
        cJSON_Delete(tag);
        return false;
    }
    if (!cJSON_AddStringToObject(op, "operationId", id) ||
        !cJSON_AddStringToObject(op, "summary", desc ? desc : name))
        return false;
    cJSON *x = cJSON_AddObjectToObject(op, "x-loom");
    const char *event = loom__http_jstr(cmd, "successEvent");
    if (!x || !cJSON_AddStringToObject(x, "service", service) ||
        !cJSON_AddStringToObject(x, "version", version) ||
        !cJSON_AddStringToObject(x, "command", name) ||
        (event && !cJSON_AddStringToObject(x, "successEvent", event)))
        return false;
    const cJSON *pschema = cJSON_GetObjectItemCaseSensitive(cmd, "parameterSchema");
    char qname[4 * MAX_NAME + 32];
    snprintf(qname, sizeof qname, "%s.parameter", id);
    bool by_ref = pschema && has_ref(pschema, 0);
    cJSON *qref = by_ref ? oa_component(c, qname, pschema) : NULL;
    bool has_q = qref != NULL;
    cJSON_Delete(qref);
    if ((by_ref && !has_q) || !oa_parameters(op, by_ref ? qname : NULL, segs, nseg, pschema))
        return false;
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(cmd, "payloadSchema");
    if (payload) {
        char pname[4 * MAX_NAME + 32];
        snprintf(pname, sizeof pname, "%s.payload", id);
        cJSON *rb = cJSON_AddObjectToObject(op, "requestBody");
        if (!rb || !cJSON_AddTrueToObject(rb, "required") ||
            !oa_json_content(rb, oa_component(c, pname, payload)))
            return false;
    }
    if (!oa_responses(c, op, id, cmd, public, payload || body_method))
        return false;
    /* No credentials to give: an empty list says so explicitly. */
    if ((public || !loom__http_auth_on(c->h)) && !cJSON_AddArrayToObject(op, "security"))
        return false;
    return true;
}

/* Runs under the discovery lock: builds JSON only. */
static void oa_command(void *user, const char *service, const char *version,
                       const cJSON *service_obj, const cJSON *cmd, bool local)
{
    (void)local;
    oa_ctx *c = user;
    const cJSON *http = cJSON_GetObjectItemCaseSensitive(cmd, "http");
    const char *method = loom__http_jstr(http, "method"), *path = loom__http_jstr(http, "path");
    const char *name = loom__http_jstr(cmd, "name");
    if (c->oom || !method || !path || !loom__http_method_ok(method) || !loom__http_name_ok(name) ||
        !loom__http_name_ok(service) || !loom__http_name_ok(version))
        return;
    seg *segs = NULL;
    size_t nseg = 0;
    char *label = NULL;
    const char *why;
    if (!loom__http_route_path(c->h->base, version, path, &segs, &nseg, &label, &why))
        return;
    c->shared = cJSON_GetObjectItemCaseSensitive(service_obj, "schemas");
    snprintf(c->prefix, sizeof c->prefix, "%s.v%s", service, version);
    if (!loom__http_doc_shared(c->schemas, c->shared, c->prefix))
        c->oom = true;
    char lm[8];
    size_t mn = strlen(method) < 7 ? strlen(method) : 7;
    for (size_t i = 0; i < mn; i++)
        lm[i] = (char)tolower((unsigned char)method[i]);
    lm[mn] = '\0';
    cJSON *item = cJSON_GetObjectItemCaseSensitive(c->paths, label);
    if (!item)
        item = cJSON_AddObjectToObject(c->paths, label);
    if (!item) {
        c->oom = true;
    } else if (!cJSON_GetObjectItemCaseSensitive(item, lm)) { /* first one wins */
        cJSON *op = cJSON_AddObjectToObject(item, lm);
        bool public = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(http, "public"));
        bool body = strcmp(lm, "post") == 0 || strcmp(lm, "put") == 0 || strcmp(lm, "patch") == 0;
        if (!op || !oa_tag(c, service, loom__http_jstr(service_obj, "description")) ||
            !oa_operation(c, op, service, version, cmd, name, segs, nseg, public, body))
            c->oom = true;
    }
    for (size_t i = 0; i < nseg; i++)
        free(segs[i].text);
    free(segs);
    free(label);
}

static const char oa_error_schema[] =
    "{\"type\":\"object\",\"required\":[\"status\",\"message\",\"traceId\"],\"properties\":{"
    "\"status\":{\"type\":\"integer\",\"minimum\":400,\"maximum\":599},\"message\":{\"type\":"
    "\"string\"},\"data\":{},\"traceId\":{\"type\":\"string\",\"pattern\":\"^[0-9a-f]{32}$\"}}}";

/* The bridge's own answers, shared by the operations (components.responses). */
static const struct {
    const char *name, *description;
} oa_shared[] = {
    {"BadRequest", "Invalid input: malformed JSON, bad parameters or a validation failure "
                   "(data.errors lists each problem)"},
    {"Unauthorized", "Missing or invalid credentials"},
    {"MethodNotAllowed", "The path is served, but not with this method (the Allow header "
                         "lists those it is)"},
    {"TooLarge", "The request body is larger than http.max_body"},
    {"UnsupportedMediaType", "A body that is not JSON (Content-Type: application/json)"},
    {"Internal", "The command failed unexpectedly (the details are in the service's log)"},
    {"Unavailable", "No instance can serve the command right now"},
    {"Timeout", "The command did not answer in time"},
};

static cJSON *oa_components_new(void)
{
    cJSON *comp = cJSON_CreateObject();
    cJSON *schemas = comp ? cJSON_AddObjectToObject(comp, "schemas") : NULL;
    cJSON *responses = comp ? cJSON_AddObjectToObject(comp, "responses") : NULL;
    cJSON *err = cJSON_Parse(oa_error_schema);
    if (!schemas || !responses || !err || !cJSON_AddItemToObject(schemas, "Error", err)) {
        cJSON_Delete(err);
        cJSON_Delete(comp);
        return NULL;
    }
    for (size_t i = 0; i < LOOM__ARRAY_LEN(oa_shared); i++) {
        cJSON *r = cJSON_AddObjectToObject(responses, oa_shared[i].name);
        if (!r || !cJSON_AddStringToObject(r, "description", oa_shared[i].description) ||
            !oa_json_content(r, cJSON_Parse("{\"$ref\":\"#/components/schemas/Error\"}"))) {
            cJSON_Delete(comp);
            return NULL;
        }
    }
    return comp;
}

static const char *const oa_info_keys[OA_INFO_N] = {
    "http.openapi.license.name", "http.openapi.license.identifier", "http.openapi.license.url",
    "http.openapi.contact.name", "http.openapi.contact.url",        "http.openapi.contact.email",
    "http.openapi.server",
};

loom_err loom__http_openapi_load(loom_http *h, const loom_config *cfg)
{
    h->oa_title = strdup(loom__config_str(cfg, "http.openapi.title", "loom HTTP bridge"));
    h->oa_version = strdup(loom__config_str(cfg, "http.openapi.version", LOOM_VERSION_STRING));
    h->oa_description = strdup(loom__config_str(
        cfg, "http.openapi.description",
        "Every command with HTTP exposure, served as {base}/v{version}{path}. Errors are JSON "
        "{status, message, data?, traceId}."));
    if (!h->oa_title || !h->oa_version || !h->oa_description)
        return LOOM_ENOMEM;
    for (size_t i = 0; i < OA_INFO_N; i++) {
        const char *v = loom__config_str(cfg, oa_info_keys[i], NULL);
        if (v && !(h->oa_info[i] = strdup(v)))
            return LOOM_ENOMEM;
    }
    /* OpenAPI 3.1: a license has a name, and an identifier or a url. */
    bool named = h->oa_info[OA_LICENSE_NAME] != NULL;
    bool id = h->oa_info[OA_LICENSE_NAME + 1] != NULL,
         url = h->oa_info[OA_LICENSE_NAME + 2] != NULL;
    if ((id || url) && (!named || (id && url))) {
        loom__http_log(h, LOOM_LOG_ERROR,
                       "http.openapi.license: needs a name, and an identifier or a url (not both)");
        return LOOM_ECONFIG;
    }
    return LOOM_OK;
}

void loom__http_openapi_fini(loom_http *h)
{
    free(h->oa_title);
    free(h->oa_version);
    free(h->oa_description);
    for (size_t i = 0; i < OA_INFO_N; i++)
        free(h->oa_info[i]);
}

/* Adds the set members of h->oa_info[from .. from + n) to a new obj[key]
 * under the given field names (a NULL name is left out); nothing when none
 * is set. */
static bool oa_info_object(loom_http *h, cJSON *info, const char *key, size_t from,
                           const char *const *fields, size_t n)
{
    cJSON *o = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *v = h->oa_info[from + i];
        if (!v || !fields[i])
            continue;
        if (!o && !(o = cJSON_AddObjectToObject(info, key)))
            return false;
        if (!cJSON_AddStringToObject(o, fields[i], v))
            return false;
    }
    return true;
}

static bool doc_info(loom_http *h, cJSON *info, bool asyncapi)
{
    /* AsyncAPI 3.0's license has no SPDX identifier. */
    const char *const license[] = {"name", asyncapi ? NULL : "identifier", "url"};
    static const char *const contact[] = {"name", "url", "email"};
    return cJSON_AddStringToObject(info, "title", h->oa_title) &&
           cJSON_AddStringToObject(info, "version", h->oa_version) &&
           cJSON_AddStringToObject(info, "description", h->oa_description) &&
           oa_info_object(h, info, "license", OA_LICENSE_NAME, license, 3) &&
           oa_info_object(h, info, "contact", OA_CONTACT_NAME, contact, 3);
}

/* http.openapi.server, else http://HOST:PORT of the listen address (the
 * bound port once started; a wildcard host as localhost), else "/". */
char *loom__http_server_url(loom_http *h)
{
    if (h->oa_info[OA_SERVER])
        return strdup(h->oa_info[OA_SERVER]);
    const char *l = h->listen, *colon = strrchr(l, ':');
    size_t hl = colon ? (size_t)(colon - l) : strlen(l);
    int port = loom_http_port(h);
    char host[300];
    snprintf(host, sizeof host, "%.*s", (int)(hl < 256 ? hl : 256), l);
    if (!*host || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "[::]") == 0 ||
        strcmp(host, "*") == 0)
        snprintf(host, sizeof host, "localhost");
    char *zone = strchr(host, '%'); /* [fe80::1%eth0]: the % is escaped in a URI */
    if (zone && strlen(host) + 2 < sizeof host) {
        memmove(zone + 3, zone + 1, strlen(zone + 1) + 1);
        memcpy(zone, "%25", 3);
    }
    if (!port && colon && strcmp(colon + 1, "0") != 0)
        port = atoi(colon + 1);
    /* Not started on an ephemeral port: relative to wherever it is served. */
    return port ? loom__asprintf("http://%s:%d", host, port) : strdup("/");
}

static bool oa_servers(loom_http *h, cJSON *doc)
{
    char *url = loom__http_server_url(h);
    cJSON *servers = url ? cJSON_AddArrayToObject(doc, "servers") : NULL;
    cJSON *s = servers ? cJSON_CreateObject() : NULL;
    if (s && !cJSON_AddItemToArray(servers, s)) {
        cJSON_Delete(s);
        s = NULL;
    }
    bool ok = s && cJSON_AddStringToObject(s, "url", url) &&
              cJSON_AddStringToObject(s, "description", "The HTTP bridge");
    free(url);
    return ok;
}

static bool oa_security(loom_http *h, cJSON *doc, cJSON *components)
{
    cJSON *schemes = cJSON_AddObjectToObject(components, "securitySchemes");
    cJSON *bearer = schemes ? cJSON_AddObjectToObject(schemes, "bearerAuth") : NULL;
    cJSON *security = cJSON_AddArrayToObject(doc, "security");
    cJSON *req = security ? cJSON_CreateObject() : NULL;
    if (req && !cJSON_AddItemToArray(security, req)) {
        cJSON_Delete(req);
        req = NULL;
    }
    if (!bearer || !req || !cJSON_AddStringToObject(bearer, "type", "http") ||
        !cJSON_AddStringToObject(bearer, "scheme", "bearer") ||
        !cJSON_AddArrayToObject(req, "bearerAuth"))
        return false;
    if (h->api_key_header && !h->auth_fn) {
        cJSON *key = cJSON_AddObjectToObject(schemes, "apiKeyAuth");
        cJSON *req2 = cJSON_CreateObject();
        if (req2 && !cJSON_AddItemToArray(security, req2)) {
            cJSON_Delete(req2);
            req2 = NULL;
        }
        if (!key || !req2 || !cJSON_AddStringToObject(key, "type", "apiKey") ||
            !cJSON_AddStringToObject(key, "in", "header") ||
            !cJSON_AddStringToObject(key, "name", h->api_key_header) ||
            !cJSON_AddArrayToObject(req2, "apiKeyAuth"))
            return false;
    }
    return true;
}

cJSON *loom__http_doc_new(loom_http *h, bool asyncapi)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *info = doc && cJSON_AddStringToObject(doc, asyncapi ? "asyncapi" : "openapi",
                                                 asyncapi ? "3.0.0" : "3.1.0")
                      ? cJSON_AddObjectToObject(doc, "info")
                      : NULL;
    if (!info || !doc_info(h, info, asyncapi)) {
        cJSON_Delete(doc);
        return NULL;
    }
    return doc;
}

cJSON *loom__http_openapi_doc(loom_http *h)
{
    cJSON *doc = loom__http_doc_new(h, false);
    cJSON *components = oa_components_new();
    if (!doc || !components || !oa_servers(h, doc))
        goto fail;
    oa_ctx c = {.h = h,
                .tags = cJSON_AddArrayToObject(doc, "tags"),
                .paths = cJSON_AddObjectToObject(doc, "paths"),
                .schemas = cJSON_GetObjectItemCaseSensitive(components, "schemas")};
    if (!c.paths || !c.tags)
        goto fail;
    loom__commands_each(h->rt, oa_command, &c);
    if (c.oom)
        goto fail;
    if (loom__http_auth_on(h) && !oa_security(h, doc, components))
        goto fail;
    if (!cJSON_AddItemToObject(doc, "components", components))
        goto fail;
    return doc;
fail:
    cJSON_Delete(components);
    cJSON_Delete(doc);
    return NULL;
}
